"""LM_HEAD engine: the INT8 x INT8 output head ``dst[t, j] = sum_i src[t, i] * w[j, i]``
(golden: ``Executor._op_lm_head``): src int8 [rows, k] (the final norm's x_q),
weights int8 [n, k] row-major (``lm_q``), dst int32 [rows, n]. Exact: |dst| <= k * 2^14
< 2^31. The host multiplies by the token and row scales.

Checks: the LM_HEAD contract (``golden.isa.CONTRACTS``), pipelined
(``ArgChecks(pipelined=True)``: the span products are registered DSPs, valid after
``WAITS`` wait states) before any memory access: rows, k, n >= 1 and the engine limit k <=
``max_k`` (``LIMITS``; BAD_DIM); src in range (int8: no alignment); weights in range (``n *
k`` bytes); dst aligned to 4 (ALIGN) and in range (ADDR_RANGE). No data value can fail.

Micro-architecture
==================
With ``W = dma_bytes`` (128) and ``Kb = ceil(k / W)`` beats per row, for each token row
t: read the x row (Kb beats from ``src + t*k``, the last one short and zero-filled by
the memory) into the x buffer (a ``ceil(max_k / W)`` x W-byte LUT-RAM, read
asynchronously), then stream the weight matrix row by row, Kb beats per weight row (one
W-byte read each, ``weights + j*k + c*W``). The request side runs ahead of the responses
(the memory applies backpressure) and goes straight on to the next token's x row;
responses come back in order, so the x buffer is rewritten only after the last weight
beat of the previous row was read. Per weight beat c (one per cycle), a pipeline:

* operands: beat c of x (the x buffer at the response's beat index) and the weight beat,
  registered;
* products: the W int8 x int8 products, each registered (every DSP48E2 registered
  around);
* the adder tree: ``tree_stages(W)`` registered stages of 4-input sums (two adders deep;
  W = 128: 128 -> 32 -> 8 -> 2 -> 1);
* the accumulator: the sum added to the row accumulator; at the row's last beat the
  total goes to lane ``j mod L`` of a result buffer (``L = W/4`` int32 lanes), and a
  full buffer -- or the last result of the token row -- marks it pending; the next
  cycle copies it to the write register: one write of up to L results (``dst + (t*n +
  j0)*4``, whole beats but the last).

If the write register is still waiting for ``wr.ready`` when a pending buffer must be
copied, the pipeline freezes (no response accepted, every stage held) until it drains.
The run's logic sits outside the FSM, gated by registers that are 0 outside RUN, so no
path carries the state decode: every path is within the 250 MHz rule's 6 levels
(``hw.timing``).

Cycles
======
One weight beat per cycle: a command takes ``rows * Kb * (n + 1) + latency + 6 +
tree_stages(W) + WAITS`` cycles with no memory stalls (``expected_cycles``; W = 128: ``+
latency + 14``) (the x row and n weight rows per token row; the first response's latency;
the wait states and the check cycle, the operand and product registers, the tree, the
accumulator, the write register, done), measured exactly so by ``sim/test_op_lm_head.py``
with a 1-cycle memory. Each cycle is W = 128 MACs when k is a multiple of W
(BitNet-0.73B: k = 1536, Kb = 12; vocab n = 32002 -> 384,036 beats per token). Weight rows
are not packed across beats, so a k with ``k mod W != 0`` wastes the tail of each row's
last beat.

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

_GROUP = 4  # addends per adder-tree node (two adders deep: within the depth rule)
# Wait states before CHECK: the pipelined span checks (n*k: two DSP tiles, their sum,
# the span sum, the registered compare) are valid WAITS + 1 cycles after start.
WAITS = 4


def tree_stages(dma_bytes: int) -> int:
    """Registered adder-tree stages from the W products down to one sum."""
    n, s = dma_bytes, 0
    while n > 1:
        n, s = -(-n // _GROUP), s + 1
    return s


def expected_cycles(rows: int, k: int, n: int, dma_bytes: int, latency: int = 1) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    return rows * -(-k // dma_bytes) * (n + 1) + latency + 6 + tree_stages(dma_bytes) + WAITS


class LMHeadEngine(Engine):
    OPCODE = Opcode.LM_HEAD
    DESIGN_FIELDS = {"max_k": "max_k"}
    LIMITS = ("k <= max_k",)  # the x buffer

    def __init__(self, cfg: DatapathConfig, dma_bytes: int, *, max_k: int):
        if dma_bytes % 4:
            raise ValueError(f"dma_bytes: {dma_bytes} is not a multiple of 4")
        if max_k < 1:
            raise ValueError(f"max_k: must be >= 1, got {max_k}")
        self.max_k = max_k
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        L = W // 4  # int32 results per write
        depth = -(-self.max_k // W)
        a = self.op_args
        chk = self.checks(m, pipelined=True)
        assert chk.latency <= WAITS + 1, chk.latency
        err = chk.error()

        m.submodules.xbuf = xbuf = Memory(shape=unsigned(8 * W), depth=depth, init=[])
        xw = xbuf.write_port()
        xr = xbuf.read_port(domain="comb")  # LUT-RAM: read at the response's beat

        # per-command constants, registered when CHECK passes (fields: stable)
        CW = range(depth + 1)
        kb_m1 = Signal(CW)  # beats per row, less one
        kb1 = Signal()  # one beat per row
        k_last = Signal(range(W + 1))  # bytes of a row's last beat
        n_w = isa.VOCAB_BITS + 1
        n_m1 = Signal(n_w)
        n_m2 = Signal(signed(n_w + 1))  # -1 when n = 1: never equal to a counter
        rows_m1 = Signal(isa.ROWS_BITS)
        rows_m2 = Signal(signed(isa.ROWS_BITS + 2))

        ptr_w = isa.ADDR_BITS + 1
        X, WT = 0, 1

        class Walk:
            """Position (phase, beat c, weight row j, token row t) of the request or the
            response side, with registered 'last' flags for the comparisons."""

            def __init__(self, nm):
                self.ph = Signal(name=f"{nm}_ph")
                self.c = Signal(range(depth), name=f"{nm}_c")
                self.j = Signal(n_w, name=f"{nm}_j")
                self.t = Signal(isa.ROWS_BITS + 1, name=f"{nm}_t")
                self.c_last = Signal(name=f"{nm}_c_last")  # c == kb - 1
                self.j_last = Signal(name=f"{nm}_j_last")  # j == n - 1
                self.t_last = Signal(name=f"{nm}_t_last")  # t == rows - 1
                self.more = Signal(name=f"{nm}_more")  # t < rows

            def reset(self):
                return [
                    self.ph.eq(X),
                    self.c.eq(0),
                    self.j.eq(0),
                    self.t.eq(0),
                    self.c_last.eq(kb1),
                    self.j_last.eq(n_m1 == 0),
                    self.t_last.eq(rows_m1 == 0),
                    self.more.eq(1),
                ]

            def step(self):
                """One beat on (in a ``with m.If(fire)``)."""
                m.d.sync += [
                    self.c.eq(Mux(self.c_last, 0, self.c + 1)),
                    self.c_last.eq(Mux(self.c_last, kb1, self.c + 1 == kb_m1)),
                ]
                with m.If(self.c_last):
                    with m.If(self.ph == X):
                        m.d.sync += [
                            self.ph.eq(WT),
                            self.j.eq(0),
                            self.j_last.eq(n_m1 == 0),
                        ]
                    with m.Elif(self.j_last):
                        m.d.sync += [
                            self.ph.eq(X),
                            self.t.eq(self.t + 1),
                            self.t_last.eq(self.t == rows_m2),
                            self.more.eq(~self.t_last),
                        ]
                    with m.Else():
                        m.d.sync += [self.j.eq(self.j + 1), self.j_last.eq(self.j == n_m2)]

        rq, rs = Walk("rq"), Walk("rs")
        m.d.comb += xr.addr.eq(rs.c)  # (outside the FSM: no state decode on the path)
        rq_x = Signal(ptr_w)
        rq_w = Signal(ptr_w)
        # the pipeline: products, adder-tree stages, the accumulator (each with its valid
        # and last-beat flags), held while ``freeze``
        freeze = Signal()
        acc = Signal(signed(32))
        lane = Signal(range(L))
        out_last = Signal()  # the result being completed is the token row's last
        out_j = Signal(n_w)  # results of this token row so far
        res_buf = [Signal(signed(32), name=f"res{i}") for i in range(L)]
        # write side: a flush marks res_buf pending; the next cycle copies it to the
        # write register (freeze while that is still busy)
        wpend = Signal()
        wlen = Signal(range(W + 1))
        dst_ptr = Signal(ptr_w)
        wr_valid = Signal()
        wr_addr = Signal(ptr_w)
        wr_len = Signal(range(W + 1))
        wr_data = Signal(8 * W)

        def beat_len(w):
            return Mux(w.c_last, k_last, W)

        # The run, outside the FSM (no state decode on its paths): rq.more, rs.more, the
        # valids, wpend and wr_valid are 0 outside RUN (set or cleared when CHECK passes,
        # all clear before the command finishes), so they gate everything below.
        # -------------------------------------------------- requests
        rq_len = beat_len(rq)
        m.d.comb += [
            self.rd.valid.eq(rq.more),
            self.rd.payload.addr.eq(Mux(rq.ph == X, rq_x, rq_w)),
            self.rd.payload.len.eq(rq_len),
        ]
        with m.If(rq.more & self.rd.ready):
            rq.step()
            with m.If(rq.ph == X):
                m.d.sync += rq_x.eq(rq_x + rq_len)
                with m.If(rq.c_last):
                    m.d.sync += rq_w.eq(a.weights)
            with m.Else():
                m.d.sync += rq_w.eq(rq_w + rq_len)

        # -------------------------------------------------- responses
        m.d.comb += freeze.eq(wpend & wr_valid)
        m.d.comb += self.rdata.ready.eq(rs.more & ~freeze)
        fire = Signal()
        m.d.comb += fire.eq(self.rdata.valid & rs.more & ~freeze)
        with m.If(fire):
            rs.step()
        m.d.comb += [
            xw.addr.eq(rs.c),
            xw.data.eq(self.rdata.payload),
            xw.en.eq(fire & (rs.ph == X)),
        ]

        # -------------------------------------------------- products, tree
        # operands registered, then the products (every multiplier registered
        # around: one DSP48E2 cycle of its own)
        v_in, last_in = Signal(name="v_in"), Signal(name="last_in")
        v, last = Signal(name="v_p"), Signal(name="last_p")
        x_r = Signal(8 * W, reset_less=True)
        w_r = Signal(8 * W, reset_less=True)
        terms = []
        valids = [v_in, v]  # every stage's valid: the pipeline is empty when none is
        with m.If(~freeze):
            m.d.sync += [
                v_in.eq(fire & (rs.ph == WT)),
                last_in.eq(rs.c_last),
                x_r.eq(xr.data),
                w_r.eq(self.rdata.payload),
                v.eq(v_in),
                last.eq(last_in),
            ]
            for i in range(W):
                xv = x_r[8 * i : 8 * i + 8].as_signed()
                wv = w_r[8 * i : 8 * i + 8].as_signed()
                p = Signal(signed(16), name=f"prod{i}", reset_less=True)
                m.d.sync += p.eq(xv * wv)
                terms.append(p)
        st = 0
        while len(terms) > 1:
            st += 1
            nv, nl = Signal(name=f"v_t{st}"), Signal(name=f"last_t{st}")
            nxt = []
            for g in range(0, len(terms), _GROUP):
                part = terms[g : g + _GROUP]
                total = sum(part[1:], part[0])
                r = Signal(total.shape(), name=f"sum{st}_{g // _GROUP}", reset_less=True)
                with m.If(~freeze):
                    m.d.sync += r.eq(total)
                nxt.append(r)
            with m.If(~freeze):
                m.d.sync += [nv.eq(v), nl.eq(last)]
            terms, v, last = nxt, nv, nl
            valids.append(v)
        assert st == tree_stages(W), st
        dot = terms[0]

        # -------------------------------------------------- accumulator, results
        res = Signal(signed(32))
        m.d.comb += res.eq(acc + dot)
        flush = (lane == L - 1) | out_last
        with m.If(v & ~freeze):
            with m.If(~last):
                m.d.sync += acc.eq(res)
            with m.Else():
                m.d.sync += acc.eq(0)
                for i in range(L):
                    with m.If(lane == i):
                        m.d.sync += res_buf[i].eq(res)
                with m.If(flush):
                    m.d.sync += [wpend.eq(1), wlen.eq((lane + 1) * 4), lane.eq(0)]
                with m.Else():
                    m.d.sync += lane.eq(lane + 1)
                m.d.sync += [
                    out_j.eq(Mux(out_last, 0, out_j + 1)),
                    out_last.eq(Mux(out_last, n_m1 == 0, out_j == n_m2)),
                ]

        # -------------------------------------------------- writes
        m.d.comb += [
            self.wr.valid.eq(wr_valid),
            self.wr.payload.addr.eq(wr_addr),
            self.wr.payload.len.eq(wr_len),
            self.wr.payload.data.eq(wr_data),
        ]
        with m.If(wr_valid & self.wr.ready):
            m.d.sync += wr_valid.eq(0)
        with m.If(wpend & ~wr_valid):
            m.d.sync += [
                wr_valid.eq(1),
                wr_addr.eq(dst_ptr),
                wr_len.eq(wlen),
                wr_data.eq(Cat(*res_buf)),
                dst_ptr.eq(dst_ptr + wlen),
            ]
            # a flush in this same cycle (above) sets it again
            with m.If(~(v & last & flush)):
                m.d.sync += wpend.eq(0)

        with m.FSM():
            waits = [(f"WAIT{i}", None) for i in range(WAITS)]
            passed = self.check_states(m, *waits, ("CHECK", err))
            with m.State("RUN"):
                busy = Signal()
                m.d.comb += busy.eq(Cat(*valids).any())
                with m.If(~rs.more & ~busy & ~wpend & ~wr_valid):
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["WAIT0"]):
            kb = (a.k + (W - 1)) // W
            m.d.sync += [
                kb_m1.eq(kb - 1),
                kb1.eq(kb == 1),
                k_last.eq(a.k - (kb - 1) * W),
                n_m1.eq(a.n - 1),
                n_m2.eq(a.n - 2),
                rows_m1.eq(a.rows - 1),
                rows_m2.eq(a.rows - 2),
            ]
        with m.If(passed["CHECK"]):
            m.d.sync += [
                *rq.reset(),
                *rs.reset(),
                rq_x.eq(a.src),
                rq_w.eq(a.weights),
                acc.eq(0),
                lane.eq(0),
                out_j.eq(0),
                out_last.eq(n_m1 == 0),
                dst_ptr.eq(a.dst),
                wpend.eq(0),
                wr_valid.eq(0),
            ]
        return m
