"""cocotb bench of ``hw.requant.Requant``: outputs equal ``golden.requant.requantize`` bit for bit.

Parameters: ``cfg`` (RequantConfig fields), ``lanes``, ``stall``.
"""

from __future__ import annotations

import cocotb
import numpy as np

from golden import requant as golden
from golden.config import RequantConfig
from hw.requant import LATENCY, inp_layout, out_layout
from sim import streams
from sim.streams import bench_params, pack, record, unpack

P = bench_params()
CFG = RequantConfig(**P.get("cfg", {}))
LANES = int(P.get("lanes", 4))
STALL = P.get("stall", {"inp": 0.6, "out": 0.5})
IN_L, OUT_L = inp_layout(CFG, LANES), out_layout(CFG, LANES)
ALO, AHI = -(1 << (CFG.in_bits - 1)), (1 << (CFG.in_bits - 1)) - 1


class Batch:
    """Beats of (acc, mult, shift) triples, [beats, LANES] each, with golden outputs."""

    def __init__(self, acc, mult, shift, tag: str):
        self.acc = np.asarray(acc, np.int64).reshape(-1, LANES)
        self.mult = np.broadcast_to(np.asarray(mult, np.int64), self.acc.shape).copy()
        self.shift = np.broadcast_to(np.asarray(shift, np.int64), self.acc.shape).copy()
        self.tag = tag
        self.y = golden.requantize(self.acc, self.mult, self.shift, CFG).astype(np.int64)
        n = self.acc.shape[0]
        self.last = (np.arange(n) % 5 == 4) | (np.arange(n) == n - 1)  # some framing
        self.beats = [
            pack(
                IN_L,
                {
                    "data": self.acc[i].tolist(),
                    "mult": self.mult[i].tolist(),
                    "shift": self.shift[i].tolist(),
                    "last": int(self.last[i]),
                },
            )
            for i in range(n)
        ]


def random_batch(rng, beats: int, tag="random") -> Batch:
    shape = (beats, LANES)
    acc = np.where(
        rng.random(shape) < 0.5,
        rng.integers(ALO, AHI + 1, shape, dtype=np.int64),
        rng.integers(-5000, 5001, shape),
    )
    mult = np.where(
        rng.random(shape) < 0.8,
        rng.integers(0, CFG.mult_max + 1, shape),
        rng.choice([0, 1, CFG.mult_max, 1 << (CFG.mult_bits - 1)], shape),
    )
    # shifts: the whole range, with weight on 0/1, around the product width and the max
    special = np.array(
        [0, 1, 2, CFG.product_bits - 1, CFG.product_bits, CFG.product_bits + 1, CFG.shift_max]
    )
    special = special[special <= CFG.shift_max]
    shift = np.where(
        rng.random(shape) < 0.7,
        rng.integers(0, CFG.shift_max + 1, shape),
        rng.choice(special, shape),
    )
    return Batch(acc, mult, shift, tag)


def check(batches: list[Batch], beats: list[int], where: str) -> int:
    total = sum(len(b.beats) for b in batches)
    assert len(beats) == total, f"{where}: {len(beats)} output beats, expected {total}"
    pos = 0
    for b in batches:
        for i in range(len(b.beats)):
            got = unpack(OUT_L, beats[pos])
            pos += 1
            assert got["last"] == int(b.last[i]), f"{where}: beat {pos - 1} last={got['last']}"
            for j in range(LANES):
                if got["data"][j] != b.y[i, j]:
                    raise AssertionError(
                        f"{where} ({b.tag}): first mismatch at beat {i} lane {j}: "
                        f"acc={int(b.acc[i, j])} mult={int(b.mult[i, j])} "
                        f"shift={int(b.shift[i, j])} "
                        f"-> got {got['data'][j]}, expected {int(b.y[i, j])}"
                    )
    return total * LANES


