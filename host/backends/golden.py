"""``GoldenDevice``: the accelerator as a functional model (the VTA 'fsim' of DESIGN §5).

Memory: a numpy uint8 buffer of ``mem_size`` bytes (default ``DEFAULT_MEM_SIZE``, 256
MiB, allocated lazily by the OS), device addresses [0, mem_size); the first 64 bytes are
never allocated. Command processor: fetches each 64-byte command of the stream and
executes it with the command-level golden model (``golden.executor.Executor``), whose
memory window is the allocated memory [alloc_base, brk) as of ``run`` -- the window the
sim backend programs into MEM_LO/MEM_HI.

Execution happens inside ``wait``: ``run`` only latches the stream; each ``_poll`` (the
polling loop of ``Device.wait``) executes one command, until END, an error, or the
deadline (DeviceTimeout; the next ``wait`` resumes where it stopped) -- so timeouts
behave as on hardware. A stream that runs ``n_cmds`` commands without END stops with
MISSING_END, err_op = n_cmds - 1.

Counters: ``ops`` (commands executed, END included), ``bytes_read`` / ``bytes_written``
(tensor traffic of the commands plus 64 bytes per command fetched); ``cycles`` is None
(cycle counts come from the sim backend).
"""

from __future__ import annotations

import numpy as np

from golden import isa
from golden.config import DEFAULT, DatapathConfig
from golden.executor import Executor
from golden.isa import ErrorCode
from host.device import Device, Status

DEFAULT_MEM_SIZE = 256 << 20


class GoldenDevice(Device):
    """Functional accelerator; ``cfg`` is the datapath it implements (DEFAULT);
    ``tlmm_tokens`` the TLMM engine's P (``AccelConfig.tlmm_tokens``: bytes read only)."""

    def __init__(
        self,
        cfg: DatapathConfig = DEFAULT,
        mem_size: int = DEFAULT_MEM_SIZE,
        exact_tlmm: bool = False,
        tlmm_tokens: int = 1,
    ):
        if not isinstance(cfg, DatapathConfig):
            raise ValueError(f"cfg: expected a DatapathConfig, got {type(cfg).__name__}")
        super().__init__(mem_size, cfg)
        self.executor = Executor(
            np.zeros(self.mem_size, dtype=np.uint8), cfg, exact_tlmm, tlmm_tokens
        )
        self.reset()

    @property
    def memory(self) -> np.ndarray:
        """The device memory itself (device address = index): for testbenches that compare
        or copy whole images."""
        return self.executor.mem

    # ------------------------------------------------------------------ memory window
    def _mem_write(self, addr: int, buf: bytes) -> None:
        self.executor.mem[addr : addr + len(buf)] = np.frombuffer(buf, dtype=np.uint8)
        self.executor.invalidate(addr, addr + len(buf))

    def _mem_read(self, addr: int, nbytes: int) -> bytes:
        return self.executor.mem[addr : addr + nbytes].tobytes()

    # ------------------------------------------------------------------ control
    def reset(self) -> None:
        self._stream = None  # (addr, n_cmds) of the running stream
        self._pc = 0
        self._last_opcode = None
        self._status = Status(busy=False, done=False)
        self._ops = self._fetched = 0
        self.executor.bytes_read = self.executor.bytes_written = 0

    def run(self, stream_addr: int, n_cmds: int) -> None:
        if self._stream is not None:
            raise RuntimeError("run: a stream is still running (wait() for it or reset())")
        self._stream = self._check_run_args(stream_addr, n_cmds)
        self.executor.set_window(self.alloc_base, self.brk)
        self._pc = 0
        self._last_opcode = None
        self._status = Status(busy=True, done=False, n_cmds=self._stream[1])

    def counters(self) -> dict:
        return {
            "cycles": None,
            "ops": self._ops,
            "bytes_read": self._fetched + self.executor.bytes_read,
            "bytes_written": self.executor.bytes_written,
        }

    def status(self) -> Status:
        """The state after the last executed command (does not execute anything)."""
        return self._status

    def _poll(self) -> Status:
        """Execute the next command of the running stream (if any); the status after it."""
        if self._stream is not None:
            self._step()
            if self._stream is not None:
                self._status = Status(
                    busy=True,
                    done=False,
                    ops_done=self._pc,
                    last_opcode=self._last_opcode,
                    n_cmds=self._stream[1],
                )
        return self._status

    def _finish(self, error: ErrorCode = ErrorCode.NONE, opcode=None, detail: str = "") -> None:
        failed = error != ErrorCode.NONE
        self._status = Status(
            busy=False,
            done=not failed,
            error=error,
            err_op=self._pc if failed else -1,
            err_opcode=opcode if failed else None,
            ops_done=self._pc + (error in (ErrorCode.NONE, ErrorCode.MISSING_END)),
            last_opcode=opcode,
            n_cmds=self._stream[1],
            detail=detail,
        )
        self._stream = None

    def _step(self) -> None:
        base, n_cmds = self._stream
        addr = base + self._pc * isa.COMMAND_BYTES
        self._fetched += isa.COMMAND_BYTES
        out = self.executor.step(self.executor.mem[addr : addr + isa.COMMAND_BYTES])
        if out.error != ErrorCode.NONE:
            self._finish(out.error, out.opcode, out.detail)
            return
        self._ops += 1
        if out.end:
            self._finish(opcode=out.opcode)
            return
        self._last_opcode = out.opcode
        if self._pc == n_cmds - 1:
            self._finish(ErrorCode.MISSING_END, out.opcode, f"{n_cmds} commands without END")
            return
        self._pc += 1
