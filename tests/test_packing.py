"""golden.packing: round trips, bit layouts checked independently, transformers HF layout."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from transformers.integrations import bitnet as hf

from golden import packing as P
from golden import tlmm as T
from golden.config import DEFAULT

# eager body of transformers' @torch.compile unpack_weights
HF_UNPACK = hf.unpack_weights._torchdynamo_orig_callable


def ternary(shape):
    return hnp.arrays(np.int8, shape, elements=st.integers(-1, 1))


@st.composite
def ternary_matrix(draw, n_multiple=1, max_n=12, max_k=40):
    n = draw(st.integers(1, max_n)) * n_multiple
    k = draw(st.integers(1, max_k))
    return draw(ternary((n, k)))


ALL_CODE_CFGS = [
    replace(DEFAULT.tlmm, group=g, table=t) for g in (2, 3, 4) for t in ("full", "mirrored")
]


# --------------------------------------------------------------------------- HF 2-bit
def test_hf_matches_transformers(rng):
    for _ in range(20):
        n = 4 * int(rng.integers(1, 16))
        k = int(rng.integers(1, 50))
        w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
        theirs = hf.pack_weights(torch.from_numpy(w.copy())).numpy()  # it mutates its input
        packed = P.pack_hf(w)
        assert packed.dtype == np.uint8 and packed.shape == (n // 4, k)
        assert np.array_equal(packed, theirs)
        assert np.array_equal(
            P.unpack_hf(packed), HF_UNPACK(torch.from_numpy(packed), torch.int8).numpy()
        )


def test_hf_layout_bits(rng):
    w = rng.integers(-1, 2, size=(8, 3)).astype(np.int8)
    packed = P.pack_hf(w)
    for r, k, i in itertools.product(range(2), range(3), range(4)):
        assert (int(packed[r, k]) >> (2 * i)) & 3 == w[r + i * 2, k] + 1


@settings(max_examples=60, deadline=None)
@given(ternary_matrix(n_multiple=4))
def test_hf_round_trip(w):
    assert np.array_equal(P.unpack_hf(P.pack_hf(w)), w)


# --------------------------------------------------------------------------- group codes / TL2
def _row_stream(packed_row: np.ndarray) -> int:
    return int.from_bytes(packed_row.tobytes(), "little")


def test_tl2_bit_layout(rng):
    # independent decode: code j = stream bits [5j, 5j+5); bits [3:0] index, bit 4 sign;
    # weights of index v are the balanced-ternary digits of v (w_0 least significant)
    n, k = 6, 31
    w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    packed = P.pack_tl2(w)
    groups = -(-k // 3)
    assert packed.shape == (n, -(-groups * 5 // 8))
    digits_of = {}
    for ws in itertools.product((-1, 0, 1), repeat=3):
        v = ws[0] + 3 * ws[1] + 9 * ws[2]
        if v >= 0:
            digits_of[v] = ws
    assert len(digits_of) == 14
    wp = np.pad(w, ((0, 0), (0, 3 * groups - k)))
    for row in range(n):
        stream = _row_stream(packed[row])
        assert stream >> (5 * groups) == 0  # zero fill after the last code
        for j in range(groups):
            code = (stream >> (5 * j)) & 31
            index, sign = code & 15, code >> 4
            assert index <= 13 and not (sign and index == 0)
            ws = np.array(digits_of[index]) * (-1 if sign else 1)
            assert np.array_equal(ws, wp[row, 3 * j : 3 * j + 3])


def test_tl2_is_tlmm_mirrored_code(rng):
    w = rng.integers(-1, 2, size=(5, 100)).astype(np.int8)
    assert P.TL2.group == 3 and P.TL2.table == "mirrored" and P.TL2.code_bits == 5
    index, sign = T.encode_weights(w, P.TL2)
    packed = P.pack_tl2(w)
    for row in range(w.shape[0]):
        stream = _row_stream(packed[row])
        codes = [(stream >> (5 * j)) & 31 for j in range(index.shape[1])]
        assert codes == T.join_codes(index, sign, P.TL2)[row].tolist()
        assert [c & 15 for c in codes] == index[row].tolist()
        assert [c >> 4 for c in codes] == sign[row].tolist()
    # and the TLMM engine fed from the packed image computes the matmul
    codes = np.array(
        [
            [(_row_stream(packed[r]) >> (5 * j)) & 31 for j in range(index.shape[1])]
            for r in range(w.shape[0])
        ],
        dtype=np.uint8,
    )
    x = rng.integers(-128, 128, size=(3, 100)).astype(np.int8)
    y = T.lookup_accumulate(T.build_tables(x, P.TL2), *T.split_codes(codes, P.TL2), P.TL2)
    assert np.array_equal(y, x.astype(np.int64) @ w.astype(np.int64).T)


@pytest.mark.parametrize("cfg", ALL_CODE_CFGS, ids=lambda c: f"G{c.group}-{c.table}")
@settings(max_examples=25, deadline=None)
@given(w=ternary_matrix())
def test_codes_round_trip(cfg, w):
    packed = P.pack_codes(w, cfg)
    groups = -(-w.shape[1] // cfg.group)
    assert packed.shape == (w.shape[0], -(-groups * cfg.code_bits // 8))
    assert np.array_equal(P.unpack_codes(packed, w.shape[1], cfg), w)


@settings(max_examples=60, deadline=None)
@given(ternary_matrix())
def test_tl2_round_trip(w):
    assert np.array_equal(P.unpack_tl2(P.pack_tl2(w), w.shape[1]), w)


# --------------------------------------------------------------------------- base-3
def test_base3_layout(rng):
    w = rng.integers(-1, 2, size=(4, 13)).astype(np.int8)
    packed = P.pack_base3(w)
    assert packed.shape == (4, 3)
    wp = np.pad(w, ((0, 0), (0, 2)))
    for n, j in itertools.product(range(4), range(3)):
        assert int(packed[n, j]) == sum((int(wp[n, 5 * j + i]) + 1) * 3**i for i in range(5))


@settings(max_examples=60, deadline=None)
@given(ternary_matrix())
def test_base3_round_trip(w):
    assert np.array_equal(P.unpack_base3(P.pack_base3(w), w.shape[1]), w)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "pack", [P.pack_hf, P.pack_tl2, P.pack_base3, lambda w: P.pack_codes(w, DEFAULT.tlmm)]
)
def test_pack_rejects(pack):
    good = np.zeros((4, 6), dtype=np.int8)
    with pytest.raises(ValueError, match="w_t.*int8"):
        pack(good.astype(np.int16))
    with pytest.raises(ValueError, match="w_t.*int8"):
        pack(good.astype(np.float32))
    with pytest.raises(ValueError, match="w_t"):
        pack(good[0])
    with pytest.raises(ValueError, match="w_t"):
        pack(good[None])
    bad = good.copy()
    bad[1, 2] = 2
    with pytest.raises(ValueError, match="w_t.*ternary"):
        pack(bad)


def test_unpack_rejects():
    with pytest.raises(ValueError, match="w_t.*multiple of 4"):
        P.pack_hf(np.zeros((6, 3), dtype=np.int8))
    with pytest.raises(ValueError, match="packed.*code 3"):
        P.unpack_hf(np.array([[0b11]], dtype=np.uint8))
    with pytest.raises(ValueError, match="packed.*uint8"):
        P.unpack_hf(np.zeros((1, 2), dtype=np.int8))
    with pytest.raises(ValueError, match="packed"):
        P.unpack_base3(np.array([[243]], dtype=np.uint8), 5)
    with pytest.raises(ValueError, match="packed.*padding"):
        P.unpack_base3(np.array([[2 * 3**4]], dtype=np.uint8), 4)  # weight 4 is +1 (pad)
    with pytest.raises(ValueError, match="packed"):
        P.unpack_base3(np.zeros((1, 2), dtype=np.uint8), 5)  # k needs 1 byte
    with pytest.raises(ValueError, match="k"):
        P.unpack_tl2(np.zeros((1, 1), dtype=np.uint8), 0)
    w = np.zeros((1, 3), dtype=np.int8)
    packed = P.pack_tl2(w)  # one 5-bit code in 1 byte
    with pytest.raises(ValueError, match="packed.*index"):
        P.unpack_tl2(packed | np.uint8(14), 3)  # index 14 > 13
    with pytest.raises(ValueError, match="packed.*sign"):
        P.unpack_tl2(packed | np.uint8(16), 3)  # sign on the zero group
    with pytest.raises(ValueError, match="packed.*padding bits"):
        P.unpack_tl2(packed | np.uint8(32), 3)
    with pytest.raises(ValueError, match="packed.*padding weights"):
        P.unpack_tl2(P.pack_tl2(np.ones((1, 3), dtype=np.int8)), 2)  # weight 2 is +1 (pad)
    with pytest.raises(ValueError, match="packed"):
        P.unpack_tl2(np.zeros((1, 2), dtype=np.uint8), 3)
