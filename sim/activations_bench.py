"""cocotb bench of ``hw.activations``: every output equals the golden model bit for bit.

Parameters (``sim.streams.bench_params``): ``unit`` = "lut" (``LutActivation``: ``cfg``
ActivationConfig fields, ``kinds``) or "relu2" (``Relu2``: ``in_bits``, ``up_bits``);
``lanes``; ``random`` (random elements where the input space is too large to sweep);
``stall`` (probabilities). Expected values: ``golden.activations.act_fx`` /
``relu2`` / ``relu2_gated``, called on the same integer inputs. A LUT instance with two
kinds gets vectors of both, the kind chosen per vector.
"""

from __future__ import annotations

import cocotb
import numpy as np

from golden import activations as golden
from golden.config import ActivationConfig
from hw.activations import LutActivation, Relu2, expected_cycles, vector_beats
from sim import streams
from sim.streams import bench_params, pack, record, unpack

P = bench_params()
UNIT = P.get("unit", "lut")
LANES = int(P.get("lanes", 4))
N_RANDOM = int(P.get("random", 4096))
STALL = P.get("stall", {"x": 0.6, "y": 0.5})

if UNIT == "lut":
    CFG = ActivationConfig(**P.get("cfg", {}))
    KINDS = tuple(P.get("kinds", ["gelu"]))
    DUT = LutActivation(CFG, KINDS, lanes=LANES)
    FIELDS = {"data": CFG.in_bits}
    DESC = f"{CFG}"
else:
    KINDS = ("relu2",)
    IN_BITS, UP_BITS = int(P.get("in_bits", 8)), P.get("up_bits")
    DUT = Relu2(IN_BITS, UP_BITS, lanes=LANES)
    FIELDS = {"gate": IN_BITS, "up": int(UP_BITS)} if UP_BITS else {"data": IN_BITS}
    DESC = f"relu2 in_bits={IN_BITS} up_bits={UP_BITS}"
X_L = DUT.x.payload.shape()
Y_L = DUT.y.payload.shape()
LATENCY = DUT.latency
_NP = {8: np.int8, 16: np.int16, 32: np.int32}


def golden_out(inp: dict) -> np.ndarray:
    """The golden model on these inputs (int64 for comparison)."""
    if UNIT == "lut":
        return golden.act_fx(inp["data"], KINDS[inp["_kind"]], CFG).astype(np.int64)
    if "up" in FIELDS:
        return golden.relu2_gated(
            inp["gate"].astype(_NP[IN_BITS]), inp["up"].astype(_NP[int(UP_BITS)])
        ).astype(np.int64)
    return golden.relu2(inp["data"].astype(_NP[IN_BITS])).astype(np.int64)


def detail(inp: dict, i: int) -> str:
    """Inputs of element i and, for the LUT, the table entries it interpolates."""
    s = ", ".join(f"{k} = {int(v[i])}" for k, v in inp.items() if k != "_kind")
    if UNIT == "lut":
        kind = KINDS[inp["_kind"]]
        x = int(inp["data"][i])
        s = f"{kind}: " + s
        a, sg, lut = abs(x), CFG.seg_shift(kind), golden.delta_lut(kind, CFG)
        seg = a >> sg
        s += f" ({x / (1 << CFG.in_frac_bits)}); |x| segment {seg}, position {a & ((1 << sg) - 1)}"
        if seg + 1 < lut.size:
            s += f", T[{seg}] = {int(lut[seg])}, T[{seg + 1}] = {int(lut[seg + 1])}"
        else:
            s += " (beyond the table: delta = 0)"
    return s


def _rng_range(bits: int):
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def corners(bits: int) -> np.ndarray:
    lo, hi = _rng_range(bits)
    v = [lo, lo + 1, -2, -1, 0, 1, 2, hi - 1, hi]
    v += [s * (1 << k) + d for k in range(1, bits - 1) for s in (-1, 1) for d in (-1, 0, 1)]
    return np.unique(np.clip(v, lo, hi))


def sweep(rng) -> dict:
    """Every input when the space is at most 2^16 points (shuffled), else corners and
    random values (gated: all corner pairs plus random pairs)."""
    names = list(FIELDS)
    total_bits = sum(FIELDS.values())
    if total_bits <= 16:
        axes = [np.arange(_rng_range(b)[0], _rng_range(b)[1] + 1) for b in FIELDS.values()]
        grids = np.meshgrid(*axes, indexing="ij")
        cols = [g.reshape(-1) for g in grids]
    else:
        cs = [corners(b) for b in FIELDS.values()]
        grids = np.meshgrid(*cs, indexing="ij")
        cols = [
            np.concatenate(
                [g.reshape(-1), rng.integers(*_rng_range(b), size=N_RANDOM, endpoint=True)]
            )
            for g, b in zip(grids, FIELDS.values(), strict=False)
        ]
    order = rng.permutation(cols[0].size)
    return {k: c[order].astype(np.int64) for k, c in zip(names, cols, strict=False)}


