"""golden.tlmm equals a plain integer matmul; tables, codes and widths checked by brute force."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from golden import packing as P
from golden import tlmm as T
from golden.config import DEFAULT, TLMMConfig

CFGS = [replace(DEFAULT.tlmm, group=g, table=t) for g in (2, 3, 4) for t in ("full", "mirrored")]
IDS = [f"G{c.group}-{c.table}" for c in CFGS]
LO, HI = -(1 << (DEFAULT.tlmm.act_bits - 1)), (1 << (DEFAULT.tlmm.act_bits - 1)) - 1


def matmul64(x, w):
    return np.asarray(x, dtype=np.int64) @ np.asarray(w, dtype=np.int64).T


@st.composite
def operands(draw):
    m = draw(st.integers(1, 10))  # both lookup strategies (M < 8, M >= 8)
    k = draw(st.integers(1, 30))
    n = draw(st.integers(1, 6))
    x = draw(hnp.arrays(np.int8, (m, k), elements=st.integers(LO, HI)))
    w = draw(hnp.arrays(np.int8, (n, k), elements=st.integers(-1, 1)))
    return x, w


@pytest.mark.parametrize("cfg", CFGS, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(xw=operands())
def test_tlmm_equals_matmul(cfg, xw):
    x, w = xw
    y = T.tlmm(x, w, cfg)
    assert y.dtype == np.int32 and y.shape == (x.shape[0], w.shape[0])
    assert np.array_equal(y, matmul64(x, w))


@pytest.mark.parametrize("cfg", CFGS, ids=IDS)
def test_tlmm_random_larger(cfg, rng):
    for m in (1, 9):
        k = int(rng.integers(900, 1100))
        x = rng.integers(LO, HI + 1, size=(m, k)).astype(np.int8)
        w = rng.integers(-1, 2, size=(48, k)).astype(np.int8)
        assert np.array_equal(T.tlmm(x, w, cfg), matmul64(x, w))


@pytest.mark.parametrize("cfg", CFGS, ids=IDS)
@pytest.mark.parametrize("m", [2, 8])
def test_tlmm_extremes_k8192(cfg, m):
    k = 8192
    for xv, wv in ((HI, 1), (LO, -1), (LO, 1), (0, 1), (HI, 0)):
        x = np.full((m, k), xv, dtype=np.int8)
        w = np.full((4, k), wv, dtype=np.int8)
        y = T.tlmm(x, w, cfg)
        assert np.all(y == k * xv * wv)
        assert np.array_equal(y, matmul64(x, w))


def test_max_k_boundary_small_accumulator():
    cfg = replace(DEFAULT.tlmm, acc_bits=16)
    k = cfg.max_k()
    assert k == ((1 << 15) - 1) // (1 << 7)
    x = np.full((1, k), LO, dtype=np.int8)
    w = np.full((2, k), -1, dtype=np.int8)
    y = T.tlmm(x, w, cfg)
    assert y[0, 0] == k * (1 << 7) <= (1 << 15) - 1
    with pytest.raises(ValueError, match="K"):
        T.tlmm(np.zeros((1, k + 1), dtype=np.int8), np.zeros((2, k + 1), dtype=np.int8), cfg)
    # the lookup stage checks the data bound itself
    tables = T.build_tables(np.full((1, 2 * k), LO, dtype=np.int8), DEFAULT.tlmm)
    index, _ = T.encode_weights(np.full((2, 2 * k), -1, dtype=np.int8), DEFAULT.tlmm)
    with pytest.raises(ValueError, match="tables.*overflow"):
        T.lookup_accumulate(tables, index, None, cfg)


def test_default_max_k_guards_int32():
    cfg = DEFAULT.tlmm
    assert cfg.max_k() * (1 << (cfg.act_bits - 1)) <= (1 << (cfg.acc_bits - 1)) - 1
    assert (cfg.max_k() + 1) * (1 << (cfg.act_bits - 1)) > (1 << (cfg.acc_bits - 1)) - 1
    too_long = cfg.max_k() + 1
    x = np.broadcast_to(np.int8(0), (1, too_long))
    with pytest.raises(ValueError, match="K"):
        T.tlmm(x, np.broadcast_to(np.int8(0), (1, too_long)), cfg)
    with pytest.raises(ValueError, match="K"):
        T.build_tables(x, cfg)


# --------------------------------------------------------------------------- tables
@pytest.mark.parametrize("cfg", CFGS, ids=IDS)
def test_table_contents_brute_force(cfg, rng):
    g = cfg.group
    k = 4 * g + 1  # last group padded
    x = rng.integers(LO, HI + 1, size=(3, k)).astype(np.int8)
    tables = T.build_tables(x, cfg)
    groups = -(-k // g)
    assert tables.shape == (3, groups, cfg.entries)
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, groups * g - k)))
    seen = set()
    for ws in itertools.product((-1, 0, 1), repeat=g):
        full_index = sum((wi + 1) * 3**i for i, wi in enumerate(ws))
        v = sum(wi * 3**i for i, wi in enumerate(ws))
        nz = [wi for wi in ws if wi]
        canonical = not nz or nz[-1] > 0  # leading (most significant) nonzero positive
        assert canonical == (v >= 0)
        if cfg.table == "full":
            index = full_index
        elif canonical:
            index = v
        else:
            continue
        seen.add(index)
        for m, j in itertools.product(range(3), range(groups)):
            assert tables[m, j, index] == sum(wi * int(xp[m, j * g + i]) for i, wi in enumerate(ws))
    assert seen == set(range(cfg.entries))
    if cfg.table == "mirrored":
        assert not tables[:, :, 0].any()  # entry 0 = all-zero group


@pytest.mark.parametrize("group", [2, 3, 4])
def test_entry_bits_tight(group):
    cfg = replace(DEFAULT.tlmm, group=group)
    x = np.full((1, group), LO, dtype=np.int8)
    tables = T.build_tables(x, cfg)
    top = group * (1 << (cfg.act_bits - 1))
    assert tables.max() == top and tables.min() == -top
    assert top <= (1 << (cfg.entry_bits - 1)) - 1  # fits
    assert top > (1 << (cfg.entry_bits - 2)) - 1  # one bit fewer would not
    assert TLMMConfig(group=3).entry_bits == 10  # TeLLMe v2's 10-bit entries


def test_mirrored_table_is_upper_half_of_full(rng):
    for g in (2, 3, 4):
        x = rng.integers(LO, HI + 1, size=(2, 3 * g)).astype(np.int8)
        full = T.build_tables(x, replace(DEFAULT.tlmm, group=g, table="full"))
        mirr = T.build_tables(x, replace(DEFAULT.tlmm, group=g, table="mirrored"))
        c = (3**g - 1) // 2
        assert np.array_equal(mirr, full[:, :, c:])
        assert np.array_equal(full[:, :, :c][:, :, ::-1], -full[:, :, c + 1 :])


# --------------------------------------------------------------------------- codes
@pytest.mark.parametrize("cfg", CFGS, ids=IDS)
def test_encode_decode_round_trip(cfg, rng):
    for k in (1, cfg.group, 2 * cfg.group + 1, 50):
        w = rng.integers(-1, 2, size=(7, k)).astype(np.int8)
        index, sign = T.encode_weights(w, cfg)
        assert index.shape == (7, -(-k // cfg.group)) and int(index.max()) < cfg.entries
        assert (sign is None) == (cfg.table == "full")
        assert np.array_equal(T.decode_weights(index, sign, k, cfg), w)
        codes = T.join_codes(index, sign, cfg)
        assert int(codes.max()) < 1 << cfg.code_bits
        i2, s2 = T.split_codes(codes, cfg)
        assert np.array_equal(i2, index) and (s2 is None or np.array_equal(s2, sign))


def test_tl2_code_widths():
    assert P.TL2.index_bits == 4 and P.TL2.code_bits == 5 and P.TL2.entries == 14
    assert DEFAULT.tlmm.entries == 27 and DEFAULT.tlmm.code_bits == 5


def test_encode_matches_packing_tl2(rng):
    k = 64
    w = rng.integers(-1, 2, size=(9, k)).astype(np.int8)
    index, sign = T.encode_weights(w, P.TL2)
    packed = P.pack_tl2(w)
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : 5 * index.shape[1]]
    codes = bits.reshape(9, -1, 5) @ (1 << np.arange(5))
    assert np.array_equal(codes & 15, index) and np.array_equal(codes >> 4, sign)
    assert np.array_equal(P.unpack_tl2(packed, k), T.decode_weights(index, sign, k, P.TL2))


def test_lookup_applies_sign(rng):
    cfg = P.TL2
    x = rng.integers(LO, HI + 1, size=(2, 3)).astype(np.int8)
    tables = T.build_tables(x, cfg)
    index = np.array([[5]], dtype=np.uint8)
    y_pos = T.lookup_accumulate(tables, index, np.array([[0]], dtype=np.uint8), cfg)
    y_neg = T.lookup_accumulate(tables, index, np.array([[1]], dtype=np.uint8), cfg)
    assert np.array_equal(y_pos[:, 0], tables[:, 0, 5]) and np.array_equal(y_neg, -y_pos)


# --------------------------------------------------------------------------- errors
def test_rejects_bad_input():
    cfg = DEFAULT.tlmm
    x = np.zeros((2, 6), dtype=np.int8)
    w = np.zeros((3, 6), dtype=np.int8)
    with pytest.raises(ValueError, match="x_q"):
        T.tlmm(x.astype(np.float32), w)
    with pytest.raises(ValueError, match="x_q"):
        T.tlmm(x[0], w)
    with pytest.raises(ValueError, match="x_q"):
        T.tlmm(np.full((1, 6), 200, dtype=np.int16), w)
    with pytest.raises(ValueError, match="w_t"):
        T.tlmm(x, np.full((3, 6), 2, dtype=np.int8))
    with pytest.raises(ValueError, match="w_t"):
        T.tlmm(x, np.zeros((3, 5), dtype=np.int8))
    tables = T.build_tables(x, cfg)
    index, _ = T.encode_weights(w, cfg)
    with pytest.raises(ValueError, match="sign"):
        T.lookup_accumulate(tables, index, np.zeros_like(index), cfg)
    with pytest.raises(ValueError, match="sign"):
        T.lookup_accumulate(T.build_tables(x, P.TL2), index % 14, None, P.TL2)
    with pytest.raises(ValueError, match="index"):
        T.lookup_accumulate(tables, np.full_like(index, cfg.entries), None, cfg)
    with pytest.raises(ValueError, match="index"):
        T.lookup_accumulate(tables, index[:, :1], None, cfg)
    with pytest.raises(ValueError, match="tables"):
        T.lookup_accumulate(tables[:, :, :5], index, None, cfg)
    with pytest.raises(ValueError, match="tables"):
        T.lookup_accumulate(np.full_like(tables, 600), index, None, cfg)
    with pytest.raises(ValueError, match="k"):
        T.decode_weights(index, None, 100, cfg)
    with pytest.raises(ValueError, match="group"):
        TLMMConfig(group=5)


def test_error_report():
    rows = T.error_report()
    assert len(rows) == 1
    assert rows[0]["bound"] == float(T.TLMM_ERROR_BOUND) == 0.0
    assert rows[0]["measured"] <= rows[0]["bound"]
