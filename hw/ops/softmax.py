"""SOFTMAX engine: causal integer softmax of attention logits (golden:
``Executor._op_softmax`` -> ``golden.model.op_softmax`` -> ``golden.softmax.softmax_fx``
with ``causal=True``).

src int16 Q7.8 [heads, rows, keys] -> dst uint16 UQ0.16 [heads, rows, keys], both
contiguous: flattened row r = h*rows + t at ``src + 2*r*keys``. Query t sees keys j <=
keys - rows + t (``golden.softmax.causal_mask``); masked entries are written 0. No data
value can fail (every int16 is a valid logit): the only errors are argument errors.

Checks: the SOFTMAX contract (``golden.isa.CONTRACTS``), in three cycles before any
memory access: CHK_DIM its ``Dims`` (rows, heads >= 1; rows <= keys <=
``SoftmaxConfig.max_len``) and the RTL limit keys <= ``max_len`` (``LIMITS``; below);
CHK_SPAN (the tensor spans go through registers); CHK_ADDR src, then dst, each aligned to
2, then in range. Every verdict comes from a register.

Micro-architecture
==================
``hw.softmax.Softmax`` with ``lanes`` L rows side by side. A group is the rows of one
query t for L consecutive heads h0 .. h0 + nl - 1 (nl = min(L, heads - h0)), groups in
the order t = 0, 1, ..; h0 = 0, L, ..: every row of a group sees the same n_g = keys -
rows + t + 1 keys, so the block gets n_g beats (element j of every lane; lanes beyond nl
masked) and the keys beyond n_g are written as zeros without being read. A decode
step's 16 heads (one query) are two groups of 8.

The rows of a group are ``2*keys*rows`` bytes apart, so the lanes are transposed through
chunks of ``chunk`` C elements (16 bytes at C = 8): one read or write per lane and chunk.

* request side: per chunk of the group, L reads (lane l's row, elements [j0, j0 + C);
  lanes beyond nl read lane nl - 1's chunk again, so every chunk is L reads), one per
  cycle while the read-ahead FIFO has room (``read_ahead`` chunks: reads in flight plus
  chunks waiting; it covers the memory latency, so reads run one per cycle);
* distributor: FIFO -> ``next`` (lanes 0 .. L-2, one chunk per cycle); when the feeder has
  used ``cur`` up, all of ``next`` and lane L-1's chunk (the FIFO head) move to ``cur``
  in one cycle;
* feeder: beat j = element j mod C of every lane of ``cur`` (a C-to-1 word select);
* collector: the block's ``p`` beats, through a two-entry skid buffer (so that the
  block's clock enable is a register, not the writer's ``wr.ready``), into word e of
  every lane's ``col`` register (a clock enable per word, no multiplexer); a full chunk
  (or a row's last) moves to ``wout`` in one cycle;
* writer: per chunk of ``wout``, nl writes (lane l's C probabilities); after a row's last
  chunk each lane's masked tail [n_g, keys) as zero writes of up to ``dma_bytes``.

A row is written only after all of its elements went into the block (pass 1 precedes
pass 2), and later reads touch later rows: dst == src (in place) is safe.

Cycles
======
The block takes ``hw.softmax.row_cycles(n_g) = 2 n_g + RF + L + 17`` per group (RF =
recip_frac_bits = 16), the next group's reads running ahead during the current group's
reciprocal and output pass. With no memory stalls (``expected_cycles``)::

    cycles = L + latency + LATENCY + 6 + nl_last + wait + sum over groups of row_cycles(n_g)

(three check cycles; the first chunk's L reads, the memory latency and the distributor's
cycles; the block's output latency ``hw.softmax.LATENCY`` and the skid buffer after it;
the last chunk's nl_last
writes, after ``wait`` = max(0, nl_last - c) cycles for the writes of the chunk before
when the last row has more than one chunk and its last chunk holds c elements; the done
cycle). Exact while no row's masked tail takes the writer longer than the next group's
compute (rows == keys prefills of many heads: then the writer sets the pace) and chunk
>= lanes (the writer's nl writes per chunk keep up with the block). Measured with a
1-cycle memory, exactly the formula (``sim/test_op_softmax.py``,
``test_softmax_cycles``): 1 head, rows 20, keys 20 (20 groups of one lane): 1288 cycles;
decode, 16 heads over 130 keys (2 groups): 645 cycles; over 128 keys 631 and over 2048
keys 8311 by the formula (the transposer of whole 128-byte beats before: 586 and 8266).

Differences from the golden backend
===================================
* keys <= ``max_len`` (the block's row buffer; default 2048 = BitNet-0.73B's context and
  ``golden.softmax.PROB_BOUND_MAX_LEN``; 2048 x lanes x 17 bits), else BAD_DIM (golden
  allows ``SoftmaxConfig.max_len`` = 65535).
* dst partially overlapping src (other than dst == src) is not supported (the golden
  backend reads all of src before writing). The command stream never does this.
"""

