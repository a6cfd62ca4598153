"""Device backends (``host.device.Device`` implementations), created by name.

    dev = make_device("golden")              # host.backends.golden.GoldenDevice
    dev = make_device("sim", **kw)            # host.backends.sim.SimDevice (Verilator)
    dev = make_device("board", transport="verilator")   # host.backends.board.BoardDevice

A backend module is imported only when asked for, so a missing toolchain (Verilator,
PYNQ) only matters to the backend that needs it.
"""

from __future__ import annotations

import importlib

# name -> "module:Class"
BACKENDS = {
    "golden": "host.backends.golden:GoldenDevice",
    "sim": "host.backends.sim:SimDevice",
    "board": "host.backends.board:BoardDevice",
}

# the board backend's transports (host.backends.board.Transport): name -> "module:Class"
TRANSPORTS = {
    "pynq": "host.backends.board_pynq:PynqTransport",
    "verilator": "host.backends.board_verilator:VerilatorTransport",
}
DEFAULT_TRANSPORT = "pynq"


def make_device(name: str, **kw):
    """A Device of backend ``name`` (ValueError for an unknown or unavailable backend)."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {sorted(BACKENDS)}, got {name!r}")
    mod_name, cls_name = BACKENDS[name].split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            raise ValueError(
                f"backend: {name!r} is not available yet ({mod_name} does not exist)"
            ) from None
        raise
    return getattr(mod, cls_name)(**kw)
