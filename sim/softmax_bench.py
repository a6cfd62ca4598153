"""cocotb bench of ``hw.softmax.Softmax``: every probability equals ``golden.softmax.softmax_fx``.

Parameters (``sim.streams.bench_params``): ``cfg`` (SoftmaxConfig fields), ``lanes``,
``max_len``, ``rows`` (random row groups), ``max_n`` (longest random row), ``stall``.
Logits come from ``golden.softmax.random_logits`` (spreads from uniform to one-hot, all
equal at either end of the range, full range) plus directed corners; masks are random,
causal (``golden.softmax.causal_mask``) or whole lanes off.
"""
from __future__ import annotations

import numpy as np

import cocotb

from golden import softmax as golden
from golden.config import SoftmaxConfig
from hw.softmax import expected_cycles, p_layout, row_cycles, x_beats, x_layout
from sim.streams import Harness, bench_params, bench_rng, bench_seed, pack, record, unpack

P = bench_params()
CFG = SoftmaxConfig(**P.get("cfg", {}))
LANES = int(P.get("lanes", 4))
MAX_LEN = int(P.get("max_len", 64))
ROWS = int(P.get("rows", 8))
MAX_N = min(int(P.get("max_n", 64)), MAX_LEN)
STALL = P.get("stall", {"x": 0.6, "p": 0.5})
X_L, P_L = x_layout(CFG, LANES), p_layout(CFG, LANES)
LO, HI = -(1 << (CFG.in_bits - 1)), (1 << (CFG.in_bits - 1)) - 1
DT = np.int16 if CFG.in_bits <= 16 else np.int32


class Rows:
    """One group of ``lanes`` rows (same length) with its mask and golden result."""

    def __init__(self, x, mask=None, tag: str = ""):
        self.x = np.asarray(x, dtype=DT).reshape(LANES, -1)
        self.mask = np.ones(self.x.shape, bool) if mask is None else np.asarray(mask, bool)
        self.tag = tag
        self.expected = golden.softmax_fx(self.x, CFG, mask=self.mask).astype(np.int64)
        self.beats = [pack(X_L, b) for b in x_beats(self.x, self.mask)]

    @property
    def n(self) -> int:
        return self.x.shape[1]


def random_rows(rng, n=None, tag="random") -> Rows:
    n = n or int(rng.integers(1, MAX_N + 1))
    # random_logits makes its first 4 rows corner rows: draw extra rows and pick LANES
    pool = golden.random_logits(rng, LANES + 4, n, CFG)
    x = pool[rng.choice(LANES + 4, size=LANES, replace=False)]
    style = rng.integers(0, 4)
    if style == 0:
        mask = None
    elif style == 1:
        mask = rng.random((LANES, n)) < 0.8
    elif style == 2 and n >= LANES:          # lanes as the last LANES queries of a KV cache
        mask = golden.causal_mask(LANES, n)
    else:
        mask = np.ones((LANES, n), bool)
        mask[rng.integers(0, LANES)] = False  # one lane fully masked
    return Rows(x, mask, f"{tag}, mask style {style}")


def check(rows: Rows, beats: list[int], where: str) -> int:
    """Compare output beats of one row group with golden; first mismatch with inputs."""
    assert len(beats) == rows.n, f"{where}: {len(beats)} output beats, expected {rows.n}"
    for j, bits in enumerate(beats):
        beat = unpack(P_L, bits)
        assert beat["last"] == int(j == rows.n - 1), f"{where}: beat {j} last={beat['last']}"
        for lane in range(LANES):
            got, want = beat["data"][lane], int(rows.expected[lane, j])
            if got != want:
                row = rows.x[lane].tolist()
                msk = rows.mask[lane].astype(int).tolist()
                if rows.n > 40:
                    row, msk = row[:40] + ["..."], msk[:40] + ["..."]
                raise AssertionError(
                    f"{where} ({rows.tag}, n={rows.n}, cfg={CFG}): first mismatch at lane "
                    f"{lane} element {j}: got {got}, expected {want}\n  x[{lane}] = {row}\n"
                    f"  mask[{lane}] = {msk}")
    return rows.n * LANES


class Bench:
    def __init__(self, dut, name: str, stall: bool = True):
        self.rng = bench_rng(name)
        dut._log.info(f"SEED={bench_seed()} cfg={CFG} lanes={LANES} max_len={MAX_LEN}")
        self.h = Harness(dut, self.rng)
        s = STALL if stall else {"x": 1.0, "p": 1.0}
        self.x = self.h.source("x", s["x"])
        self.p = self.h.sink("p", s["p"])

    async def run(self, groups: list[Rows], where: str) -> int:
        for g in groups:
            self.x.extend(g.beats)
        total = sum(g.n for g in groups)
        budget = 300 + 8 * sum(row_cycles(g.n, CFG) for g in groups)
        await self.h.run_until(lambda: len(self.p.beats) >= total, budget, where)
        await self.h.run_cycles(12)            # nothing extra may appear
        assert len(self.p.beats) == total, f"{where}: {len(self.p.beats)} beats, expected {total}"
        vectors, pos = 0, 0
        for g in groups:
            vectors += check(g, self.p.beats[pos:pos + g.n], where)
            pos += g.n
        self.p.flush()
        return vectors


@cocotb.test()
async def test_random_rows(dut):
    """Row groups of random length and spread, random / causal / lane-off masks, stalls."""
    b = Bench(dut, "test_random_rows")
    await b.h.reset()
    groups = [random_rows(b.rng) for _ in range(ROWS)]
    record("test_random_rows", vectors=await b.run(groups, "test_random_rows"))


