"""The ``Device`` interface: one driver API over every accelerator backend (DESIGN §5).

A backend (``host/backends/<name>.py``: golden, sim, board, ...) is an accelerator with
a byte-addressed memory window and a command processor that executes the streams of
``golden/isa.py``::

    dev = GoldenDevice()
    a = dev.alloc(1024)                 # bump allocator, 64-byte aligned by default
    dev.write(a, np.arange(256, dtype=np.int32))
    dev.run(stream_addr, n_cmds)        # starts; returns at once (a backend may finish it here)
    st = dev.wait(timeout_s=10.0)       # Status; raises DeviceError / DeviceTimeout
    dev.read(a, 1024); dev.counters(); dev.reset()

Contract of every backend
-------------------------
- Memory: ``mem_size`` bytes at device addresses [``mem_base``, ``mem_base + mem_size``).
  ``alloc(nbytes, align)`` hands out consecutive blocks (never address 0); ``write``/
  ``read`` accept only bytes inside allocated memory [``mem_base + reserved``, ``brk``)
  (ValueError naming the address and that range). ``free_all()`` forgets all blocks.
- ``cfg``: the ``golden.config.DatapathConfig`` the accelerator implements; the runtime
  compiles models for it (the TLMM tile format and every datapath width come from it).
- ``run(stream_addr, n_cmds)``: start a stream (RuntimeError if one is still running).
- ``wait(timeout_s)`` (implemented here on top of the backend's ``_poll()``): block
  until the stream ends; returns ``Status`` when it ended
  with END; raises ``DeviceError`` (error code, index and opcode of the failing command)
  when the device reported an error, and ``DeviceTimeout`` (error TIMEOUT, the index of
  the last command known to have completed) when it has not ended in time -- the stream
  keeps its state: a later ``wait`` may still see it finish; ``reset`` abandons it.
- ``counters()``: ``{"cycles": int | None (None: the backend does not model time),
  "ops": commands executed, "bytes_read": .., "bytes_written": ..}`` since the last reset
  (bytes: accelerator-side memory traffic, commands included).
- ``reset()``: soft reset of the accelerator: clears status, error and counters, abandons
  a running stream; memory contents and allocations are kept.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass

import numpy as np

from golden.isa import ERROR_TEXT, ErrorCode, Opcode

DEFAULT_ALIGN = 64
RESERVED_BYTES = 64  # the first bytes of the window are never allocated (0 = null)


@dataclass(frozen=True)
class Status:
    """End state of a stream (or the current state while it runs)."""

    busy: bool
    done: bool
    error: ErrorCode = ErrorCode.NONE
    err_op: int = -1  # index of the failing command (-1: none)
    err_opcode: int | None = None  # its raw opcode value, when known
    ops_done: int = 0  # commands executed in this stream (END included)
    last_opcode: int | None = None  # raw opcode of the last command executed
    n_cmds: int | None = None  # length of the stream
    detail: str = ""  # backend's extra words on the error

    @property
    def ok(self) -> bool:
        return self.error == ErrorCode.NONE

    @classmethod
    def ended(cls, done: bool, error, err_op: int, ops_done: int, n_cmds, opcode_at, detail=""):
        """The end state of a stream read from a device: ``opcode_at(index)`` gives the raw
        opcode of a command of the stream (None when unknown)."""
        failed = error != ErrorCode.NONE
        return cls(
            busy=False,
            done=done,
            error=error,
            err_op=err_op,
            err_opcode=opcode_at(err_op) if failed else None,
            ops_done=ops_done,
            last_opcode=opcode_at(ops_done - 1) if ops_done else None,
            n_cmds=n_cmds,
            detail=detail,
        )


def _opcode_text(value) -> str:
    if value is None:
        return "?"
    try:
        return Opcode(value).name
    except ValueError:
        return f"0x{int(value):02x}"


class DeviceError(RuntimeError):
    """An error the accelerator reported: ``code`` (ErrorCode), ``op_index``, ``opcode``."""

    def __init__(self, code: ErrorCode, op_index: int, opcode=None, detail: str = ""):
        self.code, self.op_index, self.opcode, self.detail = code, op_index, opcode, detail
        msg = (
            f"device error at command {op_index} (opcode {_opcode_text(opcode)}): "
            f"{ERROR_TEXT.get(code, code)}"
        )
        super().__init__(msg + (f": {detail}" if detail else ""))

    @classmethod
    def from_status(cls, st: Status) -> DeviceError:
        return cls(st.error, st.err_op, st.err_opcode, st.detail)


class DeviceTimeout(DeviceError, TimeoutError):
    """wait() gave up: the stream was still running after ``timeout_s``."""

    def __init__(self, timeout_s: float, last_op: int, opcode=None, n_cmds: int | None = None):
        self.timeout_s, self.last_op = timeout_s, last_op
        RuntimeError.__init__(
            self,
            f"device timeout after {timeout_s:g} s: last completed command "
            f"{last_op if last_op >= 0 else 'none'}"
            f"{f' (opcode {_opcode_text(opcode)})' if opcode is not None else ''}"
            f"{f' of {n_cmds}' if n_cmds is not None else ''}; the stream is still "
            f"running (reset() abandons it)",
        )
        self.code, self.op_index, self.opcode, self.detail = ErrorCode.TIMEOUT, last_op, opcode, ""


class Device(abc.ABC):
    """Abstract accelerator (see the module docstring for the contract).

    Subclasses provide the memory window (``_mem_write``/``_mem_read``) and the command
    processor (``run``, ``wait``, ``counters``, ``reset``); allocation and the range
    checks of ``write``/``read`` live here so every backend reports them alike.
    """

    def __init__(self, mem_size: int, cfg, mem_base: int = 0):
        if not isinstance(mem_size, (int, np.integer)) or mem_size <= RESERVED_BYTES:
            raise ValueError(f"mem_size: expected an integer > {RESERVED_BYTES}, got {mem_size!r}")
        self.mem_size, self.mem_base, self.cfg = int(mem_size), int(mem_base), cfg
        self._brk = self.mem_base + RESERVED_BYTES

    # ------------------------------------------------------------------ memory
    @property
    def alloc_base(self) -> int:
        return self.mem_base + RESERVED_BYTES

    @property
    def brk(self) -> int:
        """End of allocated memory: [alloc_base, brk) is readable/writable."""
        return self._brk

    def alloc(self, nbytes: int, align: int = DEFAULT_ALIGN) -> int:
        if not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
            raise ValueError(f"nbytes: expected a non-negative integer, got {nbytes!r}")
        if not isinstance(align, (int, np.integer)) or align < 1 or align & (align - 1):
            raise ValueError(f"align: expected a power of two, got {align!r}")
        addr = -(-self._brk // align) * align
        end = self.mem_base + self.mem_size
        if addr + nbytes > end:
            raise ValueError(
                f"nbytes: {nbytes} bytes (align {align}) do not fit device memory: "
                f"0x{self._brk - self.alloc_base:x} of 0x{self.mem_size:x} bytes used"
            )
        self._brk = addr + int(nbytes)
        return addr

    def free_all(self) -> None:
        self._brk = self.alloc_base

    def _check_range(self, what: str, addr, nbytes: int) -> int:
        if not isinstance(addr, (int, np.integer)):
            raise ValueError(f"{what}: address must be an integer, got {type(addr).__name__}")
        addr = int(addr)
        if addr < self.alloc_base or addr + nbytes > self._brk:
            raise ValueError(
                f"{what}: [0x{addr:x}, 0x{addr + nbytes:x}) is outside allocated "
                f"memory [0x{self.alloc_base:x}, 0x{self._brk:x})"
            )
        return addr

    def write(self, addr: int, data) -> None:
        """Write bytes / a numpy array (its little-endian bytes, C order) at ``addr``."""
        if isinstance(data, np.ndarray):
            a = np.ascontiguousarray(data)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            buf = a.tobytes()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            buf = bytes(data)
        else:
            raise ValueError(f"data: expected bytes or a numpy array, got {type(data).__name__}")
        addr = self._check_range("write", addr, len(buf))
        if buf:
            self._mem_write(addr, buf)

    def read(self, addr: int, nbytes: int) -> bytes:
        if not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
            raise ValueError(f"nbytes: expected a non-negative integer, got {nbytes!r}")
        addr = self._check_range("read", addr, int(nbytes))
        return self._mem_read(addr, int(nbytes)) if nbytes else b""

    def read_array(self, addr: int, dtype, shape) -> np.ndarray:
        """Convenience: ``read`` as a numpy array of little-endian ``dtype``."""
        dt = np.dtype(dtype).newbyteorder("<")
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        return np.frombuffer(self.read(addr, n), dtype=dt).reshape(shape).copy()

    @abc.abstractmethod
    def _mem_write(self, addr: int, buf: bytes) -> None: ...

    @abc.abstractmethod
    def _mem_read(self, addr: int, nbytes: int) -> bytes: ...

    # ------------------------------------------------------------------ command processor
    @abc.abstractmethod
    def run(self, stream_addr: int, n_cmds: int) -> None: ...

    @abc.abstractmethod
    def _poll(self) -> Status:
        """Current status without blocking for long; a backend that needs to advance
        (the golden interpreter, a simulator) does a bounded amount of work here."""

    def status(self) -> Status:
        """Current status (a backend may override this to avoid advancing work)."""
        return self._poll()

    def wait(self, timeout_s: float) -> Status:
        """Poll until the stream ends (see the module docstring for what it raises)."""
        timeout_s = self._check_timeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            st = self._poll()
            if not st.busy:
                break
            if time.monotonic() > deadline:
                raise DeviceTimeout(timeout_s, st.ops_done - 1, st.last_opcode, st.n_cmds)
        if not st.ok:
            raise DeviceError.from_status(st)
        return st

    @abc.abstractmethod
    def counters(self) -> dict: ...

    @abc.abstractmethod
    def reset(self) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract: most have nothing
        """Release backend resources (processes, handles); the default has none."""

    # helpers for subclasses
    def _check_run_args(self, stream_addr, n_cmds) -> tuple[int, int]:
        from golden.isa import COMMAND_BYTES, STREAM_ALIGN

        if not isinstance(n_cmds, (int, np.integer)) or n_cmds < 1:
            raise ValueError(f"n_cmds: expected a positive integer, got {n_cmds!r}")
        addr = self._check_range("stream_addr", stream_addr, int(n_cmds) * COMMAND_BYTES)
        if addr % STREAM_ALIGN:
            raise ValueError(f"stream_addr: 0x{addr:x} is not {STREAM_ALIGN}-byte aligned")
        return addr, int(n_cmds)

    @staticmethod
    def _check_timeout(timeout_s) -> float:
        if not isinstance(timeout_s, (int, float, np.floating, np.integer)) or timeout_s < 0:
            raise ValueError(f"timeout_s: expected a number >= 0, got {timeout_s!r}")
        return float(timeout_s)
