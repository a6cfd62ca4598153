"""EMBED and TLMM engines (hw/ops/embed.py, hw/ops/tlmm.py) against the golden backend
under random memory stalls (sim/op_bench.py), including their error codes."""
import numpy as np
import pytest

from golden.config import DEFAULT
from host.backends.golden import GoldenDevice
from hw import isa
from hw.accel import dma_bytes_for
from hw.isa import ErrorCode, Opcode
from hw.ops.embed import EmbedEngine
from hw.ops.tlmm import TLMMEngine
from sim.op_bench import check_op, put

W = dma_bytes_for(DEFAULT)
MAX_K = 512


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


def _tlmm(gd, rng, rows, k, n, extreme=False):
    if extreme:       # the longest-sum corner: all +127 (or -128) against all +1
        x = np.full((rows, k), 127 if rng.random() < 0.5 else -128, np.int8)
        w = np.ones((n, k), np.int8)
    else:
        x = rng.integers(-128, 128, (rows, k)).astype(np.int8)
        w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    return dict(src=put(gd, x), weights=put(gd, isa.pack_tlmm_weights(w)),
                dst=gd.alloc(rows * n * 4, 64), rows=rows, k=k, n=n)


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_tlmm(rng, stall):
    shapes = [(1, int(rng.integers(1, 200)), int(rng.integers(1, 20))),
              (2, int(rng.integers(80, 300)), int(rng.integers(1, 12)))]
    for i, (rows, k, n) in enumerate(shapes + [(1, MAX_K, 5)]):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _tlmm(gd, rng, rows, k, n, extreme=(k == MAX_K))
        r = check_op(TLMMEngine(DEFAULT, W, max_k=MAX_K), gd, isa.command(Opcode.TLMM, **f),
                     seed=int(rng.integers(1 << 30)), stall=stall)
        assert r["error"] == ErrorCode.NONE


@pytest.mark.parametrize("case,code", [
    ("k_over", ErrorCode.BAD_DIM), ("n0", ErrorCode.BAD_DIM), ("src_range", ErrorCode.ADDR_RANGE),
    ("dst_align", ErrorCode.ALIGN), ("dst_range", ErrorCode.ADDR_RANGE)])
def test_tlmm_errors(rng, case, code):
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    f = _tlmm(gd, rng, 1, 40, 4)
    f.update({"k_over": dict(k=MAX_K + 1), "n0": dict(n=0), "src_range": dict(src=gd.brk + 1024),
              "dst_align": dict(dst=f["dst"] + 2), "dst_range": dict(dst=gd.brk + 1024)}[case])
    if case == "k_over":        # golden allows it: the RTL's table depth is the limit
        gd2 = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _tlmm(gd2, rng, 1, MAX_K + 1, 4)
        eng = TLMMEngine(DEFAULT, W, max_k=MAX_K)
        with pytest.raises(AssertionError, match="RTL error BAD_DIM, golden NONE"):
            check_op(eng, gd2, isa.command(Opcode.TLMM, **f), seed=1)
        return
    r = check_op(TLMMEngine(DEFAULT, W, max_k=MAX_K), gd, isa.command(Opcode.TLMM, **f), seed=1)
    assert r["error"] == code
