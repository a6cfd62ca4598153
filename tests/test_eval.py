"""host/eval.py (`python -m host.eval`): held-out split, windowing, the loss against an
independent computation, the printed table, and bad arguments."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_util import MICRO, save_char_model

from golden.model import GoldenModel
from host import data as hdata
from host import eval as hev

ROOT = Path(__file__).resolve().parents[1]
CTX = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):

    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("eval")
    letters = list("abcdefgh \n")
    corpus = "".join(rng.choice(letters, size=2000))
    (d / "corpus.txt").write_text(corpus)
    tok, model = save_char_model(d / "model", corpus, CTX, seed=2, body=MICRO)
    return d, corpus, tok, model


def test_heldout_split_and_windows(setup):
    d, corpus, _, _ = setup
    held = hdata.heldout_text(str(d / "corpus.txt"))
    assert held == corpus[hdata.split_index(len(corpus)) :]
    assert hdata.heldout_text(str(d / "corpus.txt"), 50) == held[:50]
    ids = np.arange(len(held))
    wins = hev.windows(ids, CTX)
    assert all(len(x) == len(y) <= CTX for x, y in wins)
    # every held-out character but the first is predicted exactly once, from its predecessor
    targets = np.concatenate([y for _, y in wins])
    np.testing.assert_array_equal(targets, ids[1:])
    for x, y in wins:
        np.testing.assert_array_equal(y, x + 1)


@pytest.mark.parametrize("mode", ["reference", "integer"])
def test_loss_matches_a_direct_computation(setup, mode):
    d, corpus, tok, model = setup
    held = hdata.split(corpus)[1]
    ids = np.array(tok.encode(held))
    gm = GoldenModel(model, mode)
    want, n = 0.0, 0
    for s in range(0, len(ids) - 1, CTX):  # one window at a time, plain softmax
        x, y = ids[s : s + CTX], ids[s + 1 : s + CTX + 1]
        x = x[: len(y)]
        z = gm.forward(x).astype(np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        want -= np.log(p[np.arange(len(y)), y]).sum()
        n += len(y)
    got, count = hev.evaluate(gm, hev.windows(ids, CTX), batch=3)
    assert count == n == len(ids) - 1
    assert got == pytest.approx(want / n, rel=1e-9)


def test_cli_prints_both_modes_and_difference(setup):
    d, *_ = setup
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "host.eval",
            "-m",
            str(d / "model"),
            "--corpus",
            str(d / "corpus.txt"),
            "--chars",
            "120",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines() if line}
    for mode in ("reference", "integer"):
        nats, bits, ppl = (float(v) for v in rows[mode][:3])
        assert bits == pytest.approx(nats / math.log(2), abs=2e-4)
        assert ppl == pytest.approx(math.exp(nats), rel=1e-3)
    diff = float(rows["difference"][0])
    assert diff == pytest.approx(float(rows["integer"][0]) - float(rows["reference"][0]), abs=2e-4)
    assert "119 predictions" in r.stdout


def test_design_point_selects_the_integer_datapath(setup):
    """--design-point kv260-kv4: the integer mode computes the INT4 KV cache's datapath,
    exactly hev.evaluate of that GoldenModel (and not the INT8 one's loss)."""
    from golden.config import design_point

    d, corpus, tok, model = setup
    ids = np.array(tok.encode(hdata.heldout_text(str(d / "corpus.txt"), 200)))
    wins = hev.windows(ids, CTX)
    loss = {
        name: hev.evaluate(GoldenModel(model, "integer", design_point(name).datapath), wins)[0]
        for name in ("kv260", "kv260-kv4")
    }
    assert loss["kv260"] != loss["kv260-kv4"]
    r = subprocess.run(
        [sys.executable, "-m", "host.eval", "-m", str(d / "model"), "--corpus",
         str(d / "corpus.txt"), "--chars", "200", "--modes", "integer", "--design-point",
         "kv260-kv4"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "design point kv260-kv4" in r.stdout
    row = next(line.split() for line in r.stdout.splitlines() if line.startswith("integer"))
    assert float(row[4]) == pytest.approx(loss["kv260-kv4"], abs=1e-4)  # nats/token


@pytest.mark.parametrize(
    "args",
    [
        ["--design-point", "nope"],
        ["--chars", "1"],
        ["--modes", "fast"],
        ["--batch", "0"],
        ["-m", "/nonexistent"],
        ["--corpus", "/nonexistent.txt"],
    ],
)
def test_bad_arguments_exit_2(setup, args):
    d, *_ = setup
    base = ["-m", str(d / "model"), "--corpus", str(d / "corpus.txt")]
    r = subprocess.run(
        [sys.executable, "-m", "host.eval", *base, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
