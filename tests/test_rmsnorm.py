"""golden/rmsnorm.py: rsqrt unit and fused RMSNorm + INT8 quantization vs float and vs an
independent Python-int reading of the module docstring."""

import math
from dataclasses import replace

import numpy as np
import pytest

from golden import rmsnorm as rn
from golden.config import DEFAULT, NormConfig
from golden.quant import hw_act_quant

CFG = DEFAULT.norm
QCFG = DEFAULT.quant


# --------------------------------------------------------------------------- spec twin
def rsqrt_spec(s: int, cfg: NormConfig = CFG) -> tuple[int, int]:
    """rsqrt of one Python int as the docstring states it."""
    f, lb = cfg.rsqrt_frac_bits, cfg.rsqrt_lut_bits
    e = s.bit_length() - 1
    k = e >> 1
    m = s >> (2 * k - f) if 2 * k >= f else s << (f - 2 * k)
    frac_bits = s - (1 << e)  # fraction of s / 2^e, e bits
    top = frac_bits >> (e - (lb - 1)) if e >= lb - 1 else frac_bits << (lb - 1 - e)
    y = int(rn.rsqrt_lut(cfg)[((e & 1) << (lb - 1)) | top])
    for _ in range(cfg.newton_steps):
        t = (y * y + (1 << (f - 1))) >> f
        u = (m * t + (1 << (f - 1))) >> f
        y = (y * ((3 << f) - u) + (1 << f)) >> (f + 1)
    return y, k


def rmsnorm_spec_row(x: list[int], gamma: list[int], cfg: NormConfig = CFG):
    """One row of the fused block in Python ints, from the docstring."""
    d = len(x)
    b = cfg.scale_mant_bits
    s = sum(v * v for v in x) + math.floor(d * cfg.eps * 2.0 ** (2 * cfg.in_frac_bits) + 0.5)
    p = [a * g for a, g in zip(x, gamma, strict=False)]
    amax_p = max(abs(v) for v in p)
    sh_p = max(0, amax_p.bit_length() - (QCFG.hw_in_bits - 1))
    p_fit = np.array([v >> sh_p for v in p], dtype=np.int64)
    x_q, amax = hw_act_quant(p_fit[None, :], QCFG)
    amax = int(amax[0, 0])
    if amax == 0:
        return x_q[0], 0, 0
    y, k = rsqrt_spec(s, cfg)
    frac, ex = math.frexp(math.sqrt(d) / QCFG.act_max)
    c_mant = math.floor(frac * 2**b + 0.5)
    if c_mant == 1 << b:
        c_mant, ex = c_mant >> 1, ex + 1
    c_exp = ex - b
    a_e = max(amax.bit_length() - b, 0)
    prod = (amax >> a_e) * c_mant * y
    r = prod.bit_length() - b
    mant = (prod + (1 << (r - 1))) >> r
    if mant == 1 << b:
        mant, r = mant >> 1, r + 1
    shift = cfg.rsqrt_frac_bits + k + cfg.gamma_frac_bits - sh_p - a_e - c_exp - r
    return x_q[0], mant, shift


# --------------------------------------------------------------------------- rsqrt
def test_rsqrt_dense_sweep_within_bound():
    s = rn.rsqrt_sweep(CFG)
    assert rn.rsqrt_rel_error(s, CFG) <= rn.RSQRT_REL_ERR
    y, _ = rn.rsqrt_fx(s, CFG)
    f = CFG.rsqrt_frac_bits
    assert y.max() < 1 << f and y.min() >= (1 << (f - 1)) - 1  # 16 bits suffice


def test_rsqrt_random_sample_within_bound(rng):
    s = np.unique(np.exp2(rng.uniform(0, 62.9, size=20000)).astype(np.int64))
    s = s[s >= 1]
    assert rn.rsqrt_rel_error(s, CFG) <= rn.RSQRT_REL_ERR


def test_rsqrt_matches_spec_twin(rng):
    vals = [1, 2, 3, 4, 5, 255, 256, 257, (1 << 62) - 1, 1 << 62, (1 << 63) - 1]
    vals += [int(v) for v in np.exp2(rng.uniform(0, 62.9, size=400)).astype(np.int64)]
    y, k = rn.rsqrt_fx(np.array(vals, dtype=np.int64), CFG)
    for i, v in enumerate(vals):
        assert (int(y[i]), int(k[i])) == rsqrt_spec(v), v


