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
# # Hardware approximations: block error and end-to-end effect
#
# The integer datapath replaces the float nonlinearities with fixed-point blocks
# (golden models in `golden/`): base-2 exponent with a 65-entry LUT and linear
# interpolation (`golden.softmax.exp_fx`, I-BERT's i-exp role), an online integer
# softmax (`softmax_fx`), GELU/SiLU as ReLU(x) - delta(|x|) with an interpolated delta
# LUT (`golden.activations`), and an rsqrt by LUT + Newton step inside RMSNorm.
#
# 1. Error of each block against float64 math over its whole input range, with max and
#    mean; the max is **asserted** against the module's stated bound.
# 2. End-to-end effect on the shipped model's held-out bits per character when one
#    approximation at a time is switched on in the float reference forward.
# 3. GELU / SiLU on a model: the shipped model uses ReLU^2, which the datapath computes
#    exactly, so its activation switch only adds the 16-bit gate/up quantization; the
#    SiLU LUT is measured on a random SiLU model instead, and GELU is not applicable.

# %% tags=["parameters"]
MODEL_DIR = None  # checkpoint directory, repo-relative or absolute (None: shipped)
OUT_DIR = "build/notebooks"  # where the PNG figures go
HELDOUT_WINDOWS = 8  # held-out windows (of the model's context) per ablation run
SOFTMAX_ROWS = 400  # random logit rows per row length for the softmax sweep
SEED = 0

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from golden import activations as gact
from golden import model as gmodel
from golden import rmsnorm as grms
from golden import softmax as gsm
from golden.config import DEFAULT
from golden.modelspec import ModelConfig
from notebooks import lib

T0 = time.time()
savefig = lib.figure_saver("approximations", OUT_DIR)
rng = np.random.default_rng(SEED)
SC, AC = DEFAULT.softmax, DEFAULT.activation


measured = {}  # block -> (max error, stated bound)

# %% [markdown]
# ## 1a. exp (softmax exponent unit)
# `exp_fx(z)` for every representable difference of two Q7.8 logits,
# z in (-2^16, 0] LSB, i.e. (-256, 0]: relative error against float64 `exp`. The
# sawtooth is the 64-segment linear interpolation of 2^-f; the slow rise with |z| is
# the rounding of log2(e) to 20 fraction bits. Inputs where float64 exp underflows are
# left out (as `golden.softmax.exp_rel_error`).

# %%
z = -np.arange(0, 1 << SC.in_bits, dtype=np.int64)
zf = z * 2.0**-SC.in_frac_bits
exact = np.exp(zf)
ok = exact > 0
rel = np.abs(gsm.exp_fx_float(z, SC)[ok] / exact[ok] - 1.0)
measured["exp (relative)"] = (rel.max(), gsm.EXP_REL_ERR)
print(
    f"exp: max rel err {rel.max():.3e}, mean {rel.mean():.3e} "
    f"(bound EXP_REL_ERR {gsm.EXP_REL_ERR}, I-BERT i-exp {gsm.IBERT_EXP_REL_ERR})"
)
assert rel.max() <= gsm.EXP_REL_ERR

# %% [markdown]
# ## 1b. softmax
# Random rows from near-uniform to one-hot (`golden.softmax.random_logits`), lengths
# 16 .. 2048 (the bound's range, `PROB_BOUND_MAX_LEN`), through the integer online
# softmax; absolute error of each UQ0.16 probability against float64 softmax of the
# same Q7.8 logits.

