# amaranth: UnusedElaboratable=no
"""NORM_QUANT engine (``hw/ops/norm_quant.py``) == the golden executor, bit for bit, in
Amaranth's simulator (``sim/op_bench.check_op``: random stalls and read latencies).

Random shapes (dim below, at and across lane/chunk boundaries, several lane counts for
both passes), random rows over many magnitudes plus numeric corners
(int32/int16 extremes, zero rows, zero gamma, S' = 0), random eps, every error the
engine reports (BAD_DIM, ALIGN, ADDR_RANGE, SCALE_RANGE, each in the golden backend's
order, including the dry run behind a bad dst_scale), an aborted command followed by a
good one on the same engine, and the stall-free cycle count against the docstring
formula.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode
from golden.rmsnorm import norm_constants, random_rows, rmsnorm_quant
from host.backends.golden import GoldenDevice
from hw.ops.norm_quant import NormQuantEngine, expected_cycles
from sim.op_bench import (
    STALLS,
    Job,
    check_arg_errors,
    check_op,
    golden_run,
    put,
    run_engine,
)

DP = design_point("kv260")
W = DP.dma_bytes
I32, I16 = np.iinfo(np.int32), np.iinfo(np.int16)
MEM = 1 << 20


def engine(
    lanes: int = DP.norm_lanes, stat_lanes: int = DP.norm_stat_lanes, **kw
) -> NormQuantEngine:
    return NormQuantEngine(
        DEFAULT, W, lanes=lanes, stat_lanes=stat_lanes, **{"max_len": DP.max_dim, **kw}
    )


def constants(dim: int, eps: float) -> tuple[int, int, int]:
    """(eps_term, c_mant, c_exp) as host/runtime.py encodes them, re-derived the golden
    backend's way (eps from eps_term) so that its BAD_OPERAND check passes."""
    eps_term = norm_constants(dim, replace(DEFAULT.norm, eps=eps), DEFAULT.quant)[0]
    eps_back = eps_term / (dim * 2.0 ** (2 * DEFAULT.norm.in_frac_bits))
    want = norm_constants(dim, replace(DEFAULT.norm, eps=eps_back), DEFAULT.quant)
    assert want[0] == eps_term
    return want


def norm_cmd(gd, rng, x, gamma, *, eps=DEFAULT.norm.eps, g_exp=0, **fields):
    """A NORM_QUANT command over fresh tensors (dst, dst_scale filled with junk so that an
    unwritten byte shows); ``fields`` override any argument."""
    rows, dim = x.shape
    eps_term, c_mant, c_exp = constants(dim, eps)
    args = dict(
        src=put(gd, x),
        gamma=put(gd, gamma),
        dst=put(gd, rng.integers(0, 256, rows * dim + 8, dtype=np.uint8)),
        dst_scale=put(gd, rng.integers(0, 256, 4 * rows + 8, dtype=np.uint8)),
        rows=rows,
        dim=dim,
        eps_term=eps_term,
        c_mant=c_mant,
        c_exp=c_exp,
        g_exp=g_exp,
    )
    args.update(fields)
    return isa.command(Opcode.NORM_QUANT, **args)


def corner_rows(rng, rows: int, dim: int) -> np.ndarray:
    """Rows of numeric corners: extremes, alternating extremes, zeros, one spike, +-1."""
    kinds = [
        lambda: np.full(dim, I32.min),
        lambda: np.full(dim, I32.max),
        lambda: np.where(np.arange(dim) % 2 == 0, I32.min, I32.max),
        lambda: np.zeros(dim),
        lambda: (
            np.zeros(dim)
            + np.eye(1, dim, int(rng.integers(dim)))[0] * int(rng.choice([I32.min, I32.max, 1, -1]))
        ),
        lambda: rng.choice([-1, 0, 1], dim),
        lambda: rng.integers(I32.min, I32.max, dim, endpoint=True),
    ]
    pick = (
        rng.permutation(len(kinds))[:rows]
        if rows <= len(kinds)
        else rng.integers(len(kinds), size=rows)
    )
    return np.stack([kinds[k]() for k in pick]).astype(np.int32)


def corner_gamma(rng, dim: int) -> np.ndarray:
    return rng.choice([I16.min, I16.max, 0, 1, -1, 4096], dim).astype(np.int16)


