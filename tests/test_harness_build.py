"""host/backends/harness_build.py: a build is filed under the hash of the sources only while
those are what this process loaded (else the exported Verilog is older than the files)."""

from __future__ import annotations

import os

import hw
from host.backends import harness_build as hb


def test_sources_edited_after_load_give_no_key(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.cpp").write_text("int x;\n")
    loaded = os.stat(tmp_path / "a.py").st_mtime + 10
    monkeypatch.setattr(hw, "LOADED_AT", loaded)
    texts = hb.source_texts(tmp_path, ("*.py", "*.cpp"))
    assert texts == [("a.py", "x = 1\n"), ("b.cpp", "int x;\n")]
    os.utime(tmp_path / "b.cpp", (loaded + 5, loaded + 5))  # edited after the RTL was loaded
    assert hb.source_texts(tmp_path, ("*.py", "*.cpp")) is None


def test_no_index_is_neither_read_nor_written(tmp_path):
    lib = tmp_path / "lib.so"
    lib.write_text("")
    assert hb.indexed_library(None) is None
    hb.write_index(None, lib)  # nothing to record
    hb.write_index(tmp_path / "index" / "k", lib)
    assert hb.indexed_library(tmp_path / "index" / "k") == lib
