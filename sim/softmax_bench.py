"""cocotb bench of ``hw.softmax.Softmax``: every probability equals ``golden.softmax.softmax_fx``.

Parameters (``sim.streams.bench_params``): ``cfg`` (SoftmaxConfig fields), ``lanes``,
``max_len``, ``rows`` (random row groups), ``max_n`` (longest random row), ``stall``.
Logits come from ``golden.softmax.random_logits`` (spreads from uniform to one-hot, all
equal at either end of the range, full range) plus directed corners; masks are random,
causal (``golden.softmax.causal_mask``) or whole lanes off.
"""

from __future__ import annotations

import cocotb
import numpy as np

from golden import softmax as golden
from golden.config import SoftmaxConfig
from hw.softmax import expected_cycles, p_layout, row_cycles, x_beats, x_layout
from sim import streams
from sim.streams import bench_params, pack, record, unpack

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
    elif style == 2 and n >= LANES:  # lanes as the last LANES queries of a KV cache
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
                    f"  mask[{lane}] = {msk}"
                )
    return rows.n * LANES


class Bench(streams.Bench):
    SOURCES, SINKS, STALL, SETTLE = ("x",), ("p",), STALL, 12
    DESC = f"cfg={CFG} lanes={LANES} max_len={MAX_LEN}"
    check_item = staticmethod(check)

    def out_beats(self, rows: Rows) -> int:
        return rows.n

    def budget(self, groups: list[Rows]) -> int:
        return 300 + 8 * sum(row_cycles(g.n, CFG, LANES) for g in groups)


@cocotb.test()
async def test_random_rows(dut):
    """Row groups of random length and spread, random / causal / lane-off masks, stalls."""
    b = await Bench.start(dut, "test_random_rows")
    groups = [random_rows(b.rng) for _ in range(ROWS)]
    record("test_random_rows", vectors=await b.run(groups, "test_random_rows"))


@cocotb.test()
async def test_corners(dut):
    """All +max, then masked leading elements, all -max (every lane), one-hot, n = 1, the
    longest row (max_len),
    alternating extremes, rising rows (a new max at every element: the sum is rescaled
    every step) and falling rows, and a fully masked group."""
    b = await Bench.start(dut, "test_corners")
    n = min(MAX_N, 48)
    ramp = np.linspace(LO, HI, n).astype(np.int64)
    groups = [
        Rows(np.full((LANES, n), HI), tag="all +max"),
        # right after a larger max: leading masked elements must not see the old row's max
        Rows(
            b.rng.integers(LO, 0, size=(LANES, n)),
            np.arange(n)[None, :] >= np.arange(1, LANES + 1)[:, None] % n,
            tag="leading masked after a larger max",
        ),
        Rows(np.full((LANES, n), LO), tag="all -max"),
        Rows(
            np.where(np.arange(n)[None, :] == (np.arange(LANES)[:, None] % n), HI, LO),
            tag="one-hot",
        ),
        Rows(b.rng.integers(LO, HI + 1, size=(LANES, 1)), tag="n = 1"),
        Rows(np.tile(np.where(np.arange(n) % 2, HI, LO), (LANES, 1)), tag="alternating"),
        Rows(np.tile(ramp, (LANES, 1)), tag="rising"),
        Rows(np.tile(ramp[::-1], (LANES, 1)), tag="falling"),
        Rows(
            np.tile(np.arange(n) * (1 << CFG.in_frac_bits), (LANES, 1)).clip(LO, HI),
            tag="rising by 1.0",
        ),
        Rows(
            b.rng.integers(LO, HI + 1, size=(LANES, n)),
            np.zeros((LANES, n), bool),
            tag="fully masked",
        ),
        Rows(golden.random_logits(b.rng, LANES, MAX_LEN, CFG), tag="longest row (max_len)"),
    ]
    record("test_corners", vectors=await b.run(groups, "test_corners"))


@cocotb.test()
async def test_row_cut(dut):
    """A row longer than max_len: element max_len - 1 ends it, the rest is a new row."""
    b = await Bench.start(dut, "test_row_cut")
    extra = int(b.rng.integers(1, 9))
    x = golden.random_logits(b.rng, LANES, MAX_LEN + extra, CFG)
    b.queue(Rows(x, tag="too long"))
    parts = [Rows(x[:, :MAX_LEN], tag="cut: first max_len"), Rows(x[:, MAX_LEN:], tag="cut: rest")]
    beats = await b.collect(MAX_LEN + extra, b.budget(parts), "row cut")
    record("test_row_cut", vectors=b.check(parts, beats, "test_row_cut"))


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset in pass 1, in the reciprocal, in pass 2, then clean row groups."""
    b = await Bench.start(dut, "test_reset_mid_operation")

    def in_flight():  # stopped somewhere in pass 1, the divider or pass 2 (stalls stretch it)
        g = random_rows(b.rng, n=int(b.rng.integers(LANES, MAX_N + 1)))
        return [g], 2 * row_cycles(g.n, CFG, LANES)

    await b.reset_mid_operation(3, in_flight, b.after_reset(random_rows))


@cocotb.test()
async def test_throughput(dut):
    """No stalls: three row groups of n back to back take 2 row_cycles(n) +
    expected_cycles(n) cycles (hw.softmax doc)."""
    b = await Bench.start(dut, "test_throughput", stall=False)
    n = min(MAX_N, 32)
    groups = [random_rows(b.rng, n=n, tag="throughput") for _ in range(3)]
    await b.throughput(
        groups,
        2 * row_cycles(n, CFG, LANES) + expected_cycles(n, CFG, LANES),
        200 + 4 * row_cycles(n, CFG, LANES) * 3,
        f"3 groups of {LANES} rows x {n}",
    )
