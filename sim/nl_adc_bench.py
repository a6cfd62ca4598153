"""cocotb bench of ``hw.nl_adc.NLADC``: every code equals ``golden.nl_adc.ramp_counter_codes``.

Parameters (``sim.streams.bench_params``): ``cfg`` (ADCConfig fields, ``device`` nested),
``addr_bits``, ``beats`` (x beats per programmed table), ``stall`` (probabilities).
Tables come from the golden model only: ``threshold_table`` of ``design`` (ideal) or of
``sample_device`` / ``calibrate`` (device error folded in); inputs from
``twin_test_inputs`` + ``quantize_inputs`` plus the numeric corners (each threshold and
its neighbours, the ends of the input range, zero).
"""

from __future__ import annotations

import cocotb
import numpy as np

from golden import nl_adc as golden
from golden.config import ADCConfig, ADCDeviceConfig
from hw.nl_adc import (
    cycles_per_conversion,
    expected_cycles,
    out_layout,
    wr_beats,
    wr_layout,
    x_beats,
    x_layout,
)
from sim import streams
from sim.streams import bench_params, bench_seed, pack, record, unpack

P = bench_params()
_cfg = dict(P.get("cfg", {}))
_dev = _cfg.pop("device", None)
CFG = ADCConfig(**_cfg, **({"device": ADCDeviceConfig(**_dev)} if _dev else {}))
ADDR_BITS = int(P.get("addr_bits", CFG.bits))
BEATS = int(P.get("beats", 24))
STALL = P.get("stall", {"wr": 0.6, "x": 0.6, "out": 0.5})
FUNCTIONS = ("sigmoid", "tanh", "relu2")
WR_L, X_L, OUT_L = wr_layout(CFG, ADDR_BITS), x_layout(CFG), out_layout(CFG)
LO, HI = CFG.threshold_min, CFG.threshold_max


class Table:
    """A threshold table as the host programs it, with a name for messages."""

    def __init__(self, values, name: str):
        self.values = np.asarray(values, dtype=np.int64)
        self.name = name
        assert self.values.shape == (CFG.n_thresholds,)


def ideal_table(fn: str) -> Table:
    return Table(golden.threshold_table(golden.design(fn, CFG.bits), CFG), f"ideal {fn}")


