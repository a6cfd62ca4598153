"""The board driver (host/backends/board.py) on its verilator transport: the AXI top of the
bitstream (hw.shell.AccelShell) in a C++ harness, CSRs over AXI-Lite, memory behind AXI4
slaves on every master port with the design point's DRAM timing, and a CPU cache that is
not coherent with it -- so every line of the driver runs here as on a KV260.

End to end: logits, memory and the CLI's tokens equal the golden backend's; the ID check;
the watchdog (soft reset, and the hard reset when the memory never answers); SLVERR ->
BUS_ERROR at the command; allocation errors; the token server with ``--backend board
--transport verilator``; ``make bitstream``'s project files against the top's ports and
the address map the driver expects; ``make board-image`` and its check.
(The first run builds the AXI top's harness: a few minutes; later runs reuse it.)"""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from device_util import put_stream, put_tlmm
from model_util import GQA4, char_model_fixture

from golden.config import design_point
from golden.isa import ErrorCode, Opcode, command
from golden.model import random_model
from golden.modelspec import ModelConfig
from host import cli
from host.backends.board import BoardDevice, TransportError, WatchdogTimeout, expected_id
from host.backends.board_verilator import DEFAULT_BUS_BASE, VerilatorTransport
from host.backends.golden import GoldenDevice
from host.device import DeviceError
from host.runtime import Runtime
from hw.csr import CSR

ROOT = Path(__file__).resolve().parents[1]
MEM = 4 << 20
KV260 = design_point("kv260")
SHAPE = GQA4


@pytest.fixture(scope="module")
def board():
    dev = BoardDevice("kv260", transport="verilator", mem_size=MEM)
    yield dev
    dev.close()


@pytest.fixture
def dev(board):
    board.reset()
    board.free_all()
    board.transport.clear_errors()
    board.transport.set_memory_timing(KV260.bytes_per_cycle, KV260.dram_latency)
    return board


tiny_model = char_model_fixture(64, seed=11, tag="board", name="tiny")


def _run(dev, cmds, timeout=30.0):
    dev.run(*put_stream(dev, cmds))
    return dev.wait(timeout)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# ---------------------------------------------------------------------------- end to end
def test_runtime_on_the_axi_top_equals_golden(rng, seed):
    """Prefill and decode through the AXI top: logits and every tensor of device memory
    equal the golden backend's; the buffer sits above 4 GiB (STREAM_ADDR_HI = 8) and every
    master port carried reads and writes; the CPU's view of what the device wrote is stale
    until the driver invalidates it (the cache is not coherent)."""
    dev = BoardDevice("kv260", transport="verilator", mem_size=MEM)
    try:
        assert dev.bus_hi == DEFAULT_BUS_BASE >> 32 == 8
        assert dev.mem_base == DEFAULT_BUS_BASE & 0xFFFF_FFFF
        m = random_model(ModelConfig(**SHAPE), seed=seed)
        rt_g = Runtime(m, GoldenDevice(mem_size=MEM), max_chunk=5)
        rt_b = Runtime(m, dev, max_chunk=5)
        toks = rng.integers(0, SHAPE["vocab_size"], size=10)
        assert np.array_equal(rt_b.forward(toks[:7]), rt_g.forward(toks[:7]))
        for i in range(7, 10):
            assert np.array_equal(rt_b.forward(toks[i : i + 1]), rt_g.forward(toks[i : i + 1]))
        # the residual scratch h: written by the device, never read by the host so far
        h = rt_b.address_map["h"]
        off = h.addr - dev.mem_base
        assert not dev.buffer.array[off : off + h.nbytes].any()  # the CPU's stale view
        for name, rg in rt_g.address_map.regions.items():
            if name == "stream":  # commands hold device addresses: they differ by design
                continue
            rb = rt_b.address_map[name]
            assert rb.addr - dev.alloc_base == rg.addr - rt_g.device.alloc_base, name
            assert dev.read(rb.addr, rb.nbytes) == rt_g.device.read(rg.addr, rg.nbytes), name
        c, cg = dev.counters(), rt_g.device.counters()
        assert c["ops"] == cg["ops"] and c["cycles"] > 0 and c["bytes_written"] > 0
        stats = dev.transport.port_stats()
        assert len(stats) == KV260.axi_ports
        assert all(s["rd_beats"] > 0 and s["wr_beats"] > 0 for s in stats), stats
    finally:
        dev.close()


