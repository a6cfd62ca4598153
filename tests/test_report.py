"""golden/report.py: `python -m golden.report` passes and prints the modules' own bounds."""

import importlib
import importlib.machinery
import importlib.util
import io
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from golden import activations, report, rmsnorm, rope, softmax

ROOT = Path(__file__).resolve().parents[1]

# The bounds of the blocks this package's nonlinear modules define, in report order.
OWN_BOUNDS = {
    "rmsnorm": [rmsnorm.RSQRT_REL_ERR, rmsnorm.SCALE_REL_ERR, rmsnorm.OUT_ERR_LSB],
    "rope": [rope.TABLE_ERR, rope.INT8_ERR_LSB, rope.ERR_RATIO],
    "softmax": [softmax.EXP_REL_ERR, softmax.PROB_ABS_ERR, softmax.VEC_VS_SEQ_LSB],
    "activations": [activations.GELU_ABS_ERR, activations.SILU_ABS_ERR, activations.RELU2_ABS_ERR],
}


def parse_table(text: str) -> list[dict]:
    lines = text.splitlines()
    assert lines[0].split(" | ")[0].strip() == "block"
    rows = []
    for line in lines[2:]:
        if not line.strip():
            break
        block, rest = line.split(" | ", 1)
        middle, bound, measured, status = rest.rsplit(" | ", 3)
        rows.append(
            {
                "block": block.strip(),
                "bound": float(bound),
                "measured": float(measured),
                "status": status.strip(),
            }
        )
    return rows


@pytest.fixture(scope="module")
def cli():
    proc = subprocess.run(
        [sys.executable, "-m", "golden.report"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, parse_table(proc.stdout)


def test_exits_zero_and_every_row_passes(cli):
    proc, rows = cli
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rows and all(r["status"] == "OK" for r in rows)
    assert all(r["measured"] <= r["bound"] for r in rows)
    assert f"{len(rows)} rows, 0 failed" in proc.stdout


def test_every_present_module_reports_or_is_noted(cli):
    proc, rows = cli
    blocks = {r["block"] for r in rows}
    for name in report.MODULES:
        present = importlib.util.find_spec(f"golden.{name}") is not None
        if present and hasattr(importlib.import_module(f"golden.{name}"), "error_report"):
            assert name in blocks, name
        else:
            assert f"note: golden.{name}:" in proc.stdout, name
    assert {"rmsnorm", "rope", "softmax", "activations"} <= blocks


def test_printed_bounds_are_the_module_constants(cli):
    _, rows = cli
    for block, bounds in OWN_BOUNDS.items():
        assert [r["bound"] for r in rows if r["block"] == block] == bounds, block
    # every other block: the printed bounds are exactly those its module's error_report
    # states (its constants, or functions of its config)
    for name in {r["block"] for r in rows} - set(OWN_BOUNDS):
        stated = [
            float(r["bound"]) for r in importlib.import_module(f"golden.{name}").error_report()
        ]
        assert [r["bound"] for r in rows if r["block"] == name] == stated, name


def _fake_module(monkeypatch, name: str, report_fn) -> None:
    mod = types.ModuleType(f"golden.{name}")
    mod.__spec__ = importlib.machinery.ModuleSpec(f"golden.{name}", None)
    if report_fn is not None:
        mod.error_report = report_fn
    monkeypatch.setitem(sys.modules, f"golden.{name}", mod)


def test_failing_or_broken_rows_exit_nonzero(monkeypatch):
    row = {
        "block": "fake",
        "quantity": "q | with bar",
        "domain": "d",
        "bound": 1.0,
        "measured": 2.0,
    }
    _fake_module(monkeypatch, "_fake_fail", lambda cfg: [row])
    _fake_module(monkeypatch, "_fake_ok", lambda cfg: [dict(row, measured=1.0)])

    def boom(cfg):
        raise RuntimeError("broken")

    _fake_module(monkeypatch, "_fake_raise", boom)
    _fake_module(monkeypatch, "_fake_nan", lambda cfg: [dict(row, measured=float("nan"))])

    out = io.StringIO()
    assert report.run(modules=("_fake_ok",), out=out) == 0
    assert parse_table(out.getvalue())[0]["status"] == "OK"
    for name in ("_fake_fail", "_fake_raise", "_fake_nan"):
        out = io.StringIO()
        assert report.run(modules=(name,), out=out) == 1, name
        assert "FAIL" in out.getvalue()


def test_missing_modules_are_notes_not_failures(monkeypatch):
    _fake_module(monkeypatch, "_fake_silent", None)
    out = io.StringIO()
    assert report.run(modules=("_no_such_block", "_fake_silent"), out=out) == 0
    text = out.getvalue()
    assert "note: golden._no_such_block: not present yet" in text
    assert "note: golden._fake_silent: defines no error_report" in text


def test_json_output_matches_module_reports():
    out = io.StringIO()
    assert report.run(modules=("rope", "activations"), as_json=True, out=out) == 0
    data = json.loads(out.getvalue())
    got = [r["bound"] for r in data["rows"]]
    assert got == OWN_BOUNDS["rope"] + OWN_BOUNDS["activations"]
    assert all(r["status"] == "OK" for r in data["rows"])


def test_cli_rejects_unknown_module():
    with pytest.raises(SystemExit):
        report.main(["--only", "nonsense"])
