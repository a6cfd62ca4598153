"""The stream beat of the blocks, defined once: ``lanes`` elements side by side, then any
per-beat fields, then the ``last`` flag (set on the last beat of a row / vector).

Every block's payload layouts are built with :func:`lanes_layout`; :func:`check_lanes` is
the one check of a ``lanes`` argument.
"""

from __future__ import annotations

from amaranth.lib import data


def check_lanes(lanes) -> int:
    """``lanes`` if it is an int >= 1, else ValueError."""
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"lanes: expected an int >= 1, got {lanes!r}")
    return lanes


def lanes_layout(shape, lanes: int, name: str = "data", **fields) -> data.StructLayout:
    """``{name: lanes x shape, **fields, "last": 1}``: the payload of one stream beat."""
    return data.StructLayout({name: data.ArrayLayout(shape, lanes), **fields, "last": 1})
