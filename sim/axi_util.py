"""cocotb helpers for the AXI benches (``sim/axi_*_bench.py``, ``sim/shell_bench.py``):
cocotbext-axi memories behind the master ports with random pauses on every channel and
random read latency, SLVERR injection by address, and a checker of the AXI rules.

``AxiPorts(dut, n_ports, mem, ...)`` puts one ``cocotbext.axi.AxiRam`` behind each port
``m_axi{i}_*`` of ``dut``, all sharing the bytearray ``mem`` (bus address ``a`` is
``mem[a % len(mem)]``). ``pause`` (0..1) is the probability that each of AW/W/AR ready
and B/R valid is held low in a cycle; reads also wait 0..``max_latency`` cycles per burst.
``err_rd`` / ``err_wr``: lists of (lo, hi) bus-address ranges answered with SLVERR (a read
burst touching one, a write of a byte in one), or DECERR while ``decerr`` is set.

``AxiChecker`` watches every port's AR/AW/W handshakes and fails the test (``check()``)
on: a burst crossing 4 KB, more than 256 beats, a size other than the bus width, a
non-INCR burst, a bus address outside ``regions`` (the beats of a read must each overlap
a region; each strobed write byte must lie in one; the address's bits above 32 must equal
``segment``), a W burst whose strobes are not one contiguous run of 1..``max_bytes`` bytes
(one request of the core), an empty strobe, or WLAST off the burst's last beat (W beats
may lead their AW).
"""

from __future__ import annotations

