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
command ends; writes stop from the query where it was found (earlier queries' outputs
are written, as the engine rules allow).

Micro-architecture
==================
Queries (h, t) in order (h outer, t inner: the p rows in memory order); query head h
reads KV head g = h // n_rep. Per query, with v = L_t + 1 visible keys:

* min pass: the v scale records in reads of R = ``records`` records (4R bytes); a
  pipelined min tree over each response's records with a nonzero mant (each level keeps
  the smaller shift of the nonzero ones and whether there was one; a response is zero
  beyond its len, so no masked key counts) and a running min give s_min;
* key pass: per key j a V row (one read of VR bytes; int4 rows are unpacked into the
  int8 lanes by ``hw.ops.kvrow.unpack_lanes``, wiring only), preceded every 2R keys by a
  read of the next 2R p values (4R bytes) and every R keys by a read of the next R
  records: the records are read twice rather than buffered (no block RAM).

The request side issues this sequence as fast as ``rd.ready`` allows, running ahead of
the responses; the response side walks the same sequence:

* S0 (a V row accepted): p_j and record j from the chunk registers (word selects);
  S1: ``p_j * mant_j`` (a DSP) and ``sh = clamp(B - X + shift_j - s_min, 0, 33)`` (the
  sum beside two compares of shift_j with per-query thresholds; p*mant < 2^32: from 33
  on any shift gives 0, like golden's 62);
  S2: ``(2 p mant) >> sh``; S3: ``pt = (that + 1) >> 1 = rhu(p mant, sh)`` (0 in a
  cycle without a key; ``PT_BITS`` = 23 bits unsigned for the default config);
* ``max_head_dim`` multiply-accumulate lanes ``acc_i += pt * v_i`` (``hw.dsp.mac``: a
  DSP48E2 each, its 48-bit P register the accumulator, restarted by the query's first
  key; the V row reaches the DSPs through three fabric stages and their two B
  registers). When the query's last key is in P, every lane's P goes to the hold
  register (int32 per lane) and the DSPs' pattern detectors say whether each acc fits
  int32 (else BAD_OPERAND: exact for any data, P holds 48 bits);
* writer: ``requant`` (unit multiplier) of ``out_lanes`` lanes per write, a pipeline of
  the lane-group select, the shifters and the saturation, overlapped with the next
  query's keys. A query's last key is accepted only when the hold register is free and
  no other last key is in flight.

The first key of a query is accepted ``log2(R)`` cycles after the last min-pass response
at the earliest (the min tree's latency; with a 1-cycle memory that costs one cycle).

Cycles
======
The request side issues one read per cycle; with a memory that never stalls the
response side keeps up, so a command takes (``expected_cycles``)

    N = heads * sum_{t<rows} (2 ceil(v_t/R) + v_t + ceil(v_t/(2R)))      v_t = L_t + 1
    cycles = N + heads*rows*wait + latency + G + 13 + ceil(head_dim/out_lanes)

(N reads, the first in cycle G + 3: the head-ratio divider ``hw.ops.gqa`` (G =
``gqa.cycles()`` = 9 for 8-bit head fields) and two check cycles; ``wait`` = log2(R) per
query for the min tree; the last response's memory latency; S1-S4, the DSPs' A, M and P
registers, the capture into hold, the writer's three stages, the last query's writes and
the done cycle), as long as every query after the first has 2 ceil(v/R) + v +
ceil(v/(2R)) + wait >= ceil(head_dim/out_lanes) + 8 (its last key comes after the writer
took the previous query from the hold register; else it waits: the first queries of a
prefill with rows == keys; measured with R = 32, out_lanes 4: heads 2, kv_heads 1, rows =
keys = 4, head_dim 48: 184 cycles, formula 119).
``sim/test_op_pv.py`` measures this
exactly with a 1-cycle memory, for the INT8 and the int4 V rows alike (the formula does
not depend on the format). Per key: one V row (head_dim MACs) per cycle plus 1/(2R)
of a cycle for p and 2/R for its record. BitNet-0.73B decode (16 heads, head_dim 96,
1 query over S keys, R = 32, out_lanes 4): N = 16 * (S + S/16 + S/64) reads at one a
cycle, 2335 cycles at 128 keys and 35455 at 2048 (the 1024-bit scale buffer before:
2153 and 34313); with the KV260's DRAM the bandwidth sets the pace (106 bytes a key, 4
of them the record's second read: ~3.9 % more than the buffered records before; 58 with
the INT4 cache).

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
from hw.dsp import mac

from . import kvrow
from .base import Engine, check_power_of_two
from .gqa import Cursor, head_ratio
from .gqa import cycles as gqa_cycles

P_MEM_BITS = 16  # p is uint16 in memory (any 16-bit value)
V_BITS = 8  # V codes: int8
SH_HI = 2 * 16 + 1  # p*mant < 2^32: rhu by >= 33 gives 0

_MIN, _STREAM, _END = 0, 1, 2


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _Walk:
    """One side's walk (the module docstring's sequence; the request side issues it, the
    response side takes it): queries (h, t), per query its min pass (``L + 1`` records,
    R a read) then its key pass (keys j); ``left`` counts what is left of the pass:
    records in the min pass (``lastm``: its last read), keys in the key pass (``lastk``:
    the last key). The decisions are registered flags, the walk's compares a step ahead:
    ``tlast`` / ``hlast`` (t / h at their last) from the registered "the next is the last"
    compares ``t_nl`` / ``h_nl`` (t and h change at most once per query, >= 2 cycles
    apart). With ``n_rep``: also r = h mod n_rep and ``rlast`` (after the last repeat the
    side moves to the next KV head). Signals are named ``<side>_<field>``; each method
    returns the statements of one step of the walk, to which a side adds its own."""

    def __init__(self, m: Module, side: str, a, R: int, lim0, n_rep=None):
        self.a, self.R, self.lim0, self.n_rep = a, R, lim0, n_rep

        def reg(field: str, shape=1):
            return Signal(shape, name=f"{side}_{field}")

        self.state = reg("state", 2)
        if n_rep is not None:
            self.r = reg("r", isa.HEADS_BITS)
        self.t, self.L = reg("t", isa.ROWS_BITS), reg("L", isa.ROWS_BITS)  # L_t = keys - rows + t
        self.j = reg("j", isa.ROWS_BITS + 1)  # key of the pass
        self.left = reg("left", isa.ROWS_BITS + 1)
        self.lastm, self.lastk, self.tlast = reg("lastm"), reg("lastk"), reg("tlast")
        if n_rep is not None:
            self.rlast = reg("rlast")
        self.hlast, self.h = reg("hlast"), reg("h", isa.HEADS_BITS)
        self.t_nl, self.h_nl = reg("t_nl"), reg("h_nl")
        m.d.sync += [self.t_nl.eq(self.t + 2 == a.rows), self.h_nl.eq(self.h + 2 == a.heads)]
        if n_rep is not None:
            self.r_nl = reg("r_nl")
            m.d.sync += self.r_nl.eq(self.r + 2 == n_rep)

    def _query0(self) -> list:
        """Query 0 of a head, its min pass."""
        lim0 = self.lim0
        return [
            self.t.eq(0),
            self.L.eq(lim0),
            self.left.eq(lim0 + 1),
            self.lastm.eq(lim0 < self.R),
            self.tlast.eq(self.a.rows == 1),
        ]

    def start(self) -> list:
        """The command's first query, its min pass."""
        return [
            self.state.eq(_MIN),
            self.h.eq(0),
            self.j.eq(0),
            *self._query0(),
            *(self.first_repeat() if self.n_rep is not None else []),
            self.hlast.eq(self.a.heads == 1),
        ]

    def first_repeat(self) -> list:
        """After the last repeat of a KV head: repeat 0 (of the next KV head)."""
        return [self.r.eq(0), self.rlast.eq(self.n_rep == 1)]

    def min_read(self) -> list:
        """Past one read (response) of the min pass."""
        R = self.R
        return [self.left.eq(self.left - R), self.lastm.eq(self.left <= 2 * R)]

    def key_pass(self) -> list:
        """After the min pass: the query's key pass."""
        return [
            self.state.eq(_STREAM),
            self.j.eq(0),
            self.left.eq(self.L + 1),
            self.lastk.eq(self.L == 0),
        ]

    def key(self) -> list:
        """Past one key."""
        return [self.j.eq(self.j + 1), self.left.eq(self.left - 1), self.lastk.eq(self.left == 2)]

    def next_row(self) -> list:
        """After the query's last key, not the head's last query: query t + 1 (its min
        pass; the caller sets ``state``)."""
        return [
            self.t.eq(self.t + 1),
            self.L.eq(self.L + 1),
            self.left.eq(self.L + 2),
            self.lastm.eq(self.L + 2 <= self.R),
            self.tlast.eq(self.t_nl),
        ]

    def next_head(self) -> list:
        """After the head's last query: query 0 of head h + 1 (the caller ends the walk
        after the last head), the next repeat (the caller wraps it after the last)."""
        step = [*self._query0(), self.h.eq(self.h + 1), self.hlast.eq(self.h_nl)]
        if self.n_rep is not None:
            step += [self.r.eq(self.r + 1), self.rlast.eq(self.r_nl)]
        return step


def min_wait(records: int) -> int:
    """Cycles the first key of a query waits after the min pass with a memory that
    answers every cycle: the min tree's log2(R) levels and two registers, less the p and
    record reads."""
    return (records - 1).bit_length()


def n_requests(heads: int, rows: int, keys: int, records: int) -> int:
    """N of the module docstring: the reads of one command."""
    n = 0
    for t in range(rows):
        v = keys - rows + t + 1
        n += heads * (2 * _cdiv(v, records) + v + _cdiv(v, 2 * records))
    return n


def expected_cycles(
    heads: int,
    kv_heads: int,
    rows: int,
    keys: int,
    head_dim: int,
    records: int,
    out_lanes: int,
    latency: int = 1,
) -> int:
    """Cycles of one command without memory stalls (module docstring; exact when every
    query has L_t + 1 > ceil(head_dim/out_lanes) + 2)."""
    return (
        n_requests(heads, rows, keys, records)
        + heads * rows * min_wait(records)
        + latency
        + gqa_cycles()
        + 13
        + _cdiv(head_dim, out_lanes)
    )


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
        b, x = cfg.requant.mult_bits, cfg.forward.pv_extra_bits
        # smallest shift of a contributing key (its shift >= s_min), so the largest pt
        self.pt_max = int(
            golden_rhu(((1 << P_MEM_BITS) - 1) * ((1 << isa.SCALE_MANT_BITS) - 1), max(b - x, 0))
        )
        self.pt_bits = self.pt_max.bit_length()
        # |acc| < 2^47: the DSP's 48-bit P holds every sum exactly
        assert (max_keys * (1 << (V_BITS - 1)) * self.pt_max).bit_length() < 47
        super().__init__(cfg, dma_bytes)

    @staticmethod
    def design_params(dp) -> dict:
        return {
            "max_keys": dp.max_keys,
            "max_head_dim": min(dp.max_head_dim, dp.dma_bytes),
            "out_lanes": dp.pv_out_lanes,
            "records": dp.pv_records,
        }

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, PC, OL = self.records, 2 * self.records, self.out_lanes
        rlog, plog = R.bit_length() - 1, PC.bit_length() - 1
        LANES = self.max_head_dim
        NG = _cdiv(LANES, OL)  # lane groups of the hold register
        B, X, P = cfg.requant.mult_bits, cfg.forward.pv_extra_bits, cfg.softmax.out_bits
        IF, OUT_BITS = cfg.norm.in_frac_bits, cfg.norm.in_bits
        ACC_LIM = cfg.requant.in_bits  # golden's requantize takes int32 acc only
        SB = isa.SCALE_SHIFT_BITS
        SENT = 1 << (SB - 1)  # "no nonzero scale yet": above every shift
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
        lim0 = Signal(isa.ROWS_BITS)  # L_0 = keys - rows
        vstride = Signal(isa.ROWS_BITS + isa.DIM_BITS)  # kv_ld * vrow
        vrow = Signal(isa.DIM_BITS)  # bytes of a V row (the build's KV format)
        sstride = Signal(isa.ROWS_BITS + 2)  # kv_ld * 4
        pstride = Signal(isa.ROWS_BITS + 1)  # keys * 2
        dstride = Signal(isa.HEADS_BITS + isa.DIM_BITS + 2)  # heads * head_dim * 4
        hd4 = Signal(isa.DIM_BITS + 2)
        dst_err = Signal(ErrorCode)
        ovf = Signal()  # an acc left int32 (sticky)
        dry = Signal()  # dst is bad: compute, do not write

        # ------------------------------------------------------------ request side
        # both sides walk queries (h, t) and, per query, the min pass then the keys
        rw = _Walk(m, "r", a, R, lim0, n_rep)
        r_phave = Signal()  # the p read of this key is issued
        r_shave = Signal()  # the record read of this key is issued
        # KV head g's records and V rows; query t's p row
        r_s, r_v, r_p = (
            Cursor("r_sbase", "r_sptr"),
            Cursor("r_vbase", "r_vptr"),
            Cursor("r_prow", "r_pptr"),
        )

        # ------------------------------------------------------------ response side
        cw = _Walk(m, "c", a, R, lim0)
        c_j = cw.j
        # the next response of the stream is a p chunk / a record chunk (registered: the
        # response side's accept decision starts at flip-flops)
        c_needp = Signal()
        c_needs = Signal()
        c_wait = Signal(range(rlog + 3))  # min tree latency before the first key
        c_wait0 = Signal()  # c_wait == 0, registered
        c_d = Cursor("c_dst_head", "c_dst")  # dst of head h, query t
        preg = Signal(P_MEM_BITS * PC)  # the p chunk
        rreg = Signal(32 * R)  # the record chunk

        # ------------------------------------------------------------ min pass pipeline
        mn_valid = Signal()  # a min-pass response this cycle
        mn_first = Signal()  # ... the query's first
        # each record's shift and whether its mant is nonzero (only those count); a tree
        # level keeps the smaller shift of the nonzero ones (either, when neither is)
        cands = []
        for i in range(R):
            rec = self.rdata.payload[32 * i : 32 * i + 32]
            c = Signal(signed(SB), name=f"smin_c{i}")
            nz = Signal(name=f"smin_nz{i}")
            m.d.sync += [c.eq(rec[16:32].as_signed()), nz.eq(rec[:16] != 0)]
            cands.append((nz, c))
        vq, fq = Signal(name="smin_v0"), Signal(name="smin_f0")
        m.d.sync += [vq.eq(mn_valid), fq.eq(mn_first)]
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
            m.d.sync += [v2.eq(vq), f2.eq(fq)]
            vq, fq = v2, f2
        nz0, c0 = cands[0]
        # s_min = SENT (no nonzero scale: golden's s_min = 0) needs no special case: every
        # pt is 0 then (mant = 0), and so is the output for any shift
        smin = Signal(signed(SB + 1))
        smin_m = Signal(signed(SB + 3))  # B - X - s_min: the key's shift is shift + this
        with m.If(vq):
            with m.If(fq):
                m.d.sync += smin.eq(Mux(nz0, c0, SENT))
            with m.Elif(nz0 & (c0 < smin)):
                m.d.sync += smin.eq(c0)
        m.d.sync += smin_m.eq((B - X) - smin)

        # ------------------------------------------------------------ key pipeline
        v_fire = Signal()
        k_first, k_last = Signal(), Signal()
        jp, jr = c_j[:plog], c_j[:rlog]
        rec_j = Array(rreg[32 * i : 32 * i + 32] for i in range(R))[jr] if R > 1 else rreg
        p_j = Array(preg[16 * i : 16 * i + 16] for i in range(PC))[jp]
        # S1
        p1 = Signal(P_MEM_BITS)
        mant1 = Signal(isa.SCALE_MANT_BITS)
        sh1 = Signal(signed(SB))  # the key's shift (S2 adds B - X - s_min)
        vv = [Signal(8 * LANES, name=f"v{i}") for i in (1, 2, 3)]
        ok = [Signal(name=f"kv{i}") for i in (1, 2, 3, 4)]
        fs = [Signal(name=f"kf{i}") for i in (1, 2, 3, 4)]
        ls = [Signal(name=f"kl{i}") for i in (1, 2, 3, 4, 5, 6, 7)]
        m.d.sync += [
            p1.eq(p_j),
            mant1.eq(rec_j[:16]),
            sh1.eq(rec_j[16:32].as_signed()),
            vv[0].eq(kvrow.unpack_lanes(m, self.rdata.payload, LANES, cfg)),  # int8 lanes
            ok[0].eq(v_fire),
            fs[0].eq(v_fire & k_first),
            ls[0].eq(v_fire & k_last),
        ]
        # S2: p * mant (DSP); the shift
        prod2 = Signal(P_MEM_BITS + isa.SCALE_MANT_BITS)
        # B - X + shift - s_min (s_min stays until the next query's min pass, which ends
        # several cycles after its last key's S2)
        shs = Signal(signed(SB + 4))
        m.d.comb += shs.eq(sh1 + smin_m)
        # shs < 0 <=> sh1 < -smin_m; shs > SH_HI <=> sh1 > SH_HI - smin_m (registers of
        # s_min, like smin_m)
        sh_lo, sh_hi = Signal(signed(SB + 4)), Signal(signed(SB + 4))
        m.d.sync += [sh_lo.eq(smin - (B - X)), sh_hi.eq(SH_HI - (B - X) + smin)]
        sh2 = Signal(range(SH_HI + 1))
        m.d.sync += [
            prod2.eq(p1 * mant1),
            sh2.eq(Mux(sh1 < sh_lo, 0, Mux(sh1 > sh_hi, SH_HI, shs[:6]))),
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
        # the MAC lanes: pt (S4) with v (S3, one cycle ahead into the B registers)
        accs, in_range = [], []
        for i in range(LANES):
            acc, fits = mac(
                m,
                platform,
                f"mac{i}",
                pt4,
                vv[2][8 * i : 8 * i + 8].as_signed(),
                fs[3],
                range_bits=ACC_LIM,
                b_lead=1,
            )
            accs.append(acc)
            in_range.append(fits)
        capture = ls[6]  # the query's last key is in P

        # ------------------------------------------------------------ hold and writer
        pend_addr = Signal(isa.ADDR_BITS + 1)  # output of the last key in flight
        pend_s = Signal(signed(SB + 3))
        last_pending = Signal()  # a last key is between S0 and the capture
        hold = [Signal(signed(32), name=f"hold{i}") for i in range(NG * OL)]
        hold_full = Signal()
        hold_addr = Signal(isa.ADDR_BITS + 1)
        # the requant controls of the query's shift s, from pend_s (stable long before
        # the capture): right shift min(s, 33), left shift min(-s, 31), and the bits
        # [31 - left, 31] of acc that must equal its sign for acc << left to fit int32
        c_sr, c_ls, c_neg, c_mask = Signal(range(34)), Signal(range(32)), Signal(), Signal(32)
        keep = Signal(range(32))  # 31 - left
        m.d.comb += keep.eq(31 - c_ls)
        m.d.sync += [
            c_sr.eq(Mux(pend_s < 0, 0, Mux(pend_s > 33, 33, pend_s))),
            c_ls.eq(Mux(pend_s >= 0, 0, Mux(-pend_s > 31, 31, -pend_s))),
            c_neg.eq(pend_s < 0),
            c_mask.eq(~((Const(1, 33) << keep) - 1)[:32]),
        ]
        hold_sr, hold_ls, hold_neg, hold_mask = (
            Signal(range(34)),
            Signal(range(32)),
            Signal(),
            Signal(32),
        )
        hold_g = Signal(range(NG + 1))  # next lane group to write
        hold_left = Signal(isa.DIM_BITS + 3)  # bytes of the query left to write
        with m.If(capture):
            m.d.sync += [hold[i].eq(accs[i][:32]) for i in range(LANES)]
            m.d.sync += [
                hold_full.eq(1),
                hold_addr.eq(pend_addr),
                hold_sr.eq(c_sr),
                hold_ls.eq(c_ls),
                hold_neg.eq(c_neg),
                hold_mask.eq(c_mask),
                hold_g.eq(0),
                hold_left.eq(hd4),
                last_pending.eq(0),
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
            with m.If(hold_left <= 4 * OL):
                m.d.sync += hold_full.eq(0)
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
                # ---------------------------------------------------- requests
                with m.If(rw.state == _MIN):
                    with m.If(self.read(m, r_s.ptr, Mux(rw.lastm, rw.left, R) * 4)):
                        m.d.sync += [*r_s.advance(4 * R), *rw.min_read()]
                        with m.If(rw.lastm):
                            m.d.sync += [
                                *rw.key_pass(),
                                r_phave.eq(0),
                                r_shave.eq(0),
                                *r_s.rewind(),
                                *r_v.rewind(),
                                *r_p.rewind(),
                            ]
                with m.Elif(rw.state == _STREAM):
                    with m.If((rw.j[:plog] == 0) & ~r_phave):
                        with m.If(self.read(m, r_p.ptr, Mux(rw.left > PC, PC, rw.left) * 2)):
                            m.d.sync += [*r_p.advance(2 * PC), r_phave.eq(1)]
                    with m.Elif((rw.j[:rlog] == 0) & ~r_shave):
                        with m.If(self.read(m, r_s.ptr, Mux(rw.left > R, R, rw.left) * 4)):
                            m.d.sync += [*r_s.advance(4 * R), r_shave.eq(1)]
                    with m.Else():
                        with m.If(self.read(m, r_v.ptr, vrow)):
                            m.d.sync += [
                                *r_v.advance(vrow),
                                *rw.key(),
                                r_phave.eq(0),
                                r_shave.eq(0),
                            ]
                            with m.If(rw.lastk):  # the query's last key: the next query
                                m.d.sync += [
                                    rw.state.eq(_MIN),
                                    r_p.base.eq(r_p.base + pstride),
                                    *r_s.rewind(),
                                ]
                                with m.If(~rw.tlast):
                                    m.d.sync += rw.next_row()
                                with m.Else():
                                    m.d.sync += rw.next_head()
                                    with m.If(rw.rlast):
                                        m.d.sync += [
                                            *rw.first_repeat(),
                                            r_v.base.eq(r_v.base + vstride),
                                            *r_s.next_base(sstride),
                                        ]
                                    with m.If(rw.hlast):
                                        m.d.sync += rw.state.eq(_END)

                # ---------------------------------------------------- responses
                with m.If(~c_wait0):
                    m.d.sync += [c_wait.eq(c_wait - 1), c_wait0.eq(c_wait == 1)]
                with m.If(cw.state == _MIN):
                    m.d.comb += [
                        self.rdata.ready.eq(1),
                        mn_valid.eq(self.rdata.valid),
                        mn_first.eq(c_j == 0),
                    ]
                    with m.If(self.rdata.valid):
                        m.d.sync += [c_j.eq(c_j + R), *cw.min_read()]
                        with m.If(cw.lastm):
                            m.d.sync += [
                                *cw.key_pass(),
                                c_needp.eq(1),
                                c_needs.eq(1),
                                c_wait.eq(rlog + 2),
                                c_wait0.eq(0),
                            ]
                with m.Elif(cw.state == _STREAM):
                    with m.If(c_needp):
                        m.d.comb += self.rdata.ready.eq(1)
                        with m.If(self.rdata.valid):
                            m.d.sync += [preg.eq(self.rdata.payload), c_needp.eq(0)]
                    with m.Elif(c_needs):
                        m.d.comb += self.rdata.ready.eq(1)
                        with m.If(self.rdata.valid):
                            m.d.sync += [rreg.eq(self.rdata.payload), c_needs.eq(0)]
                    with m.Else():
                        can_last = ~hold_full & ~last_pending
                        m.d.comb += self.rdata.ready.eq(c_wait0 & (~cw.lastk | can_last))
                        with m.If(self.rdata.valid & self.rdata.ready):
                            m.d.comb += [
                                v_fire.eq(1),
                                k_first.eq(c_j == 0),
                                k_last.eq(cw.lastk),
                            ]
                            m.d.sync += [
                                *cw.key(),
                                # key c_j + 1 starts a p chunk / a record chunk
                                c_needp.eq(c_j[:plog].all()),
                                c_needs.eq(c_j[:rlog].all()),
                            ]
                            with m.If(cw.lastk):
                                m.d.sync += [
                                    c_j.eq(0),
                                    cw.state.eq(_MIN),
                                    last_pending.eq(1),
                                    pend_addr.eq(c_d.ptr),
                                    pend_s.eq(smin + (P + X - B - IF)),
                                ]
                                with m.If(~cw.tlast):
                                    m.d.sync += [*cw.next_row(), *c_d.advance(dstride)]
                                with m.Else():
                                    m.d.sync += [
                                        *cw.next_head(),
                                        *c_d.next_base(hd4),
                                    ]
                                    with m.If(cw.hlast):
                                        m.d.sync += cw.state.eq(_END)
                with m.Else():
                    # every response consumed; wait for the pipeline and the last writes
                    with m.If(~ok[0] & ~ok[1] & ~ok[2] & ~ok[3] & ~last_pending & ~writer_busy):
                        with m.If(ovf):
                            self.finish(m, ErrorCode.BAD_OPERAND)
                        with m.Else():
                            self.finish(m, dst_err)
        with m.If(passed["CHECK"]):
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
