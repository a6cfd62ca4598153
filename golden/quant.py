"""Weight and activation quantization: the golden specification (DESIGN §3).

Two modes, as DESIGN §3 asks.

**Reference** (float math, matches Hugging Face ``transformers`` BitNet)

``weight_quant(w)`` -- ternary absmean, per tensor (``WeightQuant``)::

    scale = 1 / max(mean|w|, weight_eps)            # a *multiplier*, as transformers
    w_t   = clamp(round(w * scale), -1, 1)          # int8
    fake  = w_t / scale                             # weight_fake_quant, in w's dtype

``act_quant(x)`` -- INT8 absmax per row (last axis; ``ActQuant``, ``BitLinear.activation_quant``)::

    scale = (1 / max(max|x|, act_eps)) * act_max    # shape [..., 1]; two roundings (*)
    x_q   = clamp(round(x * scale), act_min, act_max)   # int8 (int16 if act_bits > 8)
    fake  = x_q / scale

- (*) torch evaluates ``127 / t`` as ``t.reciprocal() * 127`` (``Tensor.__rtruediv__``),
  so the activation scale is the rounded reciprocal times act_max, not one division;
  the weight scale ``1 / m`` is a single reciprocal either way.
- ``round`` is round half to even (``np.rint`` == ``torch.round``).
- The compute dtype is the input's: float32 for float32 (what transformers computes),
  float64 for float64; float16 is promoted to float32 (transformers does ``.float()``).
  Every op above is one correctly rounded IEEE operation in that dtype, so for float32
  the results equal transformers bit for bit -- with one caveat:
- ``mean|w|`` is a float32 *reduction* whose result depends on summation order (torch
  eager, torch inductor and numpy each order it differently and differ by a few ulp).
  This model fixes the order: ``sum|w|`` accumulated in float64, rounded once to the
  compute dtype, then divided by ``w.size`` in the compute dtype (torch's CPU mean is
  also float32 sum / N). The scale therefore agrees with transformers to a relative
  ``WEIGHT_SCALE_REL_TOL`` (tested for up to 2^17 elements), and exactly whenever the
  float32 sum is exact (e.g. dyadic weights); given the same scale (``ternarize``),
  ternarization equals transformers bit for bit. A scale read from a checkpoint goes
  through ``ternarize`` directly.
- Fake-quantized zeros are +0.0 (torch keeps -0.0 for negative inputs; equal as values).
- Non-finite inputs raise ValueError.

Dequantization of a linear layer: ``y = (x_q @ w_t.T) / (x_scale * w_scale)``.

**Integer** (the hardware activation quantizer, ``hw_act_quant``)

Input: signed integers, ``QuantConfig.hw_in_bits`` (32) wide, quantized per row (last
axis). The fixed-point position of the input does not matter: absmax quantization is
scale invariant. With ``F = recip_frac_bits``, ``act_max = 2^(act_bits-1) - 1``::

    amax  = max|x|                         # 0 .. 2^(hw_in_bits-1), unsigned
    n     = bit_length(amax)               # 1 .. hw_in_bits
    R     = n + F                          # per-row right shift
    recip = (act_max * 2^R + amax // 2) // amax          # round(act_max*2^R/amax), |err| <= 1/2
    x_q   = clamp((x * recip + 2^(R-1)) >> R, act_min, act_max)   # >> is floor (arithmetic)

``x_q`` is int8 (int16 when act_bits > 8), as in the reference mode.

``recip`` is computed once per row (a divider or an iterative reciprocal in RTL); it is
unsigned ``recip_bits`` = act_bits + F wide (act_max*2^F <= recip <= 2*act_max*2^F) and
the product ``x*recip + 2^(R-1)`` is signed ``hw_product_bits`` wide. The per-row scale
carried with the data is the integer ``amax``: dequant is ``x ~= x_q * amax / act_max``.
``amax == 0`` (an all-zero row): ``x_q = 0``, ``recip = 0``, ``R = 0``, carried amax 0.

Error (proved): let v = act_max*x/amax. Then |x*recip/2^R - v| = |x|*|err|/2^R
<= amax/2^(n+F+1) < 2^-(F+1) (``hw_pre_round_bound(cfg)``). Hence

- ``|x_q - round_half_even(v)| <= HW_QUANT_BOUND_LSB = 1`` for every input, and
- ``x_q == floor(v + 1/2)`` (round half up) whenever v + 1/2 is at least 2^-(F+1) away
  from an integer (ties themselves may round either way).
- The clamp never acts (|x_q| <= act_max, x = -amax gives -act_max); it is kept as a
  guard, and act_min is never produced.
"""

