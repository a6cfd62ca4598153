"""cocotb bench of ``hw.accel.Accel``: whole commands through the DMA port and the CSRs.

A Python memory model serves the DMA port with random stalls on every handshake
(``rd_ready``, response ``valid``, ``wr_ready``) and random latency; a command stream is
written into it, START is written through the CSR bus, and the results are checked
against the golden models only: TLMM accumulators against ``golden.tlmm.tlmm``, error
codes/op indices against what ``golden/isa.py`` specifies.

Parameters (``sim.streams.bench_params``): ``stall`` (probability that each of
rd_ready / rdata_valid / wr_ready is low in a cycle), ``max_latency``, ``ops`` (random
TLMM commands per stream).
"""

from __future__ import annotations

from collections import deque

import cocotb
import numpy as np

from golden import isa
from golden import tlmm as golden
from golden.config import DEFAULT
from golden.isa import ErrorCode, Opcode, command, dma_bytes
from hw.csr import (
    CSR,
    CTRL_CODE_SHIFT,
    CTRL_HOST_ERROR,
    CTRL_RESET,
    CTRL_RESUME,
    CTRL_START,
    IRQ_END,
    IRQ_HOST,
)
from sim.streams import CLOCK_NS, bench_params, bench_rng, record
from sim.top_bench import BumpMemory, read_status

P = bench_params()
STALL = float(P.get("stall", 0.4))
MAX_LAT = int(P.get("max_latency", 12))
N_OPS = int(P.get("ops", 4))
CFG = DEFAULT
W = dma_bytes(CFG)
MEM_SIZE = 1 << 16
BASE = 64  # first usable byte (the window checked by the RTL)


