"""What QK and PV (grouped-query attention) share: the head ratio n_rep = heads //
kv_heads and whether kv_heads divides heads (the contract's ``heads % kv_heads == 0``),
and :class:`Cursor`, a tensor's base and read pointer in their walk over the heads; the
blocks of held queries (``blocks``, ``block_shape``: B = ``AccelConfig.attn_block``
queries, hb = min(B, n_rep) heads x tb = B // hb rows of one KV head, as ``hw.ops.qk``'s
docstring describes) in which both engines read each K / V row once for every query held.

A combinational divider of two ``isa.HEADS_BITS``-bit fields is some twenty LUT levels
(far beyond the 250 MHz rule of ``hw.timing``); this one is a restoring divider of
``STEP`` quotient bits per cycle, started by the command's ``start`` (the arguments are
valid from that cycle): the quotient and the remainder are valid ``cycles()`` cycles
after it, and stay until the next start.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Mux, Signal

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


def blocks(heads: int, kv_heads: int, rows: int, keys: int, block: int):
    """The blocks of held queries of one command, in order: (nh, nt, vis) per block -- nh
    heads x nt rows (hb = min(block, n_rep) heads and tb = block // hb rows at most; head
    chunks restart at each KV head), vis the visible keys of its last row. Rows inner,
    then head chunks, then KV heads."""
    n_rep = heads // kv_heads
    hb = min(block, n_rep)
    tb = block // hb
    for _ in range(kv_heads):
        for r0 in range(0, n_rep, hb):
            nh = min(hb, n_rep - r0)
            for t0 in range(0, rows, tb):
                nt = min(tb, rows - t0)
                yield nh, nt, keys - rows + t0 + nt


def block_shape(m, n_rep, block: int):
    """(hb, tb) registers of ``blocks``' shape from ``n_rep`` (valid a cycle after it)."""
    hb, tb = Signal(range(block + 1), name="blk_hb"), Signal(range(block + 1), name="blk_tb")
    tb_of = Array(Const(block // max(n, 1), range(block + 1)) for n in range(block))
    m.d.sync += [
        hb.eq(Mux(n_rep >= block, block, n_rep)),
        tb.eq(Mux(n_rep >= block, 1, tb_of[n_rep[: max(1, (block - 1).bit_length())]])),
    ]
    return hb, tb


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
