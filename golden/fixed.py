"""Fixed-point primitives shared by the golden models (one definition each).

All operate elementwise on int64 numpy arrays; ``>>`` is the arithmetic (floor) shift the
RTL uses.
"""

from __future__ import annotations

import numpy as np


def bit_length(a) -> np.ndarray:
    """Exact ``int.bit_length`` of non-negative int64 values (0 -> 0)."""
    v = np.asarray(a, dtype=np.int64)
    if v.size == 0 or int(v.max()) < (1 << 53):  # float64 holds v exactly: frexp is exact
        return np.frexp(v.astype(np.float64))[1].astype(np.int64)
    v = v.copy()
    n = np.zeros(v.shape, dtype=np.int64)
    for s in (32, 16, 8, 4, 2, 1):
        big = v >= (np.int64(1) << s)
        n += np.where(big, s, 0)
        v = np.where(big, v >> s, v)
    return n + (v > 0)


def rhu(v, s) -> np.ndarray:
    """Round half up ``v / 2^s``: ``(v + 2^(s-1)) >> s``; ``s <= 0`` is an exact left shift
    (the caller keeps the result in range). Right shifts beyond 63 act as 63 (which gives
    0 for |v| < 2^62, as the exact shift does)."""
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    if s.size and int(s.min()) > 0:  # the common case: right shifts only
        s = np.minimum(s, 63)
        return (v + np.left_shift(np.int64(1), s - 1)) >> s
    pos = np.minimum(np.maximum(s, 0), 63)
    half = np.where(pos > 0, np.left_shift(np.int64(1), np.maximum(pos - 1, 0)), 0)
    return np.where(s > 0, (v + half) >> pos, v << np.maximum(-s, 0))
