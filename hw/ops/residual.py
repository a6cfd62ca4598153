"""RESIDUAL engine: ``dst = sat32(h + requant(acc, scale_mul(sx, c), 16, 32))`` per row
(golden: ``golden.executor.Executor._op_residual`` -> ``golden.model.op_residual``).

h, acc, dst are int32 [rows, dim] (Q15.16 for h and dst, TLMM accumulators for acc); sx
is the row's scale record at ``src_scale + 4*row``; c = (c_mant, c_shift) comes from the
command. The fraction and saturation widths are ``cfg.norm.in_frac_bits`` /
``cfg.norm.in_bits``; the scale product is ``cfg.requant.mult_bits`` wide. No data value
can fail: the only errors are argument errors.

Checks: the RESIDUAL contract (``golden.isa.CONTRACTS``: rows, dim >= 1; h, acc,
src_scale, dst each aligned, then in range), before any memory access: the byte counts,
the spans and the error code are registered in turn (``ArgChecks(registered=3)``), the
check state reads the code in the fourth cycle of the command.

Micro-architecture (L = ``lanes``, ``AccelConfig.residual_lanes``: 4 on the kv260 point)
=======================================================================================
Rows are split into chunks of ``2L`` elements (the last chunk of a row is short). The
request side issues, per row, the 4-byte scale record, then per chunk the h read and the
acc read (``2L * 4`` bytes each: narrow reads, no wide beat registers); it runs ahead of
the responses without limit (the memory applies backpressure). The response side
consumes them in the same order:

* scale response -> ``hw.pipeline.ScalePipe`` (``scale_mul(sx, c)``, 8 cycles) -> the
  row's requant parameters (``hw.pipeline.RssParams``: the product's mantissa, window
  position and overflow mask; 3 cycles) -> *next*; they move to the *front* registers
  when the previous row's last chunk has entered the lanes, and travel down the pipeline
  with the data (so the next row needs no drain);
* h, acc responses -> ``hw.ops.elem.pair_reader`` -> L lanes per cycle, each lane:
  S0 the (h, acc) pair and the row's parameters registered; S1-S2 ``q = acc * mant``
  (two DSP48E2 partial products, then their sum); S3-S5 ``requant`` of q
  (``hw.pipeline.rss_lane``: the window in two steps and the overflow flag, then round
  and saturate); S6 ``sat32(h + delta)``; -> ``hw.ops.elem.packer``: one write per chunk
  (2L * 4 bytes).
  The whole pipeline freezes while a write waits.

In place (dst == h, or dst == acc): a chunk's write carries data computed from that
chunk's h/acc responses, so it is issued after those reads were answered; reads of
later chunks touch other addresses. Correct for any read-ahead.

Cycles
======
With no memory stalls and read latency 1 the pair reader moves L elements per cycle
(2 response beats per 2L elements); each row waits for its scale (the record, then
ScalePipe and the parameters): a command takes (``expected_cycles``)::

    rows * (2 * ceil(dim / (2L)) + ROW_CYCLES) + FIXED_CYCLES + latency

(every chunk takes 2 cycles; ROW_CYCLES = 12: the record's response, the scale and the
parameters; FIXED_CYCLES = 14: the checks (four registered steps, then the check state),
the lanes' pipeline, the last write and the done cycle), measured exactly so by
``sim/test_op_residual.py``. One BitNet-0.73B residual row (dim 1536, L = 4): 384 + 12 +
14 + latency cycles (4 elements per cycle; the memory carries 32 bytes per cycle of reads
and 16 of writes, less than half of the kv260 point's DRAM bandwidth).

Differences from the golden backend
===================================
* Partial overlap of dst with h/acc/src_scale (other than dst == h or dst == acc exactly)
  is not supported: the golden backend reads every operand before writing, the engine
  streams chunk by chunk, so a dst that overlaps a later chunk of an input gives
  different results. ``host/runtime.py`` uses dst == h.
* No hardware limit: rows and dim take their full 16-bit ranges.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed

from golden import isa
from golden.config import DatapathConfig
from golden.isa import Opcode
from hw.pipeline import RSS_STAGES, Pipe, RssParams, ScalePipe, mul_split, rss_lane

from .base import Engine
from .elem import Chunks, Rows, check_pair_lanes, packer, pair_reader, sat_bits

# request / response kinds, in stream order per row: SCALE, then (H, ACC) per chunk
_SCALE, _H, _ACC = 0, 1, 2

ROW_CYCLES = 12  # see the module docstring's cycle formula
FIXED_CYCLES = 14
SHIFT_BITS = 20  # scale shifts: two int16 record shifts and a normalization


def expected_cycles(rows: int, dim: int, lanes: int, latency: int = 1) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    return rows * (2 * -(-dim // (2 * lanes)) + ROW_CYCLES) + FIXED_CYCLES + latency


class ResidualEngine(Engine):
    OPCODE = Opcode.RESIDUAL
    DESIGN_FIELDS = {"lanes": "residual_lanes"}

    def __init__(self, cfg: DatapathConfig, dma_bytes: int, *, lanes: int):
        if dma_bytes % 4 or dma_bytes < isa.SCALE_RECORD_BYTES:
            raise ValueError(f"dma_bytes: {dma_bytes} is not a multiple of 4")
        if cfg.norm.in_bits > 32:
            raise ValueError(f"cfg.norm.in_bits: {cfg.norm.in_bits} exceeds the int32 tensors")
        self.lanes = check_pair_lanes(lanes, dma_bytes)
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        C = 2 * L  # elements per chunk
        nc, rc = self.cfg.norm, self.cfg.requant
        B = rc.mult_bits
        a = self.op_args
        err = self.checks(m, registered=3).error_reg()  # valid in the 4th cycle
        begin = Signal()

        ptr_w = isa.ADDR_BITS + 1
        # ------------------------------------------------------------ requests
        rq_kind = Signal(2)
        rq_rows, rq_ch = Rows(a.rows, "rq"), Chunks(a.dim, C, "rq")
        rq_h, rq_acc, rq_sc = Signal(ptr_w), Signal(ptr_w), Signal(ptr_w)
        running = Signal()
        m.d.comb += [
            self.rd.valid.eq(running & rq_rows.more),
            self.rd.payload.addr.eq(
                Mux(rq_kind == _SCALE, rq_sc, Mux(rq_kind == _H, rq_h, rq_acc))
            ),
            self.rd.payload.len.eq(Mux(rq_kind == _SCALE, isa.SCALE_RECORD_BYTES, rq_ch.n * 4)),
        ]
        with m.If(begin):
            m.d.sync += [rq_kind.eq(_SCALE), rq_h.eq(a.h), rq_acc.eq(a.acc), rq_sc.eq(a.src_scale)]
            m.d.sync += rq_rows.first() + rq_ch.first()
        with m.Elif(self.rd.valid & self.rd.ready):
            with m.Switch(rq_kind):
                with m.Case(_SCALE):
                    m.d.sync += [rq_sc.eq(rq_sc + isa.SCALE_RECORD_BYTES), rq_kind.eq(_H)]
                with m.Case(_H):
                    m.d.sync += [rq_h.eq(rq_h + rq_ch.n * 4), rq_kind.eq(_ACC)]
                with m.Default():
                    m.d.sync += rq_acc.eq(rq_acc + rq_ch.n * 4)
                    with m.If(rq_ch.end):  # last chunk of the row
                        m.d.sync += [rq_kind.eq(_SCALE)] + rq_rows.advance() + rq_ch.first()
                    with m.Else():
                        m.d.sync += [rq_kind.eq(_H)] + rq_ch.advance()

        # ------------------------------------------------------------ row scale
        # q = acc * mant: |q| < 2^(31 + B)
        QB = 32 + B
        sp = ScalePipe(m, B, SHIFT_BITS, 2 * B, "sc")
        rp = RssParams(QB, nc.in_bits, rc.shift_max, "rp")
        s_reg = Signal(signed(SHIFT_BITS + 1))
        rp.setup(m, s_reg)
        m_next = Signal(B)
        sc_busy = Signal()  # a record taken, its parameters not yet ready
        sc_wait = Signal(range(3))
        next_ready = Signal()  # next: parameters of the next row
        row_ready = Signal()  # front: parameters of the row whose data the reader takes
        f_mant = Signal(B)
        f_par = [Signal.like(f, name=f"f_{f.name}") for f in rp.fields()]

        rs_kind = Signal(2)
        rs_rows, rs_ch = Rows(a.rows, "rs"), Chunks(a.dim, C, "rs")
        rs_more = Signal()
        m.d.comb += rs_more.eq(running & rs_rows.more)
        sx_take = Signal()
        m.d.comb += sx_take.eq(
            rs_more & (rs_kind == _SCALE) & self.rdata.valid & ~sc_busy & ~next_ready
        )
        rec = self.rdata.payload
        m.d.comb += [
            sp.go.eq(sx_take),
            sp.soi.eq(0),
            sp.a_m.eq(rec[: isa.SCALE_MANT_BITS]),
            sp.a_s.eq(
                rec[isa.SCALE_MANT_BITS : isa.SCALE_MANT_BITS + isa.SCALE_SHIFT_BITS].as_signed()
            ),
            sp.b_m.eq(a.c_mant),
            sp.b_s.eq(a.c_shift),
        ]
        with m.If(sx_take):
            m.d.sync += sc_busy.eq(1)
        with m.If(sp.done):
            m.d.sync += [s_reg.eq(sp.shift - nc.in_frac_bits), m_next.eq(sp.mant), sc_wait.eq(2)]
        with m.Elif(sc_wait != 0):
            m.d.sync += sc_wait.eq(sc_wait - 1)
            with m.If(sc_wait == 1):  # rp's registers follow s_reg two cycles later
                m.d.sync += [next_ready.eq(1), sc_busy.eq(0)]

        # ------------------------------------------------------------ responses
        stall = Signal()
        rd = pair_reader(m, self.rdata.payload, L, 32, 32, "rd")
        rs_n, rs_end = rs_ch.n, rs_ch.end
        m.d.comb += [
            rd.a_valid.eq(rs_more & (rs_kind == _H) & self.rdata.valid & row_ready),
            rd.b_valid.eq(rs_more & (rs_kind == _ACC) & self.rdata.valid),
            rd.n.eq(rs_n),
            rd.last.eq(rs_end),
            rd.ready.eq(~stall),
            self.rdata.ready.eq(sx_take | rd.take),
        ]
        with m.If(sx_take):
            m.d.sync += rs_kind.eq(_H)
        with m.If(rd.take & (rs_kind == _H)):
            m.d.sync += rs_kind.eq(_ACC)
        with m.If(rd.take & (rs_kind == _ACC)):
            with m.If(rs_end):
                m.d.sync += [rs_kind.eq(_SCALE), row_ready.eq(0)]
                m.d.sync += rs_rows.advance() + rs_ch.first()
            with m.Else():
                m.d.sync += [rs_kind.eq(_H)] + rs_ch.advance()
        # the next row's parameters move to the front once the reader holds no chunk
        with m.If(next_ready & ~row_ready & rd.empty):
            m.d.sync += [f_mant.eq(m_next), next_ready.eq(0), row_ready.eq(1)]
            m.d.sync += [f.eq(v) for f, v in zip(f_par, rp.fields(), strict=True)]

        # ------------------------------------------------------------ lanes
        pipe = Pipe(m, stall)
        v0 = pipe.reg(rd.valid, "v0")
        tags = [rd.half, rd.n_out, rd.last_out]
        t0 = [pipe.reg(t, f"t0_{i}") for i, t in enumerate(tags)]
        mant0 = pipe.reg(f_mant, "mant0")
        par0 = [pipe.reg(f, f"p0_{i}") for i, f in enumerate(f_par)]
        par2 = [pipe.delay(p, 2, f"p2_{i}") for i, p in enumerate(par0)]
        outs = []
        DEPTH = 2 + RSS_STAGES  # from S0 to delta
        for i in range(L):
            h0 = pipe.reg(rd.a[i], f"h0_{i}")
            a0 = pipe.reg(rd.b[i], f"a0_{i}")
            q = mul_split(pipe, a0, mant0, f"q{i}")
            d = rss_lane(pipe, q, rp, f"rq{i}", params=par2)
            hd = pipe.delay(h0, DEPTH, f"h{i}")
            y = sat_bits(m, hd + d, nc.in_bits, f"sum{i}")
            outs.append(pipe.reg(y.as_signed(), f"y{i}", signed(32)))  # int32 in memory
        vN = pipe.delay(v0, DEPTH + 1, "v")
        tN = [pipe.delay(t, DEPTH + 1, f"t{i}") for i, t in enumerate(t0)]

        ptr, row_done = packer(m, self.wr, stall, vN, Cat(*outs), *tN, lanes=L, elem_bytes=4)
        out_rows = Rows(a.rows, "out")
        with m.If(row_done):
            m.d.sync += out_rows.advance()

        m.d.comb += begin.eq(self.rows_fsm(m, err, running, out_rows))
        with m.If(begin):
            m.d.sync += rs_rows.first() + rs_ch.first() + out_rows.first()
            m.d.sync += [
                rs_kind.eq(_SCALE),
                ptr.eq(a.dst),
                row_ready.eq(0),
                next_ready.eq(0),
                sc_busy.eq(0),
                rd.phase.eq(0),
            ]
        return m
