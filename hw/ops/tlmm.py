"""TLMM engine: the ternary projection (golden: ``Executor._op_tlmm`` ->
``golden.model.op_tlmm``; the datapath is ``hw.tlmm.TLMM``).

Checks: the TLMM contract (``golden.isa.CONTRACTS``), in one cycle: rows/k/n >= 1, k <=
``TLMMConfig.max_k()`` and the engine limit k <= ``max_k`` (``LIMITS``; BAD_DIM); src in
range (int8: no alignment); weights in range; dst aligned to 4 (ALIGN) and in range. The
contract's data check "weight codes" (a code ``pack_tlmm_weights`` never writes:
BAD_OPERAND) is golden's only (``GOLDEN_ONLY``): the engine decodes any 5-bit code.

For each token row m: read the Kc activation chunks (G*T bytes from ``src + m*k``; the
last one short, zero-filled by the memory) then the Nb*Kc weight beats
(``golden.isa.tlmm_beat_bytes``) in tile order; the responses go, in order, to the engine's
``act``/``wgt`` streams; each ``out`` beat (Q accumulators) is written to
``dst + (m*n + b*Q)*4`` (the last block of a row short). Reads of row m+1 are issued as
soon as those of row m are, so the engine's next table build overlaps the lookups.

Cycles (no memory stalls; ``expected_cycles``): one beat per cycle, rows * Kc * (1 + Nb)
(each row's activation chunks, then its weight beats: the block's table build of row m+1
comes after row m's lookups through the one port) plus the first response's latency, the
set-up and check cycles and the block's pipeline latency -- ``hw.tlmm.expected_cycles(rows,
k, n) + (rows - 1) * Kc + latency + 1 + SETUP_CYCLES``, measured exactly so by
``sim/test_op_tlmm.py``.

Set-up: Kc = ceil(ceil(k / G) / T), Nb = ceil(n / Q) and Nb * Kc are divisions by constants
(G = 3: not a power of two) and a product of the command's fields; computed as written they
are a combinational divider and an unregistered DSP (~50 logic levels). They go through the
registered pipeline of ``hw/ops/checkpipe.py`` (a division by a constant is a multiply by
its reciprocal, each DSP registered around) while the engine waits ``SETUP_CYCLES`` states
after ``start`` (the command's fields are stable from then on).

Differences from the golden backend: k above the engine's table depth ``max_k``
(``hw.tlmm.DEFAULT_MAX_K``) is BAD_DIM (golden allows up to ``TLMMConfig.max_k()``);
invalid weight codes are not detected.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.tlmm import TLMM, chunk_count
from hw.tlmm import expected_cycles as tlmm_block_cycles

from .base import Engine
from .checkpipe import PolyCtx, materialize

SETUP_CYCLES = 9  # wait states after start: Kc, Nb*Kc and the checks through their pipelines


def expected_cycles(rows: int, k: int, n: int, cfg: DatapathConfig, latency: int = 1) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    lookups = tlmm_block_cycles(rows, k, n, cfg.tlmm) + (rows - 1) * chunk_count(k, cfg.tlmm)
    return lookups + latency + 1 + SETUP_CYCLES


class TLMMEngine(Engine):
    OPCODE = Opcode.TLMM
    DESIGN_FIELDS = {"max_k": "max_k"}
    LIMITS = ("k <= max_k",)  # the engine's table depth
    GOLDEN_ONLY = ("weight codes",)

    def __init__(self, cfg: DatapathConfig, dma_bytes: int, *, max_k: int):
        tc = cfg.tlmm
        need = max(tc.group * tc.tables, isa.tlmm_beat_bytes(tc), tc.replicas * tc.acc_bits // 8)
        if dma_bytes < need:
            raise ValueError(f"dma_bytes: {dma_bytes} is below the {need} bytes of a TLMM beat")
        self.max_k = max_k
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        tc = self.cfg.tlmm
        G, T, Q = tc.group, tc.tables, tc.replicas
        GT = G * T
        BB = isa.tlmm_beat_bytes(tc)
        ACC_BYTES = tc.acc_bits // 8
        m = Module()
        m.submodules.tlmm = tl = TLMM(tc, max_k=self.max_k)
        a = self.op_args
        # the contract's checks pipelined too (valid by CHECK, after the set-up waits)
        chk = self.checks(m, pipelined=True)
        if chk.latency > SETUP_CYCLES + 1:
            raise ValueError(f"TLMM checks need {chk.latency} cycles")
        err = chk.error()

        kc = Signal(range(chunk_count(self.max_k, tc) + 1))
        nbkc = Signal(32)  # weight beats per row: Nb*Kc
        # Kc and Nb*Kc from the command's fields through registered stages (docstring)
        ctx = PolyCtx(m, "setup")
        kc_p = ((ctx.atom(a.k) + (G - 1)) // G + (T - 1)) // T
        kc_c, kc_at = materialize(ctx, kc_p, "kc_c")
        nbkc_c, nbkc_at = materialize(ctx, ((ctx.atom(a.n) + (Q - 1)) // Q) * kc_p, "nbkc_c")
        if max(kc_at, nbkc_at) > SETUP_CYCLES + 1:  # CHECK is the cycle after the waits
            raise ValueError(
                f"TLMM set-up needs {max(kc_at, nbkc_at)} cycles (G, T, Q = {G, T, Q})"
            )

        # request side
        rq_active = Signal()
        rq_act = Signal()  # phase: 1 = activation chunks, 0 = weights
        rq_cnt = Signal(32)  # chunk / beat index within the phase
        rq_row = Signal(16)
        rq_aptr = Signal(isa.ADDR_BITS + 1)  # next activation chunk address
        rq_arem = Signal(17)  # activation bytes left in the row
        rq_wptr = Signal(isa.ADDR_BITS + 8)
        rq_rowbase = Signal(isa.ADDR_BITS + 1)
        # response side
        rs_act = Signal()
        rs_cnt = Signal(32)
        # write side
        wr_ptr = Signal(isa.ADDR_BITS + 8)
        wr_rowbase = Signal(isa.ADDR_BITS + 8)
        wr_nrem = Signal(17)
        wr_row = Signal(16)
        running = Signal()

        act_len = Mux(rq_arem > GT, GT, rq_arem)
        m.d.comb += [
            self.rd.valid.eq(rq_active),
            self.rd.payload.addr.eq(Mux(rq_act, rq_aptr, rq_wptr)),
            self.rd.payload.len.eq(Mux(rq_act, act_len, BB)),
        ]
        with m.If(self.rd.valid & self.rd.ready):
            with m.If(rq_act):
                m.d.sync += [rq_aptr.eq(rq_aptr + GT), rq_arem.eq(rq_arem - act_len)]
                with m.If(rq_cnt == kc - 1):
                    m.d.sync += [rq_act.eq(0), rq_cnt.eq(0), rq_wptr.eq(a.weights)]
                with m.Else():
                    m.d.sync += rq_cnt.eq(rq_cnt + 1)
            with m.Else():
                m.d.sync += rq_wptr.eq(rq_wptr + BB)
                with m.If(rq_cnt == nbkc - 1):
                    m.d.sync += [
                        rq_act.eq(1),
                        rq_cnt.eq(0),
                        rq_row.eq(rq_row + 1),
                        rq_rowbase.eq(rq_rowbase + a.k),
                        rq_aptr.eq(rq_rowbase + a.k),
                        rq_arem.eq(a.k),
                    ]
                    with m.If(rq_row == a.rows - 1):
                        m.d.sync += rq_active.eq(0)
                with m.Else():
                    m.d.sync += rq_cnt.eq(rq_cnt + 1)

        # responses, in request order, to the engine's act / wgt streams
        m.d.comb += [
            tl.act.payload.eq(Cat(self.rdata.payload[: GT * 8], rs_cnt == kc - 1)),
            tl.wgt.payload.eq(Cat(self.rdata.payload[: T * Q * tc.code_bits], rs_cnt == nbkc - 1)),
        ]
        with m.If(running & rs_act):
            m.d.comb += [tl.act.valid.eq(self.rdata.valid), self.rdata.ready.eq(tl.act.ready)]
        with m.Elif(running):
            m.d.comb += [tl.wgt.valid.eq(self.rdata.valid), self.rdata.ready.eq(tl.wgt.ready)]
        with m.If(self.rdata.valid & self.rdata.ready):
            with m.If(rs_act):
                with m.If(rs_cnt == kc - 1):
                    m.d.sync += [rs_act.eq(0), rs_cnt.eq(0)]
                with m.Else():
                    m.d.sync += rs_cnt.eq(rs_cnt + 1)
            with m.Else():
                with m.If(rs_cnt == nbkc - 1):
                    m.d.sync += [rs_act.eq(1), rs_cnt.eq(0)]
                with m.Else():
                    m.d.sync += rs_cnt.eq(rs_cnt + 1)

        # accumulator write-back
        wr_q = Mux(wr_nrem > Q, Q, wr_nrem)
        m.d.comb += [
            self.wr.valid.eq(tl.out.valid),
            tl.out.ready.eq(self.wr.ready),
            self.wr.payload.addr.eq(wr_ptr),
            self.wr.payload.len.eq(wr_q * ACC_BYTES),
            self.wr.payload.data.eq(tl.out.payload.data.as_value()),
        ]
        last_out = Signal()
        with m.If(tl.out.valid & tl.out.ready):
            with m.If(tl.out.payload.last):
                m.d.sync += [
                    wr_row.eq(wr_row + 1),
                    wr_nrem.eq(a.n),
                    wr_rowbase.eq(wr_rowbase + a.n * ACC_BYTES),
                    wr_ptr.eq(wr_rowbase + a.n * ACC_BYTES),
                ]
                m.d.comb += last_out.eq(wr_row == a.rows - 1)
            with m.Else():
                m.d.sync += [wr_ptr.eq(wr_ptr + Q * ACC_BYTES), wr_nrem.eq(wr_nrem - Q)]

        with m.FSM():
            waits = [(f"SETUP{i}", None) for i in range(SETUP_CYCLES)]
            passed = self.check_states(m, *waits, ("CHECK", err))
            with m.State("RUN"):
                with m.If(last_out):
                    m.d.sync += running.eq(0)
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["CHECK"]):
            m.d.sync += [kc.eq(kc_c), nbkc.eq(nbkc_c), running.eq(1)]
            # every side at row 0 and in its activation phase
            m.d.sync += [s.eq(1) for s in (rq_active, rq_act, rs_act)]
            m.d.sync += [s.eq(0) for s in (rq_row, rq_cnt, rs_cnt, wr_row)]
            m.d.sync += [rq_rowbase.eq(a.src), rq_aptr.eq(a.src), rq_arem.eq(a.k)]
            m.d.sync += [wr_rowbase.eq(a.dst), wr_ptr.eq(a.dst), wr_nrem.eq(a.n)]
        return m
