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
# # Ternary weights and INT8 activations of the shipped model
#
# What quantization does to the shipped BitNet b1.58 character model, layer by layer:
#
# 1. the ternary weight codes (how many -1 / 0 / +1 per projection) and their scales;
# 2. the activations that enter each projection (per-token absmax, value histograms);
# 3. the error of INT8 absmax activation quantization per projection, as the SNR of the
#    projection's output (INT8 activations vs float activations, both with the
#    dequantized ternary weight -- the checkpoint stores packed ternary weights, so
#    there is no float latent weight to compare with);
# 4. the integer datapath (`golden.model.GoldenModel(mode="integer")`, every hardware
#    approximation on) against the float reference, op by op through the network;
# 5. held-out bits per character in reference vs integer mode.
#
# Asserted against golden bounds: activation fake-quant error <= 1/2 LSB (round to
# nearest), integer-vs-reference logit cosine >= 1 - `golden.model.INT_COSINE_GAP`,
# greedy next-character agreement >= `golden.model.GREEDY_AGREEMENT_MIN`.

# %% tags=["parameters"]
MODEL_DIR = None  # checkpoint directory, repo-relative or absolute (None: shipped)
OUT_DIR = "build/notebooks"  # where the PNG figures go
HELDOUT_WINDOWS = 24  # held-out windows of the model's context (256 chars each)
STAT_WINDOWS = 2  # windows used for activation statistics and the op trace

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from golden import model as gmodel
from golden import quant as gquant
from golden.modelspec import ATTN_PROJ, MLP_PROJ
from notebooks import lib

T0 = time.time()
savefig = lib.figure_saver("weights_activations", OUT_DIR)
model, tok = lib.load(MODEL_DIR)
mc = model.config
PROJ = ATTN_PROJ + MLP_PROJ
print(
    f"{MODEL_DIR or 'shipped model'}: {mc.num_hidden_layers} layers, hidden {mc.hidden_size}, "
    f"FFN {mc.intermediate_size} ({mc.hidden_act}), heads {mc.num_attention_heads}/"
    f"{mc.num_key_value_heads}, context {mc.max_position_embeddings}, vocab {mc.vocab_size}"
)

# %% [markdown]
# ## 1. Ternary weight codes
# Fraction of codes -1 / 0 / +1 of each projection (stacked bars; absmean ternarization
# zeroes the weights below half the mean magnitude) and the per-tensor scale s_w
# (dequantized weight = code * s_w).

# %%
L = mc.num_hidden_layers
frac = np.zeros((L, len(PROJ), 3))
scales = np.zeros((L, len(PROJ)))
for li, lw in enumerate(model.weights.layers):
    for pi, name in enumerate(PROJ):
        c = lw.proj[name].codes
        assert set(np.unique(c).tolist()) <= {-1, 0, 1}, (li, name)
        frac[li, pi] = [(c == v).mean() for v in (-1, 0, 1)]
        scales[li, pi] = lw.proj[name].scale

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4))
labels = [f"L{li}.{n.replace('_proj', '')}" for li in range(L) for n in PROJ]
x = np.arange(len(labels))
bottom = np.zeros(len(labels))
for v, color in zip(range(3), ("tab:blue", "lightgray", "tab:red"), strict=False):
    vals = frac[:, :, v].ravel()
    ax.bar(x, vals, bottom=bottom, color=color, label=("-1", "0", "+1")[v])
    bottom += vals
ax.set_xticks(x, labels, rotation=90, fontsize=7)
ax.set_ylabel("fraction of weights")
ax.set_title("ternary code distribution per projection")
ax.legend(loc="lower right")
ax2.bar(x, scales.ravel(), color="tab:green")
ax2.set_xticks(x, labels, rotation=90, fontsize=7)
ax2.set_ylabel("s_w (dequant = code * s_w)")
ax2.set_title("per-tensor weight scale")
savefig(fig, "weight_codes")
print(
    f"zero fraction: min {frac[:, :, 1].min():.3f}, max {frac[:, :, 1].max():.3f}, "
    f"mean {frac[:, :, 1].mean():.3f}"
)

# %% [markdown]
# ## 2. Activations entering the projections
# The float reference forward (`GoldenModel(mode="reference")`) on held-out text, with
# a hook (`proj_hook`) that records the input of every projection before its INT8
# quantizer (asserted below not to change the logits). Left: per-token absmax (the quantizer's
# scale is 127 / absmax) per projection input; right: value distribution of layer 0's
# inputs (log count): the FFN-down input (ReLU^2(gate) * up) is heavy-tailed, so its
# per-token INT8 grid is the coarsest relative to typical values.

# %%
ctx = mc.max_position_embeddings
stat_wins = lib.heldout_windows(tok, STAT_WINDOWS, ctx)
x_stat = np.stack([w[0] for w in stat_wins])
inputs = {}


