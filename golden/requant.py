"""INT32 -> INTn requantization by fixed-point multiplier and shift: golden specification.

``requantize(acc, mult, shift)``::

    y = saturate((acc * mult + 2^(shift-1)) >> shift, out_min, out_max)

- ``acc``: signed ``RequantConfig.in_bits`` (int32) integers, any shape.
- ``mult``: unsigned, 0 <= mult <= 2^mult_bits - 1; ``shift``: 0 <= shift <= shift_max.
  Both are scalars or arrays broadcast against ``acc`` (per tensor, per row, per column).
- ``>>`` is an arithmetic (floor) shift, so with the 2^(shift-1) constant the result is
  round half up (toward +inf) of acc*mult/2^shift. **shift = 0**: no rounding constant
  (nothing is dropped), y = saturate(acc * mult).
- The product acc*mult is signed ``product_bits`` = in_bits + mult_bits (48) wide, the
  sum with the constant fits int64 (config-checked); saturation to
  [-2^(out_bits-1), 2^(out_bits-1)-1] happens once, after the shift.
- Output dtype: int8 / int16 / int32 for out_bits <= 8 / 16 / 32.

``quantize_multiplier(scale)`` returns the normalized (mult, shift) closest to a positive
real scale: 2^(mult_bits-1) <= mult <= 2^mult_bits - 1, mult = round(scale * 2^shift)
(round half to even, on the exact binary value of the float). Its relative error
|mult*2^-shift - scale| / scale <= 2^-mult_bits (``multiplier_rel_bound``), half an LSB of
the smallest normalized mult. Representable scales: [2^(mult_bits-1-shift_max),
2^mult_bits - 1/2); outside that range (or non-finite / <= 0) it raises ValueError.

Error (proved, LSB of the output; a = acc * scale, a' = acc * mult * 2^-shift):

- y is exactly saturate(round_half_up(a')) -- ``REQUANT_EXACT_BOUND`` = 0 vs rational math;
- |a' - a| <= |a| * 2^-mult_bits, so for out_min <= a <= out_max (saturation cannot act)
  |y - a| <= 1/2 + 2^(out_bits-1-mult_bits) (``requant_abs_bound``), and for every int32
  acc |y - saturate(round(a))| <= 1 = ``REQUANT_LSB_BOUND`` (when |a| <= 2^mult_bits,
  |a' - a| <= 1 and rounding and saturation are monotone; beyond, both saturate to the
  same end as long as mult_bits >= out_bits).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .config import DEFAULT, RequantConfig

REQUANT_EXACT_BOUND = 0  # y vs saturate(round_half_up(acc*mult/2^shift)) in exact arithmetic
REQUANT_LSB_BOUND = 1  # |y - saturate(round(acc*scale))| with (mult, shift) from the scale


def multiplier_rel_bound(cfg: RequantConfig = DEFAULT.requant) -> float:
    """Relative error bound of quantize_multiplier: 2^-mult_bits."""
    return 2.0**-cfg.mult_bits


def requant_abs_bound(cfg: RequantConfig = DEFAULT.requant) -> float:
    """|y - acc*scale| bound (LSB) for out_min <= acc*scale <= out_max:
    1/2 + 2^(out_bits-1-mult_bits)."""
    return 0.5 + 2.0 ** (cfg.out_bits - 1 - cfg.mult_bits)


def _out_dtype(cfg: RequantConfig):
    return np.int8 if cfg.out_bits <= 8 else np.int16 if cfg.out_bits <= 16 else np.int32


def check_int(a, name: str, lo: int, hi: int) -> np.ndarray:
    """An integer array with values in [lo, hi], as int64 (ValueError naming ``name``)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer dtype, got {a.dtype}")
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ValueError(f"{name}: values outside [{lo}, {hi}]")
    return a.astype(np.int64)


def quantize_multiplier(scale: float, cfg: RequantConfig = DEFAULT.requant) -> tuple[int, int]:
    """Closest normalized (mult, shift) with mult * 2^-shift ~= scale (see module doc)."""
    try:
        scale_f = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale: expected a real number, got {scale!r}") from None
    if not math.isfinite(scale_f) or scale_f <= 0:
        raise ValueError(f"scale: must be positive and finite, got {scale!r}")
    frac, exp = math.frexp(scale_f)  # scale = frac * 2^exp, 0.5 <= frac < 1, exact
    shift = cfg.mult_bits - exp
    mult = round(math.ldexp(frac, cfg.mult_bits))  # exact float, round half to even
    if mult == 1 << cfg.mult_bits:  # rounded up out of range: renormalize
        mult >>= 1
        shift -= 1
    if shift < 0:
        raise ValueError(f"scale: {scale_f!r} too large (max < {2**cfg.mult_bits - 0.5})")
    if shift > cfg.shift_max:
        raise ValueError(f"scale: {scale_f!r} too small for shift_max={cfg.shift_max}")
    return mult, shift


