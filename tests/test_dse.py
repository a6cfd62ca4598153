"""host/dse.py: a sweep on a local Ray equals its points run one by one; the store skips
what is done; crashed and "does not run" points are reported; the sweep format, the
Pareto frontier, the fit check and the plot.

The Ray sweep is cheap on purpose: three points that differ only in fields that change no
logic (DRAM bandwidth and latency, clock), so the one cached Verilator build of the kv260
top serves all three, small shapes, no synthesis."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from golden.config import DEVICES, design_point
from host import dse, perf_model
from host.perf_model import NON_RTL_FIELDS, rtl_design_point

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "vocab_size": 40,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
}
# decoding at 12 keys needs max_position_embeddings >= 12: this one crashes in its task
BROKEN = {**TINY, "name": "broken", "max_position_embeddings": 8}
# an FFN wider than the kv260 point's max_dim 8192 (NORM_QUANT / ACT rows): does not run
WIDE = {**TINY, "name": "wide", "intermediate_size": 9000}
POINTS = [{"dram_gbs": 8.5}, {"dram_gbs": 17.1, "dram_latency": 16}, {"clock_mhz": 200.0}]


def _sweep(models):
    return dse.Sweep(
        base="kv260",
        points=[dict(p) for p in POINTS],
        models=models,
        context=12,
        prompt=8,
        synth=[],
        seed=3,
    )


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory):
    store = tmp_path_factory.mktemp("dse_store")
    res = dse.run(_sweep([TINY, BROKEN, WIDE]), store=store, num_cpus=2)
    return store, res


def _rows(res, model):
    return [r for r in res["rows"] if r["model"] == model]


def test_ray_sweep_equals_points_run_one_by_one(ray_sweep):
    _, res = ray_sweep
    rows = _rows(res, "tiny")
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert not any(r["cached"] for r in rows)
    assert len({r["rtl_digest"] for r in rows}) == 1  # one build serves the three
    assert len({r["digest"] for r in rows}) == 3
    _, mc = dse.model_config(TINY)
    points, _ = dse.expand(_sweep([TINY]))
    for pt, row in zip(points, rows, strict=True):
        one = dse.measure_point(pt.dp, mc, context=12, prompt=8, seed=3)
        assert row["decode"]["cycles"] == one["decode"]["cycles"]
        assert row["decode"]["token_cycles"] == one["decode"]["token_cycles"]
        assert row["decode"]["tok_s"] == one["decode"]["tok_s"]
        assert row["prefill"]["cycles"] == one["prefill"]["cycles"]
        assert row["prefill"]["ttft_s"] == one["prefill"]["ttft_s"]
    # the DRAM and the clock are the points' own
    slow, fast_short, clk = rows
    assert slow["decode"]["token_cycles"] > clk["decode"]["token_cycles"]  # 8.5 vs 17.1 GB/s
    assert fast_short["decode"]["token_cycles"] < clk["decode"]["token_cycles"]  # 16 cycles
    assert clk["decode"]["tok_s"] == pytest.approx(200e6 / clk["decode"]["token_cycles"])


def test_crashed_and_not_running_points_are_reported(ray_sweep):
    _, res = ray_sweep
    broken = _rows(res, "broken")
    assert [r["status"] for r in broken] == ["crashed"] * 3
    assert all("context" in r["error"] for r in broken)
    big = _rows(res, "wide")
    assert [r["status"] for r in big] == ["does not run"] * 3
    assert any("9000 > max_dim 8192" in why for why in big[0]["reasons"])
    text = "\n".join(dse.table(res["rows"]))
    assert "CRASHED" in text and "does not run: intermediate_size" in text


def test_store_skips_points_already_done(ray_sweep, monkeypatch):
    store, first = ray_sweep
    calls = []

    def measure(dp, mc, *a, **kw):
        calls.append(mc.max_position_embeddings)
        raise RuntimeError("measured again")

    monkeypatch.setattr(dse, "measure_point", measure)
    res = dse.run(_sweep([TINY, BROKEN]), store=store, serial=True)
    rows = _rows(res, "tiny")
    assert all(r["status"] == "ok" and r["cached"] for r in rows)
    assert [r["decode"] for r in rows] == [r["decode"] for r in _rows(first, "tiny")]
    assert calls == [8, 8, 8]  # only the crashed points run again
    # one record per measured point, under the store's code version, keyed by the digest
    recs = sorted(Path(res["store"]).glob("perf-*/*.json"))
    assert len(recs) == 3
    digests = {r["digest"] for r in rows}
    assert {p.name.split("_")[0] for p in recs} == digests
    rec = json.loads(recs[0].read_text())
    assert rec["model"]["hidden_size"] == 64 and rec["context"] == 12 and rec["prompt"] == 8


def test_non_rtl_fields_change_no_engine():
    """Points that differ only in NON_RTL_FIELDS share a build: no engine, nor the top,
    reads them (the ID register hashes them; the Verilog is otherwise the same)."""
    from hw.accel import ENGINES, engine_class

    for name in ("kv260", "ecp5"):
        dp = design_point(name)
        other = replace(
            dp, name="x", dram_gbs=1.5, dram_latency=3, clock_mhz=77.0, evidence_mhz=70.0
        )
        assert rtl_design_point(other) == rtl_design_point(dp)
        assert rtl_design_point(dp).datapath == dp.datapath
        for op in ENGINES:
            cls = engine_class(op)
            assert cls.design_params(other) == cls.design_params(dp), op.name
    fields = "|".join(f for f in NON_RTL_FIELDS if f != "name")
    pattern = re.compile(rf"\.({fields})\b")
    for p in sorted((ROOT / "hw").rglob("*.py")):
        # the synthesis/timing reports and the Vivado project (its clock constraint) are
        # about the RTL, not part of it
        if p.name in ("synth.py", "timing.py", "vivado.py"):
            continue
        hits = [ln for ln in p.read_text().splitlines() if pattern.search(ln)]
        assert not hits, f"{p.relative_to(ROOT)} reads a non-RTL field: {hits}"


# --------------------------------------------------------------------------- no Ray
def test_sweep_files_parse():
    for f in sorted((ROOT / "sweeps").glob("*.toml")):
        sw = dse.Sweep.from_toml(f)
        points, invalid = dse.expand(sw)
        assert points and not invalid, f
        for m in sw.models:
            dse.model_config(m)
    sw = dse.Sweep.from_toml(ROOT / "sweeps" / "default.toml")
    assert "bitnet-2b-4t" in sw.models and "bitnet-0.73b" in sw.models


def test_expand_grid_aliases_and_invalid_values(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('base = "kv260"\n[grid]\nT = [14, 28]\nG = [3, 5]\nclock_mhz = [200.0]\n')
    points, invalid = dse.expand(dse.Sweep.from_toml(f))
    assert [p.label for p in points] == [
        "kv260 T=14 G=3 clock_mhz=200",
        "kv260 T=28 G=3 clock_mhz=200",
    ]
    assert points[0].dp.datapath.tlmm.tables == 14 and points[0].dp.clock_mhz == 200.0
    assert points[0].dp.evidence_mhz is None  # a new clock has no timing evidence
    assert len(invalid) == 2 and all("group" in b["error"] for b in invalid)
    with pytest.raises(ValueError, match="not a design-point field"):
        dse.set_field(design_point("kv260"), "bogus", 1)
    with pytest.raises(ValueError, match="no field"):
        dse.set_field(design_point("kv260"), "tlmm.bogus", 1)
    f.write_text("colour = 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        dse.Sweep.from_toml(f)


def test_limits_exceeded():
    kv, ecp5 = design_point("kv260"), design_point("ecp5")
    assert perf_model.limits_exceeded(perf_model.BITNET_073B, kv, 2048) == []
    # 2B-4T runs on kv260: its down_proj's k = 6912 is split (host.runtime), its FFN rows
    # fit max_dim 8192, its up_proj max_n 8192 and its context max_keys 4096
    assert perf_model.limits_exceeded(perf_model.BITNET_2B4T, kv, 4096) == []
    why = perf_model.limits_exceeded(perf_model.BITNET_2B4T, ecp5, 128)
    assert any("2560 > max_k 2048" in w for w in why)  # the LM head is not split
    assert any("6912 > max_dim 2048" in w for w in why)
    why = perf_model.limits_exceeded(replace(perf_model.BITNET_2B4T, intermediate_size=9000), kv)
    assert any("up_proj) 9000 > max_n 8192" in w for w in why)  # ReLU^2: up is masked
    why = perf_model.limits_exceeded(perf_model.BITNET_073B, ecp5, 1024)
    assert any("head_dim 96" in w for w in why) and any("1024 keys" in w for w in why)
    with pytest.raises(perf_model.DoesNotRun, match="does not run on design point ecp5"):
        perf_model.measure(perf_model.BITNET_2B4T, context=16, dp=ecp5)


def _row(label, model, tok_s, lut, bram, status="ok"):
    figs = {"lut": lut * DEVICES["xck26"]["lut"], "bram36": bram * 144, "ff": 0, "dsp": 0}
    return {
        "label": label,
        "model": model,
        "status": status,
        "clock_mhz": 250.0,
        "decode": {"tok_s": tok_s, "roofline_tok_s": 2 * tok_s},
        "synth": {"xck26": {**figs, **dse.fit("xck26", figs)}},
    }


def test_pareto_table_and_plot(tmp_path):
    rows = [
        _row("kv260 a", "m", 10.0, 0.2, 0.9),
        _row("kv260 b", "m", 20.0, 0.4, 0.5),
        _row("kv260 c", "m", 15.0, 0.5, 0.4),  # beaten on LUT by b, not on BRAM
        _row("kv260 d", "m", 30.0, 1.2, 0.6),  # does not fit
        _row("kv260 e", "m", 0.0, 0.1, 0.1, status="crashed"),
    ]
    rows[-1]["error"] = "boom"
    lut = [r["label"] for r in dse.pareto(rows, "LUT")["m"]]
    assert lut == ["kv260 a", "kv260 b", "kv260 d"]
    bram = [r["label"] for r in dse.pareto(rows, "BRAM")["m"]]
    assert bram == ["kv260 c", "kv260 b", "kv260 d"]
    assert not rows[3]["synth"]["xck26"]["fits"] and rows[1]["synth"]["xck26"]["fits"]
    text = "\n".join(dse.table(rows))
    assert "NO (xck26)" in text and "yes (xck26)" in text and "120%" in text
    png = dse.plot(rows, tmp_path / "p.png", "test")
    assert png.stat().st_size > 10_000


def test_cli_dry_run_and_bad_input(capsys):
    assert (
        dse.main(["--sweep", "", "--set", "T=14,28", "--model", "bitnet-0.73b", "--dry-run"]) == 0
    )
    out = capsys.readouterr().out
    assert "2 design points x 1 models" in out and "kv260 T=14" in out
    assert dse.main(["--sweep", "", "--model", "nope", "--dry-run"]) == 2
    assert "not one of" in capsys.readouterr().err
