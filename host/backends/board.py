"""``BoardDevice``: a real accelerator behind its register map (the 'pynq' of VTA, DESIGN §5).

    dev = BoardDevice("kv260", transport="pynq", bitstream="ternary_accel.bit")  # on a KV260
    dev = BoardDevice("kv260", transport="verilator")     # the AXI top in a C++ harness (CI)
    rt = host.runtime.make_runtime(model, "board", dp="kv260", transport="verilator")

The driver knows the register map of ``hw/csr.py`` (exported as ``docs/csr/accel_csr.json``)
and nothing else of the hardware; every access goes through a ``Transport``:

``Transport`` (the whole interface a board needs)
    ``read32(offset)`` / ``write32(offset, value)``  a 32-bit CSR access at a byte offset of
        the register block (a bus error there raises ``TransportError``);
    ``allocate(nbytes) -> DmaBuffer``  one physically contiguous buffer: ``.array`` (numpy
        uint8, the CPU's view of it), ``.bus_addr`` (the address the accelerator's AXI
        masters use), ``.nbytes``; ``TransportError`` when it cannot (the message says what
        is available);
    ``sync_to_device(buf, lo, hi)`` / ``sync_from_device(buf, lo, hi)``  cache maintenance
        of bytes [lo, hi) of the buffer: write the CPU's dirty lines back to memory (flush)
        / drop its stale lines (invalidate);
    ``wait(timeout_s, poll) -> bool``  block until the accelerator's interrupt line is high
        (a transport that sees it) or ``poll()`` is true (one that does not), at most
        ``timeout_s`` seconds; False when the time ran out;
    ``hard_reset()``  the last resort: reset the accelerator by other means than its CSRs
        (``aresetn``; PYNQ: download the bitstream again);
    ``close()``.

Transports (``TRANSPORTS``, created by name): ``verilator``
(``host/backends/board_verilator.py``: the AXI top ``hw.shell.AccelShell`` compiled by
Verilator, its CSRs reached by AXI-Lite transactions, its memory an AXI4 slave per master
port with the design point's DRAM bandwidth and latency, and a CPU cache that is *not*
coherent: the CPU's view and the memory are separate copies that only the sync calls move
between) and ``pynq`` (``host/backends/board_pynq.py``: a KV260 running PYNQ). The one
driver below runs on both.

What the driver does (the sequence of ``hw/shell.py``'s docstring)
------------------------------------------------------------------
* Identity: ID must equal ``AccelShell(dp).ident`` for the host's design point and VERSION
  must carry this register map (magic, major; minor at least the host's); otherwise one
  line naming the bitstream's ID (and its design point when it is one of ours) and the
  host's.
* Memory: one contiguous buffer of ``mem_size`` bytes holds the model image, the KV cache,
  scratch and the command streams (``Runtime`` allocates them in it). It must not cross a
  4 GiB boundary: device address = bus address & 0xFFFF_FFFF, STREAM_ADDR_HI = the bus
  address >> 32. A runtime that needs more than ``mem_size`` gets one line saying so (and
  which option to raise); a buffer the transport cannot allocate, too.
* Cache maintenance around every run: the ranges the CPU wrote since the last run are
  flushed before START; after START every line of the window [MEM_LO, MEM_HI) is stale
  for the CPU, and a CPU access to a stale line invalidates it first (lazily, so a decode
  step invalidates the few bytes the host reads, not the whole image).
* ``run``: MEM_LO/MEM_HI (the allocated window), STREAM_ADDR_LO/HI, N_CMDS,
  IRQ_STATUS = all ones, IRQ_ENABLE = END|HOST, CTRL = START.
* ``wait``: the transport's wait (interrupt or poll of IRQ_STATUS), then STATUS, ERR_OP,
  OPS_DONE; IRQ_STATUS = END (W1C). An error code is a ``DeviceError`` with the index of
  the failing command (BUS_ERROR: SLVERR/DECERR from the memory).
* Watchdog: a ``wait`` that runs out of time resets the accelerator through CTRL.RESET
  (poll STATUS.BUSY until 0; the transport's ``hard_reset`` when that does not end within
  ``reset_timeout_s``) and raises ``WatchdogTimeout`` (a ``DeviceTimeout``): the stream is
  abandoned and the device takes the next stream at once. (The Device contract lets a
  timed-out stream run on; on a board a stream that overran its budget holds the memory
  bus, so this backend ends it.)
* Host ops: the full top executes every opcode; a bitstream built without an engine stops
  at HOST_OP, and the driver ends that stream with HOST_ERROR (the board driver executes
  nothing on the CPU).
* Counters: CYCLES, OPS_DONE, BYTES_RD, BYTES_WR from the CSRs (since the last reset).
"""

