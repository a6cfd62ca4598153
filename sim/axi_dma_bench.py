"""cocotb bench of ``hw.axi.AxiDma``: the core's DMA port on N AXI4 master ports.

The bench plays the core: random reads (1..128 bytes at any alignment, many near 4 KB
boundaries) and writes (same) with random valid/ready stalls on the core side; a
cocotbext-axi ``AxiRam`` behind every port (one shared memory) with random pauses on all
five channels and random read latency; ``sim.axi_util.AxiChecker`` on every port. Every
response must equal a reference memory that applies each write when the bridge accepts
it (a read sees every write accepted before it: read-after-write through the memory
holds across ports); after the last write, ``mem_wr_busy`` must stay high until the AXI
memory holds every byte. SLVERR (or DECERR) injected on a read gives ``mem_rdata_err`` on
exactly the responses that touch the bad bytes; on a write, ``mem_wr_err`` with the
write's ``cmd_index``. A stall-free run of aligned 128-byte reads measures the read throughput.

Parameters (``sim.streams.bench_params``): ``ports``, ``stall`` (core side), ``pause``
(AXI channels), ``max_latency``, ``ops``, ``min_bytes_per_cycle`` (the throughput bound).
"""

from __future__ import annotations

from collections import deque

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from sim.axi_util import AxiChecker, AxiPorts
from sim.streams import CLOCK_NS, bench_params, bench_rng, record

P = bench_params()
N_PORTS = int(P.get("ports", 3))
STALL = float(P.get("stall", 0.3))
PAUSE = float(P.get("pause", 0.3))
MAX_LAT = int(P.get("max_latency", 6))
N_OPS = int(P.get("ops", 400))
W = 128
MEM = 1 << 16
SEGMENT = 0x3  # bits [48:32] of every bus address


