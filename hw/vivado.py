"""The Vivado flow of a board, written without Vivado: ``make bitstream BOARD=kv260``.

    python -m hw.vivado --board kv260 [--out build/kv260] [--jobs 4] [--no-run]

writes ``build/<board>/``:

``accel_shell.v``     the AXI top ``hw.shell.AccelShell(dp)`` (Amaranth's Verilog) and
                      ``ternary_accel``, a wrapper with the same ports that tells IP
                      integrator what they are (``aclk`` clock of every AXI interface,
                      ``aresetn`` active-low reset, ``irq`` level-high interrupt; the
                      ``s_axi_*`` / ``m_axi{i}_*`` interfaces are inferred from their names)
``bd.tcl``            the block design ``ternary``: ``zynq_ultra_ps_e`` with the board
                      preset; ``ternary_accel`` as a module reference (cell ``accel_0``);
                      master port ``m_axi{i}`` on the PS's ``HP_PORTS[i]`` (HP0..HP3, then
                      HPC0, HPC1: 128-bit slaves); HPM0_FPD -> SmartConnect -> ``s_axi`` and
                      an AXI interrupt controller (PYNQ waits on interrupts through one);
                      ``pl_clk0`` at the design point's clock drives everything;
                      ``proc_sys_reset`` from ``pl_resetn0``; ``irq`` -> ``axi_intc`` ->
                      ``pl_ps_irq0``; the address map ``address_map()``
``ternary_accel.xdc`` constraints (the PS constrains ``pl_clk0``; no I/O pins are used)
``build.tcl``         creates the project, sources ``bd.tcl``, synthesizes, implements and
                      writes ``ternary_accel.bit``, ``ternary_accel.hwh`` (the pair
                      ``pynq.Overlay`` loads), ``ternary_accel.xsa`` and ``timing.rpt``
``build.sh``          ``vivado -mode batch -source build.tcl``
``manifest.json``     design point, ID register value, ports, address map, files

Then it runs ``build.sh`` when ``vivado`` is on PATH (``--no-run``: never); without it,
it says so in one line and exits 0.

The address map (``address_map()``) is what the board driver expects: the register block of
cell ``ACCEL_CELL`` at ``CSR_BASE`` (PYNQ reads it from the ``.hwh``), and every master
port sees the KV260's DDR where the PS has it: DDR_LOW at bus address 0 (2 GiB) and
DDR_HIGH at 0x8_0000_0000 (2 GiB): a ``pynq.allocate`` buffer's ``device_address`` is the
bus address the driver programs (``host/backends/board.py``).

Names follow the conventions of current Vivado releases (2022.2 and later): the PS's slave
ports ``S_AXI_HP{0..3}_FPD`` / ``S_AXI_HPC{0,1}_FPD`` with clocks ``saxihp{n}_fpd_aclk``
/ ``saxihpc{n}_fpd_aclk`` and address segments ``SAXIGP{k}/HP{n}_DDR_LOW|HIGH``; the
``.hwh`` under ``<project>.gen/`` (``.srcs/`` before 2020.2). Nothing here has been run
through Vivado on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import Shape
from amaranth.lib import wiring

ROOT = Path(__file__).resolve().parents[1]
TOP = "ternary_accel"  # the wrapper module (the block design's module reference)
CORE = "accel_shell"  # Amaranth's module
BD = "ternary"  # block design name
ACCEL_CELL = "accel_0"
INTC_CELL = "axi_intc_0"
PS_CELL = "zynq_ultra_ps_e_0"
IRQ_PIN = f"{ACCEL_CELL}/irq"  # how PYNQ names the interrupt source
CSR_BASE = 0xA000_0000  # HPM0_FPD window 0xA000_0000..0xAFFF_FFFF
INTC_BASE = 0xA001_0000
OUTPUT = "ternary_accel"  # .bit / .hwh / .xsa base name


@dataclass(frozen=True)
class HpPort:
    pin: str  # interface pin of the PS
    clock: str  # its clock pin
    gp: int  # PSU__USE__S_AXI_GP<gp>
    seg: str  # address-segment prefix: <SAXIGPk>/<HPn>


# The PS's AXI slave ports in the order the master ports take them: HP0..HP3 (direct to
# the DDR controller), then HPC0/HPC1 (coherent-capable, used non-coherent here).
HP_PORTS = (
    HpPort("S_AXI_HP0_FPD", "saxihp0_fpd_aclk", 2, "SAXIGP2/HP0"),
    HpPort("S_AXI_HP1_FPD", "saxihp1_fpd_aclk", 3, "SAXIGP3/HP1"),
    HpPort("S_AXI_HP2_FPD", "saxihp2_fpd_aclk", 4, "SAXIGP4/HP2"),
    HpPort("S_AXI_HP3_FPD", "saxihp3_fpd_aclk", 5, "SAXIGP5/HP3"),
    HpPort("S_AXI_HPC0_FPD", "saxihpc0_fpd_aclk", 0, "SAXIGP0/HPC0"),
    HpPort("S_AXI_HPC1_FPD", "saxihpc1_fpd_aclk", 1, "SAXIGP1/HPC1"),
)


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    board_part: str  # get_board_parts pattern (the latest installed revision is used)
    ddr: tuple  # (segment suffix, bus address, bytes) of the DDR every master port sees


BOARDS = {
    "kv260": Board(
        name="kv260",
        part="xck26-sfvc784-2LV-c",
        board_part="xilinx.com:kv260_som:part0:*",
        ddr=(("DDR_LOW", 0x0, 2 << 30), ("DDR_HIGH", 0x8_0000_0000, 2 << 30)),
    ),
}


def out_dir(board: str) -> Path:
    return ROOT / "build" / board


def bitstream_path(board: str) -> Path:
    """Where ``make bitstream BOARD=<board>`` leaves the ``.bit`` (the ``.hwh`` beside)."""
    return out_dir(board) / f"{OUTPUT}.bit"


# ---------------------------------------------------------------------- ports
def shell_of(dp, **kw):
    """``AccelShell(dp)`` built for its ports and ID (silenced: it may never be elaborated,
    nor its parts)."""
    from hw.shell import AccelShell

    shell = AccelShell(dp, **kw)
    for o in (shell, shell.core, shell.dma, shell.bridge):
        o._MustUse__silence = True
    return shell


def shell_ports(shell) -> list[tuple[str, str, int]]:
    """(name, "input"/"output", width) of every port of the AXI top, in signature order."""
    out = []
    for name, member in shell.signature.members.items():
        d = "input" if member.flow == wiring.In else "output"
        out.append((name, d, Shape.cast(member.shape).width))
    return out


def axi_interfaces(shell) -> list[str]:
    """The AXI interfaces of the top: ``s_axi``, ``m_axi0`` ... (prefixes of its ports)."""
    return ["s_axi", *(f"m_axi{i}" for i in range(shell.n_ports))]


def address_map(shell, board: Board) -> dict:
    """What the block design assigns and the driver expects (bus addresses)."""
    return {
        "csr": {
            "cell": ACCEL_CELL,
            "interface": "s_axi",
            "base": CSR_BASE,
            "range": 1 << shell.csr_addr_bits,
        },
        "intc": {"cell": INTC_CELL, "base": INTC_BASE, "range": 0x1_0000},
        "masters": {
            f"m_axi{i}": {
                "ps_port": HP_PORTS[i].pin,
                "segments": [
                    {"segment": f"{HP_PORTS[i].seg}_{seg}", "base": base, "range": size}
                    for seg, base, size in board.ddr
                ],
            }
            for i in range(shell.n_ports)
        },
    }


def _hex(v: int) -> str:
    return f"0x{v:X}"


def _size(n: int) -> str:
    for unit, k in (("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << k) == 0:
            return f"{n >> k}{unit}"
    raise ValueError(f"{n} bytes: not a whole K")


# ---------------------------------------------------------------------- Verilog wrapper
def wrapper_verilog(shell) -> str:
    """``ternary_accel``: the ports of ``accel_shell`` with IP integrator's attributes."""
    ifs = ":".join(axi_interfaces(shell))
    attrs = {
        "aclk": (
            "xilinx.com:signal:clock:1.0 aclk CLK",
            f"ASSOCIATED_BUSIF {ifs}, ASSOCIATED_RESET aresetn",
        ),
        "aresetn": ("xilinx.com:signal:reset:1.0 aresetn RST", "POLARITY ACTIVE_LOW"),
        "irq": ("xilinx.com:signal:interrupt:1.0 irq INTERRUPT", "SENSITIVITY LEVEL_HIGH"),
    }
    ports = shell_ports(shell)
    decl = []
    for i, (name, d, w) in enumerate(ports):
        sep = "," if i < len(ports) - 1 else ""
        if name in attrs:
            info, param = attrs[name]
            decl.append(f'    (* X_INTERFACE_INFO = "{info}" *)')
            decl.append(f'    (* X_INTERFACE_PARAMETER = "{param}" *)')
        rng = f"[{w - 1}:0] " if w > 1 else ""
        decl.append(f"    {d} wire {rng}{name}{sep}")
    conns = ",\n".join(f"        .{n}({n})" for n, _, _ in ports)
    return (
        f"// {TOP}: the AXI SoC shell of ternary-accel for IP integrator (generated by\n"
        f"// hw/vivado.py; the module {CORE} above is Amaranth's Verilog of hw.shell.AccelShell)\n"
        f"module {TOP} (\n" + "\n".join(decl) + "\n);\n"
        f"    {CORE} core (\n{conns}\n    );\nendmodule\n"
    )