def test_cli_board_verilator_streams_the_golden_tokens(tiny_model, capsys):
    args = ["-m", str(tiny_model), "-p", "To be", "-n", "10", "-s", "3"]
    assert cli.main([*args, "--backend", "golden"]) == 0
    gold = capsys.readouterr()
    assert cli.main([*args, "--backend", "board", "--transport", "verilator"]) == 0
    brd = capsys.readouterr()
    assert brd.out == gold.out and len(brd.out) > len("To be\n")
    err = brd.err.strip().splitlines()
    assert "backend board" in err[0] and err[1].startswith("accelerator: "), brd.err
    # --transport belongs to the board backend; the default transport needs pynq
    assert cli.main([*args, "--backend", "golden", "--transport", "verilator"]) == 2
    assert "--transport: only with --backend board" in _one_line(capsys.readouterr().err)
    if importlib.util.find_spec("pynq") is None:
        assert cli.main([*args, "--backend", "board"]) == 2
        line = _one_line(capsys.readouterr().err)
        assert "pynq package is not installed" in line and "--transport verilator" in line


# ---------------------------------------------------------------------------- identity
def test_a_bitstream_of_another_design_point_is_refused():
    other = KV260.with_(clock_mhz=200.0)  # the host's point differs from the bitstream's
    t = VerilatorTransport(KV260)
    with pytest.raises(TransportError) as e:
        BoardDevice(other, transport=t, mem_size=MEM)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"0x{expected_id(KV260):08x}" in msg and f"0x{expected_id(other):08x}" in msg
    assert "(design point 'kv260')" in msg and "host design point 'kv260' (modified" in msg
    with pytest.raises(TransportError) as e:  # a shipped point of another board
        BoardDevice("ecp5", transport=VerilatorTransport(KV260), mem_size=MEM)
    assert "(design point 'kv260') is not the host design point 'ecp5' ID" in str(e.value)
    # the matching point is accepted by the same bitstream
    BoardDevice(KV260, transport=VerilatorTransport(KV260), mem_size=MEM).close()


# ---------------------------------------------------------------------------- faults
def _tlmm_stream(dev, rng, repeat=1, rows=2, k=96, n=40):
    x = rng.integers(-128, 128, (rows, k), dtype=np.int8)
    w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    xs, wa, dst = put_tlmm(dev, x, w)
    op = command(Opcode.TLMM, src=xs, weights=wa, dst=dst, rows=rows, k=k, n=n)
    want = x.astype(np.int64) @ w.T.astype(np.int64)
    return [op] * repeat + [command(Opcode.END)], (dst, want, wa)


def _check_good_run(dev, rng):
    cmds, (dst, want, _) = _tlmm_stream(dev, rng)
    st = _run(dev, cmds)
    assert st.done and st.ok and st.ops_done == 2
    assert np.array_equal(dev.read_array(dst, np.int32, want.shape), want)


def test_watchdog_resets_and_the_device_runs_again(dev, rng):
    """A stream far longer than the wait (100 TLMMs at 1 byte/cycle of DRAM: millions of
    cycles, whatever the engines' speed): the watchdog's CTRL.RESET ends it (the few reads
    in flight drain) and the next stream runs; a memory that never answers cannot be
    drained: the hard reset (aresetn) recovers."""
    dev.transport.set_memory_timing(1.0, KV260.dram_latency)
    cmds, _ = _tlmm_stream(dev, rng, repeat=100, rows=4, k=384, n=112)
    dev.run(*put_stream(dev, cmds))
    with pytest.raises(WatchdogTimeout) as e:
        dev.wait(0.3)
    assert e.value.code == ErrorCode.TIMEOUT and e.value.how == "CTRL.RESET"
    assert -1 <= e.value.last_op < 100  # -1: none completed yet
    assert "the watchdog reset the accelerator (CTRL.RESET)" in str(e.value)
    assert not dev.status().busy and not dev.csr_read(CSR.STATUS) & 1
    dev.transport.set_memory_timing(KV260.bytes_per_cycle, KV260.dram_latency)
    _check_good_run(dev, rng)
    dev.reset_timeout_s = 0.3
    dev.transport.set_memory_timing(KV260.bytes_per_cycle, 10**9)
    cmds, _ = _tlmm_stream(dev, rng)
    dev.run(*put_stream(dev, cmds))
    with pytest.raises(WatchdogTimeout) as e:
        dev.wait(0.2)
    assert e.value.how == "CTRL.RESET did not end it: hard reset"
    dev.reset_timeout_s = 1.0
    dev.transport.set_memory_timing(KV260.bytes_per_cycle, KV260.dram_latency)
    _check_good_run(dev, rng)


