"""TLMM engine: table-lookup ternary matmul in RTL (golden: ``golden/tlmm.py``).

Computes ``y[m, n] = sum_k x_q[m, k] * w_t[n, k]`` (int32) the way ``golden.tlmm``
specifies: groups of G activations, a table of all 3^G signed sums per group (or the
mirrored upper half plus a sign bit), one lookup per weight group, INT32 accumulation.

Parameters (``TLMMConfig``): G = ``group``, T = ``tables``, Q = ``replicas``, ``table``
(full / mirrored), ``act_bits``, ``acc_bits``; plus ``max_k``, the longest K the table
memory holds (``DEFAULT_MAX_K``), ``tree_levels_per_stage`` (adder levels between
pipeline registers in the T-input adder trees) and ``tokens`` (P, a power of two: the
tokens whose tables each weight beat is looked up in; ``AccelConfig.tlmm_tokens``).

Streams (``amaranth.lib.stream``; a beat transfers when valid & ready)
----------------------------------------------------------------------
``act`` (in)  payload ``{data: G*T x signed(act_bits), last}`` -- one *chunk*: the G*T
    consecutive activations of groups ``c*T .. c*T+T-1`` of one token (row m of x_q);
    ``data[t*G + i] = x_q[m, (c*T + t)*G + i]``. ``last`` marks the token's final chunk.
    K is zero-padded to a multiple of G*T (golden pads to G; zeros add nothing).
    A token has Kc = ceil(ceil(K/G)/T) <= ceil(ceil(max_k/G)/T) chunks.  P > 1: the
    tokens come in *blocks* of np <= P (a block's tokens share its weight beats); the
    payload has ``end``, set with ``last`` on the block's final token (or implied by the
    P-th).
``wgt`` (in)  payload ``{code: T*Q x unsigned(code_bits), last}`` -- the codes
    (``golden.tlmm.join_codes``) for Q output rows x T groups of one chunk:
    ``code[q*T + t]`` = code of w_t row ``b*Q + q``, group ``c*T + t``.  Beats come in
    row-block-major order: for block b = 0..Nb-1, for chunk c = 0..Kc-1.  Padded groups
    carry the all-zero weight group, padded rows any codes (their outputs are dropped by
    the host).  ``last`` marks the token's (P > 1: the block's) final beat (block
    Nb-1, chunk Kc-1); a beat with ``last`` also ends its row block.
``out`` (out) payload ``{data: Q x signed(acc_bits), last}`` -- one beat per row block:
    ``data[q] = y[m, b*Q + q]``; ``last`` on the token's final block.  P > 1: np beats
    per row block, tokens in order, ``end`` on the block's last token (``last`` with it
    on the final row block).

Tokens (blocks) follow one another: the ``act`` beats of token m+1 may arrive while
token m's ``wgt`` beats are consumed (two table banks, ping-pong), so the lookups never
wait for a table build after the first token.

Micro-architecture
------------------
* Table build (one chunk per cycle): T combinational builders expand G activations digit
  by digit exactly as ``golden.tlmm.build_tables`` (``T'[d*3^i + j] = T[j] + (d-1)*x_i``)
  into ``entries`` values of ``entry_bits``; each is written as one word into table
  memory t at ``{bank, chunk}``.  Bank ``wb`` fills while bank ``rb`` is read.
* Lookup (one ``wgt`` beat per cycle): the T table words of the chunk are read (one
  registered read per memory); Q replica multiplexers per table select ``index`` (and
  negate when the mirrored sign bit is set): T*Q lookups per cycle.  A pipelined adder
  tree per replica sums its T lookups; an INT32 accumulator per replica adds the chunk
  sums of a row block and emits them on the block's last chunk.
* Backpressure: one global stall (``out`` holds an unaccepted beat) freezes the lookup
  pipeline; the table build side is independent.
* P > 1: P table sets (token p of a block writes set p, from the one set of T
  builders); every weight beat reads the chunk's word from all P sets at one address:
  P*Q*T lookups, P*Q adder trees and accumulators.  A row block's end loads the np
  sums into ``out`` and a shift register behind it (np-1 beats) that drains one a
  cycle; so that it has drained when the next row block ends, a row block's end beat
  is taken >= np cycles after the previous one (np of that one's block): with
  Kc < np a row block takes np cycles.  The stall then only comes with ``out``
  backpressure (a row block's end waits while the register is not empty).
* Memory: T memories of 2 banks x 2^ceil(log2 Kc_max) words x ``entries*entry_bits``
  bits.  At the default (max_k 4096: 49 chunks -> 64 per bank, 270-bit words) that is
  28 x 128 x 270 bits, which maps to 112 RAMB36 on UltraScale+ and 224 DP16KD on ECP5
  (the ECP5-85F has 208): the tables are wide and shallow, so block RAMs are mostly
  width-bound.  Storing all Kc tables of a token is the price of the row-block-major
  (output-stationary) order; the alternative order (chunk-major, tables of one chunk in
  registers, partial sums in an N-deep accumulator RAM) trades it for Q accumulator RAMs.
  P > 1 multiplies the table memory by P (P*28 memories of 128 x 270 bits).

Cycle count (streams never stall, M tokens of K, N outputs)::

    cycles = Kc + M * ceil(N/Q) * Kc + latency,    Kc = ceil(ceil(K/G)/T)
    latency = 3 + ceil(ceil(log2 T) / tree_levels_per_stage)

i.e. one ``wgt`` beat per cycle; the ideal is M*K*N / (G*T*Q) (every lookup slot busy);
the first token's table build (Kc cycles) and the pipeline latency are the overhead,
plus the padding of K to G*T and N to Q.  (P = 1; P > 1 is counted, and measured, as
part of the engine's command: ``hw.ops.tlmm.expected_cycles``.)
"""