def check_ok(eng, gd, cmd, *, seed, stall, **kw) -> dict:
    res = check_op(eng, gd, cmd, seed=seed, stall=stall, **kw)
    assert res["error"] == ErrorCode.NONE
    # every code byte and record exactly once (no duplicate or stray writes)
    assert res["bytes_written"] == cmd.rows * cmd.dim + 4 * cmd.rows
    return res


# ------------------------------------------------------------------ bit-exact results
def test_random_shapes(rng):
    # (lanes, stat_lanes): the design point's, a non-power-of-two lane count (odd
    # chunking), both passes at one rate, narrow lanes, one-lane statistics
    setups = [
        (DP.norm_lanes, DP.norm_stat_lanes),
        (8, 8),
        (6, 3),
        (4, 2),
        (6, 2),
        (2, 1),
    ]
    for i, (lanes, stat_lanes) in enumerate(setups):
        c = 2 * lanes  # elements per chunk (one src read, one gamma read)
        dim = int(
            rng.choice([1, lanes - 1 or 1, lanes + 1, c, c + 1, W + 3, int(rng.integers(2, 200))])
        )
        rows = int(rng.integers(1, 4))
        x, gamma = random_rows(rng, rows, dim)
        if rng.random() < 0.5:  # a corner row among random ones
            x[int(rng.integers(rows))] = corner_rows(rng, 1, dim)[0]
        gd = GoldenDevice(DEFAULT, mem_size=MEM)
        cmd = norm_cmd(gd, rng, x, gamma, g_exp=int(rng.integers(-1000, 1000)))
        check_ok(
            engine(lanes, stat_lanes),
            gd,
            cmd,
            seed=int(rng.integers(1 << 30)),
            stall=STALLS[i % 3],
        )


def test_corners(rng):
    dim = int(rng.integers(20, 70))
    for i, stall in enumerate(STALLS):
        gd = GoldenDevice(DEFAULT, mem_size=MEM)
        x = corner_rows(rng, 7, dim)  # every corner kind, random order
        gamma = corner_gamma(rng, dim) if i else np.full(dim, I16.min, np.int16)
        cmd = norm_cmd(gd, rng, x, gamma, g_exp=int(rng.integers(-64, 64)))
        check_ok(engine(), gd, cmd, seed=i, stall=stall)


def test_zero_products(rng):
    """All-zero products give the zero scale (0, 0) whatever g_exp (no SCALE_RANGE even at
    the extremes); eps 0 with x = 0 makes S' = 0."""
    dim = int(rng.integers(5, 40))
    cases = [
        (np.zeros((2, dim), np.int32), random_rows(rng, 1, dim)[1], 0.0, I16.min),
        (random_rows(rng, 2, dim)[0], np.zeros(dim, np.int16), 1e-6, I16.max),
        (np.zeros((1, dim), np.int32), np.zeros(dim, np.int16), 0.0, I16.min),
    ]
    for i, (x, gamma, eps, g_exp) in enumerate(cases):
        gd = GoldenDevice(DEFAULT, mem_size=MEM)
        cmd = norm_cmd(gd, rng, x, gamma, eps=eps, g_exp=g_exp)
        check_ok(engine(), gd, cmd, seed=i, stall=STALLS[i])
        mant, shift = isa.unpack_scales(gd.read(cmd.dst_scale, 4 * cmd.rows))
        assert not mant.any() and not shift.any()


def test_eps(rng):
    """eps_term from 0 up to its 48-bit field, on small rows where eps dominates S'."""
    dim = int(rng.integers(8, 60))
    eps_max = (2.0**isa.EPS_TERM_BITS - 1) / (dim * 2.0 ** (2 * DEFAULT.norm.in_frac_bits))
    for i, eps in enumerate([0.0, 1e-5, float(np.exp(rng.uniform(np.log(1e-3), np.log(eps_max))))]):
        gd = GoldenDevice(DEFAULT, mem_size=MEM)
        x = rng.integers(-300, 300, (2, dim)).astype(np.int32)
        cmd = norm_cmd(gd, rng, x, random_rows(rng, 1, dim)[1], eps=eps)
        check_ok(engine(), gd, cmd, seed=i, stall=STALLS[i])


