"""What ``-m`` names: a Hugging Face checkpoint directory or a GGUF file.

``open_model(path)`` reads the configuration and the tokenizer (cheap: a bad prompt is
reported before any weight loads) and checks that the tokenizer's vocabulary is the
model's; ``.load()`` then reads the weights into a ``golden.modelspec.Model``.

- a directory: ``config.json`` + safetensors (``host.checkpoint``) and ``tokenizer.json``
  with its config files (``host.tokenizer``);
- a GGUF file (``*.gguf`` or a file starting with the GGUF magic): ``host.gguf``, the
  tokenizer the file carries.

Every problem is a ValueError naming the file and what is wrong.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from golden.modelspec import Model, ModelConfig


@dataclass
class ModelSource:
    path: str
    kind: str                     # "hf" (checkpoint directory) or "gguf"
    config: ModelConfig
    tokenizer: object             # host.tokenizer.Tokenizer
    _load: Callable[[], Model] = field(repr=False)

    def load(self) -> Model:
        return self._load()


def open_model(path: str | os.PathLike) -> ModelSource:
    from host import gguf
    from host.tokenizer import load_tokenizer

    path = os.fspath(path)
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
        raise ValueError(f"{tok.path}: the tokenizer has {tok.vocab_size} tokens, but the "
                         f"model has {cfg.vocab_size} ({where})")
    return ModelSource(path=path, kind=kind, config=cfg, tokenizer=tok, _load=load)