# ---------------------------------------------------------------------- Tcl
def block_design_tcl(shell, dp, board: Board) -> str:
    """``bd.tcl``: the block design (see the module docstring)."""
    n = shell.n_ports
    if n > len(HP_PORTS):
        raise ValueError(f"{n} AXI master ports: the PS has {len(HP_PORTS)} HP/HPC slave ports")
    if shell.data_bytes * 8 != 128:
        raise ValueError(f"{shell.data_bytes * 8}-bit masters: the HP ports are set to 128")
    amap = address_map(shell, board)
    ps = PS_CELL
    cfg = [
        ("PSU__FPGA_PL0_ENABLE", 1),
        ("PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ", f"{dp.clock_mhz:g}"),
        ("PSU__USE__IRQ0", 1),
        ("PSU__USE__M_AXI_GP0", 1),
        ("PSU__MAXIGP0__DATA_WIDTH", 32),
        ("PSU__USE__M_AXI_GP1", 0),
        ("PSU__USE__M_AXI_GP2", 0),
    ]
    for i, hp in enumerate(HP_PORTS):
        used = i < n
        cfg.append((f"PSU__USE__S_AXI_GP{hp.gp}", int(used)))
        if used:
            cfg.append((f"PSU__SAXIGP{hp.gp}__DATA_WIDTH", 128))
    L = []
    a = L.append
    a(
        "# Block design of ternary-accel on the "
        + board.name.upper()
        + " (generated by hw/vivado.py)"
    )
    a(f"# design point {dp.name}: {n} AXI master ports, pl_clk0 {dp.clock_mhz:g} MHz")
    a(f"create_bd_design {BD}")
    a(f"current_bd_design {BD}")
    a("")
    a("# the processing system with the board preset, then the ports the shell uses")
    a(f"set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e {ps}]")
    a(
        "apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e "
        '-config {apply_board_preset "1"} $ps'
    )
    a("set_property -dict [list \\")
    for k, v in cfg:
        a(f"    CONFIG.{k} {{{v}}} \\")
    a("] $ps")
    a("")
    a("# the accelerator (module reference of the wrapper in accel_shell.v)")
    a(f"set accel [create_bd_cell -type module -reference {TOP} {ACCEL_CELL}]")
    a("")
    a("# reset, control interconnect, interrupt controller")
    a("set rst [create_bd_cell -type ip -vlnv xilinx.com:ip:proc_sys_reset rst_pl0]")
    a("set smc [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect ctrl_smc]")
    a("set_property -dict [list CONFIG.NUM_SI {1} CONFIG.NUM_MI {2}] $smc")
    a(f"set intc [create_bd_cell -type ip -vlnv xilinx.com:ip:axi_intc {INTC_CELL}]")
    a("set_property -dict [list CONFIG.C_IRQ_CONNECTION {1}] $intc")
    a("")
    a("# clock: pl_clk0 everywhere")
    clk_pins = [
        f"{ACCEL_CELL}/aclk",
        f"{ps}/maxihpm0_fpd_aclk",
        *(f"{ps}/{HP_PORTS[i].clock}" for i in range(n)),
        "rst_pl0/slowest_sync_clk",
        "ctrl_smc/aclk",
        f"{INTC_CELL}/s_axi_aclk",
    ]
    a(f"connect_bd_net [get_bd_pins {ps}/pl_clk0] \\")
    a("    " + " \\\n    ".join(f"[get_bd_pins {p}]" for p in clk_pins))
    a("# reset: pl_resetn0 -> proc_sys_reset")
    a(f"connect_bd_net [get_bd_pins {ps}/pl_resetn0] [get_bd_pins rst_pl0/ext_reset_in]")
    a(
        f"connect_bd_net [get_bd_pins rst_pl0/peripheral_aresetn] "
        f"[get_bd_pins {ACCEL_CELL}/aresetn] [get_bd_pins {INTC_CELL}/s_axi_aresetn]"
    )
    a("connect_bd_net [get_bd_pins rst_pl0/interconnect_aresetn] [get_bd_pins ctrl_smc/aresetn]")
    a("")
    a("# control: HPM0_FPD -> SmartConnect -> the CSRs (s_axi) and the interrupt controller")
    for src, dst in (
        (f"{ps}/M_AXI_HPM0_FPD", "ctrl_smc/S00_AXI"),
        ("ctrl_smc/M00_AXI", f"{ACCEL_CELL}/s_axi"),
        ("ctrl_smc/M01_AXI", f"{INTC_CELL}/s_axi"),
    ):
        a(f"connect_bd_intf_net [get_bd_intf_pins {src}] [get_bd_intf_pins {dst}]")
    a("")
    a("# memory: one master port on each PS slave port")
    for i in range(n):
        a(
            f"connect_bd_intf_net [get_bd_intf_pins {ACCEL_CELL}/m_axi{i}] "
            f"[get_bd_intf_pins {ps}/{HP_PORTS[i].pin}]"
        )
    a("")
    a("# interrupt: irq -> axi_intc -> pl_ps_irq0")
    a(f"connect_bd_net [get_bd_pins {ACCEL_CELL}/irq] [get_bd_pins {INTC_CELL}/intr]")
    a(f"connect_bd_net [get_bd_pins {INTC_CELL}/irq] [get_bd_pins {ps}/pl_ps_irq0]")
    a("")
    a("# address map (what host/backends/board.py and PYNQ expect; hw.vivado.address_map)")
    c = amap["csr"]
    a(
        f"assign_bd_address -offset {_hex(c['base'])} -range {_size(c['range'])} "
        f"-target_address_space [get_bd_addr_spaces {ps}/Data] "
        f"[get_bd_addr_segs -of_objects [get_bd_intf_pins {ACCEL_CELL}/s_axi]] -force"
    )
    t = amap["intc"]
    a(
        f"assign_bd_address -offset {_hex(t['base'])} -range {_size(t['range'])} "
        f"-target_address_space [get_bd_addr_spaces {ps}/Data] "
        f"[get_bd_addr_segs -of_objects [get_bd_intf_pins {INTC_CELL}/s_axi]] -force"
    )
    for port, m in amap["masters"].items():
        for s in m["segments"]:
            a(
                f"assign_bd_address -offset {_hex(s['base'])} -range {_size(s['range'])} "
                f"-target_address_space [get_bd_addr_spaces {ACCEL_CELL}/{port}] "
                f"[get_bd_addr_segs {ps}/{s['segment']}] -force"
            )
    a("")
    a("validate_bd_design")
    a("save_bd_design")
    return "\n".join(L) + "\n"


