"""Control/status registers of the accelerator top (``hw/accel.py``): the ONE register map.

32-bit registers at byte offsets from the register block base (``CSR``):

============ ====== ======================================================================
register     offset meaning
============ ====== ======================================================================
CTRL         0x00   bit 0 START (self-clearing), bit 1 soft RESET (clears status and
                    counters), bit 2 RESUME (continue after a host-executed command),
                    bit 3 HOST_ERROR (end the stream with ``ErrorCode`` CTRL[15:8] at PC)
STATUS       0x04   ``STATUS`` layout: busy, done, error (``golden.isa.ErrorCode``)
STREAM_ADDR  0x08   byte address of the command stream (64-byte aligned)
N_CMDS       0x0C   commands in the stream (it must end with END)
ERR_OP       0x10   index of the command that failed
OPS_DONE     0x14   commands executed (END included)
CYCLES       0x18   cycles while busy (64-bit: LO at 0x18, HI at 0x1C)
BYTES_RD     0x20   DMA bytes read (64-bit)
BYTES_WR     0x28   DMA bytes written (64-bit)
MEM_LO       0x30   first byte of the memory window commands may touch (range checks)
MEM_HI       0x34   one past its last byte: a tensor [a, a+n) must satisfy MEM_LO <= a and
                    a + n <= MEM_HI, else ADDR_RANGE (0 = the whole 4 GiB)
HOST_OP      0x38   bit 0: the command processor stopped at command PC, a known opcode
                    this top has no engine for; the host executes it and writes RESUME
                    (or HOST_ERROR with a code)
PC           0x3C   index of the current command of the stream
============ ====== ======================================================================

Bus (``csr_*`` ports of the top): ``addr`` (byte offset), ``w_en`` + ``w_data`` (written at
the clock edge), ``r_data`` = the register at ``addr`` (combinational).
"""

from __future__ import annotations

import enum as _pyenum

from amaranth import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden import isa
from golden.isa import ErrorCode

CSR_ADDR_BITS = 8


class CSR(_pyenum.IntEnum):
    """Register offsets (see the module docstring)."""

    CTRL = 0x00
    STATUS = 0x04
    STREAM_ADDR = 0x08
    N_CMDS = 0x0C
    ERR_OP = 0x10
    OPS_DONE = 0x14
    CYCLES_LO = 0x18
    CYCLES_HI = 0x1C
    BYTES_RD_LO = 0x20
    BYTES_RD_HI = 0x24
    BYTES_WR_LO = 0x28
    BYTES_WR_HI = 0x2C
    MEM_LO = 0x30
    MEM_HI = 0x34
    HOST_OP = 0x38
    PC = 0x3C


CTRL_START = 1 << 0
CTRL_RESET = 1 << 1
CTRL_RESUME = 1 << 2
CTRL_HOST_ERROR = 1 << 3
CTRL_CODE_SHIFT = 8

STATUS = data.StructLayout(
    {
        "busy": 1,
        "done": 1,
        "_reserved": 6,
        "error": ErrorCode,
    }
)


class CSRBlock(wiring.Component):
    """Register file: writable configuration out, status/counters in, one read mux.

    Outputs (to the command processor): ``start``, ``soft_reset``, ``resume``,
    ``host_error`` (one-cycle pulses on a CTRL write), ``host_code``, ``stream_addr``,
    ``n_cmds``, ``mem_lo``, ``mem_hi``. Inputs: ``busy``, ``done``, ``error``, ``err_op``,
    ``ops_done``, ``cycles``, ``bytes_rd``, ``bytes_wr``, ``host_op``, ``pc``.
    """

    def __init__(self):
        super().__init__(
            {
                "addr": In(CSR_ADDR_BITS),
                "w_en": In(1),
                "w_data": In(32),
                "r_data": Out(32),
                "start": Out(1),
                "soft_reset": Out(1),
                "resume": Out(1),
                "host_error": Out(1),
                "host_code": Out(8),
                "stream_addr": Out(isa.ADDR_BITS),
                "n_cmds": Out(32),
                "mem_lo": Out(isa.ADDR_BITS),
                "mem_hi": Out(isa.ADDR_BITS + 1),
                "busy": In(1),
                "done": In(1),
                "error": In(8),
                "err_op": In(32),
                "ops_done": In(32),
                "cycles": In(64),
                "bytes_rd": In(64),
                "bytes_wr": In(64),
                "host_op": In(1),
                "pc": In(32),
            }
        )

    def elaborate(self, platform):
        m = Module()
        C = CSR
        ctrl_write = self.w_en & (self.addr == C.CTRL)
        m.d.comb += [
            self.start.eq(ctrl_write & self.w_data[0]),
            self.soft_reset.eq(ctrl_write & self.w_data[1]),
            self.resume.eq(ctrl_write & self.w_data[2]),
            self.host_error.eq(ctrl_write & self.w_data[3]),
            self.host_code.eq(self.w_data[CTRL_CODE_SHIFT : CTRL_CODE_SHIFT + 8]),
        ]
        with m.If(self.w_en):
            with m.Switch(self.addr):
                with m.Case(C.STREAM_ADDR):
                    m.d.sync += self.stream_addr.eq(self.w_data)
                with m.Case(C.N_CMDS):
                    m.d.sync += self.n_cmds.eq(self.w_data)
                with m.Case(C.MEM_LO):
                    m.d.sync += self.mem_lo.eq(self.w_data)
                with m.Case(C.MEM_HI):
                    # 0 means the full 4 GiB window (MEM_HI is one bit wider internally)
                    m.d.sync += self.mem_hi.eq(self.w_data | ((self.w_data == 0) << isa.ADDR_BITS))

        status = Signal(STATUS)
        m.d.comb += [
            status.busy.eq(self.busy),
            status.done.eq(self.done),
            status.error.eq(self.error),
        ]
        regs = {
            C.STATUS: status.as_value(),
            C.STREAM_ADDR: self.stream_addr,
            C.N_CMDS: self.n_cmds,
            C.ERR_OP: self.err_op,
            C.OPS_DONE: self.ops_done,
            C.CYCLES_LO: self.cycles[:32],
            C.CYCLES_HI: self.cycles[32:],
            C.BYTES_RD_LO: self.bytes_rd[:32],
            C.BYTES_RD_HI: self.bytes_rd[32:],
            C.BYTES_WR_LO: self.bytes_wr[:32],
            C.BYTES_WR_HI: self.bytes_wr[32:],
            C.MEM_LO: self.mem_lo,
            C.MEM_HI: self.mem_hi[:32],
            C.HOST_OP: self.host_op,
            C.PC: self.pc,
        }
        with m.Switch(self.addr):
            for off, val in regs.items():
                with m.Case(int(off)):
                    m.d.comb += self.r_data.eq(val)
        return m
