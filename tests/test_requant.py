"""golden.requant against exact rational arithmetic and its stated error bounds."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golden import requant as R
from golden.config import DEFAULT, RequantConfig

CFG = DEFAULT.requant
ACC_LO, ACC_HI = -(1 << (CFG.in_bits - 1)), (1 << (CFG.in_bits - 1)) - 1


def ref(acc: int, mult: int, shift: int) -> int:
    """saturate(floor(acc*mult/2^shift + 1/2)) (shift 0: no half), in Fractions."""
    v = Fraction(acc * mult, 2**shift) + (Fraction(1, 2) if shift else 0)
    return min(max(math.floor(v), CFG.out_min), CFG.out_max)


@settings(max_examples=400, deadline=None)
@given(
    acc=st.integers(ACC_LO, ACC_HI),
    mult=st.integers(0, CFG.mult_max),
    shift=st.integers(0, CFG.shift_max),
)
def test_requantize_equals_rational(acc, mult, shift):
    y = R.requantize(np.array([acc], dtype=np.int32), mult, shift)
    assert y.dtype == np.int8
    assert int(y[0]) == ref(acc, mult, shift) == R.requantize_exact(acc, mult, shift)


def test_requantize_broadcast_per_row(rng):
    acc = rng.integers(ACC_LO, ACC_HI + 1, size=(5, 7)).astype(np.int32)
    mult = rng.integers(1 << (CFG.mult_bits - 1), CFG.mult_max + 1, size=(5, 1))
    shift = rng.integers(20, 40, size=(5, 1))
    y = R.requantize(acc, mult, shift)
    for i, j in np.ndindex(acc.shape):
        assert y[i, j] == ref(int(acc[i, j]), int(mult[i, 0]), int(shift[i, 0]))


def test_round_half_up_ties():
    # hand-derived: 0.5 -> 1, -0.5 -> 0, 1.5 -> 2, -1.5 -> -1, 2.5 -> 3
    acc = np.array([1, -1, 3, -3, 5], dtype=np.int32)
    assert R.requantize(acc, 1, 1).tolist() == [1, 0, 2, -1, 3]


def test_shift_zero_has_no_rounding_constant():
    acc = np.array([-3, -1, 0, 1, 3, 42, 43, -43], dtype=np.int32)
    assert R.requantize(acc, 3, 0).tolist() == [-9, -3, 0, 3, 9, 126, 127, -128]


def test_saturation_both_ends():
    acc = np.array([ACC_HI, ACC_LO, 127, 128, -128, -129], dtype=np.int32)
    assert R.requantize(acc, CFG.mult_max, 0).tolist() == [127, -128, 127, 127, -128, -128]
    # exactly at the edges with a real shift: 127.49.. -> 127, 127.5 -> 128 -> 127
    assert R.requantize(np.array([254, 255, -256, -257, -258], dtype=np.int32), 1, 1).tolist() == [
        127,
        127,
        -128,
        -128,
        -128,
    ]
    big = np.array([ACC_HI, ACC_LO], dtype=np.int32)
    assert R.requantize(big, CFG.mult_max, CFG.shift_max).tolist() == [0, 0]


def test_rejects_out_of_range():
    acc = np.zeros(3, dtype=np.int32)
    for bad in (-1, CFG.mult_max + 1):
        with pytest.raises(ValueError, match="mult"):
            R.requantize(acc, bad, 4)
    for bad in (-1, CFG.shift_max + 1):
        with pytest.raises(ValueError, match="shift"):
            R.requantize(acc, 1, bad)
    with pytest.raises(ValueError, match="mult"):
        R.requantize(acc, 1.5, 4)
    with pytest.raises(ValueError, match="acc"):
        R.requantize(acc.astype(np.float32), 1, 4)
    with pytest.raises(ValueError, match="acc"):
        R.requantize(np.array([ACC_HI + 1], dtype=np.int64), 1, 4)
    with pytest.raises(ValueError, match="mult/shift"):
        R.requantize(np.zeros((2, 3), dtype=np.int32), np.ones(2, dtype=np.int64), 4)
    with pytest.raises(ValueError, match="mult_bits"):
        RequantConfig(mult_bits=40)


# --------------------------------------------------------------------------- multiplier
def test_quantize_multiplier_normalized_optimal(rng):
    lo_exp = CFG.mult_bits - 1 - CFG.shift_max
    scales = np.exp2(rng.uniform(lo_exp, CFG.mult_bits - 1, size=500))
    for scale in [float(s) for s in scales] + [1.0, 0.5, 2.0**-20, 1 / 3, 2.0**lo_exp]:
        mult, shift = R.quantize_multiplier(scale)
        assert 1 << (CFG.mult_bits - 1) <= mult <= CFG.mult_max and 0 <= shift <= CFG.shift_max
        exact = Fraction(scale)
        got = Fraction(mult, 2**shift)
        assert abs(got - exact) / exact <= Fraction(R.multiplier_rel_bound())
        # no other multiplier at this shift is closer
        for other in (mult - 1, mult + 1):
            assert abs(Fraction(other, 2**shift) - exact) >= abs(got - exact)
    assert R.quantize_multiplier(0.5) == (1 << (CFG.mult_bits - 1), CFG.mult_bits)


def test_quantize_multiplier_rounds_up_into_next_octave():
    # just below 1.0: frac*2^16 rounds to 2^16 -> renormalized to (2^15, shift-1), exact 1.0
    mult, shift = R.quantize_multiplier(1.0 - 2.0**-30)
    assert (mult, shift) == (1 << (CFG.mult_bits - 1), CFG.mult_bits - 1)


def test_quantize_multiplier_rejects():
    for bad in (
        0.0,
        -1.0,
        float("nan"),
        float("inf"),
        float(2**CFG.mult_bits),
        2.0 ** (CFG.mult_bits - 2 - CFG.shift_max),
        "x",
    ):
        with pytest.raises(ValueError, match="scale"):
            R.quantize_multiplier(bad)


def test_requant_vs_real_scale(rng):
    for _ in range(100):
        scale = float(np.exp2(rng.uniform(-28, -1)))
        mult, shift = R.quantize_multiplier(scale)
        reach = int(2**CFG.out_bits / scale)
        acc = np.concatenate(
            [
                rng.integers(ACC_LO, ACC_HI + 1, size=20),
                rng.integers(max(ACC_LO, -reach), min(ACC_HI, reach) + 1, size=40),
                [ACC_LO, ACC_HI, 0],
            ]
        )
        y = R.requantize(acc, mult, shift)
        s = Fraction(scale)
        for a, v in zip(acc.tolist(), y.tolist(), strict=False):
            exact = a * s
            rounded = min(max(math.floor(exact + Fraction(1, 2)), CFG.out_min), CFG.out_max)
            assert abs(v - rounded) <= R.REQUANT_LSB_BOUND
            if CFG.out_min <= exact <= CFG.out_max:
                assert abs(v - exact) <= Fraction(R.requant_abs_bound())


def test_error_report():
    rows = R.error_report()
    assert [r["bound"] for r in rows] == [
        float(R.REQUANT_EXACT_BOUND),
        R.multiplier_rel_bound(),
        float(R.REQUANT_LSB_BOUND),
        R.requant_abs_bound(),
    ]
    for row in rows:
        assert set(row) == {"block", "quantity", "domain", "bound", "measured"}
        assert 0 <= row["measured"] <= row["bound"]