from __future__ import annotations

from amaranth import Array, Module, Mux, Signal
from amaranth.lib.memory import Memory

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.softmax import LATENCY, Softmax, row_cycles

from .base import Engine, check_power_of_two

_ABITS = isa.ADDR_BITS + 1


def expected_cycles(
    heads: int,
    rows: int,
    keys: int,
    cfg: DatapathConfig,
    lanes: int,
    chunk: int,
    latency: int = 1,
) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    groups = []
    for t in range(rows):
        for h0 in range(0, heads, lanes):
            groups.append((keys - rows + t + 1, min(lanes, heads - h0)))
    n_last, nl_last = groups[-1]
    cnt_last = n_last - chunk * ((n_last - 1) // chunk)  # elements of the last chunk
    wait = max(0, nl_last - cnt_last) if n_last > chunk else 0
    return (
        lanes
        + latency
        + LATENCY
        + 6
        + nl_last
        + wait
        + sum(row_cycles(n, cfg.softmax, lanes) for n, _ in groups)
    )


def read_ahead_for(dram_latency: int, lanes: int) -> int:
    """Chunks of read-ahead that cover ``dram_latency`` at one read per cycle: the next
    power of two >= latency + 2 lanes."""
    need = dram_latency + 2 * lanes
    return 1 << (need - 1).bit_length()


class _Vis0:
    """Registers from the command (valid from the cycle after start): n = the visible
    keys of query 0 (keys - rows + 1), n - 1, n == 1, n <= C, n < C."""

    def __init__(self, m, a, C):
        self.n = Signal(isa.ROWS_BITS + 1, name="vis0")
        self.n_m1 = Signal(isa.ROWS_BITS + 1, name="vis0_m1")
        self.one, self.le_c, self.lt_c = Signal(), Signal(), Signal()
        n = a.keys - a.rows + 1
        m.d.sync += [
            self.n.eq(n),
            self.n_m1.eq(a.keys - a.rows),
            self.one.eq(a.keys == a.rows),
            self.le_c.eq(n <= C),
            self.lt_c.eq(n < C),
        ]


class _Groups:
    """One agent's walk over the groups (t, h0): registers t, the heads left hleft =
    heads - h0, wrap (the group ends its query: hleft <= L), nl, n_g (and n_g <= C), the
    group's first row address gbase and its query's trow; ``last``: the final group.
    Loaded from the command while ``run`` is low; ``adv`` (driven by the agent) moves
    to the next group; ``next_gbase``: the next group's gbase."""

    def __init__(self, m, name, L, C, a, base, v0, run, hstride, hsL, row_bytes):
        self.t = Signal(isa.ROWS_BITS, name=f"{name}_t")
        self.hleft = Signal(isa.HEADS_BITS + 1, name=f"{name}_hleft")
        self.wrap = Signal(name=f"{name}_wrap")
        self.tlast = Signal(name=f"{name}_tlast")
        self.nl = Signal(range(L + 1), name=f"{name}_nl")
        self.ng = Signal(isa.ROWS_BITS + 1, name=f"{name}_ng")
        self.ng_le_c = Signal(name=f"{name}_ng_le_c")  # the row is one chunk
        self.ng_lt_c = Signal(name=f"{name}_ng_lt_c")  # ... and so is the next query's
        self.gbase = Signal(_ABITS, name=f"{name}_gbase")
        self.trow = Signal(_ABITS, name=f"{name}_trow")
        self.last = Signal(name=f"{name}_last")
        self.adv = Signal(name=f"{name}_adv")
        self.next_gbase = Signal(_ABITS, name=f"{name}_next_gbase")
        self.next_ng_le_c = Signal(name=f"{name}_next_ng_le_c")
        # registers one step ahead: the next query's first row, the next group's in it
        nrow = Signal(_ABITS, name=f"{name}_nrow")  # trow + 2 keys
        gplus = Signal(_ABITS, name=f"{name}_gplus")  # gbase + L heads
        m.d.comb += [
            self.last.eq(self.wrap & self.tlast),
            self.next_gbase.eq(Mux(self.wrap, nrow, gplus)),
            self.next_ng_le_c.eq(Mux(self.wrap, self.ng_lt_c, self.ng_le_c)),
        ]
        heads_le_l = a.heads <= L
        first_nl = Mux(heads_le_l, a.heads, L)
        with m.If(~run):
            m.d.sync += [
                self.t.eq(0),
                self.hleft.eq(a.heads),
                self.wrap.eq(heads_le_l),
                self.tlast.eq(a.rows == 1),
                self.nl.eq(first_nl),
                self.ng.eq(v0.n),
                self.ng_le_c.eq(v0.le_c),
                self.ng_lt_c.eq(v0.lt_c),
                self.gbase.eq(base),
                self.trow.eq(base),
                nrow.eq(base + row_bytes),
                gplus.eq(base + hsL),
            ]
        with m.Elif(self.adv):
            m.d.sync += [
                self.gbase.eq(self.next_gbase),
                self.ng_le_c.eq(self.next_ng_le_c),
                gplus.eq(Mux(self.wrap, nrow, gplus) + hsL),
            ]
            with m.If(self.wrap):
                m.d.sync += [
                    self.t.eq(self.t + 1),
                    self.tlast.eq(self.t + 2 == a.rows),
                    self.hleft.eq(a.heads),
                    self.wrap.eq(heads_le_l),
                    self.nl.eq(first_nl),
                    self.ng.eq(self.ng + 1),
                    self.ng_lt_c.eq(self.ng < C - 1),
                    self.trow.eq(nrow),
                    nrow.eq(nrow + row_bytes),
                ]
            with m.Else():
                rest = self.hleft - L
                m.d.sync += [
                    self.hleft.eq(rest),
                    self.wrap.eq(self.hleft <= 2 * L),
                    self.nl.eq(Mux(self.hleft <= 2 * L, rest, L)),
                ]


class SoftmaxEngine(Engine):
    OPCODE = Opcode.SOFTMAX
    DESIGN_FIELDS = {
        "lanes": "softmax_lanes",
        "max_len": "max_keys",
        "chunk": "softmax_chunk",
        "read_ahead": "softmax_read_ahead",
    }
    LIMITS = ("keys <= max_len",)  # the block's row buffer

    def __init__(
        self,
        cfg: DatapathConfig,
        dma_bytes: int,
        *,
        lanes: int,
        max_len: int,
        chunk: int,
        read_ahead: int,
    ):
        check_power_of_two("dma_bytes", dma_bytes, lo=4)
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
        check_power_of_two("chunk", chunk, hi=dma_bytes // 2)
        check_power_of_two("read_ahead", read_ahead, lo=2)
        self.lanes = lanes
        self.max_len = max_len
        self.chunk = chunk
        self.read_ahead = read_ahead
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        L, C, D = self.lanes, self.chunk, self.read_ahead
        CB = 16 * C  # bits of a chunk
        clog = C.bit_length() - 1
        sc = self.cfg.softmax
        a = self.op_args
        m.submodules.block = blk = Softmax(sc, lanes=L, max_len=self.max_len)

        # ------------------------------------------------------------ checks
        chk = self.checks(m, registered=2)
        # the verdicts registered (the arguments are valid from start, the tensor ends
        # from the second cycle after it)
        err_dims, err_tensors = Signal(ErrorCode), Signal(ErrorCode)
        m.d.sync += [err_dims.eq(chk.error(stop="src")), err_tensors.eq(chk.error(start="src"))]
        row_bytes = Signal(isa.ROWS_BITS + 1)  # 2 * keys
        # from the command, registered (the agents load their start from these)
        v0 = _Vis0(m, a, C)
        vis0 = v0.n
        m.d.sync += row_bytes.eq(a.keys * 2)
        hstride = Signal(_ABITS)  # 2 * keys * rows: from head h to head h + 1
        hsL = Signal(_ABITS)  # L heads
        run = Signal()  # the command runs: every agent loads its start while it is low
        all_done = Signal()

        with m.FSM():
            passed = self.check_states(
                m, ("CHK_DIM", err_dims), ("CHK_SPAN", None), ("CHK_ADDR", err_tensors)
            )
            with m.State("RUN"):
                with m.If(all_done):
                    self.finish(m, ErrorCode.NONE)
        # from the command every cycle (valid from the cycle after start; one DSP each)
        m.d.sync += [hstride.eq(a.keys * a.rows * 2), hsL.eq(a.keys * a.rows * (2 * L))]
        start_run = passed["CHK_ADDR"]
        with m.If(start_run):
            m.d.sync += run.eq(1)
        with m.Elif(self.done):
            m.d.sync += run.eq(0)

        def groups(name, base):
            return _Groups(m, name, L, C, a, base, v0, run, hstride, hsL, row_bytes)

        # ------------------------------------------------------------ request side
        rq = groups("rq", a.src)
        r_on = Signal()
        r_lane = Signal(range(L))
        r_more = Signal()  # r_lane + 1 < nl: the next lane has a row of its own
        r_left = Signal(isa.ROWS_BITS + 1)  # elements of the row from this chunk on
        r_lastc = Signal()  # this chunk ends the row: r_left <= C
        r_cptr = Signal(_ABITS)  # lane 0's row at this chunk
        r_lptr = Signal(_ABITS)  # this lane's row (the last valid lane's, beyond nl)
        n_iss = Signal(range(2 * D))  # reads issued and chunks taken, modulo 2D
        n_pop = Signal(range(2 * D))
        # room for a read: a register one cycle late, so it keeps a place for the read
        # it may allow meanwhile (D - 1 chunks of read-ahead in use at most)
        room = Signal()
        m.d.sync += room.eq((n_iss - n_pop)[: D.bit_length()] < D - 1)
        rd_fire = Signal()
        m.d.comb += [
            self.rd.valid.eq(r_on & room),
            self.rd.payload.addr.eq(r_lptr),
            self.rd.payload.len.eq(Mux(r_lastc, r_left, C) * 2),
            rd_fire.eq(self.rd.valid & self.rd.ready),
        ]
        with m.If(~run):
            m.d.sync += [
                r_on.eq(start_run),
                r_lane.eq(0),
                r_more.eq(a.heads > 1),
                r_left.eq(vis0),
                r_lastc.eq(v0.le_c),
                r_cptr.eq(a.src),
                r_lptr.eq(a.src),
                n_iss.eq(0),
            ]
        with m.Elif(rd_fire):
            m.d.sync += [n_iss.eq(n_iss + 1), r_lane.eq(r_lane + 1), r_more.eq(r_lane + 2 < rq.nl)]
            with m.If(r_more):
                m.d.sync += r_lptr.eq(r_lptr + hstride)
            with m.If(r_lane == L - 1):
                m.d.sync += [r_lane.eq(0)]
                with m.If(r_lastc):  # the group's last chunk
                    m.d.comb += rq.adv.eq(1)
                    nl_next = Mux(
                        rq.wrap,
                        Mux(a.heads <= L, a.heads, L),
                        Mux(rq.hleft <= 2 * L, rq.hleft - L, L),
                    )
                    m.d.sync += [
                        r_more.eq(nl_next > 1),
                        r_left.eq(rq.ng + rq.wrap),
                        r_lastc.eq(rq.next_ng_le_c),
                        r_cptr.eq(rq.next_gbase),
                        r_lptr.eq(rq.next_gbase),
                    ]
                    with m.If(rq.last):
                        m.d.sync += r_on.eq(0)
                with m.Else():
                    m.d.sync += [
                        r_more.eq(rq.nl > 1),
                        r_left.eq(r_left - C),
                        r_lastc.eq(r_left <= 2 * C),
                        r_cptr.eq(r_cptr + 2 * C),
                        r_lptr.eq(r_cptr + 2 * C),
                    ]

        # ------------------------------------------------------------ read-ahead FIFO
        # responses in order into a LUT RAM of D chunks; the credits (reads issued minus
        # chunks taken <= D) keep a place for every response
        fmem = Memory(shape=CB, depth=D, init=[])
        m.submodules.fifo = fmem
        fw = fmem.write_port()
        fr = fmem.read_port(domain="comb")
        f_wp = Signal(range(2 * D))
        f_rp = Signal(range(2 * D))
        f_any = Signal()
        m.d.comb += [
            self.rdata.ready.eq(1),
            fw.addr.eq(f_wp[: max(1, (D - 1).bit_length())] if D > 1 else 0),
            fw.data.eq(self.rdata.payload[:CB]),
            fw.en.eq(self.rdata.valid),
            fr.addr.eq(f_rp[: max(1, (D - 1).bit_length())] if D > 1 else 0),
            f_any.eq(f_wp != f_rp),
        ]
        pop = Signal()  # the distributor takes the FIFO's head
        with m.If(~run):
            m.d.sync += [f_wp.eq(0), f_rp.eq(0), n_pop.eq(0)]
        with m.Else():
            with m.If(self.rdata.valid):
                m.d.sync += f_wp.eq(f_wp + 1)
            with m.If(pop):
                m.d.sync += [f_rp.eq(f_rp + 1), n_pop.eq(n_pop + 1)]

        # ------------------------------------------------------------ distributor
        nxt_regs = [Signal(CB, name=f"next{lane}") for lane in range(L - 1)]
        nx_cnt = Signal(range(L))  # lanes of next filled
        cur = [Signal(CB, name=f"cur{lane}") for lane in range(L)]
        cur_valid = Signal()
        cur_done = Signal()  # the feeder takes cur's last beat this cycle
        fill = f_any & (nx_cnt != L - 1)
        copy = f_any & (nx_cnt == L - 1) & (~cur_valid | cur_done)
        m.d.comb += pop.eq(fill | copy)
        with m.If(~run):
            m.d.sync += [nx_cnt.eq(0), cur_valid.eq(0)]
        with m.Elif(copy):
            m.d.sync += [cur[lane].eq(nxt_regs[lane]) for lane in range(L - 1)]
            m.d.sync += [cur[L - 1].eq(fr.data), cur_valid.eq(1), nx_cnt.eq(0)]
        with m.Else():
            with m.If(fill):
                for lane in range(L - 1):
                    with m.If(nx_cnt == lane):
                        m.d.sync += nxt_regs[lane].eq(fr.data)
                m.d.sync += nx_cnt.eq(nx_cnt + 1)
            with m.If(cur_done):
                m.d.sync += cur_valid.eq(0)

        # ------------------------------------------------------------ feeder
        fd = groups("fd", a.src)
        f_on = Signal()
        f_j = Signal(isa.ROWS_BITS + 1)  # element of the row
        f_rem = Signal(isa.ROWS_BITS + 1)  # elements after this one in the row
        f_last = Signal()  # f_rem == 0
        x = blk.x
        with m.If(~run):
            m.d.sync += [f_on.eq(start_run), f_j.eq(0), f_rem.eq(v0.n_m1), f_last.eq(v0.one)]
        e = f_j[:clog] if clog else 0
        m.d.comb += [x.valid.eq(f_on & cur_valid), x.payload.last.eq(f_last)]
        for lane in range(L):
            words = [cur[lane][16 * i : 16 * i + 16] for i in range(C)]
            m.d.comb += [
                x.payload.data[lane].eq(Array(words)[e] if C > 1 else words[0]),
                x.payload.mask[lane].eq(lane < fd.nl),
            ]
        x_fire = Signal()
        m.d.comb += [
            x_fire.eq(x.valid & x.ready),
            cur_done.eq(x_fire & ((e == C - 1) | f_last)),
        ]
        with m.If(run & x_fire):
            m.d.sync += [f_j.eq(f_j + 1), f_rem.eq(f_rem - 1), f_last.eq(f_rem == 1)]
            with m.If(f_last):
                m.d.comb += fd.adv.eq(1)
                m.d.sync += [
                    f_j.eq(0),
                    f_rem.eq(fd.ng - 1 + fd.wrap),
                    f_last.eq((fd.ng == 1) & ~fd.wrap),
                ]
                with m.If(fd.last):
                    m.d.sync += f_on.eq(0)

        # ------------------------------------------------------------ collector
        # a skid buffer on the block's output: its ready (the whole block's clock enable)
        # is a register, not the writer's wr.ready through the collector
        bp = blk.p
        sk_main, sk_skid = Signal.like(bp.payload), Signal.like(bp.payload)
        sk_mv, sk_sv = Signal(), Signal()
        p_ready = Signal()
        m.d.comb += bp.ready.eq(~sk_sv)
        bp_fire = bp.valid & bp.ready
        with m.If(~run):
            m.d.sync += [sk_mv.eq(0), sk_sv.eq(0)]
        with m.Elif(p_ready | ~sk_mv):
            m.d.sync += [
                sk_main.eq(Mux(sk_sv, sk_skid, bp.payload)),
                sk_mv.eq(sk_sv | bp_fire),
                sk_sv.eq(0),
            ]
        with m.Elif(bp_fire):
            m.d.sync += [sk_skid.eq(bp.payload), sk_sv.eq(1)]
        col = [Signal(CB, name=f"col{lane}") for lane in range(L)]
        c_e = Signal(range(C))
        col_full = Signal()
        col_cnt = Signal(range(C + 1))
        col_last = Signal()
        wout = [Signal(CB, name=f"wout{lane}") for lane in range(L)]
        wout_full = Signal()
        w_cnt = Signal(range(C + 1))
        w_rowend = Signal()
        w_lastlane = Signal()  # the writer is at wout's last lane
        W_DATA, W_ZERO, W_DONE = range(3)
        w_st = Signal(range(3), init=W_DONE)
        # w_st == W_DATA / W_ZERO as registers of their own (the write handshake's depth)
        w_is_data, w_is_zero = Signal(), Signal()
        # wout goes free when its last lane is written; the collector moves a full chunk
        # to wout when it is free or going free (only wr.ready is not a register here)
        copy_now = col_full & ~wout_full
        copy_if = col_full & wout_full & w_is_data & w_lastlane
        copy_w = Signal()
        m.d.comb += [
            copy_w.eq(copy_now | (copy_if & self.wr.ready)),
            p_ready.eq(~col_full | copy_w),
        ]
        p_fire = sk_mv & p_ready
        done_chunk = p_fire & ((c_e == C - 1) | sk_main.last)
        with m.If(~run):
            m.d.sync += [c_e.eq(0), col_full.eq(0)]
        with m.Else():
            with m.If(p_fire):
                for i in range(C):
                    with m.If(c_e == i):
                        m.d.sync += [
                            col[lane][16 * i : 16 * i + 16].eq(sk_main.data[lane])
                            for lane in range(L)
                        ]
                m.d.sync += c_e.eq(c_e + 1)
                with m.If(done_chunk):
                    m.d.sync += [c_e.eq(0), col_cnt.eq(c_e + 1), col_last.eq(sk_main.last)]
            m.d.sync += col_full.eq(done_chunk | (col_full & ~copy_w))
        with m.If(copy_w):
            m.d.sync += [wout[lane].eq(col[lane]) for lane in range(L)]
            m.d.sync += [w_cnt.eq(col_cnt), w_rowend.eq(col_last)]

        # ------------------------------------------------------------ writer
        wg = groups("wr", a.dst)
        w_lane = Signal(range(L))
        w_cptr = Signal(_ABITS)  # lane 0's row at the chunk
        w_lptr = Signal(_ABITS)
        w_tail = Signal(isa.ROWS_BITS + 1)  # masked keys per row of the group: keys - n_g
        ZP = W // 2  # zeros per write
        zlog = ZP.bit_length() - 1
        z_np = Signal(isa.ROWS_BITS + 1)  # writes per lane's tail
        z_lastlen = Signal(range(ZP + 1))  # elements of the last of them
        z_k = Signal(isa.ROWS_BITS + 1)  # writes left in this lane's tail
        z_row = Signal(_ABITS)  # this lane's tail
        z_ptr = Signal(_ABITS)
        tail_m1 = w_tail - 1
        w_tail_nz = Signal()  # w_tail != 0
        z_last = Signal()  # z_k == 1: this lane's last zero write
        with m.If(~run):
            m.d.sync += [
                w_st.eq(Mux(start_run, W_DATA, W_DONE)),
                w_is_data.eq(start_run),
                w_is_zero.eq(0),
                w_lane.eq(0),
                w_lastlane.eq(Mux(a.heads <= L, a.heads, L) == 1),
                w_cptr.eq(a.dst),
                w_lptr.eq(a.dst),
                w_tail.eq(a.rows - 1),
                w_tail_nz.eq(a.rows != 1),
                wout_full.eq(0),
            ]

        def next_group():
            m.d.comb += wg.adv.eq(1)
            nl_next = Mux(
                wg.wrap, Mux(a.heads <= L, a.heads, L), Mux(wg.hleft <= 2 * L, wg.hleft - L, L)
            )
            m.d.sync += [
                w_cptr.eq(wg.next_gbase),
                w_lptr.eq(wg.next_gbase),
                w_st.eq(Mux(wg.last, W_DONE, W_DATA)),
                w_is_data.eq(~wg.last),
                w_is_zero.eq(0),
                w_lane.eq(0),
                w_lastlane.eq(nl_next == 1),
            ]
            with m.If(wg.wrap):
                m.d.sync += [w_tail.eq(w_tail - 1), w_tail_nz.eq(w_tail != 1)]

        wr = self.wr
        w_free = Signal()  # wout's last lane is written this cycle
        with m.If(run):
            with m.If(copy_w):
                m.d.sync += wout_full.eq(1)
            with m.Elif(w_free):
                m.d.sync += wout_full.eq(0)
        with m.If(w_is_data):
            m.d.comb += [
                wr.valid.eq(wout_full),
                wr.payload.addr.eq(w_lptr),
                wr.payload.len.eq(w_cnt * 2),
                wr.payload.data.eq(Array(wout)[w_lane] if L > 1 else wout[0]),
            ]
            with m.If(wr.valid & wr.ready):
                m.d.sync += [
                    w_lane.eq(w_lane + 1),
                    w_lptr.eq(w_lptr + hstride),
                    w_lastlane.eq(w_lane + 2 == wg.nl),
                ]
                with m.If(w_lastlane):
                    m.d.comb += w_free.eq(1)
                    m.d.sync += [
                        w_lane.eq(0),
                        w_lastlane.eq(wg.nl == 1),
                        w_cptr.eq(w_cptr + 2 * C),
                        w_lptr.eq(w_cptr + 2 * C),
                    ]
                    with m.If(w_rowend):
                        with m.If(w_tail_nz):
                            zb = wg.gbase + wg.ng * 2
                            m.d.sync += [
                                w_st.eq(W_ZERO),
                                w_is_data.eq(0),
                                w_is_zero.eq(1),
                                z_row.eq(zb),
                                z_ptr.eq(zb),
                                z_np.eq((tail_m1 >> zlog) + 1),
                                z_k.eq((tail_m1 >> zlog) + 1),
                                z_last.eq((tail_m1 >> zlog) == 0),
                                z_lastlen.eq(tail_m1[:zlog] + 1 if zlog else 1),
                            ]
                        with m.Else():
                            next_group()
        with m.Elif(w_is_zero):
            m.d.comb += [
                wr.valid.eq(1),
                wr.payload.addr.eq(z_ptr),
                wr.payload.len.eq(Mux(z_last, z_lastlen, ZP) * 2),
                wr.payload.data.eq(0),
            ]
            with m.If(wr.ready):
                m.d.sync += [z_k.eq(z_k - 1), z_last.eq(z_k == 2), z_ptr.eq(z_ptr + W)]
                with m.If(z_last):  # this lane's tail is done
                    m.d.sync += [
                        w_lane.eq(w_lane + 1),
                        w_lastlane.eq(w_lane + 2 == wg.nl),
                        z_row.eq(z_row + hstride),
                        z_ptr.eq(z_row + hstride),
                        z_k.eq(z_np),
                        z_last.eq(z_np == 1),
                    ]
                    with m.If(w_lastlane):
                        next_group()

        m.d.comb += all_done.eq(run & (w_st == W_DONE))
        return m