def test_rsqrt_seed_table_and_newton_steps():
    lut = rn.rsqrt_lut(CFG)
    lb, f = CFG.rsqrt_lut_bits, CFG.rsqrt_frac_bits
    assert lut.shape == (1 << lb,)
    half = 1 << (lb - 1)
    h = 1 / half
    e0 = (math.sqrt(1 + h) - 1) / (math.sqrt(1 + h) + 1)
    for addr, v in enumerate(lut):
        parity, j = divmod(addr, half)
        m0, m1 = (1 + j * h) * 2**parity, (1 + (j + 1) * h) * 2**parity
        lo_err = v / 2**f * math.sqrt(m0) - 1
        hi_err = v / 2**f * math.sqrt(m1) - 1
        # equal and opposite relative error at the segment ends, up to table rounding
        assert abs(lo_err + hi_err) <= 2 * 2.0**-f * math.sqrt(m1)
        assert max(abs(lo_err), abs(hi_err)) <= e0 + 2.0**-f
    s = rn.rsqrt_sweep(CFG)
    err0 = rn.rsqrt_rel_error(s, replace(CFG, newton_steps=0))
    err1 = rn.rsqrt_rel_error(s, CFG)
    err2 = rn.rsqrt_rel_error(s, replace(CFG, newton_steps=2))
    assert err0 <= e0 + 2.0**-f
    assert err1 <= 1.5 * e0**2 + 8 * 2.0 ** -(f + 1)  # the docstring budget
    assert err2 < err1 < err0


# --------------------------------------------------------------------------- the block
@pytest.mark.parametrize("dim", [1, 7, 256, 2560])
def test_random_rows_within_bounds(rng, dim):
    x, gamma = rn.random_rows(rng, 64 if dim < 2560 else 16, dim, CFG)
    scale_err, out_err = rn.output_errors(x, gamma, CFG, QCFG)
    assert scale_err <= rn.SCALE_REL_ERR
    assert out_err <= rn.OUT_ERR_LSB


def test_matches_spec_twin(rng):
    x, gamma = rn.random_rows(rng, 24, 96, CFG)
    x[0] = np.iinfo(np.int32).min  # sum of squares beyond int64
    x[1] = np.iinfo(np.int32).max
    x[2] = 0
    x[2, 5] = 1  # smallest nonzero row
    x[3] = rng.integers(-3, 4, size=96)
    x_q, mant, shift = rn.rmsnorm_quant(x, gamma, CFG, QCFG)
    for r in range(x.shape[0]):
        q, m, s = rmsnorm_spec_row([int(v) for v in x[r]], [int(g) for g in gamma])
        np.testing.assert_array_equal(x_q[r], q)
        assert (int(mant[r]), int(shift[r])) == (m, s), r


