"""The whole accelerator top runs one transformer layer (prefill and decode) with memory
stalls, bit-identical to the golden backend; engine errors and reuse after a reset
(cocotb on Verilator; bench: sim/accel_layer_bench.py)."""

from dataclasses import asdict

from golden.config import design_point
from hw.accel import RTL_OPS, Accel
from sim.runner import run_bench
from sim.top_bench import LAYER_PARAMS

DP = design_point("kv260")


def test_accel_layer():
    params = {"stall": 0.3, "max_latency": 8, **LAYER_PARAMS}
    run_bench(
        Accel(DP),
        bench="sim.accel_layer_bench",
        name="accel",
        params=params,
        build_key={"dp": asdict(DP), "ops": [op.name for op in RTL_OPS]},
        expect=("test_layer", "test_op_errors_and_reuse"),
    )
