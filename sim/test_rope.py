"""RoPE RTL == golden.rope.rope_fx, bit for bit (cocotb on Verilator; bench: sim/rope_bench.py).

One Verilator build per parameter set: int8 heads of 16 in one beat with the default tables
(2048 positions, Q1.14; the golden int8 pair sweep at 0, 1, 2047 and random positions; head_dim
only sets the table's width, and 64 makes a 4x larger ROM that takes ~10 s more to export and
build), int16 heads of 12 in 3 beats with a second table format (Q1.10, theta 5e5, 100
positions: out-of-range positions are representable and flagged; 16-bit outputs saturate), and
int32 heads of 16 in 4 beats with the default format over 40 positions (32-bit outputs saturate
at the extremes). Each also resets in the middle of heads and checks the no-stall cycle count.
"""

from dataclasses import asdict

import pytest

from golden.config import DEFAULT, RopeConfig
from hw.rope import RoPE
from sim.runner import run_bench

ALT = RopeConfig(table_frac_bits=10, theta=500000.0, max_pos=100, out_bits_max=16)
# default table format, fewer positions: a small ROM builds fast
SHORT = RopeConfig(max_pos=40)

# (cfg, head_dim, in_bits, lanes, random positions)
PARAM_SETS = {
    "int8_hd16_l8": (DEFAULT.rope, 16, 8, 8, 8),
    "int16_hd12_l2_alt": (ALT, 12, 16, 2, 24),
    "int32_hd16_l2_short": (SHORT, 16, 32, 2, 24),
}
# the cocotb tests of the bench: exactly these must run (run_bench checks)
COCOTB_TESTS = ("test_sweep", "test_pos_error", "test_reset_mid_operation", "test_throughput")


@pytest.mark.parametrize("key", list(PARAM_SETS))
def test_rope(key):
    cfg, head_dim, in_bits, lanes, n_pos = PARAM_SETS[key]
    hw = {"cfg": asdict(cfg), "head_dim": head_dim, "in_bits": in_bits, "lanes": lanes}
    run_bench(
        RoPE(cfg, head_dim=head_dim, in_bits=in_bits, lanes=lanes),
        bench="sim.rope_bench",
        name="rope",
        params={**hw, "positions": n_pos},
        build_key=hw,
        expect=COCOTB_TESTS,
    )
