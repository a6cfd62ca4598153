"""Register-to-register logic depth of a Yosys-mapped UltraScale+ netlist: timing evidence
without Vivado (there is no open timing flow for UltraScale+).

    report = logic_depth(json_netlist, top)      # after synth_xilinx -flatten; write_json

Every path starts at a register output (flip-flop, block/Ultra RAM output, a DSP48E2's
P register, a top-level input) and ends at a register input. Along it, in *levels*:

* a LUT (LUT1..LUT6) is one level; MUXF7/F8/F9 and LUTRAM reads are one level each: a
  LUTRAM's read address goes through to its output, while its write data and write enable
  are sampled at the clock edge, so they end paths like a register's D (a path does not
  run from the data written to the data read);
* a carry chain is one level where a path enters it (S, DI or a fabric CI), plus
  ``1/CARRY_BITS_PER_LEVEL`` of a level per carry bit it then propagates (CI from the
  previous carry cell): a 32-bit adder is two levels, a 64-bit one three;
* a DSP48E2 whose multiplier output is registered (MREG or PREG) ends the paths into it
  and starts the path out of it; a path into its A, B or D port without the port's input
  register goes on through the multiplier to MREG (``DSP_MULT_LEVELS`` more levels; to
  PREG without MREG, ``DSP_COMB_LEVELS``). A DSP48E2 with neither register (Yosys packs
  the flip-flops around a multiplier into the DSP less often than Vivado does) must be
  *registered around*: every input driven straight by a register and every output
  feeding registers only, so that the whole multiply has a cycle of its own (the
  ``dsp_unregistered`` count lists those that are not); it then ends and starts paths
  like a registered one. An unregistered 27x18 multiply and its post-adder take most of
  a 4 ns cycle by themselves.

The rule the README states for a clock of 250 MHz (4 ns, XCK26 speed grade -2): a path
may have at most ``MAX_LEVELS_250MHZ`` levels. A level is about 0.5 ns on UltraScale+
(a LUT's ~0.1 ns plus a typical net's 0.3-0.5 ns); the clock-to-out, setup and clock
uncertainty leave ~3.5 ns of the 4, so six levels with average routing meet 250 MHz and
seven do not reliably. It is a rule of thumb for a netlist that has not been placed, not
a timing sign-off: Vivado's report is the real figure and the board flow
(``make bitstream``) writes it.

:func:`rule_mhz` turns the rule around: the clock a netlist of a given depth supports by the
same arithmetic (fixed overhead + a cost per level, calibrated so six levels give 250 MHz);
the design report quotes it as the kv260 point's depth-rule clock.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_LEVELS_250MHZ = 6.0
# the arithmetic behind the rule: clock-to-out + setup + uncertainty, and one level's delay
OVERHEAD_NS = 0.5
LEVEL_NS = (1000.0 / 250.0 - OVERHEAD_NS) / MAX_LEVELS_250MHZ
CARRY_BITS_PER_LEVEL = 32
DSP_COMB_LEVELS = 4.0
DSP_MULT_LEVELS = 2.0

_SEQ_PREFIXES = ("FD", "RAMB", "URAM", "SRL")  # outputs start, inputs end paths
_LUTRAM_PREFIXES = ("RAM16", "RAM32", "RAM64", "RAM128", "RAM256")
_LUTRAM_WRITE = re.compile(r"^(D|DI[A-H]?|WE|WCLK)$")  # sampled at the edge, not read through
_MUXF = ("MUXF7", "MUXF8", "MUXF9")
_CARRY = {"CARRY4": 4, "CARRY8": 8}


@dataclass
class DepthReport:
    max_levels: float = 0.0
    worst_path: list = field(default_factory=list)  # cell names, source to sink
    endpoints: int = 0  # register inputs analyzed
    over_limit: int = 0  # endpoints deeper than the limit
    histogram: dict = field(default_factory=dict)  # levels (rounded up) -> endpoints
    max_lut_levels: int = 0  # LUT/MUXF levels alone on one path
    longest_carry_bits: int = 0  # the longest carry chain in the netlist
    dsp: int = 0
    dsp_unregistered: int = 0  # not registered inside or around
    # by module (the hierarchy Yosys's flatten records in cell names): {path: figures}
    modules: dict = field(default_factory=dict)
    # the deepest endpoints over the limit, by register: [levels, bits, endpoint, source]
    # (net names of the register written and of the register the worst path starts at)
    deepest: list = field(default_factory=list)
    limit: float = MAX_LEVELS_250MHZ

    @property
    def meets(self) -> bool:
        return self.over_limit == 0 and self.dsp_unregistered == 0

    # as_dict's keys in the report's order: the depth figures, the verdict, the details
    # (and last the worst path's first 40 cells)
    REPORT = ("max_levels", "max_lut_levels", "longest_carry_bits", "endpoints", "over_limit")
    REPORT += ("dsp", "dsp_unregistered", "limit", "meets", "histogram", "modules", "deepest")

    def as_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.REPORT}, "worst_path": self.worst_path[:40]}


def rule_mhz(levels: float) -> float:
    """The clock (MHz) the depth rule allows a netlist whose deepest path has ``levels``
    levels: 250 at six, lower for deeper paths; never quoted above 250 (the target)."""
    if levels <= 0:
        raise ValueError(f"levels must be > 0, got {levels}")
    return min(250.0, 1000.0 / (OVERHEAD_NS + LEVEL_NS * levels))


def _param_int(v) -> int:
    if isinstance(v, int):
        return v
    s = str(v)
    try:
        return int(s, 2) if set(s) <= {"0", "1"} else int(s)
    except ValueError:
        return 0


def _dsp_registered(cell) -> bool:
    p = cell.get("parameters", {})
    return _param_int(p.get("MREG", 0)) > 0 or _param_int(p.get("PREG", 0)) > 0


def _dsp_input_levels(cell, port: str) -> float:
    """Levels a path into ``port`` of a registered DSP48E2 still has inside it."""
    p = cell.get("parameters", {})
    reg = {"A": "AREG", "B": "BREG", "D": "DREG"}.get(port)
    if reg is None or _param_int(p.get(reg, 0)) > 0:
        return 0.0
    return DSP_MULT_LEVELS if _param_int(p.get("MREG", 0)) > 0 else DSP_COMB_LEVELS


_FLATTEN = re.compile(r"\$flatten\\([^.]*)\.")


def module_path(cell: str) -> str:
    """The hierarchy of a cell of a Yosys-flattened netlist (``core.op_qk``; "" for the
    top's own cells): the ``$flatten\\<instance>.`` prefixes flatten puts on the names."""
    return ".".join(_FLATTEN.findall(cell))


def logic_depth(
    netlist: str | Path | dict, top: str | None = None, limit: float = MAX_LEVELS_250MHZ
) -> DepthReport:
    """The depth report of module ``top`` of a flattened Yosys JSON netlist."""
    data = json.loads(Path(netlist).read_text()) if not isinstance(netlist, dict) else netlist
    mods = data["modules"]
    if top is None:
        tops = [n for n, m in mods.items() if _param_int(m.get("attributes", {}).get("top", 0))]
        top = tops[0] if tops else next(iter(mods))
    mod = mods[top]
    cells = mod["cells"]

    # which cell drives each net bit, through which output port
    driver: dict[int, tuple[str, str]] = {}
    for name, c in cells.items():
        dirs = c.get("port_directions", {})
        for port, bits in c["connections"].items():
            if dirs.get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        driver[b] = (name, port)

    rep = DepthReport(limit=limit)
    kind: dict[str, str] = {}
    for name, c in cells.items():
        t = c["type"]
        if t.startswith("LUT") or t in _MUXF:
            kind[name] = "lut"
        elif t in _CARRY:
            kind[name] = "carry"
        elif t.startswith(_LUTRAM_PREFIXES):
            kind[name] = "lutram"
        elif t.startswith("DSP48"):
            rep.dsp += 1
            kind[name] = "dsp_reg" if _dsp_registered(c) else "dsp_comb"
        elif t.startswith(_SEQ_PREFIXES):
            kind[name] = "seq"
        else:
            kind[name] = "comb_other"  # e.g. INV, BUFG: zero levels

    # arrival (levels, lut levels, predecessor cell) at each net bit, memoized
    arrival: dict[int, tuple[float, int, str | None]] = {}

    def cell_inputs(name, through: bool = False):
        # through: only the inputs a combinational path goes through to the outputs
        c = cells[name]
        dirs = c.get("port_directions", {})
        write_side = through and kind[name] == "lutram"
        for port, bits in c["connections"].items():
            if dirs.get(port) == "input" and not (write_side and _LUTRAM_WRITE.match(port)):
                for b in bits:
                    if isinstance(b, int):
                        yield port, b

    def source_bit(b) -> bool:
        d = driver.get(b)
        if d is None:
            return True  # top-level input or constant
        k = kind[d[0]]
        return k in ("seq", "dsp_reg", "dsp_comb")

    def solve(b0: int):
        # iterative DFS: a bit's arrival = its driver's input arrivals + the cell's weight
        stack = [b0]
        while stack:
            b = stack[-1]
            if b in arrival:
                stack.pop()
                continue
            if source_bit(b):
                arrival[b] = (0.0, 0, None)
                stack.pop()
                continue
            name, out_port = driver[b]
            k = kind[name]
            pending = [ib for _, ib in cell_inputs(name, True) if ib not in arrival]
            if pending:
                stack.extend(pending)
                continue
            best = (0.0, 0, None)
            ctype = cells[name]["type"]
            for port, ib in cell_inputs(name, True):
                lv, ll, _ = arrival[ib]
                if k == "lut" or k == "lutram":
                    w, wl = 1.0, 1
                elif k == "carry":
                    d = driver.get(ib)
                    chained = port == "CI" and d is not None and kind.get(d[0]) == "carry"
                    w = _CARRY[ctype] / CARRY_BITS_PER_LEVEL if chained else 1.0
                    wl = 0
                else:
                    w, wl = 0.0, 0
                if lv + w > best[0] or (lv + w == best[0] and ll + wl > best[1]):
                    best = (lv + w, ll + wl, name)
                elif ll + wl > best[1]:
                    best = (best[0], ll + wl, best[2])
            arrival[b] = best
            stack.pop()

    def trace(b) -> list[str]:
        path = []
        seen = set()
        while b is not None and b in arrival and arrival[b][2] is not None:
            name = arrival[b][2]
            if name in seen:
                break
            seen.add(name)
            path.append(name)
            ins = [ib for _, ib in cell_inputs(name, True)]
            b = max(ins, key=lambda ib: arrival[ib][0]) if ins else None
        return path[::-1]

    hist: Counter = Counter()
    worst_bit = None
    over: list[tuple[float, int, str]] = []  # (levels, bit, endpoint cell or port)

    def endpoint(b: int, extra: float = 0.0, cell: str = "") -> None:
        nonlocal worst_bit
        solve(b)
        lv = arrival[b][0] + extra
        mod = rep.modules.setdefault(
            module_path(cell),
            {"max_levels": 0.0, "endpoints": 0, "over_limit": 0, "dsp_unregistered": 0},
        )
        mod["endpoints"] += 1
        mod["max_levels"] = max(mod["max_levels"], lv)
        mod["over_limit"] += lv > limit
        rep.endpoints += 1
        hist[int(-(-lv // 1))] += 1
        if lv > limit:
            rep.over_limit += 1
            over.append((lv, b, cell))
        if lv > rep.max_levels:
            rep.max_levels, worst_bit = lv, b
        rep.max_lut_levels = max(rep.max_lut_levels, arrival[b][1])

    for name, c in cells.items():
        k = kind[name]
        if k == "lutram":  # the write side: data, enable (and the address, read through too)
            for port, b in cell_inputs(name):
                if port != "WCLK":
                    endpoint(b, 0.0, name)
            continue
        if k not in ("seq", "dsp_reg", "dsp_comb"):
            continue
        for port, b in cell_inputs(name):
            if k == "seq" and port in ("C", "CLK", "CLKARDCLK", "CLKBWRCLK"):
                continue
            endpoint(b, _dsp_input_levels(c, port) if k == "dsp_reg" else 0.0, name)
    # a combinational DSP must be registered around: inputs straight from registers,
    # outputs into registers only
    loads: dict[int, list[str]] = {}
    for name in cells:
        for _, b in cell_inputs(name):
            loads.setdefault(b, []).append(name)
    for name, c in cells.items():
        if kind[name] != "dsp_comb":
            continue
        ins_ok = all(
            arrival[b][0] == 0 for port, b in cell_inputs(name) if port in ("A", "B", "C", "D")
        )
        outs = [b for b in c["connections"].get("P", []) if isinstance(b, int)]
        outs_ok = all(
            kind[ld] in ("seq", "dsp_reg", "dsp_comb") for b in outs for ld in loads.get(b, [])
        )
        if not (ins_ok and outs_ok):
            rep.dsp_unregistered += 1
            rep.modules.setdefault(
                module_path(name),
                {"max_levels": 0.0, "endpoints": 0, "over_limit": 0, "dsp_unregistered": 0},
            )["dsp_unregistered"] += 1
    for pname, p in mod.get("ports", {}).items():  # top-level outputs end paths too
        if p.get("direction") == "output":
            for b in p["bits"]:
                if isinstance(b, int):
                    endpoint(b, 0.0, pname)
    rep.histogram = dict(sorted(hist.items()))
    rep.worst_path = trace(worst_bit) if worst_bit is not None else []
    rep.longest_carry_bits = _longest_carry(cells, kind, driver)
    rep.deepest = _deepest(mod, cells, over, arrival, lambda n: cell_inputs(n, True))
    return rep


def _deepest(mod, cells, over, arrival, inputs, n: int = 25) -> list:
    """The ``n`` deepest endpoint registers (bits grouped by net name), each with the
    register its deepest path starts at: where to cut."""
    names: dict[int, str] = {}
    for net, nd in mod.get("netnames", {}).items():
        if not nd.get("hide_name"):
            for b in nd["bits"]:
                if isinstance(b, int):
                    names.setdefault(b, net)

    def reg_name(cell: str) -> str:
        c = cells.get(cell)
        if c is None:
            return cell  # a top-level port
        for port, bits in c["connections"].items():
            if c.get("port_directions", {}).get(port) == "output":
                for b in bits:
                    if b in names:
                        return names[b]
        return cell

    def source(b) -> str:
        while arrival.get(b, (0, 0, None))[2] is not None:
            b = max((ib for _, ib in inputs(arrival[b][2])), key=lambda ib: arrival[ib][0])
        return names.get(b, "?")

    groups: dict[str, list] = {}
    for lv, b, cell in sorted(over, key=lambda e: -e[0]):
        g = groups.setdefault(reg_name(cell), [lv, 0, b])
        g[1] += 1
    top = sorted(groups.items(), key=lambda kv: -kv[1][0])[:n]
    return [[lv, count, name, source(b)] for name, (lv, count, b) in top]


def _longest_carry(cells, kind, driver) -> int:
    """Bits of the longest chain of carry cells linked CO -> CI."""
    nxt: dict[str, str] = {}
    has_prev = set()
    for name, c in cells.items():
        if kind[name] != "carry":
            continue
        for b in c["connections"].get("CI", []):
            d = driver.get(b) if isinstance(b, int) else None
            if d is not None and kind.get(d[0]) == "carry":
                nxt[d[0]] = name
                has_prev.add(name)
    best = 0
    for name in cells:
        if kind[name] != "carry" or name in has_prev:
            continue
        bits, cur = 0, name
        while cur is not None:
            bits += _CARRY[cells[cur]["type"]]
            cur = nxt.get(cur)
        best = max(best, bits)
    return best


def summarize(reports: dict[str, DepthReport]) -> list[str]:
    """Table lines: one per design, its depth figures against the rule."""
    head = (
        f"{'design':22s} {'max levels':>10s} {'LUT lvls':>8s} {'carry bits':>10s} "
        f"{'endpoints':>9s} {'> limit':>7s} {'DSP':>5s} {'DSP unreg':>9s}  verdict"
    )
    lines = [head, "-" * len(head)]
    for name, r in reports.items():
        lines.append(
            f"{name:22s} {r.max_levels:10.2f} {r.max_lut_levels:8d} "
            f"{r.longest_carry_bits:10d} {r.endpoints:9d} {r.over_limit:7d} "
            f"{r.dsp:5d} {r.dsp_unregistered:9d}  "
            f"{'meets' if r.meets else 'too deep'} (limit {r.limit:g})"
        )
    return lines