@pytest.mark.parametrize("kind", ["read", "write"])
def test_slverr_is_a_bus_error_at_its_command(dev, rng, kind):
    """SLVERR on the second TLMM's weights (a read) or its destination (a write, which
    answers after the command has finished): BUS_ERROR with that command's index."""
    first, _ = _tlmm_stream(dev, rng)
    second, (dst, want, wa) = _tlmm_stream(dev, rng)
    cmds = [command(Opcode.NOP), first[0], second[0], command(Opcode.END)]
    lo, n = (wa, 64) if kind == "read" else (dst, want.size * 4)
    dev.transport.inject_error(kind, dev.bus_address(lo), dev.bus_address(lo + n), count=-1)
    with pytest.raises(DeviceError) as e:
        _run(dev, cmds)
    assert e.value.code == ErrorCode.BUS_ERROR and e.value.op_index == 2
    assert e.value.opcode == Opcode.TLMM.value
    assert str(e.value).startswith("device error at command 2 (opcode TLMM): memory bus error")
    dev.transport.clear_errors()
    _check_good_run(dev, rng)  # no reset needed: the error ended the stream
    dev.run(*put_stream(dev, cmds))
    with pytest.raises(RuntimeError, match="a stream is still running"):
        dev.run(*put_stream(dev, cmds))
    assert dev.wait(30.0).ok


def test_allocation_errors_are_one_line(rng, seed):
    t = VerilatorTransport(KV260, capacity=1 << 20)
    with pytest.raises(TransportError) as e:
        BoardDevice(KV260, transport=t, mem_size=2 << 20)
    assert str(e.value) == (
        "cannot allocate 2097152 bytes of contiguous memory: the verilator transport has "
        "1048576 (capacity)"
    )
    # a buffer the accelerator cannot address as one 4 GiB segment, or at all
    for base, want in (
        ((1 << 32) - 4096, "crosses a 4 GiB boundary"),
        (1 << KV260.axi_addr_bits, "beyond the 49-bit AXI masters"),
    ):
        with pytest.raises(TransportError, match=want):
            BoardDevice(KV260, transport="verilator", mem_size=MEM, bus_base=base)
    for kw, want in (
        (dict(dp=3), "dp: expected an AccelConfig"),
        (dict(mem_size=100), "mem_size: expected an integer number of bytes > 4096"),
        (dict(transport="jtag"), "transport: expected one of \\['pynq', 'verilator'\\]"),
        (dict(transport=t, capacity=1), "capacity: options of a transport created by name"),
    ):
        with pytest.raises(ValueError, match=want):
            BoardDevice(**{"mem_size": MEM, **kw})
    small = BoardDevice(KV260, transport="verilator", mem_size=64 << 10)
    try:
        with pytest.raises(ValueError) as e:
            Runtime(random_model(ModelConfig(**SHAPE), seed=seed), small)
        msg = str(e.value)
        assert "\n" not in msg and "65536 bytes of the board's contiguous buffer" in msg
        assert "--device-opt mem_size=N" in msg
        with pytest.raises(ValueError, match="outside allocated memory"):
            small.read(small.mem_base + (64 << 10) - 4, 8)
        with pytest.raises(ValueError, match="nbytes: expected a non-negative integer"):
            small.alloc(-1)
    finally:
        small.close()


# ---------------------------------------------------------------------------- server
def _env():
    import os

    return dict(os.environ, PYTHONIOENCODING="utf-8")


