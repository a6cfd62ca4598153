"""Modeled decode speed of a full-size model from one simulated layer:
``python -m host.perf_model`` (part of ``make bench``).

BitNet-0.73B shapes (``BITNET_073B``, 1bitLLM/bitnet_b1_58-large: hidden 1536, FFN 4096,
24 layers, 16 heads of 96, vocab 32002; SiLU FFN, tied embeddings) on a design point
(``golden.config.AccelConfig``, default kv260:
its clock, DRAM bandwidth and latency -- 250 MHz, 17.1 GB/s and 32 cycles, TeLLMe v2's
KV260 figures; the report says whether the clock is a target or backed by evidence):

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
packed ternary weights in the TLMM tile format (of the design point's TLMM), the LM head
as stored (int8), the KV cache read by QK and PV (codes + scale records), one embedding row
and the norm weights; divided by the bandwidth.

``measure_prefill`` does the same for a prompt run as one chunk (positions 0..prompt-1,
the head on the last row): time to first token and prefill tokens/s. ``MODELS`` names the
shapes (``bitnet-0.73b``, ``bitnet-2b-4t``); ``limits_exceeded`` says why a shape does not
run on a design point (a dimension beyond its ``max_*``: the RTL would answer BAD_DIM), and
``measure`` / ``measure_prefill`` raise ``DoesNotRun`` with those reasons before building
anything. The simulator is built from ``rtl_design_point(dp)`` -- the point with the fields
that change no logic (clock, DRAM, name, device, evidence) set to the defaults -- so points
that differ only in those share one Verilator build (``python -m host.dse`` sweeps them).
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

from golden.config import (  # noqa: E402
    DEFAULT_DESIGN_POINT,
    AccelConfig,
    design_point,
    design_point_with,
)
from golden.modelspec import ModelConfig  # noqa: E402

# 1bitLLM/bitnet_b1_58-large (TeLLMe v2's model): LLaMA-style, SiLU FFN, tied embeddings
BITNET_073B = ModelConfig(
    vocab_size=32002, hidden_size=1536, intermediate_size=4096, num_hidden_layers=24,
    num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
    hidden_act="silu", tie_word_embeddings=True,
)  # fmt: skip
# BitNet b1.58 2B-4T (DESIGN.md §7): hidden 2560, FFN 6912, 30 layers, 20 query / 5 KV heads
# of 128, vocab 128256, ReLU², context 4096, rope_theta 5e5
BITNET_2B4T = ModelConfig(
    vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
    num_attention_heads=20, num_key_value_heads=5, max_position_embeddings=4096,
    rope_theta=500000.0, hidden_act="relu2", tie_word_embeddings=True,
)  # fmt: skip
MODELS = {"bitnet-0.73b": BITNET_073B, "bitnet-2b-4t": BITNET_2B4T}
TELLME_V2_TOK_S = 25.0  # TeLLMe v2 (FPGA'26), KV260, BitNet 0.73B decode
DEFAULT_CONTEXTS = (128, 2048)  # decode positions modeled by default (keys)


# the AccelConfig fields that change no logic of the top but its ID register (which hashes
# every field): the DRAM model's timing is set at run time, the clock only scales cycles
NON_RTL_FIELDS = (
    "name",
    "dram_gbs",
    "dram_latency",
    "device",
    "clock_mhz",
    "evidence_mhz",
    "evidence",
)


def rtl_design_point(dp: AccelConfig) -> AccelConfig:
    """``dp`` with its ``NON_RTL_FIELDS`` set to ``AccelConfig``'s defaults: the design point
    the simulator (and synthesis) of ``dp`` is built from. Points that differ only in those
    fields map to one build; only the ID register's constant differs from ``dp``'s own top
    (``tests/test_dse.py`` checks the Verilog is otherwise the same)."""
    base = AccelConfig()
    return replace(dp, **{f: getattr(base, f) for f in NON_RTL_FIELDS})


class DoesNotRun(ValueError):
    """The model's shapes exceed a limit of the design point (``reasons``: one line each)."""

    def __init__(self, mc: ModelConfig, dp: AccelConfig, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__(f"does not run on design point {dp.name}: " + "; ".join(self.reasons))


def limits_exceeded(mc: ModelConfig, dp: AccelConfig, keys: int = 1, rows: int = 1) -> list[str]:
    """Why ``mc`` cannot run on ``dp`` with ``keys`` keys and ``rows``-token chunks: each
    dimension of a step's commands beyond the engine limits (``max_k``, ``max_dim``,
    ``max_keys``, ``max_head_dim``, ``max_n``; the RTL's BAD_DIM). Empty when it runs. The runtime
    splits a ternary projection's K above ``max_k`` (``Runtime._k_slices``), not the LM
    head's."""
    h, i, hd = mc.hidden_size, mc.intermediate_size, mc.head_dim
    q = mc.num_attention_heads * hd
    # each dimension: its value, the norms it is the rows of
    dims = (
        ("hidden_size", h, "norm"),
        ("heads x head_dim", q, "attn_sub_norm"),
        ("intermediate_size", i, "ACT and ffn_sub_norm"),
    )
    why = [f"hidden_size (K of the LM head) {h} > max_k {dp.max_k}"] if h > dp.max_k else []
    why += [
        f"{name} ({norms} rows) {v} > max_dim {dp.max_dim}"
        for name, v, norms in dims
        if v > dp.max_dim
    ]
    if mc.hidden_act == "relu2" and i > dp.max_n:  # the ReLU^2 FFN's up_proj is masked
        why.append(f"intermediate_size (n of the masked up_proj) {i} > max_n {dp.max_n}")
    head_lim = min(dp.max_head_dim, dp.dma_bytes)  # QK/PV read one key row per DMA beat
    if hd > head_lim:
        why.append(f"head_dim {hd} > {head_lim} (max_head_dim, one DMA beat)")
    if max(keys, rows) > dp.max_keys:
        why.append(f"{max(keys, rows)} keys > max_keys {dp.max_keys}")
    return why


def _check_runs(mc: ModelConfig, dp: AccelConfig, keys: int, rows: int) -> None:
    why = limits_exceeded(mc, dp, keys, rows)
    if why:
        raise DoesNotRun(mc, dp, why)


def roofline_bytes(mc: ModelConfig, context: int, cfg=None) -> dict:
    """Bytes per decoded token at ``context`` keys that must cross the memory bus (the KV
    rows in ``cfg``'s format: ``ForwardConfig.kv_bits``)."""
    from golden import isa
    from golden.config import DEFAULT

    cfg = cfg or DEFAULT
    tc = cfg.tlmm
    h, i, hd = mc.hidden_size, mc.intermediate_size, mc.head_dim
    q, kv = mc.num_attention_heads * hd, mc.num_key_value_heads * hd
    row = isa.kv_row(hd, 1, cfg)  # a K or V row in the datapath's KV format (int8 / int4)
    shapes = [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]
    L = mc.num_hidden_layers
    return {
        "ternary weights (TLMM tiles)": L * sum(isa.tlmm_weight_bytes(n, k, tc) for n, k in shapes),
        "LM head (int8)": mc.vocab_size * h,
        "KV cache reads (codes + scales)": L
        * 2
        * mc.num_key_value_heads
        * context
        * (row + isa.SCALE_RECORD_BYTES),
        "embedding row (int32)": h * 4,
        "norm weights (int16)": (L * (3 * h + i) + h) * 2,
    }


def measured_sparsity(model_dir: str | None = None, chars: int = 256, cfg=None) -> dict:
    """The exact-sparsity fractions of a ReLU^2 model (default: the shipped one) on
    ``chars`` held-out characters, integer mode, its FFN channels in the calibrated order
    of ``host.ffn_order`` (as ``--sparse`` runs it), mean over layers and tokens:
    ``up_skip`` (up_proj Q-row blocks wholly masked by ReLU(gate)) and ``down_live``
    (down_proj input groups with a non-zero activation)."""
    from golden.config import DEFAULT
    from golden.model import GoldenModel, permute_ffn
    from golden.tlmm import live_blocks, live_groups
    from host.checkpoint import load
    from host.data import DEFAULT_MODEL, heldout_text
    from host.ffn_order import calibrate_on_corpus
    from host.tokenizer import load_tokenizer

    tc = (cfg or DEFAULT).tlmm
    path = model_dir or DEFAULT_MODEL
    model = load(path)
    if model.config.hidden_act != "relu2":
        raise ValueError(f"model: exact sparsity needs a ReLU^2 model, {path} is not one")
    tok = load_tokenizer(path)
    ids = np.asarray(tok.encode(heldout_text(chars=chars)))
    gm = GoldenModel(model, "integer", cfg or DEFAULT)
    gm.compiled = permute_ffn(gm.compiled, calibrate_on_corpus(model, tok, cfg))
    trace = []
    gm.forward(ids[: model.config.max_position_embeddings], trace=trace)
    up = [live_blocks(a["gate"][0], tc).mean() for _, op, a in trace if op == "tlmm.gate_up"]
    down = [
        live_groups(a["x_q"][0], tc).mean() for _, op, a in trace if op == "norm_quant.ffn_sub_norm"
    ]
    return {"up_skip": 1.0 - float(np.mean(up)), "down_live": float(np.mean(down)), "model": path}


def sparse_roofline_bytes(mc: ModelConfig, context: int, fr: dict, cfg=None) -> dict:
    """``roofline_bytes`` of exact-sparse decode (``Runtime(sparse=True)``) with the
    fractions ``fr`` (``measured_sparsity``): up_proj reads the gate row (its mask) and the
    unmasked row blocks' weights; every other projection its live groups' beats in the
    sparse tile format (down_proj ``down_live`` of them, the rest all)."""
    from golden import isa
    from golden.config import DEFAULT

    tc = (cfg or DEFAULT).tlmm
    h, i, hd, L = mc.hidden_size, mc.intermediate_size, mc.head_dim, mc.num_hidden_layers
    q, kv = mc.num_attention_heads * hd, mc.num_key_value_heads * hd

    def sparse(n, k, live=1.0):
        return live * -(-k // tc.group) * int(isa.sparse_beat_read_bytes(n, tc).sum())

    r = roofline_bytes(mc, context, cfg)
    up = (1.0 - fr["up_skip"]) * isa.tlmm_weight_bytes(i, h, tc) + 4 * i
    rest = sparse(q, h) + 2 * sparse(kv, h) + sparse(h, q) + sparse(i, h)
    r["ternary weights (TLMM tiles)"] = L * (up + rest + sparse(h, i, fr["down_live"]))
    return r


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


# a step's commands: the embedding, the layer's, then the final norm and the LM head
_PARTS = (
    ("embed", slice(0, 1)),
    ("layer", slice(1, -2)),
    ("final norm + LM head", slice(-2, None)),
)


def _part_cycles(rt, cmds, progress=None) -> dict[str, int]:
    """CYCLES of each part of a step's commands run as its own stream (commands prefetched,
    as the runtime issues them)."""
    from golden import isa
    from golden.isa import Opcode

    cyc = {}
    for part, sl in _PARTS:
        before = rt.device.counters()["cycles"]
        rt.run_stream(cmds[sl] + [isa.command(Opcode.END)])
        cyc[part] = rt.device.counters()["cycles"] - before
        if progress:
            progress(f"  {part:<21} {cyc[part]:>10} cycles")
    return cyc


def measure(
    mc: ModelConfig = BITNET_073B,
    context: int = DEFAULT_CONTEXTS[0],
    dp: AccelConfig | str = DEFAULT_DESIGN_POINT,
    seed: int = 0,
    progress=print,
    act_adc=None,
) -> dict:
    """Simulate one full-size layer's decode step on design point ``dp`` (its top, at its
    DRAM bandwidth and latency); cycles per op and the modeled token at its clock.
    ``act_adc`` (``golden.nl_adc.ActADC``): the ACT command through the NL-ADC kind (its
    table reads and 2^N-cycle conversions are in the simulated cycles; the report adds
    ``hw.ops.act.expected_cycles`` of that ACT without memory stalls)."""
    from golden import isa
    from golden.isa import Opcode
    from golden.model import random_model

    if not 1 <= context <= mc.max_position_embeddings:
        raise ValueError(f"context: expected 1..{mc.max_position_embeddings}, got {context}")
    dp = design_point(dp) if isinstance(dp, str) else dp
    _check_runs(mc, dp, context, 1)
    one = replace(mc, num_hidden_layers=1, max_position_embeddings=context)
    t0 = time.perf_counter()
    progress(
        f"compiling a 1-layer model of {mc.hidden_size}/{mc.intermediate_size}/"
        f"{mc.num_attention_heads}x{mc.head_dim}/vocab {mc.vocab_size} ..."
    )
    model = random_model(one, seed)
    clock_hz, bandwidth_bps = dp.clock_mhz * 1e6, dp.dram_gbs * 1e9
    bpc, latency = dp.bytes_per_cycle, dp.dram_latency
    rt = _sim_runtime(model, mc, dp, max_chunk=1, act_adc=act_adc)
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
    cyc = _part_cycles(rt, cmds)
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
    roof = roofline_bytes(mc, context, dp.datapath)
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
        "design_point": dp.name,
        "clock_note": dp.clock_note(),
        "act_adc": None if act_adc is None else act_adc.describe(),
        "act_formula_cycles": act_formula_cycles(mc, dp, act_adc),
    }


# wall-clock limit of one simulated stream: a full-size layer of a slow point (few TLMM
# replicas, little bandwidth) on a loaded machine takes minutes (make dse's first default
# sweep timed out at the runtime's 120 s); the limit only ends a hung simulation
SIM_TIMEOUT_S = 3600.0


def _sim_runtime(model, mc: ModelConfig, dp: AccelConfig, max_chunk: int, act_adc=None):
    """A runtime on the simulated top of ``rtl_design_point(dp)`` with ``dp``'s DRAM."""
    from host.runtime import make_runtime

    mem = 64 << 20
    mem += mc.vocab_size * mc.hidden_size * 5 + 16 * mc.intermediate_size * mc.hidden_size
    return make_runtime(
        model,
        "sim",
        max_chunk=max_chunk,
        timeout_s=SIM_TIMEOUT_S,
        mem_size=mem,
        dp=rtl_design_point(dp),
        bandwidth=dp.bytes_per_cycle,
        latency=dp.dram_latency,
        act_adc=act_adc,
    )


def act_formula_cycles(mc: ModelConfig, dp: AccelConfig, act_adc=None) -> int:
    """One decode token's ACT command (rows 1, dim = intermediate_size) by
    ``hw.ops.act.expected_cycles`` (no memory stalls, read latency 1): with an NL-ADC
    kind, its table and its 2^N-cycle conversions per sub-beat of ``act_lanes``."""
    from host.runtime import act_kind
    from hw.ops.act import expected_cycles

    kind = act_kind(mc.hidden_act, act_adc)
    bits = 0 if act_adc is None else act_adc.bits
    return expected_cycles(
        1, mc.intermediate_size, kind, dp.act_lanes, dp.act_amax_lanes, adc_bits=bits
    )


def measure_prefill(
    mc: ModelConfig = BITNET_073B,
    prompt: int = 64,
    dp: AccelConfig | str = DEFAULT_DESIGN_POINT,
    seed: int = 0,
    progress=print,
) -> dict:
    """Simulate one full-size layer's prefill of a ``prompt``-token prompt on design point
    ``dp``: the prompt as one chunk (positions 0..prompt-1, as the runtime issues it when
    ``max_chunk`` >= prompt), the LM head on its last row. Time to first token = embed +
    ``layers`` x layer + final norm and head (each stream's CYCLES); prefill tokens/s =
    prompt / that time. The host's share (sampling) is not counted."""
    from golden.model import random_model

    if not 1 <= prompt <= mc.max_position_embeddings:
        raise ValueError(f"prompt: expected 1..{mc.max_position_embeddings}, got {prompt}")
    dp = design_point(dp) if isinstance(dp, str) else dp
    _check_runs(mc, dp, prompt, prompt)
    one = replace(mc, num_hidden_layers=1, max_position_embeddings=prompt)
    t0 = time.perf_counter()
    progress(f"compiling a 1-layer model for a {prompt}-token prefill ...")
    model = random_model(one, seed)
    rt = _sim_runtime(model, mc, dp, max_chunk=prompt)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, mc.vocab_size, prompt).astype(np.uint32)
    rt.device.write(rt.address_map.addr("tokens"), tokens)
    cmds = rt.step_commands(0, prompt, 1)[:-1]
    progress(f"  ready in {time.perf_counter() - t0:.1f} s; simulating {len(cmds)} commands")
    t1 = time.perf_counter()
    cyc = _part_cycles(rt, cmds, progress)
    wall = time.perf_counter() - t1
    rt.close()
    L = mc.num_hidden_layers
    total = cyc["embed"] + L * cyc["layer"] + cyc["final norm + LM head"]
    clock_hz = dp.clock_mhz * 1e6
    return {
        "prompt": prompt,
        "cycles": cyc,
        "ttft_cycles": total,
        "ttft_s": total / clock_hz,
        "prefill_tok_s": prompt * clock_hz / total,
        "sim_wall_s": wall,
        "clock_hz": clock_hz,
        "layers": L,
        "design_point": dp.name,
        "clock_note": dp.clock_note(),
    }


