"""The FFN activation through the ACT engine's NL-ADC kinds, measured through the
accelerator's command stream: ``python -m host.adc_study``.

1. The shipped model (ReLU^2) with each ADC variant at 3-8 bits: held-out bits per
   character, every window run as the command stream of ``host.runtime.Runtime`` on a
   device backend (default golden: the golden executor, bit-identical to the RTL, see
   tests/test_device_sim.py), against the same model without ADC (the integer datapath)
   and the float reference. Variants (``VARIANTS``, ``golden.nl_adc.ActADC``): the ideal
   NL-ADC (ReLU^2 thresholds, code 0 decoded as 0), a device per layer sampled from
   ``ADCDeviceConfig.rram_typical`` (static errors folded into the table), the same
   calibrated with the bias cells, and a linear ramp ADC followed by a digital square.
2. A SiLU model (random weights, the shape of the device tests, transformers-compatible
   config) with sigma(gate) by the NL-ADC, ideal and from a sampled device: random
   weights make bits per character meaningless, so the figure is the mean KL divergence
   (bits) of its next-token distributions from the float reference's, beside the integer
   datapath's own (the SiLU LUT), on random token windows.

The held-out windows are those of ``host.eval`` (the model's context, non-overlapping,
from the start of the held-out split); each window starts from an empty KV cache.
``--windows`` sets how many (default 4). Bad arguments: one ``error: ...`` line, status 2.
"""

from __future__ import annotations

import math
import os
import sys
import time
from functools import partial

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from golden.config import ADCDeviceConfig  # noqa: E402
from golden.nl_adc import ActADC  # noqa: E402
from host.usage import Parser, UsageError, flag_errors, run_main  # noqa: E402

BITS = (3, 4, 5, 6, 7, 8)
DEVICE_SEED = 0


def variants(bits: int, seed: int = DEVICE_SEED) -> dict:
    """The relu2 variants at ``bits`` bits: name -> ActADC."""
    dev = ADCDeviceConfig.rram_typical(seed=seed)
    return {
        "NL-ADC ideal, code 0 -> 0": ActADC("nl", bits),
        "NL-ADC device, code 0 -> 0": ActADC("nl", bits, dev),
        "NL-ADC device + calibration": ActADC("nl", bits, dev, calibrate=True),
        "linear ADC + digital square": ActADC("linear", bits),
    }


VARIANTS = tuple(variants(6))


def log2_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))) / math.log(2.0)


