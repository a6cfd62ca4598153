"""Control/status register block of the accelerator top (``hw/accel.py``).

The register map is ``hw.isa.CSR`` (32-bit registers, byte offsets) plus the extension
registers below, which the sim backend needs and ``hw/isa.py`` does not define yet
(they should move into ``hw.isa.CSR`` when the ISA is next revised):

========== ====== ==========================================================================
register   offset meaning
========== ====== ==========================================================================
MEM_LO     0x30   first byte of the memory window commands may touch (range checks)
MEM_HI     0x34   one past the last byte of that window: a tensor [a, a+n) must satisfy
                  MEM_LO <= a and a + n <= MEM_HI, else ADDR_RANGE
HOST_OP    0x38   bit 0: the command processor stopped at command PC, a known opcode the
                  RTL does not execute ("unsupported on RTL"); the host executes it and
                  writes CTRL.RESUME (or CTRL.HOST_ERROR with a code in CTRL[15:8])
PC         0x3C   index of the current command of the stream
========== ====== ==========================================================================

CTRL bits: START (0) and RESET (1) from ``hw.isa``; RESUME (2): continue after a host-
executed command; HOST_ERROR (3): end the stream with ``ErrorCode`` CTRL[15:8] at PC.

Bus (``csr_*`` ports of the top): ``addr`` (byte offset), ``w_en`` + ``w_data`` (written at
the clock edge), ``r_data`` = the register at ``addr`` (combinational).
"""
from __future__ import annotations

import enum as _pyenum

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw import isa

CSR_ADDR_BITS = 8


class CSRX(_pyenum.IntEnum):
    """Extension registers (see module docstring)."""

    MEM_LO = 0x30
    MEM_HI = 0x34
    HOST_OP = 0x38
    PC = 0x3C


CTRL_RESUME = 1 << 2
CTRL_HOST_ERROR = 1 << 3
CTRL_CODE_SHIFT = 8


class CSRBlock(wiring.Component):
    """Register file: writable configuration out, status/counters in, one read mux.

    Outputs (to the command processor): ``start``, ``soft_reset``, ``resume``,
    ``host_error`` (one-cycle pulses on a CTRL write), ``host_code``, ``stream_addr``,
    ``n_cmds``, ``mem_lo``, ``mem_hi``. Inputs: ``busy``, ``done``, ``error``, ``err_op``,
    ``ops_done``, ``cycles``, ``bytes_rd``, ``bytes_wr``, ``host_op``, ``pc``.
    """

    def __init__(self):
        super().__init__({
            "addr": In(CSR_ADDR_BITS), "w_en": In(1), "w_data": In(32), "r_data": Out(32),
            "start": Out(1), "soft_reset": Out(1), "resume": Out(1), "host_error": Out(1),
            "host_code": Out(8),
            "stream_addr": Out(isa.ADDR_BITS), "n_cmds": Out(32),
            "mem_lo": Out(isa.ADDR_BITS), "mem_hi": Out(isa.ADDR_BITS + 1),
            "busy": In(1), "done": In(1), "error": In(8), "err_op": In(32),
            "ops_done": In(32), "cycles": In(64), "bytes_rd": In(64), "bytes_wr": In(64),
            "host_op": In(1), "pc": In(32),
        })

    def elaborate(self, platform):
        m = Module()
        C = isa.CSR
        ctrl_write = self.w_en & (self.addr == C.CTRL)
        m.d.comb += [
            self.start.eq(ctrl_write & self.w_data[0]),
            self.soft_reset.eq(ctrl_write & self.w_data[1]),
            self.resume.eq(ctrl_write & self.w_data[2]),
            self.host_error.eq(ctrl_write & self.w_data[3]),
            self.host_code.eq(self.w_data[CTRL_CODE_SHIFT:CTRL_CODE_SHIFT + 8]),
        ]
        with m.If(self.w_en):
            with m.Switch(self.addr):
                with m.Case(C.STREAM_ADDR):
                    m.d.sync += self.stream_addr.eq(self.w_data)
                with m.Case(C.N_CMDS):
                    m.d.sync += self.n_cmds.eq(self.w_data)
                with m.Case(CSRX.MEM_LO):
                    m.d.sync += self.mem_lo.eq(self.w_data)
                with m.Case(CSRX.MEM_HI):
                    # 0 means the full 4 GiB window (MEM_HI is one bit wider internally)
                    m.d.sync += self.mem_hi.eq(
                        self.w_data | ((self.w_data == 0) << isa.ADDR_BITS))

        status = Signal(isa.STATUS)
        m.d.comb += [status.busy.eq(self.busy), status.done.eq(self.done),
                     status.error.eq(self.error)]
        regs = {
            C.STATUS: status.as_value(), C.STREAM_ADDR: self.stream_addr, C.N_CMDS: self.n_cmds,
            C.ERR_OP: self.err_op, C.OPS_DONE: self.ops_done,
            C.CYCLES_LO: self.cycles[:32], C.CYCLES_HI: self.cycles[32:],
            C.BYTES_RD_LO: self.bytes_rd[:32], C.BYTES_RD_HI: self.bytes_rd[32:],
            C.BYTES_WR_LO: self.bytes_wr[:32], C.BYTES_WR_HI: self.bytes_wr[32:],
            CSRX.MEM_LO: self.mem_lo, CSRX.MEM_HI: self.mem_hi[:32],
            CSRX.HOST_OP: self.host_op, CSRX.PC: self.pc,
        }
        with m.Switch(self.addr):
            for off, val in regs.items():
                with m.Case(int(off)):
                    m.d.comb += self.r_data.eq(val)
        return m
