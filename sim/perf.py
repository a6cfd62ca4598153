"""Measured RTL cycle counts (cocotb on Verilator) for benchmarks: ``python -m sim.perf``.

:func:`tlmm_cycles` simulates one M x K x N ternary matmul on ``hw.tlmm.TLMM`` with no
stalls (streams always valid/ready), checks the result against ``golden.tlmm`` and
returns the measured cycles with the documented formula and the ideal
M*K*N / (G*T*Q).  The first call per parameter set compiles the design (tens of seconds);
later calls reuse the build under ``build/sim/``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from golden.config import DEFAULT, TLMMConfig
from hw.tlmm import DEFAULT_MAX_K, TLMM, chunk_count

# (M tokens, K, N outputs): decode and a short prefill at BitNet-0.73B-like widths
DEFAULT_SHAPES = ((1, 1536, 1536), (1, 4096, 1536), (4, 1536, 1536))


def tlmm_cycles(
    m: int = 1,
    k: int = 1536,
    n: int = 1536,
    cfg: TLMMConfig = DEFAULT.tlmm,
    max_k: int = DEFAULT_MAX_K,
    tree_levels_per_stage: int = 2,
) -> dict:
    """Measured cycles of y[M, N] = x[M, K] @ w[N, K]^T on the TLMM RTL (no stalls).

    Returns ``{"m", "k", "n", "cycles", "formula_cycles", "ideal_cycles", "efficiency",
    "chunks"}``; ``efficiency`` = ideal / measured.  Raises AssertionError if the RTL
    result differs from golden or the count differs from the documented formula.
    """
    from sim.runner import run_bench

    if not 1 <= k <= max_k:
        raise ValueError(f"k: must be in [1, max_k={max_k}], got {k}")
    hw = {"cfg": asdict(cfg), "max_k": max_k, "tree": tree_levels_per_stage}
    params = {
        "cfg": asdict(cfg),
        "max_k": max_k,
        "tree_levels_per_stage": tree_levels_per_stage,
        "perf": {"m": m, "k": k, "n": n},
    }
    dut = TLMM(cfg, max_k=max_k, tree_levels_per_stage=tree_levels_per_stage)
    (rec,) = run_bench(
        dut,
        bench="sim.tlmm_bench",
        name="tlmm",
        params=params,
        build_key=hw,
        block="tlmm_perf",
        testcase="test_throughput",
        quiet=True,
    )
    return {
        "m": m,
        "k": k,
        "n": n,
        "cycles": rec["op_cycles"],
        "formula_cycles": rec["formula_cycles"],
        "ideal_cycles": rec["ideal_cycles"],
        "efficiency": rec["ideal_cycles"] / rec["op_cycles"],
        "chunks": chunk_count(k, cfg),
    }


def main() -> int:
    cfg = DEFAULT.tlmm
    print(
        f"TLMM RTL cycles, G={cfg.group} T={cfg.tables} Q={cfg.replicas} {cfg.table} table, "
        f"no stalls (measured in Verilator)"
    )
    print(f"{'M':>3} {'K':>6} {'N':>6} {'cycles':>9} {'formula':>9} {'ideal':>9} {'of ideal':>9}")
    for m, k, n in DEFAULT_SHAPES:
        r = tlmm_cycles(m, k, n, cfg)
        print(
            f"{m:>3} {k:>6} {n:>6} {r['cycles']:>9} {r['formula_cycles']:>9} "
            f"{r['ideal_cycles']:>9.0f} {r['efficiency']:>9.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
