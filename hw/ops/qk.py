"""QK engine: attention logits ``dst[h, t, j] = requant(q_q[h, t] . k_q[g, j],
scale_mul(sq[h, t], sk[g, j]), SoftmaxConfig.in_frac_bits, in_bits)`` with g = h //
(heads / kv_heads), causal (query t sees keys j <= keys - rows + t; masked entries are
written 0). Golden: ``Executor._op_qk`` -> ``golden.model.op_qk``.

Operands (``golden/isa.py``, QK): q codes int8 of head h, token t at ``q + (h*q_ld +
t)*head_dim``, its scale record at ``q_scale + (h*q_ld + t)*4``; k rows / records of KV
head g, key j at ``k + (g*kv_ld + j)*KR`` / ``k_scale + (g*kv_ld + j)*4``, KR =
``golden.isa.kv_row(head_dim)``: head_dim int8 codes, or in an int4-KV build
(``ForwardConfig.kv_bits`` = 4, e.g. kv260-kv4) head_dim/2 bytes of packed int4 codes,
unpacked into the int8 lanes as they arrive (``hw.ops.kvrow.unpack_lanes``: each nibble
sign-extended, wiring only; the cycle formula is the same, the key rows half the bytes);
dst int16 Q7.8 [heads, rows, keys], contiguous. No data value can fail (the dot product and
``scale_mul`` always fit, ``requant`` saturates): the only errors are argument errors.

Checks: the QK contract (``golden.isa.CONTRACTS``), over seven cycles before any memory
access: the head ratio n_rep = heads // kv_heads and whether kv_heads divides heads
(``hw.ops.gqa``: a sequential divider, five cycles); CHK_DIM its ``Dims`` (rows, heads,
kv_heads, head_dim >= 1; kv_heads divides heads; rows <= keys <=
``SoftmaxConfig.max_len``; kv_ld >= keys; q_ld >= rows) and the RTL limit head_dim <=
dma_bytes (``LIMITS``; below); CHK_ADDR q, q_scale, k, k_scale, dst, each aligned then in
range over all its heads (heads are at increasing addresses, so the first head's first
byte and the last head's last byte decide). Every verdict comes from a register.

Micro-architecture
==================
Queries are held in blocks of up to B = ``block`` (the design point's ``attn_block``),
and each key row and key record of a KV head is read once per block, for every query it
holds (``hw.ops.gqa.blocks`` / ``block_shape``: the rule PV shares). A block is nh heads
x nt rows of one KV head g: with n_rep = heads // kv_heads, hb = min(B, n_rep) heads and
tb = B // hb rows at a time, nh = min(hb, n_rep - r0)
(the head chunks restart at each KV head: heads g*n_rep + r0 .. + nh - 1), nt = min(tb,
rows - t0). Blocks go rows inner, then head chunks, then KV heads. Decode (rows = 1)
with n_rep = 4, B = 4 holds the 4 query heads of a KV head (each K row read once instead
of 4 times); a prefill chunk with n_rep = 1 holds 4 rows of a head; n_rep = 4 holds the 4
heads of one row. Its slots (ri, ti), head outer, are i = 0 .. nb - 1 (nb = nh * nt);
its keys j = 0 .. vis - 1, vis = keys - rows + t0 + nt (the last row's visible keys).

Per block the request side spends three set-up cycles (the block's shape into registers),
then issues per slot the q row (head_dim bytes, one beat) and its q scale record, then
the keys j = 0 .. vis - 1 of KV head g, one key row per read (one beat), preceded every
R = ``records`` keys by one read of the next R key scale records (4R bytes). Requests
run ahead of the responses without limit (the memory applies backpressure); the
response side follows the same sequence:

* three set-up cycles; q / q-scale responses load slot i's held query: its codes, scale
  record, last visible key L_i = keys - rows + t and dst row address (the previous
  block's keys have all been accepted by then, and each key uses them in its issue
  cycle);
* a k-scale response loads the R-record register;
* a key response stays in the response register for nb cycles (ready with the last
  slot): each cycle one slot's logit enters the pipeline (one dot product per cycle;
  every stage holds while the output is stalled), a query past its last visible key
  (j > L_i) as a masked logit (written 0):
  - the dot product: ``dma_bytes/2`` pairs of DSP48E2 (``hw.dsp.dot2``: q_i k_i +
    q_i+1 k_i+1, the second DSP adding the first's product through the cascade; the
    slot's q selected by the slot counter; q beyond head_dim is 0: the response is zero
    beyond len), then an adder tree of three stages;
  - meanwhile the pair scale ``scale_mul(sq_i, sk_j)``: the mantissa product (a DSP), its
    bit length (two stages: per byte, then the top byte), the normalizing (rounding)
    shift, the carry (each a stage);
  - ``requant(dot, pair.mant, pair.shift - in_frac_bits)`` saturating to int16: the
    product (a DSP), the shifters, the rounding and the saturation (each a stage);
* after the block's last key (vis < keys: not the command's last row chunk) every held
  query's keys vis .. keys - 1 are zero: one output chunk (below) per slot per cycle,
  chunk outer, slot inner, without any read;
* one cycle (each side) to step to the next block. The walks start a cycle after the
  checks pass (a register); every decision of the walks is a register (the next block's
  origin, the cursors' next addresses, "last key", "next key starts a record chunk").

Writes: dst stays [heads, rows, keys]; the logits of one key go to nb different rows, so
the output packer keeps one gather register per slot (``out_lanes`` int16, its row's
current chunk: keys c*out_lanes .. c*out_lanes + out_lanes - 1 relative to the row's
start) and writes it as one write of up to ``out_lanes`` logits at ``dst + ((h*rows + t)
*keys + c*out_lanes)*2`` when the chunk is full or the row ends (a flush clears it, so a
zero run only writes what is left). Every row is thus written in exactly ceil(keys /
out_lanes) writes (before blocking the packer ran over the contiguous dst: ceil(heads *
rows * keys / out_lanes) writes in all, fewer when keys % out_lanes != 0), the nb rows'
writes interleaved; each write goes to a one-entry write register: the pipeline
stalls only when a second write is ready before the first was written (nb slots flushing
on the same key write on consecutive cycles). Area per slot: a q register (8*dma_bytes
bits), its record, L, dst address and gather register (16*out_lanes bits); the q select
before the DSPs is an nb-way mux.

Cycles
======
With no memory stalls (the response side takes one beat per cycle; ``expected_cycles``)::

    cycles = G + 14 + latency + sum over blocks of
             [4 + 2 nb + ceil(vis / R) + nb * vis + nb * z]
    z = 0 if vis == keys else floor((keys - 1) / out_lanes) - floor(vis / out_lanes) + 1

(G + 3 check and start cycles: the head-ratio divider ``hw.ops.gqa``, G = ``gqa.cycles()``
= 9 for 8-bit head fields, two cycles of registered checks and the walks' start register;
the first response's latency, the pipeline (``PIPE`` = 10 stages), the final write and
the done cycle, less one: the last block's step overlaps the pipeline; per block the
three set-up cycles and the step to the next (the first block's set-up overlaps the
request side's), the q and q-scale beats of its slots, one per R scale records, nb
cycles per key (one dot product a cycle) and z zero-run chunks per slot). Bytes read
(``read_bytes``): per block nb * (head_dim + 4) + vis * (head_dim + 4).

``python -m hw.ops.qk`` prints these for BitNet shapes at block 1 (one query at a time,
as before blocking) and at the design point's block. kv260 (R = 32, out_lanes 16, B = 4,
68.4 bytes/cycle): BitNet 2B-4T decode (20 heads, 5 KV heads, head_dim 128), 2048 keys:
1,354,320 bytes (5,409,360 one query at a time: each K row and record is now read once
per KV head instead of once per query head) and 41,364 cycles (42,304 before blocking),
compute-bound at one dot product a cycle (memory alone: 19,800 cycles; before: memory-
bound, 79,084): 1.91x; a second dot lane would balance the two. BitNet-0.73B decode (16
heads, n_rep = 1, one query per block): bytes unchanged, 33,912 cycles at 2048 keys
(33,848 before: the set-up cycles per block). A 128-token prefill (rows = keys = 128)
reads 4x fewer bytes (2B-4T: 5.79 MB, was 22.1 MB; 0.73B: 3.58 MB, was 13.4 MB) and is
compute-bound at one dot a cycle (185,784 and 151,320 cycles).
Measured by ``sim/test_op_qk.py`` (``test_qk_cycles``: cycles and bytes, blocks 1, 3, 4,
8) with a 1-cycle memory, exactly the formulas.

Area (``python -m hw.synth engine_qk --no-ecp5``, the engine alone, XCK26; LUT / FF /
DSP, logic levels): one query at a time before blocking 4,263 / 5,064 / 138, 6.0; B = 1
5,254 / 6,445 / 139, 6.0; B = 2 6,869 / 7,840 / 141, 6.0; B = 4 (kv260) 7,718 / 10,589 /
141, 6.0; B = 8 11,442 / 16,060 / 141, 6.25. The ecp5 point keeps B = 1.

Differences from the golden backend
===================================
* head_dim <= dma_bytes (one key row per beat; 128 covers BitNet-0.73B's 96 and
  2B-4T's 128), else BAD_DIM. keys, rows, q_ld, kv_ld take their full 16-bit ranges
  (nothing is buffered per key; B queries are held).
* dst overlapping q, q_scale, k or k_scale is not supported (the golden backend reads
  every operand before writing; the engine streams). The command stream never does this.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.dsp import dot2
from hw.softmax import tree_bit_length

from . import kvrow
from .base import Engine, check_power_of_two
from .gqa import Cursor, block_shape, blocks, head_ratio
from .gqa import cycles as gqa_cycles

_ABITS = isa.ADDR_BITS + 1  # addresses inside the window (mem_hi <= 2^32)
PIPE = 10  # stages from a key's accept to the packer
MAX_BLOCK = 16  # held queries (the slot index fields)


def _zero_chunks(keys: int, vis: int, out_lanes: int) -> int:
    """Output chunks of keys vis .. keys - 1 (a held query's zero run)."""
    return 0 if vis == keys else (keys - 1) // out_lanes - vis // out_lanes + 1


def expected_cycles(
    heads: int,
    kv_heads: int,
    rows: int,
    keys: int,
    records: int,
    out_lanes: int,
    block: int,
    latency: int = 1,
) -> int:
    """Cycles of one command without memory stalls (module docstring)."""
    total = 0
    for nh, nt, v in blocks(heads, kv_heads, rows, keys, block):
        nb = nh * nt
        total += 4 + 2 * nb + -(-v // records) + nb * v + nb * _zero_chunks(keys, v, out_lanes)
    return gqa_cycles() + 2 + latency + PIPE + total + 2


def read_bytes(
    heads: int, kv_heads: int, rows: int, keys: int, head_dim: int, block: int, cfg=None
) -> int:
    """Bytes one command reads (module docstring): per block its queries' rows and
    records, then each visible key's row (``golden.isa.kv_row`` of ``cfg``'s KV format)
    and record once."""
    krow = isa.kv_row(head_dim, 1, cfg or isa.DEFAULT)
    rec = isa.SCALE_RECORD_BYTES
    total = 0
    for nh, nt, v in blocks(heads, kv_heads, rows, keys, block):
        total += nh * nt * (head_dim + rec) + v * (krow + rec)
    return total


def _tree(vals):
    """One level of pairwise sums."""
    nxt = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)]
    if len(vals) % 2:
        nxt.append(vals[-1])
    return nxt


