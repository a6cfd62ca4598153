"""cocotb bench of ``hw.rope.RoPE``: every output equals ``golden.rope.rope_fx`` bit for bit.

Parameters (``sim.streams.bench_params``): ``cfg`` (RopeConfig), ``head_dim``,
``in_bits`` (8, 16 or 32: the golden dtypes), ``lanes``, ``positions`` (random positions
swept), ``stall``. int8 heads come from ``golden.rope.int8_sweep`` (extremes, zero and a
grid of pairs, every pair meeting every frequency); wider inputs are random at random
magnitudes plus extremes that saturate where ``out_bits`` allows.
"""

from __future__ import annotations

import cocotb
import numpy as np

from golden import rope as golden
from golden.config import RopeConfig
from hw.rope import expected_cycles, x_beats, x_layout, y_layout
from sim import streams
from sim.streams import bench_params, pack, record, unpack

P = bench_params()
CFG = RopeConfig(**P.get("cfg", {}))
HD = int(P.get("head_dim", 16))
IN_BITS = int(P.get("in_bits", 8))
LANES = int(P.get("lanes", 4))
N_POS = int(P.get("positions", 16))
STALL = P.get("stall", {"x": 0.6, "y": 0.5})
X_L, Y_L = x_layout(CFG, IN_BITS, LANES), y_layout(CFG, IN_BITS, LANES)
DT = {8: np.int8, 16: np.int16, 32: np.int32}[IN_BITS]
LO, HI = -(1 << (IN_BITS - 1)), (1 << (IN_BITS - 1)) - 1
H = HD // 2


class Head:
    """One head vector at one position with its golden result."""

    def __init__(self, x, pos: int, tag: str = ""):
        self.x = np.asarray(x).astype(DT)
        self.pos, self.tag = int(pos), tag
        self.expected = golden.rope_fx(self.x[None, :], np.array([self.pos]), CFG)[0].astype(
            np.int64
        )
        self.beats = [pack(X_L, b) for b in x_beats(self.x, self.pos, LANES)]


def check(head: Head, beats: list[int], where: str) -> int:
    nb = len(head.beats)
    assert len(beats) == nb, f"{where}: {len(beats)} output beats, expected {nb}"
    for c, bits in enumerate(beats):
        beat = unpack(Y_L, bits)
        assert beat["last"] == int(c == nb - 1), f"{where}: beat {c} last={beat['last']}"
        for half, key in ((0, "y1"), (1, "y2")):
            for lane in range(LANES):
                i = c * LANES + lane
                j = i + half * H
                got, want = beat[key][lane], int(head.expected[j])
                if got != want:
                    cos_q, sin_q = golden.rope_tables(HD, CFG)
                    raise AssertionError(
                        f"{where} ({head.tag}, pos={head.pos}, head_dim={HD}, in_bits={IN_BITS}, "
                        f"cfg={CFG}): first mismatch at y[{j}] (beat {c}, {key} lane {lane}): "
                        f"got {got}, expected {want}\n  pair x[{i}] = {int(head.x[i])}, "
                        f"x[{i + H}] = {int(head.x[i + H])}; cos_q = {int(cos_q[head.pos, i])}, "
                        f"sin_q = {int(sin_q[head.pos, i])}"
                    )
    return HD


def positions(rng, n: int) -> np.ndarray:
    fixed = [0, 1, CFG.max_pos - 1]
    return np.concatenate([fixed, rng.integers(0, CFG.max_pos, size=max(0, n - 3))])[: max(n, 3)]


def sweep_heads(rng) -> list[Head]:
    heads = []
    if IN_BITS == 8:
        x, _ = golden.int8_sweep(HD, CFG)  # (max_pos, rows, HD)
        for p in positions(rng, N_POS):
            heads += [Head(row, p, "int8 sweep") for row in x[p]]
    else:
        for p in positions(rng, N_POS):
            mag = rng.integers(0, IN_BITS - 1)
            heads.append(Head(rng.integers(LO, HI + 1, HD) >> mag, p, f"random >> {mag}"))
        for p in positions(rng, 3):
            heads.append(Head(np.full(HD, HI), p, "all max"))
            heads.append(Head(np.full(HD, LO), p, "all min"))
            heads.append(
                Head(
                    np.concatenate([np.full(H, HI), np.full(H, LO)]),
                    p,
                    "x1 max, x2 min (largest rotation sums)",
                )
            )
            heads.append(
                Head(np.concatenate([np.full(H, LO), np.full(H, HI)]), p, "x1 min, x2 max")
            )
    order = rng.permutation(len(heads))
    return [heads[i] for i in order]


class Bench(streams.Bench):
    SOURCES, SINKS, STALL, SETTLE = ("x",), ("y",), STALL, 5
    DESC = f"cfg={CFG} head_dim={HD} in_bits={IN_BITS} lanes={LANES}"
    check_item = staticmethod(check)


@cocotb.test()
async def test_sweep(dut):
    """Heads at positions 0, 1, max_pos - 1 and random ones (int8: the golden pair sweep;
    wider: random magnitudes and saturating extremes), random stalls."""
    b = await Bench.start(dut, "test_sweep")
    vectors = await b.run(sweep_heads(b.rng), "test_sweep")
    assert int(dut.pos_error.value) == 0, "pos_error set by in-range positions"
    record("test_sweep", vectors=vectors)


@cocotb.test()
async def test_pos_error(dut):
    """A position >= max_pos sets the sticky pos_error (when the field can hold one);
    reset clears it; in-range heads afterwards are exact."""
    b = await Bench.start(dut, "test_pos_error")
    field_max = (1 << X_L.members["pos"].width) - 1
    if field_max >= CFG.max_pos:
        bad = dict(x_beats(np.zeros(HD, np.int64), 0, LANES)[0])
        bad["pos"] = int(b.rng.integers(CFG.max_pos, field_max + 1))
        b.x.put(pack(X_L, bad))
        await b.h.run_until(lambda: len(b.y.beats) >= 1, 200, "bad position")
        await b.h.run_cycles(2)
        assert int(dut.pos_error.value) == 1, f"pos_error not set by pos = {bad['pos']}"
        await b.h.reset()
        assert int(dut.pos_error.value) == 0, "pos_error not cleared by reset"
    heads = [
        Head(b.rng.integers(LO, HI + 1, HD), p, "after pos_error") for p in positions(b.rng, 4)
    ]
    record("test_pos_error", vectors=await b.run(heads, "test_pos_error"))


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset with beats in flight (also in the middle of a head: the beat counter restarts),
    then clean heads."""
    b = await Bench.start(dut, "test_reset_mid_operation")

    def in_flight():
        heads = [Head(b.rng.integers(LO, HI + 1, HD), p) for p in positions(b.rng, 4)]
        return heads, 4 * len(heads[0].beats) + 2

    await b.reset_mid_operation(
        3,
        in_flight,
        lambda attempt: [
            Head(b.rng.integers(LO, HI + 1, HD), p, f"after reset {attempt}")
            for p in positions(b.rng, 3)
        ],
    )


@cocotb.test()
async def test_throughput(dut):
    """No stalls: n beats take n + 3 cycles (one beat per cycle)."""
    b = await Bench.start(dut, "test_throughput", stall=False)
    heads = [Head(b.rng.integers(LO, HI + 1, HD), p, "throughput") for p in positions(b.rng, 8)]
    n = sum(len(hd.beats) for hd in heads)
    await b.throughput(heads, expected_cycles(n), 100 + 4 * n, f"{n} beats")
