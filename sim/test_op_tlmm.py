"""TLMM engine (hw/ops/tlmm.py) against the golden executor under random memory stalls
(sim/op_bench.py), including its error codes, the RTL's k limit and the no-stall cycle
count."""

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT
from golden.isa import ErrorCode, Opcode
from host.backends.golden import GoldenDevice
from hw.accel import dma_bytes_for
from hw.ops.tlmm import TLMMEngine, expected_cycles
from sim.op_bench import check_arg_errors, check_op, check_ops, put

W = dma_bytes_for(DEFAULT)
MAX_K = 512


def _tlmm(gd, rng, rows, k, n, extreme=False):
    if extreme:  # the longest-sum corner: all +127 (or -128) against all +1
        x = np.full((rows, k), 127 if rng.random() < 0.5 else -128, np.int8)
        w = np.ones((n, k), np.int8)
    else:
        x = rng.integers(-128, 128, (rows, k)).astype(np.int8)
        w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    return dict(
        src=put(gd, x),
        weights=put(gd, isa.pack_tlmm_weights(w)),
        dst=gd.alloc(rows * n * 4, 64),
        rows=rows,
        k=k,
        n=n,
    )


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_tlmm(rng, stall):
    shapes = [
        (1, int(rng.integers(1, 200)), int(rng.integers(1, 20))),
        (2, int(rng.integers(80, 300)), int(rng.integers(1, 12))),
    ]
    for rows, k, n in shapes + [(1, MAX_K, 5)]:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _tlmm(gd, rng, rows, k, n, extreme=(k == MAX_K))
        r = check_op(
            TLMMEngine(DEFAULT, W, max_k=MAX_K),
            gd,
            isa.command(Opcode.TLMM, **f),
            seed=int(rng.integers(1 << 30)),
            stall=stall,
        )
        assert r["error"] == ErrorCode.NONE


@pytest.mark.parametrize("case,code", [("k_over", ErrorCode.BAD_DIM), ("n0", ErrorCode.BAD_DIM)])
def test_tlmm_errors(rng, case, code):
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    f = _tlmm(gd, rng, 1, 40, 4)
    f.update({"k_over": dict(k=MAX_K + 1), "n0": dict(n=0)}[case])
    if case == "k_over":  # golden allows it: the RTL's table depth is the limit
        gd2 = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _tlmm(gd2, rng, 1, MAX_K + 1, 4)
        eng = TLMMEngine(DEFAULT, W, max_k=MAX_K)
        with pytest.raises(AssertionError, match="RTL error BAD_DIM, golden NONE"):
            check_op(eng, gd2, isa.command(Opcode.TLMM, **f), seed=1)
        return
    r = check_op(TLMMEngine(DEFAULT, W, max_k=MAX_K), gd, isa.command(Opcode.TLMM, **f), seed=1)
    assert r["error"] == code


def test_contract_errors(rng):
    """Every ALIGN / ADDR_RANGE case of the TLMM contract, in its order
    (sim/op_bench.arg_error_cases)."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    cmd = isa.command(Opcode.TLMM, **_tlmm(gd, rng, 1, 40, 4))
    check_arg_errors(TLMMEngine(DEFAULT, W, max_k=MAX_K), gd, cmd, seed=int(rng.integers(1 << 30)))


def test_tlmm_cycles(rng):
    """No stalls, 1-cycle memory: ``hw.ops.tlmm.expected_cycles`` exactly."""
    eng = TLMMEngine(DEFAULT, W, max_k=MAX_K)
    cases, shapes = [], ((1, 85, 4), (2, 200, 13), (4, 50, 30))
    for rows, k, n in shapes:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cases.append((gd, isa.command(Opcode.TLMM, **_tlmm(gd, rng, rows, k, n)), None))
    for (rows, k, n), r in zip(
        shapes, check_ops(eng, cases, stall=0.0, max_latency=1), strict=False
    ):
        assert r["cycles"] == expected_cycles(rows, k, n, DEFAULT), (rows, k, n, r["cycles"])