def constraints_xdc(dp) -> str:
    period = 1000.0 / dp.clock_mhz
    return (
        "# ternary-accel on the KV260 (generated by hw/vivado.py)\n"
        f"# pl_clk0 ({dp.clock_mhz:g} MHz, {period:.3f} ns) is constrained by the zynq_ultra_ps_e\n"
        "# IP itself; the design uses no package pins (everything goes through the PS).\n"
        "set_property BITSTREAM.GENERAL.COMPRESS TRUE [current_design]\n"
    )


def build_tcl(board: Board, jobs: int) -> str:
    return f"""# The {board.name.upper()} bitstream of ternary-accel (generated by hw/vivado.py):
#   vivado -mode batch -source build.tcl
# writes {OUTPUT}.bit, {OUTPUT}.hwh (pynq.Overlay loads the pair), {OUTPUT}.xsa, timing.rpt
set here [file dirname [file normalize [info script]]]
set proj_dir $here/vivado
set jobs {jobs}

create_project -force {BD} $proj_dir -part {board.part}
set bparts [get_board_parts -quiet -latest_file_version {{{board.board_part}}}]
if {{[llength $bparts] == 0}} {{
    error "board files {board.board_part} are not installed (Vivado: Tools > Vivado Store > Boards)"
}}
set_property board_part [lindex $bparts end] [current_project]
add_files -norecurse $here/accel_shell.v
set_property top {TOP} [current_fileset]
update_compile_order -fileset sources_1
add_files -fileset constrs_1 -norecurse $here/{OUTPUT}.xdc

source $here/bd.tcl

set bd_file [get_files {BD}.bd]
generate_target all $bd_file
make_wrapper -files $bd_file -top
set wrapper [glob -nocomplain $proj_dir/{BD}.gen/sources_1/bd/{BD}/hdl/{BD}_wrapper.v \\
                               $proj_dir/{BD}.srcs/sources_1/bd/{BD}/hdl/{BD}_wrapper.v]
add_files -norecurse [lindex $wrapper 0]
set_property top {BD}_wrapper [current_fileset]
update_compile_order -fileset sources_1

launch_runs synth_1 -jobs $jobs
wait_on_run synth_1
if {{[get_property PROGRESS [get_runs synth_1]] != "100%"}} {{ error "synthesis failed" }}
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
if {{[get_property PROGRESS [get_runs impl_1]] != "100%"}} {{ error "implementation failed" }}

open_run impl_1
report_timing_summary -file $here/timing.rpt
set wns [get_property SLACK [get_timing_paths -max_paths 1 -nworst 1 -setup]]
if {{$wns < 0}} {{
    puts "WARNING: timing not met at pl_clk0 (WNS $wns ns): see timing.rpt"
}}

file copy -force $proj_dir/{BD}.runs/impl_1/{BD}_wrapper.bit $here/{OUTPUT}.bit
set hwh [glob -nocomplain $proj_dir/{BD}.gen/sources_1/bd/{BD}/hw_handoff/{BD}.hwh \\
                           $proj_dir/{BD}.srcs/sources_1/bd/{BD}/hw_handoff/{BD}.hwh]
file copy -force [lindex $hwh 0] $here/{OUTPUT}.hwh
write_hw_platform -fixed -include_bit -force $here/{OUTPUT}.xsa
puts "wrote $here/{OUTPUT}.bit and $here/{OUTPUT}.hwh"
"""


