"""Online softmax in RTL (golden: ``golden/softmax.py``, bit for bit ``softmax_fx``).

``lanes`` independent rows are processed side by side (e.g. the heads of one query: same
length, per-element mask), one element of every row per beat. Per lane, exactly the
golden "online pass / reciprocal / output pass":

* pass 1 (one beat per cycle): ``t = x * L2E``, ``c = ceil(t)``, running max ``M`` in
  integer base-2 units, ``d = M * 2^TF - t``, exp unit ``(mant, n) = exp2_neg_fx(d)``
  (ROM of ``golden.softmax.exp_lut`` words {T[a], T[a] - T[a+1]} + interpolation),
  ``s = (s >> (M_new - M_old)) + rhu(mant * 2^(SF-E), n)``; the row is written to an
  internal buffer (``max_len`` x lanes x (in_bits + 1 mask bit); UltraRAM when it is
  large);
* reciprocal: ``b = bit_length(s)``, ``s_m = (s << (RF+1)) >> b`` (= the golden's top
  RF+1 bits), ``R = (2^(2RF+1) + s_m) // (2 s_m)`` by a restoring divider, one quotient
  bit per cycle (RF + 1 cycles, no multiplier);
* pass 2: the buffer is read back through the same pipeline with the final M:
  ``p = min(rhu(mant * R, E + n + b - 1 + RF - SF - P), 2^P - 1)``, masked elements 0.

Micro-architecture (per lane, one element per cycle; every stage at most six LUT levels
for 250 MHz on UltraScale+, every multiplier registered around its DSP):

* R1 the element (stream in pass 1, buffer in pass 2); R2 ``t = x * L2E`` (DSP);
  R3 ``c = ceil(t / 2^TF)`` and ``ceil(t / 2^D)`` (D = TF - Lb - Ib: the fraction bits the
  exp unit drops only matter as a borrow); R4 the running max and the rescale shift
  ``M_new - M_old`` (a row's first element: a shift that clears the sum); R5 ``d``'s
  integer part n, table address a and interpolation weight w; R6 the table word;
  R7 ``(T[a] - T[a+1]) * w`` (DSP); R8 ``mant``;
* R9 one product for both passes, ``mant * K`` (DSP) with K = 2^(SF-E) in pass 1 and R
  in pass 2, and its shift (n, or n + b - 1 + E + RF - SF - P); R10-R11 one rounding
  shifter for both, ``rhu(v, sh) = (((2v) >> sh) + 1) >> 1`` (a barrel shifter, then an
  increment): the pass-1 term, or the saturated, masked probability (the output register);
* the sum register: ``s = (s >> k) + term``, ``sum_width`` = bit_length(max_len * 2^SF)
  bits (the most a row of max_len terms <= 2^SF reaches).

The reciprocal's front end is shared by the lanes: NORM takes one lane per cycle through
a bit-length / normalize pipeline (``lanes`` + 4 cycles); every lane has its own divider.

Shift amounts are clamped where the result no longer changes (the output shifter at
max(E + RF, SF) + 2, the sum shifter at sum_width), so the shifters stay narrow.

Streams (``amaranth.lib.stream``; a beat transfers when valid & ready)
----------------------------------------------------------------------
``x`` (in)  ``{data: lanes x signed(in_bits), mask: lanes x 1, last}``: element j of each
    row (Q.IF logits); ``mask[l] = 1``: the element takes part (0: skipped, output 0;
    a causal mask is the host's ``golden.softmax.causal_mask``). ``last`` ends the rows.
    A row is at most ``max_len`` elements: element max_len - 1 ends it (what follows
    starts a new row).
``p`` (out) ``{data: lanes x unsigned(out_bits), last}``: the probabilities (UQ0.P) of
    element j, in order; ``last`` on the row's final element.

A new row is accepted once the previous one's pass 2 has been issued (its outputs may
still be in the pipeline). The whole pipeline freezes while ``p`` holds an unaccepted
beat.

Cycle count (no stalls; rows of n elements): ``row_cycles(n) = 2n + RF + lanes + 17`` per
row back to back (n accept cycles, ``DRAIN`` = 11 to finish the sum, lanes + 4 normalize,
RF + 1 divide, n buffer reads, 1 gap); one row from its first input beat to its last
output beat, both included: ``expected_cycles(n) = 2n + RF + lanes + 28`` (``LATENCY`` =
12: from the last read issue to its output beat).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, SoftmaxConfig
from golden.softmax import PROB_BOUND_MAX_LEN, exp_lut, log2e_fx
from hw.beats import check_lanes, lanes_layout

# Rows processed side by side when the instantiating code does not say (SoftmaxConfig
# has no lane count: it is a throughput choice of the instance).
DEFAULT_LANES = 4
# Longest row buffered by default: the longest for which golden.softmax states its bound.
DEFAULT_MAX_LEN = PROB_BOUND_MAX_LEN

DRAIN = 12  # cycles after the last pass-1 accept until the sum is final
LATENCY = 12  # pass 2: cycles from the last read issue to its output beat, inclusive
NORM_EXTRA = 4  # the shared normalize pipeline: lanes + NORM_EXTRA cycles
# Row buffers of at least this many bits are UltraRAM (Yosys maps them to URAM288).
URAM_MIN_BITS = 1 << 16


def row_cycles(n: int, cfg: SoftmaxConfig = DEFAULT.softmax, lanes: int = DEFAULT_LANES) -> int:
    """Cycles per row of n elements when rows follow back to back (no stalls)."""
    return n + DRAIN + (lanes + NORM_EXTRA) + (cfg.recip_frac_bits + 1) + n + 1


def expected_cycles(
    n: int, cfg: SoftmaxConfig = DEFAULT.softmax, lanes: int = DEFAULT_LANES
) -> int:
    """One row of n elements, no stalls: first input beat to last output beat."""
    return n + DRAIN + (lanes + NORM_EXTRA) + (cfg.recip_frac_bits + 1) + n + LATENCY


def x_layout(cfg: SoftmaxConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(signed(cfg.in_bits), lanes, mask=data.ArrayLayout(unsigned(1), lanes))


def p_layout(cfg: SoftmaxConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(unsigned(cfg.out_bits), lanes)


def sum_width(cfg: SoftmaxConfig, max_len: int) -> int:
    """Bits of the running sum: a row of max_len terms <= 2^SF stays below
    (max_len + 1) * 2^SF."""
    return min(cfg.sum_bits, (max_len << cfg.sum_frac_bits).bit_length())


def _ceil_shift(v, s: int):
    """ceil(v / 2^s) of a signed value: (v + 2^s - 1) >> s (one carry chain)."""
    if s == 0:
        return v
    return (v + ((1 << s) - 1)) >> s


def _mux4(sel, vals):
    """vals[sel] for a 2-bit select (one LUT6 level per output bit)."""
    vals = list(vals) + [vals[-1]] * (4 - len(vals))
    return Mux(sel[1], Mux(sel[0], vals[3], vals[2]), Mux(sel[0], vals[1], vals[0]))


def _shr(v, amt, width: int):
    """v >> amt as radix-4 stages (amt unsigned; bits of amt above the range give 0)."""
    cur, n = v, len(v)
    for i in range(0, len(amt), 2):
        sel = amt[i : i + 2]
        step = 1 << i
        if len(sel) == 1:
            cur = Mux(sel[0], cur >> step, cur)
        else:
            cur = _mux4(sel, [cur, cur >> step, cur >> (2 * step), cur >> (3 * step)])
        cur = cur[:n]
    return cur[:width]


def _clamp_hi(v, hi: int):
    return Mux(v > hi, hi, v)


def tree_bit_length(v):
    """``int.bit_length`` of an unsigned value: a log-depth search for the top set bit
    (an expression; ``hw.fixed.bit_length`` is the priority-encoder one, into a signal).
    Also ``hw.ops.qk``'s byte exponents."""
    w = 1 << max(0, (len(v) - 1).bit_length())
    cur = v if len(v) == w else Cat(v, Const(0, w - len(v)))
    idx = []  # index bits of the top set bit, MSB first
    while w > 1:
        half = w // 2
        hi = cur[half:w]
        nz = hi.any()
        idx.append(nz)
        cur = Mux(nz, hi, cur[:half])
        w = half
    if not idx:
        return v[0]
    return Mux(v.any(), Cat(*reversed(idx)) + 1, 0)


