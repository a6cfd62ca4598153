"""QK engine (hw/ops/qk.py) == the golden executor's QK, bit for bit, in Amaranth's
simulator (sim/op_bench.py: random memory stalls and latencies).

Random GQA shapes (head_dim up to the port width, strided q/kv leading dims, causal
masks whose zero runs cross output beats) at stall levels 0, 0.3 and 0.6; numeric
corners (extreme codes, zero / unnormalized / extreme-shift scales that saturate or
vanish); every argument error in the contract's check order; the RTL's head_dim
limit; the no-stall cycle count against ``hw.ops.qk.expected_cycles``.
"""

from __future__ import annotations

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode, dma_bytes
from host.backends.golden import GoldenDevice
from hw.ops.qk import QKEngine, blocks, expected_cycles, read_bytes
from sim.op_bench import arg_error_cases, check_errors, check_op, check_ops, put

CFG = DEFAULT
DP = design_point("kv260")
DP4 = design_point("kv260-kv4")  # the INT4 KV cache: key rows of head_dim/2 bytes
W = dma_bytes(CFG)


def _scales(rng, n, corners: bool) -> np.ndarray:
    """n scale records: normalized mantissas with shifts around the logit range (some
    logits saturate, some round to 0); with corners also zero, tiny and extreme ones."""
    mant = rng.integers(1 << 15, 1 << 16, size=n)
    shift = rng.integers(12, 28, size=n)
    if corners:
        kind = rng.integers(0, 8, size=n)
        mant = np.where(kind == 0, 0, mant)  # zero scale
        shift = np.where(kind == 0, rng.integers(-5, 5, size=n), shift)
        mant = np.where(kind == 1, rng.integers(1, 300, size=n), mant)  # unnormalized
        shift = np.where(kind == 2, -(1 << 15), shift)  # huge: saturate
        shift = np.where(kind == 3, (1 << 15) - 1, shift)  # tiny: 0
        shift = np.where(kind == 4, rng.integers(-20, 8, size=n), shift)  # left shifts
        mant = np.where(kind == 5, (1 << 16) - 1, mant)
    return isa.pack_scales(mant, shift)


def _codes(rng, n, corners: bool) -> np.ndarray:
    c = rng.integers(-128, 128, size=n, dtype=np.int8)
    if corners:
        pick = rng.random(n)
        c[pick < 0.1] = -128
        c[(pick >= 0.1) & (pick < 0.2)] = 127
        c[(pick >= 0.2) & (pick < 0.25)] = 0
    return c


def _kv_rows(rng, rows, head_dim, corners: bool, kv_bits: int = 8) -> np.ndarray:
    """Random KV rows in the format of ``kv_bits`` (int4: every nibble, -8 included)."""
    c = _codes(rng, rows * head_dim, corners)
    if kv_bits == 4:
        c = isa.pack_kv(c.reshape(rows, head_dim) >> 4, 4).reshape(-1)
    return c


def qk_command(
    gd,
    rng,
    *,
    heads,
    kv_heads,
    rows,
    keys,
    head_dim,
    q_ld=None,
    kv_ld=None,
    corners=False,
    kv_bits=8,
) -> isa.Command:
    """Random q/k codes and records in the QK memory layout (k rows in the ``kv_bits``
    format); dst allocated."""
    q_ld = rows if q_ld is None else q_ld
    kv_ld = keys if kv_ld is None else kv_ld
    q = put(gd, _codes(rng, heads * q_ld * head_dim, corners), align=int(rng.choice([1, 64])))
    qs = put(gd, _scales(rng, heads * q_ld, corners), align=4)
    k = put(
        gd, _kv_rows(rng, kv_heads * kv_ld, head_dim, corners, kv_bits), int(rng.choice([1, 64]))
    )
    ks = put(gd, _scales(rng, kv_heads * kv_ld, corners), align=4)
    dst = gd.alloc(heads * rows * keys * 2, int(rng.choice([2, 64])))
    return isa.command(
        Opcode.QK,
        q=q,
        q_scale=qs,
        k=k,
        k_scale=ks,
        dst=dst,
        rows=rows,
        keys=keys,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        q_ld=q_ld,
        kv_ld=kv_ld,
    )


def _engine(block=None, dp=DP):
    if block is None:
        return QKEngine.for_design(dp)
    return QKEngine(dp.datapath, W, records=dp.qk_records, out_lanes=dp.qk_out_lanes, block=block)