def build_sh() -> str:
    return (
        "#!/bin/sh\n"
        "# Run the Vivado flow (generated by hw/vivado.py); needs vivado on PATH.\n"
        'cd "$(dirname "$0")" && exec vivado -mode batch -notrace -source build.tcl '
        "-log vivado.log -journal vivado.jou\n"
    )


# ---------------------------------------------------------------------- writing
def write_project(
    board: str = "kv260", out: Path | None = None, jobs: int = 4, verilog: str | None = None
) -> dict[str, Path]:
    """Write the files of ``build/<board>/`` (``verilog``: the text of ``accel_shell``, if
    already exported). Returns {role: path}."""
    from golden.config import design_point
    from hw.verilog import export_verilog

    if board not in BOARDS:
        raise ValueError(f"BOARD: expected one of {sorted(BOARDS)}, got {board!r}")
    b = BOARDS[board]
    dp = design_point(board)
    if dp.device != "xck26":
        raise ValueError(f"design point {dp.name} targets {dp.device}, not the KV260's xck26")
    shell = shell_of(dp)
    out = Path(out) if out is not None else out_dir(board)
    out.mkdir(parents=True, exist_ok=True)
    if verilog is None:
        verilog = export_verilog(shell, CORE)
    files = {
        "verilog": out / "accel_shell.v",
        "block_design": out / "bd.tcl",
        "constraints": out / f"{OUTPUT}.xdc",
        "build_tcl": out / "build.tcl",
        "build_sh": out / "build.sh",
        "manifest": out / "manifest.json",
    }
    files["verilog"].write_text(verilog.rstrip() + "\n\n" + wrapper_verilog(shell))
    files["block_design"].write_text(block_design_tcl(shell, dp, b))
    files["constraints"].write_text(constraints_xdc(dp))
    files["build_tcl"].write_text(build_tcl(b, jobs))
    files["build_sh"].write_text(build_sh())
    files["build_sh"].chmod(0o755)
    manifest = {
        "board": board,
        "part": b.part,
        "design_point": dp.name,
        "clock_mhz": dp.clock_mhz,
        "id": f"0x{shell.ident:08x}",
        "top": TOP,
        "cell": ACCEL_CELL,
        "ports": [{"name": n, "dir": d, "width": w} for n, d, w in shell_ports(shell)],
        "address_map": address_map(shell, b),
        "outputs": [f"{OUTPUT}.bit", f"{OUTPUT}.hwh", f"{OUTPUT}.xsa"],
        "generated_by": "python -m hw.vivado",
    }
    files["manifest"].write_text(json.dumps(manifest, indent=1) + "\n")
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hw.vivado",
        description="Write the Vivado project of a board (and run it when Vivado is here).",
    )
    ap.add_argument("--board", default="kv260", help=f"one of {sorted(BOARDS)}")
    ap.add_argument("--out", type=Path, default=None, help="output directory (build/<board>)")
    ap.add_argument("--jobs", type=int, default=4, help="Vivado run jobs (default 4)")
    ap.add_argument("--no-run", action="store_true", help="write the files, never run Vivado")
    a = ap.parse_args(argv)
    if a.board not in BOARDS:
        print(f"error: BOARD: expected one of {sorted(BOARDS)}, got {a.board!r}", file=sys.stderr)
        return 2
    if a.jobs < 1:
        print(f"error: --jobs: expected >= 1, got {a.jobs}", file=sys.stderr)
        return 2
    files = write_project(a.board, a.out, a.jobs)
    where = files["build_sh"].parent
    rel = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
    vivado = None if a.no_run else shutil.which("vivado")
    if vivado is None:
        print(
            f"wrote {rel}/ (Verilog, block design, constraints, build script); "
            f"{'not running' if a.no_run else 'vivado is not on PATH, so no'} bitstream: "
            f"run {rel}/build.sh where Vivado is installed"
        )
        return 0
    print(f"wrote {rel}/; running {vivado} -mode batch (this takes a while)", flush=True)
    r = subprocess.run(["sh", str(files["build_sh"])], env=os.environ.copy())
    if r.returncode != 0:
        print(f"error: vivado failed (exit {r.returncode}): see {rel}/vivado.log", file=sys.stderr)
        return 1
    print(f"bitstream: {rel}/{OUTPUT}.bit with {OUTPUT}.hwh")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
