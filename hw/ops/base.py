"""The contract between the accelerator top and its op engines, and shared RTL helpers.

Engine ports (``EngineSignature(dma_bytes)``; the top drives the ``In`` ports)
=============================================================================
``start`` (in)   one-cycle pulse: a command for this engine; ``args`` is valid from this
                 cycle until ``done`` (the top holds the command register).
``args`` (in)    ``golden.isa.ARGS_UNION``: the engine reads its own member
                 (``args.norm_quant`` ...).
``mem_lo``, ``mem_hi`` (in)  the memory window: a tensor [a, a+n) must satisfy
                 ``mem_lo <= a`` and ``a + n <= mem_hi`` (else ADDR_RANGE).
``done`` (out)   one-cycle pulse: the command is finished; ``error`` (out, ``ErrorCode``)
                 is valid in that cycle (NONE: success).
``rd`` (out)     read requests ``{addr, len}``: ``len`` (1..dma_bytes) bytes at byte
                 address ``addr`` (any alignment).
``rdata`` (in)   one response beat per request, in request order: byte i of the request in
                 bits [8i, 8i+8) of the payload, zero beyond ``len``.
``wr`` (out)     posted writes ``{addr, len, data}``: the low ``len`` bytes of ``data``.

Rules every engine keeps (the top relies on them):
* errors are reported in the order the golden backend finds them: argument errors
  (BAD_DIM, ALIGN, ADDR_RANGE) before any write; data-dependent errors (BAD_OPERAND of a
  value, SCALE_RANGE) when found (a failing command may then have written part of its
  output, as the golden backend may);
* the error comes with ``done`` and no read left outstanding;
* ``done`` comes only after every read it requested has been consumed and every write
  has been accepted; it issues nothing after ``done``;
* between commands it ignores ``args``; a reset returns it to idle.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden import isa
from golden.isa import ErrorCode
from hw.fixed import bit_length, saturate


def rd_layout(dma_bytes: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(isa.ADDR_BITS), "len": range(dma_bytes + 1)})


def wr_layout(dma_bytes: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(isa.ADDR_BITS), "len": range(dma_bytes + 1),
                              "data": unsigned(8 * dma_bytes)})


class EngineSignature(wiring.Signature):
    def __init__(self, dma_bytes: int):
        self.dma_bytes = dma_bytes
        super().__init__({
            "start": In(1),
            "args": In(isa.ARGS_UNION),
            "mem_lo": In(isa.ADDR_BITS),
            "mem_hi": In(isa.ADDR_BITS + 1),
            "done": Out(1),
            "error": Out(ErrorCode),
            "rd": Out(stream.Signature(rd_layout(dma_bytes))),
            "rdata": In(stream.Signature(unsigned(8 * dma_bytes))),
            "wr": Out(stream.Signature(wr_layout(dma_bytes))),
        })


# ------------------------------------------------------------------ argument checks
def out_of_range(addr, nbytes, mem_lo, mem_hi):
    """[addr, addr + nbytes) not inside [mem_lo, mem_hi) (nbytes an unsigned value)."""
    return (addr < mem_lo) | ((addr + nbytes) > mem_hi)


def misaligned(addr, size: int):
    """addr not a multiple of ``size`` (a power of two)."""
    assert size & (size - 1) == 0
    return addr[:size.bit_length() - 1] != 0 if size > 1 else Const(0)


# ------------------------------------------------------------------ integer helpers
def normalize(m: Module, p, shift, bits: int, name: str):
    """``golden.model._normalize`` in combinational logic: the unsigned value p as a
    ``bits``-bit mantissa (round half up; carry renormalizes) and the shift
    ``shift - r``; p = 0 gives (0, 0). Returns (mant, shift) Signals; shift is signed, two
    bits wider than the wider of ``shift`` and ``isa.SCALE_SHIFT_BITS`` (the caller checks
    the record range)."""
    pw = len(p)
    bl = bit_length(m, p, f"{name}_bl")
    r = Signal(signed(max(pw, bits).bit_length() + 2), name=f"{name}_r")
    m.d.comb += r.eq(bl - bits)
    # right shift by r > 0 with rounding, or left shift by -r (exact; p < 2^(bits-1) then)
    rs = Signal(range(pw + 1), name=f"{name}_rs")
    ls = Signal(range(bits + 1), name=f"{name}_ls")
    m.d.comb += [rs.eq(Mux(r > 0, r, 0)), ls.eq(Mux(r < 0, -r, 0))]
    wide = Signal(unsigned(pw + 2), name=f"{name}_wide")
    m.d.comb += wide.eq(Mux(r > 0, (p + ((Const(1, pw + 2) << rs) >> 1)) >> rs, p << ls))
    carry = wide[bits]
    mant = Signal(unsigned(bits), name=f"{name}_mant")
    shift = shift if hasattr(shift, "shape") else Const(shift)
    sh = Signal(signed(max(len(shift), isa.SCALE_SHIFT_BITS) + 2), name=f"{name}_shift")
    with m.If(p == 0):
        m.d.comb += [mant.eq(0), sh.eq(0)]
    with m.Else():
        m.d.comb += [mant.eq(Mux(carry, wide >> 1, wide)), sh.eq(shift - r - carry)]
    return mant, sh


def scale_mul(m: Module, a_mant, a_shift, b_mant, b_shift, bits: int, name: str):
    """``golden.model.scale_mul`` (any mantissas, normalized or not): (mant, shift)."""
    p = Signal(unsigned(2 * bits), name=f"{name}_p")
    m.d.comb += p.eq(a_mant * b_mant)
    return normalize(m, p, a_shift + b_shift, bits, name)


def scale_of_int(m: Module, v, bits: int, name: str):
    """``golden.model.scale_of_int`` of an unsigned value: (mant, shift)."""
    return normalize(m, v, Const(0, signed(2)), bits, name)


def shift_fits_record(shift):
    """The shift fits the scale record's signed ``SCALE_SHIFT_BITS`` (else SCALE_RANGE)."""
    lo, hi = -(1 << (isa.SCALE_SHIFT_BITS - 1)), (1 << (isa.SCALE_SHIFT_BITS - 1)) - 1
    return (shift >= lo) & (shift <= hi)


