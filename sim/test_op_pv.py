"""PV engine (hw/ops/pv.py) against the golden executor, in Amaranth's simulator.

Every case goes through ``sim.op_bench.check_op`` (same ErrorCode, bit-identical memory,
no write before an argument error). Most engines here are built with fewer MAC lanes
(``max_head_dim``) and a smaller scale buffer than the default, which only changes
the elaboration size; one test runs the default engine. ``block`` (the design point's
``attn_block``): queries held per block, each V row read once for them (1: one query at a
time, the ecp5 point's).
"""

from __future__ import annotations

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode
from host.backends.golden import GoldenDevice
from hw.ops import pv
from hw.ops.gqa import cycles as gqa_cycles
from hw.ops.pv import PVEngine, expected_cycles, read_bytes
from sim.op_bench import STALLS, check_arg_errors, check_op, put

CFG = DEFAULT
DP = design_point("kv260")
W = DP.dma_bytes
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


CFG4 = design_point("kv260-kv4").datapath  # the INT4 KV cache: V rows of head_dim/2 bytes


def engine(lanes: int = 48, max_keys: int = 96, cfg=CFG, block: int = 1) -> PVEngine:
    return PVEngine(
        cfg,
        W,
        max_keys=max_keys,
        max_head_dim=lanes,
        out_lanes=DP.pv_out_lanes,
        records=DP.pv_records,
        block=block,
    )


def causal(rows: int, keys: int) -> np.ndarray:
    return np.arange(keys)[None, :] <= keys - rows + np.arange(rows)[:, None]


def probs(rng, heads: int, rows: int, keys: int) -> np.ndarray:
    """Softmax-like p: each row's visible entries sum to <= 2^16 - 1 (so no acc can leave
    int32); the masked entries hold garbage the engine must ignore."""
    w = rng.random((heads, rows, keys)) ** 3
    w[rng.random(w.shape) < 0.2] = 0
    vis = causal(rows, keys)[None]
    w = np.where(vis, w, 0)
    w /= np.maximum(w.sum(-1, keepdims=True), 1e-30)
    p = np.floor(w * 65535).astype(np.int64)
    # a row with one dominant key reaches the extreme 65535
    if rng.random() < 0.5:
        h, t = rng.integers(heads), rng.integers(rows)
        p[h, t] = 0
        p[h, t, rng.integers(keys - rows + t + 1)] = 65535
    p = np.where(vis, p, rng.integers(0, 1 << 16, p.shape))
    return p.astype(np.uint16)


def scales(rng, kv_heads: int, kv_ld: int, lo: int = -4, hi: int = 24):
    """Per-key V scales: normalized mantissas, some zero scales (with garbage shifts
    that must not count for s_min), unnormalized and extreme mantissas."""
    mant = rng.integers(1 << 15, 1 << 16, (kv_heads, kv_ld))
    shift = rng.integers(lo, hi, (kv_heads, kv_ld))
    u = rng.random(mant.shape)
    mant = np.where(u < 0.15, 0, mant)
    shift = np.where(
        (u < 0.15) & (rng.random(mant.shape) < 0.5),
        rng.choice([-(1 << 15), -1000, (1 << 15) - 1], mant.shape),
        shift,
    )
    mant = np.where(
        (u >= 0.15) & (u < 0.25), rng.choice([1, 255, 65535, 1 << 15], mant.shape), mant
    )
    return mant, shift


def codes(rng, kv_heads: int, kv_ld: int, hd: int) -> np.ndarray:
    v = rng.integers(-128, 128, (kv_heads, kv_ld, hd))
    v[rng.random(v.shape) < 0.05] = -128
    v[rng.random(v.shape) < 0.05] = 127
    return v.astype(np.int8)


