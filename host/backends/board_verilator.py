"""The board driver's ``verilator`` transport: the AXI SoC shell in an in-process harness.

    t = VerilatorTransport("kv260")                 # builds/loads build/board_sim/<hash>/
    dev = BoardDevice("kv260", transport=t)          # or BoardDevice(transport="verilator")

What runs is the AXI top the bitstream is made from, ``hw.shell.AccelShell(dp,
gate_idle_engines=True)`` (same function and ID; idle engines' clocks gated in the model),
compiled by Verilator with ``board_harness/harness.cpp``:

* CSRs: every ``read32``/``write32`` is one AXI4-Lite transaction on ``s_axi`` (the clock
  runs while it is in flight); an error response raises ``TransportError``;
* memory: one AXI4 slave per master port ``m_axi{i}`` in front of one byte array, the
  DRAM at bus addresses [``bus_base``, ``bus_base + nbytes``) (default 0x8_1000_0000: the
  KV260's upper DDR, so STREAM_ADDR_HI is not 0 and device addresses do not start at 0),
  with the design point's bandwidth (bytes per cycle) and read latency; an address outside
  it answers DECERR; ``inject_error`` makes bursts over an address range answer SLVERR;
* cache: the CPU's view (``DmaBuffer.array``) is a separate copy of the DRAM;
  ``sync_to_device`` / ``sync_from_device`` copy ranges between them, as a flush / an
  invalidate move lines on a board whose DMA is not coherent, so a missing cache operation
  in the driver shows here as wrong data;
* ``wait``: runs the clock in chunks of ``chunk_cycles`` until the ``irq`` line is high or
  ``poll()`` is true, up to the wall-clock timeout;
* ``hard_reset``: ``aresetn`` low, the agents' transactions dropped;
* ``capacity``: the contiguous memory there is (an allocation beyond it fails, as CMA does).
"""

from __future__ import annotations

import ctypes
import time

import numpy as np

from golden.config import AccelConfig, design_point
from host.backends.board import DmaBuffer, Transport, TransportError
from host.backends.board_harness.build import build, open_library

DEFAULT_BUS_BASE = 0x8_1000_0000
DEFAULT_CAPACITY = 1 << 30
DEFAULT_CHUNK_CYCLES = 20_000
AXI_RESP = {0: "OKAY", 1: "EXOKAY", 2: "SLVERR", 3: "DECERR", -1: "no response"}