def random_inputs(rng, n: int) -> dict:
    inp = {k: rng.integers(*_rng_range(b), size=n, endpoint=True) for k, b in FIELDS.items()}
    inp["_kind"] = int(rng.integers(0, len(KINDS)))
    return inp


def split(inp: dict, lengths, kind: int) -> list[dict]:
    """Cut the inputs into vectors of these lengths (each ends with ``last``)."""
    out, pos = [], 0
    for n in lengths:
        vec = {k: v[pos : pos + n] for k, v in inp.items()}
        vec["_kind"] = kind
        out.append(vec)
        pos += n
    return out


def beats_of(vec: dict) -> list[int]:
    arrays = {k: v for k, v in vec.items() if k != "_kind"}
    beats = vector_beats(arrays, LANES)
    if len(KINDS) > 1:
        for b in beats:
            b["kind"] = vec["_kind"]
    return [pack(X_L, b) for b in beats]


def check(vectors: list[dict], beats: list[int], where: str) -> int:
    """Compare output beats with golden; report the first mismatch with its inputs."""
    pos = 0
    done = 0
    for v, vec in enumerate(vectors):
        n = vec[next(iter(FIELDS))].size
        want = golden_out(vec)
        nb = -(-n // LANES)
        for b in range(nb):
            assert pos < len(beats), f"{where}: {len(beats)} output beats, expected more"
            beat = unpack(Y_L, beats[pos])
            pos += 1
            assert beat["last"] == int(b == nb - 1), (
                f"{where}: vector {v} beat {b} last={beat['last']}, expected {int(b == nb - 1)}"
            )
            for lane in range(min(LANES, n - b * LANES)):
                i = b * LANES + lane
                got = beat["data"][lane]
                if got != int(want[i]):
                    raise AssertionError(
                        f"{where} ({DESC}, lanes={LANES}): first mismatch at vector {v} "
                        f"element {i} (beat {b}, lane {lane}): got {got}, expected "
                        f"{int(want[i])}\n  inputs: {detail(vec, i)}"
                    )
        done += n
    assert pos == len(beats), f"{where}: {len(beats)} output beats, expected {pos}"
    return done


class Bench(streams.Bench):
    SOURCES, SINKS, STALL, SETTLE = ("x",), ("y",), STALL, LATENCY + 2
    DESC = f"{DESC} lanes={LANES}"
    check = staticmethod(check)

    def feed(self, vec: dict) -> dict[str, list[int]]:
        return {"x": beats_of(vec)}

    def out_beats(self, vec: dict) -> int:
        return -(-vec[next(iter(FIELDS))].size // LANES)


@cocotb.test()
async def test_sweep(dut):
    """Every input (or corners x corners plus random values when the input space exceeds
    2^16), shuffled, cut into vectors of random length, random stalls on x and y."""
    b = await Bench.start(dut, "test_sweep")
    vecs = []
    for kind in range(len(KINDS)):
        inp = sweep(b.rng)
        n = inp[next(iter(FIELDS))].size
        lengths = []
        while sum(lengths) < n:
            lengths.append(min(int(b.rng.integers(1, 8 * LANES)), n - sum(lengths)))
        vecs += split(inp, lengths, kind)
    order = b.rng.permutation(len(vecs))  # the kinds interleave vector by vector
    vectors = await b.run([vecs[i] for i in order], "test_sweep")
    record("test_sweep", vectors=vectors)


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset with beats in flight (pipeline full, output stalled), then clean vectors."""
    b = await Bench.start(dut, "test_reset_mid_operation")
    await b.reset_mid_operation(
        3,
        lambda: ([random_inputs(b.rng, 16 * LANES)], 24),
        lambda _: [random_inputs(b.rng, int(b.rng.integers(1, 6 * LANES)))],
    )


@cocotb.test()
async def test_throughput(dut):
    """No stalls: n beats take n + latency cycles (one beat per cycle)."""
    b = await Bench.start(dut, "test_throughput", stall=False)
    n = 32
    await b.throughput(
        [random_inputs(b.rng, n * LANES)], expected_cycles(n, LATENCY), 100 + 4 * n, f"{n} beats"
    )
