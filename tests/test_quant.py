"""golden.quant against transformers BitNet (reference mode) and exact rational rounding
(hardware quantizer)."""

import numpy as np
import pytest
import torch
from transformers.integrations import bitnet as hf

from golden import quant as Q
from golden.config import DEFAULT, QuantConfig

CFG = DEFAULT.quant
# eager bodies of transformers' @torch.compile functions (inductor reorders the float32
# mean; compiling also costs ~20 s per shape)
HF_WEIGHT_QUANT = hf.WeightQuant.forward._torchdynamo_orig_callable
HF_ACT_QUANT = hf.ActQuant.forward._torchdynamo_orig_callable
HF_ACTIVATION_QUANT = hf.BitLinear.activation_quant._torchdynamo_orig_callable


def _torch_weight_scale(w: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(w).float()
    return (1.0 / t.abs().mean().clamp(min=CFG.weight_eps)).numpy()


# --------------------------------------------------------------------------- reference
def test_weight_quant_equals_transformers_when_sum_is_exact(rng):
    # dyadic weights with |sum| < 2^24 ulp: every float32 summation order is exact, so
    # the whole fake-quant path must match bit for bit
    for _ in range(40):
        shape = (int(rng.integers(1, 64)), int(rng.integers(1, 128)))
        e = int(rng.integers(0, 20))
        w = (rng.integers(-1024, 1025, size=shape) * 2.0**-e).astype(np.float32)
        ours_t, ours_s = Q.weight_quant(w)
        theirs = HF_WEIGHT_QUANT(None, torch.from_numpy(w)).numpy()
        assert ours_s == _torch_weight_scale(w)
        assert ours_s.dtype == np.float32
        assert np.array_equal(Q.weight_fake_quant(w), theirs)
        assert np.array_equal(ours_t.astype(np.float32) / ours_s, theirs)


def test_ternarize_equals_transformers_given_same_scale(rng):
    worst = 0.0
    for shape in ((1, 1), (1, 7), (3, 333), (125, 8), (97, 131), (1 << 8, 1 << 9)):
        for sigma in (1e-4, 0.05, 3.0):
            w = (rng.standard_normal(shape) * sigma).astype(np.float32)
            t_scale = _torch_weight_scale(w)
            theirs = HF_WEIGHT_QUANT(None, torch.from_numpy(w)).numpy()
            ours = Q.ternarize(w, t_scale).astype(np.float32) / t_scale
            assert np.array_equal(ours, theirs)
            _, ours_s = Q.weight_quant(w)
            worst = max(worst, abs(float(ours_s) / float(t_scale) - 1.0))
    assert worst <= Q.WEIGHT_SCALE_REL_TOL


def test_weight_quant_ties_round_half_even():
    # mean|w| = 2 -> scale 0.5: w*scale = 0.5, -0.5, 1.5, -1.5 -> rint 0, -0, 2, -2 -> clamp
    w = np.array([[1.0, -1.0, 3.0, -3.0]], dtype=np.float32)
    w_t, scale = Q.weight_quant(w)
    assert scale == np.float32(0.5)
    assert w_t.tolist() == [[0, 0, 1, -1]]
    assert np.array_equal(
        Q.weight_fake_quant(w), HF_WEIGHT_QUANT(None, torch.from_numpy(w)).numpy()
    )


def test_weight_quant_all_zero_uses_eps():
    w = np.zeros((4, 4), dtype=np.float32)
    w_t, scale = Q.weight_quant(w)
    assert scale == np.float32(1.0) / np.float32(CFG.weight_eps)
    assert not w_t.any()
    assert np.array_equal(
        Q.weight_fake_quant(w), HF_WEIGHT_QUANT(None, torch.from_numpy(w)).numpy()
    )


def test_weight_quant_float16_and_float64(rng):
    w16 = (rng.integers(-512, 513, size=(16, 32)) / 256).astype(np.float16)  # exact sum
    theirs = HF_WEIGHT_QUANT(None, torch.from_numpy(w16)).numpy()
    assert theirs.dtype == np.float16
    assert np.array_equal(Q.weight_fake_quant(w16), theirs)
    assert Q.weight_quant(w16)[1].dtype == np.float32
    w64 = rng.standard_normal((8, 8))
    w_t, s64 = Q.weight_quant(w64)
    assert s64.dtype == np.float64
    assert np.array_equal(w_t, np.clip(np.rint(w64 * (1.0 / np.mean(np.abs(w64)))), -1, 1))


def test_act_quant_equals_transformers(rng):
    for _ in range(20):
        rows, k = int(rng.integers(1, 16)), int(rng.integers(1, 300))
        x = (rng.standard_normal((rows, k)) * 10.0 ** rng.uniform(-6, 3, size=(rows, 1))).astype(
            np.float32
        )
        x[0] = 0.0  # all-zero row: eps clamp
        if rows > 1:
            x[1] *= np.float32(1e-7)  # max below eps
        tx = torch.from_numpy(x)
        x_q, scale = Q.act_quant(x)
        t_q, t_scale = HF_ACTIVATION_QUANT(None, tx)
        assert x_q.dtype == np.int8 and scale.shape == (rows, 1)
        assert np.array_equal(x_q, t_q.numpy())
        assert np.array_equal(scale, t_scale.numpy())
        assert np.array_equal(Q.act_fake_quant(x), HF_ACT_QUANT(None, tx).numpy())


def test_act_quant_float16_and_batch_dims(rng):
    x = rng.standard_normal((2, 3, 40)).astype(np.float16)
    assert np.array_equal(Q.act_fake_quant(x), HF_ACT_QUANT(None, torch.from_numpy(x)).numpy())
    x_q, scale = Q.act_quant(x)
    assert x_q.shape == (2, 3, 40) and scale.shape == (2, 3, 1)


@pytest.mark.parametrize(
    "bad, name",
    [
        (np.ones((2, 2), dtype=np.int32), "w"),
        (np.array([[np.nan, 1.0]], dtype=np.float32), "w"),
        (np.array([[np.inf]], dtype=np.float32), "w"),
        (np.zeros((0,), dtype=np.float32), "w"),
    ],
)
def test_weight_quant_rejects(bad, name):
    with pytest.raises(ValueError, match=name):
        Q.weight_quant(bad)


def test_reference_rejects_bad_input():
    with pytest.raises(ValueError, match="x"):
        Q.act_quant(np.ones((2, 2), dtype=np.int8))
    with pytest.raises(ValueError, match="x"):
        Q.act_quant(np.zeros((3, 0), dtype=np.float32))
    with pytest.raises(ValueError, match="scale"):
        Q.ternarize(np.ones(3, dtype=np.float32), -1.0)


# --------------------------------------------------------------------------- hardware
def _check_hw_exact(x, amax, x_q, cfg=CFG):
    """Independent checks of the stated bounds, in exact (object/int) arithmetic."""
    # int64 is exact here: |act_max*x| <= 2^38, frac*2^(F+1) <= 2^(33+F+1)
    x = np.asarray(x).astype(np.int64)
    amax = np.broadcast_to(np.asarray(amax), x.shape).astype(np.int64)
    x_q = np.asarray(x_q).astype(np.int64)
    f = cfg.recip_frac_bits
    num = cfg.act_max * x  # v = num / amax
    # x_q vs round_half_even(v): <= 1 LSB
    q, r = num // amax, num % amax
    rhe = q + ((2 * r > amax) | ((2 * r == amax) & (q % 2 == 1)))
    assert np.max(np.abs(x_q - rhe)) <= Q.HW_QUANT_BOUND_LSB
    # x_q == floor(v + 1/2) unless v + 1/2 lies within 2^-(F+1) of an integer
    twice = 2 * num + amax  # v + 1/2 = twice / (2 amax)
    frac = twice % (2 * amax)
    clear = (frac * 2 ** (f + 1) >= 2 * amax) & ((2 * amax - frac) * 2 ** (f + 1) > 2 * amax)
    half_up = twice // (2 * amax)
    assert np.all((x_q == half_up) | ~clear)
    assert np.max(np.abs(x_q)) <= cfg.act_max and np.min(x_q) >= -cfg.act_max
    return int(np.sum(x_q != rhe))


def test_hw_quant_exhaustive_small_amax():
    # every (x, amax) with 1 <= amax <= 1024, |x| <= amax
    a = np.arange(1, 1025)
    count = 2 * a + 1
    amax = np.repeat(a, count)
    x = np.arange(amax.size) - np.repeat(np.cumsum(count) - count, count) - amax
    assert np.all(np.abs(x) <= amax)
    x_q = Q.hw_quant_apply(x, amax)
    recip, shift = Q.hw_reciprocal(amax)
    # pre-rounding error < 2^-(F+1), exact integers: |x*(recip*amax - 127*2^R)| * 2^(F+1) < amax*2^R
    err = np.abs(x * (recip * amax - (CFG.act_max << shift)))
    assert np.all(err * 2 ** (CFG.recip_frac_bits + 1) < amax * (1 << shift))
    assert np.all(recip < 1 << CFG.recip_bits) and np.all(
        recip >= CFG.act_max << CFG.recip_frac_bits
    )
    _check_hw_exact(x, amax, x_q)


def test_hw_quant_all_bit_lengths(rng):
    hi = (1 << (CFG.hw_in_bits - 1)) - 1
    rows = [rng.integers(-(1 << b) + 1, 1 << b, size=(4, 64)) for b in range(1, CFG.hw_in_bits)]
    rows.append(np.full((1, 64), -hi - 1))
    edge = rng.integers(-hi, hi + 1, size=(1, 64))
    edge[0, :2] = hi, -hi
    rows.append(edge)
    x = np.concatenate(rows).astype(np.int32)
    x_q, amax = Q.hw_act_quant(x)
    assert x_q.dtype == np.int8 and amax.shape == (x.shape[0], 1)
    assert np.array_equal(amax[:, 0], np.max(np.abs(x.astype(np.int64)), axis=1))
    _check_hw_exact(x, amax, x_q)
    recip, shift = Q.hw_reciprocal(amax)
    assert np.all(recip < 1 << CFG.recip_bits) and np.all(
        recip >= CFG.act_max << CFG.recip_frac_bits
    )
    prod = np.abs(x.astype(object) * recip.astype(object)) + (1 << (shift.astype(object) - 1))
    assert max(int(p) for p in prod.ravel()) < 1 << (CFG.hw_product_bits - 1)
    # amax rows map to +-act_max exactly
    full = np.argmax(np.abs(x.astype(np.int64)), axis=1)
    sgn = np.sign(x[np.arange(x.shape[0]), full])
    assert np.array_equal(x_q[np.arange(x.shape[0]), full], sgn * CFG.act_max)


def test_hw_quant_zero_row_and_dequant(rng):
    x = np.zeros((3, 16), dtype=np.int32)
    x[1] = rng.integers(-1000, 1001, size=16)
    x[2] = rng.integers(-(1 << 30), 1 << 30, size=16)
    x_q, amax = Q.hw_act_quant(x)
    assert amax[0, 0] == 0 and not x_q[0].any()
    assert Q.hw_reciprocal(np.array([0])) == (np.array([0]), np.array([0]))
    back = Q.hw_act_dequant(x_q, amax)
    tol = amax / CFG.act_max * (0.5 + Q.hw_pre_round_bound())
    assert np.all(np.abs(back - x) <= tol)


def test_hw_quant_mismatch_rate_is_small(rng):
    x = rng.integers(-(1 << 28), 1 << 28, size=(64, 512))
    x_q, amax = Q.hw_act_quant(x)
    mism = _check_hw_exact(x, amax, x_q)
    # off-by-one only within 2^-(F+1) of a rounding boundary: rate ~ 2^-F
    assert mism / x.size < 4 * 2.0**-CFG.recip_frac_bits


def test_hw_quant_other_precision(rng):
    cfg = QuantConfig(recip_frac_bits=2)
    x = rng.integers(-5000, 5001, size=(32, 100))
    x_q, amax = Q.hw_act_quant(x, cfg)
    _check_hw_exact(x, amax, x_q, cfg)


def test_hw_quant_rejects():
    with pytest.raises(ValueError, match="x"):
        Q.hw_act_quant(np.ones((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="x"):
        Q.hw_act_quant(np.array([[1 << 31]], dtype=np.int64))
    with pytest.raises(ValueError, match="x"):
        Q.hw_quant_apply(np.array([5]), np.array([4]))
    with pytest.raises(ValueError, match="amax"):
        Q.hw_reciprocal(np.array([-1]))
    with pytest.raises(ValueError, match="recip_frac_bits"):
        QuantConfig(recip_frac_bits=30)


def test_error_report():
    rows = Q.error_report()
    assert len(rows) == 5
    bounds = [0.0, Q.WEIGHT_SCALE_REL_TOL, 0.0, Q.hw_pre_round_bound(), float(Q.HW_QUANT_BOUND_LSB)]
    for row, bound in zip(rows, bounds, strict=False):
        assert set(row) == {"block", "quantity", "domain", "bound", "measured"}
        assert row["bound"] == bound
        assert 0 <= row["measured"] <= row["bound"]
