"""Design-space exploration on Ray: ``python -m host.dse`` (``make dse``).

A sweep is a set of design points (``golden.config.AccelConfig``) and the model shapes to
score them on. For every point it

1. builds the Verilator simulator of the point's top (``host.backends.sim_harness``),
2. measures decode (``host.perf_model.measure``: one full-size layer's decode step at
   ``context`` keys) and prefill (``measure_prefill``: a ``prompt``-token prompt as one
   chunk; time to first token) in cycles, turned into tokens/s at the point's clock and
   DRAM (the bandwidth roofline beside it),
3. synthesizes the whole top (``hw.shell.AccelShell``: the core behind its AXI ports, what
   goes on the board) for the XCK26 (``hw.synth.run_xilinx``: LUT/FF/BRAM36/URAM/DSP and
   logic depth) and/or the ECP5-85F (``run_ecp5``: utilization and nextpnr's routed Fmax),
4. checks the fit against ``golden.config.DEVICES``.

Each step is a Ray task with resource hints (``TASKS``): a Verilator build takes the cores
its ``make -j`` uses, a measurement one core and memory for the full-size layer's image, a
synthesis one core (Yosys is single-threaded) and several GB. Points that differ only in
fields that change no logic (``host.perf_model.NON_RTL_FIELDS``: clock, DRAM bandwidth and
latency, ...) share one build and one synthesis (keyed by ``rtl_design_point``): the task
graph has one build and one synthesis per distinct RTL and one measurement per point and
model. ``ray.init()`` starts Ray on this machine by default; ``--address ray://HOST:PORT``
(or ``auto``) runs the same sweep on a cluster whose nodes have this package installed
(``--ship-code`` sends this checkout along as the job's working directory instead).

Results go to a store (``--store``, default ``build/dse/store``): one JSON file per
measurement, ``perf-<code>/<digest>_<what>.json`` (``AccelConfig.digest()`` of the point,
and a hash of the model shapes, context, prompt and seed), and one per synthesis,
``synth-<code>/<digest of the RTL point>_<device>.json``, where ``<code>`` hashes the
sources the figures depend on (golden/ and hw/; for measurements also the runtime, the perf
model and the simulator harness): an edit to the RTL starts afresh, while a re-run of the
same sweep skips every point already done. A point whose task raised or whose worker died
is reported as crashed (and retried by the next run); a point whose shapes exceed the
design point's limits is reported as "does not run" with the reasons
(``perf_model.limits_exceeded``), before anything is built.

Output: a table of every point (decode/prefill tok/s, TTFT, LUT/BRAM/DSP %, fits), the
Pareto frontier of decode tok/s against LUT and against BRAM (per model), and its plot
(``build/dse/pareto.png``); ``build/dse/results.json`` holds every figure.

The sweep file (TOML)::

    base = "kv260"                       # the named design point the grid starts from
    models = ["bitnet-0.73b", "bitnet-2b-4t"]   # host.perf_model.MODELS, or inline tables
    context = 128                        # decode at this many keys
    prompt = 64                          # prefill / TTFT prompt length; 0: no prefill
    synth = ["own"]                      # "own" (the point's device), "xck26",
                                         # "ecp5-85f"; [] for no synthesis
    seed = 0                             # random weights and KV cache of the measurement
    [grid]                               # the cross product of these lists
    T = [7, 14, 28]                      # G/T/Q: tlmm.group/tables/replicas
    dram_gbs = [17.1]                    # any AccelConfig field, or section.field
    [[point]]                            # extra points beside the grid
    base = "ecp5"

Flags override the file (``--set T=14,28 --set dram_gbs=10,17.1 --model bitnet-0.73b
--synth none``); ``--dry-run`` lists the points; ``--serial`` runs them one by one in this
process, without Ray.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
import tomllib
import traceback
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from golden.config import DESIGN_POINTS, DEVICES, AccelConfig, DatapathConfig, design_point
from golden.modelspec import ModelConfig
from host import perf_model

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "build" / "dse"
DEFAULT_SWEEP = ROOT / "sweeps" / "default.toml"
SCHEMA = 1  # of the store's records
ALIASES = {"G": "tlmm.group", "T": "tlmm.tables", "Q": "tlmm.replicas", "table": "tlmm.table"}
# the sources the figures depend on: a change starts a new part of the store
_CODE = {
    "synth": ("golden/**/*.py", "hw/**/*.py"),
    "perf": (
        "golden/**/*.py",
        "hw/**/*.py",
        "host/runtime.py",
        "host/perf_model.py",
        "host/backends/sim.py",
        "host/backends/sim_harness/*.py",
        "host/backends/sim_harness/*.cpp",
    ),
}
GIB = 1 << 30
# Ray resource hints per task kind: cores and memory (bytes). A build runs make -j2; a
# measurement holds one full-size layer's memory image, its model and the simulator; a
# synthesis of the whole top is one Yosys process (wasm, single-threaded, up to ~4 GB) and
# then nextpnr for the ECP5.
TASKS = {
    "build": {"num_cpus": 2, "memory": 2 * GIB},
    "measure": {"num_cpus": 1, "memory": 2 * GIB},  # scaled up by the model's size
    "synth": {"num_cpus": 1, "memory": 5 * GIB},
}
# table columns: device -> (resource key, label) for the fit check and the percentages
FIT_KEYS = {
    "xck26": {"lut": "LUT", "ff": "FF", "bram36": "BRAM", "uram": "URAM", "dsp": "DSP"},
    "ecp5-85f": {"lut4": "LUT", "ff": "FF", "dp16kd": "BRAM", "mult18": "DSP"},
}


# --------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class Point:
    """One design point of a sweep: its label (the base and what the grid set) and config."""

    label: str
    dp: AccelConfig

    @property
    def rtl(self) -> AccelConfig:
        return perf_model.rtl_design_point(self.dp)


@dataclass
class Sweep:
    base: str = "kv260"
    grid: dict = field(default_factory=dict)  # field path -> list of values
    points: list = field(default_factory=list)  # extra points: {"base": ..., path: value}
    models: list = field(default_factory=lambda: ["bitnet-0.73b"])
    context: int = 128
    prompt: int = 64
    synth: list = field(default_factory=lambda: ["own"])
    seed: int = 0

    @classmethod
    def from_toml(cls, path: str | Path) -> Sweep:
        data = tomllib.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)} | {"point"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        data["points"] = data.pop("point", [])
        if isinstance(data.get("synth"), str):
            data["synth"] = [data["synth"]]
        return cls(**data)


def model_config(spec) -> tuple[str, ModelConfig]:
    """(name, shapes) of a sweep's model entry: a name of ``perf_model.MODELS`` or a table
    of ``ModelConfig`` fields with a ``name``."""
    if isinstance(spec, str):
        if spec not in perf_model.MODELS:
            raise ValueError(f"model: {spec!r} is not one of {sorted(perf_model.MODELS)}")
        return spec, perf_model.MODELS[spec]
    spec = dict(spec)
    name = spec.pop("name", None)
    if not name:
        raise ValueError(f"model: an inline model needs a name, got {spec}")
    return name, ModelConfig(**spec)


def set_field(dp: AccelConfig, path: str, value) -> AccelConfig:
    """``dp`` with ``path`` (an AccelConfig field, ``section.field`` of its datapath, or an
    alias G/T/Q) set to ``value``; a new clock is a target no timing evidence backs yet."""
    path = ALIASES.get(path, path)
    if "." in path:
        section, name = path.split(".", 1)
        if section not in {f.name for f in fields(DatapathConfig)}:
            raise ValueError(f"{path}: no datapath section {section!r}")
        sec = getattr(dp.datapath, section)
        if name not in {f.name for f in fields(sec)}:
            raise ValueError(f"{path}: {type(sec).__name__} has no field {name!r}")
        return replace(dp, datapath=dp.datapath.with_(**{section: replace(sec, **{name: value})}))
    if path not in {f.name for f in fields(AccelConfig)} or path in ("datapath", "name"):
        raise ValueError(f"{path}: not a design-point field (AccelConfig, or section.field)")
    over = {path: value}
    if path == "clock_mhz" and value != dp.clock_mhz:
        over.update(evidence_mhz=None, evidence="no timing evidence yet")
    return replace(dp, **over)


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand(sweep: Sweep) -> tuple[list[Point], list[dict]]:
    """The sweep's design points (the grid over the base, then the extra points; the base
    alone when there are neither) and the invalid ones ({"label", "error"}: a value the
    config refuses). Points with the same digest are listed once."""
    specs = []
    keys = list(sweep.grid)
    if keys or not sweep.points:  # the base alone when there is neither grid nor point
        for combo in itertools.product(*(list(sweep.grid[k]) for k in keys)):
            specs.append((sweep.base, dict(zip(keys, combo, strict=True))))
    for p in sweep.points:
        p = dict(p)
        specs.append((p.pop("base", sweep.base), p))
    points, bad, seen = [], [], set()
    for base, over in specs:
        label = base + "".join(f" {k}={_fmt_value(v)}" for k, v in over.items())
        try:
            dp = design_point(base)
            for k, v in over.items():
                dp = set_field(dp, k, v)
            dp = replace(dp, name=label.replace(" ", ","))
        except (ValueError, TypeError) as e:
            bad.append({"label": label, "error": str(e)})
            continue
        if dp.digest() not in seen:
            seen.add(dp.digest())
            points.append(Point(label, dp))
    return points, bad


def synth_devices(sweep: Sweep, dp: AccelConfig) -> list[str]:
    out = []
    for d in sweep.synth:
        d = dp.device if d == "own" else d
        if d not in DEVICES:
            raise ValueError(f"synth: {d!r} is not 'own' or one of {sorted(DEVICES)}")
        if d not in out:
            out.append(d)
    return out


# --------------------------------------------------------------------------- the store
def code_version(kind: str = "perf") -> str:
    """Hash of the sources the ``kind`` ("perf", "synth") figures depend on."""
    h = hashlib.sha1()
    for p in sorted({p for pat in _CODE[kind] for p in ROOT.glob(pat)}):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def perf_key(dp: AccelConfig, mc: ModelConfig, context: int, prompt: int, seed: int) -> str:
    what = {"model": asdict(mc), "context": context, "prompt": prompt, "seed": seed}
    return f"perf/{dp.digest():08x}_{_hash([SCHEMA, what])}"


def synth_key(rtl: AccelConfig, device: str) -> str:
    return f"synth/{rtl.digest():08x}_{device}"


class Store:
    """JSON records, ``<root>/<kind>-<code version of kind>/<name>.json`` for a key
    ``<kind>/<name>``; written whole (temporary file, then rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.codes = {kind: code_version(kind) for kind in _CODE}

    def path(self, key: str) -> Path:
        kind, name = key.split("/", 1)
        return self.root / f"{kind}-{self.codes[kind]}" / f"{name}.json"

    def get(self, key: str) -> dict | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None

    def put(self, key: str, rec: dict) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rec, indent=1, default=str))
        os.replace(tmp, p)


