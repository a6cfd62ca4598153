"""FFN activations: the golden specification.

**ReLU^2** (BitNet b1.58 ``relu2``), exact: ``relu2(x) = max(x, 0)^2``. Input signed
int8/int16/int32 with any fixed point Q.F; output Q.2F, unsigned value held in int16/
int32/int64 respectively (the values fit: max 127^2 = 16129 < 2^14 for int8, 2^30 for
int16, 2^62 for int32). ``relu2_gated(gate, up) = relu2(gate) * up`` (the gated FFN
product), exact, for int8/int16 inputs: int32 out for int8 x int8 (|.| <= 127^2 * 128
< 2^21), int64 otherwise; fixed point Q.(2 F_gate + F_up).

**GELU and SiLU** (Edge-MoE style): both are ``f(x) = ReLU(x) - delta(|x|)`` exactly,
because x * g(x) with g(-x) = 1 - g(x) gives, for either sign of x,
``f(x) = ReLU(x) - |x| g(-|x|)``:

- GELU (exact erf form, torch's default): g = Phi, ``delta(a) = a * Phi(-a)`` (max 0.17
  at a = 0.75; delta(4) = 1.3e-4),
- SiLU: g = sigmoid, ``delta(a) = a * sigmoid(-a)`` (max 0.28 at a = 1.28; delta(8) =
  2.7e-3 is not negligible, delta(16) = 1.8e-6).

Formats (ActivationConfig; defaults in parentheses): input signed ``in_bits`` (16)
Q.IF (Q7.8); output signed ``out_bits`` (16) Q.OF (Q7.8), saturating (never reached
for the defaults: -0.28 <= f(x) <= max(x, 0)). delta table for ``kind`` in
{"gelu", "silu"} (``delta_lut(kind, cfg)``): ``2^Lb + 1`` entries
``T[i] = round_half_up(delta(i h) * 2^LF)``, unsigned UQ0.LF (LF = lut_frac_bits = 12),
``h = 2^(range_log2 - Lb)``: GELU Lb = 6 over [0, 4), SiLU Lb = 8 over [0, 16), both
h = 1/16 = 16 input LSBs. Datapath, with ``a = |x|`` (in_bits unsigned),
``sg = seg_shift(kind) = IF + range_log2 - Lb`` (4)::

    i = a >> sg,  w = a mod 2^sg                      segment and position in it
    delta = 0                                      if i >= 2^Lb (|x| >= 2^range_log2)
    delta = T[i] + rhu((T[i+1] - T[i]) * w, sg)    otherwise (signed slope, Q.LF)
    y = rhu(ReLU(x) * 2^(LF-IF) - delta, LF - OF)  then saturate to out_bits

``rhu(v, s) = (v + 2^(s-1)) >> s`` (round half up; ``>>`` arithmetic = floor;
rhu(v, 0) = v). Table entries need 11 bits (max 1140 for SiLU) and the signed slope
T[i+1] - T[i] 8 bits (-33..124), so the interpolation multiplier is 8 x sg = 8 x 4 bits
for the defaults.

Error at representable inputs (the input quantization is not counted): output rounding
2^-(OF+1) (1.95e-3) + linear interpolation h^2/8 max|delta''| (GELU 0.80 -> 3.9e-4,
SiLU 0.50 -> 2.4e-4) + table and interpolation roundings 2 * 2^-(LF+1) (2.4e-4) + the
tail delta(2^range_log2) (GELU 1.3e-4, SiLU 1.8e-6). Stated bounds over the whole input
range (every one of the 2^16 inputs): ``GELU_ABS_ERR``, ``SILU_ABS_ERR`` (I-BERT i-GELU:
1.8e-2 on [-4, 4]). The output LSB dominates; Q.12 outputs (out_frac_bits = 12, int32)
bring both below 1e-3.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from .config import DEFAULT, ActivationConfig
from .fixed import rhu

# Max |y - f(x)| over every representable input, output rounding included (default config).
GELU_ABS_ERR = 2.8e-3
SILU_ABS_ERR = 2.6e-3
# I-BERT i-GELU max abs error on [-4, 4] (DESIGN §7), for comparison in the report.
IBERT_GELU_ABS_ERR = 1.8e-2
# ReLU^2 and the gated product are exact.
RELU2_ABS_ERR = 0.0

KINDS = ("gelu", "silu")

_RELU2_OUT = {
    np.dtype(np.int8): np.int16,
    np.dtype(np.int16): np.int32,
    np.dtype(np.int32): np.int64,
}


# --------------------------------------------------------------------------- float
def _phi_neg(a: np.ndarray) -> np.ndarray:
    """Phi(-a) = erfc(a / sqrt 2) / 2, float64."""
    erfc = np.frompyfunc(math.erfc, 1, 1)
    return erfc(np.asarray(a, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64) / 2


def delta_ref(kind: str, a) -> np.ndarray:
    """delta(a) = a * g(-a) for a >= 0 (g = Phi for GELU, sigmoid for SiLU), float64."""
    a = np.asarray(a, dtype=np.float64)
    if kind == "gelu":
        return a * _phi_neg(a)
    if kind == "silu":
        return a / (1.0 + np.exp(a))
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


def gelu_ref(x) -> np.ndarray:
    """Exact (erf) GELU in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x * (1.0 - _phi_neg(x))


