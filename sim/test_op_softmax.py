"""SOFTMAX engine (hw/ops/softmax.py) == the golden executor's SOFTMAX, bit for bit, in
Amaranth's simulator (sim/op_bench.py: random memory stalls and latencies).

Random shapes at stall levels 0, 0.3 and 0.6 with ``golden.softmax.random_logits`` rows
(uniform to one-hot, all-max, all-min, full range); prefill (rows == keys: zero tails
longer than a beat, multi-chunk rows), decode (one query, 16 heads), in place
(dst == src). The default engine (8 lanes, 2048-element buffer) and, where many runs are
needed (its simulation builds 3x faster), a 3-lane engine with 4-element chunks and a
40-element buffer (short last groups of a query, the max_len limit as BAD_DIM); every argument
error in the golden executor's order; the no-stall cycle count against
``hw.ops.softmax.expected_cycles``.
"""

from __future__ import annotations

import pytest

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode
from golden.softmax import random_logits
from host.backends.golden import GoldenDevice
from hw.ops.softmax import SoftmaxEngine, expected_cycles
from sim.op_bench import arg_error_cases, check_errors, check_op, put

CFG = DEFAULT
DP = design_point("kv260")
W = DP.dma_bytes


def sm_command(gd, rng, *, heads, rows, keys, in_place=False) -> isa.Command:
    x = random_logits(rng, heads * rows, keys, CFG.softmax)
    x = x[rng.permutation(heads * rows)]  # corner rows anywhere, not only first
    src = put(gd, x, align=int(rng.choice([2, 64])))
    dst = src if in_place else gd.alloc(x.size * 2, int(rng.choice([2, 64])))
    return isa.command(Opcode.SOFTMAX, src=src, dst=dst, rows=rows, keys=keys, heads=heads)


def _run(gd, cmd, rng, stall=0.3, engine=None, **kw):
    engine = engine or SoftmaxEngine.for_design(DP)
    return check_op(engine, gd, cmd, seed=int(rng.integers(1 << 31)), stall=stall, **kw)


def small_engine():
    """3 lanes, 4-element chunks, 40-element buffer: cheaper to simulate; a query's last
    group is short more often. The engine's logic is the same for any lanes."""
    return SoftmaxEngine(CFG, W, lanes=3, max_len=40, chunk=4, read_ahead=8)


@pytest.mark.parametrize("stall", [0.0, 0.3, 0.6])
def test_softmax_random(rng, stall):
    """Default engine (8 lanes) and the small one, random shapes, ~30 % in place."""
    for engine, max_keys in ((SoftmaxEngine.for_design(DP), 140), (small_engine(), 40)):
        gd = GoldenDevice(CFG, mem_size=1 << 20)
        rows = int(rng.integers(1, 7))
        cmd = sm_command(
            gd,
            rng,
            heads=int(rng.integers(1, 4)),
            rows=rows,
            keys=int(rng.integers(rows, max_keys + 1)),
            in_place=bool(rng.random() < 0.3),
        )
        res = _run(gd, cmd, rng, stall=stall, engine=engine)
        assert res["error"] == ErrorCode.NONE
        assert res["bytes_written"] >= cmd.heads * cmd.rows * cmd.keys * 2


def test_softmax_shapes(rng):
    """Default engine: prefill (rows == keys: zero tails of more than one beat, rows of two
    chunks), decode over 16 heads (two full groups, rows of three chunks, in place)."""
    for shape, in_place in (
        (dict(heads=1, rows=73, keys=73), False),
        (dict(heads=16, rows=1, keys=130), True),
    ):
        gd = GoldenDevice(CFG, mem_size=1 << 20)
        cmd = sm_command(gd, rng, in_place=in_place, **shape)
        res = _run(gd, cmd, rng, stall=0.3)
        assert res["error"] == ErrorCode.NONE


def test_softmax_max_len(rng):
    """keys == max_len runs; keys = max_len + 1 is the RTL's BAD_DIM where the golden
    backend computes (a documented difference)."""
    gd = GoldenDevice(CFG, mem_size=1 << 20)
    cmd = sm_command(gd, rng, heads=2, rows=4, keys=40)
    assert _run(gd, cmd, rng, stall=0.3, engine=small_engine())["error"] == ErrorCode.NONE
    gd = GoldenDevice(CFG, mem_size=1 << 20)
    cmd = sm_command(gd, rng, heads=1, rows=1, keys=41)
    with pytest.raises(AssertionError, match="RTL error BAD_DIM, golden NONE"):
        _run(gd, cmd, rng, engine=small_engine())


def test_softmax_errors(rng):
    """Dimension errors, dims before addresses, and every ALIGN / ADDR_RANGE case of the
    contract in its order (sim/op_bench.arg_error_cases), on a 1-lane engine: the checks
    do not depend on lanes."""
    gd = GoldenDevice(CFG, mem_size=1 << 20)
    base = sm_command(gd, rng, heads=2, rows=2, keys=3)
    cases = [
        (dict(rows=0), ErrorCode.BAD_DIM),
        (dict(heads=0), ErrorCode.BAD_DIM),
        (dict(rows=4), ErrorCode.BAD_DIM),  # rows > keys
        (dict(rows=0, src=base.src + 1), ErrorCode.BAD_DIM),  # dims before addresses
    ]
    check_errors(
        SoftmaxEngine(CFG, W, lanes=1, max_len=8, chunk=2, read_ahead=2),
        gd,
        base,
        cases + arg_error_cases(base, gd.alloc_base, gd.brk),
        seed=int(rng.integers(1 << 30)),
    )


def test_softmax_cycles(rng):
    """No stalls, 1-cycle memory: the cycle count is the docstring's formula exactly
    (default engine: one lane per group, rows with masked tails; a decode whose last row
    ends in a short chunk; small engine: full and short groups)."""
    for heads, rows, keys, lanes in (
        (1, 20, 20, DP.softmax_lanes),
        (16, 1, 130, DP.softmax_lanes),
        (4, 3, 40, 3),
    ):
        gd = GoldenDevice(CFG, mem_size=1 << 20)
        cmd = sm_command(gd, rng, heads=heads, rows=rows, keys=keys)
        engine = SoftmaxEngine.for_design(DP) if lanes == DP.softmax_lanes else small_engine()
        res = _run(gd, cmd, rng, stall=0.0, max_latency=1, engine=engine)
        chunk = engine.chunk
        assert res["cycles"] == expected_cycles(heads, rows, keys, CFG, lanes, chunk), (
            heads,
            rows,
            keys,
            lanes,
            res["cycles"],
        )
