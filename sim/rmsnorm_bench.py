"""cocotb bench of ``hw.rmsnorm.RMSNormQuant``: x_q, scale_mant and scale_shift equal
``golden.rmsnorm.rmsnorm_quant`` bit for bit.

Parameters (``sim.streams.bench_params``): ``cfg`` (NormConfig), ``qcfg`` (QuantConfig),
``lanes``, ``stat_lanes``, ``max_len``, ``batches`` (random batches), ``max_d``,
``stall``. Every row is streamed twice (the block's pass 1 and pass 2). Rows come from
``golden.rmsnorm.random_rows`` (magnitudes over 2^-12..2^10, outlier channels) plus
directed corners; the row constants from ``golden.rmsnorm.norm_constants``. Rows of one
length form a batch; the constant ports change only between batches (DUT idle).
"""

from __future__ import annotations

from dataclasses import replace

import cocotb
import numpy as np

from golden import rmsnorm as golden
from golden.config import NormConfig, QuantConfig
from hw.rmsnorm import C_EXP_BITS, expected_cycles, x_beats, x_layout, y_layout
from sim import streams
from sim.streams import bench_params, pack, record, unpack

P = bench_params()
CFG = NormConfig(**P.get("cfg", {}))
QCFG = QuantConfig(**P.get("qcfg", {}))
LANES = int(P.get("lanes", 4))
STAT_LANES = int(P.get("stat_lanes", LANES))
SUB = LANES // STAT_LANES
MAX_LEN = int(P.get("max_len", 64))
BATCHES = int(P.get("batches", 4))
MAX_D = min(int(P.get("max_d", 64)), MAX_LEN)
STALL = P.get("stall", {"x": 0.6, "y": 0.5})
X_L, Y_L = x_layout(CFG, LANES), y_layout(CFG, QCFG, LANES)
XLO, XHI = -(1 << (CFG.in_bits - 1)), (1 << (CFG.in_bits - 1)) - 1
GLO, GHI = -(1 << (CFG.gamma_bits - 1)), (1 << (CFG.gamma_bits - 1)) - 1


class Row:
    """One row, its gamma, and the golden result (under ``cfg``, whose eps sets eps_term)."""

    def __init__(self, x, gamma, tag: str, cfg: NormConfig = CFG):
        self.x = np.asarray(x, dtype=np.int64)
        self.gamma = np.asarray(gamma, dtype=np.int64)
        self.tag, self.cfg = tag, cfg
        xq, mant, shift = golden.rmsnorm_quant(self.x[None, :], self.gamma, cfg, QCFG)
        self.xq, self.mant, self.shift = xq[0].astype(np.int64), int(mant[0]), int(shift[0])
        self.pass_beats = [pack(X_L, b) for b in x_beats(self.x, self.gamma, LANES)]
        self.beats = self.pass_beats + self.pass_beats  # pass 1, pass 2

    @property
    def d(self) -> int:
        return self.x.size

    @property
    def nb(self) -> int:
        return len(self.pass_beats)


def constants(d: int, cfg: NormConfig = CFG):
    return golden.norm_constants(d, cfg, QCFG)


def cycles(nb: int) -> int:
    return expected_cycles(nb, CFG, QCFG, SUB, STAT_LANES)


def check(row: Row, beats: list[int], where: str) -> int:
    """Compare one row's output beats with golden; report the first mismatch with inputs."""
    nb = row.nb
    assert len(beats) == nb, f"{where}: {len(beats)} output beats, expected {nb}"

    def ctx():
        xs, gs = row.x.tolist(), row.gamma.tolist()
        if row.d > 24:
            xs, gs = xs[:24] + ["..."], gs[:24] + ["..."]
        return (
            f"({row.tag}, d={row.d}, cfg={CFG}, qcfg={QCFG})\n  x = {xs}\n  gamma = {gs}\n"
            f"  constants (eps_term, c_mant, c_exp) = {constants(row.d, row.cfg)}"
        )

    for b, bits in enumerate(beats):
        beat = unpack(Y_L, bits)
        assert beat["last"] == int(b == nb - 1), f"{where}: beat {b} last={beat['last']}"
        if (beat["scale_mant"], beat["scale_shift"]) != (row.mant, row.shift):
            raise AssertionError(
                f"{where}: beat {b}: scale (mant, shift) = ({beat['scale_mant']}, "
                f"{beat['scale_shift']}), expected ({row.mant}, {row.shift}) {ctx()}"
            )
        for lane in range(LANES):
            i = b * LANES + lane
            want = int(row.xq[i]) if i < row.d else 0
            if beat["data"][lane] != want:
                extra = (
                    f"x[{i}] = {row.x[i]}, gamma[{i}] = {row.gamma[i]}" if i < row.d else "padding"
                )
                raise AssertionError(
                    f"{where}: first mismatch at x_q[{i}] (beat {b}, lane {lane}): got "
                    f"{beat['data'][lane]}, expected {want} ({extra}) {ctx()}"
                )
    return row.d


