"""Benchmarks of the golden models: ``python -m golden.bench`` (``make bench``).

Every figure is measured in the run that prints it. Sections are functions in
``SECTIONS``, run in order; each returns ``(title, header, rows)`` and may be run alone
(``python -m golden.bench tlmm``). Add a benchmark by appending a function.

Timing: best of up to ``MAX_REPS`` runs (at least one, stopping early once a section's
per-measurement budget is spent), wall clock (``time.perf_counter``), one process.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from . import tlmm as _tlmm
from .config import DEFAULT

MAX_REPS = 5
BUDGET_S = 0.8  # per measurement: stop repeating once this much time is spent


def best_time(
    fn: Callable[[], object], max_reps: int = MAX_REPS, budget_s: float = BUDGET_S
) -> float:
    """Best wall time of fn() over up to max_reps runs within about budget_s."""
    best = float("inf")
    start = time.perf_counter()
    for _ in range(max_reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return best


# --------------------------------------------------------------------------- sections
TLMM_SHAPES = ((1, 1536, 1536), (1, 4096, 4096), (64, 1536, 1536), (64, 4096, 4096))


def bench_tlmm():
    """Golden TLMM (online table build + lookup-accumulate; weights encoded offline, as the
    packed weight image) vs numpy int32 matmul of the same shape, G=3 full and mirrored."""
    rng = np.random.default_rng(0)
    lo, hi = -(1 << (DEFAULT.tlmm.act_bits - 1)), (1 << (DEFAULT.tlmm.act_bits - 1)) - 1
    rows = []
    for m, k, n in TLMM_SHAPES:
        x = rng.integers(lo, hi + 1, size=(m, k)).astype(np.int8)
        w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
        # [N, K] row-major: numpy's integer (non-BLAS) matmul is fastest with K contiguous
        x32, w32 = x.astype(np.int32), w.astype(np.int32)
        ref = x32 @ w32.T
        t_np = best_time(lambda x32=x32, w32=w32: x32 @ w32.T)
        macs = m * k * n
        for table in ("full", "mirrored"):
            cfg = replace(DEFAULT.tlmm, group=3, table=table)
            index, sign = _tlmm.encode_weights(w, cfg)

            def run(x=x, cfg=cfg, index=index, sign=sign):
                return _tlmm.lookup_accumulate(_tlmm.build_tables(x, cfg), index, sign, cfg)

            if not np.array_equal(run(), ref):
                raise AssertionError(f"tlmm != matmul for {m}x{k}x{n} {table}")
            t = best_time(run)
            rows.append(
                (
                    f"{m}x{k}x{n}",
                    f"G={cfg.group} {table}",
                    f"{macs / t / 1e9:.3f}",
                    f"{macs / t_np / 1e9:.3f}",
                    f"{t_np / t:.2f}",
                )
            )
    header = ("MxKxN", "table", "tlmm GMAC/s", "numpy int32 GMAC/s", "tlmm/numpy")
    return "TLMM golden throughput", header, rows


SECTIONS: list[Callable[[], tuple[str, tuple, list]]] = [bench_tlmm]


# --------------------------------------------------------------------------- driver
def format_table(title: str, header: tuple, rows: list) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=False))  # noqa: E731
    return "\n".join(
        [f"== {title}", line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    )


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    chosen = [s for s in SECTIONS if not names or s.__name__.removeprefix("bench_") in names]
    if names and not chosen:
        print(
            f"unknown section(s) {names}; have "
            f"{[s.__name__.removeprefix('bench_') for s in SECTIONS]}",
            file=sys.stderr,
        )
        return 2
    print(f"golden.bench: numpy {np.__version__}, one process")
    total = time.perf_counter()
    for section in chosen:
        t0 = time.perf_counter()
        title, header, rows = section()
        print(format_table(title, header, rows))
        print(f"({time.perf_counter() - t0:.1f} s)\n")
    print(f"total {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