from __future__ import annotations

import abc
import functools
import importlib
from dataclasses import dataclass

import numpy as np

from golden import isa
from golden.config import DEFAULT_DESIGN_POINT, DESIGN_POINTS, AccelConfig, design_point
from golden.isa import ErrorCode
from host.backends import DEFAULT_TRANSPORT, TRANSPORTS
from host.device import Device, DeviceError, DeviceTimeout, Status, _opcode_text
from hw.csr import (
    CSR,
    CTRL_CODE_SHIFT,
    CTRL_HOST_ERROR,
    CTRL_RESET,
    CTRL_START,
    IRQ_END,
    IRQ_HOST,
    MAP_VERSION,
    STATUS,
    VERSION_MAGIC,
)

DEFAULT_MEM_SIZE = 64 << 20
LINE = 64  # cache line of the Cortex-A53 (and the granule of the sync ranges)
SEGMENT = 1 << 32
_STATUS_ERR = STATUS["error"].offset
_HOST_OP_WAIT = 1


class TransportError(RuntimeError):
    """A transport cannot do what the driver asked (one line, says why)."""


@dataclass
class DmaBuffer:
    """One physically contiguous buffer: the CPU's view and the bus address."""

    array: np.ndarray  # uint8 [nbytes]
    bus_addr: int
    handle: object = None  # the transport's own object (e.g. the PynqBuffer)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


class Transport(abc.ABC):
    """How the board driver reaches an accelerator (see the module docstring)."""

    name = "?"

    @abc.abstractmethod
    def read32(self, offset: int) -> int: ...

    @abc.abstractmethod
    def write32(self, offset: int, value: int) -> None: ...

    @abc.abstractmethod
    def allocate(self, nbytes: int) -> DmaBuffer: ...

    @abc.abstractmethod
    def sync_to_device(self, buf: DmaBuffer, lo: int, hi: int) -> None: ...

    @abc.abstractmethod
    def sync_from_device(self, buf: DmaBuffer, lo: int, hi: int) -> None: ...

    @abc.abstractmethod
    def wait(self, timeout_s: float, poll) -> bool: ...

    @abc.abstractmethod
    def hard_reset(self) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the buffer and the device."""

    def describe(self) -> str:
        """A few words on where the accelerator is (for messages)."""
        return f"the {self.name} transport"


def make_transport(name: str, dp: AccelConfig, **kw) -> Transport:
    """A Transport by name (``TRANSPORTS``); ValueError naming the choices."""
    if name not in TRANSPORTS:
        raise ValueError(f"transport: expected one of {sorted(TRANSPORTS)}, got {name!r}")
    mod_name, cls_name = TRANSPORTS[name].split(":")
    mod = importlib.import_module(mod_name)
    return getattr(mod, cls_name)(dp, **kw)


@functools.lru_cache(maxsize=16)
def expected_id(dp: AccelConfig) -> int:
    """The ID register of the AXI top built for ``dp`` (``AccelShell(dp).ident``)."""
    from hw.vivado import shell_of

    return shell_of(dp).ident


def design_point_of(ident: int) -> str | None:
    """The name of the shipped design point whose AXI top has ID ``ident``, if any."""
    for name, dp in DESIGN_POINTS.items():
        if expected_id(dp) == ident:
            return name
    return None


class _Ranges:
    """Disjoint half-open byte ranges [lo, hi), kept sorted."""

    def __init__(self):
        self.r: list[list[int]] = []

    def add(self, lo: int, hi: int) -> None:
        if lo >= hi:
            return
        out, placed = [], False
        for a, b in self.r:
            if b < lo or hi < a:  # apart (touching ranges merge)
                if a > hi and not placed:
                    out.append([lo, hi])
                    placed = True
                out.append([a, b])
            else:
                lo, hi = min(lo, a), max(hi, b)
        if not placed:
            out.append([lo, hi])
        out.sort()
        self.r = out

    def take(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Remove [lo, hi) from the set; the parts that were in it."""
        got, keep = [], []
        for a, b in self.r:
            if b <= lo or hi <= a:
                keep.append([a, b])
                continue
            got.append((max(a, lo), min(b, hi)))
            if a < lo:
                keep.append([a, lo])
            if hi < b:
                keep.append([hi, b])
        self.r = keep
        return got

    def take_all(self) -> list[tuple[int, int]]:
        got = [(a, b) for a, b in self.r]
        self.r = []
        return got

    def __bool__(self) -> bool:
        return bool(self.r)


