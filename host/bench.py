"""Model-level benchmark: ``python -m host.bench`` (part of ``make bench``).

For the shipped model, measured in one run: tokens/s of prefill and decode through the
golden forward, the golden command-stream device and the Verilator-compiled accelerator
(``sim``); the accelerator's RTL cycles per decoded token and the modeled tokens/s at the
stated clock; Verilator simulated cycles per wall second; and where the sim backend's wall
time goes (RTL vs ops still run on the host).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from golden.config import DEFAULT_DESIGN_POINT, design_point  # noqa: E402
from host.data import DEFAULT_MODEL  # noqa: E402


def _decode_run(gm, prompt, n_decode: int) -> dict:
    """Prefill ``prompt`` then greedily decode ``n_decode`` tokens; wall times per phase."""
    import numpy as np

    cache = gm.new_cache()
    t0 = time.perf_counter()
    logits = gm.forward(np.asarray(prompt), cache)
    t1 = time.perf_counter()
    c1 = _cycles(gm)
    tok = int(np.argmax(logits[-1]))
    for _ in range(n_decode):
        logits = gm.forward(np.asarray([tok]), cache)
        tok = int(np.argmax(logits[-1]))
    t2 = time.perf_counter()
    c2 = _cycles(gm)
    r = {
        "prefill_tok_s": len(prompt) / (t1 - t0),
        "decode_tok_s": n_decode / (t2 - t1),
        "decode_wall_s": t2 - t1,
    }
    if c1 is not None:
        r["decode_cycles_per_tok"] = (c2 - c1) / n_decode
        r["sim_cycles_per_wall_s"] = (c2 - c1) / (t2 - t1)
    return r


def _cycles(gm):
    counters = getattr(gm, "counters", None)
    return counters().get("cycles") if counters else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host.bench", description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--decode-tokens", type=int, default=32)
    a = ap.parse_args(argv)

    from golden.model import GoldenModel
    from host.checkpoint import load
    from host.runtime import make_runtime

    dp = design_point(DEFAULT_DESIGN_POINT)  # the sim backend's DRAM and the modeled clock
    model = load(a.model)
    prompt = [i % model.config.vocab_size for i in range(a.prompt_tokens)]
    runs = [
        ("golden forward (integer)", lambda: GoldenModel(model, mode="integer")),
        ("golden device (command stream)", lambda: make_runtime(model, "golden")),
        (
            "sim device (Verilator RTL)",
            lambda: make_runtime(model, "sim", dp=dp),
        ),
    ]
    print(
        f"model {a.model}: {a.prompt_tokens}-token prefill, {a.decode_tokens} greedy decode "
        f"steps (measured, this machine)"
    )
    print(
        f"{'backend':<32} {'prefill tok/s':>14} {'decode tok/s':>13} {'cycles/tok':>11} "
        f"{f'modeled tok/s @{dp.clock_mhz:g}MHz':>22} {'sim cycles/s':>13}"
    )
    for name, make in runs:
        print(f"{name:<32} ", end="", flush=True)
        gm = make()
        r = _decode_run(gm, prompt, a.decode_tokens)
        cyc = r.get("decode_cycles_per_tok")
        cps = r.get("sim_cycles_per_wall_s")
        print(
            f"{r['prefill_tok_s']:>14.1f} {r['decode_tok_s']:>13.1f} "
            f"{(f'{cyc:.0f}' if cyc else '-'):>11} "
            f"{(f'{dp.clock_mhz * 1e6 / cyc:.0f}' if cyc else '-'):>22} "
            f"{(f'{cps:.0f}' if cyc else '-'):>13}"
        )
        stats = getattr(getattr(gm, "device", None), "stats", None)
        if stats:
            tot = stats["rtl_s"] + stats["host_s"]
            print(
                f"{'':<32}   sim wall time: RTL {stats['rtl_s']:.2f} s, host-run ops "
                f"{stats['host_s']:.2f} s ({stats['rtl_s'] / max(tot, 1e-9):.0%} in Verilator)"
            )
    print(
        f"modeled tok/s = the clock / (RTL cycles per decoded token); clock "
        f"{dp.clock_note()}; the DRAM model at {dp.dram_gbs:g} GB/s "
        f"({dp.bytes_per_cycle:.1f} B/cycle), latency {dp.dram_latency} cycles"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