def report(r: dict, out=print) -> None:
    L, clk = r["layers"], r["clock_hz"]
    out(
        f"\nBitNet-0.73B shapes, decode at context {r['context']}, design point "
        f"{r['design_point']} at {r['clock_note']}, "
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
    if r.get("act_adc"):
        out(f"ACT activation: {r['act_adc']}")
    out(
        f"ACT by hw.ops.act.expected_cycles (no memory stalls): {r['act_formula_cycles']} "
        "cycles per token and layer"
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


def sparsity_report(fr: dict, contexts, dp: AccelConfig, out=print) -> None:
    """Exact-sparse decode of the ReLU^2 shapes against the dense roofline, with the
    fractions measured on the shipped model (``measured_sparsity``)."""
    out(
        f"\nexact activation sparsity, fractions measured on {fr['model']} (held-out text, "
        f"integer mode): up_proj row blocks skipped {fr['up_skip']:.1%}, down_proj input "
        f"groups live {fr['down_live']:.1%} -- applied to the full-size shapes as if they "
        f"had the same fractions; bandwidth {dp.dram_gbs:g} GB/s"
    )
    head = f"{'model':<14} {'keys':>5} {'dense MB':>9} {'sparse MB':>10}"
    out(f"{head} {'dense roof':>11} {'sparse roof':>12}")
    for name, mc in MODELS.items():
        if mc.hidden_act != "relu2":  # exact sparsity needs ReLU^2's zeros
            continue
        for ctx in (c for c in contexts if c <= mc.max_position_embeddings):
            d = sum(roofline_bytes(mc, ctx, dp.datapath).values())
            s = sum(sparse_roofline_bytes(mc, ctx, fr, dp.datapath).values())
            bw = dp.dram_gbs * 1e9
            out(
                f"{name:<14} {ctx:>5} {d / 1e6:>9.1f} {s / 1e6:>10.1f} "
                f"{bw / d:>7.1f} tok/s {bw / s:>8.1f} tok/s ({d / s:.2f}x)"
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
    ap.add_argument("--design-point", default=DEFAULT_DESIGN_POINT, help="named design point")
    ap.add_argument("--clock-mhz", type=float, default=None, help="override its clock")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="override its DRAM GB/s")
    ap.add_argument("--latency", type=int, default=None, help="override its DRAM latency")
    from host.runtime import act_adc_from_args, add_act_adc_args

    add_act_adc_args(ap)
    a = ap.parse_args(argv)
    try:
        adc = act_adc_from_args(a)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for ctx in a.context:
        try:
            dp = design_point_with(a.design_point, a.clock_mhz, a.bandwidth_gbs, a.latency)
            r = measure(context=ctx, dp=dp, act_adc=adc)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        report(r)
    sparsity_report(measured_sparsity(cfg=dp.datapath), sorted(set(a.context) | {4096}), dp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