from __future__ import annotations

import numpy as np

from .config import DEFAULT, QuantConfig
from .requant import check_int

# Relative agreement of the abs-mean weight scale with torch's float32 reduction, for
# tensors of up to 2^17 elements (16 ulp of float32; measured <= 4 ulp).
WEIGHT_SCALE_REL_TOL = 2.0**-20
# Max |x_q - round_half_even(act_max*x/amax)| of the hardware quantizer, in LSB.
HW_QUANT_BOUND_LSB = 1


def hw_pre_round_bound(cfg: QuantConfig = DEFAULT.quant) -> float:
    """Strict bound on |x*recip/2^R - act_max*x/amax| of the hardware quantizer: 2^-(F+1)."""
    return 2.0 ** -(cfg.recip_frac_bits + 1)


# --------------------------------------------------------------------------- checks
def _float_input(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"{name}: expected float16/float32/float64, got {a.dtype}")
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains non-finite values")
    # float16 computes in float32, as transformers' .float()
    return a.astype(np.float32) if a.dtype == np.float16 else a


# --------------------------------------------------------------------------- reference
def abs_mean(w: np.ndarray) -> np.floating:
    """mean|w| in w's compute dtype: float64-accumulated sum, rounded once, / w.size."""
    w = _float_input(w, "w")
    if w.size == 0:
        raise ValueError("w: empty tensor")
    ct = w.dtype.type
    total = ct(np.sum(np.abs(w), dtype=np.float64))
    return ct(total / ct(w.size))


def ternarize(w: np.ndarray, scale) -> np.ndarray:
    """clamp(round(w * scale), -1, 1) as int8, computed in w's compute dtype."""
    w = _float_input(w, "w")
    ct = w.dtype.type
    scale = np.asarray(scale)
    if scale.dtype.kind != "f" or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError("scale: expected positive finite float(s)")
    q = np.rint(w * scale.astype(ct))
    return np.clip(q, -1, 1).astype(np.int8)


def weight_quant(w: np.ndarray, cfg: QuantConfig = DEFAULT.quant) -> tuple[np.ndarray, np.floating]:
    """Ternary absmean quantization: returns (w_t int8, scale = 1/max(mean|w|, eps))."""
    w = _float_input(w, "w")
    ct = w.dtype.type
    mean = np.maximum(abs_mean(w), ct(cfg.weight_eps))
    scale = ct(ct(1.0) / mean)
    return ternarize(w, scale), scale


def weight_fake_quant(w: np.ndarray, cfg: QuantConfig = DEFAULT.quant) -> np.ndarray:
    """transformers WeightQuant.forward: w_t / scale, returned in w's dtype."""
    dtype = np.asarray(w).dtype
    w_t, scale = weight_quant(w, cfg)
    return (w_t.astype(scale.dtype) / scale).astype(dtype)


def act_quant(x: np.ndarray, cfg: QuantConfig = DEFAULT.quant) -> tuple[np.ndarray, np.ndarray]:
    """INT8 absmax per row (last axis): returns (x_q int8, scale [..., 1])."""
    x = _float_input(x, "x")
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected a non-empty last axis, got shape {x.shape}")
    ct = x.dtype.type
    amax = np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), ct(cfg.act_eps))
    # torch evaluates `127 / t` as t.reciprocal() * 127: two roundings, kept here
    scale = (ct(1.0) / amax) * ct(cfg.act_max)
    q = np.clip(np.rint(x * scale), cfg.act_min, cfg.act_max)
    return q.astype(np.int8 if cfg.act_bits <= 8 else np.int16), scale


def act_fake_quant(x: np.ndarray, cfg: QuantConfig = DEFAULT.quant) -> np.ndarray:
    """transformers ActQuant.forward: x_q / scale, returned in x's dtype."""
    dtype = np.asarray(x).dtype
    x_q, scale = act_quant(x, cfg)
    return (x_q.astype(scale.dtype) / scale).astype(dtype)


