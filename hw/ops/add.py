"""ADD engine: ``dst = a + b``, int32 [rows, dim] each, two's-complement (golden:
``golden.executor.Executor._op_add``). The runtime sums the partial accumulators of a
K-split projection with it (``host.runtime.Runtime._k_slices``).

Checks: the ADD contract (``golden.isa.CONTRACTS``: rows, dim >= 1; a, b, dst each
aligned, then in range), registered as RESIDUAL's (``ArgChecks(registered=3)``). No data
value can fail.

Micro-architecture: RESIDUAL's without its scale (L = ``lanes``, the design point's
``residual_lanes``). Rows are walked in chunks of ``2L`` elements; per chunk the request
side reads the a chunk, then the b chunk (``2L * 4`` bytes each), running ahead of the
responses; ``hw.ops.elem.pair_reader`` hands out L (a, b) lanes per cycle; each lane
adds (S0 the pair registered, S1 the sum) and ``hw.ops.elem.packer`` writes a chunk per
write. The pipeline freezes while a write waits. In place (dst == a or dst == b): a
chunk's write follows the reads of that chunk, later chunks read other addresses.

Cycles without memory stalls (``expected_cycles``, measured exactly so by
``sim/test_op_add.py``): rows * 2 * ceil(dim / 2L) + FIXED_CYCLES + latency (each chunk
takes two cycles; FIXED_CYCLES: the checks, the lanes' pipeline, the last write and the
done cycle).

Differences from the golden backend: partial overlap of dst with a or b (other than
equality) streams chunk by chunk, as RESIDUAL's does.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed

from golden.config import DatapathConfig
from golden.isa import Opcode

from .base import Engine
from .elem import Chunks, Rows, check_pair_lanes, packer, pair_reader

FIXED_CYCLES = 9  # see the cycle formula of the module docstring
_A, _B = 0, 1  # request / response kinds, in stream order per chunk


def expected_cycles(rows: int, dim: int, lanes: int, latency: int = 1) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    return rows * 2 * -(-dim // (2 * lanes)) + FIXED_CYCLES + latency


class AddEngine(Engine):
    OPCODE = Opcode.ADD
    DESIGN_FIELDS = {"lanes": "residual_lanes"}  # RESIDUAL's width: the same streaming

    def __init__(self, cfg: DatapathConfig, dma_bytes: int, *, lanes: int):
        self.lanes = check_pair_lanes(lanes, dma_bytes)
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        a = self.op_args
        err = self.checks(m, registered=3).error_reg()  # valid in the 4th cycle
        begin = Signal()
        running = Signal()

        # ------------------------------------------------------------ requests
        rq_kind = Signal()
        rq_rows, rq_ch = Rows(a.rows, "rq"), Chunks(a.dim, 2 * L, "rq")
        rq_a, rq_b = Signal(len(a.a) + 1), Signal(len(a.b) + 1)
        m.d.comb += [
            self.rd.valid.eq(running & rq_rows.more),
            self.rd.payload.addr.eq(Mux(rq_kind == _A, rq_a, rq_b)),
            self.rd.payload.len.eq(rq_ch.n * 4),
        ]
        with m.If(begin):
            m.d.sync += [rq_kind.eq(_A), rq_a.eq(a.a), rq_b.eq(a.b)]
            m.d.sync += rq_rows.first() + rq_ch.first()
        with m.Elif(self.rd.valid & self.rd.ready):
            with m.If(rq_kind == _A):
                m.d.sync += [rq_a.eq(rq_a + rq_ch.n * 4), rq_kind.eq(_B)]
            with m.Else():
                m.d.sync += [rq_b.eq(rq_b + rq_ch.n * 4), rq_kind.eq(_A)]
                with m.If(rq_ch.end):
                    m.d.sync += rq_rows.advance() + rq_ch.first()
                with m.Else():
                    m.d.sync += rq_ch.advance()

        # ------------------------------------------------------------ responses
        stall = Signal()
        rs_kind = Signal()
        rs_rows, rs_ch = Rows(a.rows, "rs"), Chunks(a.dim, 2 * L, "rs")
        more = Signal()
        m.d.comb += more.eq(running & rs_rows.more)
        rd = pair_reader(m, self.rdata.payload, L, 32, 32, "rd")
        m.d.comb += [
            rd.a_valid.eq(more & (rs_kind == _A) & self.rdata.valid),
            rd.b_valid.eq(more & (rs_kind == _B) & self.rdata.valid),
            rd.n.eq(rs_ch.n),
            rd.last.eq(rs_ch.end),
            rd.ready.eq(~stall),
            self.rdata.ready.eq(rd.take),
        ]
        with m.If(rd.take):
            with m.If(rs_kind == _A):
                m.d.sync += rs_kind.eq(_B)
            with m.Else():
                m.d.sync += rs_kind.eq(_A)
                with m.If(rs_ch.end):
                    m.d.sync += rs_rows.advance() + rs_ch.first()
                with m.Else():
                    m.d.sync += rs_ch.advance()

        # ------------------------------------------------------------ lanes
        v0 = Signal()
        t0 = [
            Signal.like(t, name=f"t0_{i}") for i, t in enumerate((rd.half, rd.n_out, rd.last_out))
        ]
        a0 = [Signal(32, name=f"a0_{i}") for i in range(L)]
        b0 = [Signal(32, name=f"b0_{i}") for i in range(L)]
        y = [Signal(signed(32), name=f"y{i}") for i in range(L)]
        v1 = Signal()
        t1 = [Signal.like(t, name=f"t1_{i}") for i, t in enumerate(t0)]
        with m.If(~stall):
            m.d.sync += [v0.eq(rd.valid), v1.eq(v0)]
            m.d.sync += [d.eq(s) for d, s in zip(t0, (rd.half, rd.n_out, rd.last_out), strict=True)]
            m.d.sync += [d.eq(s) for d, s in zip(t1, t0, strict=True)]
            for i in range(L):
                m.d.sync += [a0[i].eq(rd.a[i]), b0[i].eq(rd.b[i]), y[i].eq(a0[i] + b0[i])]

        ptr, row_done = packer(m, self.wr, stall, v1, Cat(*y), *t1, lanes=L, elem_bytes=4)
        out_rows = Rows(a.rows, "out")
        with m.If(row_done):
            m.d.sync += out_rows.advance()

        m.d.comb += begin.eq(self.rows_fsm(m, err, running, out_rows))
        with m.If(begin):
            m.d.sync += rs_rows.first() + rs_ch.first() + out_rows.first()
            m.d.sync += [rs_kind.eq(_A), ptr.eq(a.dst), rd.phase.eq(0), v0.eq(0), v1.eq(0)]
        return m
