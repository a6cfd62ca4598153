"""Rotary position embedding from fixed-point cos/sin tables: the golden specification.

Convention: rotate-half, as transformers Llama/BitNet (``apply_rotary_pos_emb``): for a
head vector of even length ``hd`` and ``h = hd/2``, element i (i < h) is paired with
element i + h, both rotated by the angle ``pos * theta^(-2i/hd)``::

    out[i]     = x[i] * cos - x[i+h] * sin
    out[i + h] = x[i+h] * cos + x[i] * sin

Tables (``rope_tables(head_dim, cfg)``, the RTL generator and host read the same
function): ``cos_q[pos, i] = round_half_up(cos(pos * theta^(-2i/hd)) * 2^T)`` and the same
for sin, T = ``RopeConfig.table_frac_bits`` (14), signed int16 Q1.T, positions
0..``max_pos``-1, shape (max_pos, hd/2). Angles and cos/sin are evaluated in float64
(transformers evaluates them in float32, which differs by up to ~pos * 6e-8 rad).
|table - exact| <= 2^-(T+1) = ``TABLE_ERR``.

Datapath (``rope_fx``): input signed integers of ``b`` = 8, 16 or 32 bits (int8/int16/
int32; any fixed-point position, the output has the same one). Per pair, two signed
products ``b x 16`` bits summed exactly (``b + 17`` bits), then rounded half up by T
bits: ``(v + 2^(T-1)) >> T`` (arithmetic shift = floor), then saturated to signed
``RopeConfig.out_bits(b) = min(b + 1, out_bits_max)`` bits. ``|out| <= sqrt(2) *
2^(b-1) * (1 + 2^-T) + 1/2 < 2^b``, so saturation only happens when ``b + 1 >
out_bits_max`` (int32 inputs beyond about +-2^30.5). Output dtype: int16 for int8 input,
int32 otherwise.

Error vs float RoPE of the same integer input (no saturation): each table value is within
2^-(T+1) of the exact cos/sin and the final rounding adds <= 1/2 LSB, so per element
``|out - exact| <= 1/2 + (|x[i]| + |x[i+h]|) * 2^-(T+1)`` (``error_bound``); for int8
inputs this is <= ``INT8_ERR_LSB`` = 0.5 + 2^8 * 2^-(T+1) = 0.5078 LSB.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .config import DEFAULT, RopeConfig

# Max |cos_q/2^T - cos| and |sin_q/2^T - sin| over the tables (half a table LSB).
TABLE_ERR = 2.0 ** -(DEFAULT.rope.table_frac_bits + 1)
# Max |rope_fx - float RoPE| for int8 inputs, in output LSB.
INT8_ERR_LSB = 0.5 + 2 * (1 << 7) * TABLE_ERR
# Max of |rope_fx - float RoPE| / error_bound(x) for any input (the per-element bound holds).
ERR_RATIO = 1.0

_OUT_DTYPE = {8: np.int16, 16: np.int32, 32: np.int32}


def _check_head_dim(head_dim) -> int:
    if not isinstance(head_dim, (int, np.integer)) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim: expected an even integer >= 2, got {head_dim!r}")
    return int(head_dim)


def inv_freq(head_dim: int, cfg: RopeConfig = DEFAULT.rope) -> np.ndarray:
    """theta^(-2i/head_dim), i = 0..head_dim/2-1, float64."""
    hd = _check_head_dim(head_dim)
    return cfg.theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)


@cache
def rope_tables(head_dim: int, cfg: RopeConfig = DEFAULT.rope) -> tuple[np.ndarray, np.ndarray]:
    """(cos_q, sin_q): int16 Q1.T, shape (max_pos, head_dim/2), read-only."""
    ang = np.arange(cfg.max_pos, dtype=np.float64)[:, None] * inv_freq(head_dim, cfg)[None, :]
    scale = float(1 << cfg.table_frac_bits)
    tabs = []
    for v in (np.cos(ang), np.sin(ang)):
        q = np.floor(v * scale + 0.5).astype(np.int16)
        q.flags.writeable = False
        tabs.append(q)
    return tabs[0], tabs[1]


def _positions(positions, shape: tuple, cfg: RopeConfig) -> np.ndarray:
    pos = np.asarray(positions)
    if pos.dtype.kind not in "iu":
        raise ValueError(f"positions: expected an integer dtype, got {pos.dtype}")
    if pos.size and (int(pos.min()) < 0 or int(pos.max()) >= cfg.max_pos):
        raise ValueError(f"positions: values outside [0, {cfg.max_pos - 1}] (RopeConfig.max_pos)")
    try:
        return np.broadcast_to(pos, shape).astype(np.int64)
    except ValueError:
        raise ValueError(f"positions: shape {pos.shape} does not broadcast to {shape}") from None


def rope_fx(x, positions, cfg: RopeConfig = DEFAULT.rope) -> np.ndarray:
    """Apply RoPE to integer vectors x (..., head_dim) at ``positions`` (broadcast to
    x.shape[:-1], e.g. shape (seq,) for x (heads, seq, head_dim)); see the module doc."""
    x = np.asarray(x)
    if x.dtype not in (np.int8, np.int16, np.int32):
        raise ValueError(f"x: expected int8, int16 or int32, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError("x: expected at least one axis (head_dim)")
    hd = x.shape[-1]
    _check_head_dim(hd)
    pos = _positions(positions, x.shape[:-1], cfg)
    cos_q, sin_q = rope_tables(hd, cfg)
    return rope_from_table(x, cos_q[pos], sin_q[pos], cfg)


def rope_from_table(
    x: np.ndarray, cos_q: np.ndarray, sin_q: np.ndarray, cfg: RopeConfig = DEFAULT.rope
) -> np.ndarray:
    """The datapath of ``rope_fx`` with the table rows of each vector's position given:
    cos_q, sin_q int16 [..., head_dim/2] (Q1.table_frac_bits) broadcast against x
    [..., head_dim] (the accelerator reads them from the RoPE table in memory)."""
    x = np.asarray(x)
    bits = 8 * x.dtype.itemsize
    h = x.shape[-1] // 2
    c, s = np.asarray(cos_q).astype(np.int64), np.asarray(sin_q).astype(np.int64)
    x = x.astype(np.int64)
    x1, x2 = x[..., :h], x[..., h:]
    acc = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    t = cfg.table_frac_bits
    out = (acc + (1 << (t - 1))) >> t
    ob = cfg.out_bits(bits)
    out = np.clip(out, -(1 << (ob - 1)), (1 << (ob - 1)) - 1)
    return out.astype(_OUT_DTYPE[bits])


# --------------------------------------------------------------------------- reference
def rope_ref(x, positions, theta: float) -> np.ndarray:
    """Float RoPE (float64, rotate-half) of x (..., head_dim) at positions (broadcast)."""
    x = np.asarray(x, dtype=np.float64)
    hd = _check_head_dim(x.shape[-1])
    freq = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.broadcast_to(np.asarray(positions, dtype=np.float64), x.shape[:-1])[..., None] * freq
    c, s = np.cos(ang), np.sin(ang)
    h = hd // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def error_bound(x, cfg: RopeConfig = DEFAULT.rope) -> np.ndarray:
    """Per-element bound on |rope_fx(x) - rope_ref(x)|: 1/2 + (|x[i]| + |x[i+h]|) * 2^-(T+1)."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    h = a.shape[-1] // 2
    pair = a[..., :h] + a[..., h:]
    return 0.5 + np.concatenate([pair, pair], axis=-1) * 2.0 ** -(cfg.table_frac_bits + 1)


