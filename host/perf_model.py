"""Modeled decode speed of a full-size model from one simulated layer:
``python -m host.perf_model`` (part of ``make bench``).

BitNet-0.73B shapes (``BITNET_073B``: hidden 1536, FFN 4096, 24 layers, 16 heads of 96,
vocab 32002; ReLU² FFN) at a stated clock and memory bandwidth (default 250 MHz and
17.1 GB/s, TeLLMe v2's KV260 design point):

1. A one-layer model with those shapes (random weights: cycle counts do not depend on
   the values, except that all-zero rows skip the quantizer's divider) is compiled onto
   the Verilator-compiled accelerator (``host.backends.sim``) whose DRAM model is set to
   bandwidth / clock bytes per cycle and ``latency`` cycles.
2. The KV cache of positions 0..context-2 is filled with random codes and scales, and
   the decode step of the token at position context-1 (``Runtime.step_commands``) runs
   one command at a time (each command's RTL cycles, its fetch included, and DMA bytes:
   the breakdown), then as three streams as the runtime issues them: EMBED, the layer's
   commands, final NORM_QUANT + LM_HEAD (the CYCLES counter of each).
3. A token = EMBED + ``layers`` x layer + final norm and head (the stream cycles);
   modeled tokens/s = clock / cycles. The host's share (int32 head accumulators x float
   scales, the argmax) is not counted.

The bandwidth roofline counts the bytes that must cross the memory bus per decoded token:
packed ternary weights in the TLMM tile format, the LM head as stored (int8), the KV
cache read by QK and PV (codes + scale records), one embedding row and the norm weights;
divided by the bandwidth.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from golden.modelspec import ModelConfig  # noqa: E402

BITNET_073B = ModelConfig(
    vocab_size=32002,
    hidden_size=1536,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=16,
    max_position_embeddings=2048,
    hidden_act="relu2",
)
CLOCK_HZ = 250e6
BANDWIDTH_BPS = 17.1e9
LATENCY_CYCLES = 32  # DRAM read latency (128 ns at 250 MHz)
TELLME_V2_TOK_S = 25.0  # TeLLMe v2 (FPGA'26), KV260, BitNet 0.73B decode
DEFAULT_CONTEXTS = (128, 2048)  # decode positions modeled by default (keys)


def roofline_bytes(mc: ModelConfig, context: int, cfg=None) -> dict:
    """Bytes per decoded token at ``context`` keys that must cross the memory bus."""
    from golden import isa
    from golden.config import DEFAULT

    tc = (cfg or DEFAULT).tlmm
    h, i, hd = mc.hidden_size, mc.intermediate_size, mc.head_dim
    q, kv = mc.num_attention_heads * hd, mc.num_key_value_heads * hd
    shapes = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]
    L = mc.num_hidden_layers
    return {
        "ternary weights (TLMM tiles)": L * sum(isa.tlmm_weight_bytes(n, k, tc) for n, k in shapes),
        "LM head (int8)": mc.vocab_size * h,
        "KV cache reads (codes + scales)": L
        * 2
        * mc.num_key_value_heads
        * context
        * (hd + isa.SCALE_RECORD_BYTES),
        "embedding row (int32)": h * 4,
        "norm weights (int16)": (L * (3 * h + i) + h) * 2,
    }


def _fill_kv(rt, upto: int, rng) -> None:
    """Random K/V codes and scale records at positions [0, upto) of every layer."""
    from golden import isa

    mc, a = rt.config, rt.address_map
    nkv, ctx, hd = mc.num_key_value_heads, mc.max_position_embeddings, mc.head_dim
    for li in range(mc.num_hidden_layers):
        for kv in ("k", "v"):
            codes = np.zeros((nkv, ctx, hd), np.int8)
            codes[:, :upto] = rng.integers(-127, 128, (nkv, upto, hd))
            rt.device.write(a.addr(f"kv{li}.{kv}"), codes)
            mant = np.zeros((nkv, ctx), np.int64)
            shift = np.zeros((nkv, ctx), np.int64)
            mant[:, :upto] = rng.integers(1 << 15, 1 << 16, (nkv, upto))
            shift[:, :upto] = rng.integers(18, 24, (nkv, upto))
            rt.device.write(a.addr(f"kv{li}.{kv}_scale"), isa.pack_scales(mant, shift))


def measure(
    mc: ModelConfig = BITNET_073B,
    context: int = DEFAULT_CONTEXTS[0],
    clock_hz: float = CLOCK_HZ,
    bandwidth_bps: float = BANDWIDTH_BPS,
    latency: int = LATENCY_CYCLES,
    seed: int = 0,
    progress=print,
) -> dict:
    """Simulate one full-size layer's decode step; cycles per op and the modeled token."""
    from golden import isa
    from golden.isa import Opcode
    from golden.model import random_model
    from host.runtime import make_runtime

    if not 1 <= context <= mc.max_position_embeddings:
        raise ValueError(f"context: expected 1..{mc.max_position_embeddings}, got {context}")
    one = replace(mc, num_hidden_layers=1, max_position_embeddings=context)
    t0 = time.perf_counter()
    progress(
        f"compiling a 1-layer model of {mc.hidden_size}/{mc.intermediate_size}/"
        f"{mc.num_attention_heads}x{mc.head_dim}/vocab {mc.vocab_size} ..."
    )
    model = random_model(one, seed)
    bpc = bandwidth_bps / clock_hz
    mem = 64 << 20
    mem += mc.vocab_size * mc.hidden_size * 5 + 16 * mc.intermediate_size * mc.hidden_size
    rt = make_runtime(model, "sim", max_chunk=1, mem_size=mem, bandwidth=bpc, latency=latency)
    rng = np.random.default_rng(seed)
    pos = context - 1
    _fill_kv(rt, pos, rng)
    rt.device.write(rt.address_map.addr("tokens"), np.array([1], np.uint32))
    cmds = rt.step_commands(pos, 1, 1)[:-1]  # without END: one command at a time
    progress(
        f"  ready in {time.perf_counter() - t0:.1f} s; simulating {len(cmds)} commands "
        f"at position {pos} ({bpc:.1f} B/cycle, latency {latency} cycles)"
    )
    dev = rt.device
    rows = []
    t1 = time.perf_counter()
    for i, c in enumerate(cmds):
        before = dev.counters()
        rt.run_stream([c, isa.command(Opcode.END)])
        after = dev.counters()
        rows.append(
            {
                "op": c.op.name,
                "cycles": after["cycles"] - before["cycles"],
                "bytes_read": after["bytes_read"] - before["bytes_read"],
                "bytes_written": after["bytes_written"] - before["bytes_written"],
            }
        )
        progress(f"  [{i + 1:>2}/{len(cmds)}] {c.op.name:<11} {rows[-1]['cycles']:>9} cycles")
    # the three parts as streams, as the runtime issues them (commands prefetched)
    end = isa.command(Opcode.END)
    cyc = {}
    for part, sl in (
        ("embed", slice(0, 1)),
        ("layer", slice(1, -2)),
        ("final norm + LM head", slice(-2, None)),
    ):
        before = dev.counters()["cycles"]
        rt.run_stream(cmds[sl] + [end])
        cyc[part] = dev.counters()["cycles"] - before
    wall = time.perf_counter() - t1
    host_ops = dict(dev.stats["host_ops"])
    rt.close()
    layer = rows[1:-2]
    L = mc.num_hidden_layers
    token = cyc["embed"] + L * cyc["layer"] + cyc["final norm + LM head"]
    by_op = defaultdict(lambda: [0, 0, 0])
    for r in layer:
        by_op[r["op"]][0] += 1
        by_op[r["op"]][1] += r["cycles"]
        by_op[r["op"]][2] += r["bytes_read"]
    roof = roofline_bytes(mc, context)
    roof_bytes = sum(roof.values())
    return {
        "context": context,
        "rows": rows,
        "cycles": cyc,
        "token_cycles": token,
        "layer_alone_cycles": sum(r["cycles"] for r in layer),
        "tok_s": clock_hz / token,
        "layer_by_op": dict(by_op),
        "roofline": roof,
        "roofline_tok_s": bandwidth_bps / roof_bytes,
        "sim_wall_s": wall,
        "sim_cycles": sum(r["cycles"] for r in rows),
        "host_ops": host_ops,
        "clock_hz": clock_hz,
        "bandwidth_bps": bandwidth_bps,
        "latency": latency,
        "layers": L,
    }


