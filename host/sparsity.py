"""Thresholded activation sparsity (TEAL, WINA, CATS; ``golden.sparsity``): calibration
and a held-out sweep, ``python -m host.sparsity``.

    python -m host.sparsity [-m models/default] [--calib-windows 4] [--windows 8]
                            [--levels 0,10,20,30,40,50,60,70] [--methods teal,wina,cats]

Calibration: a dense integer forward (``golden.model.GoldenModel``) over windows of the
*training* split (``host.data.split``: the first ``--calib-windows`` windows of the
model's context from its start), disjoint from the held-out split; per (layer, input)
the histogram of each method's scores, and per level the threshold that removes that
fraction of the live inputs (``golden.sparsity.threshold_for_level``).

Thresholded inputs: TEAL and WINA threshold every projection's input except a ReLU^2
FFN's up_proj (its reads already follow the gate mask: the runtime's masked TLMM skips
the Q-row blocks whose gates are all <= 0; a thresholded input would cost accuracy and
save nothing there); CATS thresholds the FFN gate (``"act"``).

Held-out: the first ``--windows`` windows of the held-out split (``host.eval``'s
windows), scored per character (total nats / characters the predicted tokens cover).

Bytes per token (the TLMM commands of the projections: activations, the up mask, weight
beats; ``golden.isa``): ``dense`` -- every projection a TLMM reading every beat (the up
mask read, not used to skip), as ``Runtime(sparse=False)``; ``exact`` -- as
``Runtime(sparse=True)``: a ReLU^2 model's down_proj as TLMM_SPARSE (beats of all-zero
groups unread) and up_proj skipping wholly masked blocks; a method -- ``exact`` with
every projection whose input it thresholds as TLMM_SPARSE on the thresholded input
(``isa.sparse_read_bytes``); ``sparse`` -- every projection as TLMM_SPARSE but a ReLU^2
up_proj (as ``exact``), for every row too. ``sparse`` separates the tile format from the
threshold: TLMM_SPARSE does not pad K to whole chunks of T groups (K = 256 is 86 groups;
a TLMM reads 4 x 28 = 112), so on the dense run it already reads fewer bytes than
``exact``. The lm_head and attention are the same in all and not counted. At level 0
(no threshold) every method is the dense forward.
"""

from __future__ import annotations

import os
import sys
import time
from functools import partial

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from golden import isa  # noqa: E402
from golden import sparsity as gsp  # noqa: E402
from golden.config import DEFAULT  # noqa: E402
from golden.model import GoldenModel  # noqa: E402
from golden.modelspec import PROJ  # noqa: E402
from host import data as hdata  # noqa: E402
from host import eval as heval  # noqa: E402
from host.usage import Parser, UsageError, flag_errors, run_main  # noqa: E402

LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
CALIB_WINDOWS = 4
HELDOUT_WINDOWS = 8
BATCH = 8
# the sweep's target: at most this much more held-out nats/char than dense ...
TARGET_LOSS_INCREASE = 0.01
# ... with at least this factor fewer bytes per token
TARGET_BYTES_FACTOR = 1.5


def thresholded_names(method: str, hidden_act: str) -> tuple[str, ...]:
    """The inputs ``method`` thresholds (module doc)."""
    if method not in gsp.METHODS:
        raise ValueError(f"method: expected one of {gsp.METHODS}, got {method!r}")
    if method == "cats":
        return (gsp.ACT,)
    return tuple(p for p in PROJ if not (hidden_act == "relu2" and p == "up_proj"))


# --------------------------------------------------------------------------- text
def text_windows(tok, text: str, context: int) -> tuple[list, int]:
    """(``host.eval`` windows of ``text``, characters their predicted tokens cover)."""
    ids, offsets = tok.encode_with_offsets(text)
    if len(ids) < 2:
        raise ValueError("text: fewer than 2 tokens")
    return heval.windows(np.asarray(ids, dtype=np.int64), context), len(text) - offsets[0][1]


