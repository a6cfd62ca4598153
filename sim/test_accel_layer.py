"""The whole accelerator top runs one transformer layer (prefill and decode) with memory
stalls, bit-identical to the golden backend; engine errors and reuse after a reset
(cocotb on Verilator; bench: sim/accel_layer_bench.py)."""

from dataclasses import asdict

from golden.config import DEFAULT
from hw.accel import RTL_OPS, Accel
from hw.tlmm import DEFAULT_MAX_K
from sim.runner import run_bench


def test_accel_layer():
    params = {
        "stall": 0.3,
        "max_latency": 8,
        "hidden": 64,
        "ffn": 96,
        "heads": 4,
        "kv_heads": 2,
        "prefill": 5,
        "decode": 2,
    }
    results = run_bench(
        Accel(DEFAULT, max_k=DEFAULT_MAX_K),
        bench="sim.accel_layer_bench",
        name="accel",
        params=params,
        build_key={
            "cfg": asdict(DEFAULT),
            "max_k": DEFAULT_MAX_K,
            "ops": [op.name for op in RTL_OPS],
        },
    )
    assert {r["test"] for r in results} >= {"test_layer", "test_op_errors_and_reuse"}
    assert all(r["passed"] for r in results), results