# --------------------------------------------------------------------------- the work
def build_sim(rtl: AccelConfig) -> dict:
    """Build (or find) the simulator of ``rtl`` on this node."""
    import socket

    from host.backends.sim_harness.build import build

    t0 = time.time()
    lib = build(rtl)
    return {"lib": str(lib), "node": socket.gethostname(), "s": round(time.time() - t0, 1)}


def measure_point(
    dp: AccelConfig, mc: ModelConfig, context: int, prompt: int, seed: int, _build=None
) -> dict:
    """Decode (and, with ``prompt``, prefill) figures of ``dp`` on ``mc``'s shapes."""
    quiet = lambda *_: None  # noqa: E731
    t0 = time.time()
    d = perf_model.measure(mc, context=context, dp=dp, seed=seed, progress=quiet)
    out = {
        "decode": {
            "context": context,
            "cycles": d["cycles"],
            "token_cycles": d["token_cycles"],
            "tok_s": d["tok_s"],
            "roofline_tok_s": d["roofline_tok_s"],
            "roofline_bytes": sum(d["roofline"].values()),
            "layer_by_op": {op: v[1] for op, v in d["layer_by_op"].items()},
            "host_ops": d["host_ops"],
        },
        "clock_note": d["clock_note"],
    }
    if prompt:
        p = perf_model.measure_prefill(mc, prompt=prompt, dp=dp, seed=seed, progress=quiet)
        out["prefill"] = {k: p[k] for k in ("prompt", "cycles", "ttft_cycles", "ttft_s")}
        out["prefill"]["tok_s"] = p["prefill_tok_s"]
    out["wall_s"] = round(time.time() - t0, 1)
    out["code"] = code_version()
    return out


