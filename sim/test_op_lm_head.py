"""LM_HEAD engine (hw/ops/lm_head.py) == the golden executor's LM_HEAD, bit for bit, in
Amaranth's simulator (sim/op_bench.check_op: random memory stalls and latencies, the
same ErrorCode, identical memory, no write before an argument error).

Shapes cover k around the beat width (1, W-1, W, W+1, ...), n around the write width
(1, L-1, L, L+1, ...), odd src/weights addresses, int8 extremes (the largest positive
and negative dot products at k = max_k), the write-register freeze (n = 1 mod L under
heavy stalls, where two flushes come back to back), the exact no-stall cycle count, the
x-buffer limit (max_k) and every argument error.
"""

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode
from host.backends.golden import GoldenDevice
from hw.ops.lm_head import LMHeadEngine, expected_cycles
from sim.op_bench import check_arg_errors, check_op, put

DP = design_point("kv260")
W = DP.dma_bytes
L = W // 4


def _int8(rng, shape):
    """Random int8 with a share of -128, 127, 0, +-1."""
    v = rng.integers(-128, 128, size=shape)
    corner = rng.choice([-128, 127, 0, 1, -1], size=shape)
    return np.where(rng.random(shape) < 0.2, corner, v).astype(np.int8)


def _cmd(gd, x, w):
    rows, n = x.shape[0], w.shape[0]
    # byte-aligned int8 tensors (the engine reads at any alignment); dst int32-aligned
    src = put(gd, x, 1)
    weights = put(gd, w, 1)
    dst = put(gd, np.zeros((rows, n), np.int32), 4)
    return isa.command(
        Opcode.LM_HEAD, src=src, weights=weights, dst=dst, rows=rows, k=x.shape[1], n=n
    )


def _engine(**limits):
    return LMHeadEngine(DEFAULT, W, **{"max_k": DP.max_k, **limits})


@pytest.mark.parametrize("stall", [0.0, 0.3, 0.6])
def test_random(rng, stall):
    for _ in range(2):
        rows = int(rng.integers(1, 4))
        k = int(rng.choice([1, W - 1, W, W + 1, int(rng.integers(2, 3 * W))]))
        n = int(rng.choice([1, L - 1, L, L + 1, int(rng.integers(2, 2 * L + 8))]))
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cmd = _cmd(gd, _int8(rng, (rows, k)), _int8(rng, (n, k)))
        res = check_op(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)), stall=stall)
        assert res["error"] == ErrorCode.NONE
        assert res["bytes_written"] == rows * n * 4


def test_extremes_at_max_k(rng):
    """k = max_k (default): dot products of +-max_k * 2^14 and zero rows."""
    k = DP.max_k
    x = np.full((1, k), -128, np.int8)
    w = np.stack([np.full(k, -128), np.full(k, 127), np.zeros(k), _int8(rng, k)]).astype(np.int8)
    want = x.astype(np.int64) @ w.astype(np.int64).T
    assert want[0, 0] == k << 14 and want[0, 1] == -k * 128 * 127 and want[0, 2] == 0
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    res = check_op(_engine(), gd, _cmd(gd, x, w), seed=int(rng.integers(1 << 30)), stall=0.3)
    assert res["error"] == ErrorCode.NONE


def test_write_backpressure(rng):
    """n = 1 mod L with one beat per weight row: the row's last (1-result) flush comes one
    cycle after a full one, so the write register is often still busy (freeze)."""
    for seed in range(3):
        rows, k, n = 2, int(rng.integers(1, W + 1)), 2 * L + 1
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cmd = _cmd(gd, _int8(rng, (rows, k)), _int8(rng, (n, k)))
        res = check_op(_engine(), gd, cmd, seed=seed, stall=0.6, max_latency=3)
        assert res["error"] == ErrorCode.NONE


def test_cycles(rng):
    """No stalls, 1-cycle memory: rows * Kb * (n + 1) + latency + 6 + tree_stages(W) +
    WAITS cycles (``hw.ops.lm_head.expected_cycles``)."""
    for rows, k, n in ((1, 1, 1), (2, W + 3, L + 1), (1, 1536, 64)):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cmd = _cmd(gd, _int8(rng, (rows, k)), _int8(rng, (n, k)))
        res = check_op(_engine(), gd, cmd, stall=0.0, max_latency=1)
        assert res["cycles"] == expected_cycles(rows, k, n, W), (rows, k, n, res)


def test_ecp5_point(rng):
    """The ecp5 design point's engine (a narrower beat: fewer adder-tree stages), under
    stalls and with the exact no-stall cycle count."""
    dp = design_point("ecp5")
    w = dp.dma_bytes
    for rows, k, n in ((1, 1, 1), (2, w + 3, 5), (1, 3 * w, 9)):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cmd = _cmd(gd, _int8(rng, (rows, k)), _int8(rng, (n, k)))
        eng = LMHeadEngine.for_design(dp)
        res = check_op(eng, gd, cmd, stall=0.0, max_latency=1)
        assert res["cycles"] == expected_cycles(rows, k, n, w), (rows, k, n, res)
        res = check_op(
            LMHeadEngine.for_design(dp), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.5
        )
        assert res["error"] == ErrorCode.NONE


def test_max_k_limit(rng):
    """A smaller x buffer (max_k = 2W - 56, not a beat multiple): k = max_k runs, k =
    max_k + 1 is BAD_DIM where the golden backend succeeds (a documented difference)."""
    max_k = 2 * W - 56
    for k, ok in ((max_k, True), (max_k + 1, False)):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cmd = _cmd(gd, _int8(rng, (2, k)), _int8(rng, (L + 2, k)))
        if ok:
            res = check_op(_engine(max_k=max_k), gd, cmd, seed=k, stall=0.3)
            assert res["error"] == ErrorCode.NONE
        else:
            with pytest.raises(AssertionError, match="RTL error BAD_DIM, golden NONE"):
                check_op(_engine(max_k=max_k), gd, cmd, seed=k, stall=0.3)


# dimension errors and spans beyond the window; the ALIGN / ADDR_RANGE cases come from
# the contract
ERROR_CASES = [
    (dict(rows=0), ErrorCode.BAD_DIM),
    (dict(k=0), ErrorCode.BAD_DIM),
    (dict(n=0), ErrorCode.BAD_DIM),
    (dict(rows=0xFFFF), ErrorCode.ADDR_RANGE),  # src span
    (dict(n=0xFFFF_FFFF), ErrorCode.ADDR_RANGE),  # weights span ~2^37
    (dict(n=1 << 31, k=2), ErrorCode.ADDR_RANGE),  # n*k = 2^32 (0 if wrapped)
]


def test_errors(rng):
    """ERROR_CASES and every ALIGN / ADDR_RANGE case of the LM_HEAD contract in its order
    (sim/op_bench.arg_error_cases; int8 src and weights: no ALIGN), on a valid 2 x 40 x 20
    command."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    cmd = _cmd(gd, _int8(rng, (2, 40)), _int8(rng, (20, 40)))
    check_arg_errors(_engine(), gd, cmd, first=ERROR_CASES, seed=int(rng.integers(1 << 30)))
