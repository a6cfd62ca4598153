"""Tokenizers of a checkpoint, through Hugging Face ``tokenizers``.

Files (a checkpoint directory, or the path of a ``tokenizer.json``):

``tokenizer.json``
    Any Hugging Face ``tokenizers`` file: BPE (byte-level as GPT-2 / LLaMA-3, or with byte
    fallback as LLaMA-2), WordPiece, Unigram, WordLevel. The package's own character
    tokenizer is such a file too: a ``WordLevel`` model whose vocabulary is the sorted set
    of the training corpus' characters (token id = index in that list), a ``Split``
    pre-tokenizer that isolates every character and a ``Fuse`` decoder, so that
    ``tokenizers.Tokenizer.from_file`` and ``transformers.AutoTokenizer`` load it and give
    the ids of the character table. The earlier format of the package,
    ``{"type": "char", "vocab": ["\\n", " ", ...]}``, still loads (as the same tokenizer).
``tokenizer_config.json`` (optional)
    ``bos_token`` / ``eos_token`` (a string or ``{"content": ...}``) and ``add_bos_token``.
``generation_config.json``, ``config.json`` (optional)
    ``eos_token_id`` (an id or a list of ids) and ``bos_token_id``.

End of sequence: the EOS ids are the union of ``generation_config.json``'s and
``config.json``'s ``eos_token_id`` and the id of ``tokenizer_config.json``'s
``eos_token``; generation stops when it samples one (``host.generate``). BOS: prepended to
a prompt when ``add_bos_token`` is true, or, when the config does not say, when the
``tokenizer.json`` post-processor itself prepends the BOS token (LLaMA-3).

Encoding (``Tokenizer.encode``) never adds other special tokens (no [CLS]/[SEP]). A
character the tokenizer cannot represent is an error naming it and its position: the
character tokenizer's ``WordLevel`` model has no unknown token and refuses it, and a BPE
model without an unknown token (and without byte fallback) would drop it silently, which
is caught from the encoding's offsets. Byte-level and byte-fallback tokenizers represent
every character; WordPiece / Unigram map unknown text to their unknown token.

Streaming (``StreamDecoder``): each new token's text is the decode of the recent tokens
minus the decode of the ones before it, held back while it ends in an incomplete UTF-8
sequence (U+FFFD), so a multi-byte character split over byte-level BPE tokens is printed
once, whole; special tokens are not printed.

``train_bpe`` trains a byte-level BPE tokenizer with ``tokenizers``' own trainer (EOS
``<|endoftext|>``); ``python -m host.tokenizer --vocab-size N --out DIR`` trains one on the
training split of the corpus (``host.data.split``).

Errors (missing or malformed files, a file in neither format, special tokens outside the
vocabulary) raise ValueError naming the file.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Sequence

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_CONFIG_FILE = "config.json"
BPE_EOS = "<|endoftext|>"
_REPLACEMENT = "\ufffd"
# A pattern that matches every single character (newlines included): the character
# tokenizer's pre-tokenizer isolates each one.
_ANY_CHAR = r"[\s\S]"


def _tk():
    import tokenizers

    return tokenizers


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with the special tokens a generator needs.

    ``eos_ids``: ids that end generation; ``bos_id``: the BOS token (or None);
    ``add_bos``: prepend it to prompts; ``path``: the file it came from (for messages).
    """

    def __init__(
        self,
        tk,
        eos_ids: Iterable[int] = (),
        bos_id: int | None = None,
        add_bos: bool = False,
        path: str | None = None,
    ):
        self.tk = tk
        self.path = path or "<tokenizer>"
        vocab = tk.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError(f"{self.path}: empty vocabulary")
        self._size = max(vocab.values()) + 1
        self.eos_ids: tuple[int, ...] = tuple(sorted({int(i) for i in eos_ids}))
        self.bos_id = None if bos_id is None else int(bos_id)
        self.add_bos = bool(add_bos) and self.bos_id is not None
        for name, ids in (("eos", self.eos_ids), ("bos", () if bos_id is None else (bos_id,))):
            bad = [i for i in ids if not 0 <= i < self._size]
            if bad:
                raise ValueError(
                    f"{self.path}: {name} token id {bad[0]} outside the vocabulary "
                    f"[0, {self._size})"
                )
        self._vocab: list[str] | None = None
        model = tk.model
        bpe = _tk().models.BPE
        # a BPE model without an unknown token or byte fallback drops what it cannot encode
        self._may_drop = (
            isinstance(model, bpe) and model.unk_token is None and not model.byte_fallback
        )

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        """Number of token ids (largest id + 1, added tokens included)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def vocab(self) -> list[str]:
        """Token strings by id (the characters, for the character tokenizer)."""
        if self._vocab is None:
            self._vocab = [self.tk.id_to_token(i) or "" for i in range(self._size)]
        return self._vocab

    @property
    def eos_tokens(self) -> list[str]:
        return [self.tk.id_to_token(i) for i in self.eos_ids]

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text`` (no special tokens but BOS, when ``add_bos``, default: the
        tokenizer's own setting). ValueError naming a character it cannot represent."""
        if not isinstance(text, str):
            raise ValueError(f"text: expected str, got {type(text).__name__}")
        try:
            enc = self.tk.encode(text, add_special_tokens=False)
        except Exception as e:  # WordLevel without an unknown token refuses the text
            pos = self._first_unencodable(text)
            if pos is None:
                raise ValueError(f"text: cannot be encoded ({_first_line(e)})") from None
            raise ValueError(
                f"text: character {text[pos]!r} at position {pos} is not in the vocabulary"
            ) from None
        if self._may_drop:
            pos = _first_dropped(text, enc.offsets)
            if pos is not None:
                raise ValueError(
                    f"text: character {text[pos]!r} at position {pos} is not in the vocabulary"
                )
        ids = list(enc.ids)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, character offsets) of ``text`` without special tokens (evaluation)."""
        ids = self.encode(text, add_bos=False)
        return ids, list(self.tk.encode(text, add_special_tokens=False).offsets)

    def _first_unencodable(self, text: str) -> int | None:
        for i, ch in enumerate(text):
            try:
                self.tk.encode(ch, add_special_tokens=False)
            except Exception:
                return i
        return None

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        out = []
        n = self._size
        for pos, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"ids: token id {i} at position {pos} outside [0, {n})")
            out.append(i)
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tk.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)

    # ------------------------------------------------------------------ files
    def to_json(self) -> str:
        return self.tk.to_str(pretty=True)

    def save(self, directory: str | os.PathLike) -> str:
        """Write ``<directory>/tokenizer.json`` (and ``tokenizer_config.json`` /
        ``generation_config.json`` when there are BOS/EOS tokens); returns the first path."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, TOKENIZER_FILE)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        tc = {}
        if self.bos_id is not None:
            tc["bos_token"] = self.tk.id_to_token(self.bos_id)
            tc["add_bos_token"] = self.add_bos
        if self.eos_ids:
            tc["eos_token"] = self.tk.id_to_token(self.eos_ids[0])
        if tc:
            tc.update(tokenizer_class="PreTrainedTokenizerFast", clean_up_tokenization_spaces=False)
            with open(os.path.join(directory, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
                json.dump(tc, f, indent=2, ensure_ascii=False)
            gc = {}
            if self.eos_ids:
                gc["eos_token_id"] = (
                    self.eos_ids[0] if len(self.eos_ids) == 1 else list(self.eos_ids)
                )
            if self.bos_id is not None:
                gc["bos_token_id"] = self.bos_id
            with open(os.path.join(directory, GENERATION_CONFIG_FILE), "w") as f:
                json.dump(gc, f, indent=2)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        return load_tokenizer(path)

    @classmethod
    def from_json(
        cls,
        text: str,
        path: str = "<tokenizer>",
        eos_ids: Iterable[int] = (),
        bos_id: int | None = None,
        add_bos: bool | None = None,
    ) -> Tokenizer:
        """From the text of a tokenizer.json (either format)."""
        tk = _parse_tokenizer_json(text, path)
        if isinstance(tk, CharTokenizer):  # the legacy format
            tk = tk.tk
        if add_bos is None:
            add_bos = _post_processor_adds(tk, bos_id)
        return Tokenizer(tk, eos_ids=eos_ids, bos_id=bos_id, add_bos=add_bos, path=path)


class CharTokenizer(Tokenizer):
    """One token per character; ``vocab[i]`` is the character of token ``i``. Held as a
    Hugging Face ``WordLevel`` tokenizer (see the module doc)."""

    def __init__(self, vocab: Sequence[str], path: str | None = None):
        vocab = list(vocab)
        if not vocab:
            raise ValueError("vocab: expected at least one character, got an empty list")
        for i, ch in enumerate(vocab):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"vocab: entry {i} must be a single character, got {ch!r}")
        if len(set(vocab)) != len(vocab):
            dup = sorted({c for c in vocab if vocab.count(c) > 1})
            raise ValueError(f"vocab: duplicate characters {dup!r}")
        t = _tk()
        tk = t.Tokenizer(
            t.models.WordLevel({ch: i for i, ch in enumerate(vocab)}, unk_token="<unk>")
        )
        tk.pre_tokenizer = t.pre_tokenizers.Split(t.Regex(_ANY_CHAR), behavior="isolated")
        tk.decoder = t.decoders.Fuse()
        super().__init__(tk, path=path)
        self._vocab = vocab

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of a corpus: its sorted set of characters."""
        if not isinstance(text, str) or not text:
            raise ValueError("text: expected a non-empty str")
        return cls(sorted(set(text)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        return load_tokenizer(path)


# ----------------------------------------------------------------------------- streaming
class StreamDecoder:
    """Text of a token stream, one token at a time (see the module doc)."""

    def __init__(self, tok: Tokenizer, skip_special_tokens: bool = True):
        self.tok = tok
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # first id of the decode window (context for the next piece)
        self._read = 0  # ids before this one have been printed

    def _decode(self, ids) -> str:
        return self.tok.tk.decode(ids, skip_special_tokens=self.skip) if ids else ""

    def step(self, token_id: int) -> str:
        """The text that ``token_id`` completes ("" while a character is incomplete)."""
        self.ids.append(int(token_id))
        prev = self._decode(self.ids[self._prefix : self._read])
        cur = self._decode(self.ids[self._prefix :])
        if len(cur) > len(prev) and not cur.endswith(_REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return cur[len(prev) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete sequence prints as U+FFFD)."""
        prev = self._decode(self.ids[self._prefix : self._read])
        cur = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return cur[len(prev) :] if len(cur) > len(prev) else ""


# ----------------------------------------------------------------------------- loading
def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _first_dropped(text: str, offsets) -> int | None:
    """First non-space character that no token covers (dropped by the model), or None."""
    covered = bytearray(len(text))
    for s, e in offsets:
        covered[s:e] = b"\x01" * (e - s)
    for i, c in enumerate(covered):
        if not c and not text[i].isspace() and unicodedata.category(text[i])[0] != "C":
            return i
    return None


def _parse_tokenizer_json(text: str, path: str):
    """A tokenizers.Tokenizer (or a CharTokenizer for the legacy format) from JSON text."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed tokenizer JSON ({e})") from None
    if isinstance(data, dict) and data.get("type") == "char" and "model" not in data:
        vocab = data.get("vocab")
        if not isinstance(vocab, list):
            raise ValueError(f'{path}: "vocab" must be a list of characters')
        try:
            return CharTokenizer(vocab, path=path)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(
            f"{path}: neither a Hugging Face tokenizer.json (an object with a "
            f'"model") nor the package\'s {{"type": "char", "vocab": [...]}} '
            f"format"
        )
    try:
        return _tk().Tokenizer.from_str(text)
    except Exception as e:
        raise ValueError(
            f"{path}: not a valid Hugging Face tokenizer.json ({_first_line(e)})"
        ) from None


def _read_optional_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable or malformed JSON ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _ids_of(value, path: str, key: str) -> list[int]:
    if value is None:
        return []
    vals = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"{path}: {key} must be a token id or a list of ids, got {value!r}")
    return list(vals)


def _token_name(value, path: str, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise ValueError(f'{path}: {key} must be a string or {{"content": ...}}, got {value!r}')
    return value


def _post_processor_adds(tk, bos_id: int | None) -> bool:
    """Whether tokenizer.json's post-processor prepends ``bos_id`` to a single sequence."""
    if bos_id is None:
        return False
    try:
        with_sp = tk.encode("a", add_special_tokens=True).ids
        plain = tk.encode("a", add_special_tokens=False).ids
    except Exception:
        return False
    return len(with_sp) > len(plain) and with_sp[0] == bos_id


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a checkpoint directory (or of a tokenizer.json path), with its
    special tokens from the config files next to it (see the module doc)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        directory, file = path, os.path.join(path, TOKENIZER_FILE)
    elif os.path.isfile(path) or path.endswith(".json"):
        directory, file = os.path.dirname(path) or ".", path
    else:
        directory, file = path, os.path.join(path, TOKENIZER_FILE)
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"{file}: tokenizer file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: unreadable tokenizer file ({_first_line(e)})") from None
    tk = _parse_tokenizer_json(text, file)
    base = tk.tk if isinstance(tk, CharTokenizer) else tk

    eos: list[int] = []
    bos_id = None
    add_bos = None
    for name in (GENERATION_CONFIG_FILE, MODEL_CONFIG_FILE):
        p = os.path.join(directory, name)
        d = _read_optional_json(p)
        eos += _ids_of(d.get("eos_token_id"), p, "eos_token_id")
        b = _ids_of(d.get("bos_token_id"), p, "bos_token_id")
        if b and bos_id is None:
            bos_id = b[0]
    p = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    d = _read_optional_json(p)
    for key in ("eos_token", "bos_token"):
        name = _token_name(d.get(key), p, key)
        if name is None:
            continue
        tid = base.token_to_id(name)
        if tid is None:
            raise ValueError(f"{p}: {key} {name!r} is not in the vocabulary of {file}")
        if key == "eos_token":
            eos.append(tid)
        elif bos_id is None:
            bos_id = tid
    if isinstance(d.get("add_bos_token"), bool):
        add_bos = d["add_bos_token"]
    if add_bos is None:
        add_bos = _post_processor_adds(base, bos_id)
    if isinstance(tk, CharTokenizer) and not eos and bos_id is None:
        return tk
    try:
        return Tokenizer(base, eos_ids=eos, bos_id=bos_id, add_bos=add_bos, path=file)
    except ValueError as e:
        # an id from generation_config.json / config.json outside the vocabulary
        raise ValueError(f"{e} (special token ids from {directory})") from None