def synth_point(rtl: AccelConfig, device: str, work_root: str | None = None) -> dict:
    """Synthesize the whole top (``AccelShell``) of ``rtl`` for ``device``."""
    from hw.shell import AccelShell
    from hw.synth import DEFAULT_FREQ_MHZ, run_ecp5, run_xilinx

    work = Path(work_root or OUT_DIR / "synth") / f"{rtl.digest():08x}_{device}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if device == "xck26":
        r = run_xilinx("accel_shell", AccelShell(rtl), work)
        r.pop("modules", None)
        r["depth"] = {
            k: r["depth"][k] for k in ("max_levels", "meets", "over_limit", "dsp_unregistered")
        }
    elif device == "ecp5-85f":
        r = run_ecp5("accel_shell", AccelShell(rtl), work, freq=DEFAULT_FREQ_MHZ)
    else:
        raise ValueError(f"device: no synthesis flow for {device!r}")
    r["s"] = round(time.time() - t0, 1)
    r["code"] = code_version("synth")
    return r


def fit(device: str, figures: dict) -> dict:
    """Utilization (fractions) of ``device`` and whether it fits. XCK26 LUTs count the
    logic LUTs and one per LUTRAM/SRL cell (a lower bound: some take 2-4)."""
    cap = DEVICES[device]
    figures = dict(figures)
    if device == "xck26":
        figures["lut"] = figures.get("lut", 0) + figures.get("lutram", 0)
    used = {k: figures.get(k, 0) / cap[k] for k in FIT_KEYS[device]}
    return {"device": device, "used": used, "fits": all(v <= 1.0 for v in used.values())}


