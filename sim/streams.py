"""Reusable cocotb pieces for benches of ``amaranth.lib.stream`` components.

A component port ``x = In/Out(stream.Signature(shape))`` appears in the exported Verilog as
``x__payload``, ``x__valid`` and ``x__ready``; a ``data`` layout payload is one flat vector
(pack/unpack it with :func:`pack` / :func:`unpack`).

Timing discipline (race-free with Verilator): inputs change only at the falling clock edge;
handshakes are sampled in the ReadOnly phase right after it, i.e. with the values that the
next rising edge will see.  :class:`Harness` runs ONE coroutine that does this for every
registered source and sink, which keeps the Python cost per simulated cycle low.

Sources keep ``valid`` and the payload stable until the beat is taken (the
``amaranth.lib.stream`` rule); sinks check the DUT obeys the same rule.  Stalls are random:
a source offers a beat with probability ``p_valid`` per cycle, a sink is ready with
probability ``p_ready``, both drawn from a seeded numpy Generator (:func:`bench_rng`).

Bench plumbing: :func:`bench_params` (what the pytest side passed to
:func:`sim.runner.run_bench`), :func:`bench_seed` / :func:`bench_rng` (from env ``SEED``),
:func:`record` (extra figures for the regression summary: vectors, cycles, ...).

:class:`Bench` is what every block bench (``sim/<block>_bench.py``) builds on: the seeded
harness with its stream ports, and the loops the benches share (run items against
golden, reset with work in flight, no-stall cycle counts against the documented formula).
"""

from __future__ import annotations

import json
import os
import zlib
from collections import deque
from pathlib import Path

import numpy as np

CLOCK_NS = 10  # clock period of every bench (simulated cycles = sim time / CLOCK_NS)


# --------------------------------------------------------------------------- plumbing
def bench_params() -> dict:
    """Parameters given to ``run_bench(params=...)`` (empty outside the runner)."""
    path = os.environ.get("SIM_PARAMS")
    if not path:
        return {}
    return json.loads(Path(path).read_text())


def bench_seed() -> int:
    return int(os.environ.get("SEED") or 0)


def bench_rng(tag: str) -> np.random.Generator:
    """A generator reproducible from the session seed, distinct per ``tag`` (test name)."""
    return np.random.default_rng([bench_seed(), zlib.crc32(tag.encode())])


def record(test: str, **fields) -> None:
    """Attach figures (vectors=..., cycles=..., ideal_cycles=...) to cocotb test ``test``.

    Numeric fields are summed over repeated calls, others overwritten.
    """
    d = os.environ.get("SIM_RECORDS")
    if not d:
        return
    path = Path(d) / f"{test}.json"
    cur = json.loads(path.read_text()) if path.exists() else {}
    for k, v in fields.items():
        if (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and isinstance(cur.get(k), (int, float))
        ):
            cur[k] = cur[k] + v
        else:
            cur[k] = v
    path.write_text(json.dumps(cur, default=str))


# --------------------------------------------------------------------------- layouts
def _is_layout(shape) -> bool:
    from amaranth.lib import data

    return isinstance(shape, data.Layout)


def shape_width(shape) -> int:
    from amaranth import Shape

    if _is_layout(shape):
        return shape.size
    return Shape.cast(shape).width


def pack(shape, value) -> int:
    """Python value -> the integer bit pattern of ``shape``.

    Layouts: StructLayout takes a dict, ArrayLayout a sequence (or numpy array); plain
    shapes take an int (two's complement for negatives, checked against the width).
    """
    from amaranth import Shape
    from amaranth.lib import data

    if isinstance(shape, data.ArrayLayout):
        elem = shape.elem_shape
        if not _is_layout(elem):
            return _pack_ints(Shape.cast(elem), value, shape.length)
        w = shape_width(elem)
        out = 0
        for i, v in enumerate(value):
            out |= pack(elem, v) << (i * w)
        return out
    if _is_layout(shape):
        out = 0
        for name, field in shape:
            out |= pack(field.shape, value[name]) << field.offset
        return out
    s = Shape.cast(shape)
    v = int(value)
    lo, hi = (
        (-(1 << (s.width - 1)), (1 << (s.width - 1)) - 1) if s.signed else (0, (1 << s.width) - 1)
    )
    if not lo <= v <= hi:
        raise ValueError(f"value {v} does not fit {s!r}")
    return v & ((1 << s.width) - 1)


