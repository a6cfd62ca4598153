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
# # Analog ramp-ADC nonlinearity (NL-ADC)
#
# After Yang, Mao et al. (Nature Communications 2025, arXiv 2411.18271): a memristor
# column generates a pre-distorted ramp so that a ramp ADC's count *is* f(x) quantized
# to N bits (`golden/nl_adc.py`: thresholds T_k = f^-1(y_lo + k LSB), code = number of
# thresholds <= x, output y_lo + (code + 1/2) LSB).
#
# 1. Transfer curves of sigmoid, tanh and ReLU^2 at several bit widths, ideal and for a
#    few sampled devices; the ideal error is **asserted** <= 1/2 LSB
#    (`IDEAL_BOUND_LSB`).
# 2. Conversion error vs memristor programming noise, with and without the bias-cell
#    calibration; at the module's study point the improvement is **asserted** >= the
#    stated factors (`CAL_MIN_FACTOR_MEAN`, `CAL_MIN_FACTOR_P90`).
# 3. The shipped model with its FFN activation (ReLU^2) computed by an NL-ADC at 3-8
#    bits, ideal and with device noise: held-out bits per character (the paper's
#    figure-5 study, on our model).
# 4. The same variants through the accelerator: the ACT engine's NL-ADC kinds, run as
#    the command stream (`host.adc_study`, golden backend), plotted next to section 3.

# %% tags=["parameters"]
MODEL_DIR = None  # checkpoint directory, repo-relative or absolute (None: shipped)
OUT_DIR = "build/notebooks"  # where the PNG figures go
HELDOUT_WINDOWS = 4  # held-out windows (of the model's context) per model run
RANGE_WINDOWS = 2  # other held-out windows that set each layer's ADC full scale
BITS = (3, 4, 5, 6, 8)  # NL-ADC resolutions of the model study
STUDY_DEVICES = 100  # devices per point of the noise sweep
ACCEL_WINDOWS = 4  # held-out windows of section 4 (the accelerator's command stream)
SEED = 0

# %%
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np

from golden import model as gmodel
from golden import nl_adc as na
from golden.config import ADCDeviceConfig
from notebooks import lib

T0 = time.time()
savefig = lib.figure_saver("nl_adc", OUT_DIR)
DEVICE = ADCDeviceConfig.rram_typical(seed=SEED)
print("device model:", DEVICE)


# %% [markdown]
# ## 1. Transfer curves
# Left column: the ideal NL-ADC output at 3, 5 and 8 bits against f (the staircase has
# equal steps in y, so its steps in x are narrow where f is steep). Right column: 5 bits,
# three devices sampled from `ADCDeviceConfig.rram_typical` (an illustrative RRAM
# operating point: 5 % programming error, 1 % stuck-at-OFF cells, 0.5 % read noise,
# comparator offset), one of them after bias-cell calibration. Programming error
# accumulates along the ramp, so the later thresholds drift most.

# %%
FUNCS = ("sigmoid", "tanh", "relu2")
XRANGE = {"sigmoid": (-8, 8), "tanh": (-3, 3), "relu2": (-0.5, 4.2)}
ideal_err = {}
fig, axs = plt.subplots(len(FUNCS), 2, figsize=(12, 10))
for row, fn in enumerate(FUNCS):
    x = np.linspace(*XRANGE[fn], 4001)
    f = na.get_function(fn).implemented(x)
    ax = axs[row, 0]
    ax.plot(x, f, "k", lw=1, label="f(x)")
    for bits in (3, 5, 8):
        dsg = na.design(fn, bits)
        ideal_err[(fn, bits)] = na.ideal_max_error_lsb(dsg)
        ax.step(x, dsg.convert(x), where="post", lw=0.8, label=f"{bits} bit")
    ax.set_title(f"{fn}: ideal NL-ADC")
    ax.legend(fontsize=8)
    ax = axs[row, 1]
    dsg = na.design(fn, 5)
    ax.plot(x, f, "k", lw=1, label="f(x)")
    for s in range(3):
        dev = na.sample_device(dsg, DEVICE, seed=(SEED, s))
        ax.step(
            x,
            dev.convert(x),
            where="post",
            lw=0.8,
            label=f"device {s}: {na.rms_error_lsb(dev):.2f} LSB rms",
        )
    cal = na.calibrate(na.sample_device(dsg, DEVICE, seed=(SEED, 0)))
    ax.step(
        x,
        cal.convert(x),
        where="post",
        lw=0.8,
        ls="--",
        label=f"device 0 calibrated: {na.rms_error_lsb(cal):.2f} LSB rms",
    )
    ax.set_title(f"{fn}: 5-bit sampled devices (ideal {na.rms_error_lsb(dsg):.2f} LSB rms)")
    ax.legend(fontsize=7)