class _Grid:
    """A q-row tensor's (q, q_scale, dst) place in the walk over a block's query slots
    (head-chunk outer, row inner): ``hbase`` row 0 of the block's first head, ``h`` row 0
    of the slot's head, ``toff`` the block's first row (bytes from row 0), ``ptr`` the
    slot's row; ``nx`` the next slot's ptr, a register (:meth:`prepare`). ``hstride``
    bytes between heads, ``tstep`` between row chunks (registers). Each method returns the
    statements of one step."""

    def __init__(self, name: str, hstride, tstep):
        w = isa.ADDR_BITS + 1
        self.hbase, self.h = Signal(w, name=f"{name}_hbase"), Signal(w, name=f"{name}_h")
        self.toff, self.ptr = Signal(w, name=f"{name}_toff"), Signal(w, name=f"{name}_ptr")
        self.nx = Signal(w, name=f"{name}_nx")
        self.hp = Signal(w, name=f"{name}_hp")  # the slot head's row t0 (= ptr at its start)
        self.hn, self.tn = Signal(w, name=f"{name}_hn"), Signal(w, name=f"{name}_tn")
        self.hstride, self.tstep = hstride, tstep

    def prepare(self, m, walk, rstep) -> None:
        """``nx`` from the walk's flags every cycle (a step comes >= 2 cycles after the
        last change of the cursor or the flags)."""
        h_next = self.h + self.hstride
        to_end = Mux(walk.more_t, self.hbase + self.tn, h_next)
        to_head = Mux(walk.ri_last, to_end, self.hp + self.hstride)
        m.d.sync += self.nx.eq(Mux(walk.ti_last, to_head, self.ptr + rstep))
        # h after a head step or the block's end; toff after a row chunk
        m.d.sync += [
            self.hn.eq(Mux(walk.ti_last & walk.ri_last & walk.more_t, self.hbase, h_next)),
            self.tn.eq(self.toff + self.tstep),
        ]

    def start(self, addr) -> list:
        s = [self.hbase.eq(addr), self.h.eq(addr), self.toff.eq(0), self.ptr.eq(addr)]
        return s + [self.hp.eq(addr)]

    def row(self) -> list:
        return [self.ptr.eq(self.nx)]

    def head(self) -> list:
        return [self.h.eq(self.hn), self.ptr.eq(self.nx), self.hp.eq(self.nx)]

    def end(self, m, more_t) -> None:
        """After the block's last slot: the next row chunk of the same heads, or row 0 of
        the next head chunk."""
        m.d.sync += [self.ptr.eq(self.nx), self.h.eq(self.hn), self.hp.eq(self.nx)]
        with m.If(more_t):
            m.d.sync += self.toff.eq(self.tn)
        with m.Else():
            m.d.sync += [self.hbase.eq(self.hn), self.toff.eq(0)]


