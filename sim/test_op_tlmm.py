# amaranth: UnusedElaboratable=no
"""TLMM engine (hw/ops/tlmm.py) against the golden executor under random memory stalls
(sim/op_bench.py), including its error codes, the RTL's k and n limits and the no-stall
cycle count; unmasked, masked (mask <= 0 zeroes an output) and masked with skip (wholly
masked row blocks are not read)."""

import numpy as np
import pytest

from golden import isa
from golden import tlmm as gtlmm
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode, dma_bytes
from host.backends.golden import GoldenDevice
from hw.ops.tlmm import TLMMEngine, expected_cycles
from sim.op_bench import check_arg_errors, check_op, check_ops, put

W = dma_bytes(DEFAULT)
MAX_K = 512
MAX_N = 100  # not a multiple of a mask beat's 32 entries
Q = DEFAULT.tlmm.replicas


def _engine(tokens=1):
    return TLMMEngine(DEFAULT, W, max_k=MAX_K, max_n=MAX_N, tokens=tokens)


def _gd(tokens=1):
    return GoldenDevice(DEFAULT, mem_size=1 << 20, tlmm_tokens=tokens)


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


def _check(gd, f, rng, stall) -> dict:
    """TLMM with fields ``f`` on the engine == golden under ``stall``; its run's figures."""
    r = check_op(
        _engine(), gd, isa.command(Opcode.TLMM, **f), seed=int(rng.integers(1 << 30)), stall=stall
    )
    assert r["error"] == ErrorCode.NONE
    return r


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_tlmm(rng, stall):
    shapes = [
        (1, int(rng.integers(1, 200)), int(rng.integers(1, 20))),
        (2, int(rng.integers(80, 300)), int(rng.integers(1, 12))),
    ]
    for rows, k, n in shapes + [(1, MAX_K, 5)]:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        _check(gd, _tlmm(gd, rng, rows, k, n, extreme=(k == MAX_K)), rng, stall)


@pytest.mark.parametrize("case,code", [("k_over", ErrorCode.BAD_DIM), ("n0", ErrorCode.BAD_DIM)])
def test_tlmm_errors(rng, case, code):
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    f = _tlmm(gd, rng, 1, 40, 4)
    f.update({"k_over": dict(k=MAX_K + 1), "n0": dict(n=0)}[case])
    if case == "k_over":  # golden allows it: the RTL's table depth is the limit
        gd2 = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _tlmm(gd2, rng, 1, MAX_K + 1, 4)
        eng = _engine()
        with pytest.raises(AssertionError, match="RTL error BAD_DIM, golden NONE"):
            check_op(eng, gd2, isa.command(Opcode.TLMM, **f), seed=1)
        return
    r = check_op(_engine(), gd, isa.command(Opcode.TLMM, **f), seed=1)
    assert r["error"] == code