fig.tight_layout()
savefig(fig, "transfer_curves")

for fn in FUNCS:
    for bits in range(3, 9):
        ideal_err.setdefault((fn, bits), na.ideal_max_error_lsb(na.design(fn, bits)))
worst = max(ideal_err.values())
print(
    f"ideal NL-ADC max |y_hat - f| over sigmoid/tanh/relu2, 3..8 bits: {worst:.6f} LSB "
    f"(bound IDEAL_BOUND_LSB = {na.IDEAL_BOUND_LSB})"
)
assert worst <= na.IDEAL_BOUND_LSB

# %% [markdown]
# ## 2. Error vs programming noise, with and without calibration
# For each programming-noise sigma (NormalProportional, relative to each cell's
# conductance), `STUDY_DEVICES` devices of the module's calibration study point
# (`CAL_STUDY_DEVICE`: 1 % stuck-at-OFF, 0.2 % read noise; 6-bit sigmoid) are sampled
# and calibrated with the 5 bias cells (`golden.nl_adc.calibration_study`). Lines: mean
# RMS error in LSB; shaded: 10th-90th percentile. The dotted line is the ideal
# quantizer's 1/sqrt(12) LSB.

# %%
dsg6 = na.design(na.CAL_STUDY_FUNCTION, na.CAL_STUDY_BITS)
sigmas = (0.01, 0.02, 0.05, 0.1, 0.2)
sweep = {}
for sg in sigmas:
    r = na.calibration_study(
        dsg6, replace(na.CAL_STUDY_DEVICE, sigma_prog=sg), n_devices=STUDY_DEVICES
    )
    sweep[sg] = r
    print(
        f"sigma_prog {sg:5.2f}: mean rms {r['mean'][0]:.3f} -> {r['mean'][1]:.3f} LSB, "
        f"p90 {r['p90'][0]:.3f} -> {r['p90'][1]:.3f} LSB"
    )

fig, ax = plt.subplots(figsize=(7, 4))
for key, label in (("uncalibrated", "uncalibrated"), ("calibrated", "bias-cell calibrated")):
    m = [sweep[s][key].mean() for s in sigmas]
    lo = [np.percentile(sweep[s][key], 10) for s in sigmas]
    hi = [np.percentile(sweep[s][key], 90) for s in sigmas]
    ax.plot(sigmas, m, "o-", label=label)
    ax.fill_between(sigmas, lo, hi, alpha=0.2)
ax.axhline(1 / np.sqrt(12), color="gray", ls=":", label="ideal quantizer")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("programming error sigma (relative)")
ax.set_ylabel("RMS error (LSB)")
ax.set_title(f"{na.CAL_STUDY_BITS}-bit {na.CAL_STUDY_FUNCTION} NL-ADC vs programming noise")
ax.legend()
savefig(fig, "calibration")

# the module's own study point and stated improvement factors
study = na.calibration_study(dsg6)
f_mean = study["mean"][0] / study["mean"][1]
f_p90 = study["p90"][0] / study["p90"][1]
print(
    f"study point ({na.CAL_STUDY_DEVICES} devices, sigma_prog {na.CAL_STUDY_DEVICE.sigma_prog}): "
    f"calibration improves mean rms x{f_mean:.2f} (bound >= {na.CAL_MIN_FACTOR_MEAN}), "
    f"p90 x{f_p90:.2f} (bound >= {na.CAL_MIN_FACTOR_P90})"
)
assert f_mean >= na.CAL_MIN_FACTOR_MEAN and f_p90 >= na.CAL_MIN_FACTOR_P90

