"""Modeled decode speed and time to first token of full-size models from one simulated
layer: ``python -m host.perf_model`` (part of ``make bench``).

Shapes (``MODELS``): BitNet-0.73B (``BITNET_073B``, 1bitLLM/bitnet_b1_58-large: hidden 1536,
FFN 4096, 24 layers, 16 heads of 96, vocab 32002; SiLU FFN, tied embeddings) and BitNet
b1.58 2B-4T (``BITNET_2B4T``: hidden 2560, FFN 6912, 30 layers, 20 query / 5 KV heads of 128,
vocab 128256, ReLU², context 4096), on design points (``golden.config.AccelConfig``,
default kv260: its clock, DRAM bandwidth and latency -- 250 MHz, 17.1 GB/s and 32 cycles,
TeLLMe v2's KV260 figures). Each figure is modeled at the point's target clock and at the
clock its timing evidence supports (``--clocks``; the point at that clock is a point of
its own: the DRAM's bytes per cycle differ), and says which.

1. A one-layer model with those shapes (random weights: cycle counts do not depend on
   the values, except that all-zero rows skip the quantizer's divider) is compiled onto
   the Verilator-compiled accelerator (``host.backends.sim``) whose DRAM model is set to
   bandwidth / clock bytes per cycle and ``latency`` cycles. At most ``SIM_VOCAB`` vocab
   rows are simulated: the LM head's other rows are added at the simulated cycles per row
   (LM_HEAD streams its weight rows, so its cycles are linear in n; measured at n and n/2).
2. Decode (``measure``): the KV cache of positions 0..context-2 is filled with random codes
   and scales, and the decode step of the token at position context-1
   (``Runtime.step_commands``) runs one command at a time (each command's RTL cycles, its
   fetch included, and DMA bytes: the breakdown), then as three streams as the runtime
   issues them: EMBED, the layer's commands, final NORM_QUANT + LM_HEAD (the CYCLES
   counter of each). A token = EMBED + ``layers`` x layer + final norm and head; modeled
   tokens/s = clock / cycles. The host's share (int32 head accumulators x float scales,
   the argmax) is not counted.
3. Prefill (``measure_prefill``): a prompt run as one chunk (positions 0..prompt-1, the
   head on the last row) as the same three streams: time to first token and prefill
   tokens/s.

The bandwidth roofline counts the bytes that must cross the memory bus per decoded token:
packed ternary weights in the TLMM tile format (of the design point's TLMM), the LM head
as stored (int8), the KV cache read by QK and PV (codes + scale records), one embedding row
and the norm weights; divided by the bandwidth.

The command line models every ``--model`` x ``--design-point`` (decode at ``--context``
keys; prefill at ``--prompt`` tokens on ``--prefill-design-point``) x ``--clocks``, prints
each breakdown and a summary next to TeLLMe v2 and the roofline, and writes a figure
(``--plot``): decode tok/s against context, time to first token against prompt length.
``limits_exceeded`` says why a shape does not run on a design point (a dimension beyond its
``max_*``: the RTL would answer BAD_DIM), and ``measure`` / ``measure_prefill`` raise
``DoesNotRun`` with those reasons before building anything. The simulator is built from
``rtl_design_point(dp)`` -- the point with the fields that change no logic (clock, DRAM,
name, device, evidence) set to the defaults -- so points that differ only in those share
one Verilator build (``python -m host.dse`` sweeps them).
"""

from __future__ import annotations

import argparse
import os
import pickle
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
# TeLLMe v2 (FPGA'26), KV260, BitNet 0.73B at 250 MHz (DESIGN.md §7): decode tok/s, and
# time to first token for 64- and 128-token prompts
TELLME_V2_TOK_S = 25.0
TELLME_V2_TTFT_S = {64: 0.45, 128: 0.96}
DEFAULT_CONTEXTS = (128, 2048, 4096)  # decode positions modeled by default (keys)
DEFAULT_PROMPTS = (64, 128, 512)  # prompt lengths whose time to first token is modeled
# vocab rows simulated: a larger LM head is extrapolated from the simulated slope of its
# cycles in n (LM_HEAD streams its weight rows: linear in n, ``hw.ops.lm_head``), so that
# BitNet 2B-4T's 128256-row embedding (1.3 GB of int32) need not be in the simulated memory
SIM_VOCAB = 32768


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
    fwd = rt.cfg.forward  # the cache's format: the device datapath's kv_bits
    for li in range(mc.num_hidden_layers):
        for kv in ("k", "v"):
            codes = np.zeros((nkv, ctx, hd), np.int8)
            codes[:, :upto] = rng.integers(-fwd.kv_max, fwd.kv_max + 1, (nkv, upto, hd))
            rt.device.write(a.addr(f"kv{li}.{kv}"), isa.pack_kv(codes, fwd.kv_bits))
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
    one = _one_layer(mc, context)
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
    head = _extrapolate_head(rt, cmds[-1], mc.vocab_size, progress)
    cyc["final norm + LM head"] += head["extra_cycles"]
    rows[-1]["cycles"] += head["extra_cycles"]
    rows[-1]["bytes_read"] += head["extra_bytes"]
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
        "model": mc,
        "dp": dp,
        "lm_head": head,
    }


