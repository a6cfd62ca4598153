"""The one testbench of the op engines (``hw/ops/*``): a memory model of the engine DMA
port, checked against the command-level golden executor, in Amaranth's simulator (quick
to iterate; the whole top runs on Verilator in ``sim/test_accel.py`` and through
``host.backends.sim``). Every ``sim/test_op_<name>.py`` uses it.

    gd = GoldenDevice(cfg, mem_size=1 << 20)
    cmd = isa.command(Opcode.RESIDUAL, h=put(gd, h), ...)      # tensors placed with put()
    res = check_op(ResidualEngine(cfg, dma_bytes), gd, cmd, seed=1)

The memory model (``run_engine``) starts ``Job`` commands back to back on one engine and
serves its DMA port: it stalls every handshake (``rd.ready``, ``rdata.valid``,
``wr.ready``) with probability ``stall`` and answers the reads in order, each after a
random latency in ``latency`` cycles (data read when the response is given, like
``host/backends/sim_harness/harness.cpp``), with at most ``max_outstanding`` reads
waiting. It asserts, per command: no request with len 0 or above the port width, no read
or write outside the window [lo, hi), an answer within ``max_cycles``, no read left
outstanding at ``done``, nothing issued in the ``gap`` cycles after it. It returns per
command ``{"cycles", "error", "bytes_read", "bytes_written", "reads", "writes"}``
(``cycles``: from the cycle after ``start`` to the ``done`` cycle; ``reads``/``writes``:
transfers).

``check_op`` runs one command on the golden device's executor (``golden_run``: in place,
window [alloc_base, brk)), then the engine on the memory as it was before, and asserts
the same ``ErrorCode`` (message ``"<OP>: RTL error X, golden Y"``); without error, the
same bytes everywhere in memory; with an argument error (BAD_DIM, ALIGN, ADDR_RANGE), no
byte written. ``check_ops`` does the same for many cases through one engine (which also
checks that a command, an aborted one included, leaves nothing behind); ``check_errors``
for variants of one command with their expected codes. ``arg_error_cases`` generates the
ALIGN / ADDR_RANGE cases of a valid command from its opcode's contract
(``golden.isa.CONTRACTS``); ``check_arg_errors`` runs them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from golden import isa
from golden.config import DEFAULT
from golden.isa import ErrorCode
from host.backends.golden import GoldenDevice

ARG_ERRORS = (ErrorCode.BAD_DIM, ErrorCode.ALIGN, ErrorCode.ADDR_RANGE)
STALLS = (0.0, 0.3, 0.6)


def put(dev, data, align: int = 64) -> int:
    """Allocate and write a numpy array / bytes on ``dev``; its address."""
    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    addr = dev.alloc(len(buf), align)
    dev.write(addr, buf)
    return addr


def golden_run(gd: GoldenDevice, cmd: isa.Command):
    """Execute ``cmd`` on the golden device's memory, window [alloc_base, brk) (the
    window the engine gets); (memory before, memory after, ErrorCode)."""
    before = gd.memory[: gd.brk].copy()
    gd.executor.set_window(gd.alloc_base, gd.brk)
    out = gd.executor.step(isa.encode(cmd))
    return before, gd.memory[: gd.brk].copy(), out.error


# ------------------------------------------------------------------ the memory model
@dataclass
class Job:
    """One command for ``run_engine``: ``args`` (a Command, or raw argument bits), the
    memory it runs on (uint8, written in place; jobs may share one) and its window."""

    args: object
    mem: np.ndarray
    lo: int
    hi: int
    stall: float = 0.3
    latency: tuple[int, int] = (1, 6)
    max_outstanding: int = 16
    max_cycles: int = 200_000
    gap: int = 4

    @property
    def name(self) -> str:
        return self.args.op.name if isinstance(self.args, isa.Command) else "raw command"

    @property
    def bits(self) -> int:
        if isinstance(self.args, isa.Command):
            return isa.encode_bits(self.args) >> isa.COMMAND["args"].offset
        return int(self.args)


def run_engine(engine, jobs, *, seed: int = 0) -> list[dict]:
    """Run ``jobs`` back to back on ``engine`` with the memory model of the module
    docstring; its results per job."""
    W = engine.signature.dma_bytes
    rng = np.random.default_rng(seed)
    results = []

    async def tb(ctx):
        e = engine
        for job in jobs:
            mem, lo, hi, stall, what = job.mem, job.lo, job.hi, job.stall, job.name
            ctx.set(e.mem_lo, lo)
            ctx.set(e.mem_hi, hi)
            ctx.set(e.args.as_value(), job.bits)
            ctx.set(e.start, 1)
            await ctx.tick()
            ctx.set(e.start, 0)
            queue: deque = deque()
            cyc = 0
            count = dict.fromkeys(("bytes_read", "bytes_written", "reads", "writes"), 0)
            while True:
                cyc += 1
                assert cyc < job.max_cycles, f"{what}: no done after {job.max_cycles} cycles"
                rd_ready = rng.random() >= stall and len(queue) < job.max_outstanding
                have = bool(queue) and queue[0][0] <= cyc and rng.random() >= stall
                wr_ready = rng.random() >= stall
                ctx.set(e.rd.ready, rd_ready)
                ctx.set(e.wr.ready, wr_ready)
                ctx.set(e.rdata.valid, have)
                if have:
                    _, a, n = queue[0]
                    ctx.set(e.rdata.payload, int.from_bytes(mem[a : a + n].tobytes(), "little"))
                rd = None
                if rd_ready and ctx.get(e.rd.valid):
                    a, n = rd = ctx.get(e.rd.payload.addr), ctx.get(e.rd.payload.len)
                    assert 1 <= n <= W, f"{what}: read len {n} outside 1..{W}"
                    assert lo <= a and a + n <= hi, (
                        f"{what}: read [0x{a:x}, 0x{a + n:x}) outside [0x{lo:x}, 0x{hi:x})"
                    )
                took = have and ctx.get(e.rdata.ready)
                wr = None
                if wr_ready and ctx.get(e.wr.valid):
                    a, n = ctx.get(e.wr.payload.addr), ctx.get(e.wr.payload.len)
                    assert 1 <= n <= W, f"{what}: write len {n} outside 1..{W}"
                    assert lo <= a and a + n <= hi, (
                        f"{what}: write [0x{a:x}, 0x{a + n:x}) outside [0x{lo:x}, 0x{hi:x})"
                    )
                    wr = (a, n, ctx.get(e.wr.payload.data))
                done, err = ctx.get(e.done), ctx.get(e.error)
                await ctx.tick()
                if wr is not None:
                    a, n, d = wr
                    mem[a : a + n] = np.frombuffer(int(d).to_bytes(W, "little")[:n], np.uint8)
                    count["writes"] += 1
                    count["bytes_written"] += n
                if took:
                    queue.popleft()
                if rd is not None:
                    queue.append((cyc + int(rng.integers(job.latency[0], job.latency[1] + 1)), *rd))
                    count["reads"] += 1
                    count["bytes_read"] += rd[1]
                if done:
                    break
            assert not queue, f"{what}: done with {len(queue)} read(s) unanswered"
            for _ in range(job.gap):
                ctx.set(e.rd.ready, 1)
                ctx.set(e.wr.ready, 1)
                ctx.set(e.rdata.valid, 0)
                assert not ctx.get(e.rd.valid) and not ctx.get(e.wr.valid), (
                    f"{what}: memory access after done"
                )
                await ctx.tick()
            results.append({"cycles": cyc, "error": ErrorCode(err), **count})

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return results


# ------------------------------------------------------------------ against golden
def _compare(
    cmd: isa.Command, res: dict, mem: np.ndarray, want: np.ndarray, want_err: ErrorCode
) -> None:
    err = res["error"]
    assert err == want_err, f"{cmd.op.name}: RTL error {err.name}, golden {want_err.name}"
    if err == ErrorCode.NONE:
        diff = np.flatnonzero(mem != want)
        assert diff.size == 0, (
            f"{cmd.op.name}: {diff.size} bytes differ from golden, first "
            f"at 0x{int(diff[0]):x} (rtl {mem[diff[0]]}, golden {want[diff[0]]})"
        )
    elif err in ARG_ERRORS:
        assert res["writes"] == 0, f"{cmd.op.name}: wrote memory before failing with {err.name}"


def check_op(
    engine,
    gd: GoldenDevice,
    cmd: isa.Command,
    *,
    seed: int = 0,
    stall: float = 0.3,
    max_latency: int = 6,
    max_cycles: int = 200_000,
    max_outstanding: int = 16,
) -> dict:
    """``cmd`` on the engine == on the golden executor (module docstring); returns
    ``{"cycles", "error", "bytes_read", "bytes_written"}`` of the engine's run."""
    before, want, want_err = golden_run(gd, cmd)
    job = Job(
        cmd, before, gd.alloc_base, gd.brk, stall, (1, max_latency), max_outstanding, max_cycles
    )
    (res,) = run_engine(engine, [job], seed=seed)
    _compare(cmd, res, job.mem, want, want_err)
    return {k: res[k] for k in ("cycles", "error", "bytes_read", "bytes_written")}