class Bench(BumpMemory):
    def __init__(
        self, dut, rng, stall: float = STALL, max_lat: int = MAX_LAT, mem_size: int = MEM_SIZE
    ):
        super().__init__(mem_size, BASE)
        self.dut, self.rng = dut, rng
        self.stall, self.max_lat = stall, max_lat
        self.queue: deque = deque()  # [ready_cycle, addr, len]
        self.offered = False
        self.cycle = 0
        self.max_queue = 0

    def _go(self) -> bool:
        return self.stall <= 0 or self.rng.random() >= self.stall

    async def start(self):
        from cocotb.clock import Clock
        from cocotb.triggers import FallingEdge

        d = self.dut
        Clock(d.clk, CLOCK_NS, unit="ns").start(start_high=False)
        for s in (d.csr_w_en, d.mem_rd_ready, d.mem_rdata_valid, d.mem_wr_ready):
            s.value = 0
        d.csr_addr.value = 0
        d.csr_w_data.value = 0
        d.mem_rdata.value = 0
        await FallingEdge(d.clk)
        d.rst.value = 1
        for _ in range(2):
            await FallingEdge(d.clk)
        d.rst.value = 0

    async def step(self, csr_write=None, csr_read=None):
        """One cycle: drive at the falling edge, sample handshakes in ReadOnly."""
        from cocotb.triggers import FallingEdge, ReadOnly

        d = self.dut
        await FallingEdge(d.clk)
        if csr_write is not None:
            d.csr_addr.value, d.csr_w_data.value, d.csr_w_en.value = (
                int(csr_write[0]),
                int(csr_write[1]),
                1,
            )
        else:
            d.csr_w_en.value = 0
            if csr_read is not None:
                d.csr_addr.value = int(csr_read)
        d.mem_rd_ready.value = int(self._go())
        d.mem_wr_ready.value = int(self._go())
        if not self.offered and self.queue and self.queue[0][0] <= self.cycle and self._go():
            _, a, n = self.queue[0]
            beat = bytes(self.mem[a : a + n]) + bytes(W - n)
            d.mem_rdata.value = int.from_bytes(beat, "little")
            self.offered = True
        d.mem_rdata_valid.value = int(self.offered)
        await ReadOnly()
        out = int(d.csr_r_data.value) if csr_read is not None else None
        if self.offered and int(d.mem_rdata_ready.value):
            self.queue.popleft()
            self.offered = False
        if int(d.mem_rd_valid.value) and int(d.mem_rd_ready.value):
            a, n = int(d.mem_rd_addr.value), int(d.mem_rd_len.value)
            assert 1 <= n <= W and a + n <= len(self.mem), (
                f"read request [{a:#x}, +{n}) out of bounds"
            )
            lat = 1 + int(self.rng.integers(0, self.max_lat + 1))
            self.queue.append([self.cycle + lat, a, n])
            self.max_queue = max(self.max_queue, len(self.queue))
        if int(d.mem_wr_valid.value) and int(d.mem_wr_ready.value):
            a, n = int(d.mem_wr_addr.value), int(d.mem_wr_len.value)
            assert 1 <= n <= W and a + n <= len(self.mem), f"write [{a:#x}, +{n}) out of bounds"
            data = int(d.mem_wr_data.value).to_bytes(W, "little")
            self.mem[a : a + n] = data[:n]
        self.cycle += 1
        return out

    async def csr_write(self, reg, value):
        await self.step(csr_write=(reg, value))

    async def csr_read(self, reg) -> int:
        return await self.step(csr_read=reg)

    async def run_stream(self, cmds, max_cycles=200_000, host=None, at=None, window=None) -> dict:
        """Write the stream (at ``at``, else a new allocation), start it, step until idle;
        ``host(pc)`` answers HOST_OP (returns a CTRL value), default RESUME. ``window``:
        (MEM_LO, MEM_HI), default (BASE, brk). Returns the status registers."""
        words = isa.encode_stream(cmds) if not isinstance(cmds, (bytes, bytearray)) else bytes(cmds)
        if at is None:
            addr = self.put(words)
        else:
            addr = at
            self.mem[at : at + len(words)] = words
        lo, hi = window if window is not None else (BASE, self.brk)
        await self.csr_write(CSR.MEM_LO, lo)
        await self.csr_write(CSR.MEM_HI, hi)
        await self.csr_write(CSR.STREAM_ADDR, addr)
        await self.csr_write(CSR.N_CMDS, len(words) // isa.COMMAND_BYTES)
        await self.csr_write(CSR.CTRL, CTRL_START)
        start = self.cycle
        await self.step()  # values sampled in ReadOnly precede the edge
        host_ops = []
        while True:
            assert self.cycle - start < max_cycles, "stream did not finish"
            if int(self.dut.host_req.value):
                pc = await self.csr_read(CSR.PC)
                host_ops.append(pc)
                await self.csr_write(CSR.CTRL, host(pc) if host else CTRL_RESUME)
                await self.step()
                continue
            if not int(self.dut.busy.value):
                break
            await self.step()
        regs = await read_status(self.csr_read)
        return {**regs, "host_ops": host_ops, "wall_cycles": self.cycle - start}


def _tlmm_op(b: Bench, rng, rows, k, n):
    x = rng.integers(-128, 128, (rows, k), dtype=np.int8)
    w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    xs = b.put(x)
    wa = b.put(isa.pack_tlmm_weights(w, CFG.tlmm))
    dst = b.alloc(rows * n * 4)
    cmd = command(Opcode.TLMM, src=xs, weights=wa, dst=dst, rows=rows, k=k, n=n)
    return cmd, dst, golden.tlmm(x, w, CFG.tlmm)


@cocotb.test()
async def test_tlmm_ops(dut):
    """Random TLMM commands (K, N not multiples of G*T, Q; several tokens) == golden.tlmm."""
    rng = bench_rng("tlmm_ops")
    b = Bench(dut, rng)
    await b.start()
    GT = CFG.tlmm.group * CFG.tlmm.tables
    ops = []
    for _ in range(N_OPS):
        rows = int(rng.integers(1, 4))
        k = int(rng.integers(1, 3 * GT))
        n = int(rng.integers(1, 4 * CFG.tlmm.replicas + 3))
        ops.append(_tlmm_op(b, rng, rows, k, n))
    cmds = []
    for c, _, _ in ops:
        cmds += [c, command(Opcode.NOP)]
    st = await b.run_stream(cmds + [command(Opcode.END)])
    assert st["error"] == 0 and st["done"] == 1, st
    assert st["ops"] == len(cmds) + 1
    for i, (c, dst, want) in enumerate(ops):
        got = np.frombuffer(bytes(b.mem[dst : dst + want.size * 4]), dtype="<i4").reshape(
            want.shape
        )
        assert np.array_equal(got, want), f"op {i} ({c}): accumulators differ from golden.tlmm"
    record("test_tlmm_ops", max_outstanding=b.max_queue, stream_cycles=st["cycles"])


@cocotb.test()
async def test_errors(dut):
    """UNKNOWN_OPCODE, ADDR_RANGE, BAD_DIM, ALIGN and MISSING_END name the failing command."""
    rng = bench_rng("errors")
    b = Bench(dut, rng)
    await b.start()
    nop, end = command(Opcode.NOP), command(Opcode.END)
    bad = bytearray(isa.encode(nop))
    bad[0] = 0x7E
    st = await b.run_stream(isa.encode(nop) + isa.encode(nop) + bytes(bad) + isa.encode(end))
    assert (st["error"], st["err_op"], st["done"]) == (ErrorCode.UNKNOWN_OPCODE.value, 2, 0), st
    assert st["ops"] == 2
    cases = [
        (dict(dst=MEM_SIZE - 64), ErrorCode.ADDR_RANGE),
        (dict(src=8), ErrorCode.ADDR_RANGE),
        (dict(n=0), ErrorCode.BAD_DIM),
        (dict(k=4097), ErrorCode.BAD_DIM),
        (dict(dst=None), ErrorCode.ALIGN),
    ]
    for change, code in cases:
        await b.csr_write(CSR.CTRL, CTRL_RESET)
        c, dst, _ = _tlmm_op(b, rng, 2, 40, 5)
        f = dict(c.args)
        f.update({k: (dst + 2 if v is None else v) for k, v in change.items()})
        st = await b.run_stream([nop, command(Opcode.TLMM, **f), end])
        assert (st["error"], st["err_op"]) == (code.value, 1), (change, st)
    await b.csr_write(CSR.CTRL, CTRL_RESET)
    st = await b.run_stream([nop, nop, nop])
    assert (st["error"], st["err_op"], st["ops"]) == (ErrorCode.MISSING_END.value, 2, 3), st


@cocotb.test()
async def test_host_ops(dut):
    """Ops the RTL does not execute stop with HOST_OP at their index; RESUME continues,
    HOST_ERROR ends the stream with the host's code at that index."""
    rng = bench_rng("host_ops")
    b = Bench(dut, rng)
    await b.start()
    emb = command(Opcode.EMBED, tokens=BASE, table=BASE, dst=BASE, rows=1, dim=1, vocab=1)
    c, dst, want = _tlmm_op(b, rng, 1, 30, 6)
    st = await b.run_stream([emb, c, emb, command(Opcode.END)])
    assert st["host_ops"] == [0, 2] and st["done"] == 1 and st["error"] == 0, st
    # both interrupt events are pending (IRQ_ENABLE is 0: the line stays low)
    assert await b.csr_read(CSR.IRQ_STATUS) == IRQ_END | IRQ_HOST
    assert int(dut.irq.value) == 0
    got = np.frombuffer(bytes(b.mem[dst : dst + want.size * 4]), dtype="<i4").reshape(want.shape)
    assert np.array_equal(got, want)
    await b.csr_write(CSR.CTRL, CTRL_RESET)
    code = ErrorCode.BAD_OPERAND.value
    st = await b.run_stream(
        [command(Opcode.NOP), emb, command(Opcode.END)],
        host=lambda pc: CTRL_HOST_ERROR | (code << CTRL_CODE_SHIFT),
    )
    assert (st["error"], st["err_op"], st["done"]) == (code, 1, 0), st


@cocotb.test()
async def test_throughput(dut):
    """No stalls, latency 1: a 64x256 projection runs one weight beat per cycle (bound)."""
    rng = bench_rng("throughput")
    b = Bench(dut, rng, stall=0.0, max_lat=0)
    await b.start()
    k, n = 256, 64
    c, dst, want = _tlmm_op(b, rng, 1, k, n)
    st = await b.run_stream([c, command(Opcode.END)])
    got = np.frombuffer(bytes(b.mem[dst : dst + want.size * 4]), dtype="<i4").reshape(want.shape)
    assert st["done"] == 1 and np.array_equal(got, want)
    beats = isa.tlmm_blocks(n) * isa.tlmm_chunks(k)
    ideal = k * n / (CFG.tlmm.group * CFG.tlmm.tables * CFG.tlmm.replicas)
    # one beat per cycle plus a fixed overhead (fetches, table build, pipeline) of < 40
    assert beats <= st["cycles"] <= beats + 40, (st["cycles"], beats)
    record("test_throughput", k=k, n=n, cycles=st["cycles"], beats=beats, ideal=ideal)