import logging
import warnings
from collections import deque

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"cocotbext\.axi.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*cocotb.*")
for _name in ("cocotb.m_axi", "cocotb.s_axi"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def pauses(rng, p: float):
    """A cocotbext pause generator: True (paused) with probability ``p`` per cycle."""
    while True:
        yield bool(p > 0 and rng.random() < p)


def lite_master(dut, clock, reset, rng, pause: float, **kw):
    """A cocotbext-axi AxiLiteMaster on the ``s_axi`` port of ``dut``, with random pauses
    (probability ``pause`` per cycle) on all five of its channels."""
    from cocotbext.axi import AxiLiteBus, AxiLiteMaster

    m = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi"), clock, reset, **kw)
    for ch in (
        m.write_if.aw_channel,
        m.write_if.w_channel,
        m.write_if.b_channel,
        m.read_if.ar_channel,
        m.read_if.r_channel,
    ):
        ch.set_pause_generator(pauses(rng, pause))
    return m


def _in(ranges, lo, hi):
    return any(lo < b and a < hi for a, b in ranges)


class AxiPorts:
    def __init__(
        self,
        dut,
        n_ports: int,
        mem: bytearray,
        clk,
        rst,
        *,
        rng,
        pause: float = 0.0,
        max_latency: int = 0,
        reset_active_level: bool = True,
    ):
        from cocotbext.axi import AxiBus, AxiRam

        self.rams = []
        self.err_rd: list[tuple[int, int]] = []
        self.err_wr: list[tuple[int, int]] = []
        self.decerr = False  # answer the injected errors DECERR, not SLVERR
        self.rng = rng
        self.max_latency = max_latency
        for i in range(n_ports):
            bus = AxiBus.from_prefix(dut, f"m_axi{i}")
            ram = AxiRam(bus, clk, rst, reset_active_level=reset_active_level, mem=mem)
            for ch in (
                ram.write_if.aw_channel,
                ram.write_if.w_channel,
                ram.write_if.b_channel,
                ram.read_if.ar_channel,
                ram.read_if.r_channel,
            ):
                ch.set_pause_generator(pauses(rng, pause))
            ram.read_if.log.setLevel(logging.WARNING)
            ram.write_if.log.setLevel(logging.WARNING)
            ram.read_if._read = self._reader(ram.read_if, clk)
            ram.write_if._write = self._writer(ram.write_if)
            for ch, field in ((ram.read_if.r_channel, "rresp"), (ram.write_if.b_channel, "bresp")):
                ch.send = self._as_decerr(ch.send, field)
            self.rams.append(ram)

    def _as_decerr(self, send, field):
        async def _send(t):
            if self.decerr and int(getattr(t, field)) == 2:
                setattr(t, field, 3)
            await send(t)

        return _send

    def _reader(self, rif, clk):
        size = len(rif.mem)

        async def _read(address, length):
            # random latency: a beat waits 1..max_latency cycles with probability 1/4
            # (one port's beats stay in order; the wait delays that port only)
            if self.max_latency and self.rng.random() < 0.25:
                await ClockCycles(clk, int(self.rng.integers(1, self.max_latency + 1)))
            if _in(self.err_rd, address, address + length):
                raise RuntimeError("injected SLVERR")
            return bytes(rif.mem[address % size : address % size + length])

        return _read

    def _writer(self, wif):
        size = len(wif.mem)

        async def _write(address, data):
            if _in(self.err_wr, address, address + len(data)):
                raise RuntimeError("injected SLVERR")
            wif.mem[address % size : address % size + len(data)] = data

        return _write


class AxiChecker:
    def __init__(self, dut, n_ports: int, clk, *, data_bytes: int = 16, max_bytes: int = 128):
        self.dut, self.n, self.clk = dut, n_ports, clk
        self.db, self.max_bytes = data_bytes, max_bytes
        self.regions: list[tuple[int, int]] | None = None  # device-address ranges
        self.max_burst = 256  # the design's own bound may be set lower
        self.segment = 0
        self.errors: list[str] = []
        self.bursts = {"ar": 0, "aw": 0, "w_beats": 0, "max_beats": 0, "max_rd_outstanding": 0}
        self.resps = {"r_slverr": 0, "r_decerr": 0, "b_slverr": 0, "b_decerr": 0}
        self._rd_out = [0] * n_ports  # read bursts issued and not yet at RLAST
        self._aw = [deque() for _ in range(n_ports)]
        self._w = [None] * n_ports  # [beats, strobes so far, burst address]
        self._wq = [deque() for _ in range(n_ports)]  # W beats ahead of their AW
        cocotb.start_soon(self._run())

    def fail(self, msg):
        if len(self.errors) < 20:
            self.errors.append(msg)

    def check(self):
        assert not self.errors, "AXI rule violations:\n  " + "\n  ".join(self.errors)

    def _sig(self, i, name):
        return getattr(self.dut, f"m_axi{i}_{name}")

    def _addr_ok(self, kind, i, addr, nbeats):
        if addr >> 32 != self.segment:
            self.fail(f"{kind}{i}: address 0x{addr:x} outside segment 0x{self.segment:x}")
        if self.regions is None:
            return
        dev = addr & 0xFFFF_FFFF
        for b in range(nbeats):
            lo = dev + b * self.db
            if not _in(self.regions, lo, lo + self.db):
                self.fail(
                    f"{kind}{i}: beat 0x{lo:x} of the burst at 0x{addr:x} outside "
                    "the stream's regions"
                )
                return

    def _burst(self, kind, i):
        addr = int(self._sig(i, f"{kind}addr").value)
        alen = int(self._sig(i, f"{kind}len").value)
        size = int(self._sig(i, f"{kind}size").value)
        burst = int(self._sig(i, f"{kind}burst").value)
        n = alen + 1
        self.bursts[kind] += 1
        self.bursts["max_beats"] = max(self.bursts["max_beats"], n)
        if n > self.max_burst:
            self.fail(f"{kind}{i}: {n} beats at 0x{addr:x} (more than {self.max_burst})")
        if 1 << size != self.db:
            self.fail(f"{kind}{i}: size {size} is not the bus width")
        if burst != 1:
            self.fail(f"{kind}{i}: burst type {burst} (not INCR)")
        if addr % self.db:
            self.fail(f"{kind}{i}: unaligned address 0x{addr:x}")
        if (addr % 4096) + n * self.db > 4096:
            self.fail(f"{kind}{i}: burst 0x{addr:x} + {n} beats crosses 4 KB")
        return addr, n

    async def _run(self):
        while True:
            await RisingEdge(self.clk)
            await ReadOnly()
            for i in range(self.n):
                if int(self._sig(i, "arvalid").value) and int(self._sig(i, "arready").value):
                    addr, n = self._burst("ar", i)
                    self._addr_ok("ar", i, addr, n)
                    self._rd_out[i] += 1
                    self.bursts["max_rd_outstanding"] = max(
                        self.bursts["max_rd_outstanding"], self._rd_out[i]
                    )
                for ch in ("r", "b"):
                    if int(self._sig(i, f"{ch}valid").value) and int(
                        self._sig(i, f"{ch}ready").value
                    ):
                        resp = int(self._sig(i, f"{ch}resp").value)
                        if resp >= 2:
                            self.resps[f"{ch}_{'slverr' if resp == 2 else 'decerr'}"] += 1
                if (
                    int(self._sig(i, "rvalid").value)
                    and int(self._sig(i, "rready").value)
                    and int(self._sig(i, "rlast").value)
                ):
                    self._rd_out[i] -= 1
                if int(self._sig(i, "awvalid").value) and int(self._sig(i, "awready").value):
                    self._aw[i].append(self._burst("aw", i))
                if int(self._sig(i, "wvalid").value) and int(self._sig(i, "wready").value):
                    self._w_beat(i)

    def _w_beat(self, i):
        """A W beat: queued until its burst's AW is known (W may lead AW in AXI)."""
        self.bursts["w_beats"] += 1
        self._wq[i].append((int(self._sig(i, "wstrb").value), int(self._sig(i, "wlast").value)))
        while self._wq[i] and (self._w[i] is not None or self._aw[i]):
            self._w_consume(i, *self._wq[i].popleft())

    def _w_consume(self, i, strb, last):
        if self._w[i] is None:
            addr, n = self._aw[i].popleft()
            self._w[i] = [n, [], addr]
        st = self._w[i]
        if strb == 0:
            self.fail(f"w{i}: a beat with no strobe")
        beat_no = len(st[1])
        st[1].append(strb)
        base = st[2] + beat_no * self.db
        if self.regions is not None:
            for b in range(self.db):
                if strb >> b & 1:
                    a = (base + b) & 0xFFFF_FFFF
                    if not _in(self.regions, a, a + 1):
                        self.fail(f"w{i}: strobed byte 0x{a:x} outside the stream's regions")
                        break
        if last != (beat_no == st[0] - 1):
            self.fail(f"w{i}: WLAST={last} on beat {beat_no} of {st[0]}")
        if beat_no == st[0] - 1 or last:
            bits = "".join(format(s, f"0{self.db}b")[::-1] for s in st[1])
            run = bits.strip("0")
            if "0" in run or not 1 <= len(run) <= self.max_bytes:
                self.fail(
                    f"w{i}: strobes of the burst at 0x{st[2]:x} are not one run of "
                    f"1..{self.max_bytes} bytes: {bits}"
                )
            self._w[i] = None