def measure_memory(mc: ModelConfig) -> int:
    """The measurement's memory hint: the one-layer image the perf model allocates, the
    random model behind it, and the simulator."""
    image = 64 * (1 << 20) + mc.vocab_size * mc.hidden_size * 5
    image += 16 * mc.intermediate_size * mc.hidden_size
    return max(TASKS["measure"]["memory"], 1 * GIB + 3 * image)


# --------------------------------------------------------------------------- running
@dataclass
class Job:
    """What a sweep asks for: measurements per (point, model) and syntheses per RTL."""

    sweep: Sweep
    points: list
    models: list  # (name, ModelConfig)
    invalid: list
    store: Store
    rerun: bool = False
    results: list = field(default_factory=list)  # rows, in sweep order
    synth: dict = field(default_factory=dict)  # synth key -> record (or {"error": ...})


def plan(sweep: Sweep, store: Store, rerun: bool = False) -> Job:
    points, invalid = expand(sweep)
    models = [model_config(m) for m in sweep.models]
    job = Job(sweep, points, models, invalid, store, rerun)
    for pt in points:
        for mname, mc in models:
            row = {
                "label": pt.label,
                "model": mname,
                "digest": f"{pt.dp.digest():08x}",
                "rtl_digest": f"{pt.rtl.digest():08x}",
                "clock_mhz": pt.dp.clock_mhz,
                "dram_gbs": pt.dp.dram_gbs,
                "device": pt.dp.device,
                "key": perf_key(pt.dp, mc, sweep.context, sweep.prompt, sweep.seed),
                "synth_keys": [synth_key(pt.rtl, d) for d in synth_devices(sweep, pt.dp)],
            }
            why = perf_model.limits_exceeded(mc, pt.dp, sweep.context, max(sweep.prompt, 1))
            if why:
                row.update(status="does not run", reasons=why)
            elif not rerun and (rec := store.get(row["key"])) is not None:
                row.update(status="ok", cached=True, **rec["result"])
            else:
                row.update(status="pending")
            row["_point"], row["_mc"] = pt, mc
            job.results.append(row)
    for pt in points:
        for d in synth_devices(sweep, pt.dp):
            k = synth_key(pt.rtl, d)
            if k not in job.synth:
                rec = None if rerun else store.get(k)
                job.synth[k] = (
                    {"cached": True, **rec["result"]}
                    if rec
                    else {"pending": True, "rtl": pt.rtl, "device": d}
                )
    return job


def _record(job: Job, row: dict, result: dict) -> None:
    pt, mc = row["_point"], row["_mc"]
    job.store.put(
        row["key"],
        {
            "schema": SCHEMA,
            "dp": asdict(pt.dp),
            "model": asdict(mc),
            "context": job.sweep.context,
            "prompt": job.sweep.prompt,
            "seed": job.sweep.seed,
            "result": result,
        },
    )
    row.update(status="ok", cached=False, **result)


