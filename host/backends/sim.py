"""``SimDevice``: the accelerator RTL (``hw/accel.py``) compiled by Verilator and driven
in-process through the C++ harness of ``host/backends/sim_harness/`` (the VTA 'tsim' of
DESIGN §5).

    dev = SimDevice()                        # builds/loads build/accel_sim/<hash>/libaccel_sim.so
    rt = host.runtime.make_runtime(model, "sim", dp="kv260")   # its DRAM bandwidth/latency

Memory: one numpy uint8 buffer of ``mem_size`` bytes (device addresses [0, mem_size))
shared by the harness's DRAM model (it reads/writes the buffer directly through a
pointer) and the host fallback; ``write``/``read`` are plain numpy copies.
DRAM timing: ``bandwidth`` bytes/cycle and ``latency`` cycles (default: the design point's
``bytes_per_cycle`` and ``dram_latency``), ``max_outstanding`` reads in
flight (see ``sim_harness/harness.cpp``); ``set_memory_timing`` changes them.

Command processor: ``run`` programs the CSRs (MEM_LO/MEM_HI = the allocated window
[alloc_base, brk), the range the golden backend checks; STREAM_ADDR; N_CMDS) and sets
START. Each ``_poll`` (``Device.wait``'s loop) steps the RTL at most ``cycles_per_poll``
cycles. Every opcode runs on the RTL (``hw.accel.RTL_OPS``). The host-op handshake of
the top remains for tops built with a subset of the engines (``SimDevice(ops=...)``, e.g.
while a new engine is brought up; ``hw.accel.Accel(ops=...)``):
when the RTL stops at a command it does not execute (``HOST_OP``) the host executes it
with the command-level golden model (``golden.executor.Executor`` on the same memory)
and writes CTRL.RESUME, or CTRL.HOST_ERROR with the error code, so errors of host ops are
reported by the RTL's status like its own (same code, same op index as the golden
backend).

Counters: ``cycles`` = the RTL cycle counter (cycles while busy, host ops excluded);
``ops`` from the RTL; ``bytes_read``/``bytes_written`` = RTL DMA traffic + the golden
executor's count for host ops. ``stats`` adds wall time on RTL vs host and host ops per
opcode. ``reset()`` is a hard reset of the RTL and the DRAM model's queues (memory and
allocations kept).

Each SimDevice opens its own copy of the harness library (the harness keeps one
simulated accelerator per loaded library), so several devices can coexist.
"""

from __future__ import annotations

import collections
import ctypes
import time

import numpy as np

from golden import isa
from golden.config import DEFAULT_DESIGN_POINT, AccelConfig, design_point
from golden.executor import Executor
from golden.isa import ErrorCode
from host.backends.sim_harness.build import build, open_library
from host.device import Device, Status
from hw.csr import CSR, CTRL_CODE_SHIFT, CTRL_HOST_ERROR, CTRL_RESUME, CTRL_START, STATUS

DEFAULT_MEM_SIZE = 64 << 20
DEFAULT_MAX_OUTSTANDING = 64
DEFAULT_CYCLES_PER_POLL = 100_000