class _Blocks:
    """One side's walk over the blocks of held queries (module docstring; the request
    side issues it, the response side takes it). A block: heads h0 .. h0 + nh - 1 (repeats
    r0 .. r0 + nh - 1 of one KV head) x rows t0 .. t0 + nt - 1, nh = min(hb, n_rep - r0),
    nt = min(tb, rows - t0); its slots (ri, ti) head outer; its keys j < vis = the last
    row's visible keys. Two setup steps per block (:meth:`setup1`, :meth:`setup2`) make
    every decision a register: ``more_t`` (another row chunk follows), ``g_end`` (the
    chunk ends the KV head's repeats), ``hend`` (it ends the heads), ``full`` (vis ==
    keys: no zero run), ``ri_last`` / ``ti_last`` / ``lastk``; ``L`` the slot row's last
    visible key. Signals are named ``<prefix><field>``."""

    def __init__(self, m, prefix: str, a, lim0, hb, tb, n_rep, B: int, R: int):
        rbits = isa.ROWS_BITS + 1
        self.a, self.lim0, self.hb, self.tb, self.n_rep = a, lim0, hb, tb, n_rep

        def reg(field: str, shape=1):
            return Signal(shape, name=prefix + field)

        hbits = isa.HEADS_BITS + 1
        self.h0, self.r0 = reg("h0", hbits), reg("r0", hbits)
        self.nh, self.nt, self.ri, self.ti = (
            reg(f, range(B + 1)) for f in ("nh", "nt", "ri", "ti")
        )
        self.t0, self.t1 = reg("t0", rbits), reg("t1", rbits + 1)  # t1 = t0 + tb
        self.vis, self.j, self.left = (reg(f, rbits) for f in ("vis", "j", "left"))
        self.L0, self.L = reg("L0", rbits), reg("L", rbits)
        self.more_t, self.g_end, self.hend, self.full = (
            reg(f) for f in ("more_t", "g_end", "hend", "full")
        )
        self.ri_last, self.ti_last, self.lastk = reg("ri_last"), reg("ti_last"), reg("lastk")
        self.R, self.kfull, self.krec = R, reg("kfull"), reg("krec")
        self.rleft, self.t0_last = reg("rleft", rbits), reg("t0_last")  # rows - t0; == 1
        # the next block's t0, h0, r0 and "this block is the last", registered from the
        # block's registers (stable from its set-up to its end)
        self.t0_nx, self.h0_nx, self.r0_nx = (
            reg("t0_nx", rbits),
            reg("h0_nx", hbits),
            reg("r0_nx", hbits),
        )
        self.last = reg("last")
        m.d.sync += [
            self.t0_nx.eq(Mux(self.more_t, self.t1, 0)),
            self.h0_nx.eq(Mux(self.more_t, self.h0, self.h0 + self.nh)),
            self.r0_nx.eq(Mux(self.more_t, self.r0, Mux(self.g_end, 0, self.r0 + self.nh))),
            self.last.eq(~self.more_t & self.hend),
        ]

    def start(self) -> list:
        return [self.h0.eq(0), self.r0.eq(0), self.t0.eq(0)]

    def setup1(self) -> list:
        reps = self.n_rep - self.r0  # repeats of the KV head left
        return [
            self.nh.eq(Mux(self.hb < reps, self.hb, reps)),
            self.t1.eq(self.t0 + self.tb),
            self.L0.eq(self.lim0 + self.t0),
            self.L.eq(self.lim0 + self.t0),
            self.rleft.eq(self.a.rows - self.t0),
            self.t0_last.eq(self.t0 + 1 == self.a.rows),
            self.ri.eq(0),
            self.ti.eq(0),
        ]

    def setup2(self) -> list:
        a, more = self.a, self.t1 < self.a.rows  # the row chunk is whole, another follows
        return [
            self.more_t.eq(more),
            self.full.eq(~more),
            self.nt.eq(Mux(more, self.tb, self.rleft)),
            self.vis.eq(Mux(more, self.lim0 + self.t1, a.keys)),
            self.g_end.eq(self.r0 + self.nh == self.n_rep),
            self.hend.eq(self.h0 + self.nh == a.heads),
            self.ri_last.eq(self.nh == 1),
            self.ti_last.eq(Mux(more, self.tb == 1, self.t0_last)),
        ]

    def keys_start(self) -> list:
        """After the block's last slot: its keys (``kfull``: the key is the last of a
        block without zero runs; ``krec``: the next key starts a record chunk)."""
        last = self.vis == 1
        s = [self.j.eq(0), self.left.eq(self.vis), self.lastk.eq(last)]
        return s + [self.kfull.eq(last & self.full), self.krec.eq(self.R == 1)]

    def slot_row(self) -> list:
        """The next slot: the next row of the same head."""
        return [
            self.ti.eq(self.ti + 1),
            self.ti_last.eq(self.ti + 2 == self.nt),
            self.L.eq(self.L + 1),
        ]

    def slot_head(self) -> list:
        """The next slot: the first row of the next head."""
        return [
            self.ri.eq(self.ri + 1),
            self.ri_last.eq(self.ri + 2 == self.nh),
            self.ti.eq(0),
            self.ti_last.eq(self.nt == 1),
            self.L.eq(self.L0),
        ]

    def key(self) -> list:
        """Past one key of the block."""
        rlog = self.R.bit_length() - 1
        last, j1 = self.left == 2, self.j + 1
        s = [self.j.eq(j1), self.left.eq(self.left - 1), self.lastk.eq(last)]
        return s + [self.kfull.eq(last & self.full), self.krec.eq(j1[:rlog].all() if rlog else 1)]

    def next_block(self) -> list:
        """After the block: the next row chunk, or row 0 of the next head chunk."""
        return [self.t0.eq(self.t0_nx), self.h0.eq(self.h0_nx), self.r0.eq(self.r0_nx)]


