"""cocotb bench of the AXI SoC shell ``hw.shell.AccelShell`` running a transformer layer.

The structure of ``sim/accel_layer_bench.py``, through AXI: a cocotbext-axi
``AxiLiteMaster`` programs the registers (``hw.csr.REGISTERS``) over ``s_axi``, an
``AxiRam`` behind every master port ``m_axi{i}`` serves one shared memory, with random
pauses on all five channels of every port (and of the AXI-Lite port) and random read
latency; ``sim.axi_util.AxiChecker`` asserts the AXI rules on every port, with the
stream's regions (the runtime's address map) as the only bytes the shell may touch and
STREAM_ADDR_HI (``SEGMENT``, not 0) as the upper bus address bits. The bench waits for
the interrupt line (IRQ_ENABLE.END), not for a status poll.

* ``test_layer``: prefill then decode steps over the KV cache the RTL wrote; after each
  step the memory equals the golden backend's, byte for byte.
* ``test_bus_errors_and_reuse``: SLVERR injected on a read of the first TLMM's weights in
  a layer step, on a RESIDUAL's source, on its destination (a write: the error arrives
  after the command has finished) and on a command of the stream itself: STATUS.ERROR
  is BUS_ERROR and ERR_OP the index of that command; after CTRL.RESET the same top runs
  a good stream (the layer step again, byte-identical to golden).
* ``test_reset_mid_stream``: CTRL.RESET while a layer step runs aborts it (the running
  engine reset, outstanding transfers drained, STATUS clear, IRQ END raised), and the
  step then runs again byte-identical to golden.
* ``test_id``: ID is ``hw.csr.design_id`` of the shell's build parameters; VERSION.

Parameters (``sim.streams.bench_params``): ``ports``, ``pause``, ``max_latency``,
``hidden``, ``ffn``, ``heads``, ``kv_heads``, ``prefill``, ``decode``, ``ident``.
"""

from __future__ import annotations

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout

from golden import isa
from golden.isa import ErrorCode, Opcode, command
from hw.csr import CSR, CTRL_RESET, CTRL_START, IRQ_END, VERSION_VALUE
from sim.axi_util import AxiChecker, AxiPorts, lite_master
from sim.streams import CLOCK_NS, bench_params, bench_rng, record
from sim.top_bench import BumpMemory, Layer, layer_steps, read_status, small_residual

P = bench_params()
N_PORTS = int(P.get("ports", 5))
PAUSE = float(P.get("pause", 0.3))
MAX_LAT = int(P.get("max_latency", 8))
MEM = 1 << 20
SEGMENT = 0x1  # STREAM_ADDR_HI: bus address = SEGMENT << 32 | device
OKAY = 0


