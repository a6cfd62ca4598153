"""The DMA bridge of the AXI shell (hw.axi.AxiDma): random core traffic at any alignment
on N AXI4 ports behind cocotbext-axi AxiRams with random pauses on all five channels and
read latency, the AXI rules checked; read-after-write across ports, SLVERR on reads and
writes, read throughput (cocotb on Verilator; bench: sim/axi_dma_bench.py)."""

from hw.axi import AxiDma
from sim.runner import run_bench


def _run_dma(name: str, params: dict, **kw) -> list[dict]:
    """The bench on a 128-byte core port over ``params["ports"]`` AXI ports."""
    dma = AxiDma(128, n_ports=params["ports"])
    build_key = {"dma_bytes": 128, **dma.params()}
    return run_bench(
        dma, bench="sim.axi_dma_bench", name=name, params=params, build_key=build_key, **kw
    )


def test_axi_dma():
    params = {"ports": 3, "stall": 0.3, "pause": 0.3, "max_latency": 6, "ops": 400}
    tests = ("test_random_traffic", "test_raw_across_ports", "test_slverr", "test_decerr")
    _run_dma("axi_dma", params, expect=(*tests, "test_read_throughput"))


def test_axi_dma_kv260_read_throughput():
    """The KV260 point's 5 ports, no stalls: the read bandwidth the design point needs."""
    params = {"ports": 5, "stall": 0.0, "pause": 0.0, "max_latency": 0, "ops": 0}
    params["min_bytes_per_cycle"] = 68.4
    test = "test_read_throughput"
    _run_dma("axi_dma5", params, testcase=test, expect=(test,))
