"""Sampling and the generation loop over a golden forward (``golden.model.GoldenModel``).

Sampling (``Sampler``), on float logits of one position:

- ``temp == 0``: greedy (argmax; ties go to the lowest token id).
- otherwise ``softmax(logits / temp)`` in float64, restricted by ``top_k`` (keep the k
  largest logits, ties at the k-th value kept; 0 = off) and then ``top_p`` (keep the smallest
  set of most probable tokens whose probability sums to >= top_p; 1.0 = off), renormalized, and
  sampled by inverse CDF with one uniform draw from ``numpy.random.default_rng(seed)`` per
  token. Same seed, same logits => same tokens.

End of sequence (``generate``): when it samples one of ``eos_ids`` it stops (the EOS token
is counted as generated but not passed to ``on_token``); ``ban_ids`` get logit -inf before
sampling, so they are never drawn (``--ignore-eos`` bans the EOS ids, as llama.cpp).

Context policy (``generate``): the KV cache holds ``max_position_embeddings`` positions.
A prompt longer than that is an error. When generation fills the window, the window
*slides*: the most recent ``context // 2`` tokens (prompt and generated alike) are
re-prefilled into an empty cache at positions 0.., and decoding continues -- so RoPE
positions never exceed the context the model was trained on, at the cost of one
re-prefill every context/2 tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sampler:
    temp: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temp) and self.temp >= 0):
            raise ValueError(f"temp: expected a finite value >= 0, got {self.temp}")
        if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k: expected an integer >= 0, got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p: expected a value in (0, 1], got {self.top_p}")
        self.rng = np.random.default_rng(self.seed)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The distribution sampled from (float64, sums to 1); temp > 0 only."""
        z = np.asarray(logits, dtype=np.float64) / self.temp
        if self.top_k and self.top_k < z.size:
            kth = np.sort(z)[-self.top_k]
            z = np.where(z >= kth, z, -np.inf)
        p = np.exp(z - np.max(z))
        p /= p.sum()
        if self.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            csum = np.cumsum(p[order])
            keep = int(np.searchsorted(csum, self.top_p)) + 1  # smallest prefix >= top_p
            mask = np.zeros(p.size, dtype=bool)
            mask[order[:keep]] = True
            p = np.where(mask, p, 0.0)
            p /= p.sum()
        return p

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits)
        if self.temp == 0:
            return int(np.argmax(logits))
        cdf = np.cumsum(self.probs(logits))
        u = self.rng.random() * cdf[-1]
        return int(min(np.searchsorted(cdf, u, side="right"), logits.size - 1))


def encode_prompt(tok, text: str, context: int) -> list[int]:
    """Token ids of a prompt for ``generate`` (``tok``: a ``host.tokenizer.Tokenizer``; BOS
    prepended when it says so). ValueError with a one-line reason, without a prefix (the
    CLI puts ``-p/--prompt:`` before it, the token server ``prompt:``): a character outside
    the vocabulary, no token at all (an empty prompt and no BOS), more tokens than
    ``context``."""
    try:
        ids = tok.encode(text)
    except ValueError as e:
        raise ValueError(str(e).removeprefix("text: ")) from None
    if not ids:
        raise ValueError("empty (the model has no BOS token; give at least one character)")
    if len(ids) > context:
        raise ValueError(f"{len(ids)} tokens exceed the context window ({context})")
    return ids


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float = 0.0  # start of prefill -> first generated token sampled
    prefill_s: float = 0.0
    decode_s: float = 0.0  # after the first token: the remaining tokens
    window_slides: int = 0
    eos_token: int | None = None  # the EOS id that ended generation, if one did

    @property
    def decode_tokens_per_s(self) -> float:
        n = self.generated_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else float("nan")

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")


def generate(
    gm,
    prompt_ids: Sequence[int],
    n_predict: int,
    sampler: Sampler,
    on_token: Callable[[int], None] | None = None,
    eos_ids: Sequence[int] = (),
    ban_ids: Sequence[int] = (),
) -> tuple[list[int], GenerationStats]:
    """Prefill ``prompt_ids``, then sample up to ``n_predict`` tokens one by one (decode with
    the KV cache), calling ``on_token(id)`` as each is produced; stop at one of ``eos_ids``,
    never sample ``ban_ids`` (see the module doc). Returns (ids, stats)."""
    ctx = gm.config.max_position_embeddings
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("prompt_ids: empty prompt (the model needs at least one token)")
    if len(prompt) > ctx:
        raise ValueError(f"prompt_ids: {len(prompt)} tokens exceed the context window ({ctx})")
    if not isinstance(n_predict, (int, np.integer)) or n_predict < 0:
        raise ValueError(f"n_predict: expected an integer >= 0, got {n_predict!r}")
    stats = GenerationStats(prompt_tokens=len(prompt))
    eos = {int(t) for t in eos_ids}
    ban = np.array(sorted({int(t) for t in ban_ids}), dtype=np.int64)
    history = list(prompt)
    out: list[int] = []
    cache = gm.new_cache()
    t0 = time.perf_counter()
    logits = gm.forward(prompt, cache)[-1]
    stats.prefill_s = time.perf_counter() - t0
    t_first = None
    for i in range(n_predict):
        if ban.size:
            logits = np.array(logits, dtype=np.float64)
            logits[ban] = -np.inf
        tok = sampler(logits)
        out.append(tok)
        history.append(tok)
        if t_first is None:
            t_first = time.perf_counter()
            stats.ttft_s = t_first - t0
        if tok in eos:
            stats.eos_token = tok
            break
        if on_token is not None:
            on_token(tok)
        if i == n_predict - 1:
            break
        if cache.length >= ctx:  # slide the window (see module doc)
            keep = history[-(ctx // 2) :]
            cache = gm.new_cache()
            logits = gm.forward(keep, cache)[-1]
            stats.window_slides += 1
        else:
            logits = gm.forward([tok], cache)[-1]
    stats.generated_tokens = len(out)
    if t_first is not None:
        stats.decode_s = time.perf_counter() - t_first
    return out, stats
