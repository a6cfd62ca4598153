"""Hardware absmax quantizer RTL == golden.quant.hw_act_quant, bit for bit
(bench: sim/quant_bench.py).

Random rows, every amax bit-length boundary, int32 extremes at the maximum row length,
random stalls on both streams, reset in the middle of fill / divide / drain, and a
no-stall cycle count checked against ``hw.quant.row_cycles``.
"""

from dataclasses import asdict

import pytest

from golden.config import DEFAULT, QuantConfig
from hw.quant import DEFAULT_LANES, ActQuant
from hw.tlmm import DEFAULT_MAX_K
from sim.runner import run_bench

# (cfg, lanes, max_len)
PARAM_SETS = {
    "default": (DEFAULT.quant, DEFAULT_LANES, DEFAULT_MAX_K),
    "lanes1_len37": (DEFAULT.quant, 1, 37),
    "lanes3_len50": (DEFAULT.quant, 3, 50),
    "act6_in20_f5": (QuantConfig(act_bits=6, hw_in_bits=20, recip_frac_bits=5), 2, 32),
}
# the cocotb tests of the bench: exactly these must run (run_bench checks)
COCOTB_TESTS = ("test_random", "test_extremes", "test_reset_mid_operation", "test_throughput")


@pytest.mark.parametrize("key", list(PARAM_SETS))
def test_quant(key):
    cfg, lanes, max_len = PARAM_SETS[key]
    hw_params = {"cfg": asdict(cfg), "lanes": lanes, "max_len": max_len}
    run_bench(
        ActQuant(cfg, lanes=lanes, max_len=max_len),
        bench="sim.quant_bench",
        name="quant",
        params=hw_params,
        expect=COCOTB_TESTS,
    )