def test_contract_errors(rng):
    """Every ALIGN / ADDR_RANGE case of the TLMM contract, in its order
    (sim/op_bench.arg_error_cases)."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    cmd = isa.command(Opcode.TLMM, **_tlmm(gd, rng, 1, 40, 4))
    check_arg_errors(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)))


def test_tlmm_cycles(rng):
    """No stalls, 1-cycle memory: ``hw.ops.tlmm.expected_cycles`` exactly."""
    eng = _engine()
    cases, shapes = [], ((1, 85, 4), (2, 200, 13), (4, 50, 30))
    for rows, k, n in shapes:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cases.append((gd, isa.command(Opcode.TLMM, **_tlmm(gd, rng, rows, k, n)), None))
    for (rows, k, n), r in zip(
        shapes, check_ops(eng, cases, stall=0.0, max_latency=1), strict=False
    ):
        assert r["cycles"] == expected_cycles(rows, k, n, DEFAULT), (rows, k, n, r["cycles"])


def test_tlmm_src_skip(rng):
    """src_skip: the rows are a k slice of a wider matrix (the runtime's K-split), at an odd
    offset, under stalls; with no stalls the cycles are the unsliced formula's."""
    rows, k, wide, k0 = 3, 70, 181, 37
    cases = []
    for _ in range(2):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f = _tlmm(gd, rng, rows, k, 6)
        x = rng.integers(-128, 128, (rows, wide)).astype(np.int8)
        f.update(src=put(gd, x) + k0, src_skip=wide - k)
        cases.append((gd, isa.command(Opcode.TLMM, **f), None))
    r = _check(cases[0][0], cases[0][1].args, rng, 0.4)
    assert r["bytes_read"] == rows * k + isa.tlmm_weight_bytes(6, k) * rows
    (r,) = check_ops(_engine(), cases[1:], stall=0.0, max_latency=1)
    assert r["cycles"] == expected_cycles(rows, k, 6, DEFAULT)


# ------------------------------------------------------------------ masked / skip
def _mask(rng, rows, n, dead_rows=()):
    """A gate-like mask: ~75 % of the entries <= 0 (zeros, negatives, INT32_MIN), the
    others > 0 (1 and INT32_MAX among them); one wholly masked row block per row (where
    a row has more than one) and the rows ``dead_rows`` wholly masked."""
    lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    dead = rng.choice(np.array([0, -1, -7, lo], np.int64), (rows, n))
    live = rng.choice(np.array([1, 2, 1000, hi], np.int64), (rows, n))
    mask = np.where(rng.random((rows, n)) < 0.75, dead, live).astype(np.int32)
    nb = -(-n // Q)
    for r in range(rows):
        if nb > 1:
            b = int(rng.integers(nb))
            mask[r, b * Q : (b + 1) * Q] = 0
    for r in dead_rows:
        mask[r] = dead[r]
    return mask


def _masked(gd, rng, rows, k, n, skip, dead_rows=()):
    f = _tlmm(gd, rng, rows, k, n)
    mask = _mask(rng, rows, n, dead_rows)
    f.update(mask=put(gd, mask), masked=1, skip=skip)
    x = gd.memory[f["src"] : f["src"] + rows * k].view(np.int8).reshape(rows, k)
    return f, mask, x.copy()


@pytest.mark.parametrize("skip", [0, 1])
@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_tlmm_masked(rng, stall, skip):
    """masked=1 (and skip=1): the golden executor's outputs (zeros where mask <= 0) and
    its bytes read (``isa.tlmm_read_bytes``: a skipped block's beats are not read);
    rows 1 and 3 (one of them wholly masked), n not a multiple of Q."""
    shapes = [
        (1, int(rng.integers(1, 200)), int(rng.integers(2, MAX_N // Q)) * Q + 1, ()),
        (3, int(rng.integers(80, 300)), int(rng.integers(5, MAX_N // Q)) * Q - 2, (1,)),
        (1, int(rng.integers(1, 90)), MAX_N, (0,)),
        (7, int(rng.integers(1, 90)), int(rng.integers(1, 2 * Q)), (3,)),
    ]
    for rows, k, n, dead_rows in shapes:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f, mask, x = _masked(gd, rng, rows, k, n, skip, dead_rows)
        assert not gtlmm.live_blocks(mask)[list(dead_rows)].any()
        r = _check(gd, f, rng, stall)
        assert r["bytes_read"] == isa.tlmm_read_bytes(x, n, DEFAULT.tlmm, mask, bool(skip)), (
            rows,
            k,
            n,
        )


def test_tlmm_masked_cycles(rng):
    """No stalls, 1-cycle memory: ``expected_cycles(..., live=)`` exactly -- masked and
    skip, short and long rows (Kc below and above the mask wait), a wholly masked row in
    the middle and at the end, a single wholly masked row."""
    eng = _engine()
    shapes = (
        (1, 85, 13, 1, ()),
        (3, 200, 30, 1, (1,)),
        (3, 500, 62, 1, (2,)),
        (2, 40, 9, 0, ()),
        (1, 30, 7, 1, (0,)),
        (1, 510, 70, 1, (0,)),
        (3, 120, MAX_N, 1, ()),
        (3, 120, MAX_N, 0, (1,)),
        (6, 20, 3, 0, (2,)),  # rows of one block: the mask memory's banks in turn
    )
    cases, masks = [], []
    for rows, k, n, skip, dead_rows in shapes:
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f, mask, _ = _masked(gd, rng, rows, k, n, skip, dead_rows)
        cases.append((gd, isa.command(Opcode.TLMM, **f), None))
        masks.append(mask)
    for (rows, k, n, skip, _), mask, r in zip(
        shapes, masks, check_ops(eng, cases, stall=0.0, max_latency=1), strict=True
    ):
        live = gtlmm.live_blocks(mask) if skip else None
        want = expected_cycles(rows, k, n, DEFAULT, masked=True, live=live, dma_bytes=W)
        assert r["cycles"] == want, (rows, k, n, skip, r["cycles"], want)


def test_masked_contract_errors(rng):
    """Every ALIGN / ADDR_RANGE case of a masked TLMM (the mask tensor included), in the
    contract's order."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    f, _, _ = _masked(gd, rng, 2, 40, 10, 1)
    cmd = isa.command(Opcode.TLMM, **f)
    check_arg_errors(_engine(), gd, cmd, seed=int(rng.integers(1 << 30)))


def test_max_n(rng):
    """n <= max_n only when masked (the mask memory): n = max_n runs masked, max_n + 1 is
    BAD_DIM with nothing read or written (golden allows it: a documented difference), and
    runs unmasked."""
    cases = []
    for n, masked, expect in (
        (MAX_N, 1, None),
        (MAX_N + 1, 1, ErrorCode.BAD_DIM),
        (MAX_N + 1, 0, None),
    ):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        f, _, _ = _masked(gd, rng, 1, 30, n, 1)
        f["masked"] = masked
        cases.append((gd, isa.command(Opcode.TLMM, **f), expect))
    res = check_ops(_engine(), cases, seed=int(rng.integers(1 << 30)), stall=0.3)
    assert [r["error"] for r in res] == [ErrorCode.NONE, ErrorCode.BAD_DIM, ErrorCode.NONE]


def test_design_limits():
    """max_n comes from the design point (AccelConfig.max_n) like max_k; a DMA width whose
    mask beat holds fewer than two row blocks is refused."""
    for name in ("kv260", "ecp5"):
        dp = design_point(name)
        assert TLMMEngine.design_params(dp) == {"max_k": dp.max_k, "max_n": dp.max_n, "tokens": 1}
    assert TLMMEngine.design_params(design_point("kv260-p4"))["tokens"] == 4
    with pytest.raises(ValueError, match="tokens: must be a power of two"):
        TLMMEngine(DEFAULT, W, max_k=MAX_K, max_n=MAX_N, tokens=3)
    with pytest.raises(ValueError, match="max_n"):
        TLMMEngine(DEFAULT, W, max_k=MAX_K, max_n=0)
    with pytest.raises(ValueError, match="mask beat's 33 entries"):
        TLMMEngine(DEFAULT, 132, max_k=MAX_K, max_n=MAX_N)


# ------------------------------------------------------------------ P tokens per weight beat
@pytest.mark.parametrize("tokens", [2, 4])
def test_tlmm_tokens(rng, tokens):
    """P = 2, 4 under random memory stalls and latencies (output writes stalled too):
    golden's outputs bit for bit, rows not a multiple of P, K below and above P chunks
    (Kc < P: a row block's P outputs outlast its beats), and the bytes read with each
    weight beat read once per block of P rows (``isa.tlmm_read_bytes(..., tokens=P)``)."""
    shapes = [
        (tokens + 1, int(rng.integers(200, 400)), int(rng.integers(5, 30))),
        (2 * tokens + 3, int(rng.integers(1, 60)), int(rng.integers(1, 20))),
        (tokens - 1, MAX_K, 6),
        (1, int(rng.integers(1, 200)), int(rng.integers(1, 12))),
    ]
    cases, xs = [], []
    for rows, k, n in shapes:
        gd = _gd(tokens)
        f = _tlmm(gd, rng, rows, k, n, extreme=(k == MAX_K))
        cases.append((gd, isa.command(Opcode.TLMM, **f), None))
        xs.append(gd.memory[f["src"] : f["src"] + rows * k].view(np.int8).reshape(rows, k).copy())
    res = check_ops(_engine(tokens), cases, seed=int(rng.integers(1 << 30)), stall=(0.3, 0.5))
    for (rows, k, n), x, r in zip(shapes, xs, res, strict=True):
        want = isa.tlmm_read_bytes(x, n, DEFAULT.tlmm, tokens=tokens)
        assert r["bytes_read"] == want, (rows, k, n, r["bytes_read"], want)
        passes = -(-rows // tokens)
        assert want == rows * k + passes * isa.tlmm_weight_bytes(n, k)


def test_tlmm_tokens_cycles(rng):
    """No stalls, 1-cycle memory: ``expected_cycles(..., tokens=P)`` exactly for P = 2, 4,
    8 -- full and short last blocks, Kc above and below np (the output throttle), one
    row (decode: the P = 1 count)."""
    shapes = ((5, 300, 9), (8, 500, 5), (9, 30, 20), (13, 10, 5), (6, 170, 2), (1, 85, 4))
    for tokens in (2, 4, 8):
        cases = []
        for rows, k, n in shapes:
            gd = _gd(tokens)
            cases.append((gd, isa.command(Opcode.TLMM, **_tlmm(gd, rng, rows, k, n)), None))
        res = check_ops(_engine(tokens), cases, stall=0.0, max_latency=1)
        for (rows, k, n), r in zip(shapes, res, strict=True):
            want = expected_cycles(rows, k, n, DEFAULT, tokens=tokens)
            assert r["cycles"] == want, (tokens, rows, k, n, r["cycles"], want)
        assert want == expected_cycles(1, 85, 4, DEFAULT)  # one row: no penalty
    # a block of P rows costs its weight beats once
    one, four = (expected_cycles(8, 500, 64, DEFAULT, tokens=p) for p in (1, 4))
    assert four < one / 2.5, (one, four)


@pytest.mark.parametrize("skip", [0, 1])
def test_tlmm_tokens_masked(rng, skip):
    """A masked command on a P = 4 engine goes row by row (P = 1 bytes and cycles): under
    stalls golden's outputs and ``isa.tlmm_read_bytes(..., tokens=4)`` (= the P = 1
    count); without stalls the P = 1 masked cycle count."""
    shapes = ((5, int(rng.integers(80, 300)), 37, (2,)), (3, 40, 9, ()))
    for stall in (0.4, 0.0):
        cases, masks, xs = [], [], []
        for rows, k, n, dead in shapes:
            gd = _gd(4)
            f, mask, x = _masked(gd, rng, rows, k, n, skip, dead)
            cases.append((gd, isa.command(Opcode.TLMM, **f), None))
            masks.append(mask)
            xs.append(x)
        lat = 6 if stall else 1
        res = check_ops(_engine(4), cases, stall=stall, max_latency=lat)
        for (rows, k, n, _), mask, x, r in zip(shapes, masks, xs, res, strict=True):
            want = isa.tlmm_read_bytes(x, n, DEFAULT.tlmm, mask, bool(skip), tokens=4)
            assert want == isa.tlmm_read_bytes(x, n, DEFAULT.tlmm, mask, bool(skip))
            assert r["bytes_read"] == want
            if not stall:
                live = gtlmm.live_blocks(mask) if skip else None
                cyc = expected_cycles(rows, k, n, DEFAULT, masked=True, live=live, dma_bytes=W)
                assert r["cycles"] == cyc, (rows, k, n, r["cycles"], cyc)