def record(layer, name, x):
    inputs[(layer, name)] = x.copy()


fwd_rec = gmodel.GoldenModel(model, "reference", proj_hook=record)
logits_hooked = fwd_rec.forward(x_stat)
logits_golden = gmodel.GoldenModel(model, "reference").forward(x_stat)
assert np.array_equal(logits_hooked, logits_golden), "the hooked forward differs from the reference"
print("GoldenModel(reference, proj_hook) == GoldenModel(reference): bit-equal logits")

# q/k/v and gate/up share their input: keep one name per distinct input
TAPS = {
    "q_proj": "attn in (q/k/v)",
    "o_proj": "o_proj in",
    "gate_proj": "FFN in (gate/up)",
    "down_proj": "down_proj in",
}
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4))
pos = 0
ticks, names = [], []
for li in range(L):
    for name, label in TAPS.items():
        am = np.abs(inputs[(li, name)]).max(axis=-1).ravel()
        ax.boxplot(am, positions=[pos], widths=0.6, showfliers=False)
        ticks.append(pos)
        names.append(f"L{li} {label}")
        pos += 1
ax.set_yscale("log")
ax.set_xticks(ticks, names, rotation=90, fontsize=7)
ax.set_ylabel("per-token max|x|")
ax.set_title("per-token absmax of projection inputs")
for name, label in TAPS.items():
    v = inputs[(0, name)].ravel()
    v = v / np.abs(v).max()
    ax2.hist(v, bins=201, histtype="step", label=label, log=True)
ax2.set_xlabel("x / max|x| (layer 0, all tokens)")
ax2.set_ylabel("count")
ax2.legend(fontsize=8)
ax2.set_title("activation values, layer 0")
savefig(fig, "activations")

# %% [markdown]
# ## 3. INT8 activation quantization error per projection
# For each projection: `y_f = x @ W^T` (float x) and `y_q = fq(x) @ W^T` (INT8 absmax
# fake-quantized x, `golden.quant.act_fake_quant`), W the dequantized ternary weight.
# SNR = 10 log10(|y_f|^2 / |y_f - y_q|^2) over all tokens. Rounding to a step
# max|x|/127 adds noise of power step^2/12, so the input SNR is about
# 10 log10(12 * 127^2) - 20 log10(max/rms) = 52.9 dB minus the per-token crest factor
# in dB: heavy-tailed inputs lose most. Also asserted: every element's quantization
# error is at most half a step (max|x| / 127 / 2).

# %%
snr = np.zeros((L, len(PROJ)))
worst_lsb = 0.0
for li in range(L):
    for pi, name in enumerate(PROJ):
        xin = inputs[(li, name)]
        xf = gquant.act_fake_quant(xin)
        step = np.abs(xin).max(axis=-1, keepdims=True) / 127.0
        worst_lsb = max(worst_lsb, float(np.max(np.abs(xf - xin) / step)))
        w = model.weights.layers[li].proj[name].dequant(np.float64)
        yf = xin.astype(np.float64) @ w.T
        yq = xf.astype(np.float64) @ w.T
        snr[li, pi] = 10 * np.log10(np.sum(yf**2) / np.sum((yf - yq) ** 2))
print(f"max activation fake-quant error: {worst_lsb:.4f} LSB (bound 0.5 + float32 rounding)")
assert worst_lsb <= 0.5 + 1e-4

fig, ax = plt.subplots(figsize=(8, 3.5))
im = ax.imshow(snr, cmap="viridis", aspect="auto")
ax.set_xticks(range(len(PROJ)), PROJ)
ax.set_yticks(range(L), [f"layer {i}" for i in range(L)])
for li in range(L):
    for pi in range(len(PROJ)):
        ax.text(pi, li, f"{snr[li, pi]:.1f}", ha="center", va="center", color="w", fontsize=8)
fig.colorbar(im, label="SNR (dB)")
ax.set_title("projection output SNR, INT8 vs float activations")
savefig(fig, "projection_snr")
print("SNR (dB) min/median/max:", f"{snr.min():.1f} / {np.median(snr):.1f} / {snr.max():.1f}")

# %% [markdown]
# ## 4. Integer datapath vs float reference, op by op
# Both golden modes on the same windows with `trace=[]`. For the ops both traces record
# (embedding, attention probabilities, attention output, residual after o_proj, FFN
# product, residual after down_proj) the relative RMS error
# |int - ref| / |ref| of the integer mode's value (converted from its fixed-point
# format: Q15.16 residual/activations, UQ0.16 probabilities) against the reference's.
# Each mode runs on its own state, so the curve shows how the error accumulates through
# the network. The last point is the logits.

