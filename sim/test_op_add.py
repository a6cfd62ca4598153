"""ADD engine (hw/ops/add.py) == the golden executor's ADD, bit for bit, in Amaranth's
simulator (sim/op_bench.check_op: random memory stalls and latencies, the same ErrorCode,
identical memory, no write before an argument error): int32 extremes that wrap, short
chunks, in place (dst == a, dst == b) under heavy stalls, the exact no-stall cycles and the
contract's errors."""

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode
from host.backends.golden import GoldenDevice
from hw.ops.add import AddEngine, expected_cycles
from sim.op_bench import check_arg_errors, check_in_place, check_op, put

DP = design_point("kv260")
LANES = DP.residual_lanes
L = 2 * LANES  # elements per chunk
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def _int32(rng, shape):
    """Random int32 with a share of extremes (their sums wrap) and small values."""
    v = rng.integers(I32_MIN, I32_MAX + 1, size=shape, dtype=np.int64)
    corner = rng.choice([I32_MIN, I32_MAX, 0, -1, 1], size=shape)
    small = rng.integers(-(1 << 20), 1 << 20, size=shape)
    pick = rng.random(shape)
    return np.where(pick < 0.2, corner, np.where(pick < 0.6, small, v)).astype(np.int32)


def _cmd(gd, a, b, dst=None):
    rows, dim = a.shape
    args = dict(a=put(gd, a), b=put(gd, b), rows=rows, dim=dim)
    args["dst"] = args[dst] if dst else put(gd, np.zeros_like(a), 4)
    return isa.command(Opcode.ADD, **args)


def _engine(lanes: int = LANES):
    return AddEngine(DEFAULT, DP.dma_bytes, lanes=lanes)


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_random(rng, stall):
    for _ in range(3):
        rows = int(rng.integers(1, 4))
        dim = int(rng.choice([1, L - 1, L, L + 1, int(rng.integers(2, 4 * L))]))
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        a, b = _int32(rng, (rows, dim)), _int32(rng, (rows, dim))
        res = check_op(_engine(), gd, _cmd(gd, a, b), seed=int(rng.integers(1 << 30)), stall=stall)
        assert res["error"] == ErrorCode.NONE
        assert res["bytes_written"] == rows * dim * 4 and res["bytes_read"] == 2 * rows * dim * 4


def test_wraps_like_golden(rng):
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    a = np.array([[I32_MAX, I32_MIN, -1, 5]], np.int32)
    b = np.array([[1, -1, 1, -7]], np.int32)
    cmd = _cmd(gd, a, b)
    res = check_op(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.2)
    assert res["error"] == ErrorCode.NONE
    got = gd.read_array(cmd.dst, np.int32, (1, 4))
    assert got.tolist() == [[I32_MIN, I32_MAX, 0, -2]]


@pytest.mark.parametrize("alias", ["a", "b"])
def test_in_place(rng, alias):
    for stall in (0.0, 0.6):
        rows, dim = 3, int(rng.integers(2 * L, 4 * L))
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cmd = _cmd(gd, _int32(rng, (rows, dim)), _int32(rng, (rows, dim)), dst=alias)
        check_in_place(_engine(), gd, cmd, int(rng.integers(1 << 30)), stall)


@pytest.mark.parametrize("lanes", [LANES, 1, 3])
def test_cycles(rng, lanes):
    """No stalls, 1-cycle memory: ``hw.ops.add.expected_cycles``."""
    c = 2 * lanes
    for rows, dim in ((1, 1), (2, c), (3, c + 1), (2, lanes), (1, 2560)):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cmd = _cmd(gd, _int32(rng, (rows, dim)), _int32(rng, (rows, dim)))
        res = check_op(_engine(lanes), gd, cmd, stall=0.0, max_latency=1)
        assert res["cycles"] == expected_cycles(rows, dim, lanes), (rows, dim, res)


ERROR_CASES = [
    (dict(rows=0), ErrorCode.BAD_DIM),
    (dict(dim=0), ErrorCode.BAD_DIM),
    (dict(rows=0xFFFF, dim=0xFFFF), ErrorCode.ADDR_RANGE),
]


def test_errors(rng):
    """ERROR_CASES and every ALIGN / ADDR_RANGE case of the ADD contract, in its order."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    cmd = _cmd(gd, _int32(rng, (2, 20)), _int32(rng, (2, 20)))
    check_arg_errors(_engine(), gd, cmd, first=ERROR_CASES, seed=int(rng.integers(1 << 30)))


def test_bad_construction():
    with pytest.raises(ValueError, match="lanes"):
        AddEngine(DEFAULT, DP.dma_bytes, lanes=0)
    with pytest.raises(ValueError, match="lanes"):
        AddEngine(DEFAULT, 16, lanes=4)
