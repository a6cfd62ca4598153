"""What QK and PV (grouped-query attention) share: the head ratio n_rep = heads //
kv_heads and whether kv_heads divides heads (the contract's ``heads % kv_heads == 0``),
and :class:`Cursor`, a tensor's base and read pointer in their walk over the heads.

A combinational divider of two ``isa.HEADS_BITS``-bit fields is some twenty LUT levels
(far beyond the 250 MHz rule of ``hw.timing``); this one is a restoring divider of
``STEP`` quotient bits per cycle, started by the command's ``start`` (the arguments are
valid from that cycle): the quotient and the remainder are valid ``cycles()`` cycles
after it, and stay until the next start.
"""

from __future__ import annotations

from amaranth import Cat, Mux, Signal

from golden import isa

STEP = 1  # quotient bits per cycle (a compare-subtract: within the depth rule)


def cycles() -> int:
    """Cycles from ``start`` (excluded) until the results are valid."""
    return -(-isa.HEADS_BITS // STEP) + 1


def head_ratio(m, start, heads, kv_heads):
    """(n_rep, divides): n_rep a register and divides a function of one, valid
    ``cycles()`` cycles after ``start``."""
    B = isa.HEADS_BITS
    n = Signal(B, name="gqa_n")  # dividend bits not yet brought down (top first)
    rem = Signal(B + 1, name="gqa_rem")
    quo = Signal(B, name="gqa_quo")
    left = Signal(range(-(-B // STEP) + 1), name="gqa_left")
    divides = Signal(name="gqa_divides")
    m.d.comb += divides.eq(rem == 0)
    with m.If(start):
        m.d.sync += [n.eq(heads), rem.eq(0), quo.eq(0), left.eq(-(-B // STEP))]
    with m.Elif(left != 0):
        r, nn, q = rem, n, quo
        for _ in range(STEP):
            r = Cat(nn[B - 1], r[:B])
            ge = r >= kv_heads
            r = Mux(ge, r - kv_heads, r)[: B + 1]
            q = Cat(ge, q[: B - 1])
            nn = (nn << 1)[:B]
        m.d.sync += [rem.eq(r), n.eq(nn), quo.eq(q), left.eq(left - 1)]
    return quo, divides


class Cursor:
    """A tensor's place in the walk of a QK / PV command: ``base`` (where its current head
    or row starts) and ``ptr`` (its next read), address registers named ``base_name`` and
    ``ptr_name``. Each method returns the statements of one step."""

    def __init__(self, base_name: str, ptr_name: str):
        self.base = Signal(isa.ADDR_BITS + 1, name=base_name)
        self.ptr = Signal(isa.ADDR_BITS + 1, name=ptr_name)

    def start(self, addr) -> list:
        return [self.base.eq(addr), self.ptr.eq(addr)]

    def advance(self, n) -> list:
        """The next read, ``n`` bytes on."""
        return [self.ptr.eq(self.ptr + n)]

    def rewind(self) -> list:
        """Read the current head / row again from its start."""
        return [self.ptr.eq(self.base)]

    def next_base(self, stride) -> list:
        """The next head / row, ``stride`` bytes on, from its start."""
        return [self.base.eq(self.base + stride), self.ptr.eq(self.base + stride)]
