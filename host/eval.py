"""Held-out evaluation of a model in both golden modes: ``python -m host.eval``.

    python -m host.eval [-m models/default | -m model.gguf] [--chars N] [--corpus PATH]
                        [--batch B (1)] [--modes reference,integer]
                        [--design-point NAME (kv260)]

Data: the characters of the corpus (default ``host.data.DEFAULT_CORPUS``,
``../shared/data/tinyshakespeare.txt`` relative to the repository); the held-out split is
the last 10 % (``host.data.split``, the one split ``host.train`` uses too); ``--chars N``
keeps the first N characters of the held-out split (default: all of it). The held-out
text is tokenized by the model's own tokenizer (``host.tokenizer``: the character
tokenizer, BPE, ...; no BOS).

Windowing: non-overlapping windows of the model's context C (``max_position_embeddings``)
over the held-out tokens: window w feeds tokens [wC, wC + C), each starting from an empty
KV cache, and is scored on every position, predicting tokens [wC + 1, wC + C + 1). The
last window is shorter when the split does not divide evenly, so every held-out token but
the first is predicted exactly once. Positions early in a window see little context (as
in training, which used the same windows).

Per character, so that models with different vocabularies compare: the total loss in
nats over the predicted tokens divided by the number of characters those tokens cover
(the held-out text less the first token's characters). For the character tokenizer that
is the mean loss per token.

``--design-point``: the integer mode computes that design point's datapath
(``golden.config.DESIGN_POINTS``; e.g. ``kv260-kv4``, the INT4 KV cache); the
reference mode is float and ignores it.

Printed: loss in nats/char, bits/char (nats / ln 2), perplexity per character
(exp(nats/char)) and nats per token, per mode; the integer - reference difference, and
the wall time per mode; a progress bar goes to stderr. Exit status 2 with one
``error: ...`` line on bad arguments or an unreadable model/corpus.
"""

from __future__ import annotations

import math
import os
import sys
import time
from functools import partial

# The golden forward's matmuls are small: BLAS worker threads cost more than they give
# (8x slower measured on the shared 2-core machine). Set before numpy loads; the
# environment can still override it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from golden.config import DEFAULT_DESIGN_POINT, DESIGN_POINTS, design_point  # noqa: E402
from golden.model import MODES, GoldenModel  # noqa: E402
from host.data import DEFAULT_CORPUS, DEFAULT_MODEL, HELDOUT_FRACTION, heldout_text  # noqa: E402
from host.usage import Parser, UsageError, flag_errors, run_main  # noqa: E402


