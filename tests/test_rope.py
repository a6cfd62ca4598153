"""golden/rope.py: tables, rotate-half datapath vs float RoPE, transformers convention."""

import math
from dataclasses import replace

import numpy as np
import pytest

from golden import rope
from golden.config import DEFAULT, RopeConfig

CFG = DEFAULT.rope


def rope_spec(x: list[int], pos: int, bits: int, cfg: RopeConfig = CFG) -> list[int]:
    """One head vector in Python ints, from the docstring."""
    hd = len(x)
    h = hd // 2
    t = cfg.table_frac_bits
    ob = cfg.out_bits(bits)
    out = [0] * hd
    for i in range(h):
        ang = pos * cfg.theta ** (-(2 * i) / hd)
        c = math.floor(math.cos(ang) * 2**t + 0.5)
        s = math.floor(math.sin(ang) * 2**t + 0.5)
        for j, v in ((i, x[i] * c - x[i + h] * s), (i + h, x[i + h] * c + x[i] * s)):
            y = (v + (1 << (t - 1))) >> t
            out[j] = min(max(y, -(1 << (ob - 1))), (1 << (ob - 1)) - 1)
    return out


def test_tables():
    cos_q, sin_q = rope.rope_tables(64, CFG)
    assert cos_q.dtype == np.int16 and cos_q.shape == (CFG.max_pos, 32)
    assert np.all(cos_q[0] == 1 << CFG.table_frac_bits) and np.all(sin_q[0] == 0)
    assert rope.table_error(64, CFG) <= rope.TABLE_ERR
    assert rope.table_error(128, CFG) <= rope.TABLE_ERR
    with pytest.raises(ValueError):
        cos_q[0, 0] = 1  # read-only: shared with the RTL


def test_int8_sweep_within_bound():
    x, pos = rope.int8_sweep(64, CFG)
    err, ratio = rope.max_errors(x, pos, CFG)
    assert err <= rope.INT8_ERR_LSB
    assert ratio <= rope.ERR_RATIO


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_random_inputs_within_per_element_bound(rng, dtype):
    info = np.iinfo(dtype)
    hi = min(info.max, (1 << 30) - 1)  # int32: no saturation
    x = rng.integers(-hi, hi + 1, size=(3, 50, 64)).astype(dtype)
    x >>= rng.integers(0, 8 * np.dtype(dtype).itemsize - 1, size=(3, 50, 1)).astype(dtype)
    pos = rng.integers(0, CFG.max_pos, size=50)
    y = rope.rope_fx(x, pos, CFG)
    assert y.dtype == (np.int16 if dtype == np.int8 else np.int32)
    err = np.abs(y - rope.rope_ref(x, pos, CFG.theta))
    assert np.all(err <= rope.error_bound(x, CFG))
    if dtype == np.int8:
        assert err.max() <= rope.INT8_ERR_LSB


def test_matches_spec_twin_including_saturation(rng):
    lo, hi = -(1 << 31), (1 << 31) - 1
    cases = [
        (np.full(16, lo), 300),
        (np.full(16, hi), 1000),
        (np.r_[np.full(8, lo), np.full(8, hi)], 777),
    ]
    cases += [
        (rng.integers(lo, hi + 1, size=16), int(rng.integers(0, CFG.max_pos))) for _ in range(20)
    ]
    for x, pos in cases:
        y = rope.rope_fx(np.asarray(x, dtype=np.int32)[None], np.array([pos]), CFG)[0]
        assert [int(v) for v in y] == rope_spec([int(v) for v in x], pos, 32)
    x8 = rng.integers(-128, 128, size=(20, 8))
    pos8 = rng.integers(0, CFG.max_pos, size=20)
    y8 = rope.rope_fx(x8.astype(np.int8), pos8, CFG)
    for r in range(20):
        assert [int(v) for v in y8[r]] == rope_spec([int(v) for v in x8[r]], int(pos8[r]), 8)


def test_saturates_only_int32():
    x = np.full((1, 2), -(1 << 31), dtype=np.int32)
    pos = np.array([785])  # head_dim 2: angle 785 rad, cos - sin = 1.31
    y = rope.rope_fx(x, pos, CFG)
    exact = rope.rope_ref(x, pos, CFG.theta)
    assert np.max(np.abs(exact)) > 2**31
    assert y.min() >= -(1 << 31) and y.max() <= (1 << 31) - 1
    assert np.any(y == -(1 << 31)) or np.any(y == (1 << 31) - 1)


def test_positions_broadcast_over_heads(rng):
    x = rng.integers(-128, 128, size=(4, 10, 16)).astype(np.int8)
    pos = np.arange(5, 15)
    y = rope.rope_fx(x, pos, CFG)
    for h in range(4):
        np.testing.assert_array_equal(y[h], rope.rope_fx(x[h], pos, CFG))


def test_reference_matches_transformers_convention():
    torch = pytest.importorskip("torch")
    from transformers import BitNetConfig
    from transformers.models.bitnet import modeling_bitnet as mb

    rng = np.random.default_rng(0)
    hd, n = 32, 40
    q = rng.standard_normal((1, 2, n, hd))
    pos = np.arange(100, 100 + n)
    ang = pos[:, None] * rope.inv_freq(hd, CFG)[None, :]
    emb = np.concatenate([ang, ang], axis=-1)[None]
    cos, sin = torch.from_numpy(np.cos(emb)), torch.from_numpy(np.sin(emb))
    ref, _ = mb.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(q), cos, sin)
    np.testing.assert_allclose(rope.rope_ref(q, pos, CFG.theta), ref.numpy(), rtol=0, atol=1e-12)
    # frequencies: transformers' own rotary embedding (float32) agrees with our tables
    config = BitNetConfig(
        hidden_size=hd * 2,
        num_attention_heads=2,
        num_key_value_heads=2,
        rope_theta=CFG.theta,
        max_position_embeddings=256,
    )
    rot = mb.BitNetRotaryEmbedding(config)
    pos_ids = torch.arange(256)[None]
    t_cos, t_sin = rot(torch.zeros(1, dtype=torch.float32), pos_ids)
    cos_q, sin_q = rope.rope_tables(hd, CFG)
    scale = 2.0**-CFG.table_frac_bits
    h = hd // 2
    assert np.max(np.abs(t_cos[0, :, :h].numpy() - cos_q[:256] * scale)) < 2e-4
    assert np.max(np.abs(t_sin[0, :, h:].numpy() - sin_q[:256] * scale)) < 2e-4


def test_bad_inputs():
    x = np.zeros((2, 8), dtype=np.int8)
    with pytest.raises(ValueError, match="^x: expected int8"):
        rope.rope_fx(x.astype(np.float32), [0, 1])
    with pytest.raises(ValueError, match="^x: expected int8"):
        rope.rope_fx(x.astype(np.int64), [0, 1])
    with pytest.raises(ValueError, match="^head_dim"):
        rope.rope_fx(np.zeros((2, 7), dtype=np.int8), [0, 1])
    with pytest.raises(ValueError, match="^positions: values outside"):
        rope.rope_fx(x, [0, CFG.max_pos])
    with pytest.raises(ValueError, match="^positions: expected an integer"):
        rope.rope_fx(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="^positions: shape"):
        rope.rope_fx(x, [0, 1, 2])
    with pytest.raises(ValueError, match="table_frac_bits"):
        replace(CFG, table_frac_bits=15)


def test_error_report_rows():
    rows = rope.error_report()
    assert [r["bound"] for r in rows] == [rope.TABLE_ERR, rope.INT8_ERR_LSB, rope.ERR_RATIO]
    assert all(r["measured"] <= r["bound"] for r in rows)