class SimDevice(Device):
    """Verilator RTL of the accelerator + C++ DRAM model (see module docstring)."""

    def __init__(
        self,
        dp: AccelConfig | str = DEFAULT_DESIGN_POINT,
        mem_size: int = DEFAULT_MEM_SIZE,
        bandwidth: float | None = None,
        latency: int | None = None,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        cycles_per_poll: int = DEFAULT_CYCLES_PER_POLL,
        ops=None,
    ):
        if isinstance(dp, str):
            dp = design_point(dp)
        if not isinstance(dp, AccelConfig):
            raise ValueError(f"dp: expected an AccelConfig or a design point name, got {dp!r}")
        # the design point's DRAM: its bandwidth in bytes per cycle and its latency
        bandwidth = dp.bytes_per_cycle if bandwidth is None else bandwidth
        latency = dp.dram_latency if latency is None else latency
        self.dp = dp
        cfg = dp.datapath
        if not isinstance(cycles_per_poll, (int, np.integer)) or cycles_per_poll < 1:
            raise ValueError(
                f"cycles_per_poll: expected a positive integer, got {cycles_per_poll!r}"
            )
        if not isinstance(max_outstanding, (int, np.integer)) or max_outstanding < 1:
            raise ValueError(
                f"max_outstanding: expected a positive integer, got {max_outstanding!r}"
            )
        self._check_timing(bandwidth, latency)
        super().__init__(mem_size, cfg)
        # the host fallback executes on the very buffer the DRAM model serves
        self._mem = np.zeros(self.mem_size, dtype=np.uint8)
        self._host = Executor(self._mem, cfg, tlmm_tokens=dp.tlmm_tokens)
        self._lib = open_library(build(dp, ops=ops))
        from hw.accel import default_ops

        # the opcodes the top executes on RTL (the runtime picks its commands by them)
        self.rtl_ops = frozenset(default_ops(dp) if ops is None else ops)
        self.dma_bytes = int(self._lib.acc_dma_bytes())
        self.bandwidth, self.latency = float(bandwidth), int(latency)
        self.cycles_per_poll = int(cycles_per_poll)
        self._lib.acc_init(
            self._mem.ctypes.data, self.mem_size, self.bandwidth, self.latency, int(max_outstanding)
        )
        self.reset()

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _check_timing(bandwidth, latency) -> None:
        if not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
            raise ValueError(f"bandwidth: expected bytes/cycle > 0, got {bandwidth!r}")
        if not isinstance(latency, (int, np.integer)) or latency < 1:
            raise ValueError(f"latency: expected an integer number of cycles >= 1, got {latency!r}")

    def set_memory_timing(self, bandwidth: float | None = None, latency: int | None = None) -> None:
        """Change the DRAM model's bandwidth (bytes/cycle) and/or latency (cycles)."""
        bw = self.bandwidth if bandwidth is None else bandwidth
        lat = self.latency if latency is None else latency
        self._check_timing(bw, lat)
        self.bandwidth, self.latency = float(bw), int(lat)
        self._lib.acc_set_timing(self.bandwidth, self.latency)

    # ------------------------------------------------------------------ memory window
    def _mem_write(self, addr: int, buf: bytes) -> None:
        self._mem[addr : addr + len(buf)] = np.frombuffer(buf, dtype=np.uint8)
        self._host.invalidate(addr, addr + len(buf))

    def _mem_read(self, addr: int, nbytes: int) -> bytes:
        return self._mem[addr : addr + nbytes].tobytes()

    # ------------------------------------------------------------------ CSRs
    def csr_read(self, reg: int) -> int:
        return int(self._lib.acc_csr_read(int(reg)))

    def csr_write(self, reg: int, value: int) -> None:
        self._lib.acc_csr_write(int(reg), int(value) & 0xFFFFFFFF)

    def _csr64(self, lo: int) -> int:
        return self.csr_read(lo) | (self.csr_read(lo + 4) << 32)

    # ------------------------------------------------------------------ control
    def reset(self) -> None:
        self._lib.acc_reset()
        self._host.bytes_read = self._host.bytes_written = 0
        self._stream = None
        self._ops0 = 0
        self._detail = ""
        self._final: Status = Status(busy=False, done=False)
        self.stats = {"rtl_s": 0.0, "host_s": 0.0, "host_ops": collections.Counter()}

    def run(self, stream_addr: int, n_cmds: int) -> None:
        if self._stream is not None:
            raise RuntimeError("run: a stream is still running (wait() for it or reset())")
        addr, n = self._check_run_args(stream_addr, n_cmds)
        self._host.set_window(self.alloc_base, self.brk)
        self.csr_write(CSR.MEM_LO, self.alloc_base)
        self.csr_write(CSR.MEM_HI, self.brk)
        self.csr_write(CSR.STREAM_ADDR, addr)
        self.csr_write(CSR.N_CMDS, n)
        self._ops0 = self.csr_read(CSR.OPS_DONE)
        self._detail = ""
        self._stream = (addr, n)
        self.csr_write(CSR.CTRL, CTRL_START)

    def counters(self) -> dict:
        return {
            "cycles": self._csr64(CSR.CYCLES_LO),
            "ops": self.csr_read(CSR.OPS_DONE),
            "bytes_read": self._csr64(CSR.BYTES_RD_LO) + self._host.bytes_read,
            "bytes_written": self._csr64(CSR.BYTES_WR_LO) + self._host.bytes_written,
        }

    def _opcode_at(self, index: int) -> int | None:
        if self._stream is None or index < 0:
            return None
        return int(self._mem[self._stream[0] + index * isa.COMMAND_BYTES])

    def _host_op(self) -> None:
        """Execute the command the RTL handed over, then resume (or report its error)."""
        pc = self.csr_read(CSR.PC)
        base = self._stream[0] + pc * isa.COMMAND_BYTES
        word = self._mem[base : base + isa.COMMAND_BYTES].tobytes()
        lo, hi = ctypes.c_uint64(), ctypes.c_uint64()
        self._lib.acc_take_written(ctypes.byref(lo), ctypes.byref(hi))
        if lo.value < hi.value:  # the RTL's writes may overlap cached constants
            self._host.invalidate(lo.value, hi.value)
        t0 = time.perf_counter()
        self.stats["host_ops"][isa.Opcode(word[0]).name] += 1  # HOST_OP: a known opcode
        out = self._host.step(word)
        code, self._detail = out.error, out.detail
        self.stats["host_s"] += time.perf_counter() - t0
        if code == ErrorCode.NONE:
            self.csr_write(CSR.CTRL, CTRL_RESUME)
        else:
            self.csr_write(CSR.CTRL, CTRL_HOST_ERROR | (code.value << CTRL_CODE_SHIFT))

    def _poll(self) -> Status:
        if self._stream is None:
            return self._final
        t0 = time.perf_counter()
        self._lib.acc_run(self.cycles_per_poll)
        self.stats["rtl_s"] += time.perf_counter() - t0
        if self._lib.acc_host_req():
            self._host_op()
        st = STATUS
        raw = self.csr_read(CSR.STATUS)
        busy = bool(raw & 1)
        done = bool((raw >> 1) & 1)
        err = ErrorCode((raw >> st["error"].offset) & 0xFF)
        ops = self.csr_read(CSR.OPS_DONE) - self._ops0
        n = self._stream[1]
        if busy:
            return Status(
                busy=True, done=False, ops_done=ops, last_opcode=self._opcode_at(ops - 1), n_cmds=n
            )
        failed = err != ErrorCode.NONE
        err_op = self.csr_read(CSR.ERR_OP) if failed else -1
        self._final = Status.ended(done, err, err_op, ops, n, self._opcode_at, self._detail)
        self._stream = None
        return self._final
