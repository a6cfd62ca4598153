"""TLMM_SPARSE engine (hw/ops/tlmm_sparse.py) against the golden executor under random
memory stalls (sim/op_bench.py): sparse and dense activations, all-zero rows, the extreme
sums, the bytes it reads (``golden.isa.sparse_read_bytes``), its error codes, the RTL's k
limit and the no-stall cycle count."""

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT
from golden.isa import ErrorCode, Opcode, dma_bytes
from golden.tlmm import live_groups
from host.backends.golden import GoldenDevice
from hw.ops.tlmm_sparse import TLMMSparseEngine, expected_cycles
from sim.op_bench import Job, check_arg_errors, check_op, golden_run, put, run_engine

W = dma_bytes(DEFAULT)
MAX_K = 512
R = isa.sparse_lanes(DEFAULT.tlmm)


def _engine():
    return TLMMSparseEngine(DEFAULT, W, max_k=MAX_K)


def _acts(rng, rows, k, zeros=0.85, zero_rows=()):
    """int8 [rows, k] with a fraction ``zeros`` of zeros (ReLU^2 outputs are mostly 0)
    and the rows ``zero_rows`` all zero."""
    x = rng.integers(-128, 128, (rows, k)).astype(np.int8)
    x[rng.random((rows, k)) < zeros] = 0
    x[list(zero_rows)] = 0
    return x


def _cmd(gd, rng, x, n, extreme=False):
    rows, k = x.shape
    w = np.ones((n, k), np.int8) if extreme else rng.integers(-1, 2, (n, k)).astype(np.int8)
    return isa.command(
        Opcode.TLMM_SPARSE,
        src=put(gd, x),
        weights=put(gd, isa.pack_sparse_weights(w)),
        dst=gd.alloc(rows * n * 4, 64),
        rows=rows,
        k=k,
        n=n,
    )


# rows, k, n, fraction of zeros, all-zero rows: k not a multiple of G (nor of a chunk), n
# below, at and above R and not a multiple of it
SHAPES = [
    (1, 100, 5, 0.85, ()),
    (1, 301, R, 0.85, ()),
    (3, 257, R + 1, 0.85, (1,)),
    (3, 64, 2 * R + 37, 0.5, ()),
    (1, 49, 30, 0.0, ()),
    (3, 130, 20, 0.97, (0, 2)),
    (1, 200, 3 * R - 1, 1.0, (0,)),
]


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_tlmm_sparse(rng, stall):
    for rows, k, n, zeros, zero_rows in SHAPES:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        x = _acts(rng, rows, k, zeros, zero_rows)
        r = check_op(
            _engine(), gd, _cmd(gd, rng, x, n), seed=int(rng.integers(1 << 30)), stall=stall
        )
        assert r["error"] == ErrorCode.NONE
        assert r["bytes_read"] == isa.sparse_read_bytes(x, n, DEFAULT.tlmm), (rows, k, n)
        assert r["bytes_written"] == rows * n * 4


def test_extreme_sums(rng):
    """The longest sums: all +127 or all -128 against all +1 weights, k = max_k."""
    for v in (127, -128):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        x = np.full((1, MAX_K), v, np.int8)
        cmd = _cmd(gd, rng, x, R + 3, extreme=True)
        r = check_op(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)))
        assert r["error"] == ErrorCode.NONE  # and the memory is golden's, which is:
        want = np.full((1, R + 3), v * MAX_K, "<i4").tobytes()
        dst = cmd.args["dst"]
        assert bytes(gd.memory[dst : dst + len(want)]) == want


@pytest.mark.parametrize("case", ["k_over", "n0"])
def test_tlmm_sparse_errors(rng, case):
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    if case == "k_over":  # golden allows it: the row memory's depth is the limit
        cmd = _cmd(gd, rng, _acts(rng, 1, MAX_K + 1), 4)
        with pytest.raises(AssertionError, match="RTL error BAD_DIM, golden NONE"):
            check_op(_engine(), gd, cmd, seed=1)
        return
    cmd = _cmd(gd, rng, _acts(rng, 1, 40), 4)
    r = check_op(_engine(), gd, isa.command(Opcode.TLMM_SPARSE, **{**cmd.args, "n": 0}), seed=1)
    assert r["error"] == ErrorCode.BAD_DIM


