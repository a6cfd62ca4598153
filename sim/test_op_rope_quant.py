"""ROPE_QUANT engine (hw/ops/rope_quant.py) against the golden executor, bit for bit, in
Amaranth's simulator.

``check_op`` (sim/op_bench.py) runs one command per simulator; building a simulator of
this engine costs about a second, so most vectors go through ``_batch``
(``sim/op_bench.check_ops``), which runs many commands back to back through one engine
(which also tests that a command -- an aborted one included -- leaves nothing behind)
with the same checks against the golden executor: random stalls of every handshake and
random read latency, the same ErrorCode, identical memory without error, no write before
an argument error, nothing outside the window, nothing outstanding at done. Every error
code is also checked once through check_op.
"""

from __future__ import annotations

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode
from golden.rope import rope_tables
from host.backends.golden import GoldenDevice
from hw.ops.rope_quant import RopeQuantEngine, expected_cycles
from sim.op_bench import (
    ARG_ERRORS,
    STALLS,
    Job,
    check_arg_errors,
    check_op,
    check_ops,
    golden_run,
    put,
    run_engine,
)

CFG = DEFAULT
DP = design_point("kv260")
DMA = DP.dma_bytes
I32 = np.iinfo(np.int32)
FAR = 1 << 30  # an address beyond every test memory


DP4 = design_point("kv260-kv4")  # the INT4 KV cache (kv = 1: packed int4 rows)


def _engine(cfg=CFG, **kw) -> RopeQuantEngine:
    return RopeQuantEngine(cfg, DMA, **{**RopeQuantEngine.design_params(DP), **kw})


