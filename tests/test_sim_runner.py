"""sim.runner.run_bench fails loudly when the simulator dies, whatever results it wrote
before, and when the cocotb tests that ran are not the expected ones.

The DUT is an 8-bit counter; this file is also the cocotb bench (``bench=__name__``: the
simulator imports it from the same ``sys.path``), its cocotb tests picked per case with
``testcase``. The first run builds the counter with Verilator (~20 s); later runs reuse it.
"""

import atexit
import os

import cocotb
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from sim.runner import run_bench
from sim.streams import Harness, bench_rng, record


class Counter(wiring.Component):
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        return m


def _run(testcase: str, **kw):
    return run_bench(
        Counter(),
        bench=__name__,
        name="runner_selftest",
        testcase=testcase,
        block="runner_selftest",
        **kw,
    )


# ------------------------------------------------------------------ the cocotb side
async def _count(dut) -> None:
    h = Harness(dut, bench_rng("count"))
    await h.reset()
    first = int(dut.count.value)
    await h.run_cycles(5)
    assert int(dut.count.value) == (first + 5) % 256


@cocotb.test()
async def counts(dut):
    """Passes: the counter counts."""
    await _count(dut)
    record("counts", vectors=5)


@cocotb.test()
async def exits_after_its_results(dut):
    """Passes, then the simulator exits with status 3 once cocotb has written its results
    (at interpreter exit, after the results file)."""
    await _count(dut)
    atexit.register(os._exit, 3)


@cocotb.test()
async def dies_mid_run(dut):
    """The simulator process dies in the middle of a test (after an earlier test passed)."""
    await _count(dut)
    os._exit(3)


# ------------------------------------------------------------------ the pytest side
def test_a_clean_run_passes():
    (rec,) = _run("counts", expect=["counts"])
    assert rec["vectors"] == 5  # what the bench recorded reaches the results


def test_a_simulator_that_exits_non_zero_after_writing_results_fails():
    with pytest.raises(
        AssertionError,
        match=r"the simulator died .* after 2 cocotb tests "
        r"wrote results",
    ):
        _run("counts,exits_after_its_results")


def test_a_simulator_that_dies_mid_run_fails():
    with pytest.raises(AssertionError, match=r"the simulator died .*\n.*no cocotb test ran"):
        _run("counts,dies_mid_run")


def test_expect_names_the_missing_and_unexpected_tests():
    with pytest.raises(AssertionError, match=r"missing \['gone'\], unexpected \[\]"):
        _run("counts", expect=["counts", "gone"])
