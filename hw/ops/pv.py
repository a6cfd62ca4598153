"""PV engine: attention output ``o = P . V`` with per-key V scales (golden:
``Executor._op_pv`` -> ``golden.model.op_pv``, item 6 "pv" of its module docstring).

p is uint16 [heads, rows, keys] (masked entries are forced to 0: query t sees keys j <=
L_t = keys - rows + t); the V row and scale record of KV head g, key j are at
``v + (g*kv_ld + j)*VR`` and ``v_scale + (g*kv_ld + j)*4``, VR = ``golden.isa.kv_row(
head_dim)``: int8 [head_dim], or in an int4-KV build (``ForwardConfig.kv_bits`` = 4, e.g.
kv260-kv4) head_dim/2 bytes of packed int4 codes;
query head h reads KV head g = h // (heads/kv_heads). With B = ``cfg.requant.mult_bits``,
X = ``cfg.forward.pv_extra_bits``, P = ``cfg.softmax.out_bits``, IF =
``cfg.norm.in_frac_bits``, per query head h and query t:

* ``s_min`` = min of sv_j.shift over keys j <= L_t whose mant is nonzero (0 if none);
* ``pt_j = rhu(p_j * sv_j.mant, B - X + sv_j.shift - s_min)`` (< 2^(P+X) for a 16-bit p);
* ``acc = sum_j pt_j * v_q[j]`` (head_dim lanes, exact);
* ``o = requant(acc, (1, s_min + P + X - B), IF, cfg.norm.in_bits)`` int32, written to
  ``dst + (t*heads + h)*head_dim*4`` (dst int32 [rows, heads*head_dim]).

The golden backend hands acc to ``golden.requant.requantize``, which refuses an acc
outside signed ``cfg.requant.in_bits`` (int32): that is a data-dependent BAD_OPERAND
(possible only for p rows that are not probabilities, sum p > 2^P).

Checks: the PV contract (``golden.isa.CONTRACTS``)
=================================================
1. (BAD_DIM) rows, heads, kv_heads, head_dim >= 1; heads % kv_heads == 0; rows <= keys <=
   ``cfg.softmax.max_len``; kv_ld >= keys; and the engine limits keys <= ``max_keys``,
   head_dim <= ``max_head_dim`` (``LIMITS``, see Differences);
2. p aligned to 2 (ALIGN), [p, p + heads*rows*keys*2) in range (ADDR_RANGE);
3. v: every KV head's [v + g*kv_ld*hd, + keys*hd) in range (ADDR_RANGE; int8, no
   alignment); the heads are at increasing addresses, so the first start and last end
   decide;
4. v_scale aligned to 4 (ALIGN), every KV head's records in range (ADDR_RANGE);
5. the contract's data check "acc range" (golden runs op_pv before storing): any acc
   outside int32 -> BAD_OPERAND;
6. dst aligned to 4 (ALIGN), [dst, dst + rows*heads*head_dim*4) in range (ADDR_RANGE).
Steps 1-4 take two cycles before any memory access. The dst check is evaluated with them
but can only be reported after step 5, so with a bad dst the engine runs the command
"dry" (all reads and arithmetic, no write) and then reports BAD_OPERAND if an acc
overflowed, else the dst error. Without a dst error an overflow is reported when the
command ends; writes stop from the block of held queries where it was found (earlier
blocks' outputs are written, as the engine rules allow).

Micro-architecture
==================
Queries are held in blocks of up to B = ``block`` (the design point's ``attn_block``),
with QK's block rule (``hw.ops.gqa.blocks`` / ``block_shape``: hb = min(B, n_rep) heads x
tb = B // hb rows of one KV head g; rows inner, then head chunks, then KV heads), and each
V row and record of g is read once per block for all its queries. A block's slots s = 0
.. nb - 1 (nb = nh * nt; head ri outer, row ti inner) are the queries (h0 + ri, t0 + ti),
v_s = L_t + 1 visible keys each; the block's keys are j < vis = v of its last row. Decode
with n_rep = 4, B = 4 holds the 4 query heads of a KV head (each V row read once instead
of 4 times); a prefill block with n_rep = 1 holds 4 rows of a head. B = 1 is one query at
a time (the ecp5 point). Per block:

* min passes, slot by slot: slot s's v_s scale records in reads of R = ``records``
  records (4R bytes; the records are read per slot, not once per block: one min tree);
  a pipelined min tree over each response's records with a nonzero mant (each level keeps
  the smaller shift of the nonzero ones and whether there was one; a response is zero
  beyond its len, so no masked key counts), tagged with its slot, and a running min per
  slot give each slot's s_min;
* key pass: per key j a V row (one read of VR bytes; int4 rows are unpacked into the
  int8 lanes by ``hw.ops.kvrow.unpack_lanes``, wiring only), preceded every PC keys by
  one read per slot of its next PC p values (2PC bytes, over j < vis for every slot: a
  slot's p beyond its own keys is read and ignored; PC = 2R at B = 1, R with held queries,
  which keeps the (slot, value) select within the depth rule: ``p_chunk``) and every R keys
  by a read of the next R records (read twice, in the min passes and here: no block RAM).

The request side issues this sequence as fast as ``rd.ready`` allows, running ahead of
the responses; the response side walks the same sequence. Both walks keep every decision
in registers: the next block's origin and shape come from a chain of three register
stages (a block lasts >= 4 cycles on either side), the slot walk's "last" flags, the
stream's "next is a p / record chunk" and their lengths; both walks live outside the
command FSM (they rest in ``_END``). A V row stays in the response register for nb
cycles (taken with the last slot): each cycle one slot's operation enters the pipeline:

* S0 (an operation, slot s of key j): p_j of slot s (one select by the concatenation of
  s and j's low bits) and record j from the chunk registers, slot s's shift bounds, and
  whether the slot sees the key (j < v_s; else pt = 0, the operation still moves the
  slot's accumulator); S1: ``p_j * mant_j`` (a DSP) and ``sh = clamp(B - X + shift_j -
  s_min, 0, 33)`` (the sum beside two compares of shift_j with the slot's thresholds;
  p*mant < 2^32: from 33 on any shift gives 0, like golden's 62); S2: ``(2 p mant) >>
  sh``; S3: ``pt = (that + 1) >> 1 = rhu(p mant, sh)`` (0 in a cycle without an
  operation; ``PT_BITS`` = 23 bits unsigned for the default config);
* ``max_head_dim`` multiply-accumulate lanes ``acc_i[s] += pt * v_i`` (a DSP48E2 each;
  the V row reaches the DSPs through three fabric stages and their two B registers). At
  B = 1 (``hw.dsp.mac``) the DSP's 48-bit P register is the accumulator, restarted by
  the query's first key. With held queries (``hw.dsp.mac_slots``) each lane has nb
  accumulators: P and a ring of B - 1 ``acc_bits``-wide shift registers behind it
  (SRL16E: one LUT per bit, no flip-flop), which move with every operation in M (P =
  M for a slot's first key, P + M for nb = 1, else C + M with C the ring's tap nb - 2:
  the slot whose turn comes next) and stand still otherwise, so stalls between keys
  keep the slots aligned;
* captures and the drain: when the block's last operation (its last slot) is in P, P
  goes to the hold register (int32 per lane) and the DSPs' pattern detectors say whether
  each acc fits int32 (else BAD_OPERAND: exact for any data, P holds 48 bits); then
  each other slot's acc is rotated back into P (C + M with M = 0; slot 0 first) in the
  cycle the writer takes the hold register's last group, checked and captured the next
  cycle. The next block's first operation waits for the drain's last capture; a block's
  last key waits for a free hold register and no last key in flight. Per slot: its dst
  row address and shift (from its last operation) and the requant controls of that
  shift, selected by the captured slot;
* writer: ``requant`` (unit multiplier) of ``out_lanes`` lanes per write, a pipeline of
  the lane-group select, the shifters and the saturation, overlapped with the next
  block's min passes and keys: ceil(head_dim/out_lanes) writes per query.

The first key of a block is accepted ``log2(R)`` cycles after the last min-pass response
at the earliest (the min tree's latency; with a 1-cycle memory that costs one cycle at
B = 1, and the nb p responses and the record response come in that wait).

Cycles
======
The request side issues one read per cycle; with a memory that never stalls the
response side takes one response (min pass, p, record) a cycle and one operation a
cycle (nb per V row). ``expected_cycles`` is this recurrence over the blocks, exact
(``sim/test_op_pv.py`` measures it with a 1-cycle memory, INT8 and int4 V rows alike),
with NW = ceil(head_dim/out_lanes) and t from the first response (cycle G + 3 +
latency: the head-ratio divider ``hw.ops.gqa``, G = ``gqa.cycles()`` = 9 for 8-bit head
fields, two check cycles)::

    per block: t += sum_s ceil(v_s / R)                  (min passes)
               first = t - 1 + log2(R) + 3                (the min tree)
               per key j < vis:
                 t += nb [j % PC == 0] + [j % R == 0]     (p chunks, a record chunk)
                 j == 0:       t = max(t, first, drain_ok)
                 j == vis - 1: t = max(t, hold_ok); cap = t + nb + 6
                               lastcap = cap + (nb - 1)(NW + 1)
                 t += nb                                  (one operation per slot)
               hold_ok = lastcap + NW + 1;  drain_ok = lastcap + 1 if nb > 1 else 0
    cycles = lastcap + NW + 4                             (the last block's)

(cap: the last slot's capture, six cycles after its operation; the others follow every
NW + 1 cycles as the writer frees the hold register). The drain costs no second hold
register, and (nb - 1)(NW + 1) cycles after a block's last key before the next block's
first key: hidden behind that block's min passes, p and record reads when they take
longer (2B-4T decode at 2048 keys: some 260 cycles against 106), else the wait shows (short
prefill blocks). Without waits (hold_ok, drain_ok
never bind: long keys) and with nb = 1 this is one query at a time's formula::

    cycles = N + heads*rows*log2(R) + latency + G + 13 + NW
    N = heads * sum_{t<rows} (2 ceil(v_t/R) + v_t + ceil(v_t/(2R)))      v_t = L_t + 1

and with held queries each block costs sum_s ceil(v_s/R) + max(0, log2(R) + 1 - nb) +
nb ceil(vis/PC) + ceil(vis/R) + nb vis cycles, plus (nb_last - 1)(NW + 1) at the end.
Bytes read (``read_bytes``): per block 4 sum_s v_s + 2 nb vis + vis (VR + 4).

``python -m hw.ops.pv [design point]`` prints these for BitNet shapes at block 1 and at
the design point's block. kv260 (R = 32, out_lanes 4, B = 4, 68.4 bytes/cycle): BitNet
2B-4T decode (20 heads, 5 KV heads, head_dim 128), 2048 keys: 1,597,440 bytes (5,652,480
one query at a time: each V row and record read once per KV head instead of once per
query head) and 44,004 cycles (44,315), compute-bound at one V row operation a cycle
(memory alone 23,354 cycles; before: memory-bound, 82,639): 1.88x; 4096 keys: 3,194,880
bytes (11,304,960), 87,844 cycles (memory-bound before: 165,277), 1.88x. BitNet-0.73B
decode (n_rep = 1, one query per block): bytes unchanged, 35,967 cycles at 2048 keys
(35,455 at B = 1: p chunks of R), memory-bound either way (50,781). A 128-token prefill
of 2B-4T reads 6.44 MB (22.8 MB) in 238,507 cycles (memory-bound before: 333,137):
1.40x (compute-bound; in its short blocks the drain's 4 x 32 writes, before the next
block's first key, bind).

Area (``python -m hw.synth engine_pv --no-ecp5``, the engine alone, XCK26; LUT + LUTRAM
/ FF / DSP, logic levels): one query at a time before blocks 6,786 + 0 / 12,146 / 136,
6.0; B = 4 (kv260): 8,982 + 5,504 / 14,580 / 137, 7.0: seven one-bit paths of 7 levels,
from the head_dim argument through the contract checks' priority to the registered dims
verdict (``Engine.checks``, unchanged; Yosys/ABC's mapping of it moved with the rest of
the netlist), every path of the walks and the datapath <= 6. The rings are 128 lanes x
``acc_bits`` (43) SRL16E (the LUTRAM column); the hold register stays one (the drain
serializes the captures: no per-slot hold banks); the extra DSP is rows * keys.

Differences from the golden backend
===================================
* ``max_keys`` (default 2048: BitNet-0.73B's context) bounds keys; keys > max_keys ->
  BAD_DIM (golden: up to softmax max_len).
* ``max_head_dim`` (default ``dma_bytes``, 128; BitNet-0.73B has 96) is the MAC lane
  count; a V row is one read, so it cannot exceed dma_bytes; head_dim > max_head_dim ->
  BAD_DIM.
  Both limits (``LIMITS``) are checked with the contract's dimension checks (step 1), so
  a command that breaks a limit and also has a bad address reports BAD_DIM where golden
  reports the address error.
* dst must not overlap p, v or v_scale: golden reads everything before writing, the
  engine writes each query's output while it still reads. The command stream never does
  this.
* Only the unmasked part of p is read (golden reads the whole tensor; no result
  depends on the rest).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed

from golden import isa
from golden.config import DatapathConfig
from golden.fixed import rhu as golden_rhu
from golden.isa import ErrorCode, Opcode
from hw.dsp import mac, mac_slots

from . import kvrow
from .base import Engine, check_power_of_two
from .gqa import Cursor, block_shape, blocks, head_ratio
from .gqa import cycles as gqa_cycles

P_MEM_BITS = 16  # p is uint16 in memory (any 16-bit value)
V_BITS = 8  # V codes: int8
SH_HI = 2 * 16 + 1  # p*mant < 2^32: rhu by >= 33 gives 0

_END, _MIN, _STREAM = 0, 1, 2  # one-hot; a walk rests (after reset too) in _END
MAX_BLOCK = 16  # held queries (SRL16E rings of up to 15 accumulators behind P)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _Grid:
    """A [heads, rows] row tensor's (p rows, dst rows) place in the walk over a block's
    slots (head outer, row inner), ``hs`` bytes between heads and ``ts`` between rows
    (registers): ``cur`` the slot's row, ``head`` its head's row t0, ``hr0`` its head's
    row 0, ``blk`` the block's first slot, ``hc`` row 0 of the block's first head,
    ``nblk`` the row after the first head's last (the next row chunk's first slot). Each
    method returns the statements of one step."""

    def __init__(self, name: str, hs, ts):
        w = isa.ADDR_BITS + 1
        self.cur, self.head = Signal(w, name=f"{name}_cur"), Signal(w, name=f"{name}_head")
        self.hr0, self.blk = Signal(w, name=f"{name}_hr0"), Signal(w, name=f"{name}_blk")
        self.hc, self.nblk = Signal(w, name=f"{name}_hc"), Signal(w, name=f"{name}_nblk")
        self.hs, self.ts = hs, ts

    def start(self, addr) -> list:
        return [r.eq(addr) for r in (self.cur, self.head, self.hr0, self.blk, self.hc)]

    def slot(self, ti_last, first_head) -> list:
        """The next slot: the next row, or row t0 of the next head."""
        nh, nr = self.head + self.hs, self.cur + self.ts
        return [
            self.cur.eq(Mux(ti_last, nh, nr)),
            self.nblk.eq(Mux(ti_last & first_head, nr, self.nblk)),
            self.head.eq(Mux(ti_last, nh, self.head)),
            self.hr0.eq(Mux(ti_last, self.hr0 + self.hs, self.hr0)),
        ]

    def block(self, m, more_t, one_head) -> None:
        """After the block's last slot: the next row chunk of its heads, or row 0 of the
        next head."""
        with m.If(more_t):
            nb = Mux(one_head, self.cur + self.ts, self.nblk)
            m.d.sync += [self.blk.eq(nb), self.cur.eq(nb), self.head.eq(nb), self.hr0.eq(self.hc)]
        with m.Else():
            nh = self.hr0 + self.hs
            m.d.sync += [r.eq(nh) for r in (self.cur, self.head, self.hr0, self.blk, self.hc)]


class _Walk:
    """One side's walk (the module docstring's sequence; the request side issues it, the
    response side takes it) over the blocks of held queries (``hw.ops.gqa.blocks``): per
    block the min passes of its slots s (head ri outer, row ti inner; ``vt`` = v_s the
    slot's visible keys, ``left`` / ``lastm`` its records left / its last read), then its
    key pass (keys ``j`` < vis; ``left`` / ``lastk``), in which the slots are walked again
    (p reads, one operation per slot per key). Every decision is a register: the next
    block's origin and shape come from a chain of registers (three stages) computed from
    the block's, which lasts >= 4 cycles on either side. Signals are named
    ``<side>_<field>``; each method returns the statements of one step."""

    def __init__(self, m: Module, side: str, a, R: int, lim0, n_rep, hb, tb, B: int):
        self.a, self.R, self.lim0, self.hb, self.tb, self.n_rep = a, R, lim0, hb, tb, n_rep

        def reg(field: str, shape=1):
            return Signal(shape, name=f"{side}_{field}")

        rb, hbits, sb = isa.ROWS_BITS + 2, isa.HEADS_BITS + 1, range(B + 1)
        self.state = reg("state", 2)
        # the block: heads h0 .. h0 + nh - 1 (repeats r0 ..) x rows t0 .. t0 + nt - 1
        self.t0, self.r0, self.h0 = reg("t0", rb), reg("r0", hbits), reg("h0", hbits)
        self.nh, self.nt = reg("nh", sb), reg("nt", sb)
        self.vis0 = reg("vis0", rb)  # lim0 + t0 + 1: row t0's visible keys
        self.more_t, self.g_end, self.hend = reg("more_t"), reg("g_end"), reg("hend")
        self.v0small = reg("v0small")  # vis0 <= R
        self.vis, self.vis1 = reg("vis", rb), reg("vis1")  # the last row's; == 1
        # the slot
        self.s, self.ri, self.ti = reg("s", sb), reg("ri", sb), reg("ti", sb)
        self.ri_last, self.ti_last = reg("ri_last"), reg("ti_last")
        self.s0, self.s_last = reg("s0"), reg("s_last")  # s == 0; ri_last & ti_last
        self.vt = reg("vt", rb)
        self.j, self.left = reg("j", rb), reg("left", rb)
        self.lastm, self.lastk = reg("lastm"), reg("lastk")
        # the next block: stage 1
        self.t0n, self.r0n, self.h0n = reg("t0n", rb), reg("r0n", hbits), reg("h0n", hbits)
        self.gstep, self.last = reg("gstep"), reg("last")  # the next is another KV head; none
        m.d.sync += [
            self.t0n.eq(Mux(self.more_t, self.t0 + tb, 0)),
            self.r0n.eq(Mux(self.more_t, self.r0, Mux(self.g_end, 0, self.r0 + self.nh))),
            self.h0n.eq(Mux(self.more_t, self.h0, self.h0 + self.nh)),
            self.gstep.eq(~self.more_t & self.g_end),
            self.last.eq(~self.more_t & self.hend),
        ]
        # stage 2
        self.nhn, self.ntn = reg("nhn", sb), reg("ntn", sb)
        self.vis0n, self.more_tn = reg("vis0n", rb), reg("more_tn")
        reps, rest = Signal(hbits), Signal(rb)
        m.d.comb += [reps.eq(n_rep - self.r0n), rest.eq(a.rows - self.t0n)]
        m.d.sync += [
            self.nhn.eq(Mux(hb < reps, hb, reps)),
            self.ntn.eq(Mux(tb < rest, tb, rest)),
            self.vis0n.eq(lim0 + self.t0n + 1),
            self.more_tn.eq(self.t0n + tb < a.rows),
        ]
        # stage 3
        self.g_endn, self.hendn, self.v0smalln = reg("g_endn"), reg("hendn"), reg("v0smalln")
        self.ri_lastn, self.ti_lastn = reg("ri_lastn"), reg("ti_lastn")
        self.visn, self.vis1n = reg("visn", rb), reg("vis1n")
        m.d.sync += [
            self.g_endn.eq(self.r0n + self.nhn == n_rep),
            self.hendn.eq(self.h0n + self.nhn == a.heads),
            self.v0smalln.eq(self.vis0n <= R),
            self.ri_lastn.eq(self.nhn == 1),
            self.ti_lastn.eq(self.ntn == 1),
            self.visn.eq(self.vis0n + self.ntn - 1),
            self.vis1n.eq((self.vis0n == 1) & (self.ntn == 1)),
        ]

    def _slots0(self, ri_last, ti_last) -> list:
        s = [self.s.eq(0), self.ri.eq(0), self.ti.eq(0), self.s0.eq(1)]
        s += [self.s_last.eq(ri_last & ti_last)]
        return s + [self.ri_last.eq(ri_last), self.ti_last.eq(ti_last)]

    def _min0(self, vis0, small=None) -> list:
        s = [self.state.eq(_MIN), self.j.eq(0), self.left.eq(vis0)]
        if small is None:  # vt and lastm: loaded in the key pass (``stream``)
            return s
        return s + [self.vt.eq(vis0), self.lastm.eq(small)]

    def start(self) -> list:
        """Block 0 (hb and tb valid), its first slot's min pass."""
        a, hb, tb, lim0 = self.a, self.hb, self.tb, self.lim0
        more = tb < a.rows
        return [
            self.t0.eq(0),
            self.r0.eq(0),
            self.h0.eq(0),
            self.nh.eq(hb),
            self.nt.eq(Mux(more, tb, a.rows)),
            self.vis0.eq(lim0 + 1),
            self.vis.eq(lim0 + Mux(more, tb, a.rows)),
            self.vis1.eq((lim0 == 0) & ((tb == 1) | (a.rows == 1))),
            self.more_t.eq(more),
            self.g_end.eq(hb == self.n_rep),
            self.hend.eq(hb == a.heads),
            self.v0small.eq(lim0 < self.R),
            *self._slots0(hb == 1, (tb == 1) | (a.rows == 1)),
            *self._min0(lim0 + 1, lim0 < self.R),
        ]

    def next_block(self) -> list:
        """After the block's last key: the next block, its first slot's min pass (the
        caller ends the walk after the last block)."""
        return [
            self.t0.eq(self.t0n),
            self.r0.eq(self.r0n),
            self.h0.eq(self.h0n),
            self.nh.eq(self.nhn),
            self.nt.eq(self.ntn),
            self.vis0.eq(self.vis0n),
            self.vis.eq(self.visn),
            self.vis1.eq(self.vis1n),
            self.more_t.eq(self.more_tn),
            self.g_end.eq(self.g_endn),
            self.hend.eq(self.hendn),
            self.v0small.eq(self.v0smalln),
            *self._slots0(self.ri_lastn, self.ti_lastn),
            *self._min0(self.vis0n),
        ]

    def stream(self) -> list:
        """Every cycle of the key pass (which lasts >= 1 cycle, and the block >= 4): the
        next block's vt and lastm (unused in the key pass; fewer logic levels than with
        the step's other conditions)."""
        return [self.vt.eq(self.vis0n), self.lastm.eq(self.v0smalln)]

    def slot(self) -> list:
        """The next slot (head ri outer, row ti inner)."""
        ri_last = Mux(self.ti_last, self.ri + 2 == self.nh, self.ri_last)
        ti_last = Mux(self.ti_last, self.nt == 1, self.ti + 2 == self.nt)
        return [
            self.s.eq(self.s + 1),
            self.s0.eq(0),
            self.s_last.eq(ri_last & ti_last),
            self.ri.eq(Mux(self.ti_last, self.ri + 1, self.ri)),
            self.ri_last.eq(Mux(self.ti_last, self.ri + 2 == self.nh, self.ri_last)),
            self.ti.eq(Mux(self.ti_last, 0, self.ti + 1)),
            self.ti_last.eq(Mux(self.ti_last, self.nt == 1, self.ti + 2 == self.nt)),
        ]

    def slots0(self) -> list:
        """After the last slot: slot 0 again."""
        return self._slots0(self.nh == 1, self.nt == 1)

    def min_read(self) -> list:
        """Past one read (response) of the slot's min pass."""
        R = self.R
        s = [self.j.eq(self.j + R), self.left.eq(self.left - R)]
        return s + [self.lastm.eq(self.left <= 2 * R)]

    def min_slot(self) -> list:
        """After a min pass, not the block's last: the next slot's."""
        rlog = self.R.bit_length() - 1
        return [
            *self.slot(),
            self.j.eq(0),
            self.vt.eq(Mux(self.ti_last, self.vis0, self.vt + 1)),
            self.left.eq(Mux(self.ti_last, self.vis0, self.vt + 1)),
            self.lastm.eq(Mux(self.ti_last, self.v0small, self.vt[rlog:] == 0)),
        ]

    def key_pass(self) -> list:
        """After the last slot's min pass: the block's key pass."""
        s = [self.state.eq(_STREAM), self.j.eq(0), self.left.eq(self.vis)]
        return s + [self.lastk.eq(self.vis1), *self.slots0()]

    def key(self) -> list:
        """Past one key."""
        return [self.j.eq(self.j + 1), self.left.eq(self.left - 1), self.lastk.eq(self.left == 2)]


def min_wait(records: int) -> int:
    """Cycles the first key of a query waits after the min pass with a memory that
    answers every cycle: the min tree's log2(R) levels and two registers, less the p and
    record reads (one query a block)."""
    return (records - 1).bit_length()


def p_chunk(records: int, block: int) -> int:
    """p values per read: 2R, or R with held queries (block > 1: the select of a slot's
    value from the B chunk registers stays within the depth rule)."""
    return 2 * records if block == 1 else records


def _slot_keys(nh: int, nt: int, vis: int) -> list[int]:
    """v_s of a block's slots (head outer, row inner)."""
    return [vis - nt + 1 + ti for _ in range(nh) for ti in range(nt)]


def n_requests(heads: int, rows: int, keys: int, records: int, kv_heads=None, block=1) -> int:
    """N of the module docstring: the reads of one command."""
    R, PC = records, p_chunk(records, block)
    n = 0
    for nh, nt, vis in blocks(heads, kv_heads or heads, rows, keys, block):
        vs = _slot_keys(nh, nt, vis)
        n += sum(_cdiv(v, R) for v in vs) + len(vs) * _cdiv(vis, PC) + _cdiv(vis, R) + vis
    return n


def read_bytes(
    heads: int, kv_heads: int, rows: int, keys: int, head_dim: int, block: int = 1, cfg=None
) -> int:
    """Bytes one command reads (module docstring): per block each slot's records over its
    visible keys (the min pass) and its p values over the block's vis keys, then each key's
    V row (``golden.isa.kv_row`` of ``cfg``'s KV format) and record once."""
    vrow = isa.kv_row(head_dim, 1, cfg or isa.DEFAULT)
    rec = isa.SCALE_RECORD_BYTES
    total = 0
    for nh, nt, vis in blocks(heads, kv_heads, rows, keys, block):
        vs = _slot_keys(nh, nt, vis)
        total += rec * sum(vs) + len(vs) * 2 * vis + vis * (vrow + rec)
    return total


def expected_cycles(
    heads: int,
    kv_heads: int,
    rows: int,
    keys: int,
    head_dim: int,
    records: int,
    out_lanes: int,
    block: int = 1,
    latency: int = 1,
) -> int:
    """Cycles of one command with a memory that never stalls: the module docstring's
    recurrence (exact)."""
    R, PC, NW = records, p_chunk(records, block), _cdiv(head_dim, out_lanes)
    wait = min_wait(R) + 3
    t = gqa_cycles() + 3 + latency  # the first response
    drain_ok = hold_ok = lastcap = 0
    for nh, nt, vis in blocks(heads, kv_heads, rows, keys, block):
        vs = _slot_keys(nh, nt, vis)
        nb = len(vs)
        t += sum(_cdiv(v, R) for v in vs)  # the min passes
        first = t - 1 + wait  # the min tree
        for j in range(vis):
            t += (nb if j % PC == 0 else 0) + (j % R == 0)  # p chunks, a record chunk
            if j == 0:
                t = max(t, first, drain_ok)
            if j == vis - 1:
                t = max(t, hold_ok)
                cap = t + nb + 6  # the last slot's capture, then the others'
                lastcap = cap + (nb - 1) * (NW + 1)
            t += nb
        hold_ok = lastcap + NW + 1
        drain_ok = lastcap + 1 if nb > 1 else 0
    return lastcap + NW + 4


class PVEngine(Engine):
    OPCODE = Opcode.PV
    LIMITS = ("keys <= max_keys", "head_dim <= max_head_dim")

    def __init__(
        self,
        cfg: DatapathConfig,
        dma_bytes: int,
        *,
        max_keys: int,
        max_head_dim: int,
        out_lanes: int,
        records: int,
        block: int = 1,
    ):
        check_power_of_two("dma_bytes", dma_bytes, lo=8)
        if not 1 <= max_head_dim <= dma_bytes:
            raise ValueError(
                f"max_head_dim: {max_head_dim} must be in [1, dma_bytes "
                f"{dma_bytes}] (a V row is one read)"
            )
        if not 1 <= max_keys <= min(cfg.softmax.max_len, (1 << isa.ROWS_BITS) - 1):
            raise ValueError(
                f"max_keys: {max_keys} must be in [1, softmax max_len {cfg.softmax.max_len}]"
            )
        if not 16 < cfg.norm.in_bits <= 32 or cfg.requant.in_bits > 32:
            raise ValueError(
                f"cfg.norm.in_bits: {cfg.norm.in_bits} must be in (16, 32] (dst is int32)"
            )
        check_power_of_two("records", records, hi=dma_bytes // 4)  # 4-byte records per beat
        if not 1 <= out_lanes or 4 * out_lanes > dma_bytes:
            raise ValueError(f"out_lanes: {out_lanes} must be in [1, dma_bytes / 4]")
        self.max_keys = max_keys
        self.max_head_dim = max_head_dim
        self.out_lanes = out_lanes
        self.records = records
        if not isinstance(block, int) or not 1 <= block <= MAX_BLOCK:
            raise ValueError(f"block: {block!r} must be an integer in [1, {MAX_BLOCK}]")
        self.block = block
        b, x = cfg.requant.mult_bits, cfg.forward.pv_extra_bits
        # smallest shift of a contributing key (its shift >= s_min), so the largest pt
        self.pt_max = int(
            golden_rhu(((1 << P_MEM_BITS) - 1) * ((1 << isa.SCALE_MANT_BITS) - 1), max(b - x, 0))
        )
        self.pt_bits = self.pt_max.bit_length()
        # |acc| < 2^47: the DSP's 48-bit P holds every sum exactly
        bound = max_keys * (1 << (V_BITS - 1)) * self.pt_max
        assert bound.bit_length() < 47
        self.acc_bits = bound.bit_length() + 1  # a held query's acc (signed): the ring's
        super().__init__(cfg, dma_bytes)

    @staticmethod
    def design_params(dp) -> dict:
        return {
            "max_keys": dp.max_keys,
            "max_head_dim": min(dp.max_head_dim, dp.dma_bytes),
            "out_lanes": dp.pv_out_lanes,
            "records": dp.pv_records,
            "block": dp.attn_block,
        }

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, OL, NB = self.records, self.out_lanes, self.block
        PC = p_chunk(R, NB)
        rlog, plog = R.bit_length() - 1, PC.bit_length() - 1
        LANES = self.max_head_dim
        NG = _cdiv(LANES, OL)  # lane groups of the hold register
        B, X, P = cfg.requant.mult_bits, cfg.forward.pv_extra_bits, cfg.softmax.out_bits
        IF, OUT_BITS = cfg.norm.in_frac_bits, cfg.norm.in_bits
        ACC_LIM = cfg.requant.in_bits  # golden's requantize takes int32 acc only
        SB = isa.SCALE_SHIFT_BITS
        SENT = 1 << (SB - 1)  # "no nonzero scale yet": above every shift
        SL = range(max(NB, 2))  # a slot index
        a = self.op_args
        # the checks: the head ratio by a sequential divider (``hw.ops.gqa``), every
        # check's verdict registered (the arguments are valid from start)
        n_rep_q, divides = head_ratio(m, self.start, a.heads, a.kv_heads)
        chk = self.checks(m, registered="deep", rule_values={"heads % kv_heads == 0": divides})
        # the tensor checks' verdict (registered) is read in CHECK_ADDR, two cycles after
        # the divider's result
        assert chk.latency + 1 <= gqa_cycles() + 2
        err_dims, err_inputs, err_dst = Signal(ErrorCode), Signal(ErrorCode), Signal(ErrorCode)
        m.d.sync += [
            err_dims.eq(chk.error(stop="p")),
            err_inputs.eq(chk.error(start="p", stop="acc range")),
            err_dst.eq(chk.error(start="acc range")),
        ]

        # ------------------------------------------------------------ command constants
        n_rep = Signal(isa.HEADS_BITS)
        hb, tb = block_shape(m, n_rep_q, NB)  # valid from CHECK_ADDR on
        lim0 = Signal(isa.ROWS_BITS)  # L_0 = keys - rows
        vstride = Signal(isa.ROWS_BITS + isa.DIM_BITS)  # kv_ld * vrow
        vrow = Signal(isa.DIM_BITS)  # bytes of a V row (the build's KV format)
        sstride = Signal(isa.ROWS_BITS + 2)  # kv_ld * 4
        pstride = Signal(isa.ROWS_BITS + 1)  # keys * 2: p rows
        phstride = Signal(2 * isa.ROWS_BITS + 1)  # rows * keys * 2: p heads
        dstride = Signal(isa.HEADS_BITS + isa.DIM_BITS + 2)  # heads * head_dim * 4
        hd4 = Signal(isa.DIM_BITS + 2)
        m.d.sync += phstride.eq(a.rows * a.keys * 2)
        dst_err = Signal(ErrorCode)
        ovf = Signal()  # an acc left int32 (sticky)
        dry = Signal()  # dst is bad: compute, do not write

        # ------------------------------------------------------------ request side
        rw = _Walk(m, "r", a, R, lim0, n_rep, hb, tb, NB)
        # the next read of the stream is a p chunk / a record chunk, and their lengths
        # (registers, like the response side's)
        r_needp, r_needs = Signal(), Signal()
        r_plen, r_slen = Signal(range(2 * PC + 1)), Signal(range(4 * R + 1))
        # KV head g's records and V rows; the slots' p rows
        r_s, r_v = Cursor("r_sbase", "r_sptr"), Cursor("r_vbase", "r_vptr")
        r_p = _Grid("r_p", phstride, pstride)
        pptr = [Signal(isa.ADDR_BITS + 1, name=f"r_pptr{i}") for i in range(NB)]  # next p

        # ------------------------------------------------------------ response side
        cw = _Walk(m, "c", a, R, lim0, n_rep, hb, tb, NB)
        c_j = cw.j
        # the next response of the stream is a p chunk / a record chunk (registered: the
        # response side's accept decision starts at flip-flops)
        c_needp = Signal()
        c_needs = Signal()
        c_wait = Signal(range(rlog + 3))  # min tree latency before the first key
        c_wait0 = Signal()  # c_wait == 0, registered
        c_d = _Grid("c_d", hd4, dstride)
        daddr = [Signal(isa.ADDR_BITS + 1, name=f"c_daddr{i}") for i in range(NB)]
        vsl = [Signal(isa.ROWS_BITS + 2, name=f"c_vs{i}") for i in range(NB)]  # v_s
        nbm1 = Signal(SL)  # the block's slots less one
        preg = [Signal(P_MEM_BITS * PC, name=f"preg{i}") for i in range(NB)]  # p chunks
        rreg = Signal(32 * R)  # the record chunk

        # ------------------------------------------------------------ min pass pipeline
        mn_valid = Signal()  # a min-pass response this cycle
        mn_first = Signal()  # ... the slot's first
        # each record's shift and whether its mant is nonzero (only those count); a tree
        # level keeps the smaller shift of the nonzero ones (either, when neither is)
        cands = []
        for i in range(R):
            rec = self.rdata.payload[32 * i : 32 * i + 32]
            c = Signal(signed(SB), name=f"smin_c{i}")
            nz = Signal(name=f"smin_nz{i}")
            m.d.sync += [c.eq(rec[16:32].as_signed()), nz.eq(rec[:16] != 0)]
            cands.append((nz, c))
        vq, fq, sq = Signal(name="smin_v0"), Signal(name="smin_f0"), Signal(SL, name="smin_s0")
        m.d.sync += [vq.eq(mn_valid), fq.eq(mn_first), sq.eq(cw.s)]
        lvl = 0
        while len(cands) > 1:  # one tree level per stage
            lvl += 1
            nxt = []
            for k in range(0, len(cands), 2):
                (nza, ca), (nzb, cb) = cands[k], cands[k + 1]
                c = Signal(signed(SB), name=f"smin_l{lvl}_{k // 2}")
                nz = Signal(name=f"smin_nz{lvl}_{k // 2}")
                m.d.sync += [
                    c.eq(Mux(nza & (~nzb | (ca < cb)), ca, cb)),
                    nz.eq(nza | nzb),
                ]
                nxt.append((nz, c))
            cands = nxt
            v2, f2 = Signal(name=f"smin_v{lvl}"), Signal(name=f"smin_f{lvl}")
            s2 = Signal(SL, name=f"smin_s{lvl}")
            m.d.sync += [v2.eq(vq), f2.eq(fq), s2.eq(sq)]
            vq, fq, sq = v2, f2, s2
        nz0, c0 = cands[0]
        # s_min per slot; SENT (no nonzero scale: golden's s_min = 0) needs no special
        # case: every pt is 0 then (mant = 0), and so is the output for any shift
        smin = [Signal(signed(SB + 1), name=f"smin{i}") for i in range(NB)]
        # B - X - s_min (the key's shift is shift + this) and the shift compares' bounds
        smin_m = [Signal(signed(SB + 3), name=f"smin_m{i}") for i in range(NB)]
        sh_lo = [Signal(signed(SB + 4), name=f"sh_lo{i}") for i in range(NB)]
        sh_hi = [Signal(signed(SB + 4), name=f"sh_hi{i}") for i in range(NB)]
        for i in range(NB):
            with m.If(vq & (sq == i)):
                with m.If(fq):
                    m.d.sync += smin[i].eq(Mux(nz0, c0, SENT))
                with m.Elif(nz0 & (c0 < smin[i])):
                    m.d.sync += smin[i].eq(c0)
            m.d.sync += [
                smin_m[i].eq((B - X) - smin[i]),
                sh_lo[i].eq(smin[i] - (B - X)),
                sh_hi[i].eq(SH_HI - (B - X) + smin[i]),
            ]

        # ------------------------------------------------------------ key pipeline
        v_fire = Signal()  # an operation (slot k_slot of key c_j) enters S0
        k_first, k_last, k_slot = Signal(), Signal(), Signal(SL)
        k_cont = Signal()  # the slot sees the key (j < v_s)
        jp, jr = c_j[:plog], c_j[:rlog]
        rec_j = Array(rreg[32 * i : 32 * i + 32] for i in range(R))[jr] if R > 1 else rreg

        def pick(regs, s):
            return Array(regs)[s] if NB > 1 else regs[0]

        # one flat select of p (slot, word): the index a concatenation of registers
        sbits = (NB - 1).bit_length()
        flat = [pr[16 * i : 16 * i + 16] for pr in preg for i in range(PC)]
        flat += [Const(0, 16)] * (PC * (1 << sbits) - len(flat))
        p_j = Array(flat)[Cat(jp, k_slot[:sbits]) if NB > 1 else jp]
        m.d.comb += [k_slot.eq(cw.s), k_cont.eq(c_j < pick(vsl, k_slot))]
        # S1
        p1 = Signal(P_MEM_BITS)
        mant1 = Signal(isa.SCALE_MANT_BITS)
        sh1 = Signal(signed(SB))  # the key's shift (S2 adds B - X - s_min)
        smm1, shlo1, shhi1 = Signal(signed(SB + 3)), Signal(signed(SB + 4)), Signal(signed(SB + 4))
        vv = [Signal(8 * LANES, name=f"v{i}") for i in (1, 2, 3)]
        ok = [Signal(name=f"kv{i}") for i in (1, 2, 3, 4)]
        fs = [Signal(name=f"kf{i}") for i in (1, 2, 3, 4)]
        ls = [Signal(name=f"kl{i}") for i in (1, 2, 3, 4, 5, 6, 7)]
        ops = [Signal(name=f"ko{i}") for i in range(1, 7)]  # an operation (for the ring)
        zs = [Signal(2, name=f"kz{i}") for i in range(1, 7)]  # its post-adder Z
        taps = [Signal(SL, name=f"kt{i}") for i in range(1, 7)]  # its ring tap
        m.d.sync += [
            p1.eq(p_j),
            mant1.eq(rec_j[:16]),
            sh1.eq(rec_j[16:32].as_signed()),
            smm1.eq(pick(smin_m, k_slot)),
            shlo1.eq(pick(sh_lo, k_slot)),
            shhi1.eq(pick(sh_hi, k_slot)),
            vv[0].eq(kvrow.unpack_lanes(m, self.rdata.payload, LANES, cfg)),  # int8 lanes
            ok[0].eq(v_fire & k_cont),
            fs[0].eq(v_fire & k_first),
            ls[0].eq(v_fire & k_last),
            ops[0].eq(v_fire),
            zs[0].eq(Mux(k_first, 0, Mux(nbm1 == 0, 1, 2))),
            taps[0].eq(nbm1 - 1),
        ]
        # S2: p * mant (DSP); the shift
        prod2 = Signal(P_MEM_BITS + isa.SCALE_MANT_BITS)
        shs = Signal(signed(SB + 4))
        m.d.comb += shs.eq(sh1 + smm1)
        # shs < 0 <=> sh1 < -smin_m; shs > SH_HI <=> sh1 > SH_HI - smin_m
        sh2 = Signal(range(SH_HI + 1))
        m.d.sync += [
            prod2.eq(p1 * mant1),
            sh2.eq(Mux(sh1 < shlo1, 0, Mux(sh1 > shhi1, SH_HI, shs[:6]))),
        ]
        # S3: (2 p mant) >> sh;  S4: pt = rhu(p mant, sh)
        w3 = Signal(P_MEM_BITS + isa.SCALE_MANT_BITS + 1)
        m.d.sync += w3.eq((prod2 << 1) >> sh2)
        pt4 = Signal(self.pt_bits)
        m.d.sync += pt4.eq(Mux(ok[2], (w3 + 1) >> 1, 0))
        for i in range(1, 3):
            m.d.sync += vv[i].eq(vv[i - 1])
        for i in range(1, 4):
            m.d.sync += [ok[i].eq(ok[i - 1]), fs[i].eq(fs[i - 1])]
        for i in range(1, 7):
            m.d.sync += ls[i].eq(ls[i - 1])
        for i in range(1, 6):
            m.d.sync += [ops[i].eq(ops[i - 1]), zs[i].eq(zs[i - 1]), taps[i].eq(taps[i - 1])]
        # the MAC lanes: pt (S4) with v (S3, one cycle ahead into the B registers); with
        # held queries each lane keeps one accumulator per slot (``hw.dsp.mac_slots``),
        # moved by the operations (in M at S6) and by the drain's rotations
        rot = Signal()  # a rotation: the next slot's acc comes back into P
        rot_tap = Signal(SL)
        accs, in_range = [], []
        for i in range(LANES):
            vi = vv[2][8 * i : 8 * i + 8].as_signed()
            if NB == 1:
                acc, fits = mac(
                    m, platform, f"mac{i}", pt4, vi, fs[3], range_bits=ACC_LIM, b_lead=1
                )
            else:
                acc, fits = mac_slots(
                    m,
                    platform,
                    f"mac{i}",
                    pt4,
                    vi,
                    ce=ops[5] | rot,
                    zsel=Mux(rot, 2, zs[5]),
                    tap=Mux(rot, rot_tap, taps[5]),
                    slots=NB,
                    acc_bits=self.acc_bits,
                    range_bits=ACC_LIM,
                    b_lead=1,
                )
            accs.append(acc)
            in_range.append(fits)
        cap_first = ls[6]  # the block's last operation is in P: its last slot

        # ------------------------------------------------------------ hold and writer
        # per slot: the output's address and shift, set by the slot's last operation
        pend_addr = [Signal(isa.ADDR_BITS + 1, name=f"pend_addr{i}") for i in range(NB)]
        pend_s = [Signal(signed(SB + 3), name=f"pend_s{i}") for i in range(NB)]
        last_pending = Signal()  # a block's last key is between S0 and its first capture
        dr_busy = Signal()  # ... or its slots' accs are not all captured yet
        dr_left = Signal(SL)  # slots left to capture
        rot_pend = Signal()  # a rotation happened: capture next
        cap_slot = Signal(SL)  # the slot captured next
        hold = [Signal(signed(32), name=f"hold{i}") for i in range(NG * OL)]
        hold_full = Signal()
        hold_addr = Signal(isa.ADDR_BITS + 1)
        # per slot, the requant controls of its shift s, from pend_s (stable from the
        # slot's last operation, >= 5 cycles before its capture): right shift min(s, 33),
        # left shift min(-s, 31), and the bits [31 - left, 31] of acc that must equal its
        # sign for acc << left to fit int32
        c_sr = [Signal(range(34), name=f"c_sr{i}") for i in range(NB)]
        c_ls = [Signal(range(32), name=f"c_ls{i}") for i in range(NB)]
        c_neg = [Signal(name=f"c_neg{i}") for i in range(NB)]
        c_mask = [Signal(32, name=f"c_mask{i}") for i in range(NB)]
        for i in range(NB):
            keep = Signal(range(32), name=f"c_keep{i}")  # 31 - left
            ps = pend_s[i]
            m.d.comb += keep.eq(31 - c_ls[i])
            m.d.sync += [
                c_sr[i].eq(Mux(ps < 0, 0, Mux(ps > 33, 33, ps))),
                c_ls[i].eq(Mux(ps >= 0, 0, Mux(-ps > 31, 31, -ps))),
                c_neg[i].eq(ps < 0),
                c_mask[i].eq(~((Const(1, 33) << keep) - 1)[:32]),
            ]
        hold_sr, hold_ls, hold_neg, hold_mask = (
            Signal(range(34)),
            Signal(range(32)),
            Signal(),
            Signal(32),
        )
        hold_g = Signal(range(NG + 1))  # next lane group to write
        hold_left = Signal(isa.DIM_BITS + 3)  # bytes of the query left to write
        capture = cap_first | rot_pend
        with m.If(capture):
            m.d.sync += [hold[i].eq(accs[i][:32]) for i in range(LANES)]
            m.d.sync += [
                hold_full.eq(1),
                hold_addr.eq(pick(pend_addr, cap_slot)),
                hold_sr.eq(pick(c_sr, cap_slot)),
                hold_ls.eq(pick(c_ls, cap_slot)),
                hold_neg.eq(pick(c_neg, cap_slot)),
                hold_mask.eq(pick(c_mask, cap_slot)),
                hold_g.eq(0),
                hold_left.eq(hd4),
            ]
        # every lane's acc fits int32: registered, checked the cycle after the capture
        # (the writer's first write comes three cycles later)
        fits_all, fits_chk = Signal(), Signal()
        m.d.sync += [fits_all.eq(Cat(*in_range).all()), fits_chk.eq(capture)]
        with m.If(fits_chk & ~fits_all):
            m.d.sync += ovf.eq(1)
        # writer pipeline: A the lane group; B the shifters; C rounding, saturation
        wlen = Signal(range(4 * OL + 1))
        m.d.comb += wlen.eq(Mux(hold_left > 4 * OL, 4 * OL, hold_left))
        wa_v, wb_v, wc_v = Signal(), Signal(), Signal()
        wa_addr, wb_addr, wc_addr = (Signal(isa.ADDR_BITS + 1) for _ in range(3))
        wa_len, wb_len, wc_len = (Signal(range(4 * OL + 1)) for _ in range(3))
        wa_sr, wa_ls, wa_neg, wa_mask = Signal(range(34)), Signal(range(32)), Signal(), Signal(32)
        wa = [Signal(signed(32), name=f"wa{k}") for k in range(OL)]
        w_adv = Signal()  # the writer pipeline moves
        suppress = dry | ovf
        m.d.comb += w_adv.eq(~wc_v | self.wr.ready | suppress)
        take = hold_full & w_adv
        take_last = Signal()  # the hold register's last group goes
        m.d.comb += take_last.eq(take & (hold_left <= 4 * OL))
        groups = [hold[g * OL : (g + 1) * OL] for g in range(NG)]
        with m.If(w_adv):
            m.d.sync += [
                wa_v.eq(take),
                wa_addr.eq(hold_addr),
                wa_len.eq(wlen),
                wa_sr.eq(hold_sr),
                wa_ls.eq(hold_ls),
                wa_neg.eq(hold_neg),
                wa_mask.eq(hold_mask),
            ]
            for k in range(OL):
                m.d.sync += wa[k].eq(
                    Array(g[k] for g in groups)[hold_g] if NG > 1 else groups[0][k]
                )
        with m.If(take):
            m.d.sync += [
                hold_g.eq(hold_g + 1),
                hold_addr.eq(hold_addr + 4 * OL),
                hold_left.eq(hold_left - 4 * OL),  # after the last take: unused
            ]
            with m.If(take_last & ~capture):
                m.d.sync += hold_full.eq(0)
        # the drain: after the first capture (the last slot, in P), each other slot's acc
        # is rotated back into P (slot 0 first) as the writer takes the hold register's
        # last group, and captured the next cycle
        m.d.comb += rot.eq((dr_left != 0) & ~rot_pend & (~hold_full | take_last))
        m.d.sync += rot_pend.eq(rot)
        # the response side's conditions from registers: no drain, and the hold register
        # free with no last key in flight, from these flags' next values (their setting
        # by a block's last key may show a cycle late: its next block comes later)
        c_nodrain, c_free = Signal(), Signal()
        hold_full_n = capture | (hold_full & ~take_last)
        m.d.sync += [
            c_nodrain.eq(~dr_busy | (rot_pend & (dr_left == 1))),
            c_free.eq(~hold_full_n & (~last_pending | cap_first)),
        ]
        with m.If(cap_first):
            m.d.sync += [last_pending.eq(0), dr_left.eq(cap_slot), cap_slot.eq(0)]
        with m.If(rot_pend):
            m.d.sync += [dr_left.eq(dr_left - 1), cap_slot.eq(cap_slot + 1)]
            with m.If(dr_left == 1):
                m.d.sync += dr_busy.eq(0)
        # requant(acc, 1, s) (``hw.ops.base.requant`` with a unit multiplier), in two
        # stages: s >= 0: rhu(acc, min(s, 33)) = (((2 acc) >> s) + 1) >> 1; s < 0:
        # sat32(acc << min(-s, 31)), saturating when acc has no -s redundant sign bits
        wb_neg = Signal()
        wb_r = [Signal(signed(34), name=f"wb_r{k}") for k in range(OL)]
        wb_l = [Signal(32, name=f"wb_l{k}") for k in range(OL)]
        wb_sat = [Signal(name=f"wb_sat{k}") for k in range(OL)]
        wb_sign = [Signal(name=f"wb_sign{k}") for k in range(OL)]
        with m.If(w_adv):
            m.d.sync += [wb_v.eq(wa_v), wb_addr.eq(wa_addr), wb_len.eq(wa_len), wb_neg.eq(wa_neg)]
            for k in range(OL):
                acc = wa[k]
                m.d.sync += [
                    wb_r[k].eq((acc << 1) >> wa_sr),
                    wb_l[k].eq((acc << wa_ls)[:32]),
                    wb_sat[k].eq(((acc ^ acc[31].replicate(32)) & wa_mask).any()),
                    wb_sign[k].eq(acc[31]),
                ]
        wc = [Signal(32, name=f"wc{k}") for k in range(OL)]
        lo, hi = -(1 << (OUT_BITS - 1)), (1 << (OUT_BITS - 1)) - 1
        with m.If(w_adv):
            m.d.sync += [wc_v.eq(wb_v), wc_addr.eq(wb_addr), wc_len.eq(wb_len)]
            for k in range(OL):
                right = (wb_r[k] + 1) >> 1
                left = Mux(wb_sat[k], Mux(wb_sign[k], lo, hi), wb_l[k].as_signed())
                m.d.sync += wc[k].eq(Mux(wb_neg, left, right))
        m.d.comb += [
            self.wr.valid.eq(wc_v & ~suppress),
            self.wr.payload.addr.eq(wc_addr),
            self.wr.payload.len.eq(wc_len),
            self.wr.payload.data.eq(Cat(*wc)),
        ]
        writer_busy = hold_full | wa_v | wb_v | wc_v

        with m.FSM():
            waits = [(f"WAIT{i}", None) for i in range(1, gqa_cycles() + 1)]
            passed = self.check_states(m, *waits, ("CHECK", err_dims), ("CHECK_ADDR", err_inputs))

            with m.State("RUN"):
                with m.If(~cw.state.any()):
                    # every response consumed; wait for the pipeline and the last writes
                    # (the last key's operations are in the pipeline while last_pending)
                    with m.If(~last_pending & ~dr_busy & ~writer_busy):
                        with m.If(ovf):
                            self.finish(m, ErrorCode.BAD_OPERAND)
                        with m.Else():
                            self.finish(m, dst_err)
        # ---------------------------------------------------- requests
        # outside the FSM (fewer logic levels): the walk rests in _END outside a command
        # and starts in CHECK_ADDR
        with m.If(rw.state[1]):
            m.d.sync += rw.stream()
        with m.If(rw.state[0]):  # _MIN
            with m.If(self.read(m, r_s.ptr, Mux(rw.lastm, rw.left, R) * 4)):
                m.d.sync += [*r_s.advance(4 * R), *rw.min_read()]
                with m.If(rw.lastm):  # the slot's p row, its min pass done
                    m.d.sync += r_s.rewind()
                    for i in range(NB):
                        with m.If(rw.s == i):
                            m.d.sync += pptr[i].eq(r_p.cur)
                    with m.If(rw.s_last):
                        r_p.block(m, rw.more_t, rw.nh == 1)  # its slots' rows are stored
                        m.d.sync += [
                            *rw.key_pass(),
                            r_needp.eq(1),
                            r_needs.eq(1),
                            r_plen.eq(Mux(rw.vis > PC, PC, rw.vis) * 2),
                            r_slen.eq(Mux(rw.vis > R, R, rw.vis) * 4),
                            *r_v.rewind(),
                        ]
                    with m.Else():
                        m.d.sync += [*rw.min_slot(), *r_p.slot(rw.ti_last, rw.ri == 0)]
        with m.Elif(rw.state[1]):  # _STREAM
            with m.If(r_needp):
                with m.If(self.read(m, pick(pptr, rw.s), r_plen)):
                    m.d.sync += rw.slot()
                    for i in range(NB):
                        with m.If(rw.s == i):
                            m.d.sync += pptr[i].eq(pptr[i] + 2 * PC)
                    with m.If(rw.s_last):
                        m.d.sync += [*rw.slots0(), r_needp.eq(0)]
            with m.Elif(r_needs):
                with m.If(self.read(m, r_s.ptr, r_slen)):
                    m.d.sync += [*r_s.advance(4 * R), r_needs.eq(0)]
            with m.Else():
                with m.If(self.read(m, r_v.ptr, vrow)):
                    left = rw.left - 1  # the keys left after this one
                    m.d.sync += [
                        *r_v.advance(vrow),
                        *rw.key(),
                        # key j + 1 starts a p chunk / a record chunk
                        r_needp.eq(rw.j[:plog].all()),
                        r_needs.eq(rw.j[:rlog].all()),
                        r_plen.eq(Mux(rw.left > PC + 1, PC, left) * 2),
                        r_slen.eq(Mux(rw.left > R + 1, R, left) * 4),
                    ]
                    with m.If(rw.lastk):  # the block's last key: the next block
                        m.d.sync += [*rw.next_block(), *r_s.rewind(), *r_v.rewind()]
                        with m.If(rw.gstep):
                            m.d.sync += [
                                *r_v.next_base(vstride),
                                *r_s.next_base(sstride),
                            ]
                        with m.If(rw.last):
                            m.d.sync += rw.state.eq(_END)

        # ---------------------------------------------------- responses
        # outside the FSM (fewer logic levels): responses come only to the reads of RUN,
        # and the walk starts in CHECK_ADDR
        with m.If(~c_wait0):
            m.d.sync += [c_wait.eq(c_wait - 1), c_wait0.eq(c_wait == 1)]
        with m.If(cw.state[1]):
            m.d.sync += cw.stream()
        with m.If(cw.state[0]):  # _MIN
            m.d.comb += [
                self.rdata.ready.eq(1),
                mn_valid.eq(self.rdata.valid),
                mn_first.eq(c_j == 0),
            ]
            with m.If(self.rdata.valid):
                m.d.sync += cw.min_read()
                with m.If(cw.lastm):  # the slot's dst row and visible keys
                    for i in range(NB):
                        with m.If(cw.s == i):
                            m.d.sync += [daddr[i].eq(c_d.cur), vsl[i].eq(cw.vt)]
                    with m.If(cw.s_last):
                        c_d.block(m, cw.more_t, cw.nh == 1)  # its slots' rows are stored
                        m.d.sync += [
                            *cw.key_pass(),
                            nbm1.eq(cw.s),
                            c_needp.eq(1),
                            c_needs.eq(1),
                            c_wait.eq(rlog + 2),
                            c_wait0.eq(0),
                        ]
                    with m.Else():
                        m.d.sync += [*cw.min_slot(), *c_d.slot(cw.ti_last, cw.ri == 0)]
        with m.Elif(cw.state[1]):  # _STREAM
            with m.If(c_needp):
                m.d.comb += self.rdata.ready.eq(1)
                with m.If(self.rdata.valid):
                    for i in range(NB):
                        with m.If(cw.s == i):
                            m.d.sync += preg[i].eq(self.rdata.payload)
                    m.d.sync += cw.slot()
                    with m.If(cw.s_last):
                        m.d.sync += [*cw.slots0(), c_needp.eq(0)]
            with m.Elif(c_needs):
                m.d.comb += self.rdata.ready.eq(1)
                with m.If(self.rdata.valid):
                    m.d.sync += [rreg.eq(self.rdata.payload), c_needs.eq(0)]
            with m.Else():
                # a V row: one operation per slot, a cycle each; the row is taken
                # with the last. A block's first operation waits for the previous
                # block's drain, its last key for a free hold register.
                s0 = cw.s0
                can = ~s0 | (c_nodrain & (~cw.lastk | c_free))
                go = Signal()
                m.d.comb += [
                    go.eq(self.rdata.valid & c_wait0 & can),
                    self.rdata.ready.eq(go & cw.s_last),
                ]
                with m.If(go):
                    m.d.comb += [
                        v_fire.eq(1),
                        k_first.eq(c_j == 0),
                        k_last.eq(cw.lastk & cw.s_last),
                    ]
                    m.d.sync += cw.slot()
                    with m.If(cw.lastk):
                        for i in range(NB):
                            with m.If(cw.s == i):
                                m.d.sync += [
                                    pend_addr[i].eq(daddr[i]),
                                    pend_s[i].eq(smin[i] + (P + X - B - IF)),
                                ]
                        with m.If(s0):
                            m.d.sync += [
                                last_pending.eq(1),
                                dr_busy.eq(nbm1 != 0),
                                cap_slot.eq(nbm1),
                                rot_tap.eq(nbm1 - 1),
                            ]
                    with m.If(cw.s_last):
                        m.d.sync += [
                            *cw.slots0(),
                            *cw.key(),
                            # key c_j + 1 starts a p chunk / a record chunk
                            c_needp.eq(c_j[:plog].all()),
                            c_needs.eq(c_j[:rlog].all()),
                        ]
                        with m.If(cw.lastk):
                            m.d.sync += cw.next_block()
                            with m.If(cw.last):
                                m.d.sync += cw.state.eq(_END)
        # the command's constants, registered from the arguments (valid from start, these
        # from its next cycle on)
        m.d.sync += [
            n_rep.eq(n_rep_q),
            lim0.eq(a.keys - a.rows),
            vrow.eq(kvrow.row_bytes(a.head_dim, cfg)),
            vstride.eq(a.kv_ld * kvrow.row_bytes(a.head_dim, cfg)),
            sstride.eq(a.kv_ld * 4),
            pstride.eq(a.keys * 2),
            dstride.eq(a.heads * a.head_dim * 4),
            hd4.eq(a.head_dim * 4),
        ]
        with m.If(passed["CHECK_ADDR"]):
            first = [
                *rw.start(),
                *r_s.start(a.v_scale),
                *r_v.start(a.v),
                *r_p.start(a.p),
                *cw.start(),
                c_wait.eq(0),
                c_wait0.eq(1),
                *c_d.start(a.dst),
            ]
            m.d.sync += [
                dst_err.eq(err_dst),
                dry.eq(err_dst != ErrorCode.NONE),
                ovf.eq(0),
                *first,
            ]
        return m


def _figures(dp_name: str = "kv260") -> None:
    """Bytes and cycles of BitNet-shaped PV commands at the design point's block and at
    block 1 (one query at a time, as before blocks), with a 1-cycle memory and at the
    design point's DRAM bandwidth: ``python -m hw.ops.pv [design point]``."""
    from golden.config import design_point

    dp = design_point(dp_name)
    bpc = dp.bytes_per_cycle
    R, OL, cfg = dp.pv_records, dp.pv_out_lanes, dp.datapath
    print(f"PV on {dp.name}: attn_block {dp.attn_block}, {bpc:.1f} bytes/cycle")
    for name, heads, kvh, hd in (("2B-4T", 20, 5, 128), ("0.73B", 16, 16, 96)):
        for rows, keys in ((1, 128), (1, 2048), (1, 4096), (128, 128)):
            if keys > dp.max_keys and name == "0.73B":
                continue
            what = "decode" if rows == 1 else "prefill"
            for blk in (1, dp.attn_block):
                cyc = expected_cycles(heads, kvh, rows, keys, hd, R, OL, blk)
                by = read_bytes(heads, kvh, rows, keys, hd, blk, cfg)
                print(
                    f"  {name} {what} rows {rows} keys {keys} block {blk}: {by:,} bytes, "
                    f"{cyc:,} cycles; memory {by / bpc:,.0f} -> max {max(cyc, by / bpc):,.0f}"
                )


if __name__ == "__main__":
    import sys

    _figures(*sys.argv[1:2])
