"""Ternary weight packing formats: the golden specification of the memory layouts.

All functions take/return a ternary matrix ``w_t`` int8 [N, K] = (out, in), values in
{-1, 0, +1}. Bad input (dtype, ndim, shape, non-ternary values, invalid codes, nonzero
padding) raises ValueError naming the argument.

**HF 2-bit** (``pack_hf`` / ``unpack_hf``; DESIGN §6, transformers ``pack_weights``)
    uint8 [N/4, K]; code = w + 1 in {0, 1, 2} (3 is invalid); byte row r, column k holds
    output rows r + i*N/4 (i = 0..3) in bits [2i+1 : 2i]. N must be a multiple of 4.

**Group codes** (``pack_codes`` / ``unpack_codes``; what the TLMM engine reads)
    Per output row, the K inputs are cut into groups of G = cfg.group (K padded with
    zero weights to a multiple of G) and each group becomes the ``cfg.code_bits``-wide
    code of golden.tlmm (``join_codes(*encode_weights(w_t, cfg))``). The codes of one row
    form a little-endian bit stream: code j occupies stream bits [code_bits*j,
    code_bits*(j+1)), LSB first, and stream bit b is bit (b mod 8) of byte b div 8. The
    stream is zero-filled to whole bytes: uint8 [N, ceil(ceil(K/G)*code_bits/8)].

**TL2** (``pack_tl2`` / ``unpack_tl2``): the group codes of ``TL2`` = G=3, mirrored
    table: per 3 weights a 4-bit magnitude index (bits [3:0], 0..13) and a sign bit
    (bit 4), 5 bits per 3 weights, packed densely as above -- exactly the (index, sign)
    that golden.tlmm consumes in mirrored mode. (bitnet.cpp's TL2 uses the same 4+1-bit
    split; its index order and byte layout are not reproduced.)

**Base-3** (``pack_base3`` / ``unpack_base3``)
    5 weights per byte along K: byte = sum_{i<5} (w[n, 5j+i] + 1) * 3^i (0..242; larger
    bytes are invalid); K padded with zero weights to a multiple of 5:
    uint8 [N, ceil(K/5)].

Unpack functions that cannot infer K from the packed shape take ``k``; padding must
decode to zero weights.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import tlmm as _tlmm
from .config import DEFAULT, TLMMConfig

HF_CODE_BITS = 2  # code = w + 1 in {0, 1, 2}
HF_PER_BYTE = 8 // HF_CODE_BITS  # 4 output rows per byte
BASE3_PER_BYTE = 5  # largest n with 3^n <= 256
assert 3**BASE3_PER_BYTE <= 256 < 3 ** (BASE3_PER_BYTE + 1)

# The TL2 format: G=3 mirrored table codes (4-bit index + sign), on the default datapath.
TL2 = replace(DEFAULT.tlmm, group=3, table="mirrored")


def _check_2d(a, name: str, dtype, shape: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected {shape}, got shape {a.shape}")
    return a


def _check_ternary(w_t, name: str = "w_t") -> np.ndarray:
    w_t = _check_2d(w_t, name, np.int8, "[N, K]")
    if w_t.size and (int(w_t.min()) < -1 or int(w_t.max()) > 1):
        raise ValueError(f"{name}: values must be ternary (-1, 0, +1)")
    return w_t


def _check_packed(packed, name: str = "packed") -> np.ndarray:
    return _check_2d(packed, name, np.uint8, "2 dimensions")


def _check_k(k, name: str = "k") -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name}: expected a positive int, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------- HF 2-bit
def pack_hf(w_t: np.ndarray) -> np.ndarray:
    """Ternary [N, K] -> uint8 [N/4, K], Hugging Face BitNet layout (see module doc)."""
    w_t = _check_ternary(w_t)
    n, k = w_t.shape
    if n % HF_PER_BYTE:
        raise ValueError(f"w_t: N = {n} must be a multiple of {HF_PER_BYTE}")
    code = (w_t + 1).astype(np.uint8).reshape(HF_PER_BYTE, n // HF_PER_BYTE, k)
    packed = np.zeros((n // HF_PER_BYTE, k), dtype=np.uint8)
    for i in range(HF_PER_BYTE):
        packed |= code[i] << np.uint8(HF_CODE_BITS * i)
    return packed


def unpack_hf(packed: np.ndarray) -> np.ndarray:
    """uint8 [R, K] -> ternary int8 [4R, K] (inverse of pack_hf; code 3 is invalid)."""
    packed = _check_packed(packed)
    mask = np.uint8((1 << HF_CODE_BITS) - 1)
    code = np.stack([(packed >> np.uint8(HF_CODE_BITS * i)) & mask for i in range(HF_PER_BYTE)])
    if np.any(code == mask):
        raise ValueError("packed: invalid 2-bit code 3")
    return (code.astype(np.int8) - 1).reshape(-1, packed.shape[1])


# --------------------------------------------------------------------------- group codes
def _stream_bytes(groups: int, cfg: TLMMConfig) -> int:
    return -(-groups * cfg.code_bits // 8)


def pack_codes(w_t: np.ndarray, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """Ternary [N, K] -> uint8 [N, ceil(ceil(K/G)*code_bits/8)] dense TLMM group codes."""
    w_t = _check_ternary(w_t)
    codes = _tlmm.join_codes(*_tlmm.encode_weights(w_t, cfg), cfg)  # [N, groups]
    bits = (codes[:, :, None] >> np.arange(cfg.code_bits, dtype=np.uint8)) & np.uint8(1)
    bits = bits.reshape(codes.shape[0], -1)
    return np.packbits(bits, axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray, k: int, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """Inverse of pack_codes: uint8 [N, bytes] and K -> ternary int8 [N, k]."""
    packed = _check_packed(packed)
    k = _check_k(k)
    groups = _tlmm.num_groups(k, cfg)
    if packed.shape[1] != _stream_bytes(groups, cfg):
        raise ValueError(
            f"packed: expected {_stream_bytes(groups, cfg)} bytes per row for "
            f"k={k}, got {packed.shape[1]}"
        )
    bits = np.unpackbits(packed, axis=1, bitorder="little")
    used = groups * cfg.code_bits
    if np.any(bits[:, used:]):
        raise ValueError("packed: nonzero padding bits after the last code")
    bits = bits[:, :used].reshape(packed.shape[0], groups, cfg.code_bits)
    codes = (bits << np.arange(cfg.code_bits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)
    try:
        index, sign = _tlmm.split_codes(codes, cfg)
        return _tlmm.decode_weights(index, sign, k, cfg)
    except ValueError as err:
        raise ValueError(f"packed: {err}") from None


def pack_tl2(w_t: np.ndarray) -> np.ndarray:
    """Ternary [N, K] -> TL2 codes (5 bits per 3 weights), uint8 [N, ceil(ceil(K/3)*5/8)]."""
    return pack_codes(w_t, TL2)


def unpack_tl2(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack_tl2."""
    return unpack_codes(packed, k, TL2)


