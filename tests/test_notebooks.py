"""Execute every study notebook (notebooks/<name>.py) top to bottom.

Each notebook runs through ``notebooks.run.execute`` (nbclient, a kernel on this
interpreter) on the shipped model with smaller held-out slices than ``make notebooks``
uses, so the four take about 3 minutes together on 2 cores. A failing cell -- which
includes each notebook's own asserts of its reported numbers against the golden
modules' stated bounds -- fails the test; the figures must all be written.
"""

import os
import sys

import nbformat
import pytest

from host.data import DEFAULT_MODEL
from notebooks import lib, run

# smaller slices than the notebooks' defaults (runtime); every code path still runs
QUICK = {
    "weights_activations": dict(HELDOUT_WINDOWS=6, STAT_WINDOWS=1),
    "approximations": dict(HELDOUT_WINDOWS=3, SOFTMAX_ROWS=100),
    "nl_adc": dict(
        HELDOUT_WINDOWS=2, RANGE_WINDOWS=1, BITS=(3, 6), STUDY_DEVICES=20, ACCEL_WINDOWS=1
    ),
    "sparsity": dict(CALIB_WINDOWS=1, HELDOUT_WINDOWS=1, LEVELS=(0.0, 0.3, 0.6), CATS_MORE=(0.9,)),
}
FIGURES = {
    "weights_activations": (
        "weight_codes",
        "activations",
        "projection_snr",
        "integer_vs_reference",
        "heldout_loss",
    ),
    "approximations": ("block_errors", "bound_ratio", "ablation", "activation_in_model"),
    "nl_adc": ("transfer_curves", "calibration", "model_bits", "accelerator_bits"),
    "sparsity": ("tradeoff",),
}
MODEL_DIR = os.environ.get("NOTEBOOK_MODEL", DEFAULT_MODEL)


def test_every_notebook_is_tested():
    assert set(QUICK) == set(run.NOTEBOOKS) == set(FIGURES)


@pytest.mark.slow
@pytest.mark.parametrize("name", run.NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    if not os.path.isfile(os.path.join(lib.resolve(MODEL_DIR), "config.json")):
        pytest.skip(f"no model at {MODEL_DIR} (the shipped model is exported by host.train)")
    params = dict(QUICK[name], MODEL_DIR=lib.resolve(MODEL_DIR))
    path, _ = run.execute(name, params, out_dir=str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    # the overrides were injected after the parameters cell and the last cell ran
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "notebook runtime" in text
    # the kernel ran the venv's interpreter (the one running the tests)
    assert f"kernel python: {sys.executable}" in text
    for fig in FIGURES[name]:
        png = tmp_path / f"{name}_{fig}.png"
        assert png.is_file() and png.stat().st_size > 1000, png


def test_cell_failure_is_reported(tmp_path):
    # a notebook whose parameter makes a cell fail must raise, not pass silently
    with pytest.raises(Exception):  # noqa: B017 - nbclient raises its own CellExecutionError
        run.execute(
            "weights_activations", {"MODEL_DIR": str(tmp_path / "missing")}, out_dir=str(tmp_path)
        )
    assert (tmp_path / "weights_activations.ipynb").is_file()
