"""cocotb bench of the whole ``hw.accel.Accel`` top running a transformer layer.

A one-layer BitNet model (``golden.model.random_model``, small shapes from the bench
params) is compiled by ``host.runtime.Runtime`` onto a golden device, whose memory image
(weights, norms, RoPE table, KV cache, scratch) is copied into the bench's memory model.
Each step's command stream (``Runtime.step_commands``: EMBED, NORM_QUANT, TLMM q/k/v,
ROPE_QUANT x3, QK, SOFTMAX, PV, NORM_QUANT, TLMM o, RESIDUAL, NORM_QUANT, TLMM gate/up,
ACT, NORM_QUANT, TLMM down, RESIDUAL, final NORM_QUANT, LM_HEAD, END) runs on the RTL with
random stalls on every memory handshake and random read latency, and on the golden
device; the whole memory window must then be identical, byte for byte: a prefill of
several tokens followed by decode steps that read the KV cache the RTL itself wrote.
Every command of the stream must run on the RTL (no host ops).

Parameters (``sim.streams.bench_params``): ``stall``, ``max_latency``, ``hidden``,
``ffn``, ``heads``, ``kv_heads``, ``prefill``, ``decode``.
"""

from __future__ import annotations

import cocotb
import numpy as np

from golden import isa
from golden.isa import ErrorCode, Opcode, command
from hw.csr import CSR, CTRL_RESET
from sim.accel_bench import Bench
from sim.streams import bench_params, bench_rng, record
from sim.top_bench import Layer, layer_steps, small_residual

P = bench_params()
STALL = float(P.get("stall", 0.3))
MAX_LAT = int(P.get("max_latency", 8))
MEM = 1 << 20


@cocotb.test()
async def test_layer(dut):
    """Prefill then decode steps of one whole layer: RTL memory == golden memory."""
    rng = bench_rng("layer")
    b = Bench(dut, rng, stall=STALL, max_lat=MAX_LAT, mem_size=MEM)
    lay = Layer(b.mem, rng, P)  # the model is drawn before the bench's first stall
    await b.start()
    for rows in layer_steps(P):
        cmds, _ = lay.step(rows)
        await b.csr_write(CSR.CTRL, CTRL_RESET)  # counters per step
        at = lay.a.addr("stream")
        st = await b.run_stream(cmds, at=at, window=lay.window, max_cycles=2_000_000)
        assert st["host_ops"] == [], f"ops left to the host: {st['host_ops']}"
        assert (st["done"], st["error"], st["ops"]) == (1, 0, len(cmds)), st
        lay.compare(rows)
        record("test_layer", pos=lay.pos, rows=rows, cmds=len(cmds), cycles=st["cycles"])
        lay.pos += rows


@cocotb.test()
async def test_op_errors_and_reuse(dut):
    """An engine's error stops the stream with its code at the command's index (also when
    found after reads, with the next command's prefetch in flight); after a soft reset the
    same top runs a good stream."""
    rng = bench_rng("layer_errors")
    b = Bench(dut, rng, stall=STALL, max_lat=MAX_LAT, mem_size=MEM)
    await b.start()
    src = b.put(np.zeros((2, 8), np.int32))
    dst = b.alloc(2 * 8 * 4)
    sc = b.put(isa.pack_scales(np.full(2, 1 << 15), np.zeros(2)))
    tok = b.put(np.arange(40, dtype=np.uint32) % 5)  # id 4 >= vocab 4
    nop, end = command(Opcode.NOP), command(Opcode.END)
    good = small_residual(src, sc, dst)
    cases = [
        (small_residual(src, sc, len(b.mem) - 16), ErrorCode.ADDR_RANGE),
        (small_residual(src, sc, dst, h=src + 2), ErrorCode.ALIGN),
        (command(Opcode.SOFTMAX, src=src, dst=dst, rows=0, keys=4, heads=1), ErrorCode.BAD_DIM),
        # found after reads (the prefetch of the next command is in flight by then)
        (
            command(Opcode.EMBED, tokens=tok, table=src, dst=dst, rows=40, dim=4, vocab=4),
            ErrorCode.BAD_OPERAND,
        ),
    ]
    for bad, code in cases:
        st = await b.run_stream([nop, nop, bad, good, end])
        assert (st["error"], st["err_op"], st["done"]) == (code.value, 2, 0), (bad.op, st)
        await b.csr_write(CSR.CTRL, CTRL_RESET)
        st = await b.run_stream([good, end])
        assert (st["error"], st["done"], st["host_ops"]) == (0, 1, []), st