class Core:
    """The core side of the bridge, driven at the falling edge, sampled in ReadOnly."""

    def __init__(self, dut, rng, stall):
        self.dut, self.rng, self.stall = dut, rng, stall
        self.mem = bytearray(MEM)  # what the AXI memory holds (shared by the rams)
        self.model = bytearray(MEM)  # writes applied when accepted
        self.expect: deque = deque()  # (addr, len, bytes, err) of reads in flight
        self.cycle = 0
        self.responses = 0
        self.err_bytes: list[tuple[int, int]] = []  # device ranges failing reads
        self.wr_errors: list[int] = []  # mem_wr_err_op pulses seen
        self.busy_low_while_pending = False

    async def start(self):
        d = self.dut
        Clock(d.clk, CLOCK_NS, unit="ns").start(start_high=False)
        for s in (d.mem_rd_valid, d.mem_rdata_ready, d.mem_wr_valid):
            s.value = 0
        d.mem_rd_addr.value = d.mem_rd_len.value = 0
        d.mem_wr_addr.value = d.mem_wr_len.value = d.mem_wr_data.value = 0
        d.cmd_index.value = 0
        d.addr_hi.value = SEGMENT
        d.rst.value = 1
        for _ in range(3):
            await FallingEdge(d.clk)
        d.rst.value = 0

    def _go(self):
        return self.stall <= 0 or self.rng.random() >= self.stall

    async def run(self, ops, max_cycles=400_000):
        """Issue ``ops`` ((kind, addr, len[, data]) in order) and wait for every response."""
        d = self.dut
        ops = deque(ops)
        tag = 0
        while ops or self.expect:
            assert self.cycle < max_cycles, "bridge did not finish"
            await FallingEdge(d.clk)
            op = ops[0] if ops else None
            rd = wr = False
            if op is not None and self._go():
                if op[0] == "r":
                    d.mem_rd_addr.value, d.mem_rd_len.value = op[1], op[2]
                    rd = True
                elif not any(a < op[1] + op[2] and op[1] < a + n for a, n, _, _ in self.expect):
                    # a write waits while a read of its bytes is outstanding (the engines
                    # never write what they are still reading)
                    d.mem_wr_addr.value, d.mem_wr_len.value = op[1], op[2]
                    d.mem_wr_data.value = int.from_bytes(op[3] + bytes(W - op[2]), "little")
                    d.cmd_index.value = tag
                    wr = True
            d.mem_rd_valid.value = int(rd)
            d.mem_wr_valid.value = int(wr)
            d.mem_rdata_ready.value = int(self._go())
            await ReadOnly()
            if int(d.mem_wr_err.value):
                self.wr_errors.append(int(d.mem_wr_err_op.value))
            if int(d.mem_rdata_valid.value) and int(d.mem_rdata_ready.value):
                a, n, want, err = self.expect.popleft()
                got = int(d.mem_rdata.value).to_bytes(W, "little")
                assert int(d.mem_rdata_err.value) == err, (
                    f"read [0x{a:x}, +{n}): mem_rdata_err {int(d.mem_rdata_err.value)} != {err}"
                )
                if not err:
                    assert got == want + bytes(W - n), (
                        f"read [0x{a:x}, +{n}) differs (response {self.responses})"
                    )
                self.responses += 1
            if rd and int(d.mem_rd_ready.value):
                a, n = op[1], op[2]
                b_lo, b_hi = a - a % 16, (a + n + 15) // 16 * 16  # the beats it reads
                err = any(lo < b_hi and b_lo < hi for lo, hi in self.err_bytes)
                self.expect.append((a, n, bytes(self.model[a : a + n]), int(err)))
                ops.popleft()
            if wr and int(d.mem_wr_ready.value):
                self.model[op[1] : op[1] + op[2]] = op[3]
                tag += 1
                ops.popleft()
            self.cycle += 1

    async def wait_writes(self, max_cycles=20_000):
        """Until mem_wr_busy falls; the AXI memory must then hold every write."""
        d = self.dut
        for _ in range(max_cycles):
            await FallingEdge(d.clk)
            d.mem_rd_valid.value = d.mem_wr_valid.value = 0
            await ReadOnly()
            if int(d.mem_wr_err.value):
                self.wr_errors.append(int(d.mem_wr_err_op.value))
            if not int(d.mem_wr_busy.value):
                return
        raise AssertionError("mem_wr_busy stuck high")


