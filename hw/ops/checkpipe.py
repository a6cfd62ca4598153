"""Pipelined evaluation of the contract's tensor extents (``ArgChecks(pipelined=True)``).

The extents are polynomials in the command's fields (``rows * heads * head_dim * 4``,
``((heads - 1) * ld + rows) * head_dim``, ...). Evaluated as written, their
multiplications sit between adders, so the DSPs they map to are neither registered nor
fed by registers, and the sums behind them are long combinational paths (the 250 MHz
depth rule of ``hw.timing``). Here each expression is first expanded into a sum of
monomials (``Poly``); every product of fields is a tree of registered two-input
multiplications (each DSP fed by registers -- a command field or an earlier product --
and feeding a register), shared between the expressions that use it; the sum of the
monomials is combinational and registered by the caller. Floor division by a constant
(the TLMM weight span) registers its operand and multiplies by a reciprocal constant.

The command fields are stable while a command runs, so nothing needs aligning: a value
built from products k levels deep is valid from the k-th cycle after the start.
"""

from __future__ import annotations

import math

from amaranth import Const, Module, Signal, Value, signed, unsigned


class PolyCtx:
    """The module, the atoms (fields and registered quotients) and the registered
    products of one set of checks."""

    def __init__(self, m: Module, prefix: str):
        self.m, self.prefix = m, prefix
        self.atoms: list[tuple[Value, int]] = []  # (value, cycle it is valid from)
        self.products: dict[tuple, tuple[Value, int]] = {}
        self.n = 0

    def _name(self, what: str) -> str:
        self.n += 1
        return f"{self.prefix}_{what}{self.n}"

    def reg(self, v, what: str = "r") -> Signal:
        v = Value.cast(v)
        # no reset: recomputed every cycle (a reset would put a LUT behind the DSP)
        r = Signal(v.shape(), name=self._name(what), reset_less=True)
        self.m.d.sync += r.eq(v)
        return r

    def atom(self, v, stage: int = 0) -> Poly:
        self.atoms.append((Value.cast(v), stage))
        return Poly(self, {(len(self.atoms) - 1,): 1})

    def product(self, mono: tuple) -> tuple[Value, int]:
        """The registered product of the atoms of ``mono`` (sorted atom ids): the two
        narrowest factors first (so each product fits one DSP48E2, 27 x 18 bits, where it
        can), each product registered."""
        if len(mono) == 1:
            return self.atoms[mono[0]]
        if mono not in self.products:
            parts = [(m_,) for m_ in mono]
            vals = {p: self.product(p) for p in parts}
            while len(parts) > 1:
                parts.sort(key=lambda p: (Value.cast(vals[p][0]).shape().width, p))
                pa, pb = parts[0], parts[1]
                key = tuple(sorted(pa + pb))
                if key not in self.products:
                    (a, sa), (b, sb) = vals[pa], vals[pb]
                    p, lat = dsp_product(self.m, a, b, self._name("p"))
                    self.products[key] = (p, max(sa, sb) + lat)
                vals[key] = self.products[key]
                parts = [key, *parts[2:]]
        return self.products[mono]

    def value(self, p: Poly) -> tuple[Value, int, bool]:
        """(value, cycle it is valid from, whether it is a register or a field)."""
        terms, stage = [], 0
        for mono, coeff in sorted(p.terms.items()):
            if coeff == 0:
                continue
            if not mono:
                terms.append((Const(abs(coeff)), coeff < 0))
                continue
            v, s = self.product(mono)
            c = abs(coeff)
            if c & (c - 1):
                v, s = self.reg(v * c, "c"), s + 1
            elif c > 1:
                v = v << (c.bit_length() - 1)
            terms.append((v, coeff < 0))
            stage = max(stage, s)
        if not terms:
            return Const(0), 0, True
        if len(terms) == 1 and not terms[0][1]:
            return terms[0][0], stage, True  # a field, a register, or one shifted
        width = max(Value.cast(v).shape().width for v, _ in terms) + len(terms).bit_length() + 1
        acc = Const(0, signed(width))
        for v, neg in terms:
            acc = acc - v if neg else acc + v
        return acc, stage, False