def requant(m: Module, acc, mant, s, out_bits: int, shift_max: int, name: str) -> Signal:
    """``golden.model.requant`` with s = shift - frac_bits (signed), combinational:
    s >= 0: ``sat((acc*mant + 2^(s-1)) >> s)`` (no constant for s = 0; s above shift_max
    acts as shift_max); s < 0: ``sat(clip(acc*mant, +-2^31) << min(-s, 31))``."""
    pw = len(acc) + len(mant) + 1
    p = Signal(signed(pw), name=f"{name}_p")
    m.d.comb += p.eq(acc.as_signed() * Cat(mant, Const(0, 1)).as_signed())
    # right: shifts at or beyond pw give 0 (|p| < 2^(pw-1)), so clamp there
    s_max = min(shift_max, pw)
    sr = Signal(range(s_max + 1), name=f"{name}_sr")
    m.d.comb += sr.eq(Mux(s <= 0, 0, Mux(s > s_max, s_max, s)))
    rnd = Signal(signed(pw + 1), name=f"{name}_rnd")
    m.d.comb += rnd.eq(p + ((Const(1, pw + 2) << sr) >> 1))
    right = Signal(signed(pw + 1), name=f"{name}_right")
    m.d.comb += right.eq(rnd >> sr)
    # left: pre-clip to +-2^31 and the shift to 31 (anything beyond saturates anyway)
    ls = Signal(range(32), name=f"{name}_ls")
    m.d.comb += ls.eq(Mux(s >= 0, 0, Mux(-s > 31, 31, -s)))
    v = Signal(signed(33), name=f"{name}_v")
    m.d.comb += v.eq(Mux(p > (1 << 31), 1 << 31, Mux(p < -(1 << 31), -(1 << 31), p)))
    left = Signal(signed(33 + 31), name=f"{name}_left")
    m.d.comb += left.eq(v << ls)
    return saturate(m, Mux(s < 0, left, right), out_bits, name)
