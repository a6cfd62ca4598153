"""``python -m host.bench`` (part of ``make bench``) runs on every backend and names the
clock of its modeled figures (it once broke on an import that no test ran)."""

import re

from host.bench import main


def test_host_bench_runs_and_names_its_clock(capsys):
    assert main(["--prompt-tokens", "3", "--decode-tokens", "2"]) == 0
    out = capsys.readouterr().out
    rows = {name: line for name in ("golden forward", "golden device", "sim device")
            for line in out.splitlines() if line.startswith(name)}  # fmt: skip
    assert len(rows) == 3, out
    # the sim row has RTL cycles per token and a modeled tok/s from them
    cyc, tok_s = re.findall(r"\s(\d+)\s+(\d+)\s+\d+\s*$", rows["sim device"])[0]
    assert int(cyc) > 0 and abs(int(tok_s) - 250e6 / int(cyc)) <= 1
    assert "kv260 target" in out and "timing evidence supports" in out
