"""RESIDUAL engine: ``dst = sat32(h + requant(acc, scale_mul(sx, c), 16, 32))`` per row
(golden: ``golden.executor.Executor._op_residual`` -> ``golden.model.op_residual``).

h, acc, dst are int32 [rows, dim] (Q15.16 for h and dst, TLMM accumulators for acc); sx
is the row's scale record at ``src_scale + 4*row``; c = (c_mant, c_shift) comes from the
command. The fraction and saturation widths are ``cfg.norm.in_frac_bits`` /
``cfg.norm.in_bits``; the scale product is ``cfg.requant.mult_bits`` wide. No data value
can fail: the only errors are argument errors.

Checks: the RESIDUAL contract (``golden.isa.CONTRACTS``: rows, dim >= 1; h, acc,
src_scale, dst each aligned, then in range), in one cycle before any memory access.

Micro-architecture
==================
Rows are split into chunks of ``L = dma_bytes/4`` elements (32 for a 128-byte port; the
last chunk of a row is short). The request side issues, per row, the 4-byte scale
record, then per chunk the h read and the acc read; it runs ahead of the responses
without limit (the memory applies backpressure). The response side consumes them in the
same order:

* scale response -> ``sx``; one cycle later the registered row scale
  ``sc = scale_mul(sx, c)`` (``hw.ops.base.scale_mul``) and ``s = sc.shift - in_frac_bits``
  (at least two responses, h and acc, come before it is used);
* h response -> held in a beat register;
* acc response -> stage 1 register: L products ``acc_i * sc.mant`` (signed 49 bits),
  the h beat, s and the chunk's dst address/length;
* stage 2 (combinational from stage 1) -> output register:
  ``sat32(h_i + requant(p_i, 1, s))`` with ``hw.ops.base.requant`` (requant of the
  product with a unit multiplier is requant of acc with sc.mant: the same rounding and
  clipping of the same product) and ``hw.ops.base.saturate``; the output register drives
  ``wr`` (one whole chunk per write).

Stage 1 and the output register advance like a two-entry pipeline with backpressure
from ``wr.ready``; the acc response is accepted only when stage 1 can move on.

In place (dst == h, or dst == acc): a chunk's write carries data computed from that
chunk's h/acc responses, so it is issued after those reads were answered; reads of
later chunks touch other addresses. Correct for any read-ahead.

Cycles
======
With no memory stalls the response side takes one beat per cycle, so a command takes
``rows * (1 + 2 * ceil(dim / L)) + latency + 4`` cycles (``expected_cycles``: scale + h +
acc beats; the first response's memory latency; the check cycle, stage 1, the output
register and the done cycle), measured exactly so by ``sim/test_op_residual.py`` with a
1-cycle memory:
16 elements per cycle on a 128-byte port (two operand beats per output beat). One
BitNet-0.73B residual row (dim 1536, L = 32): 97 beats, 102 cycles at latency 1.

Differences from the golden backend
===================================
* Partial overlap of dst with h/acc/src_scale (other than dst == h or dst == acc exactly)
  is not supported: the golden backend reads every operand before writing, the engine
  streams chunk by chunk, so a dst that overlaps a later chunk of an input gives
  different results. ``host/runtime.py`` uses dst == h.
* No hardware limit: rows and dim take their full 16-bit ranges.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.fixed import saturate

from .base import Engine, requant, scale_mul

# request / response kinds, in stream order per row: SCALE, then (H, ACC) per chunk
_SCALE, _H, _ACC = 0, 1, 2


def expected_cycles(rows: int, dim: int, dma_bytes: int, latency: int = 1) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    return rows * (1 + 2 * -(-dim // (dma_bytes // 4))) + latency + 4


class ResidualEngine(Engine):
    OPCODE = Opcode.RESIDUAL

    def __init__(self, cfg: DatapathConfig, dma_bytes: int):
        if dma_bytes % 4 or dma_bytes < isa.SCALE_RECORD_BYTES:
            raise ValueError(f"dma_bytes: {dma_bytes} is not a multiple of 4")
        if cfg.norm.in_bits > 32:
            raise ValueError(f"cfg.norm.in_bits: {cfg.norm.in_bits} exceeds the int32 tensors")
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        L = W // 4  # int32 lanes per beat
        nc, rc = self.cfg.norm, self.cfg.requant
        B = rc.mult_bits
        a = self.op_args
        err = self.checks(m).error()

        # ------------------------------------------------------------ state
        ptr_w = isa.ADDR_BITS + 1
        # request side
        rq_kind = Signal(2)
        rq_row = Signal(isa.ROWS_BITS + 1)
        rq_col = Signal(isa.DIM_BITS + 1)  # element index of the chunk in its row
        rq_h = Signal(ptr_w)
        rq_acc = Signal(ptr_w)
        rq_sc = Signal(ptr_w)
        # response side
        rs_kind = Signal(2)
        rs_row = Signal(isa.ROWS_BITS + 1)
        rs_col = Signal(isa.DIM_BITS + 1)
        rs_dst = Signal(ptr_w)
        sx_mant = Signal(isa.SCALE_MANT_BITS)
        sx_shift = Signal(signed(isa.SCALE_SHIFT_BITS))
        h_beat = Signal(8 * W)
        # row scale, registered one cycle after sx
        sc_mant = Signal(B)
        sc_s = Signal(signed(isa.SCALE_SHIFT_BITS + 4))
        # stage 1: products, h, the row's shift and where the chunk goes
        s1_valid = Signal()
        s1_p = [Signal(signed(32 + B + 1), name=f"s1_p{i}") for i in range(L)]
        s1_h = Signal(8 * W)
        s1_s = Signal.like(sc_s)
        s1_addr = Signal(ptr_w)
        s1_len = Signal(range(W + 1))
        # output register (drives wr)
        o_valid = Signal()
        o_data = Signal(8 * W)
        o_addr = Signal(ptr_w)
        o_len = Signal(range(W + 1))

        mant, sh = scale_mul(m, sx_mant, sx_shift, a.c_mant, a.c_shift, B, "sc")
        m.d.sync += [sc_mant.eq(mant), sc_s.eq(sh - nc.in_frac_bits)]

        # stage 2: requant of each product, add h, saturate (combinational)
        s2 = []
        for i in range(L):
            d = requant(m, s1_p[i], Const(1, 1), s1_s, nc.in_bits, rc.shift_max, f"rq{i}")
            hv = s1_h[32 * i : 32 * i + 32].as_signed()
            lane = Signal(signed(32), name=f"out{i}")  # int32 in memory
            m.d.comb += lane.eq(saturate(m, hv + d, nc.in_bits, f"sum{i}"))
            s2.append(lane)

        with m.FSM():
            passed = self.check_states(m, ("CHECK", err))
            with m.State("RUN"):
                # -------------------------------------------------- requests
                rq_left = Signal(isa.DIM_BITS + 1)
                rq_n = Signal(range(L + 1))  # elements in the requested chunk
                m.d.comb += [rq_left.eq(a.dim - rq_col), rq_n.eq(Mux(rq_left > L, L, rq_left))]
                m.d.comb += self.rd.valid.eq(rq_row < a.rows)
                with m.Switch(rq_kind):
                    with m.Case(_SCALE):
                        m.d.comb += [
                            self.rd.payload.addr.eq(rq_sc),
                            self.rd.payload.len.eq(isa.SCALE_RECORD_BYTES),
                        ]
                    with m.Case(_H):
                        m.d.comb += [
                            self.rd.payload.addr.eq(rq_h),
                            self.rd.payload.len.eq(rq_n * 4),
                        ]
                    with m.Default():
                        m.d.comb += [
                            self.rd.payload.addr.eq(rq_acc),
                            self.rd.payload.len.eq(rq_n * 4),
                        ]
                with m.If(self.rd.valid & self.rd.ready):
                    with m.Switch(rq_kind):
                        with m.Case(_SCALE):
                            m.d.sync += [rq_sc.eq(rq_sc + isa.SCALE_RECORD_BYTES), rq_kind.eq(_H)]
                        with m.Case(_H):
                            m.d.sync += [rq_h.eq(rq_h + rq_n * 4), rq_kind.eq(_ACC)]
                        with m.Default():
                            m.d.sync += rq_acc.eq(rq_acc + rq_n * 4)
                            with m.If(rq_left == rq_n):  # last chunk of the row
                                m.d.sync += [
                                    rq_col.eq(0),
                                    rq_row.eq(rq_row + 1),
                                    rq_kind.eq(_SCALE),
                                ]
                            with m.Else():
                                m.d.sync += [rq_col.eq(rq_col + L), rq_kind.eq(_H)]

                # -------------------------------------------------- output register
                o_free = ~o_valid | self.wr.ready
                m.d.comb += [
                    self.wr.valid.eq(o_valid),
                    self.wr.payload.addr.eq(o_addr),
                    self.wr.payload.len.eq(o_len),
                    self.wr.payload.data.eq(o_data),
                ]
                with m.If(o_valid & self.wr.ready):
                    m.d.sync += o_valid.eq(0)
                with m.If(s1_valid & o_free):
                    m.d.sync += [
                        o_valid.eq(1),
                        o_data.eq(Cat(*s2)),
                        o_addr.eq(s1_addr),
                        o_len.eq(s1_len),
                    ]
                s1_free = ~s1_valid | o_free

                # -------------------------------------------------- responses
                rs_left = Signal(isa.DIM_BITS + 1)
                rs_n = Signal(range(L + 1))
                m.d.comb += [rs_left.eq(a.dim - rs_col), rs_n.eq(Mux(rs_left > L, L, rs_left))]
                rs_more = rs_row < a.rows
                with m.Switch(rs_kind):
                    with m.Case(_SCALE):
                        m.d.comb += self.rdata.ready.eq(rs_more)
                        with m.If(self.rdata.valid & rs_more):
                            m.d.sync += [
                                sx_mant.eq(self.rdata.payload[:16]),
                                sx_shift.eq(self.rdata.payload[16:32]),
                                rs_kind.eq(_H),
                            ]
                    with m.Case(_H):
                        m.d.comb += self.rdata.ready.eq(1)
                        with m.If(self.rdata.valid):
                            m.d.sync += [h_beat.eq(self.rdata.payload), rs_kind.eq(_ACC)]
                    with m.Default():
                        m.d.comb += self.rdata.ready.eq(s1_free)
                        with m.If(self.rdata.valid & s1_free):
                            for i in range(L):
                                av = self.rdata.payload[32 * i : 32 * i + 32].as_signed()
                                m.d.sync += s1_p[i].eq(av * sc_mant)
                            m.d.sync += [
                                s1_h.eq(h_beat),
                                s1_s.eq(sc_s),
                                s1_addr.eq(rs_dst),
                                s1_len.eq(rs_n * 4),
                                rs_dst.eq(rs_dst + rs_n * 4),
                            ]
                            with m.If(rs_left == rs_n):
                                m.d.sync += [
                                    rs_col.eq(0),
                                    rs_row.eq(rs_row + 1),
                                    rs_kind.eq(_SCALE),
                                ]
                            with m.Else():
                                m.d.sync += [rs_col.eq(rs_col + L), rs_kind.eq(_H)]
                # stage 1 holds its chunk until the output register takes it
                acc_fire = (rs_kind == _ACC) & self.rdata.valid & s1_free
                with m.If(acc_fire):
                    m.d.sync += s1_valid.eq(1)
                with m.Elif(s1_valid & o_free):
                    m.d.sync += s1_valid.eq(0)

                with m.If(~rs_more & ~s1_valid & ~o_valid):
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["CHECK"]):
            m.d.sync += [
                rq_kind.eq(_SCALE),
                rq_row.eq(0),
                rq_col.eq(0),
                rq_h.eq(a.h),
                rq_acc.eq(a.acc),
                rq_sc.eq(a.src_scale),
                rs_kind.eq(_SCALE),
                rs_row.eq(0),
                rs_col.eq(0),
                rs_dst.eq(a.dst),
                s1_valid.eq(0),
                o_valid.eq(0),
            ]
        return m
