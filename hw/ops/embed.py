"""EMBED engine: ``dst[t] = table[tokens[t]]`` (golden: ``golden.executor``'s EMBED).

Checks: the EMBED contract (``golden.isa.CONTRACTS``): CHECK rows/dim/vocab >= 1
(BAD_DIM), tokens aligned and in range (ALIGN, ADDR_RANGE); SCAN its data check "token
ids": a scan over the token ids, any id >= vocab (BAD_OPERAND); CHECK2 table, then dst,
aligned and in range. Then per row: read the token id (4 bytes), copy the table row in
``dma_bytes`` chunks, each response forwarded as a write.

Cycles without memory stalls, read latency ``lat`` (``expected_cycles``)::

    rows * (2*lat + 1 + ceil(4*dim / dma_bytes)) + ceil(rows / (dma_bytes/4)) + lat + 3

(the scan's beats and its first response; per row the token read and its response, the
first chunk's latency and one cycle per chunk; CHECK, CHECK2, the done cycle), measured
exactly so by ``sim/test_op_embed.py``.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned

from golden import isa
from golden.isa import ErrorCode, Opcode

from .base import Engine


def expected_cycles(rows: int, dim: int, dma_bytes: int, latency: int = 1) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    return (
        rows * (2 * latency + 1 + -(-4 * dim // dma_bytes))
        + -(-rows // (dma_bytes // 4))
        + latency
        + 3
    )


class EmbedEngine(Engine):
    OPCODE = Opcode.EMBED

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        TPB = W // 4  # token ids per scan beat
        a = self.op_args
        chk = self.checks(m)
        err_tokens, err_rest = chk.error(stop="token ids"), chk.error(start="token ids")
        row_bytes = Signal(unsigned(isa.DIM_BITS + 2))
        m.d.comb += row_bytes.eq(a.dim * 4)

        t = Signal(isa.ROWS_BITS + 1)  # row (token) index
        scan_rq = Signal(isa.ROWS_BITS + 1)  # tokens requested by the scan
        scan_rs = Signal(isa.ROWS_BITS + 1)  # tokens checked by the scan
        bad = Signal()
        src = Signal(64)  # table row read pointer
        dst = Signal(isa.ADDR_BITS + 1)
        rq_left = Signal(unsigned(isa.DIM_BITS + 2))  # row bytes not yet requested
        rs_left = Signal(unsigned(isa.DIM_BITS + 2))  # row bytes not yet written

        with m.FSM():
            passed = self.check_states(m, ("CHECK", err_tokens), then="SCAN")
            with m.State("SCAN"):
                # requests: TPB ids per beat; responses: check the valid lanes
                left_rq = a.rows - scan_rq
                n_rq = Mux(left_rq > TPB, TPB, left_rq)
                m.d.comb += [
                    self.rd.valid.eq(scan_rq < a.rows),
                    self.rd.payload.addr.eq(a.tokens + scan_rq * 4),
                    self.rd.payload.len.eq(n_rq * 4),
                ]
                with m.If(self.rd.valid & self.rd.ready):
                    m.d.sync += scan_rq.eq(scan_rq + n_rq)
                left_rs = a.rows - scan_rs
                m.d.comb += self.rdata.ready.eq(1)
                with m.If(self.rdata.valid):
                    over = Signal(TPB)
                    for i in range(TPB):
                        m.d.comb += over[i].eq(
                            (i < left_rs) & (self.rdata.payload[32 * i : 32 * i + 32] >= a.vocab)
                        )
                    with m.If(over.any()):
                        m.d.sync += bad.eq(1)
                    m.d.sync += scan_rs.eq(scan_rs + Mux(left_rs > TPB, TPB, left_rs))
                with m.If(scan_rs == a.rows):
                    with m.If(bad):
                        self.finish(m, ErrorCode.BAD_OPERAND)
                    with m.Else():
                        m.next = "CHECK2"
            passed |= self.check_states(m, ("CHECK2", err_rest), then="TOKEN", idle=False)
            with m.State("TOKEN"):
                m.d.comb += [
                    self.rd.valid.eq(1),
                    self.rd.payload.addr.eq(a.tokens + t * 4),
                    self.rd.payload.len.eq(4),
                ]
                with m.If(self.rd.ready):
                    m.next = "TOKEN_WAIT"
            with m.State("TOKEN_WAIT"):
                m.d.comb += self.rdata.ready.eq(1)
                with m.If(self.rdata.valid):
                    m.d.sync += [
                        src.eq(a.table + self.rdata.payload[:32] * row_bytes),
                        rq_left.eq(row_bytes),
                        rs_left.eq(row_bytes),
                    ]
                    m.next = "COPY"
            with m.State("COPY"):
                n_rq = Mux(rq_left > W, W, rq_left)
                m.d.comb += [
                    self.rd.valid.eq(rq_left != 0),
                    self.rd.payload.addr.eq(src),
                    self.rd.payload.len.eq(n_rq),
                ]
                with m.If(self.rd.valid & self.rd.ready):
                    m.d.sync += [src.eq(src + n_rq), rq_left.eq(rq_left - n_rq)]
                n_rs = Mux(rs_left > W, W, rs_left)
                m.d.comb += [
                    self.wr.valid.eq(self.rdata.valid),
                    self.rdata.ready.eq(self.wr.ready),
                    self.wr.payload.addr.eq(dst),
                    self.wr.payload.len.eq(n_rs),
                    self.wr.payload.data.eq(self.rdata.payload),
                ]
                with m.If(self.wr.valid & self.wr.ready):
                    m.d.sync += [dst.eq(dst + n_rs), rs_left.eq(rs_left - n_rs)]
                    with m.If(rs_left == n_rs):
                        with m.If(t == a.rows - 1):
                            self.finish(m, ErrorCode.NONE)
                        with m.Else():
                            m.d.sync += t.eq(t + 1)
                            m.next = "TOKEN"
        with m.If(passed["CHECK"]):
            m.d.sync += [scan_rq.eq(0), scan_rs.eq(0), bad.eq(0)]
        with m.If(passed["CHECK2"]):
            m.d.sync += [t.eq(0), dst.eq(a.dst)]
        return m
