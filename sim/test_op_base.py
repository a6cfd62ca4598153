"""hw/ops/base.py: the shared scale and requant RTL helpers equal golden/model.py's
scale_mul, scale_of_int and requant (Amaranth simulator, random and corner operands)."""

import numpy as np
from amaranth import Module, Signal, signed
from amaranth.sim import Simulator

from golden.config import DEFAULT
from golden.model import Scale
from golden.model import requant as g_requant
from golden.model import scale_mul as g_scale_mul
from golden.model import scale_of_int as g_scale_of_int
from hw.ops.base import requant, scale_mul, scale_of_int

B = DEFAULT.requant.mult_bits


class _Helpers:
    """A module with the helpers instantiated on its own inputs (simulated directly)."""

    def __init__(self):
        self.acc, self.mant, self.s = Signal(signed(32)), Signal(B), Signal(signed(18))
        self.am, self.ash = Signal(B), Signal(signed(16))
        self.bm, self.bsh = Signal(B), Signal(signed(16))
        self.v = Signal(32)
        self.m = Module()
        m = self.m
        self.y32 = requant(m, self.acc, self.mant, self.s, 32, DEFAULT.requant.shift_max, "r32")
        self.y16 = requant(m, self.acc, self.mant, self.s, 16, DEFAULT.requant.shift_max, "r16")
        self.sm = scale_mul(m, self.am, self.ash, self.bm, self.bsh, B, "sm")
        self.si = scale_of_int(m, self.v, B, "si")


def test_helpers_match_golden(rng):
    h = _Helpers()
    n = 1500

    async def tb(ctx):
        for i in range(n):
            acc = int(rng.integers(-(2**31), 2**31)) if i % 3 else int(rng.integers(-300, 300))
            if i % 7 == 0:
                acc = int(rng.choice([-(2**31), 2**31 - 1, 0, 1, -1]))
            mant = int(rng.integers(0, 2**B)) if i % 5 else int(rng.choice([0, 1, 2**B - 1]))
            s = int(rng.integers(-40, 70))
            ctx.set(h.acc, acc)
            ctx.set(h.mant, mant)
            ctx.set(h.s, s)
            for bits, y in ((32, h.y32), (16, h.y16)):
                want = int(
                    g_requant(np.int64(acc), Scale(np.int64(mant), np.int64(s + 16)), 16, bits)
                )
                assert ctx.get(y) == want, (acc, mant, s, bits)
            am, bm = (
                int(rng.integers(2 ** (B - 1), 2**B))
                if rng.random() < 0.8
                else int(rng.integers(0, 2**B))
                for _ in range(2)
            )
            ash, bsh = (int(rng.integers(-1000, 1000)) for _ in range(2))
            ctx.set(h.am, am)
            ctx.set(h.bm, bm)
            ctx.set(h.ash, ash)
            ctx.set(h.bsh, bsh)
            w = g_scale_mul(
                Scale(np.int64(am), np.int64(ash)), Scale(np.int64(bm), np.int64(bsh)), B
            )
            assert (ctx.get(h.sm[0]), ctx.get(h.sm[1])) == (int(w.mant), int(w.shift)), (
                am,
                ash,
                bm,
                bsh,
            )
            v = int(rng.integers(0, 2**31)) >> int(rng.integers(0, 31))
            ctx.set(h.v, v)
            w = g_scale_of_int(np.int64(v), B)
            assert (ctx.get(h.si[0]), ctx.get(h.si[1])) == (int(w.mant), int(w.shift)), v

    sim = Simulator(h.m)
    sim.add_testbench(tb)
    sim.run()
