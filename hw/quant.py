"""Hardware absmax activation quantizer in RTL (golden: ``golden.quant.hw_act_quant``).

Per row of signed ``QuantConfig.hw_in_bits`` integers (int32)::

    amax  = max|x|;  n = bit_length(amax);  R = n + F          (F = recip_frac_bits)
    recip = (act_max * 2^R + amax // 2) // amax                 (amax > 0; else recip = R = 0)
    x_q   = clamp((x * recip + 2^(R-1)) >> R, act_min, act_max)

exactly as ``golden.quant`` states it; the row's integer ``amax`` is carried with the data.

Streams (``amaranth.lib.stream``)
---------------------------------
``inp`` (in)  payload ``{data: L x signed(hw_in_bits), last}``: ``lanes`` (L) consecutive
    elements of a row per beat; ``last`` on the row's final beat.  A row is a whole number
    of beats (the host pads with zeros, which change neither amax nor the other outputs).
    At most ``max_len / L`` beats: a row that reaches that many beats ends there (as if its
    last beat had ``last`` set).
``out`` (out) payload ``{data: L x signed(act_bits), amax: unsigned(hw_in_bits), last}``:
    the quantized row, beat for beat, with the row's amax on every beat.

Micro-architecture: the max needs the whole row before the first output, so the row is
buffered (one ``L*hw_in_bits``-wide memory of ``ceil(max_len/L)`` words) while a 2-stage
pipeline (|x| per lane, max over the lanes) feeds a running max|x| (FILL, FLUSH); then
n = bit_length(amax) and R (SETUP, 1 cycle), the numerator (NORM, 1 cycle), and
``recip`` from a restoring divider, one quotient bit per cycle (DIV, ``recip_bits``
cycles; skipped for an all-zero row); then the buffer is read back through a 6-stage
pipeline (read, register, multiply, + 2^(R-1), >> R, clamp) that emits one beat per
cycle (DRAIN).
The next row's FILL starts as soon as the last read is issued; its SETUP waits until the
previous row's beats have left the multiply/shift stages (they use recip and R).

Cycles from a row's first input beat to its last output beat (B beats, no stalls;
``row_cycles``)::

    B (fill) + 2 (flush) + 1 (setup) + 1 + recip_bits (norm, divide) + B (drain) + 6
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, QuantConfig
from hw.beats import check_lanes, lanes_layout

from .tlmm import DEFAULT_MAX_K

# Beats carry as many elements as the TLMM engine emits per output beat (Q).
DEFAULT_LANES = DEFAULT.tlmm.replicas


def inp_layout(cfg: QuantConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(signed(cfg.hw_in_bits), lanes)


def out_layout(cfg: QuantConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(signed(cfg.act_bits), lanes, amax=unsigned(cfg.hw_in_bits))


def row_cycles(beats: int, cfg: QuantConfig, *, zero_row: bool = False) -> int:
    """Cycles from a row's first input beat to its last output beat, no stalls."""
    divide = 0 if zero_row else 1 + cfg.recip_bits
    return beats + 3 + divide + beats + 6


class _State(enum.Enum, shape=3):
    FILL = 0  # accepting the row
    FLUSH = 1  # last beat taken; the max|x| pipeline drains
    SETUP = 2  # wait for the drain stages to empty; n = bit_length(amax), R = n + F
    NORM = 3  # numerator act_max*2^R + amax//2, divisor aligned
    DIV = 4  # restoring division, one quotient bit per cycle
    DRAIN = 5  # read the row back through the multiply/shift pipeline