def _one_layer(mc: ModelConfig, positions: int) -> ModelConfig:
    """The simulated model: one layer of ``mc``, ``positions`` positions, at most
    ``SIM_VOCAB`` vocab rows (``_extrapolate_head`` adds the rest of the LM head)."""
    return replace(
        mc,
        num_hidden_layers=1,
        max_position_embeddings=positions,
        vocab_size=min(mc.vocab_size, SIM_VOCAB),
    )


def _extrapolate_head(rt, head_cmd, vocab: int, progress=None) -> dict:
    """The LM head's cycles and bytes beyond the simulated ``head_cmd.n`` rows, up to
    ``vocab``: the command alone at n and n/2 gives the slope per row (the x row and the
    set-up cancel), times the missing rows. Nothing when ``vocab`` was simulated."""
    from golden import isa
    from golden.isa import Opcode

    n = head_cmd.n
    if vocab <= n:
        return {"simulated_n": n, "extra_cycles": 0, "extra_bytes": 0, "cycles_per_row": None}
    dev, runs = rt.device, {}
    for m in (n // 2, n):
        before = dev.counters()
        rt.run_stream(
            [isa.command(Opcode.LM_HEAD, **{**head_cmd.args, "n": m}), isa.command(Opcode.END)]
        )
        after = dev.counters()
        runs[m] = (after["cycles"] - before["cycles"], after["bytes_read"] - before["bytes_read"])
    rows = n - n // 2
    per_row = (runs[n][0] - runs[n // 2][0]) / rows
    per_row_bytes = (runs[n][1] - runs[n // 2][1]) / rows
    extra = round(per_row * (vocab - n))
    if progress:
        progress(
            f"  LM head: {n} of {vocab} rows simulated; {per_row:.2f} cycles per row "
            f"(n = {n // 2} -> {n}) adds {extra} cycles for the other {vocab - n}"
        )
    return {
        "simulated_n": n,
        "extra_cycles": extra,
        "extra_bytes": round(per_row_bytes * (vocab - n)),
        "cycles_per_row": per_row,
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
    one = _one_layer(mc, prompt)
    t0 = time.perf_counter()
    progress(f"compiling a 1-layer model for a {prompt}-token prefill ...")
    model = random_model(one, seed)
    rt = _sim_runtime(model, mc, dp, max_chunk=prompt)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, one.vocab_size, prompt).astype(np.uint32)
    rt.device.write(rt.address_map.addr("tokens"), tokens)
    cmds = rt.step_commands(0, prompt, 1)[:-1]
    progress(f"  ready in {time.perf_counter() - t0:.1f} s; simulating {len(cmds)} commands")
    t1 = time.perf_counter()
    cyc = _part_cycles(rt, cmds, progress)
    head = _extrapolate_head(rt, cmds[-1], mc.vocab_size, progress)
    cyc["final norm + LM head"] += head["extra_cycles"]
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
        "model": mc,
        "dp": dp,
        "lm_head": head,
    }


def model_name(mc: ModelConfig) -> str:
    """The ``MODELS`` name of ``mc``'s shapes, else its shapes in a few words."""
    for name, m in MODELS.items():
        if m == mc:
            return name
    return (
        f"{mc.hidden_size}/{mc.intermediate_size}/{mc.num_attention_heads}x{mc.head_dim}/"
        f"vocab {mc.vocab_size}"
    )


def _head_note(r: dict, out) -> None:
    h = r["lm_head"]
    if h["cycles_per_row"] is not None:
        out(
            f"  LM head: {h['simulated_n']} of {r['model'].vocab_size} rows simulated, the "
            f"other rows at the simulated {h['cycles_per_row']:.2f} cycles per row "
            f"(+{h['extra_cycles']} cycles)"
        )


def report(r: dict, out=print) -> None:
    L, clk = r["layers"], r["clock_hz"]
    out(
        f"\n{model_name(r['model'])} shapes, decode at context {r['context']}, design point "
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
    vs = (  # TeLLMe v2's figure is of the 0.73B model
        f"   (TeLLMe v2: {TELLME_V2_TOK_S:.0f} tok/s, x{r['tok_s'] / TELLME_V2_TOK_S:.2f}; "
        f"target >= {2 * TELLME_V2_TOK_S:.0f})"
        if r["model"] == BITNET_073B
        else ""
    )
    out(f"modeled decode: {r['tok_s']:.1f} tok/s{vs}")
    if r.get("act_adc"):
        out(f"ACT activation: {r['act_adc']}")
    out(
        f"ACT by hw.ops.act.expected_cycles (no memory stalls): {r['act_formula_cycles']} "
        "cycles per token and layer"
    )
    if r["host_ops"]:
        out(f"  NOTE: ops run on the host (0 cycles counted): {r['host_ops']}")
    _head_note(r, out)
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


def prefill_report(r: dict, out=print) -> None:
    c, L = r["cycles"], r["layers"]
    out(
        f"\n{model_name(r['model'])} shapes, prefill of {r['prompt']} tokens (one chunk), "
        f"design point {r['design_point']} at {r['clock_note']} (one layer simulated in "
        f"{r['sim_wall_s']:.1f} s wall)"
    )
    out(
        f"time to first token = embed {c['embed']} + {L} x {c['layer']} + final norm & LM "
        f"head {c['final norm + LM head']} = {r['ttft_cycles']} cycles = "
        f"{r['ttft_s'] * 1e3:.1f} ms; prefill {r['prefill_tok_s']:.1f} tok/s"
    )
    ref = TELLME_V2_TTFT_S.get(r["prompt"]) if r["model"] == BITNET_073B else None
    if ref:
        out(f"  TeLLMe v2: {ref:.2f} s for {r['prompt']} tokens (x{ref / r['ttft_s']:.2f})")
    _head_note(r, out)


def _at_clocks(dp: AccelConfig, clocks) -> list[AccelConfig]:
    """``dp`` at each of ``clocks`` ("target": its own; "evidence": the clock its timing
    evidence supports, where it has some), each a point of its own for the DRAM model."""
    out = []
    for c in clocks:
        if c == "target":
            out.append(dp)
        elif dp.evidence_mhz is not None and dp.evidence_mhz != dp.clock_mhz:
            out.append(dp.with_(clock_mhz=dp.evidence_mhz, name=f"{dp.name}@evidence"))
    return out


def summary(decode: list, prefill: list, out=print) -> None:
    """One table of every modeled figure: model, design point, clock, decode tok/s per
    context next to its roofline, TTFT per prompt."""
    out("\nsummary (modeled from simulated cycles; each row names its clock)")
    out(f"{'model':<13} {'point':<22} {'MHz':>6} {'what':<16} {'modeled':>15} {'roofline':>14}")
    for r in decode:
        out(
            f"{model_name(r['model']):<13} {r['design_point']:<22} {r['clock_hz'] / 1e6:>6.1f} "
            f"{'decode @' + str(r['context']):<16} {r['tok_s']:>9.1f} tok/s "
            f"{r['roofline_tok_s']:>8.1f} tok/s"
        )
    for r in prefill:
        out(
            f"{model_name(r['model']):<13} {r['design_point']:<22} {r['clock_hz'] / 1e6:>6.1f} "
            f"{'TTFT ' + str(r['prompt']):<16} {r['ttft_s'] * 1e3:>12.1f} ms"
        )
    for r in decode:  # the LM head's share of the bytes (roofline), once per model
        if r is next(d for d in decode if d["model"] == r["model"]):
            roof = r["roofline"]
            out(
                f"{model_name(r['model'])}: the LM head is "
                f"{roof['LM head (int8)'] / sum(roof.values()):.0%} of a decoded token's "
                f"bytes at {r['context']} keys"
            )
    out(
        f"TeLLMe v2 (KV260, 250 MHz, BitNet 0.73B): decode {TELLME_V2_TOK_S:g} tok/s, TTFT "
        + ", ".join(f"{v:g} s at {k}" for k, v in TELLME_V2_TTFT_S.items())
    )


def plot(decode: list, prefill: list, path: str) -> str:
    """Decode tok/s against context (each point, its roofline, TeLLMe v2) and time to first
    token against prompt length, one row of panels per model; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(model_name(r["model"]) for r in decode + prefill))
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 3.8 * len(models)), squeeze=False)
    for (ax_d, ax_p), name in zip(axes, models, strict=True):
        mc = next(r["model"] for r in decode + prefill if model_name(r["model"]) == name)
        series = defaultdict(list)
        for r in decode:
            if model_name(r["model"]) == name:
                series[(r["design_point"], r["clock_hz"])].append(r)
        roofs = {}
        for (pt, hz), rs in series.items():
            rs.sort(key=lambda r: r["context"])
            ax_d.plot(
                [r["context"] for r in rs], [r["tok_s"] for r in rs], "o-",
                label=f"{pt} @ {hz / 1e6:g} MHz",
            )  # fmt: skip
            dp = rs[0]["dp"]
            roofs.setdefault((dp.datapath, rs[0]["bandwidth_bps"]), pt)
        xs = np.linspace(16, mc.max_position_embeddings, 128)
        for (dpath, bw), pt in roofs.items():
            ys = [bw / sum(roofline_bytes(mc, int(x), dpath).values()) for x in xs]
            ax_d.plot(xs, ys, "--", lw=1, label=f"roofline ({pt}'s formats, {bw / 1e9:g} GB/s)")
        if mc == BITNET_073B:
            ax_d.axhline(TELLME_V2_TOK_S, color="k", lw=1, ls=":", label="TeLLMe v2")
        ax_d.set(xlabel="context (keys)", ylabel="decode tok/s", title=f"{name}: decode")
        ax_d.set_ylim(bottom=0)
        ax_d.legend(fontsize=7)
        series = defaultdict(list)
        for r in prefill:
            if model_name(r["model"]) == name:
                series[(r["design_point"], r["clock_hz"])].append(r)
        for (pt, hz), rs in series.items():
            rs.sort(key=lambda r: r["prompt"])
            ax_p.plot(
                [r["prompt"] for r in rs], [r["ttft_s"] for r in rs], "o-",
                label=f"{pt} @ {hz / 1e6:g} MHz",
            )  # fmt: skip
        if mc == BITNET_073B:
            ax_p.plot(
                list(TELLME_V2_TTFT_S), list(TELLME_V2_TTFT_S.values()), "ks", label="TeLLMe v2"
            )
        ax_p.set(xlabel="prompt tokens", ylabel="time to first token (s)", title=f"{name}: TTFT")
        ax_p.set_ylim(bottom=0)
        ax_p.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class TaskFailed(Exception):
    """A measurement that raised: its traceback, reported with the others' results."""


def _task(task, adc=None, progress=print):
    """One measurement of ``main``'s list: the result, the DoesNotRun it raised, or a
    TaskFailed with the traceback of any other error (the other measurements go on)."""
    import traceback

    kind, name, dp, size = task
    try:
        if kind == "decode":
            return measure(MODELS[name], context=size, dp=dp, act_adc=adc, progress=progress)
        return measure_prefill(MODELS[name], prompt=size, dp=dp, progress=progress)
    except DoesNotRun as e:
        return e
    except Exception:  # noqa: BLE001 -- reported by main, which exits 1
        return TaskFailed(traceback.format_exc())


def _quiet_task(task, adc=None):
    kind, name, dp, size = task
    t0 = time.perf_counter()
    r = _task(task, adc, progress=lambda *_: None)
    print(
        f"  done: {name} {kind} at {size} on {dp.name} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return r


def _run_tasks(tasks, jobs: int, adc=None) -> list:
    """The measurements in order: one after the other (their progress printed), or
    ``jobs`` at a time in worker processes (each simulation is single-threaded)."""
    if jobs <= 1 or len(tasks) <= 1:
        return [_task(t, adc) for t in tasks]
    from concurrent.futures import ProcessPoolExecutor

    print(f"{len(tasks)} measurements, {jobs} at a time ...")
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        return list(ex.map(_quiet_task, tasks, [adc] * len(tasks)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m host.perf_model", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--model", nargs="+", default=list(MODELS), choices=list(MODELS), help="shapes to model"
    )
    for flag, default, what in (
        ("--context", DEFAULT_CONTEXTS, "decode positions + 1 (keys) to model"),
        ("--prompt", DEFAULT_PROMPTS, "prompt lengths whose time to first token is modeled"),
    ):
        ap.add_argument(
            flag,
            type=int,
            nargs="*",
            default=list(default),
            help=f"{what} (none: none; beyond a model's context: skipped)",
        )
    ap.add_argument(
        "--design-point", nargs="+", default=[DEFAULT_DESIGN_POINT], help="named design points"
    )
    ap.add_argument(
        "--prefill-design-point",
        nargs="+",
        default=None,
        help="named design points for the prefill figures (default: --design-point's)",
    )
    ap.add_argument(
        "--clocks",
        nargs="+",
        choices=("target", "evidence"),
        default=["target", "evidence"],
        help="model each point at its target clock and/or the clock its timing evidence supports",
    )
    ap.add_argument("--clock-mhz", type=float, default=None, help="override its clock")
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="override its DRAM GB/s")
    ap.add_argument("--latency", type=int, default=None, help="override its DRAM latency")
    ap.add_argument(
        "--plot", default="build/bench/perf_model.png", help="figure to write ('' for none)"
    )
    ap.add_argument("--no-sparsity", action="store_true", help="skip the exact-sparsity roofline")
    ap.add_argument(
        "--jobs", type=int, default=1, help="measurements simulated at once (processes)"
    )
    ap.add_argument("--save", default="", help="write this run's results to a file (pickle)")
    ap.add_argument(
        "--load", nargs="*", default=[], help="results of earlier runs (--save) to show with these"
    )
    from host.runtime import act_adc_from_args, add_act_adc_args

    add_act_adc_args(ap)
    a = ap.parse_args(argv)
    try:
        adc = act_adc_from_args(a)
        points, pre_points = (
            [
                q
                for name in names
                for q in _at_clocks(
                    design_point_with(name, a.clock_mhz, a.bandwidth_gbs, a.latency), a.clocks
                )
            ]
            for names in (a.design_point, a.prefill_design_point or a.design_point)
        )
        if not points or not pre_points:
            raise ValueError("--clocks: no design point has timing evidence to model at")
        if any(c < 1 for c in a.context) or any(p < 1 for p in a.prompt):
            raise ValueError("--context / --prompt: must be >= 1")
        if a.jobs < 1:
            raise ValueError(f"--jobs: must be >= 1, got {a.jobs}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = []  # (kind, model name, point, keys or prompt tokens)
    for name in a.model:
        mc = MODELS[name]
        for kind, pts, sizes, unit in (
            ("decode", points, a.context, "keys"),
            ("prefill", pre_points, a.prompt, "tokens"),
        ):
            for dp in pts:
                for size in sizes:
                    if size > mc.max_position_embeddings:
                        print(
                            f"{name}: {kind} at {size} {unit} on {dp.name} > its context "
                            f"{mc.max_position_embeddings}: skipped"
                        )
                    else:
                        tasks.append((kind, name, dp, size))
    decode, prefill, failed = [], [], 0
    for task, r in zip(tasks, _run_tasks(tasks, a.jobs, adc), strict=True):
        if isinstance(r, DoesNotRun):
            print(f"\n{task[1]}: {r}")
        elif isinstance(r, TaskFailed):
            failed += 1
            print(f"\nFAILED: {task[1]} {task[0]} at {task[3]} on {task[2].name}:\n{r}")
        elif task[0] == "decode":
            report(r)
            decode.append(r)
        else:
            prefill_report(r)
            prefill.append(r)
    for path in a.load:  # earlier runs' results (--save), shown with these
        with open(path, "rb") as f:
            more = pickle.load(f)
        decode, prefill = more["decode"] + decode, more["prefill"] + prefill
    if a.save:
        os.makedirs(os.path.dirname(os.path.abspath(a.save)), exist_ok=True)
        with open(a.save, "wb") as f:
            pickle.dump({"decode": decode, "prefill": prefill}, f)
    summary(decode, prefill)
    if a.plot and (decode or prefill):
        print(f"figure: {plot(decode, prefill, a.plot)}")
    if not a.no_sparsity:
        dp = points[0]
        sparsity_report(measured_sparsity(cfg=dp.datapath), sorted(set(a.context)), dp)
    if failed:
        print(f"error: {failed} measurement(s) failed (above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