@cocotb.test()
async def test_corners(dut):
    """All +max, then masked leading elements, all -max (every lane), one-hot, n = 1, the
    longest row (max_len),
    alternating extremes, rising rows (a new max at every element: the sum is rescaled
    every step) and falling rows, and a fully masked group."""
    b = Bench(dut, "test_corners")
    await b.h.reset()
    n = min(MAX_N, 48)
    ramp = np.linspace(LO, HI, n).astype(np.int64)
    groups = [
        Rows(np.full((LANES, n), HI), tag="all +max"),
        # right after a larger max: leading masked elements must not see the old row's max
        Rows(b.rng.integers(LO, 0, size=(LANES, n)), np.arange(n)[None, :] >= np.arange(
            1, LANES + 1)[:, None] % n, tag="leading masked after a larger max"),
        Rows(np.full((LANES, n), LO), tag="all -max"),
        Rows(np.where(np.arange(n)[None, :] == (np.arange(LANES)[:, None] % n), HI, LO),
             tag="one-hot"),
        Rows(b.rng.integers(LO, HI + 1, size=(LANES, 1)), tag="n = 1"),
        Rows(np.tile(np.where(np.arange(n) % 2, HI, LO), (LANES, 1)), tag="alternating"),
        Rows(np.tile(ramp, (LANES, 1)), tag="rising"),
        Rows(np.tile(ramp[::-1], (LANES, 1)), tag="falling"),
        Rows(np.tile(np.arange(n) * (1 << CFG.in_frac_bits), (LANES, 1)).clip(LO, HI),
             tag="rising by 1.0"),
        Rows(b.rng.integers(LO, HI + 1, size=(LANES, n)), np.zeros((LANES, n), bool),
             tag="fully masked"),
        Rows(golden.random_logits(b.rng, LANES, MAX_LEN, CFG), tag="longest row (max_len)"),
    ]
    record("test_corners", vectors=await b.run(groups, "test_corners"))


@cocotb.test()
async def test_row_cut(dut):
    """A row longer than max_len: element max_len - 1 ends it, the rest is a new row."""
    b = Bench(dut, "test_row_cut")
    await b.h.reset()
    extra = int(b.rng.integers(1, 9))
    x = golden.random_logits(b.rng, LANES, MAX_LEN + extra, CFG)
    whole = Rows(x, tag="too long")
    b.x.extend(whole.beats)
    parts = [Rows(x[:, :MAX_LEN], tag="cut: first max_len"), Rows(x[:, MAX_LEN:], tag="cut: rest")]
    total = MAX_LEN + extra
    await b.h.run_until(lambda: len(b.p.beats) >= total,
                        300 + 8 * (row_cycles(MAX_LEN, CFG) + row_cycles(extra, CFG)), "row cut")
    await b.h.run_cycles(12)
    v = check(parts[0], b.p.beats[:MAX_LEN], "test_row_cut")
    v += check(parts[1], b.p.beats[MAX_LEN:], "test_row_cut")
    record("test_row_cut", vectors=v)


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset in pass 1, in the reciprocal, in pass 2, then clean row groups."""
    b = Bench(dut, "test_reset_mid_operation")
    await b.h.reset()
    vectors = 0
    for attempt in range(3):
        g = random_rows(b.rng, n=int(b.rng.integers(LANES, MAX_N + 1)))
        b.x.extend(g.beats)
        # somewhere in pass 1, the divider or pass 2 (stalls stretch the row)
        await b.h.run_cycles(int(b.rng.integers(1, 2 * row_cycles(g.n, CFG))))
        await b.h.reset(cycles=int(b.rng.integers(1, 4)))
        assert int(dut.p__valid.value) == 0, "p valid right after reset"
        vectors += await b.run([random_rows(b.rng, tag=f"after reset {attempt}")
                                for _ in range(2)], f"test_reset_mid_operation[{attempt}]")
    record("test_reset_mid_operation", vectors=vectors)


@cocotb.test()
async def test_throughput(dut):
    """No stalls: three row groups of n back to back take 2 row_cycles(n) +
    expected_cycles(n) cycles (hw.softmax doc)."""
    b = Bench(dut, "test_throughput", stall=False)
    await b.h.reset()
    n = min(MAX_N, 32)
    groups = [random_rows(b.rng, n=n, tag="throughput") for _ in range(3)]
    for g in groups:
        b.x.extend(g.beats)
    start, first_in = b.h.cycle, None
    while len(b.p.beats) < 3 * n:
        if first_in is None and b.x.sent:
            first_in = b.h.cycle - 1
        if b.h.cycle - start > 200 + 4 * row_cycles(n, CFG) * 3:
            raise AssertionError("test_throughput: timeout")
        await b.h.step()
    cycles = b.p.beat_cycles[-1] - first_in + 1
    vectors = sum(check(g, b.p.beats[i * n:(i + 1) * n], "test_throughput")
                  for i, g in enumerate(groups))
    formula = 2 * row_cycles(n, CFG) + expected_cycles(n, CFG)
    dut._log.info(f"3 groups of {LANES} rows x {n}: {cycles} cycles, formula {formula}")
    record("test_throughput", vectors=vectors, op_cycles=cycles, formula_cycles=formula)
    assert cycles == formula, f"measured {cycles} cycles, documented formula gives {formula}"