# ------------------------------------------------------------------ operands
def _src(rng, rows, heads, hd, corners: bool) -> np.ndarray:
    """int32 accumulators of a random magnitude; with corners: extremes, a zero head
    (amax 0), a head entirely at an extreme."""
    mag = 1 << int(rng.integers(1, 32))
    x = rng.integers(-mag, mag, size=(rows, heads, hd), dtype=np.int64)
    if corners:
        flat = x.reshape(-1)
        idx = rng.choice(flat.size, size=max(1, flat.size // 8), replace=False)
        flat[idx] = rng.choice([I32.min, I32.max, I32.min + 1, 0, 1, -1], size=idx.size)
        x[rng.integers(rows), rng.integers(heads)] = 0
        if rows * heads > 1:
            x[rng.integers(rows), rng.integers(heads)] = rng.choice([I32.min, I32.max])
    return np.clip(x, I32.min, I32.max).astype(np.int32).reshape(rows, heads * hd)


def _scales(rng, rows, corners: bool) -> np.ndarray:
    """Token scale records sx; with corners a zero scale and an unnormalized mantissa."""
    mant = rng.integers(1 << 15, 1 << 16, size=rows)
    shift = rng.integers(-20, 40, size=rows)
    if corners:
        k = rng.integers(rows)
        mant[k], shift[k] = 0, 0
        if rows > 1:
            mant[rng.integers(rows)] = rng.integers(1, 1 << 15)
    return isa.pack_scales(mant, shift)


def _table(rng, hd, table_rows, corners: bool) -> np.ndarray:
    """The model's RoPE table rows, or (corners) any int16 the memory may hold."""
    if corners:
        t = rng.integers(-(1 << 15), 1 << 15, size=(table_rows, hd)).astype(np.int16)
        t[0, 0], t[-1, -1] = -(1 << 15), (1 << 15) - 1
        return t
    cos_q, sin_q = rope_tables(hd, CFG.rope)
    start = int(rng.integers(0, CFG.rope.max_pos - table_rows + 1))
    return isa.rope_table(cos_q[start : start + table_rows], sin_q[start : start + table_rows])


def _case(
    rng,
    *,
    rows,
    heads,
    hd,
    rope,
    corners=False,
    ld=None,
    pos=None,
    table_rows=None,
    c=None,
    sx=None,
    over=None,
    cfg=CFG,
    kv=0,
):
    """A golden device with the operands placed (dst/dst_scale inside a KV cache of
    capacity ld, at a random append offset) and the ROPE_QUANT command; ``over``
    replaces command fields (bad dims/addresses); ``kv``: a KV-cache row of ``cfg``'s
    format."""
    gd = GoldenDevice(cfg, mem_size=1 << 20)
    row = isa.kv_row(hd, kv, cfg)
    ld = rows + int(rng.integers(0, 3)) if ld is None else ld
    off = int(rng.integers(0, ld - rows + 1))
    table_rows = rows + int(rng.integers(0, 4)) if table_rows is None else table_rows
    pos = int(rng.integers(0, table_rows - rows + 1)) if pos is None else pos
    src = put(gd, _src(rng, rows, heads, hd, corners))
    sxa = put(gd, _scales(rng, rows, corners) if sx is None else sx)
    table = put(gd, _table(rng, hd, table_rows, corners)) if rope else put(gd, b"\0" * 4)
    dst = put(gd, rng.integers(-128, 128, size=heads * ld * row).astype(np.int8))
    dsc = put(gd, rng.integers(0, 256, size=heads * ld * 4).astype(np.uint8))
    if c is None:
        c = (int(rng.integers(1 << 15, 1 << 16)), int(rng.integers(0, 30)))
    fields = dict(
        src=src,
        src_scale=sxa,
        table=table,
        dst=dst + off * row,
        dst_scale=dsc + off * 4,
        rows=rows,
        heads=heads,
        head_dim=hd,
        ld=ld,
        pos=pos,
        table_rows=table_rows,
        c_mant=c[0],
        c_shift=c[1],
        rope=int(rope),
        kv=kv,
    )
    fields.update(over or {})
    return gd, isa.command(Opcode.ROPE_QUANT, **fields)


def _scale_range_sx(rng, rows, shift):
    """Token scales with one token's shift at an int16 extreme: with c's shift pushing
    the same way, that token's records leave int16 (SCALE_RANGE)."""
    sh = np.full(rows, 10)
    sh[int(rng.integers(rows))] = shift
    return isa.pack_scales(np.full(rows, 1 << 15), sh)


def _scale_range_c(shift):
    return (1 << 15, (1 << 14) if shift > 0 else -(1 << 14))


# ------------------------------------------------------------------ runners
def _check(rng, engine, gd, cmd, want=None, stall=None):
    """check_op (sim/op_bench.py) at a random (or given) stall level."""
    stall = float(rng.choice(STALLS)) if stall is None else stall
    res = check_op(engine, gd, cmd, seed=int(rng.integers(1 << 30)), stall=stall)
    if want is not None:
        assert res["error"] == want, f"{cmd}: {res['error'].name}, expected {want.name}"
    return res


def _batch(rng, engine, cases, max_latency=6, max_outstanding=16):
    """Run ``cases`` [(gd, cmd, expect)] back to back through one engine
    (sim/op_bench.check_ops), each against its golden run (expect None) or, for the
    engine's own limits that golden does not have, against ``expect`` with nothing read
    or written. Each command gets a random stall level. Returns [{error, cycles,
    bytes_written, ...}]."""
    return check_ops(
        engine,
        cases,
        seed=int(rng.integers(1 << 30)),
        stall=STALLS,
        max_latency=max_latency,
        max_outstanding=max_outstanding,
    )


# ------------------------------------------------------------------ functional
def test_random_shapes(rng):
    """Random shapes (any even head_dim up to 128), rope 0/1, with and without numeric
    corners, back to back at random stall levels; one more through check_op."""
    cases = []
    for _ in range(6):
        rows, heads = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        hd = 2 * int(rng.integers(1, 65))
        gd, cmd = _case(
            rng,
            rows=rows,
            heads=heads,
            hd=hd,
            rope=int(rng.integers(2)),
            corners=bool(rng.integers(2)),
        )
        cases.append((gd, cmd, None))
    for (_, cmd, _), res in zip(cases, _batch(rng, _engine(), cases), strict=True):
        assert res["error"] == ErrorCode.NONE
        assert res["bytes_written"] == cmd.rows * cmd.heads * (cmd.head_dim + 4)
    gd, cmd = _case(
        rng,
        rows=2,
        heads=2,
        hd=2 * int(rng.integers(1, 65)),
        rope=int(rng.integers(2)),
        corners=True,
    )
    _check(rng, _engine(), gd, cmd, want=ErrorCode.NONE)


@pytest.mark.parametrize("stall", STALLS)
def test_corners_check_op(rng, stall):
    """BitNet-0.73B head_dim 96 with extremes, zero heads, zero / unnormalized token
    scales and full-range int16 table values, through check_op at each stall level."""
    gd, cmd = _case(rng, rows=3, heads=2, hd=96, rope=1, corners=True)
    _check(rng, _engine(), gd, cmd, want=ErrorCode.NONE, stall=stall)


def _saturating_case(rope_sign: int):
    """x = +-(2^31-1), -2^31 with cos = -2^15, sin = +-(2^15-1): |x1*c -+ x2*s| near
    2^47, far beyond int32: the rotation's saturation decides the codes."""
    hd, rows = 8, 2
    gd = GoldenDevice(CFG, mem_size=1 << 20)
    x = np.tile(
        np.array([I32.max, I32.max, I32.min, 7, -I32.max, I32.max, 5, I32.min], np.int32), (rows, 1)
    )
    tab = np.full((rows, hd), -(1 << 15), np.int16)
    tab[:, hd // 2 :] = rope_sign * ((1 << 15) - 1)
    cmd = isa.command(
        Opcode.ROPE_QUANT,
        src=put(gd, x),
        src_scale=put(gd, isa.pack_scales([1 << 15] * rows, [3] * rows)),
        table=put(gd, tab),
        dst=put(gd, np.zeros(rows * hd, np.int8)),
        dst_scale=put(gd, np.zeros(rows * 4, np.uint8)),
        rows=rows,
        heads=1,
        head_dim=hd,
        ld=rows,
        pos=0,
        table_rows=rows,
        c_mant=1 << 15,
        c_shift=0,
        rope=1,
    )
    return gd, cmd


def test_saturation_and_small_engines(rng):
    """Saturating rotations; head_dim at the default limit (128); narrow engines (one
    lane with a memory that holds 2 reads; two lanes) with head_dims up to their limit
    and one beyond it (BAD_DIM, the engine's limit: no golden comparison, nothing
    read)."""
    cases = [(*_saturating_case(s), None) for s in (1, -1)]
    cases.append((*_case(rng, rows=1, heads=2, hd=128, rope=1, corners=True), None))
    cases.append((*_case(rng, rows=1, heads=1, hd=130, rope=1), ErrorCode.BAD_DIM))
    for res in _batch(rng, _engine(), cases)[:3]:
        assert res["error"] == ErrorCode.NONE
    small = [
        (*_case(rng, rows=2, heads=2, hd=hd, rope=int(rng.integers(2)), corners=True), None)
        for hd in (2, 6, 8)
    ]
    small.append((*_case(rng, rows=1, heads=1, hd=10, rope=1), ErrorCode.BAD_DIM))
    _batch(rng, _engine(lanes=1, max_head_dim=8), small, max_outstanding=2)
    mid = [(*_case(rng, rows=2, heads=3, hd=hd, rope=1, corners=True), None) for hd in (4, 30)]
    _batch(rng, _engine(lanes=2, max_head_dim=32), mid)


# ------------------------------------------------------------------ errors
def test_argument_errors_in_order(rng):
    """The dimension checks in the contract's order (dims, ld, the table's positions only
    with rope=1, after src_scale and before the table's address), combinations where two
    are bad; every ALIGN / ADDR_RANGE case of the contract for rope 1 and 0 (the table
    unused) from sim/op_bench.arg_error_cases."""
    base = dict(rows=2, heads=3, hd=8)
    cases = [
        (dict(rows=0, src=FAR), 1),
        (dict(heads=0), 0),
        (dict(head_dim=0), 1),
        (dict(head_dim=7, src=2), 0),
        (dict(ld=1, src=2), 1),
        (dict(pos=3, table_rows=4), 1),  # positions beyond the table
        (dict(pos=3, table_rows=4), 0),  # ... rope=0: not used
        (dict(src=4 * 17 + 2), 1),
        (dict(src_scale=FAR, pos=5, table_rows=5), 1),  # src_scale before the table
        (dict(pos=5, table_rows=5, table=1), 1),  # table dims before its address
        (dict(table=1, dst=FAR), 0),  # rope=0: table unused
        (dict(dst=FAR, dst_scale=2), 1),
    ]
    batch = [(*_case(rng, rope=rope, over=over, **base), None) for over, rope in cases]
    results = _batch(rng, _engine(), batch)
    codes = {r["error"] for r in results}
    assert set(ARG_ERRORS) | {ErrorCode.NONE} <= codes
    for rope in (1, 0):
        gd, cmd = _case(rng, rope=rope, **base)
        check_arg_errors(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)), stall=STALLS)
    # the same through check_op, one per code
    for over, want in (
        (dict(head_dim=5), ErrorCode.BAD_DIM),
        (dict(src_scale=2), ErrorCode.ALIGN),
        (dict(table=FAR), ErrorCode.ADDR_RANGE),
    ):
        gd, cmd = _case(rng, rope=1, over=over, **base)
        _check(rng, _engine(), gd, cmd, want=want)


def test_later_head_out_of_range(rng):
    """Head 0 fits at the very end of memory (the window's end), heads 1.. (h*ld stride)
    do not: dst and dst_scale each. dst through check_op."""
    rows, heads, hd, ld = 2, 3, 8, 64
    cases = []
    for field, size in (("dst", rows * hd), ("dst_scale", rows * 4)):
        gd, cmd = _case(rng, rows=rows, heads=heads, hd=hd, rope=1, ld=ld)
        cases.append((gd, isa.command(Opcode.ROPE_QUANT, **{**cmd.args, field: gd.brk - size})))
    _check(rng, _engine(), *cases[0], want=ErrorCode.ADDR_RANGE)
    res = _batch(rng, _engine(), [(*cases[1], None)])
    assert res[0]["error"] == ErrorCode.ADDR_RANGE


@pytest.mark.parametrize("shift", [(1 << 15) - 1, -(1 << 15)])
def test_scale_range(rng, shift):
    """SCALE_RANGE (a record shift beyond int16, either side): alone, and with a bad
    dst_scale (golden packs the records before it checks dst_scale, so SCALE_RANGE
    wins; the engine runs dry and writes nothing); without SCALE_RANGE the dry run
    reports the dst_scale error. Back to back, so the command after an abort is checked
    too; one of each through check_op."""
    c = _scale_range_c(shift)
    cases = []
    for over in ({}, dict(dst_scale=2), dict(dst_scale=FAR), {}):
        cases.append(
            (
                *_case(
                    rng,
                    rows=3,
                    heads=2,
                    hd=16,
                    rope=int(rng.integers(2)),
                    c=c,
                    sx=_scale_range_sx(rng, 3, shift),
                    over=over,
                ),
                None,
            )
        )
        cases.append((*_case(rng, rows=2, heads=4, hd=32, rope=1, corners=True, over=over), None))
    want = [
        ErrorCode.SCALE_RANGE,
        ErrorCode.NONE,
        ErrorCode.SCALE_RANGE,
        ErrorCode.ALIGN,
        ErrorCode.SCALE_RANGE,
        ErrorCode.ADDR_RANGE,
        ErrorCode.SCALE_RANGE,
        ErrorCode.NONE,
    ]
    assert [r["error"] for r in _batch(rng, _engine(), cases)] == want
    over = {} if shift > 0 else dict(dst_scale=2)
    gd, cmd = _case(
        rng, rows=3, heads=2, hd=16, rope=1, c=c, sx=_scale_range_sx(rng, 3, shift), over=over
    )
    _check(rng, _engine(), gd, cmd, want=ErrorCode.SCALE_RANGE)
    if shift > 0:
        gd, cmd = _case(rng, rows=2, heads=2, hd=8, rope=1, over=dict(dst_scale=FAR))
        _check(rng, _engine(), gd, cmd, want=ErrorCode.ADDR_RANGE)


# ------------------------------------------------------------------ cycles
def test_cycles_bitnet_shape(rng):
    """BitNet-0.73B q/k shape (16 heads x 96), 2 tokens, no stalls, through check_op
    (read latency 1..6): within 1 % of ``expected_cycles`` (latency 1) and at least 3
    elements per cycle (the cycle budget of a decode layer's three ROPE_QUANT commands,
    1.8K cycles, needs 2.6)."""
    rows, heads, hd = 2, 16, 96
    gd, cmd = _case(rng, rows=rows, heads=heads, hd=hd, rope=1)
    res = _check(rng, _engine(), gd, cmd, want=ErrorCode.NONE, stall=0.0)
    want = expected_cycles(rows, heads, hd, True, CFG, DP.rope_lanes)
    rate = rows * heads * hd / res["cycles"]
    print(
        f"ROPE_QUANT rows={rows} heads={heads} hd={hd}: {res['cycles']} cycles "
        f"(formula {want}), {rate:.2f} elements/cycle"
    )
    assert want <= res["cycles"] <= want + 6  # the first response's latency is 1..6
    assert rate >= 3.0


@pytest.mark.parametrize("lanes", [4, 2, 1])
def test_cycles_exact(rng, lanes):
    """``expected_cycles`` exactly, with a 1-cycle memory and no stalls, over head_dims
    where the reads set the pace and where the head unit's divide does, rope 0 and 1,
    one and several tokens; results checked against golden as every run."""
    mhd = 128 if lanes > 1 else 64
    shapes = [
        (rows, heads, hd, rope)
        for hd in ((2, 16, 96, 128) if lanes == 4 else (2, 8, 64))
        for rows, heads, rope in ((1, 1, 1), (2, 3, 0), (1, 6, 1))
        if hd <= mhd
    ]
    jobs, wants = [], []
    for rows, heads, hd, rope in shapes:
        gd, cmd = _case(rng, rows=rows, heads=heads, hd=hd, rope=rope)
        before, want, err = golden_run(gd, cmd)
        jobs.append(Job(cmd, before, gd.alloc_base, gd.brk, 0.0, (1, 1), 1000))
        wants.append(want)
    results = run_engine(_engine(lanes=lanes, max_head_dim=mhd), jobs, seed=int(rng.integers(99)))
    for (rows, heads, hd, rope), job, want, res in zip(shapes, jobs, wants, results, strict=True):
        assert res["error"] == ErrorCode.NONE
        assert np.array_equal(job.mem, want), f"rows {rows} heads {heads} hd {hd}: memory"
        cyc = expected_cycles(rows, heads, hd, rope, CFG, lanes)
        assert res["cycles"] == cyc, f"rows {rows} heads {heads} hd {hd} rope {rope}"


def test_int4_kv_rows(rng):
    """kv260-kv4: kv = 1 writes packed int4 rows (codes in [-7, 7], head_dim/2 bytes),
    kv = 0 int8 q rows, back to back at random stalls, with corners; head_dim % 4 != 0
    with kv = 1 is BAD_DIM; no stalls, 1-cycle memory: the INT8 cycle formula."""
    cfg4 = DP4.datapath
    cases = []
    for kv, rope, corners in ((1, 1, True), (1, 0, True), (0, 1, False), (1, 1, False)):
        hd = 4 * int(rng.integers(1, 33))
        rows, heads = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        cases.append(
            (*_case(rng, rows=rows, heads=heads, hd=hd, rope=rope, corners=corners,
                    cfg=cfg4, kv=kv), None)
        )  # fmt: skip
    cases.append((*_case(rng, rows=1, heads=2, hd=6, rope=1, cfg=cfg4, kv=1), None))
    eng = _engine(cfg4)
    res = _batch(rng, eng, cases)
    for (gd, cmd, _), r in zip(cases[:-1], res, strict=False):
        assert r["error"] == ErrorCode.NONE
        row = cmd.head_dim // 2 if cmd.kv else cmd.head_dim
        assert r["bytes_written"] == cmd.rows * cmd.heads * (row + 4)
        if cmd.kv:  # symmetric int4 codes: -8 never written
            got = gd.read_array(cmd.dst, np.int8, (cmd.rows * row,))
            assert -8 not in isa.unpack_kv(got, 4)
    assert res[-1]["error"] == ErrorCode.BAD_DIM
    jobs, shapes = [], [(1, 4, 96, 1), (2, 3, 32, 0)]
    for rows, heads, hd, rope in shapes:
        gd, cmd = _case(rng, rows=rows, heads=heads, hd=hd, rope=rope, cfg=cfg4, kv=1)
        before, want, _ = golden_run(gd, cmd)
        jobs.append((Job(cmd, before, gd.alloc_base, gd.brk, 0.0, (1, 1), 1000), want))
    out = run_engine(eng, [j for j, _ in jobs], seed=int(rng.integers(99)))
    for (rows, heads, hd, rope), (job, want), r in zip(shapes, jobs, out, strict=True):
        assert np.array_equal(job.mem, want)
        assert r["cycles"] == expected_cycles(rows, heads, hd, rope, cfg4, DP4.rope_lanes)
