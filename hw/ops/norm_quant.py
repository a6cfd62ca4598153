"""NORM_QUANT engine: RMSNorm + INT8 quantization of token rows (golden:
``Executor._op_norm_quant`` -> ``golden.model.op_norm_quant`` ->
``golden.rmsnorm.rmsnorm_quant``).

Per row t of src (int32 [rows, dim], Q15.16) and gamma (int16 [dim]): the codes
``x_q[t]`` (int8 [dim]) at ``dst + t*dim`` and the scale record ``(mant, shift - g_exp)``
at ``dst_scale + 4*t`` (a zero scale stays (0, 0); a shift outside int16 is SCALE_RANGE).
The arithmetic is ``hw.rmsnorm.RMSNormQuant`` (reused unchanged, bit-exact with
``rmsnorm_quant``), fed the command's constants eps_term, c_mant, c_exp.

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
the dst_scale error -- the same code as golden in every case.

Micro-architecture
------------------
* Reads: a row is split into groups of ``Gs = lanes * (dma_bytes // (4*lanes))``
  elements (32 = 4 beats for 8 lanes and a 128-byte DMA port); per group one src read
  (``n*4`` bytes) and one gamma read (``n*2`` bytes), ``n = min(Gs, dim - pos)``, each
  response carrying the group's elements from its byte 0. Reads run ahead of the
  datapath (into the next rows too) by at most ``fifo_groups`` groups: a group's credit
  is taken when its src read is issued and returned when its last beat enters the block,
  so the two response FIFOs (src, gamma; ``fifo_groups`` deep) can never overflow and
  ``rdata`` is always accepted.
* Beats: each group leaves the FIFOs as ``Gs/lanes`` beats of ``lanes`` (x, gamma) pairs
  into ``RMSNormQuant``; lanes at or beyond ``dim`` are forced to zero (the host pads
  nothing; zeros change neither the sum of squares nor the absmax), and ``last`` marks
  the row's final beat.
* Writes: the block's int8 output beats are packed into a ``dma_bytes``-wide
  accumulator; a chunk of ``min(dma_bytes, bytes left in the row)`` bytes goes out when
  it is full or the row ends (one write per ``dma_bytes/lanes`` beats), then the row's
  4-byte scale record. One output register holds the write being offered, so the
  accumulator keeps filling while it waits.
* An abort (SCALE_RANGE) stops reads and the datapath, waits for outstanding reads and
  the offered write, then reports; the datapath (block + FIFOs) is reset at the start of
  every command, so an aborted command leaves nothing behind.

Cycles (no stalls; lat = latency of the first read; B = ceil(dim / lanes))
---------------------------------------------------------------------------
Rows stream back to back: reads run ahead into the next rows and the block starts a
row's pass 1 as soon as the previous row's pass 2 ends. The period is set by the
quantizer inside the block (``hw.quant``): fill (= the block's pass 2, B) + flush 2 +
setup 1 + norm 1 + divide ``recip_bits`` + drain B, its next fill waiting for the drain.
With ``Gs/lanes >= 2`` beats per group the reads (2 per group) keep up with one beat
per cycle, so the DMA never sets the pace. For ``rows`` rows with a nonzero product
(an all-zero row skips the divide)::

    cycles = rows * (2*B + ROW_OVERHEAD) + B + FIXED_CYCLES + lat
    ROW_OVERHEAD = row_overhead(cfg) = 4 + quant.recip_bits (21),  FIXED_CYCLES = 27

(``expected_cycles``; measured exactly by ``sim/test_op_norm_quant.py``). The fixed part
is the first row's pass 1 and sequencer, the quantizer's output pipeline and the final
chunk + record writes. Streaming phases move ``lanes`` elements per cycle; per row that
is ~``lanes/2`` (two passes): 8 lanes, dim 1536: 405 cycles per row (3.8 elements per
cycle; 625 cycles for one row), dim 4096: 1045 (3.9). The reads need ``6*dim/dma_bytes``
beats per row, a fraction of the row period; the writes ``dim/dma_bytes + 1``.

Lanes: 8 by default. 16 would double the rate (~7 elements per cycle per row), but
``hw.rmsnorm.RMSNormQuant`` builds its per-beat max/min of the products as a chain of
nested ``Mux`` expressions that reuse the previous one twice, which Amaranth expands
into a tree exponential in ``lanes`` (RTLIL: 0.5 MB at 8 lanes, 70 MB at 16; the Python
simulator takes ~1 min to elaborate it). With that chain built from Signals, ``lanes=16``
is a drop-in (every part of this engine is generic in lanes).

Differences from the golden backend
-----------------------------------
* ``dim > max_len`` (constructor, default 4096 = BitNet-0.73B's FFN width, the longest
  row it normalizes; the hidden size is 1536) is BAD_DIM here: the block buffers a whole
  row (two ``ceil(max_len/lanes)``-word memories). Golden takes any 16-bit dim.
* Golden checks (eps_term, c_mant, c_exp) against ``norm_constants(dim)`` and reports
  BAD_OPERAND on a mismatch (after BAD_DIM, before src); the RTL cannot recompute those
  host constants (a square root and a float eps) and uses the command's values as given.
* Golden reads all of src and gamma before writing; the engine streams (a row's codes
  and record are written while later rows are read), so a dst or dst_scale overlapping
  src or gamma (no runtime command does that) may give different results.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.hdl import ResetInserter
from amaranth.lib import fifo

from golden import isa
from golden.config import DEFAULT, DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.rmsnorm import RMSNormQuant

from .base import Engine, shift_fits_record

DEFAULT_LANES = 8  # see "Lanes" in the module docstring
DEFAULT_MAX_LEN = 4096  # BitNet-0.73B: FFN 4096 (ffn_sub_norm), hidden 1536
# read run-ahead in groups: 8 groups of 4 beats (8 lanes) hide ~30 cycles of read latency
DEFAULT_FIFO_GROUPS = 8

FIXED_CYCLES = 27  # see the module docstring's cycle formula


def row_overhead(cfg: DatapathConfig = DEFAULT) -> int:
    """Cycles per row beyond its 2*B beats: the quantizer's flush, setup, norm, divide."""
    return 4 + cfg.quant.recip_bits


