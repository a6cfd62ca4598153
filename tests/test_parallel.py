"""Parallel test runs (``make test`` / ``make sim`` under pytest-xdist): the session seed
reaches every worker as a serial run sets it, and build directories are locked so that
processes building the same Verilator target take turns."""

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from host.backends.sim_harness.build import build_lock

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os
from pathlib import Path

import pytest


@pytest.mark.parametrize("i", range(6))
def test_probe(i, seed, rng, request):
    out = Path(os.environ["PROBE_OUT"])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "serial")
    (out / f"{i}.json").write_text(
        json.dumps([seed, os.environ["SEED"], int(rng.integers(1 << 30)), worker])
    )
"""


def _probe(tmp: Path, tag: str, *args) -> tuple[dict, str]:
    out = tmp / tag
    out.mkdir()
    env = {**os.environ, "PROBE_OUT": str(out)}
    env.pop("SEED", None)  # as from a shell: the controller picks the seed
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider"]
    cmd += ["--rootdir", str(tmp), "-c", str(tmp / "pytest.ini"), str(tmp / "test_probe.py")]
    proc = subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {f.stem: json.loads(f.read_text()) for f in out.glob("*.json")}, proc.stdout


def test_xdist_workers_get_the_session_seed(tmp_path):
    """Two workers run with the controller's seed (none given: time-based), and a serial
    run with the printed seed gives every test the same seed, SEED and random values."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    par, out = _probe(tmp_path, "par", "-n", "2")
    assert len(par) == 6
    assert {v[3] for v in par.values()} == {"gw0", "gw1"}  # both workers ran tests
    seeds = {(v[0], v[1]) for v in par.values()}
    assert len(seeds) == 1
    seed = next(iter(seeds))[0]
    assert seeds == {(seed, str(seed))}
    assert f"random seed: {seed} (reproduce with SEED={seed})" in out
    serial, _ = _probe(tmp_path, "serial", "--seed", str(seed))
    assert {k: v[:3] for k, v in serial.items()} == {k: v[:3] for k, v in par.items()}


def _hold(directory: str, log: str, tag: str) -> None:
    with build_lock(Path(directory)):
        with open(log, "a") as f:
            f.write(f"{tag} in {time.time()}\n")
        time.sleep(0.3)
        with open(log, "a") as f:
            f.write(f"{tag} out {time.time()}\n")


def test_build_lock_excludes_other_processes(tmp_path):
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_hold, args=(str(tmp_path / "b"), str(log), str(i))) for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    events = [ln.split() for ln in log.read_text().splitlines()]
    assert len(events) == 6
    # strictly in, out, in, out, ...: never two holders at once
    assert [e[1] for e in events] == ["in", "out"] * 3
    assert all(events[i][0] == events[i + 1][0] for i in range(0, 6, 2))