class Bench(streams.Bench):
    SOURCES, SINKS, STALL = ("inp",), ("out",), STALL
    BUDGET = (100, 20)
    DESC = f"cfg={CFG} lanes={LANES}"
    check = staticmethod(check)


@cocotb.test()
async def test_random(dut):
    """Random acc/mult/shift over the whole ranges, random stalls."""
    b = await Bench.start(dut, "test_random")
    batches = [random_batch(b.rng, int(P.get("random_beats", 400)))]
    record("test_random", vectors=await b.run(batches, "test_random"))


@cocotb.test()
async def test_extremes(dut):
    """acc at +-max and 0, mult 0 / 1 / max, shifts 0, 1, product width +-1, shift_max."""
    b = await Bench.start(dut, "test_extremes")
    accs = [ALO, AHI, ALO + 1, 0, 1, -1]
    mults = [0, 1, CFG.mult_max, 1 << (CFG.mult_bits - 1)]
    shifts = sorted(
        {
            0,
            1,
            2,
            CFG.out_bits,
            CFG.product_bits - 1,
            CFG.product_bits,
            min(CFG.product_bits + 1, CFG.shift_max),
            CFG.shift_max,
        }
    )
    grid = np.array([(a, mu, s) for a in accs for mu in mults for s in shifts], dtype=np.int64)
    pad = (-len(grid)) % LANES
    grid = np.concatenate([grid, np.zeros((pad, 3), np.int64)])
    g = Batch(grid[:, 0], grid[:, 1].reshape(-1, LANES), grid[:, 2].reshape(-1, LANES), "grid")
    # rounding ties: acc*mult = (2k+1) * 2^(shift-1), both signs
    ties = []
    for s in range(1, 12):
        for k in (-3, -2, -1, 0, 1, 2):
            ties.append(((2 * k + 1) << (s - 1), 1, s))
    pad = (-len(ties)) % LANES
    ties = np.array(ties + [(0, 0, 0)] * pad, dtype=np.int64)
    t = Batch(ties[:, 0], ties[:, 1].reshape(-1, LANES), ties[:, 2].reshape(-1, LANES), "ties")
    # saturation both ways, with a per-tensor scale from quantize_multiplier
    mult, shift = golden.quantize_multiplier(2.0**-10, CFG)
    sat = Batch(np.array([AHI, ALO, 1 << 20, -(1 << 20)] * LANES), mult, shift, "saturation")
    record("test_extremes", vectors=await b.run([g, t, sat], "test_extremes"))


@cocotb.test()
async def test_scales(dut):
    """Realistic use: per-row scales from golden.requant.quantize_multiplier."""
    b = await Bench.start(dut, "test_scales")
    rng = b.rng
    batches = []
    for _ in range(8):
        # representable scales start at 2^(mult_bits-1-shift_max) (quantize_multiplier)
        scale = float(np.exp2(rng.uniform(max(-30, CFG.mult_bits - CFG.shift_max), -2)))
        mult, shift = golden.quantize_multiplier(scale, CFG)
        reach = int(min(AHI, 2**CFG.out_bits / scale))
        acc = rng.integers(-reach, reach + 1, size=16 * LANES)
        batches.append(Batch(acc, mult, shift, f"scale {scale:.3e}"))
    record("test_scales", vectors=await b.run(batches, "test_scales"))


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset with beats in flight, then a clean batch must be exact."""
    b = await Bench.start(dut, "test_reset_mid_operation")
    await b.reset_mid_operation(
        3,
        lambda: ([random_batch(b.rng, 30)], 40),
        lambda attempt: [random_batch(b.rng, 40, f"after reset {attempt}")],
    )


@cocotb.test()
async def test_throughput(dut):
    """No stalls: N beats take N + LATENCY cycles (one beat per cycle)."""
    b = await Bench.start(dut, "test_throughput", stall=False)
    batch = random_batch(b.rng, 200, "throughput")
    await b.throughput([batch], len(batch.beats) + LATENCY, 1000, f"{len(batch.beats)} beats")