# %%
lengths = [16, 64, 256, 1024, gsm.PROB_BOUND_MAX_LEN]
sm_max, sm_mean, p_all, e_all = [], [], [], []
for n in lengths:
    rows = max(8, SOFTMAX_ROWS * 64 // n)
    x = gsm.random_logits(rng, rows, n, SC)
    p = gsm.softmax_fx(x, SC).astype(np.float64) * 2.0**-SC.out_bits
    ref = gsm.softmax_ref(x.astype(np.float64) * 2.0**-SC.in_frac_bits)
    err = np.abs(p - ref)
    sm_max.append(err.max())
    sm_mean.append(err.mean())
    if n == 256:
        p_all, e_all = ref.ravel(), err.ravel()
measured["softmax (abs)"] = (max(sm_max), gsm.PROB_ABS_ERR)
print(
    "softmax max abs err per length:",
    dict(zip(lengths, [f"{v:.2e}" for v in sm_max], strict=False)),
)
print(f"bound PROB_ABS_ERR {gsm.PROB_ABS_ERR} (one UQ0.16 LSB = {2.0**-SC.out_bits:.2e})")
assert max(sm_max) <= gsm.PROB_ABS_ERR

# %% [markdown]
# ## 1c. GELU and SiLU
# Every one of the 2^16 Q7.8 inputs through `gelu_fx` / `silu_fx`: error against the
# exact float64 functions of the same input. The output LSB (2^-8, +-half of it) sets the
# floor; the LUT's interpolation error rides on it near |x| ~ 1 and the tail cut-off
# sits at |x| = 4 (GELU) / 16 (SiLU).

# %%
xa = gact.all_inputs(AC)
xf = xa * 2.0**-AC.in_frac_bits
act_err = {}
for kind, ref_fn, bound in (
    ("gelu", gact.gelu_ref, gact.GELU_ABS_ERR),
    ("silu", gact.silu_ref, gact.SILU_ABS_ERR),
):
    y = gact.act_fx(xa, kind, AC).astype(np.float64) * 2.0**-AC.out_frac_bits
    act_err[kind] = y - ref_fn(xf)
    mx = np.abs(act_err[kind]).max()
    measured[f"{kind} (abs)"] = (mx, bound)
    print(
        f"{kind}: max abs err {mx:.3e}, mean {np.abs(act_err[kind]).mean():.3e} "
        f"(bound {bound}; I-BERT i-GELU {gact.IBERT_GELU_ABS_ERR})"
    )
    assert mx <= bound

# %% [markdown]
# ## 1d. rsqrt (RMSNorm)
# The LUT-seeded Newton rsqrt over every mantissa at 2^-16 spacing and several
# exponents (`golden.rmsnorm.rsqrt_sweep`), relative error.

# %%
s = grms.rsqrt_sweep()
y, k = grms.rsqrt_fx(s)
approx = np.ldexp(y.astype(np.float64), (-(DEFAULT.norm.rsqrt_frac_bits + k)).astype(np.int32))
rs_rel = np.abs(approx * np.sqrt(s.astype(np.float64)) - 1.0)
measured["rsqrt (relative)"] = (rs_rel.max(), grms.RSQRT_REL_ERR)
print(
    f"rsqrt: max rel err {rs_rel.max():.3e}, mean {rs_rel.mean():.3e} (bound {grms.RSQRT_REL_ERR})"
)
assert rs_rel.max() <= grms.RSQRT_REL_ERR

# %%
fig, axs = plt.subplots(2, 2, figsize=(13, 8))
ax = axs[0, 0]
step = max(1, ok.sum() // 20000)
ax.plot(zf[ok][::step], rel[::step], lw=0.5)
ax.axhline(gsm.EXP_REL_ERR, color="r", ls="--", label=f"bound {gsm.EXP_REL_ERR:g}")
ax.set_xlabel("z (exp(z), Q7.8 input)")
ax.set_ylabel("relative error")
ax.set_title(f"exp_fx: max {rel.max():.2e}, mean {rel.mean():.2e}")
ax.legend()
ax = axs[0, 1]
ax.loglog(lengths, sm_max, "o-", label="max")
ax.loglog(lengths, sm_mean, "s-", label="mean")
ax.axhline(gsm.PROB_ABS_ERR, color="r", ls="--", label=f"bound {gsm.PROB_ABS_ERR:g}")
ax.axhline(2.0**-SC.out_bits, color="gray", ls=":", label="1 LSB (UQ0.16)")
ax.set_xlabel("row length N")
ax.set_ylabel("|p - softmax|")
ax.set_title("softmax_fx absolute error vs row length")
ax.legend(fontsize=8)
for ax, kind in ((axs[1, 0], "gelu"), (axs[1, 1], "silu")):
    e = act_err[kind]
    sel = np.abs(xf) <= (8 if kind == "gelu" else 20)
    ax.plot(xf[sel], e[sel], lw=0.4)
    b = measured[f"{kind} (abs)"][1]
    ax.axhline(b, color="r", ls="--", label=f"bound +-{b:g}")
    ax.axhline(-b, color="r", ls="--")
    ax.set_xlabel("x")
    ax.set_ylabel("approx - exact")
    ax.set_title(f"{kind}_fx: max {np.abs(e).max():.2e}, mean {np.abs(e).mean():.2e}")
    ax.legend(fontsize=8)
fig.tight_layout()
savefig(fig, "block_errors")

fig, ax = plt.subplots(figsize=(7, 3.5))
names = list(measured)
ratio = [measured[n][0] / measured[n][1] for n in names]
ax.barh(names, ratio, color="tab:blue")
ax.axvline(1.0, color="r", ls="--")
ax.set_xlabel("measured max error / stated bound")
ax.set_title("every block within its bound")
savefig(fig, "bound_ratio")

# %% [markdown]
# ## 2. End-to-end: one approximation at a time
# The float reference forward of the shipped model (`GoldenModel(mode="reference")`)
# with one hardware approximation switched on in the float path (its `approx` option,
# names `golden.model.APPROXIMATIONS`; module docstring of `golden/model.py`, "Ablations";
# with no switch it is the reference forward, asserted below):
#
# | switch | what it puts into the float forward |
# |---|---|
# | `rmsnorm` | fixed-point RMSNorm + the INT8 quantizer, before every BitLinear |
# | `rope` | RoPE from Q1.14 cos/sin tables on the exact int32 q/k accumulators |
# | `attn_int8` | q, k, v as INT8 per (token, head) |
# | `softmax` | logits rounded to Q7.8 int16, integer online softmax, UQ0.16 probabilities |
# | `act` | ReLU^2 of gate and up quantized per token to 16 bits (exact square) -- SiLU: Q7.8 LUT |
# | `lm_head` | INT8 final-norm output x INT8 lm_head rows |
# | all | every switch at once |
#
# Each run scores the same held-out windows; the bars are the difference in bits per
# character from the float reference with a paired standard error over windows. The
# integer golden model (the exact hardware datapath) is shown for comparison.

# %%
model, tok = lib.load(MODEL_DIR)
mc = model.config
wins = lib.heldout_windows(tok, HELDOUT_WINDOWS, mc.max_position_embeddings)
xb = np.stack([w[0] for w in wins])
APPROX = gmodel.APPROXIMATIONS


def ablation(m, approx=()):
    return gmodel.GoldenModel(m, "reference", approx=approx)


assert np.array_equal(
    ablation(model).forward(xb[:2]), gmodel.GoldenModel(model, "reference").forward(xb[:2])
)
bpc_ref, pw_ref = lib.score(ablation(model), wins)
runs = {}
for name in APPROX + ("all",):
    ap = set(APPROX) if name == "all" else {name}
    t = time.time()
    runs[name] = lib.score(ablation(model, ap), wins)
    print(f"{name:10s} {runs[name][0]:.5f} bpc  ({time.time() - t:.1f} s)")
runs["integer model"] = lib.score(gmodel.GoldenModel(model, "integer"), wins)
print(
    f"reference  {bpc_ref:.5f} bpc; integer model {runs['integer model'][0]:.5f} bpc "
    f"({len(wins) * mc.max_position_embeddings} predictions)"
)

names = list(runs)
delta = np.array([runs[n][0] - bpc_ref for n in names])
se = np.array([(runs[n][1] - pw_ref).std(ddof=1) / np.sqrt(len(pw_ref)) for n in names])
fig, ax = plt.subplots(figsize=(9, 3.8))
ax.bar(
    names, delta, yerr=se, capsize=5, color=["tab:blue"] * len(APPROX) + ["tab:orange", "tab:red"]
)
ax.axhline(0, color="k", lw=0.5)
ax.set_ylabel("bpc - float reference bpc")
ax.set_title(f"held-out loss change per approximation (reference {bpc_ref:.4f} bpc)")
plt.setp(ax.get_xticklabels(), rotation=20)
savefig(fig, "ablation")
for n, d_, e_ in zip(names, delta, se, strict=False):
    print(f"  {n:14s} {d_:+.5f} +- {e_:.5f} bpc")

# %% [markdown]
# ## 3. SiLU and GELU on a model
# The shipped model's FFN is ReLU^2 (BitNet b1.58 2B-4T), computed exactly by the
# datapath; its `act` switch above only quantizes gate/up to 16 bits. To see the SiLU
# LUT inside a network, a random SiLU BitNet (`golden.model.random_model`, same shape
# as the shipped model, N(0,1) embeddings, unit-variance projections) is run with exact
# SiLU and with `silu_fx`, and the two output distributions are compared
# (KL divergence per position and top-1 agreement); the same comparison for the
# shipped ReLU^2 model's `act` switch is shown beside it. GELU is not applicable: the
# BitNet architecture (transformers `BitNetConfig`, `golden.modelspec.ModelConfig`)
# offers only `relu2` and `silu`; the GELU unit's error is the curve in section 1.


# %%
def kl_rows(lp, lq):
    a = lp.astype(np.float64) - lp.max(-1, keepdims=True)
    b = lq.astype(np.float64) - lq.max(-1, keepdims=True)
    la = a - np.log(np.exp(a).sum(-1, keepdims=True))
    lb = b - np.log(np.exp(b).sum(-1, keepdims=True))
    return (np.exp(la) * (la - lb)).sum(-1).ravel()


silu_cfg = ModelConfig(**{**mc.__dict__, "hidden_act": "silu"})
silu_model = gmodel.random_model(silu_cfg, seed=SEED)
toks = rng.integers(0, mc.vocab_size, size=(2, mc.max_position_embeddings))
cmp = {}
for label, m, tk in (
    ("random SiLU model: silu_fx", silu_model, toks),
    ("shipped ReLU^2 model: act switch", model, xb[:2]),
):
    lo_exact = ablation(m).forward(tk)
    lo_apx = ablation(m, {"act"}).forward(tk)
    cmp[label] = (
        kl_rows(lo_exact, lo_apx),
        float(np.mean(lo_exact.argmax(-1) == lo_apx.argmax(-1))),
    )
    print(
        f"{label}: mean KL {cmp[label][0].mean():.2e} nats, max {cmp[label][0].max():.2e}, "
        f"top-1 agreement {cmp[label][1]:.4f}"
    )

fig, ax = plt.subplots(figsize=(7, 3.5))
for label, (kl, agr) in cmp.items():
    ax.hist(
        np.maximum(kl, 1e-12),
        bins=np.logspace(-12, 0, 60),
        histtype="step",
        label=f"{label} (top-1 agree {agr:.3f})",
    )
ax.set_xscale("log")
ax.set_xlabel("KL(exact || approximate activation) per position, nats")
ax.set_ylabel("positions")
ax.legend(fontsize=8)
ax.set_title("activation approximation inside a network")
savefig(fig, "activation_in_model")
print(f"notebook runtime {time.time() - T0:.1f} s")
