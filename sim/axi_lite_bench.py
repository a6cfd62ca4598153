"""cocotb bench of ``hw.axi.AxiLiteCSR`` in front of the real register block
(``hw.csr.CSRBlock``; the wrapper is ``sim.test_axi_lite.LiteCSR``).

A cocotbext-axi ``AxiLiteMaster`` with random pauses on all five channels (AW/W valid,
B/R ready: backpressure) writes and reads every register of ``hw.csr.REGISTERS``: RW
registers read back what was written, RO registers (ID, VERSION, the counters tied to
known values) read their values and ignore writes, CTRL writes give exactly one pulse,
unmapped offsets and partial-strobe writes answer SLVERR and change nothing, the
interrupt follows IRQ_STATUS & IRQ_ENABLE with W1C clearing. A pin-level test drives AW
and W in both orders and holds B and R ready low.

Parameters (``sim.streams.bench_params``): ``pause``, ``ident``, ``cycles``, ``pc``.
"""

from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

from hw.csr import (
    CSR,
    CTRL_RESET,
    CTRL_START,
    IRQ_END,
    MAPPED_OFFSETS,
    REG,
    VERSION_VALUE,
)
from sim.axi_util import lite_master
from sim.streams import CLOCK_NS, bench_params, bench_rng, record

P = bench_params()
PAUSE = float(P.get("pause", 0.4))
IDENT = int(P["ident"])
CYCLES = int(P["cycles"])
PC = int(P["pc"])
OKAY, SLVERR = 0, 2


class Lite:
    def __init__(self, dut, rng, pause=PAUSE):
        self.dut = dut
        self.m = lite_master(dut, dut.clk, dut.rst, rng, pause)
        self.starts = 0
        self.resets = 0
        cocotb.start_soon(self._count())

    async def _count(self):
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            self.starts += int(self.dut.start.value)
            self.resets += int(self.dut.soft_reset.value)

    async def wr(self, off, value, nbytes=4):
        r = await self.m.write(off, int(value).to_bytes(4, "little")[:nbytes])
        return int(r.resp)

    async def rd(self, off):
        r = await self.m.read(off, 4)
        return int.from_bytes(r.data, "little"), int(r.resp)


async def _start(dut):
    Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)
    dut.ev_end.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)


@cocotb.test()
async def test_registers(dut):
    """Every register through AXI-Lite with random pauses on all channels."""
    rng = bench_rng("lite_regs")
    await _start(dut)
    b = Lite(dut, rng)
    ro_values = {
        CSR.ID: IDENT,
        CSR.VERSION: VERSION_VALUE,
        CSR.CYCLES_LO: CYCLES & 0xFFFF_FFFF,
        CSR.CYCLES_HI: CYCLES >> 32,
        CSR.PC: PC,
    }
    rw = [CSR.STREAM_ADDR_LO, CSR.STREAM_ADDR_HI, CSR.N_CMDS, CSR.MEM_LO]
    for _ in range(3):
        vals = {r: int(rng.integers(0, 1 << 32)) for r in rw}
        for r, v in vals.items():
            assert await b.wr(r, v) == OKAY, r.name
        for r, v in vals.items():
            assert await b.rd(r) == (v, OKAY), r.name
    assert await b.wr(CSR.MEM_HI, 0) == OKAY
    assert await b.rd(CSR.MEM_HI) == (0, OKAY)  # 0 = whole window (bit 32 hidden)
    for r, v in ro_values.items():
        assert await b.rd(r) == (v, OKAY), (r.name, await b.rd(r))
        assert await b.wr(r, ~v & 0xFFFF_FFFF) == OKAY  # RO: ignored
        assert await b.rd(r) == (v, OKAY), r.name
    # every mapped register answers OKAY; CTRL reads 0
    for off in sorted(MAPPED_OFFSETS):
        assert (await b.rd(off))[1] == OKAY, hex(off)
    assert await b.rd(CSR.CTRL) == (0, OKAY)
    s0, r0 = b.starts, b.resets
    assert await b.wr(CSR.CTRL, CTRL_START) == OKAY
    assert await b.wr(CSR.CTRL, CTRL_RESET) == OKAY
    await ClockCycles(dut.clk, 2)
    assert (b.starts - s0, b.resets - r0) == (1, 1), (b.starts - s0, b.resets - r0)
    record("test_registers", registers=len(MAPPED_OFFSETS))


@cocotb.test()
async def test_unmapped_and_strobes(dut):
    """SLVERR (and no effect) on unmapped offsets and partial-strobe writes."""
    rng = bench_rng("lite_unmapped")
    await _start(dut)
    b = Lite(dut, rng)
    unmapped = [o for o in range(0, 1 << len(dut.s_axi_awaddr), 4) if o not in MAPPED_OFFSETS]
    picks = [int(o) for o in rng.choice(unmapped, 24, replace=False)]
    for off in picks:
        assert await b.rd(off) == (0, SLVERR), hex(off)
        assert await b.wr(off, 0xFFFF_FFFF) == SLVERR, hex(off)
    # unaligned offsets of mapped words: not registers
    assert (await b.rd(CSR.N_CMDS + 2))[1] == SLVERR
    assert await b.wr(CSR.N_CMDS, 0x1234_5678) == OKAY
    assert await b.wr(CSR.N_CMDS, 0xAAAA, nbytes=2) == SLVERR  # partial strobes
    assert await b.rd(CSR.N_CMDS) == (0x1234_5678, OKAY)
    s0 = b.starts
    assert await b.wr(CSR.CTRL, CTRL_START, nbytes=1) == SLVERR
    await ClockCycles(dut.clk, 2)
    assert b.starts == s0
    # the mapped offsets all come from the one definition
    assert set(MAPPED_OFFSETS) == {r.offset for r in REG.values()}