def calibration_text(chars: int, corpus: str = hdata.DEFAULT_CORPUS) -> str:
    """The first ``chars`` characters of the training split (disjoint from held-out)."""
    return hdata.split(hdata.read_corpus(corpus))[0][:chars]


# --------------------------------------------------------------------------- calibration
def calibrate(model, wins, batch: int = BATCH) -> dict:
    """Score histograms of the dense forward over ``wins``: ``{method: {(layer, name):
    (values, counts)}}`` for every input a method can threshold."""
    gm0 = GoldenModel(model, "integer")
    cols = {
        (li, nm): gsp.column_weights(lc.proj[nm].codes)
        for li, lc in enumerate(gm0.compiled.layers)
        for nm in PROJ
    }
    hists = {m: {} for m in gsp.METHODS}

    def hook(li, name, arrays):
        if name == gsp.ACT:
            hists["cats"].setdefault((li, name), gsp.ScoreHistogram()).add(arrays["gate_score"])
            return
        x = arrays["x_q"]
        for m in ("teal", "wina"):
            s = gsp.input_scores(m, x, cols[(li, name)] if m == "wina" else None)
            hists[m].setdefault((li, name), gsp.ScoreHistogram()).add(s)

    gm = GoldenModel(model, "integer", sparsity_hook=hook)
    for _ in heval.target_log_probs(gm, wins, batch):
        pass
    return {m: {k: h.merged() for k, h in d.items()} for m, d in hists.items()}


def thresholds(hists: dict, method: str, level: float, hidden_act: str) -> gsp.ActSparsity:
    """The ``ActSparsity`` of ``method`` at ``level`` from ``calibrate``'s histograms."""
    names = thresholded_names(method, hidden_act)
    taus = {
        k: gsp.threshold_for_level(v, c, level)
        for k, (v, c) in hists[method].items()
        if k[1] in names
    }
    return gsp.ActSparsity(method, taus)


def calibrated_level(hists: dict, sp: gsp.ActSparsity) -> float:
    """Mean fraction of the live calibration inputs that ``sp``'s thresholds remove."""
    fr = [
        gsp.live_fraction_zeroed(*hists[sp.method][(li, nm)], tau) for li, nm, tau in sp.thresholds
    ]
    return float(np.mean(fr)) if fr else 0.0


# --------------------------------------------------------------------------- bytes
def read_plan(kind: str, hidden_act: str) -> dict:
    """proj -> "tlmm" | "skip" (masked TLMM skipping dead blocks) | "sparse" (TLMM_SPARSE)
    for ``kind`` "dense", "exact", "sparse" or a method (module doc)."""
    plan = dict.fromkeys(PROJ, "tlmm")
    if kind == "dense":
        return plan
    if hidden_act == "relu2":
        plan.update(up_proj="skip", down_proj="sparse")
    if kind == "exact":
        return plan
    names = PROJ if kind == "sparse" else thresholded_names(kind, hidden_act)
    for p in names:
        if plan.get(p) == "tlmm":
            plan[p] = "sparse"
    return plan


def projection_bytes(x_q, n: int, mask, fmt: str, cfg=None) -> int:
    """Bytes one projection's command reads for x_q [..., k] (``golden.isa``)."""
    tcfg = cfg or DEFAULT.tlmm
    k = x_q.shape[-1]
    x2 = np.asarray(x_q).reshape(-1, k)
    if fmt == "sparse":
        return isa.sparse_read_bytes(x2, n, tcfg)
    m2 = None if mask is None else np.asarray(mask).reshape(-1, n)
    if fmt not in ("tlmm", "skip"):
        raise ValueError(f"fmt: expected tlmm, skip or sparse, got {fmt!r}")
    return isa.tlmm_read_bytes(x2, n, tcfg, m2, fmt == "skip" and m2 is not None)