def _pack_ints(s, values, length: int) -> int:
    vals = [int(v) for v in values]
    if len(vals) != length:
        raise ValueError(f"expected {length} elements, got {len(vals)}")
    w = s.width
    lo, hi = (-(1 << (w - 1)), (1 << (w - 1)) - 1) if s.signed else (0, (1 << w) - 1)
    mask = (1 << w) - 1
    out = 0
    for i in range(length - 1, -1, -1):
        v = vals[i]
        if not lo <= v <= hi:
            raise ValueError(f"element {i} = {v} does not fit {s!r}")
        out = (out << w) | (v & mask)
    return out


def unpack(shape, bits: int):
    """Integer bit pattern -> Python value (dict / list / int, signed where the shape is)."""
    from amaranth import Shape
    from amaranth.lib import data

    if isinstance(shape, data.ArrayLayout):
        elem = shape.elem_shape
        w = shape_width(elem)
        mask = (1 << w) - 1
        return [unpack(elem, (bits >> (i * w)) & mask) for i in range(shape.length)]
    if _is_layout(shape):
        out = {}
        for name, field in shape:
            w = shape_width(field.shape)
            out[name] = unpack(field.shape, (bits >> field.offset) & ((1 << w) - 1))
        return out
    s = Shape.cast(shape)
    bits &= (1 << s.width) - 1
    if s.signed and bits >> (s.width - 1):
        bits -= 1 << s.width
    return bits


# --------------------------------------------------------------------------- sources / sinks
class _StreamPort:
    """The ``<prefix>__payload/valid/ready`` signals of one stream port of the DUT."""

    def __init__(self, dut, prefix: str, rng: np.random.Generator):
        self.payload = getattr(dut, f"{prefix}__payload")
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.name = prefix
        self.rng = rng


class StreamSource(_StreamPort):
    """Drives ``<prefix>__payload/valid`` from a queue of packed beats; reads ``__ready``."""

    def __init__(self, dut, prefix: str, rng: np.random.Generator, p_valid: float = 1.0):
        super().__init__(dut, prefix, rng)
        self.p_valid = p_valid
        self.queue: deque[int] = deque()
        self.offered = False  # valid is high now with queue[0]
        self.sent = 0

    def put(self, beat: int) -> None:
        self.queue.append(beat)

    def extend(self, beats) -> None:
        self.queue.extend(beats)

    @property
    def idle(self) -> bool:
        return not self.queue

    def flush(self) -> None:
        self.queue.clear()
        self.offered = False
        self.valid.value = 0

    def drive(self) -> None:
        if self.offered:
            return  # hold valid and payload until taken
        if self.queue and (self.p_valid >= 1.0 or self.rng.random() < self.p_valid):
            self.payload.value = self.queue[0]
            self.valid.value = 1
            self.offered = True
        else:
            self.valid.value = 0

    def sample(self) -> bool:
        """Called in ReadOnly before the rising edge: True if a beat transfers now."""
        if self.offered and int(self.ready.value):
            self.queue.popleft()
            self.offered = False
            self.sent += 1
            return True
        return False


