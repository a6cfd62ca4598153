"""Requantizer RTL == golden.requant.requantize, bit for bit (bench: sim/requant_bench.py).

Random acc/mult/shift over the full ranges (shift 0, around the product width, shift_max),
rounding ties, saturation both ways, realistic scales from ``quantize_multiplier``, random
stalls, reset with beats in flight, and one beat per cycle measured without stalls.
"""

from dataclasses import asdict

import pytest

from golden.config import DEFAULT, RequantConfig
from hw.requant import DEFAULT_LANES, Requant
from sim.runner import run_bench

# (cfg, lanes)
PARAM_SETS = {
    "default": (DEFAULT.requant, DEFAULT_LANES),
    "lanes1": (DEFAULT.requant, 1),
    "out16_mult12_in24": (RequantConfig(out_bits=16, mult_bits=12, in_bits=24, shift_max=40), 3),
}
# the cocotb tests of the bench: exactly these must run (run_bench checks)
COCOTB_TESTS = (
    "test_random",
    "test_extremes",
    "test_scales",
    "test_reset_mid_operation",
    "test_throughput",
)


@pytest.mark.parametrize("key", list(PARAM_SETS))
def test_requant(key):
    cfg, lanes = PARAM_SETS[key]
    run_bench(
        Requant(cfg, lanes=lanes),
        bench="sim.requant_bench",
        name="requant",
        params={"cfg": asdict(cfg), "lanes": lanes},
        expect=COCOTB_TESTS,
    )