def inputs_for(table: Table, rng, n: int, fn: str | None = None) -> np.ndarray:
    """n quantized inputs: half corners (thresholds, their neighbours, range ends, 0),
    half real inputs through f^-1 (or uniform over the range when there is no f)."""
    t = table.values
    corners = np.unique(np.concatenate([t - 1, t, t + 1, [LO, LO + 1, -1, 0, 1, HI - 1, HI]]))
    corners = corners[(corners >= LO) & (corners <= HI)]
    n_corner = min(corners.size, n // 2)
    pick = rng.choice(corners, size=n_corner, replace=False)
    if fn is not None:
        x = golden.twin_test_inputs(golden.design(fn, CFG.bits), n - n_corner, rng)
        real = golden.quantize_inputs(x, CFG)
    else:
        real = rng.integers(LO, HI + 1, size=n - n_corner)
    xq = np.concatenate([pick, real])
    rng.shuffle(xq)
    return xq.astype(np.int64)


def check(table, xq: np.ndarray, beats: list[int], where: str) -> int:
    """Compare output beats with golden; report the first mismatch with its inputs.

    ``table``: one Table for every beat, or a list with the Table each beat was converted
    with."""
    nb = -(-xq.size // CFG.lanes)
    tables = table if isinstance(table, list) else [table] * nb
    assert len(beats) == nb, f"{where}: {len(beats)} output beats, expected {nb}"
    for b, bits in enumerate(beats):
        beat = unpack(OUT_L, bits)
        assert beat["last"] == int(b == nb - 1), f"{where}: beat {b} last={beat['last']}"
        tb = tables[b]
        xb = xq[b * CFG.lanes : (b + 1) * CFG.lanes]
        want = golden.ramp_counter_codes(xb, tb.values, CFG)
        for lane in range(xb.size):
            got = beat["data"][lane]
            if got != int(want[lane]):
                x = int(xb[lane])
                t = tb.values
                near = np.argsort(np.abs(t - x))[:6]
                raise AssertionError(
                    f"{where} ({tb.name}, cfg={CFG}): first mismatch at element "
                    f"{b * CFG.lanes + lane} (beat {b}, lane {lane}): x_q = {x} "
                    f"({x / (1 << CFG.threshold_frac_bits)}): got code {got}, expected "
                    f"{int(want[lane])}\n  nearest thresholds (k: value): "
                    f"{ {int(k): int(t[k]) for k in sorted(near)} }\n  x beat = {xb.tolist()}"
                )
    return int(xq.size)


class Bench(streams.Bench):
    """Also drives wr_error_clear from ``clear`` at every falling edge, and counts the
    vectors checked."""

    SOURCES, SINKS, STALL = ("wr", "x"), ("out",), STALL
    DESC = f"cfg={CFG} addr_bits={ADDR_BITS}"

    def __init__(self, dut, test: str, stall: bool = True):
        super().__init__(dut, test, stall)
        self.clear = 0  # wr_error_clear, applied at each falling edge
        self.vectors = 0
        self.h.every_falling_edge(self._apply_clear)

    def _apply_clear(self):
        self.dut.wr_error_clear.value = self.clear

    async def program(self, table: Table, where: str):
        self.wr.extend(pack(WR_L, b) for b in wr_beats(table.values))
        await self.h.run_until(lambda: self.wr.idle, 50 + 20 * CFG.levels, f"{where}: program")

    async def convert(self, table: Table, xq: np.ndarray, where: str):
        beats = [pack(X_L, b) for b in x_beats(xq, CFG)]
        self.x.extend(beats)
        budget = 100 + 6 * len(beats) * cycles_per_conversion(CFG)
        self.vectors += check(table, xq, await self.collect(len(beats), budget, where), where)

    def flag(self) -> int:
        return int(self.dut.wr_error.value)


@cocotb.test()
async def test_ideal_tables(dut):
    """Ideal tables of sigmoid / tanh / relu2 programmed one after the other (each
    overwrites the last), inputs through f^-1 plus every-threshold corners, random stalls."""
    b = await Bench.start(dut, "test_ideal_tables")
    for fn in FUNCTIONS:
        table = ideal_table(fn)
        await b.program(table, f"test_ideal_tables[{fn}]")
        await b.convert(
            table, inputs_for(table, b.rng, BEATS * CFG.lanes, fn), f"test_ideal_tables[{fn}]"
        )
    assert b.flag() == 0, "wr_error set by in-range writes"
    record("test_ideal_tables", vectors=b.vectors)


@cocotb.test()
async def test_device_tables(dut):
    """Tables from sampled devices (typical RRAM, uncalibrated and calibrated, one
    comparator's offset folded in; a high-error device with stuck cells), an unsorted
    random table with the range ends, and a partial reprogram of a few entries."""
    b = await Bench.start(dut, "test_device_tables")
    seed = bench_seed()
    heavy = ADCDeviceConfig(seed=seed, sigma_prog=0.3, stuck_off_prob=0.05, sigma_offset=0.01)
    tables = []
    for i, fn in enumerate(FUNCTIONS):
        dsg = golden.design(fn, CFG.bits)
        dev = golden.sample_device(dsg, ADCDeviceConfig.rram_typical(seed=seed), seed=(seed, i))
        col = int(b.rng.integers(0, dev.cfg.columns))
        tables.append(
            (
                Table(
                    golden.threshold_table(dev, CFG, saturate=True),
                    f"{fn} rram_typical uncalibrated",
                ),
                fn,
            )
        )
        tables.append(
            (
                Table(
                    golden.threshold_table(golden.calibrate(dev), CFG, column=col, saturate=True),
                    f"{fn} rram_typical calibrated, column {col}",
                ),
                fn,
            )
        )
    dev = golden.sample_device(golden.design("sigmoid", CFG.bits), heavy)
    tables.append(
        (
            Table(
                golden.threshold_table(golden.calibrate(dev), CFG, saturate=True),
                "sigmoid heavy calibrated",
            ),
            "sigmoid",
        )
    )
    rand = b.rng.integers(LO, HI + 1, size=CFG.n_thresholds)
    rand[b.rng.choice(CFG.n_thresholds, size=min(2, CFG.n_thresholds), replace=False)] = [LO, HI][
        : min(2, CFG.n_thresholds)
    ]
    tables.append((Table(rand, "random unsorted"), None))
    beats = max(2, BEATS // 2)
    for table, fn in tables:
        await b.program(table, f"test_device_tables[{table.name}]")
        await b.convert(
            table,
            inputs_for(table, b.rng, beats * CFG.lanes, fn),
            f"test_device_tables[{table.name}]",
        )
    # partial reprogram: only a few addresses change
    last = tables[-1][0]
    addrs = b.rng.choice(CFG.n_thresholds, size=min(3, CFG.n_thresholds), replace=False)
    vals = b.rng.integers(LO, HI + 1, size=addrs.size)
    new = last.values.copy()
    new[addrs] = vals
    b.wr.extend(
        pack(WR_L, {"addr": int(a), "data": int(v)}) for a, v in zip(addrs, vals, strict=False)
    )
    await b.h.run_until(lambda: b.wr.idle, 1000, "partial reprogram")
    table = Table(new, f"random with entries {addrs.tolist()} rewritten")
    await b.convert(
        table, inputs_for(table, b.rng, beats * CFG.lanes), "test_device_tables[partial]"
    )
    assert b.flag() == 0, "wr_error set by in-range writes"
    record("test_device_tables", vectors=b.vectors)


@cocotb.test()
async def test_write_errors(dut):
    """Out-of-range addresses are consumed, not written, and set the sticky wr_error;
    wr_error_clear clears it; an error in the same cycle as a clear wins."""
    b = await Bench.start(dut, "test_write_errors")
    assert b.flag() == 0, "wr_error set after reset"
    table = ideal_table("tanh")
    await b.program(table, "test_write_errors: program")
    bad_addrs = sorted(
        {
            CFG.n_thresholds,
            (1 << ADDR_BITS) - 1,
            int(b.rng.integers(CFG.n_thresholds, 1 << ADDR_BITS)),
        }
    )
    # good writes of the same values around bad writes of garbage
    beats = []
    for a in bad_addrs:
        k = int(b.rng.integers(0, CFG.n_thresholds))
        beats.append({"addr": k, "data": int(table.values[k])})
        beats.append({"addr": a, "data": int(b.rng.integers(LO, HI + 1))})
    b.wr.extend(pack(WR_L, x) for x in beats[:1])
    await b.h.run_until(lambda: b.wr.idle, 1000, "good write")
    await b.h.run_cycles(2)
    assert b.flag() == 0, "wr_error set by an in-range write"
    b.wr.extend(pack(WR_L, x) for x in beats[1:])
    await b.h.run_until(lambda: b.wr.idle, 1000, "bad writes")
    await b.h.run_cycles(2)
    assert b.flag() == 1, f"wr_error not set after writes to {bad_addrs}"
    # the table is unchanged (an out-of-range write must not alias onto a real entry)
    await b.convert(
        table,
        inputs_for(table, b.rng, BEATS * CFG.lanes, "tanh"),
        "test_write_errors: after bad writes",
    )
    assert b.flag() == 1, "wr_error is not sticky"
    b.clear = 1
    await b.h.run_cycles(3)
    assert b.flag() == 0, "wr_error_clear did not clear"
    # a bad write transferring while clear is held: the flag ends set
    b.wr.put(pack(WR_L, {"addr": bad_addrs[0], "data": 0}))
    await b.h.run_until(lambda: b.wr.idle, 1000, "bad write during clear")
    b.clear = 0
    await b.h.run_cycles(2)
    assert b.flag() == 1, "a clear in the same cycle as an error cleared it"
    b.clear = 1
    await b.h.run_cycles(2)
    b.clear = 0
    await b.h.run_cycles(2)
    assert b.flag() == 0, "wr_error_clear did not clear"
    record("test_write_errors", vectors=b.vectors)


@cocotb.test()
async def test_reset_mid_operation(dut):
    """Reset during conversions and during table writes, then clean conversions. The
    table is RAM: it keeps what was written before the reset (the accepted write beats
    are counted), which the following conversion checks."""
    b = await Bench.start(dut, "test_reset_mid_operation")
    table = ideal_table("sigmoid")
    await b.program(table, "test_reset_mid_operation: program")
    for attempt in range(2):
        where = f"test_reset_mid_operation[{attempt}]"
        # reset in the middle of a stream of conversions
        xq = inputs_for(table, b.rng, 4 * CFG.lanes, "sigmoid")
        b.x.extend(pack(X_L, x) for x in x_beats(xq, CFG))
        await b.h.run_cycles(int(b.rng.integers(2, 3 * cycles_per_conversion(CFG))))
        await b.h.reset(cycles=int(b.rng.integers(1, 4)))
        assert b.flag() == 0 and int(dut.out__valid.value) == 0, f"{where}: state after reset"
        await b.convert(
            table,
            inputs_for(table, b.rng, 2 * CFG.lanes, "sigmoid"),
            f"{where}: after reset during conversion",
        )
        # reset in the middle of programming another table
        other = ideal_table(FUNCTIONS[1 + attempt])
        b.wr.extend(pack(WR_L, w) for w in wr_beats(other.values))
        sent0 = b.wr.sent
        await b.h.run_cycles(int(b.rng.integers(1, CFG.n_thresholds + 1)))
        written = b.wr.sent - sent0
        await b.h.reset(cycles=int(b.rng.integers(1, 4)))
        mixed = table.values.copy()
        mixed[:written] = other.values[:written]
        mixed_t = Table(mixed, f"sigmoid with the first {written} entries of {other.name}")
        await b.convert(
            mixed_t,
            inputs_for(mixed_t, b.rng, 2 * CFG.lanes),
            f"{where}: after reset during programming",
        )
        await b.program(table, f"{where}: reprogram")
        await b.convert(
            table, inputs_for(table, b.rng, 2 * CFG.lanes, "sigmoid"), f"{where}: clean"
        )
    record("test_reset_mid_operation", vectors=b.vectors)


@cocotb.test()
async def test_throughput(dut):
    """No stalls: n back-to-back conversions take n * 2^N + 2 cycles (hw.nl_adc doc)."""
    b = await Bench.start(dut, "test_throughput", stall=False)
    table = ideal_table("relu2")
    await b.program(table, "test_throughput: program")
    await b.h.run_cycles(2)
    n = 4
    xq = inputs_for(table, b.rng, n * CFG.lanes, "relu2")
    b.x.extend(pack(X_L, x) for x in x_beats(xq, CFG))
    cycles = await b.measure(n, 100 + 4 * n * CFG.levels)
    b.vectors += check(table, xq, b.out.beats, "test_throughput")
    b.check_cycles(
        f"{n} conversions of {CFG.lanes} lanes, N={CFG.bits}",
        cycles,
        expected_cycles(n, CFG),
        b.vectors,
        conversions=n,
    )


@cocotb.test()
async def test_backpressure(dut):
    """out blocked for several conversion times: exactly two conversions complete (one
    waiting in the output register, one held in its last step, its RAM read kept), the
    rest wait; then a slow sink (ready 5 %) drains every result exactly."""
    b = await Bench.start(dut, "test_backpressure")
    table = ideal_table("tanh")
    await b.program(table, "test_backpressure: program")
    xq = inputs_for(table, b.rng, 6 * CFG.lanes, "tanh")
    b.x.extend(pack(X_L, x) for x in x_beats(xq, CFG))
    b.out.p_ready = 0.0
    await b.h.run_cycles(4 * cycles_per_conversion(CFG) + 8)
    assert b.x.sent == 2, (
        f"out blocked: {b.x.sent} inputs accepted, expected 2 "
        "(one in the output register, one held in its last step)"
    )
    assert int(dut.out__valid.value) == 1 and not b.out.beats
    b.out.p_ready = 0.05
    nb = len(x_beats(xq, CFG))
    await b.h.run_until(
        lambda: len(b.out.beats) >= nb, 200 + 40 * nb * CFG.levels, "test_backpressure: drain"
    )
    await b.h.run_cycles(3)
    b.vectors += check(table, xq, b.out.beats, "test_backpressure")
    record("test_backpressure", vectors=b.vectors)


@cocotb.test()
async def test_writes_between_conversions(dut):
    """Table writes queued while conversions stream (random stalls): each conversion uses
    the table as written before its input was accepted (writes wait for the running
    conversion), and a pending write is never passed by a new conversion."""
    b = await Bench.start(dut, "test_writes_between_conversions")
    first, second = ideal_table("sigmoid"), ideal_table("relu2")
    await b.program(first, "test_writes_between_conversions: program")
    state = first.values.copy()
    xq = inputs_for(first, b.rng, 3 * BEATS // 2 * CFG.lanes + 1, "sigmoid")
    xb = x_beats(xq, CFG)
    b.x.extend(pack(X_L, x) for x in xb)
    # the second table in a few bursts, in shuffled order, while x streams
    order = b.rng.permutation(CFG.n_thresholds)
    bursts = np.array_split(order, 3)
    writes = []  # (addr, data) in send order
    used = []  # Table per x beat, at its acceptance
    budget = 200 + 10 * len(xb) * CFG.levels
    start = b.h.cycle
    base = b.wr.sent  # beats sent by program() above
    while len(b.out.beats) < len(xb):
        if bursts and b.rng.random() < 2.0 / CFG.levels:
            burst = bursts.pop(0)
            for a in burst:
                writes.append((int(a), int(second.values[a])))
                b.wr.put(pack(WR_L, {"addr": int(a), "data": int(second.values[a])}))
        wr0, x0 = b.wr.sent, b.x.sent
        wr_pending = b.wr.offered
        await b.h.step()
        for a, v in writes[wr0 - base : b.wr.sent - base]:
            state[a] = v
        if b.x.sent > x0:
            assert not (wr_pending or b.wr.offered or b.wr.sent > wr0), (
                f"cycle {b.h.cycle}: a conversion started while a table write was pending"
            )
            changed = int(np.sum(state != first.values))
            used.append(Table(state.copy(), f"sigmoid with {changed} entries of relu2"))
        if b.h.cycle - start > budget:
            raise AssertionError("test_writes_between_conversions: timeout")
    b.h.check_protocol()
    await b.h.run_cycles(3)
    b.vectors += check(used, xq, b.out.beats, "test_writes_between_conversions")
    record("test_writes_between_conversions", vectors=b.vectors, writes=len(writes))
