"""Testbench of one op engine (``hw/ops/*``) against the golden backend, in Amaranth's
simulator (quick to iterate; the whole top runs on Verilator in ``sim/test_accel.py`` and
through ``host.backends.sim``).

    gd = GoldenDevice(cfg, mem_size=1 << 20)
    cmd = isa.command(Opcode.RESIDUAL, h=put(gd, h), ...)      # tensors placed with put()
    res = check_op(ResidualEngine(cfg, dma_bytes), gd, cmd, seed=1)

``check_op`` runs ``[cmd, END]`` on the golden device, then the engine alone on a copy
of the memory as it was before, serving its DMA port with a memory model that stalls
every handshake (``rd.ready``, ``rdata.valid``, ``wr.ready``) with probability ``stall``
and answers reads after a random latency of 1..``max_latency`` cycles (data read when
the response is given, like ``sim/harness/harness.cpp``). It asserts: the same
``ErrorCode``; without error, the same bytes everywhere in memory; with an argument
error (BAD_DIM, ALIGN, ADDR_RANGE), no byte written; no read/write outside [mem_lo, mem_hi) and no request with len 0 or above
the port width; nothing outstanding at ``done`` and nothing issued after it. It returns
``{"cycles", "error", "bytes_read", "bytes_written"}``.
"""
from __future__ import annotations

from collections import deque

import numpy as np
from amaranth.sim import Simulator

from host.backends.golden import GoldenDevice
from golden import isa
from golden.isa import ErrorCode, Opcode


def put(dev, data, align: int = 64) -> int:
    """Allocate and write a numpy array / bytes on ``dev``; its address."""
    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    addr = dev.alloc(len(buf), align)
    dev.write(addr, buf)
    return addr


def golden_run(gd: GoldenDevice, cmd: isa.Command):
    """Run [cmd, END] on the golden device; (memory before, memory after, ErrorCode)."""
    stream = gd.alloc(2 * isa.COMMAND_BYTES, isa.STREAM_ALIGN)
    gd.write(stream, isa.encode_stream([cmd, isa.command(Opcode.END)]))
    before = gd.memory[:gd.brk].copy()
    gd.run(stream, 2)
    st = gd._poll()
    while st.busy:
        st = gd._poll()
    return before, gd.memory[:gd.brk].copy(), ErrorCode(st.error)


def check_op(engine, gd: GoldenDevice, cmd: isa.Command, *, seed: int = 0,
             stall: float = 0.3, max_latency: int = 6, max_cycles: int = 200_000,
             max_outstanding: int = 16) -> dict:
    before, want, want_err = golden_run(gd, cmd)
    lo, hi = gd.alloc_base, gd.brk
    mem = before.copy()
    W = engine.signature.dma_bytes
    rng = np.random.default_rng(seed)
    args_bits = isa.encode_bits(cmd) >> isa.COMMAND["args"].offset
    out = {}

    async def tb(ctx):
        e = engine
        ctx.set(e.mem_lo, lo)
        ctx.set(e.mem_hi, hi)
        ctx.set(e.args.as_value(), args_bits)
        ctx.set(e.start, 1)
        await ctx.tick()
        ctx.set(e.start, 0)
        queue: deque = deque()
        cyc = nrd = nwr = 0
        wrote = False
        while True:
            cyc += 1
            assert cyc < max_cycles, f"{cmd.op.name}: no done after {max_cycles} cycles"
            rd_ready = rng.random() >= stall and len(queue) < max_outstanding
            have = bool(queue) and queue[0][0] <= cyc and rng.random() >= stall
            wr_ready = rng.random() >= stall
            ctx.set(e.rd.ready, rd_ready)
            ctx.set(e.wr.ready, wr_ready)
            ctx.set(e.rdata.valid, have)
            if have:
                _, a, n = queue[0]
                ctx.set(e.rdata.payload, int.from_bytes(mem[a:a + n].tobytes(), "little"))
            rd_fire = rd_ready and ctx.get(e.rd.valid)
            if rd_fire:
                a, n = rd_req = ctx.get(e.rd.payload.addr), ctx.get(e.rd.payload.len)
                assert 1 <= n <= W, f"{cmd.op.name}: read len {n} outside 1..{W}"
                assert lo <= a and a + n <= hi, \
                    f"{cmd.op.name}: read [0x{a:x}, 0x{a + n:x}) outside [0x{lo:x}, 0x{hi:x})"
            rs_fire = have and ctx.get(e.rdata.ready)
            wr = None
            if wr_ready and ctx.get(e.wr.valid):
                a, n = ctx.get(e.wr.payload.addr), ctx.get(e.wr.payload.len)
                assert 1 <= n <= W, f"{cmd.op.name}: write len {n} outside 1..{W}"
                assert lo <= a and a + n <= hi, \
                    f"{cmd.op.name}: write [0x{a:x}, 0x{a + n:x}) outside [0x{lo:x}, 0x{hi:x})"
                wr = (a, n, ctx.get(e.wr.payload.data))
            done, err = ctx.get(e.done), ctx.get(e.error)
            await ctx.tick()
            if wr is not None:
                a, n, d = wr
                mem[a:a + n] = np.frombuffer(int(d).to_bytes(W, "little")[:n], np.uint8)
                nwr += n
                wrote = True
            if rs_fire:
                queue.popleft()
            if rd_fire:
                queue.append((cyc + int(rng.integers(1, max_latency + 1)), *rd_req))
            if done:
                break
        assert not queue, f"{cmd.op.name}: done with {len(queue)} read(s) unanswered"
        for _ in range(4):
            ctx.set(e.rd.ready, 1)
            ctx.set(e.wr.ready, 1)
            ctx.set(e.rdata.valid, 0)
            assert not ctx.get(e.rd.valid) and not ctx.get(e.wr.valid), \
                f"{cmd.op.name}: memory access after done"
            await ctx.tick()
        out.update(cycles=cyc, error=ErrorCode(err), bytes_written=nwr, wrote=wrote)

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    err = out["error"]
    assert err == want_err, f"{cmd.op.name}: RTL error {err.name}, golden {want_err.name}"
    if err == ErrorCode.NONE:
        diff = np.flatnonzero(mem != want)
        assert diff.size == 0, (f"{cmd.op.name}: {diff.size} bytes differ from golden, first "
                                f"at 0x{int(diff[0]):x} (rtl {mem[diff[0]]}, golden {want[diff[0]]})")
    elif err in (ErrorCode.BAD_DIM, ErrorCode.ALIGN, ErrorCode.ADDR_RANGE):
        assert not out["wrote"], f"{cmd.op.name}: wrote memory before failing with {err.name}"
    return {k: out[k] for k in ("cycles", "error", "bytes_written")}