def test_contract_errors(rng):
    """Every ALIGN / ADDR_RANGE case of the TLMM_SPARSE contract, in its order
    (sim/op_bench.arg_error_cases)."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    cmd = _cmd(gd, rng, _acts(rng, 1, 40), 4)
    check_arg_errors(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)))


@pytest.mark.parametrize("latency", [1, 7])
def test_tlmm_sparse_cycles(rng, latency):
    """No stalls, every read answered ``latency`` cycles after it is requested:
    ``hw.ops.tlmm_sparse.expected_cycles`` exactly (and golden's memory)."""
    jobs, wants, lives = [], [], []
    for rows, k, n, zeros, zero_rows in SHAPES:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        x = _acts(rng, rows, k, zeros, zero_rows)
        cmd = _cmd(gd, rng, x, n)
        before, want, err = golden_run(gd, cmd)
        assert err == ErrorCode.NONE
        jobs.append(Job(cmd, before, gd.alloc_base, gd.brk, 0.0, (latency, latency)))
        wants.append(want)
        lives.append(live_groups(x, DEFAULT.tlmm))
    results = run_engine(_engine(), jobs)
    for (rows, k, n, *_), job, want, live, r in zip(
        SHAPES, jobs, wants, lives, results, strict=True
    ):
        assert np.array_equal(job.mem, want), (rows, k, n)
        exp = expected_cycles(rows, k, n, live, DEFAULT, W, latency=latency)
        assert r["cycles"] == exp, (rows, k, n, r["cycles"], exp)


def test_full_request_fifo(rng):
    """A 5-deep request FIFO, full most of the time (blocks of one live group written in
    4 pieces each): the requests wait for room, the result is golden's; the cycle replay
    refuses such a case rather than miscount it."""
    eng = TLMMSparseEngine(DEFAULT, W, max_k=MAX_K, outstanding=5)
    shapes = [(2, 3, 9 * R + 5, 0.0, ()), (1, 150, 2 * R, 0.95, ())]
    for rows, k, n, zeros, zero_rows in shapes:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        x = _acts(rng, rows, k, zeros, zero_rows)
        r = check_op(eng, gd, _cmd(gd, rng, x, n), seed=int(rng.integers(1 << 30)), stall=0.3)
        assert r["bytes_read"] == isa.sparse_read_bytes(x, n, DEFAULT.tlmm)
    live = live_groups(np.ones((1, 3), np.int8), DEFAULT.tlmm)
    with pytest.raises(ValueError, match="request FIFO"):
        expected_cycles(1, 3, 200 * R, live, DEFAULT, W)


@pytest.mark.parametrize("variant", ["mirrored", "T14"])
def test_other_datapaths(rng, variant):
    """The mirrored table (index + sign codes), and T = 14 (R = 56 lanes, 35-byte beats,
    64-byte DMA: 21 groups a chunk): golden's memory, the bytes it reads, exact cycles."""
    from dataclasses import replace

    tc = {
        "mirrored": replace(DEFAULT.tlmm, table="mirrored"),
        "T14": replace(DEFAULT.tlmm, tables=14),
    }[variant]
    cfg = replace(DEFAULT, tlmm=tc)
    w_bytes = dma_bytes(cfg)
    r_lanes = isa.sparse_lanes(tc)
    for rows, k, n in [(3, 131, 2 * r_lanes + 9), (1, 64, r_lanes - 3)]:
        gd = GoldenDevice(cfg, mem_size=1 << 20)
        x = _acts(rng, rows, k, 0.8, (1,) if rows > 1 else ())
        w = rng.integers(-1, 2, (n, k)).astype(np.int8)
        cmd = isa.command(
            Opcode.TLMM_SPARSE,
            src=put(gd, x),
            weights=put(gd, isa.pack_sparse_weights(w, tc)),
            dst=gd.alloc(rows * n * 4, 64),
            rows=rows,
            k=k,
            n=n,
        )
        eng = TLMMSparseEngine(cfg, w_bytes, max_k=MAX_K)
        r = check_op(eng, gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.0, max_latency=1)
        assert r["bytes_read"] == isa.sparse_read_bytes(x, n, tc)
        live = live_groups(x, tc)
        assert r["cycles"] == expected_cycles(rows, k, n, live, cfg, w_bytes), (rows, k, n)
        r = check_op(eng, gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.4)
        assert r["error"] == ErrorCode.NONE