class ByteCounter:
    """A ``sparsity_hook`` that sums the bytes of every plan in ``plans`` ({name: plan})."""

    def __init__(self, plans: dict, cfg=None):
        self.plans, self.cfg = plans, cfg
        self.bytes = dict.fromkeys(plans, 0)
        self.tokens = 0

    def __call__(self, li, name, arrays) -> None:
        if name == gsp.ACT:
            return
        x, acc = arrays["x_q"], arrays["acc"]
        if li == 0 and name == "q_proj":
            self.tokens += int(np.prod(x.shape[:-1]))
        n = acc.shape[-1]
        for key, plan in self.plans.items():
            self.bytes[key] += projection_bytes(x, n, arrays["mask"], plan[name], self.cfg)

    def per_token(self) -> dict:
        return {k: v / self.tokens for k, v in self.bytes.items()}


# --------------------------------------------------------------------------- sweep
def heldout_run(model, wins, chars: int, sp=None, plans=None, batch: int = BATCH):
    """(nats/char, {plan: bytes/token}) of one forward over the held-out windows."""
    counter = ByteCounter(plans or {})
    gm = GoldenModel(model, "integer", act_sparsity=sp, sparsity_hook=counter)
    nats = 0.0
    for _, lp in heval.target_log_probs(gm, wins, batch):
        nats -= float(lp.sum())
    return nats / chars, counter.per_token()


def sweep(model, calib_wins, wins, chars: int, methods=gsp.METHODS, levels=LEVELS, batch=BATCH):
    """Calibrate, then score every (method, level). Returns a dict: ``dense`` (nats/char,
    bytes/token), ``exact`` and ``sparse`` (bytes/token of the dense run), ``rows``
    [{method, level, calibrated, nats_per_char, bytes_per_token, bytes_sparse}] and
    ``seconds``."""
    t0 = time.perf_counter()
    act = model.config.hidden_act
    hists = calibrate(model, calib_wins, batch)
    plans = {k: read_plan(k, act) for k in ("dense", "exact", "sparse", *methods)}
    base_nats, base_bytes = heldout_run(model, wins, chars, None, plans, batch)
    rows = []
    for m in methods:
        for lv in levels:
            sp = thresholds(hists, m, lv, act)
            if all(tau == 0 for *_, tau in sp.thresholds):  # no threshold: the dense run
                nats, b = base_nats, base_bytes
            else:
                sub = {k: plans[k] for k in (m, "sparse")}
                nats, b = heldout_run(model, wins, chars, sp, sub, batch)
            rows.append(
                dict(
                    method=m,
                    level=lv,
                    calibrated=calibrated_level(hists, sp),
                    nats_per_char=nats,
                    bytes_per_token=b[m],
                    bytes_sparse=b["sparse"],
                )
            )
    return dict(
        dense=(base_nats, base_bytes["dense"]),
        exact=base_bytes["exact"],
        sparse=base_bytes["sparse"],
        rows=rows,
        seconds=time.perf_counter() - t0,
    )


def best(result: dict, key: str = "bytes_per_token", max_increase=TARGET_LOSS_INCREASE):
    """The row with the fewest ``key`` bytes within ``max_increase`` of dense nats/char."""
    dn = result["dense"][0]
    ok = [r for r in result["rows"] if r["nats_per_char"] <= dn * (1 + max_increase)]
    return min(ok, key=lambda r: r[key]) if ok else None