# %% [markdown]
# ## 3. The shipped model with an analog ReLU^2
# Where the NL-ADC sits: in an analog in-memory accelerator the gate projection is a
# crossbar whose column current is the exact dot product `acc = x_q . w` of the INT8
# token and the ternary codes; ReLU^2 is homogeneous of degree 2, so
# `relu2(acc * s) = s^2 relu2(acc)` (s = s_w / s_x, per token) and the ADC can convert
# the raw column value with one fixed full scale per layer; the per-token s^2 is applied
# digitally afterwards. The full scale A of each layer is the largest |acc| seen on
# `RANGE_WINDOWS` held-out windows *other* than the scored ones (an integrator-gain
# calibration); the ADC computes relu2 on u = acc / A with output range [0, 1] (inputs
# beyond full scale saturate). Everything else is the float reference forward.
#
# Variants per bit width:
# - ideal NL-ADC with the golden decode y_hat = (code + 1/2) LSB (minimax, <= 1/2 LSB);
# - ideal NL-ADC whose code 0 is decoded as exactly 0 (a one-entry change of the
#   digital decode table): about half of all gate values are negative, and the midpoint
#   decode would give each of them +1/2 LSB, a bias that every FFN product carries;
# - devices sampled from `rram_typical` (one per layer), before and after bias-cell
#   calibration, with the code-0 decode;
# - for comparison, an ideal *linear* ADC of the same resolution on u in [-1, 1]
#   followed by an exact digital square (a conventional ADC + digital activation): the
#   ramp ADC with the identity's thresholds (`golden.nl_adc` function "linear",
#   mid-rise: y_hat = -1 + (c + 1/2) 2/2^N), the quantizer the ACT engine's
#   RELU2_LINADC kind uses.

# %%
model, tok = lib.load(MODEL_DIR)
mc = model.config
ctx = mc.max_position_embeddings
all_wins = lib.heldout_windows(tok, HELDOUT_WINDOWS + RANGE_WINDOWS, ctx)
wins, range_wins = all_wins[:HELDOUT_WINDOWS], all_wins[HELDOUT_WINDOWS:]

full_scale = np.zeros(mc.num_hidden_layers)


def record_range(layer, g, s):
    full_scale[layer] = max(full_scale[layer], float(np.max(np.abs(g / s))))
    return np.square(np.maximum(g, 0))


gmodel.GoldenModel(model, "reference", act_hook=record_range).forward(
    np.stack([w[0] for w in range_wins])
)
print("per-layer ADC full scale |acc|:", np.round(full_scale, 1).tolist())

bpc_ref, pw_ref = lib.score(gmodel.GoldenModel(model, "reference"), wins)
print(f"float reference: {bpc_ref:.4f} bpc on {len(wins) * ctx} held-out chars")


def adc_hook(converters, check=None):
    """act_hook: relu2 of the gate by per-layer converters on u = acc / full scale."""

    def hook(layer, g, s):
        u = (g / s).astype(np.float64) / full_scale[layer]
        y = converters[layer](u)
        if check is not None:
            check(layer, u, y)
        return y * (full_scale[layer] * s.astype(np.float64)) ** 2

    return hook


