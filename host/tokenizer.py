"""Character-level tokenizer of the shipped model.

The vocabulary is the sorted set of characters of the training corpus; token id = index
in that list. It is stored next to the checkpoint as ``tokenizer.json``::

    {"type": "char", "vocab": ["\\n", " ", "!", ...]}

Every vocabulary entry is exactly one character and entries are unique.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """One token per character; ``vocab[i]`` is the character of token ``i``."""

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if not vocab:
            raise ValueError("vocab: expected at least one character, got an empty list")
        for i, ch in enumerate(vocab):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"vocab: entry {i} must be a single character, got {ch!r}")
        if len(set(vocab)) != len(vocab):
            dup = sorted({c for c in vocab if vocab.count(c) > 1})
            raise ValueError(f"vocab: duplicate characters {dup!r}")
        self.vocab: list[str] = vocab
        self._index = {ch: i for i, ch in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The vocabulary of a corpus: its sorted set of characters."""
        if not isinstance(text, str) or not text:
            raise ValueError("text: expected a non-empty str")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text: expected str, got {type(text).__name__}")
        index = self._index
        try:
            return [index[ch] for ch in text]
        except KeyError:
            pos = next(i for i, ch in enumerate(text) if ch not in index)
            raise ValueError(f"text: character {text[pos]!r} at position {pos} is not in the "
                             f"vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        n = len(self.vocab)
        for pos, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"ids: token id {i} at position {pos} outside [0, {n})")
            out.append(self.vocab[i])
        return "".join(out)

    def save(self, directory: str | os.PathLike) -> str:
        """Write ``<directory>/tokenizer.json``; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, TOKENIZER_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"type": "char", "vocab": self.vocab}, f, ensure_ascii=False)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CharTokenizer":
        """Read ``<directory>/tokenizer.json`` (or the file itself when given a file path)."""
        path = os.fspath(directory)
        if not (os.path.isfile(path) or path.endswith(".json")):
            path = os.path.join(path, TOKENIZER_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{path}: tokenizer file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: malformed tokenizer JSON ({e})") from None
        if not isinstance(data, dict) or data.get("type") != "char":
            raise ValueError(f"{path}: expected an object with \"type\": \"char\"")
        vocab = data.get("vocab")
        if not isinstance(vocab, list):
            raise ValueError(f"{path}: \"vocab\" must be a list of characters")
        try:
            return cls(vocab)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