class ShellBench(BumpMemory):
    def __init__(self, dut, rng, pause=PAUSE, max_lat=MAX_LAT):
        super().__init__(MEM, 64)
        self.dut, self.rng = dut, rng
        self.lite = lite_master(dut, dut.aclk, dut.aresetn, rng, pause, reset_active_level=False)
        self.ports = AxiPorts(
            dut,
            N_PORTS,
            self.mem,
            dut.aclk,
            dut.aresetn,
            rng=rng,
            pause=pause,
            max_latency=max_lat,
            reset_active_level=False,
        )
        self.chk = AxiChecker(dut, N_PORTS, dut.aclk)
        self.chk.segment = SEGMENT
        self.chk.max_burst = 9  # a 128-byte request at any alignment

    async def start(self):
        d = self.dut
        Clock(d.aclk, CLOCK_NS, unit="ns").start(start_high=False)
        d.aresetn.value = 0
        await ClockCycles(d.aclk, 4)
        d.aresetn.value = 1
        await ClockCycles(d.aclk, 2)

    # ------------------------------------------------------------------ registers
    async def csr_write(self, reg, value):
        r = await self.lite.write(int(reg), int(value).to_bytes(4, "little"))
        assert int(r.resp) == OKAY, (reg, r)

    async def csr_read(self, reg) -> int:
        r = await self.lite.read(int(reg), 4)
        assert int(r.resp) == OKAY, (reg, r)
        return int.from_bytes(r.data, "little")

    async def status(self) -> dict:
        regs = await read_status(self.csr_read)
        return {**regs, "irq_status": await self.csr_read(CSR.IRQ_STATUS)}

    async def launch(self, cmds, at=None, window=None, regions=None):
        words = isa.encode_stream(cmds)
        addr = self.put(words) if at is None else at
        self.mem[addr : addr + len(words)] = words
        lo, hi = window if window is not None else (64, self.brk)
        self.chk.regions = regions if regions is not None else [(lo, hi)]
        await self.csr_write(CSR.MEM_LO, lo)
        await self.csr_write(CSR.MEM_HI, hi)
        await self.csr_write(CSR.STREAM_ADDR_LO, addr)
        await self.csr_write(CSR.STREAM_ADDR_HI, SEGMENT)
        await self.csr_write(CSR.N_CMDS, len(words) // isa.COMMAND_BYTES)
        await self.csr_write(CSR.IRQ_STATUS, 0xFFFF_FFFF)
        await self.csr_write(CSR.IRQ_ENABLE, IRQ_END)
        await self.csr_write(CSR.CTRL, CTRL_START)
        return addr

    async def wait_irq(self, max_cycles):
        if not int(self.dut.irq.value):
            await with_timeout(RisingEdge(self.dut.irq), max_cycles * CLOCK_NS, "ns")
        st = await self.status()
        assert st["busy"] == 0 and st["irq_status"] & IRQ_END, st
        await self.csr_write(CSR.IRQ_STATUS, IRQ_END)  # W1C
        assert int(self.dut.irq.value) == 0 or (await self.csr_read(CSR.IRQ_STATUS)) == 0
        return st

    async def run_stream(self, cmds, max_cycles=400_000, **kw) -> dict:
        await self.launch(cmds, **kw)
        st = await self.wait_irq(max_cycles)
        self.chk.check()
        return st


class ShellLayer(Layer):
    """A layer (``sim.top_bench.Layer``) in the shell bench's memory; ``run`` runs a step's
    commands through the shell and compares."""

    def __init__(self, b: ShellBench, rng):
        super().__init__(b.mem, rng, P)
        self.b = b
        b.brk = self.gd.brk

    async def run(self, cmds, rows, **kw):
        st = await self.b.run_stream(
            cmds,
            at=self.a.addr("stream"),
            window=self.window,
            regions=self.regions,
            max_cycles=3_000_000,
            **kw,
        )
        assert (st["done"], st["error"], st["ops"]) == (1, 0, len(cmds)), st
        self.compare(rows)
        return st


async def _layer_bench(dut, tag: str):
    """A started shell bench (rng ``bench_rng(tag)``) and a layer in its memory."""
    rng = bench_rng(tag)
    b = ShellBench(dut, rng)
    await b.start()
    return b, ShellLayer(b, rng)


@cocotb.test()
async def test_layer(dut):
    """Prefill then decode steps of one layer through the AXI top == golden memory."""
    b, lay = await _layer_bench(dut, "shell_layer")
    steps = layer_steps(P)
    for rows in steps:
        cmds, _ = lay.step(rows)
        await b.csr_write(CSR.CTRL, CTRL_RESET)  # counters per step
        st = await lay.run(cmds, rows)
        record("test_layer", cmds=len(cmds), cycles=st["cycles"])  # summed over steps
        lay.pos += rows
    record("test_layer", ports=N_PORTS, steps=str(steps), **b.chk.bursts)


@cocotb.test()
async def test_bus_errors_and_reuse(dut):
    """SLVERR on a read or a write ends the stream with BUS_ERROR at the command that
    issued it; after a soft reset the top runs good streams again."""
    rng = bench_rng("shell_errors")
    b = ShellBench(dut, rng)
    await b.start()
    seg = SEGMENT << 32

    # (1) a read error in the middle of a layer step: the first TLMM's weights
    lay = ShellLayer(b, rng)
    rows = 3
    cmds, before = lay.step(rows)
    k = next(i for i, c in enumerate(cmds) if c.op == Opcode.TLMM)
    w = cmds[k].args["weights"]
    b.ports.err_rd.append((seg + w + 40, seg + w + 41))
    st = await b.run_stream(cmds, at=lay.a.addr("stream"), window=lay.window, regions=lay.regions)
    assert (st["error"], st["err_op"], st["done"]) == (ErrorCode.BUS_ERROR.value, k, 0), (k, st)
    b.ports.err_rd.clear()
    await b.csr_write(CSR.CTRL, CTRL_RESET)
    st = await b.status()
    assert (st["busy"], st["done"], st["error"], st["err_op"]) == (0, 0, 0, 0), st
    b.mem[:] = before
    await lay.run(cmds, rows)  # reusable, byte-identical
    lay.pos += rows

    # (2) small streams: a RESIDUAL's source (read), its destination (a write), the
    # stream's own command 3
    b.brk = lay.gd.brk
    src = b.put(np.arange(16, dtype=np.int32))
    dst = b.alloc(2 * 8 * 4)
    sc = b.put(isa.pack_scales(np.full(2, 1 << 15), np.zeros(2)))
    nop, end = command(Opcode.NOP), command(Opcode.END)
    good = small_residual(src, sc, dst)
    stream_at = b.alloc(64 * 8)
    window = (lay.gd.alloc_base, b.brk)
    for kind, lo, hi, at in (
        ("read", src + 4, src + 5, 2),
        ("write", dst + 4, dst + 5, 2),
        ("fetch", stream_at + 3 * 64 + 5, stream_at + 3 * 64 + 6, 3),
    ):
        lst = b.ports.err_rd if kind in ("read", "fetch") else b.ports.err_wr
        lst.append((seg + lo, seg + hi))
        st = await b.run_stream([nop, nop, good, good, nop, end], at=stream_at, window=window)
        assert (st["error"], st["err_op"], st["done"]) == (ErrorCode.BUS_ERROR.value, at, 0), (
            kind,
            st,
        )
        lst.clear()
        await b.csr_write(CSR.CTRL, CTRL_RESET)
        st = await b.run_stream([nop, good, end], at=stream_at, window=window)
        assert (st["error"], st["done"], st["ops"]) == (0, 1, 3), (kind, st)


@cocotb.test()
async def test_reset_mid_stream(dut):
    """CTRL.RESET during a layer step aborts it cleanly; the step then runs == golden."""
    b, lay = await _layer_bench(dut, "shell_reset")
    rows = 4
    cmds, before = lay.step(rows)
    for delay in (300, 1500):
        await b.launch(cmds, at=lay.a.addr("stream"), window=lay.window, regions=lay.regions)
        await ClockCycles(dut.aclk, delay)
        assert (await b.csr_read(CSR.STATUS)) & 1, "the step ended before the reset"
        await b.csr_write(CSR.CTRL, CTRL_RESET)
        for _ in range(10_000):
            if not (await b.csr_read(CSR.STATUS)) & 1:
                break
        st = await b.status()
        assert (st["busy"], st["done"], st["error"]) == (0, 0, 0), st
        assert st["irq_status"] & IRQ_END, st  # the abort is a stream end
        await b.csr_write(CSR.IRQ_STATUS, IRQ_END)
        b.chk.check()
        b.mem[:] = before
        await b.csr_write(CSR.CTRL, CTRL_RESET)
        await lay.run(cmds, rows)


@cocotb.test()
async def test_id(dut):
    """ID = design_id of the build parameters (passed by the wrapper); VERSION."""
    rng = bench_rng("shell_id")
    b = ShellBench(dut, rng)
    await b.start()
    assert await b.csr_read(CSR.ID) == int(P["ident"])
    assert await b.csr_read(CSR.VERSION) == VERSION_VALUE
