"""golden/activations.py: exact ReLU^2, GELU/SiLU = ReLU - delta(|x|) by interpolated LUT."""

import math
from dataclasses import replace

import numpy as np
import pytest

from golden import activations as act
from golden.config import DEFAULT, ActivationConfig

CFG = DEFAULT.activation


def delta_float(kind: str, a: float) -> float:
    if kind == "gelu":
        return a * 0.5 * math.erfc(a / math.sqrt(2))
    return a / (1 + math.exp(a))


def act_spec(x: int, kind: str, cfg: ActivationConfig = CFG) -> int:
    """One input in Python ints, from the docstring."""
    lb, rl, lf = cfg.lut_bits(kind), cfg.range_log2(kind), cfg.lut_frac_bits
    sg = cfg.in_frac_bits + rl - lb
    a = abs(x)
    i, w = a >> sg, a & ((1 << sg) - 1)
    if i >= 1 << lb:
        delta = 0
    else:
        h = 2.0 ** (rl - lb)
        t0 = math.floor(delta_float(kind, i * h) * 2**lf + 0.5)
        t1 = math.floor(delta_float(kind, (i + 1) * h) * 2**lf + 0.5)
        delta = t0 + ((((t1 - t0) * w) + (1 << (sg - 1))) >> sg if sg else 0)
    acc = (max(x, 0) << (lf - cfg.in_frac_bits)) - delta
    s = lf - cfg.out_frac_bits
    y = (acc + (1 << (s - 1))) >> s if s else acc
    return min(max(y, -(1 << (cfg.out_bits - 1))), (1 << (cfg.out_bits - 1)) - 1)


# --------------------------------------------------------------------------- ReLU^2
def test_relu2_exact(rng):
    x8 = np.arange(-128, 128, dtype=np.int8)
    y8 = act.relu2(x8)
    assert y8.dtype == np.int16
    assert y8.tolist() == [max(v, 0) ** 2 for v in range(-128, 128)]
    for dtype, out in ((np.int16, np.int32), (np.int32, np.int64)):
        info = np.iinfo(dtype)
        x = np.r_[info.min, info.max, -1, 0, 1, rng.integers(info.min, info.max, size=500)].astype(
            dtype
        )
        y = act.relu2(x)
        assert y.dtype == out
        assert [int(v) for v in y] == [max(int(v), 0) ** 2 for v in x]


def test_relu2_gated_exact(rng):
    g, u = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    y = act.relu2_gated(g.astype(np.int8), u.astype(np.int8))
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, np.maximum(g, 0) ** 2 * u)  # int64 numpy: exact here
    g16 = rng.integers(-(1 << 15), 1 << 15, size=300)
    u16 = rng.integers(-(1 << 15), 1 << 15, size=300)
    y16 = act.relu2_gated(g16.astype(np.int16), u16.astype(np.int16))
    assert y16.dtype == np.int64
    assert [int(v) for v in y16] == [
        max(int(a), 0) ** 2 * int(b) for a, b in zip(g16, u16, strict=False)
    ]


# --------------------------------------------------------------------------- GELU / SiLU
def test_decomposition_is_exact():
    torch = pytest.importorskip("torch")
    x = np.linspace(-20, 20, 4001)
    for kind, ref, tref in (
        ("gelu", act.gelu_ref, torch.nn.functional.gelu),
        ("silu", act.silu_ref, torch.nn.functional.silu),
    ):
        decomposed = np.maximum(x, 0) - act.delta_ref(kind, np.abs(x))
        np.testing.assert_allclose(decomposed, ref(x), rtol=0, atol=1e-14)
        np.testing.assert_allclose(ref(x), tref(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind,bound", [("gelu", act.GELU_ABS_ERR), ("silu", act.SILU_ABS_ERR)])
def test_every_input_within_bound(kind, bound):
    err = act.max_abs_error(kind, act.all_inputs(CFG), CFG)
    assert err <= bound < act.IBERT_GELU_ABS_ERR


@pytest.mark.parametrize("kind,bound", [("gelu", act.GELU_ABS_ERR), ("silu", act.SILU_ABS_ERR)])
def test_random_sample_within_bound(rng, kind, bound):
    x = rng.integers(-(1 << 15), 1 << 15, size=3000).astype(np.int16)
    x[:1000] >>= 10  # concentrate on |x| < 32
    assert act.max_abs_error(kind, x, CFG) <= bound


@pytest.mark.parametrize("kind", act.KINDS)
def test_matches_spec_twin(rng, kind):
    x = np.r_[
        -(1 << 15),
        (1 << 15) - 1,
        -1,
        0,
        1,
        rng.integers(-(1 << 15), 1 << 15, size=400),
        rng.integers(-(1 << 11), 1 << 11, size=400),
    ]
    y = act.act_fx(x.astype(np.int16), kind, CFG)
    assert y.dtype == np.int16
    assert [int(v) for v in y] == [act_spec(int(v), kind) for v in x]


@pytest.mark.parametrize("kind", act.KINDS)
def test_lut(kind):
    lut = act.delta_lut(kind, CFG)
    lb, rl = CFG.lut_bits(kind), CFG.range_log2(kind)
    assert lut.shape == ((1 << lb) + 1,) and lut.min() >= 0
    h = 2.0 ** (rl - lb)
    for i in range(0, len(lut), 7):
        assert lut[i] == math.floor(delta_float(kind, i * h) * 2**CFG.lut_frac_bits + 0.5)
    # the widths the docstring gives the RTL: 11-bit entries, 8-bit signed slopes
    assert lut.max() < 1 << 11 and np.all(np.abs(np.diff(lut)) < 1 << 7)
    # the tail beyond the table is below half an output LSB
    assert delta_float(kind, 2.0**rl) < 2.0 ** -(CFG.out_frac_bits + 1)


def test_wider_output_config():
    cfg = replace(CFG, out_bits=32, out_frac_bits=12)
    x = act.all_inputs(cfg)
    for kind in act.KINDS:
        assert act.max_abs_error(kind, x, cfg) < 1e-3
        y = act.act_fx(x[::97], kind, cfg)
        assert y.dtype == np.int32
        assert [int(v) for v in y] == [act_spec(int(v), kind, cfg) for v in x[::97]]


def test_bad_inputs():
    with pytest.raises(ValueError, match="^x: expected int8, int16 or int32"):
        act.relu2(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="^gate: expected int8 or int16"):
        act.relu2_gated(np.zeros(3, dtype=np.int32), np.zeros(3, dtype=np.int8))
    with pytest.raises(ValueError, match="^up: shape"):
        act.relu2_gated(np.zeros(3, dtype=np.int8), np.zeros(4, dtype=np.int8))
    with pytest.raises(ValueError, match="^x: expected a signed integer"):
        act.gelu_fx(np.zeros(3))
    with pytest.raises(ValueError, match="^x: values outside"):
        act.silu_fx(np.array([1 << 15], dtype=np.int32))
    with pytest.raises(ValueError, match="^kind"):
        act.act_fx(np.zeros(3, dtype=np.int16), "tanh")
    with pytest.raises(ValueError, match="gelu_range_log2"):
        ActivationConfig(gelu_lut_bits=12, gelu_range_log2=2)


def test_error_report_rows():
    rows = act.error_report()
    assert [r["bound"] for r in rows] == [act.GELU_ABS_ERR, act.SILU_ABS_ERR, act.RELU2_ABS_ERR]
    assert all(r["measured"] <= r["bound"] for r in rows)