class WatchdogTimeout(DeviceTimeout):
    """``wait`` ran out of time; the watchdog reset the accelerator (see module docstring)."""

    def __init__(self, timeout_s, last_op, opcode=None, n_cmds=None, how="CTRL.RESET"):
        super().__init__(timeout_s, last_op, opcode, n_cmds)
        self.how = how
        of = f" of {n_cmds}" if n_cmds is not None else ""
        if last_op >= 0:
            op = f" (opcode {_opcode_text(opcode)})" if opcode is not None else ""
            done = f"last completed command {last_op}{op}{of}"
        else:
            done = f"no command{of} completed"
        self.args = (
            f"device timeout after {timeout_s:g} s: {done}; the watchdog reset the "
            f"accelerator ({how}): the stream is abandoned, the device takes the next one",
        )


class BoardDevice(Device):
    """The accelerator of a board, driven through its CSRs (see the module docstring).

    ``dp``: the host's design point (the bitstream must be built for it). ``transport``: a
    name of ``TRANSPORTS`` (created for ``dp`` with ``transport_kw``) or a ``Transport``.
    ``mem_size``: bytes of the one contiguous buffer. ``reset_timeout_s``: how long a soft
    reset may take before the hard reset."""

    def __init__(
        self,
        dp: AccelConfig | str = DEFAULT_DESIGN_POINT,
        transport: str | Transport = DEFAULT_TRANSPORT,
        mem_size: int = DEFAULT_MEM_SIZE,
        reset_timeout_s: float = 1.0,
        **transport_kw,
    ):
        if isinstance(dp, str):
            dp = design_point(dp)
        if not isinstance(dp, AccelConfig):
            raise ValueError(f"dp: expected an AccelConfig or a design point name, got {dp!r}")
        if not isinstance(mem_size, (int, np.integer)) or mem_size <= 4096:
            raise ValueError(
                f"mem_size: expected an integer number of bytes > 4096, got {mem_size!r}"
            )
        self.dp = dp
        self.reset_timeout_s = self._check_timeout(reset_timeout_s)
        if isinstance(transport, Transport):
            if transport_kw:
                raise ValueError(
                    f"{', '.join(sorted(transport_kw))}: options of a transport created "
                    "by name; this one is already made"
                )
            self.transport = transport
        else:
            self.transport = make_transport(transport, dp, **transport_kw)
        self._buf = None
        try:
            self._check_identity()
            self._buf = self._allocate(int(mem_size))
        except BaseException:
            self.transport.close()
            raise
        bus = self._buf.bus_addr
        self.bus_hi = bus >> 32
        super().__init__(self._buf.nbytes, dp.datapath, mem_base=bus & (SEGMENT - 1))
        self._host = self._buf.array
        self._dirty = _Ranges()  # CPU-written since the last run: flush before START
        self._stale = _Ranges()  # the device may have written since: invalidate first
        self._stream = None
        self._detail = ""
        self._final = Status(busy=False, done=False)
        self.reset()

    # ------------------------------------------------------------------ bring-up
    def _check_identity(self) -> None:
        t = self.transport
        version = t.read32(CSR.VERSION)
        ident = t.read32(CSR.ID)
        magic, major, minor = version >> 24, (version >> 8) & 0xFF, version & 0xFF
        if magic != VERSION_MAGIC:
            raise TransportError(
                f"no ternary-accel at {t.describe()}: VERSION reads 0x{version:08x}, not "
                f"magic 0x{VERSION_MAGIC:02x} (is the bitstream loaded?)"
            )
        if major != MAP_VERSION[0] or minor < MAP_VERSION[1]:
            raise TransportError(
                f"bitstream register map {major}.{minor} is not this driver's "
                f"{MAP_VERSION[0]}.{MAP_VERSION[1]} ({t.describe()})"
            )
        want = expected_id(self.dp)
        if ident != want:
            other = design_point_of(ident)
            theirs = f"design point {other!r}" if other else "no shipped design point"
            ours = f"host design point {self.dp.name!r}"
            if DESIGN_POINTS.get(self.dp.name) not in (None, self.dp):
                ours += " (modified: e.g. --clock-mhz/--bandwidth-gbs change it)"
            raise TransportError(
                f"bitstream ID 0x{ident:08x} ({theirs}) is not the {ours} ID 0x{want:08x}: "
                f"build the bitstream for it (make bitstream BOARD={self.dp.name}) or run "
                "the host with the bitstream's design point"
            )
        self.ident = ident

    def _allocate(self, nbytes: int) -> DmaBuffer:
        buf = self.transport.allocate(nbytes)
        lo, hi = buf.bus_addr, buf.bus_addr + buf.nbytes
        if lo // SEGMENT != (hi - 1) // SEGMENT:
            self.transport.close()
            raise TransportError(
                f"the buffer [0x{lo:x}, 0x{hi:x}) crosses a 4 GiB boundary (the accelerator "
                "addresses one 4 GiB segment); allocate a smaller mem_size"
            )
        if hi > 1 << self.dp.axi_addr_bits:
            raise TransportError(
                f"the buffer ends at bus address 0x{hi:x}, beyond the "
                f"{self.dp.axi_addr_bits}-bit AXI masters"
            )
        return buf

    # ------------------------------------------------------------------ memory
    @property
    def buffer(self) -> DmaBuffer:
        """The one contiguous buffer (its ``array`` is the CPU's view, cached)."""
        return self._buf

    def bus_address(self, addr: int) -> int:
        """The AXI bus address of device address ``addr`` (STREAM_ADDR_HI << 32 | addr)."""
        return (self.bus_hi << 32) | int(addr)

    def alloc(self, nbytes: int, align: int = 64) -> int:
        try:
            return super().alloc(nbytes, align)
        except ValueError as e:
            if "do not fit device memory" not in str(e):
                raise
            used = self.brk - self.alloc_base
            raise ValueError(
                f"the model image, KV cache and scratch need more than the "
                f"{self.mem_size} bytes of the board's contiguous buffer ({used} used, "
                f"{int(nbytes)} more asked): raise mem_size (--device-opt mem_size=N)"
            ) from None

    def _lines(self, addr: int, nbytes: int) -> tuple[int, int]:
        off = addr - self.mem_base
        return (off // LINE) * LINE, min(-(-(off + nbytes) // LINE) * LINE, self.mem_size)

    def _refresh(self, lo: int, hi: int) -> None:
        """Invalidate the stale lines of [lo, hi) (buffer offsets, line-aligned)."""
        for a, b in self._stale.take(lo, hi):
            self.transport.sync_from_device(self._buf, a, b)

    def _mem_write(self, addr: int, buf: bytes) -> None:
        lo, hi = self._lines(addr, len(buf))
        self._refresh(lo, hi)  # a partial line must not bring stale bytes back
        off = addr - self.mem_base
        self._host[off : off + len(buf)] = np.frombuffer(buf, dtype=np.uint8)
        self._dirty.add(lo, hi)

    def _mem_read(self, addr: int, nbytes: int) -> bytes:
        lo, hi = self._lines(addr, nbytes)
        self._refresh(lo, hi)
        off = addr - self.mem_base
        return self._host[off : off + nbytes].tobytes()

    def _flush(self) -> None:
        for a, b in self._dirty.take_all():
            self.transport.sync_to_device(self._buf, a, b)

    # ------------------------------------------------------------------ CSRs
    def csr_read(self, reg: int) -> int:
        return self.transport.read32(int(reg))

    def csr_write(self, reg: int, value: int) -> None:
        self.transport.write32(int(reg), int(value) & 0xFFFF_FFFF)

    def _csr64(self, lo: int) -> int:
        while True:  # a 64-bit counter read as two words: hi, lo, hi again
            hi = self.csr_read(lo + 4)
            v = self.csr_read(lo)
            if self.csr_read(lo + 4) == hi:
                return (hi << 32) | v

    # ------------------------------------------------------------------ control
    def reset(self) -> None:
        """Soft reset through CTRL.RESET (a running stream is aborted; the transport's
        hard reset when it does not end within ``reset_timeout_s``)."""
        self._abort()
        self._stream = None
        self._final = Status(busy=False, done=False)

    def _abort(self) -> str:
        """CTRL.RESET, wait for STATUS.BUSY = 0; returns how the accelerator was reset."""
        how = "CTRL.RESET"
        self.csr_write(CSR.CTRL, CTRL_RESET)
        self.transport.wait(self.reset_timeout_s, lambda: not self.csr_read(CSR.STATUS) & 1)
        if self.csr_read(CSR.STATUS) & 1:
            self.transport.hard_reset()
            how = "CTRL.RESET did not end it: hard reset"
            if self.csr_read(CSR.STATUS) & 1:
                raise TransportError(f"the accelerator stays busy after a hard reset ({how})")
        self.csr_write(CSR.IRQ_STATUS, 0xFFFF_FFFF)
        if self._stream is not None:  # what the aborted stream wrote is the device's
            self._mark_stale()
        return how

    def _mark_stale(self) -> None:
        lo, hi = self._lines(self.alloc_base, self.brk - self.alloc_base)
        self._stale.add(lo, hi)

    def run(self, stream_addr: int, n_cmds: int) -> None:
        if self._stream is not None:
            raise RuntimeError("run: a stream is still running (wait() for it or reset())")
        addr, n = self._check_run_args(stream_addr, n_cmds)
        words = self._mem_read(addr, n * isa.COMMAND_BYTES)
        opcodes = np.frombuffer(words, dtype=np.uint8)[:: isa.COMMAND_BYTES].copy()
        self._flush()
        w = self.csr_write
        w(CSR.MEM_LO, self.alloc_base)
        w(CSR.MEM_HI, self.brk)
        w(CSR.STREAM_ADDR_LO, addr)
        w(CSR.STREAM_ADDR_HI, self.bus_hi)
        w(CSR.N_CMDS, n)
        w(CSR.IRQ_STATUS, 0xFFFF_FFFF)
        w(CSR.IRQ_ENABLE, IRQ_END | IRQ_HOST)
        self._ops0 = self.csr_read(CSR.OPS_DONE)
        self._stream = (addr, n, opcodes)
        self._mark_stale()  # from START on, the device owns the window
        w(CSR.CTRL, CTRL_START)

    def _opcode_at(self, index: int) -> int | None:
        if self._stream is None or not 0 <= index < self._stream[1]:
            return None
        return int(self._stream[2][index])

    def _irq_pending(self) -> bool:
        return bool(self.csr_read(CSR.IRQ_STATUS) & (IRQ_END | IRQ_HOST))

    def _poll(self) -> Status:
        """The current state from the CSRs (no waiting)."""
        if self._stream is None:
            return self._final
        raw = self.csr_read(CSR.STATUS)
        n = self._stream[1]
        if raw & 1 and self.csr_read(CSR.HOST_OP) & _HOST_OP_WAIT:
            # a bitstream without this op's engine: the board executes nothing on the CPU,
            # the stream ends with the error at that command (a few cycles)
            code = ErrorCode.UNKNOWN_OPCODE.value << CTRL_CODE_SHIFT
            self.csr_write(CSR.CTRL, CTRL_HOST_ERROR | code)
            self._detail = "this bitstream has no engine for it (the board runs no host ops)"
            for _ in range(100):
                raw = self.csr_read(CSR.STATUS)
                if not raw & 1:
                    break
        ops = self.csr_read(CSR.OPS_DONE) - self._ops0
        if raw & 1:
            last = self._opcode_at(ops - 1)
            return Status(busy=True, done=False, ops_done=ops, last_opcode=last, n_cmds=n)
        err = ErrorCode((raw >> _STATUS_ERR) & 0xFF)
        failed = err != ErrorCode.NONE
        err_op = self.csr_read(CSR.ERR_OP) if failed else -1
        self.csr_write(CSR.IRQ_STATUS, IRQ_END | IRQ_HOST)
        detail = self._detail
        if err == ErrorCode.BUS_ERROR and not detail:
            detail = "the memory answered SLVERR/DECERR"
        done = bool((raw >> 1) & 1)
        self._final = Status.ended(done, err, err_op, ops, n, self._opcode_at, detail)
        self._stream = None
        self._detail = ""
        return self._final

    def wait(self, timeout_s: float) -> Status:
        """Wait for the stream's end (interrupt or poll); the watchdog on a timeout."""
        timeout_s = self._check_timeout(timeout_s)
        if self._stream is not None:
            self.transport.wait(timeout_s, self._irq_pending)
            st = self._poll()
            if st.busy:
                last, n = st.ops_done - 1, self._stream[1]
                op = self._opcode_at(last)
                how = self._abort()
                self._stream = None
                self._final = Status(busy=False, done=False, error=ErrorCode.TIMEOUT, n_cmds=n)
                raise WatchdogTimeout(timeout_s, last, op, n, how)
        st = self._final
        if not st.ok:
            raise DeviceError.from_status(st)
        return st

    def counters(self) -> dict:
        return {
            "cycles": self._csr64(CSR.CYCLES_LO),
            "ops": self.csr_read(CSR.OPS_DONE),
            "bytes_read": self._csr64(CSR.BYTES_RD_LO),
            "bytes_written": self._csr64(CSR.BYTES_WR_LO),
        }

    def close(self) -> None:
        if getattr(self, "transport", None) is not None:
            self.transport.close()

    def __repr__(self) -> str:
        return (
            f"BoardDevice({self.dp.name}, {self.transport.describe()}, buffer at bus "
            f"0x{self._buf.bus_addr:x}, {self.mem_size} bytes)"
        )


__all__ = [
    "BoardDevice",
    "DmaBuffer",
    "Transport",
    "TransportError",
    "WatchdogTimeout",
    "TRANSPORTS",
    "make_transport",
    "expected_id",
]