def _ops(rng, n, wr_frac=0.4, lo=64, hi=MEM - 256, near4k=True):
    out = []
    for _ in range(n):
        ln = (
            int(rng.integers(1, W + 1)) if rng.random() < 0.7 else int(rng.choice([1, 16, 64, 128]))
        )
        if near4k and rng.random() < 0.3:  # near a 4 KB boundary
            page = int(rng.integers(1, MEM // 4096))
            a = page * 4096 - int(rng.integers(1, W))
        else:
            a = int(rng.integers(lo, hi))
        if rng.random() < wr_frac:
            out.append(("w", a, ln, bytes(rng.integers(0, 256, ln, dtype=np.uint8))))
        else:
            out.append(("r", a, ln))
    return out


async def _setup(dut, rng, pause=PAUSE, max_lat=MAX_LAT, stall=STALL):
    core = Core(dut, rng, stall)
    core.mem[:] = rng.integers(0, 256, MEM, dtype=np.uint8).tobytes()
    core.model[:] = core.mem
    ports = AxiPorts(
        dut, N_PORTS, core.mem, dut.clk, dut.rst, rng=rng, pause=pause, max_latency=max_lat
    )
    chk = AxiChecker(dut, N_PORTS, dut.clk)
    chk.segment = SEGMENT
    chk.regions = [(0, MEM)]
    chk.max_burst = W // 16 + 1  # a 128-byte request at any alignment
    await core.start()
    return core, ports, chk


@cocotb.test()
async def test_random_traffic(dut):
    """Random reads and writes at any alignment == the reference memory; AXI rules hold."""
    rng = bench_rng("dma_random")
    core, _, chk = await _setup(dut, rng)
    await core.run(_ops(rng, N_OPS))
    await core.wait_writes()
    chk.check()
    assert core.mem == core.model, "the AXI memory differs from the reference after the writes"
    assert core.wr_errors == []
    assert chk.bursts["ar"] > 0 and chk.bursts["aw"] > 0
    record("test_random_traffic", ops=N_OPS, cycles=core.cycle, **chk.bursts)


@cocotb.test()
async def test_raw_across_ports(dut):
    """A read right after a write of the same bytes returns the new bytes (every request
    of a pair lands on a different port), many times over."""
    rng = bench_rng("dma_raw")
    core, _, chk = await _setup(dut, rng)
    ops = []
    for _ in range(60):
        a = int(rng.integers(64, MEM - 256))
        n = int(rng.integers(1, W + 1))
        ops += [
            ("w", a, n, bytes(rng.integers(0, 256, n, dtype=np.uint8))),
            ("r", a - int(rng.integers(0, 8)), n),
        ]
    await core.run(ops)
    await core.wait_writes()
    chk.check()
    assert core.mem == core.model


async def _bus_errors(dut, tag, decerr):
    rng = bench_rng(tag)
    core, ports, chk = await _setup(dut, rng)
    ports.decerr = decerr
    bad_rd = (0x2000, 0x2010)
    bad_wr = (0x5000, 0x5001)
    ports.err_rd.append(((SEGMENT << 32) + bad_rd[0], (SEGMENT << 32) + bad_rd[1]))
    ports.err_wr.append(((SEGMENT << 32) + bad_wr[0], (SEGMENT << 32) + bad_wr[1]))
    core.err_bytes.append(bad_rd)
    ops = _ops(rng, 60, lo=0x4000, hi=0x4800, near4k=False)  # clean traffic around
    ops += [("r", 0x2000 - 40, 41), ("r", 0x1F00, 64), ("r", 0x200F, 100)]
    n_wr_before = sum(o[0] == "w" for o in ops)
    ops += [("w", 0x4FF0, 17, bytes(17)), ("w", 0x5100, 8, bytes(8))]
    ops += _ops(rng, 60, lo=0x4000, hi=0x4800, near4k=False)
    await core.run(ops)
    await core.wait_writes()
    chk.check()
    assert core.wr_errors == [n_wr_before], core.wr_errors
    kind = "decerr" if decerr else "slverr"
    assert chk.resps[f"r_{kind}"] > 0 and chk.resps[f"b_{kind}"] > 0, chk.resps
    record(f"test_{kind}", **chk.resps)


@cocotb.test()
async def test_slverr(dut):
    """SLVERR on reads marks exactly the responses touching the bad bytes; on writes it
    pulses mem_wr_err with the cmd_index of the failing write; traffic goes on after."""
    await _bus_errors(dut, "dma_slverr", decerr=False)


@cocotb.test()
async def test_decerr(dut):
    """The same with DECERR responses."""
    await _bus_errors(dut, "dma_decerr", decerr=True)


@cocotb.test()
async def test_read_throughput(dut):
    """No pauses or stalls: aligned 128-byte reads; record bytes/cycle (bound below)."""
    rng = bench_rng("dma_tput")
    core, _, chk = await _setup(dut, rng, pause=0.0, max_lat=0, stall=0.0)
    n = 200
    ops = [("r", 4096 + 128 * i, 128) for i in range(n)]
    c0 = core.cycle
    await core.run(ops)
    cycles = core.cycle - c0
    bpc = n * 128 / cycles
    chk.check()
    record("test_read_throughput", ports=N_PORTS, bytes_per_cycle=round(bpc, 2), cycles=cycles)
    # each port: 8 beats per aligned request; bound: 90 % of that, or what the test asks
    want = float(P.get("min_bytes_per_cycle", 0.9 * min(128, N_PORTS * 16)))
    assert bpc >= want, f"{bpc:.1f} bytes/cycle < {want}"