def test_longest_row(rng):
    """dim == max_len (the block's buffer full) and the BitNet hidden size at the default
    max_len; one row each (cycles reported by test_cycles)."""
    gd = GoldenDevice(DEFAULT, mem_size=MEM)
    x, gamma = random_rows(rng, 2, 48)
    check_ok(engine(max_len=48), gd, norm_cmd(gd, rng, x, gamma), seed=1, stall=0.3)
    gd = GoldenDevice(DEFAULT, mem_size=MEM)
    x, gamma = random_rows(rng, 1, 1536)
    check_ok(engine(), gd, norm_cmd(gd, rng, x, gamma), seed=2, stall=0.6)


# ------------------------------------------------------------------ errors
def _cmd_with(gd, rng, rows, dim, **fields):
    x, gamma = random_rows(rng, rows, dim)
    return norm_cmd(gd, rng, x, gamma, **fields)


def test_argument_errors(rng):
    """Dimension errors, dims before addresses; and every ALIGN / ADDR_RANGE case of the
    contract in its order (sim/op_bench.arg_error_cases), including the dry run behind a
    bad dst_scale (golden writes dst first; the engine writes nothing)."""
    rows, dim = int(rng.integers(1, 4)), int(rng.integers(3, 40))
    gd = GoldenDevice(DEFAULT, mem_size=MEM)
    cmd = _cmd_with(gd, rng, rows, dim)
    cases = [
        (dict(rows=0), ErrorCode.BAD_DIM),
        (dict(dim=0), ErrorCode.BAD_DIM),
        (dict(dim=0, src=cmd.src + 2), ErrorCode.BAD_DIM),
    ]
    check_arg_errors(engine(), gd, cmd, first=cases, seed=int(rng.integers(1 << 30)), stall=STALLS)


def test_dim_limit(rng):
    """dim > max_len: BAD_DIM before any memory access (golden has no such limit: it
    succeeds, a documented difference)."""
    max_len = 16
    gd = GoldenDevice(DEFAULT, mem_size=MEM)
    cmd = _cmd_with(gd, rng, 2, max_len + 1)
    _, _, gold = golden_run(gd, cmd)
    assert gold == ErrorCode.NONE
    eng = engine(max_len=max_len)
    res = run_commands(eng, gd.memory.copy(), gd.alloc_base, gd.brk, [cmd], rng, stall=0.0)
    assert res == [(ErrorCode.BAD_DIM, 0, 0)]


def _shifts(x, gamma):
    return rmsnorm_quant(x, gamma, DEFAULT.norm, DEFAULT.quant)[2]


def test_scale_range(rng):
    """The record's shift - g_exp leaves int16: at the last row (earlier rows written),
    exactly at the edge (fits), behind a bad dst_scale (dry run: still SCALE_RANGE)."""
    dim = int(rng.integers(10, 60))
    hi_lim = (1 << (isa.SCALE_SHIFT_BITS - 1)) - 1
    x, gamma = random_rows(rng, 3, dim)
    s = _shifts(x, gamma)
    x = x[np.argsort(s, kind="stable")]  # the largest shift comes last
    s_max = int(s.max())
    cases = [
        (s_max - hi_lim - 1, {}, ErrorCode.SCALE_RANGE),
        (s_max - hi_lim, {}, ErrorCode.NONE),
        (s_max - hi_lim - 1, {"scale_align": 2}, ErrorCode.SCALE_RANGE),
        (I16.min, {}, ErrorCode.SCALE_RANGE),
    ]
    for i, (g_exp, extra, code) in enumerate(cases):
        gd = GoldenDevice(DEFAULT, mem_size=MEM)
        cmd = norm_cmd(gd, rng, x, gamma, g_exp=g_exp)
        if extra:
            cmd = isa.command(
                Opcode.NORM_QUANT, **{**cmd.args, "dst_scale": cmd.dst_scale + extra["scale_align"]}
            )
        res = check_op(engine(), gd, cmd, seed=i, stall=STALLS[i % 3])
        assert res["error"] == code
        if extra:
            assert res["bytes_written"] == 0


# ------------------------------------------------------------------ sequences, cycles
def run_commands(eng, mem, lo, hi, cmds, rng, *, stall=0.3, latency=3):
    """Run commands one after another on ONE engine instance (state carried over) and ONE
    memory image (sim/op_bench.run_engine), with a fixed-latency memory that stalls every
    handshake with probability ``stall``, any number of reads outstanding and random idle
    gaps; returns [(error, reads, writes)] per command and updates ``mem``."""
    jobs = [
        Job(
            cmd,
            mem,
            lo,
            hi,
            stall,
            (latency, latency),
            max_outstanding=1 << 30,
            max_cycles=100_000,
            gap=int(rng.integers(0, 3)),
        )
        for cmd in cmds
    ]
    res = run_engine(eng, jobs, seed=int(rng.integers(1 << 30)))
    return [(r["error"], r["reads"], r["writes"]) for r in res]


