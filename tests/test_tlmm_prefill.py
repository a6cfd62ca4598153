"""host/tlmm_prefill.py: a prompt's TLMM time by the engine's cycle formula per P."""

from golden.config import design_point
from host.perf_model import BITNET_073B, BITNET_2B4T
from host.tlmm_prefill import layer_cycles, main, prompt_ms
from hw.ops.tlmm import expected_cycles


def test_multi_token_gain():
    dp = design_point("kv260")
    ms = [prompt_ms(BITNET_073B, dp, 128, p, 64) for p in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(ms, ms[1:], strict=False))
    assert 3.5 < ms[0] / ms[2] < 4.0  # P = 4: weights once per 4 rows, Kc >= P
    # one row (decode): the same at every P
    assert len({layer_cycles(BITNET_073B, dp, 1, p) for p in (1, 4, 8)}) == 1
    # 2B-4T: the masked up_proj and the K-split down_proj (k 6912 > max_k) keep P = 1
    g = [prompt_ms(BITNET_2B4T, dp, 128, p, 64) for p in (1, 8)]
    assert 1.2 < g[0] / g[1] < ms[0] / ms[3]
    # a SiLU layer: the formula summed over its seven projections, or a little more where
    # a 70-byte beat per cycle (and the writes) exceed the DRAM's 68.4 B/cycle
    h, i = 1536, 4096
    want = sum(
        expected_cycles(64, k, n, dp.datapath, dp.dram_latency, tokens=4)
        for n, k in [(h, h)] * 4 + [(i, h), (i, h), (h, i)]
    )
    assert want <= layer_cycles(BITNET_073B, dp, 64, 4) < 1.1 * want


def test_cli_prints_the_table(capsys):
    assert main(["--prompts", "64", "--tokens", "1", "4"]) == 0
    out = capsys.readouterr().out
    assert "bitnet-0.73b" in out and "P=4" in out and "(3.86x)" in out
