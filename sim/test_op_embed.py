"""EMBED engine (hw/ops/embed.py) against the golden executor under random memory stalls
(sim/op_bench.py), including its error codes and the no-stall cycle count."""

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode
from host.backends.golden import GoldenDevice
from hw.ops.embed import EmbedEngine, expected_cycles
from sim.op_bench import check_arg_errors, check_op, put

DP = design_point("kv260")
W = DP.dma_bytes


def _engine(**kw) -> EmbedEngine:
    return EmbedEngine(DEFAULT, W, **{**EmbedEngine.design_params(DP), **kw})


def _embed(gd, rng, rows, dim, vocab, bad_token=False):
    tab = rng.integers(-(2**31), 2**31, (vocab, dim)).astype(np.int32)
    tok = rng.integers(0, vocab, rows).astype(np.uint32)
    if bad_token:
        tok[rng.integers(rows)] = vocab
    return dict(
        tokens=put(gd, tok),
        table=put(gd, tab),
        dst=gd.alloc(rows * dim * 4, 64),
        rows=rows,
        dim=dim,
        vocab=vocab,
    )


@pytest.mark.parametrize("stall", [0.0, 0.3, 0.6])
def test_embed(rng, stall):
    for _ in range(3):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _embed(gd, rng, int(rng.integers(1, 6)), int(rng.integers(1, 80)), 40)
        r = check_op(
            _engine(),
            gd,
            isa.command(Opcode.EMBED, **f),
            seed=int(rng.integers(1 << 30)),
            stall=stall,
        )
        assert r["error"] == ErrorCode.NONE and r["bytes_written"] == f["rows"] * f["dim"] * 4


@pytest.mark.parametrize(
    "case,code",
    [
        ("rows0", ErrorCode.BAD_DIM),
        ("bad_token", ErrorCode.BAD_OPERAND),
        ("table_range", ErrorCode.ADDR_RANGE),
    ],
)
def test_embed_errors(rng, case, code):
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    f = _embed(gd, rng, 3, 10, 12, bad_token=case == "bad_token")
    f.update({"rows0": dict(rows=0), "bad_token": {}, "table_range": dict(vocab=1000)}[case])
    r = check_op(_engine(), gd, isa.command(Opcode.EMBED, **f), seed=1)
    assert r["error"] == code


@pytest.mark.parametrize("scan_ids", [4, 1])
def test_bad_token_anywhere(rng, scan_ids):
    """An id >= vocab at every position of a 9-row scan (the first, a lane in the middle of
    a read, the last response's last lane) is BAD_OPERAND, under stalls."""
    for pos in range(9):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _embed(gd, rng, 9, 5, 12)
        tok = np.frombuffer(gd.read(f["tokens"], 9 * 4), np.uint32).copy()
        tok[pos] = 12 + pos
        gd.write(f["tokens"], tok.tobytes())
        r = check_op(
            _engine(scan_ids=scan_ids),
            gd,
            isa.command(Opcode.EMBED, **f),
            seed=int(rng.integers(1 << 30)),
            stall=0.3,
        )
        assert r["error"] == ErrorCode.BAD_OPERAND, (pos, r["error"])


def test_contract_errors(rng):
    """Every ALIGN / ADDR_RANGE case of the EMBED contract, in its order
    (sim/op_bench.arg_error_cases), the token scan between tokens and table."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    cmd = isa.command(Opcode.EMBED, **_embed(gd, rng, 3, 10, 12))
    check_arg_errors(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)))


@pytest.mark.parametrize("scan_ids", [4, 1])
def test_embed_cycles(rng, scan_ids):
    """No stalls, 1-cycle memory: ``hw.ops.embed.expected_cycles`` exactly (the kv260
    point's scan width and the narrowest)."""
    for rows, dim in ((1, 1), (3, 40), (40, 70)):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _embed(gd, rng, rows, dim, 50)
        r = check_op(
            _engine(scan_ids=scan_ids),
            gd,
            isa.command(Opcode.EMBED, **f),
            stall=0.0,
            max_latency=1,
        )
        want = expected_cycles(rows, dim, W, scan_ids)
        assert r["cycles"] == want, (rows, dim, r["cycles"], want)
