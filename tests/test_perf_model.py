"""host/perf_model.py: the modeled decode speed is computed from simulated cycles of
every command of one layer (nothing left to the host), and the roofline counts the bytes
it claims."""

import pytest
from model_util import shape

from golden import isa
from golden.config import design_point
from golden.isa import Opcode
from golden.modelspec import ModelConfig
from host import perf_model

SMALL = ModelConfig(vocab_size=40, max_position_embeddings=32, **shape(64, 96, 3, 4, 2))


def test_roofline_counts_weights_head_and_kv():
    r = perf_model.roofline_bytes(perf_model.BITNET_073B, context=100)
    mc = perf_model.BITNET_073B
    assert r["LM head (int8)"] == 32002 * 1536
    per_layer = (
        4 * isa.tlmm_weight_bytes(1536, 1536)
        + 2 * isa.tlmm_weight_bytes(4096, 1536)
        + isa.tlmm_weight_bytes(1536, 4096)
    )
    assert r["ternary weights (TLMM tiles)"] == 24 * per_layer
    assert r["KV cache reads (codes + scales)"] == 24 * 2 * 16 * 100 * (96 + 4)
    # the INT4 KV cache: 48 bytes of codes + the 4-byte record per key, head, K or V
    r4 = perf_model.roofline_bytes(mc, 100, design_point("kv260-kv4").datapath)
    assert r4["KV cache reads (codes + scales)"] == 24 * 2 * 16 * 100 * (48 + 4)
    assert {k: v for k, v in r4.items() if "KV" not in k} == {
        k: v for k, v in r.items() if "KV" not in k
    }
    # 5 bits per 3 weights (plus beat padding): between 1.58 and 2 bits per weight
    weights = 24 * (4 * 1536 * 1536 + 3 * 1536 * 4096)
    assert 1.58 < 8 * r["ternary weights (TLMM tiles)"] / weights < 2.0
    assert mc.num_hidden_layers == 24


def test_measure_small_model_on_sim():
    lines = []
    dp = design_point("kv260").with_(dram_latency=8)
    r = perf_model.measure(SMALL, context=12, dp=dp, progress=lines.append)
    ops = [row["op"] for row in r["rows"]]
    assert ops[0] == "EMBED" and ops[-2:] == ["NORM_QUANT", "LM_HEAD"]
    # every op of a dense decode step (no K-split: no ADD; not sparse: no TLMM_SPARSE)
    assert set(ops) == {op.name for op in Opcode} - {"NOP", "END", "ADD", "TLMM_SPARSE"}
    assert r["host_ops"] == {}  # every command ran on the RTL
    assert all(row["cycles"] > 0 for row in r["rows"])
    alone = sum(row["cycles"] for row in r["rows"][1:-2])
    assert r["layer_alone_cycles"] == alone
    # as one stream the layer saves the fetch latencies the prefetcher hides
    assert 0.5 * alone < r["cycles"]["layer"] < alone
    assert r["token_cycles"] == (
        r["cycles"]["embed"]
        + SMALL.num_hidden_layers * r["cycles"]["layer"]
        + r["cycles"]["final norm + LM head"]
    )
    assert r["tok_s"] == pytest.approx(dp.clock_mhz * 1e6 / r["token_cycles"])
    assert r["latency"] == 8 and r["bandwidth_bps"] == dp.dram_gbs * 1e9
    out = []
    perf_model.report(r, out=out.append)
    text = "\n".join(out)
    assert "modeled decode" in text and "roofline" in text
    assert f"design point kv260 at {dp.clock_note()}" in text


def test_bad_context():
    with pytest.raises(ValueError, match="context"):
        perf_model.measure(SMALL, context=0)


def test_measure_prefill_small_model_on_sim():
    dp = design_point("kv260").with_(dram_latency=8)
    r = perf_model.measure_prefill(SMALL, prompt=8, dp=dp, progress=lambda *_: None)
    c = r["cycles"]
    assert all(v > 0 for v in c.values())
    assert r["ttft_cycles"] == (
        c["embed"] + SMALL.num_hidden_layers * c["layer"] + c["final norm + LM head"]
    )
    assert r["ttft_s"] == pytest.approx(r["ttft_cycles"] / 250e6)
    assert r["prefill_tok_s"] == pytest.approx(8 / r["ttft_s"])
    # a one-token prompt is the decode step at position 0: the same streams, the same cycles
    one = perf_model.measure_prefill(SMALL, prompt=1, dp=dp, progress=lambda *_: None)
    dec = perf_model.measure(SMALL, context=1, dp=dp, progress=lambda *_: None)
    assert one["ttft_cycles"] == dec["token_cycles"]
    # eight tokens in one chunk take longer than one, and less than eight decode steps
    assert one["ttft_cycles"] < r["ttft_cycles"] < 8 * one["ttft_cycles"]


