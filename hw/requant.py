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

Pipeline (one beat per cycle, ``LATENCY`` = 6, one global stall when ``out`` is full):
stage 1 the beat registered; stages 2-3 ``acc * mult`` (``hw.pipeline.mul_split``: two
DSP48E2 partial products, then their sum) beside the shift's window parameters
(``hw.pipeline.RssParams.derive``); stages 4-6 the rounding right shift and the
saturation (``hw.pipeline.rss_lane``: the window of the product in two steps with the
overflow flag, then the rounding and the saturation), the last one the output register.
N beats take N + 6 cycles without stalls. Every stage meets the 250 MHz depth rule of
``hw.timing``.

Why the shift can be clamped: |acc*mult| < 2^(P-1) with P = ``product_bits``, so for any
shift >= P, acc*mult + 2^(shift-1) lies in (0, 2^shift) and the result is 0 -- the same as
with shift = P.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, RequantConfig
from hw.beats import check_lanes, lanes_layout
from hw.pipeline import Pipe, RssParams, mul_split, rss_lane

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


LATENCY = 6  # cycles from a beat's acceptance to its output beat being valid


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
        pipe = Pipe(m, stall)
        params = RssParams(P, cfg.out_bits, cfg.shift_max, "rq")
        valid = pipe.reg(self.inp.valid & ~stall, "s1_valid")
        last = pipe.reg(self.inp.payload.last, "s1_last")
        outs = []
        for i in range(L):
            x = pipe.reg(self.inp.payload.data[i], f"x{i}")
            k = pipe.reg(self.inp.payload.mult[i], f"mult{i}")
            sh = pipe.reg(self.inp.payload.shift[i], f"shift{i}")
            q = mul_split(pipe, x, k, f"q{i}")
            par = params.derive(pipe, Cat(sh, Const(0, 1)).as_signed(), f"p{i}")
            outs.append(rss_lane(pipe, q, params, f"y{i}", params=par))
        depth = LATENCY - 1
        m.d.comb += [
            self.out.valid.eq(pipe.delay(valid, depth, "valid")),
            self.out.payload.last.eq(pipe.delay(last, depth, "last")),
        ]
        m.d.comb += [self.out.payload.data[i].eq(y) for i, y in enumerate(outs)]
        return m