def test_abort_then_next(rng):
    """A command aborted by SCALE_RANGE at its first row (the next rows already inside the
    block and the read FIFOs) leaves nothing behind: the next command on the same engine
    matches golden bit for bit."""
    gd = GoldenDevice(DEFAULT, mem_size=MEM)
    d1, d2 = int(rng.integers(30, 80)), int(rng.integers(5, 50))
    x1, g1 = random_rows(rng, 4, d1)
    bad = norm_cmd(gd, rng, x1, g1, g_exp=I16.min)  # every row out of range
    x2, g2 = random_rows(rng, 3, d2)
    good = norm_cmd(gd, rng, x2, g2, g_exp=int(rng.integers(-50, 50)))
    stream = gd.alloc(3 * isa.COMMAND_BYTES, isa.STREAM_ALIGN)
    gd.write(stream, isa.encode_stream([bad, good, isa.command(Opcode.END)]))
    mem = gd.memory[: gd.brk].copy()
    eng = engine()
    res = run_commands(eng, mem, gd.alloc_base, gd.brk, [bad, good, good], rng)
    assert [r[0] for r in res] == [ErrorCode.SCALE_RANGE, ErrorCode.NONE, ErrorCode.NONE]
    want_q, want_m, want_s = rmsnorm_quant(x2, g2, DEFAULT.norm, DEFAULT.quant)
    # golden backend on the good command alone
    gd.run(stream + isa.COMMAND_BYTES, 2)
    st = gd.wait(60.0)
    assert st.error == ErrorCode.NONE
    for lo, n in ((good.dst, good.rows * good.dim), (good.dst_scale, 4 * good.rows)):
        assert np.array_equal(mem[lo : lo + n], gd.memory[lo : lo + n])
    assert np.array_equal(mem[good.dst : good.dst + x2.size].view(np.int8), want_q.reshape(-1))
    mant, _ = isa.unpack_scales(mem[good.dst_scale : good.dst_scale + 4 * good.rows])
    assert np.array_equal(mant, want_m)


@pytest.mark.parametrize("lanes,stat_lanes", [(DP.norm_lanes, DP.norm_stat_lanes), (4, 4), (6, 2)])
def test_cycles(rng, lanes, stat_lanes):
    """Stall-free, read latency 1: the measured count equals the docstring formula."""
    shapes = (
        [(1, 1536), (3, int(rng.integers(9, 200)))]
        if (lanes, stat_lanes) == (DP.norm_lanes, DP.norm_stat_lanes)
        else [(2, int(rng.integers(9, 100)))]
    )
    for rows, dim in shapes:
        gd = GoldenDevice(DEFAULT, mem_size=MEM)
        x, gamma = random_rows(rng, rows, dim)
        if rows > 1:  # an all-zero row (zero product, zero scale: the same cycles)
            x[1] = 0
        res = check_ok(
            engine(lanes, stat_lanes),
            gd,
            norm_cmd(gd, rng, x, gamma),
            seed=0,
            stall=0.0,
            max_latency=1,
        )
        want = expected_cycles(rows, dim, lanes, stat_lanes)
        assert res["cycles"] == want, (rows, dim, res["cycles"], want)


def test_constructor_errors():
    with pytest.raises(ValueError, match="lanes"):
        NormQuantEngine(DEFAULT, W, lanes=0, stat_lanes=1, max_len=DP.max_dim)
    with pytest.raises(ValueError, match="stat_lanes"):
        NormQuantEngine(DEFAULT, W, lanes=8, stat_lanes=3, max_len=DP.max_dim)
    with pytest.raises(ValueError, match="dma_bytes"):
        NormQuantEngine(DEFAULT, 16, lanes=8, stat_lanes=4, max_len=DP.max_dim)
    with pytest.raises(ValueError, match="max_len"):
        NormQuantEngine(DEFAULT, W, lanes=8, stat_lanes=4, max_len=4)
    with pytest.raises(ValueError, match="cfg"):
        NormQuantEngine(DEFAULT.norm, W, lanes=8, stat_lanes=4, max_len=DP.max_dim)
