"""EMBED engine (hw/ops/embed.py) against the golden backend under random memory stalls
(sim/op_bench.py), including its error codes."""
import numpy as np
import pytest

from golden.config import DEFAULT
from host.backends.golden import GoldenDevice
from golden import isa
from hw.accel import dma_bytes_for
from golden.isa import ErrorCode, Opcode
from hw.ops.embed import EmbedEngine
from sim.op_bench import check_op, put

W = dma_bytes_for(DEFAULT)


def _embed(gd, rng, rows, dim, vocab, bad_token=False):
    tab = rng.integers(-2**31, 2**31, (vocab, dim)).astype(np.int32)
    tok = rng.integers(0, vocab, rows).astype(np.uint32)
    if bad_token:
        tok[rng.integers(rows)] = vocab
    return dict(tokens=put(gd, tok), table=put(gd, tab), dst=gd.alloc(rows * dim * 4, 64),
                rows=rows, dim=dim, vocab=vocab)


@pytest.mark.parametrize("stall", [0.0, 0.3, 0.6])
def test_embed(rng, stall):
    for _ in range(3):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _embed(gd, rng, int(rng.integers(1, 6)), int(rng.integers(1, 80)), 40)
        r = check_op(EmbedEngine(DEFAULT, W), gd, isa.command(Opcode.EMBED, **f),
                     seed=int(rng.integers(1 << 30)), stall=stall)
        assert r["error"] == ErrorCode.NONE and r["bytes_written"] == f["rows"] * f["dim"] * 4


@pytest.mark.parametrize("case,code", [
    ("rows0", ErrorCode.BAD_DIM), ("tok_align", ErrorCode.ALIGN),
    ("tok_range", ErrorCode.ADDR_RANGE), ("bad_token", ErrorCode.BAD_OPERAND),
    ("dst_align", ErrorCode.ALIGN), ("table_range", ErrorCode.ADDR_RANGE)])
def test_embed_errors(rng, case, code):
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    f = _embed(gd, rng, 3, 10, 12, bad_token=case == "bad_token")
    f.update({"rows0": dict(rows=0), "tok_align": dict(tokens=f["tokens"] + 2),
              "tok_range": dict(tokens=gd.brk + 1024), "bad_token": {},
              "dst_align": dict(dst=f["dst"] + 1), "table_range": dict(vocab=1000)}[case])
    r = check_op(EmbedEngine(DEFAULT, W), gd, isa.command(Opcode.EMBED, **f), seed=1)
    assert r["error"] == code
