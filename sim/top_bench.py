"""What the benches of a whole top (``sim/accel_bench.py``, ``sim/accel_layer_bench.py``:
``hw.accel.Accel``; ``sim/shell_bench.py``: the AXI shell) share: a memory model that
hands out aligned blocks, a one-layer model run on the golden backend whose memory image
the bench mirrors and compares byte for byte, and the small RESIDUAL command of their
error cases. The pytest side's layer parameters are here too (``LAYER_PARAMS``)."""

from __future__ import annotations

import numpy as np

from golden.config import DEFAULT
from golden.isa import Opcode, command
from golden.model import random_model
from golden.modelspec import ModelConfig
from host.backends.golden import GoldenDevice
from host.runtime import Runtime
from hw.csr import CSR, STATUS

# the shapes and steps of the layer benches (``bench_params`` names, see ``layer_model``)
LAYER_PARAMS = {"hidden": 64, "ffn": 96, "heads": 4, "kv_heads": 2, "prefill": 5, "decode": 2}


class BumpMemory:
    """A bench's memory model ``mem`` with a bump allocator from ``brk`` up."""

    def __init__(self, size: int, brk: int):
        self.mem = bytearray(size)
        self.brk = brk

    def alloc(self, nbytes: int, align: int = 64) -> int:
        a = -(-self.brk // align) * align
        self.brk = a + nbytes
        assert self.brk <= len(self.mem)
        return a

    def put(self, data) -> int:
        buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        a = self.alloc(len(buf))
        self.mem[a : a + len(buf)] = buf
        return a


async def read_status(csr_read) -> dict:
    """STATUS (busy, done, error), ERR_OP, OPS_DONE and CYCLES_LO through the bench's
    ``csr_read``."""
    st = await csr_read(CSR.STATUS)
    return {
        "busy": st & 1,
        "done": (st >> 1) & 1,
        "error": (st >> STATUS["error"].offset) & 0xFF,
        "err_op": await csr_read(CSR.ERR_OP),
        "ops": await csr_read(CSR.OPS_DONE),
        "cycles": await csr_read(CSR.CYCLES_LO),
    }


def layer_model(params: dict, rng):
    """A random one-layer model of the bench parameters ``hidden``, ``ffn``, ``heads``,
    ``kv_heads`` (vocabulary 24, context 16)."""
    mc = ModelConfig(
        vocab_size=24,
        hidden_size=int(params.get("hidden", 64)),
        intermediate_size=int(params.get("ffn", 96)),
        num_hidden_layers=1,
        num_attention_heads=int(params.get("heads", 4)),
        num_key_value_heads=int(params.get("kv_heads", 2)),
        max_position_embeddings=16,
    )
    return random_model(mc, seed=int(rng.integers(1 << 30)))


def layer_steps(params: dict) -> list[int]:
    """The rows of each step: a prefill of ``prefill`` tokens, then ``decode`` single ones."""
    return [int(params.get("prefill", 5))] + [1] * int(params.get("decode", 2))


class Layer:
    """A one-layer model compiled onto a golden device whose memory image the bench's
    memory ``mem`` mirrors; ``step`` prepares one step's commands (golden run included),
    ``compare`` checks ``mem`` against the golden memory."""

    def __init__(self, mem: bytearray, rng, params: dict):
        self.mem, self.rng = mem, rng
        self.gd = GoldenDevice(DEFAULT, mem_size=len(mem))
        self.rt = Runtime(layer_model(params, rng), self.gd, max_chunk=8)
        self.a = self.rt.address_map
        self.window = (self.gd.alloc_base, self.gd.brk)
        self.regions = [(r.addr, r.addr + r.nbytes) for r in self.a.regions.values()]
        mem[:] = self.gd.memory.tobytes()
        self.pos = 0

    def step(self, rows: int):
        """(commands of the next ``rows`` random tokens, the memory before them)."""
        a, gd = self.a, self.gd
        toks = self.rng.integers(0, self.rt.config.vocab_size, rows).astype(np.uint32)
        gd.write(a.addr("tokens"), toks)
        self.mem[a.addr("tokens") : a.addr("tokens") + toks.nbytes] = toks.tobytes()
        before = bytes(self.mem)
        cmds = self.rt.step_commands(self.pos, rows, rows)
        self.rt.run_stream(cmds)  # golden
        return cmds, before

    def compare(self, rows: int) -> None:
        gd = self.gd
        got = np.frombuffer(bytes(self.mem), np.uint8)
        diff = np.flatnonzero(got[: gd.brk] != gd.memory[: gd.brk])
        if diff.size:
            where = [
                r.name for r in self.a.regions.values() if r.addr <= diff[0] < r.addr + r.nbytes
            ]
            raise AssertionError(
                f"step pos={self.pos} rows={rows}: {diff.size} bytes differ, "
                f"first at 0x{diff[0]:x} in {where}"
            )


def small_residual(src: int, scale: int, dst: int, **change):
    """RESIDUAL of 2 rows x 8 (h = acc = ``src``, unit constant) into ``dst``; ``change``
    overrides fields."""
    args = dict(h=src, acc=src, src_scale=scale, dst=dst, rows=2, dim=8, c_mant=1 << 15, c_shift=15)
    return command(Opcode.RESIDUAL, **{**args, **change})
