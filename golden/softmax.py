"""Online softmax with a base-2 exponent: the golden specification.

Notation (SoftmaxConfig; defaults in parentheses): IF = in_frac_bits (8), LF =
log2e_frac_bits (20), TF = IF + LF (28), Lb = exp_lut_bits (6), Ib = exp_interp_bits (10),
E = exp_frac_bits (15), SF = sum_frac_bits (24), RF = recip_frac_bits (16),
P = out_bits (16). ``rhu(v, s) = (v + 2^(s-1)) >> s`` is round half up (``>>`` is the
arithmetic shift = floor; rhu(v, 0) = v).

Input: logits ``x``, signed ``in_bits`` (16) integers, Q7.8 (value x * 2^-IF), rows on the
last axis, length N <= ``max_len`` (65535). Optional boolean mask (True = take part);
``causal=True`` masks key j for query i when j > i + (N_k - N_q) (queries are the last N_q
positions, as with a KV cache). Masked elements are skipped as if absent.

Output: probabilities, unsigned ``P``-bit UQ0.P (uint16 for P <= 16), saturated to
2^P - 1 (so p = 1 reads as 1 - 2^-P); masked elements and fully masked rows give 0.

**Exp unit.** ``L2E = round_half_up(log2(e) * 2^LF)`` (UQ1.LF, 1512775: one DSP port).
For ``d >= 0`` in Q.TF (a base-2 exponent, value d * 2^-TF), ``exp2_neg_fx(d)`` returns
``(mant, n)`` with ``2^-(d*2^-TF) ~= mant * 2^-(E+n)``: ``n = d >> TF`` (integer part,
applied later as a right shift), ``f = d mod 2^TF``; ``a = f >> (TF-Lb)`` addresses the
table ``T[i] = round_half_up(2^E * 2^(-i/2^Lb))``, i = 0..2^Lb (``exp_lut(cfg)``, 65
entries, UQ1.E, T[0] = 2^E exactly), ``w = (f >> (TF-Lb-Ib)) mod 2^Ib`` (lower bits of f
are dropped: floor) and ``mant = T[a] - rhu((T[a] - T[a+1]) * w, Ib)`` in [2^(E-1), 2^E].
``exp_fx(z)`` (I-BERT's i-exp: exp of z <= 0 in Q.IF) is ``exp2_neg_fx(-z * L2E)``;
max relative error over every representable z in (-2^in_bits, 0]: ``EXP_REL_ERR``
(I-BERT i-exp: 3.3e-3). Budget: chord error of linear interpolation of 2^-f with step
h = 2^-Lb is (h ln2)^2 / 8 = 1.5e-5 relative; table and interpolation roundings 2^-(E+1)
each over values >= 1/2 (3.1e-5 each); dropping f below Lb+Ib bits ln2 * 2^-(Lb+Ib)
(1.1e-5); L2E rounding (3.8e-7) times |z| <= 256 (6.7e-5 at the far end of the range);
total 1.55e-4 (measured 1.24e-4).

Why LUT + linear interpolation rather than a polynomial: one narrow multiplier (9-bit
slope x Ib-bit fraction) and a 65 x 16-bit ROM give ~1e-4; a single-segment degree-2 fit
of 2^-f on [0, 1) is limited to ~2e-3 relative (I-BERT's 3.3e-3 after rounding) and
already costs two multipliers in series; 1e-4 takes degree 3 (three multipliers in
series) or piecewise degree 2 (two multipliers plus a coefficient ROM) -- more hardware
and latency for the same error.

**Online pass (the hardware order; ``softmax_online_seq``).** The running max is kept in
base-2 units rounded up to an integer, so a max change rescales the running sum by a
shift, never a multiply (Softermax). For each unmasked element j, in order::

    t_j = x_j * L2E                          signed Q.TF (in_bits + LF + 1 bits)
    c_j = ceil(t_j) = -((-t_j) >> TF)        integer
    first element: M = c_j, s = 0
    c_j > M:       s = s >> (c_j - M)        (floor), M = c_j
    mant, n = exp2_neg_fx(M * 2^TF - t_j)
    s += rhu(mant * 2^(SF-E), n)             s: unsigned sum_bits, UQ.SF

The current max element contributes mant * 2^(SF-E) >= 2^(SF-1) (its n is 0), so at the
end s >= 2^(SF-1) and s <= N * 2^SF < 2^sum_bits.

**Reciprocal** (once per row): a restoring divider. ``b = bit_length(s)``,
``s_m = s >> (b-1-RF)`` (floor; a left shift if b-1 < RF; s_m in [2^RF, 2^(RF+1))),
``R = round_half_up(2^(2RF) / s_m) = (2^(2RF+1) + s_m) // (2 s_m)`` in [2^(RF-1), 2^RF]
(RF + 1 quotient bits, one per cycle; no multiplier). The sum's value s * 2^-SF has
reciprocal ~= R * 2^-(RF + b - 1 - SF).

**Output pass** (second read of the row): with the final M, for each unmasked j::

    mant, n = exp2_neg_fx(M * 2^TF - t_j)
    sh  = E + n + b - 1 + RF - SF - P        >= E + RF - 1 - P > 0 (14)
    p_j = min(rhu(mant * R, sh), 2^P - 1)     mant * R < 2^(E+RF+1) (32 bits)

Error of p vs float64 softmax of x * 2^-IF. Worst case with every error aligned:
``|p_j - p| <= p (2 EXP_REL_ERR + 2^-(RF-1) + 3 N 2^-SF) + 2^-P`` (numerator and sum exp
errors, s_m truncation and R rounding, term roundings and rescale floors against
s >= 1/2, output rounding/saturation): 8e-4 at N = 2048. The numerator's exp error
reappears in the sum, so they largely cancel: adversarial searches (pairs at every
distance and max alignment, a few large terms among many small ones, N up to 2048)
measure <= 3e-5 (2 LSB of UQ0.16). Stated bound ``PROB_ABS_ERR`` = 1e-4 for rows of up to
``PROB_BOUND_MAX_LEN`` = 2048 elements, checked on such rows by the tests.

Why UQ0.16 and not UQ0.8 for P: the P.V product sums N terms, each p rounded by up to
2^-(P+1), so its worst-case error is N * 2^-(P+1) * max|v|: with UQ0.8 that is half of
max|v| at N = 256 (a uniform row of 256 has p = 2^-8, i.e. 1 LSB +-50 %); with UQ0.16 it
is 0.2 % of max|v| at N = 256 and 0.8 % at N = 1024, at or below the INT8 quantization of
V itself (0.4 %). A 16 x 8 product still fits one DSP (or a small LUT multiplier).

**Vectorized form** (``softmax_fx``, used inside model forwards) computes the same bits in
closed form. With floor shifts, ``floor(floor(v / 2^a) / 2^b) = floor(v / 2^(a+b))`` and
``floor(v / 2^k) + a = floor((v + a 2^k) / 2^k)`` for integer a, so the online sum is a
Horner evaluation over the *levels* of the running max: group the elements by the value
of the running max when they were added (A_l = sum of their terms), then
``s = (...((A_0 >> k_1) + A_1) >> k_2 ...) + A_last`` with k_l the max increments.
``softmax_fx`` computes the running max with ``np.maximum.accumulate``, the terms and
level sums vectorized, and loops only over levels (few; at most N); tests prove it
bit-equal to ``softmax_online_seq``.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from .config import DEFAULT, SoftmaxConfig
from .fixed import bit_length as _bit_length
from .fixed import rhu

# Max relative error of exp_fx (mant * 2^-(E+n)) vs exp(z) at every representable z <= 0.
EXP_REL_ERR = 2.0e-4
# I-BERT's i-exp max relative error (DESIGN §7), for comparison in the report.
IBERT_EXP_REL_ERR = 3.3e-3
# Max |p - softmax(x)| (absolute, probability units) for rows of up to PROB_BOUND_MAX_LEN;
# measured <= 3e-5 (see the module doc for the aligned worst case).
PROB_ABS_ERR = 1.0e-4
PROB_BOUND_MAX_LEN = 2048
# Vectorized softmax_fx vs the sequential online formulation: bit-equal.
VEC_VS_SEQ_LSB = 0.0


# --------------------------------------------------------------------------- helpers
def _out_dtype(cfg: SoftmaxConfig):
    return np.uint8 if cfg.out_bits <= 8 else np.uint16 if cfg.out_bits <= 16 else np.uint32


def log2e_fx(cfg: SoftmaxConfig = DEFAULT.softmax) -> int:
    """log2(e) as UQ1.LF, rounded half up."""
    return math.floor(math.log2(math.e) * 2**cfg.log2e_frac_bits + 0.5)


@cache
def exp_lut(cfg: SoftmaxConfig = DEFAULT.softmax) -> np.ndarray:
    """T[i] = round_half_up(2^E * 2^(-i/2^Lb)), i = 0..2^Lb (UQ1.E, int64, read-only)."""
    n = 1 << cfg.exp_lut_bits
    lut = np.array(
        [math.floor(2.0 ** (cfg.exp_frac_bits - i / n) + 0.5) for i in range(n + 1)], dtype=np.int64
    )
    lut.flags.writeable = False
    return lut


# --------------------------------------------------------------------------- exp unit
def exp2_neg_fx(d, cfg: SoftmaxConfig = DEFAULT.softmax) -> tuple[np.ndarray, np.ndarray]:
    """2^-(d * 2^-TF) for integer d >= 0: returns (mant UQ1.E int64, n int64) with the
    value ~= mant * 2^-(E+n); see the module doc."""
    d = np.asarray(d)
    if d.dtype.kind not in "iu":
        raise ValueError(f"d: expected an integer dtype, got {d.dtype}")
    if d.size and int(d.min()) < 0:
        raise ValueError("d: expected values >= 0")
    d = d.astype(np.int64)
    tf, lb, ib = cfg.t_frac_bits, cfg.exp_lut_bits, cfg.exp_interp_bits
    n = d >> tf
    f = d & ((np.int64(1) << tf) - 1)
    addr = f >> (tf - lb)
    lut = exp_lut(cfg)
    mant = lut[addr]
    if ib:
        w = (f >> (tf - lb - ib)) & ((1 << ib) - 1)
        mant = mant - rhu((mant - lut[addr + 1]) * w, ib)
    return mant, n


def exp_fx(z, cfg: SoftmaxConfig = DEFAULT.softmax) -> tuple[np.ndarray, np.ndarray]:
    """exp(z * 2^-IF) for integers z <= 0 with |z| < 2^in_bits (a difference of two
    logits): returns (mant, n), exp ~= mant * 2^-(E+n)."""
    z = np.asarray(z)
    if z.dtype.kind != "i":
        raise ValueError(f"z: expected a signed integer dtype, got {z.dtype}")
    if z.size and (int(z.max()) > 0 or int(z.min()) <= -(1 << cfg.in_bits)):
        raise ValueError(f"z: values outside (-2^{cfg.in_bits}, 0]")
    return exp2_neg_fx(-z.astype(np.int64) * log2e_fx(cfg), cfg)


def exp_fx_float(z, cfg: SoftmaxConfig = DEFAULT.softmax) -> np.ndarray:
    mant, n = exp_fx(z, cfg)
    return np.ldexp(mant.astype(np.float64), (-(cfg.exp_frac_bits + n)).astype(np.int32))


# --------------------------------------------------------------------------- inputs
def _logits(x, cfg: SoftmaxConfig) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "i":
        raise ValueError(f"x: expected a signed integer dtype, got {x.dtype}")
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected a non-empty last axis, got shape {x.shape}")
    if x.shape[-1] > cfg.max_len:
        raise ValueError(f"x: row length {x.shape[-1]} exceeds SoftmaxConfig.max_len {cfg.max_len}")
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    if x.size and (int(x.min()) < lo or int(x.max()) > hi):
        raise ValueError(f"x: values outside signed {cfg.in_bits}-bit range [{lo}, {hi}]")
    return x.astype(np.int64)


def causal_mask(n_q: int, n_k: int) -> np.ndarray:
    """(n_q, n_k) bool: key j visible to query i iff j <= i + (n_k - n_q)."""
    if n_q < 1 or n_k < n_q:
        raise ValueError(f"n_q: expected 1 <= n_q <= n_k, got n_q={n_q}, n_k={n_k}")
    return np.arange(n_k)[None, :] <= np.arange(n_q)[:, None] + (n_k - n_q)


def _valid(x: np.ndarray, mask, causal: bool) -> np.ndarray:
    valid = np.ones(x.shape, dtype=bool)
    if causal:
        if x.ndim < 2:
            raise ValueError("x: causal softmax needs (..., n_q, n_k) logits")
        valid &= causal_mask(x.shape[-2], x.shape[-1])
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise ValueError(f"mask: expected bool, got {mask.dtype}")
        try:
            valid &= np.broadcast_to(mask, x.shape)
        except ValueError:
            raise ValueError(f"mask: shape {mask.shape} does not broadcast to {x.shape}") from None
    return valid


# --------------------------------------------------------------------------- the block
def _reciprocal(s: np.ndarray, cfg: SoftmaxConfig) -> tuple[np.ndarray, np.ndarray]:
    """(R, b): b = bit_length(s), R = round_half_up(2^(2RF) / s_m), s_m = top RF+1 bits."""
    rf = cfg.recip_frac_bits
    b = _bit_length(s)
    sh = b - 1 - rf
    s_m = np.where(sh >= 0, s >> np.maximum(sh, 0), s << np.maximum(-sh, 0))
    s_m = np.maximum(s_m, 1)  # s = 0 only for fully masked rows
    return ((np.int64(1) << (2 * rf + 1)) + s_m) // (2 * s_m), b


def _output(mant, n, recip, b, cfg: SoftmaxConfig) -> np.ndarray:
    sh = (cfg.exp_frac_bits + cfg.recip_frac_bits - cfg.sum_frac_bits - cfg.out_bits - 1) + n + b
    return np.minimum(rhu(mant * recip, sh), (1 << cfg.out_bits) - 1)


def softmax_fx(
    x, cfg: SoftmaxConfig = DEFAULT.softmax, mask=None, causal: bool = False
) -> np.ndarray:
    """Integer softmax over the last axis (vectorized closed form of the online pass).

    x: signed int logits Q.IF (..., N); mask: bool broadcastable to x (True = keep);
    causal: mask keys j > i + (N - N_q) for (..., N_q, N) logits. Returns UQ0.P
    probabilities (uint16 for P <= 16), bit-equal to ``softmax_online_seq``.
    """
    x = _logits(x, cfg)
    valid = _valid(x, mask, causal)
    shape = x.shape
    n_cols = shape[-1]
    x = x.reshape(-1, n_cols)
    valid = valid.reshape(-1, n_cols)
    rows = x.shape[0]
    tf, e, sf = cfg.t_frac_bits, cfg.exp_frac_bits, cfg.sum_frac_bits

    t = x * log2e_fx(cfg)
    # running-max sentinel below every ceil(t) (|ceil(t)| <= 2^(in_bits - IF)); << TF fits
    neg = -(1 << (cfg.in_bits - cfg.in_frac_bits + 1))
    c = np.where(valid, -((-t) >> tf), neg)
    run = np.maximum.accumulate(c, axis=1)  # M when element j is added
    m_final = run[:, -1]

    # terms as added online, relative to the running max of their time
    mant, n = exp2_neg_fx(np.where(valid, (run << tf) - t, 0), cfg)
    term = np.where(valid, rhu(mant << (sf - e), n), 0)

    # level sums A[r, l] and level max values; Horner over levels with floor shifts
    new_level = np.ones_like(valid)
    new_level[:, 1:] = run[:, 1:] != run[:, :-1]
    level = np.cumsum(new_level, axis=1) - 1
    n_levels = int(level[:, -1].max()) + 1
    level_end = np.ones_like(valid)
    level_end[:, :-1] = new_level[:, 1:]
    r_idx, j_idx = np.nonzero(level_end)
    csum = np.cumsum(term, axis=1)[r_idx, j_idx]
    lvl = level[r_idx, j_idx]
    prev = np.where(lvl > 0, np.concatenate([[0], csum[:-1]]), 0)
    level_sum = np.zeros((rows, n_levels), dtype=np.int64)
    level_sum[r_idx, lvl] = csum - prev
    level_max = np.repeat(m_final[:, None], n_levels, axis=1)
    level_max[r_idx, lvl] = run[r_idx, j_idx]
    s = level_sum[:, 0].copy()
    for li in range(1, n_levels):
        k = np.minimum(level_max[:, li] - level_max[:, li - 1], 63)
        s = (s >> k) + level_sum[:, li]

    recip, b = _reciprocal(s, cfg)
    mant, n = exp2_neg_fx(np.where(valid, (m_final[:, None] << tf) - t, 0), cfg)
    p = _output(mant, n, recip[:, None], b[:, None], cfg)
    p = np.where(valid, p, 0)
    return p.reshape(shape).astype(_out_dtype(cfg))


def softmax_online_seq(
    x, cfg: SoftmaxConfig = DEFAULT.softmax, mask=None, causal: bool = False
) -> np.ndarray:
    """The same block, element by element in the hardware's order (Python ints)."""
    x = _logits(x, cfg)
    valid = _valid(x, mask, causal)
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    valid = valid.reshape(-1, shape[-1])
    tf, e, sf = cfg.t_frac_bits, cfg.exp_frac_bits, cfg.sum_frac_bits
    l2e = log2e_fx(cfg)
    out = np.zeros(x.shape, dtype=np.int64)

    def term_exp(d: int) -> tuple[int, int]:
        mant, n = exp2_neg_fx(np.array(d, dtype=np.int64), cfg)
        return int(mant), int(n)

    for r in range(x.shape[0]):
        m, s = None, 0
        for j in range(x.shape[1]):
            if not valid[r, j]:
                continue
            t = int(x[r, j]) * l2e
            c = -((-t) >> tf)
            if m is None:
                m = c
            elif c > m:
                s >>= c - m
                m = c
            mant, n = term_exp((m << tf) - t)
            s += ((mant << (sf - e)) + ((1 << n) >> 1)) >> n
        if m is None:
            continue
        rf = cfg.recip_frac_bits
        b = s.bit_length()
        s_m = s >> (b - 1 - rf) if b - 1 >= rf else s << (rf - b + 1)
        recip = ((1 << (2 * rf + 1)) + s_m) // (2 * s_m)
        for j in range(x.shape[1]):
            if not valid[r, j]:
                continue
            mant, n = term_exp((m << tf) - int(x[r, j]) * l2e)
            sh = e + n + b - 1 + rf - sf - cfg.out_bits
            out[r, j] = min((mant * recip + (1 << (sh - 1))) >> sh, (1 << cfg.out_bits) - 1)
    return out.reshape(shape).astype(_out_dtype(cfg))