class StreamSink(_StreamPort):
    """Randomly drives ``<prefix>__ready``; collects beats; checks valid/payload stability."""

    def __init__(self, dut, prefix: str, rng: np.random.Generator, p_ready: float = 1.0):
        super().__init__(dut, prefix, rng)
        self.p_ready = p_ready
        self.beats: list[int] = []
        self.beat_cycles: list[int] = []
        self._pending: int | None = None  # payload offered but not taken last cycle
        self.errors: list[str] = []

    def flush(self) -> None:
        self.beats.clear()
        self.beat_cycles.clear()
        self._pending = None

    def drive(self) -> None:
        self.ready.value = 1 if (self.p_ready >= 1.0 or self.rng.random() < self.p_ready) else 0

    def sample(self, cycle: int) -> bool:
        valid = int(self.valid.value)
        if self._pending is not None:
            if not valid:
                self.errors.append(
                    f"{self.name}: valid dropped before the beat was taken (cycle {cycle})"
                )
            elif int(self.payload.value) != self._pending:
                self.errors.append(
                    f"{self.name}: payload changed while valid and not ready (cycle {cycle})"
                )
        if valid:
            bits = int(self.payload.value)
            if int(self.ready.value):
                self.beats.append(bits)
                self.beat_cycles.append(cycle)
                self._pending = None
                return True
            self._pending = bits
        else:
            self._pending = None
        return False


class Harness:
    """Clock, reset and one per-cycle loop over all sources and sinks of a DUT."""

    def __init__(self, dut, rng: np.random.Generator, *, clk: str = "clk", rst: str = "rst"):
        self.dut = dut
        self.rng = rng
        self.clk = getattr(dut, clk)
        self.rst = getattr(dut, rst)
        self.sources: list[StreamSource] = []
        self.sinks: list[StreamSink] = []
        self.cycle = 0
        self._clock = None

    def source(self, prefix: str, p_valid: float = 1.0) -> StreamSource:
        s = StreamSource(self.dut, prefix, self.rng, p_valid)
        s.valid.value = 0
        self.sources.append(s)
        return s

    def sink(self, prefix: str, p_ready: float = 1.0) -> StreamSink:
        s = StreamSink(self.dut, prefix, self.rng, p_ready)
        s.ready.value = 0
        self.sinks.append(s)
        return s

    def every_falling_edge(self, apply) -> None:
        """Call ``apply()`` now and at every falling clock edge from now on (for DUT inputs
        outside the streams, e.g. constant ports or a clear pin, driven race-free)."""
        from cocotb import start_soon
        from cocotb.triggers import FallingEdge

        async def loop():
            while True:
                await FallingEdge(self.clk)
                apply()

        apply()
        start_soon(loop())

    def start_clock(self) -> None:
        from cocotb.clock import Clock

        if self._clock is None:
            self._clock = Clock(self.clk, CLOCK_NS, unit="ns")
            self._clock.start(start_high=False)

    async def reset(self, cycles: int = 2) -> None:
        """Synchronous active-high reset for ``cycles`` edges; queues and captures flushed."""
        from cocotb.triggers import FallingEdge

        self.start_clock()
        await FallingEdge(self.clk)
        for s in self.sources:
            s.flush()
        for s in self.sinks:
            s.flush()
            s.ready.value = 0
        self.rst.value = 1
        for _ in range(cycles):
            await FallingEdge(self.clk)
            self.cycle += 1
        self.rst.value = 0

    async def step(self) -> None:
        """One clock cycle: drive at the falling edge, sample handshakes before the rise."""
        from cocotb.triggers import FallingEdge, ReadOnly

        await FallingEdge(self.clk)
        for s in self.sources:
            s.drive()
        for s in self.sinks:
            s.drive()
        await ReadOnly()
        for s in self.sources:
            s.sample()
        for s in self.sinks:
            s.sample(self.cycle)
        self.cycle += 1

    async def run_until(self, done, max_cycles: int, what: str = "operation") -> int:
        """Step until ``done()`` is true; return the cycles taken; fail after ``max_cycles``."""
        start = self.cycle
        while not done():
            if self.cycle - start >= max_cycles:
                state = ", ".join(
                    [f"{s.name}: {len(s.queue)} beats queued" for s in self.sources]
                    + [f"{s.name}: {len(s.beats)} beats received" for s in self.sinks]
                )
                raise AssertionError(f"{what}: timeout after {max_cycles} cycles ({state})")
            await self.step()
        self.check_protocol()
        return self.cycle - start

    async def run_cycles(self, n: int) -> None:
        for _ in range(n):
            await self.step()

    def check_protocol(self) -> None:
        errors = [e for s in self.sinks for e in s.errors]
        if errors:
            raise AssertionError("stream protocol violation: " + "; ".join(errors[:5]))


