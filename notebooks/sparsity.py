# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (venv)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Thresholded activation sparsity: TEAL, WINA, CATS
#
# Decode is memory-bound: a weight beat that is not read is time saved (DESIGN §9). The
# accelerator skips the weight beats of all-zero activation groups (TLMM_SPARSE) and the
# up_proj blocks whose ReLU(gate) is all zero, exactly. Training-free thresholds make more
# zeros at some loss (`golden.sparsity`, `GoldenModel(..., act_sparsity=...)`):
#
# * **TEAL** zeroes a projection input where |x_q| <= tau (x_q the INT8 code);
# * **WINA** where |x_q| * ||W[:, i]||_2 <= tau (the column norm of the ternary weights);
# * **CATS** zeroes a ReLU^2 gate whose 16-bit code is <= tau: its up row is masked and its
#   down_proj input is 0.
#
# Thresholds per (layer, input) are calibrated on windows of the *training* split
# (`host.sparsity.calibrate`), disjoint from the held-out windows that are scored. A
# *level* is the fraction of the live (non-zero) inputs removed. Bytes per token are those
# of the projections' TLMM commands (`golden.isa`): `dense` every beat read, `exact` the
# runtime's sparse mode (down_proj TLMM_SPARSE, up_proj skipping masked blocks), a method
# `exact` plus TLMM_SPARSE on every input it thresholds, and `all-sparse` every projection
# TLMM_SPARSE but the masked up_proj (`host.sparsity`, module doc).
#
# Asserted: level 0 is the dense forward bit for bit; the thresholds reach their level on
# the calibration text (mean over inputs within `LEVEL_TOL`); at level 0 CATS reads what
# `exact` reads and every row's all-sparse bytes what the all-sparse dense run reads.

# %% tags=["parameters"]
MODEL_DIR = None  # checkpoint directory, repo-relative or absolute (None: shipped)
OUT_DIR = "build/notebooks"  # where the PNG figures go
CALIB_WINDOWS = 4  # training-split windows (of the model's context) for the thresholds
HELDOUT_WINDOWS = 8  # held-out windows scored per (method, level)
LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
CATS_MORE = (0.8, 0.9)  # CATS only: further levels (it costs little up to 70 %)
LEVEL_TOL = 0.02

# %%
import time

import matplotlib.pyplot as plt

from host import data as hdata
from host import sparsity as hs
from notebooks import lib

T0 = time.time()
savefig = lib.figure_saver("sparsity", OUT_DIR)
model, tok = lib.load(MODEL_DIR)
mc = model.config
ctx = mc.max_position_embeddings
calib, _ = hs.text_windows(tok, hs.calibration_text(CALIB_WINDOWS * ctx + 1), ctx)
wins, chars = hs.text_windows(tok, hdata.heldout_text(chars=HELDOUT_WINDOWS * ctx + 1), ctx)
print(
    f"model: {mc.num_hidden_layers} layers, hidden {mc.hidden_size}, intermediate "
    f"{mc.intermediate_size}, {mc.hidden_act}; calibration {len(calib)} training windows, "
    f"held-out {len(wins)} windows ({chars} chars)"
)

# %% [markdown]
# ## 1. The sweep
# Every method at every level: held-out nats per character and bytes per token.

# %%
res = hs.sweep(model, calib, wins, chars, levels=LEVELS)
if CATS_MORE and mc.hidden_act == "relu2":
    more = hs.sweep(model, calib, wins, chars, methods=("cats",), levels=CATS_MORE)
    assert more["dense"] == res["dense"]  # the same dense run
    res["rows"] += more["rows"]
    res["seconds"] += more["seconds"]
print(hs.table(res))
dense_nats, dense_bytes = res["dense"]
for r in res["rows"]:
    if r["level"] == 0:
        assert r["nats_per_char"] == dense_nats, r  # no threshold: the dense forward
    assert abs(r["calibrated"] - r["level"]) <= LEVEL_TOL, r
    if r["level"] == 0:
        assert r["bytes_sparse"] == res["sparse"], r
assert [r["bytes_per_token"] for r in res["rows"] if r["method"] == "cats"][0] == res["exact"]

# %% [markdown]
# ## 2. Loss vs level and vs bytes
# Left: held-out nats/char against the level. Right: against the bytes per token read
# (fewer to the right): solid, each method's own formats; dashed, every projection
# TLMM_SPARSE (for TEAL and WINA the same); the dense and threshold-free reads marked.
# TEAL and WINA's level-0 points already read fewer bytes than `exact`: TLMM_SPARSE has
# no padding of K to whole T-group chunks (K = 256 is 86 groups, a TLMM reads 4 x 28).

# %%
fig, axs = plt.subplots(1, 2, figsize=(13, 4.8))
for m in ("teal", "wina", "cats"):
    rows = [r for r in res["rows"] if r["method"] == m]
    lv = [100 * r["level"] for r in rows]
    nats = [r["nats_per_char"] for r in rows]
    axs[0].plot(lv, nats, "o-", label=m.upper())
    line = axs[1].plot([r["bytes_per_token"] / 1e3 for r in rows], nats, "o-", label=m.upper())
    if m == "cats":
        kb = [r["bytes_sparse"] / 1e3 for r in rows]
        axs[1].plot(kb, nats, "s--", color=line[0].get_color(), label="CATS, all-sparse")
for ax in axs:
    ax.axhline(dense_nats * 1.01, color="grey", ls=":", lw=1, label="dense + 1 %")
    ax.set_ylabel("held-out nats/char")
    worst = max(r["nats_per_char"] for r in res["rows"])
    ax.set_ylim(dense_nats * 0.995, max(min(worst, dense_nats * 1.12), dense_nats * 1.02))
axs[0].set_xlabel("sparsity level (% of live inputs removed)")
axs[1].axvline(dense_bytes / 1e3, color="k", lw=1, label="dense TLMM")
axs[1].axvline(res["exact"] / 1e3, color="k", ls="--", lw=1, label="exact sparsity")
axs[1].axvline(res["sparse"] / 1e3, color="k", ls="-.", lw=1, label="all-sparse, no threshold")
axs[1].set_xlabel("kB read per token (projections)")
axs[1].invert_xaxis()
axs[0].legend()
axs[1].legend(fontsize=8)
fig.suptitle(f"Thresholded activation sparsity, shipped model, {chars} held-out chars")
fig.tight_layout()
savefig(fig, "tradeoff")

# %%
for key, base, what in (
    ("bytes_per_token", res["exact"], "exact sparsity"),
    ("bytes_sparse", res["sparse"], "all-sparse without threshold"),
):
    top = hs.best(res, key)
    if top is not None:
        print(
            f"fewest {key} within 1 % of dense: {top['method']} at {top['level']:.0%}: "
            f"{dense_bytes / top[key]:.2f}x fewer than dense, {base / top[key]:.2f}x fewer "
            f"than {what}"
        )
print(f"notebook runtime {time.time() - T0:.1f} s")
