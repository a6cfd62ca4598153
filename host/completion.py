"""One completion as ``python -m host`` and the token server run it, and its summary.

``complete(gm, tok, prompt_ids, n_predict, sampler, ...)`` is ``host.generate.generate``
with the tokenizer's end-of-sequence policy -- stop at ``tok.eos_ids``, or with
``ignore_eos`` never sample them (llama.cpp's ``--ignore-eos``) -- and its text stream:
``on_text`` gets each piece of text from ``tok.stream()`` (``host.tokenizer.StreamDecoder``:
a character split over several tokens comes once it is whole) and, at the end, whatever
it still held. It counts the device's accelerator cycles when the device counts them
(``counters()["cycles"]``): all of the run's, and those up to the first sampled token
(the prefill).

``Completion.timings(...)`` gives a completion's figures as a JSON-able dict -- the token
server's ``timings`` object -- and ``summary_lines(timings)`` the summary lines the CLI
prints on stderr from such a dict. The local CLI (from its own completion) and the remote
CLI (from the server's ``timings``) both print through ``summary_lines``, so they print
the same lines for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from host.generate import GenerationStats, Sampler, generate


@dataclass
class Completion:
    ids: list[int]  # sampled ids (the EOS that ended it included)
    stats: GenerationStats
    eos_text: str | None  # the EOS token's string when one ended generation
    cycles: int | None  # accelerator cycles of the run (None: not counted)
    prefill_cycles: int | None  # ... up to the first sampled token (None: none sampled)

    def accelerator(self, dp) -> dict | None:
        """The accelerator's figures at design point ``dp`` (its clock and DRAM), or None
        (no cycles counted)."""
        if self.cycles is None:
            return None
        per_tok = None
        n = self.stats.generated_tokens
        if n > 1 and self.prefill_cycles is not None and self.cycles > self.prefill_cycles:
            per_tok = (self.cycles - self.prefill_cycles) / (n - 1)
        return {
            "cycles": self.cycles,
            "prefill_cycles": self.prefill_cycles,
            "cycles_per_token": per_tok,
            "design_point": dp.name,
            "clock_mhz": float(dp.clock_mhz),
            "clock_note": dp.clock_note(),
            "bandwidth_gbs": float(dp.dram_gbs),
            "dram_latency": dp.dram_latency,
            "modeled_tokens_per_s": dp.clock_mhz * 1e6 / per_tok if per_tok else None,
        }

    def timings(self, *, backend: str, mode: str, seed: int, dp) -> dict:
        """The summary figures (non-finite numbers as None, so the dict is valid JSON)."""
        st = self.stats
        return {
            "prompt_tokens": st.prompt_tokens,
            "generated_tokens": st.generated_tokens,
            "ttft_s": finite_or_none(st.ttft_s) if st.generated_tokens else None,
            "prefill_tokens_per_s": finite_or_none(st.prefill_tokens_per_s),
            "decode_tokens_per_s": finite_or_none(st.decode_tokens_per_s),
            "window_slides": st.window_slides,
            "backend": backend,
            "mode": mode,
            "seed": seed,
            "eos_token": st.eos_token,
            "eos_token_text": self.eos_text,
            "accelerator": self.accelerator(dp),
        }


def finite_or_none(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _cycles(gm) -> int | None:
    counters = getattr(gm, "counters", None)  # a GoldenModel (reference mode) has none
    if counters is None:
        return None
    c = counters().get("cycles")
    return None if c is None else int(c)


def complete(
    gm,
    tok,
    prompt_ids: Sequence[int],
    n_predict: int,
    sampler: Sampler,
    *,
    ignore_eos: bool = False,
    on_text: Callable[[str], None] | None = None,
    on_token: Callable[[int], None] | None = None,
) -> Completion:
    """Generate (see the module doc). ``on_token(id)`` is called for each token before its
    text (an exception it raises stops the generation and propagates)."""
    c0 = _cycles(gm)
    first: list = []  # accelerator cycles when the first token came out
    text = tok.stream()

    def step(t: int) -> None:
        if not first:
            first.append(_cycles(gm))
        if on_token is not None:
            on_token(t)
        piece = text.step(t)
        if piece and on_text is not None:
            on_text(piece)

    eos = tuple(tok.eos_ids)
    ids, st = generate(
        gm,
        prompt_ids,
        n_predict,
        sampler,
        on_token=step,
        eos_ids=() if ignore_eos else eos,
        ban_ids=eos if ignore_eos else (),
    )
    c1 = _cycles(gm)
    if not first and st.generated_tokens:  # the first token was EOS: all was prefill
        first.append(c1)
    rest = text.flush()
    if rest and on_text is not None:
        on_text(rest)
    cycles = prefill = None
    if c0 is not None and c1 is not None:
        cycles = c1 - c0
        if first and first[0] is not None:
            prefill = first[0] - c0
    eos_text = None if st.eos_token is None else tok.tk.id_to_token(st.eos_token)
    return Completion(ids=ids, stats=st, eos_text=eos_text, cycles=cycles, prefill_cycles=prefill)


def _f(x) -> float:
    return float("nan") if x is None else float(x)


def summary_lines(t: dict) -> list[str]:
    """The CLI's summary lines from a ``timings`` dict (``Completion.timings``, or a token
    server's): the generation figures, the end-of-sequence stop, the accelerator's cycles."""
    gen = t["generated_tokens"]
    ttft = f"{_f(t['ttft_s']) * 1e3:.1f} ms" if gen else "n/a"
    slides = t.get("window_slides") or 0
    line = (
        f"prompt tokens: {t['prompt_tokens']}, generated tokens: {gen}, "
        f"time to first token: {ttft}, prefill: {_f(t['prefill_tokens_per_s']):.1f} "
        f"tokens/s, decode: {_f(t['decode_tokens_per_s']):.1f} tokens/s "
        f"(backend {t['backend']}, mode {t['mode']}, seed {t['seed']}"
        f"{f', window slides {slides}' if slides else ''})"
    )
    if t.get("eos_token") is not None:
        line += f", stopped at end of sequence (token {t['eos_token']} {t.get('eos_token_text')!r})"
    lines = [line]
    if t.get("act_adc"):
        lines.append(f"ACT activation: {t['act_adc']}")
    if t.get("sparse"):
        lines.append(f"activation sparsity: {t['sparse']}")
    acc = t.get("accelerator")
    if acc and acc.get("cycles"):
        msg = f"accelerator: {acc['cycles']} cycles"
        if acc.get("prefill_cycles") is not None:
            msg += f" (prefill {acc['prefill_cycles']})"
            if acc.get("cycles_per_token"):
                msg += (
                    f", {acc['cycles_per_token']:.0f} cycles per decoded token -> modeled "
                    f"{acc['modeled_tokens_per_s']:.1f} tokens/s at {acc['clock_note']}, "
                    f"{acc['bandwidth_gbs']:g} GB/s, DRAM latency {acc['dram_latency']} cycles"
                )
        lines.append(msg)
    return lines