# --------------------------------------------------------------------------- block benches
class Bench:
    """The set-up and loops every block bench's cocotb tests share.

    A block bench subclasses it once and states:

    * ``SOURCES``, ``SINKS``: the DUT's stream ports, created in this order (which fixes
      the order of the per-cycle stall draws); each becomes an attribute (``b.x``, ``b.y``);
    * ``STALL``: per port, the probability that a source offers / a sink takes a beat in
      a cycle (``stall=False`` at construction: 1.0 everywhere);
    * ``SETTLE``: cycles stepped after the expected output, in which nothing more may
      appear; ``DESC``: the parameters, logged with the seed;
    * for :meth:`run`: either ``check_item(item, beats, where)`` (one item against its
      own output beats) or ``check(items, beats, where)`` (the whole run); where the
      defaults do not fit, ``feed(item)`` (input beats per source: default ``item.beats``
      on the first source), ``out_beats(item)`` (default ``len(item.beats)``) and
      ``budget(items)`` (the cycle limit: default ``BUDGET`` = (base, per output beat)).

    The generator ``rng`` is ``bench_rng(test)``: the same seed gives the same vectors.
    """

    SOURCES: tuple[str, ...] = ()
    SINKS: tuple[str, ...] = ()
    STALL: dict[str, float] = {}
    SETTLE = 3
    BUDGET = (200, 10)
    DESC = ""

    def __init__(self, dut, test: str, stall: bool = True):
        self.dut = dut
        self.test = test
        self.rng = bench_rng(test)
        dut._log.info(f"SEED={bench_seed()} {self.DESC}")
        self.h = Harness(dut, self.rng)
        self.sources = [self.h.source(n, self.STALL[n] if stall else 1.0) for n in self.SOURCES]
        self.sinks = [self.h.sink(n, self.STALL[n] if stall else 1.0) for n in self.SINKS]
        for port in self.sources + self.sinks:
            assert not hasattr(self, port.name), f"port name {port.name!r} hides a Bench attribute"
            setattr(self, port.name, port)

    @classmethod
    async def start(cls, dut, test: str, stall: bool = True):
        """The bench of cocotb test ``test``, after a reset."""
        b = cls(dut, test, stall)
        await b.h.reset()
        return b

    # ---- what a block bench states for run()
    def feed(self, item) -> dict[str, list[int]]:
        return {self.SOURCES[0]: item.beats}

    def out_beats(self, item) -> int:
        return len(item.beats)

    def budget(self, items) -> int:
        base, per_beat = self.BUDGET
        return base + per_beat * sum(self.out_beats(item) for item in items)

    def check_item(self, item, beats: list[int], where: str) -> int:
        raise NotImplementedError

    def check(self, items, beats: list[int], where: str) -> int:
        """Every item against its share of the output beats; the vectors checked."""
        vectors, pos = 0, 0
        for item in items:
            n = self.out_beats(item)
            vectors += self.check_item(item, beats[pos : pos + n], where)
            pos += n
        return vectors

    # ---- the loops
    def queue(self, item) -> None:
        """Queue one item's input beats on its sources."""
        for port, beats in self.feed(item).items():
            getattr(self, port).extend(beats)

    async def run(self, items, where: str) -> int:
        """Queue the items' input beats, collect their output beats, check them against
        golden; the vectors checked."""
        for item in items:
            self.queue(item)
        total = sum(self.out_beats(item) for item in items)
        return self.check(items, await self.collect(total, self.budget(items), where), where)

    async def collect(self, n: int, budget: int, where: str) -> list[int]:
        """Step until the (first) sink holds ``n`` beats (fail after ``budget`` cycles),
        then ``SETTLE`` cycles more: exactly ``n`` beats, nothing extra. Returns them and
        empties the sink."""
        out = self.sinks[0]
        await self.h.run_until(lambda: len(out.beats) >= n, budget, where)
        await self.h.run_cycles(self.SETTLE)
        assert len(out.beats) == n, f"{where}: {len(out.beats)} output beats, expected {n}"
        beats = list(out.beats)
        out.flush()
        return beats

    async def reset_mid_operation(self, attempts: int, in_flight, clean) -> int:
        """Reset with work in flight, then clean work must be exact, ``attempts`` times:
        queue the items of ``in_flight() -> (items, span)``, step a random number of
        cycles in [1, span), reset for 1 to 3 cycles (no sink may see valid right after),
        then run ``clean(attempt)`` (items). Records and returns the vectors checked."""
        vectors = 0
        for attempt in range(attempts):
            items, span = in_flight()
            for item in items:
                self.queue(item)
            await self.h.run_cycles(int(self.rng.integers(1, span)))
            await self.h.reset(cycles=int(self.rng.integers(1, 4)))
            for s in self.sinks:
                assert int(s.valid.value) == 0, f"{s.name} valid right after reset"
            vectors += await self.run(clean(attempt), f"{self.test}[{attempt}]")
        record(self.test, vectors=vectors)
        return vectors

    def after_reset(self, make, n: int = 2):
        """A ``clean`` for :meth:`reset_mid_operation`: ``n`` items ``make(rng, tag=...)``,
        tagged with the attempt."""
        return lambda attempt: [make(self.rng, tag=f"after reset {attempt}") for _ in range(n)]

    async def throughput(self, items, formula: int, max_cycles: int, what: str, **fields) -> int:
        """With no stalls (``stall=False``): queue the items, measure the cycles from the
        first input beat to the last output beat (fail after ``max_cycles``), check the
        results; the count must equal the documented ``formula``. Records and returns the
        cycles."""
        for item in items:
            self.queue(item)
        cycles = await self.measure(sum(self.out_beats(item) for item in items), max_cycles)
        vectors = self.check(items, list(self.sinks[0].beats), self.test)
        self.check_cycles(what, cycles, formula, vectors, **fields)
        return cycles

    async def measure(self, n: int, max_cycles: int) -> int:
        """Step until the (first) sink holds ``n`` beats; the cycles from the edge that took
        the first new input beat (on any source) to the last output beat. For no-stall
        throughput figures; the beats stay in the sink."""
        out = self.sinks[0]
        sent = [s.sent for s in self.sources]
        start, first_in = self.h.cycle, None
        while len(out.beats) < n:
            if first_in is None and [s.sent for s in self.sources] != sent:
                first_in = self.h.cycle - 1  # the cycle whose edge took the first beat
            if self.h.cycle - start > max_cycles:
                raise AssertionError(f"{self.test}: timeout")
            await self.h.step()
        self.h.check_protocol()
        return out.beat_cycles[-1] - first_in + 1

    def check_cycles(
        self,
        what: str,
        cycles: int,
        formula: int,
        vectors: int,
        ideal: float | None = None,
        **fields,
    ) -> None:
        """Log and record a measured cycle count (and the ``ideal`` one, if given); it must
        equal the documented formula."""
        note = "" if ideal is None else f", ideal {ideal:.1f} ({ideal / cycles:.1%} of ideal)"
        self.dut._log.info(f"{what}: {cycles} cycles, formula {formula}{note}")
        if ideal is not None:
            fields["ideal_cycles"] = ideal
        record(self.test, vectors=vectors, op_cycles=cycles, formula_cycles=formula, **fields)
        assert cycles == formula, f"measured {cycles} cycles, documented formula gives {formula}"
