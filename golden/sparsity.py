"""Thresholded activation sparsity (training-free, lossy; DESIGN §9): TEAL, WINA, CATS.

An integer threshold per (layer, projection) zeroes small INT8 projection inputs x_q
before the TLMM, the mechanism the engine already has: an all-zero group of G inputs is a
weight beat that TLMM_SPARSE does not read (``golden.tlmm.live_groups``), and with a
threshold the engine would zero ``score <= tau`` itself. The methods differ in the score:

``teal``  (Liu et al. 2024) ``|x_q[i]|``; tau in [0, act_max].
``wina``  (Chen et al. 2025) ``|x_q[i]| * ||W[:, i]||_2``, as the exact integer
          ``x_q[i]^2 * nnz_i`` (a ternary column's squared L2 norm is its non-zero count;
          the per-tensor weight scale folds into tau, so tau is on the squared score).
``cats``  (Lee et al. 2024) on the FFN gate, key name ``"act"``: ReLU^2 -- the 16-bit
          gate code ``g16`` (``golden.model.op_act``) with ``0 < g16 <= tau`` is zeroed in
          the gate accumulator (ReLU^2 is monotone there), so its up row is masked and its
          down_proj input is 0; SiLU -- the ACT output ``a`` (Q7.8) with ``|a| <= tau``
          is zeroed (0 <= tau <= CATS_MAX). Negative gates are never touched: the
          per-token absmax, hence every other code, stays as in the dense run.

A threshold of 0 changes nothing (TEAL: only zeros have score 0; WINA: also inputs whose
weight column is all zero, which contribute nothing; CATS: no gate is <= 0 and > 0), so
``ActSparsity`` with every tau 0 is bit-identical to the dense forward.

Calibration (``threshold_for_level``): a *level* L is the fraction of the live inputs
(score > 0 in the dense run) that the threshold removes; the tau whose fraction on the
calibration scores is nearest L (scores are integers, so levels are reached to within
the weight of one score value). Counting only live inputs makes the level mean the same
for every input, including a ReLU^2 FFN's down_proj input and gate, which are ~80-90 %
exact zeros already (DESIGN §9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .modelspec import PROJ

METHODS = ("teal", "wina", "cats")
ACT = "act"  # CATS's key name: the FFN activation of a layer
TEAL_MAX = 127  # |x_q| <= act_max: tau = 127 zeroes every input
CATS_MAX = (1 << 15) - 2  # below the gate code of the per-token absmax (2^15 - 1)


def _names(method: str) -> tuple[str, ...]:
    return (ACT,) if method == "cats" else PROJ


def _tau_max(method: str) -> int:
    return {"teal": TEAL_MAX, "cats": CATS_MAX}.get(method, (1 << 62) - 1)


@dataclass(frozen=True)
class ActSparsity:
    """Per-(layer, name) integer thresholds of one method (module doc).

    ``thresholds``: a mapping ``{(layer, name): tau}`` (stored as a sorted tuple of
    ``(layer, name, tau)``); names are projection names (teal, wina) or ``"act"``
    (cats); a missing key leaves that input dense."""

    method: str
    thresholds: tuple

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        items = self.thresholds
        if isinstance(items, Mapping):
            items = [
                (k[0], k[1], v) if isinstance(k, tuple) else (k, None, v) for k, v in items.items()
            ]
        try:
            items = [tuple(t) for t in items]
        except TypeError:
            raise ValueError(
                f"thresholds: expected a mapping {{(layer, name): tau}}, got "
                f"{type(self.thresholds).__name__}"
            ) from None
        names, top = _names(self.method), _tau_max(self.method)
        seen = set()
        for t in items:
            if len(t) != 3:
                raise ValueError(f"thresholds: expected (layer, name) keys, got {t[:-1]!r}")
            layer, name, tau = t
            if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or layer < 0:
                raise ValueError(f"thresholds: layer must be an integer >= 0, got {layer!r}")
            if name not in names:
                raise ValueError(
                    f"thresholds: {self.method} thresholds name one of {names}, got {name!r}"
                )
            if (
                not isinstance(tau, (int, np.integer))
                or isinstance(tau, bool)
                or not 0 <= tau <= top
            ):
                raise ValueError(
                    f"thresholds: ({layer}, {name!r}): tau must be an integer in [0, {top}] "
                    f"for {self.method}, got {tau!r}"
                )
            if (int(layer), name) in seen:
                raise ValueError(f"thresholds: ({layer}, {name!r}) given twice")
            seen.add((int(layer), name))
        norm = tuple(sorted((int(a), b, int(c)) for a, b, c in items))
        object.__setattr__(self, "thresholds", norm)

    def tau(self, layer: int, name: str) -> int | None:
        """The threshold of (layer, name), None where that input stays dense."""
        for a, b, c in self.thresholds:
            if a == layer and b == name:
                return c
        return None

    def check(self, config) -> None:
        """ValueError unless every key fits the model (its layers, its activation)."""
        n = config.num_hidden_layers
        bad = [(a, b) for a, b, _ in self.thresholds if a >= n]
        if bad:
            raise ValueError(f"act_sparsity: layer {bad[0][0]} beyond the model's {n} layers")
        if self.method == "cats" and config.hidden_act not in ("relu2", "silu"):
            raise ValueError(f"act_sparsity: cats needs relu2 or silu, got {config.hidden_act}")


# --------------------------------------------------------------------------- scores
def column_weights(codes: np.ndarray) -> np.ndarray:
    """WINA's column weights: ||W[:, i]||_2^2 of ternary codes [out, in] = non-zeros per
    column, int64 [in]."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes: expected a 2-D [out, in] array, got shape {codes.shape}")
    return np.count_nonzero(codes, axis=0).astype(np.int64)