def setup(
    rng,
    *,
    heads,
    kv_heads,
    rows,
    keys,
    hd,
    kv_ld=None,
    p=None,
    v=None,
    mant=None,
    shift=None,
    cfg=CFG,
    **addr,
):
    """A golden device holding the operands, and the PV command (``addr`` overrides); V
    rows in ``cfg``'s KV format (int4: random nibbles, -8 and 7 included)."""
    kv_ld = keys if kv_ld is None else kv_ld
    gd = GoldenDevice(cfg, mem_size=1 << 20)
    p = probs(rng, heads, rows, keys) if p is None else p
    v = codes(rng, kv_heads, kv_ld, hd) if v is None else v
    if cfg.forward.kv_bits == 4:
        v = isa.pack_kv(v >> 4, 4)
    if mant is None:
        mant, shift = scales(rng, kv_heads, kv_ld)
    a = dict(
        p=put(gd, p),
        v=put(gd, v),
        v_scale=put(gd, isa.pack_scales(mant, shift)),
        dst=put(gd, rng.integers(0, 256, max(rows * heads * hd * 4, 1)).astype(np.uint8)),
    )
    a.update(addr)
    cmd = isa.command(
        Opcode.PV,
        **a,
        rows=rows,
        keys=keys,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=hd,
        kv_ld=kv_ld,
    )
    return gd, cmd


def beyond(gd) -> int:
    """An aligned address past everything allocated."""
    return (gd.brk + 4096) & ~63


# ------------------------------------------------------------------ results
@pytest.mark.parametrize("stall", STALLS)
def test_random_shapes(rng, stall):
    eng = engine()
    for _ in range(2):
        kv_heads = int(rng.integers(1, 3))
        heads = kv_heads * int(rng.integers(1, 3))
        rows = int(rng.integers(1, 5))
        keys = rows + int(rng.integers(0, 9))
        hd = int(rng.integers(1, 49))
        kv_ld = keys + int(rng.integers(0, 3))
        gd, cmd = setup(
            rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, hd=hd, kv_ld=kv_ld
        )
        res = check_op(eng, gd, cmd, seed=int(rng.integers(1 << 30)), stall=stall)
        assert res["error"] == ErrorCode.NONE
        assert res["bytes_written"] == rows * heads * hd * 4


def test_long_rows(rng):
    """Keys beyond one p beat (64) and several scale beats (32), GQA, kv_ld > keys,
    head_dim over one write (> 32 lanes), the dominant-key extreme in every row."""
    heads, kv_heads, rows, keys, hd = 2, 1, 2, 70, 40
    p = probs(rng, heads, rows, keys)
    for h in range(heads):
        for t in range(rows):
            p[h, t, : keys - rows + t + 1] = 0
            p[h, t, 66 + t] = 65535  # a key past the first p beat
    p[0, 0, 66] = 60000
    p[0, 0, 3] = 5535
    gd, cmd = setup(
        rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, hd=hd, kv_ld=keys + 5, p=p
    )
    res = check_op(engine(), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.3)
    assert res["error"] == ErrorCode.NONE


def test_prefix_min_and_corners(rng):
    """s_min moves per query (smaller shifts in the tail keys), zero-mant records with
    extreme shifts are ignored, and the output requant meets its corners: a right shift
    that flushes to 0 (s_min = 32767) and a left shift that saturates (s_min = -32768)."""
    heads, kv_heads, rows, keys, hd = 2, 2, 4, 6, 9
    mant = rng.integers(1 << 15, 1 << 16, (kv_heads, keys))
    shift = np.zeros((kv_heads, keys), np.int64)
    shift[0] = [20, 21, 19, 18, 30, 12]  # s_min per query: 19, 18, 18, 12
    mant[0, 4], shift[0, 4] = 0, -(1 << 15)  # zero scale: its shift must not count
    top, bottom = (1 << 15) - 1, -(1 << 15)
    shift[1] = [top, top, top, bottom, 5, 4]  # s_min per query: top, then bottom
    mant[1, 2] = 1  # unnormalized
    mant[1, 5] = 65535
    p = probs(rng, heads, rows, keys)
    p[1, 1:, 3] = 1000
    v = codes(rng, kv_heads, keys, hd)
    v[1, 3, 0] = 5
    gd, cmd = setup(
        rng,
        heads=heads,
        kv_heads=kv_heads,
        rows=rows,
        keys=keys,
        hd=hd,
        p=p,
        v=v,
        mant=mant,
        shift=shift,
    )
    res = check_op(engine(), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.3)
    assert res["error"] == ErrorCode.NONE
    o = gd.read_array(cmd.dst, np.int32, (rows, heads, hd))
    assert np.all(o[0, 1] == 0)
    assert np.all(np.isin(o[1:, 1, 0], (I32_MIN, I32_MAX)))
    assert np.any(o[:, 0] != 0)