def window_bits(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Bits of each target under the logits [T, V]."""
    return -np.take_along_axis(log2_softmax(logits), targets[:, None], axis=-1)[:, 0]


def accelerator_bpc(model, wins, act_adc=None, backend: str = "golden", **kw):
    """(bits per char over all predictions, per-window mean) of ``model`` compiled with
    ``act_adc`` and run window by window as the accelerator's command stream on
    ``backend`` (one stream per window: max_chunk = the context)."""
    from host.runtime import make_runtime

    ctx = model.config.max_position_embeddings
    rt = make_runtime(model, backend, act_adc=act_adc, max_chunk=ctx, **kw)
    try:
        bits = []
        for x, y in wins:
            rt.reset()
            bits.append(window_bits(rt.forward(x), y))
    finally:
        rt.close()
    return float(np.concatenate(bits).mean()), np.array([b.mean() for b in bits])


def golden_bpc(gm, wins):
    """The same figure from a golden model's forward (``GoldenModel``: the float reference,
    or the integer forward with or without ``act_adc``)."""
    bits = [window_bits(gm.forward(x), y) for x, y in wins]
    return float(np.concatenate(bits).mean()), np.array([b.mean() for b in bits])


def silu_model(seed: int = 0):
    """A random SiLU BitNet (the device tests' shape, vocab 65, context 64)."""
    from golden.model import random_model
    from golden.modelspec import ModelConfig

    mc = ModelConfig(
        vocab_size=65,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=64,
        hidden_act="silu",
    )
    return random_model(mc, seed)


def kl_bits(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(p || q) in bits over the rows (p: the reference)."""
    lp, lq = log2_softmax(p_logits), log2_softmax(q_logits)
    return float(np.mean(np.sum(np.exp2(lp) * (lp - lq), axis=-1)))


def silu_study(bits_list=BITS, n_windows: int = 4, seed: int = 0, backend: str = "golden"):
    """{setting: {bits: KL bits}} of the SiLU model through the command stream vs the
    float reference; "integer (SiLU LUT)" is the datapath without ADC."""
    from golden.model import GoldenModel
    from host.runtime import make_runtime

    model = silu_model(seed)
    ctx = model.config.max_position_embeddings
    rng = np.random.default_rng(seed)
    toks = [rng.integers(0, model.config.vocab_size, ctx) for _ in range(n_windows)]
    ref = GoldenModel(model, "reference")
    want = np.concatenate([ref.forward(t) for t in toks])

    def run(adc):
        rt = make_runtime(model, backend, act_adc=adc, max_chunk=ctx)
        out = []
        for t in toks:
            rt.reset()
            out.append(rt.forward(t))
        rt.close()
        return kl_bits(want, np.concatenate(out))

    res = {"integer (SiLU LUT)": {b: run(None) for b in bits_list[:1]}}
    dev = ADCDeviceConfig.rram_typical(seed=DEVICE_SEED)
    for name, make in (
        ("sigma by NL-ADC, ideal", lambda b: ActADC("nl", b)),
        ("sigma by NL-ADC, device", lambda b: ActADC("nl", b, dev)),
        ("sigma by NL-ADC, device + calibration", lambda b: ActADC("nl", b, dev, True)),
    ):
        res[name] = {b: run(make(b)) for b in bits_list}
    return res


def run(argv=None) -> int:
    from host.data import DEFAULT_MODEL

    p = Parser(prog="python -m host.adc_study", description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help="checkpoint directory")
    p.add_argument("--windows", type=int, default=4, help="held-out windows per figure")
    p.add_argument("--bits", type=int, nargs="+", default=list(BITS), help="ADC resolutions")
    p.add_argument("--backend", default="golden", help="device backend of the streams")
    p.add_argument("--no-silu", action="store_true", help="skip the SiLU model's study")
    a = p.parse_args(argv)
    if a.windows < 1:
        raise UsageError(f"--windows: expected >= 1, got {a.windows}")
    from golden.config import DEFAULT

    top = DEFAULT.adc.act_max_bits
    bad = [b for b in a.bits if not 1 <= b <= top]
    if bad:
        raise UsageError(f"--bits: expected values in 1..{top}, got {bad[0]}")
    from golden.model import GoldenModel
    from host import eval as heval
    from host.data import DEFAULT_CORPUS, heldout_text
    from host.modelfile import open_model

    with flag_errors("-m/--model"):
        source = open_model(a.model)
        model = source.load()
    ctx = model.config.max_position_embeddings
    text = heldout_text(DEFAULT_CORPUS, a.windows * ctx + 1)
    wins = heval.windows(np.asarray(source.tokenizer.encode(text), dtype=np.int64), ctx)
    n_pred = sum(len(w[1]) for w in wins)
    print(
        f"model {a.model} ({model.config.hidden_act}), {len(wins)} held-out windows of {ctx} "
        f"({n_pred} predictions); command streams on the {a.backend} backend"
    )
    t0 = time.perf_counter()
    ref, _ = golden_bpc(GoldenModel(model, "reference"), wins)
    base, _ = accelerator_bpc(model, wins, None, a.backend)
    print(f"float reference: {ref:.4f} bits/char; accelerator, no ADC: {base:.4f} bits/char")
    print(f"{'bits':>4}  " + "  ".join(f"{v:>28}" for v in VARIANTS))
    for b in a.bits:
        row = [accelerator_bpc(model, wins, adc, a.backend)[0] for adc in variants(b).values()]
        print(f"{b:>4}  " + "  ".join(f"{x:>28.4f}" for x in row), flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if not a.no_silu:
        print(
            "\nSiLU model (random weights, 2 layers 64/172, context 64), mean KL to the float "
            "reference in bits, 4 random windows:"
        )
        res = silu_study(a.bits, backend=a.backend)
        for name, by_bits in res.items():
            if name.startswith("integer"):
                vals = f"{next(iter(by_bits.values())):.4f}"
            else:
                vals = ", ".join(f"{b} bit {v:.4f}" for b, v in by_bits.items())
            print(f"  {name:<40} {vals}")
    return 0


main = partial(run_main, run)

if __name__ == "__main__":
    sys.exit(main())
