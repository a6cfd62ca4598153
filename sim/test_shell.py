"""The AXI SoC shell (hw/shell.py) runs a whole transformer layer (prefill, then decode
over the KV cache it wrote) through AXI4-Lite and N AXI4 master ports with random pauses
on every channel, byte-identical to the golden backend; the AXI rules are checked; SLVERR
ends a stream with BUS_ERROR at the right command; the top is reusable after a soft
reset, also one that aborts a running stream (cocotb on Verilator with cocotbext-axi;
bench: sim/shell_bench.py)."""

from golden.config import design_point
from hw.shell import AccelShell
from sim.runner import run_bench
from sim.top_bench import LAYER_PARAMS


def test_shell():
    dp = design_point("kv260")
    shell = AccelShell(dp)
    params = {"ports": dp.axi_ports, "pause": 0.3, "max_latency": 8, **LAYER_PARAMS}
    params["ident"] = shell.ident
    tests = ("test_layer", "test_bus_errors_and_reuse", "test_reset_mid_stream", "test_id")
    kw = dict(params=params, build_key=shell.id_params(), expect=tests)
    run_bench(shell, bench="sim.shell_bench", name="shell", **kw)
