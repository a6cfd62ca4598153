"""Shared helpers of the study notebooks (not a notebook itself).

- ``figure_saver(notebook, out_dir)``: prints the kernel's interpreter, makes the figure
  directory and returns ``savefig(fig, name)`` (``<out_dir>/<notebook>_<name>.png``).
- ``load(model_dir)``: the checkpoint (``host.checkpoint.load``) and its tokenizer
  (default: the shipped model, ``host.data.DEFAULT_MODEL``).
- ``heldout_windows(tok, n_windows, context)``: the first ``n_windows * context + 1``
  characters of the held-out split (``host.data.heldout_text``), cut into the
  non-overlapping windows ``host.eval`` scores.
- ``score(gm, wins)``: bits per character over the windows, plus the per-window mean
  so that two runs on the same text can be compared pairwise.

The forward the studies run is ``golden.model.GoldenModel``; its reference mode takes the
ablation switches (``approx``, names from ``golden.model.APPROXIMATIONS``) and the hooks
(``proj_hook``, ``act_hook``) the notebooks use (golden/model.py, "Ablations").
"""

from __future__ import annotations

import os
import sys

import numpy as np

from golden.modelspec import Model
from host import checkpoint as hckpt
from host import data as hdata
from host import eval as heval
from host.tokenizer import CharTokenizer

REPO = hdata.REPO


def resolve(path: str) -> str:
    """A repo-relative path made absolute (absolute paths pass through)."""
    return path if os.path.isabs(path) else os.path.join(REPO, path)


def figure_saver(notebook: str, out_dir: str):
    """Set-up of a notebook's first cell: Agg figures, the kernel's interpreter printed,
    ``out_dir`` created; returns ``savefig(fig, name)``."""
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    print("kernel python:", sys.executable)
    out = resolve(out_dir)
    os.makedirs(out, exist_ok=True)

    def savefig(fig, name):
        path = os.path.join(out, f"{notebook}_{name}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        print("saved", os.path.relpath(path, REPO))

    return savefig


def load(model_dir: str | None = None) -> tuple[Model, CharTokenizer]:
    """The checkpoint and its tokenizer (``None``: the shipped model)."""
    d = resolve(model_dir) if model_dir else hdata.DEFAULT_MODEL
    return hckpt.load(d), CharTokenizer.load(d)


def heldout_windows(tok: CharTokenizer, n_windows: int, context: int):
    """The first ``n_windows`` full windows of the held-out split (n*context + 1 chars)."""
    text = hdata.heldout_text(hdata.DEFAULT_CORPUS, n_windows * context + 1)
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    return heval.windows(ids, context)


def score(gm, wins, batch: int = 8, argmax: list | None = None) -> tuple[float, np.ndarray]:
    """(bits per char over all predictions, per-window mean bits per char).

    ``gm.forward(tokens [B, T]) -> logits [B, T, V]`` (a ``GoldenModel``); windows of
    equal length are batched (``host.eval.target_log_probs``). ``argmax``: if a list,
    the greedy prediction [B, T] of each batch is appended."""
    per_win = []
    total, count = 0.0, 0
    for logits, lp in heval.target_log_probs(gm, wins, batch):
        if argmax is not None:
            argmax.append(np.argmax(logits, axis=-1))
        nll = -lp / np.log(2.0)
        per_win.extend(nll.mean(axis=-1).tolist())
        total += float(nll.sum())
        count += nll.size
    return total / count, np.asarray(per_win)