ideal_in_range_lsb = [0.0]
VARIANTS = (
    "NL-ADC ideal, midpoint decode",
    "NL-ADC ideal, code 0 -> 0",
    "NL-ADC device, code 0 -> 0",
    "NL-ADC device + calibration, code 0 -> 0",
    "linear ADC + digital square",
)
results = {k: [] for k in VARIANTS}
for bits in BITS:
    dsg = na.design("relu2", bits, 0.0, 1.0)

    def check(layer, u, y, dsg=dsg):
        inr = (u >= 0) & (u <= 1.0)
        err = np.abs(y[inr] - np.square(u[inr])) / dsg.lsb
        ideal_in_range_lsb[0] = max(ideal_in_range_lsb[0], float(err.max(initial=0)))

    def zero_decode(adc, dsg=dsg):
        # code 0 means f(x) < 1 LSB, and for ReLU^2 mostly x < 0: decode it as exactly 0
        return lambda u: np.where((c := adc.codes(u)) == 0, 0.0, dsg.decode(c))

    devs = [
        na.sample_device(dsg, DEVICE, seed=(SEED, bits, li)) for li in range(mc.num_hidden_layers)
    ]
    cals = [na.calibrate(d) for d in devs]
    lin = na.design("linear", bits, -1.0, 1.0)

    def linear(u, lin=lin):
        return np.square(np.maximum(lin.convert(u), 0.0))

    n_l = mc.num_hidden_layers
    hooks = dict(
        zip(
            VARIANTS,
            (
                adc_hook([dsg.convert] * n_l, check),
                adc_hook([zero_decode(dsg)] * n_l),
                adc_hook([zero_decode(d) for d in devs]),
                adc_hook([zero_decode(d) for d in cals]),
                adc_hook([linear] * n_l),
            ),
            strict=False,
        )
    )
    t = time.time()
    for name, hook in hooks.items():
        results[name].append(lib.score(gmodel.GoldenModel(model, "reference", act_hook=hook), wins))
    print(
        f"{bits} bit ({time.time() - t:.1f} s): "
        + ", ".join(f"{k}: {v[-1][0]:.4f}" for k, v in results.items())
    )

print(
    f"ideal NL-ADC on the model's in-range gate values: max error "
    f"{ideal_in_range_lsb[0]:.6f} LSB (bound IDEAL_BOUND_LSB = {na.IDEAL_BOUND_LSB})"
)
assert ideal_in_range_lsb[0] <= na.IDEAL_BOUND_LSB

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4.5))
for i, (name, res) in enumerate(results.items()):
    b = np.array([r[0] for r in res])
    se = np.array([(r[1] - pw_ref).std(ddof=1) / np.sqrt(len(pw_ref)) for r in res])
    ax.errorbar(BITS, b, yerr=se, marker="o", capsize=4, label=name, color=f"C{i}")
    if "midpoint" not in name:
        ax2.errorbar(BITS, b - bpc_ref, yerr=se, marker="o", capsize=4, label=name, color=f"C{i}")
ax.axhline(bpc_ref, color="k", ls="--", label=f"float ReLU^2 ({bpc_ref:.3f})")
ax.set_yscale("log")
ax.set_xlabel("ADC bits")
ax.set_ylabel("held-out bits per character")
ax.set_title("shipped model, ReLU^2 by an analog NL-ADC")
ax.legend(fontsize=8)
ax2.axhline(0, color="k", ls="--")
ax2.set_yscale("symlog", linthresh=1e-2)
ax2.set_xlabel("ADC bits")
ax2.set_ylabel("bpc - float ReLU^2 bpc")
ax2.set_title("zoom: the code-0 decode and the linear ADC (paired s.e.)")
ax2.legend(fontsize=8)
savefig(fig, "model_bits")
print(f"notebook runtime {time.time() - T0:.1f} s")

# %% [markdown]
# Reading the figure: with the golden midpoint decode every negative gate (about half
# of them) becomes +1/2 LSB instead of 0, a bias that dominates at low resolution;
# decoding code 0 as 0 removes it. The NL-ADC's levels are uniform in the *output*, so
# for the convex ReLU^2 its thresholds sqrt(k LSB) are sparse near zero, where most
# gate values lie -- unlike sigmoid/tanh, where the NL-ADC places its thresholds where
# f is steep. A linear ADC + digital square therefore does at least as well here at low
# bit widths. Device noise (one sampled device per layer) moves the loss by amounts of
# the order of the paired standard error at 5 bits and above; calibration matters most
# for the high-noise devices of section 2.