def expected_cycles(
    rows: int, dim: int, lanes: int = DEFAULT_LANES, cfg: DatapathConfig = DEFAULT, lat: int = 1
) -> int:
    """Stall-free cycles of one NORM_QUANT command whose rows all have a nonzero product
    (module docstring formula); ``lat`` is the latency of the first read."""
    b = -(-dim // lanes)
    return rows * (2 * b + row_overhead(cfg)) + b + FIXED_CYCLES + lat


class NormQuantEngine(Engine):
    """NORM_QUANT op engine (see module docstring)."""

    OPCODE = Opcode.NORM_QUANT
    LIMITS = ("dim <= max_len",)  # the block buffers a whole row
    GOLDEN_ONLY = ("norm constants",)  # host constants, taken as given

    def __init__(
        self,
        cfg: DatapathConfig,
        dma_bytes: int,
        *,
        lanes: int = DEFAULT_LANES,
        max_len: int = DEFAULT_MAX_LEN,
        fifo_groups: int = DEFAULT_FIFO_GROUPS,
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
            ("max_len", max_len, 1),
            ("fifo_groups", fifo_groups, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if dma_bytes < 4 * lanes:
            raise ValueError(
                f"dma_bytes: {dma_bytes} cannot carry one beat of {lanes} int32 "
                f"elements (needs >= {4 * lanes})"
            )
        if max_len < lanes or max_len >= 1 << isa.DIM_BITS:
            raise ValueError(
                f"max_len: expected lanes ({lanes}) .. {(1 << isa.DIM_BITS) - 1}, got {max_len}"
            )
        self.lanes = lanes
        self.max_len = max_len
        self.fifo_groups = fifo_groups
        self.group = lanes * (dma_bytes // (4 * lanes))  # Gs elements per read pair
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        L, Gs, D = self.lanes, self.group, self.fifo_groups
        NBG = Gs // L  # beats per group
        CH = W // L  # output beats per write chunk
        a = self.op_args
        nc, qc = self.cfg.norm, self.cfg.quant
        XB, GB = nc.in_bits, nc.gamma_bits  # element widths in memory (int32 src, int16 gamma)
        REC = isa.SCALE_RECORD_BYTES

        # datapath: reset at the start of every command (an abort may leave a row inside)
        dp_rst = Signal()
        nq = RMSNormQuant(nc, qc, lanes=L, max_len=self.max_len)
        src_q = fifo.SyncFIFO(width=Gs * XB, depth=D)
        gam_q = fifo.SyncFIFO(width=Gs * GB, depth=D)
        m.submodules.nq = ResetInserter(dp_rst)(nq)
        m.submodules.src_q = ResetInserter(dp_rst)(src_q)
        m.submodules.gam_q = ResetInserter(dp_rst)(gam_q)
        m.d.comb += [nq.eps_term.eq(a.eps_term), nq.c_mant.eq(a.c_mant), nq.c_exp.eq(a.c_exp)]

        run = Signal()  # RUN state
        dry = Signal()  # dst_scale bad: compute, write nothing
        dry_err = Signal(ErrorCode)
        abort = Signal()  # SCALE_RANGE found

        # ------------------------------------------------ reads (src, gamma per group)
        rq_row = Signal(isa.ROWS_BITS + 1)
        rq_pos = Signal(range(self.max_len + 1))
        rq_gam = Signal()  # the group's gamma read is next
        src_ptr = Signal(isa.ADDR_BITS + 1)
        held = Signal(range(D + 1))  # groups requested and not yet consumed
        rd_out = Signal(range(2 * D + 1))  # reads not yet answered
        rq_left = Signal(range(self.max_len + 1))
        m.d.comb += rq_left.eq(a.dim - rq_pos)
        rq_n = Mux(rq_left > Gs, Gs, rq_left)
        m.d.comb += [
            self.rd.valid.eq(run & ~abort & (rq_row < a.rows) & (rq_gam | (held < D))),
            self.rd.payload.addr.eq(Mux(rq_gam, a.gamma + rq_pos * (GB // 8), src_ptr)),
            self.rd.payload.len.eq(Mux(rq_gam, rq_n * (GB // 8), rq_n * (XB // 8))),
        ]
        rd_fire = self.rd.valid & self.rd.ready
        with m.If(rd_fire):
            with m.If(rq_gam):
                m.d.sync += rq_gam.eq(0)
                with m.If(rq_left <= Gs):
                    m.d.sync += [rq_pos.eq(0), rq_row.eq(rq_row + 1)]
                with m.Else():
                    m.d.sync += rq_pos.eq(rq_pos + Gs)
            with m.Else():
                m.d.sync += [rq_gam.eq(1), src_ptr.eq(src_ptr + rq_n * (XB // 8))]

        # responses alternate src, gamma (request order); credits guarantee room
        rs_gam = Signal()
        rs_fire = Signal()
        m.d.comb += [
            self.rdata.ready.eq(run),
            rs_fire.eq(self.rdata.valid & self.rdata.ready),
            src_q.w_data.eq(self.rdata.payload[: Gs * XB]),
            gam_q.w_data.eq(self.rdata.payload[: Gs * GB]),
            src_q.w_en.eq(rs_fire & ~rs_gam),
            gam_q.w_en.eq(rs_fire & rs_gam),
        ]
        with m.If(rs_fire):
            m.d.sync += rs_gam.eq(~rs_gam)
        m.d.sync += rd_out.eq(rd_out + rd_fire - rs_fire)

        # ------------------------------------------------ beats into the block
        em_pos = Signal(range(self.max_len + 1))  # row offset of the group at the head
        em_j = Signal(range(max(NBG, 2)))  # beat within the group
        e0 = Signal(range(self.max_len + Gs + 1))
        m.d.comb += e0.eq(em_pos + em_j * L)
        em_left = Signal(signed(isa.DIM_BITS + 2))  # elements of the row from this beat on
        m.d.comb += em_left.eq(a.dim - e0)
        em_last = em_left <= L
        src_beat = src_q.r_data.word_select(em_j, L * XB) if NBG > 1 else src_q.r_data
        gam_beat = gam_q.r_data.word_select(em_j, L * GB) if NBG > 1 else gam_q.r_data
        for i in range(L):
            keep = em_left > i  # lanes past the row end are zero padding
            m.d.comb += [
                nq.x.payload.x[i].eq(Mux(keep, src_beat.word_select(i, XB).as_signed(), 0)),
                nq.x.payload.gamma[i].eq(Mux(keep, gam_beat.word_select(i, GB).as_signed(), 0)),
            ]
        m.d.comb += [
            nq.x.valid.eq(run & ~abort & src_q.r_rdy & gam_q.r_rdy),
            nq.x.payload.last.eq(em_last),
        ]
        x_fire = nq.x.valid & nq.x.ready
        pop = Signal()
        m.d.comb += pop.eq(x_fire & (em_last | (em_j == NBG - 1)))
        m.d.comb += [src_q.r_en.eq(pop), gam_q.r_en.eq(pop)]
        with m.If(x_fire):
            with m.If(em_last):
                m.d.sync += [em_pos.eq(0), em_j.eq(0)]
            with m.Elif(em_j == NBG - 1):
                m.d.sync += [em_pos.eq(em_pos + Gs), em_j.eq(0)]
            with m.Else():
                m.d.sync += em_j.eq(em_j + 1)
        m.d.sync += held.eq(held + (rd_fire & ~rq_gam) - pop)

        # ------------------------------------------------ codes and records out
        out_row = Signal(isa.ROWS_BITS + 1)  # rows whose codes have left the block
        out_ptr = Signal(isa.ADDR_BITS + 1)  # dst byte address of the next chunk
        out_left = Signal(range(self.max_len + 1))  # bytes of the row not yet chunked
        rec_ptr = Signal(isa.ADDR_BITS + 1)
        acc = Signal(8 * W)
        acc_n = Signal(range(max(CH, 2)))
        acc_next = Signal(8 * W)
        ydata = nq.y.payload.data.as_value()
        for k in range(CH):
            sl = slice(8 * L * k, 8 * L * (k + 1))
            m.d.comb += acc_next[sl].eq(Mux(acc_n == k, ydata, acc[sl]))
        y = nq.y.payload
        complete = y.last | (acc_n == CH - 1)

        wo_valid = Signal()
        wo_addr = Signal(isa.ADDR_BITS)
        wo_len = Signal(range(W + 1))
        wo_data = Signal(8 * W)
        m.d.comb += [
            self.wr.valid.eq(run & wo_valid),
            self.wr.payload.addr.eq(wo_addr),
            self.wr.payload.len.eq(wo_len),
            self.wr.payload.data.eq(wo_data),
        ]
        wo_free = ~wo_valid | self.wr.ready

        # the row's record: (mant, shift - g_exp); a zero scale stays (0, 0)
        rec_v = Signal()
        rec_data = Signal(isa.SCALE_RECORD.size)
        rec_mant = Signal(isa.SCALE_MANT_BITS)  # the record's field (zero-extended)
        rec_shift = Signal(signed(36))
        m.d.comb += rec_mant.eq(y.scale_mant)
        m.d.comb += rec_shift.eq(Mux(y.scale_mant == 0, 0, y.scale_shift - a.g_exp))
        rec_ok = shift_fits_record(rec_shift)

        m.d.comb += nq.y.ready.eq(
            run & ~abort & (dry | ((~complete | wo_free) & (~y.last | ~rec_v)))
        )
        y_fire = nq.y.valid & nq.y.ready
        code_load = Signal()
        m.d.comb += code_load.eq(y_fire & complete & ~dry)
        clen = Mux(y.last, out_left, CH * L)
        with m.If(y_fire):
            with m.If(complete):
                m.d.sync += [acc_n.eq(0), out_ptr.eq(out_ptr + clen)]
                with m.If(y.last):
                    m.d.sync += [out_left.eq(a.dim), out_row.eq(out_row + 1)]
                    with m.If(~rec_ok):
                        m.d.sync += abort.eq(1)
                    with m.Elif(~dry):
                        m.d.sync += [
                            rec_v.eq(1),
                            rec_data.eq(Cat(rec_mant, rec_shift[: isa.SCALE_SHIFT_BITS])),
                        ]
                with m.Else():
                    m.d.sync += out_left.eq(out_left - CH * L)
            with m.Else():
                m.d.sync += [acc.eq(acc_next), acc_n.eq(acc_n + 1)]

        with m.If(code_load):
            m.d.sync += [wo_valid.eq(1), wo_addr.eq(out_ptr), wo_len.eq(clen), wo_data.eq(acc_next)]
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
        chk = self.checks(m)
        err, err_scale = chk.error(stop="records"), chk.error(start="records")
        with m.FSM() as fsm:
            passed = self.check_states(m, ("CHECK", err))
            with m.State("RUN"):
                m.d.comb += run.eq(1)
                with m.If(abort):
                    with m.If((rd_out == 0) & ~wo_valid):
                        self.finish(m, ErrorCode.SCALE_RANGE)
                with m.Elif((out_row == a.rows) & ~rec_v & ~wo_valid):
                    self.finish(m, dry_err)
        m.d.comb += dp_rst.eq(fsm.ongoing("CHECK"))
        with m.If(passed["CHECK"]):
            m.d.sync += [
                dry.eq(err_scale != ErrorCode.NONE),
                dry_err.eq(err_scale),
                abort.eq(0),
                rq_row.eq(0),
                rq_pos.eq(0),
                rq_gam.eq(0),
                src_ptr.eq(a.src),
                held.eq(0),
                rd_out.eq(0),
                rs_gam.eq(0),
                em_pos.eq(0),
                em_j.eq(0),
                out_row.eq(0),
                out_ptr.eq(a.dst),
                out_left.eq(a.dim),
                rec_ptr.eq(a.dst_scale),
                acc_n.eq(0),
                wo_valid.eq(0),
                rec_v.eq(0),
            ]
        return m