def _record_synth(job: Job, key: str, result: dict) -> None:
    s = job.synth[key]
    job.store.put(
        key, {"schema": SCHEMA, "rtl": asdict(s["rtl"]), "device": s["device"], "result": result}
    )
    job.synth[key] = {"cached": False, **result}


def _crash_text(e: BaseException) -> str:
    """The last line of what a task raised (Ray wraps the remote traceback)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {lines[-1] if lines else ''}"
    return text[:500]


def run_serial(job: Job, progress=None) -> Job:
    """Every pending task in this process, one by one (no Ray)."""
    for row in job.results:
        if row["status"] == "pending":
            try:
                _record(
                    job,
                    row,
                    measure_point(
                        row["_point"].dp,
                        row["_mc"],
                        job.sweep.context,
                        job.sweep.prompt,
                        job.sweep.seed,
                    ),
                )
            except Exception as e:  # noqa: BLE001 -- a crashed point is reported
                row.update(status="crashed", error=_crash_text(e), trace=traceback.format_exc())
        if progress:
            progress(row)
    for k, s in list(job.synth.items()):
        if s.get("pending"):
            try:
                _record_synth(job, k, synth_point(s["rtl"], s["device"]))
            except Exception as e:  # noqa: BLE001
                job.synth[k] = {"error": _crash_text(e)}
    return job


def _clamp(hints: dict, cap: dict) -> dict:
    """Hints no larger than the biggest node offers (else Ray would never schedule them)."""
    out = dict(hints)
    out["num_cpus"] = min(out["num_cpus"], max(1, int(cap.get("CPU", 1))))
    if cap.get("memory"):
        out["memory"] = int(min(out["memory"], cap["memory"]))
    return out


def init_ray(address: str | None, num_cpus: int | None = None, ship_code: bool = False):
    """``ray.init`` on this machine (a private instance), or on the cluster at ``address``."""
    import ray

    env = {"env_vars": {"OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}}
    if ship_code:
        env["working_dir"] = str(ROOT)
        env["excludes"] = ["build/", ".venv/", "runs/", ".git/", "*.ipynb"]
    kw = {"runtime_env": env, "log_to_driver": False}
    if address in (None, "", "local"):
        # Ray starts its workers at nice +15 by default: on a busy machine the builds and
        # syntheses would then wait behind everything else. Here they keep the niceness of
        # this process (make dse runs it at +5).
        os.environ.setdefault("RAY_worker_niceness", "0")
        kw.update(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            object_store_memory=200 * (1 << 20),
        )
    else:
        kw["address"] = address
    ray.init(**kw)
    return ray


def _node_caps(ray) -> dict:
    caps = {"CPU": 1, "memory": 0}
    for n in ray.nodes():
        if n.get("Alive"):
            res = n.get("Resources", {})
            caps["CPU"] = max(caps["CPU"], res.get("CPU", 0))
            caps["memory"] = max(caps["memory"], res.get("memory", 0))
    return caps


def run_ray(job: Job, ray, progress=None) -> Job:
    """The pending tasks as a Ray graph: one build per distinct RTL, the measurements of
    its points after it, one synthesis per distinct RTL and device."""
    caps = _node_caps(ray)
    build_t = ray.remote(max_retries=0, **_clamp(TASKS["build"], caps))(build_sim)
    synth_t = ray.remote(max_retries=0, **_clamp(TASKS["synth"], caps))(synth_point)
    measure_t = ray.remote(max_retries=0, **_clamp(TASKS["measure"], caps))(measure_point)
    builds, refs = {}, {}  # rtl digest -> ref; ref -> ("perf", row) | ("synth", key)
    for row in job.results:
        if row["status"] != "pending":
            continue
        pt, mc = row["_point"], row["_mc"]
        if row["rtl_digest"] not in builds:
            builds[row["rtl_digest"]] = build_t.remote(pt.rtl)
        hints = _clamp({**TASKS["measure"], "memory": measure_memory(mc)}, caps)
        s = job.sweep
        ref = measure_t.options(memory=hints["memory"]).remote(
            pt.dp, mc, s.context, s.prompt, s.seed, builds[row["rtl_digest"]]
        )
        refs[ref] = ("perf", row)
    for k, s in job.synth.items():
        if s.get("pending"):
            refs[synth_t.remote(s["rtl"], s["device"])] = ("synth", k)
    # a row is done when its measurement and its syntheses are
    waiting = {id(r): set() for r in job.results}
    for ref, (kind, x) in refs.items():
        if kind == "perf":
            waiting[id(x)].add(ref)
        else:
            for r in job.results:
                if x in r["synth_keys"]:
                    waiting[id(r)].add(ref)
    if progress:
        for r in job.results:
            if not waiting[id(r)]:
                progress(r)
    pending = list(refs)
    while pending:
        try:
            done, pending = ray.wait(pending, num_returns=1)
        except KeyboardInterrupt:  # stop the running tasks too, not only the driver
            for r in pending:
                ray.cancel(r, force=True)
            raise
        ref = done[0]
        kind, x = refs[ref]
        try:
            result = ray.get(ref)
            if kind == "perf":
                _record(job, x, result)
            else:
                _record_synth(job, x, result)
        except Exception as e:  # noqa: BLE001 -- RayTaskError, WorkerCrashedError, ...
            if kind == "perf":
                x.update(status="crashed", error=_crash_text(e))
            else:
                job.synth[x] = {"error": _crash_text(e)}
        for r in job.results:
            w = waiting[id(r)]
            if ref in w:
                w.discard(ref)
                if not w and progress:
                    progress(r)
    return job


# --------------------------------------------------------------------------- results
def finish(job: Job) -> list[dict]:
    """Rows with the synthesis figures, utilization and fit merged in (per point's own
    device: the first synthesized device is the one the percentages name)."""
    rows = []
    for r in job.results:
        row = {k: v for k, v in r.items() if not k.startswith("_") and k != "trace"}
        row["synth"] = {}
        for k in r["synth_keys"]:
            dev = k.rsplit("_", 1)[1]
            s = job.synth.get(k, {})
            if "error" in s:
                row["synth"][dev] = {"error": s["error"]}
            elif not s.get("pending"):
                figs = {x: v for x, v in s.items() if x not in ("cached",)}
                row["synth"][dev] = {**figs, **fit(dev, figs)}
        rows.append(row)
    return rows


def _area(row: dict, what: str) -> float | None:
    """Utilization (fraction) of resource class ``what`` ("LUT", "BRAM", ...) on the row's
    first synthesized device."""
    for dev, s in row.get("synth", {}).items():
        if "used" in s:
            for k, label in FIT_KEYS[dev].items():
                if label == what:
                    return s["used"][k]
    return None


def pareto(rows: list[dict], what: str) -> dict[str, list[dict]]:
    """Per model: the rows no other row beats on both decode tok/s (higher) and ``what``
    utilization (lower), sorted by utilization."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [
            r
            for r in rows
            if r["model"] == model and r["status"] == "ok" and _area(r, what) is not None
        ]
        pts.sort(key=lambda r: (_area(r, what), -r["decode"]["tok_s"]))
        front, best = [], -1.0
        for r in pts:
            if r["decode"]["tok_s"] > best:
                front.append(r)
                best = r["decode"]["tok_s"]
        out[model] = front
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def table(rows: list[dict], invalid=(), synth_errors=()) -> list[str]:
    head = [
        "point",
        "model",
        "clock",
        "decode tok/s",
        "roofline",
        "prefill tok/s",
        "TTFT ms",
        "LUT",
        "FF",
        "BRAM",
        "URAM",
        "DSP",
        "fits",
        "timing",
        "status",
    ]
    body = []
    for r in rows:
        d, p = r.get("decode"), r.get("prefill")
        fits, timing = "-", "-"
        for dev, s in r.get("synth", {}).items():
            if "fits" in s:
                fits = f"{'yes' if s['fits'] else 'NO'} ({dev})"
                if "depth" in s:
                    timing = f"{s['depth']['max_levels']:.1f} lvl"
                    timing += " ok" if s["depth"]["meets"] and r["clock_mhz"] <= 250 else " deep"
                elif s.get("fmax_mhz"):
                    ok = s["fmax_mhz"] >= r["clock_mhz"]
                    timing = f"Fmax {s['fmax_mhz']:.0f}" + (" ok" if ok else " slow")
                break
            if "error" in s:
                fits = f"synth failed ({dev})"
        status = r["status"] + (" (stored)" if r.get("cached") else "")
        body.append(
            [
                r["label"],
                r["model"],
                f"{r['clock_mhz']:g} MHz",
                f"{d['tok_s']:.1f}" if d else "-",
                f"{d['roofline_tok_s']:.1f}" if d else "-",
                f"{p['tok_s']:.1f}" if p else "-",
                f"{1e3 * p['ttft_s']:.3g}" if p else "-",
                _pct(_area(r, "LUT")),
                _pct(_area(r, "FF")),
                _pct(_area(r, "BRAM")),
                _pct(_area(r, "URAM")),
                _pct(_area(r, "DSP")),
                fits,
                timing,
                status,
            ]
        )
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    for r in rows:
        if r["status"] == "does not run":
            lines.append(f"{r['label']} / {r['model']}: does not run: " + "; ".join(r["reasons"]))
        elif r["status"] == "crashed":
            lines.append(f"{r['label']} / {r['model']}: CRASHED: {r['error']}")
    for b in invalid:
        lines.append(f"{b['label']}: invalid design point: {b['error']}")
    for k, e in synth_errors:
        lines.append(f"synthesis {k}: FAILED: {e}")
    return lines