class ActQuant(wiring.Component):
    """Streaming absmax INT8 quantizer (see module docstring)."""

    def __init__(
        self,
        cfg: QuantConfig = DEFAULT.quant,
        *,
        lanes: int = DEFAULT_LANES,
        max_len: int = DEFAULT_MAX_K,
    ):
        check_lanes(lanes)
        if max_len < lanes:
            raise ValueError(f"max_len: must be >= lanes ({lanes}), got {max_len}")
        self.cfg = cfg
        self.lanes = lanes
        self.max_len = max_len
        self.depth = -(-max_len // lanes)
        super().__init__(
            {
                "inp": In(stream.Signature(inp_layout(cfg, lanes))),
                "out": Out(stream.Signature(out_layout(cfg, lanes))),
            }
        )

    def elaborate(self, platform):
        cfg, L = self.cfg, self.lanes
        IN = cfg.hw_in_bits
        F = cfg.recip_frac_bits
        QB = cfg.recip_bits  # quotient (recip) bits
        m = Module()

        m.submodules.buf = buf = Memory(shape=unsigned(IN * L), depth=self.depth, init=[])
        wp = buf.write_port()
        rp = buf.read_port()

        state = Signal(_State)
        wptr = Signal(range(self.depth))
        count = Signal(range(self.depth + 1))  # beats of the buffered row
        amax_run = Signal(unsigned(IN))  # running max|x| of the row being filled
        amax_fill = Signal(unsigned(IN))  # amax of the row just filled
        amax_row = Signal(unsigned(IN))  # amax of the row being divided / drained
        shift = Signal(range(IN + F + 1))  # R
        recip = Signal(unsigned(QB))

        stall = Signal()
        m.d.comb += stall.eq(self.out.valid & ~self.out.ready)

        # ---------------------------------------------------------------- FILL
        fill_fire = Signal()
        fill_end = Signal()
        m.d.comb += [
            self.inp.ready.eq(state == _State.FILL),
            fill_fire.eq(self.inp.valid & self.inp.ready),
            fill_end.eq(self.inp.payload.last | (wptr == self.depth - 1)),
            wp.addr.eq(wptr),
            wp.data.eq(self.inp.payload.data.as_value()),
            wp.en.eq(fill_fire),
        ]
        # max|x| pipeline: F1 |x| per lane, F2 max over the lanes, then the running max
        f1_valid, f1_end = Signal(), Signal()
        f1_abs = [Signal(unsigned(IN), name=f"abs{i}") for i in range(L)]
        m.d.sync += [f1_valid.eq(fill_fire), f1_end.eq(fill_end)]
        for i in range(L):
            m.d.sync += f1_abs[i].eq(abs(self.inp.payload.data[i]))
        level = f1_abs
        while len(level) > 1:
            nxt = [
                Mux(level[i] > level[i + 1], level[i], level[i + 1])
                for i in range(0, len(level) - 1, 2)
            ]
            level = nxt + ([level[-1]] if len(level) % 2 else [])
        f2_valid, f2_end = Signal(), Signal()
        f2_max = Signal(unsigned(IN))
        m.d.sync += [f2_valid.eq(f1_valid), f2_end.eq(f1_end), f2_max.eq(level[0])]
        new_max = Signal(unsigned(IN))
        m.d.comb += new_max.eq(Mux(f2_max > amax_run, f2_max, amax_run))
        with m.If(f2_valid):
            m.d.sync += amax_run.eq(Mux(f2_end, 0, new_max))

        # drain pipeline valids (SETUP waits for them: they use recip and R)
        d_valid = [Signal(name=f"d{i}_valid") for i in range(1, 6)]
        d_last = [Signal(name=f"d{i}_last") for i in range(1, 6)]

        # ---------------------------------------------------------------- divider
        W = cfg.act_bits + IN + F  # numerator act_max*2^R + amax//2 < 2^W
        rem = Signal(unsigned(W))
        dsh = Signal(unsigned(W))  # amax << i, i = QB-1 .. 0
        diff = Signal(signed(W + 1))
        m.d.comb += diff.eq(rem - dsh)
        step = Signal(range(QB + 1))
        nbits = Signal(range(IN + 1))  # bit_length(amax_fill)
        for i in range(IN):  # later (higher) bits take priority
            with m.If(amax_fill[i]):
                m.d.comb += nbits.eq(i + 1)

        # ---------------------------------------------------------------- drain
        rptr = Signal(range(self.depth + 1))
        read_fire = Signal()
        m.d.comb += [
            rp.addr.eq(rptr),
            rp.en.eq(~stall),
            read_fire.eq((state == _State.DRAIN) & ~stall),
        ]

        with m.Switch(state):
            with m.Case(_State.FILL):
                with m.If(fill_fire):
                    with m.If(fill_end):
                        m.d.sync += [wptr.eq(0), count.eq(wptr + 1), state.eq(_State.FLUSH)]
                    with m.Else():
                        m.d.sync += wptr.eq(wptr + 1)
            with m.Case(_State.FLUSH):
                with m.If(f2_valid & f2_end):
                    m.d.sync += [amax_fill.eq(new_max), state.eq(_State.SETUP)]
            with m.Case(_State.SETUP):
                with m.If(~Cat(*d_valid).any()):
                    m.d.sync += [amax_row.eq(amax_fill), recip.eq(0), rptr.eq(0)]
                    with m.If(amax_fill == 0):  # all-zero row: recip = R = 0
                        m.d.sync += [shift.eq(0), state.eq(_State.DRAIN)]
                    with m.Else():
                        m.d.sync += [shift.eq(nbits + F), state.eq(_State.NORM)]
            with m.Case(_State.NORM):
                m.d.sync += [
                    rem.eq((Const(cfg.act_max) << shift) + (amax_row >> 1)),
                    dsh.eq(amax_row << (QB - 1)),
                    step.eq(0),
                    state.eq(_State.DIV),
                ]
            with m.Case(_State.DIV):
                # quotient bit QB-1-step: the borrow of rem - dsh decides it
                ge = ~diff[W]
                with m.If(ge):
                    m.d.sync += rem.eq(diff[:W])
                m.d.sync += [recip.eq((recip << 1) | ge), dsh.eq(dsh >> 1), step.eq(step + 1)]
                with m.If(step == QB - 1):
                    m.d.sync += state.eq(_State.DRAIN)
            with m.Case(_State.DRAIN):
                with m.If(read_fire):
                    m.d.sync += rptr.eq(rptr + 1)
                    with m.If(rptr == count - 1):
                        m.d.sync += state.eq(_State.FILL)

        half = Signal(unsigned(IN + F))
        m.d.comb += half.eq(Mux(shift == 0, 0, (1 << shift) >> 1))
        xs = [Signal(signed(IN), name=f"x{i}") for i in range(L)]
        prods = [Signal(signed(IN + QB + 1), name=f"prod{i}") for i in range(L)]
        rounded = [Signal(signed(IN + QB + 2), name=f"rounded{i}") for i in range(L)]
        shifted = [Signal(signed(IN + QB + 2), name=f"shifted{i}") for i in range(L)]
        with m.If(~stall):
            # D1: buffer word arrives; D2: registered (block RAM outputs are slow);
            # D3: x * recip; D4: + 2^(R-1); D5: >> R
            m.d.sync += [d_valid[0].eq(read_fire), d_last[0].eq(rptr == count - 1)]
            for k in range(1, len(d_valid)):
                m.d.sync += [d_valid[k].eq(d_valid[k - 1]), d_last[k].eq(d_last[k - 1])]
            for i in range(L):
                m.d.sync += [
                    xs[i].eq(rp.data[i * IN : (i + 1) * IN].as_signed()),
                    prods[i].eq(xs[i] * recip),
                    rounded[i].eq(prods[i] + half),
                    shifted[i].eq(rounded[i] >> shift),
                ]

        # D6: clamp into the output register
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += self.out.valid.eq(0)
        with m.If(~stall & d_valid[-1]):
            m.d.sync += [
                self.out.valid.eq(1),
                self.out.payload.last.eq(d_last[-1]),
                self.out.payload.amax.eq(amax_row),
            ]
            for i in range(L):
                y = shifted[i]
                q = Mux(y > cfg.act_max, cfg.act_max, Mux(y < cfg.act_min, cfg.act_min, y))
                m.d.sync += self.out.payload.data[i].eq(q)
        return m
