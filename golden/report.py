"""Error bounds of every golden block, stated vs measured: ``python -m golden.report``.

Each golden module with a stated bound defines ``error_report(cfg) -> list[dict]`` (rows
``block, quantity, domain, bound, measured``; ``measured`` is computed at call time).
This command imports the modules in ``MODULES``, prints one table
``block | quantity | domain | bound | measured | status`` and exits 1 if any row has
``measured > bound`` (or a non-finite value), or if a module that exists fails to import
or to report; 0 otherwise. Modules that do not exist yet, or that define no
``error_report``, are skipped with a note. Bounds and measurements are printed with
``repr`` so they read back as the exact floats (tests compare them with the modules'
constants). ``--json`` prints the rows as JSON instead; ``--only a,b`` limits the modules.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import numbers
import sys
import traceback
from collections.abc import Iterable
from typing import IO

from .config import DEFAULT, DatapathConfig

MODULES = (
    "quant",
    "tlmm",
    "requant",
    "rmsnorm",
    "rope",
    "softmax",
    "activations",
    "nl_adc",
    "model",
)
COLUMNS = ("block", "quantity", "domain", "bound", "measured", "status")
_KEYS = ("block", "quantity", "domain", "bound", "measured")


def _module_spec(name: str):
    try:
        return importlib.util.find_spec(f"golden.{name}")
    except (ImportError, ValueError):
        return None


def _error_row(name: str, what: str) -> dict:
    return {"block": name, "quantity": what, "domain": "-", "bound": math.nan, "measured": math.nan}


def collect(
    cfg: DatapathConfig = DEFAULT, modules: Iterable[str] = MODULES
) -> tuple[list[dict], list[str]]:
    """(rows, notes): every module's error_report rows, plus notes for skipped modules.

    A module that raises on import or in error_report, or returns malformed rows,
    yields one row with NaN bound/measured (which fails)."""
    rows: list[dict] = []
    notes: list[str] = []
    for name in modules:
        if _module_spec(name) is None:
            notes.append(f"golden.{name}: not present yet, skipped")
            continue
        try:
            mod = importlib.import_module(f"golden.{name}")
        except Exception as exc:  # reported, not hidden
            rows.append(_error_row(name, f"import failed: {type(exc).__name__}: {exc}"))
            continue
        report = getattr(mod, "error_report", None)
        if report is None:
            notes.append(f"golden.{name}: defines no error_report, skipped")
            continue
        try:
            got = list(report(cfg))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            rows.append(_error_row(name, f"error_report raised {type(exc).__name__}: {exc}"))
            continue
        for row in got:
            if not isinstance(row, dict) or any(k not in row for k in _KEYS):
                rows.append(_error_row(name, f"malformed row {row!r}"))
                continue
            rows.append({k: row[k] for k in _KEYS})
    return rows, notes


def passes(row: dict) -> bool:
    try:
        bound, measured = float(row["bound"]), float(row["measured"])
    except (TypeError, ValueError):
        return False
    return math.isfinite(bound) and math.isfinite(measured) and measured <= bound


def _cell(value) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(float(value))
    # the column separator must not appear inside a cell
    return str(value).replace(" | ", " / ").replace("\n", " ")


def render(rows: list[dict], notes: list[str], out: IO[str]) -> None:
    table = [[_cell(r[k]) for k in _KEYS] + ["OK" if passes(r) else "FAIL"] for r in rows]
    widths = [max([len(c)] + [len(t[i]) for t in table]) for i, c in enumerate(COLUMNS)]

    def line(cells):
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    print(line(COLUMNS), file=out)
    print("-+-".join("-" * w for w in widths), file=out)
    for t in table:
        print(line(t), file=out)
    n_fail = sum(t[-1] == "FAIL" for t in table)
    print(f"\n{len(table)} rows, {n_fail} failed", file=out)
    for note in notes:
        print(f"note: {note}", file=out)


def run(
    cfg: DatapathConfig = DEFAULT,
    modules: Iterable[str] = MODULES,
    as_json: bool = False,
    out: IO[str] | None = None,
) -> int:
    """Print the report; return the exit status (1 if any row fails)."""
    out = out or sys.stdout
    rows, notes = collect(cfg, modules)
    if as_json:
        json.dump(
            {"rows": [dict(r, status="OK" if passes(r) else "FAIL") for r in rows], "notes": notes},
            out,
            indent=1,
            default=float,
        )
        print(file=out)
    else:
        render(rows, notes, out)
    return 0 if all(passes(r) for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m golden.report", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(MODULES)}")
    args = ap.parse_args(argv)
    modules = MODULES
    if args.only:
        modules = tuple(m.strip() for m in args.only.split(",") if m.strip())
        unknown = [m for m in modules if m not in MODULES]
        if unknown:
            ap.error(f"--only: unknown module(s) {', '.join(unknown)}")
    return run(DEFAULT, modules, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