def silu_ref(x) -> np.ndarray:
    """SiLU x * sigmoid(x) in float64 (overflow-free form)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, x / (1.0 + e), x * e / (1.0 + e))


# --------------------------------------------------------------------------- ReLU^2
def relu2(x) -> np.ndarray:
    """max(x, 0)^2, exact: int8 -> int16, int16 -> int32, int32 -> int64 (Q.F -> Q.2F)."""
    x = np.asarray(x)
    if x.dtype not in _RELU2_OUT:
        raise ValueError(f"x: expected int8, int16 or int32, got {x.dtype}")
    r = np.maximum(x.astype(np.int64), 0)
    return (r * r).astype(_RELU2_OUT[x.dtype])


def relu2_gated(gate, up) -> np.ndarray:
    """relu2(gate) * up, exact: int32 for int8 x int8, int64 when either is int16."""
    gate, up = np.asarray(gate), np.asarray(up)
    for name, a in (("gate", gate), ("up", up)):
        if a.dtype not in (np.int8, np.int16):
            raise ValueError(f"{name}: expected int8 or int16, got {a.dtype}")
    try:
        np.broadcast_shapes(gate.shape, up.shape)
    except ValueError:
        raise ValueError(
            f"up: shape {up.shape} does not broadcast with gate {gate.shape}"
        ) from None
    out = relu2(gate).astype(np.int64) * up.astype(np.int64)
    small = gate.dtype == np.int8 and up.dtype == np.int8
    return out.astype(np.int32 if small else np.int64)


# --------------------------------------------------------------------------- GELU / SiLU
def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    return kind


@cache
def delta_lut(kind: str, cfg: ActivationConfig = DEFAULT.activation) -> np.ndarray:
    """T[i] = round_half_up(delta(i h) * 2^LF), i = 0..2^Lb (int64, read-only)."""
    n = 1 << cfg.lut_bits(_kind(kind))
    h = 2.0 ** (cfg.range_log2(kind) - cfg.lut_bits(kind))
    vals = delta_ref(kind, np.arange(n + 1) * h) * 2.0**cfg.lut_frac_bits
    lut = np.floor(vals + 0.5).astype(np.int64)
    lut.flags.writeable = False
    return lut


def delta_fx(kind: str, a, cfg: ActivationConfig = DEFAULT.activation) -> np.ndarray:
    """Interpolated delta(|x|) in Q.LF (int64) for a = |x| >= 0 in Q.IF."""
    a = np.asarray(a, dtype=np.int64)
    lb, sg = cfg.lut_bits(_kind(kind)), cfg.seg_shift(kind)
    lut = delta_lut(kind, cfg)
    i = a >> sg
    inside = i < (1 << lb)
    ic = np.where(inside, i, 0)
    w = a & ((1 << sg) - 1)
    d = lut[ic] + rhu((lut[ic + 1] - lut[ic]) * w, sg)
    return np.where(inside, d, 0)


def act_fx(x, kind: str, cfg: ActivationConfig = DEFAULT.activation) -> np.ndarray:
    """GELU or SiLU of signed Q.IF integers: ReLU(x) - delta(|x|), Q.OF out (see module doc)."""
    _kind(kind)
    x = np.asarray(x)
    if x.dtype.kind != "i":
        raise ValueError(f"x: expected a signed integer dtype, got {x.dtype}")
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    if x.size and (int(x.min()) < lo or int(x.max()) > hi):
        raise ValueError(f"x: values outside signed {cfg.in_bits}-bit range [{lo}, {hi}]")
    x = x.astype(np.int64)
    lf = cfg.lut_frac_bits
    acc = (np.maximum(x, 0) << (lf - cfg.in_frac_bits)) - delta_fx(kind, np.abs(x), cfg)
    y = rhu(acc, lf - cfg.out_frac_bits)
    y = np.clip(y, -(1 << (cfg.out_bits - 1)), (1 << (cfg.out_bits - 1)) - 1)
    return y.astype(
        np.int16 if cfg.out_bits <= 16 else np.int32 if cfg.out_bits <= 32 else np.int64
    )


def gelu_fx(x, cfg: ActivationConfig = DEFAULT.activation) -> np.ndarray:
    return act_fx(x, "gelu", cfg)


def silu_fx(x, cfg: ActivationConfig = DEFAULT.activation) -> np.ndarray:
    return act_fx(x, "silu", cfg)


# --------------------------------------------------------------------------- measurement
def all_inputs(cfg: ActivationConfig = DEFAULT.activation) -> np.ndarray:
    """Every representable GELU/SiLU input (int32 array; 2^in_bits values)."""
    return np.arange(-(1 << (cfg.in_bits - 1)), 1 << (cfg.in_bits - 1), dtype=np.int32)


def max_abs_error(kind: str, x, cfg: ActivationConfig = DEFAULT.activation) -> float:
    x = np.asarray(x)
    y = act_fx(x, kind, cfg).astype(np.float64) * 2.0**-cfg.out_frac_bits
    xf = x.astype(np.float64) * 2.0**-cfg.in_frac_bits
    ref = gelu_ref(xf) if kind == "gelu" else silu_ref(xf)
    return float(np.max(np.abs(y - ref)))


def error_report(cfg=DEFAULT) -> list[dict]:
    ac = cfg.activation
    rng = np.random.default_rng(0)
    x = all_inputs(ac)
    lo, hi = -(1 << (ac.in_bits - 1)), 1 << (ac.in_bits - 1)
    rng_in = (
        f"every Q.{ac.in_frac_bits} input in [{lo * 2.0**-ac.in_frac_bits:g}, "
        f"{hi * 2.0**-ac.in_frac_bits:g})"
    )
    # ReLU^2 / gated product against exact Python integers
    g = rng.integers(-128, 128, size=4096, dtype=np.int64)
    u = rng.integers(-128, 128, size=4096, dtype=np.int64)
    g32 = rng.integers(-(1 << 31), 1 << 31, size=4096, dtype=np.int64)
    r2_err = max(
        max(
            abs(int(v) - max(int(a), 0) ** 2)
            for a, v in zip(g32, relu2(g32.astype(np.int32)), strict=False)
        ),
        max(
            abs(int(v) - max(int(a), 0) ** 2 * int(b))
            for a, b, v in zip(
                g, u, relu2_gated(g.astype(np.int8), u.astype(np.int8)), strict=False
            )
        ),
    )
    return [
        {
            "block": "activations",
            "quantity": "GELU abs error (I-BERT i-GELU: 1.8e-2)",
            "domain": rng_in,
            "bound": GELU_ABS_ERR,
            "measured": max_abs_error("gelu", x, ac),
        },
        {
            "block": "activations",
            "quantity": "SiLU abs error",
            "domain": rng_in,
            "bound": SILU_ABS_ERR,
            "measured": max_abs_error("silu", x, ac),
        },
        {
            "block": "activations",
            "quantity": "ReLU^2 and relu2(gate)*up vs exact integers",
            "domain": "random int32 x; random int8 gate, up",
            "bound": RELU2_ABS_ERR,
            "measured": float(r2_err),
        },
    ]
