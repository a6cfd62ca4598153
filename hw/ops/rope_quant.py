"""ROPE_QUANT engine: RoPE (rotate-half, table rows from memory) + INT8 absmax per
(token, head) (golden: ``Executor._op_rope_quant`` -> ``golden.rope.rope_from_table`` +
``golden.model.op_v_quant``; rope=0 is ``op_v_quant`` alone).

For token t (row of src, int32 [rows, heads*head_dim]) and head h, with hd = head_dim,
half = hd/2, table row p = pos + t (cos_q[p, 0:half] then sin_q[p, 0:half], int16 Q1.T)::

    y[i]      = sat(rhu(x[i]*cos[i] - x[i+half]*sin[i], T))     i < half
    y[i+half] = sat(rhu(x[i+half]*cos[i] + x[i]*sin[i], T))     (rope=0: y = x)
    codes, amax = hw_act_quant(y)                               (golden.quant)
    scale = scale_mul(scale_mul(sx[t], c), scale_of_int(amax))

codes (int8 [hd]) go to ``dst + (h*ld + t)*hd``, the record to ``dst_scale + (h*ld +
t)*4``. T = ``RopeConfig.table_frac_bits``; sat to ``RopeConfig.out_bits(32)`` bits.
In an int4-KV build (``ForwardConfig.kv_bits`` = 4, e.g. kv260-kv4) a command with kv = 1
(k, v: KV-cache rows) quantizes with act_max ``kv_max`` = 7 and writes the codes packed
two a byte (``golden.isa`` KV rows): the row at ``dst + (h*ld + t)*hd/2``; kv = 0 (q) is
INT8 as above. head_dim % 4 == 0 there (each half row is whole bytes; the contract).

Checks: the ROPE_QUANT contract (``golden.isa.CONTRACTS``)
---------------------------------------------------------
1. DIMS: rows, heads >= 1, head_dim even and >= 2, ld >= rows, and the engine limit
   head_dim <= ``max_head_dim`` (``LIMITS``): BAD_DIM;
2. SIZES: the run's head stride and table offset; a wait (the tensor spans are
   pipelined: ``ArgChecks(pipelined=True)``); ARGS:
3. src: ALIGN (4), ADDR_RANGE (rows*heads*hd*4 bytes); src_scale: ALIGN (4),
   ADDR_RANGE (rows*4);
4. rope=1 only: pos + rows <= table_rows (BAD_DIM); table: ALIGN (2), ADDR_RANGE
   ([table + pos*hd*2, + rows*hd*2));
5. dst: ADDR_RANGE of every head's span (int8: never misaligned): the spans grow with
   h, so "any head out" is ``dst < mem_lo`` or ``dst + ((heads-1)*ld + rows)*hd >
   mem_hi``;
6. the data check "records", SCALE_RANGE: a record's shift outside int16, found per head
   as it is computed;
7. dst_scale: ALIGN (4), ADDR_RANGE (likewise over all heads, 4-byte records).
Golden stores all of dst before it packs the records (SCALE_RANGE) and only then checks
dst_scale. The engine checks dst_scale up front with the others so that nothing is
written before an argument error: when dst_scale is bad it runs the command *dry*
(computing every head, writing nothing) and reports SCALE_RANGE if a head has one, else
the dst_scale error -- the same code as golden in every case.

Micro-architecture (L = ``lanes`` elements per cycle)
-----------------------------------------------------
Everything is sized for L elements per cycle; no part is wider than it needs to be
(it replaces four 8-lane ``hw.quant.ActQuant`` rows and a 1024-bit chunk latch: 21.3K
LUT before, 4.0K LUT + 0.4K LUT-RAM sites now, at L = 4). The quantizer is the engine's
own (it needs ROPE_QUANT's half-head layout and is multi-buffered over the row slots);
``hw.quant`` is not used.

* Reads: one request sequencer; the response side runs the same sequencer on the
  responses (they come back in order), so no tags are kept. Per token: the scale record
  sx (4 bytes); with rope, the table row in chunks of L elements, cos part then sin part
  (``2n`` bytes each, n = min(L, half - g*L)); then per head the src groups g =
  0..G-1 (G = ceil(half/L)): x[gL..gL+n) (A) then x[half+gL..half+gL+n) (B), ``4n``
  bytes each. Every response's data sits at bit 0 of the beat, so the datapath reads the
  low L words of the beat and nothing else (no wide registers or word selects). A head's
  reads start only when its row slot is free. Each sequencer keeps its next state in
  registers too, so the memory's handshake is only the registers' enable (250 MHz).
* Table buffer: two small memories (cos, sin) of G words of L int16, written (a cycle
  after the response) by the table responses and read into the multipliers' coefficient
  registers one response ahead. One extra word, never written, holds cos = 2^T, sin = 0
  (its initial value): rope=0 reads it, which gives y = x exactly.
* Rotation: per lane, x times cos and x times sin, each as two DSP partial products
  (x split at bit 17: 17-bit unsigned x 16-bit and 15-bit x 16-bit, every product
  registered). A's products are held while B's are computed with the same multipliers
  and coefficients; then y[i] = A*cos - B*sin and y[i+half] = B*cos + A*sin are summed
  from the partials, rounded (the round bit is the carry in of the last adder) and
  saturated, in three registered stages: 2L outputs per group, one group every two
  cycles (L per cycle). The y words (L lanes) are written to the row buffer -- the
  first-half word, then the second-half word -- and their magnitudes go through a max
  tree (a register per level) into the head's running amax. The pipeline never stalls.
* Row buffer: ``ROW_SLOTS`` (4) heads of 2 x ceil(max_head_dim/2/L) words of L int32
  (LUT RAM), with each slot's amax and token scale: a head is filled while up to three
  earlier ones wait for their reciprocal or are drained, so the per-head divide is
  hidden behind the next heads' fill and the drain.
* Head unit (one per engine, a head every QB + 6 = 23 cycles): takes (amax, sx) of the
  next filled slot and computes, reusing one 32-bit normalizing shifter: s = clz(amax),
  the reciprocal ``recip = (127*2^R + amax//2) // amax`` (R = bit_length(amax) + F) by
  restoring division on the normalized amax (QB = recip_bits steps, one quotient bit per
  cycle), ``tc = scale_mul(sx, c)`` and ``soi = scale_of_int(amax)`` (both from the
  normalized values: mantissa = the top 16 bits rounded) and the record
  ``scale_mul(tc, soi)`` with its SCALE_RANGE check. It hands the drain
  ``recip2 = recip << (s mod 8)`` and ``s div 8`` (kv4 rows: the same division of
  ``7*2^R``, the dividend's constant muxed, the quotient's top bits 0): since
  x*recip2 = x*recip*2^(s mod 8), the quantizer's shift becomes Z = R + s mod 8 =
  32 + F - 8*(s div 8), one of four values, so each lane selects its 8 code bits and
  the round bit from a 4:1 window instead of a 41-position shifter. |x| <= amax bounds
  |x*recip| below 128*2^R, so the window holds the whole result and only 128 needs
  clamping (to 127).
* Drain: per head, the first-half words then the second-half words are read from the
  row buffer; per lane x*recip2 (two registered DSP partials), the partials' sum over
  the window's bits, the window select, round and clamp; the L codes of a word go to
  their place in a half-head code register (fixed wiring, the word index enables it).
  A complete half moves to the write register, so the drain goes on while it is
  written. kv4 rows: the clamp is at 7, and the write register's low nibbles are packed
  two a byte on the way out (``hw.ops.kvrow.pack_codes``, wiring), half/2 bytes a write.
* Writer: per head three writes: codes[0:half], codes[half:hd] (one request each, from
  the write register), then the record. SCALE_RANGE (from the head unit) stops the
  reads, drains the responses still owed, lets a write in progress finish, and reports.
* Argument checks: ``ArgChecks(pipelined=True)``: the span products are registered DSPs
  (five check states).

Cycles (no stalls, read latency lat; ``expected_cycles`` computes it)
--------------------------------------------------------------------
G = ceil(half/L) groups per half, H = QB + 6 the head unit's cycles per head. The reads
take one response per cycle: per token 1 (sx) + TAB (table, rope=1: 2G, + 2 for G = 1,
where the first src group waits for the table's last write) + heads * 2G (src);
fill and drain keep up with them, and the row slots hide the head unit's divide as long
as 2G >= H; below that (head_dim < 92 at L = 4) the head unit sets the pace::

    reads  = rows * (1 + rope*TAB + heads*2G) + H
    first  = 1 + rope*TAB + 2G + rows*heads*H
    cycles = 18 + K4 + A + lat + max(reads, first) + 2G + (G == 1)

(K4 = 1 in an int4-KV build, else 0: one more check state, the dst span's row bytes
head_dim - kv*(head_dim/2) being one more registered product (``check_states``); the
rest does not depend on the format. A = max(1, log2 L) levels of the amax tree; 18 + A:
the check states, pipelines, the
last head's drain and writes; measured exactly so for L = 1, 2, 4 and head_dim 2..128
with a 1-cycle memory, ``sim/test_op_rope_quant.py``). BitNet-0.73B q/k (16 heads x 96,
L = 4, G = 12): 477 cycles per token with a 1-cycle memory (3.2 elements per cycle),
v (rope=0) 453; with the kv260 point's 32-cycle DRAM latency 508 + 508 + 484 = 1.5K
cycles for the three commands of a decode layer (was 1.07K; the budget is 1.8K). The
reads are src + 4 bytes per token + one table row per token (rope=1), in requests of 4L
and 2L bytes.

Parameters (constructor keywords): ``max_head_dim`` (128; sizes the table buffer, the row
buffer and the code registers), ``lanes`` L (a power of two: 4L DSP partial products in
the rotation, 2L in the drain).

Differences from the golden backend
-----------------------------------
* head_dim above ``max_head_dim`` (default 128; BitNet-0.73B uses 96) is BAD_DIM: it
  sizes the table buffer, the row buffer and the code registers (each half head is
  written with one request, so ``max_head_dim <= 2*dma_bytes``).
* The datapath must be ``QuantConfig.hw_in_bits == 32`` and ``act_bits == 8`` (int32
  inputs, int8 codes, as the ISA formats say); the constructor refuses anything else.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import enum
from amaranth.lib.memory import Memory

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode

from . import kvrow
from .base import Engine, check_power_of_two, shift_fits_record

ELEM_BITS = 32  # src elements: int32 accumulators
TABLE_BITS = 16  # table elements: int16 Q1.T
ROW_SLOTS = 4  # heads in the row buffer: filling, waiting for the divide, draining
SPLIT = 17  # x split for the DSP partial products: x[0:17] unsigned, x[17:32] signed
# Check states: DIMS, SIZES, two waits for the pipelined span checks, ARGS.
CHECK_STATES = 5


def check_states(cfg: DatapathConfig) -> int:
    """Check states of a build: one more wait in an int4-KV build, whose dst span has the
    row bytes head_dim - kv*(head_dim/2) as one more registered product level."""
    return CHECK_STATES + int(kvrow.int4(cfg))


# Cycles of the command outside the reads and the head unit (the 4 check states, the
# rotation pipeline, the head unit's hand-off, the drain pipeline, the writes of the last
# head) less the amax tree's levels (``amax_levels``), measured.
FIXED_CYCLES = 18
# Head unit cycles per head beyond its QB division steps (take, 4 setup steps, hand-off).
HEAD_EXTRA = 6


def amax_levels(lanes: int) -> int:
    """Registered levels of the amax tree over the L lanes of a y word."""
    return max(1, (lanes - 1).bit_length())


class _Phase(enum.Enum, shape=4):  # one-hot: a phase test is one bit
    SX = 1
    TAB = 2
    SRC = 4
    DONE = 8


def _is(ph, phase: _Phase):
    """``ph == phase`` for the one-hot phase register: its bit."""
    return ph.as_value()[phase.value.bit_length() - 1]


def head_unit_cycles(cfg: DatapathConfig) -> int:
    """Cycles the head unit takes per head (its throughput bound)."""
    return cfg.quant.recip_bits + HEAD_EXTRA


def expected_cycles(
    rows: int,
    heads: int,
    head_dim: int,
    rope: bool,
    cfg: DatapathConfig,
    lanes: int,
    latency: int = 1,
) -> int:
    """The module docstring's cycle formula (no stalls, read latency ``latency``)."""
    G = -(-(head_dim // 2) // lanes)  # groups per half
    H = head_unit_cycles(cfg)
    tab = int(rope) * (2 * G + 2 * int(G == 1))  # the table row (+ its writes, G = 1)
    per_token = 1 + tab + heads * 2 * G  # reads, one per cycle
    A = amax_levels(lanes)
    reads = rows * per_token + H
    first = 1 + tab + 2 * G + rows * heads * H
    # the last head's drain (G = 1: its two one-word halves meet at the write register)
    fixed = FIXED_CYCLES + check_states(cfg) - CHECK_STATES
    return fixed + A + latency + max(reads, first) + 2 * G + int(G == 1)


def _clz_bytes(v) -> list:
    """Per byte of a 32-bit value, high byte first: (nonzero, leading zeros in the byte
    (3 bits, valid when nonzero)) -- the first stage of a two-stage count."""
    out = []
    for k in reversed(range(4)):
        byte = v[8 * k : 8 * k + 8]
        lz = Const(7, 3)
        for i in range(8):  # the highest set bit wins
            lz = Mux(byte[i], 7 - i, lz)
        out.append((byte.any(), lz))
    return out


def _clz_combine(stage) -> Value:
    """Leading zeros (32 for 0) from ``_clz_bytes``' registered results."""
    v = Const(32, 6)
    for k in reversed(range(4)):  # the highest nonzero byte wins
        nz, lz = stage[k]
        v = Mux(nz, Cat(lz, Const(k, 2), Const(0, 1)), v)
    return v


class RopeQuantEngine(Engine):
    OPCODE = Opcode.ROPE_QUANT
    DESIGN_FIELDS = {"max_head_dim": "max_head_dim", "lanes": "rope_lanes"}
    LIMITS = ("head_dim <= max_head_dim",)  # sizes the buffers (see Differences)

    def __init__(self, cfg: DatapathConfig, dma_bytes: int, *, max_head_dim: int, lanes: int):
        q = cfg.quant
        if q.hw_in_bits != ELEM_BITS or q.act_bits != 8:
            raise ValueError(
                f"cfg.quant: the engine needs hw_in_bits 32 and act_bits 8, got "
                f"{q.hw_in_bits} and {q.act_bits}"
            )
        if q.recip_bits + 7 > 26:
            raise ValueError(
                f"cfg.quant.recip_frac_bits: recip << 7 must fit a DSP port (26 bits), "
                f"recip has {q.recip_bits}"
            )
        if cfg.requant.mult_bits != isa.SCALE_MANT_BITS:
            raise ValueError(
                f"cfg.requant.mult_bits: the engine needs the scale record's "
                f"{isa.SCALE_MANT_BITS} bits, got {cfg.requant.mult_bits}"
            )
        if cfg.rope.table_frac_bits >= SPLIT:
            raise ValueError(f"cfg.rope.table_frac_bits: must be < {SPLIT}")
        check_power_of_two("dma_bytes", dma_bytes, lo=8)
        check_power_of_two("lanes", lanes, hi=dma_bytes // 4)
        if max_head_dim < 2 or max_head_dim % (2 * lanes) or max_head_dim > 2 * dma_bytes:
            raise ValueError(
                f"max_head_dim: expected a multiple of {2 * lanes} in "
                f"[2, {2 * dma_bytes}], got {max_head_dim}"
            )
        self.max_head_dim = max_head_dim
        self.lanes = lanes
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        L = self.lanes
        LB = L.bit_length() - 1
        HMAX = self.max_head_dim // 2
        GMAX = HMAX // L  # groups (words) per half, max
        GB = max(1, (GMAX - 1).bit_length())  # bits of a group index
        T = cfg.rope.table_frac_bits
        OB = cfg.rope.out_bits(ELEM_BITS)
        F = cfg.quant.recip_frac_bits
        QB = cfg.quant.recip_bits
        ACT_MAX = cfg.quant.act_max
        B = isa.SCALE_MANT_BITS
        SB = isa.SCALE_SHIFT_BITS
        a = self.op_args
        XW = ELEM_BITS - SPLIT  # signed high part of x

        # ================================================================ command values
        hd = a.head_dim
        half = Signal(range(HMAX + 1))
        g_last = Signal(GB)  # G - 1
        g_last_m1 = Signal(GB)  # G - 2 (mod 2^GB)
        g_one = Signal()  # G == 1
        heads_m1 = Signal(isa.HEADS_BITS)
        rows_m1 = Signal(isa.ROWS_BITS)
        heads_m2 = Signal(isa.HEADS_BITS)  # heads - 2 (mod 2^bits)
        rows_m2 = Signal(isa.ROWS_BITS)
        heads_one = Signal()  # heads == 1
        rows_one = Signal()
        last_n = Signal(range(L + 1))  # elements of the last group of a half
        ldhd = Signal(isa.ROWS_BITS + isa.DIM_BITS)  # head stride in dst (ld * rowb)
        # int4 KV rows (an int4 build, kv = 1): codes in [-7, 7], two a byte
        kv4 = Signal()
        rowb = Signal(isa.DIM_BITS)  # bytes of a dst row: hd, or hd/2 (kv4)
        hbytes = Signal(isa.DIM_BITS)  # bytes of a half row
        ld4 = Signal(isa.ROWS_BITS + 2)  # head stride in dst_scale
        tab_off = Signal(isa.ROWS_BITS + isa.DIM_BITS + 1)  # pos*hd*2
        dry = Signal()  # dst_scale is bad: compute, write nothing
        pend_err = Signal(ErrorCode)  # the dst_scale error a dry run reports
        abort = Signal()
        running = Signal()  # in RUN, not aborting (a register)
        init = Signal()  # the check state before ARGS: everything restarts

        # ================================================================ sequencers
        def sequencer(name, fire):
            """Phase, token t, head h, group g, part b (A/B) of the read stream, with
            flags (last group, first group, last head, last token), and the same fields
            one step ahead (``nxt``): on ``fire`` the state becomes ``nxt`` and ``nxt``
            its successor, so ``fire`` is only the registers' enable (it comes late: the
            memory's handshake)."""
            fields = {
                "ph": (_Phase, _Phase.DONE),
                "t": (isa.ROWS_BITS, 0),
                "h": (isa.HEADS_BITS, 0),
                "g": (GB, 0),
                "b": (1, 0),
                "last_g": (1, 0),  # g == G - 1
                "g0": (1, 0),  # g == 0
                "last_h": (1, 0),  # h == heads - 1
                "last_t": (1, 0),  # t == rows - 1
                # decoded from the fields above, registered with them
                "hs": (1, 0),  # a head's first response (src, g = 0, A)
                "lb": (1, 0),  # the last B of a table row or a head
                "tl": (1, 0),  # the table row's last response
            }
            # no reset: ``init`` loads them before every command
            s = {
                k: Signal(sh, init=i, name=f"{name}_{k}", reset_less=True)
                for k, (sh, i) in fields.items()
            }
            n = {
                k: Signal(sh, init=i, name=f"{name}_n_{k}", reset_less=True)
                for k, (sh, i) in fields.items()
            }

            def decode(o):
                src, tab = _is(o["ph"], _Phase.SRC), _is(o["ph"], _Phase.TAB)
                return [
                    o["hs"].eq(src & o["g0"] & ~o["b"]),
                    o["lb"].eq((src | tab) & o["b"] & o["last_g"]),
                    o["tl"].eq(tab & o["b"] & o["last_g"]),
                ]

            def succ(c):
                """The state after c (a dict of values): comb values."""
                o = {k: Signal.like(n[k], name=f"{name}_s_{k}") for k in fields}
                m.d.comb += [o[k].eq(c[k]) for k in fields if k not in ("hs", "lb", "tl")]
                g_zero = [o["g"].eq(0), o["g0"].eq(1), o["last_g"].eq(g_one)]
                h_zero = [o["h"].eq(0), o["last_h"].eq(heads_one)]
                with m.If(_is(c["ph"], _Phase.SX)):
                    m.d.comb += [o["ph"].eq(Mux(a.rope, _Phase.TAB, _Phase.SRC)), o["b"].eq(0)]
                    m.d.comb += g_zero + h_zero
                with m.Elif(_is(c["ph"], _Phase.DONE)):
                    pass
                with m.Elif(~c["b"]):
                    m.d.comb += o["b"].eq(1)
                with m.Elif(~c["last_g"]):
                    m.d.comb += [
                        o["b"].eq(0),
                        o["g"].eq(c["g"] + 1),
                        o["g0"].eq(0),
                        o["last_g"].eq(c["g"] == g_last_m1),
                    ]
                with m.Else():
                    m.d.comb += [o["b"].eq(0), *g_zero]
                    with m.If(_is(c["ph"], _Phase.TAB)):
                        m.d.comb += [o["ph"].eq(_Phase.SRC), *h_zero]
                    with m.Elif(~c["last_h"]):
                        m.d.comb += [o["h"].eq(c["h"] + 1), o["last_h"].eq(c["h"] == heads_m2)]
                    with m.Else():
                        m.d.comb += h_zero
                        with m.If(c["last_t"]):
                            m.d.comb += o["ph"].eq(_Phase.DONE)
                        with m.Else():
                            m.d.comb += [
                                o["t"].eq(c["t"] + 1),
                                o["last_t"].eq(c["t"] == rows_m2),
                                o["ph"].eq(_Phase.SX),
                            ]
                m.d.comb += decode(o)
                return o

            start = {
                "ph": _Phase.SX,
                "t": 0,
                "h": 0,
                "g": 0,
                "b": 0,
                "last_g": g_one,
                "g0": 1,
                "last_h": heads_one,
                "last_t": rows_one,
                "hs": 0,
                "lb": 0,
                "tl": 0,
            }
            after_start = {
                **start,
                "ph": Mux(a.rope, _Phase.TAB, _Phase.SRC),
                "hs": ~a.rope,
            }
            n_succ = succ(n)
            with m.If(init):
                m.d.sync += [s[k].eq(start[k]) for k in fields]
                m.d.sync += [n[k].eq(after_start[k]) for k in fields]
            with m.Elif(fire):
                m.d.sync += [s[k].eq(n[k]) for k in fields]
                m.d.sync += [n[k].eq(n_succ[k]) for k in fields]
            return s

        rq_fire = Signal()
        rs_fire = Signal()
        rq = sequencer("rq", rq_fire)
        rs = sequencer("rs", rs_fire)
        # nothing outstanding: the response side has caught up with the request side
        caught_up = Signal()  # registered: one cycle late (only ABORT uses it)
        # a request fired in the cycle the abort was decided is not in caught_up yet:
        # ABORT also waits for a cycle after the last request (a read was left unanswered)
        rq_fire_q = Signal()
        m.d.sync += rq_fire_q.eq(rq_fire)
        m.d.sync += caught_up.eq(
            (rq["ph"] == rs["ph"])
            & (rq["t"] == rs["t"])
            & (rq["h"] == rs["h"])
            & (rq["g"] == rs["g"])
            & (rq["b"] == rs["b"])
        )

        # ================================================================ requests
        sx_ptr = Signal(isa.ADDR_BITS + 1)
        tab_row = Signal(isa.ADDR_BITS + 1)  # this token's table row
        src_head = Signal(isa.ADDR_BITS + 1)  # this head's src vector
        qa = Signal(isa.ADDR_BITS + 1)  # the current group's A chunk
        m.d.comb += rq_fire.eq(self.rd.valid & self.rd.ready)
        is_tab = _is(rq["ph"], _Phase.TAB)
        n_el = Signal(range(L + 1))
        m.d.comb += n_el.eq(Mux(rq["last_g"], last_n, L))
        with m.If(_is(rq["ph"], _Phase.SX)):
            m.d.comb += [self.rd.payload.addr.eq(sx_ptr), self.rd.payload.len.eq(4)]
        with m.Else():
            # B chunk: half elements further (half*2 = hd bytes of int16, 2*hd of int32)
            off_b = Mux(is_tab, hd, hd << 1)
            m.d.comb += [
                self.rd.payload.addr.eq(Mux(rq["b"], qa + off_b, qa)),
                self.rd.payload.len.eq(Mux(is_tab, n_el << 1, n_el << 2)),
            ]
        # a head's reads start only when its row slot is free (registered: one cycle
        # late, and a head's first request is followed by its B request)
        rq_head = rq["hs"]
        rq_admit = Signal()
        n_rq = Signal(3)  # heads whose reads have started
        n_free = Signal(3)  # heads drained (their slot is free)
        m.d.sync += rq_admit.eq((n_rq - n_free)[:3] < ROW_SLOTS)
        with m.If(rq_fire & rq_head):
            m.d.sync += n_rq.eq(n_rq + 1)
        m.d.comb += self.rd.valid.eq(running & ~_is(rq["ph"], _Phase.DONE) & (~rq_head | rq_admit))
        with m.If(rq_fire):
            with m.If(_is(rq["ph"], _Phase.SX)):
                m.d.sync += [sx_ptr.eq(sx_ptr + 4), qa.eq(Mux(a.rope, tab_row, src_head))]
            with m.Else():
                if True:
                    with m.If(rq["b"] & ~rq["lb"]):
                        m.d.sync += qa.eq(qa + Mux(is_tab, 2 * L, 4 * L))
                    with m.If(rq["lb"]):
                        with m.If(is_tab):
                            m.d.sync += [qa.eq(src_head), tab_row.eq(tab_row + (hd << 1))]
                        with m.Else():
                            m.d.sync += [
                                qa.eq(src_head + (hd << 2)),
                                src_head.eq(src_head + (hd << 2)),
                            ]

        # ================================================================ responses
        pay = self.rdata.payload
        rs_take = Signal()  # the response at the head of the stream may be taken
        sx_cur = Signal(32)
        m.d.comb += rs_fire.eq(self.rdata.valid & self.rdata.ready)
        rs_src = _is(rs["ph"], _Phase.SRC)
        rs_head_start = rs["hs"]
        tab_wait = Signal()  # G = 1: the coefficients of a new table row are not loaded yet
        m.d.comb += [
            rs_take.eq(_is(rs["ph"], _Phase.SX) | _is(rs["ph"], _Phase.TAB) | (rs_src & ~tab_wait)),
            # abort: drain, every response owed is dropped (outside RUN none is owed)
            self.rdata.ready.eq(abort | rs_take),
        ]
        with m.If(rs_fire & _is(rs["ph"], _Phase.SX)):
            m.d.sync += sx_cur.eq(pay[:32])

        # table buffer: G words of L int16 (cos, sin) + the rope=0 word (cos 1.0, sin 0)
        tw = L * TABLE_BITS
        one = 1 << T
        m.submodules.cosbuf = cosbuf = Memory(
            shape=unsigned(tw),
            depth=GMAX + 1,
            init=[0] * GMAX + [sum(one << (TABLE_BITS * j) for j in range(L))],
        )
        m.submodules.sinbuf = sinbuf = Memory(shape=unsigned(tw), depth=GMAX + 1, init=[])
        cos_w, sin_w = cosbuf.write_port(), sinbuf.write_port()
        # registered reads (the multipliers' coefficient registers), addressed with the
        # group of the response that will be at the head of the stream next cycle; not
        # transparent (that would move the register to the address, in front of the
        # multipliers): the first src response waits a cycle after the table's last
        cos_r = cosbuf.read_port()
        sin_r = sinbuf.read_port()
        # the table writes are registered (the write side of a LUT RAM starts a path)
        tab_fire = rs_fire & _is(rs["ph"], _Phase.TAB) & ~abort
        tw_en, tw_b = Signal(), Signal()
        tw_g = Signal(GB)
        tw_data = Signal(tw)
        m.d.sync += [tw_en.eq(tab_fire), tw_b.eq(rs["b"]), tw_g.eq(rs["g"]), tw_data.eq(pay[:tw])]
        # the first src response waits until the coefficient registers have read the
        # table's last word: 2 cycles after it is taken
        # (G = 1 only: with more groups the last word written is not the first read)
        tw1, tw2 = Signal(), Signal()
        m.d.sync += [tw1.eq(rs_fire & rs["tl"] & g_one), tw2.eq(tw1)]
        m.d.comb += tab_wait.eq(tw1 | tw2)
        # the group after a B response; loaded when B is taken (an A response keeps
        # reloading its own group)
        g_next = Signal(GB)
        m.d.comb += g_next.eq(Mux(rs["b"], Mux(rs["last_g"], 0, rs["g"] + 1), rs["g"]))
        m.d.comb += [cos_r.en.eq(rs_fire | ~rs["b"]), sin_r.en.eq(rs_fire | ~rs["b"])]
        m.d.comb += [
            cos_w.addr.eq(tw_g),
            sin_w.addr.eq(tw_g),
            cos_w.data.eq(tw_data),
            sin_w.data.eq(tw_data),
            cos_w.en.eq(tw_en & ~tw_b),
            sin_w.en.eq(tw_en & tw_b),
            cos_r.addr.eq(Mux(a.rope, g_next, GMAX)),
            sin_r.addr.eq(Mux(a.rope, g_next, GMAX)),
        ]

        # ================================================================ rotation
        src_fire = rs_fire & rs_src & ~abort
        # R1: the partial products of the response just taken (A or B)
        r1_v, r1_b, r1_last = Signal(), Signal(), Signal()
        r1_g = Signal(GB)
        r1_slot = Signal(2)
        fill_slot = Signal(2)  # the slot of the head being taken
        pcl = [Signal(signed(SPLIT + TABLE_BITS + 1), name=f"pcl{j}") for j in range(L)]
        pch = [Signal(signed(XW + TABLE_BITS), name=f"pch{j}") for j in range(L)]
        psl = [Signal(signed(SPLIT + TABLE_BITS + 1), name=f"psl{j}") for j in range(L)]
        psh = [Signal(signed(XW + TABLE_BITS), name=f"psh{j}") for j in range(L)]
        # A's partials, held while B's are computed
        hcl = [Signal.like(pcl[j], name=f"hcl{j}") for j in range(L)]
        hch = [Signal.like(pch[j], name=f"hch{j}") for j in range(L)]
        hsl = [Signal.like(psl[j], name=f"hsl{j}") for j in range(L)]
        hsh = [Signal.like(psh[j], name=f"hsh{j}") for j in range(L)]
        m.d.sync += [
            r1_v.eq(src_fire),
            r1_b.eq(rs["b"]),
            r1_last.eq(rs["last_g"]),
            r1_g.eq(rs["g"]),
            r1_slot.eq(fill_slot),
        ]
        for j in range(L):
            x = pay[ELEM_BITS * j : ELEM_BITS * (j + 1)]
            xl = Cat(x[:SPLIT], Const(0, 1)).as_signed()
            xh = x[SPLIT:].as_signed()
            c = cos_r.data[TABLE_BITS * j : TABLE_BITS * (j + 1)].as_signed()
            s = sin_r.data[TABLE_BITS * j : TABLE_BITS * (j + 1)].as_signed()
            m.d.sync += [
                pcl[j].eq(xl * c),
                pch[j].eq(xh * c),
                psl[j].eq(xl * s),
                psh[j].eq(xh * s),
            ]
        with m.If(r1_v & ~r1_b):
            for j in range(L):
                m.d.sync += [
                    hcl[j].eq(pcl[j]),
                    hch[j].eq(pch[j]),
                    hsl[j].eq(psl[j]),
                    hsh[j].eq(psh[j]),
                ]
        # R2: y1 = A*c - B*s, y2 = B*c + A*s as (hi, lo) partial sums
        r2_v, r2_last = Signal(), Signal()
        r2_g = Signal(GB)
        r2_slot = Signal(2)
        lo_w = SPLIT + TABLE_BITS + 2
        hi_w = XW + TABLE_BITS + 1
        lo1 = [Signal(signed(lo_w), name=f"lo1_{j}") for j in range(L)]
        hi1 = [Signal(signed(hi_w), name=f"hi1_{j}") for j in range(L)]
        lo2 = [Signal(signed(lo_w), name=f"lo2_{j}") for j in range(L)]
        hi2 = [Signal(signed(hi_w), name=f"hi2_{j}") for j in range(L)]
        m.d.sync += [
            r2_v.eq(r1_v & r1_b),
            r2_last.eq(r1_last),
            r2_g.eq(r1_g),
            r2_slot.eq(r1_slot),
        ]
        for j in range(L):
            m.d.sync += [
                lo1[j].eq(hcl[j] - psl[j]),
                hi1[j].eq(hch[j] - psh[j]),
                lo2[j].eq(pcl[j] + hsl[j]),
                hi2[j].eq(pch[j] + hsh[j]),
            ]
        # R3: v = hi*2^SPLIT + lo, rounded: (v >> T) + v[T-1] (the carry in)
        r3_v, r3_last = Signal(), Signal()
        r3_g = Signal(GB)
        r3_slot = Signal(2)
        rw = hi_w + SPLIT - T + 1
        r3y = [[Signal(signed(rw), name=f"r3y{k}_{j}") for j in range(L)] for k in range(2)]
        m.d.sync += [r3_v.eq(r2_v), r3_last.eq(r2_last), r3_g.eq(r2_g), r3_slot.eq(r2_slot)]
        for k, (lo, hi) in enumerate(((lo1, hi1), (lo2, hi2))):
            for j in range(L):
                m.d.sync += r3y[k][j].eq((hi[j] << (SPLIT - T)) + (lo[j] >> T) + lo[j][T - 1])
        # R4: saturate; y1 word now, y2 word (held in R5) next cycle
        r4_v, r4_last = Signal(), Signal()
        r4_g = Signal(GB)
        r4_slot = Signal(2)
        lo_s, hi_s = -(1 << (OB - 1)), (1 << (OB - 1)) - 1
        r4y = [[Signal(signed(ELEM_BITS), name=f"r4y{k}_{j}") for j in range(L)] for k in range(2)]
        r5_v, r5_last = Signal(), Signal()
        r5_g = Signal(GB)
        r5_slot = Signal(2)
        r5y = [Signal(signed(ELEM_BITS), name=f"r5y{j}") for j in range(L)]
        m.d.sync += [
            r4_v.eq(r3_v),
            r4_last.eq(r3_last),
            r4_g.eq(r3_g),
            r4_slot.eq(r3_slot),
            r5_v.eq(r4_v),
            r5_last.eq(r4_last),
            r5_g.eq(r4_g),
            r5_slot.eq(r4_slot),
        ]
        for k in range(2):
            for j in range(L):
                v = r3y[k][j]
                m.d.sync += r4y[k][j].eq(Mux(v > hi_s, hi_s, Mux(v < lo_s, lo_s, v)))
        for j in range(L):
            m.d.sync += r5y[j].eq(r4y[1][j])

        # row buffer: {slot, half, group} -> L int32
        RB = 2 + 1 + GB
        m.submodules.rowbuf = rowbuf = Memory(
            shape=unsigned(L * ELEM_BITS),
            depth=1 << RB,
            init=[],
            attrs={"ram_style": "distributed"},  # LUT RAM: the block RAMs are TLMM's
        )
        row_w = rowbuf.write_port()
        row_r = rowbuf.read_port()  # synchronous: the drain's first stage
        # Y: the word to write (y1 words from R4, y2 words from R5), registered
        y_word = Signal(L * ELEM_BITS)
        y_v, y_first, y_last = Signal(), Signal(), Signal()
        y_addr = Signal(RB)

        # amax: key = (|y| - sign, sign): its maximum is the largest |y| (= key>>1 + key&1)
        def key(y):
            sgn = y[ELEM_BITS - 1]
            return Cat(sgn, y[: ELEM_BITS - 1] ^ sgn.replicate(ELEM_BITS - 1))

        y_next = Signal(L * ELEM_BITS)
        m.d.comb += y_next.eq(Mux(r4_v, Cat(*r4y[0]), Cat(*r5y)))
        y_keys = [Signal(ELEM_BITS, name=f"y_key{j}") for j in range(L)]
        m.d.sync += [
            k.eq(key(y_next[ELEM_BITS * j : ELEM_BITS * (j + 1)])) for j, k in enumerate(y_keys)
        ]
        m.d.sync += [
            y_v.eq(r4_v | r5_v),
            y_word.eq(y_next),
            # first word of a head: y1 of group 0; last: y2 of the last group
            y_first.eq(r4_v & (r4_g == 0)),
            y_last.eq(r5_v & r5_last),
            y_addr.eq(Mux(r4_v, Cat(r4_g, Const(0, 1), r4_slot), Cat(r5_g, Const(1, 1), r5_slot))),
        ]
        m.d.comb += [
            row_w.addr.eq(y_addr),
            row_w.data.eq(y_word),
            row_w.en.eq(y_v),
        ]

        def kmax(x, y):
            return Mux(x > y, x, y)

        level = y_keys
        lv_v, lv_first, lv_last, lv_slot = y_v, y_first, y_last, y_addr[-2:]
        amax_valids = [y_v]
        depth_i = 0
        while len(level) > 1:
            nxt = [kmax(level[i], level[i + 1]) for i in range(0, len(level), 2)]
            regs = [Signal(ELEM_BITS, name=f"amax_l{depth_i}_{i}") for i in range(len(nxt))]
            v, f, ll = (Signal(name=f"amax_l{depth_i}_{n}") for n in ("v", "first", "last"))
            sl = Signal(2, name=f"amax_l{depth_i}_slot")
            m.d.sync += [r.eq(x) for r, x in zip(regs, nxt, strict=True)]
            m.d.sync += [v.eq(lv_v), f.eq(lv_first), ll.eq(lv_last), sl.eq(lv_slot)]
            level, lv_v, lv_first, lv_last, lv_slot = regs, v, f, ll, sl
            amax_valids.append(v)
            depth_i += 1
        if depth_i == 0:  # L = 1: register the key once
            k0 = Signal(ELEM_BITS, name="amax_key")
            v, f, ll = Signal(), Signal(), Signal()
            sl = Signal(2)
            m.d.sync += [k0.eq(level[0]), v.eq(lv_v), f.eq(lv_first), ll.eq(lv_last)]
            m.d.sync += sl.eq(lv_slot)
            level, lv_v, lv_first, lv_last, lv_slot = [k0], v, f, ll, sl
            amax_valids.append(v)
        run_key = Signal(ELEM_BITS)
        new_key = Signal(ELEM_BITS)
        m.d.comb += new_key.eq(Mux(lv_first, level[0], kmax(run_key, level[0])))
        # per row slot: the head's amax key (at its fill's end) and its token's scale
        # (at its first response); the head unit takes the slots in order
        slot_key = [Signal(ELEM_BITS, name=f"slot_key{k}") for k in range(ROW_SLOTS)]
        slot_sx = [Signal(32, name=f"slot_sx{k}") for k in range(ROW_SLOTS)]
        n_end = Signal(3)  # heads whose fill has ended
        n_taken = Signal(3)  # heads taken by the head unit
        hin_take = Signal()
        with m.If(lv_v):
            m.d.sync += run_key.eq(new_key)
        with m.If(lv_v & lv_last):
            m.d.sync += n_end.eq(n_end + 1)
            with m.Switch(lv_slot):
                for k in range(ROW_SLOTS):
                    with m.Case(k):
                        m.d.sync += slot_key[k].eq(new_key)
        # the token's scale goes to the head's slot a cycle after its first response
        sx_wr = Signal()
        sx_wr_slot = Signal(2)
        m.d.sync += [sx_wr.eq(src_fire & rs_head_start), sx_wr_slot.eq(fill_slot)]
        with m.If(sx_wr):
            with m.Switch(sx_wr_slot):
                for k in range(ROW_SLOTS):
                    with m.Case(k):
                        m.d.sync += slot_sx[k].eq(sx_cur)
        with m.If(src_fire & rs["lb"]):  # the head's last response
            m.d.sync += fill_slot.eq(fill_slot + 1)
        hin_v = Signal()
        hin_key = Signal(ELEM_BITS)
        hin_sx = Signal(32)
        m.d.comb += hin_v.eq(n_end != n_taken)
        with m.Switch(n_taken[:2]):
            for k in range(ROW_SLOTS):
                with m.Case(k):
                    m.d.comb += [hin_key.eq(slot_key[k]), hin_sx.eq(slot_sx[k])]
        with m.If(hin_take):
            m.d.sync += n_taken.eq(n_taken + 1)

        # ================================================================ head unit
        # A micro-sequence per head (hc_step), reusing one normalizing shifter
        # (b_out = BV << BS) and one two-stage leading-zero count (of BV):
        #   take  BV <- amax, the token's scale sx
        #   1, 2  BS <- clz(amax) = sa; p1 <- sx.mant * c.mant (DSP)
        #   3     D' <- amax << sa; BV <- amax >> 1
        #   4     X <- (amax >> 1) << sa: the division starts; BV <- p1
        #   5, 6  BS <- clz(p1) = sp
        #   7     P1n <- p1 << sp
        #   8     tc = normalize(p1, sx.shift + c.shift), soi = normalize(amax, 0): the
        #         top 16 bits of P1n, D', rounded half up
        #   9     p2 <- tc.mant * soi.mant (DSP)
        #   10,11 record = normalize(p2) (both normalized: 2 cases)
        #   12    its SCALE_RANGE check
        #   13    (the QB division steps done) recip2 = recip << (sa mod 8) and sa div 8
        #         go to the drain.
        LAST = 13
        hc_step = Signal(range(LAST + 1))
        hc_busy = Signal()
        h_amax = Signal(32)
        h_sx_s = Signal(signed(SB))
        h_sx_m = Signal(B)
        BV = Signal(32)
        BS = Signal(6)
        b_out = Signal(32)
        m.d.comb += b_out.eq(BV << BS[:5])
        cz = [(Signal(name=f"cz_nz{k}"), Signal(3, name=f"cz_lz{k}")) for k in range(4)]
        for (nz, lz), (nzv, lzv) in zip(cz, _clz_bytes(BV), strict=True):
            m.d.sync += [nz.eq(nzv), lz.eq(lzv)]
        b_clz = _clz_combine(cz)
        p1 = Signal(2 * B)
        sa = Signal(6)
        tcs = Signal(signed(SB + 3))  # sx.shift + c.shift + sp - B
        Dn = Signal(32)
        Pn = Signal(32)
        a_zero = Signal()
        # division: R' (34 bits) against D' (32 bits), bringing down X's low QB-1 bits
        RW = ELEM_BITS + 2
        dv_r = Signal(RW)
        dv_x = Signal(QB - 1)
        dv_q = Signal(QB)
        dv_n = Signal(range(QB + 1))
        dv_busy = Signal()
        dv_t = Signal(signed(RW + 1))
        m.d.comb += dv_t.eq(dv_r - Dn)
        init_const = (ACT_MAX << (ELEM_BITS + F)) >> (QB - 1)
        # int4 rows: the same division of kv_max * 2^R (its quotient has leading zeros)
        init_kv4 = (cfg.forward.kv_max << (ELEM_BITS + F)) >> (QB - 1)
        # X < 2^31: its top bits (X >> (QB-1)) lie below the constant's lowest bit
        for c_ in (init_const, init_kv4):
            assert c_ & ((1 << (ELEM_BITS - QB)) - 1) == 0
        tc_m = Signal(B)
        tc_s = Signal(signed(SB + 3))
        soi_m = Signal(B)
        soi_s = Signal(signed(SB + 3))
        p2 = Signal(2 * B)
        sh2 = Signal(signed(SB + 4))
        rec_m = Signal(B)
        rec_s = Signal(signed(SB + 5))
        r17 = Signal(B + 1)
        p2_hi = p2[2 * B - 1]
        p2_hi_q = Signal()
        p2_zero = Signal()
        hc_err = Signal()

        def top16(v, s, zero, name):
            """normalize(p, shift) from v = p << clz(p): the top B bits rounded half up
            (a carry renormalizes); (0, 0) for p = 0."""
            r = Signal(B + 1, name=f"{name}_r")
            m.d.comb += r.eq(v[32 - B :] + v[31 - B])
            carry = r[B]
            return Mux(zero, 0, Mux(carry, 1 << (B - 1), r[:B])), Mux(zero, 0, s - carry)

        m.d.comb += hin_take.eq(hin_v & ~hc_busy & running)
        with m.If(hin_take):
            m.d.sync += [
                hc_busy.eq(1),
                hc_step.eq(1),
                h_amax.eq((hin_key >> 1) + hin_key[0]),
                a_zero.eq(hin_key == 0),
                BV.eq((hin_key >> 1) + hin_key[0]),
                h_sx_s.eq(hin_sx[B : B + SB]),
                h_sx_m.eq(hin_sx[:B]),
            ]
        with m.If(hc_busy & (hc_step != LAST)):
            m.d.sync += hc_step.eq(hc_step + 1)
        with m.If(hc_busy):
            with m.Switch(hc_step):
                with m.Case(1):
                    m.d.sync += p1.eq(h_sx_m * a.c_mant)
                with m.Case(2, 6):
                    m.d.sync += BS.eq(b_clz)
                with m.Case(3):
                    m.d.sync += [Dn.eq(b_out), sa.eq(BS), BV.eq(h_amax >> 1)]
                with m.Case(4):
                    m.d.sync += [
                        BV.eq(p1),
                        dv_r.eq(Mux(kv4, init_kv4, init_const) | (b_out >> (QB - 1))),
                        dv_x.eq(b_out[: QB - 1]),
                        dv_n.eq(0),
                        dv_busy.eq(1),
                    ]
                with m.Case(7):
                    m.d.sync += [Pn.eq(b_out), tcs.eq(h_sx_s + a.c_shift + BS - B)]
                with m.Case(8):
                    tm, ts = top16(Pn, tcs, p1 == 0, "tc")
                    om, os_ = top16(Dn, sa - B, a_zero, "soi")
                    m.d.sync += [tc_m.eq(tm), tc_s.eq(ts), soi_m.eq(om), soi_s.eq(os_)]
                with m.Case(9):
                    m.d.sync += [p2.eq(tc_m * soi_m), sh2.eq(tc_s + soi_s - (B - 1))]
                with m.Case(10):
                    # both normalized (or 0): r = B - 1 + p2[2B-1] (golden.model.scale_mul)
                    m.d.sync += [
                        r17.eq(Mux(p2_hi, p2[B:] + p2[B - 1], p2[B - 1 : 2 * B - 1] + p2[B - 2])),
                        p2_hi_q.eq(p2_hi),
                        p2_zero.eq(p2 == 0),
                    ]
                with m.Case(11):
                    carry = r17[B]
                    m.d.sync += [
                        rec_m.eq(Mux(p2_zero, 0, Mux(carry, 1 << (B - 1), r17[:B]))),
                        rec_s.eq(Mux(p2_zero, 0, sh2 - (p2_hi_q + carry))),
                    ]
                with m.Case(12):
                    m.d.comb += hc_err.eq(~shift_fits_record(rec_s))
        # restoring division, one quotient bit per cycle (MSB first)
        with m.If(dv_busy):
            ge = ~dv_t[RW]
            rem = Mux(ge, dv_t[:RW], dv_r)
            m.d.sync += [
                dv_q.eq(Cat(ge, dv_q[:-1])),
                dv_n.eq(dv_n + 1),
                dv_r.eq(Cat(dv_x[-1], rem[: RW - 1])),
                dv_x.eq(Cat(Const(0, 1), dv_x[:-1])),
            ]
            with m.If(dv_n == QB - 1):
                m.d.sync += dv_busy.eq(0)
        # hand-off to the drain: the division done and the result register free
        hres_v = Signal()
        hres_recip2 = Signal(QB + 7)
        hres_z = Signal(2)
        hres_rec = Signal(32)
        hres_take = Signal()
        hc_done = Signal()
        m.d.comb += hc_done.eq(hc_busy & (hc_step == LAST) & ~dv_busy & (~hres_v | hres_take))
        with m.If(hres_take):
            m.d.sync += hres_v.eq(0)
        with m.If(hc_done):
            m.d.sync += [
                hc_busy.eq(0),
                hres_v.eq(1),
                hres_recip2.eq(Mux(a_zero, 0, dv_q) << sa[:3]),
                hres_z.eq(Mux(a_zero, 0, sa[3:5])),
                hres_rec.eq(Cat(rec_m, rec_s[:SB])),
            ]

        # ================================================================ drain
        dstall = Signal()
        d_active = Signal()  # a head is being read
        d_slot = Signal(2)
        d_half = Signal()
        d_g = Signal(GB)
        d_recip2 = Signal(QB + 7)
        d_z = Signal(2)
        d_rec = Signal(32)
        d_last_g = Signal()  # d_g == G - 1 (a register)
        issue = Signal()
        m.d.comb += [
            issue.eq(d_active & ~dstall),
            hres_take.eq(hres_v & (~d_active | (issue & d_half & d_last_g))),
            row_r.addr.eq(Cat(d_g, d_half, d_slot)),
            row_r.en.eq(~dstall),
        ]
        with m.If(issue):
            with m.If(~d_last_g):
                m.d.sync += [d_g.eq(d_g + 1), d_last_g.eq(d_g == g_last_m1)]
            with m.Elif(~d_half):
                m.d.sync += [d_g.eq(0), d_last_g.eq(g_one), d_half.eq(1)]
            with m.Else():
                m.d.sync += [
                    d_g.eq(0),
                    d_last_g.eq(g_one),
                    d_half.eq(0),
                    d_active.eq(0),
                    d_slot.eq(d_slot + 1),
                    n_free.eq(n_free + 1),
                ]
        with m.If(hres_take):
            m.d.sync += [
                d_active.eq(1),
                d_g.eq(0),
                d_last_g.eq(g_one),
                d_half.eq(0),
                d_recip2.eq(hres_recip2),
                d_z.eq(hres_z),
                d_rec.eq(hres_rec),
            ]
        # Q1: the buffer word (the read port's register) and its tags
        q1_v, q1_last, q1_half = Signal(), Signal(), Signal()
        q1_g = Signal(GB)
        q1_z = Signal(2)
        q1_rec = Signal(32)
        q1_recip2 = Signal(QB + 7)  # the DSP operand follows its word
        # Q2: partials y[0:17]*recip2, y[17:32]*recip2
        q2_v, q2_last, q2_half = Signal(), Signal(), Signal()
        q2_g = Signal(GB)
        q2_z = Signal(2)
        q2_rec = Signal(32)
        PLW = SPLIT + QB + 7
        PHW = XW + QB + 8
        ql = [Signal(PLW, name=f"ql{j}") for j in range(L)]
        qh = [Signal(signed(PHW), name=f"qh{j}") for j in range(L)]
        # Q3: the window's bits W = (qh + ql >> 17)[0:32] and ql[16]
        q3_v, q3_last, q3_half = Signal(), Signal(), Signal()
        q3_g = Signal(GB)
        q3_z = Signal(2)
        q3_rec = Signal(32)
        q3w = [Signal(32, name=f"q3w{j}") for j in range(L)]
        q3r = [Signal(name=f"q3r{j}") for j in range(L)]
        with m.If(~dstall):
            m.d.sync += [
                q1_v.eq(issue),
                q1_last.eq(d_last_g),
                q1_half.eq(d_half),
                q1_g.eq(d_g),
                q1_z.eq(d_z),
                q1_rec.eq(d_rec),
                q1_recip2.eq(d_recip2),
                q2_v.eq(q1_v),
                q2_last.eq(q1_last),
                q2_half.eq(q1_half),
                q2_g.eq(q1_g),
                q2_z.eq(q1_z),
                q2_rec.eq(q1_rec),
                q3_v.eq(q2_v),
                q3_last.eq(q2_last),
                q3_half.eq(q2_half),
                q3_g.eq(q2_g),
                q3_z.eq(q2_z),
                q3_rec.eq(q2_rec),
            ]
            rdw = row_r.data
            for j in range(L):
                y = rdw[ELEM_BITS * j : ELEM_BITS * (j + 1)]
                m.d.sync += [
                    ql[j].eq(y[:SPLIT] * q1_recip2),
                    qh[j].eq(y[SPLIT:].as_signed() * q1_recip2),
                    q3w[j].eq(qh[j] + (ql[j] >> SPLIT)),
                    q3r[j].eq(ql[j][SPLIT - 1]),
                ]
        # Q4: window select (Z = 32 + F - 8z and the round bit below it), round, clamp
        codes = []
        for j in range(L):
            win = Signal(signed(8), name=f"win{j}")
            rb = Signal(name=f"rb{j}")
            with m.Switch(q3_z):
                for z in range(4):
                    zz = ELEM_BITS + F - 8 * z - SPLIT  # Z relative to the product's bit 17
                    with m.Case(z):
                        m.d.comb += [
                            win.eq(q3w[j][zz : zz + 8]),
                            rb.eq(q3w[j][zz - 1] if zz > 0 else q3r[j]),
                        ]
            qv = Signal(signed(9), name=f"qv{j}")
            m.d.comb += qv.eq(win + rb)
            code = Signal(8, name=f"code{j}")
            top = Mux(kv4, cfg.forward.kv_max, ACT_MAX)  # only the top code can overflow
            m.d.comb += code.eq(Mux(qv > top, top, qv))
            codes.append(code)
        # the code register (a half head) and the write register
        cr = Signal(HMAX * 8)
        cr_full = Signal()
        cr_half = Signal()
        cr_rec = Signal(32)
        wr_busy = Signal()  # the write register holds codes to write
        move = Signal()
        m.d.comb += [move.eq(cr_full & ~wr_busy), dstall.eq(q3_v & cr_full & ~move)]
        q3_in = q3_v & ~dstall
        with m.If(q3_in):
            with m.Switch(q3_g):
                for g in range(GMAX):
                    with m.Case(g):
                        m.d.sync += cr[g * L * 8 : (g + 1) * L * 8].eq(Cat(*codes))
        with m.If(move):
            m.d.sync += cr_full.eq(0)
        with m.If(q3_in & q3_last):
            m.d.sync += [cr_full.eq(1), cr_half.eq(q3_half), cr_rec.eq(q3_rec)]

        # ================================================================ writer
        # codes of a half from the write register; after the second half, the record
        # (a pending record goes first, so the pointers advance in head order)
        wreg = Signal(HMAX * 8)
        w_half = Signal()
        w_rec = Signal(32)
        rec_pend = Signal()
        rec_q = Signal(32)
        w_pend = Signal()  # a write offered and not yet taken (ABORT lets it finish)
        w_t = Signal(isa.ROWS_BITS)
        w_h = Signal(isa.HEADS_BITS)
        code_tok = Signal(isa.ADDR_BITS + 1)  # dst + t*hd
        code_ptr = Signal(isa.ADDR_BITS + 1)  # dst + (h*ld + t)*hd
        rec_tok = Signal(isa.ADDR_BITS + 1)
        rec_ptr = Signal(isa.ADDR_BITS + 1)
        w_done = Signal()  # the command's last record is written
        with m.If(move):
            m.d.sync += [wreg.eq(cr), w_half.eq(cr_half), w_rec.eq(cr_rec), wr_busy.eq(1)]
        # the half's codes as written: int8, or (kv4) packed int4 (hw.ops.kvrow)
        wcodes = wreg
        if kvrow.int4(cfg):
            wcodes = Mux(kv4, kvrow.pack_codes(m, wreg, HMAX), wreg)
        w_go = Signal()  # the selected write may be offered
        m.d.comb += w_go.eq(Mux(abort, w_pend, 1))
        w_acc = Signal()
        m.d.comb += [
            self.wr.valid.eq((rec_pend | wr_busy) & ~dry & w_go),
            w_acc.eq((rec_pend | wr_busy) & w_go & (self.wr.ready | dry)),
            self.wr.payload.data.eq(Cat(Mux(rec_pend, rec_q, wcodes[:32]), wcodes[32:])),
            self.wr.payload.len.eq(Mux(rec_pend, isa.SCALE_RECORD_BYTES, hbytes)),
            self.wr.payload.addr.eq(
                Mux(rec_pend, rec_ptr, Mux(w_half, code_ptr + hbytes, code_ptr))
            ),
        ]
        m.d.sync += w_pend.eq(self.wr.valid & ~self.wr.ready)
        next_head = Signal()
        with m.If(w_acc):
            with m.If(rec_pend):
                m.d.sync += rec_pend.eq(0)
                m.d.comb += next_head.eq(1)
            with m.Else():
                m.d.sync += wr_busy.eq(0)
                with m.If(w_half):
                    m.d.sync += [rec_pend.eq(1), rec_q.eq(w_rec)]
        with m.If(move):
            m.d.sync += wr_busy.eq(1)
        w_hl = Signal()  # w_h is the last head
        w_tl = Signal()  # w_t is the last token
        m.d.sync += [w_hl.eq(w_h == heads_m1), w_tl.eq(w_t == rows_m1)]
        with m.If(next_head):
            with m.If(~w_hl):
                m.d.sync += [
                    w_h.eq(w_h + 1),
                    code_ptr.eq(code_ptr + ldhd),
                    rec_ptr.eq(rec_ptr + ld4),
                ]
            with m.Else():
                m.d.sync += [
                    w_h.eq(0),
                    w_t.eq(w_t + 1),
                    code_tok.eq(code_tok + rowb),
                    code_ptr.eq(code_tok + rowb),
                    rec_tok.eq(rec_tok + 4),
                    rec_ptr.eq(rec_tok + 4),
                ]
                with m.If(w_tl):
                    m.d.comb += w_done.eq(1)

        # ================================================================ control
        chk = self.checks(m, pipelined=True)
        err_dims = chk.error(stop="src")
        err_args = chk.error(start="src", stop="records")
        err_scale = chk.error(start="records")
        # ARGS is the check_states-th cycle after start: no earlier than chk.latency
        n_checks = check_states(cfg)
        assert chk.latency <= n_checks, chk.latency
        waits = [(f"WAIT{i}", None) for i in range(n_checks - 3)]
        with m.FSM() as fsm:
            passed = self.check_states(
                m, ("DIMS", err_dims), ("SIZES", None), *waits, ("ARGS", err_args)
            )
            with m.State("RUN"):
                # the error output does not wait for done (it is read with done)
                m.d.comb += self.error.eq(pend_err)
                with m.If(hc_err):
                    m.d.sync += abort.eq(1)
                    m.next = "ABORT"
                with m.Elif(w_done):
                    self.finish(m, pend_err)
            with m.State("ABORT"):
                with m.If(caught_up & ~rq_fire_q & ~w_pend):
                    self.finish(m, ErrorCode.SCALE_RANGE)
        m.d.comb += init.eq(fsm.ongoing(waits[-1][0]))
        with m.If(passed["ARGS"]):
            m.d.sync += running.eq(1)
        with m.If(hc_err | w_done | fsm.ongoing("IDLE")):
            m.d.sync += running.eq(0)
        with m.If(fsm.ongoing("IDLE") | init):
            # nothing in flight survives a command (an aborted one leaves beats here)
            m.d.sync += [
                r1_v.eq(0),
                r2_v.eq(0),
                r3_v.eq(0),
                r4_v.eq(0),
                r5_v.eq(0),
                hres_v.eq(0),
                hc_busy.eq(0),
                dv_busy.eq(0),
                d_active.eq(0),
                q1_v.eq(0),
                q2_v.eq(0),
                q3_v.eq(0),
                cr_full.eq(0),
                wr_busy.eq(0),
                rec_pend.eq(0),
                w_pend.eq(0),
                n_taken.eq(0),
                n_rq.eq(0),
                n_end.eq(0),
                n_free.eq(0),
                fill_slot.eq(0),
                d_slot.eq(0),
            ]
            m.d.sync += [v.eq(0) for v in amax_valids]
        with m.If(passed["SIZES"]):
            m.d.sync += [
                ldhd.eq(a.ld * kvrow.row_bytes(hd, cfg, a.kv)),
                kv4.eq(a.kv if kvrow.int4(cfg) else 0),
                rowb.eq(kvrow.row_bytes(hd, cfg, a.kv)),
                hbytes.eq(kvrow.row_bytes(hd, cfg, a.kv) >> 1),
                ld4.eq(a.ld << 2),
                tab_off.eq(a.pos * (hd << 1)),
                half.eq(hd >> 1),
                g_last.eq((((hd >> 1) + (L - 1)) >> LB) - 1),
                g_last_m1.eq((((hd >> 1) + (L - 1)) >> LB) - 2),
                g_one.eq((hd >> 1) <= L),
                heads_m1.eq(a.heads - 1),
                rows_m1.eq(a.rows - 1),
                heads_m2.eq(a.heads - 2),
                rows_m2.eq(a.rows - 2),
                heads_one.eq(a.heads == 1),
                rows_one.eq(a.rows == 1),
                last_n.eq((((hd >> 1) - 1) & (L - 1)) + 1),
            ]
        with m.If(passed["ARGS"]):
            m.d.sync += [
                dry.eq(err_scale != ErrorCode.NONE),
                pend_err.eq(err_scale),
                abort.eq(0),
                sx_ptr.eq(a.src_scale),
                tab_row.eq(a.table + tab_off),
                src_head.eq(a.src),
                w_t.eq(0),
                w_h.eq(0),
                code_tok.eq(a.dst),
                code_ptr.eq(a.dst),
                rec_tok.eq(a.dst_scale),
                rec_ptr.eq(a.dst_scale),
            ]
        return m
