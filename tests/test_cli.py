"""host/cli.py (`python -m host`): streaming happy path as a subprocess, determinism, the
sliding context window, and one-line `error: ...` exits (status 2) for every bad value."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_util import VOCAB_TEXT, char_model_fixture, shape

from golden.config import design_point
from host import cli
from host.generate import Sampler

ROOT = Path(__file__).resolve().parents[1]
CTX = 32


tiny_model = char_model_fixture(CTX, seed=5, tag="tiny", name="model")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "host", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_happy_path_streams_and_summarizes(tiny_model):
    r = run_cli(
        "-m",
        str(tiny_model),
        "-p",
        "ROMEO:",
        "-n",
        "12",
        "-s",
        "3",
        "--temp",
        "0.9",
        "--backend",
        "golden",
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.startswith("ROMEO:")
    assert len(r.stdout) == len("ROMEO:") + 12 + 1  # one character per token + "\n"
    assert all(ch in VOCAB_TEXT for ch in r.stdout)
    summary = r.stderr.strip().splitlines()[-1]
    for key in (
        "prompt tokens: 6",
        "generated tokens: 12",
        "time to first token",
        "tokens/s",
        "mode integer",
        "seed 3",
    ):
        assert key in summary, summary


def test_same_seed_same_text_and_modes(tiny_model, capsys):
    def once(*extra):
        assert (
            cli.main(
                ["-m", str(tiny_model), "-p", "To be", "-n", "20", "--backend", "golden", *extra]
            )
            == 0
        )
        return capsys.readouterr().out

    a = once("-s", "11")
    b = once("-s", "11")
    assert a == b
    others = {once("-s", str(s)) for s in (12, 13, 14)}
    assert len(others | {a}) > 1  # the seed matters when sampling
    assert once("--temp", "0", "-s", "1") == once("--temp", "0", "-s", "2")  # greedy
    ref = once("--mode", "reference", "--temp", "0")  # reference: golden models, no device
    assert ref.startswith("To be") and len(ref.rstrip("\n")) >= len("To be") + 1


def test_sim_backend_streams_the_same_tokens_as_golden(tiny_model, capsys):
    """The command stream on the Verilator-compiled accelerator gives the same text as on
    the golden device (and hence as the golden integer forward, tests/test_device_sim.py)."""

    def once(*backend):
        assert (
            cli.main(["-m", str(tiny_model), "-p", "To be", "-n", "16", "-s", "7", *backend]) == 0
        )
        return capsys.readouterr()

    gold, sim = once("--backend", "golden"), once()  # sim is the default
    assert sim.out == gold.out
    assert "backend sim" in sim.err
    cyc = [ln for ln in sim.err.splitlines() if ln.startswith("accelerator:")]
    dp = design_point("kv260")
    assert (
        cyc
        and "cycles per decoded token" in cyc[0]
        and f"tokens/s at {dp.clock_note()}, {dp.dram_gbs:g} GB/s, DRAM latency "
        f"{dp.dram_latency} cycles"
        in cyc[0]
    ), sim.err
    assert not any(ln.startswith("accelerator:") for ln in gold.err.splitlines())


def test_design_point_sets_the_sim_dram_model(tiny_model, capsys):
    """--clock-mhz / --bandwidth-gbs reach the sim backend's DRAM model as bandwidth / clock
    bytes per cycle (host.runtime.backend_kwargs, which ``python -m host serve`` uses too):
    the same bytes per cycle, the same cycles; fewer, more cycles."""

    def cycles(clock, bandwidth):
        assert (
            cli.main(
                [
                    "-m",
                    str(tiny_model),
                    "-p",
                    "To be",
                    "-n",
                    "4",
                    "-s",
                    "1",
                    "--clock-mhz",
                    clock,
                    "--bandwidth-gbs",
                    bandwidth,
                ]
            )
            == 0
        )
        acc = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("accelerator:")]
        assert len(acc) == 1 and f"at {clock} MHz (kv260 target" in acc[0], acc
        assert f", {bandwidth} GB/s, DRAM latency" in acc[0], acc
        return int(acc[0].split()[1])

    c = cycles("200", "16")  # 80 bytes per cycle
    assert cycles("100", "8") == c  # 80 bytes per cycle
    assert cycles("100", "1") > c  # 10 bytes per cycle


def test_generation_slides_past_the_context(tiny_model, capsys):
    n = 2 * CTX + 5
    assert (
        cli.main(
            ["-m", str(tiny_model), "-p", "ab", "-n", str(n), "-s", "2", "--backend", "golden"]
        )
        == 0
    )
    cap = capsys.readouterr()
    assert len(cap.out) == len("ab") + n + 1  # every token one character, then "\n"
    assert f"generated tokens: {n}" in cap.err
    assert "window slides" in cap.err


def test_sampler_top_k_top_p_restrict_support():
    logits = np.array([3.0, 2.5, 1.0, 0.0, -1.0])
    p = Sampler(temp=1.0, top_k=2).probs(logits)
    assert np.count_nonzero(p) == 2 and p[0] > p[1] > 0
    full = Sampler(temp=1.0).probs(logits)
    p = Sampler(temp=1.0, top_p=0.5).probs(logits)
    assert np.count_nonzero(p) == 1 and full[0] >= 0.5  # the top token alone covers 0.5
    p = Sampler(temp=1.0, top_p=full[0] + 1e-9).probs(logits)
    assert np.count_nonzero(p) == 2
    assert Sampler(temp=0.0)(logits) == 0
    draws = [Sampler(temp=1.0, seed=s)(logits) for s in range(200)]
    assert set(draws) == set(range(5))  # no restriction: all reachable
    for bad in (dict(temp=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.01)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Sampler(**bad)


def malformed_models(tmp: Path, good: Path) -> dict:
    cases = {}
    d = tmp / "bad_json"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    (d / "tokenizer.json").write_text((good / "tokenizer.json").read_text())
    cases["bad_json"] = d
    d = tmp / "no_tokenizer"
    d.mkdir()
    (d / "config.json").write_text((good / "config.json").read_text())
    cases["no_tokenizer"] = d
    d = tmp / "truncated"
    d.mkdir()
    for f in ("config.json", "tokenizer.json"):
        (d / f).write_text((good / f).read_text())
    (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:200])
    cases["truncated"] = d
    d = tmp / "wrong_type"
    d.mkdir()
    conf = json.loads((good / "config.json").read_text())
    conf["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(conf))
    (d / "tokenizer.json").write_text((good / "tokenizer.json").read_text())
    cases["wrong_type"] = d
    return cases


BAD_ARGS = {
    "unknown backend": ["--backend", "board"],
    "unknown mode": ["--mode", "float"],
    "reference on the accelerator": ["--mode", "reference", "--backend", "sim"],
    "negative n": ["-n", "-3"],
    "non-integer n": ["-n", "many"],
    "negative temp": ["--temp", "-0.5"],
    "nan temp": ["--temp", "nan"],
    "top-p zero": ["--top-p", "0"],
    "top-p above one": ["--top-p", "1.5"],
    "negative top-k": ["--top-k", "-1"],
    "empty prompt": ["-p", ""],
    "prompt too long": ["-p", "a" * (CTX + 1)],
    "char outside vocabulary": ["-p", "caf\u00e9"],
    "missing model": ["-m", "/nonexistent/model/dir"],
    "unknown flag": ["--frobnicate"],
    "zero clock": ["--clock-mhz", "0"],
    "negative bandwidth": ["--bandwidth-gbs", "-1"],
    "adc zero bits": ["--act-adc", "0"],
    "adc beyond the table": ["--act-adc", "9"],
    "adc option without adc": ["--act-adc-device", "rram"],
    "adc seed of the ideal device": ["--act-adc", "4", "--act-adc-seed", "3"],
    "adc in reference mode": ["--mode", "reference", "--act-adc", "4"],
    "adc unknown variant": ["--act-adc", "4", "--act-adc-variant", "log"],
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_values_exit_2_with_one_line(tiny_model, case):
    args = BAD_ARGS[case]
    if "-m" not in args:
        args = ["-m", str(tiny_model), *args]
    r = run_cli(*args)
    assert r.returncode == 2, (case, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("case", ["bad_json", "no_tokenizer", "truncated", "wrong_type"])
def test_malformed_model_exit_2_with_one_line(tiny_model, tmp_path, case):
    d = malformed_models(tmp_path, tiny_model)[case]
    r = run_cli("-m", str(d), "-n", "2")
    assert r.returncode == 2, (case, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: -m/--model"), r.stderr
    assert "Traceback" not in r.stderr


def test_one_design_point_drives_cli_sim_and_perf_model(tiny_model, capsys, monkeypatch):
    """A value changed in the design point changes the CLI's modeled figures, the sim
    backend's DRAM model and the perf model alike: they all read golden.config's point."""
    import golden.config as gc
    from host import perf_model

    dp = gc.design_point("kv260").with_(dram_latency=7, dram_gbs=8.0)
    monkeypatch.setitem(gc.DESIGN_POINTS, "kv260", dp)
    assert cli.main(["-m", str(tiny_model), "-p", "To be", "-n", "3", "-s", "1"]) == 0
    acc = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("accelerator:")]
    assert len(acc) == 1 and "8 GB/s, DRAM latency 7 cycles" in acc[0], acc
    small = perf_model.BITNET_073B.__class__(
        vocab_size=40, max_position_embeddings=8, **shape(64, 96, 1, 4, 2, hidden_act="relu2")
    )
    r = perf_model.measure(small, context=4, progress=lambda *_: None)
    assert r["latency"] == 7 and r["bandwidth_bps"] == 8e9 and r["design_point"] == "kv260"


def test_act_adc_streams_the_same_tokens_on_golden_and_sim(tiny_model, capsys):
    """--act-adc 6 (and a sampled, calibrated device with the linear variant): the command
    stream with the ACT engine's NL-ADC kind gives the same text on the Verilator-compiled
    accelerator as on the golden device; the summary names the ADC setting."""
    for extra in (
        ["--act-adc", "6"],
        ["--act-adc", "4", "--act-adc-variant", "linear", "--act-adc-device", "rram",
         "--act-adc-seed", "3", "--act-adc-calibrate"],
    ):  # fmt: skip

        def once(*backend, extra=extra):
            argv = ["-m", str(tiny_model), "-p", "To be", "-n", "6", "-s", "7", *extra]
            assert cli.main([*argv, *backend]) == 0
            return capsys.readouterr()

        gold, sim = once("--backend", "golden"), once()  # sim is the default
        assert sim.out == gold.out and len(sim.out) > len("To be")
        assert "backend sim" in sim.err
        for err in (gold.err, sim.err):
            adc = [ln for ln in err.splitlines() if ln.startswith("ACT activation:")]
            assert adc and f"{extra[1]} bit" in adc[0], err
            if "rram" in extra:
                assert "linear ADC + digital square" in adc[0] and "calibrated" in adc[0]
            else:
                assert "NL-ADC" in adc[0] and "ideal thresholds" in adc[0]