class QKEngine(Engine):
    OPCODE = Opcode.QK
    DESIGN_FIELDS = {"records": "qk_records", "out_lanes": "qk_out_lanes", "block": "attn_block"}
    LIMITS = ("head_dim <= max_head_dim",)  # one key row per beat

    def __init__(
        self, cfg: DatapathConfig, dma_bytes: int, *, records: int, out_lanes: int, block: int
    ):
        check_power_of_two("dma_bytes", dma_bytes, lo=16, hi=128)
        check_power_of_two("records", records, hi=dma_bytes // 4)  # 4-byte records per beat
        check_power_of_two("out_lanes", out_lanes, hi=dma_bytes // 2)  # int16 outputs per beat
        if not isinstance(block, int) or not 1 <= block <= MAX_BLOCK:
            raise ValueError(f"block: {block!r} must be an integer in [1, {MAX_BLOCK}]")
        self.max_head_dim = dma_bytes
        self.records = records
        self.out_lanes = out_lanes
        self.block = block
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        R, OB = self.records, self.out_lanes
        sc = self.cfg.softmax
        rq = self.cfg.requant
        MB = rq.mult_bits
        a = self.op_args

        n_rep_q, divides = head_ratio(m, self.start, a.heads, a.kv_heads)
        # every product of the tensor extents registered (a DSP registered around each)
        chk = self.checks(m, registered="deep", rule_values={"heads % kv_heads == 0": divides})
        # the tensor checks' verdict (registered) is read in CHK_ADDR, two cycles after the
        # divider's result
        assert chk.latency + 1 <= gqa_cycles() + 2
        err_dims, err_tensors = Signal(ErrorCode), Signal(ErrorCode)
        m.d.sync += [err_dims.eq(chk.error(stop="q")), err_tensors.eq(chk.error(start="q"))]
        n_rep = Signal(isa.HEADS_BITS)
        lim0 = Signal(isa.ROWS_BITS + 1)  # keys - rows: the last visible key of row 0
        B = self.block
        # the block shape (module docstring): hb heads x tb rows, from n_rep (valid from
        # CHK_ADDR on, so these from the first RUN cycle)
        hb, tb = block_shape(m, n_rep, B)
        # strides (valid from the cycle after start, the row-chunk ones a cycle after tb)
        st = {
            "q_h": Signal(32),  # q_ld * head_dim
            "kv": Signal(32),  # kv_ld * krow
            "krow": Signal(isa.DIM_BITS),  # bytes of a key row (the build's KV format)
            "qs_h": Signal(isa.ROWS_BITS + 3),  # q_ld * 4
            "d_h": Signal(32),  # rows * keys * 2
            "d_r": Signal(isa.ROWS_BITS + 2),  # keys * 2
            "q_t": Signal(32),  # tb * head_dim
            "qs_t": Signal(range(4 * B + 1)),  # tb * 4
            "d_t": Signal(32),  # tb * keys * 2
            "ks": Signal(isa.ROWS_BITS + 3),  # kv_ld * 4
        }
        m.d.sync += [
            lim0.eq(a.keys - a.rows),
            st["q_h"].eq(a.q_ld * a.head_dim),
            st["kv"].eq(a.kv_ld * kvrow.row_bytes(a.head_dim, self.cfg)),
            st["krow"].eq(kvrow.row_bytes(a.head_dim, self.cfg)),
            st["qs_h"].eq(a.q_ld * 4),
            st["d_h"].eq(a.rows * a.keys * 2),
            st["d_r"].eq(a.keys * 2),
            st["q_t"].eq(tb * a.head_dim),
            st["qs_t"].eq(tb * 4),
            st["d_t"].eq(tb * a.keys * 2),
            st["ks"].eq(a.kv_ld * 4),
        ]
        start_run = Signal()
        all_done = self._run(
            m, platform, W, R, OB, MB, sc, rq, a, n_rep, hb, tb, st, lim0, start_run
        )

        with m.FSM():
            waits = [(f"WAIT{i}", None) for i in range(1, gqa_cycles() + 1)]
            passed = self.check_states(m, *waits, ("CHK_DIM", err_dims), ("CHK_ADDR", err_tensors))
            with m.State("RUN"):
                with m.If(all_done):
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["CHK_DIM"]):
            m.d.sync += n_rep.eq(n_rep_q)
        # the walks start a cycle after the checks pass (their start is a register)
        m.d.sync += start_run.eq(passed["CHK_ADDR"])
        return m

    def _run(self, m, platform, W, R, OB, MB, sc, rq, a, n_rep, hb, tb, st, lim0, start_run):
        """The request side, response side, pipeline and packer; returns 'all written'."""
        B = self.block
        hd = a.head_dim
        rlog = R.bit_length() - 1
        slog = OB.bit_length() - 1
        SB = isa.SCALE_SHIFT_BITS

        # ------------------------------------------------------------ request side
        I_S1, I_S2, I_S3, I_Q, I_QS, I_KS, I_K, I_END, I_DONE = range(9)
        ist = Signal(range(9), init=I_DONE)
        iw = _Blocks(m, "i", a, lim0, hb, tb, n_rep, B, R)
        # q rows / records of the block's slots; keys and records of its KV head (key 0 at
        # the base)
        q = _Grid("q", st["q_h"], st["q_t"])
        qs = _Grid("qs", st["qs_h"], st["qs_t"])
        q.prepare(m, iw, hd)
        qs.prepare(m, iw, 4)
        k, ks = Cursor("k_head", "k_ptr"), Cursor("ks_head", "ks_ptr")
        # the next KV head's bases and whether the block ends its KV head, registered
        k_nb, ks_nb = Signal.like(k.base, name="k_nb"), Signal.like(ks.base, name="ks_nb")
        g_adv = Signal()
        m.d.sync += [
            k_nb.eq(k.base + st["kv"]),
            ks_nb.eq(ks.base + st["ks"]),
            g_adv.eq(~iw.more_t & iw.g_end),
        ]

        with m.If(start_run):
            m.d.sync += [
                ist.eq(I_S1),
                *iw.start(),
                *q.start(a.q),
                *qs.start(a.q_scale),
                *k.start(a.k),
                *ks.start(a.k_scale),
            ]

        with m.Switch(ist):
            with m.Case(I_S1):
                m.d.sync += [*iw.setup1(), ist.eq(I_S2)]
            with m.Case(I_S2):
                m.d.sync += [*iw.setup2(), ist.eq(I_S3)]
            with m.Case(I_S3):  # as the response side's third
                m.d.sync += ist.eq(I_Q)
            with m.Case(I_Q):
                with m.If(self.read(m, q.ptr, hd)):
                    m.d.sync += ist.eq(I_QS)
            with m.Case(I_QS):
                with m.If(self.read(m, qs.ptr, isa.SCALE_RECORD_BYTES)):
                    m.d.sync += ist.eq(I_Q)
                    with m.If(iw.ti_last & iw.ri_last):  # the block's last slot (q, qs: I_END)
                        m.d.sync += [ist.eq(I_KS), *iw.keys_start()]
                    with m.Elif(iw.ti_last):
                        m.d.sync += [*iw.slot_head(), *q.head(), *qs.head()]
                    with m.Else():
                        m.d.sync += [*iw.slot_row(), *q.row(), *qs.row()]
            with m.Case(I_KS):
                with m.If(self.read(m, ks.ptr, Mux(iw.left > R, R, iw.left) * 4)):
                    m.d.sync += [ist.eq(I_K), *ks.advance(4 * R)]
            with m.Case(I_K):
                with m.If(self.read(m, k.ptr, st["krow"])):
                    m.d.sync += [*iw.key(), *k.advance(st["krow"])]
                    with m.If(iw.lastk):  # the block's last key
                        m.d.sync += ist.eq(I_END)
                    with m.Elif(iw.krec):
                        m.d.sync += ist.eq(I_KS)
            with m.Case(I_END):  # the next block
                m.d.sync += [ist.eq(Mux(iw.last, I_DONE, I_S1)), *iw.next_block()]
                q.end(m, iw.more_t)
                qs.end(m, iw.more_t)
                k_b, ks_b = Mux(g_adv, k_nb, k.base), Mux(g_adv, ks_nb, ks.base)
                m.d.sync += [k.base.eq(k_b), k.ptr.eq(k_b), ks.base.eq(ks_b), ks.ptr.eq(ks_b)]

        # ------------------------------------------------------------ response side
        C_S1, C_S2, C_S3, C_Q, C_QS, C_KS, C_K, C_Z, C_END, C_DONE = range(10)
        cst = Signal(range(10), init=C_DONE)
        cw = _Blocks(m, "c", a, lim0, hb, tb, n_rep, B, R)
        d = _Grid("d", st["d_h"], st["d_t"])  # dst row of the slot being loaded
        d.prepare(m, cw, st["d_r"])
        si = Signal(range(B), name="slot")  # the held query of this cycle
        si_last = Signal()  # ... the block's last (nb - 1)
        nb1 = Signal()  # the block holds one query
        nb = Signal(range(B + 1))  # its queries (registered: valid from the first C_Q)
        m.d.sync += nb.eq(cw.nh * cw.nt)
        # the held queries: codes, scale record, last visible key, dst row
        q_hold = [Signal(8 * W, name=f"q_hold{i}") for i in range(B)]
        sq_hold = [Signal(32, name=f"sq_hold{i}") for i in range(B)]
        L_hold = [Signal(isa.ROWS_BITS + 1, name=f"L_hold{i}") for i in range(B)]
        d_hold = [Signal(_ABITS, name=f"d_hold{i}") for i in range(B)]
        ks_buf = Signal(32 * R)
        # the block's zero runs: zend = lane + the masked keys left (relative to the chunk
        # at zjb, the first key of the current output chunk)
        zend = Signal(isa.ROWS_BITS + 2)
        zjb = Signal(isa.ROWS_BITS + 1)
        ztail = Signal(isa.ROWS_BITS + 1)  # keys - vis
        zmore = Signal()  # the run goes beyond this output chunk
        m.d.comb += zmore.eq(zend > OB)
        m.d.sync += ztail.eq(a.keys - cw.vis)

        # pipeline tokens: a logit (val; mask: the key is past the query's last visible
        # one: 0) or a zero run; flush: the slot's output chunk is done (``end`` logits,
        # written at ``addr``)
        stall = Signal()
        go = Signal()
        m.d.comb += go.eq(~stall)
        tok = {
            "valid": Signal(),
            "val": Signal(),
            "mask": Signal(),
            "flush": Signal(),
            "end": Signal(range(OB + 1)),
            "lane": Signal(range(OB)),
            "si": Signal(range(B)),
            "jb": Signal(isa.ROWS_BITS + 1),  # the output chunk's first key
        }
        m.d.comb += tok["si"].eq(si)
        jb = tok["jb"]

        with m.If(start_run):
            m.d.sync += [cst.eq(C_S1), *cw.start(), *d.start(a.dst)]

        def next_slot():
            """The next held query of this key (or chunk); after the last, the first."""
            with m.If(si_last):
                m.d.sync += [si.eq(0), si_last.eq(nb1)]
            with m.Else():
                m.d.sync += [si.eq(si + 1), si_last.eq(si + 2 == nb)]

        def end_block():
            m.d.sync += cst.eq(C_END)

        rdata = self.rdata
        with m.Switch(cst):
            with m.Case(C_S1):
                m.d.sync += [*cw.setup1(), cst.eq(C_S2)]
            with m.Case(C_S2):
                m.d.sync += [*cw.setup2(), cst.eq(C_S3)]
            with m.Case(C_S3):
                nb1_now = (cw.nh == 1) & (cw.nt == 1)
                m.d.sync += [cst.eq(C_Q), si.eq(0), si_last.eq(nb1_now), nb1.eq(nb1_now)]
            with m.Case(C_Q):
                m.d.comb += rdata.ready.eq(go)
                with m.If(go & rdata.valid):
                    with m.Switch(si):
                        for i in range(B):
                            with m.Case(i):
                                m.d.sync += q_hold[i].eq(rdata.payload)
                    m.d.sync += cst.eq(C_QS)
            with m.Case(C_QS):
                m.d.comb += rdata.ready.eq(go)
                with m.If(go & rdata.valid):
                    with m.Switch(si):
                        for i in range(B):
                            with m.Case(i):
                                m.d.sync += [
                                    sq_hold[i].eq(rdata.payload[:32]),
                                    L_hold[i].eq(cw.L),
                                    d_hold[i].eq(d.ptr),
                                ]
                    m.d.sync += cst.eq(C_Q)
                    next_slot()
                    with m.If(cw.ti_last & cw.ri_last):  # (d: C_END)
                        m.d.sync += [cst.eq(C_KS), *cw.keys_start()]
                    with m.Elif(cw.ti_last):
                        m.d.sync += [*cw.slot_head(), *d.head()]
                    with m.Else():
                        m.d.sync += [*cw.slot_row(), *d.row()]
            with m.Case(C_KS):
                m.d.comb += rdata.ready.eq(go)
                with m.If(go & rdata.valid):
                    m.d.sync += [ks_buf.eq(rdata.payload), cst.eq(C_K)]
            with m.Case(C_K):
                # the key row stays in the response for its nb queries: taken at the last
                lane = cw.j[:slog] if slog else Const(0, 1)
                m.d.comb += [
                    rdata.ready.eq(go & si_last),
                    tok["valid"].eq(go & rdata.valid),
                    tok["val"].eq(1),
                    tok["mask"].eq(cw.j > Array(L_hold)[si]),
                    tok["flush"].eq(lane.all() | cw.kfull),
                    tok["end"].eq(lane + 1),
                    tok["lane"].eq(lane),
                    jb.eq(cw.j & ~(OB - 1)),
                ]
                with m.If(go & rdata.valid):
                    next_slot()
                    with m.If(si_last):
                        m.d.sync += cw.key()
                        with m.If(cw.kfull):
                            end_block()
                        with m.Elif(cw.lastk):
                            m.d.sync += [
                                zend.eq(ztail + (cw.vis[:slog] if slog else 0)),
                                zjb.eq(cw.vis & ~(OB - 1)),
                                cst.eq(C_Z),
                            ]
                        with m.Elif(cw.krec):
                            m.d.sync += cst.eq(C_KS)
            with m.Case(C_END):  # the next block
                m.d.sync += [cst.eq(Mux(cw.last, C_DONE, C_S1)), *cw.next_block()]
                d.end(m, cw.more_t)
            with m.Case(C_Z):
                # every held query's zero run, an output chunk at a time (the last block
                # has no masked key: a zero run never ends the command)
                m.d.comb += [
                    tok["valid"].eq(go),
                    tok["val"].eq(0),
                    tok["flush"].eq(1),
                    tok["end"].eq(Mux(zmore, OB, zend)),
                    jb.eq(zjb),
                ]
                with m.If(go):
                    next_slot()
                    with m.If(si_last):
                        with m.If(zmore):  # up to the end of this chunk
                            m.d.sync += [zend.eq(zend - OB), zjb.eq(zjb + OB)]
                        with m.Else():
                            end_block()

        # ------------------------------------------------------------ pipeline
        def reg(value, name, shape=None):
            r = Signal(value.shape() if shape is None else shape, name=name)
            with m.If(go):
                m.d.sync += r.eq(value)
            return r

        def tok_reg(t, i):
            return {k: reg(v, f"t{i}_{k}") for k, v in t.items()}

        toks = [tok]
        for i in range(1, PIPE + 1):
            toks.append(tok_reg(toks[-1], i))
            if i == 1:  # the write address from stage 1 (d_hold is stable until then)
                t1 = toks[1]
                d_sel = Array(d_hold)[t1["si"]] if B > 1 else d_hold[0]
                toks[1] = {**t1, "addr": (d_sel + (t1["jb"] << 1))[:_ABITS]}

        # the dot product: pairs of DSPs (accept cycle c -> c+4), three tree stages (c+7)
        k_lanes = kvrow.unpack_lanes(m, rdata.payload, W, self.cfg)  # int8 lanes of the key row
        q_vec = Array(q_hold)[si] if B > 1 else q_hold[0]
        pairs = [
            dot2(
                m,
                platform,
                f"dot{i}",
                q_vec[16 * i : 16 * i + 8].as_signed(),
                k_lanes[16 * i : 16 * i + 8].as_signed(),
                q_vec[16 * i + 8 : 16 * i + 16].as_signed(),
                k_lanes[16 * i + 8 : 16 * i + 16].as_signed(),
                ce=go,
            )[:17].as_signed()
            for i in range(W // 2)
        ]
        vals = pairs
        for lv in range(3):  # up to 64 pairs: two adder levels a stage
            vals = _tree(_tree(vals)) if len(vals) > 2 else _tree(vals)
            vals = [reg(v, f"tree{lv}_{i}") for i, v in enumerate(vals)]
        dot7 = vals[0]

        # the pair scale (c+1 .. c+5), delayed to c+7
        jr = cw.j[:rlog] if rlog else 0
        rec = Array(ks_buf[32 * i : 32 * i + 32] for i in range(R))[jr] if R > 1 else ks_buf
        sk1 = reg(rec, "sk1", 32)
        sq1 = reg(Array(sq_hold)[si] if B > 1 else sq_hold[0], "sq1", 32)
        sp2 = reg(sq1[:16] * sk1[:16], "sprod2", 2 * isa.SCALE_MANT_BITS)
        ss2 = reg(sq1[16:32].as_signed() + sk1[16:32].as_signed(), "ssum2", signed(SB + 1))
        # the bit length in two stages (a 32-bit priority search is too deep for one):
        # c+3 each byte's bit length, c+4 the top nonzero byte's
        nby = -(-len(sp2) // 8)
        bytes2 = [sp2[8 * k : 8 * k + 8] for k in range(nby)]
        bbl3 = [reg(tree_bit_length(b), f"bbl3_{k}", 4) for k, b in enumerate(bytes2)]
        bl4 = Signal(range(2 * MB + 1), name="bl4")
        with m.If(go):
            m.d.sync += bl4.eq(0)
            for k in range(nby):  # the last nonzero byte wins
                with m.If(bbl3[k] != 0):
                    m.d.sync += bl4.eq(bbl3[k] + 8 * k)
        sp3 = reg(sp2, "sprod3")
        sp4 = reg(sp3, "sprod4")
        # the requant shift before the carry: shift - (bl - MB) - in_frac_bits
        s3 = reg(ss2 + (MB - sc.in_frac_bits), "s3", signed(SB + 3))
        s4 = reg(s3, "s4")
        z3 = reg(sp2 == 0, "z3")
        z4 = reg(z3, "z4")
        # rhu(p, bl - MB) (or p << (MB - bl) when bl < MB) as rhu(p << MB, bl): one shifter
        w5 = reg(((sp4 << (MB + 1)) >> bl4)[: MB + 2], "w5", MB + 2)
        s5 = reg(s4 - bl4, "s5", signed(SB + 3))
        z5 = reg(z4, "z5")
        wide = (w5 + 1) >> 1
        carry = wide[MB]
        mant6 = reg(Mux(z5, 0, Mux(carry, wide >> 1, wide)[:MB]), "mant6", MB)
        s6 = reg(s5 - carry, "s6", signed(SB + 3))
        mant7 = reg(mant6, "mant7")

        # requant(dot, mant, s): c+8 the product (DSP) and the shift controls; c+9 the
        # shifters; c+10 rounding and saturation to in_bits
        OUT = sc.in_bits
        lo, hi = -(1 << (OUT - 1)), (1 << (OUT - 1)) - 1
        pw = len(dot7) + MB + 1
        s_max = min(rq.shift_max, pw)
        prod8 = reg(dot7 * Cat(mant7, Const(0, 1)).as_signed(), "qprod8", signed(pw))
        # the shift controls from s6 (c+7), the saturation mask from them (c+8)
        ls = Signal(range(32))
        m.d.comb += ls.eq(Mux(s6 >= 0, 0, Mux(-s6 > 31, 31, -s6)))
        sr7 = reg(Mux(s6 <= 0, 0, Mux(s6 > s_max, s_max, s6)), "sr7", range(s_max + 1))
        ls7 = reg(ls, "ls7")
        neg7 = reg(s6 < 0, "neg7")
        big7 = reg(ls >= OUT, "big7")  # no nonzero product fits after such a shift
        sr8, ls8, neg8, big8 = (
            reg(sr7, "sr8"),
            reg(ls7, "ls8"),
            reg(neg7, "neg8"),
            reg(big7, "big8"),
        )
        keep = Signal(range(OUT))
        m.d.comb += keep.eq(Mux(big7, 0, OUT - 1 - ls7))
        mask8 = reg(~((Const(1, pw + 1) << keep) - 1)[:pw], "mask8", pw)
        sign = prod8[pw - 1]
        wr9 = reg((prod8 << 1) >> sr8, "wr9", signed(pw + 1))
        wl9 = reg((prod8 << ls8)[:OUT], "wl9", OUT)
        fit9 = reg((((prod8 ^ sign.replicate(pw)) & mask8) == 0) & (~big8 | ~sign), "fit9")
        sign9, neg9 = reg(sign, "sign9"), reg(neg8, "neg9")
        # rhu(p, sr) = (w + 1) >> 1 leaves int16 iff w >= 2^16 - 1 or w < -2^16 - 1
        r10 = (wr9 + 1) >> 1
        right = Mux(wr9 >= (1 << OUT) - 1, hi, Mux(wr9 < -(1 << OUT) - 1, lo, r10[:OUT]))
        left = Mux(fit9, wl9, Mux(sign9, lo, hi))
        y10 = reg(Mux(neg9, left, right), "y10", signed(OUT))

        # ------------------------------------------------------------ packer
        # one gather register per held query (its row's current output chunk)
        gather = [Signal(16 * OB, name=f"gather{i}") for i in range(B)]
        pend_valid = Signal()
        pend_data = Signal(16 * OB)
        pend_len = Signal(range(2 * OB + 1))
        pend_addr = Signal(_ABITS)
        with m.If(start_run):
            m.d.sync += [g.eq(0) for g in gather]

        t = toks[PIPE]
        wr = self.wr
        m.d.comb += [
            wr.valid.eq(pend_valid),
            wr.payload.addr.eq(pend_addr),
            wr.payload.len.eq(pend_len),
            wr.payload.data.eq(pend_data),
            stall.eq(t["valid"] & t["flush"] & pend_valid & ~wr.ready),
        ]
        merged = Signal(16 * OB)
        m.d.comb += merged.eq(Array(gather)[t["si"]] if B > 1 else gather[0])
        with m.If(t["val"]):
            with m.Switch(t["lane"]):
                for i in range(OB):
                    with m.Case(i):
                        m.d.comb += merged[16 * i : 16 * i + 16].eq(Mux(t["mask"], 0, y10))
        with m.If(wr.valid & wr.ready):
            m.d.sync += pend_valid.eq(0)
        with m.If(go & t["valid"]):
            with m.If(t["flush"]):
                m.d.sync += [
                    pend_valid.eq(1),
                    pend_data.eq(merged),
                    pend_len.eq(t["end"] * 2),
                    pend_addr.eq(t["addr"]),
                ]
            with m.Switch(t["si"]):
                for i in range(B):
                    with m.Case(i):
                        m.d.sync += gather[i].eq(Mux(t["flush"], 0, merged))

        all_done = Signal()
        busy = Cat(*(tk["valid"] for tk in toks[1:])).any()
        m.d.comb += all_done.eq((cst == C_DONE) & ~start_run & ~busy & ~pend_valid)
        return all_done


def _figures(dp_name: str = "kv260") -> None:
    """Bytes and cycles of BitNet-shaped QK commands at the design point's block and at
    block 1 (one query at a time, as before blocking), with a 1-cycle memory and at the
    design point's DRAM bandwidth: ``python -m hw.ops.qk [design point]``."""
    from golden.config import design_point

    dp = design_point(dp_name)
    bpc = dp.bytes_per_cycle
    R, OB = dp.qk_records, dp.qk_out_lanes
    print(f"QK on {dp.name}: attn_block {dp.attn_block}, {bpc:.1f} bytes/cycle")
    for name, heads, kvh, hd in (("2B-4T", 20, 5, 128), ("0.73B", 16, 16, 96)):
        for rows, keys in ((1, 128), (1, 2048), (128, 128)):
            what = "decode" if rows == 1 else "prefill"
            for blk in (1, dp.attn_block):
                cyc = expected_cycles(heads, kvh, rows, keys, R, OB, blk)
                by = read_bytes(heads, kvh, rows, keys, hd, blk)
                print(
                    f"  {name} {what} rows {rows} keys {keys} block {blk}: {by:,} bytes, "
                    f"{cyc:,} cycles; memory {by / bpc:,.0f} -> max {max(cyc, by / bpc):,.0f}"
                )


if __name__ == "__main__":
    import sys

    _figures(*sys.argv[1:2])
