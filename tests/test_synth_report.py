"""hw/synth.py's design report from synthesis results: the area budget per block, the fit
check against issue 18's targets and the clocks the timing evidence supports (the figures
themselves come from `make synth`; here the report's arithmetic and verdicts)."""

from __future__ import annotations

import pytest

from hw.synth import budget_group, budget_table, fit_check, print_report, variant_block
from hw.timing import rule_mhz

ZERO = dict(lut=0, lutram=0, ff=0, carry=0, bram36=0, uram=0, dsp=0)


def _depth(levels: float, modules: dict) -> dict:
    return dict(
        max_levels=levels, max_lut_levels=int(levels), longest_carry_bits=8, endpoints=10,
        over_limit=int(levels > 6), dsp=1, dsp_unregistered=0, limit=6.0, meets=levels <= 6,
        histogram={}, modules=modules, worst_path=[],
    )  # fmt: skip


def _results(top_lut: int, levels: float, fmax: float | None) -> dict:
    mods = {
        "top": dict(ZERO, lut=1000),
        "top.core": dict(ZERO, lut=2000, ff=100),
        "top.core.op_tlmm": dict(ZERO, lut=top_lut - 4000, bram36=112, dsp=4),
        "top.core.op_act": dict(ZERO, lut=1000, dsp=20),
    }
    per = dict(over_limit=0, dsp_unregistered=0)
    depth_mods = {
        "core.op_tlmm": dict(per, max_levels=levels),
        "core.op_act": dict(per, max_levels=4.0),
    }
    shell = dict(ZERO, lut=top_lut, ff=5000, bram36=112, dsp=24, modules=mods)
    shell["depth"] = _depth(levels, depth_mods)
    return {
        "shell_kv260": {"xcup": shell},
        "accel_ecp5": {"ecp5": dict(lut4=40_000, ff=20_000, dp16kd=50, mult18=20, fmax_mhz=fmax)},
    }


def test_budget_groups_follow_the_hierarchy():
    assert budget_group("top.core.op_act.gq") == "act"
    assert budget_group("top.core.dma_switch") == "command processor + CSRs + DMA switch"
    assert budget_group("top.axi_dma") == "AXI shell"
    rows = budget_table(_results(60_000, 5.0, 120.0)["shell_kv260"]["xcup"]["modules"])
    assert rows["tlmm"]["lut"] == 56_000 and rows["act"]["dsp"] == 20
    assert rows["AXI shell"]["lut"] == 1000


def test_fit_check_against_the_targets():
    dev = {"lut": 100, "bram36": 100, "uram": 10, "dsp": 100}
    fit = fit_check({"lut": 75, "bram36": 91, "uram": 0, "dsp": 80}, dev)
    assert fit["lut"][2] and fit["dsp"][2] and fit["uram"][2]
    assert not fit["bram36"][2]
    # LUT memories (the PV rings' SRL16E) count with the logic LUTs
    assert not fit_check({"lut": 70, "lutram": 6, "bram36": 0, "uram": 0, "dsp": 0}, dev)["lut"][2]


def test_report_prints_the_verdicts_and_clocks(capsys):
    print_report(_results(60_000, 8.0, 87.5), "kv260", "ecp5")
    out = capsys.readouterr().out
    assert "LUT 60,000 of 117,120" in out and "ok" in out
    assert f"supports {rule_mhz(8.0):.0f} MHz for the kv260 point" in out
    assert "core top routed Fmax: 87.5 MHz (target 100 MHz: not met)" in out
    print_report(_results(100_000, 6.0, None), "kv260", "ecp5")
    out = capsys.readouterr().out
    assert "OVER" in out and "supports 250 MHz" in out and "P&R failed" in out


def test_engine_variant_blocks():
    """``engine_<op>@FIELD=VALUE``: the default point's engine with those fields changed
    (the multi-token TLMM's synthesis cost per P); a bad spec is refused."""

    assert variant_block("engine_tlmm@tlmm_tokens=4")().tokens == 4
    assert variant_block("engine_tlmm@tlmm_tokens=1,max_n=64")().max_n == 64
    # a named design point, then fields: kv260-p2's mirrored tables at P = 2
    e = variant_block("engine_tlmm@kv260-p2")()
    assert e.tokens == 2 and e.cfg.tlmm.table == "mirrored"
    assert variant_block("engine_tlmm@kv260-p2,tlmm_tokens=1")().tokens == 1
    with pytest.raises(ValueError, match="design point"):
        variant_block("engine_tlmm@no-such-point")
    for bad in ("engine_tlmm@tlmm_tokens", "engine_tlmm@tlmm_tokens=x", "tlmm@max_k=8"):
        with pytest.raises(ValueError, match="FIELD=INTEGER|only engine blocks|design point"):
            variant_block(bad)
    with pytest.raises(ValueError, match="tlmm_tokens"):
        variant_block("engine_tlmm@tlmm_tokens=3")
