"""The AXI4-Lite CSR slave of the AXI shell (hw.axi.AxiLiteCSR) in front of the real
register block: every register of the one map, SLVERR on unmapped offsets and partial
strobes, the interrupt, AW/W in any order, B/R backpressure (cocotb on Verilator,
cocotbext-axi AxiLiteMaster; bench: sim/axi_lite_bench.py)."""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.axi import AxiLiteCSR, axi_lite_slave_members
from hw.csr import CSRBlock
from sim.runner import run_bench

IDENT, CYCLES, PC = 0x5EED_F00D, 0x1122_3344_5566_7788, 0x0ABC_DEF0


class LiteCSR(wiring.Component):
    """AxiLiteCSR + CSRBlock; the core-side inputs tied to known values; ``ev_end`` in,
    the block's ``OUTS`` out."""

    OUTS = ("irq", "start", "soft_reset")

    def __init__(self):
        outs = {name: Out(1) for name in self.OUTS}
        super().__init__({**axi_lite_slave_members("s_axi", 12), "ev_end": In(1), **outs})

    def elaborate(self, platform):
        m = Module()
        m.submodules.br = br = AxiLiteCSR(12)
        m.submodules.csr = csr = CSRBlock(IDENT)
        for name, member in self.signature.members.items():
            if name.startswith("s_axi_"):
                inner, outer = getattr(br, name), getattr(self, name)
                m.d.comb += inner.eq(outer) if member.flow == In else outer.eq(inner)
        # the bridge's register bus: its csr_addr, csr_w_en, csr_w_data are the block's
        m.d.comb += [
            getattr(csr, n).eq(getattr(br, f"csr_{n}")) for n in ("addr", "w_en", "w_data")
        ]
        m.d.comb += [
            br.csr_r_data.eq(csr.r_data),
            csr.cycles.eq(CYCLES),
            csr.pc.eq(PC),
            csr.ev_end.eq(self.ev_end),
        ]
        m.d.comb += [getattr(self, name).eq(getattr(csr, name)) for name in self.OUTS]
        return m


def test_axi_lite():
    params = {"pause": 0.4, "ident": IDENT, "cycles": CYCLES, "pc": PC}
    tests = ("test_registers", "test_unmapped_and_strobes", "test_irq")
    run_bench(
        LiteCSR(),
        bench="sim.axi_lite_bench",
        name="axi_lite",
        params=params,
        build_key={"addr_bits": 12, "ident": IDENT},
        expect=(*tests, "test_channel_order_and_backpressure"),
    )
