"""cocotb bench of ``hw.tlmm.TLMM``: every output equals ``golden.tlmm.tlmm`` bit for bit.

Parameters (``sim.streams.bench_params``): ``cfg`` (TLMMConfig fields), ``max_k``,
``tree_levels_per_stage``, ``stall`` (probabilities), ``random_ops`` (number of random
matmuls), ``perf`` (sizes for the throughput test).  Expected values come from the
golden model only: ``golden.tlmm.tlmm`` for results, ``encode_weights`` / ``join_codes``
for the weight codes the engine reads.
"""
from __future__ import annotations

import numpy as np

import cocotb

from golden import tlmm as golden
from golden.config import TLMMConfig
from hw.tlmm import (act_beats, act_layout, chunk_count, expected_cycles, ideal_cycles,
                     out_layout, wgt_beats, wgt_layout)
from sim.streams import Harness, bench_params, bench_rng, bench_seed, pack, record, unpack

P = bench_params()
CFG = TLMMConfig(**P.get("cfg", {}))
MAX_K = int(P.get("max_k", 256))
TREE = int(P.get("tree_levels_per_stage", 2))
STALL = P.get("stall", {"act": 0.6, "wgt": 0.7, "out": 0.5})
ACT_L, WGT_L, OUT_L = act_layout(CFG), wgt_layout(CFG), out_layout(CFG)
LO, HI = -(1 << (CFG.act_bits - 1)), (1 << (CFG.act_bits - 1)) - 1
ZERO_CODE = int(golden.join_codes(*golden.encode_weights(np.zeros((1, CFG.group), np.int8), CFG), CFG)[0, 0])


