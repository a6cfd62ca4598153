"""KV-cache rows in the datapath's format (``golden.isa`` "KV rows", ``ForwardConfig.kv_bits``):
the one piece of logic that unpacks them for QK / PV and packs them in ROPE_QUANT. The
format is fixed per build (elaboration time): kv_bits = 8, int8 codes, nothing to do;
kv_bits = 4, two codes a byte, code 2i in the low nibble of byte i, two's complement.

Unpacking is wiring plus sign extension (no logic level): a row of head_dim/2 bytes at bit
0 of a read beat becomes ``lanes`` int8 lanes, lane i = nibble i sign-extended; nibbles
beyond the row are zero in the response (its bytes beyond len are 0), so their lanes are
0, as int8 lanes beyond head_dim are.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, Value

from golden.config import DatapathConfig


def int4(cfg: DatapathConfig) -> bool:
    """The build's KV rows are packed int4 (``ForwardConfig.kv_bits == 4``)."""
    return cfg.forward.kv_bits == 4


def row_bytes(head_dim, cfg: DatapathConfig, kv=1):
    """Bytes of a KV row (``golden.isa.kv_row`` of the build's format) on Amaranth
    values: head_dim, or head_dim / 2 (head_dim even) where ``kv`` (a q row is int8)."""
    if not int4(cfg):
        return Value.cast(head_dim)
    hd = Value.cast(head_dim)
    return Mux(kv, hd >> 1, hd) if not isinstance(kv, int) else (hd >> 1 if kv else hd)


def unpack_lanes(m: Module, data, lanes: int, cfg: DatapathConfig, name: str = "kv_lanes"):
    """``lanes`` int8 codes (8*lanes bits, lane i at bits [8i, 8i+8)) of the KV row at bit
    0 of ``data`` (int4: a combinational signal of ``m``, the nibbles sign-extended)."""
    data = Value.cast(data)
    if not int4(cfg):
        return data[: 8 * lanes]
    nib = [data[4 * i : 4 * i + 4] for i in range(lanes)]
    out = Signal(8 * lanes, name=name)
    m.d.comb += out.eq(Cat(*(Cat(n, n[3].replicate(4)) for n in nib)))
    return out


def pack_codes(m: Module, codes, n: int, name: str = "kv_packed") -> Signal:
    """The low nibbles of ``n`` int8 codes (bits [8i, 8i+8) of ``codes``) packed two a byte,
    code i at bits [4i, 4i+4): an int4 row (codes in [-8, 7]); a combinational signal."""
    codes = Value.cast(codes)
    out = Signal(4 * n, name=name)
    m.d.comb += out.eq(Cat(*(codes[8 * i : 8 * i + 4] for i in range(n))))
    return out
