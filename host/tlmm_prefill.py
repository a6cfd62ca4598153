"""TLMM time of a prompt by the engine's exact cycle formula, per multi-token P:
``python -m host.tlmm_prefill [--prompts 64 128 512] [--tokens 1 2 4 8]``.

For each model of ``host.perf_model.MODELS`` and prompt length, the TLMM commands the
runtime issues for a prompt (``max_chunk``-token chunks; per layer q/k/v/o, gate/up,
down) are counted with ``hw.ops.tlmm.expected_cycles(..., tokens=P)`` (no memory stalls,
the design point's DRAM latency), each raised to its bytes over the DRAM bandwidth where
that is longer: the weight-reuse gain of ``AccelConfig.tlmm_tokens`` alone, not a
simulated layer (attention, norms and the LM head are not included). As the runtime
does: a ReLU² up_proj is masked (row by row at any P), and a projection with k above the
design point's ``max_k`` runs as one TLMM per K slice over all rows (``host.runtime.k_slices``;
the ADDs that sum the slices are not counted).
"""

from __future__ import annotations

import argparse

from golden import isa
from golden.config import AccelConfig, design_point
from golden.modelspec import ModelConfig
from host.runtime import k_slices
from hw.ops.tlmm import expected_cycles

DEFAULT_CHUNK = 64  # host.runtime.DEFAULT_MAX_CHUNK


def _command(rows: int, k: int, n: int, dp: AccelConfig, tokens: int, masked: bool) -> float:
    """One TLMM command: max(formula cycles, bytes / bandwidth)."""
    cfg, tc = dp.datapath, dp.datapath.tlmm
    lat = dp.dram_latency
    if masked:
        cyc = expected_cycles(rows, k, n, cfg, lat, masked=True, dma_bytes=dp.dma_bytes)
    else:
        cyc = expected_cycles(rows, k, n, cfg, lat, tokens=tokens)
    passes = isa.tlmm_weight_passes(rows, tokens, masked)
    nbytes = rows * k + passes * isa.tlmm_weight_bytes(n, k, tc) + rows * n * 4
    nbytes += rows * n * 4 if masked else 0
    return max(cyc, nbytes / dp.bytes_per_cycle)


def layer_cycles(mc: ModelConfig, dp: AccelConfig, rows: int, tokens: int) -> float:
    """The TLMM cycles of one layer for a chunk of ``rows`` tokens."""
    h, i = mc.hidden_size, mc.intermediate_size
    q, kv = mc.num_attention_heads * mc.head_dim, mc.num_key_value_heads * mc.head_dim
    relu2 = mc.hidden_act == "relu2"
    projs = [(q, h, False), (kv, h, False), (kv, h, False), (h, q, False)]
    projs += [(i, h, False), (i, h, relu2), (h, i, False)]  # gate, up (masked), down
    total = 0.0
    for n, k, masked in projs:
        for k0, k1 in k_slices(k, dp.max_k, dp.datapath.tlmm):
            total += _command(rows, k1 - k0, n, dp, tokens, masked)
    return total


def prompt_ms(mc: ModelConfig, dp: AccelConfig, prompt: int, tokens: int, chunk: int) -> float:
    """TLMM milliseconds of a ``prompt``-token prefill at the design point's clock."""
    cyc = sum(layer_cycles(mc, dp, min(chunk, prompt - s), tokens) for s in range(0, prompt, chunk))
    return cyc * mc.num_hidden_layers / (dp.clock_mhz * 1e3)


def main(argv=None) -> int:
    from host.perf_model import MODELS

    ap = argparse.ArgumentParser(prog="python -m host.tlmm_prefill", description=__doc__)
    ap.add_argument("--prompts", type=int, nargs="+", default=[64, 128, 512])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--design-point", default="kv260")
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    a = ap.parse_args(argv)
    dp = design_point(a.design_point)
    print(
        f"TLMM time of a prompt (ms; hw.ops.tlmm.expected_cycles per command, DRAM-bound "
        f"at {dp.bytes_per_cycle:.1f} B/cycle; {dp.clock_mhz:g} MHz; {a.chunk}-token chunks)"
    )
    print("model          prompt  " + "  ".join(f"{f'P={p}':>15}" for p in a.tokens))
    for name, mc in MODELS.items():
        for prompt in a.prompts:
            ms = [prompt_ms(mc, dp.with_(tlmm_tokens=p), prompt, p, a.chunk) for p in a.tokens]
            cells = [f"{v:7.0f} ({ms[0] / v:.2f}x)" for v in ms]
            print(f"{name:<14} {prompt:6d}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