def test_extreme_rows_within_bounds():
    d = 256
    lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    gamma = np.full(d, np.iinfo(np.int16).min, dtype=np.int16)
    x = np.array(
        [
            np.full(d, lo),
            np.full(d, hi),
            np.r_[hi, np.zeros(d - 1)],
            np.r_[lo, np.ones(d - 1)],
            np.tile([lo, hi], d // 2),
            np.full(d, -1),
        ],
        dtype=np.int32,
    )
    for g in (gamma, np.full(d, 1, dtype=np.int16), np.full(d, 4096, dtype=np.int16)):
        scale_err, out_err = rn.output_errors(x, g, CFG, QCFG)
        assert scale_err <= rn.SCALE_REL_ERR and out_err <= rn.OUT_ERR_LSB
    x_q, mant, shift = rn.rmsnorm_quant(x, gamma, CFG, QCFG)
    assert x_q.dtype == np.int8 and x_q.min() >= -QCFG.act_max
    assert np.all(mant >= 1 << (CFG.scale_mant_bits - 1)) and np.all(
        mant < 1 << CFG.scale_mant_bits
    )


def test_zero_rows_give_zero_output():
    x = np.zeros((2, 8), dtype=np.int32)
    x[1] = 5
    gamma = np.zeros(8, dtype=np.int16)
    gamma[0] = 100
    x[1, 0] = 0  # x*gamma is all zero in row 1 too
    for cfg in (CFG, replace(CFG, eps=0.0)):
        x_q, mant, shift = rn.rmsnorm_quant(x, gamma, cfg, QCFG)
        assert not x_q.any() and not mant.any() and not shift.any()


def test_scale_invariance_without_eps(rng):
    cfg = replace(CFG, eps=0.0)
    x, gamma = rn.random_rows(rng, 32, 64, cfg)
    x = np.clip(x, -(1 << 29), (1 << 29) - 1).astype(np.int32)
    a = rn.rmsnorm_quant(x, gamma, cfg, QCFG)
    b = rn.rmsnorm_quant((x * 2).astype(np.int32), gamma, cfg, QCFG)
    for u, v in zip(a, b, strict=False):
        np.testing.assert_array_equal(u, v)


def test_batch_shape_and_dtypes(rng):
    x, gamma = rn.random_rows(rng, 12, 32, CFG)
    x_q, mant, shift = rn.rmsnorm_quant(x.reshape(3, 4, 32), gamma, CFG, QCFG)
    assert x_q.shape == (3, 4, 32) and mant.shape == (3, 4) and shift.shape == (3, 4)
    flat = rn.rmsnorm_quant(x, gamma, CFG, QCFG)
    np.testing.assert_array_equal(x_q.reshape(12, 32), flat[0])
    np.testing.assert_array_equal(mant.reshape(12), flat[1])


def test_norm_constants():
    for d in (1, 3, 64, 2560, 4096):
        eps_term, c_mant, c_exp = rn.norm_constants(d, CFG, QCFG)
        b = CFG.scale_mant_bits
        assert 1 << (b - 1) <= c_mant < 1 << b
        assert abs(c_mant * 2.0**c_exp / (math.sqrt(d) / QCFG.act_max) - 1) <= 2.0**-b
        assert abs(eps_term - d * CFG.eps * 2.0 ** (2 * CFG.in_frac_bits)) <= 0.5
    with pytest.raises(ValueError, match="dim"):
        rn.norm_constants(0)


def test_reference_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers.models.bitnet.modeling_bitnet import BitNetRMSNorm

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 48)) * 3
    g = rng.uniform(0.1, 2, size=48)
    norm = BitNetRMSNorm(48, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(g))
        ref = norm(torch.from_numpy(x)).numpy()
    # transformers computes the normalization in float32
    np.testing.assert_allclose(rn.rmsnorm_ref(x, g, 1e-5), ref, rtol=2e-6, atol=1e-7)


def test_bad_inputs():
    x = np.zeros((2, 4), dtype=np.int32)
    g = np.ones(4, dtype=np.int16)
    with pytest.raises(ValueError, match="^x: expected a signed integer"):
        rn.rmsnorm_quant(x.astype(np.float32), g)
    with pytest.raises(ValueError, match="^x: values outside"):
        rn.rmsnorm_quant(np.full((1, 4), 1 << 31, dtype=np.int64), g)
    with pytest.raises(ValueError, match="^gamma: expected shape"):
        rn.rmsnorm_quant(x, np.ones(5, dtype=np.int16))
    with pytest.raises(ValueError, match="^gamma: values outside"):
        rn.rmsnorm_quant(x, np.full(4, 1 << 15, dtype=np.int32))
    with pytest.raises(ValueError, match="^x: expected a non-empty"):
        rn.rmsnorm_quant(np.zeros((2, 0), dtype=np.int32), np.ones(0, dtype=np.int16))
    with pytest.raises(ValueError, match="^s: values must be"):
        rn.rsqrt_fx(np.array([0]))
    with pytest.raises(ValueError, match="newton_steps"):
        NormConfig(newton_steps=-1)


def test_error_report_rows():
    rows = rn.error_report()
    assert [r["bound"] for r in rows] == [rn.RSQRT_REL_ERR, rn.SCALE_REL_ERR, rn.OUT_ERR_LSB]
    assert all(r["measured"] <= r["bound"] for r in rows)