class Softmax(wiring.Component):
    """Online softmax over ``lanes`` rows in parallel (see module docstring)."""

    def __init__(
        self,
        cfg: SoftmaxConfig = DEFAULT.softmax,
        *,
        lanes: int = DEFAULT_LANES,
        max_len: int = DEFAULT_MAX_LEN,
    ):
        if not isinstance(cfg, SoftmaxConfig):
            raise ValueError(f"cfg: expected SoftmaxConfig, got {type(cfg).__name__}")
        check_lanes(lanes)
        if (
            isinstance(max_len, bool)
            or not isinstance(max_len, int)
            or not 1 <= max_len <= cfg.max_len
        ):
            raise ValueError(
                f"max_len: expected an int in [1, cfg.max_len = {cfg.max_len}], got {max_len!r}"
            )
        self.cfg = cfg
        self.lanes = lanes
        self.max_len = max_len
        super().__init__(
            {
                "x": In(stream.Signature(x_layout(cfg, lanes))),
                "p": Out(stream.Signature(p_layout(cfg, lanes))),
            }
        )

    def elaborate(self, platform):
        cfg, L = self.cfg, self.lanes
        TF, LB, IB = cfg.t_frac_bits, cfg.exp_lut_bits, cfg.exp_interp_bits
        E, SF, RF, P = cfg.exp_frac_bits, cfg.sum_frac_bits, cfg.recip_frac_bits, cfg.out_bits
        DROP = TF - LB - IB  # fraction bits of d the exp unit drops (floor): only a borrow
        l2e = log2e_fx(cfg)
        lut = [int(v) for v in exp_lut(cfg)]
        words = [{"base": lut[a], "drop": lut[a] - lut[a + 1]} for a in range(1 << LB)]
        word_layout = data.StructLayout(
            {
                "base": unsigned(max(w["base"] for w in words).bit_length()),
                "drop": unsigned(max(1, max(w["drop"] for w in words).bit_length())),
            }
        )
        d_bits = cfg.in_bits + cfg.log2e_frac_bits + 2  # d < 2^(in_bits + LF + 2)
        dh_bits = d_bits - DROP  # d >> DROP: {w, a, n}
        n_bits = d_bits - TF
        SUMW = sum_width(cfg, self.max_len)
        Q = -(-SUMW // 3)  # renormalization step of the sum: D + k <= Q + SUMW <= 4Q
        SW = SUMW + Q  # S < 2^(SUMW + D)
        VW = max(E + RF, SF) + 1  # mant * R <= 2^(E+RF); mant * 2^(SF-E) <= 2^SF
        SHMAX = VW + 1  # rhu(v < 2^VW, >= VW + 1) = 0
        K1 = 1 << (SF - E)  # pass-1 multiplier: the term is rhu(mant * 2^(SF-E), n)
        MW = max(RF + 1, K1.bit_length())
        SB_OFF = E - 1 + RF - SF - P  # output shift = n + b + SB_OFF

        m = Module()
        stall = Signal()
        m.d.comb += stall.eq(self.p.valid & ~self.p.ready)

        # ------------------------------------------------------------ row buffer
        elem = data.StructLayout({"x": signed(cfg.in_bits), "mask": 1})
        big = self.max_len * L * elem.size >= URAM_MIN_BITS
        buf = Memory(
            shape=data.ArrayLayout(elem, L),
            depth=self.max_len,
            init=[],
            attrs={"ram_style": "ultra"} if big else None,
        )
        m.submodules.buf = buf
        bw = buf.write_port()
        br = buf.read_port()
        rom = Memory(shape=word_layout, depth=1 << LB, init=words)
        m.submodules.rom = rom

        # ------------------------------------------------------------ control
        IN, DRAIN1, NORM, DIV, OUT = range(5)
        state = Signal(range(5))
        st_in = Signal(init=1)  # state == IN, a register of its own (x.ready's depth)
        last_idx = Signal(range(self.max_len))  # index of the row's last element (pass 1)
        wptr = Signal(range(self.max_len))
        rptr = Signal(range(self.max_len))
        div_left = Signal(range(RF + 2))
        norm_i = Signal(range(L + NORM_EXTRA + 1))
        rd_valid = Signal()  # buffer data arrives this cycle
        rd_first = Signal()
        rd_last = Signal()

        x_fire = Signal()
        row_end = Signal()
        m.d.comb += [
            self.x.ready.eq(st_in & ~stall & ~rd_valid),
            x_fire.eq(self.x.valid & self.x.ready),
            row_end.eq(self.x.payload.last | (wptr == self.max_len - 1)),
            bw.addr.eq(wptr),
            bw.en.eq(x_fire),
            br.addr.eq(rptr),
            br.en.eq(~stall),
        ]
        for lane in range(L):
            m.d.comb += [
                bw.data[lane].x.eq(self.x.payload.data[lane]),
                bw.data[lane].mask.eq(self.x.payload.mask[lane]),
            ]

        issue = Signal()
        m.d.comb += issue.eq((state == OUT) & ~stall)
        with m.If(~stall):
            m.d.sync += [rd_valid.eq(issue), rd_first.eq(rptr == 0), rd_last.eq(rptr == last_idx)]

        # ------------------------------------------------------------ pipeline
        # stage 0 (combinational): the input beat (pass 1) or the buffer word (pass 2)
        ctrl = data.StructLayout({"valid": 1, "pass2": 1, "first": 1, "last": 1})
        s0 = Signal(ctrl)
        m.d.comb += [
            s0.valid.eq(x_fire | rd_valid),
            s0.pass2.eq(rd_valid),
            s0.first.eq(Mux(rd_valid, rd_first, wptr == 0)),
            s0.last.eq(Mux(rd_valid, rd_last, row_end)),
        ]

        def reg(value, name, shape=None):
            r = Signal(value.shape() if shape is None else shape, name=name)
            with m.If(~stall):
                m.d.sync += r.eq(value)
            return r

        st = [s0]  # st[i]: control of stage register Ri
        for i in range(1, 13):
            st.append(reg(st[-1], f"s{i}", ctrl))

        sums, dshs, recips, shift_bases = [], [], [], []
        p_values = []
        for lane in range(L):
            sfx = f"_{lane}"
            # R1: the element
            x1 = reg(Mux(rd_valid, br.data[lane].x, self.x.payload.data[lane]), "x1" + sfx)
            k1 = reg(Mux(rd_valid, br.data[lane].mask, self.x.payload.mask[lane]), "mask1" + sfx)
            # R2: t = x * log2(e) (DSP, registered around)
            t2 = reg(x1 * l2e, "t2" + sfx, signed(cfg.in_bits + cfg.log2e_frac_bits + 2))
            k2 = reg(k1, "mask2" + sfx)
            # R3: c = ceil(t / 2^TF); th = ceil(t / 2^DROP) (d >> DROP = M 2^(TF-DROP) - th)
            c3 = reg(_ceil_shift(t2, TF), "c3" + sfx, signed(d_bits - TF + 1))
            th3 = reg(_ceil_shift(t2, DROP), "th3" + sfx, signed(dh_bits + 1))
            k3 = reg(k2, "mask3" + sfx)
            # R4: running max (pass 1); the max to use; the sum's rescale shift
            M = Signal(signed(d_bits - TF + 1), name="max" + sfx)
            have = Signal(name="have" + sfx)  # the row has an unmasked element
            s3 = st[3]
            have_before = Mux(s3.first, 0, have)
            gt = c3 > M
            m_new = Mux(~have_before | gt, c3, M)
            with m.If(~stall & s3.valid & ~s3.pass2):
                with m.If(k3):
                    m.d.sync += [M.eq(m_new), have.eq(1)]
                with m.Elif(s3.first):
                    m.d.sync += have.eq(0)
            m4 = reg(Mux(s3.pass2, M, m_new), "m4" + sfx, M.shape())
            inc = Signal(signed(d_bits - TF + 2), name="inc" + sfx)
            m.d.comb += inc.eq(c3 - M)
            # a row's first unmasked element clears the sum: shift by SUMW (clamped in R5)
            kk4 = reg(Mux(have_before, Mux(gt, inc, 0), SUMW), "kraw4" + sfx, inc.shape())
            th4 = reg(th3, "th4" + sfx)
            k4 = reg(k3, "mask4" + sfx)
            # R5: d >> DROP = {n, a, w}
            d5 = reg(((m4 << (LB + IB)) - th4)[:dh_bits], "d5" + sfx, unsigned(dh_bits))
            kk5 = reg(_clamp_hi(kk4, SUMW), "kshift5" + sfx, unsigned(SUMW.bit_length()))
            k5 = reg(k4, "mask5" + sfx)
            # R6: the table word (a LUT ROM read from the address register)
            port = rom.read_port(domain="comb")
            m.d.comb += port.addr.eq(d5[IB : IB + LB])
            word6 = reg(port.data, "word6" + sfx, word_layout)
            w6 = reg(d5[:IB], "w6" + sfx, unsigned(IB)) if IB else None
            n6 = reg(d5[IB + LB :], "n6" + sfx, unsigned(n_bits))
            # the sum is kept as S with s = S >> D (D <= Q): a rescale by k adds k to D and
            # renormalizes S by q*Q (q = 0..3) so that D stays <= Q; the term goes in
            # shifted left by the new D (a DSP), so the sum loop has no barrel shifter
            D = Signal(range(Q + 1), name="dsh" + sfx)
            clr = kk5 == SUMW  # the row's first unmasked element (or s >> k = 0)
            dt = Signal(range(Q + SUMW + 1), name="dt" + sfx)
            m.d.comb += dt.eq(D + kk5)
            q = Mux(dt > 3 * Q, 3, Mux(dt > 2 * Q, 2, Mux(dt > Q, 1, 0)))
            dn = Mux(clr, 0, dt - Q * q)
            with m.If(~stall & st[5].valid & ~st[5].pass2 & k5):
                m.d.sync += D.eq(dn)
            q6 = reg(Mux(clr, 4, q), "rq6" + sfx, unsigned(3))  # 4: clear
            dn6 = reg(dn, "dn6" + sfx, unsigned(Q.bit_length()))
            k6 = reg(k5, "mask6" + sfx)
            # R7: (T[a] - T[a+1]) * w (DSP); R8: mant = T[a] - rhu(., Ib)
            base7 = reg(word6.base, "base7" + sfx)
            if IB:
                prod7 = reg(word6.drop * w6, "dw7" + sfx)
                mant = base7 - ((prod7 + (1 << (IB - 1))) >> IB)
            else:
                mant = base7
            n7, k7 = reg(n6, "n7" + sfx), reg(k6, "mask7" + sfx)
            q7, dn7 = reg(q6, "rq7" + sfx), reg(dn6, "dn7" + sfx)
            recip = Signal(unsigned(RF + 1), name="recip" + sfx)
            shift_base = Signal(signed(SUMW.bit_length() + 8), name="shift_base" + sfx)
            mant8 = reg(mant, "mant8" + sfx, unsigned(E + 1))
            mult8 = reg(Mux(st[7].pass2, recip, K1), "mult8" + sfx, unsigned(MW))
            sbase8 = reg(Mux(st[7].pass2, shift_base, 0), "sbase8" + sfx, shift_base.shape())
            # n >= SHMAX already gives 0 (the pass-2 offset is >= 0 but in masked rows)
            n8 = reg(_clamp_hi(n7, SHMAX), "n8" + sfx, unsigned(SHMAX.bit_length()))
            k8 = reg(k7, "mask8" + sfx)
            q8, dn8 = reg(q7, "rq8" + sfx), reg(dn7, "dn8" + sfx)
            # R9: v = mant * K (DSP) and its shift: n (pass 1), n + b + SB_OFF (pass 2)
            prod9 = reg(mant8 * mult8, "prod9" + sfx, unsigned(VW))
            sh = Signal(signed(max(n_bits, len(shift_base)) + 2), name="sh" + sfx)
            m.d.comb += sh.eq(n8 + sbase8)  # < 0: masked rows only
            sh9 = reg(
                Mux(sh < 0, 0, _clamp_hi(sh, SHMAX)), "sh9" + sfx, unsigned(SHMAX.bit_length())
            )
            k9, q9, dn9 = reg(k8, "mask9" + sfx), reg(q8, "rq9" + sfx), reg(dn8, "dn9" + sfx)
            # R10: (2v) >> sh;  R11: rhu(v, sh) = (that + 1) >> 1
            w10 = reg((prod9 << 1) >> sh9, "w10" + sfx, unsigned(VW + 1))
            k10, q10, dn10 = reg(k9, "mask10" + sfx), reg(q9, "rq10" + sfx), reg(dn9, "dn10" + sfx)
            r = Signal(unsigned(VW), name="r" + sfx)
            m.d.comb += r.eq((w10 + 1) >> 1)
            term11 = reg(r[: SF + 1], "term11" + sfx, unsigned(SF + 1))
            k11, q11 = reg(k10, "mask11" + sfx), reg(q10, "rq11" + sfx)
            pow11 = reg(Const(1, Q + 1) << dn10, "pow11" + sfx, unsigned(Q + 1))
            p_values.append(Mux(k10, _clamp_hi(r, (1 << P) - 1), 0))
            # R12: T = term << D (DSP); the sum loop: S = renormalized S + T
            t12 = reg(term11 * pow11, "t12" + sfx, unsigned(SW))
            k12, q12 = reg(k11, "mask12" + sfx), reg(q11, "rq12" + sfx)
            s = Signal(unsigned(SW), name="sum" + sfx)
            kept = Mux(q12[2], 0, _mux4(q12[:2], [s, s >> Q, s >> (2 * Q), s >> (3 * Q)]))
            with m.If(~stall & st[12].valid & ~st[12].pass2 & k12):
                m.d.sync += s.eq(kept + t12)
            dshs.append(D)
            sums.append(s)
            recips.append(recip)
            shift_bases.append(shift_base)

        # ------------------------------------------------------------ output register
        with m.If(~stall):
            m.d.sync += [
                self.p.valid.eq(st[10].valid & st[10].pass2),
                self.p.payload.last.eq(st[10].last),
            ]
            m.d.sync += [self.p.payload.data[i].eq(v) for i, v in enumerate(p_values)]

        # ------------------------------------------------------------ reciprocal
        # shared front end, one lane per cycle (five stages): A the lane's sum; B1 per 6-bit
        # chunk "any bit" and 6c + its bit length; B2 b = bit_length(s) (the top chunk's);
        # C1 (s << (RF+1)) >> 8*(b >> 3); C2 >> (b & 7): s_m, the top RF+1 bits
        CH = 6
        nch = -(-SUMW // CH)
        sA = Signal(SUMW)
        laneA, laneB1, laneB2, laneC1 = (
            Signal(range(L), name=f"lane{x}") for x in "A B1 B2 C1".split()
        )
        vA, vB1, vB2, vC1 = (Signal(name=f"v{x}") for x in "A B1 B2 C1".split())
        sB1, sB2 = Signal(SUMW), Signal(SUMW)
        anyB1 = Signal(nch)
        candB1 = [Signal(range(SUMW + 1), name=f"cand{c}") for c in range(nch)]
        bB2, bC1 = Signal(range(SUMW + 1)), Signal(range(SUMW + 1))
        uW = RF + 1 + 7
        uC1 = Signal(uW)
        b_top = Const(0, range(SUMW + 1))
        for c in range(nch):
            b_top = Mux(anyB1[c], candB1[c], b_top)
        wide = Cat(Const(0, RF + 1), sB2)
        m.d.sync += [
            vA.eq((state == NORM) & (norm_i < L)),
            laneA.eq(norm_i),
            sA.eq(_shr(Array(sums)[norm_i], Array(dshs)[norm_i], SUMW)),
            vB1.eq(vA),
            laneB1.eq(laneA),
            sB1.eq(sA),
            vB2.eq(vB1),
            laneB2.eq(laneB1),
            sB2.eq(sB1),
            bB2.eq(b_top),
            vC1.eq(vB2),
            laneC1.eq(laneB2),
            bC1.eq(bB2),
            uC1.eq(Array([(wide >> (8 * i))[:uW] for i in range((SUMW >> 3) + 1)])[bB2[3:]]),
        ]
        for c in range(nch):
            chunk = sA[CH * c : CH * c + CH]
            m.d.sync += [anyB1[c].eq(chunk.any()), candB1[c].eq(tree_bit_length(chunk) + CH * c)]
        top = Signal(unsigned(RF + 1))
        m.d.comb += top.eq((uC1 >> bC1[:3])[: RF + 1])
        for lane in range(L):
            s_m = Signal(unsigned(RF + 1), name=f"s_m{lane}")
            low = Signal(unsigned(RF + 1), name=f"low{lane}")  # dividend bits to bring down
            rem = Signal(unsigned(RF + 3), name=f"rem{lane}")
            quot = Signal(unsigned(RF + 1), name=f"quot{lane}")
            with m.If(vC1 & (laneC1 == lane)):
                m.d.sync += [
                    s_m.eq(top),
                    low.eq(top),  # dividend 2^(2RF+1) + s_m: low RF+1 bits
                    rem.eq(1 << RF),  # ... and its top bits, 2^RF < 2 s_m
                    quot.eq(0),
                    shift_bases[lane].eq(bC1 + SB_OFF),
                ]
            # restoring division by 2 s_m, one quotient bit per cycle
            trial = Cat(low[RF], rem)[: RF + 3]
            divisor = Cat(Const(0, 1), s_m)
            ge = trial >= divisor
            with m.If(state == DIV):
                m.d.sync += [
                    rem.eq(Mux(ge, trial - divisor, trial)),
                    quot.eq(Cat(ge, quot)),
                    low.eq(low << 1),
                ]
                with m.If(div_left == 1):
                    m.d.sync += recips[lane].eq(Cat(ge, quot)[: RF + 1])

        # ------------------------------------------------------------ state machine
        with m.Switch(state):
            with m.Case(IN):
                with m.If(x_fire):
                    with m.If(row_end):
                        m.d.sync += [
                            state.eq(DRAIN1),
                            st_in.eq(0),
                            last_idx.eq(wptr),
                            wptr.eq(0),
                        ]
                    with m.Else():
                        m.d.sync += wptr.eq(wptr + 1)
            with m.Case(DRAIN1):
                with m.If(~stall & st[12].valid & ~st[12].pass2 & st[12].last):
                    m.d.sync += [state.eq(NORM), norm_i.eq(0)]
            with m.Case(NORM):
                m.d.sync += norm_i.eq(norm_i + 1)
                with m.If(norm_i == L + NORM_EXTRA - 1):
                    m.d.sync += [state.eq(DIV), div_left.eq(RF + 1)]
            with m.Case(DIV):
                m.d.sync += div_left.eq(div_left - 1)
                with m.If(div_left == 1):
                    m.d.sync += [state.eq(OUT), rptr.eq(0)]
            with m.Case(OUT):
                with m.If(issue):
                    with m.If(rptr == last_idx):
                        m.d.sync += [state.eq(IN), st_in.eq(1)]
                    with m.Else():
                        m.d.sync += rptr.eq(rptr + 1)
        return m


# --------------------------------------------------------------------------- stream packing
def x_beats(x, mask=None) -> list[dict]:
    """``x`` payloads for logits (lanes, n) and an optional bool mask of the same shape."""
    import numpy as np

    x = np.asarray(x)
    mask = np.ones(x.shape, dtype=bool) if mask is None else np.broadcast_to(mask, x.shape)
    n = x.shape[1]
    return [
        {
            "data": [int(v) for v in x[:, j]],
            "mask": [int(v) for v in mask[:, j]],
            "last": int(j == n - 1),
        }
        for j in range(n)
    ]
