"""Fixed-point helpers of the RTL: the Amaranth twins of ``golden/fixed.py`` (one
definition each; every block and engine uses these)."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed


def bit_length(m: Module, v, name: str) -> Signal:
    """``int.bit_length`` of an unsigned value (a priority encoder: the highest set bit
    wins; combinational)."""
    n = Signal(range(len(v) + 1), name=name)
    for i in range(len(v)):
        with m.If(v[i]):
            m.d.comb += n.eq(i + 1)
    return n


def rhu(v, s: int):
    """``golden.fixed.rhu`` by a constant ``s >= 0``: (v + 2^(s-1)) >> s, arithmetic
    (round half up); v itself for s = 0."""
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def saturate(m: Module, v, bits: int, name: str) -> Signal:
    """v clamped to signed ``bits`` (combinational)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    y = Signal(signed(bits), name=name)
    m.d.comb += y.eq(Mux(v > hi, hi, Mux(v < lo, lo, v)))
    return y