def test_server_on_board_verilator(tiny_model, capsys):
    """``python -m host serve --backend board --transport verilator`` as a user starts it;
    one request from the remote CLI streams the golden backend's text."""
    args = ["-p", "ROMEO:", "-n", "8", "-s", "9"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "host", "serve", "-m", str(tiny_model), "--port", "0"]
        + ["--backend", "board", "--transport", "verilator"],
        cwd=ROOT,
        env=_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = None
        for line in proc.stderr:
            if "listening on " in line:
                url = line.rsplit("listening on ", 1)[1].strip()
                break
        assert url, proc.communicate(timeout=30)[1]
        assert "board backend" in line
        assert cli.main(["--remote", url, *args]) == 0
        remote = capsys.readouterr()
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0 and "Traceback" not in rest, rest
    assert cli.main(["-m", str(tiny_model), "--backend", "golden", *args]) == 0
    assert remote.out == capsys.readouterr().out
    assert "accelerator: " in remote.err
    # a model that does not fit the buffer: the server refuses to start, one line
    code = cli.main(
        ["serve", "-m", str(tiny_model), "--port", "0", "--backend", "board"]
        + ["--transport", "verilator", "--device-opt", "mem_size=65536"]
    )
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("error: --backend board: the model image")


# ---------------------------------------------------------------------------- Vivado flow
def _module_ports(verilog: str, module: str) -> list[str]:
    m = re.search(rf"^module {module}\(([^;]*)\);", verilog, re.M)
    return [p.strip() for p in m.group(1).replace("\n", " ").split(",")]