def _run(gd, cmd, rng, stall=0.3, block=None, dp=DP, **kw):
    return check_op(_engine(block, dp), gd, cmd, seed=int(rng.integers(1 << 31)), stall=stall, **kw)


@pytest.mark.parametrize("stall", [0.0, 0.3, 0.6])
def test_qk_random(rng, stall):
    for _ in range(2):
        gd = GoldenDevice(CFG, mem_size=1 << 20)
        kv_heads = int(rng.integers(1, 3))
        rows = int(rng.integers(1, 5))
        keys = rows + int(rng.integers(0, 70))
        cmd = qk_command(
            gd,
            rng,
            heads=kv_heads * int(rng.integers(1, 5)),
            kv_heads=kv_heads,
            rows=rows,
            keys=keys,
            head_dim=int(rng.integers(1, W + 1)),
            q_ld=rows + int(rng.integers(0, 3)),
            kv_ld=keys + int(rng.integers(0, 4)),
            corners=bool(rng.random() < 0.5),
        )
        block = int(rng.choice([DP.attn_block, 1, 2, 5]))
        res = _run(gd, cmd, rng, stall=stall, block=block)
        assert res["error"] == ErrorCode.NONE
        assert res["bytes_written"] == cmd.heads * rows * keys * 2
        shape = (cmd.heads, kv_heads, rows, keys, cmd.head_dim)
        assert res["bytes_read"] == read_bytes(*shape, block)


def test_qk_corners(rng):
    """Full-width head_dim with extreme codes and scales; BitNet's head_dim 96 decode;
    prefill (rows == keys) with zero runs longer than an output beat."""
    for shape in (
        dict(heads=2, kv_heads=1, rows=2, keys=5, head_dim=W),
        dict(heads=3, kv_heads=3, rows=1, keys=37, head_dim=96),
        dict(heads=1, kv_heads=1, rows=70, keys=70, head_dim=3),
    ):
        gd = GoldenDevice(CFG, mem_size=1 << 20)
        cmd = qk_command(gd, rng, corners=True, **shape)
        assert _run(gd, cmd, rng, stall=0.3)["error"] == ErrorCode.NONE
        # the corners do reach saturation and exact zeros
        got = np.frombuffer(gd.read(cmd.dst, cmd.heads * cmd.rows * cmd.keys * 2), np.int16)
        if shape["head_dim"] == W:
            assert (np.abs(got.astype(np.int64)) == (1 << 15) - 1).any() or (
                got == -(1 << 15)
            ).any()
            assert (got == 0).any()


@pytest.mark.parametrize("block", [DP.attn_block, 8, 3])
def test_qk_gqa(rng, block):
    """2B-4T-shaped GQA (n_rep = 4, head_dim 128) under stalls: a decode step and a
    prefill chunk (rows > 1, blocks straddling the causal diagonal), each K row and record
    read once per block (``hw.ops.qk.read_bytes``: n_rep-fold fewer K bytes in decode)."""
    for heads, kv_heads, rows, keys in ((8, 2, 1, 45), (4, 1, 6, 19)):
        gd = GoldenDevice(CFG, mem_size=1 << 20)
        cmd = qk_command(
            gd,
            rng,
            heads=heads,
            kv_heads=kv_heads,
            rows=rows,
            keys=keys,
            head_dim=W,
            corners=True,
        )
        res = _run(gd, cmd, rng, stall=0.4, block=block)
        assert res["error"] == ErrorCode.NONE
        assert res["bytes_read"] == read_bytes(heads, kv_heads, rows, keys, W, block)
        assert res["bytes_written"] == heads * rows * keys * 2
        if rows == 1 and block >= 4:
            # decode: each KV head's 45 K rows and records read once for its 4 heads
            assert res["bytes_read"] == kv_heads * (4 + keys) * (W + 4)


def test_qk_errors(rng):
    """Dimension errors in the contract's order, spans of the last head beyond the window,
    and every ALIGN / ADDR_RANGE case of the contract over all heads
    (sim/op_bench.arg_error_cases)."""
    gd = GoldenDevice(CFG, mem_size=1 << 20)
    base = qk_command(gd, rng, heads=4, kv_heads=2, rows=2, keys=3, head_dim=8, q_ld=3, kv_ld=4)
    cases = [
        (dict(rows=0), ErrorCode.BAD_DIM),
        (dict(heads=0), ErrorCode.BAD_DIM),
        (dict(kv_heads=0), ErrorCode.BAD_DIM),
        (dict(head_dim=0), ErrorCode.BAD_DIM),
        (dict(heads=3), ErrorCode.BAD_DIM),  # kv_heads does not divide
        (dict(rows=4), ErrorCode.BAD_DIM),  # rows > keys
        (dict(kv_ld=2), ErrorCode.BAD_DIM),  # kv_ld < keys
        (dict(q_ld=1), ErrorCode.BAD_DIM),  # q_ld < rows
        (dict(q_ld=1, dst=base.dst + 1), ErrorCode.BAD_DIM),  # dims before addresses
        (dict(q_ld=60000), ErrorCode.ADDR_RANGE),  # last head beyond it
        (dict(kv_ld=65535), ErrorCode.ADDR_RANGE),
    ]
    check_errors(
        QKEngine.for_design(DP),
        gd,
        base,
        cases + arg_error_cases(base, gd.alloc_base, gd.brk),
        seed=int(rng.integers(1 << 30)),
    )