def test_zero_scales_everywhere(rng):
    """No nonzero scale in a prefix: golden's s_min = 0 and pt = 0 (output 0)."""
    heads, rows, keys, hd = 1, 3, 5, 7
    mant = np.zeros((1, keys), np.int64)
    mant[0, 4] = 40000  # only the last query sees a scale
    shift = rng.integers(-(1 << 15), 1 << 15, (1, keys))
    gd, cmd = setup(
        rng, heads=heads, kv_heads=1, rows=rows, keys=keys, hd=hd, mant=mant, shift=shift
    )
    res = check_op(engine(), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.6)
    assert res["error"] == ErrorCode.NONE
    o = gd.read_array(cmd.dst, np.int32, (rows, hd))
    assert np.all(o[:2] == 0)


def test_default_engine(rng):
    """The default engine (128 lanes, 2048-key buffer) at BitNet-0.73B's head_dim 96."""
    heads, kv_heads, rows, keys, hd = 2, 1, 2, 12, 96
    gd, cmd = setup(rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, hd=hd)
    res = check_op(PVEngine.for_design(DP), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.3)
    assert res["error"] == ErrorCode.NONE
    assert res["bytes_written"] == rows * heads * hd * 4


def test_cycles(rng):
    """The module docstring's cycle count (``hw.ops.pv.expected_cycles``), exactly, with
    a memory that never stalls."""
    eng = engine()
    for heads, kv_heads, rows, keys, hd in ((2, 1, 2, 70, 40), (2, 2, 1, 9, 33)):
        gd, cmd = setup(rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, hd=hd)
        res = check_op(eng, gd, cmd, seed=1, stall=0.0, max_latency=1)
        assert res["error"] == ErrorCode.NONE
        want = expected_cycles(heads, kv_heads, rows, keys, hd, eng.records, eng.out_lanes)
        assert res["cycles"] == want, (heads, kv_heads, rows, keys, hd)


# ------------------------------------------------------------------ data-dependent errors
def _overflow_case(rng, rows=1, keys=4, hd=5, **addr):
    """Every p and mant at 65535, equal shifts: pt = 8388352 per key, acc = keys * pt * v
    leaves int32 for keys >= 3 (v = 127 or -128 per lane, the same for every key)."""
    data = dict(
        p=np.full((1, rows, keys), 65535, np.uint16),
        v=np.broadcast_to(np.where(rng.random(hd) < 0.5, 127, -128), (1, keys, hd)).astype(np.int8),
        mant=np.full((1, keys), 65535),
        shift=np.full((1, keys), 7),
    )
    return setup(rng, heads=1, kv_heads=1, rows=rows, keys=keys, hd=hd, **data, **addr)


@pytest.mark.parametrize("block", (1, 4))
def test_overflow_bad_operand(rng, block):
    gd, cmd = _overflow_case(rng, rows=2, keys=4)
    res = check_op(engine(block=block), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.6)
    assert res["error"] == ErrorCode.BAD_OPERAND