# %%
tr_ref, tr_int = [], []
g_ref = gmodel.GoldenModel(model, "reference")
g_int = gmodel.GoldenModel(model, "integer")
lg_ref = g_ref.forward(x_stat, trace=tr_ref)
lg_int = g_int.forward(x_stat, trace=tr_int)
FMT = {
    "embed": ("h", 16),
    "softmax": ("p", 16),
    "pv": ("o", 16),
    "tlmm_residual.o_proj": ("h", 16),
    "act": ("m", 16),
    "tlmm_residual.down_proj": ("h", 16),
}
ref_by = {(layer, op): arr for layer, op, arr in tr_ref}
rows = []
for layer, op, arr in tr_int:
    if op not in FMT or (layer, op) not in ref_by:
        continue
    key, frac_bits = FMT[op]
    vi = arr[key].astype(np.float64) * 2.0**-frac_bits
    vr = ref_by[(layer, op)][key].astype(np.float64)
    rows.append(
        (
            f"L{layer} {op}" if layer >= 0 else op,
            float(np.linalg.norm(vi - vr) / np.linalg.norm(vr)),
        )
    )
rows.append(("logits", float(np.linalg.norm(lg_int - lg_ref) / np.linalg.norm(lg_ref))))
cos = gmodel.cosine_rows(lg_int.reshape(-1, mc.vocab_size), lg_ref.reshape(-1, mc.vocab_size))

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [2, 1]})
ax.semilogy([r[1] for r in rows], "o-")
ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=90, fontsize=7)
ax.set_ylabel("relative RMS error, integer vs reference")
ax.set_title("integer datapath error through the network")
ax.grid(True, which="both", alpha=0.3)
ax2.hist(np.maximum(1 - cos, 1e-9), bins=np.logspace(-9, -1, 57))
ax2.axvline(gmodel.INT_COSINE_GAP, color="r", ls="--", label="INT_COSINE_GAP")
ax2.set_xscale("log")
ax2.set_xlabel("1 - cosine(integer logits, reference logits)")
ax2.set_title("per-position logit cosine gap")
ax2.legend()
savefig(fig, "integer_vs_reference")
print(f"max 1 - cosine = {np.max(1 - cos):.2e} (bound INT_COSINE_GAP = {gmodel.INT_COSINE_GAP})")
assert np.max(1 - cos) <= gmodel.INT_COSINE_GAP

# %% [markdown]
# ## 5. Held-out loss, reference vs integer
# Bits per character on the first `HELDOUT_WINDOWS` full context windows of the
# held-out split (last 10 % of tinyshakespeare), each window from an empty cache, as
# `python -m host.eval` scores them, and the greedy next-character agreement of the two
# modes. The bars show the per-window spread; the difference is paired (same text).

# %%
wins = lib.heldout_windows(tok, HELDOUT_WINDOWS, ctx)
t = time.time()
am_ref, am_int = [], []
bpc_ref, pw_ref = lib.score(g_ref, wins, argmax=am_ref)
t_ref = time.time() - t
t = time.time()
bpc_int, pw_int = lib.score(g_int, wins, argmax=am_int)
t_int = time.time() - t
agreement = float(np.mean(np.concatenate(am_ref) == np.concatenate(am_int)))
d = pw_int - pw_ref
print(f"held-out: {len(wins)} windows x {ctx} chars = {len(wins) * ctx} predictions")
print(f"reference {bpc_ref:.4f} bpc ({t_ref:.1f} s), integer {bpc_int:.4f} bpc ({t_int:.1f} s)")
print(
    f"integer - reference: {bpc_int - bpc_ref:+.5f} bpc "
    f"(paired s.e. {d.std(ddof=1) / np.sqrt(len(d)):.5f})"
)
print(
    f"greedy agreement {agreement:.4f} (bound GREEDY_AGREEMENT_MIN = {gmodel.GREEDY_AGREEMENT_MIN})"
)
assert agreement >= gmodel.GREEDY_AGREEMENT_MIN

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
ax.bar(
    ["reference", "integer"],
    [bpc_ref, bpc_int],
    yerr=[pw_ref.std(ddof=1) / np.sqrt(len(pw_ref)), pw_int.std(ddof=1) / np.sqrt(len(pw_int))],
    color=["tab:blue", "tab:orange"],
    capsize=6,
)
ax.set_ylim(min(bpc_ref, bpc_int) * 0.9, max(bpc_ref, bpc_int) * 1.05)
ax.set_ylabel("bits per character")
ax.set_title(f"held-out loss ({len(wins) * ctx} chars)")
ax2.plot(pw_ref, pw_int - pw_ref, "o")
ax2.axhline(0, color="k", lw=0.5)
ax2.set_xlabel("reference bpc of the window")
ax2.set_ylabel("integer - reference (bpc)")
ax2.set_title("per-window difference")
savefig(fig, "heldout_loss")
print(f"notebook runtime {time.time() - T0:.1f} s")
