"""golden/softmax.py: exp unit, online softmax (vectorized == sequential), masks, bounds."""

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golden import softmax as sm
from golden.config import DEFAULT, SoftmaxConfig

CFG = DEFAULT.softmax
LO, HI = -(1 << (CFG.in_bits - 1)), (1 << (CFG.in_bits - 1)) - 1


def exp_spec(z: int, cfg: SoftmaxConfig = CFG) -> tuple[int, int]:
    """exp_fx for one Python int, from the docstring."""
    tf, lb, ib, e = cfg.t_frac_bits, cfg.exp_lut_bits, cfg.exp_interp_bits, cfg.exp_frac_bits
    l2e = math.floor(math.log2(math.e) * 2**cfg.log2e_frac_bits + 0.5)
    d = -z * l2e
    n, f = d >> tf, d & ((1 << tf) - 1)
    a = f >> (tf - lb)
    w = (f >> (tf - lb - ib)) & ((1 << ib) - 1)
    t0 = math.floor(2.0 ** (e - a / 2**lb) + 0.5)
    t1 = math.floor(2.0 ** (e - (a + 1) / 2**lb) + 0.5)
    return t0 - (((t0 - t1) * w + (1 << (ib - 1))) >> ib), n


def probs(p: np.ndarray, cfg: SoftmaxConfig = CFG) -> np.ndarray:
    return p.astype(np.float64) * 2.0**-cfg.out_bits


# --------------------------------------------------------------------------- exp
def test_exp_every_input_within_bound():
    err = sm.exp_rel_error(CFG)
    assert err <= sm.EXP_REL_ERR < sm.IBERT_EXP_REL_ERR


def test_exp_unit_properties():
    mant, n = sm.exp_fx(np.array([0]), CFG)
    assert (int(mant[0]), int(n[0])) == (1 << CFG.exp_frac_bits, 0)  # exp(0) = 1
    d = np.arange(0, 1 << 22, 37, dtype=np.int64) << (CFG.t_frac_bits - 22)
    mant, n = sm.exp2_neg_fx(d, CFG)
    e = CFG.exp_frac_bits
    assert mant.min() >= 1 << (e - 1) and mant.max() <= 1 << e
    assert np.all(np.diff(mant[n == 0]) <= 0)  # monotonic
    lut = sm.exp_lut(CFG)
    assert (
        lut.shape == ((1 << CFG.exp_lut_bits) + 1,) and lut[0] == 1 << e and lut[-1] == 1 << (e - 1)
    )
    assert np.all(np.diff(lut) < 0) and np.max(-np.diff(lut)) < 1 << 9  # 9-bit slopes


def test_exp_matches_spec_twin(rng):
    z = np.r_[0, -1, -(1 << CFG.in_bits) + 1, rng.integers(-(1 << CFG.in_bits) + 1, 1, size=300)]
    mant, n = sm.exp_fx(z.astype(np.int64), CFG)
    for i, v in enumerate(z):
        assert (int(mant[i]), int(n[i])) == exp_spec(int(v)), v


def test_exp_random_sample_relative_error(rng):
    z = rng.integers(-(1 << CFG.in_bits) + 1, 1, size=5000).astype(np.int64)
    exact = np.exp(z * 2.0**-CFG.in_frac_bits)
    ok = exact > 0
    assert np.max(np.abs(sm.exp_fx_float(z, CFG)[ok] / exact[ok] - 1)) <= sm.EXP_REL_ERR


