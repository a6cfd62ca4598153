"""What ``-m`` names: a Hugging Face checkpoint directory or a GGUF file.

``open_model(path)`` reads the configuration and the tokenizer (cheap: a bad prompt is
reported before any weight loads) and checks that the tokenizer's vocabulary is the
model's; ``.load()`` then reads the weights into a ``golden.modelspec.Model``. It is the
one way ``python -m host``, ``python -m host serve``, ``host.eval`` and ``host.convert``
open a model, so they accept the same paths and report the same errors.

- a directory: ``config.json`` + safetensors (``host.checkpoint``) and ``tokenizer.json``
  with its config files (``host.tokenizer``);
- a GGUF file (``*.gguf`` or a file starting with the GGUF magic): ``host.gguf``, the
  tokenizer the file carries.

``ModelSource.name`` is the model's id (the token server's ``/v1/models``): the
directory's name, or the GGUF file's name without ``.gguf``.

Every problem -- unreadable files included -- is a ValueError naming the file and what is
wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from golden.modelspec import Model, ModelConfig


@dataclass
class ModelSource:
    path: str
    kind: str  # "hf" (checkpoint directory) or "gguf"
    config: ModelConfig
    tokenizer: object  # host.tokenizer.Tokenizer
    _load: Callable[[], Model] = field(repr=False)

    @property
    def name(self) -> str:
        base = os.path.basename(os.path.normpath(os.path.abspath(self.path)))
        if self.kind == "gguf" and base.lower().endswith(".gguf"):
            base = base[: -len(".gguf")] or base
        return base

    def load(self) -> Model:
        try:
            return self._load()
        except OSError as e:
            raise ValueError(
                f"{getattr(e, 'filename', None) or self.path}: cannot read ({e.strerror or e})"
            ) from None


def open_model(path: str | os.PathLike) -> ModelSource:
    """The model at ``path`` (see the module doc); ValueError with a one-line reason."""
    path = os.fspath(path)
    try:
        return _open(path)
    except OSError as e:  # e.g. a directory or file without read permission
        raise ValueError(
            f"{getattr(e, 'filename', None) or path}: cannot read ({e.strerror or e})"
        ) from None


def _open(path: str) -> ModelSource:
    from host import gguf
    from host.tokenizer import load_tokenizer

    if gguf.is_gguf(path):
        f = gguf.GGUFFile(path)
        tok = f.tokenizer()
        kind, cfg, load, where = "gguf", f.config, f.load, f"{path}: metadata"
    elif os.path.isdir(path):
        from host import checkpoint

        cfg_path = os.path.join(path, checkpoint.CONFIG_FILE)
        cfg, _ = checkpoint.parse_config(checkpoint._read_json(cfg_path), cfg_path)
        tok = load_tokenizer(path)
        kind, where = "hf", cfg_path

        def load():
            return checkpoint.load(path)
    elif os.path.exists(path):
        raise ValueError(f"{path}: neither a checkpoint directory nor a GGUF file")
    else:
        raise ValueError(f"{path}: no such model directory or GGUF file")
    if tok.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"{tok.path}: the tokenizer has {tok.vocab_size} tokens, but the "
            f"model has {cfg.vocab_size} ({where})"
        )
    return ModelSource(path=path, kind=kind, config=cfg, tokenizer=tok, _load=load)
