"""PV engine: attention output ``o = P . V`` with per-key V scales (golden:
``Executor._op_pv`` -> ``golden.model.op_pv``, item 6 "pv" of its module docstring).

p is uint16 [heads, rows, keys] (masked entries are forced to 0: query t sees keys j <=
L_t = keys - rows + t); the codes and scale record of KV head g, key j are at
``v + (g*kv_ld + j)*head_dim`` (int8 [head_dim]) and ``v_scale + (g*kv_ld + j)*4``;
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
KV heads are processed in order; per KV head g:

* scale pass: the ``keys`` scale records are read in whole beats (``R = dma_bytes/4`` =
  32 records per read) into the scale buffer (one row of R records per beat, a
  ``ceil((max_keys+1)/R)``-row memory, two read ports), while a masked min tree over the
  beat's lanes accumulates ``base`` = min shift over keys j <= keys - rows with nonzero
  mant: s_min of query 0.
* key pass, for each of the n_rep query heads h of g and each query t = 0..rows-1: the
  engine reads p's row (h, t) up to key L_t in beats of ``dma_bytes/2`` = 64 values and,
  per key, the key's V row (one read of head_dim <= dma_bytes bytes), and takes the
  key's record from the scale buffer (read port 1, addressed one cycle ahead). s_min of
  query t+1 = min(s_min(t), record L_{t+1}) (read port 2): the prefix minimum grows by
  one key per query, so no second pass over the records is needed.

The request side issues this sequence (scale beats, then per query: a p beat before each
block of 64 keys, a V row per key) as fast as ``rd.ready`` allows, running ahead of the
responses; the response side walks the same sequence:

* S0 (V row accepted): ``p_j * mant_j`` (16x16) and the shift ``B - X + shift_j - s_min``
  clamped to [0, 33] (p*mant < 2^32, so any shift from 33 on gives 0 like golden's 62);
* S1: ``pt = rhu(prod, sh)`` (``PT_BITS`` = 23 bits unsigned for the default config);
* S2: ``head_dim`` lanes (``max_head_dim`` MACs) ``acc_i += pt * v_i``, signed
  ``ACC_BITS`` = bit_length(max_keys * 128 * pt_max) + 1 bits (42 for 2048 keys: exact for
  any data; the int32 check follows); on the query's last key the sums go to the output
  hold register (int32 per lane) with an overflow check, and the lanes restart from 0, so
  the next query streams on without a bubble.
* writer: ``requant`` (``hw.ops.base.requant``, unit multiplier) of ``dma_bytes/4`` = 32
  lanes per beat, ceil(head_dim*4/dma_bytes) writes per query, overlapped with the next
  query's keys. A query's last key is accepted only when the hold register is free (and
  no other last key is in S0-S2).

Cycles
======
The request side issues one read per cycle; with a memory that never stalls the
response side keeps up, so a command takes (``expected_cycles``)

    N = kv_heads * ceil(keys/32) + heads * sum_{t<rows} ((L_t + 1) + ceil((L_t + 1)/64))
    cycles = N + latency + 5 + ceil(head_dim*4/dma_bytes)

(2 check cycles, the last response's memory latency, S1, S2, the last query's writes and
the done cycle), as long as every query has L_t >= nw + 1 (nw = ceil(head_dim*4/dma_bytes));
a shorter query (the first ones of a prefill with rows == keys) waits for the hold
register, at most nw + 1 - L_t cycles (measured: heads 2, rows = keys = 32, head_dim 96:
1146 cycles, formula 1131). ``sim/test_op_pv.py`` measures this exactly with
a 1-cycle memory. Per key: one V row (head_dim MACs) per cycle plus 1/64 of a cycle for
p; per KV head 1/32 cycle per key for its records. BitNet-0.73B decode (16 heads,
head_dim 96, 1 query over 2048 keys, kv_heads = heads): N = 16*(2048 + 32) + 16*64 =
34304, 34313 cycles at latency 1 (2144 per head: 0.955 keys per cycle).

Differences from the golden backend
===================================
* ``max_keys`` (default 2048: BitNet-0.73B's context) bounds keys: the scale buffer holds
  one KV head's records; keys > max_keys -> BAD_DIM (golden: up to softmax max_len).
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

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory

from golden import isa
from golden.config import DatapathConfig
from golden.fixed import rhu as golden_rhu
from golden.isa import ErrorCode, Opcode

from .base import Engine, requant

P_MEM_BITS = 16  # p is uint16 in memory (any 16-bit value)
V_BITS = 8  # V codes: int8
SH_HI = 2 * 16 + 1  # p*mant < 2^32: rhu by >= 33 gives 0

# request/response walk of the two sides
_SCALE, _STREAM, _END = 0, 1, 2


def n_requests(heads: int, kv_heads: int, rows: int, keys: int, dma_bytes: int) -> int:
    """N of the module docstring: the reads of one command (scale beats per KV head; per
    query a p beat per dma_bytes/2 keys and a V row per visible key)."""
    n = kv_heads * -(-keys // (dma_bytes // 4))
    for t in range(rows):
        k = keys - rows + t + 1
        n += heads * (k + -(-k // (dma_bytes // 2)))
    return n


def expected_cycles(
    heads: int, kv_heads: int, rows: int, keys: int, head_dim: int, dma_bytes: int, latency: int = 1
) -> int:
    """Cycles of one command without memory stalls (module docstring; exact when every
    query has L_t >= nw + 1)."""
    return (
        n_requests(heads, kv_heads, rows, keys, dma_bytes)
        + latency
        + 5
        + -(-head_dim * 4 // dma_bytes)
    )


class PVEngine(Engine):
    OPCODE = Opcode.PV
    LIMITS = ("keys <= max_keys", "head_dim <= max_head_dim")

    def __init__(
        self,
        cfg: DatapathConfig,
        dma_bytes: int,
        *,
        max_keys: int = 2048,
        max_head_dim: int | None = None,
    ):
        if dma_bytes < 8 or dma_bytes & (dma_bytes - 1):
            raise ValueError(f"dma_bytes: {dma_bytes} is not a power of two >= 8")
        max_head_dim = dma_bytes if max_head_dim is None else max_head_dim
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
        self.max_keys = max_keys
        self.max_head_dim = max_head_dim
        b, x = cfg.requant.mult_bits, cfg.forward.pv_extra_bits
        # smallest shift of a contributing key (its shift >= s_min), so the largest pt
        self.pt_max = int(
            golden_rhu(((1 << P_MEM_BITS) - 1) * ((1 << isa.SCALE_MANT_BITS) - 1), max(b - x, 0))
        )
        self.pt_bits = self.pt_max.bit_length()
        self.acc_bits = (max_keys * (1 << (V_BITS - 1)) * self.pt_max).bit_length() + 1
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        W = self.signature.dma_bytes
        RPB = W // isa.SCALE_RECORD_BYTES  # scale records per beat
        PPB = W // 2  # p values per beat
        OPB = W // 4  # int32 outputs per write
        rpb_log, ppb_log = RPB.bit_length() - 1, PPB.bit_length() - 1
        LANES = self.max_head_dim
        NH = -(-LANES // OPB) * OPB  # hold lanes: whole writes
        B, X, P = cfg.requant.mult_bits, cfg.forward.pv_extra_bits, cfg.softmax.out_bits
        IF, OUT_BITS = cfg.norm.in_frac_bits, cfg.norm.in_bits
        ACC_LIM = cfg.requant.in_bits  # golden's requantize takes int32 acc only
        SENT = 1 << (isa.SCALE_SHIFT_BITS - 1)  # "no nonzero scale yet": above every shift
        a = self.op_args
        chk = self.checks(m, registered=True)
        err_dims = chk.error(stop="p")
        err_inputs = chk.error(start="p", stop="acc range")
        err_dst = chk.error(start="acc range")

        # ------------------------------------------------------------ command constants
        n_rep = Signal(isa.HEADS_BITS)
        lim0 = Signal(isa.ROWS_BITS)  # L_0 = keys - rows
        n_sbeats = Signal(isa.ROWS_BITS)  # scale beats per KV head
        vstride = Signal(isa.ROWS_BITS + isa.DIM_BITS)  # kv_ld * head_dim
        sstride = Signal(isa.ROWS_BITS + 2)  # kv_ld * 4
        pstride = Signal(isa.ROWS_BITS + 1)  # keys * 2
        dstride = Signal(isa.HEADS_BITS + isa.DIM_BITS + 2)  # heads * head_dim * 4
        hd4 = Signal(isa.DIM_BITS + 2)
        dst_err = Signal(ErrorCode)
        ovf = Signal()  # an acc left int32 (sticky)
        dry = Signal()  # dst is bad: compute, do not write

        # ------------------------------------------------------------ scale buffer
        depth = self.max_keys // RPB + 1  # + the row of index keys (port 2 overrun)
        m.submodules.sbuf = sbuf = Memory(shape=unsigned(RPB * 32), depth=depth, init=[])
        wp = sbuf.write_port()
        rp1 = sbuf.read_port(transparent_for=(wp,))  # key j of the stream
        rp2 = sbuf.read_port(transparent_for=(wp,))  # key L_{t+1}: next query's s_min
        m.d.comb += [rp1.en.eq(1), rp2.en.eq(1)]

        # ------------------------------------------------------------ request side
        r_state = Signal(2)
        r_g = Signal(isa.HEADS_BITS)
        r_r = Signal(isa.HEADS_BITS)
        r_t = Signal(isa.ROWS_BITS)
        r_j = Signal(isa.ROWS_BITS)
        r_L = Signal(isa.ROWS_BITS)
        r_phave = Signal()
        r_sleft = Signal(isa.ROWS_BITS)
        r_sbase = Signal(isa.ADDR_BITS + 1)
        r_sptr = Signal(isa.ADDR_BITS + 1)
        r_vbase = Signal(isa.ADDR_BITS + 1)
        r_vptr = Signal(isa.ADDR_BITS + 1)
        r_prow = Signal(isa.ADDR_BITS + 1)
        r_pptr = Signal(isa.ADDR_BITS + 1)

        # ------------------------------------------------------------ response side
        c_state = Signal(2)
        c_g = Signal(isa.HEADS_BITS)
        c_r = Signal(isa.HEADS_BITS)
        c_t = Signal(isa.ROWS_BITS)
        c_j = Signal(isa.ROWS_BITS)
        c_L = Signal(isa.ROWS_BITS)
        c_phave = Signal()
        c_srow = Signal(range(depth + 1))
        base_min = Signal(signed(isa.SCALE_SHIFT_BITS + 1))
        cur_min = Signal(signed(isa.SCALE_SHIFT_BITS + 1))  # s_min of the current query
        c_dst_head = Signal(isa.ADDR_BITS + 1)
        c_dst = Signal(isa.ADDR_BITS + 1)
        preg = Signal(8 * W)  # p beat, shifted one value per key
        c_j_next = Signal(isa.ROWS_BITS)
        c_t_next = Signal(isa.ROWS_BITS)
        m.d.comb += [c_j_next.eq(c_j), c_t_next.eq(c_t)]
        m.d.comb += [
            rp1.addr.eq(c_j_next >> rpb_log),
            rp2.addr.eq((lim0 + c_t_next + 1) >> rpb_log),
        ]
        rec = rp1.data.word_select(c_j[:rpb_log], 32)
        rec_mant, rec_shift = rec[:16], rec[16:32].as_signed()
        rec2 = rp2.data.word_select((lim0 + c_t + 1)[:rpb_log], 32)
        rec2_mant, rec2_shift = rec2[:16], rec2[16:32].as_signed()
        s_eff = Signal(signed(isa.SCALE_SHIFT_BITS + 1))  # golden: "never" -> 0
        m.d.comb += s_eff.eq(Mux(cur_min == SENT, 0, cur_min))

        # ------------------------------------------------------------ pipeline
        v_fire = Signal()
        s1_valid, s1_last = Signal(), Signal()
        s1_prod = Signal(P_MEM_BITS + isa.SCALE_MANT_BITS)
        s1_sh = Signal(range(SH_HI + 1))
        s1_v = Signal(8 * LANES)
        s2_valid, s2_last = Signal(), Signal()
        s2_pt = Signal(self.pt_bits)
        s2_v = Signal(8 * LANES)
        acc = [Signal(signed(self.acc_bits), name=f"acc{i}") for i in range(LANES)]
        pend_addr = Signal(isa.ADDR_BITS + 1)  # output of the last key in flight
        pend_s = Signal(signed(isa.SCALE_SHIFT_BITS + 3))
        hold = [Signal(signed(ACC_LIM), name=f"hold{i}") for i in range(NH)]
        hold_full = Signal()
        hold_addr = Signal(isa.ADDR_BITS + 1)
        hold_left = Signal(isa.DIM_BITS + 3)
        hold_s = Signal(signed(isa.SCALE_SHIFT_BITS + 3))

        # S0 -> S1 (registered every cycle; s1_valid says whether it is a key)
        sh_raw = Signal(signed(isa.SCALE_SHIFT_BITS + 4))
        m.d.comb += sh_raw.eq((B - X) + rec_shift - s_eff)
        m.d.sync += [
            s1_valid.eq(v_fire),
            s1_prod.eq(preg[:P_MEM_BITS] * rec_mant),
            s1_sh.eq(Mux(sh_raw < 0, 0, Mux(sh_raw > SH_HI, SH_HI, sh_raw))),
            s1_v.eq(self.rdata.payload[: 8 * LANES]),
        ]
        # S1 -> S2: round half up (sh = 0: exact)
        half = Signal(P_MEM_BITS + isa.SCALE_MANT_BITS + 1)
        m.d.comb += half.eq((Const(1, SH_HI + 1) << s1_sh) >> 1)
        m.d.sync += [
            s2_valid.eq(s1_valid),
            s2_last.eq(s1_last),
            s2_pt.eq((s1_prod + half) >> s1_sh),
            s2_v.eq(s1_v),
        ]
        # S2: MAC lanes; the query's last key moves the sums to the hold register
        lo, hi = -(1 << (ACC_LIM - 1)), (1 << (ACC_LIM - 1)) - 1
        sums, over = [], []
        for i in range(LANES):
            s = Signal(signed(self.acc_bits), name=f"sum{i}")
            m.d.comb += s.eq(acc[i] + s2_pt * s2_v[8 * i : 8 * i + 8].as_signed())
            sums.append(s)
            over.append((s < lo) | (s > hi))
        with m.If(s2_valid):
            with m.If(s2_last):
                m.d.sync += [a_.eq(0) for a_ in acc]
                m.d.sync += [hold[i].eq(sums[i] if i < LANES else 0) for i in range(NH)]
                m.d.sync += [
                    hold_full.eq(1),
                    hold_addr.eq(pend_addr),
                    hold_s.eq(pend_s),
                    hold_left.eq(hd4),
                ]
                with m.If(Cat(*over).any()):
                    m.d.sync += ovf.eq(1)
            with m.Else():
                m.d.sync += [acc[i].eq(sums[i]) for i in range(LANES)]

        # writer: OPB lanes per write, then shift the hold register down
        ys = []
        for i in range(OPB):
            y = requant(m, hold[i], Const(1, 1), hold_s, OUT_BITS, cfg.requant.shift_max, f"rq{i}")
            y32 = Signal(signed(32), name=f"out{i}")
            m.d.comb += y32.eq(y)
            ys.append(y32)
        suppress = dry | ovf
        wr_len = Signal(range(W + 1))
        m.d.comb += [
            wr_len.eq(Mux(hold_left > W, W, hold_left)),
            self.wr.valid.eq(hold_full & ~suppress),
            self.wr.payload.addr.eq(hold_addr),
            self.wr.payload.len.eq(wr_len),
            self.wr.payload.data.eq(Cat(*ys)),
        ]
        with m.If(hold_full & (suppress | self.wr.ready)):
            m.d.sync += [hold[i].eq(hold[i + OPB] if i + OPB < NH else 0) for i in range(NH)]
            m.d.sync += [hold_addr.eq(hold_addr + W), hold_left.eq(hold_left - wr_len)]
            with m.If(hold_left <= W):
                m.d.sync += hold_full.eq(0)

        with m.FSM():
            passed = self.check_states(m, ("CHECK", err_dims), ("CHECK_ADDR", err_inputs))

            with m.State("RUN"):
                # ---------------------------------------------------- requests
                with m.If(r_state == _SCALE):
                    m.d.comb += [
                        self.rd.valid.eq(1),
                        self.rd.payload.addr.eq(r_sptr),
                        self.rd.payload.len.eq(
                            Mux(r_sleft > RPB, RPB, r_sleft) * isa.SCALE_RECORD_BYTES
                        ),
                    ]
                    with m.If(self.rd.ready):
                        m.d.sync += [r_sptr.eq(r_sptr + W), r_sleft.eq(r_sleft - RPB)]
                        with m.If(r_sleft <= RPB):
                            m.d.sync += [
                                r_state.eq(_STREAM),
                                r_j.eq(0),
                                r_phave.eq(0),
                                r_vptr.eq(r_vbase),
                            ]
                with m.Elif(r_state == _STREAM):
                    with m.If((r_j[:ppb_log] == 0) & ~r_phave):
                        left = r_L + 1 - r_j
                        m.d.comb += [
                            self.rd.valid.eq(1),
                            self.rd.payload.addr.eq(r_pptr),
                            self.rd.payload.len.eq(Mux(left > PPB, PPB, left) * 2),
                        ]
                        with m.If(self.rd.ready):
                            m.d.sync += [r_pptr.eq(r_pptr + W), r_phave.eq(1)]
                    with m.Else():
                        m.d.comb += [
                            self.rd.valid.eq(1),
                            self.rd.payload.addr.eq(r_vptr),
                            self.rd.payload.len.eq(a.head_dim),
                        ]
                        with m.If(self.rd.ready):
                            m.d.sync += [
                                r_vptr.eq(r_vptr + a.head_dim),
                                r_j.eq(r_j + 1),
                                r_phave.eq(0),
                            ]
                            with m.If(r_j == r_L):  # the query's last key
                                m.d.sync += [
                                    r_j.eq(0),
                                    r_vptr.eq(r_vbase),
                                    r_prow.eq(r_prow + pstride),
                                    r_pptr.eq(r_prow + pstride),
                                ]
                                with m.If(r_t != a.rows - 1):
                                    m.d.sync += [r_t.eq(r_t + 1), r_L.eq(r_L + 1)]
                                with m.Else():
                                    m.d.sync += [r_t.eq(0), r_L.eq(lim0)]
                                    with m.If(r_r != n_rep - 1):
                                        m.d.sync += r_r.eq(r_r + 1)
                                    with m.Else():
                                        m.d.sync += r_r.eq(0)
                                        with m.If(r_g != a.kv_heads - 1):
                                            m.d.sync += [
                                                r_g.eq(r_g + 1),
                                                r_state.eq(_SCALE),
                                                r_vbase.eq(r_vbase + vstride),
                                                r_vptr.eq(r_vbase + vstride),
                                                r_sbase.eq(r_sbase + sstride),
                                                r_sptr.eq(r_sbase + sstride),
                                                r_sleft.eq(a.keys),
                                            ]
                                        with m.Else():
                                            m.d.sync += r_state.eq(_END)

                # ---------------------------------------------------- responses
                with m.If(c_state == _SCALE):
                    m.d.comb += self.rdata.ready.eq(1)
                    # lanes that count for s_min(0): key <= keys - rows, mant != 0
                    cand = []
                    for i in range(RPB):
                        r_ = self.rdata.payload[32 * i : 32 * i + 32]
                        c = Signal(signed(isa.SCALE_SHIFT_BITS + 1), name=f"smin_in{i}")
                        m.d.comb += c.eq(
                            Mux(
                                (Cat(Const(i, rpb_log), c_srow) <= lim0) & (r_[:16] != 0),
                                r_[16:32].as_signed(),
                                SENT,
                            )
                        )
                        cand.append(c)
                    while len(cand) > 1:  # min tree
                        nxt = []
                        for k in range(0, len(cand) - 1, 2):
                            c = Signal(signed(isa.SCALE_SHIFT_BITS + 1))
                            m.d.comb += c.eq(Mux(cand[k] < cand[k + 1], cand[k], cand[k + 1]))
                            nxt.append(c)
                        if len(cand) % 2:
                            nxt.append(cand[-1])
                        cand = nxt
                    new_base = Signal(signed(isa.SCALE_SHIFT_BITS + 1))
                    m.d.comb += new_base.eq(Mux(cand[0] < base_min, cand[0], base_min))
                    m.d.comb += [wp.addr.eq(c_srow), wp.data.eq(self.rdata.payload[: RPB * 32])]
                    with m.If(self.rdata.valid):
                        m.d.comb += wp.en.eq(1)
                        m.d.sync += [c_srow.eq(c_srow + 1), base_min.eq(new_base)]
                        with m.If(c_srow == n_sbeats - 1):
                            m.d.sync += [
                                c_state.eq(_STREAM),
                                cur_min.eq(new_base),
                                c_j.eq(0),
                                c_t.eq(0),
                                c_L.eq(lim0),
                                c_phave.eq(0),
                            ]
                with m.Elif(c_state == _STREAM):
                    with m.If((c_j[:ppb_log] == 0) & ~c_phave):
                        m.d.comb += self.rdata.ready.eq(1)
                        with m.If(self.rdata.valid):
                            m.d.sync += [preg.eq(self.rdata.payload), c_phave.eq(1)]
                    with m.Else():
                        is_last = c_j == c_L
                        can_last = ~hold_full & ~(s1_valid & s1_last) & ~(s2_valid & s2_last)
                        m.d.comb += self.rdata.ready.eq(~is_last | can_last)
                        with m.If(self.rdata.valid & self.rdata.ready):
                            m.d.comb += [v_fire.eq(1), c_j_next.eq(c_j + 1)]
                            m.d.sync += [
                                s1_last.eq(is_last),
                                preg.eq(preg >> P_MEM_BITS),
                                c_phave.eq(0),
                                c_j.eq(c_j + 1),
                            ]
                            with m.If(is_last):
                                m.d.comb += c_j_next.eq(0)
                                m.d.sync += [
                                    c_j.eq(0),
                                    pend_addr.eq(c_dst),
                                    pend_s.eq(s_eff + (P + X - B - IF)),
                                ]
                                with m.If(c_t != a.rows - 1):
                                    m.d.comb += c_t_next.eq(c_t + 1)
                                    m.d.sync += [
                                        c_t.eq(c_t + 1),
                                        c_L.eq(c_L + 1),
                                        c_dst.eq(c_dst + dstride),
                                    ]
                                    with m.If((rec2_mant != 0) & (rec2_shift < cur_min)):
                                        m.d.sync += cur_min.eq(rec2_shift)
                                with m.Else():
                                    m.d.comb += c_t_next.eq(0)
                                    m.d.sync += [
                                        c_t.eq(0),
                                        c_L.eq(lim0),
                                        c_dst_head.eq(c_dst_head + hd4),
                                        c_dst.eq(c_dst_head + hd4),
                                        cur_min.eq(base_min),
                                    ]
                                    with m.If(c_r != n_rep - 1):
                                        m.d.sync += c_r.eq(c_r + 1)
                                    with m.Else():
                                        m.d.sync += c_r.eq(0)
                                        with m.If(c_g != a.kv_heads - 1):
                                            m.d.sync += [
                                                c_g.eq(c_g + 1),
                                                c_state.eq(_SCALE),
                                                c_srow.eq(0),
                                                base_min.eq(SENT),
                                            ]
                                        with m.Else():
                                            m.d.sync += c_state.eq(_END)
                with m.Else():
                    # every response consumed; wait for the pipeline and the last writes
                    with m.If(~s1_valid & ~s2_valid & ~hold_full):
                        with m.If(ovf):
                            self.finish(m, ErrorCode.BAD_OPERAND)
                        with m.Else():
                            self.finish(m, dst_err)
        with m.If(passed["CHECK"]):
            m.d.sync += [
                n_rep.eq(a.heads // a.kv_heads),
                lim0.eq(a.keys - a.rows),
                n_sbeats.eq((a.keys + RPB - 1) >> rpb_log),
                vstride.eq(a.kv_ld * a.head_dim),
                sstride.eq(a.kv_ld * 4),
                pstride.eq(a.keys * 2),
                dstride.eq(a.heads * a.head_dim * 4),
                hd4.eq(a.head_dim * 4),
            ]
        with m.If(passed["CHECK_ADDR"]):
            m.d.sync += [
                dst_err.eq(err_dst),
                dry.eq(err_dst != ErrorCode.NONE),
                ovf.eq(0),
                r_state.eq(_SCALE),
                r_g.eq(0),
                r_r.eq(0),
                r_t.eq(0),
                r_j.eq(0),
                r_L.eq(lim0),
                r_phave.eq(0),
                r_sleft.eq(a.keys),
                r_sbase.eq(a.v_scale),
                r_sptr.eq(a.v_scale),
                r_vbase.eq(a.v),
                r_vptr.eq(a.v),
                r_prow.eq(a.p),
                r_pptr.eq(a.p),
                c_state.eq(_SCALE),
                c_g.eq(0),
                c_r.eq(0),
                c_t.eq(0),
                c_j.eq(0),
                c_L.eq(lim0),
                c_phave.eq(0),
                c_srow.eq(0),
                base_min.eq(SENT),
                c_dst_head.eq(a.dst),
                c_dst.eq(a.dst),
            ]
        return m
