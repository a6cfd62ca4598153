"""Accelerator top (hw/accel.py) == golden, whole commands through the DMA port and CSRs
(cocotb on Verilator; bench: sim/accel_bench.py): random TLMM commands with random
memory-side stalls and latency against golden.tlmm, END, the error codes with the index
of the failing command, the host-op handshake, and the one-beat-per-cycle throughput."""

from dataclasses import asdict

from golden.config import design_point
from golden.isa import Opcode
from hw.accel import Accel
from sim.runner import run_bench

DP = design_point("kv260")


def test_accel():
    params = {"stall": 0.4, "max_latency": 12, "ops": 4}
    # a top with the TLMM engine only: the other ops exercise the host-op handshake
    run_bench(
        Accel(DP, ops=(Opcode.TLMM,)),
        bench="sim.accel_bench",
        name="accel_tlmm",
        params=params,
        build_key={"dp": asdict(DP), "ops": ["TLMM"]},
        expect=("test_tlmm_ops", "test_errors", "test_host_ops", "test_throughput"),
    )
