"""EMBED engine: ``dst[t] = table[tokens[t]]`` (golden: ``golden.executor``'s EMBED).

Checks: the EMBED contract (``golden.isa.CONTRACTS``), pipelined
(``ArgChecks(pipelined=True)``: the span products are registered DSPs, valid after the
wait states): CHECK rows/dim/vocab >= 1 (BAD_DIM), tokens aligned and in range (ALIGN,
ADDR_RANGE); SCAN its data check "token ids": a scan over the token ids, ``scan_ids``
(S) per read, any id >= vocab (BAD_OPERAND; the lanes' compares registered, in step with
the scan's registered end); CHECK2 table, then dst, aligned and in
range. Then per row: read the token id (4 bytes), its row address ``table + id *
dim*4`` (a registered DSP product, then the sum), copy the table row in ``dma_bytes``
chunks, each response forwarded as a write.

Cycles without memory stalls, read latency ``lat`` (``expected_cycles``)::

    rows * (2*lat + 4 + ceil(4*dim / dma_bytes)) + ceil(rows / S) + lat + 4 + WAITS

(the scan's reads and its first response; per row the token read and its response, the
product (2 cycles: ``checkpipe.dsp_product``) and the address, the first chunk's latency
and one cycle per chunk; CHECK, the
scan's registered end, CHECK2, the done cycle and the check pipeline's wait states),
measured exactly so by ``sim/test_op_embed.py``.

Logic depth: the request/response conditions are registers (``scan_more``, ``rq_last``,
``rs_last``), so no path is deeper than the 250 MHz rule's 6 levels (``hw.timing``).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned

from golden import isa
from golden.isa import ErrorCode, Opcode

from .base import Engine

# Cycles of a row's offset id * dim*4 (32 x 18 bits: two DSP tiles, then their sum).
MUL_CYCLES = 2
# Wait states before CHECK: the pipelined span checks are valid 5 cycles after start.
WAITS = 4


def expected_cycles(rows: int, dim: int, dma_bytes: int, scan_ids: int, latency: int = 1) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    return (
        rows * (2 * latency + 2 + MUL_CYCLES + -(-4 * dim // dma_bytes))
        + -(-rows // scan_ids)
        + latency
        + 4
        + WAITS
    )


class EmbedEngine(Engine):
    OPCODE = Opcode.EMBED
    DESIGN_FIELDS = {"scan_ids": "embed_scan_ids"}

    def __init__(self, cfg, dma_bytes: int, *, scan_ids: int):
        if scan_ids < 1 or scan_ids * 4 > dma_bytes:
            raise ValueError(f"scan_ids: expected 1..{dma_bytes // 4}, got {scan_ids}")
        self.scan_ids = scan_ids
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        from .checkpipe import dsp_product

        m = Module()
        W = self.signature.dma_bytes
        WB = W.bit_length() - 1
        S = self.scan_ids  # token ids checked per scan read
        a = self.op_args
        chk = self.checks(m, pipelined=True)
        assert chk.latency <= WAITS + 1, chk.latency
        err_tokens, err_rest = chk.error(stop="token ids"), chk.error(start="token ids")
        RB = isa.DIM_BITS + 2  # row bytes
        row_bytes = Signal(unsigned(RB))
        m.d.comb += row_bytes.eq(a.dim * 4)
        CB = RB - WB + 1  # chunk counters

        last_row = Signal()  # the row being copied is the last
        rows_left = Signal(isa.ROWS_BITS + 1)
        scan_rq = Signal(isa.ROWS_BITS + 1)  # ids not yet requested by the scan
        scan_rs = Signal(isa.ROWS_BITS + 1)  # ids not yet checked by the scan
        scan_more = Signal()  # scan_rq != 0, as a register
        scan_done = Signal()
        over_r = Signal(S)  # the lanes of the last scan response over vocab, registered
        bad = Signal()
        tok_ptr = Signal(isa.ADDR_BITS + 1)
        tok_id = Signal(32)
        src = Signal(64)  # table row read pointer
        dst = Signal(isa.ADDR_BITS + 1)
        n_chunks = Signal(CB)  # chunks per row, less one
        last_len = Signal(range(W + 1))  # bytes of a row's last chunk
        rq_cnt = Signal(CB)  # chunks left to request, less one
        rs_cnt = Signal(CB)  # chunks left to write, less one
        rq_done = Signal()  # the row's chunks are all requested
        rq_last = Signal()  # rq_cnt == 0, as a register
        rs_last = Signal()  # rs_cnt == 0, as a register
        prod, mul_lat = dsp_product(m, tok_id, row_bytes, "row_off")
        assert mul_lat == MUL_CYCLES, mul_lat

        # the copy's data path, outside the FSM (no state gating on 8*W wires: wr.valid
        # says when it counts)
        m.d.comb += self.wr.payload.data.eq(self.rdata.payload)
        waits = [(f"WAIT{i}", None) for i in range(WAITS)]
        with m.FSM():
            passed = self.check_states(m, *waits, ("CHECK", err_tokens), then="SCAN")
            with m.State("SCAN"):
                # requests: S ids per read; responses: check the valid lanes
                rq_n = Mux(scan_rq > S, S, scan_rq)
                m.d.comb += [
                    self.rd.valid.eq(scan_more),
                    self.rd.payload.addr.eq(tok_ptr),
                    self.rd.payload.len.eq(rq_n << 2),
                ]
                with m.If(scan_more & self.rd.ready):
                    m.d.sync += [
                        scan_rq.eq(Mux(scan_rq > S, scan_rq - S, 0)),
                        scan_more.eq(scan_rq > S),
                        tok_ptr.eq(tok_ptr + (rq_n << 2)),
                    ]
                m.d.comb += self.rdata.ready.eq(1)
                # a response's lanes over vocab, registered; then into ``bad`` (in time
                # for ``scan_done``, itself a cycle behind ``scan_rs``)
                over = Signal(S)
                for i in range(S):
                    m.d.comb += over[i].eq(
                        (scan_rs > i) & (self.rdata.payload[32 * i : 32 * i + 32] >= a.vocab)
                    )
                m.d.sync += over_r.eq(Mux(self.rdata.valid, over, 0))
                with m.If(over_r.any()):
                    m.d.sync += bad.eq(1)
                with m.If(self.rdata.valid):
                    m.d.sync += scan_rs.eq(Mux(scan_rs > S, scan_rs - S, 0))
                m.d.sync += scan_done.eq(scan_rs == 0)
                with m.If(scan_done):
                    with m.If(bad):
                        self.finish(m, ErrorCode.BAD_OPERAND)
                    with m.Else():
                        m.next = "CHECK2"
            passed |= self.check_states(m, ("CHECK2", err_rest), then="TOKEN", idle=False)
            with m.State("TOKEN"):
                with m.If(self.read(m, tok_ptr, 4)):
                    m.d.sync += tok_ptr.eq(tok_ptr + 4)
                    m.next = "TOKEN_WAIT"
            with m.State("TOKEN_WAIT"):
                m.d.comb += self.rdata.ready.eq(1)
                with m.If(self.rdata.valid):
                    m.d.sync += [tok_id.eq(self.rdata.payload[:32]), rows_left.eq(rows_left - 1)]
                    m.next = "MUL0"
            # the row's offset: a registered product (mul_lat cycles), then the address
            for i in range(mul_lat):
                with m.State(f"MUL{i}"):
                    m.next = f"MUL{i + 1}" if i + 1 < mul_lat else "ADDR"
            with m.State("ADDR"):
                m.d.sync += [
                    src.eq(a.table + prod),
                    rq_cnt.eq(n_chunks),
                    rs_cnt.eq(n_chunks),
                    rq_done.eq(0),
                    rq_last.eq(n_chunks == 0),
                    rs_last.eq(n_chunks == 0),
                    last_row.eq(rows_left == 0),
                ]
                m.next = "COPY"
            with m.State("COPY"):
                rq_n = Mux(rq_last, last_len, W)
                m.d.comb += [
                    self.rd.valid.eq(~rq_done),
                    self.rd.payload.addr.eq(src),
                    self.rd.payload.len.eq(rq_n),
                ]
                with m.If(~rq_done & self.rd.ready):
                    m.d.sync += [
                        src.eq(src + W),
                        rq_cnt.eq(rq_cnt - 1),
                        rq_last.eq(rq_cnt == 1),
                    ]
                    with m.If(rq_last):
                        m.d.sync += rq_done.eq(1)
                rs_n = Mux(rs_last, last_len, W)
                m.d.comb += [
                    self.wr.valid.eq(self.rdata.valid),
                    self.rdata.ready.eq(self.wr.ready),
                    self.wr.payload.addr.eq(dst),
                    self.wr.payload.len.eq(rs_n),
                ]
                with m.If(self.rdata.valid & self.wr.ready):
                    m.d.sync += [
                        dst.eq(dst + rs_n),
                        rs_cnt.eq(rs_cnt - 1),
                        rs_last.eq(rs_cnt == 1),
                    ]
                    with m.If(rs_last):
                        with m.If(last_row):
                            self.finish(m, ErrorCode.NONE)
                        with m.Else():
                            m.next = "TOKEN"
        with m.If(passed["CHECK"]):
            m.d.sync += [
                scan_rq.eq(a.rows),
                scan_rs.eq(a.rows),
                scan_more.eq(1),  # rows >= 1 (CHECK)
                over_r.eq(0),
                scan_done.eq(0),
                bad.eq(0),
                tok_ptr.eq(a.tokens),
                n_chunks.eq((row_bytes - 1) >> WB),
                last_len.eq((row_bytes - 1)[:WB] + 1),
            ]
        with m.If(passed["CHECK2"]):
            m.d.sync += [dst.eq(a.dst), tok_ptr.eq(a.tokens), rows_left.eq(a.rows)]
        return m
