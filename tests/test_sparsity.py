"""Thresholded activation sparsity: golden/sparsity.py (TEAL, WINA, CATS thresholds),
GoldenModel(act_sparsity=...), and host/sparsity.py (calibration, bytes per token, the
sweep and its CLI)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_util import GQA4

from golden import isa
from golden import sparsity as gsp
from golden.config import DEFAULT
from golden.model import REPORT_CONFIGS, GoldenModel, Scale, op_act, random_model, relu2_gate
from golden.modelspec import PROJ, ModelConfig
from host import data as hdata
from host import sparsity as hs
from host.data import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = Path(DEFAULT_MODEL)
needs_shipped = pytest.mark.skipif(
    not (SHIPPED / "config.json").is_file(), reason="no shipped model at models/default"
)
# levels reached on the calibration text, run with the thresholds (later layers see the
# thresholded earlier ones): mean over the inputs of |achieved - level| ...
LEVEL_TOL_MEAN = 0.02
# ... and per input: a score value can hold many inputs (TEAL's |x_q| is an INT8 code: one
# step near 0 holds up to ~10 % of a ReLU^2 down_proj input's live values)
LEVEL_TOL_INPUT = {"teal": 0.12, "wina": 0.07, "cats": 0.01}


def _models():
    relu2 = random_model(ModelConfig(**GQA4), seed=3)
    silu = random_model(ModelConfig(**REPORT_CONFIGS[1][0]), seed=4)
    return relu2, silu


def _all(method, config, tau):
    names = (gsp.ACT,) if method == "cats" else PROJ
    return gsp.ActSparsity(
        method, {(li, n): tau for li in range(config.num_hidden_layers) for n in names}
    )


# --------------------------------------------------------------------------- golden
@pytest.mark.parametrize("method", gsp.METHODS)
def test_zero_thresholds_equal_dense_exactly(method):
    rng = np.random.default_rng(1)
    for m in _models():
        mc = m.config
        toks = rng.integers(0, mc.vocab_size, size=(2, mc.max_position_embeddings))
        dense = GoldenModel(m, "integer").forward(toks)
        got = GoldenModel(m, "integer", act_sparsity=_all(method, mc, 0)).forward(toks)
        assert np.array_equal(got, dense)
        # and a real threshold changes the result (the option is wired in)
        big = {"teal": 20, "wina": 2000, "cats": 8000}[method]
        other = GoldenModel(m, "integer", act_sparsity=_all(method, mc, big)).forward(toks)
        assert not np.array_equal(other, dense)


@pytest.mark.parametrize("method", gsp.METHODS)
def test_thresholded_decode_equals_full_forward(method):
    # thresholds act per token, so a KV-cache decode stays bit-equal to one full forward
    for m in _models():
        mc = m.config
        tau = {"teal": 12, "wina": 1500, "cats": 6000}[method]
        gm = GoldenModel(m, "integer", act_sparsity=_all(method, mc, tau))
        toks = np.random.default_rng(6).integers(0, mc.vocab_size, size=20)
        full = gm.forward(toks)
        cache = gm.new_cache()
        parts = [gm.forward(toks[:7], cache)] + [
            gm.forward(toks[i : i + 1], cache) for i in range(7, 20)
        ]
        assert np.array_equal(np.concatenate(parts), full)


def test_thresholds_zero_what_the_scores_say():
    m, _ = _models()
    mc = m.config
    toks = np.random.default_rng(2).integers(0, mc.vocab_size, size=mc.max_position_embeddings)
    seen = {}
    for method, tau in (("teal", 9), ("wina", 300)):
        sp = _all(method, mc, tau)
        gm = GoldenModel(
            m, "integer", act_sparsity=sp, sparsity_hook=lambda li, n, a: seen.update({(li, n): a})
        )
        gm.forward(toks)
        for li in range(mc.num_hidden_layers):
            for name in PROJ:
                a = seen[(li, name)]
                col = gsp.column_weights(gm.compiled.layers[li].proj[name].codes)
                x = a["x_in"].astype(np.int64)
                score = np.abs(x) if method == "teal" else x * x * col
                assert np.array_equal(a["x_q"], np.where(score <= tau, 0, a["x_in"]))
    # CATS on ReLU^2: gates in (0, tau] are zeroed, negatives and the absmax kept, so the
    # other gate codes are those of the dense run
    acc = np.array([[-500, 3, 40, 900, 1000]], np.int32)
    g16 = relu2_gate(acc, DEFAULT)
    out = gsp.cats_relu2_gate(acc, g16, int(g16[0, 3]))
    assert out.tolist() == [[-500, 0, 0, 0, 1000]]
    assert np.array_equal(relu2_gate(out, DEFAULT)[0, [0, 4]], g16[0, [0, 4]])


def test_cats_silu_zeroes_small_activations_only():
    _, m = _models()
    gm = GoldenModel(m, "integer")
    lc = gm.compiled.layers[0]
    rng = np.random.default_rng(3)
    n = m.config.intermediate_size
    acc_g = rng.integers(-3000, 3000, size=(5, n)).astype(np.int32)
    acc_u = rng.integers(-3000, 3000, size=(5, n)).astype(np.int32)
    sx = Scale(np.full(5, 40000, np.int64), np.full(5, 20, np.int64))
    args = (acc_g, acc_u, sx, lc.proj["gate_proj"].const, lc.proj["up_proj"].const, "silu")
    dense = op_act(*args, gm.cfg)
    assert np.array_equal(op_act(*args, gm.cfg, None, 0), dense)
    thr = op_act(*args, gm.cfg, None, 64)
    zeroed = (thr == 0) & (dense != 0)
    assert zeroed.any() and np.array_equal(thr[~zeroed], dense[~zeroed])
    with pytest.raises(ValueError, match="silu only"):
        op_act(acc_g, acc_u, sx, args[3], args[4], "relu2", gm.cfg, None, 5)


def test_zero_fraction_is_monotonic_in_tau():
    rng = np.random.default_rng(4)
    x = rng.integers(-127, 128, size=(16, 96)).astype(np.int8)
    col = rng.integers(0, 40, size=96)
    for method, taus in (("teal", range(0, 128)), ("wina", range(0, 127**2 * 40, 5000))):
        fr = [np.mean(gsp.threshold_inputs(method, x, t, col) == 0) for t in taus]
        assert np.all(np.diff(fr) >= 0) and fr[-1] == 1.0
    v, c = np.unique(rng.integers(0, 500, 3000), return_counts=True)
    fr = [gsp.live_fraction_zeroed(v, c, t) for t in range(0, 501, 7)]
    assert np.all(np.diff(fr) >= 0) and fr[0] == 0.0


def test_threshold_for_level_is_the_nearest():
    rng = np.random.default_rng(5)
    for _ in range(20):
        s = rng.geometric(0.05, size=rng.integers(50, 400)) - 3  # some <= 0: not live
        v, c = np.unique(s, return_counts=True)
        for level in (0.05, 0.3, 0.55, 0.9):
            tau = gsp.threshold_for_level(v, c, level)
            got = gsp.live_fraction_zeroed(v, c, tau)
            cands = [0, *v[v > 0].tolist()]
            assert abs(got - level) <= min(
                abs(gsp.live_fraction_zeroed(v, c, t) - level) for t in cands
            )
    # hand case: live scores 1 (x2), 2 (x1), 5 (x1); level 0.5 -> tau 1 (2 of 4 removed)
    v, c = np.array([0, 1, 2, 5]), np.array([9, 2, 1, 1])
    assert gsp.threshold_for_level(v, c, 0.5) == 1
    assert gsp.threshold_for_level(v, c, 0.8) == 2  # 3/4
    assert gsp.threshold_for_level(v, c, 0.0) == 0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="method"):
        gsp.ActSparsity("topk", {})
    with pytest.raises(ValueError, match="name one of"):
        gsp.ActSparsity("teal", {(0, "act"): 1})
    with pytest.raises(ValueError, match="name one of"):
        gsp.ActSparsity("cats", {(0, "gate_proj"): 1})
    with pytest.raises(ValueError, match="tau must be an integer"):
        gsp.ActSparsity("teal", {(0, "q_proj"): -1})
    with pytest.raises(ValueError, match="tau must be an integer"):
        gsp.ActSparsity("teal", {(0, "q_proj"): 128})
    with pytest.raises(ValueError, match="tau must be an integer"):
        gsp.ActSparsity("cats", {(0, "act"): 1 << 15})
    with pytest.raises(ValueError, match="tau must be an integer"):
        gsp.ActSparsity("wina", {(0, "q_proj"): 2.5})
    with pytest.raises(ValueError, match="layer"):
        gsp.ActSparsity("teal", {(-1, "q_proj"): 1})
    with pytest.raises(ValueError, match="given twice"):
        gsp.ActSparsity("teal", [(0, "q_proj", 1), (0, "q_proj", 2)])
    with pytest.raises(ValueError, match="mapping"):
        gsp.ActSparsity("teal", 5)
    m, _ = _models()
    with pytest.raises(ValueError, match="beyond the model"):
        GoldenModel(m, "integer", act_sparsity=gsp.ActSparsity("teal", {(9, "q_proj"): 1}))
    with pytest.raises(ValueError, match="integer mode only"):
        GoldenModel(m, "reference", act_sparsity=_all("teal", m.config, 1))
    with pytest.raises(ValueError, match="ActSparsity"):
        GoldenModel(m, "integer", act_sparsity={(0, "q_proj"): 1})
    for level in (-0.1, 1.0, True, "0.5"):
        with pytest.raises(ValueError, match="level"):
            gsp.threshold_for_level(np.array([1]), np.array([1]), level)
    with pytest.raises(ValueError, match="col"):
        gsp.input_scores("wina", np.zeros((2, 4), np.int8))
    with pytest.raises(ValueError, match="integer"):
        gsp.input_scores("teal", np.zeros(3))
    with pytest.raises(ValueError, match="fmt"):
        hs.projection_bytes(np.zeros((1, 3), np.int8), 4, None, "dense")
    with pytest.raises(ValueError, match="method"):
        hs.thresholded_names("topk", "relu2")


# --------------------------------------------------------------------------- bytes
def test_bytes_of_a_hand_countable_case():
    t = DEFAULT.tlmm  # G = 3, T = 28, Q = 4, 5-bit codes: a beat is 112 codes, 70 bytes
    assert (t.group, t.tables, t.replicas, t.code_bits) == (3, 28, 4, 5)
    # k = 7: groups {0,1,2} {3,4,5} {6,pad,pad}; n = 5 outputs
    x = np.zeros((2, 7), np.int8)
    x[0, 4] = 3  # row 0: only group 1 live; row 1: nothing live
    # TLMM_SPARSE: 14 activation bytes + one beat of the single (last) row block, which
    # is read only as far as its 5 codes reach: ceil(5 * 5 / 8) = 4 bytes
    assert hs.projection_bytes(x, 5, None, "sparse") == 14 + 4
    # TLMM: every row reads Nb = ceil(5/4) = 2 blocks x Kc = ceil(3/28) = 1 beat of 70
    assert hs.projection_bytes(x, 5, None, "tlmm") == 14 + 2 * 2 * 70
    # masked TLMM: + the int32 mask (2 x 5 x 4 bytes); with skip only the live blocks:
    # row 0 block 0 (mask[0, 0] > 0), row 1 none
    mask = np.array([[7, 0, -1, 0, 0], [0, 0, 0, 0, -3]], np.int32)
    assert hs.projection_bytes(x, 5, mask, "tlmm") == 14 + 40 + 280
    assert hs.projection_bytes(x, 5, mask, "skip") == 14 + 40 + 70
    # a 3-D [B, T, k] input counts as B*T rows
    assert hs.projection_bytes(x[None], 5, mask[None], "skip") == 14 + 40 + 70


def test_byte_counter_sums_plans_per_token():
    m, _ = _models()
    mc = m.config
    plans = {k: hs.read_plan(k, "relu2") for k in ("dense", "exact", "teal", "sparse")}
    assert plans["sparse"] == plans["teal"]
    assert set(hs.read_plan("cats", "relu2").items()) == set(plans["exact"].items())
    assert set(hs.read_plan("sparse", "silu").values()) == {"sparse"}
    assert plans["exact"]["down_proj"] == "sparse" and plans["exact"]["up_proj"] == "skip"
    assert plans["teal"]["q_proj"] == "sparse" and plans["teal"]["up_proj"] == "skip"
    assert set(plans["dense"].values()) == {"tlmm"}
    counter = hs.ByteCounter(plans)
    toks = np.arange(10) % mc.vocab_size
    GoldenModel(m, "integer", sparsity_hook=counter).forward(toks)
    assert counter.tokens == 10
    # dense: per token and layer, every projection's weights in TLMM tiles, its
    # activations, and up's mask
    per_layer = sum(isa.tlmm_weight_bytes(*m.weights.layers[0].proj[p].codes.shape) for p in PROJ)
    acts = 3 * mc.hidden_size + mc.num_attention_heads * mc.head_dim + mc.hidden_size * 2
    acts += mc.intermediate_size + 4 * mc.intermediate_size
    assert counter.per_token()["dense"] == mc.num_hidden_layers * (per_layer + acts)
    assert counter.per_token()["teal"] < counter.per_token()["dense"]


# --------------------------------------------------------------------------- calibration
def test_calibration_text_is_training_split():
    text = hdata.read_corpus()
    cal = hs.calibration_text(2000)
    assert cal == text[:2000] and len(cal) <= hdata.split_index(len(text))
    assert cal not in hdata.heldout_text()


@needs_shipped
def test_thresholds_reach_the_level_on_calibration_data():
    from notebooks import lib

    m, tok = lib.load()
    ctx = m.config.max_position_embeddings
    calib, _ = hs.text_windows(tok, hs.calibration_text(ctx + 1), ctx)
    hists = hs.calibrate(m, calib)
    for method in gsp.METHODS:
        for level in (0.3, 0.6):
            sp = hs.thresholds(hists, method, level, "relu2")
            assert {n for _, n, _ in sp.thresholds} == set(hs.thresholded_names(method, "relu2"))
            assert abs(hs.calibrated_level(hists, sp) - level) <= LEVEL_TOL_MEAN
            got = {}

            def hook(li, name, a, got=got):
                got[(li, name)] = a

            GoldenModel(m, "integer", act_sparsity=sp, sparsity_hook=hook).forward(calib[0][0])
            frs = []
            for li, name, tau in sp.thresholds:
                a = got[(li, name)]
                if method == "cats":  # live gates of this run with a score <= tau
                    s = a["gate_score"]
                    fr = np.mean(s[s > 0] <= tau)
                else:
                    live = a["x_in"] != 0
                    fr = np.mean(a["x_q"][live] == 0)
                assert abs(fr - level) <= LEVEL_TOL_INPUT[method], (method, li, name, fr)
                frs.append(fr)
            assert abs(np.mean(frs) - level) <= LEVEL_TOL_MEAN, (method, level, np.mean(frs))


@needs_shipped
def test_sweep_small():
    from notebooks import lib

    m, tok = lib.load()
    ctx = m.config.max_position_embeddings
    calib, _ = hs.text_windows(tok, hs.calibration_text(ctx + 1), ctx)
    wins, chars = hs.text_windows(tok, hdata.heldout_text(chars=ctx // 2 + 1), ctx)
    res = hs.sweep(m, calib, wins, chars, levels=(0.0, 0.5))
    dn, db = res["dense"]
    rows = {(r["method"], r["level"]): r for r in res["rows"]}
    assert len(rows) == 6
    for method in gsp.METHODS:
        r0, r5 = rows[(method, 0.0)], rows[(method, 0.5)]
        assert r0["nats_per_char"] == dn  # level 0 is the dense forward
        assert r5["bytes_per_token"] < r0["bytes_per_token"] <= db
    assert rows[("cats", 0.0)]["bytes_per_token"] == res["exact"]
    # all-sparse: the tile format alone reads less than exact; TEAL's formats are it
    assert res["sparse"] < res["exact"] < db
    for method in gsp.METHODS:
        assert rows[(method, 0.0)]["bytes_sparse"] == res["sparse"]
        assert rows[(method, 0.5)]["bytes_sparse"] < res["sparse"]
    assert rows[("teal", 0.5)]["bytes_sparse"] == rows[("teal", 0.5)]["bytes_per_token"]
    # the dense loss is host.eval's on the same text
    from host import eval as heval

    ref, _ = heval.evaluate(GoldenModel(m, "integer"), wins)
    assert dn == pytest.approx(ref * sum(len(w[1]) for w in wins) / chars, rel=1e-12)
    out = hs.table(res)
    assert out.count("fewest bytes within 1%") + out.count("no setting") == 2


def test_cli_bad_arguments():
    for args, msg in (
        (["--levels", "0,100"], "--levels"),
        (["--levels", "a"], "--levels"),
        (["--methods", "teal,topk"], "--methods"),
        (["--windows", "0"], "--windows"),
        (["-m", "/nonexistent/model"], "-m/--model"),
    ):
        p = subprocess.run(
            [sys.executable, "-m", "host.sparsity", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert p.returncode == 2 and p.stderr.startswith("error: ") and msg in p.stderr, p.stderr