# --------------------------------------------------------------------------- reference
def softmax_ref(x, mask=None) -> np.ndarray:
    """Float64 softmax over the last axis of float logits; masked entries and fully masked
    rows give 0."""
    x = np.asarray(x, dtype=np.float64)
    valid = np.ones(x.shape, dtype=bool) if mask is None else np.broadcast_to(mask, x.shape)
    xm = np.where(valid, x, -np.inf)
    mx = np.max(xm, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    ex = np.where(valid, np.exp(xm - mx), 0.0)
    tot = np.sum(ex, axis=-1, keepdims=True)
    return np.where(tot > 0, ex / np.where(tot > 0, tot, 1.0), 0.0)


# --------------------------------------------------------------------------- measurement
def exp_rel_error(cfg: SoftmaxConfig = DEFAULT.softmax) -> float:
    """Max relative error of exp_fx over every representable z in (-2^in_bits, 0]."""
    z = -np.arange(0, 1 << cfg.in_bits, dtype=np.int64)
    approx = exp_fx_float(z, cfg)
    exact = np.exp(z * 2.0**-cfg.in_frac_bits)
    ok = exact > 0  # float64 underflows below ~-745
    return float(np.max(np.abs(approx[ok] / exact[ok] - 1.0)))


def random_logits(
    rng: np.random.Generator, rows: int, n: int, cfg: SoftmaxConfig = DEFAULT.softmax
) -> np.ndarray:
    """Rows with spreads from near-uniform to one-hot, plus extreme and tied rows."""
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    spread = np.exp2(rng.uniform(-4, 6, size=(rows, 1)))  # std in logit units
    centre = rng.uniform(-60, 60, size=(rows, 1))
    xf = centre + spread * rng.standard_normal((rows, n))
    x = np.clip(np.rint(xf * 2.0**cfg.in_frac_bits), lo, hi).astype(np.int64)
    if rows >= 4:
        x[0] = hi  # all equal, max
        x[1] = lo  # all equal, min
        x[2] = rng.integers(lo, hi + 1, size=n)  # full range
        x[3] = lo
        x[3, rng.integers(0, n)] = hi  # one-hot
    return x.astype(np.int16 if cfg.in_bits <= 16 else np.int32)


def prob_abs_error(
    x, cfg: SoftmaxConfig = DEFAULT.softmax, mask=None, causal: bool = False
) -> float:
    p = softmax_fx(x, cfg, mask=mask, causal=causal).astype(np.float64) * 2.0**-cfg.out_bits
    valid = _valid(np.asarray(x), mask, causal)
    ref = softmax_ref(np.asarray(x, dtype=np.float64) * 2.0**-cfg.in_frac_bits, valid)
    return float(np.max(np.abs(p - ref)))


def error_report(cfg=DEFAULT) -> list[dict]:
    sc = cfg.softmax
    rng = np.random.default_rng(0)
    rel = exp_rel_error(sc)
    err = 0.0
    for n in (1, 7, 64, 512, PROB_BOUND_MAX_LEN):
        err = max(err, prob_abs_error(random_logits(rng, 64 if n < 512 else 16, n, sc), sc))
    err = max(err, prob_abs_error(random_logits(rng, 128, 128, sc), sc, causal=True))
    x = random_logits(rng, 24, 48, sc)
    mask = rng.random(x.shape) < 0.8
    diff = 0.0
    for kw in ({}, {"mask": mask}, {"causal": True}):
        a = softmax_fx(x, sc, **kw).astype(np.int64)
        b = softmax_online_seq(x, sc, **kw).astype(np.int64)
        diff = max(diff, float(np.max(np.abs(a - b))))
    return [
        {
            "block": "softmax",
            "quantity": "exp relative error (I-BERT i-exp: 3.3e-3)",
            "domain": f"every z in (-2^{sc.in_bits}, 0], Q.{sc.in_frac_bits}",
            "bound": EXP_REL_ERR,
            "measured": rel,
        },
        {
            "block": "softmax",
            "quantity": f"probability abs error (UQ0.{sc.out_bits})",
            "domain": f"random rows N=1..{PROB_BOUND_MAX_LEN}, one-hot..uniform, causal",
            "bound": PROB_ABS_ERR,
            "measured": err,
        },
        {
            "block": "softmax",
            "quantity": "vectorized vs sequential online (LSB)",
            "domain": "24x48 rows: unmasked, random mask, causal",
            "bound": VEC_VS_SEQ_LSB,
            "measured": diff,
        },
    ]
