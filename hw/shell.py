"""The SoC shell: the accelerator core (``hw.accel.Accel``) behind standard AXI ports, a
block that Vivado IP integrator drops into a Zynq UltraScale+ design (KV260: the
``m_axi*`` ports to the PS's HP ports, ``s_axi`` from HPM0, ``irq`` to pl_ps_irq0).

Ports of ``AccelShell`` (Verilog names)
=======================================
``aclk``                 the one clock (the design clock; 250 MHz at the KV260 point)
``aresetn``              active-low reset, synchronous to ``aclk`` (e.g. from
                         proc_sys_reset's ``peripheral_aresetn``)
``s_axi_*``              AXI4-Lite slave, 32-bit data, ``csr_addr_bits`` (12) of address: the
                         register map of ``hw/csr.py`` (``hw.axi.AxiLiteCSR``: SLVERR on
                         unmapped offsets and partial-strobe writes)
``m_axi0_*`` ...         ``n_ports`` AXI4 masters, ``data_bytes`` x 8 (128) bits of data,
``m_axi{N-1}_*``         ``addr_bits`` (49) of address, INCR bursts of 1..9 beats that never
                         cross 4 KB, no IDs (``hw.axi.AxiDma``: request-level round-robin
                         striping, one shared realigner, per-port R FIFOs)
``irq``                  level interrupt: OR(IRQ_STATUS & IRQ_ENABLE) (``hw/csr.py``),
                         registered

Bus addresses: ``STREAM_ADDR_HI << 32 | device address`` (hw/csr.py).

The ID register reads ``hw.csr.design_id(shell.id_params())``: the core's build
parameters and the shell's (ports, widths, FIFO depths), so a driver can tell a bitstream
of another design point.

Driver sequence (``sim/shell_bench.py`` does exactly this through ``AxiLiteMaster``)
-------------------------------------------------------------------------------------
1. Read ID and VERSION; ID must equal ``AccelShell(<the host's design point>).ident``.
2. Put the memory image, KV cache, scratch and stream in one buffer that does not cross a
   4 GiB boundary; device address = bus address & 0xFFFF_FFFF.
3. Write MEM_LO / MEM_HI (the buffer's device range), STREAM_ADDR_LO / STREAM_ADDR_HI,
   N_CMDS, IRQ_STATUS = all ones (clear), IRQ_ENABLE = END, then CTRL = START.
4. Wait for ``irq`` (or poll STATUS.BUSY); read STATUS (DONE, ERROR), ERR_OP and the
   counters; write IRQ_STATUS = END. Every write of the stream has reached memory then.
5. Watchdog: CTRL = RESET, then poll STATUS.BUSY until 0 (the abort drains what is
   outstanding, so it needs a memory that answers; ``aresetn`` recovers from anything).

Default ``n_ports=5``: the KV260 point's 17.1 GB/s at 250 MHz is 68.4 bytes/cycle, and one
128-bit port carries 16 (4 GB/s); the read path sustains 14.2 bytes/cycle per port
(9 cycles per 128-byte request at any alignment), so 5 ports give 71.
"""

from __future__ import annotations

from amaranth import ClockDomain, ClockSignal, Module, ResetSignal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT_DESIGN_POINT, AccelConfig
from hw.accel import Accel
from hw.axi import AxiDma, AxiLiteCSR, axi4_master_members, axi_lite_slave_members
from hw.csr import design_id


class AccelShell(wiring.Component):
    """``Accel`` + ``AxiLiteCSR`` + ``AxiDma`` (see the module docstring)."""

    def __init__(
        self,
        dp: AccelConfig | str = DEFAULT_DESIGN_POINT,
        *,
        ops=None,
        csr_addr_bits: int = 12,
        rd_fifo_beats: int = 64,
        wr_outstanding: int = 2,
        gate_idle_engines: bool = False,
    ):
        # gate_idle_engines: see hw.accel (a faster Verilator model, same function; not
        # part of the ID). The AXI ports, their width and address bits: the design point's.
        core = Accel(dp, ops=ops, gate_idle_engines=gate_idle_engines)
        dp = core.dp
        n_ports, data_bytes, addr_bits = dp.axi_ports, dp.axi_data_bits // 8, dp.axi_addr_bits
        ports = dict(n_ports=n_ports, data_bytes=data_bytes, addr_bits=addr_bits)
        buffers = dict(rd_fifo_beats=rd_fifo_beats, wr_outstanding=wr_outstanding)
        dma = AxiDma(core.dma_bytes, **ports, **buffers)  # validates the parameters
        self.n_ports, self.data_bytes, self.addr_bits = n_ports, data_bytes, addr_bits
        self.csr_addr_bits = csr_addr_bits
        self._id_params = {
            "core": core.id_params(),
            "shell": {**dma.params(), "csr_addr_bits": csr_addr_bits},
        }
        self.ident = core.ident = design_id(self._id_params)
        self.core = core
        self.dma = dma
        self.bridge = AxiLiteCSR(csr_addr_bits)
        members = {
            "aclk": In(1),
            "aresetn": In(1),
            **axi_lite_slave_members("s_axi", csr_addr_bits),
        }
        for i in range(n_ports):
            members.update(axi4_master_members(f"m_axi{i}", addr_bits, data_bytes))
        members["irq"] = Out(1)
        super().__init__(members)

    def id_params(self) -> dict:
        """What the ID register hashes (``hw.csr.design_id``)."""
        return self._id_params

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync", local=True)
        m.d.comb += [ClockSignal("sync").eq(self.aclk), ResetSignal("sync").eq(~self.aresetn)]
        m.submodules.core = core = self.core
        m.submodules.dma = dma = self.dma
        m.submodules.csr_bridge = br = self.bridge
        # AXI ports: same names on the bridges as on the shell
        for name, member in self.signature.members.items():
            if name.startswith("s_axi_"):
                inner = getattr(br, name)
            elif name.startswith("m_axi"):
                inner = getattr(dma, name)
            else:
                continue
            outer = getattr(self, name)
            m.d.comb += inner.eq(outer) if member.flow == In else outer.eq(inner)
        # CSR bus
        m.d.comb += [
            core.csr_addr.eq(br.csr_addr),
            core.csr_w_en.eq(br.csr_w_en),
            core.csr_w_data.eq(br.csr_w_data),
            br.csr_r_data.eq(core.csr_r_data),
        ]
        # DMA port
        for name in (
            "mem_rd_valid",
            "mem_rd_addr",
            "mem_rd_len",
            "mem_rdata_ready",
            "mem_wr_valid",
            "mem_wr_addr",
            "mem_wr_len",
            "mem_wr_data",
        ):
            m.d.comb += getattr(dma, name).eq(getattr(core, name))
        for name in (
            "mem_rd_ready",
            "mem_rdata_valid",
            "mem_rdata",
            "mem_rdata_err",
            "mem_wr_ready",
            "mem_wr_err",
            "mem_wr_err_op",
            "mem_wr_busy",
        ):
            m.d.comb += getattr(core, name).eq(getattr(dma, name))
        m.d.comb += [
            dma.cmd_index.eq(core.cmd_index),
            dma.addr_hi.eq(core.stream_addr_hi),
            self.irq.eq(core.irq),
        ]
        return m


def synth_tops() -> dict:
    """None for ``make synth``: the shell is ``accel`` (synthesized whole there) plus the
    bridges of ``hw.axi`` (synthesized alone); a second whole-top run would double the
    longest synthesis."""
    return {}
