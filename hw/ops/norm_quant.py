"""NORM_QUANT engine: RMSNorm + INT8 quantization of token rows (golden:
``Executor._op_norm_quant`` -> ``golden.model.op_norm_quant`` ->
``golden.rmsnorm.rmsnorm_quant``).

Per row t of src (int32 [rows, dim], Q15.16) and gamma (int16 [dim]): the codes
``x_q[t]`` (int8 [dim]) at ``dst + t*dim`` and the scale record ``(mant, shift - g_exp)``
at ``dst_scale + 4*t`` (a zero scale stays (0, 0); a shift outside int16 is SCALE_RANGE).
The arithmetic is ``hw.rmsnorm.RMSNormQuant`` (bit-exact with ``rmsnorm_quant``; two
passes over each row, which the engine reads twice), fed the command's constants
eps_term, c_mant, c_exp.

Checks: the NORM_QUANT contract (``golden.isa.CONTRACTS``)
---------------------------------------------------------
1. rows >= 1, dim >= 1, and the engine limit dim <= ``max_len`` (``LIMITS``): BAD_DIM;
2. (golden only, ``GOLDEN_ONLY``: its data check "norm constants", below);
3. src: ALIGN (4), ADDR_RANGE (rows*dim*4 bytes); gamma: ALIGN (2), ADDR_RANGE (dim*2);
4. dst: ADDR_RANGE (rows*dim bytes; int8 is never misaligned);
5. its data check "records", SCALE_RANGE: found per row, when the row's scale leaves the
   block;
6. dst_scale: ALIGN (4), ADDR_RANGE (rows*4).
Golden writes all of dst before it packs the records (SCALE_RANGE) and only then checks
dst_scale. The engine checks dst_scale up front with the others, so that nothing is
written before an argument error: when dst_scale is bad it runs the whole command *dry*
(computing every row, writing nothing) and reports SCALE_RANGE if a row has one, else
the dst_scale error -- the same code as golden in every case. The byte counts, spans,
conditions and error codes are registered in turn (``ArgChecks(registered=3)``): the
check state reads them in the fifth cycle of the command.

Micro-architecture (L = ``lanes``, ``AccelConfig.norm_lanes``; L1 = ``stat_lanes``,
``AccelConfig.norm_stat_lanes``: 8 and 4 on the kv260 point)
------------------------------------------------------------------------------------
* Reads: per row, pass 1 then pass 2, each the row in chunks of ``2L`` elements: a src
  read (``n*4`` bytes) and a gamma read (``n*2`` bytes) per chunk, ``n = min(2L, dim -
  pos)``; responses carry the chunk from byte 0 and zeros beyond ``n`` (the zero padding
  the block wants). Reads run ahead without limit (into pass 2 and the next rows; the
  memory applies backpressure), so pass 2's latency hides behind the row's sequencer.
* ``hw.ops.elem.pair_reader`` (src chunk, gamma chunk) -> two beats of L (x, gamma)
  pairs per chunk into ``RMSNormQuant`` (a short chunk's second beat is zero padding;
  ``last`` on a pass's final beat): pass 1 takes a beat in L/L1 cycles, pass 2 one per
  cycle.
* Writes: the block's int8 beats in pairs: one write of the chunk's codes (``n``
  bytes), then after the row's last one its 4-byte record (the shift less g_exp and its
  range check in two registered steps). One output register holds the write offered.
* An abort (SCALE_RANGE) stops reads and the datapath, drains outstanding reads and the
  offered write, then reports; the block is reset at the start of every command, so an
  aborted command leaves nothing behind.

Cycles (no stalls; lat = latency of the first read; B = 2 * ceil(dim / 2L) beats a pass)
--------------------------------------------------------------------------------------
Per row: pass 1 (B beats, L / L1 cycles each: the block's statistics lanes set the pace;
with L1 = L the pair reader's 2 cycles per chunk), the block's pass-1 pipeline and
sequencer, pass 2 (B beats, one per cycle); then once the pass-2 lanes and the last
writes (``expected_cycles``; measured exactly by ``sim/test_op_norm_quant.py``)::

    cycles = rows * (B * L / L1 + B + ROW_OVERHEAD) + FIXED_CYCLES + lat
    ROW_OVERHEAD = row_overhead(cfg, L1) = pass1_depth(L1) + 1 + seq_cycles (40 for L1 = 4)
    FIXED_CYCLES + pass2_cycles = 11 + 9 (the checks, the pass-2 lanes, the code and
    record writes, done)

BitNet-0.73B (L = 8, L1 = 4, one row per command): dim 1536 (the hidden size, 3 commands
per layer) 384 + 192 + 40 + 20 + lat = 636 + lat cycles, dim 4096 (the FFN width, 1 per
layer) 1024 + 512 + 40 + 20 + lat = 1596 + lat. The memory carries 6 bytes per element:
24 bytes per cycle in pass 1, 48 in pass 2, plus 8 of writes.

Differences from the golden backend
-----------------------------------
* ``dim > max_len`` (``AccelConfig.max_dim``: 4096 = BitNet-0.73B's FFN width) is BAD_DIM
  here: it sizes the block's exact sum of squares. Golden takes any 16-bit dim.
* Golden checks (eps_term, c_mant, c_exp) against ``norm_constants(dim)`` and reports
  BAD_OPERAND on a mismatch (after BAD_DIM, before src); the RTL cannot recompute those
  host constants (a square root and a float eps) and uses the command's values as given.
* Golden reads all of src and gamma before writing; the engine streams (and reads each
  row twice), so a dst or dst_scale overlapping src or gamma (no runtime command does
  that) may give different results.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.hdl import ResetInserter

from golden import isa
from golden.config import DEFAULT, DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.rmsnorm import RMSNormQuant, pass1_depth, pass2_cycles, seq_cycles

from .base import Engine, shift_fits_record
from .elem import Chunks, Rows, pair_reader

FIXED_CYCLES = 11  # the checks, the code and record writes, done (+ the pass-2 lanes)


def row_overhead(cfg: DatapathConfig = DEFAULT, stat_lanes: int = 4) -> int:
    """Cycles per row beyond its passes' beats: the block's pass-1 pipeline and its
    sequencer (``hw.rmsnorm``)."""
    return pass1_depth(stat_lanes) + 1 + seq_cycles(cfg.norm, cfg.quant)


def expected_cycles(
    rows: int,
    dim: int,
    lanes: int,
    stat_lanes: int,
    cfg: DatapathConfig = DEFAULT,
    lat: int = 1,
) -> int:
    """Stall-free cycles of one NORM_QUANT command (module docstring formula); ``lat`` is
    the latency of the first read."""
    beats = 2 * -(-dim // (2 * lanes))  # two per chunk
    p1 = beats * (lanes // stat_lanes)
    fixed = FIXED_CYCLES + pass2_cycles(cfg.norm, cfg.quant)
    return rows * (p1 + beats + row_overhead(cfg, stat_lanes)) + fixed + lat


class NormQuantEngine(Engine):
    """NORM_QUANT op engine (see module docstring)."""

    OPCODE = Opcode.NORM_QUANT
    DESIGN_FIELDS = {"lanes": "norm_lanes", "stat_lanes": "norm_stat_lanes", "max_len": "max_dim"}
    LIMITS = ("dim <= max_len",)  # the block's sum of squares
    GOLDEN_ONLY = ("norm constants",)  # host constants, taken as given

    def __init__(
        self,
        cfg: DatapathConfig,
        dma_bytes: int,
        *,
        lanes: int,
        stat_lanes: int,
        max_len: int,
    ):
        if not isinstance(cfg, DatapathConfig):
            raise ValueError(f"cfg: expected a DatapathConfig, got {type(cfg).__name__}")
        if cfg.norm.in_bits != 32 or cfg.norm.gamma_bits != 16 or cfg.quant.act_bits != 8:
            raise ValueError(
                "cfg: NORM_QUANT's memory formats are int32 src, int16 gamma, "
                "int8 dst (norm.in_bits 32, norm.gamma_bits 16, quant.act_bits 8)"
            )
        isa.check_datapath(cfg)
        for name, v, lo in (
            ("lanes", lanes, 1),
            ("stat_lanes", stat_lanes, 1),
            ("max_len", max_len, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if lanes % stat_lanes:
            raise ValueError(f"stat_lanes: {stat_lanes} does not divide lanes ({lanes})")
        if dma_bytes < 8 * lanes:
            raise ValueError(
                f"dma_bytes: {dma_bytes} cannot carry a chunk of 2 * {lanes} int32 "
                f"elements (needs >= {8 * lanes})"
            )
        if max_len < lanes or max_len >= 1 << isa.DIM_BITS:
            raise ValueError(
                f"max_len: expected lanes ({lanes}) .. {(1 << isa.DIM_BITS) - 1}, got {max_len}"
            )
        self.lanes = lanes
        self.stat_lanes = stat_lanes
        self.max_len = max_len
        self.block_len = -(-max_len // (2 * lanes)) * 2 * lanes
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        C = 2 * L  # elements per chunk
        a = self.op_args
        nc = self.cfg.norm
        XB, GB = nc.in_bits, nc.gamma_bits  # element widths in memory (int32 src, int16 gamma)
        XS, GS = XB // 8, GB // 8
        REC = isa.SCALE_RECORD_BYTES
        ptr_w = isa.ADDR_BITS + 1

        # datapath: reset at the start of every command (an abort may leave a row inside)
        dp_rst = Signal()
        # (a row reaches the block as 2 beats per chunk: max_len rounded up to chunks)
        nq = RMSNormQuant(
            nc, self.cfg.quant, lanes=L, stat_lanes=self.stat_lanes, max_len=self.block_len
        )
        m.submodules.nq = ResetInserter(dp_rst)(nq)
        m.d.comb += [nq.eps_term.eq(a.eps_term), nq.c_mant.eq(a.c_mant), nq.c_exp.eq(a.c_exp)]

        run = Signal()  # the RUN state, as a register (set by begin, cleared by finish)
        begin = Signal()
        dry = Signal()  # dst_scale bad: compute, write nothing
        dry_err = Signal(ErrorCode)
        abort = Signal()  # SCALE_RANGE found

        # ------------------------------------------------ reads: rows x 2 passes x chunks
        def walker(name, advance):
            rows, ch = Rows(a.rows, name), Chunks(a.dim, C, name)
            is_g = Signal(name=f"{name}_is_g")  # the chunk's gamma read is next
            p2 = Signal(name=f"{name}_p2")
            with m.If(begin):
                m.d.sync += rows.first() + ch.first() + [is_g.eq(0), p2.eq(0)]
            with m.Elif(advance):
                with m.If(~is_g):
                    m.d.sync += is_g.eq(1)
                with m.Else():
                    m.d.sync += is_g.eq(0)
                    with m.If(ch.end):
                        m.d.sync += ch.first() + [p2.eq(~p2)]
                        with m.If(p2):
                            m.d.sync += rows.advance()
                    with m.Else():
                        m.d.sync += ch.advance()
            return rows, ch, is_g, p2

        rq_adv = Signal()
        rq_rows, rq_ch, rq_g, rq_p2 = walker("rq", rq_adv)
        src_row = Signal(ptr_w)
        x_ptr, g_ptr = Signal(ptr_w), Signal(ptr_w)
        row_bytes = Signal(isa.DIM_BITS + 3)
        m.d.comb += row_bytes.eq(a.dim * XS)
        m.d.comb += [
            self.rd.valid.eq(run & ~abort & rq_rows.more),
            self.rd.payload.addr.eq(Mux(rq_g, g_ptr, x_ptr)),
            self.rd.payload.len.eq(Mux(rq_g, rq_ch.n * GS, rq_ch.n * XS)),
            rq_adv.eq(self.rd.valid & self.rd.ready),
        ]
        with m.If(begin):
            m.d.sync += [src_row.eq(a.src), x_ptr.eq(a.src), g_ptr.eq(a.gamma)]
        with m.Elif(rq_adv):
            with m.If(~rq_g):
                m.d.sync += x_ptr.eq(x_ptr + rq_ch.n * XS)
            with m.Elif(rq_ch.end):  # a pass ends: both pointers back to the row start
                m.d.sync += g_ptr.eq(a.gamma)
                with m.If(rq_p2):  # the next row
                    m.d.sync += [src_row.eq(src_row + row_bytes), x_ptr.eq(src_row + row_bytes)]
                with m.Else():
                    m.d.sync += x_ptr.eq(src_row)
            with m.Else():
                m.d.sync += g_ptr.eq(g_ptr + rq_ch.n * GS)
        # reads issued and answered (an abort waits until they are equal), counted a
        # cycle after the events (registered: the response side's handshake is deep):
        # idle = the counts (events up to two cycles back) equal, no event in the cycle
        # before, no read issued now (none is issued while abort is set)
        n_iss, n_ans = Signal(32, name="n_iss"), Signal(32, name="n_ans")
        ev_iss, ev_take, ev_drain = (
            Signal(name="ev_iss"),
            Signal(name="ev_take"),
            Signal(name="ev_drain"),
        )
        ev_ans = ev_take | ev_drain  # a response taken by the reader, or drained (abort)
        m.d.sync += ev_iss.eq(rq_adv)
        with m.If(ev_iss):
            m.d.sync += n_iss.eq(n_iss + 1)
        with m.If(ev_ans):
            m.d.sync += n_ans.eq(n_ans + 1)
        rd_idle = Signal()
        m.d.sync += rd_idle.eq((n_iss == n_ans) & ~ev_iss & ~ev_ans & ~rq_adv)

        # responses -> pair reader -> the block
        rs_adv = Signal()
        rs_rows, rs_ch, rs_g, _ = walker("rs", rs_adv)
        rd = pair_reader(m, self.rdata.payload, L, XB, GB, "rd")
        # a response is always one this command asked for (the requests stop with the
        # rows, and a command ends only when every read is answered): no run / rows term
        # on the block's valid (it crosses into the block: the depth rule)
        live = ~abort & self.rdata.valid
        m.d.comb += [
            rd.a_valid.eq(live & ~rs_g),
            rd.b_valid.eq(live & rs_g),
            rd.n.eq(rs_ch.n),
            rd.last.eq(rs_ch.end),
            rd.ready.eq(nq.x.ready),
            # after an abort: drain the outstanding responses
            self.rdata.ready.eq(Mux(abort, run, rd.take)),
            rs_adv.eq(rd.take),
        ]
        m.d.sync += [ev_take.eq(rd.take), ev_drain.eq(abort & run & self.rdata.valid)]
        m.d.comb += [
            nq.x.valid.eq(rd.valid & ~abort),
            nq.x.payload.last.eq(rd.last_out & rd.half),
        ]
        for i in range(L):
            m.d.comb += [nq.x.payload.x[i].eq(rd.a[i]), nq.x.payload.gamma[i].eq(rd.b[i])]

        # ------------------------------------------------ codes and records out
        # the block's beats pass a one-beat skid register, so that the block's ready is
        # a register (its stall reaches far back: the lanes, the reader, the walkers)
        yp = nq.y.payload
        sk_v = Signal()
        sk = Signal.like(yp.as_value(), name="skid")
        # from registers only, not the FSM (outside RUN the block holds nothing: it is
        # reset in CHECK and a command ends with it empty or aborted)
        nq_ready = ~abort & ~sk_v
        m.d.comb += nq.y.ready.eq(nq_ready)
        cur_v = sk_v | nq.y.valid
        cur_bits = Mux(sk_v, sk, yp.as_value())
        y = yp.shape()(cur_bits)  # the beat now handled: the skid's, else the block's

        out_rows = Rows(a.rows, "out")
        out_ptr = Signal(ptr_w)  # dst byte address of the next chunk
        out_left = Signal(isa.DIM_BITS + 1)  # bytes of the row not yet written
        rec_ptr = Signal(ptr_w)
        half = Signal()  # the next beat is a chunk's second (a row's last beat is one)
        held = Signal(8 * L)
        complete = half

        wo_valid = Signal()
        wo_addr = Signal(isa.ADDR_BITS)
        wo_len = Signal(range(self.signature.dma_bytes + 1))
        wo_data = Signal(8 * C)
        m.d.comb += [
            self.wr.valid.eq(run & wo_valid),
            self.wr.payload.addr.eq(wo_addr),
            self.wr.payload.len.eq(wo_len),
            self.wr.payload.data.eq(wo_data),
        ]
        wo_free = ~wo_valid | self.wr.ready

        # the row's record: (mant, shift - g_exp), range-checked two cycles after the
        # row's last beat (a zero scale stays (0, 0))
        rec_m = Signal(isa.SCALE_MANT_BITS)
        rec_raw = Signal(signed(len(y.scale_shift)))
        rec_sh = Signal(signed(len(y.scale_shift) + 2))
        rec_p1, rec_p2 = Signal(), Signal()  # the record's two steps
        rec_v = Signal()  # a record waits to be written
        rec_data = Signal(isa.SCALE_RECORD.size)

        can = (
            run & ~abort & (dry | ((~complete | wo_free) & (~y.last | ~(rec_v | rec_p1 | rec_p2))))
        )
        y_fire = cur_v & can
        # a beat of the block that is not handled at once waits in the skid register
        with m.If(sk_v & y_fire):
            m.d.sync += sk_v.eq(0)
        with m.If(nq.y.valid & nq_ready & ~y_fire):
            m.d.sync += [sk_v.eq(1), sk.eq(yp.as_value())]
        code_load = Signal()
        m.d.comb += code_load.eq(y_fire & complete & ~dry)
        clen = Mux(y.last, out_left, C)
        with m.If(y_fire):
            with m.If(complete):
                m.d.sync += [half.eq(0), out_ptr.eq(out_ptr + clen), out_left.eq(out_left - C)]
                with m.If(y.last):
                    m.d.sync += [
                        out_left.eq(a.dim),
                        rec_m.eq(y.scale_mant),
                        rec_raw.eq(y.scale_shift),
                    ]
                    m.d.sync += [rec_p1.eq(1)] + out_rows.advance()
            with m.Else():
                m.d.sync += [held.eq(y.data.as_value()), half.eq(1)]
        with m.If(rec_p1):
            m.d.sync += [
                rec_sh.eq(Mux(rec_m == 0, 0, rec_raw - a.g_exp)),
                rec_p1.eq(0),
                rec_p2.eq(1),
            ]
        with m.If(rec_p2):
            m.d.sync += rec_p2.eq(0)
            with m.If(~shift_fits_record(rec_sh)):
                m.d.sync += abort.eq(1)
            with m.Elif(~dry):
                m.d.sync += [
                    rec_v.eq(1),
                    rec_data.eq(Cat(rec_m, rec_sh[: isa.SCALE_SHIFT_BITS])),
                ]

        with m.If(code_load):
            m.d.sync += [
                wo_valid.eq(1),
                wo_addr.eq(out_ptr),
                wo_len.eq(clen),
                wo_data.eq(Cat(held, y.data.as_value())),
            ]
        with m.Elif(rec_v & wo_free):
            m.d.sync += [
                wo_valid.eq(1),
                wo_addr.eq(rec_ptr),
                wo_len.eq(REC),
                wo_data.eq(rec_data),
                rec_v.eq(0),
                rec_ptr.eq(rec_ptr + REC),
            ]
        with m.Elif(self.wr.valid & self.wr.ready):
            m.d.sync += wo_valid.eq(0)

        # ------------------------------------------------ control
        chk = self.checks(m, registered=3)
        err, err_scale = chk.error_reg(stop="records"), chk.error_reg(start="records")
        with m.FSM() as fsm:
            passed = self.check_states(
                m, ("SPAN", None), ("SPAN2", None), ("COND", None), ("CHECK", err)
            )
            with m.State("RUN"):
                with m.If(abort):
                    with m.If(rd_idle & ~wo_valid):
                        self.finish(m, ErrorCode.SCALE_RANGE)
                        m.d.sync += run.eq(0)
                with m.Elif(~out_rows.more & ~rec_p1 & ~rec_p2 & ~rec_v & ~wo_valid & ~sk_v):
                    self.finish(m, dry_err)
                    m.d.sync += run.eq(0)
        m.d.comb += [begin.eq(passed["CHECK"]), dp_rst.eq(fsm.ongoing("CHECK"))]
        with m.If(begin):
            m.d.sync += out_rows.first()
            m.d.sync += [
                run.eq(1),
                dry.eq(err_scale != ErrorCode.NONE),
                dry_err.eq(err_scale),
                out_ptr.eq(a.dst),
                out_left.eq(a.dim),
                rec_ptr.eq(a.dst_scale),
            ]
            # cleared: the abort flag, the read counters, every valid and phase of the datapath
            cleared = (abort, n_iss, n_ans, ev_iss, ev_take, ev_drain)
            cleared += (half, wo_valid, rec_v, rec_p1, rec_p2, sk_v, rd.phase)
            m.d.sync += [r.eq(0) for r in cleared]
        return m
