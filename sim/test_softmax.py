"""Softmax RTL == golden.softmax.softmax_fx, bit for bit (cocotb on Verilator; bench:
sim/softmax_bench.py).

One Verilator build per parameter set: the default formats with 4 rows side by side and
the 2048-element row buffer (one row of 2048 included), and a second format (12-bit Q7.4
logits, no interpolation bits, 24-bit sum, UQ0.8 output) with 3 lanes and a 40-element
buffer (rows that overflow it are cut). Each runs random row groups with random / causal /
lane-off masks and random stalls, directed corners, reset in every phase, and the
no-stall cycle count.
"""

from dataclasses import asdict

import pytest

from golden.config import DEFAULT, SoftmaxConfig
from hw.softmax import DEFAULT_MAX_LEN, Softmax
from sim.runner import run_bench

ALT = SoftmaxConfig(
    in_bits=12, in_frac_bits=4, log2e_frac_bits=14, exp_lut_bits=4, exp_interp_bits=0,
    exp_frac_bits=10, sum_bits=24, sum_frac_bits=12, recip_frac_bits=12, out_bits=8,
)  # fmt: skip

# (cfg, lanes, max_len, random row groups, longest random row)
PARAM_SETS = {
    "default": (DEFAULT.softmax, 4, DEFAULT_MAX_LEN, 10, 160),
    "alt_l3_len40": (ALT, 3, 40, 10, 40),
}
# the cocotb tests of the bench: exactly these must run (run_bench checks)
COCOTB_TESTS = (
    "test_random_rows",
    "test_corners",
    "test_row_cut",
    "test_reset_mid_operation",
    "test_throughput",
)


@pytest.mark.parametrize("key", list(PARAM_SETS))
def test_softmax(key):
    cfg, lanes, max_len, rows, max_n = PARAM_SETS[key]
    params = {"cfg": asdict(cfg), "lanes": lanes, "max_len": max_len, "rows": rows, "max_n": max_n}
    run_bench(
        Softmax(cfg, lanes=lanes, max_len=max_len),
        bench="sim.softmax_bench",
        name="softmax",
        params=params,
        build_key={"cfg": asdict(cfg), "lanes": lanes, "max_len": max_len},
        expect=COCOTB_TESTS,
    )
