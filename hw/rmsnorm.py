"""RMSNorm fused with INT8 quantization in RTL (golden: ``golden.rmsnorm.rmsnorm_quant``).

Per row of d residual elements x (signed ``in_bits``) and the norm weight gamma (signed
``gamma_bits``), exactly as the golden model states it -- in two passes over the row,
which the producer streams **twice** (pass 1, then pass 2; the block holds no row):

* pass 1: ``S = sum x^2`` (exact: x = xh 2^16 + xl, the three partial products xh^2,
  xh xl, xl^2 summed per class, ``S = HH 2^32 + HL 2^17 + LL``) and the max and min of
  ``p = x * gamma``; ``stat_lanes`` (L1) elements per cycle, so a beat of ``lanes`` (L)
  elements takes L / L1 cycles;
* per row (a sequencer, one registered step per cycle): ``S' = S + eps_term``; rsqrt seed
  from a ROM generated from ``golden.rmsnorm.rsqrt_lut`` addressed by the exponent parity
  and the top mantissa bits, ``newton_steps`` Newton steps; ``amax_p``,
  ``sh_p = max(0, bit_length(amax_p) - (hw_in_bits - 1))`` and the quantizer's amax
  ``amax' = max|p >> sh_p| = max(max_p >> sh_p, -(min_p >> sh_p))`` (floor shifts are
  monotonic); ``hw.pipeline.Reciprocal`` of amax' (golden's ``hw_reciprocal``) beside the
  output scale ``scale_mant * 2^-scale_shift`` from amax', c and y;
* pass 2: L elements per cycle: ``p = x * gamma`` again, ``p' = p >> sh_p``, the
  quantizer's ``(p' * recip + 2^(R-1)) >> R`` (``hw.pipeline.quant_lane``: amax' is the
  row's max |p'|, so its clamp never acts) -> ``y`` with the row's scale.

Every step meets the 250 MHz depth rule of ``hw.timing`` (registered multiplies, shifts
split into two-digit steps, wide bit_lengths in two steps).

Streams (``amaranth.lib.stream``; a beat transfers when valid & ready)
----------------------------------------------------------------------
``x`` (in)  ``{x: L x signed(in_bits), gamma: L x signed(gamma_bits), last}``: L
    consecutive elements of a row and their gamma; ``last`` on the row's final beat. Each
    row is sent twice, both times the same beats (pass 1, pass 2). A row is a whole number
    of beats (the producer pads x with zeros: they change nothing) and at most
    ``max_len / L`` beats (a row that reaches that many ends there).
``y`` (out) ``{data: L x signed(act_bits), scale_mant: unsigned(scale_mant_bits),
    scale_shift: signed(32), last}``: the quantized row (pass 2), beat for beat, with its
    scale (``golden.rmsnorm.scale_to_float``) on every beat.

Row constants (``golden.rmsnorm.norm_constants(d)``, computed by the host for the true
row length d, held stable while rows of that length are processed): ``eps_term``,
``c_mant``, ``c_exp``.

Pass 2 waits for the sequencer; the next row's pass 1 follows at once; the sequencer
publishes a row's parameters only when the previous row has left the pass-2 lanes.

Cycle count (one row of B beats, no stalls; ``expected_cycles``): from the first pass-1
beat to the last output beat, both included::

    (B - 1) * L / L1 + pass1_depth(L1) + seq_cycles + B + pass2_cycles + 3

(from the edge that takes the first beat: pass 1 takes a beat in its last cycle;
``pass1_depth``: the statistics pipeline, 5 stages for L1 = 4; ``seq_cycles``: the
sequencer, 34 for the default formats; ``pass2_cycles``: the pass-2 lanes and the output
register, 9.)
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, NormConfig, QuantConfig
from golden.rmsnorm import rsqrt_lut
from hw.beats import check_lanes, lanes_layout
from hw.fixed import rhu
from hw.pipeline import (
    Pipe,
    Reciprocal,
    digits,
    hsb_reg,
    mul_split,
    quant_lane,
    window,
    window_reg,
)

# Elements per beat by default: the quantizer's (the TLMM engine's Q), rows up to its K.
from .quant import DEFAULT_LANES
from .tlmm import DEFAULT_MAX_K

NORM_SHIFT_BITS = 32  # golden.rmsnorm: the norm block's scale_shift is a signed int32 (the
# engine narrows it to the scale record's isa.SCALE_SHIFT_BITS)
C_EXP_BITS = 16  # c_exp port: sqrt(d)/act_max * 2^-B exponents, far inside


def seq_cycles(cfg: NormConfig = DEFAULT.norm, qcfg: QuantConfig = DEFAULT.quant) -> int:
    """Sequencer cycles from the row's statistics to its pass 2 (no wait for the lanes):
    11 steps to amax', then the reciprocal beside 2 + 7 per Newton step + 13 steps to the
    scale; it publishes the cycle after the later of the two."""
    return max(26 + 7 * cfg.newton_steps, 12 + Reciprocal.latency(qcfg))


def pass1_depth(stat_lanes: int) -> int:
    """Stages from a pass-1 sub-beat's registers to the row statistics (accumulated)."""
    sums = (stat_lanes - 1).bit_length()
    mm = 1 + (stat_lanes // 2 - 1).bit_length() if stat_lanes > 1 else 0
    return 2 + max(sums, mm) + 1


def pass2_cycles(cfg: NormConfig = DEFAULT.norm, qcfg: QuantConfig = DEFAULT.quant) -> int:
    """The pass-2 lanes and the output register: x * gamma (2), >> sh_p (2, or 1 when the
    shift has at most two radix-4 digits), * recip (2), the rounding (2), the output."""
    sh_max = max(0, cfg.in_bits + cfg.gamma_bits - (qcfg.hw_in_bits - 1))
    return 2 + (digits(sh_max) + 1) // 2 + 2 + 2 + 1


def expected_cycles(
    beats: int,
    cfg: NormConfig = DEFAULT.norm,
    qcfg: QuantConfig = DEFAULT.quant,
    sub: int = 1,
    stat_lanes: int = 1,
) -> int:
    """One row of ``beats`` beats, no stalls, ``sub`` = lanes / stat_lanes cycles per
    pass-1 beat: from the edge that takes its first beat (pass 1 takes a beat on its last
    cycle) to its last output beat, both included."""
    return (
        (beats - 1) * sub
        + pass1_depth(stat_lanes)
        + seq_cycles(cfg, qcfg)
        + beats
        + pass2_cycles(cfg, qcfg)
        + 3
    )


def x_layout(cfg: NormConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(
        signed(cfg.in_bits), lanes, name="x", gamma=data.ArrayLayout(signed(cfg.gamma_bits), lanes)
    )


def y_layout(cfg: NormConfig, qcfg: QuantConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(
        signed(qcfg.act_bits),
        lanes,
        scale_mant=unsigned(cfg.scale_mant_bits),
        scale_shift=signed(NORM_SHIFT_BITS),
    )


def _signed(v):
    """An unsigned value as a non-negative signed one (so that differences can go below 0)."""
    return Cat(v, Const(0, 1)).as_signed()


class RMSNormQuant(wiring.Component):
    """Fixed-point RMSNorm + INT8 quantization in two passes (see module docstring)."""

    def __init__(
        self,
        cfg: NormConfig = DEFAULT.norm,
        qcfg: QuantConfig = DEFAULT.quant,
        *,
        lanes: int = DEFAULT_LANES,
        stat_lanes: int | None = None,
        max_len: int = DEFAULT_MAX_K,
    ):
        if not isinstance(cfg, NormConfig):
            raise ValueError(f"cfg: expected NormConfig, got {type(cfg).__name__}")
        if not isinstance(qcfg, QuantConfig):
            raise ValueError(f"qcfg: expected QuantConfig, got {type(qcfg).__name__}")
        check_lanes(lanes)
        stat_lanes = lanes if stat_lanes is None else stat_lanes
        check_lanes(stat_lanes)
        if lanes % stat_lanes:
            raise ValueError(f"stat_lanes: {stat_lanes} does not divide lanes ({lanes})")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < lanes:
            raise ValueError(f"max_len: expected an int >= lanes ({lanes}), got {max_len!r}")
        if qcfg.hw_in_bits > 32 or cfg.in_bits > 32 or cfg.gamma_bits > 18:
            raise ValueError("cfg: the DSP split needs in_bits, hw_in_bits <= 32, gamma <= 18")
        self.cfg, self.qcfg = cfg, qcfg
        self.lanes = lanes
        self.stat_lanes = stat_lanes
        self.sub = lanes // stat_lanes
        self.max_len = max_len
        self.depth = -(-max_len // lanes)
        self.sum_bits = cfg.sumsq_bits(self.depth * lanes)
        super().__init__(
            {
                "x": In(stream.Signature(x_layout(cfg, lanes))),
                "y": Out(stream.Signature(y_layout(cfg, qcfg, lanes))),
                "eps_term": In(unsigned(self.sum_bits)),
                "c_mant": In(unsigned(cfg.scale_mant_bits)),
                "c_exp": In(signed(C_EXP_BITS)),
            }
        )

    def elaborate(self, platform):
        cfg, qcfg = self.cfg, self.qcfg
        L, L1, SUB = self.lanes, self.stat_lanes, self.sub
        F, LB, B = cfg.rsqrt_frac_bits, cfg.rsqrt_lut_bits, cfg.scale_mant_bits
        IB, GB, IN = cfg.in_bits, cfg.gamma_bits, qcfg.hw_in_bits
        # x * gamma reaches +2^(in_bits + gamma_bits - 2) (both at their minimum), one bit
        # more than NormConfig.product_bits holds
        PB = IB + GB
        SH_MAX = max(0, PB - (IN - 1))  # sh_p
        HALF = min(16, IB - 1)  # x = xh 2^HALF + xl (xl unsigned): exact for any split
        m = Module()

        p2 = Signal()  # the beats now are the row's pass 2
        ok = Signal()  # pass 2's parameters are live
        beat = Signal(range(self.depth))
        sub = Signal(range(max(SUB, 2)))
        x = self.x.payload
        row_end = Signal()
        m.d.comb += row_end.eq(x.last | (beat == self.depth - 1))

        # ------------------------------------------------------------ pass 1
        stall = Signal()
        p1_fire = self.x.valid & ~p2
        # ready does not look at valid (the producer's valid may come from far away)
        m.d.comb += self.x.ready.eq(Mux(p2, ok & ~stall, sub == SUB - 1))
        p1_take = p1_fire & self.x.ready
        p2_take = Signal()
        m.d.comb += p2_take.eq(self.x.valid & p2 & self.x.ready)
        with m.If(p1_fire):
            m.d.sync += sub.eq(Mux(sub == SUB - 1, 0, sub + 1))
        with m.If(self.x.valid & self.x.ready):
            m.d.sync += beat.eq(Mux(row_end, 0, beat + 1))
            with m.If(row_end):
                m.d.sync += p2.eq(~p2)
                with m.If(p2):
                    m.d.sync += ok.eq(0)

        free = Pipe(m)  # pass 1 never stalls
        a_v = free.reg(p1_fire, "a_v")
        a_end = free.reg(p1_take & row_end, "a_end")
        xa, ga = [], []
        for i in range(L1):
            xs = [x.x[j * L1 + i] for j in range(SUB)]
            gs = [x.gamma[j * L1 + i] for j in range(SUB)]
            xa.append(free.reg(Array(xs)[sub] if SUB > 1 else xs[0], f"xa{i}"))
            ga.append(free.reg(Array(gs)[sub] if SUB > 1 else gs[0], f"ga{i}"))
        # squares by class (xh signed, xl unsigned HALF bits), products: 2 stages
        hh, hl, ll, pp = [], [], [], []
        for i in range(L1):
            xh, xl = xa[i][HALF:].as_signed(), xa[i][:HALF]
            hh.append(free.delay(free.reg(xh * xh, f"hh{i}"), 1, f"hh{i}"))
            hl.append(free.delay(free.reg(xh * xl, f"hl{i}"), 1, f"hl{i}"))
            ll.append(free.delay(free.reg(xl * xl, f"ll{i}"), 1, f"ll{i}"))
            pp.append(mul_split(free, xa[i], ga[i], f"p1_{i}"))

        def tree(vals, op, name):
            lev = 0
            while len(vals) > 1:
                nxt = [
                    free.reg(op(vals[j], vals[j + 1]), f"{name}{lev}_{j // 2}")
                    for j in range(0, len(vals) - 1, 2)
                ]
                if len(vals) % 2:
                    nxt.append(free.reg(vals[-1], f"{name}{lev}_odd"))
                vals, lev = nxt, lev + 1
            return vals[0], lev

        s_hh, d1 = tree(hh, lambda a, b: a + b, "shh")
        s_hl, _ = tree(hl, lambda a, b: a + b, "shl")
        s_ll, _ = tree(ll, lambda a, b: a + b, "sll")
        if L1 > 1:
            mx, mn = [], []
            for j in range(0, L1 - 1, 2):
                a, b = pp[j], pp[j + 1]
                gt = a > b
                mx.append(free.reg(Mux(gt, a, b), f"pmx{j}"))
                mn.append(free.reg(Mux(gt, b, a), f"pmn{j}"))
            if L1 % 2:
                mx.append(free.reg(pp[-1], "pmx_odd"))
                mn.append(free.reg(pp[-1], "pmn_odd"))
            b_max, d2 = tree(mx, lambda a, b: Mux(a > b, a, b), "bmx")
            b_min, _ = tree(mn, lambda a, b: Mux(a < b, a, b), "bmn")
            d2 += 1
        else:
            b_max, b_min, d2 = pp[0], pp[0], 0
        T = max(d1, d2)
        s_hh, s_hl, s_ll = (
            free.delay(v, T - d1, f"al{n}") for n, v in ((0, s_hh), (1, s_hl), (2, s_ll))
        )
        b_max, b_min = free.delay(b_max, T - d2, "amx"), free.delay(b_min, T - d2, "amn")
        v_t = free.delay(a_v, 2 + T, "v_t")
        e_t = free.delay(a_end, 2 + T, "e_t")
        assert 2 + T + 1 == pass1_depth(L1)
        nb = (self.depth * L).bit_length()
        HH = Signal(2 * (IB - HALF) - 1 + nb, name="HH")  # sum xh^2
        HL = Signal(signed(IB + nb + 1), name="HL")  # sum xh xl
        LL = Signal(2 * HALF + nb, name="LL")  # sum xl^2
        pmax, pmin = Signal(signed(PB), name="pmax"), Signal(signed(PB), name="pmin")
        first = Signal(init=1)
        stats = Signal()  # the row's statistics are final
        with m.If(v_t):
            m.d.sync += [
                HH.eq(Mux(first, 0, HH) + s_hh),
                HL.eq(Mux(first, 0, HL) + s_hl),
                LL.eq(Mux(first, 0, LL) + s_ll),
                pmax.eq(Mux(first | (b_max > pmax), b_max, pmax)),
                pmin.eq(Mux(first | (b_min < pmin), b_min, pmin)),
                first.eq(e_t),
                stats.eq(e_t),
            ]
        with m.Else():
            m.d.sync += stats.eq(0)

        # ------------------------------------------------------------ sequencer
        SBITS = self.sum_bits + 1
        sa = Signal(SBITS, name="sa")
        S = Signal(SBITS, name="S")
        Sp = Signal(SBITS + 1, name="Sp")
        nmin = Signal(signed(PB + 1), name="nmin")
        ap = Signal(PB, name="amax_p")
        ap_nz, ap_hi, _ = hsb_reg(m, ap, "ap_hsb", group=16)
        sp_nz, sp_hi, _ = hsb_reg(m, Sp, "sp_hsb", group=16)
        sh_p = Signal(range(SH_MAX + 1), name="sh_p")
        k = Signal(range(SBITS // 2 + 1), name="k")
        par = Signal(name="parity")
        t2k = Signal(range(SBITS + 1), name="t2k")
        XS = Cat(Const(0, F), Sp)  # S' * 2^F
        mm_h = Signal(F + 2 + 15, name="mm_h")
        mm = Signal(F + 2, name="mm")  # UQ2.F mantissa of S' / 4^k
        W33 = IN + 2
        hs_h = Signal(signed(W33 + 3), name="hs_h")
        ls_h = Signal(signed(W33 + 3), name="ls_h")
        hs = Signal(signed(W33), name="hs")
        ls = Signal(signed(W33), name="ls")
        nls = Signal(signed(W33 + 1), name="nls")
        amax_q = Signal(IN, name="amax_q")
        aq_nz, aq_hi, _ = hsb_reg(m, amax_q, "aq_hsb", group=8)
        y = Signal(F + 1, name="y")  # rsqrt, UQ1.F, at most 2^F (golden.rmsnorm)
        yy = Signal(2 * F + 2, name="yy")
        t = Signal(F + 1, name="t")  # rhu(y^2, F) <= 2^F
        mt = Signal(2 * F + 4, name="mt")
        u = Signal(F + 3, name="u")
        dd = Signal(signed(F + 4), name="dd")
        yd = Signal(signed(2 * F + 7), name="yd")
        step = Signal(range(max(cfg.newton_steps, 1) + 1))
        lut = Array(Const(int(v), unsigned(F + 1)) for v in rsqrt_lut(cfg))
        ae = Signal(range(IN + 1), name="ae")
        am_h = Signal(B + 3, name="am_h")
        a_m = Signal(B, name="a_m")
        pc = Signal(2 * B, name="pc")
        seq_pipe = Pipe(m)
        pc_r = seq_pipe.reg(pc, "pc_r")  # (a register for the DSP split below)
        y_r = seq_pipe.reg(y, "y_r")
        prod = mul_split(seq_pipe, pc_r, y_r, "prod")  # 2 stages after pc, y
        PRB = len(prod)
        pr_nz, pr_hi, _ = hsb_reg(m, prod, "pr_hsb", group=16)
        rr1 = Signal(range(PRB + 1), name="rr1")
        mh = Signal(B + 2 + 15, name="m_h")
        my = Signal(B + 2, name="m_y")
        shc = Signal(signed(NORM_SHIFT_BITS + 2), name="shc")
        scale_mant = Signal(B, name="scale_mant")
        scale_shift = Signal(signed(NORM_SHIFT_BITS), name="scale_shift")
        m.submodules.rcp = rcp = Reciprocal(qcfg)
        rcp_busy = Signal()
        m.d.comb += rcp.amax.eq(amax_q)
        with m.If(rcp.start):
            m.d.sync += rcp_busy.eq(1)
        with m.If(rcp.done):
            m.d.sync += rcp_busy.eq(0)
        lanes_busy = Signal()
        # live parameters of pass 2
        sh2 = Signal.like(sh_p, name="sh_live")
        k2 = Signal(qcfg.recip_bits, name="recip_live")
        t2 = Signal(range(IN), name="t_live")
        sm2 = Signal(B, name="scale_mant_live")
        ss2 = Signal(signed(NORM_SHIFT_BITS), name="scale_shift_live")

        def chain(*steps, then: str):
            """States that run one after another, a cycle each: ``(name, statements)`` in
            order, the last one followed by state ``then``."""
            names = [name for name, _ in steps] + [then]
            for (name, statements), nxt in zip(steps, names[1:], strict=True):
                with m.State(name):
                    m.d.sync += statements
                    m.next = nxt

        # the fraction of S'/2^e sits in the F + parity bits below the leading one (LUT)
        frac = mm - Mux(par, 1 << (F + 1), 1 << F)
        top = Mux(par, frac >> (F + 1 - (LB - 1)), frac >> (F - (LB - 1)))
        e = Mux(sp_nz, sp_hi, 0)  # bit_length(S') - 1 (S' = 0 as 1)
        m17 = (my + 1)[1 : B + 2]
        carry = m17[B]
        zero = amax_q == 0
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(stats):
                    m.next = "SUM1"
            chain(
                ("SUM1", [sa.eq((HH << (2 * HALF)) + LL), nmin.eq(-pmin)]),
                ("SUM2", [S.eq(sa + (HL << (HALF + 1))), ap.eq(Mux(nmin > pmax, nmin, pmax))]),
                ("EPS", Sp.eq(S + self.eps_term)),
                ("W1", []),  # the highest set bits of amax_p and S' (two steps each)
                ("W2", sh_p.eq(Mux(ap_nz & (ap_hi >= IN - 1), ap_hi + 1 - (IN - 1), 0))),
                ("W3", [k.eq(e >> 1), par.eq(e[0]), t2k.eq(Cat(Const(0, 1), e[1:]))]),
                (
                    "SEED1",  # M = (S' << F) >> 2k; p_max, p_min >> sh_p
                    [
                        mm_h.eq(window(XS, t2k, F + 2, SBITS, lo=2)),
                        hs_h.eq(window(pmax, sh_p, W33, SH_MAX, lo=1)),
                        ls_h.eq(window(pmin, sh_p, W33, SH_MAX, lo=1)),
                    ],
                ),
                (
                    "SEED2",
                    [
                        mm.eq(window(mm_h, t2k, F + 2, 15, 0, 2)),
                        hs.eq(window(hs_h, sh_p, W33, 3, 0, 1)),
                        ls.eq(window(ls_h, sh_p, W33, 3, 0, 1)),
                    ],
                ),
                ("LUT", [y.eq(lut[Cat(top[: LB - 1], par)]), nls.eq(-ls), step.eq(0)]),
                ("AMAX", amax_q.eq(Mux(nls > hs, nls, hs))),
                then="RCP",
            )
            with m.State("RCP"):
                m.d.comb += rcp.start.eq(1)
                m.next = "AQW"
            with m.State("AQW"):  # (amax' has its hsb two cycles after it is set)
                m.next = "NT1" if cfg.newton_steps else "SA1"
            chain(  # a Newton step
                ("NT1", yy.eq(y * y)),
                ("NT2", t.eq(rhu(yy, F))),
                ("NU1", mt.eq(mm * t)),
                ("NU2", u.eq(rhu(mt, F))),
                ("NY1", dd.eq(Const(3 << F, signed(F + 4)) - u.as_signed())),
                ("NY2", yd.eq(y * dd)),
                then="NY3",
            )
            with m.State("NY3"):
                m.d.sync += [y.eq(rhu(yd, F + 1)), step.eq(step + 1)]
                m.next = "SA1"
                with m.If(step + 1 != cfg.newton_steps):
                    m.next = "NT1"
            chain(
                # a_e, a_m: amax' to B bits (its hsb is ready by now)
                ("SA1", ae.eq(Mux(aq_nz & (aq_hi >= B), aq_hi + 1 - B, 0))),
                ("SA2", am_h.eq(window(amax_q, ae, B, IN - B, lo=1))),
                ("SA3", a_m.eq(window(am_h, ae, B, 3, 0, 1))),
                ("P1", pc.eq(a_m * self.c_mant)),
                ("P2", []),  # pc_r, y_r; then the split product (2 stages)
                ("P3", []),
                ("P4", []),
                # hsb(prod): two steps; the shift's terms in two steps
                ("R0", shc.eq(_signed(k) - _signed(sh_p) - _signed(ae))),
                ("R1", shc.eq(shc + (F + cfg.gamma_frac_bits - 1) - self.c_exp)),
                # r = max(bit_length(prod) - B, 1); r - 1 is the window
                ("R2", rr1.eq(Mux(pr_nz & (pr_hi > B), pr_hi - B, 0))),
                ("R3", mh.eq(window(prod, rr1, B + 2, PRB, lo=2))),
                ("R4", my.eq(window(mh, rr1, B + 2, 15, 0, 2))),
                (
                    "FIN",
                    [
                        scale_mant.eq(Mux(zero, 0, Mux(carry, m17[1:], m17[:B]))),
                        scale_shift.eq(Mux(zero, 0, shc - rr1 - carry)),
                    ],
                ),
                then="PUB",
            )
            with m.State("PUB"):  # the reciprocal done, the previous row out of the lanes
                with m.If(~rcp_busy & ~rcp.start & ~lanes_busy):
                    m.d.sync += [
                        sh2.eq(sh_p),
                        k2.eq(rcp.recip),
                        t2.eq(Mux(rcp.n == 0, 0, rcp.n - 1)),
                        sm2.eq(scale_mant),
                        ss2.eq(scale_shift),
                        ok.eq(1),
                    ]
                    m.next = "IDLE"

        # ------------------------------------------------------------ pass 2
        pipe = Pipe(m, stall)
        v0 = pipe.reg(p2_take, "b_v")
        last0 = pipe.reg(row_end, "b_last")
        codes = []
        for i in range(L):
            xb = pipe.reg(x.x[i], f"xb{i}")
            gb = pipe.reg(x.gamma[i], f"gb{i}")
            p = mul_split(pipe, xb, gb, f"p2_{i}")  # 2
            pf, n_sh = window_reg(pipe, p, sh2, IN, SH_MAX, f"pf{i}")  # 4
            q = mul_split(pipe, pf, k2, f"q{i}")  # 6
            codes.append(
                quant_lane(pipe, q, t2, IN - 1, qcfg.recip_frac_bits, qcfg.act_bits, f"c{i}")
            )
        depth = 2 + n_sh + 2 + 2
        valids = [v0]
        for j in range(depth):
            valids.append(pipe.reg(valids[-1], f"b_v{j + 1}"))
        lastN = pipe.delay(last0, depth, "b_last")
        m.d.comb += [lanes_busy.eq(Cat(*valids).any()), stall.eq(self.y.valid & ~self.y.ready)]
        with m.If(~stall):
            m.d.sync += [
                self.y.valid.eq(valids[-1]),
                self.y.payload.last.eq(lastN),
                self.y.payload.scale_mant.eq(sm2),
                self.y.payload.scale_shift.eq(ss2),
            ]
            m.d.sync += [self.y.payload.data[i].eq(c) for i, c in enumerate(codes)]
        return m


# --------------------------------------------------------------------------- stream packing
def x_beats(x_row, gamma, lanes: int) -> list[dict]:
    """``x`` payloads for one row and its gamma, zero-padded to a whole number of beats."""
    import numpy as np

    x = np.asarray(x_row, dtype=np.int64).reshape(-1)
    g = np.asarray(gamma, dtype=np.int64).reshape(-1)
    nb = -(-x.size // lanes)
    xp = np.zeros(nb * lanes, dtype=np.int64)
    gp = np.zeros(nb * lanes, dtype=np.int64)
    xp[: x.size], gp[: g.size] = x, g
    return [
        {
            "x": xp[b * lanes : (b + 1) * lanes].tolist(),
            "gamma": gp[b * lanes : (b + 1) * lanes].tolist(),
            "last": int(b == nb - 1),
        }
        for b in range(nb)
    ]


def synth_tops() -> dict:
    """Factories for ``hw.synth``: the default fused RMSNorm + quantizer."""
    return {"rmsnorm": RMSNormQuant}