def test_qk_head_dim_limit(rng):
    """head_dim > dma_bytes: the golden backend computes, the RTL reports BAD_DIM (a
    documented difference); check_op flags exactly that mismatch."""
    gd = GoldenDevice(CFG, mem_size=1 << 20)
    cmd = qk_command(gd, rng, heads=1, kv_heads=1, rows=1, keys=2, head_dim=W + 1)
    with pytest.raises(AssertionError, match="RTL error BAD_DIM, golden NONE"):
        _run(gd, cmd, rng)


def test_qk_cycles(rng):
    """No stalls, 1-cycle memory: the cycle count is the docstring's formula exactly, and
    the bytes read ``hw.ops.qk.read_bytes``, at several block sizes."""
    shapes = ((4, 2, 3, 40), (2, 1, 1, 100), (1, 1, 66, 66), (8, 2, 5, 21), (6, 2, 7, 9))
    for block in (DP.attn_block, 1, 3, 8):
        for heads, kv_heads, rows, keys in shapes:
            gd = GoldenDevice(CFG, mem_size=1 << 20)
            cmd = qk_command(
                gd, rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, head_dim=64
            )
            res = _run(gd, cmd, rng, stall=0.0, max_latency=1, block=block)
            shape = (heads, kv_heads, rows, keys)
            want = expected_cycles(*shape, DP.qk_records, DP.qk_out_lanes, block)
            assert res["cycles"] == want, (block, shape, res["cycles"], want)
            assert res["bytes_read"] == read_bytes(*shape, 64, block), (block, shape)


def test_qk_int4_kv(rng):
    """kv260-kv4 (packed int4 key rows, head_dim/2 bytes each) == golden under stalls,
    extreme nibbles included, an odd head_dim refused by both; the cycle formula is the
    INT8 one (a key row per cycle), the key rows read are half as many bytes."""
    cfg4 = DP4.datapath
    cases = []
    for heads, kv_heads, rows, keys, hd in (
        (4, 2, 2, 13, 2 * int(rng.integers(1, W // 2 + 1))),
        (3, 1, 1, 9, W),
        (2, 1, 1, 3, 7),  # odd head_dim: BAD_DIM
    ):
        gd = GoldenDevice(cfg4, mem_size=1 << 20)
        cmd = qk_command(
            gd, rng, heads=heads, kv_heads=kv_heads, rows=rows, keys=keys, head_dim=hd,
            kv_ld=keys + 2, corners=True, kv_bits=4 if hd % 2 == 0 else 8,
        )  # fmt: skip
        cases.append((gd, cmd, None))
    res = check_ops(
        QKEngine.for_design(DP4), cases, seed=int(rng.integers(1 << 30)), stall=(0.3, 0.6)
    )
    assert [r["error"] for r in res] == [ErrorCode.NONE] * 2 + [ErrorCode.BAD_DIM]
    heads, rows, keys, hd = 2, 3, 12, 64
    gd = GoldenDevice(cfg4, mem_size=1 << 20)
    cmd = qk_command(gd, rng, heads=heads, kv_heads=1, rows=rows, keys=keys, head_dim=hd, kv_bits=4)
    got = _run(gd, cmd, rng, stall=0.0, dp=DP4, max_latency=1)
    shape = (heads, 1, rows, keys)
    B = DP4.attn_block
    assert got["cycles"] == expected_cycles(*shape, DP4.qk_records, DP4.qk_out_lanes, B)
    # the int8 cache's bytes less half of every key row read
    keys_read = sum(v for _, _, v in blocks(*shape, B))
    want = read_bytes(*shape, hd, B) - keys_read * hd // 2
    assert got["bytes_read"] == read_bytes(*shape, hd, B, cfg4) == want