def check_in_place(engine, gd: GoldenDevice, cmd: isa.Command, seed: int, stall: float) -> None:
    """``check_op`` of a command whose output aliases an input, with deep read-ahead (up to
    32 reads outstanding, latencies to 12) so that later chunks' reads run far ahead of
    the writes: no error, and the memory golden's."""
    res = check_op(engine, gd, cmd, seed=seed, stall=stall, max_latency=12, max_outstanding=32)
    assert res["error"] == ErrorCode.NONE


def check_ops(
    engine,
    cases,
    *,
    seed: int = 0,
    stall=STALLS,
    max_latency: int = 6,
    max_outstanding: int = 16,
    gap: int = 2,
) -> list[dict]:
    """``cases`` [(gd, cmd, expect)] back to back through one engine, each against its
    golden run (``expect`` None) or, for the engine's own limits (its ``LIMITS``), against
    ``expect`` with nothing read or written. ``stall``: a level, or levels to draw one
    from per command. Returns the engine's results (``run_engine``)."""
    rng = np.random.default_rng(seed)
    jobs, wants = [], []
    for gd, cmd, expect in cases:
        before, want, err = golden_run(gd, cmd)
        s = float(rng.choice(stall)) if np.ndim(stall) else float(stall)
        jobs.append(
            Job(cmd, before, gd.alloc_base, gd.brk, s, (1, max_latency), max_outstanding, gap=gap)
        )
        wants.append((want, err if expect is None else expect, expect is not None))
    results = run_engine(engine, jobs, seed=int(rng.integers(1 << 30)))
    for job, (want, want_err, limit), res in zip(jobs, wants, results, strict=False):
        _compare(job.args, res, job.mem, want, want_err)
        if limit:
            assert res["reads"] == 0 and res["writes"] == 0, (
                f"{job.name}: memory access before failing on the engine's limit"
            )
    return results