# --------------------------------------------------------------------------- vectorized == online
def adversarial_rows(rng, n: int = 40) -> np.ndarray:
    rows = [
        np.linspace(LO, HI, n),  # max changes at every element
        np.linspace(HI, LO, n),  # max never changes
        np.full(n, 1234),  # ties
        np.r_[np.full(n // 2, LO), np.full(n - n // 2, HI)],  # one jump far beyond sum_bits
        np.tile([LO, HI], n // 2),
        np.cumsum(rng.integers(0, 400, size=n)) + LO,  # slow climb, many small rescales
        rng.integers(LO, HI + 1, size=n),
        rng.integers(-300, 300, size=n),
    ]
    return np.clip(np.array(rows), LO, HI).astype(np.int16)


def test_vectorized_equals_sequential(rng):
    x = np.concatenate([adversarial_rows(rng), sm.random_logits(rng, 32, 40, CFG)])
    mask = rng.random(x.shape) < 0.7
    mask[0] = False  # fully masked row
    mask[1, :-1] = False  # only the last element
    for kw in ({}, {"mask": mask}):
        np.testing.assert_array_equal(
            sm.softmax_fx(x, CFG, **kw), sm.softmax_online_seq(x, CFG, **kw)
        )
    xc = x[:40].reshape(1, 40, 40)  # (heads, n_q, n_k)
    np.testing.assert_array_equal(
        sm.softmax_fx(xc, CFG, causal=True), sm.softmax_online_seq(xc, CFG, causal=True)
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(LO, HI), min_size=1, max_size=24),
    st.lists(st.booleans(), min_size=24, max_size=24),
)
def test_vectorized_equals_sequential_hypothesis(row, keep):
    x = np.array([row], dtype=np.int16)
    mask = np.array([keep[: len(row)]])
    np.testing.assert_array_equal(sm.softmax_fx(x, CFG), sm.softmax_online_seq(x, CFG))
    np.testing.assert_array_equal(
        sm.softmax_fx(x, CFG, mask=mask), sm.softmax_online_seq(x, CFG, mask=mask)
    )


def test_vectorized_equals_sequential_other_config(rng):
    cfg = replace(CFG, sum_bits=30, sum_frac_bits=18, exp_interp_bits=0, out_bits=8)
    x = np.concatenate([adversarial_rows(rng), sm.random_logits(rng, 16, 40, cfg)])
    np.testing.assert_array_equal(sm.softmax_fx(x, cfg), sm.softmax_online_seq(x, cfg))


# --------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000, sm.PROB_BOUND_MAX_LEN])
def test_probabilities_within_bound(rng, n):
    x = sm.random_logits(rng, 64 if n <= 64 else 8, n, CFG)
    assert sm.prob_abs_error(x, CFG) <= sm.PROB_ABS_ERR
    p = probs(sm.softmax_fx(x, CFG))
    # the row sum is 1 up to the per-element rounding and the bound
    assert np.all(np.abs(p.sum(-1) - 1) <= n * (2.0 ** -(CFG.out_bits + 1) + sm.PROB_ABS_ERR))


def test_adversarial_pairs_within_bound():
    z = np.arange(0, 1 << 12)
    for off in range(-200 * 256, 120 * 256, 4000):
        x = np.stack([np.full_like(z, off), off - z], -1).clip(LO, HI).astype(np.int16)
        assert sm.prob_abs_error(x, CFG) <= sm.PROB_ABS_ERR


def test_few_large_among_many_small(rng):
    n = 512
    x = rng.integers(LO, LO + 4000, size=(16, n))
    k = rng.integers(1, 6, size=16)
    for r in range(16):
        x[r, : k[r]] = rng.integers(0, 2000, size=k[r])
        x[r, k[r] :] = x[r, 0] - rng.integers(3 * 256, 12 * 256, size=n - k[r])
        rng.shuffle(x[r])
    assert sm.prob_abs_error(x.clip(LO, HI).astype(np.int16), CFG) <= sm.PROB_ABS_ERR


def test_causal_and_masked(rng):
    n = 48
    x = sm.random_logits(rng, n, n, CFG).reshape(1, n, n)
    assert sm.prob_abs_error(x, CFG, causal=True) <= sm.PROB_ABS_ERR
    p = sm.softmax_fx(x, CFG, causal=True)[0]
    assert not np.any(np.triu(p, 1))  # future keys get 0
    assert p[0, 0] == (1 << CFG.out_bits) - 1  # one visible key: saturated 1
    # KV-cache shape: 3 new queries over 10 keys see keys up to 7, 8, 9
    m = sm.causal_mask(3, 10)
    assert m.sum(1).tolist() == [8, 9, 10]
    # a masked element is skipped: same bits as the row with it removed
    row = x[0, -1]
    keep = rng.random(n) < 0.5
    keep[0] = True
    masked = sm.softmax_fx(row[None], CFG, mask=keep[None])[0]
    compact = sm.softmax_fx(row[keep][None], CFG)[0]
    np.testing.assert_array_equal(masked[keep], compact)
    assert not masked[~keep].any()
    assert not sm.softmax_fx(row[None], CFG, mask=np.zeros((1, n), dtype=bool)).any()


def test_reference_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 33)) * 4
    mask = rng.random((5, 33)) < 0.6
    mask[:, 0] = True
    ref = torch.softmax(torch.from_numpy(np.where(mask, x, -np.inf)), -1).numpy()
    np.testing.assert_allclose(sm.softmax_ref(x, mask), ref, rtol=1e-12, atol=1e-15)


def test_bad_inputs():
    x4 = np.zeros((1, 4), dtype=np.int16)
    for match, fn, args, kw in (
        ("^x: expected a signed integer", sm.softmax_fx, [np.zeros((1, 4), np.float32)], {}),
        ("^x: values outside", sm.softmax_fx, [np.array([[HI + 1]], dtype=np.int32)], {}),
        ("^x: row length", sm.softmax_fx, [np.zeros((1, CFG.max_len + 1), np.int16)], {}),
        ("^mask: expected bool", sm.softmax_fx, [x4], {"mask": np.ones((1, 4), np.int8)}),
        ("^mask: shape", sm.softmax_fx, [x4], {"mask": np.ones((1, 5), bool)}),
        ("^z: values outside", sm.exp_fx, [np.array([1])], {}),
        ("^d: expected values >= 0", sm.exp2_neg_fx, [np.array([-1])], {}),
        ("recip_frac_bits", SoftmaxConfig, [], {"recip_frac_bits": 2}),
    ):
        with pytest.raises(ValueError, match=match):
            fn(*args, **kw)


def test_error_report_rows():
    rows = sm.error_report()
    assert [r["bound"] for r in rows] == [sm.EXP_REL_ERR, sm.PROB_ABS_ERR, sm.VEC_VS_SEQ_LSB]
    assert all(r["measured"] <= r["bound"] for r in rows)