# --------------------------------------------------------------------------- measurement
def table_error(head_dim: int, cfg: RopeConfig = DEFAULT.rope) -> float:
    cos_q, sin_q = rope_tables(head_dim, cfg)
    ang = np.arange(cfg.max_pos, dtype=np.float64)[:, None] * inv_freq(head_dim, cfg)[None, :]
    scale = 2.0**-cfg.table_frac_bits
    return float(
        max(
            np.max(np.abs(cos_q * scale - np.cos(ang))), np.max(np.abs(sin_q * scale - np.sin(ang)))
        )
    )


def int8_sweep(head_dim: int, cfg: RopeConfig = DEFAULT.rope) -> tuple[np.ndarray, np.ndarray]:
    """int8 pairs (x[i], x[i+h]): the extremes/zero {-128, -127, -1, 0, 1, 127} and a
    17-spaced grid, all combinations, at every position; the pair-to-lane assignment
    rotates with the position so every pair meets every frequency.
    Returns (x (max_pos, rows, head_dim) int8, positions (max_pos, 1))."""
    h = _check_head_dim(head_dim) // 2
    vals = np.unique(np.concatenate([np.arange(-128, 128, 17), [-128, -127, -1, 0, 1, 127]]))
    a, b = np.meshgrid(vals, vals, indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], axis=-1)  # (n, 2)
    rows = -(-len(pairs) // h)
    lane = np.arange(rows * h)[None, :] + np.arange(cfg.max_pos)[:, None]
    sel = pairs[lane % len(pairs)].reshape(cfg.max_pos, rows, h, 2)
    x = np.concatenate([sel[..., 0], sel[..., 1]], axis=-1).astype(np.int8)
    return x, np.arange(cfg.max_pos)[:, None]


def max_errors(x, positions, cfg: RopeConfig = DEFAULT.rope) -> tuple[float, float]:
    """(max |rope_fx - rope_ref| in LSB, max of that / error_bound)."""
    err = np.abs(rope_fx(x, positions, cfg).astype(np.float64) - rope_ref(x, positions, cfg.theta))
    return float(np.max(err)), float(np.max(err / error_bound(x, cfg)))


def error_report(cfg=DEFAULT) -> list[dict]:
    rc = cfg.rope
    rng = np.random.default_rng(0)
    hd = 64
    tab = table_error(hd, rc)
    x8, pos8 = int8_sweep(hd, rc)
    err8, ratio8 = max_errors(x8, pos8, rc)
    x32 = rng.integers(-(1 << 30), 1 << 30, size=(4, 256, hd)).astype(np.int32)
    x32 >>= rng.integers(0, 30, size=(4, 256, 1)).astype(np.int32)
    pos32 = rng.integers(0, rc.max_pos, size=256)
    _, ratio32 = max_errors(x32, pos32, rc)
    return [
        {
            "block": "rope",
            "quantity": "cos/sin table abs error",
            "domain": f"head_dim {hd}, positions 0..{rc.max_pos - 1}",
            "bound": TABLE_ERR,
            "measured": tab,
        },
        {
            "block": "rope",
            "quantity": "abs error vs float RoPE, int8 input (LSB)",
            "domain": f"int8 pair grid incl. extremes, all {rc.max_pos} positions",
            "bound": INT8_ERR_LSB,
            "measured": err8,
        },
        {
            "block": "rope",
            "quantity": "abs error / per-element bound, int32 input",
            "domain": "random int32 |x| < 2^30 at random magnitudes and positions",
            "bound": ERR_RATIO,
            "measured": max(ratio8, ratio32),
        },
    ]