def test_lm_head_beyond_the_simulated_vocab_is_extrapolated(monkeypatch):
    """A vocab larger than ``SIM_VOCAB`` is simulated in part and the LM head's remaining
    rows added at the simulated cycles per row: the same token cycles, within 1 %, as
    simulating the whole head."""
    dp = design_point("kv260").with_(dram_latency=8)
    quiet = lambda *_: None  # noqa: E731
    whole = perf_model.measure(SMALL, context=4, dp=dp, progress=quiet)
    assert whole["lm_head"]["extra_cycles"] == 0
    monkeypatch.setattr(perf_model, "SIM_VOCAB", 16)
    part = perf_model.measure(SMALL, context=4, dp=dp, progress=quiet)
    h = part["lm_head"]
    assert h["simulated_n"] == 16 and h["extra_cycles"] > 0 and h["extra_bytes"] > 0
    # the layer is the same; only the head differs, by less than 1 %
    assert part["cycles"]["layer"] == whole["cycles"]["layer"]
    head_w, head_p = (r["cycles"]["final norm + LM head"] for r in (whole, part))
    assert abs(head_p - head_w) <= 0.01 * head_w
    assert part["rows"][-1]["bytes_read"] == whole["rows"][-1]["bytes_read"]
    out = []
    perf_model.report(part, out=out.append)
    assert any("16 of 40 rows simulated" in line for line in out)
    pre = perf_model.measure_prefill(SMALL, prompt=4, dp=dp, progress=quiet)
    assert pre["lm_head"]["simulated_n"] == 16 and pre["lm_head"]["extra_cycles"] > 0


def test_main_models_points_and_plot(tmp_path, monkeypatch, capsys):
    """The command line: every model x design point x clock is measured, a summary and the
    figure are written, contexts beyond a model's are skipped and said so."""
    monkeypatch.setattr(perf_model, "MODELS", {"small": SMALL})
    plot = tmp_path / "perf.png"
    argv = ["--model", "small", "--context", "4", "64", "--prompt", "3", "--latency", "8"]
    argv += ["--jobs", "2"]  # in worker processes: the same reports, in order
    assert perf_model.main(argv + ["--no-sparsity", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "small: decode at 64 keys on kv260 > its context 32: skipped" in out
    assert "small shapes, decode at context 4" in out and "prefill of 3 tokens" in out
    # kv260 has timing evidence: its target and its evidence clock are both modeled
    ev = design_point("kv260").evidence_mhz
    assert "kv260@evidence" in out and "TeLLMe v2 (KV260" in out and f"{ev:>6.1f}" in out
    assert plot.stat().st_size > 10_000
    assert "4 measurements, 2 at a time" in out  # decode and prefill, at two clocks
    assert out.index("context 4, design point kv260 ") < out.index("design point kv260@evidence")
    assert perf_model.main(["--model", "small", "--prompt", "0"]) == 2


def test_fill_kv_writes_the_datapath_format():
    """The KV cache a decode measurement starts from is in the device's format: packed
    int4 rows (codes within +-7) on kv260-kv4, int8 rows on kv260."""
    import numpy as np

    from golden.model import random_model
    from host.backends.golden import GoldenDevice
    from host.runtime import Runtime

    m = random_model(SMALL, seed=3)
    for name in ("kv260", "kv260-kv4"):
        fwd = design_point(name).datapath.forward
        rt = Runtime(m, GoldenDevice(design_point(name).datapath, mem_size=8 << 20))
        perf_model._fill_kv(rt, 5, np.random.default_rng(0))
        nkv, hd = SMALL.num_key_value_heads, SMALL.head_dim
        region = rt.address_map["kv0.k"]
        rows = rt.device.read(region.addr, region.nbytes)
        codes = isa.unpack_kv(
            np.frombuffer(rows, np.int8).reshape(nkv, -1, hd * fwd.kv_bits // 8), fwd.kv_bits
        )
        assert np.abs(codes[:, :5]).max() == fwd.kv_max and not codes[:, 5:].any()


def test_save_and_load_results(tmp_path, monkeypatch, capsys):
    """--save writes a run's results; --load shows them with a run that measures nothing."""
    monkeypatch.setattr(perf_model, "MODELS", {"small": SMALL})
    saved = tmp_path / "r.pkl"
    argv = ["--model", "small", "--context", "4", "--prompt", "--clocks", "target"]
    assert perf_model.main(argv + ["--no-sparsity", "--plot", "", "--save", str(saved)]) == 0
    capsys.readouterr()
    argv = ["--model", "small", "--context", "--prompt", "--no-sparsity", "--plot", ""]
    assert perf_model.main(argv + ["--load", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "decode @4" in out and "measurements" not in out
