"""cocotb bench of ``hw.quant.ActQuant``: outputs equal ``golden.quant.hw_act_quant`` bit for bit.

Parameters: ``cfg`` (QuantConfig fields), ``lanes``, ``max_len``, ``stall``.
"""

from __future__ import annotations

import cocotb
import numpy as np

from golden import quant as golden
from golden.config import QuantConfig
from hw.quant import inp_layout, out_layout, row_cycles
from sim import streams
from sim.streams import bench_params, pack, record, unpack

P = bench_params()
CFG = QuantConfig(**P.get("cfg", {}))
LANES = int(P.get("lanes", 4))
MAX_LEN = int(P.get("max_len", 64))
DEPTH = -(-MAX_LEN // LANES)
STALL = P.get("stall", {"inp": 0.6, "out": 0.5})
IN_L, OUT_L = inp_layout(CFG, LANES), out_layout(CFG, LANES)
XLO, XHI = -(1 << (CFG.hw_in_bits - 1)), (1 << (CFG.hw_in_bits - 1)) - 1


class Row:
    """One row (padded with zeros to whole beats) with its golden x_q and amax."""

    def __init__(self, x: np.ndarray, tag: str):
        self.tag = tag
        self.n = x.size
        beats = -(-x.size // LANES)
        xp = np.zeros(beats * LANES, dtype=np.int64)
        xp[: x.size] = x
        self.x = xp
        x_q, amax = golden.hw_act_quant(xp[None, :], CFG)
        self.x_q = x_q[0].astype(np.int64)
        self.amax = int(amax[0, 0])
        self.beats = [
            pack(
                IN_L,
                {"data": xp[i * LANES : (i + 1) * LANES].tolist(), "last": int(i == beats - 1)},
            )
            for i in range(beats)
        ]


def random_row(rng, n=None, tag="random") -> Row:
    n = n or int(rng.integers(1, MAX_LEN + 1))
    style = int(rng.integers(0, 4))
    if style == 0:  # random magnitude class, as golden's stress sample
        bits = int(rng.integers(1, CFG.hw_in_bits))
        lim = (1 << bits) - 1
        x = rng.integers(-lim, lim + 1, size=n)
    elif style == 1:  # full int32 range
        x = rng.integers(XLO, XHI + 1, size=n, dtype=np.int64)
    elif style == 2:  # tiny amax: 1..3
        x = rng.integers(-3, 4, size=n)
    else:  # one outlier among small values
        x = rng.integers(-100, 101, size=n)
        x[int(rng.integers(0, n))] = int(rng.choice([XLO, XHI, XHI >> 11, XLO >> 4]))
    return Row(np.asarray(x, dtype=np.int64), tag)


def check(rows: list[Row], beats: list[int], where: str) -> int:
    expected = sum(len(r.beats) for r in rows)
    assert len(beats) == expected, f"{where}: {len(beats)} output beats, expected {expected}"
    pos = 0
    for ri, r in enumerate(rows):
        for b in range(len(r.beats)):
            got = unpack(OUT_L, beats[pos])
            pos += 1
            assert got["last"] == int(b == len(r.beats) - 1), (
                f"{where}: row {ri} beat {b} last={got['last']}"
            )
            assert got["amax"] == r.amax, (
                f"{where} ({r.tag}): row {ri} beat {b}: amax {got['amax']}, expected {r.amax}"
            )
            for i in range(LANES):
                e = b * LANES + i
                if got["data"][i] != r.x_q[e]:
                    recip, shift = golden.hw_reciprocal(np.array([r.amax]), CFG)
                    raise AssertionError(
                        f"{where} ({r.tag}, row {ri}, length {r.n}): "
                        f"first mismatch at element {e}: "
                        f"x={int(r.x[e])} -> got {got['data'][i]}, expected {int(r.x_q[e])} "
                        f"(amax {r.amax}, recip {int(recip[0])}, R {int(shift[0])})"
                    )
    return sum(r.x.size for r in rows)


class Bench(streams.Bench):
    SOURCES, SINKS, STALL = ("inp",), ("out",), STALL
    DESC = f"cfg={CFG} lanes={LANES} max_len={MAX_LEN}"
    check = staticmethod(check)

    def budget(self, rows: list[Row]) -> int:
        return 200 + sum(20 * len(r.beats) + 4 * CFG.recip_bits for r in rows)


@cocotb.test()
async def test_random(dut):
    """Random rows (magnitude classes, full range, tiny amax, outliers), random stalls."""
    b = await Bench.start(dut, "test_random")
    rows = [random_row(b.rng) for _ in range(int(P.get("random_rows", 12)))]
    rows += [random_row(b.rng, n=1, tag="length 1"), random_row(b.rng, n=MAX_LEN, tag="max length")]
    record("test_random", vectors=await b.run(rows, "test_random"))


@cocotb.test()
async def test_extremes(dut):
    """Rows at the maximum length: all -2^31, all 2^31-1, zeros, +-amax alternating, amax 1."""
    b = await Bench.start(dut, "test_extremes")
    rng = b.rng
    n = MAX_LEN
    alt = np.where(np.arange(n) % 2 == 0, XHI, -XHI)
    rows = [
        Row(np.full(n, XLO, np.int64), "all -2^31"),
        Row(np.full(n, XHI, np.int64), "all 2^31-1"),
        Row(np.zeros(n, np.int64), "zeros"),
        Row(alt.astype(np.int64), "+-(2^31-1)"),
        Row(rng.integers(-1, 2, n).astype(np.int64), "amax 1"),
        Row(np.arange(n, dtype=np.int64) - n // 2, "ramp"),
    ]
    # every power-of-two amax boundary (n = bit_length changes), one row each
    for bits in range(1, CFG.hw_in_bits):
        for v in ((1 << bits) - 1, 1 << bits):
            if v <= -XLO:
                x = rng.integers(-(v - 1) if v > 1 else 0, v, size=LANES).astype(np.int64)
                x[0] = -v if v == -XLO else v
                rows.append(Row(x, f"amax {v}"))
    record("test_extremes", vectors=await b.run(rows, "test_extremes"))


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset during fill / divide / drain, then clean rows must be exact."""
    b = await Bench.start(dut, "test_reset_mid_operation")

    def in_flight():
        r = random_row(b.rng, n=int(b.rng.integers(LANES, MAX_LEN + 1)))
        return [r], 3 * len(r.beats) + CFG.recip_bits + 4

    await b.reset_mid_operation(4, in_flight, b.after_reset(random_row))


@cocotb.test()
async def test_throughput(dut):
    """No stalls, one row of max length: measured cycles vs hw.quant.row_cycles."""
    b = await Bench.start(dut, "test_throughput", stall=False)
    r = random_row(b.rng, n=MAX_LEN, tag="throughput")
    await b.throughput(
        [r],
        row_cycles(len(r.beats), CFG),
        100 + 4 * len(r.beats) + 2 * CFG.recip_bits,
        f"row of {MAX_LEN} ({len(r.beats)} beats)",
    )
