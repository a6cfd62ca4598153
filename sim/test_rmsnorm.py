"""RMSNorm+quant RTL == golden.rmsnorm.rmsnorm_quant, bit for bit (cocotb on Verilator;
bench: sim/rmsnorm_bench.py).

One Verilator build per parameter set: the default formats (Q15.16 x, Q3.12 gamma, one
Newton step, int32 quantizer input) with 8 lanes whose statistics pass takes 4 a cycle
(the kv260 engine's widths) and rows up to 256, the default formats at 4 lanes in both
passes, and a second format (24-bit x, 12-bit gamma, 4-bit seed LUT, two Newton steps,
12-bit scale mantissa, 24-bit quantizer input with F = 6) with 3 lanes and rows up to 30.
Each streams every row twice (the block's two passes) and runs random row batches with
random stalls, directed corners (extreme products, S' = 0, gamma = 0, d = 1, the longest
row), reset in every phase and the no-stall cycle count.
"""

from dataclasses import asdict

import pytest

from golden.config import DEFAULT, NormConfig, QuantConfig
from hw.rmsnorm import RMSNormQuant
from sim.runner import run_bench

ALT = (
    NormConfig(
        in_bits=24,
        in_frac_bits=10,
        gamma_bits=12,
        gamma_frac_bits=8,
        rsqrt_lut_bits=4,
        rsqrt_frac_bits=12,
        newton_steps=2,
        scale_mant_bits=12,
        eps=1e-5,
    ),
    QuantConfig(hw_in_bits=24, recip_frac_bits=6),
)

# (cfg, qcfg, lanes, stat_lanes, max_len, random batches, longest random row)
PARAM_SETS = {
    "default_l8_s4": (DEFAULT.norm, DEFAULT.quant, 8, 4, 256, 5, 256),
    "default_l4": (DEFAULT.norm, DEFAULT.quant, 4, 4, 256, 4, 256),
    "alt_l3_len30": (ALT[0], ALT[1], 3, 1, 30, 6, 30),
}
# the cocotb tests of the bench: exactly these must run (run_bench checks)
COCOTB_TESTS = ("test_random_rows", "test_corners", "test_reset_mid_operation", "test_throughput")


@pytest.mark.parametrize("key", list(PARAM_SETS))
def test_rmsnorm(key):
    cfg, qcfg, lanes, stat_lanes, max_len, batches, max_d = PARAM_SETS[key]
    hw = {
        "cfg": asdict(cfg),
        "qcfg": asdict(qcfg),
        "lanes": lanes,
        "stat_lanes": stat_lanes,
        "max_len": max_len,
    }
    run_bench(
        RMSNormQuant(cfg, qcfg, lanes=lanes, stat_lanes=stat_lanes, max_len=max_len),
        bench="sim.rmsnorm_bench",
        name="rmsnorm",
        params={**hw, "batches": batches, "max_d": max_d},
        build_key=hw,
        expect=COCOTB_TESTS,
    )