def report(r: dict, out=print) -> None:
    L, clk = r["layers"], r["clock_hz"]
    out(
        f"\nBitNet-0.73B shapes, decode at context {r['context']}, {clk / 1e6:.0f} MHz, "
        f"{r['bandwidth_bps'] / 1e9:.1f} GB/s, DRAM latency {r['latency']} cycles "
        f"(one layer simulated: {r['sim_cycles']} cycles in {r['sim_wall_s']:.1f} s wall)"
    )
    out(
        f"{'one layer, by op':<22} {'cmds':>5} {'cycles':>9} {'share':>6} {'bytes read':>11}"
        "   (each command run alone, its fetch included)"
    )
    alone = r["layer_alone_cycles"]
    for op, (n, c, b) in sorted(r["layer_by_op"].items(), key=lambda kv: -kv[1][1]):
        out(f"{op:<22} {n:>5} {c:>9} {c / alone:>6.1%} {b:>11}")
    out(f"{'sum':<22} {'':>5} {alone:>9}")
    lay = r["cycles"]["layer"]
    out(f"the layer as one stream (next command prefetched while an engine runs): {lay} cycles")
    out(
        f"token = embed {r['cycles']['embed']} + {L} x {lay} + final norm & LM head "
        f"{r['cycles']['final norm + LM head']} = {r['token_cycles']} cycles = "
        f"{r['token_cycles'] / clk * 1e3:.2f} ms"
    )
    out(
        f"modeled decode: {r['tok_s']:.1f} tok/s   (TeLLMe v2: {TELLME_V2_TOK_S:.0f} tok/s, "
        f"x{r['tok_s'] / TELLME_V2_TOK_S:.2f}; target >= {2 * TELLME_V2_TOK_S:.0f})"
    )
    if r["host_ops"]:
        out(f"  NOTE: ops run on the host (0 cycles counted): {r['host_ops']}")
    out("bandwidth roofline (bytes per decoded token / bandwidth):")
    tot = sum(r["roofline"].values())
    for k, v in r["roofline"].items():
        out(f"  {k:<34} {v / 1e6:>9.2f} MB  {v / tot:>6.1%}")
    out(
        f"  {'total':<34} {tot / 1e6:>9.2f} MB  -> {r['roofline_tok_s']:.1f} tok/s "
        f"(the design reaches {r['tok_s'] / r['roofline_tok_s']:.0%} of it)"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m host.perf_model", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--context",
        type=int,
        nargs="+",
        default=list(DEFAULT_CONTEXTS),
        help="decode positions + 1 (keys) to model",
    )
    ap.add_argument("--clock-mhz", type=float, default=CLOCK_HZ / 1e6)
    ap.add_argument("--bandwidth-gbs", type=float, default=BANDWIDTH_BPS / 1e9)
    ap.add_argument("--latency", type=int, default=LATENCY_CYCLES)
    a = ap.parse_args(argv)
    for ctx in a.context:
        try:
            r = measure(
                context=ctx,
                clock_hz=a.clock_mhz * 1e6,
                bandwidth_bps=a.bandwidth_gbs * 1e9,
                latency=a.latency,
            )
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
