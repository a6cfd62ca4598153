"""TLMM RTL == golden.tlmm, bit for bit (cocotb on Verilator; bench: sim/tlmm_bench.py).

One Verilator build per parameter set; each runs random matmuls with random stalls on all
three streams, the numeric corners at the longest K the table memory holds, reset in the
middle of an operation, and a no-stall throughput measurement checked against the
documented cycle formula.
"""

from dataclasses import asdict

import pytest

from golden.config import DEFAULT, TLMMConfig
from hw.tlmm import TLMM
from sim.runner import run_bench

# (cfg, max_k, tree_levels_per_stage): G in {2,3,4}, small and large T/Q, full and mirrored
PARAM_SETS = {
    "default": (DEFAULT.tlmm, 4096, 2),
    "default_mirrored": (TLMMConfig(table="mirrored"), 1024, 2),
    "g2_t3_q2": (TLMMConfig(group=2, tables=3, replicas=2), 96, 1),
    "g2_t1_q1_mirrored": (TLMMConfig(group=2, tables=1, replicas=1, table="mirrored"), 24, 2),
    "g4_t2_q3_mirrored": (TLMMConfig(group=4, tables=2, replicas=3, table="mirrored"), 200, 2),
    "g4_t3_q1": (TLMMConfig(group=4, tables=3, replicas=1), 300, 3),
    "g3_t4_q8": (TLMMConfig(group=3, tables=4, replicas=8), 120, 2),
}
# the cocotb tests of the bench: exactly these must run (run_bench checks)
COCOTB_TESTS = ("test_random", "test_extremes", "test_reset_mid_operation", "test_throughput")


def run_tlmm(
    cfg: TLMMConfig,
    max_k: int,
    tree: int,
    *,
    testcase=None,
    perf=None,
    stall=None,
    random_ops: int = 10,
    expect=None,
):
    params = {
        "cfg": asdict(cfg),
        "max_k": max_k,
        "tree_levels_per_stage": tree,
        "random_ops": random_ops,
    }
    if perf:
        params["perf"] = perf
    if stall:
        params["stall"] = stall
    dut = TLMM(cfg, max_k=max_k, tree_levels_per_stage=tree)
    # the build directory hashes everything that changes the hardware, not the test knobs
    return run_bench(
        dut,
        bench="sim.tlmm_bench",
        name="tlmm",
        params=params,
        testcase=testcase,
        build_key={"cfg": asdict(cfg), "max_k": max_k, "tree": tree},
        expect=expect,
    )


@pytest.mark.parametrize("key", list(PARAM_SETS))
def test_tlmm(key):
    cfg, max_k, tree = PARAM_SETS[key]
    run_tlmm(cfg, max_k, tree, expect=COCOTB_TESTS)
