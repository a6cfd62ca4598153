"""TLMM engine: table-lookup ternary matmul in RTL (golden: ``golden/tlmm.py``).

Computes ``y[m, n] = sum_k x_q[m, k] * w_t[n, k]`` (int32) the way ``golden.tlmm``
specifies: groups of G activations, a table of all 3^G signed sums per group (or the
mirrored upper half plus a sign bit), one lookup per weight group, INT32 accumulation.

Parameters (``TLMMConfig``): G = ``group``, T = ``tables``, Q = ``replicas``, ``table``
(full / mirrored), ``act_bits``, ``acc_bits``; plus ``max_k``, the longest K the table
memory holds (``DEFAULT_MAX_K``), and ``tree_levels_per_stage`` (adder levels between
pipeline registers in the T-input adder trees).

Streams (``amaranth.lib.stream``; a beat transfers when valid & ready)
----------------------------------------------------------------------
``act`` (in)  payload ``{data: G*T x signed(act_bits), last}`` -- one *chunk*: the G*T
    consecutive activations of groups ``c*T .. c*T+T-1`` of one token (row m of x_q);
    ``data[t*G + i] = x_q[m, (c*T + t)*G + i]``. ``last`` marks the token's final chunk.
    K is zero-padded to a multiple of G*T (golden pads to G; zeros add nothing).
    A token has Kc = ceil(ceil(K/G)/T) <= ceil(ceil(max_k/G)/T) chunks.
``wgt`` (in)  payload ``{code: T*Q x unsigned(code_bits), last}`` -- the codes
    (``golden.tlmm.join_codes``) for Q output rows x T groups of one chunk:
    ``code[q*T + t]`` = code of w_t row ``b*Q + q``, group ``c*T + t``.  Beats come in
    row-block-major order: for block b = 0..Nb-1, for chunk c = 0..Kc-1.  Padded groups
    carry the all-zero weight group, padded rows any codes (their outputs are dropped by
    the host).  ``last`` marks the token's final beat (block Nb-1, chunk Kc-1); a beat
    with ``last`` also ends its row block.
``out`` (out) payload ``{data: Q x signed(acc_bits), last}`` -- one beat per row block:
    ``data[q] = y[m, b*Q + q]``; ``last`` on the token's final block.

Tokens follow one another: the ``act`` beats of token m+1 may arrive while token m's
``wgt`` beats are consumed (two table banks, ping-pong), so the lookups never wait for a
table build after the first token.

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
* Memory: T memories of 2 banks x 2^ceil(log2 Kc_max) words x ``entries*entry_bits``
  bits.  At the default (max_k 4096: 49 chunks -> 64 per bank, 270-bit words) that is
  28 x 128 x 270 bits, which maps to 112 RAMB36 on UltraScale+ and 224 DP16KD on ECP5
  (the ECP5-85F has 208): the tables are wide and shallow, so block RAMs are mostly
  width-bound.  Storing all Kc tables of a token is the price of the row-block-major
  (output-stationary) order; the alternative order (chunk-major, tables of one chunk in
  registers, partial sums in an N-deep accumulator RAM) trades it for Q accumulator RAMs.

Cycle count (streams never stall, M tokens of K, N outputs)::

    cycles = Kc + M * ceil(N/Q) * Kc + latency,    Kc = ceil(ceil(K/G)/T)
    latency = 3 + ceil(ceil(log2 T) / tree_levels_per_stage)

i.e. one ``wgt`` beat per cycle; the ideal is M*K*N / (G*T*Q) (every lookup slot busy);
the first token's table build (Kc cycles) and the pipeline latency are the overhead,
plus the padding of K to G*T and N to Q.
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


def _tree_levels(n: int) -> int:
    return max(0, math.ceil(math.log2(n))) if n > 1 else 0


def _latency(cfg: TLMMConfig, tree_levels_per_stage: int) -> int:
    return 3 + -(-_tree_levels(cfg.tables) // tree_levels_per_stage)


def act_layout(cfg: TLMMConfig) -> data.StructLayout:
    return lanes_layout(signed(cfg.act_bits), cfg.group * cfg.tables)


def wgt_layout(cfg: TLMMConfig) -> data.StructLayout:
    return lanes_layout(unsigned(cfg.code_bits), cfg.tables * cfg.replicas, name="code")


def out_layout(cfg: TLMMConfig) -> data.StructLayout:
    return lanes_layout(signed(cfg.acc_bits), cfg.replicas)


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
    ):
        if max_k < 1:
            raise ValueError(f"max_k: must be >= 1, got {max_k}")
        if max_k > cfg.max_k():
            raise ValueError(
                f"max_k: {max_k} exceeds cfg.max_k() = {cfg.max_k()} (accumulator overflow)"
            )
        if tree_levels_per_stage < 1:
            raise ValueError(f"tree_levels_per_stage: must be >= 1, got {tree_levels_per_stage}")
        self.cfg = cfg
        self.max_k = max_k
        self.tree_levels_per_stage = tree_levels_per_stage
        self.depth = chunk_count(max_k, cfg)  # chunks per bank
        self.latency = _latency(cfg, tree_levels_per_stage)
        super().__init__(
            {
                "act": In(stream.Signature(act_layout(cfg))),
                "wgt": In(stream.Signature(wgt_layout(cfg))),
                "out": Out(stream.Signature(out_layout(cfg))),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        G, T, Q = cfg.group, cfg.tables, cfg.replicas
        m = Module()

        # each bank spans a power of two so that {bank, chunk} is a plain concatenation
        chunk_bits = Shape.cast(range(self.depth)).width
        word_bits = cfg.entries * cfg.entry_bits
        mems = []
        for t in range(T):
            mem = Memory(shape=unsigned(word_bits), depth=2 << chunk_bits, init=[])
            m.submodules[f"table{t}"] = mem
            mems.append(mem)
        wports = [mem.write_port() for mem in mems]
        rports = [mem.read_port() for mem in mems]

        full = Signal(2)  # bank holds a complete token's tables
        nchunks = [Signal(range(self.depth + 1), name=f"nchunks{b}") for b in range(2)]

        # ------------------------------------------------ build side (act stream)
        wb = Signal()  # bank being written
        wptr = Signal(range(self.depth))
        act_fire = Signal()
        act_end = Signal()
        m.d.comb += [
            self.act.ready.eq(~full.bit_select(wb, 1)),
            act_fire.eq(self.act.valid & self.act.ready),
            act_end.eq(self.act.payload.last | (wptr == self.depth - 1)),
        ]
        for t in range(T):
            xs = [self.act.payload.data[t * G + i] for i in range(G)]
            m.d.comb += [
                wports[t].addr.eq(Cat(wptr, wb)),
                wports[t].data.eq(build_table(m, xs, cfg, f"build{t}")),
                wports[t].en.eq(act_fire),
            ]

        set_full = Signal(2)
        clr_full = Signal(2)
        with m.If(act_fire):
            with m.If(act_end):
                m.d.sync += [wptr.eq(0), wb.eq(~wb)]
                m.d.comb += set_full.eq(Mux(wb, 0b10, 0b01))
                with m.If(wb):
                    m.d.sync += nchunks[1].eq(wptr + 1)
                with m.Else():
                    m.d.sync += nchunks[0].eq(wptr + 1)
            with m.Else():
                m.d.sync += wptr.eq(wptr + 1)
        m.d.sync += full.eq((full | set_full) & ~clr_full)

        # ------------------------------------------------ lookup side (wgt stream)
        stall = Signal()
        m.d.comb += stall.eq(self.out.valid & ~self.out.ready)

        rb = Signal()  # bank being read
        chunk = Signal(range(self.depth))
        cur_n = Signal(range(self.depth + 1))
        m.d.comb += cur_n.eq(Mux(rb, nchunks[1], nchunks[0]))
        wgt_fire = Signal()
        row_end = Signal()
        m.d.comb += [
            self.wgt.ready.eq(full.bit_select(rb, 1) & ~stall),
            wgt_fire.eq(self.wgt.valid & self.wgt.ready),
            row_end.eq(self.wgt.payload.last | (chunk == cur_n - 1)),
        ]
        for t in range(T):
            m.d.comb += [
                rports[t].addr.eq(Cat(chunk, rb)),
                rports[t].en.eq(~stall),
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
        ctrl = data.StructLayout({"valid": 1, "first": 1, "end": 1, "last": 1})
        s1 = Signal(ctrl)
        s1_code = Signal(wgt_layout(cfg).members["code"])
        with m.If(~stall):
            m.d.sync += [
                s1.valid.eq(wgt_fire),
                s1.first.eq(chunk == 0),
                s1.end.eq(row_end),
                s1.last.eq(self.wgt.payload.last),
                s1_code.eq(self.wgt.payload.code),
            ]

        # stage 2: Q replica lookups per table (registered)
        look_shape = signed(cfg.entry_bits)
        looks = [[Signal(look_shape, name=f"look_q{q}_t{t}") for t in range(T)] for q in range(Q)]
        s2 = Signal(ctrl)
        with m.If(~stall):
            m.d.sync += s2.eq(s1)
            for q in range(Q):
                for t in range(T):
                    m.d.sync += looks[q][t].eq(lookup(rports[t].data, s1_code[q * T + t], cfg))

        # adder trees over T, a register every tree_levels_per_stage levels
        level_vals = looks
        stage_ctrl = s2
        level = 0
        while len(level_vals[0]) > 1:
            nxt = []
            for q in range(Q):
                vals = level_vals[q]
                sums = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)]
                if len(vals) % 2:
                    sums.append(vals[-1])
                nxt.append(sums)
            level += 1
            level_vals = nxt
            if level % self.tree_levels_per_stage == 0 or len(level_vals[0]) == 1:
                regs = []
                for q in range(Q):
                    row = []
                    for i, v in enumerate(level_vals[q]):
                        r = Signal(v.shape(), name=f"tree_l{level}_q{q}_{i}")
                        with m.If(~stall):
                            m.d.sync += r.eq(v)
                        row.append(r)
                    regs.append(row)
                level_vals = regs
                c = Signal(ctrl, name=f"tree_l{level}_ctrl")
                with m.If(~stall):
                    m.d.sync += c.eq(stage_ctrl)
                stage_ctrl = c
        sums = [level_vals[q][0] for q in range(Q)]

        # accumulate; emit the block's sums on its last chunk
        acc = [Signal(signed(cfg.acc_bits), name=f"acc{q}") for q in range(Q)]
        acc_next = [Signal(signed(cfg.acc_bits), name=f"acc_next{q}") for q in range(Q)]
        for q in range(Q):
            m.d.comb += acc_next[q].eq(Mux(stage_ctrl.first, 0, acc[q]) + sums[q])
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += self.out.valid.eq(0)
        with m.If(~stall & stage_ctrl.valid):
            for q in range(Q):
                m.d.sync += acc[q].eq(acc_next[q])
            with m.If(stage_ctrl.end):
                m.d.sync += [self.out.valid.eq(1), self.out.payload.last.eq(stage_ctrl.last)]
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
