"""Execute the study notebooks: ``python -m notebooks.run [names] [--model DIR] [--set K=V]``.

Each notebook ``notebooks/<name>.py`` (jupytext percent format, the source of truth) is
read with jupytext, executed top to bottom by nbclient in a Python kernel that runs
*this* interpreter (``sys.executable``, i.e. the venv's Python: the kernelspec is built
here, not looked up, so a system-wide ``python3`` kernel can never be picked), and
written with its outputs to ``build/notebooks/<name>.ipynb``; the notebooks save their
figures next to it as ``build/notebooks/<name>_<figure>.png``.

Parameters: the cell tagged ``parameters`` holds each notebook's defaults (e.g.
``MODEL_DIR = None``, the shipped model ``host.data.DEFAULT_MODEL``; ``OUT_DIR``; the
held-out slice size). Overrides are
injected as a cell right after it (as papermill does): ``--model DIR`` sets
``MODEL_DIR``, ``--out DIR`` sets ``OUT_DIR``, ``--set NAME=VALUE`` any other
(VALUE is a Python literal). A failing cell stops the run with exit status 1 and the
partial notebook is still written.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

import jupytext
import nbformat
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NOTEBOOKS = ("weights_activations", "approximations", "nl_adc", "sparsity")
OUT_DIR = os.path.join(REPO, "build", "notebooks")
CELL_TIMEOUT_S = 600
KERNEL_NAME = "ternary-accel-python"


class VenvKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel is ipykernel on this interpreter (sys.executable)."""

    @property
    def kernel_spec(self) -> KernelSpec:
        if self._kernel_spec is None:
            self._kernel_spec = KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name=f"Python ({sys.executable})",
                language="python",
                env={"MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"},
                resource_dir=HERE,
            )
        return self._kernel_spec


def notebook_path(name: str) -> str:
    return os.path.join(HERE, f"{name}.py")


def _inject(nb, params: dict) -> None:
    """Insert a cell assigning ``params`` right after the ``parameters`` cell."""
    if not params:
        return
    idx = next(
        (
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])
        ),
        None,
    )
    if idx is None:
        raise ValueError("notebook has no cell tagged 'parameters' to override")
    src = "# injected by notebooks.run\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(idx + 1, cell)


def execute(
    name: str, params: dict | None = None, out_dir: str = OUT_DIR, timeout: int = CELL_TIMEOUT_S
) -> tuple[str, float]:
    """Run notebook ``name``; returns (written .ipynb path, seconds).

    Raises nbclient's CellExecutionError (after writing the partial notebook) if a cell
    fails."""
    if name not in NOTEBOOKS:
        raise ValueError(f"name: expected one of {NOTEBOOKS}, got {name!r}")
    os.makedirs(out_dir, exist_ok=True)
    nb = jupytext.read(notebook_path(name))
    nb.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python 3 (venv)",
        "language": "python",
    }
    _inject(nb, dict(OUT_DIR=out_dir, **(params or {})))
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=VenvKernelManager,
        resources={"metadata": {"path": REPO}},
    )
    out = os.path.join(out_dir, f"{name}.ipynb")
    t0 = time.time()
    try:
        client.execute()
    finally:
        nbformat.write(nb, out)
    return out, time.time() - t0


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m notebooks.run", description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help=f"notebooks to run (default: all of {NOTEBOOKS})")
    ap.add_argument("--model", help="model directory (MODEL_DIR), default the shipped model")
    ap.add_argument("--out", default=OUT_DIR, help="output directory (default build/notebooks)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a parameter (Python literal)",
    )
    args = ap.parse_args(argv)
    params = {}
    if args.model:
        params["MODEL_DIR"] = os.path.abspath(args.model)
    for kv in args.set:
        k, sep, v = kv.partition("=")
        if not sep or not k.isidentifier():
            ap.error(f"--set: expected NAME=VALUE, got {kv!r}")
        params[k] = _literal(v)
    names = args.names or list(NOTEBOOKS)
    for n in names:
        if n not in NOTEBOOKS:
            ap.error(f"unknown notebook {n!r}; choose from {NOTEBOOKS}")
    status = 0
    for n in names:
        try:
            path, sec = execute(n, params, os.path.abspath(args.out))
            print(f"{n}: ok in {sec:.1f} s -> {os.path.relpath(path)}")
        except CellExecutionError as e:
            print(f"{n}: FAILED\n{str(e)[-3000:]}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