# --------------------------------------------------------------------------- base-3
def pack_base3(w_t: np.ndarray) -> np.ndarray:
    """Ternary [N, K] -> uint8 [N, ceil(K/5)], byte = sum (w_i + 1) * 3^i."""
    w_t = _check_ternary(w_t)
    n, k = w_t.shape
    pad = -k % BASE3_PER_BYTE
    code = np.pad(w_t, ((0, 0), (0, pad))).astype(np.uint8) + np.uint8(1)
    code = code.reshape(n, -1, BASE3_PER_BYTE)
    powers = (3 ** np.arange(BASE3_PER_BYTE)).astype(np.uint8)
    return (code * powers).sum(axis=2, dtype=np.uint8)


def unpack_base3(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack_base3: uint8 [N, ceil(k/5)] and K -> ternary int8 [N, k]."""
    packed = _check_packed(packed)
    k = _check_k(k)
    if packed.shape[1] != -(-k // BASE3_PER_BYTE):
        raise ValueError(
            f"packed: expected {-(-k // BASE3_PER_BYTE)} bytes per row for k={k}, "
            f"got {packed.shape[1]}"
        )
    if packed.size and int(packed.max()) >= 3**BASE3_PER_BYTE:
        raise ValueError(f"packed: byte >= {3**BASE3_PER_BYTE} is not a base-3 code")
    powers = 3 ** np.arange(BASE3_PER_BYTE, dtype=np.int16)
    w = ((packed[:, :, None].astype(np.int16) // powers) % 3 - 1).astype(np.int8)
    w = w.reshape(packed.shape[0], -1)
    if np.any(w[:, k:]):
        raise ValueError(f"packed: padding weights beyond k={k} must be zero")
    return np.ascontiguousarray(w[:, :k])