class Poly:
    """An integer polynomial over a ``PolyCtx``'s atoms: {monomial: coefficient}, a
    monomial being a sorted tuple of atom ids (``()``: the constant term)."""

    def __init__(self, ctx: PolyCtx, terms: dict):
        self.ctx, self.terms = ctx, {k: v for k, v in terms.items() if v}

    def _lift(self, o) -> Poly:
        if isinstance(o, Poly):
            return o
        if isinstance(o, int):
            return Poly(self.ctx, {(): o})
        return NotImplemented

    def __add__(self, o):
        o = self._lift(o)
        if o is NotImplemented:
            return o
        t = dict(self.terms)
        for k, v in o.terms.items():
            t[k] = t.get(k, 0) + v
        return Poly(self.ctx, t)

    __radd__ = __add__

    def __neg__(self):
        return Poly(self.ctx, {k: -v for k, v in self.terms.items()})

    def __sub__(self, o):
        o = self._lift(o)
        return o if o is NotImplemented else self + (-o)

    def __rsub__(self, o):
        o = self._lift(o)
        return o if o is NotImplemented else o + (-self)

    def __mul__(self, o):
        o = self._lift(o)
        if o is NotImplemented:
            return o
        t: dict = {}
        for ka, va in self.terms.items():
            for kb, vb in o.terms.items():
                k = tuple(sorted(ka + kb))
                t[k] = t.get(k, 0) + va * vb
        return Poly(self.ctx, t)

    __rmul__ = __mul__

    def __floordiv__(self, d):
        """floor(self / d) for a constant d >= 1 and a value >= 0 (the contract's ceil
        divisions): a registered atom."""
        if not isinstance(d, int) or d < 1:
            return NotImplemented
        ctx = self.ctx
        v, s, clean = ctx.value(self)
        if not clean:
            v, s = ctx.reg(v, "d"), s + 1
        v = Value.cast(v)
        if v.shape().signed:  # a non-negative value: its sign bit is 0
            v = v[: v.shape().width - 1]
        n = max(1, v.shape().width)
        if d & (d - 1) == 0:
            return ctx.atom(v >> (d.bit_length() - 1), s)
        # floor(x / d) = (x * mult) >> sh for every x < 2^n
        sh = n + math.ceil(math.log2(d))
        mult = -(-(1 << sh) // d)
        q = ctx.reg(v * Const(mult, unsigned(mult.bit_length())), "q")
        return ctx.atom(q >> sh, s + 1)


DSP_A_BITS = 26  # unsigned bits a DSP48E2 multiplier port takes: A (27 signed)
DSP_B_BITS = 17  # ... B (18 signed)


def dsp_product(m: Module, a, b, name: str) -> tuple[Signal, int]:
    """The product of two unsigned values as registers only: one DSP48E2 (fed by the
    operands, which must be registers or inputs, and feeding a register) when it fits
    26 x 17 bits, else 26 x 17-bit tiles, each registered, and their sum registered.
    Returns (the product register, its latency in cycles)."""
    a, b = Value.cast(a), Value.cast(b)

    def tiles_of(x, y):
        wx, wy = x.shape().width, y.shape().width
        return -(-wx // DSP_A_BITS) * -(-wy // DSP_B_BITS)

    if tiles_of(b, a) < tiles_of(a, b):  # a on the wide port, in as few tiles as can be
        a, b = b, a
    wa, wb = a.shape().width, b.shape().width
    out = Signal(wa + wb, name=name, reset_less=True)
    if wa <= DSP_A_BITS and wb <= DSP_B_BITS:
        m.d.sync += out.eq(a * b)
        return out, 1
    tiles = []
    for i in range(0, wa, DSP_A_BITS):
        for j in range(0, wb, DSP_B_BITS):
            pa, pb = a[i : i + DSP_A_BITS], b[j : j + DSP_B_BITS]
            t = Signal(len(pa) + len(pb), name=f"{name}_t{i}_{j}", reset_less=True)
            m.d.sync += t.eq(pa * pb)
            tiles.append((t, i + j))
    m.d.sync += out.eq(sum(t << sh for t, sh in tiles))
    return out, 2


def materialize(ctx: PolyCtx, p, name: str) -> tuple[Signal, int]:
    """A register holding polynomial ``p`` (or an int); the cycle after the start it is
    valid from."""
    if not isinstance(p, Poly):
        p = Poly(ctx, {(): int(p)})
    v, s, _ = ctx.value(p)
    r = Signal(Value.cast(v).shape(), name=name, reset_less=True)
    ctx.m.d.sync += r.eq(v)
    return r, s + 1