def windows(ids: np.ndarray, context: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping (inputs, targets) windows of length <= context (see module doc)."""
    out = []
    for s in range(0, len(ids) - 1, context):
        x = ids[s : s + context]
        y = ids[s + 1 : s + context + 1]
        out.append((x[: len(y)], y))
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def target_log_probs(gm, wins, batch: int = 1, progress=None):
    """Per batch of up to ``batch`` consecutive windows of equal length, run as one
    forward: yields (logits [b, T, vocab], log p of each target [b, T] in float64)."""
    i = 0
    while i < len(wins):
        n = len(wins[i][0])
        j = i
        while j < len(wins) and j - i < batch and len(wins[j][0]) == n:
            j += 1
        x = np.stack([w[0] for w in wins[i:j]])
        y = np.stack([w[1] for w in wins[i:j]])
        logits = gm.forward(x)
        yield logits, np.take_along_axis(log_softmax(logits), y[..., None], axis=-1)[..., 0]
        if progress is not None:
            progress.update(j - i)
        i = j


def evaluate(gm, wins, batch: int = 1, progress=None) -> tuple[float, int]:
    """(mean nats per predicted token, number of predictions) over the windows;
    windows of equal length are run as one batch of up to ``batch``."""
    total, count = 0.0, 0
    for _, lp in target_log_probs(gm, wins, batch, progress):
        total -= float(lp.sum())
        count += lp.size
    return total / count, count


def run(argv=None) -> int:
    p = Parser(prog="python -m host.eval", description="Held-out loss of both golden modes.")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help="checkpoint directory or GGUF file")
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="corpus text file")
    p.add_argument(
        "--chars",
        type=int,
        default=None,
        help="evaluate the first N held-out characters (default: all)",
    )
    # one window per forward is fastest here: larger int64 attention tensors fall out of cache
    p.add_argument("--batch", type=int, default=1, help="windows per forward")
    p.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    p.add_argument(
        "--design-point",
        choices=sorted(DESIGN_POINTS),
        default=DEFAULT_DESIGN_POINT,
        help="the datapath the integer mode computes (golden.config.DESIGN_POINTS; e.g. "
        "kv260-kv4: the INT4 KV cache)",
    )
    a = p.parse_args(argv)
    if a.chars is not None and a.chars < 2:
        raise UsageError(f"--chars: expected >= 2, got {a.chars}")
    if a.batch < 1:
        raise UsageError(f"--batch: expected >= 1, got {a.batch}")
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UsageError(f"--modes: expected a subset of {','.join(MODES)}, got {a.modes!r}")

    from host.modelfile import open_model

    with flag_errors("-m/--model"):  # config and tokenizer (vocabulary checked) first
        source = open_model(a.model)
    tok = source.tokenizer
    try:  # the corpus before the weights: bad paths fail fast
        text = heldout_text(a.corpus, a.chars)
        ids, offsets = tok.encode_with_offsets(text)
        ids = np.asarray(ids, dtype=np.int64)
    except (ValueError, OSError) as e:
        raise UsageError(f"--corpus: {e}") from None
    if len(ids) < 2:
        raise UsageError("--chars: the held-out text has fewer than 2 tokens")
    chars = len(text) - offsets[0][1]  # characters covered by the predicted tokens
    with flag_errors("-m/--model"):
        model = source.load()
    ctx = model.config.max_position_embeddings
    wins = windows(ids, ctx)

    from tqdm import tqdm

    print(f"model: {a.model}, datapath of design point {a.design_point}")
    npred = sum(len(w[1]) for w in wins)
    print(
        f"held-out: {len(text)} chars, {len(ids)} tokens (last {HELDOUT_FRACTION:.0%} of "
        f"{a.corpus}{f', first {a.chars}' if a.chars else ''}), {len(wins)} "
        f"non-overlapping windows of <= {ctx} tokens, loss on every position ({npred} "
        f"predictions of {chars} characters, {chars / npred:.3f} chars/token)"
    )
    results = {}
    for mode in modes:
        gm = GoldenModel(model, mode=mode, cfg=design_point(a.design_point).datapath)
        t0 = time.perf_counter()
        with tqdm(
            total=len(wins),
            desc=f"{mode:>9}",
            unit="win",
            file=sys.stderr,
            leave=False,
            disable=None,
        ) as bar:
            per_token, count = evaluate(gm, wins, a.batch, bar)
        results[mode] = (per_token * count / chars, per_token, time.perf_counter() - t0)
    print(
        f"{'mode':<11} {'nats/char':>10} {'bits/char':>10} {'perplexity':>11} "
        f"{'nats/token':>11} {'time s':>8}"
    )
    for mode, (nats, per_token, secs) in results.items():
        print(
            f"{mode:<11} {nats:>10.4f} {nats / math.log(2):>10.4f} {math.exp(nats):>11.4f} "
            f"{per_token:>11.4f} {secs:>8.1f}"
        )
    if len(results) == 2:
        dn = results["integer"][0] - results["reference"][0]
        dp = math.exp(results["integer"][0]) - math.exp(results["reference"][0])
        print(
            f"{'difference':<11} {dn:>+10.4f} {dn / math.log(2):>+10.4f} {dp:>+11.4f}   "
            f"(integer - reference)"
        )
    return 0


# the entry point: run under host.usage's error contract (exit status 2 / 130 / 0)
main = partial(run_main, run)


if __name__ == "__main__":
    sys.exit(main())