# ----------------------------------------------------------------------------- BPE
def train_bpe(
    texts: Iterable[str] | str, vocab_size: int, min_frequency: int = 2, eos: str = BPE_EOS
) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 / LLaMA-3 style) trained by ``tokenizers`` on
    ``texts``; ``eos`` is its one special token and its EOS."""
    t = _tk()
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(vocab_size, int) or vocab_size < 258:
        raise ValueError(
            f"vocab_size: expected an integer >= 258 (256 bytes, EOS and a "
            f"merge), got {vocab_size!r}"
        )
    tk = t.Tokenizer(t.models.BPE())
    tk.pre_tokenizer = t.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = t.decoders.ByteLevel()
    trainer = t.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos],
        show_progress=False,
        initial_alphabet=t.pre_tokenizers.ByteLevel.alphabet(),
    )

    def chunks():
        for text in texts:
            lines = text.splitlines(keepends=True)
            for i in range(0, len(lines), 1000):
                yield "".join(lines[i : i + 1000])

    tk.train_from_iterator(chunks(), trainer)
    return Tokenizer(tk, eos_ids=[tk.token_to_id(eos)])


def main(argv=None) -> int:
    import argparse
    import sys

    from host.data import DEFAULT_CORPUS, read_corpus, split

    p = argparse.ArgumentParser(
        prog="python -m host.tokenizer",
        description="Train a byte-level BPE tokenizer on the training split of the corpus.",
    )
    p.add_argument("--vocab-size", type=int, required=True, help="tokens, EOS included")
    p.add_argument("--out", required=True, help="directory for tokenizer.json")
    p.add_argument("--corpus", default=DEFAULT_CORPUS)
    a = p.parse_args(argv)
    try:
        train_text, _ = split(read_corpus(a.corpus))
        tok = train_bpe(train_text, a.vocab_size)
    except (OSError, ValueError) as e:
        print(f"error: {_first_line(e)}", file=sys.stderr)
        return 2
    path = tok.save(a.out)
    print(
        f"{path}: byte-level BPE, {tok.vocab_size} tokens (EOS {tok.eos_tokens[0]!r}), "
        f"trained on the first {len(train_text)} characters of {a.corpus}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
