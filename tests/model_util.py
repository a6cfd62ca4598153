"""What the model-level tests share: small model shapes as ModelConfig keyword arguments, the
settings of a training run small enough for a test, and a small random model with a
character tokenizer saved in the shipped checkpoint layout."""

import json
from pathlib import Path

import pytest

from golden.model import random_model
from golden.modelspec import ModelConfig

# the characters of the CLI/server tests' character tokenizer
VOCAB_TEXT = "\n !',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def shape(hidden: int, inter: int, layers: int, heads: int, kv_heads: int, **extra) -> dict:
    """ModelConfig (and TrainConfig, BitNetConfig) keyword arguments of a model body: hidden
    and intermediate sizes, decoder layers, attention and KV heads, and any other field."""
    return dict(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        **extra,
    )


# the body of the CLI/server/board tests' character model: GQA 2:1, two layers
TINY = shape(48, 96, 2, 4, 2)
# one layer, GQA 2:1: the smallest body the tests use
MICRO = shape(32, 64, 1, 2, 1)
# a whole small model: relu2, GQA 4:1, two layers (the device tests' model)
GQA4 = shape(64, 100, 2, 8, 2, vocab_size=67, max_position_embeddings=48)


def tiny_train(**kw) -> dict:
    """TrainConfig keyword arguments of a training run of seconds (context 32, batch 8, no
    checkpoint while it runs, one thread); ``kw`` adds the body, steps, evals and corpus."""
    return dict(context=32, batch_size=8, lr=3e-3, min_lr=3e-4, ckpt_minutes=100.0, threads=1, **kw)


def save_char_model(d: Path, text: str, ctx: int, seed: int, body: dict = TINY):
    """A random model of ``body`` with context ``ctx`` and a character tokenizer of ``text``,
    saved in the offline checkpoint layout at ``d``: (tokenizer, model)."""
    from host import checkpoint
    from host.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text(text)
    model = random_model(
        ModelConfig(vocab_size=tok.vocab_size, max_position_embeddings=ctx, **body), seed=seed
    )
    checkpoint.save(model, d, fmt="offline", tokenizer=tok)
    return tok, model


def char_model_fixture(ctx: int, seed: int, tag: str, name: str):
    """A module-scoped pytest fixture: the path of a random ``TINY`` model of context
    ``ctx`` with the character tokenizer of ``VOCAB_TEXT``, saved as ``<tmp tag>/<name>``
    (``name`` is the model's id where it is served)."""

    @pytest.fixture(scope="module")
    def tiny_model(tmp_path_factory) -> Path:
        d = tmp_path_factory.mktemp(tag) / name
        save_char_model(d, VOCAB_TEXT, ctx, seed=seed)
        return d

    return tiny_model


def set_online_quantization(d: Path) -> None:
    """Mark the transformers checkpoint at ``d`` as holding latent weights that transformers
    ternarizes as it loads them (AutoBitLinear, "online")."""
    conf = json.loads((d / "config.json").read_text())
    conf["quantization_config"] = {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "online",
    }
    (d / "config.json").write_text(json.dumps(conf))


def checkpoint_shape(dims) -> dict:
    """ModelConfig (and BitNetConfig) keyword arguments of a checkpoint test's ``dims``
    (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings); context 64."""
    *body, vocab, tie = dims
    return shape(*body, vocab_size=vocab, max_position_embeddings=64, tie_word_embeddings=tie)


def hf_random(dims, seed: int):
    """A random transformers BitNetForCausalLM of a checkpoint test's ``dims`` (see
    ``checkpoint_shape``) with latent weights, its norms away from 1 (so that a swapped
    tensor would show)."""
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM

    cfg = BitNetConfig(
        **checkpoint_shape(dims), rope_theta=10000.0, bos_token_id=None, eos_token_id=None
    )
    torch.manual_seed(seed)
    hf = BitNetForCausalLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return hf