@pytest.mark.parametrize("slot", (0, 2, 3))
def test_overflow_in_one_held_query(rng, slot):
    """A decode block of 4 query heads (n_rep 4) where only one head's acc leaves int32
    (its p all 65535; the others' small): BAD_OPERAND, whichever slot it is (the drain
    checks each slot's acc in P); with that head's p small too, the same command runs."""
    heads, keys, hd = 4, 4, 5
    p = np.full((heads, 1, keys), 100, np.uint16)
    p[slot] = 65535
    v = np.broadcast_to(np.where(rng.random(hd) < 0.5, 127, -128), (1, keys, hd))
    data = dict(v=v.astype(np.int8), mant=np.full((1, keys), 65535), shift=np.full((1, keys), 7))
    eng = engine(lanes=8, block=4)
    for pp, want in ((p, ErrorCode.BAD_OPERAND), (np.minimum(p, 100), ErrorCode.NONE)):
        gd, cmd = setup(rng, heads=heads, kv_heads=1, rows=1, keys=keys, hd=hd, p=pp, **data)
        res = check_op(eng, gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.3)
        assert res["error"] == want


@pytest.mark.parametrize("pt3, want", ((512, ErrorCode.NONE), (513, ErrorCode.BAD_OPERAND)))
def test_overflow_boundary(rng, pt3, want):
    """acc = -128 * (2 * 8388352 + pt3): exactly -2^31 (fits) or 128 below (does not)."""
    keys, hd = 3, 3
    p = np.array([[[65535, 65535, 8]]], np.uint16)
    mant = np.array([[65535, 65535, pt3 * 64]])  # shifts equal: pt = rhu(p*mant, 9)
    shift = np.full((1, keys), 3)
    v = np.full((1, keys, hd), -128, np.int8)
    v[0, :, 1] = 127  # another lane well inside
    gd, cmd = setup(
        rng, heads=1, kv_heads=1, rows=1, keys=keys, hd=hd, p=p, v=v, mant=mant, shift=shift
    )
    res = check_op(engine(), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.3)
    assert res["error"] == want
    if want == ErrorCode.NONE:
        assert gd.read_array(cmd.dst, np.int32, (hd,))[0] == I32_MIN  # s_min - 9 < 0: saturates


# ------------------------------------------------------------------ argument errors
@pytest.mark.parametrize("block", (1, 4))
def test_dst_errors_come_after_the_computation(rng, block):
    """Golden computes before it stores: a bad dst is reported only if no acc
    overflowed (the engine then runs dry and writes nothing)."""
    eng = engine(lanes=8, block=block)
    gd, cmd = _overflow_case(rng, dst=2)
    assert check_op(eng, gd, cmd, seed=1)["error"] == ErrorCode.BAD_OPERAND
    gd, cmd = _overflow_case(rng)
    cmd = isa.command(Opcode.PV, **{**cmd.args, "dst": beyond(gd)})
    assert check_op(eng, gd, cmd, seed=2)["error"] == ErrorCode.BAD_OPERAND
    gd, cmd = setup(rng, heads=2, kv_heads=1, rows=2, keys=3, hd=5)
    cmd = isa.command(Opcode.PV, **{**cmd.args, "dst": cmd.dst + 2})
    assert check_op(eng, gd, cmd, seed=3, stall=0.6)["error"] == ErrorCode.ALIGN
    gd, cmd = setup(rng, heads=2, kv_heads=1, rows=2, keys=3, hd=5)
    cmd = isa.command(Opcode.PV, **{**cmd.args, "dst": beyond(gd)})
    assert check_op(eng, gd, cmd, seed=4)["error"] == ErrorCode.ADDR_RANGE


