"""LM_HEAD engine: the INT8 x INT8 output head ``dst[t, j] = sum_i src[t, i] * w[j, i]``
(golden: ``Executor._op_lm_head``): src int8 [rows, k] (the final norm's x_q),
weights int8 [n, k] row-major (``lm_q``), dst int32 [rows, n]. Exact: |dst| <= k * 2^14
< 2^31. The host multiplies by the token and row scales.

Checks: the LM_HEAD contract (``golden.isa.CONTRACTS``), in one cycle before any memory
access: rows, k, n >= 1 and the engine limit k <= ``max_k`` (``LIMITS``; BAD_DIM); src in
range (int8: no alignment); weights in range (``n * k`` bytes); dst aligned to 4 (ALIGN)
and in range (ADDR_RANGE). No data value can fail.

Micro-architecture
==================
With ``W = dma_bytes`` (128) and ``Kb = ceil(k / W)`` beats per row, for each token row
t: read the x row (Kb beats from ``src + t*k``, the last one short and zero-filled by
the memory) into the x buffer (a ``ceil(max_k / W)`` x W-byte memory), then stream the
weight matrix row by row, Kb beats per weight row (one W-byte read each, ``weights +
j*k + c*W``). The request side runs ahead of the responses (the memory applies
backpressure) and goes straight on to the next token's x row; responses come back in
order, so the x buffer is rewritten only after the last weight beat of the previous row
was consumed. Per weight beat c (one per cycle):

* the x buffer's synchronous read port is addressed with the *next* beat index, so beat
  c of x is on its output when weight beat c arrives (transparent to the write port for
  the x row's last beat);
* stage 1: the W int8 x int8 products summed in groups of 8 (W/8 registers);
* stage 2: the group sums added to the row accumulator; at the row's last beat the
  total goes to lane ``j mod L`` of a result buffer (``L = W/4`` int32 lanes), and a
  full buffer -- or the last result of the token row -- moves to the write register:
  one write of up to L results (``dst + (t*n + j0)*4``, whole beats but the last).

If the write register is still waiting for ``wr.ready`` when stage 2 must flush, the
pipeline freezes (no response accepted, stage 1 held) until it drains.

Cycles ====== One weight beat per cycle: a command takes ``rows * Kb * (n + 1) + latency + 4``
cycles with no memory stalls (``expected_cycles``) (the x row and n weight rows per token row;
the first response's latency; the check cycle, stage 1, the write register, done), measured
exactly so by ``sim/test_op_lm_head.py`` with a 1-cycle memory. Each cycle is W = 128 MACs when
k is a multiple of W (BitNet-0.73B: k = 1536, Kb = 12; vocab n = 32002 -> 384,036 beats per
token). Weight rows are not packed across beats, so a k with ``k mod W != 0`` wastes the tail of
each row's last beat.

Differences from the golden backend
===================================
``k`` above ``max_k`` (constructor parameter, default 4096: the x buffer holds
``ceil(max_k / W)`` beats; BitNet-0.73B's hidden size is 1536) is BAD_DIM; the golden
backend accepts any 16-bit k. ``rows`` (16 bits) and ``n`` (32 bits) take their full
ranges.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode

from .base import Engine

DEFAULT_MAX_K = 4096
_GROUP = 8  # products per stage-1 partial sum


def expected_cycles(rows: int, k: int, n: int, dma_bytes: int, latency: int = 1) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    return rows * -(-k // dma_bytes) * (n + 1) + latency + 4


class LMHeadEngine(Engine):
    OPCODE = Opcode.LM_HEAD
    LIMITS = ("k <= max_k",)  # the x buffer

    def __init__(self, cfg: DatapathConfig, dma_bytes: int, *, max_k: int = DEFAULT_MAX_K):
        if dma_bytes % (4 * _GROUP):
            raise ValueError(f"dma_bytes: {dma_bytes} is not a multiple of {4 * _GROUP}")
        if max_k < 1:
            raise ValueError(f"max_k: must be >= 1, got {max_k}")
        self.max_k = max_k
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        L = W // 4  # int32 results per write
        G = W // _GROUP
        depth = -(-self.max_k // W)
        a = self.op_args
        err = self.checks(m).error()

        m.submodules.xbuf = xbuf = Memory(shape=unsigned(8 * W), depth=depth, init=[])
        xw = xbuf.write_port()
        xr = xbuf.read_port(transparent_for=(xw,))

        # beats per row and the length of the last one
        kb = Signal(range(depth + 1))
        k_last = Signal(range(W + 1))
        m.d.comb += [kb.eq((a.k + (W - 1)) // W), k_last.eq(a.k - (kb - 1) * W)]

        ptr_w = isa.ADDR_BITS + 1
        n_w = isa.VOCAB_BITS + 1
        # request side
        X, WT = 0, 1
        rq_ph = Signal()
        rq_c = Signal(range(depth))
        rq_j = Signal(n_w)
        rq_t = Signal(isa.ROWS_BITS + 1)
        rq_x = Signal(ptr_w)
        rq_w = Signal(ptr_w)
        # response side
        rs_ph = Signal()
        rs_c = Signal(range(depth))
        rs_j = Signal(n_w)
        rs_t = Signal(isa.ROWS_BITS + 1)
        # stage 1
        v1 = Signal()
        last1 = Signal()
        p1 = [Signal(signed(2 * 8 + 3), name=f"p1_{g}") for g in range(G)]
        # stage 2 / result buffer
        acc = Signal(signed(32))
        lane = Signal(range(L))
        out_j = Signal(n_w)  # results of this token row so far
        res_buf = [Signal(signed(32), name=f"res{i}") for i in range(L)]
        dst_ptr = Signal(ptr_w)
        wr_valid = Signal()
        wr_addr = Signal(ptr_w)
        wr_len = Signal(range(W + 1))
        wr_data = Signal(8 * W)

        def beat_len(c):
            return Mux(c == kb - 1, k_last, W)

        with m.FSM():
            passed = self.check_states(m, ("CHECK", err))
            with m.State("RUN"):
                # -------------------------------------------------- requests
                rq_len = beat_len(rq_c)
                rq_last = rq_c == kb - 1
                m.d.comb += [
                    self.rd.valid.eq(rq_t < a.rows),
                    self.rd.payload.addr.eq(Mux(rq_ph == X, rq_x, rq_w)),
                    self.rd.payload.len.eq(rq_len),
                ]
                with m.If(self.rd.valid & self.rd.ready):
                    m.d.sync += rq_c.eq(Mux(rq_last, 0, rq_c + 1))
                    with m.If(rq_ph == X):
                        m.d.sync += rq_x.eq(rq_x + rq_len)
                        with m.If(rq_last):
                            m.d.sync += [rq_ph.eq(WT), rq_j.eq(0), rq_w.eq(a.weights)]
                    with m.Else():
                        m.d.sync += rq_w.eq(rq_w + rq_len)
                        with m.If(rq_last):
                            with m.If(rq_j == a.n - 1):
                                m.d.sync += [rq_ph.eq(X), rq_t.eq(rq_t + 1)]
                            with m.Else():
                                m.d.sync += rq_j.eq(rq_j + 1)

                # -------------------------------------------------- stage 2 / writes
                flush = (lane == L - 1) | (out_j == a.n - 1)
                # a flush with the write register still full must wait for it
                freeze = v1 & last1 & flush & wr_valid
                m.d.comb += [
                    self.wr.valid.eq(wr_valid),
                    self.wr.payload.addr.eq(wr_addr),
                    self.wr.payload.len.eq(wr_len),
                    self.wr.payload.data.eq(wr_data),
                ]
                with m.If(wr_valid & self.wr.ready):
                    m.d.sync += wr_valid.eq(0)
                total = Signal(signed(2 * 8 + 3 + (G - 1).bit_length()))
                m.d.comb += total.eq(sum(p1))
                res = Signal(signed(32))
                m.d.comb += res.eq(acc + total)
                with m.If(v1 & ~freeze):
                    with m.If(~last1):
                        m.d.sync += acc.eq(res)
                    with m.Else():
                        m.d.sync += acc.eq(0)
                        for i in range(L):
                            with m.If(lane == i):
                                m.d.sync += res_buf[i].eq(res)
                        with m.If(flush):
                            merged = Cat(*(Mux(lane == i, res, res_buf[i]) for i in range(L)))
                            m.d.sync += [
                                wr_valid.eq(1),
                                wr_addr.eq(dst_ptr),
                                wr_len.eq((lane + 1) * 4),
                                wr_data.eq(merged),
                                dst_ptr.eq(dst_ptr + (lane + 1) * 4),
                                lane.eq(0),
                            ]
                        with m.Else():
                            m.d.sync += lane.eq(lane + 1)
                        m.d.sync += out_j.eq(Mux(out_j == a.n - 1, 0, out_j + 1))

                # -------------------------------------------------- responses
                rs_more = rs_t < a.rows
                m.d.comb += self.rdata.ready.eq(rs_more & ~freeze)
                fire = self.rdata.valid & self.rdata.ready
                rs_last = rs_c == kb - 1
                # read x one beat ahead: the next response's beat index
                m.d.comb += xr.addr.eq(Mux(fire, Mux(rs_last, 0, rs_c + 1), rs_c))
                with m.If(fire):
                    m.d.sync += rs_c.eq(Mux(rs_last, 0, rs_c + 1))
                    with m.If(rs_ph == X):
                        with m.If(rs_last):
                            m.d.sync += [rs_ph.eq(WT), rs_j.eq(0)]
                    with m.Elif(rs_last):
                        with m.If(rs_j == a.n - 1):
                            m.d.sync += [rs_ph.eq(X), rs_t.eq(rs_t + 1)]
                        with m.Else():
                            m.d.sync += rs_j.eq(rs_j + 1)
                m.d.comb += [
                    xw.addr.eq(rs_c),
                    xw.data.eq(self.rdata.payload),
                    xw.en.eq(fire & (rs_ph == X)),
                ]
                with m.If(~freeze):
                    m.d.sync += [v1.eq(fire & (rs_ph == WT)), last1.eq(rs_last)]
                    for g in range(G):
                        prods = []
                        for i in range(g * _GROUP, (g + 1) * _GROUP):
                            xv = xr.data[8 * i : 8 * i + 8].as_signed()
                            wv = self.rdata.payload[8 * i : 8 * i + 8].as_signed()
                            prods.append(xv * wv)
                        m.d.sync += p1[g].eq(sum(prods))

                with m.If(~rs_more & ~v1 & ~wr_valid):
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["CHECK"]):
            m.d.sync += [
                rq_ph.eq(X),
                rq_c.eq(0),
                rq_j.eq(0),
                rq_t.eq(0),
                rq_x.eq(a.src),
                rq_w.eq(a.weights),
                rs_ph.eq(X),
                rs_c.eq(0),
                rs_j.eq(0),
                rs_t.eq(0),
                v1.eq(0),
                acc.eq(0),
                lane.eq(0),
                out_j.eq(0),
                dst_ptr.eq(a.dst),
                wr_valid.eq(0),
            ]
        return m