# %% [markdown]
# ## 4. Through the accelerator
# The ACT command's NL-ADC kinds (`golden/isa.py` ActKind; the engine `hw/ops/act.py`
# with the ramp-counter twin `hw/nl_adc.py`): the host writes each layer's threshold
# table into accelerator memory (`golden.nl_adc.ActADC`: ideal, or a device sampled per
# layer with its static errors, with or without calibration), and every window runs as
# the accelerator's command stream (`host.adc_study.accelerator_bpc`, golden backend,
# bit-identical to the RTL). Two differences from section 3: the whole integer datapath
# (attention, norms, head) is on, and the ADC's full scale is the *row's* amax -- the
# engine converts the gate's 16-bit row-quantized value, which its pass 1 computes anyway
# -- instead of a fixed per-layer gain; and a table holds only a device's static errors
# (read noise and comparator offsets are per conversion, not in a digital table). The
# linear variant is the same mid-rise ramp ADC as section 3's.

# %%
from host import adc_study  # noqa: E402

acc_wins = wins[:ACCEL_WINDOWS]
t = time.time()
accel = {k: [] for k in adc_study.VARIANTS}
for bits in BITS:
    for name, setting in adc_study.variants(bits, SEED).items():
        accel[name].append(adc_study.accelerator_bpc(model, acc_wins, setting)[0])
    print(f"accelerator, {bits} bit: " + ", ".join(f"{k}: {v[-1]:.4f}" for k, v in accel.items()))
accel_base = adc_study.accelerator_bpc(model, acc_wins)[0]
print(f"accelerator without ADC: {accel_base:.4f} bpc ({time.time() - t:.1f} s)")
# the integer forward with the same option gives the same figure: same logits, bit for bit
point = adc_study.variants(BITS[0], SEED)["NL-ADC device + calibration"]
gm_point = adc_study.golden_bpc(gmodel.GoldenModel(model, "integer", act_adc=point), acc_wins)[0]
assert gm_point == accel["NL-ADC device + calibration"][0], (gm_point, accel)

fig, ax = plt.subplots(figsize=(8, 4.5))
pairs = (
    ("NL-ADC ideal, code 0 -> 0", "NL-ADC ideal, code 0 -> 0"),
    ("NL-ADC device, code 0 -> 0", "NL-ADC device, code 0 -> 0"),
    ("NL-ADC device + calibration, code 0 -> 0", "NL-ADC device + calibration"),
    ("linear ADC + digital square", "linear ADC + digital square"),
)
for i, (mine, theirs) in enumerate(pairs):
    ax.plot(BITS, [r[0] for r in results[mine]], "--", color=f"C{i + 1}", marker="o", alpha=0.6)
    ax.plot(BITS, accel[theirs], "-", color=f"C{i + 1}", marker="s", label=theirs)
ax.axhline(accel_base, color="k", ls="-", lw=0.8, label=f"accelerator, no ADC ({accel_base:.3f})")
ax.axhline(bpc_ref, color="k", ls="--", lw=0.8, label=f"float ReLU^2 ({bpc_ref:.3f})")
ax.set_xlabel("ADC bits")
ax.set_ylabel("held-out bits per character")
ax.set_title("solid: the accelerator's ACT kinds (command stream); dashed: section 3 (float)")
ax.legend(fontsize=7)
savefig(fig, "accelerator_bits")
print(f"notebook runtime {time.time() - T0:.1f} s")

# %% [markdown]
# Reading it: on the accelerator the ADC's full scale follows each token's gate range, so
# every variant comes much closer to the no-ADC datapath at 3-4 bits than section 3's
# fixed-gain conversions; the linear ADC + digital square stays ahead of the NL-ADC there
# (its levels are dense near 0, where most gate values lie), and from 5 bits on all
# variants are within a few thousandths of a bit of the datapath without ADC.
# `python -m host.adc_study` prints the full 3-8 bit table and the SiLU model's study
# (README, "The NL-ADC on the accelerator").