def plot(rows: list[dict], path: Path, title: str = "") -> Path | None:
    """Decode tok/s against LUT and BRAM utilization, the Pareto frontier per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(r["status"] == "ok" and _area(r, "LUT") is not None for r in rows):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    models = list(dict.fromkeys(r["model"] for r in rows if r["status"] == "ok"))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, what in zip(axes, ("LUT", "BRAM"), strict=True):
        front = pareto(rows, what)
        for i, model in enumerate(models):
            c = colors[i % len(colors)]
            pts = [
                r for r in rows if r["model"] == model and r["status"] == "ok" and _area(r, what)
            ]
            for r in pts:
                fits = all(s.get("fits", True) for s in r["synth"].values())
                ax.scatter(
                    100 * _area(r, what),
                    r["decode"]["tok_s"],
                    color=c,
                    marker="o" if fits else "x",
                    s=40,
                    zorder=3,
                )
                ax.annotate(
                    r["label"].split(" ", 1)[-1],
                    (100 * _area(r, what), r["decode"]["tok_s"]),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
            f = front.get(model, [])
            if f:
                ax.step(
                    [100 * _area(r, what) for r in f],
                    [r["decode"]["tok_s"] for r in f],
                    where="post",
                    color=c,
                    alpha=0.6,
                    label=f"{model} (Pareto frontier)",
                )
        ax.axvline(100, color="grey", ls=":", lw=1)
        ax.set_xlabel(f"{what} utilization of the device (%)")
        ax.set_ylabel("modeled decode tok/s")
        ax.set_title(f"decode tok/s vs {what}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- entry point
def run(
    sweep: Sweep,
    *,
    store: str | Path | None = None,
    address: str | None = None,
    serial: bool = False,
    rerun: bool = False,
    num_cpus: int | None = None,
    ship_code: bool = False,
    progress: bool = False,
) -> dict:
    """Run ``sweep``; return {"rows", "invalid", "synth_errors", "pareto", "code"}."""
    st = Store(store or OUT_DIR / "store")
    job = plan(sweep, st, rerun)
    todo = sum(r["status"] == "pending" for r in job.results)
    todo += sum(bool(s.get("pending")) for s in job.synth.values())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(job.results), unit="point", desc="dse", file=sys.stderr)

    def tick(row):
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{row['label']} / {row['model']}: {row['status']}")

    if todo == 0 or serial:
        run_serial(job, progress=tick)
    else:
        ray = init_ray(address, num_cpus, ship_code)
        try:
            run_ray(job, ray, progress=tick)
        finally:
            ray.shutdown()
    if bar is not None:
        bar.close()
    rows = finish(job)
    errs = [(k, s["error"]) for k, s in job.synth.items() if "error" in s]
    return {
        "rows": rows,
        "invalid": job.invalid,
        "synth_errors": errs,
        "pareto": {w: pareto(rows, w) for w in ("LUT", "BRAM")},
        "code": st.codes,
        "store": str(st.root),
    }


def _parse_value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host.dse", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sweep",
        default=str(DEFAULT_SWEEP) if DEFAULT_SWEEP.is_file() else None,
        help=f"sweep file (TOML; default {DEFAULT_SWEEP.relative_to(ROOT)}; '' for none)",
    )
    ap.add_argument("--base", help=f"base design point ({', '.join(DESIGN_POINTS)})")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="a grid axis: an AccelConfig field, section.field, or G/T/Q (repeatable)",
    )
    ap.add_argument(
        "--model",
        action="append",
        help=f"model shapes to score ({', '.join(perf_model.MODELS)}; repeatable)",
    )
    ap.add_argument("--context", type=int, help="decode at this many keys")
    ap.add_argument("--prompt", type=int, help="prefill prompt tokens (TTFT); 0: none")
    ap.add_argument("--synth", help="devices to synthesize for: own, xck26, ecp5-85f or none")
    ap.add_argument("--seed", type=int)
    ap.add_argument(
        "--address", help="Ray cluster (ray://HOST:PORT or auto); default: a local instance"
    )
    ap.add_argument("--num-cpus", type=int, help="cores of the local Ray instance")
    ap.add_argument("--ship-code", action="store_true", help="send this checkout to the cluster")
    ap.add_argument("--serial", action="store_true", help="no Ray: one point after another")
    ap.add_argument("--rerun", action="store_true", help="ignore the store's results")
    ap.add_argument("--store", default=str(OUT_DIR / "store"))
    ap.add_argument("--out", default=str(OUT_DIR), help="table, results.json and the plot")
    ap.add_argument("--dry-run", action="store_true", help="list the points and exit")
    a = ap.parse_args(argv)
    try:
        sweep = Sweep.from_toml(a.sweep) if a.sweep else Sweep()
        if a.base:
            sweep.base = a.base
        for s in a.set:
            k, _, vals = s.partition("=")
            if not vals:
                raise ValueError(f"--set {s!r}: expected FIELD=V1,V2,...")
            sweep.grid[k.strip()] = [_parse_value(v.strip()) for v in vals.split(",")]
        if a.model:
            sweep.models = a.model
        for name in ("context", "prompt", "seed"):
            if getattr(a, name) is not None:
                setattr(sweep, name, getattr(a, name))
        if a.synth is not None:
            sweep.synth = [] if a.synth == "none" else a.synth.split(",")
        points, invalid = expand(sweep)
        [model_config(m) for m in sweep.models]  # names checked before anything runs
        for p in points:
            synth_devices(sweep, p.dp)
    except (ValueError, OSError, tomllib.TOMLDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(points)} design points x {len(sweep.models)} models, decode at {sweep.context} "
        f"keys, prefill of {sweep.prompt} tokens, synthesis: {', '.join(sweep.synth) or 'none'}"
    )
    if a.dry_run:
        for p in points:
            print(f"  {p.label}  (digest {p.dp.digest():08x}, RTL {p.rtl.digest():08x})")
        for b in invalid:
            print(f"  {b['label']}: invalid: {b['error']}")
        return 0
    t0 = time.time()
    res = run(
        sweep,
        store=a.store,
        address=a.address,
        serial=a.serial,
        rerun=a.rerun,
        num_cpus=a.num_cpus,
        ship_code=a.ship_code,
        progress=True,
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = table(res["rows"], res["invalid"], res["synth_errors"])
    lines.append("")
    for what in ("LUT", "BRAM"):
        for model, front in res["pareto"][what].items():
            if front:
                lines.append(
                    f"Pareto frontier, {model}, decode tok/s vs {what}: "
                    + " -> ".join(
                        f"{r['label']} ({_pct(_area(r, what))}, {r['decode']['tok_s']:.1f})"
                        for r in front
                    )
                )
    title = (
        f"{Path(a.sweep).name if a.sweep else 'flags'}: decode at {sweep.context} keys "
        f"(code {res['code']['perf']})"
    )
    png = plot(res["rows"], out / "pareto.png", title)
    lines.append(f"plot: {png}" if png else "plot: none (no synthesized point ran: area unknown)")
    lines.append(f"store: {res['store']}; {time.time() - t0:.0f} s")
    (out / "table.txt").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    print("\n".join(lines))
    crashed = sum(r["status"] == "crashed" for r in res["rows"]) + len(res["synth_errors"])
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
