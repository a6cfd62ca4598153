"""NL-ADC RTL twin == golden.nl_adc.ramp_counter_codes, bit for bit (cocotb on Verilator;
bench: sim/nl_adc_bench.py).

One Verilator build per parameter set; each programs ideal and sampled-device tables
(sigmoid / tanh / relu2) with random stalls on every stream, checks out-of-range writes,
resets in the middle of conversions and of table writes, and measures the no-stall cycle
count against the documented formula.
"""

from dataclasses import asdict

import pytest

from golden.config import DEFAULT, ADCConfig
from hw.nl_adc import NLADC
from sim.runner import run_bench

# (cfg, addr_bits, x beats per table): N = 4 / 6 / 8, one to many lanes, 12- to 20-bit
# thresholds, a write address wider than the table.
PARAM_SETS = {
    "default": (DEFAULT.adc, None, 16),
    "n4_l3_t12_a6": (ADCConfig(bits=4, lanes=3, threshold_bits=12, threshold_frac_bits=6), 6, 24),
    "n8_l2_t20": (ADCConfig(bits=8, lanes=2, threshold_bits=20, threshold_frac_bits=14), None, 6),
}
# the cocotb tests of the bench: exactly these must run (run_bench checks)
COCOTB_TESTS = (
    "test_ideal_tables",
    "test_device_tables",
    "test_write_errors",
    "test_reset_mid_operation",
    "test_backpressure",
    "test_writes_between_conversions",
    "test_throughput",
)


def run_nl_adc(cfg: ADCConfig, addr_bits, beats: int, *, testcase=None, stall=None, expect=None):
    params = {"cfg": asdict(cfg), "addr_bits": addr_bits or cfg.bits, "beats": beats}
    if stall:
        params["stall"] = stall
    hw_key = {
        "bits": cfg.bits,
        "lanes": cfg.lanes,
        "threshold_bits": cfg.threshold_bits,
        "addr_bits": addr_bits or cfg.bits,
    }
    return run_bench(
        NLADC(cfg, addr_bits=addr_bits),
        bench="sim.nl_adc_bench",
        name="nl_adc",
        params=params,
        testcase=testcase,
        build_key=hw_key,
        expect=expect,
    )


@pytest.mark.parametrize("key", list(PARAM_SETS))
def test_nl_adc(key):
    cfg, addr_bits, beats = PARAM_SETS[key]
    run_nl_adc(cfg, addr_bits, beats, expect=COCOTB_TESTS)