def input_scores(method: str, x_q: np.ndarray, col: np.ndarray | None = None) -> np.ndarray:
    """int64 score of every projection input (teal: |x_q|; wina: x_q^2 * col)."""
    x = np.asarray(x_q)
    if x.dtype.kind not in "iu":
        raise ValueError(f"x_q: expected an integer array, got {x.dtype}")
    x = x.astype(np.int64)
    if method == "teal":
        return np.abs(x)
    if method == "wina":
        if col is None or np.shape(col) != x.shape[-1:]:
            raise ValueError(
                f"col: wina needs one weight per input ({x.shape[-1]}), got "
                f"{None if col is None else np.shape(col)}"
            )
        return x * x * np.asarray(col, dtype=np.int64)
    raise ValueError(f"method: input scores exist for teal and wina, got {method!r}")


def threshold_inputs(
    method: str, x_q: np.ndarray, tau: int, col: np.ndarray | None = None
) -> np.ndarray:
    """x_q with every input whose score is <= tau set to 0 (same dtype)."""
    x = np.asarray(x_q)
    return np.where(input_scores(method, x, col) <= tau, 0, x).astype(x.dtype)


def cats_relu2_gate(acc_g: np.ndarray, g16: np.ndarray, tau: int) -> np.ndarray:
    """The gate accumulators with every gate of code 0 < g16 <= tau set to 0 (int32)."""
    return np.where((g16 > 0) & (g16 <= tau), 0, acc_g).astype(np.int32)


# --------------------------------------------------------------------------- calibration
def live_fraction_zeroed(values: np.ndarray, counts: np.ndarray, tau: int) -> float:
    """Fraction of the live scores (> 0), given as distinct ``values`` with ``counts``,
    that are <= tau."""
    values, counts = np.asarray(values), np.asarray(counts)
    live = values > 0
    total = int(counts[live].sum())
    if total == 0:
        return 0.0
    return float(counts[live & (values <= tau)].sum()) / total


def threshold_for_level(values: np.ndarray, counts: np.ndarray, level: float) -> int:
    """The integer tau whose fraction of live scores removed is nearest ``level`` (ties:
    the smaller tau); 0 for level 0 or when no score is live. ``values``/``counts``: the
    distinct calibration scores and how often each occurs (``np.unique``)."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level < 1:
        raise ValueError(f"level: expected a fraction in [0, 1), got {level!r}")
    values = np.asarray(values)
    counts = np.asarray(counts)
    if values.shape != counts.shape or values.ndim != 1:
        raise ValueError(
            f"values/counts: expected two 1-D arrays of one length, got "
            f"{values.shape} and {counts.shape}"
        )
    if values.dtype.kind not in "iu" or np.any(counts < 0):
        raise ValueError("values/counts: expected integer scores and non-negative counts")
    live = values > 0
    v, c = values[live], counts[live]
    if level == 0 or c.sum() == 0:
        return 0
    order = np.argsort(v)
    v, c = v[order], c[order]
    frac = np.cumsum(c) / c.sum()  # fraction removed with tau = v[i]
    taus = np.concatenate([[0], v])
    fr = np.concatenate([[0.0], frac])
    return int(taus[int(np.argmin(np.abs(fr - level)))])


class ScoreHistogram:
    """Distinct scores and their counts, accumulated over calibration batches."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, scores: np.ndarray) -> None:
        v, c = np.unique(np.asarray(scores, dtype=np.int64), return_counts=True)
        self._parts.append((v, c))
        if len(self._parts) > 16:  # keep the list short
            self._parts = [self.merged()]

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        v = np.concatenate([p[0] for p in self._parts])
        c = np.concatenate([p[1] for p in self._parts])
        u, inv = np.unique(v, return_inverse=True)
        return u, np.bincount(inv, weights=c, minlength=len(u)).astype(np.int64)
