"""Pipelined integer arithmetic shared by the element-wise engines (ACT, RESIDUAL,
NORM_QUANT) and their blocks: every function here builds logic that meets the 250 MHz
logic-depth rule of ``hw.timing`` (at most 6 levels between registers, every multiplier
registered around its DSP48E2) when its inputs come from registers.

* :class:`Pipe` -- registers that advance together unless a stall freezes them.
* :func:`window` -- ``(x >> t)[:width]`` for a variable ``t`` as radix-4 mux stages (one
  LUT level each).
* :func:`hsb` -- the index of the highest set bit (``bit_length - 1``) as a balanced tree.
* :func:`mul_split` -- ``x * k`` as two DSP partial products (registered) and their sum
  (registered): 2 pipeline stages.
* :func:`rss_setup` / :func:`rss_lane` -- ``golden.model.requant`` (round half up, right or
  left shift, saturation) of a product ``q = acc * mant`` in 2 pipeline stages per lane,
  from per-row parameters computed once per row (``RssParams``).
* :func:`quant_lane` -- the activation quantizer's ``(q + 2^(R-1)) >> R`` of
  ``q = x * recip`` (``golden.quant.hw_quant_apply``), whose clamp never acts (see there).
* :class:`Reciprocal` -- ``golden.quant.hw_reciprocal`` as a restoring divider.
* :class:`ScalePipe` -- ``golden.model.scale_mul`` / ``scale_of_int`` as a 6-stage
  pipeline, one operation per cycle, shared in time by an engine's per-row scale steps.

The requant identity used by :func:`rss_lane` (``rhu(v, r) = (v + 2^(r-1)) >> r``)::

    requant(acc, (mant, shift), frac, out_bits) = sat(rhu(q * 2^32, r)),
    q = acc * mant,  s = shift - frac,  r = clamp(32 + s, 1, 32 + min(P, shift_max))

for ``|q| < 2^(P-1)``: s > 0 is golden's rounded right shift by s (beyond P, or beyond
shift_max, the result is 0 or golden's shift_max result, which is also 0 when P <=
shift_max); s <= 0 is golden's exact left shift by min(-s, 31) of q clipped to +-2^31
(every clipped value saturates either way; ls = 31 is r = 1). The saturation is found
without the wide value: the window ``Y = (q * 2^32 >> (r-1))[:ob+1]`` overflows iff the
bits of ``q * 2^32`` above it differ from its top bit, a per-row mask on the bits of q
(``RssParams.mask``), and ``(Y + 1) >> 1`` leaves ``ob`` bits only at its top end.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, QuantConfig

# a DSP48E2 multiplies a 27-bit signed A by an 18-bit signed B: x is split into a 17-bit
# unsigned low part and a signed high part, each one DSP
SPLIT_BITS = 17
DSP_A_BITS = 27


class Pipe:
    """Registers that all hold their value while ``stall`` is 1 (None: never)."""

    def __init__(self, m: Module, stall=None):
        self.m = m
        self.stall = stall

    def reg(self, value, name: str, shape=None) -> Signal:
        value = Value.cast(value)
        r = Signal(value.shape() if shape is None else shape, name=name)
        if self.stall is None:
            self.m.d.sync += r.eq(value)
        else:
            with self.m.If(~self.stall):
                self.m.d.sync += r.eq(value)
        return r

    def delay(self, value, n: int, name: str, shape=None) -> Value:
        """``value`` n stages later."""
        v = Value.cast(value)
        for i in range(n):
            v = self.reg(v, f"{name}_d{i}", shape)
        return v


# --------------------------------------------------------------------------- shifts
def _bits(v: Value, lo: int, n: int, fill) -> Value:
    """Bits [lo, lo + n) of v, ``fill`` (a 1-bit value) beyond its top."""
    top = len(v)
    if lo >= top:
        return fill.replicate(n)
    part = v[lo : min(top, lo + n)]
    return part if len(part) == n else Cat(part, fill.replicate(n - len(part)))


def digits(t_max: int) -> int:
    """Radix-4 digits of a shift of at most ``t_max``."""
    return max(1, -(-max(t_max, 1).bit_length() // 2))


def window(x, t, width: int, t_max: int, lo: int = 0, hi: int | None = None) -> Value:
    """``(x >> t)[:width]``: x sign-extended if signed, ``t`` unsigned and at most
    ``t_max`` (larger values give unspecified bits); radix-4 stages, the largest first,
    each a 4:1 mux per bit, only as wide as the bits still needed. ``lo``/``hi``: apply
    only the digits [lo, hi) of t (default all): the result is then ``width + 4^lo - 1``
    bits wide, for a later call with the digits below ``lo`` (so a long shift can be
    split over pipeline stages: two digits make at most 4 LUT levels)."""
    x = Value.cast(x)
    t = Value.cast(t)
    sgn = x.shape().signed
    cur = x
    hi = digits(t_max) if hi is None else hi
    for d in reversed(range(lo, hi)):
        step = 4**d
        need = width + 4**lo - 1 + step - 4**lo  # what the lower digits may still shift in
        fill = cur[-1] if sgn else Const(0, 1)
        top = min(3, t_max >> (2 * d))
        opts = [_bits(cur, c * step, need, fill) for c in range(top + 1)]
        d0 = t[2 * d] if 2 * d < len(t) else Const(0, 1)
        d1 = t[2 * d + 1] if 2 * d + 1 < len(t) else Const(0, 1)
        if top == 0:
            nxt = opts[0]
        elif top == 1:
            nxt = Mux(d0, opts[1], opts[0])
        elif top == 2:
            nxt = Mux(d1, opts[2], Mux(d0, opts[1], opts[0]))
        else:
            nxt = Mux(d1, Mux(d0, opts[3], opts[2]), Mux(d0, opts[1], opts[0]))
        cur = nxt.as_signed() if sgn else nxt
    out = _bits(cur, 0, width + 4**lo - 1, cur[-1] if sgn else Const(0, 1))
    return out.as_signed() if sgn else out


def window_reg(pipe: Pipe, x, t, width: int, t_max: int, name: str) -> tuple[Value, int]:
    """:func:`window` in registered steps of two radix-4 digits (at most 4 LUT levels
    each): (the window, signed like x, a register; the number of stages)."""
    nd = digits(t_max)
    t = Value.cast(t)
    cur, tt, n = Value.cast(x), t, 0
    for lo in reversed(range(0, nd, 2)):
        hi = min(nd, lo + 2)
        v = window(cur, tt, width, t_max, lo, hi)
        cur = pipe.reg(v, f"{name}_w{n}")
        cur = cur.as_signed() if Value.cast(x).shape().signed else cur
        if lo:
            tt = pipe.reg(tt[: 2 * lo], f"{name}_t{n}")
        n += 1
    return cur, n


def hsb(v) -> tuple[Value, Value]:
    """(v != 0, index of the highest set bit of the unsigned v; 0 when v = 0) as a
    balanced tree (the halves' results muxed, no adders)."""
    v = Value.cast(v)
    n = len(v)
    if n == 1:
        return v[0], Const(0, 1)
    if n == 2:
        return v[0] | v[1], v[1]
    h = 1 << ((n - 1).bit_length() - 1)  # the low half: a power of two >= 2
    ib = h.bit_length() - 1
    nz_lo, i_lo = hsb(v[:h])
    nz_hi, i_hi = hsb(v[h:])

    def fit(i):
        return Cat(i, Const(0, max(0, ib - len(i))))[:ib]

    return nz_lo | nz_hi, Mux(nz_hi, Cat(fit(i_hi), Const(1, 1)), Cat(fit(i_lo), Const(0, 1)))


def hsb_reg(m: Module, v, name: str, group: int = 32) -> tuple[Signal, Signal, int]:
    """:func:`hsb` of a wide value in registered steps (the depth of a ``group``-bit tree
    each): (nonzero, index) registers and the cycles from v to them (1 if ``len(v) <=
    group``, else 2: per group first, then the highest nonzero group)."""
    assert group & (group - 1) == 0, "group: a power of two"
    v = Value.cast(v)
    n = len(v)
    nz = Signal(name=f"{name}_nz")
    idx = Signal(range(max(n, 2)), name=f"{name}_idx")
    if n <= group:
        z, i = hsb(v)
        m.d.sync += [nz.eq(z), idx.eq(i)]
        return nz, idx, 1
    gnz, gidx = [], []
    for j, g in enumerate(range(0, n, group)):
        z, i = hsb(v[g : min(n, g + group)])
        rz, ri = Signal(name=f"{name}_g{j}_nz"), Signal(range(group), name=f"{name}_g{j}_idx")
        m.d.sync += [rz.eq(z), ri.eq(i)]
        gnz.append(rz)
        gidx.append(ri)
    z2, i2 = hsb(Cat(*gnz))
    sel = gidx[0]
    for j in range(1, len(gidx)):
        sel = Mux(i2 == j, gidx[j], sel)
    m.d.sync += [nz.eq(z2), idx.eq(Cat(sel, i2))]
    return nz, idx, 2


# --------------------------------------------------------------------------- multiply
def mul_split(pipe: Pipe, x, k, name: str) -> Signal:
    """``x * k`` two stages later: x (a register, signed or unsigned, at most 35 bits) is
    split into a 17-bit unsigned low part and a high part, each multiplied by k (a
    register that fits the DSP's 27-bit A port) in its own DSP48E2 whose product is
    registered; the next stage adds the two (registered)."""
    x, k = Value.cast(x), Value.cast(k)
    kb = len(k) + (0 if k.shape().signed else 1)
    assert kb <= DSP_A_BITS, f"{name}: k of {len(k)} bits does not fit the DSP A port"
    shape = (x * k).shape()
    xb = len(x) + (0 if x.shape().signed else 1)
    if xb <= SPLIT_BITS + 1:  # one DSP
        p = pipe.reg(x * k, f"{name}_p")
        return pipe.reg(p, f"{name}_q", shape)
    assert len(x) - SPLIT_BITS <= 18, f"{name}: x of {len(x)} bits is too wide to split"
    lo = x[:SPLIT_BITS]
    hi = x[SPLIT_BITS:].as_signed() if x.shape().signed else x[SPLIT_BITS:]
    p_lo = pipe.reg(lo * k, f"{name}_plo")
    p_hi = pipe.reg(hi * k, f"{name}_phi")
    return pipe.reg((p_hi << SPLIT_BITS) + p_lo, f"{name}_q", shape)


# --------------------------------------------------------------------------- requant
PRE = 32  # rss_lane's q * 2^32: left shifts up to 31 become right shifts from 1


class RssParams:
    """Per-row parameters of :func:`rss_lane` for products of ``q_bits`` (signed) bits
    saturated to ``out_bits``: registers ``t`` (the window position r - 1), ``mask`` (the
    bits of q that must equal its sign) and ``kneg`` (the window lies below q: only q = 0
    fits). :meth:`setup` drives them from a signed shift ``s`` (shift - frac) two cycles
    after s is stable (free running)."""

    def __init__(self, q_bits: int, out_bits: int, shift_max: int, name: str):
        self.q_bits, self.out_bits, self.name = q_bits, out_bits, name
        self.r_max = PRE + min(q_bits, shift_max)
        self.t_max = self.r_max - 1
        self.t = Signal(range(self.t_max + 1), name=f"{name}_t")
        self.mask = Signal(q_bits - 1, name=f"{name}_mask")
        self.kneg = Signal(name=f"{name}_kneg")

    def fields(self) -> list[Signal]:
        return [self.t, self.mask, self.kneg]

    def setup(self, m: Module, s) -> None:
        """Drive ``t``, ``mask``, ``kneg`` from ``s`` (free running: two cycles later)."""
        t, mask, kneg = self.derive(Pipe(m), s, self.name)
        m.d.comb += [self.t.eq(t), self.mask.eq(mask), self.kneg.eq(kneg)]

    def derive(self, pipe: Pipe, s, name: str) -> list:
        """(t, mask, kneg) of the signed shift ``s``, two stages of ``pipe`` later (for
        shifts that change with every element, e.g. ``hw.requant.Requant``'s)."""
        r = PRE + Value.cast(s).as_signed()
        r = Mux(r < 1, 0, Mux(r > self.r_max, self.t_max, r - 1))
        t1 = pipe.reg(r, f"{name}_t1", unsigned(max(1, self.t_max.bit_length())))
        # the window's top bit sits at bit k = t + out_bits - 32 of q
        k = Signal(signed(self.t_max.bit_length() + 2), name=f"{name}_k")
        pipe.m.d.comb += k.eq(t1 + (self.out_bits - PRE))
        return [
            pipe.reg(t1, f"{name}_t2"),
            pipe.reg(Cat(*[k <= i for i in range(self.q_bits - 1)]), f"{name}_mask2"),
            pipe.reg(k < 0, f"{name}_kneg2"),
        ]


def rss_lane(pipe: Pipe, q, p: RssParams, name: str, params=None) -> Signal:
    """``sat(rhu(q * 2^32, t + 1))`` to ``p.out_bits``, ``RSS_STAGES`` stages after q (a
    register): the window in two steps (the overflow flag beside the first), then the
    rounding and the saturation. ``params``: (t, mask, kneg) to use instead of ``p``'s
    (copies carried with the data, in q's stage)."""
    P, ob = p.q_bits, p.out_bits
    q = Value.cast(q)
    q = q[:P].as_signed() if len(q) > P else q.as_signed()  # |q| < 2^(P-1) (the caller's)
    t, mask, kneg = params if params is not None else p.fields()
    x = Cat(Const(0, PRE), q).as_signed()
    y, n = window_reg(pipe, x, t, ob + 1, p.t_max, f"{name}_y")
    sign = q[-1]
    qb = Cat(q, sign.replicate(P - len(q)))[: P - 1]
    diff = (qb ^ sign.replicate(P - 1)) & mask  # bits of q that must equal its sign
    parts = [diff[j : j + 8].any() for j in range(0, P - 1, 8)]
    ovf1 = pipe.reg(Cat(*parts, kneg & sign), f"{name}_ovf1")  # in two steps
    ovf = pipe.delay(ovf1.any(), n - 1, f"{name}_ovf")
    neg = pipe.delay(sign, n, f"{name}_neg")
    z = (y + 1)[1:].as_signed()  # (Y + 1) >> 1, ob + 1 bits
    lo, hi = -(1 << (ob - 1)), (1 << (ob - 1)) - 1
    over = ~z[ob] & z[ob - 1]  # z = 2^(ob-1): the only value out of range
    out = Mux(ovf, Mux(neg, lo, hi), Mux(over, hi, z[:ob].as_signed()))
    assert n + 1 == RSS_STAGES
    return pipe.reg(out, f"{name}_out", signed(ob))


RSS_STAGES = 3


def quant_lane(pipe: Pipe, q, t, t_max: int, frac: int, out_bits: int, name: str) -> Signal:
    """``(q + 2^(R-1)) >> R`` to ``out_bits`` two stages after q (a register), for
    R - 1 = frac + t (t a register, 0 <= t <= ``t_max`` < 64): the activation quantizer's
    step after ``q = x * recip``. Its clamp never acts when |x| <= amax (recip <=
    (act_max 2^R + amax/2) / amax and amax < 2^R keep |q / 2^(R-1)| < 2^out_bits - 1),
    so the window is ``out_bits + 1`` wide and no saturation follows. Stage 1: the shift's
    high digits; stage 2: its last digit and the rounding."""
    q = Value.cast(q).as_signed()
    assert digits(t_max) <= 3
    x = q[frac:].as_signed()
    y1 = pipe.reg(window(x, t, out_bits + 1, t_max, 1), f"{name}_y1").as_signed()
    t1 = pipe.reg(Value.cast(t)[:2], f"{name}_t1")
    y = window(y1, t1, out_bits + 1, 3).as_signed()
    return pipe.reg((y + 1)[1 : out_bits + 1].as_signed(), f"{name}_out", signed(out_bits))


# --------------------------------------------------------------------------- reciprocal
class Reciprocal(wiring.Component):
    """``golden.quant.hw_reciprocal`` of one amax: ``n = bit_length(amax)``,
    ``R = n + F``, ``recip = (act_max 2^R + amax // 2) // amax`` (recip = 0, n = 0 for
    amax = 0) by a restoring divider, one quotient bit per cycle.

    ``start`` (one cycle, ``amax`` valid in it) -> ``done`` pulses ``latency(cfg)``
    cycles later with ``recip`` and ``n`` (held until the next start). Before the
    divide: bit_length in two steps (per byte, then the highest byte), R, the
    numerator: act_max 2^R is the bits [R, R + act_bits - 1) (act_max = 2^(act_bits-1) -
    1), disjoint from amax // 2 < 2^(n-1)."""

    def __init__(self, cfg: QuantConfig = DEFAULT.quant):
        self.cfg = cfg
        super().__init__(
            {
                "start": In(1),
                "amax": In(unsigned(cfg.hw_in_bits)),
                "done": Out(1),
                "recip": Out(unsigned(cfg.recip_bits)),
                "n": Out(range(cfg.hw_in_bits + 1)),
            }
        )

    @staticmethod
    def latency(cfg) -> int:
        return cfg.recip_bits + 5

    def elaborate(self, platform):
        cfg = self.cfg
        IN, F, QB, AB = cfg.hw_in_bits, cfg.recip_frac_bits, cfg.recip_bits, cfg.act_bits
        W = AB + IN + F  # the numerator N = act_max 2^R + amax // 2 < 2^W
        m = Module()
        a = Signal(IN)
        busy = Signal()
        phase = Signal(range(5))
        step = Signal(range(QB + 1))
        # long division of N by a, N's bits shifted in from the top: the remainder stays
        # below 2a (IN + 1 bits); N < a 2^QB, so N >> QB < a starts it
        r = Signal(IN + 1)
        nlo = Signal(QB)  # N's low QB bits, the next one on top
        R = Signal(range(IN + F + 1))
        r2 = Cat(nlo[-1], r[:IN])  # 2r + the next bit (r < a < 2^IN)
        diff = Signal(signed(IN + 2))
        m.d.comb += diff.eq(r2 - a)
        nz, hi, _ = hsb_reg(m, a, "a_hsb", group=8)  # valid 2 cycles after a
        m.d.sync += self.done.eq(0)
        with m.If(self.start):
            m.d.sync += [a.eq(self.amax), busy.eq(1), phase.eq(0), self.recip.eq(0)]
        with m.Elif(busy):
            with m.Switch(phase):
                with m.Case(0, 1):  # the highest set bit of a: two cycles
                    m.d.sync += phase.eq(phase + 1)
                with m.Case(2):
                    m.d.sync += [self.n.eq(Mux(nz, hi + 1, 0)), R.eq(hi + 1 + F), phase.eq(3)]
                with m.Case(3):
                    n_bits = Cat(*[(R <= j) & (j < R + AB - 1) for j in range(W)]) | (a >> 1)
                    m.d.sync += [r.eq(n_bits[QB:]), nlo.eq(n_bits[:QB]), step.eq(0), phase.eq(4)]
                with m.Default():
                    ge = ~diff[-1]
                    m.d.sync += [
                        r.eq(Mux(ge, diff[: IN + 1], r2)),
                        nlo.eq(nlo << 1),
                        self.recip.eq(Mux(nz, (self.recip << 1) | ge, 0)),
                        step.eq(step + 1),
                    ]
                    with m.If(step == QB - 1):
                        m.d.sync += [busy.eq(0), self.done.eq(1)]
        return m


# --------------------------------------------------------------------------- scales
class ScalePipe:
    """``golden.model.scale_mul(a, b)`` (``soi`` = 0) or ``scale_of_int(v)`` (``soi`` = 1)
    with a ``bits``-bit mantissa and ``shift_bits``-wide signed shifts, issued with
    ``go`` (operands valid in that cycle) and returned ``LATENCY`` cycles later with
    ``done`` (``mant``, ``shift`` held until the next result). One operation per cycle;
    v (``v_bits`` unsigned) at most 2 * bits wide.

    Stages: operands registered; the mantissa product (one DSP, registered); the value
    to normalize; its highest set bit (two steps); ``rhu(p, bit_length - bits)`` as the
    window of p * 2^bits at the highest set bit (two steps); the rounding, its carry and
    the shift."""

    LATENCY = 8

    def __init__(self, m: Module, bits: int, shift_bits: int, v_bits: int, name: str):
        assert v_bits <= 2 * bits
        self.m, self.bits, self.name = m, bits, name
        self.go = Signal(name=f"{name}_go")
        self.soi = Signal(name=f"{name}_soi")
        self.a_m = Signal(bits, name=f"{name}_a_m")
        self.b_m = Signal(bits, name=f"{name}_b_m")
        self.a_s = Signal(signed(shift_bits), name=f"{name}_a_s")
        self.b_s = Signal(signed(shift_bits), name=f"{name}_b_s")
        self.v = Signal(v_bits, name=f"{name}_v")
        self.done = Signal(name=f"{name}_done")
        self.mant = Signal(bits, name=f"{name}_mant")
        self.shift = Signal(signed(shift_bits), name=f"{name}_shift")
        B = bits
        PB = 2 * B
        n = name
        pipe = Pipe(m)
        vld = pipe.delay(self.go, self.LATENCY - 1, f"{n}_vld")
        m.d.sync += self.done.eq(vld)
        # 0: operands (as given); 1: the product (a DSP registered around), the shift sum
        # with the normalization's B - 1 folded in; 2: the value to normalize
        a0, b0 = pipe.reg(self.a_m, f"{n}_a0"), pipe.reg(self.b_m, f"{n}_b0")
        as0, bs0 = pipe.reg(self.a_s, f"{n}_as0"), pipe.reg(self.b_s, f"{n}_bs0")
        v0, soi0 = pipe.reg(self.v, f"{n}_v0"), pipe.reg(self.soi, f"{n}_soi0")
        p1 = pipe.reg(a0 * b0, f"{n}_p1")
        v1, soi1 = pipe.reg(v0, f"{n}_v1"), pipe.reg(soi0, f"{n}_soi1")
        sh = pipe.reg(Mux(soi0, 0, as0 + bs0) + (B - 1), f"{n}_sh1", signed(shift_bits + 2))
        p2 = pipe.reg(Mux(soi1, v1, p1), f"{n}_p2", unsigned(PB))
        sh = pipe.delay(sh, 1, f"{n}_sh")
        # 3-4: highest set bit
        nz, hi, k = hsb_reg(m, p2, f"{n}_hsb", group=8)
        p4 = pipe.delay(p2, k, f"{n}_p")
        sh = pipe.delay(sh, k, f"{n}_sh_h")
        # 5-6: the window p * 2^B >> hi (B + 2 bits); the shift less hi
        y, w = window_reg(pipe, Cat(Const(0, B), p4), hi, B + 2, PB - 1, f"{n}_y")
        shr = pipe.reg(sh - hi, f"{n}_shr", signed(shift_bits + 1))
        shr = pipe.delay(shr, w - 1, f"{n}_shr")
        nzw = pipe.delay(nz, w, f"{n}_nz")
        assert 3 + k + w + 1 == self.LATENCY
        # 7: round; a carry to 2^B halves the mantissa
        m17 = (y + 1)[1 : B + 2]
        carry = m17[B]
        m.d.sync += [
            self.mant.eq(Mux(nzw, Mux(carry, m17[1:], m17[:B]), 0)),
            self.shift.eq(Mux(nzw, shr - carry, 0)),
        ]
