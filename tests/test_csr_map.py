"""The register map is defined once (hw/csr.py): the committed C header, JSON file and
README table equal what the definition generates; the map's own checks refuse a bad
definition; the ID register's hash follows the build parameters; the AXI shell's ports
carry the names Vivado IP integrator infers as interfaces."""

import gc
import json
import re
import warnings

import pytest
from amaranth import Shape

from golden.config import design_point
from golden.isa import ErrorCode
from hw import csr
from hw.csr import CSR, REGISTERS, Field, Register


def _unused(*comps):
    """Components built for their parameters and ports only, never elaborated (also
    the shell's parts): no UnusedElaboratable warning."""
    for c in comps:
        for o in (c, getattr(c, "core", None), getattr(c, "dma", None), getattr(c, "bridge", None)):
            if o is not None:
                o._MustUse__silence = True
    return comps[0] if len(comps) == 1 else comps


@pytest.mark.parametrize("path", sorted(csr.exports(), key=str), ids=lambda p: p.name)
def test_committed_exports_equal_the_definition(path):
    want = csr.exports()[path]
    assert path.exists() and path.read_text() == want, (
        f"{path.name} is stale: run `python -m hw.csr`"
    )


def test_exports_carry_every_register_and_field():
    doc = json.loads(csr.as_json())
    assert [(r["name"], r["offset"]) for r in doc["registers"]] == [
        (r.name, r.offset) for r in REGISTERS
    ]
    assert doc["error_codes"]["BUS_ERROR"] == ErrorCode.BUS_ERROR.value
    header = csr.as_c_header()
    for r in REGISTERS:
        assert re.search(rf"#define TACCEL_{r.name} 0x{r.offset:02X}u", header), r.name
        for f in r.fields:
            assert f"TACCEL_{r.name}_{f.name}_SHIFT {f.lsb}u" in header
    table = csr.as_markdown_table()
    assert table.count("\n") == len(REGISTERS) + 2
    assert CSR.STREAM_ADDR == CSR.STREAM_ADDR_LO  # the 32-bit name stays an alias


@pytest.mark.parametrize(
    "regs, match",
    [
        ((Register("A", 0, "RW", ""), Register("B", 0, "RO", "")), "also A"),
        ((Register("A", 2, "RW", ""),), "not a word"),
        ((Register("A", 0x100, "RW", ""),), "not a word"),
        ((Register("A", 0, "RX", ""),), "access"),
        (
            (Register("A", 0, "RW", "", (Field("X", 0, 4, ""), Field("Y", 3, 2, ""))),),
            "overlapping",
        ),
        ((Register("A", 0, "RW", "", (Field("X", 30, 4, ""),)),), "outside the word"),
    ],
)
def test_bad_map_is_refused(regs, match):
    with pytest.raises(ValueError, match=match):
        csr._check_map(regs)


def test_readme_without_markers_is_refused():
    with pytest.raises(ValueError, match="markers"):
        csr.readme_with_table("# no table here\n")


def test_design_id_follows_the_build_parameters():
    from hw.accel import Accel
    from hw.shell import AccelShell

    kv = design_point("kv260")
    a, b = _unused(Accel(), Accel(kv.with_(max_k=2048)))
    assert a.ident == csr.design_id(a.id_params()) != b.ident
    s5, s4 = _unused(
        AccelShell(design_point("kv260").with_(axi_ports=5)),
        AccelShell(design_point("kv260").with_(axi_ports=4)),
    )
    assert s5.ident == csr.design_id(s5.id_params()) and s5.ident != s4.ident != a.ident
    assert s5.core.ident == s5.ident
    assert csr.design_id({"x": 1, "y": 2}) == csr.design_id({"y": 2, "x": 1})
    assert 0 <= s5.ident < 1 << 32


def test_shell_port_names():
    from hw.shell import AccelShell

    names = set(_unused(AccelShell(design_point("kv260").with_(axi_ports=3))).signature.members)
    lite = {
        f"s_axi_{s}"
        for s in (
            "awaddr",
            "awprot",
            "awvalid",
            "awready",
            "wdata",
            "wstrb",
            "wvalid",
            "wready",
            "bresp",
            "bvalid",
            "bready",
            "araddr",
            "arprot",
            "arvalid",
            "arready",
            "rdata",
            "rresp",
            "rvalid",
            "rready",
        )
    }
    full = {
        f"m_axi{i}_{s}"
        for i in range(3)
        for s in (
            "awid",
            "awaddr",
            "awlen",
            "awsize",
            "awburst",
            "awlock",
            "awcache",
            "awprot",
            "awqos",
            "awvalid",
            "awready",
            "wdata",
            "wstrb",
            "wlast",
            "wvalid",
            "wready",
            "bid",
            "bresp",
            "bvalid",
            "bready",
            "arid",
            "araddr",
            "arlen",
            "arsize",
            "arburst",
            "arlock",
            "arcache",
            "arprot",
            "arqos",
            "arvalid",
            "arready",
            "rid",
            "rdata",
            "rresp",
            "rlast",
            "rvalid",
            "rready",
        )
    }
    assert names == lite | full | {"aclk", "aresetn", "irq"}
    s = _unused(AccelShell(design_point("kv260").with_(axi_ports=1)))
    mem = s.signature.members
    assert Shape.cast(mem["m_axi0_araddr"].shape).width == 49
    assert Shape.cast(mem["m_axi0_rdata"].shape).width == 128


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n_ports": 0}, "n_ports"),
        ({"data_bytes": 12}, "data_bytes"),
        ({"addr_bits": 32}, "addr_bits"),
        ({"rd_fifo_beats": 4}, "rd_fifo_beats"),
        ({"wr_outstanding": 0}, "wr_outstanding"),
    ],
)
def test_bad_dma_parameters_are_refused(kw, match):
    from hw.axi import AxiDma

    with warnings.catch_warnings():  # the half-built component is never elaborated
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            AxiDma(128, **kw)
        gc.collect()