def table(result: dict) -> str:
    dn, db = result["dense"]
    ex, sf = result["exact"], result["sparse"]
    lines = [
        f"dense: {dn:.4f} nats/char, {db:,.0f} bytes/token (TLMM); without thresholds: "
        f"exact (Runtime sparse=True) {ex:,.0f} ({db / ex:.2f}x), every projection "
        f"TLMM_SPARSE {sf:,.0f} ({db / sf:.2f}x)",
        f"{'method':<6} {'level':>5} {'calib':>6} {'nats/char':>10} {'d loss':>7} "
        f"{'bytes/token':>12} {'vs dense':>9} {'vs exact':>9} {'all-sparse':>11} "
        f"{'vs dense':>9} {'vs sparse':>10}",
    ]
    for r in result["rows"]:
        b, bs = r["bytes_per_token"], r["bytes_sparse"]
        lines.append(
            f"{r['method']:<6} {r['level']:>5.0%} {r['calibrated']:>6.1%} "
            f"{r['nats_per_char']:>10.4f} {r['nats_per_char'] / dn - 1:>+7.2%} "
            f"{b:>12,.0f} {db / b:>8.2f}x {ex / b:>8.2f}x {bs:>11,.0f} {db / bs:>8.2f}x "
            f"{sf / bs:>9.2f}x"
        )
    lim = f"within {TARGET_LOSS_INCREASE:.0%} of dense nats/char"
    for key, base, what in (
        ("bytes_per_token", ex, "the method's formats; vs exact"),
        ("bytes_sparse", sf, "every projection TLMM_SPARSE; vs the same without threshold"),
    ):
        top = best(result, key)
        if top is None:
            lines.append(f"no setting {lim}")
            continue
        f = db / top[key]
        lines.append(
            f"fewest bytes {lim} ({what}): {top['method']} at {top['level']:.0%}, "
            f"{top['nats_per_char'] / dn - 1:+.2%}: {f:.2f}x fewer than dense "
            f"({base / top[key]:.2f}x); target {TARGET_BYTES_FACTOR}x vs dense "
            f"{'met' if f >= TARGET_BYTES_FACTOR else 'not met'}"
        )
    lines.append(f"({result['seconds']:.0f} s)")
    return "\n".join(lines)


def parse_levels(text: str) -> tuple[float, ...]:
    """'0,10,20' (percent) -> (0.0, 0.1, 0.2); ValueError on anything else."""
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated percentages, got {text!r}") from None
    if not vals or any(not 0 <= v < 100 for v in vals):
        raise ValueError(f"expected percentages in [0, 100), got {text!r}")
    return tuple(v / 100 for v in vals)


def run(argv=None) -> int:
    p = Parser(prog="python -m host.sparsity", description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default=hdata.DEFAULT_MODEL, help="checkpoint or GGUF")
    p.add_argument("--corpus", default=hdata.DEFAULT_CORPUS, help="corpus text file")
    p.add_argument("--calib-windows", type=int, default=CALIB_WINDOWS, help="training windows")
    p.add_argument("--windows", type=int, default=HELDOUT_WINDOWS, help="held-out windows")
    p.add_argument("--levels", default="0,10,20,30,40,50,60,70", help="percent, comma-separated")
    p.add_argument("--methods", default=",".join(gsp.METHODS), help="subset of teal,wina,cats")
    p.add_argument("--batch", type=int, default=BATCH, help="windows per forward")
    a = p.parse_args(argv)
    for name in ("calib_windows", "windows", "batch"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(a, name)}")
    try:
        levels = parse_levels(a.levels)
    except ValueError as e:
        raise UsageError(f"--levels: {e}") from None
    methods = [m for m in a.methods.split(",") if m]
    if not methods or any(m not in gsp.METHODS for m in methods):
        raise UsageError(
            f"--methods: expected a subset of {','.join(gsp.METHODS)}, got {a.methods!r}"
        )
    from host.modelfile import open_model

    with flag_errors("-m/--model"):
        source = open_model(a.model)
        model = source.load()
    ctx = model.config.max_position_embeddings
    try:
        held = hdata.heldout_text(a.corpus, a.windows * ctx + 1)
        wins, chars = text_windows(source.tokenizer, held, ctx)
        calib, _ = text_windows(
            source.tokenizer, calibration_text(a.calib_windows * ctx + 1, a.corpus), ctx
        )
    except (ValueError, OSError) as e:
        raise UsageError(f"--corpus: {e}") from None
    print(
        f"model {a.model} ({model.config.hidden_act}); calibration: {len(calib)} windows of the "
        f"training split; held-out: {len(wins)} windows ({chars} chars)"
    )
    print(table(sweep(model, calib, wins, chars, tuple(methods), levels, a.batch)))
    return 0


main = partial(run_main, run)

if __name__ == "__main__":
    sys.exit(main())