def requantize(acc: np.ndarray, mult, shift, cfg: RequantConfig = DEFAULT.requant) -> np.ndarray:
    """y = saturate((acc*mult + 2^(shift-1)) >> shift) (see module doc)."""
    acc = check_int(acc, "acc", -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1)
    mult = check_int(mult, "mult", 0, cfg.mult_max)
    shift = check_int(shift, "shift", 0, cfg.shift_max)
    try:
        np.broadcast_shapes(acc.shape, mult.shape, shift.shape)
    except ValueError:
        raise ValueError(
            f"mult/shift: shapes {mult.shape}, {shift.shape} do not broadcast "
            f"against acc {acc.shape}"
        ) from None
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    y = np.right_shift(acc * mult + half, shift)
    return np.clip(y, cfg.out_min, cfg.out_max).astype(_out_dtype(cfg))


def requantize_exact(acc: int, mult: int, shift: int, cfg: RequantConfig = DEFAULT.requant) -> int:
    """Scalar rational-arithmetic reference: saturate(floor(acc*mult/2^shift + 1/2)), or
    saturate(acc*mult) for shift = 0."""
    v = Fraction(int(acc) * int(mult), 1 << int(shift))
    if shift:
        v += Fraction(1, 2)
    return min(max(math.floor(v), cfg.out_min), cfg.out_max)


def scaled_exact(acc: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """acc * scale exactly, as (numerator object array, power-of-2 denominator q)."""
    p, q = float(scale).as_integer_ratio()  # q is a power of 2
    return np.asarray(acc).astype(object) * p, q


def round_half_up_exact(
    acc: np.ndarray, scale: float, cfg: RequantConfig = DEFAULT.requant
) -> np.ndarray:
    """saturate(floor(acc*scale + 1/2)) in exact integer arithmetic (int64 array)."""
    num, q = scaled_exact(acc, scale)
    r = (2 * num + q) // (2 * q)
    return np.clip(r.astype(np.int64), cfg.out_min, cfg.out_max)


# --------------------------------------------------------------------------- report
def error_report(cfg=DEFAULT) -> list[dict]:
    """Stated vs measured: exactness, requant error vs real scale, multiplier error."""
    rc = cfg.requant
    rng = np.random.default_rng(0)
    lo, hi = -(1 << (rc.in_bits - 1)), (1 << (rc.in_bits - 1)) - 1

    # exactness vs rational math, random (mult, shift) incl. shift 0 and extremes
    exact_err = 0
    for _ in range(300):
        mult = int(rng.integers(0, rc.mult_max + 1))
        shift = int(rng.integers(0, rc.shift_max + 1))
        acc = np.concatenate([rng.integers(lo, hi + 1, size=6), [lo, hi, 0, -1, 1]])
        y = requantize(acc, mult, shift, rc)
        for a, v in zip(acc, y, strict=False):
            exact_err = max(exact_err, abs(int(v) - requantize_exact(int(a), mult, shift, rc)))

    # multiplier relative error and requant vs real scale (exact integer arithmetic)
    rel = 0.0
    lsb = 0
    absd = 0.0
    for _ in range(200):
        scale = float(np.exp2(rng.uniform(-30, -2)))
        mult, shift = quantize_multiplier(scale, rc)
        rel = max(rel, abs(mult * 2.0**-shift - scale) / scale)
        reach = int(2**rc.out_bits / scale)  # acc range that hits the output range
        acc = np.concatenate(
            [
                rng.integers(lo, hi + 1, size=32),
                rng.integers(max(lo, -reach), min(hi, reach) + 1, size=64),
                [lo, hi],
            ]
        )
        y = requantize(acc, mult, shift, rc).astype(np.int64)
        lsb = max(lsb, int(np.max(np.abs(y - round_half_up_exact(acc, scale, rc)))))
        num, q = scaled_exact(acc, scale)
        small = (num >= q * rc.out_min) & (num <= q * rc.out_max)
        if small.any():
            absd = max(absd, float(np.max(np.abs(y[small].astype(object) * q - num[small]))) / q)
    rows = (  # (quantity, domain, bound, measured)
        (
            "y vs saturate(round_half_up(acc*mult/2^shift)), exact (LSB)",
            f"int{rc.in_bits} acc, random mult, shift 0..{rc.shift_max}",
            float(REQUANT_EXACT_BOUND),
            float(exact_err),
        ),
        (
            "quantize_multiplier relative error",
            "scale in 2^-30..2^-2 (log-uniform)",
            multiplier_rel_bound(rc),
            rel,
        ),
        (
            "|y - saturate(round(acc*scale))| (LSB)",
            f"int{rc.in_bits} acc, scale in 2^-30..2^-2",
            float(REQUANT_LSB_BOUND),
            float(lsb),
        ),
        (
            "|y - acc*scale| for out_min <= acc*scale <= out_max (LSB)",
            "non-saturating outputs, scale in 2^-30..2^-2",
            requant_abs_bound(rc),
            absd,
        ),
    )
    return [
        {"block": "requant", "quantity": q, "domain": d, "bound": b, "measured": m}
        for q, d, b, m in rows
    ]
