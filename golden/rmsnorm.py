"""RMSNorm fused with INT8 output quantization: the golden specification.

Float function (transformers ``BitNetRMSNorm`` followed by ``BitLinear``'s absmax
activation quantizer)::

    y = x * rsqrt(mean(x^2) + eps) * gamma          # per row (last axis, length d)
    x_q = clamp(round(y * 127 / max|y|)),  scale = max|y| / 127,  y ~= x_q * scale

Absmax quantization is scale invariant, so ``x_q = quant(x * gamma)``: the rsqrt only
enters the per-row output scale. The hardware therefore makes two passes over a row:

pass 1 (one multiply-accumulate per element)::

    S     = sum(x_i^2)                  exact, unsigned NormConfig.sumsq_bits(d) =
                                        2*(in_bits-1) + bit_length(d) bits (74 for d=2560)
    p_i   = x_i * gamma_i               exact, signed product_bits (47) bits, Q.(IF+GF)
    amax_p = max|p_i|

pass 2: ``p'_i = p_i >> sh_p`` (arithmetic shift = floor), ``sh_p = max(0,
bit_length(amax_p) - (hw_in_bits - 1))`` so that p' fits the signed ``hw_in_bits`` (32)
input of the hardware activation quantizer ``golden.quant.hw_act_quant`` (per-row
reciprocal, see its docstring), which returns ``x_q`` (int8) and its own
``amax' = max|p'|``; ``x_q ~= p' * act_max / amax'``.

Formats (IF = in_frac_bits, GF = gamma_frac_bits, F = rsqrt_frac_bits,
B = scale_mant_bits, L = rsqrt_lut_bits; defaults in parentheses)

- ``x``: signed ``in_bits`` (int32) Q(in_bits-1-IF).IF (Q15.16), shape (..., d).
- ``gamma``: signed ``gamma_bits`` (int16) Q.GF (Q3.12), shape (d,).
- ``x_q``: int8 in [-act_max, act_max] (act_min is never produced).
- per-row scale: ``scale = scale_mant * 2^-scale_shift``; ``scale_mant`` unsigned B (16)
  bits, normalized to [2^(B-1), 2^B) (0 for an all-zero product row); ``scale_shift``
  signed int32 (0 when scale_mant = 0). In float: ``y ~= x_q * scale``.

Mean and eps (no divider, no 1/d multiply): with x_f = x * 2^-IF,
``rsqrt(mean(x_f^2) + eps) = sqrt(d) * 2^IF * rsqrt(S')`` where
``S' = S + eps_term``, ``eps_term = round_half_up(d * eps * 2^(2*IF))`` -- an exact
integer constant per row length; the constant ``sqrt(d) / act_max`` is folded into the
output scale as a B-bit mantissa ``c_mant * 2^c_exp`` (round to nearest). Both come
from ``norm_constants(d, cfg)``, computed once by the host.

rsqrt(S') for an integer S' >= 1 (``rsqrt_fx``): ``e = bit_length(S') - 1``,
``k = e >> 1``; the normalized mantissa ``M = S' / 4^k`` lies in [1, 4) and is taken as
UQ2.F ``M_fx = S' >> (2k - F)`` (floor; a left shift when 2k < F). The seed LUT
(``rsqrt_lut(cfg)``, 2^L entries, UQ1.F) is addressed by the exponent parity and the next
L-1 mantissa bits: ``addr = (e & 1) << (L-1) | top L-1 bits of the fraction of
S'/2^e``, i.e. [1, 2) and [2, 4) each split into 2^(L-1) equal segments (every segment
has relative width <= 2^-(L-1)). Entry value on a segment [m0, m1):
``round_half_up(2^F * 2 / (sqrt(m0) + sqrt(m1)))`` (equal relative error at both ends).
Each of ``newton_steps`` steps (all roundings half up: ``(v + 2^(s-1)) >> s``)::

    t = (y*y + 2^(F-1)) >> F                 UQ1.F
    u = (M_fx*t + 2^(F-1)) >> F              UQ2.F, ~1.0
    y = (y*(3*2^F - u) + 2^F) >> (F+1)       UQ1.F

Result: ``rsqrt(S') ~= y * 2^-(F+k)``, y in [2^(F-1) - 1, 2^F] (the RTL holds 17 bits;
for the default config y < 2^F, measured max 65530, tested). Seed relative error
``e0 = (sqrt(1+h) - 1) / (sqrt(1+h) + 1)``, ``h = 2^-(L-1)`` (0.77 % for L = 6); Newton
error ``-1.5 e0^2 - 0.5 e0^3`` (8.9e-5) plus ~4 roundings of 2^-(F+1) relative:
bound ``RSQRT_REL_ERR``.

Output scale: ``amax' = a_m * 2^a_e`` with ``a_m`` the top B bits (floor);
``P = a_m * c_mant * y`` (< 2^(3B+1)); ``scale_mant = round_half_up(P / 2^r)`` with
``r = bit_length(P) - B`` (if the rounding carries to 2^B: halve, r += 1);
``scale_shift = F + k + GF - sh_p - a_e - c_exp - r``.
The scale error is dominated by the rsqrt (plus 2^-(B-1) for a_m, 2^-(B+1) for c and the
final rounding): bound ``SCALE_REL_ERR``. Dequantized output: ``|x_q*scale - y| <=
(1/2 + 2^-(F_q+1)) * LSB + act_max * SCALE_REL_ERR * LSB`` with ``LSB = max|y|/act_max``
(F_q = QuantConfig.recip_frac_bits; the floor shift to p' moves p and amax by < 2^-(hw_in_bits-2)
relative, < 2 act_max 2^-(hw_in_bits-2) = 2.4e-7 LSB, inside the scale margin): bound
``OUT_ERR_LSB``.

Rows whose product is all zero (x = 0 or gamma = 0) give x_q = 0, scale_mant = 0,
scale_shift = 0. S' = 0 (x = 0 and eps_term = 0) is only possible in that case.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from .config import DEFAULT, NormConfig, QuantConfig
from .fixed import bit_length as _bit_length
from .quant import hw_act_quant

# Max relative error of rsqrt_fx vs 1/sqrt(S') over every S' in [1, 2^62] (default config).
RSQRT_REL_ERR = 1.2e-4
# Max relative error of the output scale vs max|y|/act_max (float RMSNorm).
SCALE_REL_ERR = 1.6e-4
# Max |x_q*scale - y| in units of max|y|/act_max (float RMSNorm, exact x and gamma).
OUT_ERR_LSB = (
    0.5 + 2.0 ** -(DEFAULT.quant.recip_frac_bits + 1) + DEFAULT.quant.act_max * SCALE_REL_ERR
)


# --------------------------------------------------------------------------- helpers
def _int_array(a, name: str, bits: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind != "i":
        raise ValueError(f"{name}: expected a signed integer dtype, got {a.dtype}")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ValueError(f"{name}: values outside signed {bits}-bit range [{lo}, {hi}]")
    return a.astype(np.int64)


def _shift(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """v * 2^-s for signed s: floor right shift for s > 0, exact left shift for s < 0."""
    s = np.asarray(s, dtype=np.int64)
    return np.where(s >= 0, v >> np.maximum(s, 0), v << np.maximum(-s, 0))


def _round_shift(v: np.ndarray, s: int) -> np.ndarray:
    """Round half up: (v + 2^(s-1)) >> s, s >= 1."""
    return (v + (np.int64(1) << (s - 1))) >> s


# --------------------------------------------------------------------------- constants
@cache
def rsqrt_lut(cfg: NormConfig = DEFAULT.norm) -> np.ndarray:
    """The 2^L-entry rsqrt seed table (UQ1.F, int64); entry addr = parity << (L-1) | j."""
    half = 1 << (cfg.rsqrt_lut_bits - 1)
    lut = np.empty(2 * half, dtype=np.int64)
    for parity in (0, 1):
        for j in range(half):
            m0 = (1 + j / half) * 2**parity
            m1 = (1 + (j + 1) / half) * 2**parity
            y = 2.0 / (math.sqrt(m0) + math.sqrt(m1))
            lut[parity * half + j] = math.floor(y * 2**cfg.rsqrt_frac_bits + 0.5)
    lut.flags.writeable = False
    return lut


def norm_constants(
    dim: int, cfg: NormConfig = DEFAULT.norm, qcfg: QuantConfig = DEFAULT.quant
) -> tuple[int, int, int]:
    """Host constants for rows of length ``dim``: (eps_term, c_mant, c_exp).

    ``eps_term = round_half_up(dim * eps * 2^(2*in_frac_bits))`` is added to the sum of
    squares; ``c_mant * 2^c_exp ~= sqrt(dim) / act_max`` with c_mant a normalized
    ``scale_mant_bits`` mantissa, rounded to nearest.
    """
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim: expected a positive integer, got {dim!r}")
    dim = int(dim)
    b = cfg.scale_mant_bits
    eps_term = math.floor(dim * cfg.eps * 2.0 ** (2 * cfg.in_frac_bits) + 0.5)
    frac, exp = math.frexp(math.sqrt(dim) / qcfg.act_max)  # frac in [0.5, 1)
    c_mant = math.floor(frac * 2**b + 0.5)
    if c_mant == 1 << b:
        c_mant, exp = c_mant >> 1, exp + 1
    return eps_term, c_mant, exp - b


# --------------------------------------------------------------------------- rsqrt
def rsqrt_fx(s, cfg: NormConfig = DEFAULT.norm) -> tuple[np.ndarray, np.ndarray]:
    """rsqrt of integers s >= 1 (int64, < 2^63): returns (y, k), rsqrt(s) ~= y * 2^-(F+k).

    ``y`` is UQ1.F (int64, <= 2^F), ``k = (bit_length(s) - 1) >> 1``.
    """
    s = np.asarray(s)
    if s.dtype.kind not in "iu":
        raise ValueError(f"s: expected an integer dtype, got {s.dtype}")
    if s.size and (np.any(s < 1) or (s.dtype == np.uint64 and np.any(s >= 1 << 63))):
        raise ValueError("s: values must be in [1, 2^63)")
    s = s.astype(np.int64)
    f, lb = cfg.rsqrt_frac_bits, cfg.rsqrt_lut_bits
    e = _bit_length(s) - 1
    k = e >> 1
    m = _shift(s, 2 * k - f)  # UQ2.F in [2^F, 2^(F+2))
    parity = e & 1
    # fraction of s/2^e (the mantissa in [1,2)) lies in the F+parity bits below the lead
    frac = m - (np.int64(1) << (f + parity))
    addr = (parity << (lb - 1)) | (frac >> (f + parity - (lb - 1)))
    y = rsqrt_lut(cfg)[addr]
    three = np.int64(3) << f
    for _ in range(cfg.newton_steps):
        t = _round_shift(y * y, f)
        u = _round_shift(m * t, f)
        y = _round_shift(y * (three - u), f + 1)
    return y, k


# --------------------------------------------------------------------------- the block
def sum_of_squares(x: np.ndarray, cfg: NormConfig = DEFAULT.norm) -> np.ndarray:
    """Exact per-row sum of x^2 (object array of Python ints, shape x.shape[:-1])."""
    x = _int_array(x, "x", cfg.in_bits)
    # x = hi*2^16 + lo splits the square into int64-safe partial sums
    hi, lo = x >> 16, x & 0xFFFF
    a = np.sum(hi * hi, axis=-1).astype(object)
    b = np.sum(hi * lo, axis=-1).astype(object)
    c = np.sum(lo * lo, axis=-1).astype(object)
    return (a << 32) + (b << 17) + c


def rmsnorm_quant(
    x, gamma, cfg: NormConfig = DEFAULT.norm, qcfg: QuantConfig = DEFAULT.quant
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-point RMSNorm + INT8 quantization per row (last axis); see the module doc.

    x: signed int (in_bits) Q.IF, shape (..., d); gamma: signed int (gamma_bits) Q.GF,
    shape (d,). Returns (x_q int8 (..., d), scale_mant int64 (...,), scale_shift int64
    (...,)) with ``RMSNorm(x)*gamma ~= x_q * scale_mant * 2^-scale_shift``.
    """
    x = _int_array(x, "x", cfg.in_bits)
    gamma = _int_array(gamma, "gamma", cfg.gamma_bits)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected a non-empty last axis, got shape {x.shape}")
    d = x.shape[-1]
    if gamma.shape != (d,):
        raise ValueError(f"gamma: expected shape ({d},), got {gamma.shape}")
    rows = x.shape[:-1]
    b = cfg.scale_mant_bits
    eps_term, c_mant, c_exp = norm_constants(d, cfg, qcfg)

    # pass 1: exact sum of squares and the product's absmax
    s_wide = sum_of_squares(x, cfg).reshape(-1) + eps_term
    p = x * gamma  # < 2^47: int64 exact
    amax_p = np.max(np.abs(p), axis=-1)

    # S' may exceed int64: drop an even number of low bits (rsqrt_fx floors to F+2 bits
    # anyway, so the result is identical to normalizing the wide value directly)
    s64 = np.empty(s_wide.shape, dtype=np.int64)
    k_extra = np.zeros(s_wide.shape, dtype=np.int64)
    for i, s in enumerate(s_wide):
        j = max(0, (int(s).bit_length() - 61 + 1) // 2)
        s64[i], k_extra[i] = max(int(s) >> (2 * j), 1), j
    y, k = rsqrt_fx(s64, cfg)
    k = (k + k_extra).reshape(rows)
    y = y.reshape(rows)

    # pass 2: fit the quantizer's input width, quantize
    sh_p = np.maximum(_bit_length(amax_p) - (qcfg.hw_in_bits - 1), 0)
    p_fit = p >> sh_p[..., None]
    x_q, amax = hw_act_quant(p_fit, qcfg)
    amax = amax[..., 0]

    # output scale = amax' * 2^sh_p * c * rsqrt(S') * 2^-GF (see module doc)
    a_e = np.maximum(_bit_length(amax) - b, 0)
    a_m = amax >> a_e
    prod = a_m * np.int64(c_mant) * y
    r = np.maximum(_bit_length(prod) - b, 1)
    mant = (prod + (np.int64(1) << (r - 1))) >> r
    carry = mant >> b
    mant, r = mant >> carry, r + carry
    shift = cfg.rsqrt_frac_bits + k + cfg.gamma_frac_bits - sh_p - a_e - c_exp - r
    zero = amax == 0
    return x_q, np.where(zero, 0, mant), np.where(zero, 0, shift)


def scale_to_float(scale_mant, scale_shift) -> np.ndarray:
    """scale_mant * 2^-scale_shift as float64 (exact for |shift| < 1000)."""
    return np.ldexp(
        np.asarray(scale_mant, dtype=np.float64),
        -np.asarray(scale_shift, dtype=np.int64).astype(np.int32),
    )


def rmsnorm_dequant(x_q, scale_mant, scale_shift) -> np.ndarray:
    """x_q * scale in float64: the value the quantized output stands for."""
    return np.asarray(x_q, dtype=np.float64) * scale_to_float(scale_mant, scale_shift)[..., None]


# --------------------------------------------------------------------------- reference
def rmsnorm_ref(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    """Float RMSNorm in float64: x * rsqrt(mean(x^2) + eps) * gamma (last axis)."""
    x = np.asarray(x, dtype=np.float64)
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * np.asarray(gamma, dtype=np.float64)


def fx_to_float(x, frac_bits: int) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) * 2.0**-frac_bits


# --------------------------------------------------------------------------- measurement
def rsqrt_sweep(cfg: NormConfig = DEFAULT.norm) -> np.ndarray:
    """Dense rsqrt test inputs: every mantissa at 2^-16 spacing in [1, 4) at several
    exponents, small integers 1..4096, and the largest int64 values used."""
    mant = np.arange(1 << 16, 1 << 18, dtype=np.int64)  # [1, 4) in UQ2.16
    parts = [np.arange(1, 4097, dtype=np.int64)]
    for k in (8, 15, 23, 30):  # S' up to 2^62
        parts.append(mant << (2 * k - 16))
    parts.append(np.array([(1 << 62) - 1, (1 << 62), (1 << 63) - 1], dtype=np.int64))
    return np.concatenate(parts)


def rsqrt_rel_error(s: np.ndarray, cfg: NormConfig = DEFAULT.norm) -> float:
    y, k = rsqrt_fx(s, cfg)
    approx = np.ldexp(y.astype(np.float64), (-(cfg.rsqrt_frac_bits + k)).astype(np.int32))
    exact = 1.0 / np.sqrt(s.astype(np.float64))
    return float(np.max(np.abs(approx / exact - 1.0)))


def random_rows(
    rng: np.random.Generator, n_rows: int, dim: int, cfg: NormConfig = DEFAULT.norm
) -> tuple[np.ndarray, np.ndarray]:
    """Residual rows over many magnitudes (log-uniform rms, outlier channels) and gamma."""
    lim = (1 << (cfg.in_bits - 1)) - 1
    mag = np.exp2(rng.uniform(-12, cfg.in_bits - 1 - cfg.in_frac_bits - 5, size=(n_rows, 1)))
    xf = rng.standard_normal((n_rows, dim)) * mag
    outl = rng.random((n_rows, dim)) < 0.01
    xf = np.where(outl, xf * 30, xf)
    x = np.clip(np.rint(xf * 2.0**cfg.in_frac_bits), -lim - 1, lim).astype(np.int32)
    glim = (1 << (cfg.gamma_bits - 1)) - 1
    g = rng.uniform(0.02, 3.0, size=dim) * rng.choice([-1, 1], size=dim)
    gamma = np.clip(np.rint(g * 2.0**cfg.gamma_frac_bits), -glim - 1, glim).astype(np.int16)
    return x, gamma


def output_errors(
    x, gamma, cfg: NormConfig = DEFAULT.norm, qcfg: QuantConfig = DEFAULT.quant
) -> tuple[float, float]:
    """(max scale relative error, max |x_q*scale - y| in LSB) vs float RMSNorm."""
    x_q, mant, shift = rmsnorm_quant(x, gamma, cfg, qcfg)
    y = rmsnorm_ref(
        fx_to_float(x, cfg.in_frac_bits), fx_to_float(gamma, cfg.gamma_frac_bits), cfg.eps
    )
    lsb = np.max(np.abs(y), axis=-1) / qcfg.act_max
    ok = lsb > 0
    scale = scale_to_float(mant, shift)
    scale_err = np.abs(scale[ok] / lsb[ok] - 1.0)
    out_err = np.max(np.abs(rmsnorm_dequant(x_q, mant, shift) - y), axis=-1)[ok] / lsb[ok]
    return float(np.max(scale_err)), float(np.max(out_err))


def error_report(cfg=DEFAULT) -> list[dict]:
    """Stated vs measured bounds of the rsqrt unit and the fused RMSNorm+quant block."""
    rng = np.random.default_rng(0)
    rel = rsqrt_rel_error(rsqrt_sweep(cfg.norm), cfg.norm)
    x, gamma = random_rows(rng, 256, 256, cfg.norm)
    scale_err, out_err = output_errors(x, gamma, cfg.norm, cfg.quant)
    return [
        {
            "block": "rmsnorm",
            "quantity": "rsqrt relative error",
            "domain": "S' in [1, 2^63): 2^-16-spaced mantissas x 4 exponents, 1..4096",
            "bound": RSQRT_REL_ERR,
            "measured": rel,
        },
        {
            "block": "rmsnorm",
            "quantity": "output scale relative error vs max|y|/127",
            "domain": "256 random rows d=256, rms 2^-12..2^10, 1% outliers",
            "bound": SCALE_REL_ERR,
            "measured": scale_err,
        },
        {
            "block": "rmsnorm",
            "quantity": "|x_q*scale - RMSNorm(x)*gamma| (output LSB)",
            "domain": "same rows",
            "bound": OUT_ERR_LSB,
            "measured": out_err,
        },
    ]
