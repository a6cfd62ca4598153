"""Where the shipped model and the corpus live, and how the corpus splits (one definition
each, for training, evaluation, the CLI, the benchmarks and the notebooks).

- ``DEFAULT_MODEL``: the shipped checkpoint, ``models/default`` in the repository.
- ``DEFAULT_CORPUS``: ``../shared/data/tinyshakespeare.txt`` relative to the repository.
- The split: the first ``split_index(n) = int(n * (1 - HELDOUT_FRACTION))`` characters
  (or character ids) train, the last 10 % are held out (never trained on).
"""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(REPO, "models", "default")
DEFAULT_CORPUS = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt"))
HELDOUT_FRACTION = 0.1


def read_corpus(path: str = DEFAULT_CORPUS) -> str:
    """The corpus text (UTF-8)."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def split_index(n: int) -> int:
    """Items [0, split_index(n)) of a corpus of n characters train; the rest is held out."""
    return int(n * (1.0 - HELDOUT_FRACTION))


def split(seq):
    """(train, held-out) parts of a corpus text or of its character ids."""
    i = split_index(len(seq))
    return seq[:i], seq[i:]


def heldout_text(corpus: str = DEFAULT_CORPUS, chars: int | None = None) -> str:
    """The held-out split of the corpus file (its first ``chars`` characters when given)."""
    text = read_corpus(corpus)
    if len(text) < 2:
        raise ValueError(f"{corpus}: corpus too short")
    held = split(text)[1]
    return held[:chars] if chars else held