class Op:
    """One matmul y[M, N] = x[M, K] @ w[N, K]^T with its stream beats and golden result."""

    def __init__(self, x: np.ndarray, w: np.ndarray, tag: str = ""):
        self.x, self.w, self.tag = x, w, tag
        self.expected = golden.tlmm(x, w, CFG)
        index, sign = golden.encode_weights(w, CFG)
        self.codes = golden.join_codes(index, sign, CFG)
        wb = [pack(WGT_L, b) for b in wgt_beats(self.codes, CFG, ZERO_CODE)]
        self.act = []
        self.wgt = []
        for row in x:
            self.act += [pack(ACT_L, b) for b in act_beats(row, CFG)]
            self.wgt += wb
        self.nb = -(-w.shape[0] // CFG.replicas)
        self.out_beats = x.shape[0] * self.nb

    @property
    def shape(self):
        return self.x.shape[0], self.x.shape[1], self.w.shape[0]


def random_op(rng, k=None, m=None, n=None, tag="random") -> Op:
    m = m or int(rng.integers(1, 4))
    k = k or int(rng.integers(1, MAX_K + 1))
    n = n or int(rng.integers(1, 3 * CFG.replicas + 1))
    style = rng.integers(0, 3)
    if style == 0:      # uniform int8
        x = rng.integers(LO, HI + 1, size=(m, k))
    elif style == 1:    # small values, many zeros
        x = rng.integers(-3, 4, size=(m, k))
    else:               # mostly extremes
        x = rng.choice(np.array([LO, HI, 0, -1, 1]), size=(m, k))
    w = rng.choice(np.array([-1, 0, 1]), size=(n, k), p=rng.dirichlet([1, 1, 1]))
    return Op(x.astype(np.int8), w.astype(np.int8), tag)


def check(op: Op, beats: list[int], where: str) -> int:
    """Compare output beats of one op with golden; report the first mismatch with inputs."""
    m, k, n = op.shape
    Q = CFG.replicas
    assert len(beats) == op.out_beats, f"{where}: {len(beats)} output beats, expected {op.out_beats}"
    for i, bits in enumerate(beats):
        tok, blk = divmod(i, op.nb)
        beat = unpack(OUT_L, bits)
        want_last = int(blk == op.nb - 1)
        assert beat["last"] == want_last, f"{where}: beat {i} last={beat['last']}, expected {want_last}"
        for q in range(Q):
            row = blk * Q + q
            got = beat["data"][q]
            want = int(op.expected[tok, row]) if row < n else 0
            if got != want:
                xs = op.x[tok].tolist() if k <= 48 else op.x[tok, :48].tolist() + ["..."]
                ws = op.w[row].tolist() if row < n and k <= 48 else (
                    op.w[row, :48].tolist() + ["..."] if row < n else "padding row")
                cs = op.codes[row].tolist()[:24] if row < n else "padding row"
                raise AssertionError(
                    f"{where} ({op.tag}, M={m} K={k} N={n}, cfg={CFG}): first mismatch at "
                    f"y[{tok}, {row}] (beat {i}, replica {q}): got {got}, expected {want}\n"
                    f"  x_q[{tok}] = {xs}\n  w_t[{row}] = {ws}\n  codes[{row}][:24] = {cs}")
    return m * n


async def run_ops(h: Harness, act, wgt, out, ops: list[Op], where: str, max_cycles=None) -> int:
    for op in ops:
        act.extend(op.act)
        wgt.extend(op.wgt)
    total = sum(op.out_beats for op in ops)
    budget = max_cycles or 200 + 20 * sum(len(op.wgt) + len(op.act) for op in ops)
    await h.run_until(lambda: len(out.beats) >= total, budget, where)
    await h.run_cycles(3)     # nothing extra may appear
    assert len(out.beats) == total, f"{where}: {len(out.beats)} beats, expected {total}"
    vectors = 0
    pos = 0
    for op in ops:
        vectors += check(op, out.beats[pos:pos + op.out_beats], where)
        pos += op.out_beats
    out.flush()
    return vectors


def make_harness(dut, name: str, stall: bool = True):
    rng = bench_rng(name)
    dut._log.info(f"SEED={bench_seed()} cfg={CFG} max_k={MAX_K}")
    h = Harness(dut, rng)
    s = STALL if stall else {"act": 1.0, "wgt": 1.0, "out": 1.0}
    act = h.source("act", s["act"])
    wgt = h.source("wgt", s["wgt"])
    out = h.sink("out", s["out"])
    return rng, h, act, wgt, out


@cocotb.test()
async def test_random(dut):
    """Random matmuls back to back (varied K, N, M, value styles), random stalls everywhere."""
    rng, h, act, wgt, out = make_harness(dut, "test_random")
    await h.reset()
    ops = [random_op(rng) for _ in range(int(P.get("random_ops", 6)))]
    # K hitting the chunk boundaries exactly
    width = CFG.group * CFG.tables
    ops.append(random_op(rng, k=min(MAX_K, width), tag="k=G*T"))
    ops.append(random_op(rng, k=1, tag="k=1"))
    vectors = await run_ops(h, act, wgt, out, ops, "test_random")
    record("test_random", vectors=vectors)


@cocotb.test()
async def test_extremes(dut):
    """Numeric corners at the longest K the table memory holds: +127*+1, -128*-1, -128*+1, zeros."""
    rng, h, act, wgt, out = make_harness(dut, "test_extremes")
    await h.reset()
    k = MAX_K
    n = CFG.replicas + 1
    cases = [(HI, 1, "all +127 x all +1"), (LO, -1, "all -128 x all -1"),
             (LO, 1, "all -128 x all +1"), (HI, -1, "all +127 x all -1")]
    ops = [Op(np.full((1, k), xv, np.int8), np.full((n, k), wv, np.int8), tag) for xv, wv, tag in cases]
    ops.append(Op(np.zeros((1, k), np.int8), rng.integers(-1, 2, (n, k)).astype(np.int8), "x = 0"))
    ops.append(Op(rng.integers(LO, HI + 1, (1, k)).astype(np.int8), np.zeros((n, k), np.int8), "w = 0"))
    for op in ops[:4]:
        # the golden value is the closed form K*x*w: the corner really is at the extreme
        assert int(op.expected[0, 0]) == k * int(op.x[0, 0]) * int(op.w[0, 0])
    vectors = await run_ops(h, act, wgt, out, ops, "test_extremes")
    record("test_extremes", vectors=vectors)


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset during table build / during lookups, then a clean operation must be exact."""
    rng, h, act, wgt, out = make_harness(dut, "test_reset_mid_operation")
    vectors = 0
    await h.reset()
    for attempt in range(3):
        op = random_op(rng, m=2, k=int(rng.integers(CFG.group * CFG.tables, MAX_K + 1)))
        act.extend(op.act)
        wgt.extend(op.wgt)
        # stop somewhere inside the operation (build or lookup phase)
        await h.run_cycles(int(rng.integers(1, max(2, len(op.wgt) + len(op.act)))))
        await h.reset(cycles=int(rng.integers(1, 4)))
        clean = [random_op(rng, tag=f"after reset {attempt}") for _ in range(2)]
        vectors += await run_ops(h, act, wgt, out, clean, f"test_reset_mid_operation[{attempt}]")
    record("test_reset_mid_operation", vectors=vectors)


@cocotb.test()
async def test_throughput(dut):
    """No stalls: measured cycles vs the documented formula and the ideal M*K*N/(G*T*Q)."""
    rng, h, act, wgt, out = make_harness(dut, "test_throughput", stall=False)
    await h.reset()
    perf = P.get("perf", {})
    m = int(perf.get("m", 2))
    k = int(perf.get("k", min(MAX_K, 4 * CFG.group * CFG.tables)))
    n = int(perf.get("n", 4 * CFG.replicas))
    op = random_op(rng, m=m, k=k, n=n, tag="throughput")
    act.extend(op.act)
    wgt.extend(op.wgt)
    start = h.cycle
    first_in = None
    while len(out.beats) < op.out_beats:
        if first_in is None and (act.sent or wgt.sent):
            first_in = h.cycle - 1      # the cycle whose edge took the first beat
        if h.cycle - start > 100 + 4 * (len(op.wgt) + len(op.act)):
            raise AssertionError("test_throughput: timeout")
        await h.step()
    cycles = out.beat_cycles[-1] - first_in + 1
    vectors = check(op, out.beats, "test_throughput")
    formula = expected_cycles(m, k, n, CFG, TREE)
    ideal = ideal_cycles(m, k, n, CFG)
    dut._log.info(f"M={m} K={k} N={n}: {cycles} cycles, formula {formula}, ideal {ideal:.1f} "
                  f"({ideal / cycles:.1%} of ideal)")
    record("test_throughput", vectors=vectors, op_cycles=cycles, formula_cycles=formula,
           ideal_cycles=ideal, m=m, k=k, n=n, chunks=chunk_count(k, CFG))
    assert cycles == formula, f"measured {cycles} cycles, documented formula gives {formula}"