# ------------------------------------------------------------------ contract cases
def check_errors(
    engine, gd: GoldenDevice, cmd: isa.Command, cases, *, seed: int = 0, stall=0.3, **kw
) -> list[dict]:
    """Variants of ``cmd``, ``cases`` [(field changes, expected ErrorCode)], back to back
    through one engine (``check_ops``): the engine and the golden executor give the
    expected code, and nothing is written before an argument error."""
    variants = [(gd, isa.command(cmd.op, **{**cmd.args, **change}), None) for change, _ in cases]
    results = check_ops(engine, variants, seed=seed, stall=stall, **kw)
    for (change, code), res in zip(cases, results, strict=False):
        assert res["error"] == code, (
            f"{cmd.op.name} {change}: {res['error'].name}, expected {code.name}"
        )
        if code in ARG_ERRORS:
            assert res["bytes_written"] == 0, f"{cmd.op.name} {change}: wrote before failing"
    return results


def arg_error_cases(cmd: isa.Command, lo: int, hi: int, cfg=DEFAULT) -> list:
    """The ALIGN / ADDR_RANGE cases of a valid command ``cmd`` (window [lo, hi)), from
    its opcode's contract: [(field changes, expected ErrorCode)]. Per tensor: each
    misaligned address, and one also out of range (ALIGN); its first byte one element
    below the window, its last element one past the end, an address that wraps 32 bits
    (ADDR_RANGE); for each pair of tensors, the earlier one's error wins over the later
    one's other error; a broken dimension wins over every tensor out of range (BAD_DIM);
    a tensor the command does not use (``when`` false) is not checked (NONE)."""
    items = isa.CONTRACTS[cmd.op]
    names = isa.contract_names(cmd.args, cfg)
    tensors = [t for t in items if isinstance(t, isa.Tensor)]
    used = [t for t in tensors if t.when is None or isa.evaluate(t.when, names)]
    top = 1 << isa.ADDR_BITS
    cases = []
    for t in tensors:
        f, a, size = t.field, names[t.field], t.size
        if t not in used:
            cases.append(({f: top - 1}, ErrorCode.NONE))
            continue
        start, nbytes = t.extent(names)
        off = start - a
        cases += [({f: a + k}, ErrorCode.ALIGN) for k in range(1, size)]
        if size > 1:
            cases.append(({f: top - size + 1}, ErrorCode.ALIGN))  # and out of range
        for addr in (lo - size - off, hi - nbytes + size - off, top - size):
            if 0 <= addr < top:  # below, one element past, wrapping 32 bits
                cases.append(({f: addr}, ErrorCode.ADDR_RANGE))
    for i, t in enumerate(used):
        for u in used[i + 1 :]:
            if t.size > 1:
                cases.append(
                    ({t.field: names[t.field] + 1, u.field: top - u.size}, ErrorCode.ALIGN)
                )
            if u.size > 1:
                cases.append(
                    ({t.field: top - t.size, u.field: names[u.field] + 1}, ErrorCode.ADDR_RANGE)
                )
    dims = next(d for d in items if isinstance(d, isa.Dims))
    field = next(r.split()[0] for r in dims.rules if r.endswith(">= 1"))
    cases.append(({field: 0, **{t.field: top - 1 for t in tensors}}, ErrorCode.BAD_DIM))
    return cases


def check_arg_errors(
    engine, gd: GoldenDevice, cmd: isa.Command, *, first=(), seed: int = 0, **kw
) -> list[dict]:
    """The op's own cases ``first`` (dimension errors, which the contract walk does not
    list), then every case of ``arg_error_cases`` (window [alloc_base, brk)), through one
    engine (``check_errors``)."""
    cases = list(first) + arg_error_cases(cmd, gd.alloc_base, gd.brk, gd.cfg)
    return check_errors(engine, gd, cmd, cases, seed=seed, **kw)