def test_argument_errors(rng):
    """Dimension errors in the contract's order, one KV head beyond the window, and every
    ALIGN / ADDR_RANGE case of the contract (sim/op_bench.arg_error_cases; a bad dst runs
    the command dry), over two KV heads."""
    gd, cmd = setup(rng, heads=2, kv_heads=2, rows=2, keys=3, hd=5, kv_ld=4)
    cases = [
        (dict(rows=0), ErrorCode.BAD_DIM),
        (dict(heads=0), ErrorCode.BAD_DIM),
        (dict(kv_heads=0), ErrorCode.BAD_DIM),
        (dict(head_dim=0), ErrorCode.BAD_DIM),
        (dict(heads=3, kv_heads=2), ErrorCode.BAD_DIM),
        (dict(rows=4, keys=3), ErrorCode.BAD_DIM),
        (dict(kv_ld=2), ErrorCode.BAD_DIM),
        (dict(kv_ld=2, p=1), ErrorCode.BAD_DIM),  # dims before addresses
        (dict(kv_ld=100000 // 5), ErrorCode.ADDR_RANGE),  # only head 1 is out
    ]
    check_arg_errors(engine(lanes=8), gd, cmd, first=cases, seed=int(rng.integers(1 << 30)))


@pytest.mark.parametrize("change", (dict(keys=41), dict(head_dim=9)))
def test_engine_limits(rng, change):
    """keys > max_keys or head_dim > max_head_dim: BAD_DIM where golden computes (the
    stated difference), before any memory access."""
    hd = change.get("head_dim", 5)
    keys = change.get("keys", 3)
    gd, cmd = setup(rng, heads=1, kv_heads=1, rows=1, keys=keys, hd=hd)
    with pytest.raises(AssertionError, match="RTL error BAD_DIM, golden NONE"):
        check_op(engine(lanes=8, max_keys=40), gd, cmd, seed=1)
    # just inside the limits the same command runs
    eng = engine(lanes=hd, max_keys=keys)
    assert check_op(eng, gd, cmd, seed=2)["error"] == ErrorCode.NONE


def test_int4_kv(rng):
    """kv260-kv4's V rows (packed int4, head_dim/2 bytes) == golden under stalls, GQA and
    kv_ld > keys; with a memory that never stalls the cycle count is the INT8 formula (a
    V row per cycle) and the V rows read are half the bytes."""
    eng = engine(cfg=CFG4)
    for stall, (heads, kv_heads, rows, keys, hd) in (
        (0.3, (4, 2, 2, 11, 2 * int(rng.integers(1, 25)))),
        (0.6, (2, 1, 3, 9, 48)),
    ):
        gd, cmd = setup(
            rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, hd=hd, kv_ld=keys + 2,
            cfg=CFG4,
        )  # fmt: skip
        res = check_op(eng, gd, cmd, seed=int(rng.integers(1 << 30)), stall=stall)
        assert res["error"] == ErrorCode.NONE
    heads, kv_heads, rows, keys, hd = 2, 1, 2, 40, 40
    got = {}
    for bits, e, cfg in ((8, engine(), CFG), (4, eng, CFG4)):
        gd, cmd = setup(rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, hd=hd, cfg=cfg)
        got[bits] = check_op(e, gd, cmd, seed=1, stall=0.0, max_latency=1)
        want = expected_cycles(heads, kv_heads, rows, keys, hd, e.records, e.out_lanes)
        assert got[bits]["cycles"] == want
    v_rows = heads * sum(keys - rows + t + 1 for t in range(rows))
    assert got[8]["bytes_read"] - got[4]["bytes_read"] == v_rows * hd // 2


# ------------------------------------------------------------------ blocks of held queries
def _old_formula(heads, rows, keys, hd, R, OL, latency=1):
    """The cycle formula of one query at a time (before blocks), for block 1."""
    n = sum(
        heads * (2 * -(-v // R) + v + -(-v // (2 * R)))
        for v in (keys - rows + t + 1 for t in range(rows))
    )
    return n + heads * rows * pv.min_wait(R) + latency + gqa_cycles() + 13 + -(-hd // OL)


def test_block1_is_the_old_formula():
    """Block 1 keeps the formula of one query at a time wherever that formula held (each
    query long enough for the writer), BitNet shapes included."""
    R, OL = DP.pv_records, DP.pv_out_lanes
    for heads, kv_heads, rows, keys, hd in (
        (2, 1, 2, 70, 40), (2, 2, 1, 9, 33), (16, 16, 1, 2048, 96), (20, 5, 1, 4096, 128),
        (4, 2, 3, 40, 20),
    ):  # fmt: skip
        want = _old_formula(heads, rows, keys, hd, R, OL)
        assert expected_cycles(heads, kv_heads, rows, keys, hd, R, OL, 1) == want
    # where the writer made a query wait, the recurrence has it (measured before: 184)
    assert expected_cycles(2, 1, 4, 4, 48, R, OL, 1) == 184


BLOCK_CASES = {
    # (block, heads, kv_heads, rows, keys, hd, kv bits)
    "B1 prefill": (1, 2, 1, 4, 4, 48, 8),
    "B4 decode n_rep 4 hd 128": (4, 8, 2, 1, 70, 128, 8),
    "B4 decode n_rep 4 hd 128 int4": (4, 8, 2, 1, 70, 128, 4),
    "B4 prefill n_rep 1": (4, 2, 2, 6, 40, 20, 8),
    "B4 prefill n_rep 4 int4": (4, 4, 1, 3, 36, 40, 4),
    "B4 prefill n_rep 2, one write per query": (4, 4, 2, 5, 9, 4, 8),
    "B3 prefill n_rep 1, rows = keys": (3, 1, 1, 7, 7, 9, 8),
}


@pytest.mark.parametrize("case", BLOCK_CASES)
def test_block_cycles_and_bytes(rng, case):
    """The module docstring's cycle recurrence and bytes read (``hw.ops.pv.expected_cycles``,
    ``read_bytes``), exactly, with a memory that never stalls; held queries read each V
    row once per block: fewer bytes than one query at a time whenever a block holds more
    than one query."""
    block, heads, kv_heads, rows, keys, hd, bits = BLOCK_CASES[case]
    cfg = CFG if bits == 8 else CFG4
    eng = engine(lanes=max(hd, 8), cfg=cfg, block=block)
    gd, cmd = setup(rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, hd=hd, cfg=cfg)
    res = check_op(eng, gd, cmd, seed=1, stall=0.0, max_latency=1)
    assert res["error"] == ErrorCode.NONE
    R, OL = eng.records, eng.out_lanes
    assert res["cycles"] == expected_cycles(heads, kv_heads, rows, keys, hd, R, OL, block)
    want = read_bytes(heads, kv_heads, rows, keys, hd, block, cfg)
    assert res["bytes_read"] == want
    if block > 1:
        assert want < read_bytes(heads, kv_heads, rows, keys, hd, 1, cfg)


@pytest.mark.parametrize("block", (4, 3))
def test_block_random_shapes_under_stalls(rng, block):
    """Held queries == golden under random read / write stalls and latencies: random
    head ratios (blocks of heads, of rows, partial ones), head_dim within one write or
    over several, INT8 and INT4 V rows, kv_ld > keys."""
    engines = {8: engine(block=block), 4: engine(cfg=CFG4, block=block)}
    for i in range(6):
        bits = (8, 4)[i % 2]
        kv_heads = int(rng.integers(1, 3))
        heads = kv_heads * int(rng.integers(1, 6))
        rows = int(rng.integers(1, 7))
        keys = rows + int(rng.integers(0, 40))
        hd = 2 * int(rng.integers(1, 25))
        kv_ld = keys + int(rng.integers(0, 3))
        cfg = CFG if bits == 8 else CFG4
        gd, cmd = setup(
            rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, hd=hd, kv_ld=kv_ld, cfg=cfg
        )
        stall = float(rng.choice([0.3, 0.6]))
        res = check_op(engines[bits], gd, cmd, seed=int(rng.integers(1 << 30)), stall=stall)
        assert res["error"] == ErrorCode.NONE
        assert res["bytes_written"] == rows * heads * hd * 4