def test_bitstream_project_names_every_port_and_the_address_map(tmp_path):
    from host.backends import board_pynq
    from host.backends.board_harness.build import build, verilog_path
    from hw import vivado

    shell = vivado.shell_of(KV260)
    # the top's Verilog as the harness exported it (same ports as the bitstream's top)
    text = verilog_path(build(KV260)).read_text()
    files = vivado.write_project("kv260", tmp_path, verilog=text)
    v = files["verilog"].read_text()
    ports = [n for n, _, _ in vivado.shell_ports(shell)]
    assert sorted(_module_ports(v, vivado.CORE)) == sorted(ports)
    wrapper = v.split(f"module {vivado.TOP} (", 1)[1]
    for p in ports:  # the wrapper declares and connects every port of the core
        assert re.search(rf"\b{p}\b", wrapper.split(");", 1)[0]), p
        assert f".{p}({p})" in wrapper, p
    bd = files["block_design"].read_text()
    # every AXI interface of the top is connected: s_axi to HPM0, m_axi{i} to its HP port
    cell = vivado.ACCEL_CELL
    assert f"[get_bd_intf_pins ctrl_smc/M00_AXI] [get_bd_intf_pins {cell}/s_axi]" in bd
    hp = ["S_AXI_HP0_FPD", "S_AXI_HP1_FPD", "S_AXI_HP2_FPD", "S_AXI_HP3_FPD", "S_AXI_HPC0_FPD"]
    assert shell.n_ports == KV260.axi_ports == len(hp)
    for i, pin in enumerate(hp):
        assert (
            f"[get_bd_intf_pins {cell}/m_axi{i}] [get_bd_intf_pins zynq_ultra_ps_e_0/{pin}]" in bd
        )
    assert f"{cell}/m_axi{shell.n_ports}" not in bd
    for gp, used in ((2, 1), (3, 1), (4, 1), (5, 1), (0, 1), (1, 0)):
        assert f"CONFIG.PSU__USE__S_AXI_GP{gp} {{{used}}}" in bd
    assert "CONFIG.PSU__USE__M_AXI_GP0 {1}" in bd and 'apply_board_preset "1"' in bd
    assert f"CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ {{{KV260.clock_mhz:g}}}" in bd
    assert f"[get_bd_pins {cell}/irq] [get_bd_pins axi_intc_0/intr]" in bd
    assert "[get_bd_pins axi_intc_0/irq] [get_bd_pins zynq_ultra_ps_e_0/pl_ps_irq0]" in bd
    clk = bd.split("connect_bd_net [get_bd_pins zynq_ultra_ps_e_0/pl_clk0]", 1)[1].split("#")[0]
    for pin in (
        [f"{cell}/aclk", "zynq_ultra_ps_e_0/maxihpm0_fpd_aclk"]
        + [f"zynq_ultra_ps_e_0/saxihp{i}_fpd_aclk" for i in range(4)]
        + ["zynq_ultra_ps_e_0/saxihpc0_fpd_aclk"]
    ):
        assert f"[get_bd_pins {pin}]" in clk, pin
    # the address map the driver expects: the CSRs where PYNQ looks, the DDR in every
    # master's space where pynq.allocate's device_address points
    assert board_pynq.__name__ and vivado.CSR_BASE == 0xA000_0000
    assert (
        f"assign_bd_address -offset 0xA0000000 -range 4K -target_address_space "
        f"[get_bd_addr_spaces zynq_ultra_ps_e_0/Data] [get_bd_addr_segs -of_objects "
        f"[get_bd_intf_pins {cell}/s_axi]] -force" in bd
    )
    segs = {0: ("SAXIGP2/HP0",), 1: ("SAXIGP3/HP1",), 2: ("SAXIGP4/HP2",)}
    segs.update({3: ("SAXIGP5/HP3",), 4: ("SAXIGP0/HPC0",)})
    for i, (seg,) in segs.items():
        for name, base in (("DDR_LOW", "0x0"), ("DDR_HIGH", "0x800000000")):
            assert (
                f"assign_bd_address -offset {base} -range 2G -target_address_space "
                f"[get_bd_addr_spaces {cell}/m_axi{i}] "
                f"[get_bd_addr_segs zynq_ultra_ps_e_0/{seg}_{name}] -force" in bd
            ), (i, name)
    man = json.loads(files["manifest"].read_text())
    assert man["id"] == f"0x{expected_id(KV260):08x}" and man["cell"] == cell
    for m in man["address_map"]["masters"].values():
        for s in m["segments"]:  # each DDR segment is inside one 4 GiB segment of the bus
            assert s["base"] >> 32 == (s["base"] + s["range"] - 1) >> 32
            assert s["base"] + s["range"] <= 1 << KV260.axi_addr_bits
    bt = files["build_tcl"].read_text()
    assert "launch_runs impl_1 -to_step write_bitstream" in bt
    assert "ternary_accel.bit" in bt and "ternary_accel.hwh" in bt and "source $here/bd.tcl" in bt
    assert "vivado -mode batch" in files["build_sh"].read_text()
    r = subprocess.run(
        [sys.executable, "-m", "hw.vivado", "--board", "nope"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "BOARD: expected one of ['kv260']" in _one_line(r.stderr)


# ---------------------------------------------------------------------------- board image
def test_board_image_and_its_check_on_the_verilator_transport(tiny_model, tmp_path):
    from host import board_image

    out = board_image.build("kv260", str(tiny_model), tmp_path / "img")
    names = {p.name for p in out.iterdir()}
    assert {"overlay", "model", "image", "src", "setup.sh", "run.sh", "check.sh"} <= names
    meta = json.loads((out / "image" / "image.json").read_text())
    assert meta["id"] == f"0x{expected_id(KV260):08x}"
    assert (out / "image" / "image.bin").stat().st_size == meta["image_bytes"] > 0
    assert (tmp_path / "ternary-accel-kv260.tar.gz").is_file()
    ok, lines = board_image.check(out, "verilator")
    assert ok and lines[-1] == "PASS", lines
    assert any(s.startswith("image: ") for s in lines) and any("completion" in s for s in lines)
    # a bundle whose image was made for other bytes fails, naming the region
    blob = bytearray((out / "image" / "image.bin").read_bytes())
    blob[0] ^= 1
    (out / "image" / "image.bin").write_bytes(bytes(blob))
    meta["image_sha256"] = "0" * 64
    meta["regions"][0]["sha256"] = "0" * 64
    (out / "image" / "image.json").write_text(json.dumps(meta))
    ok, lines = board_image.check(out, "verilator")
    assert not ok and lines[0].startswith(f"FAIL image: region {meta['regions'][0]['name']}")