class VerilatorTransport(Transport):
    name = "verilator"

    def __init__(
        self,
        dp: AccelConfig | str,
        bus_base: int = DEFAULT_BUS_BASE,
        capacity: int = DEFAULT_CAPACITY,
        bandwidth: float | None = None,
        latency: int | None = None,
        chunk_cycles: int = DEFAULT_CHUNK_CYCLES,
    ):
        dp = design_point(dp) if isinstance(dp, str) else dp
        for name, v, lo in (("bus_base", bus_base, 0), ("capacity", capacity, 1)):
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
        if bus_base % 4096:
            raise ValueError(f"bus_base: 0x{bus_base:x} is not 4 KiB aligned")
        if not isinstance(chunk_cycles, (int, np.integer)) or chunk_cycles < 1:
            raise ValueError(f"chunk_cycles: expected a positive integer, got {chunk_cycles!r}")
        self.dp = dp
        self.bus_base, self.capacity = int(bus_base), int(capacity)
        self.bandwidth = float(dp.bytes_per_cycle if bandwidth is None else bandwidth)
        self.latency = int(dp.dram_latency if latency is None else latency)
        if not self.bandwidth > 0 or self.latency < 1:
            raise ValueError(
                f"bandwidth/latency: expected > 0 bytes/cycle and >= 1 cycle, got "
                f"{self.bandwidth}, {self.latency}"
            )
        self.chunk_cycles = int(chunk_cycles)
        self._lib = open_library(build(dp))
        self.n_ports = int(self._lib.brd_n_ports())
        self._dram = np.zeros(4096, dtype=np.uint8)  # until allocate
        self._buf = None
        if self._lib.brd_init(
            self._dram.ctypes.data, 0, self.bus_base, self.bandwidth, self.latency
        ):
            raise TransportError("the harness takes AXI data ports of 128 bits at most")
        self.hard_reset()

    def describe(self) -> str:
        return f"the verilator transport (AXI top of {self.dp.name})"

    # ------------------------------------------------------------------ CSRs
    def read32(self, offset: int) -> int:
        v = ctypes.c_uint32()
        resp = self._lib.brd_csr_read(int(offset), ctypes.byref(v))
        if resp != 0:
            raise TransportError(f"CSR read at 0x{offset:x} answered {AXI_RESP[resp]}")
        return int(v.value)

    def write32(self, offset: int, value: int) -> None:
        resp = self._lib.brd_csr_write(int(offset), int(value) & 0xFFFF_FFFF)
        if resp != 0:
            raise TransportError(f"CSR write at 0x{offset:x} answered {AXI_RESP[resp]}")

    # ------------------------------------------------------------------ memory
    def allocate(self, nbytes: int) -> DmaBuffer:
        if self._buf is not None:
            raise TransportError("the verilator transport holds one buffer; it is allocated")
        if nbytes > self.capacity:
            raise TransportError(
                f"cannot allocate {nbytes} bytes of contiguous memory: the verilator "
                f"transport has {self.capacity} (capacity)"
            )
        self._dram = np.zeros(nbytes, dtype=np.uint8)  # the DRAM the AXI slaves serve
        host = np.zeros(nbytes, dtype=np.uint8)  # the CPU's view of it
        self._lib.brd_init(
            self._dram.ctypes.data, nbytes, self.bus_base, self.bandwidth, self.latency
        )
        self._buf = DmaBuffer(host, self.bus_base)
        return self._buf

    def _check(self, buf: DmaBuffer, lo: int, hi: int) -> None:
        if buf is not self._buf or not 0 <= lo <= hi <= buf.nbytes:
            raise TransportError(f"sync of [{lo}, {hi}) outside the transport's buffer")

    def sync_to_device(self, buf: DmaBuffer, lo: int, hi: int) -> None:
        self._check(buf, lo, hi)
        self._dram[lo:hi] = buf.array[lo:hi]

    def sync_from_device(self, buf: DmaBuffer, lo: int, hi: int) -> None:
        self._check(buf, lo, hi)
        buf.array[lo:hi] = self._dram[lo:hi]

    # ------------------------------------------------------------------ waiting
    def wait(self, timeout_s: float, poll) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._lib.brd_irq() or poll():
                return True
            if time.monotonic() >= deadline:
                return False
            self._lib.brd_run(self.chunk_cycles)

    def hard_reset(self) -> None:
        self._lib.brd_hard_reset(8)

    # ------------------------------------------------------------------ for tests
    def set_memory_timing(self, bandwidth: float | None = None, latency: int | None = None):
        """Change the DRAM's bandwidth (bytes/cycle) and/or read latency (cycles)."""
        bw = self.bandwidth if bandwidth is None else float(bandwidth)
        lat = self.latency if latency is None else int(latency)
        if not bw > 0 or lat < 1:
            raise ValueError(f"bandwidth/latency: expected > 0 and >= 1, got {bw}, {lat}")
        self.bandwidth, self.latency = bw, lat
        self._lib.brd_set_timing(bw, lat)

    def inject_error(self, kind: str, lo: int, hi: int, count: int = 1) -> None:
        """Answer SLVERR to the next ``count`` (-1: every) ``kind`` ("read"/"write")
        bursts that overlap bus addresses [lo, hi)."""
        if kind not in ("read", "write"):
            raise ValueError(f"kind: expected 'read' or 'write', got {kind!r}")
        self._lib.brd_inject(0 if kind == "read" else 1, int(lo), int(hi), int(count))

    def clear_errors(self) -> None:
        self._lib.brd_clear_injections()

    def port_stats(self) -> list[dict]:
        """Per master port: read bursts and beats, write bursts and beats so far."""
        out = []
        for i in range(self.n_ports):
            a = (ctypes.c_uint64 * 4)()
            self._lib.brd_port_stats(i, a)
            out.append(
                dict(zip(("rd_bursts", "rd_beats", "wr_bursts", "wr_beats"), a, strict=True))
            )
        return out

    def cycle(self) -> int:
        return int(self._lib.brd_cycle())

    def close(self) -> None:
        self._buf = None