from __future__ import annotations

import math

from amaranth import Array, Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, TLMMConfig
from hw.beats import lanes_layout

# Longest K the table memory holds by default: BitNet b1.58 0.73B's largest
# projection input (intermediate_size 4096).
DEFAULT_MAX_K = 4096


def chunk_count(k: int, cfg: TLMMConfig) -> int:
    """Chunks (act beats) per token for a reduction length ``k``: ceil(ceil(k/G)/T)."""
    groups = -(-k // cfg.group)
    return -(-groups // cfg.tables)


def ideal_cycles(m: int, k: int, n: int, cfg: TLMMConfig) -> float:
    """M*K*N / (G*T*Q): cycles with every lookup slot busy and no padding."""
    return m * k * n / (cfg.group * cfg.tables * cfg.replicas)


def expected_cycles(m: int, k: int, n: int, cfg: TLMMConfig, tree_levels_per_stage: int = 2) -> int:
    """The module-doc cycle formula (streams never stall)."""
    kc = chunk_count(k, cfg)
    return kc + m * (-(-n // cfg.replicas)) * kc + _latency(cfg, tree_levels_per_stage)


def check_tokens(tokens) -> None:
    """P: an integer power of two >= 1 (ValueError otherwise)."""
    if not isinstance(tokens, int) or tokens < 1 or tokens & (tokens - 1):
        raise ValueError(f"tokens: must be a power of two >= 1, got {tokens!r}")


def _tree_levels(n: int) -> int:
    return max(0, math.ceil(math.log2(n))) if n > 1 else 0


def _latency(cfg: TLMMConfig, tree_levels_per_stage: int) -> int:
    return 3 + -(-_tree_levels(cfg.tables) // tree_levels_per_stage)


def act_layout(cfg: TLMMConfig, tokens: int = 1) -> data.StructLayout:
    """P > 1 adds ``end``: the token is its block's last."""
    extra = {"end": 1} if tokens > 1 else {}
    return lanes_layout(signed(cfg.act_bits), cfg.group * cfg.tables, **extra)


def wgt_layout(cfg: TLMMConfig) -> data.StructLayout:
    return lanes_layout(unsigned(cfg.code_bits), cfg.tables * cfg.replicas, name="code")


def out_layout(cfg: TLMMConfig, tokens: int = 1) -> data.StructLayout:
    """P > 1 adds ``end``: the beat is its row block's last (the block's last token)."""
    extra = {"end": 1} if tokens > 1 else {}
    return lanes_layout(signed(cfg.acc_bits), cfg.replicas, **extra)


def build_table(m: Module, xs, cfg: TLMMConfig, name: str):
    """Entries of one table from its G activations (golden.tlmm.build_tables order), each
    ``entry_bits`` wide, concatenated (combinational)."""
    table = [Const(0, signed(2))]
    for x in xs:
        table = [e - x for e in table] + table + [e + x for e in table]
    if cfg.table == "mirrored":
        table = table[(cfg.full_entries - 1) // 2 :]
    assert len(table) == cfg.entries
    entries = []
    for j, e in enumerate(table):
        # entry_bits holds every sum exactly (golden.config.TLMMConfig.entry_bits)
        s = Signal(signed(cfg.entry_bits), name=f"{name}_e{j}")
        m.d.comb += s.eq(e)
        entries.append(s)
    return Cat(*entries)


def lookup(word, code, cfg: TLMMConfig):
    """The entry a weight ``code`` selects from a table ``word`` (``build_table``): an index
    beyond the table reads 0; negated when the mirrored sign bit is set."""
    # a per-entry multiplexer (not a wide variable shift) simulates fast
    eb = cfg.entry_bits
    entries = [word[i * eb : (i + 1) * eb] for i in range(cfg.entries)]
    entries += [Const(0, eb)] * ((1 << cfg.index_bits) - cfg.entries)
    entry = Array(entries)[code[: cfg.index_bits]].as_signed()
    if cfg.table == "mirrored":
        entry = Mux(code[cfg.index_bits], -entry, entry)
    return entry


class TLMM(wiring.Component):
    """Table-lookup ternary matmul engine (see module docstring for the protocol)."""

    def __init__(
        self,
        cfg: TLMMConfig = DEFAULT.tlmm,
        *,
        max_k: int = DEFAULT_MAX_K,
        tree_levels_per_stage: int = 2,
        tokens: int = 1,
    ):
        if max_k < 1:
            raise ValueError(f"max_k: must be >= 1, got {max_k}")
        if max_k > cfg.max_k():
            raise ValueError(
                f"max_k: {max_k} exceeds cfg.max_k() = {cfg.max_k()} (accumulator overflow)"
            )
        if tree_levels_per_stage < 1:
            raise ValueError(f"tree_levels_per_stage: must be >= 1, got {tree_levels_per_stage}")
        check_tokens(tokens)
        self.cfg = cfg
        self.max_k = max_k
        self.tree_levels_per_stage = tree_levels_per_stage
        self.tokens = tokens
        self.depth = chunk_count(max_k, cfg)  # chunks per bank
        self.latency = _latency(cfg, tree_levels_per_stage)
        super().__init__(
            {
                "act": In(stream.Signature(act_layout(cfg, tokens))),
                "wgt": In(stream.Signature(wgt_layout(cfg))),
                "out": Out(stream.Signature(out_layout(cfg, tokens))),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        G, T, Q, P = cfg.group, cfg.tables, cfg.replicas, self.tokens
        m = Module()

        # each bank spans a power of two so that {bank, chunk} is a plain concatenation;
        # token p of a block has its own T memories (set p)
        chunk_bits = Shape.cast(range(self.depth)).width
        word_bits = cfg.entries * cfg.entry_bits
        wports, rports = [], []
        for p in range(P):
            wp, rp = [], []
            for t in range(T):
                mem = Memory(shape=unsigned(word_bits), depth=2 << chunk_bits, init=[])
                m.submodules[f"table{t}" if P == 1 else f"table{t}_tok{p}"] = mem
                wp.append(mem.write_port())
                rp.append(mem.read_port())
            wports.append(wp)
            rports.append(rp)

        full = Signal(2)  # bank holds a complete block's tables
        nchunks = [Signal(range(self.depth + 1), name=f"nchunks{b}") for b in range(2)]
        tok_shape = unsigned(max(1, Shape.cast(range(P)).width))
        ntoks = [Signal(tok_shape, name=f"ntok{b}") for b in range(2)]  # tokens - 1

        # ------------------------------------------------ build side (act stream)
        wb = Signal()  # bank being written
        wptr = Signal(range(self.depth))
        wtok = Signal(tok_shape)  # token of the block being written
        act_fire = Signal()
        act_end = Signal()
        blk_end = Signal()
        m.d.comb += [
            self.act.ready.eq(~full.bit_select(wb, 1)),
            act_fire.eq(self.act.valid & self.act.ready),
            act_end.eq(self.act.payload.last | (wptr == self.depth - 1)),
            blk_end.eq(act_end if P == 1 else act_end & (self.act.payload.end | (wtok == P - 1))),
        ]
        for p in range(P):
            for t in range(T):
                if p == 0:
                    xs = [self.act.payload.data[t * G + i] for i in range(G)]
                    word = build_table(m, xs, cfg, f"build{t}")
                m.d.comb += [
                    wports[p][t].addr.eq(Cat(wptr, wb)),
                    wports[p][t].data.eq(wports[0][t].data if p else word),
                    wports[p][t].en.eq(act_fire & (wtok == p)),
                ]

        set_full = Signal(2)
        clr_full = Signal(2)
        with m.If(act_fire):
            with m.If(act_end):
                m.d.sync += wptr.eq(0)
                with m.If(blk_end):
                    m.d.sync += [wb.eq(~wb), wtok.eq(0)]
                    m.d.comb += set_full.eq(Mux(wb, 0b10, 0b01))
                    for b in range(2):
                        with m.If(wb == b):
                            m.d.sync += [nchunks[b].eq(wptr + 1), ntoks[b].eq(wtok)]
                with m.Else():
                    m.d.sync += wtok.eq(wtok + 1)
            with m.Else():
                m.d.sync += wptr.eq(wptr + 1)
        m.d.sync += full.eq((full | set_full) & ~clr_full)

        # ------------------------------------------------ lookup side (wgt stream)
        stall = Signal()

        rb = Signal()  # bank being read
        chunk = Signal(range(self.depth))
        cur_n = Signal(range(self.depth + 1))
        m.d.comb += cur_n.eq(Mux(rb, nchunks[1], nchunks[0]))
        wgt_fire = Signal()
        row_end = Signal()
        throttle = Const(0)
        if P > 1:
            # a row block's end enters >= np cycles after the previous one (np: that one's
            # tokens), so that its np outputs have left when the next block's arrive
            gap = Signal(tok_shape)  # cycles still to wait
            throttle = (chunk == cur_n - 1) & (gap != 0)
            with m.If(~stall & (gap != 0)):
                m.d.sync += gap.eq(gap - 1)
            with m.If(wgt_fire & row_end):
                m.d.sync += gap.eq(Mux(rb, ntoks[1], ntoks[0]))
        m.d.comb += [
            self.wgt.ready.eq(full.bit_select(rb, 1) & ~stall & ~throttle),
            wgt_fire.eq(self.wgt.valid & self.wgt.ready),
            row_end.eq(self.wgt.payload.last | (chunk == cur_n - 1)),
        ]
        for p in range(P):
            for t in range(T):
                m.d.comb += [
                    rports[p][t].addr.eq(Cat(chunk, rb)),
                    rports[p][t].en.eq(~stall),
                ]
        with m.If(wgt_fire):
            with m.If(row_end):
                m.d.sync += chunk.eq(0)
            with m.Else():
                m.d.sync += chunk.eq(chunk + 1)
            with m.If(self.wgt.payload.last):
                m.d.sync += rb.eq(~rb)
                m.d.comb += clr_full.eq(Mux(rb, 0b10, 0b01))

        # stage 1: table words arrive; codes and control registered alongside
        ctrl = data.StructLayout({"valid": 1, "first": 1, "end": 1, "last": 1, "ntok": tok_shape})
        s1 = Signal(ctrl)
        s1_code = Signal(wgt_layout(cfg).members["code"])
        with m.If(~stall):
            m.d.sync += [
                s1.valid.eq(wgt_fire),
                s1.first.eq(chunk == 0),
                s1.end.eq(row_end),
                s1.last.eq(self.wgt.payload.last),
                s1.ntok.eq(Mux(rb, ntoks[1], ntoks[0])),
                s1_code.eq(self.wgt.payload.code),
            ]

        # stage 2: Q replica lookups per table and token (registered); lane j = p*Q + q
        look_shape = signed(cfg.entry_bits)
        tag = [f"q{q}" if P == 1 else f"p{p}_q{q}" for p in range(P) for q in range(Q)]
        looks = [
            [Signal(look_shape, name=f"look_{tag[j]}_t{t}") for t in range(T)] for j in range(P * Q)
        ]
        s2 = Signal(ctrl)
        with m.If(~stall):
            m.d.sync += s2.eq(s1)
            for j in range(P * Q):
                p, q = divmod(j, Q)
                for t in range(T):
                    m.d.sync += looks[j][t].eq(lookup(rports[p][t].data, s1_code[q * T + t], cfg))

        # adder trees over T, a register every tree_levels_per_stage levels
        level_vals = looks
        stage_ctrl = s2
        level = 0
        while len(level_vals[0]) > 1:
            nxt = []
            for vals in level_vals:
                sums = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)]
                if len(vals) % 2:
                    sums.append(vals[-1])
                nxt.append(sums)
            level += 1
            level_vals = nxt
            if level % self.tree_levels_per_stage == 0 or len(level_vals[0]) == 1:
                regs = []
                for j, vals in enumerate(level_vals):
                    row = []
                    for i, v in enumerate(vals):
                        r = Signal(v.shape(), name=f"tree_l{level}_{tag[j]}_{i}")
                        with m.If(~stall):
                            m.d.sync += r.eq(v)
                        row.append(r)
                    regs.append(row)
                level_vals = regs
                c = Signal(ctrl, name=f"tree_l{level}_ctrl")
                with m.If(~stall):
                    m.d.sync += c.eq(stage_ctrl)
                stage_ctrl = c
        sums = [vals[0] for vals in level_vals]

        # accumulate; emit the block's sums on its last chunk
        acc = [Signal(signed(cfg.acc_bits), name=f"acc{j}") for j in range(P * Q)]
        acc_next = [Signal(signed(cfg.acc_bits), name=f"acc_next{j}") for j in range(P * Q)]
        for j in range(P * Q):
            m.d.comb += acc_next[j].eq(Mux(stage_ctrl.first, 0, acc[j]) + sums[j])
        out_fire = self.out.valid & self.out.ready
        if P == 1:
            m.d.comb += stall.eq(self.out.valid & ~self.out.ready)
            with m.If(out_fire):
                m.d.sync += self.out.valid.eq(0)
            load = ~stall & stage_ctrl.valid & stage_ctrl.end
        else:
            # the row block's P outputs: out.payload holds token 0's, a shift register the
            # others (hold[i] is token i+1's); hcnt beats wait behind the one offered
            hold = [
                [Signal(signed(cfg.acc_bits), name=f"hold{i}_q{q}") for q in range(Q)]
                for i in range(P - 1)
            ]
            hcnt = Signal(tok_shape)
            hlast = Signal()
            # a row block's end waits until the previous block's outputs are all taken
            m.d.comb += stall.eq(
                stage_ctrl.valid & stage_ctrl.end & self.out.valid & ~(self.out.ready & (hcnt == 0))
            )
            with m.If(out_fire):
                with m.If(hcnt == 0):
                    m.d.sync += self.out.valid.eq(0)
                with m.Else():
                    m.d.sync += [
                        hcnt.eq(hcnt - 1),
                        self.out.payload.end.eq(hcnt == 1),
                        self.out.payload.last.eq(hlast & (hcnt == 1)),
                    ]
                    for q in range(Q):
                        m.d.sync += self.out.payload.data[q].eq(hold[0][q])
                        for i in range(P - 2):
                            m.d.sync += hold[i][q].eq(hold[i + 1][q])
            load = ~stall & stage_ctrl.valid & stage_ctrl.end
            with m.If(load):
                ntok = stage_ctrl.ntok
                m.d.sync += [
                    hcnt.eq(ntok),
                    hlast.eq(stage_ctrl.last),
                    self.out.payload.end.eq(ntok == 0),
                ]
                for i in range(P - 1):
                    for q in range(Q):
                        m.d.sync += hold[i][q].eq(acc_next[(i + 1) * Q + q])
        with m.If(~stall & stage_ctrl.valid):
            for j in range(P * Q):
                m.d.sync += acc[j].eq(acc_next[j])
        with m.If(load):
            last = stage_ctrl.last if P == 1 else stage_ctrl.last & (stage_ctrl.ntok == 0)
            m.d.sync += [self.out.valid.eq(1), self.out.payload.last.eq(last)]
            for q in range(Q):
                m.d.sync += self.out.payload.data[q].eq(acc_next[q])
        return m


def synth_tops() -> dict:
    """Blocks for ``hw.synth``: the default engine and its mirrored-table variant."""
    from dataclasses import replace

    return {
        "tlmm": lambda: TLMM(DEFAULT.tlmm),
        "tlmm_mirrored": lambda: TLMM(replace(DEFAULT.tlmm, table="mirrored")),
    }


# --------------------------------------------------------------------------- stream packing
def act_beats(x_row, cfg: TLMMConfig) -> list[dict]:
    """``act`` payloads of one token (int8 vector of length K), zero-padded to G*T."""
    import numpy as np

    x = np.asarray(x_row).reshape(-1)
    kc = chunk_count(x.size, cfg)
    width = cfg.group * cfg.tables
    xp = np.zeros(kc * width, dtype=np.int64)
    xp[: x.size] = x
    return [
        {"data": xp[c * width : (c + 1) * width].tolist(), "last": int(c == kc - 1)}
        for c in range(kc)
    ]


def wgt_beats(codes, cfg: TLMMConfig, zero_code: int) -> list[dict]:
    """``wgt`` payloads of one token from memory codes [N, groups] (``golden.tlmm.join_codes``).

    Groups are padded to Kc*T with ``zero_code`` (the all-zero weight group) and rows to
    a multiple of Q with the same (padded outputs are 0).
    """
    import numpy as np

    codes = np.asarray(codes)
    n, groups = codes.shape
    T, Q = cfg.tables, cfg.replicas
    kc = -(-groups // T)
    nb = -(-n // Q)
    cp = np.full((nb * Q, kc * T), zero_code, dtype=np.int64)
    cp[:n, :groups] = codes
    # [nb, Q, kc, T] -> [nb, kc, Q, T]: one beat per (block, chunk), code[q*T + t]
    beats = cp.reshape(nb, Q, kc, T).transpose(0, 2, 1, 3).reshape(nb * kc, Q * T)
    return [{"code": beats[i].tolist(), "last": int(i == nb * kc - 1)} for i in range(nb * kc)]
