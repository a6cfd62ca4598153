"""The RTL regression with a per-block summary: ``python -m sim.regress`` (``make sim``).

Runs every ``sim/test_*.py`` through pytest (one subprocess, so the root ``conftest.py``
seed logic applies: ``SEED=n`` reproduces a run) and then prints, per block (``test_X.py``
-> block ``X``, so blocks added later appear without touching this file):

    pytest tests passed/total, cocotb tests passed/total, vectors checked, simulated
    cycles, wall time (pytest's, build included), Verilator build time.

Vectors and cycles come from the JSON records ``sim.runner.run_bench`` writes to
``build/sim/records/`` (cleared first).  Extra arguments go to pytest, e.g.
``python -m sim.regress -k tlmm`` or ``python -m sim.regress -x``.  The exit status is
pytest's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from xml.etree import ElementTree

from sim.runner import BUILD_ROOT, RECORD_DIR, ROOT


def _blocks() -> list[str]:
    return sorted(p.stem[len("test_") :] for p in (ROOT / "sim").glob("test_*.py"))


def _junit(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(lambda: {"tests": 0, "passed": 0, "wall_s": 0.0})
    if not path.is_file():
        return out
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        mod = (case.get("classname") or "").rsplit(".", 1)[-1]
        if not mod.startswith("test_"):
            continue
        b = out[mod[len("test_") :]]
        if case.find("skipped") is not None:
            continue
        b["tests"] += 1
        b["wall_s"] += float(case.get("time") or 0.0)
        if case.find("failure") is None and case.find("error") is None:
            b["passed"] += 1
    return out


def _records() -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(
        lambda: {"cocotb": 0, "cocotb_passed": 0, "vectors": 0, "cycles": 0, "builds": {}}
    )
    if not RECORD_DIR.is_dir():
        return out
    for f in sorted(RECORD_DIR.glob("*.json")):
        r = json.loads(f.read_text())
        b = out[r.get("block", "?")]
        b["cocotb"] += 1
        b["cocotb_passed"] += int(bool(r.get("passed")))
        b["vectors"] += int(r.get("vectors") or 0)
        b["cycles"] += int(r.get("cycles") or 0)
        b["builds"][r.get("param_hash")] = float(r.get("build_s") or 0.0)
    return out


def summary_rows() -> list[dict]:
    junit = _junit(BUILD_ROOT / "regress_junit.xml")
    recs = _records()
    rows = []
    for block in sorted(set(_blocks()) | set(junit) | set(recs)):
        j, r = junit.get(block, {}), recs.get(block, {})
        if not j and not r:
            continue
        rows.append(
            {
                "block": block,
                "pytest": f"{j.get('passed', 0)}/{j.get('tests', 0)}",
                "cocotb": f"{r.get('cocotb_passed', 0)}/{r.get('cocotb', 0)}",
                "vectors": r.get("vectors", 0),
                "cycles": r.get("cycles", 0),
                "wall_s": j.get("wall_s", 0.0),
                "build_s": sum(r.get("builds", {}).values()),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    head = ("block", "pytest", "cocotb", "vectors", "sim cycles", "wall s", "build s")
    body = [
        (
            r["block"],
            r["pytest"],
            r["cocotb"],
            f"{r['vectors']:,}",
            f"{r['cycles']:,}",
            f"{r['wall_s']:.1f}",
            f"{r['build_s']:.1f}",
        )
        for r in rows
    ]
    if rows:
        body.append(
            (
                "total",
                "",
                "",
                f"{sum(r['vectors'] for r in rows):,}",
                f"{sum(r['cycles'] for r in rows):,}",
                f"{sum(r['wall_s'] for r in rows):.1f}",
                f"{sum(r['build_s'] for r in rows):.1f}",
            )
        )
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]

    def row(cells) -> str:  # the first column left-aligned, the others right-aligned
        cols = enumerate(zip(cells, widths, strict=False))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in cols)

    line = row(head)
    print(line)
    print("-" * len(line))
    for b in body:
        print(row(b))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    shutil.rmtree(RECORD_DIR, ignore_errors=True)
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    junit = BUILD_ROOT / "regress_junit.xml"
    junit.unlink(missing_ok=True)
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sim").glob("test_*.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}", *tests, *argv]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT, env=dict(os.environ))
    wall = time.time() - t0
    print()
    print(f"RTL regression summary ({wall:.0f} s wall, pytest exit status {rc})")
    print_table(summary_rows())
    return rc


if __name__ == "__main__":
    sys.exit(main())
