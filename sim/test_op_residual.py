"""RESIDUAL engine (hw/ops/residual.py) == the golden executor's RESIDUAL, bit for bit, in
Amaranth's simulator (sim/op_bench.check_op: random memory stalls and latencies, the
same ErrorCode, identical memory, no write before an argument error).

Data covers the numeric corners: int32 extremes and zeros in h and acc, outputs that
saturate both ways, zero and unnormalized scale records, scale shifts at the record's
extremes (requant right shifts beyond shift_max and left shifts that saturate), and
in-place operation (dst == h, dst == acc) under heavy stalls.
"""

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode
from golden.model import Scale, op_residual
from host.backends.golden import GoldenDevice
from hw.ops.residual import ResidualEngine, expected_cycles
from sim.op_bench import check_arg_errors, check_in_place, check_op, put

DP = design_point("kv260")
W = DP.dma_bytes
LANES = DP.residual_lanes
L = 2 * LANES  # elements per chunk (one h read, one acc read)
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
SH_MIN, SH_MAX = -(1 << (isa.SCALE_SHIFT_BITS - 1)), (1 << (isa.SCALE_SHIFT_BITS - 1)) - 1
MANT_MAX = (1 << isa.SCALE_MANT_BITS) - 1


def _int32(rng, shape):
    """Random int32 with a share of extremes, +-1 and zeros."""
    v = rng.integers(I32_MIN, I32_MAX + 1, size=shape, dtype=np.int64)
    small = rng.integers(-(1 << 20), 1 << 20, size=shape)
    corner = rng.choice([I32_MIN, I32_MAX, 0, -1, 1], size=shape)
    pick = rng.random(shape)
    return np.where(pick < 0.15, corner, np.where(pick < 0.6, small, v)).astype(np.int32)


def _row_scales(rng, rows):
    """Scale records of several kinds: typical, zero, unnormalized, extreme shifts."""
    kind = rng.integers(0, 5, size=rows)
    mant = np.where(
        kind == 1,
        0,
        np.where(
            kind == 2, rng.integers(1, 1 << 10, rows), rng.integers(1 << 15, MANT_MAX + 1, rows)
        ),
    )
    shift = np.where(
        kind == 3, rng.choice([SH_MIN, SH_MAX, -40, 90], rows), rng.integers(0, 40, rows)
    )
    shift = np.where(kind == 1, 0, shift)
    return mant, shift


def _cmd(gd, h, acc, mant, shift, c_mant, c_shift, dst=None):
    rows, dim = h.shape
    h_addr = put(gd, h)
    args = dict(
        h=h_addr,
        acc=put(gd, acc),
        src_scale=put(gd, isa.pack_scales(mant, shift)),
        rows=rows,
        dim=dim,
        c_mant=c_mant,
        c_shift=c_shift,
    )
    if dst == "h":
        args["dst"] = h_addr
    elif dst == "acc":
        args["dst"] = args["acc"]
    else:
        args["dst"] = put(gd, np.zeros_like(h), 4)  # often not beat-aligned
    return isa.command(Opcode.RESIDUAL, **args)


def _engine(lanes: int = LANES):
    return ResidualEngine(DEFAULT, W, lanes=lanes)


@pytest.mark.parametrize("stall", [0.0, 0.3, 0.6])
def test_random(rng, stall):
    for _ in range(3):
        rows = int(rng.integers(1, 4))
        dim = int(rng.choice([1, L - 1, L, L + 1, int(rng.integers(2, 3 * L))]))
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        h, acc = _int32(rng, (rows, dim)), _int32(rng, (rows, dim))
        mant, shift = _row_scales(rng, rows)
        c_mant = int(rng.choice([0, 1, MANT_MAX, int(rng.integers(1 << 15, MANT_MAX + 1))]))
        c_shift = int(rng.choice([SH_MIN, SH_MAX, 0, int(rng.integers(-20, 40))]))
        cmd = _cmd(gd, h, acc, mant, shift, c_mant, c_shift)
        res = check_op(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)), stall=stall)
        assert res["error"] == ErrorCode.NONE
        assert res["bytes_written"] == rows * dim * 4


