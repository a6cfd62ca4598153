"""INT32 -> INTn requantizer in RTL (golden: ``golden.requant.requantize``).

Per element, exactly as the golden model::

    y = saturate((acc * mult + 2^(shift-1)) >> shift, out_min, out_max)   (shift = 0: no constant)

``acc`` signed ``in_bits``, ``mult`` unsigned ``mult_bits``, 0 <= shift <= ``shift_max``,
``>>`` arithmetic (floor), saturation once after the shift.

Streams (``amaranth.lib.stream``)
---------------------------------
``inp`` (in)  payload ``{data: L x signed(in_bits), mult: L x unsigned(mult_bits),
    shift: L x unsigned, last}``: ``lanes`` (L) elements per beat, each with its own
    multiplier and shift, so per-tensor, per-row (per token) and per-column scales are all
    a matter of what the host (or the producing block) puts in the beat.
``out`` (out) payload ``{data: L x signed(out_bits), last}``, beat for beat (``last``
    passed through).

Pipeline (one beat per cycle, ``LATENCY`` = 4, one global stall when ``out`` is full):
stage 1 ``acc * mult`` (``product_bits`` signed: DSP multiplies) and the shift, clamped to
``product_bits``; stage 2 adds the rounding constant; stage 3 shifts; stage 4 saturates
into the output register.  N beats take N + 4 cycles without stalls.

Why the clamp is exact: |acc*mult| < 2^(P-1) with P = ``product_bits``, so for any
shift >= P, acc*mult + 2^(shift-1) lies in (0, 2^shift) and the result is 0 -- the same as
with shift = P.  The adder and shifter are therefore P+1 bits wide, not 64.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, RequantConfig
from hw.beats import check_lanes, lanes_layout

# Beats carry as many elements as the TLMM engine emits per output beat (Q).
DEFAULT_LANES = DEFAULT.tlmm.replicas


def shift_shape(cfg: RequantConfig):
    return unsigned(max(1, cfg.shift_max.bit_length()))


def inp_layout(cfg: RequantConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(
        signed(cfg.in_bits),
        lanes,
        mult=data.ArrayLayout(unsigned(cfg.mult_bits), lanes),
        shift=data.ArrayLayout(shift_shape(cfg), lanes),
    )


def out_layout(cfg: RequantConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(signed(cfg.out_bits), lanes)


LATENCY = 4  # cycles from a beat's acceptance to its output beat being valid


class Requant(wiring.Component):
    """Streaming multiplier+shift requantizer with saturation (see module docstring)."""

    def __init__(self, cfg: RequantConfig = DEFAULT.requant, *, lanes: int = DEFAULT_LANES):
        self.cfg = cfg
        self.lanes = check_lanes(lanes)
        super().__init__(
            {
                "inp": In(stream.Signature(inp_layout(cfg, lanes))),
                "out": Out(stream.Signature(out_layout(cfg, lanes))),
            }
        )

    def elaborate(self, platform):
        cfg, L = self.cfg, self.lanes
        P = cfg.product_bits
        m = Module()

        stall = Signal()
        m.d.comb += [
            stall.eq(self.out.valid & ~self.out.ready),
            self.inp.ready.eq(~stall),
        ]
        fire = self.inp.valid & ~stall

        # stage 1: product and clamped shift
        s1_valid, s1_last = Signal(), Signal()
        prod = [Signal(signed(P), name=f"prod{i}") for i in range(L)]
        sh1 = [Signal(range(P + 1), name=f"shift1_{i}") for i in range(L)]
        with m.If(~stall):
            m.d.sync += [s1_valid.eq(fire), s1_last.eq(self.inp.payload.last)]
            for i in range(L):
                sh = self.inp.payload.shift[i]
                m.d.sync += [
                    prod[i].eq(self.inp.payload.data[i] * self.inp.payload.mult[i]),
                    sh1[i].eq(Mux(sh > P, P, sh)),
                ]

        # stage 2: + 2^(shift-1)
        s2_valid, s2_last = Signal(), Signal()
        rounded = [Signal(signed(P + 1), name=f"rounded{i}") for i in range(L)]
        sh2 = [Signal(range(P + 1), name=f"shift2_{i}") for i in range(L)]
        with m.If(~stall):
            m.d.sync += [s2_valid.eq(s1_valid), s2_last.eq(s1_last)]
            for i in range(L):
                half = Mux(sh1[i] == 0, 0, (1 << sh1[i]) >> 1)
                m.d.sync += [rounded[i].eq(prod[i] + half), sh2[i].eq(sh1[i])]

        # stage 3: >> shift
        s3_valid, s3_last = Signal(), Signal()
        shifted = [Signal(signed(P + 1), name=f"shifted{i}") for i in range(L)]
        with m.If(~stall):
            m.d.sync += [s3_valid.eq(s2_valid), s3_last.eq(s2_last)]
            for i in range(L):
                m.d.sync += shifted[i].eq(rounded[i] >> sh2[i])

        # stage 4: saturate into the output register
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += self.out.valid.eq(0)
        with m.If(~stall & s3_valid):
            m.d.sync += [self.out.valid.eq(1), self.out.payload.last.eq(s3_last)]
            for i in range(L):
                y = shifted[i]
                q = Mux(y > cfg.out_max, cfg.out_max, Mux(y < cfg.out_min, cfg.out_min, y))
                m.d.sync += self.out.payload.data[i].eq(q)
        return m
