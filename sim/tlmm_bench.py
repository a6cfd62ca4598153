"""cocotb bench of ``hw.tlmm.TLMM``: every output equals ``golden.tlmm.tlmm`` bit for bit.

Parameters (``sim.streams.bench_params``): ``cfg`` (TLMMConfig fields), ``max_k``,
``tree_levels_per_stage``, ``stall`` (probabilities), ``random_ops`` (number of random
matmuls), ``perf`` (sizes for the throughput test).  Expected values come from the
golden model only: ``golden.tlmm.tlmm`` for results, ``encode_weights`` / ``join_codes``
for the weight codes the engine reads.
"""

from __future__ import annotations

import cocotb
import numpy as np

from golden import tlmm as golden
from golden.config import TLMMConfig
from hw.tlmm import (
    act_beats,
    act_layout,
    chunk_count,
    expected_cycles,
    ideal_cycles,
    out_layout,
    wgt_beats,
    wgt_layout,
)
from sim import streams
from sim.streams import bench_params, pack, record, unpack

P = bench_params()
CFG = TLMMConfig(**P.get("cfg", {}))
MAX_K = int(P.get("max_k", 256))
TREE = int(P.get("tree_levels_per_stage", 2))
STALL = P.get("stall", {"act": 0.6, "wgt": 0.7, "out": 0.5})
ACT_L, WGT_L, OUT_L = act_layout(CFG), wgt_layout(CFG), out_layout(CFG)
LO, HI = -(1 << (CFG.act_bits - 1)), (1 << (CFG.act_bits - 1)) - 1
ZERO_CODE = int(
    golden.join_codes(*golden.encode_weights(np.zeros((1, CFG.group), np.int8), CFG), CFG)[0, 0]
)


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
    if style == 0:  # uniform int8
        x = rng.integers(LO, HI + 1, size=(m, k))
    elif style == 1:  # small values, many zeros
        x = rng.integers(-3, 4, size=(m, k))
    else:  # mostly extremes
        x = rng.choice(np.array([LO, HI, 0, -1, 1]), size=(m, k))
    w = rng.choice(np.array([-1, 0, 1]), size=(n, k), p=rng.dirichlet([1, 1, 1]))
    return Op(x.astype(np.int8), w.astype(np.int8), tag)


def check(op: Op, beats: list[int], where: str) -> int:
    """Compare output beats of one op with golden; report the first mismatch with inputs."""
    m, k, n = op.shape
    Q = CFG.replicas
    assert len(beats) == op.out_beats, (
        f"{where}: {len(beats)} output beats, expected {op.out_beats}"
    )
    for i, bits in enumerate(beats):
        tok, blk = divmod(i, op.nb)
        beat = unpack(OUT_L, bits)
        want_last = int(blk == op.nb - 1)
        assert beat["last"] == want_last, (
            f"{where}: beat {i} last={beat['last']}, expected {want_last}"
        )
        for q in range(Q):
            row = blk * Q + q
            got = beat["data"][q]
            want = int(op.expected[tok, row]) if row < n else 0
            if got != want:
                xs = op.x[tok].tolist() if k <= 48 else op.x[tok, :48].tolist() + ["..."]
                ws = (
                    op.w[row].tolist()
                    if row < n and k <= 48
                    else (op.w[row, :48].tolist() + ["..."] if row < n else "padding row")
                )
                cs = op.codes[row].tolist()[:24] if row < n else "padding row"
                raise AssertionError(
                    f"{where} ({op.tag}, M={m} K={k} N={n}, cfg={CFG}): first mismatch at "
                    f"y[{tok}, {row}] (beat {i}, replica {q}): got {got}, expected {want}\n"
                    f"  x_q[{tok}] = {xs}\n  w_t[{row}] = {ws}\n  codes[{row}][:24] = {cs}"
                )
    return m * n


class Bench(streams.Bench):
    SOURCES, SINKS, STALL = ("act", "wgt"), ("out",), STALL
    DESC = f"cfg={CFG} max_k={MAX_K}"

    def feed(self, op: Op) -> dict[str, list[int]]:
        return {"act": op.act, "wgt": op.wgt}

    def out_beats(self, op: Op) -> int:
        return op.out_beats

    def budget(self, ops: list[Op]) -> int:
        return 200 + 20 * sum(len(op.wgt) + len(op.act) for op in ops)

    check_item = staticmethod(check)


@cocotb.test()
async def test_random(dut):
    """Random matmuls back to back (varied K, N, M, value styles), random stalls everywhere."""
    b = await Bench.start(dut, "test_random")
    rng = b.rng
    ops = [random_op(rng) for _ in range(int(P.get("random_ops", 6)))]
    # K hitting the chunk boundaries exactly
    width = CFG.group * CFG.tables
    ops.append(random_op(rng, k=min(MAX_K, width), tag="k=G*T"))
    ops.append(random_op(rng, k=1, tag="k=1"))
    vectors = await b.run(ops, "test_random")
    record("test_random", vectors=vectors)


@cocotb.test()
async def test_extremes(dut):
    """Numeric corners at the longest K the table memory holds: +127*+1, -128*-1, -128*+1, zeros."""
    b = await Bench.start(dut, "test_extremes")
    rng = b.rng
    k = MAX_K
    n = CFG.replicas + 1
    cases = [
        (HI, 1, "all +127 x all +1"),
        (LO, -1, "all -128 x all -1"),
        (LO, 1, "all -128 x all +1"),
        (HI, -1, "all +127 x all -1"),
    ]
    ops = [
        Op(np.full((1, k), xv, np.int8), np.full((n, k), wv, np.int8), tag) for xv, wv, tag in cases
    ]
    ops.append(Op(np.zeros((1, k), np.int8), rng.integers(-1, 2, (n, k)).astype(np.int8), "x = 0"))
    ops.append(
        Op(rng.integers(LO, HI + 1, (1, k)).astype(np.int8), np.zeros((n, k), np.int8), "w = 0")
    )
    for op in ops[:4]:
        # the golden value is the closed form K*x*w: the corner really is at the extreme
        assert int(op.expected[0, 0]) == k * int(op.x[0, 0]) * int(op.w[0, 0])
    vectors = await b.run(ops, "test_extremes")
    record("test_extremes", vectors=vectors)


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset during table build / during lookups, then a clean operation must be exact."""
    b = await Bench.start(dut, "test_reset_mid_operation")

    def in_flight():  # stopped somewhere inside the operation (build or lookup phase)
        op = random_op(b.rng, m=2, k=int(b.rng.integers(CFG.group * CFG.tables, MAX_K + 1)))
        return [op], max(2, len(op.wgt) + len(op.act))

    await b.reset_mid_operation(3, in_flight, b.after_reset(random_op))


@cocotb.test()
async def test_throughput(dut):
    """No stalls: measured cycles vs the documented formula and the ideal M*K*N/(G*T*Q)."""
    b = await Bench.start(dut, "test_throughput", stall=False)
    perf = P.get("perf", {})
    m = int(perf.get("m", 2))
    k = int(perf.get("k", min(MAX_K, 4 * CFG.group * CFG.tables)))
    n = int(perf.get("n", 4 * CFG.replicas))
    op = random_op(b.rng, m=m, k=k, n=n, tag="throughput")
    await b.throughput(
        [op],
        expected_cycles(m, k, n, CFG, TREE),
        100 + 4 * (len(op.wgt) + len(op.act)),
        f"M={m} K={k} N={n}",
        ideal=ideal_cycles(m, k, n, CFG),
        m=m,
        k=k,
        n=n,
        chunks=chunk_count(k, CFG),
    )
