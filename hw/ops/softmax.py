"""SOFTMAX engine: causal integer softmax of attention logits (golden:
``Executor._op_softmax`` -> ``golden.model.op_softmax`` -> ``golden.softmax.softmax_fx``
with ``causal=True``).

src int16 Q7.8 [heads, rows, keys] -> dst uint16 UQ0.16 [heads, rows, keys], both
contiguous: flattened row r = h*rows + t at ``src + 2*r*keys``. Query t sees keys j <=
keys - rows + t (``golden.softmax.causal_mask``); masked entries are written 0. No data
value can fail (every int16 is a valid logit): the only errors are argument errors.

Checks: the SOFTMAX contract (``golden.isa.CONTRACTS``), in two cycles before any memory
access: CHK_DIM its ``Dims`` (rows, heads >= 1; rows <= keys <= ``SoftmaxConfig.max_len``)
and the RTL limit keys <= ``max_len`` (``LIMITS``; below); CHK_ADDR src, then dst,
each aligned to 2, then in range.

Micro-architecture
==================
``hw.softmax.Softmax`` with ``lanes`` (default 8) rows side by side: the rows are taken
in groups of ``lanes`` consecutive flattened rows (the last group may be short: its
unused lanes are masked off). A group feeds ``n_g`` beats, n_g = the largest visible
count of its rows (keys - rows + t + 1; keys when it holds a query t = rows - 1): beat j
carries element j of every lane with mask ``j < visible(lane)``. The elements beyond
n_g are masked in every lane, so they are not read: the engine writes them as zeros.

Rows are strided in memory, so the lanes are transposed through chunk buffers of
``dma_bytes/2`` elements (64 on a 128-byte port), two banks each way:

* request side: per chunk of the group, one read per lane (its row's next 64 elements,
  one beat) into a free input bank; it runs ahead into the next group while the block
  computes;
* response side: fills the bank lane by lane (in request order);
* feeder: drains a full input bank into the block's ``x`` stream, one beat (all lanes'
  element j) per cycle; the bank's lane registers shift down one element per beat, so
  no wide multiplexer picks element j;
* collector: the block's ``p`` beats into a free output bank, shifting in from the top
  (a chunk of cnt elements ends in the top cnt words);
* writer: per full output bank, one write per lane (its up to 64 probabilities, shifted
  down by 64 - cnt words); after a group's last chunk, each lane's masked tail [n_g,
  keys) as zero writes of up to one beat.

Why 8 lanes: 8 elements per cycle in each pass, and a decode step's 16 heads (one query
each) are two groups; each lane costs the block three multipliers, a divider and 2048
x 17 bits of row buffer (``lanes`` is a constructor parameter).

A row is written only after all of its elements went into the block (pass 1 precedes
pass 2), and later reads touch later rows: dst == src (in place) is safe.

Cycles
======
The block takes ``row_cycles(n) = 2n + RF + 8`` cycles per group (``hw.softmax``; RF =
recip_frac_bits = 16), the next group's reads overlapping the current group's
reciprocal and output pass. With no memory stalls (``expected_cycles``)::

    cycles = 9 + latency + nl_first + nl_last + sum over groups of (2 n_g + RF + 8)

(two check cycles; the first group's nl_first reads and the first response's latency;
the block's output latency; the last group's nl_last writes; the done cycle). Each pass
moves ``lanes`` elements per cycle. Writes of long zero tails (prefill) can exceed a
short group's compute time; then the writer sets the pace. Measured with a 1-cycle
memory, exactly the formula (``sim/test_op_softmax.py``, ``test_softmax_cycles``):
1 head, rows 20, keys 20 (groups n_g = 8, 16, 20): 182 cycles; decode, 16 heads over 512
keys (2 groups): 2122 cycles (2048 keys: 8266 by the formula); prefill 2 heads x 64 x
64: 1562 cycles.

Differences from the golden backend
===================================
* keys <= ``max_len`` (the block's row buffer; default 2048 = BitNet-0.73B's context and
  ``golden.softmax.PROB_BOUND_MAX_LEN``; 2048 x lanes x 17 bits), else BAD_DIM (golden
  allows ``SoftmaxConfig.max_len`` = 65535).
* dst partially overlapping src (other than dst == src) is not supported (the golden
  backend reads all of src before writing). The command stream never does this.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal

from golden import isa
from golden.config import DEFAULT, DatapathConfig
from golden.isa import ErrorCode, Opcode
from golden.softmax import PROB_BOUND_MAX_LEN
from hw.softmax import Softmax

from .base import Engine

DEFAULT_LANES = 8
DEFAULT_MAX_LEN = PROB_BOUND_MAX_LEN

_ABITS = isa.ADDR_BITS + 1
_RBITS = isa.HEADS_BITS + isa.ROWS_BITS  # flattened rows heads * rows


def expected_cycles(
    heads: int,
    rows: int,
    keys: int,
    cfg: DatapathConfig = DEFAULT,
    lanes: int = DEFAULT_LANES,
    latency: int = 1,
) -> int:
    """Cycles of one command without memory stalls (module docstring): per group of
    ``lanes`` rows 2 n_g + RF + 8, plus the first group's reads and the last one's writes."""
    rf = cfg.softmax.recip_frac_bits
    n_rows = heads * rows
    groups = []
    for r0 in range(0, n_rows, lanes):
        ts = [r % rows for r in range(r0, min(r0 + lanes, n_rows))]
        groups.append((max(keys - rows + t + 1 for t in ts), len(ts)))
    return 9 + latency + groups[0][1] + groups[-1][1] + sum(2 * n + rf + 8 for n, _ in groups)


class _Walker:
    """One agent's view of the current group: first row r0 and its query index t0;
    combinational per-lane t, validity, visible count, the group's n_g and lane count."""

    def __init__(self, m, name, L, a, R, vis0):
        self.r0 = Signal(_RBITS + 1, name=f"{name}_r0")
        self.t0 = Signal(isa.ROWS_BITS, name=f"{name}_t0")
        self.valid, self.vis = [], []
        t = self.t0
        ng = Const(0, isa.ROWS_BITS + 1)
        for lane in range(L):
            tl = Signal(isa.ROWS_BITS, name=f"{name}_t{lane}")
            m.d.comb += tl.eq(t)
            ok = Signal(name=f"{name}_ok{lane}")
            vis = Signal(isa.ROWS_BITS + 1, name=f"{name}_vis{lane}")
            m.d.comb += [ok.eq(self.r0 + lane < R), vis.eq(vis0 + tl)]
            self.valid.append(ok)
            self.vis.append(vis)
            ng = Mux(ok & (vis > ng), vis, ng)
            t = Mux(tl + 1 == a.rows, 0, tl + 1)
        self.t_next = Signal(isa.ROWS_BITS, name=f"{name}_tnext")  # t0 of the next group
        m.d.comb += self.t_next.eq(t)
        self.ng = Signal(isa.ROWS_BITS + 1, name=f"{name}_ng")
        self.nl = Signal(range(L + 1), name=f"{name}_nl")  # valid lanes
        self.last = Signal(name=f"{name}_last")  # the final group
        m.d.comb += [
            self.ng.eq(ng),
            self.last.eq(self.r0 + L >= R),
            self.nl.eq(Mux(self.last, R - self.r0, L)),
        ]

    def start(self, m):
        m.d.sync += [self.r0.eq(0), self.t0.eq(0)]

    def advance(self, m, L):
        m.d.sync += [self.r0.eq(self.r0 + L), self.t0.eq(self.t_next)]


