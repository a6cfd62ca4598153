"""Activation RTL == golden.activations, bit for bit (cocotb on Verilator; bench:
sim/activations_bench.py).

One Verilator build per parameter set: one GELU+SiLU unit (kind chosen per vector) at the
default formats and one at a second format (Q5.6 in, saturating Q4.5 out, a GELU table
with no interpolation bits), every representable input of both kinds each time; ReLU^2
int16 (every input), the gated product int8 x int8 (every pair) and int16 x int16 (corner
pairs + random). Each set also resets with beats in flight and checks the no-stall cycle
count.
"""

from dataclasses import asdict

import pytest

from golden.config import DEFAULT, ActivationConfig
from hw.activations import LutActivation, Relu2
from sim.runner import run_bench

# second format: 12-bit Q5.6 input, 10-bit Q4.5 output (saturates above 16), LF = 10;
# GELU with 256 segments of one input LSB (seg_shift 0), SiLU with 32 of 16 LSBs
ALT = ActivationConfig(
    in_bits=12, in_frac_bits=6, out_bits=10, out_frac_bits=5, lut_frac_bits=10,
    gelu_lut_bits=8, gelu_range_log2=2, silu_lut_bits=5, silu_range_log2=3,
)  # fmt: skip

PARAM_SETS = {
    "lut_default": {
        "unit": "lut",
        "cfg": asdict(DEFAULT.activation),
        "kinds": ["gelu", "silu"],
        "lanes": 16,
    },
    "lut_alt": {"unit": "lut", "cfg": asdict(ALT), "kinds": ["silu", "gelu"], "lanes": 3},
    "relu2_i16": {"unit": "relu2", "in_bits": 16, "up_bits": None, "lanes": 16},
    "relu2_gated_i8": {"unit": "relu2", "in_bits": 8, "up_bits": 8, "lanes": 16},
    "relu2_gated_i16": {"unit": "relu2", "in_bits": 16, "up_bits": 16, "lanes": 4, "random": 2000},
}
# the cocotb tests of the bench: exactly these must run (run_bench checks)
COCOTB_TESTS = ("test_sweep", "test_reset_mid_operation", "test_throughput")


def make_dut(p: dict):
    if p["unit"] == "lut":
        return LutActivation(ActivationConfig(**p["cfg"]), p["kinds"], lanes=p["lanes"])
    return Relu2(p["in_bits"], p["up_bits"], lanes=p["lanes"])


@pytest.mark.parametrize("key", list(PARAM_SETS))
def test_activations(key):
    p = PARAM_SETS[key]
    hw_key = {k: v for k, v in p.items() if k != "random"}
    run_bench(
        make_dut(p),
        bench="sim.activations_bench",
        name=f"act_{p['unit']}",
        params=p,
        build_key=hw_key,
        expect=COCOTB_TESTS,
    )