@cocotb.test()
async def test_irq(dut):
    """irq = OR(IRQ_STATUS & IRQ_ENABLE); events stick; W1C clears; RESET clears."""
    rng = bench_rng("lite_irq")
    await _start(dut)
    b = Lite(dut, rng)

    async def event():
        await FallingEdge(dut.clk)
        dut.ev_end.value = 1
        await FallingEdge(dut.clk)
        dut.ev_end.value = 0
        await ClockCycles(dut.clk, 3)

    assert await b.wr(CSR.IRQ_ENABLE, 0) == OKAY
    await event()
    assert int(dut.irq.value) == 0
    assert await b.rd(CSR.IRQ_STATUS) == (IRQ_END, OKAY)
    assert await b.wr(CSR.IRQ_ENABLE, IRQ_END) == OKAY
    await ClockCycles(dut.clk, 3)
    assert int(dut.irq.value) == 1  # a pending event, now enabled
    assert await b.wr(CSR.IRQ_STATUS, 0) == OKAY  # writing 0 clears nothing
    await ClockCycles(dut.clk, 3)
    assert int(dut.irq.value) == 1
    assert await b.wr(CSR.IRQ_STATUS, IRQ_END) == OKAY  # W1C
    await ClockCycles(dut.clk, 3)
    assert int(dut.irq.value) == 0
    assert await b.rd(CSR.IRQ_STATUS) == (0, OKAY)
    await event()
    assert int(dut.irq.value) == 1
    assert await b.wr(CSR.CTRL, CTRL_RESET) == OKAY
    await ClockCycles(dut.clk, 3)
    assert int(dut.irq.value) == 0 and await b.rd(CSR.IRQ_STATUS) == (0, OKAY)


@cocotb.test()
async def test_channel_order_and_backpressure(dut):
    """Pin level: W before AW, AW before W, both at once; B and R held by ready low."""
    await _start(dut)
    d = dut
    for s in (d.s_axi_awvalid, d.s_axi_wvalid, d.s_axi_arvalid, d.s_axi_bready, d.s_axi_rready):
        s.value = 0
    d.s_axi_awprot.value = d.s_axi_arprot.value = 0

    async def cycle():
        await FallingEdge(d.clk)

    await cycle()  # drive at falling edges from here on

    async def send(ch, **vals):
        """Hold ch valid with vals until the handshake (sampled before the edge)."""
        for k, v in vals.items():
            getattr(d, f"s_axi_{k}").value = v
        getattr(d, f"s_axi_{ch}valid").value = 1
        while True:
            await ReadOnly()
            ok = int(getattr(d, f"s_axi_{ch}ready").value)
            await cycle()
            if ok:
                break
        getattr(d, f"s_axi_{ch}valid").value = 0

    async def wait_valid(ch):
        for _ in range(4):
            await ReadOnly()
            seen = int(getattr(d, f"s_axi_{ch}valid").value)
            if seen:
                await cycle()
                return
            await cycle()
        raise AssertionError(f"no {ch}valid")

    async def hold_then_take(ch, cycles, stable):
        """ch's response waits ``cycles`` cycles (ready low), valid and ``stable()``
        each cycle; then it is taken (ready for one cycle)."""
        for _ in range(cycles):
            await ReadOnly()
            assert int(getattr(d, f"s_axi_{ch}valid").value) == 1 and stable()
            await cycle()
        getattr(d, f"s_axi_{ch}ready").value = 1
        await cycle()
        getattr(d, f"s_axi_{ch}ready").value = 0

    async def write(order, value, hold_b=5):
        if order == "w_first":
            await send("w", wdata=value, wstrb=0xF)
            for _ in range(3):
                await ReadOnly()
                assert int(d.s_axi_bvalid.value) == 0, "B before AW"
                await cycle()
            await send("aw", awaddr=int(CSR.N_CMDS))
        elif order == "aw_first":
            await send("aw", awaddr=int(CSR.N_CMDS))
            for _ in range(3):
                await ReadOnly()
                assert int(d.s_axi_bvalid.value) == 0, "B before W"
                await cycle()
            await send("w", wdata=value, wstrb=0xF)
        else:
            d.s_axi_awaddr.value, d.s_axi_wdata.value, d.s_axi_wstrb.value = (
                int(CSR.N_CMDS),
                value,
                0xF,
            )
            d.s_axi_awvalid.value = d.s_axi_wvalid.value = 1
            await cycle()
            d.s_axi_awvalid.value = d.s_axi_wvalid.value = 0  # both ready when idle
        await wait_valid("b")  # the write is performed a cycle later
        # B waits (bready low) with its response stable
        await hold_then_take("b", hold_b, lambda: int(d.s_axi_bresp.value) == OKAY)
        await ReadOnly()
        assert int(d.s_axi_bvalid.value) == 0
        await cycle()

    async def read(off, hold_r=4):
        await send("ar", araddr=int(off))
        await wait_valid("r")
        await ReadOnly()
        first = int(d.s_axi_rdata.value)
        await cycle()
        await hold_then_take("r", hold_r, lambda: int(d.s_axi_rdata.value) == first)
        return first

    for i, order in enumerate(("w_first", "aw_first", "both", "w_first")):
        await write(order, 0x100 + i)
        assert await read(CSR.N_CMDS) == 0x100 + i, order
    assert await read(CSR.ID) == IDENT