class SoftmaxEngine(Engine):
    OPCODE = Opcode.SOFTMAX
    LIMITS = ("keys <= max_len",)  # the block's row buffer

    def __init__(
        self,
        cfg: DatapathConfig,
        dma_bytes: int,
        *,
        lanes: int = DEFAULT_LANES,
        max_len: int = DEFAULT_MAX_LEN,
    ):
        if dma_bytes < 4 or dma_bytes & (dma_bytes - 1):
            raise ValueError(f"dma_bytes: expected a power of two >= 4, got {dma_bytes}")
        if cfg.softmax.in_bits > 16 or cfg.softmax.out_bits > 16:
            raise ValueError("cfg.softmax: logits and probabilities must fit 16 bits")
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes: expected an int >= 1, got {lanes!r}")
        if (
            isinstance(max_len, bool)
            or not isinstance(max_len, int)
            or not 1 <= max_len <= min(cfg.softmax.max_len, (1 << isa.ROWS_BITS) - 1)
        ):
            raise ValueError(
                f"max_len: expected an int in [1, {cfg.softmax.max_len}], got {max_len!r}"
            )
        self.lanes = lanes
        self.max_len = max_len
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        L = self.lanes
        EPC = W // 2  # elements per chunk (one beat)
        sc = self.cfg.softmax
        a = self.op_args
        m.submodules.block = blk = Softmax(sc, lanes=L, max_len=self.max_len)

        # ------------------------------------------------------------ checks
        chk = self.checks(m, registered=True)
        err_dims, err_tensors = chk.error(stop="src"), chk.error(start="src")
        R = Signal(_RBITS)  # heads * rows
        row_bytes = Signal(isa.ROWS_BITS + 1)  # 2 * keys
        vis0 = Signal(isa.ROWS_BITS + 1)  # visible keys of query 0
        m.d.comb += [vis0.eq(a.keys - a.rows + 1), row_bytes.eq(a.keys * 2)]
        all_done = Signal()

        with m.FSM():
            passed = self.check_states(m, ("CHK_DIM", err_dims), ("CHK_ADDR", err_tensors))
            with m.State("RUN"):
                with m.If(all_done):
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["CHK_DIM"]):
            m.d.sync += R.eq(a.heads * a.rows)
        start_run = passed["CHK_ADDR"]

        # ------------------------------------------------------------ chunk buffers
        ib = [[Signal(8 * W, name=f"ib{b}_{lane}") for lane in range(L)] for b in range(2)]
        ib_busy = Signal(2)  # reserved by the request side
        ib_full = Signal(2)  # every lane's response arrived
        ib_nl = [Signal(range(L + 1), name=f"ib_nl{b}") for b in range(2)]
        ob = [[Signal(16 * EPC, name=f"ob{b}_{lane}") for lane in range(L)] for b in range(2)]
        ob_full = Signal(2)
        ob_cnt = [Signal(range(EPC + 1), name=f"ob_cnt{b}") for b in range(2)]
        ob_last = Signal(2)  # the chunk ends its group

        # ------------------------------------------------------------ request side
        rw = _Walker(m, "rq", L, a, R, vis0)
        r_bank = Signal()
        r_lane = Signal(range(L))
        r_j = Signal(isa.ROWS_BITS + 1)  # first element of the chunk
        r_grp = Signal(_ABITS)  # src row r0
        r_chunk = Signal(_ABITS)  # lane 0 at element r_j
        r_ptr = Signal(_ABITS)  # this lane at element r_j
        r_act = Signal()
        r_left = Signal(isa.ROWS_BITS + 1)
        m.d.comb += r_left.eq(rw.ng - r_j)
        r_cnt = Mux(r_left > EPC, EPC, r_left)
        with m.If(start_run):
            rw.start(m)
            m.d.sync += [
                r_bank.eq(0),
                r_lane.eq(0),
                r_j.eq(0),
                r_grp.eq(a.src),
                r_chunk.eq(a.src),
                r_ptr.eq(a.src),
                r_act.eq(1),
                ib_busy.eq(0),
                ib_full.eq(0),
                ob_full.eq(0),
            ]
        can = r_act & ((r_lane != 0) | ~ib_busy.bit_select(r_bank, 1))
        m.d.comb += [
            self.rd.valid.eq(can),
            self.rd.payload.addr.eq(r_ptr),
            self.rd.payload.len.eq(r_cnt * 2),
        ]
        with m.If(self.rd.valid & self.rd.ready):
            with m.If(r_lane == 0):
                for b in range(2):
                    with m.If(r_bank == b):
                        m.d.sync += [ib_busy[b].eq(1), ib_nl[b].eq(rw.nl)]
            m.d.sync += [r_lane.eq(r_lane + 1), r_ptr.eq(r_ptr + row_bytes)]
            with m.If(r_lane + 1 == rw.nl):
                m.d.sync += [r_lane.eq(0), r_bank.eq(~r_bank)]
                with m.If(r_left <= EPC):  # the group's last chunk
                    rw.advance(m, L)
                    nxt = r_grp + L * row_bytes
                    m.d.sync += [r_j.eq(0), r_grp.eq(nxt), r_chunk.eq(nxt), r_ptr.eq(nxt)]
                    with m.If(rw.last):
                        m.d.sync += r_act.eq(0)
                with m.Else():
                    m.d.sync += [r_j.eq(r_j + EPC), r_chunk.eq(r_chunk + W), r_ptr.eq(r_chunk + W)]

        # ------------------------------------------------------------ response side
        f_bank = Signal()  # bank being filled by responses
        f_lane = Signal(range(L))
        m.d.comb += self.rdata.ready.eq(1)
        with m.If(start_run):
            m.d.sync += [f_bank.eq(0), f_lane.eq(0)]
        with m.If(self.rdata.valid):
            for b in range(2):
                for lane in range(L):
                    with m.If((f_bank == b) & (f_lane == lane)):
                        m.d.sync += ib[b][lane].eq(self.rdata.payload)
            m.d.sync += f_lane.eq(f_lane + 1)
            nl = Mux(f_bank, ib_nl[1], ib_nl[0])
            with m.If(f_lane + 1 == nl):
                m.d.sync += [f_lane.eq(0), f_bank.eq(~f_bank)]
                for b in range(2):
                    with m.If(f_bank == b):
                        m.d.sync += ib_full[b].eq(1)

        # ------------------------------------------------------------ feeder
        fw = _Walker(m, "fd", L, a, R, vis0)
        x_bank = Signal()
        x_e = Signal(range(EPC))  # element inside the chunk
        x_j = Signal(isa.ROWS_BITS + 1)  # element of the row
        x_act = Signal()
        with m.If(start_run):
            fw.start(m)
            m.d.sync += [x_bank.eq(0), x_e.eq(0), x_j.eq(0), x_act.eq(1)]
        x = blk.x
        x_last = x_j + 1 == fw.ng
        m.d.comb += [x.valid.eq(x_act & ib_full.bit_select(x_bank, 1)), x.payload.last.eq(x_last)]
        for lane in range(L):
            word = Mux(x_bank, ib[1][lane][:16], ib[0][lane][:16])
            m.d.comb += [
                x.payload.data[lane].eq(word),
                x.payload.mask[lane].eq(fw.valid[lane] & (x_j < fw.vis[lane])),
            ]
        with m.If(x.valid & x.ready):
            # the input banks are shift registers: element x_e is always at the bottom
            for b in range(2):
                with m.If(x_bank == b):
                    m.d.sync += [ib[b][lane].eq(ib[b][lane][16:]) for lane in range(L)]
            m.d.sync += [x_e.eq(x_e + 1), x_j.eq(x_j + 1)]
            with m.If((x_e == EPC - 1) | x_last):
                m.d.sync += [x_e.eq(0), x_bank.eq(~x_bank)]
                for b in range(2):
                    with m.If(x_bank == b):
                        m.d.sync += [ib_full[b].eq(0), ib_busy[b].eq(0)]
            with m.If(x_last):
                fw.advance(m, L)
                m.d.sync += x_j.eq(0)
                with m.If(fw.last):
                    m.d.sync += x_act.eq(0)

        # ------------------------------------------------------------ collector
        c_bank = Signal()
        c_e = Signal(range(EPC))
        p = blk.p
        with m.If(start_run):
            m.d.sync += [c_bank.eq(0), c_e.eq(0)]
        m.d.comb += p.ready.eq(~ob_full.bit_select(c_bank, 1))
        with m.If(p.valid & p.ready):
            for b in range(2):
                with m.If(c_bank == b):
                    # shift registers: a chunk of cnt elements ends in the top cnt words
                    m.d.sync += [
                        ob[b][lane].eq(Cat(ob[b][lane][16:], p.payload.data[lane]))
                        for lane in range(L)
                    ]
            m.d.sync += c_e.eq(c_e + 1)
            with m.If((c_e == EPC - 1) | p.payload.last):
                m.d.sync += [c_e.eq(0), c_bank.eq(~c_bank)]
                for b in range(2):
                    with m.If(c_bank == b):
                        m.d.sync += [
                            ob_full[b].eq(1),
                            ob_cnt[b].eq(c_e + 1),
                            ob_last[b].eq(p.payload.last),
                        ]

        # ------------------------------------------------------------ writer
        ww = _Walker(m, "wr", L, a, R, vis0)
        W_DATA, W_ZERO, W_DONE = range(3)
        w_st = Signal(range(3), init=W_DONE)
        w_bank = Signal()
        w_lane = Signal(range(L))
        w_grp = Signal(_ABITS)  # dst row r0
        w_chunk = Signal(_ABITS)  # lane 0 at the chunk
        w_ptr = Signal(_ABITS)
        z_base = Signal(_ABITS)  # this lane's zero tail
        z_left = Signal(isa.ROWS_BITS + 1)  # zeros left in this lane
        tail = Signal(isa.ROWS_BITS + 1)
        m.d.comb += tail.eq(a.keys - ww.ng)
        with m.If(start_run):
            ww.start(m)
            m.d.sync += [
                w_st.eq(W_DATA),
                w_bank.eq(0),
                w_lane.eq(0),
                w_grp.eq(a.dst),
                w_chunk.eq(a.dst),
                w_ptr.eq(a.dst),
            ]

        def next_group():
            ww.advance(m, L)
            nxt = w_grp + L * row_bytes
            m.d.sync += [w_grp.eq(nxt), w_chunk.eq(nxt), w_ptr.eq(nxt), w_st.eq(W_DATA)]
            with m.If(ww.last):
                m.d.sync += w_st.eq(W_DONE)

        wr = self.wr
        with m.Switch(w_st):
            with m.Case(W_DATA):
                full = ob_full.bit_select(w_bank, 1)
                cnt = Mux(w_bank, ob_cnt[1], ob_cnt[0])
                last = ob_last.bit_select(w_bank, 1)
                data = Signal(16 * EPC)
                empty = Signal(range(EPC + 1))  # unused bottom words
                m.d.comb += empty.eq(EPC - cnt)
                for b in range(2):
                    for lane in range(L):
                        with m.If((w_bank == b) & (w_lane == lane)):
                            m.d.comb += data.eq(ob[b][lane])
                m.d.comb += [
                    wr.valid.eq(full),
                    wr.payload.addr.eq(w_ptr),
                    wr.payload.len.eq(cnt * 2),
                    wr.payload.data.eq(data >> Cat(Const(0, 4), empty)),
                ]
                with m.If(wr.valid & wr.ready):
                    m.d.sync += [w_lane.eq(w_lane + 1), w_ptr.eq(w_ptr + row_bytes)]
                    with m.If(w_lane + 1 == ww.nl):
                        m.d.sync += [
                            w_lane.eq(0),
                            w_bank.eq(~w_bank),
                            w_chunk.eq(w_chunk + W),
                            w_ptr.eq(w_chunk + W),
                        ]
                        for b in range(2):
                            with m.If(w_bank == b):
                                m.d.sync += ob_full[b].eq(0)
                        with m.If(last):
                            with m.If(tail != 0):
                                zb = w_grp + ww.ng * 2
                                m.d.sync += [
                                    w_st.eq(W_ZERO),
                                    z_base.eq(zb),
                                    w_ptr.eq(zb),
                                    z_left.eq(tail),
                                ]
                            with m.Else():
                                next_group()
            with m.Case(W_ZERO):
                zc = Mux(z_left > EPC, EPC, z_left)
                m.d.comb += [
                    wr.valid.eq(1),
                    wr.payload.addr.eq(w_ptr),
                    wr.payload.len.eq(zc * 2),
                    wr.payload.data.eq(0),
                ]
                with m.If(wr.ready):
                    m.d.sync += [z_left.eq(z_left - zc), w_ptr.eq(w_ptr + W)]
                    with m.If(z_left == zc):  # this lane's tail is done
                        m.d.sync += [
                            w_lane.eq(w_lane + 1),
                            z_base.eq(z_base + row_bytes),
                            w_ptr.eq(z_base + row_bytes),
                            z_left.eq(tail),
                        ]
                        with m.If(w_lane + 1 == ww.nl):
                            m.d.sync += w_lane.eq(0)
                            next_group()

        m.d.comb += all_done.eq(w_st == W_DONE)
        return m
