"""DMA-side pieces shared by the element-wise engines (ACT, RESIDUAL, NORM_QUANT): narrow
reads paired into lanes, and narrow writes from lanes.

:func:`pair_reader` -- operands read as pairs of response beats (A then B, each the next
``2L`` elements of its tensor from byte 0 of the beat, zeros beyond a short chunk at a
row's end) handed out as two L-lane sub-beats of (a, b) element pairs per chunk, one
sub-beat per cycle while the beats keep coming: the A beat is held (2L elements), the B
beat's first half goes out with the A beat's first half in the cycle the B beat arrives,
its second half is held and goes out the next cycle, in which the next A beat is taken.
Every chunk takes two cycles (a short chunk's second sub-beat carries zeros: the lanes
compute on them, nothing of them is written). Holding 2L + L elements (not a whole DMA
beat) is all the buffering; the memory carries 2L elements of each operand per two
cycles (a quarter of a 128-byte port for 4 lanes of int32).

:func:`packer` -- the lanes' results out as one write per chunk (its two sub-beats: the
chunk's ``n`` elements), written back to back from the destination address.

Both take part in one pipeline that freezes as a whole while a write waits (``stall``).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal, signed

from golden import isa

_EMPTY, _HAVE_A, _SECOND = 0, 1, 2


def pair_reader(m: Module, rdata, lanes: int, a_bits: int, b_bits: int, name: str):
    """The reader of the module docstring. The caller drives ``a_valid`` / ``b_valid``
    (the response beat at ``rdata`` is this chunk's A / B beat and may be taken),
    ``n`` (elements of the chunk, with the A beat), ``last`` (the chunk ends its row, with
    the A beat) and ``ready`` (the pipeline takes a sub-beat); it reads ``take`` (the
    response beat is taken this cycle), ``valid`` and the sub-beat: ``a``, ``b`` (lists of
    L element Values), ``half`` (0: elements [0, L) of the chunk, 1: [L, 2L)), ``n_out``,
    ``last_out`` (the chunk ends the row: its sub-beat ``half`` = 1 is the row's last)
    and ``empty`` (no chunk held)."""
    L = lanes
    s = SimpleNamespace(
        a_valid=Signal(name=f"{name}_a_valid"),
        b_valid=Signal(name=f"{name}_b_valid"),
        n=Signal(range(2 * L + 1), name=f"{name}_n"),
        last=Signal(name=f"{name}_last"),
        ready=Signal(name=f"{name}_ready"),
        take=Signal(name=f"{name}_take"),
        valid=Signal(name=f"{name}_valid"),
        half=Signal(name=f"{name}_half"),
        n_out=Signal(range(2 * L + 1), name=f"{name}_n_out"),
        last_out=Signal(name=f"{name}_last_out"),
        empty=Signal(name=f"{name}_empty"),
    )
    phase = Signal(range(3), name=f"{name}_phase")
    a_reg = Signal(2 * L * a_bits, name=f"{name}_a_reg")
    b_hi = Signal(L * b_bits, name=f"{name}_b_hi")
    second = phase == _SECOND
    fire = s.valid & s.ready
    take_a = s.a_valid & ((phase == _EMPTY) | (second & fire))
    take_b = s.b_valid & (phase == _HAVE_A) & s.ready
    m.d.comb += [
        s.valid.eq(second | ((phase == _HAVE_A) & s.b_valid)),
        s.half.eq(second),
        s.take.eq(take_a | take_b),
        s.empty.eq(phase == _EMPTY),
    ]
    a_lo, a_hi = a_reg[: L * a_bits], a_reg[L * a_bits :]
    b_lo = rdata[: L * b_bits]
    s.a = [
        Mux(second, a_hi.word_select(i, a_bits), a_lo.word_select(i, a_bits)).as_signed()
        for i in range(L)
    ]
    s.b = [
        Mux(second, b_hi.word_select(i, b_bits), b_lo.word_select(i, b_bits)).as_signed()
        for i in range(L)
    ]
    n_reg = Signal.like(s.n, name=f"{name}_n_reg")
    last_reg = Signal(name=f"{name}_last_reg")
    m.d.comb += [s.n_out.eq(n_reg), s.last_out.eq(last_reg)]
    with m.If(take_a):
        m.d.sync += [
            a_reg.eq(rdata[: 2 * L * a_bits]),
            n_reg.eq(s.n),
            last_reg.eq(s.last),
            phase.eq(_HAVE_A),
        ]
    with m.Elif(take_b):
        m.d.sync += [b_hi.eq(rdata[L * b_bits : 2 * L * b_bits]), phase.eq(_SECOND)]
    with m.Elif(second & fire):
        m.d.sync += phase.eq(_EMPTY)
    s.phase = phase
    return s


def packer(m: Module, wr, stall, valid, data, half, n, last, lanes: int, elem_bytes: int):
    """Writes of the module docstring from the pipeline's last stage (``valid``, ``data``:
    L elements of ``elem_bytes`` packed, ``half``, ``n``: elements of the chunk, ``last``:
    the chunk ends a row); drives ``wr`` from a register and ``stall`` (a write waits).
    Returns (``ptr``: the next write address, load it with the destination when a command
    starts; ``row_done``: one cycle per row written)."""
    L = lanes
    Lb = L * elem_bytes
    held = Signal(8 * Lb, name="pk_held")
    ptr = Signal(isa.ADDR_BITS + 1, name="pk_ptr")
    row_done = Signal(name="pk_row_done")
    nbytes = Signal(range(2 * Lb + 1), name="pk_nbytes")
    m.d.comb += [nbytes.eq(n * elem_bytes), stall.eq(wr.valid & ~wr.ready)]
    take = valid & ~stall
    m.d.comb += row_done.eq(take & half & last)
    with m.If(take & ~half):
        m.d.sync += held.eq(data)
    with m.If(take & half):
        m.d.sync += [
            wr.valid.eq(1),
            wr.payload.addr.eq(ptr),
            wr.payload.len.eq(nbytes),
            wr.payload.data.eq(Cat(held, data)),
            ptr.eq(ptr + nbytes),
        ]
    with m.Elif(wr.valid & wr.ready):
        m.d.sync += wr.valid.eq(0)
    return ptr, row_done


def check_pair_lanes(lanes, dma_bytes: int) -> int:
    """``lanes`` of an engine built on ``pair_reader`` (an int >= 1 whose chunk of 2L int32
    fits a DMA beat of ``dma_bytes``, a multiple of 4): ValueError naming what is wrong."""
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"lanes: expected an int >= 1, got {lanes!r}")
    if dma_bytes % 4 or 8 * lanes > dma_bytes:
        raise ValueError(
            f"lanes: a chunk of 2 * {lanes} int32 exceeds the {dma_bytes}-byte DMA beat"
        )
    return lanes


def chunk_len(left, chunk: int, name: str, m: Module) -> Signal:
    """min(left, chunk) as a Signal."""
    n = Signal(range(chunk + 1), name=name)
    m.d.comb += n.eq(Mux(left > chunk, chunk, left))
    return n


def sat_bits(m: Module, v, bits: int, name: str) -> Signal:
    """v (signed) saturated to signed ``bits``: out of range iff the bits from ``bits-1``
    up are not all equal (no comparator chains)."""
    v = v.as_signed() if hasattr(v, "as_signed") else v
    top = v[bits - 1 :]
    ok = top.all() | ~top.any()
    y = Signal(signed(bits), name=name)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    m.d.comb += y.eq(Mux(ok, v[:bits], Mux(v[-1], lo, hi)))
    return y


class Chunks:
    """A row of ``dim`` elements walked in chunks of at most ``chunk``: registers ``n``
    (elements of the current chunk) and ``end`` (it is the row's last), kept one step
    ahead so that no counter comparison sits in front of the logic that uses them.
    ``first()``: statements that start a row; ``advance()``: move to the next chunk."""

    def __init__(self, dim, chunk: int, name: str):
        self.dim, self.chunk = dim, chunk
        self.left = Signal(isa.DIM_BITS + 1, name=f"{name}_left")
        self.n = Signal(range(chunk + 1), name=f"{name}_n")
        self.end = Signal(name=f"{name}_end")

    def _load(self, left):
        C = self.chunk
        return [self.left.eq(left), self.n.eq(Mux(left > C, C, left)), self.end.eq(left <= C)]

    def first(self):
        return self._load(self.dim)

    def advance(self):
        return self._load(self.left - self.chunk)


class Rows:
    """A row counter over ``rows`` rows (at least 1) with registered ``more`` (rows
    remain) and ``last`` (the current row is the last one): a down-counter of the rows
    after the current one, so that no wide comparison sits in front of them."""

    def __init__(self, rows, name: str):
        self.rows = rows
        self.left = Signal(isa.ROWS_BITS, name=f"{name}_rows_left")
        self.more = Signal(name=f"{name}_more")
        self.last = Signal(name=f"{name}_last")

    def first(self):
        return [self.left.eq(self.rows - 1), self.more.eq(1), self.last.eq(self.rows == 1)]

    def advance(self):
        return [
            self.left.eq(self.left - 1),
            self.more.eq(~self.last),
            self.last.eq(self.left == 1),
        ]