# --------------------------------------------------------------------------- integer
def hw_reciprocal(
    amax: np.ndarray, cfg: QuantConfig = DEFAULT.quant
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (recip, R) of the hardware quantizer from integer amax (see module doc)."""
    amax = check_int(amax, "amax", 0, 1 << (cfg.hw_in_bits - 1))
    # n = bit_length(amax), counted exactly (amax <= 2^(hw_in_bits-1))
    n = np.zeros(amax.shape, dtype=np.int64)
    for i in range(cfg.hw_in_bits):
        n += amax >= (np.int64(1) << i)
    shift = np.where(amax > 0, n + cfg.recip_frac_bits, 0)
    safe = np.maximum(amax, 1)
    recip = (np.left_shift(np.int64(cfg.act_max), shift) + (safe >> 1)) // safe
    recip = np.where(amax > 0, recip, 0)
    return recip, shift


def hw_quant_apply(x: np.ndarray, amax: np.ndarray, cfg: QuantConfig = DEFAULT.quant) -> np.ndarray:
    """x_q = clamp((x*recip + 2^(R-1)) >> R) for a given amax broadcast against x.

    The datapath step after the max|x| reduction; ``hw_act_quant`` = this with
    amax = max|x| per row. |x| <= amax is required (ValueError on x otherwise).
    """
    lo = -(1 << (cfg.hw_in_bits - 1))
    x = check_int(x, "x", lo, -lo - 1)
    amax = check_int(amax, "amax", 0, -lo)
    if np.any(np.abs(x) > amax):
        raise ValueError("x: |x| exceeds amax")
    recip, shift = hw_reciprocal(amax, cfg)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    q = np.right_shift(x * recip + half, shift)
    q = np.clip(q, cfg.act_min, cfg.act_max)
    return q.astype(np.int8 if cfg.act_bits <= 8 else np.int16)


def hw_act_quant(x: np.ndarray, cfg: QuantConfig = DEFAULT.quant) -> tuple[np.ndarray, np.ndarray]:
    """Hardware INT8 quantizer per row: returns (x_q int8, amax int64 [..., 1]); see module doc."""
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected a non-empty last axis, got shape {x.shape}")
    lo = -(1 << (cfg.hw_in_bits - 1))
    x = check_int(x, "x", lo, -lo - 1)
    amax = np.max(np.abs(x), axis=-1, keepdims=True)
    return hw_quant_apply(x, amax, cfg), amax


def hw_act_dequant(
    x_q: np.ndarray, amax: np.ndarray, cfg: QuantConfig = DEFAULT.quant
) -> np.ndarray:
    """x ~= x_q * amax / act_max in float64 (input units of hw_act_quant)."""
    x_q = check_int(x_q, "x_q", cfg.act_min, cfg.act_max)
    amax = check_int(amax, "amax", 0, 1 << (cfg.hw_in_bits - 1))
    return x_q.astype(np.float64) * amax.astype(np.float64) / cfg.act_max


def exact_round_half_even(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """round_half_even(num/den) for int64 num, den > 0, in exact integer arithmetic."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    q, r = np.divmod(num, den)  # floor division, 0 <= r < den
    up = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return q + up


# --------------------------------------------------------------------------- report
def _hw_sample(rng: np.random.Generator, cfg: QuantConfig) -> np.ndarray:
    """Rows that stress the hardware quantizer: random magnitudes, extremes, small amax."""
    hi = (1 << (cfg.hw_in_bits - 1)) - 1
    rows = []
    for bits in range(1, cfg.hw_in_bits):
        lim = (1 << bits) - 1
        rows.append(rng.integers(-lim, lim + 1, size=(8, 256)))
    rows.append(np.full((1, 256), -hi - 1))
    rows.append(np.tile(np.arange(-128, 128), (1, 1)))
    row = rng.integers(-hi, hi + 1, size=(1, 256))
    row[0, 0] = hi
    rows.append(row)
    return np.concatenate(rows).astype(np.int64)


def hw_quant_errors(
    x: np.ndarray, amax: np.ndarray, cfg: QuantConfig = DEFAULT.quant
) -> tuple[float, int]:
    """(max pre-rounding error, max |x_q - round_half_even(v)|) of hw_quant_apply, amax > 0."""
    x, amax = np.broadcast_arrays(np.asarray(x, dtype=np.int64), np.asarray(amax, dtype=np.int64))
    x_q = hw_quant_apply(x, amax, cfg)
    recip, shift = hw_reciprocal(amax, cfg)
    # exact |x*recip/2^R - act_max*x/amax| = |x*(recip*amax - act_max*2^R)| / (amax*2^R)
    err_num = np.abs(x * (recip * amax - np.left_shift(np.int64(cfg.act_max), shift)))
    pre = np.max(err_num.astype(np.float64) / (amax.astype(np.float64) * np.exp2(shift)))
    ref = exact_round_half_even(cfg.act_max * x, amax)
    return float(pre), int(np.max(np.abs(x_q.astype(np.int64) - ref)))


def error_report(cfg=DEFAULT) -> list[dict]:
    """Stated vs measured bounds of the reference and hardware quantizers."""
    import torch
    from transformers.integrations import bitnet as hf

    q = cfg.quant
    rng = np.random.default_rng(0)
    weight_fwd = hf.WeightQuant.forward._torchdynamo_orig_callable  # eager, not inductor
    act_fwd = hf.ActQuant.forward._torchdynamo_orig_callable
    rows = []

    w_diff = 0.0
    s_rel = 0.0
    x_diff = 0.0
    for sigma, shape in ((1e-3, (96, 250)), (0.02, (7, 999)), (1.0, (512, 257)), (30.0, (64, 77))):
        w = (rng.standard_normal(shape) * sigma).astype(np.float32)
        tw = torch.from_numpy(w)
        t_scale = (1.0 / tw.abs().mean().clamp(min=q.weight_eps)).numpy()
        t_fake = weight_fwd(None, tw).numpy()
        ours = ternarize(w, t_scale).astype(np.float32) / t_scale
        w_diff = max(w_diff, float(np.max(np.abs(ours - t_fake))))
        s_rel = max(s_rel, abs(float(weight_quant(w, q)[1]) / float(t_scale) - 1.0))
        x = (rng.standard_normal((32, 512)) * sigma).astype(np.float32)
        x_diff = max(
            x_diff,
            float(
                np.max(np.abs(act_fake_quant(x, q) - act_fwd(None, torch.from_numpy(x)).numpy()))
            ),
        )
    rows.append(
        {
            "block": "quant",
            "quantity": "ternary fake-quant vs transformers WeightQuant, same scale (abs)",
            "domain": "float32 N(0, s^2), s in 1e-3..30, 7x999..512x257",
            "bound": 0.0,
            "measured": w_diff,
        }
    )
    rows.append(
        {
            "block": "quant",
            "quantity": "abs-mean weight scale vs torch float32 mean (relative)",
            "domain": "float32 N(0, s^2), 7x999..512x257",
            "bound": WEIGHT_SCALE_REL_TOL,
            "measured": s_rel,
        }
    )
    rows.append(
        {
            "block": "quant",
            "quantity": "int8 act fake-quant vs transformers ActQuant (abs)",
            "domain": "float32 N(0, s^2), 32x512 rows",
            "bound": 0.0,
            "measured": x_diff,
        }
    )

    x = _hw_sample(rng, q)
    pre, lsb = hw_quant_errors(x, np.max(np.abs(x), axis=-1, keepdims=True), q)
    rows.append(
        {
            "block": "quant",
            "quantity": "hw quantizer |x*recip/2^R - act_max*x/amax| (LSB)",
            "domain": f"int{q.hw_in_bits} rows, amax 1..2^{q.hw_in_bits - 1}",
            "bound": hw_pre_round_bound(q),
            "measured": pre,
        }
    )
    rows.append(
        {
            "block": "quant",
            "quantity": "hw quantizer vs round_half_even(act_max*x/amax) (LSB)",
            "domain": f"int{q.hw_in_bits} rows, amax 1..2^{q.hw_in_bits - 1}",
            "bound": float(HW_QUANT_BOUND_LSB),
            "measured": float(lsb),
        }
    )
    return rows