class Bench(streams.Bench):
    """Also drives the row-constant ports (eps_term, c_mant, c_exp) at every falling edge."""

    SOURCES, SINKS, STALL, SETTLE = ("x",), ("y",), STALL, 8
    DESC = f"cfg={CFG} qcfg={QCFG} lanes={LANES} stat_lanes={STAT_LANES} max_len={MAX_LEN}"
    check_item = staticmethod(check)

    def out_beats(self, item) -> int:
        return item.nb

    def __init__(self, dut, test: str, stall: bool = True):
        super().__init__(dut, test, stall)
        self.const = constants(1)
        self.h.every_falling_edge(self._apply)

    def _apply(self):
        eps_term, c_mant, c_exp = self.const
        self.dut.eps_term.value = eps_term
        self.dut.c_mant.value = c_mant
        self.dut.c_exp.value = c_exp & ((1 << C_EXP_BITS) - 1)

    def set_constants(self, d: int, cfg: NormConfig = CFG):
        """Takes effect at the next falling edge (with the first beat offered, if any)."""
        self.const = constants(d, cfg)

    def budget(self, rows: list[Row]) -> int:
        return 400 + 10 * sum(cycles(r.nb) for r in rows)

    async def run(self, rows: list[Row], where: str) -> int:
        """One batch: rows of one length (the constant ports are set for it first)."""
        assert len({r.d for r in rows}) == 1 and len({id(r.cfg) for r in rows}) == 1
        self.set_constants(rows[0].d, rows[0].cfg)
        return await super().run(rows, where)


def random_batch(rng, n_rows: int, d=None, tag="random") -> list[Row]:
    d = d or int(rng.integers(1, MAX_D + 1))
    x, _ = golden.random_rows(rng, n_rows, d, CFG)
    rows = []
    for i in range(n_rows):
        _, gamma = golden.random_rows(rng, 1, d, CFG)
        rows.append(Row(x[i], gamma, f"{tag} row {i}"))
    return rows


@cocotb.test()
async def test_random_rows(dut):
    """Batches of random rows (random length, magnitudes, outliers, gamma), random stalls."""
    b = await Bench.start(dut, "test_random_rows")
    vectors = 0
    for i in range(BATCHES):
        vectors += await b.run(
            random_batch(b.rng, int(b.rng.integers(1, 4))), f"test_random_rows[{i}]"
        )
    record("test_random_rows", vectors=vectors)


@cocotb.test()
async def test_corners(dut):
    """x = -2^(b-1) with gamma = -2^(g-1) (the largest product and sum of squares), the
    most negative product, all-max, alternating, one non-zero element, 1-LSB rows,
    gamma = 0, x = 0 with eps = 0 (S' = 0), d = 1 and the longest row."""
    b = await Bench.start(dut, "test_corners")
    rng = b.rng
    d = MAX_D
    full = lambda v: np.full(d, v)  # noqa: E731
    one = np.zeros(d, dtype=np.int64)
    one[rng.integers(0, d)] = XHI
    batches = [
        [
            Row(full(XLO), full(GLO), "x min, gamma min"),
            Row(full(XLO), full(GHI), "x min, gamma max"),
            Row(full(XHI), full(GHI), "x max, gamma max"),
            Row(np.where(np.arange(d) % 2, XLO, XHI), rng.integers(GLO, GHI + 1, d), "alternating"),
            Row(one, rng.integers(GLO, GHI + 1, d), "one non-zero"),
            Row(rng.choice([-1, 0, 1], d), rng.integers(GLO, GHI + 1, d), "1-LSB values"),
            Row(rng.integers(XLO, XHI + 1, d), np.zeros(d, np.int64), "gamma = 0"),
        ]
    ]
    no_eps = replace(CFG, eps=0.0)
    batches.append(
        [Row(np.zeros(d, np.int64), rng.integers(GLO, GHI + 1, d), "x = 0, eps = 0", no_eps)]
    )
    batches.append([Row(rng.integers(XLO, XHI + 1, 1), rng.integers(GLO, GHI + 1, 1), "d = 1")])
    batches.append(random_batch(rng, 1, d=MAX_LEN, tag="longest row"))
    vectors = 0
    for i, rows in enumerate(batches):
        vectors += await b.run(rows, f"test_corners[{i}]")
    record("test_corners", vectors=vectors)


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset in pass 1, in the sequencer, in pass 2; then clean rows."""
    b = await Bench.start(dut, "test_reset_mid_operation")

    def in_flight():
        rows = random_batch(b.rng, 2, d=MAX_D)
        b.set_constants(rows[0].d)
        return rows, 2 * cycles(rows[0].nb)

    await b.reset_mid_operation(
        3, in_flight, lambda attempt: random_batch(b.rng, 2, tag=f"after reset {attempt}")
    )


@cocotb.test()
async def test_throughput(dut):
    """No stalls: one row of B beats (sent twice) takes expected_cycles(B) (hw.rmsnorm
    doc)."""
    b = await Bench.start(dut, "test_throughput", stall=False)
    rows = random_batch(b.rng, 1, d=MAX_D, tag="throughput")
    b.set_constants(rows[0].d)
    nb = rows[0].nb
    await b.throughput(rows, cycles(nb), 400 + 4 * cycles(nb), f"row of {nb} beats")