def test_saturation_and_shift_corners(rng):
    """Rows built to saturate up and down, shift far right (>= shift_max) and left."""
    dim = L + 5
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    h = np.empty((5, dim), np.int32)
    acc = np.empty((5, dim), np.int32)
    h[0], acc[0] = I32_MAX - rng.integers(0, 100, dim), rng.integers(1 << 20, 1 << 30, dim)
    h[1], acc[1] = I32_MIN + rng.integers(0, 100, dim), -rng.integers(1 << 20, 1 << 30, dim)
    h[2:], acc[2:] = _int32(rng, (3, dim)), _int32(rng, (3, dim))
    # row 3: h = 0 and |acc| >= 2^10, so the saturated left-shifted delta is the output
    h[3] = 0
    acc[3] = rng.choice([-1, 1], dim) * rng.integers(1 << 10, 1 << 31, dim)
    mant = np.array([MANT_MAX, MANT_MAX, 1 << 15, MANT_MAX, 0])
    # row 2: shift - 16 far above shift_max (delta 0); row 3: far below 0 (left shift)
    shift = np.array([0, 0, 200, -100, 0])
    c_mant, c_shift = MANT_MAX, 0
    cmd = _cmd(gd, h, acc, mant, shift, c_mant, c_shift)
    want = op_residual(
        h, acc, Scale(mant, shift), Scale(np.int64(c_mant), np.int64(c_shift)), DEFAULT
    )
    # the data really reach the corners
    assert (want[0] == I32_MAX).all() and (want[1] == I32_MIN).all()
    assert (want[2] == h[2]).all() and (want[4] == h[4]).all()
    assert np.isin(want[3], [I32_MIN, I32_MAX]).all()
    res = check_op(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.3)
    assert res["error"] == ErrorCode.NONE


@pytest.mark.parametrize("alias", ["h", "acc"])
def test_in_place(rng, alias):
    """dst == h / dst == acc with deep read-ahead and heavy stalls."""
    for stall in (0.0, 0.6):
        rows, dim = 3, int(rng.integers(2 * L, 4 * L))
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        h, acc = _int32(rng, (rows, dim)), _int32(rng, (rows, dim))
        mant, shift = _row_scales(rng, rows)
        cmd = _cmd(
            gd,
            h,
            acc,
            mant,
            shift,
            int(rng.integers(1 << 15, MANT_MAX + 1)),
            int(rng.integers(0, 30)),
            dst=alias,
        )
        check_in_place(_engine(), gd, cmd, int(rng.integers(1 << 30)), stall)


@pytest.mark.parametrize("lanes", [LANES, 1, 3])
def test_cycles(rng, lanes):
    """No stalls, 1-cycle memory: rows * (2*ceil(dim/(2L)) + ROW_CYCLES) + FIXED_CYCLES +
    latency cycles (``hw.ops.residual.expected_cycles``), at the design point's lanes and
    others."""
    c = 2 * lanes
    shapes = ((1, 1), (2, c), (3, c + 1), (2, lanes))
    if lanes == LANES:
        shapes += ((1, 1536),)
    for rows, dim in shapes:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        h, acc = _int32(rng, (rows, dim)), _int32(rng, (rows, dim))
        mant, shift = _row_scales(rng, rows)
        cmd = _cmd(gd, h, acc, mant, shift, 40000, 20)
        res = check_op(_engine(lanes), gd, cmd, stall=0.0, max_latency=1)
        assert res["cycles"] == expected_cycles(rows, dim, lanes), (rows, dim, res)


# dimension errors and spans beyond 32 bits: the largest (~2^34), and 2^32 (0 if it
# wrapped in 32 bits); the ALIGN / ADDR_RANGE cases come from the contract
ERROR_CASES = [
    (dict(rows=0), ErrorCode.BAD_DIM),
    (dict(dim=0), ErrorCode.BAD_DIM),
    (dict(rows=0xFFFF, dim=0xFFFF), ErrorCode.ADDR_RANGE),
    (dict(rows=0x8000, dim=0x8000), ErrorCode.ADDR_RANGE),
]


def test_errors(rng):
    """ERROR_CASES and every ALIGN / ADDR_RANGE case of the RESIDUAL contract in its
    order (sim/op_bench.arg_error_cases: each tensor misaligned, below / past / wrapping
    the window, each pair, dims first), on a valid 2 x 20 command."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    rows, dim = 2, 20
    mant, shift = _row_scales(rng, rows)
    cmd = _cmd(gd, _int32(rng, (rows, dim)), _int32(rng, (rows, dim)), mant, shift, 40000, 20)
    check_arg_errors(_engine(), gd, cmd, first=ERROR_CASES, seed=int(rng.integers(1 << 30)))
