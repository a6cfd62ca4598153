"""Online softmax in RTL (golden: ``golden/softmax.py``, bit for bit ``softmax_fx``).

``lanes`` independent rows are processed side by side (e.g. the heads of one query: same
length, per-element mask), one element of every row per beat. Per lane, exactly the
golden "online pass / reciprocal / output pass":

* pass 1 (one beat per cycle): ``t = x * L2E``, ``c = ceil(t)``, running max ``M`` in
  integer base-2 units, ``d = M * 2^TF - t``, exp unit ``(mant, n) = exp2_neg_fx(d)``
  (ROM of ``golden.softmax.exp_lut`` words {T[a], T[a] - T[a+1]} + interpolation),
  ``s = (s >> (M_new - M_old)) + rhu(mant * 2^(SF-E), n)``; the row is written to an
  internal buffer (``max_len`` x lanes x (in_bits + 1 mask bit));
* reciprocal: ``b = bit_length(s)``, ``s_m = (s << (RF+1)) >> b`` (= the golden's top
  RF+1 bits), ``R = (2^(2RF+1) + s_m) // (2 s_m)`` by a restoring divider, one quotient
  bit per cycle (RF + 1 cycles, no multiplier);
* pass 2: the buffer is read back through the same pipeline with the final M:
  ``p = min(rhu(mant * R, E + n + b - 1 + RF - SF - P), 2^P - 1)``, masked elements 0.

Shift amounts are clamped where the result no longer changes (term shifts at SF + 2,
output shifts at E + RF + 2, sum shifts at sum_bits), so the shifters stay narrow.

Streams (``amaranth.lib.stream``; a beat transfers when valid & ready)
----------------------------------------------------------------------
``x`` (in)  ``{data: lanes x signed(in_bits), mask: lanes x 1, last}``: element j of each
    row (Q.IF logits); ``mask[l] = 1``: the element takes part (0: skipped, output 0;
    a causal mask is the host's ``golden.softmax.causal_mask``). ``last`` ends the rows.
    A row is at most ``max_len`` elements: element max_len - 1 ends it (what follows
    starts a new row).
``p`` (out) ``{data: lanes x unsigned(out_bits), last}``: the probabilities (UQ0.P) of
    element j, in order; ``last`` on the row's final element.

A new row is accepted once the previous one's pass 2 has been issued (its outputs may
still be in the pipeline). The whole pipeline freezes while ``p`` holds an unaccepted
beat.

Cycle count (no stalls; rows of n elements): ``row_cycles(n) = 2n + RF + 8`` per row back
to back (n accept cycles, ``DRAIN`` = 5 to finish the sum, 1 normalize, RF + 1 divide,
n buffer reads, 1 gap); one row from its first input beat to its last output beat, both
included: ``expected_cycles(n) = 2n + RF + 14`` (``LATENCY`` = 7: from the last read
issue to its output beat, inclusive).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, SoftmaxConfig
from golden.softmax import PROB_BOUND_MAX_LEN, exp_lut, log2e_fx
from hw.beats import check_lanes, lanes_layout

# Rows processed side by side when the instantiating code does not say (SoftmaxConfig
# has no lane count: it is a throughput choice of the instance).
DEFAULT_LANES = 4
# Longest row buffered by default: the longest for which golden.softmax states its bound.
DEFAULT_MAX_LEN = PROB_BOUND_MAX_LEN

DRAIN = 5  # cycles after the last pass-1 accept until the sum is final
LATENCY = 7  # pass 2: cycles from the last read issue to its output beat, inclusive


def row_cycles(n: int, cfg: SoftmaxConfig = DEFAULT.softmax) -> int:
    """Cycles per row of n elements when rows follow back to back (no stalls)."""
    return n + DRAIN + 1 + (cfg.recip_frac_bits + 1) + n + 1


def expected_cycles(n: int, cfg: SoftmaxConfig = DEFAULT.softmax) -> int:
    """One row of n elements, no stalls: first input beat to last output beat."""
    return n + DRAIN + 1 + (cfg.recip_frac_bits + 1) + n + LATENCY


def x_layout(cfg: SoftmaxConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(signed(cfg.in_bits), lanes, mask=data.ArrayLayout(unsigned(1), lanes))


def p_layout(cfg: SoftmaxConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(unsigned(cfg.out_bits), lanes)


def _rhu_var(m: Module, v, sh, max_sh: int, name: str):
    """Round half up of v / 2^sh for a variable sh (clamped to max_sh: v < 2^(max_sh-1))."""
    shn = Signal(range(max_sh + 1), name=name)  # narrow, so the shifters stay small
    m.d.comb += shn.eq(Mux(sh > max_sh, max_sh, sh))
    half = (Const(1, max_sh + 1) << shn) >> 1
    return (v + half) >> shn


def _clamp_hi(v, hi: int):
    return Mux(v > hi, hi, v)


class Softmax(wiring.Component):
    """Online softmax over ``lanes`` rows in parallel (see module docstring)."""

    def __init__(
        self,
        cfg: SoftmaxConfig = DEFAULT.softmax,
        *,
        lanes: int = DEFAULT_LANES,
        max_len: int = DEFAULT_MAX_LEN,
    ):
        if not isinstance(cfg, SoftmaxConfig):
            raise ValueError(f"cfg: expected SoftmaxConfig, got {type(cfg).__name__}")
        check_lanes(lanes)
        if (
            isinstance(max_len, bool)
            or not isinstance(max_len, int)
            or not 1 <= max_len <= cfg.max_len
        ):
            raise ValueError(
                f"max_len: expected an int in [1, cfg.max_len = {cfg.max_len}], got {max_len!r}"
            )
        self.cfg = cfg
        self.lanes = lanes
        self.max_len = max_len
        super().__init__(
            {
                "x": In(stream.Signature(x_layout(cfg, lanes))),
                "p": Out(stream.Signature(p_layout(cfg, lanes))),
            }
        )

    def elaborate(self, platform):
        cfg, L = self.cfg, self.lanes
        TF, LB, IB = cfg.t_frac_bits, cfg.exp_lut_bits, cfg.exp_interp_bits
        E, SF, RF, P = cfg.exp_frac_bits, cfg.sum_frac_bits, cfg.recip_frac_bits, cfg.out_bits
        l2e = log2e_fx(cfg)
        lut = [int(v) for v in exp_lut(cfg)]
        words = [{"base": lut[a], "drop": lut[a] - lut[a + 1]} for a in range(1 << LB)]
        word_layout = data.StructLayout(
            {
                "base": unsigned(max(w["base"] for w in words).bit_length()),
                "drop": unsigned(max(1, max(w["drop"] for w in words).bit_length())),
            }
        )
        d_bits = cfg.in_bits + cfg.log2e_frac_bits + 2  # d < 2^(in_bits + LF + 2)
        n_bits = d_bits - TF
        term_max_sh = SF + 2  # rhu(<= 2^SF, >= SF+2) = 0
        out_max_sh = E + RF + 2  # rhu(< 2^(E+RF+1), >= E+RF+2) = 0

        m = Module()
        stall = Signal()
        m.d.comb += stall.eq(self.p.valid & ~self.p.ready)

        # ------------------------------------------------------------ row buffer
        elem = data.StructLayout({"x": signed(cfg.in_bits), "mask": 1})
        buf = Memory(shape=data.ArrayLayout(elem, L), depth=self.max_len, init=[])
        m.submodules.buf = buf
        bw = buf.write_port()
        br = buf.read_port()
        rom = Memory(shape=word_layout, depth=1 << LB, init=words)
        m.submodules.rom = rom

        # ------------------------------------------------------------ control
        IN, DRAIN1, NORM, DIV, OUT = range(5)
        state = Signal(range(5))
        count = Signal(range(self.max_len + 1))  # elements of the row (pass 1)
        wptr = Signal(range(self.max_len))
        rptr = Signal(range(self.max_len))
        div_left = Signal(range(RF + 2))
        rd_valid = Signal()  # buffer data arrives this cycle
        rd_first = Signal()
        rd_last = Signal()

        x_fire = Signal()
        row_end = Signal()
        m.d.comb += [
            self.x.ready.eq((state == IN) & ~stall & ~rd_valid),
            x_fire.eq(self.x.valid & self.x.ready),
            row_end.eq(self.x.payload.last | (wptr == self.max_len - 1)),
            bw.addr.eq(wptr),
            bw.en.eq(x_fire),
            br.addr.eq(rptr),
            br.en.eq(~stall),
        ]
        for lane in range(L):
            m.d.comb += [
                bw.data[lane].x.eq(self.x.payload.data[lane]),
                bw.data[lane].mask.eq(self.x.payload.mask[lane]),
            ]

        issue = Signal()
        m.d.comb += issue.eq((state == OUT) & ~stall)
        with m.If(~stall):
            m.d.sync += [rd_valid.eq(issue), rd_first.eq(rptr == 0), rd_last.eq(rptr == count - 1)]

        # ------------------------------------------------------------ pipeline
        # stage 0 (combinational): the input beat (pass 1) or the buffer word (pass 2)
        ctrl = data.StructLayout({"valid": 1, "pass2": 1, "first": 1, "last": 1})
        s0 = Signal(ctrl)
        m.d.comb += [
            s0.valid.eq(x_fire | rd_valid),
            s0.pass2.eq(rd_valid),
            s0.first.eq(Mux(rd_valid, rd_first, wptr == 0)),
            s0.last.eq(Mux(rd_valid, rd_last, row_end)),
        ]

        def stage(prev, name):
            c = Signal(ctrl, name=name)
            with m.If(~stall):
                m.d.sync += c.eq(prev)
            return c

        def reg(value, name, shape=None):
            r = Signal(value.shape() if shape is None else shape, name=name)
            with m.If(~stall):
                m.d.sync += r.eq(value)
            return r

        s1 = stage(s0, "s1")
        s2 = stage(s1, "s2")
        s3 = stage(s2, "s3")
        s4 = stage(s3, "s4")
        s5 = stage(s4, "s5")

        sums, recips, shift_bases = [], [], []
        p_values = []
        for lane in range(L):
            x0 = Mux(rd_valid, br.data[lane].x, self.x.payload.data[lane])
            k0 = Mux(rd_valid, br.data[lane].mask, self.x.payload.mask[lane])
            # stage 1: t = x * log2(e)
            t1 = reg(x0 * l2e, f"t1_{lane}")
            k1 = reg(k0, f"mask1_{lane}")
            # stage 2: ceil, running max (pass 1), d = M * 2^TF - t
            c = -((-t1) >> TF)
            M = Signal(c.shape(), name=f"max{lane}")
            have = Signal(name=f"have{lane}")  # the row has an unmasked element
            have_before = Mux(s1.first, 0, have)
            newmax = ~have_before | (c > M)
            m_new = Mux(newmax, c, M)
            with m.If(~stall & s1.valid & ~s1.pass2):
                with m.If(k1):
                    m.d.sync += [M.eq(m_new), have.eq(1)]
                with m.Elif(s1.first):
                    m.d.sync += have.eq(0)
            m_use = Mux(s1.pass2, M, m_new)
            d2 = reg(((m_use << TF) - t1)[:d_bits], f"d2_{lane}", unsigned(d_bits))
            inc = Mux(have_before, m_new - M, 0)
            k_sh = reg(
                _clamp_hi(inc, cfg.sum_bits), f"kshift2_{lane}", unsigned(cfg.sum_bits.bit_length())
            )
            reset2 = reg(~have_before, f"reset2_{lane}")
            k2 = reg(k1, f"mask2_{lane}")
            # stage 3: exp unit, ROM read of the fraction's segment
            port = rom.read_port()
            f = d2[:TF]
            m.d.comb += [port.addr.eq(f[TF - LB :]), port.en.eq(~stall)]
            n3 = reg(d2[TF:], f"n3_{lane}", unsigned(n_bits))
            w3 = reg(f[TF - LB - IB : TF - LB], f"w3_{lane}", unsigned(IB)) if IB else None
            k_sh3, reset3, k3 = (
                reg(k_sh, f"kshift3_{lane}"),
                reg(reset2, f"reset3_{lane}"),
                reg(k2, f"mask3_{lane}"),
            )
            # stage 4: interpolate (mant = T[a] - rhu((T[a] - T[a+1]) * w, Ib))
            word = port.data
            if IB:
                mant = word.base - ((word.drop * w3 + (1 << (IB - 1))) >> IB)
            else:
                mant = word.base
            mant4 = reg(mant, f"mant4_{lane}", unsigned(E + 1))
            n4, k_sh4, reset4, k4 = (
                reg(n3, f"n4_{lane}"),
                reg(k_sh3, f"kshift4_{lane}"),
                reg(reset3, f"reset4_{lane}"),
                reg(k3, f"mask4_{lane}"),
            )
            # stage 5: pass 1 term rhu(mant * 2^(SF-E), n); pass 2 product mant * R
            recip = Signal(unsigned(RF + 1), name=f"recip{lane}")
            shift_base = Signal(signed(n_bits + 8), name=f"shift_base{lane}")
            term5 = reg(
                _rhu_var(m, mant4 << (SF - E), n4, term_max_sh, f"term_sh{lane}"),
                f"term5_{lane}",
                unsigned(SF + 1),
            )
            prod5 = reg(mant4 * recip, f"prod5_{lane}")
            sh = n4 + shift_base  # < 0 only in a fully masked row
            sh5 = reg(
                Mux(sh < 0, 0, _clamp_hi(sh, out_max_sh)),
                f"sh5_{lane}",
                unsigned(out_max_sh.bit_length()),
            )
            k_sh5, reset5, k5 = (
                reg(k_sh4, f"kshift5_{lane}"),
                reg(reset4, f"reset5_{lane}"),
                reg(k4, f"mask5_{lane}"),
            )
            # stage 6: pass 1 accumulates; pass 2 rounds into the output register
            s = Signal(unsigned(cfg.sum_bits), name=f"sum{lane}")
            with m.If(~stall & s5.valid & ~s5.pass2 & k5):
                m.d.sync += s.eq(Mux(reset5, 0, s >> k_sh5) + term5)
            p = _clamp_hi(_rhu_var(m, prod5, sh5, out_max_sh, f"out_sh{lane}"), (1 << P) - 1)
            p_values.append(Mux(k5, p, 0))
            sums.append(s)
            recips.append(recip)
            shift_bases.append(shift_base)

        # ------------------------------------------------------------ output register
        with m.If(~stall):
            m.d.sync += [self.p.valid.eq(s5.valid & s5.pass2), self.p.payload.last.eq(s5.last)]
            m.d.sync += [self.p.payload.data[i].eq(v) for i, v in enumerate(p_values)]

        # ------------------------------------------------------------ reciprocal
        for lane in range(L):
            s = sums[lane]
            blen = Signal(range(cfg.sum_bits + 1), name=f"blen{lane}")
            # bit_length: the highest set bit wins (later assignments override)
            m.d.comb += blen.eq(0)
            for i in range(cfg.sum_bits):
                with m.If(s[i]):
                    m.d.comb += blen.eq(i + 1)
            s_m = Signal(unsigned(RF + 1), name=f"s_m{lane}")
            low = Signal(unsigned(RF + 1), name=f"low{lane}")  # dividend bits to bring down
            rem = Signal(unsigned(RF + 3), name=f"rem{lane}")
            quot = Signal(unsigned(RF + 1), name=f"quot{lane}")
            with m.If(state == NORM):
                top = ((s << (RF + 1)) >> blen)[: RF + 1]
                m.d.sync += [
                    s_m.eq(top),
                    low.eq(top),  # dividend 2^(2RF+1) + s_m: low RF+1 bits
                    rem.eq(1 << RF),  # ... and its top bits, 2^RF < 2 s_m
                    quot.eq(0),
                    shift_bases[lane].eq(blen + (E - 1 + RF - SF - P)),
                ]
            # restoring division by 2 s_m, one quotient bit per cycle
            trial = Cat(low[RF], rem)[: RF + 3]
            divisor = Cat(Const(0, 1), s_m)
            ge = trial >= divisor
            with m.If(state == DIV):
                m.d.sync += [
                    rem.eq(Mux(ge, trial - divisor, trial)),
                    quot.eq(Cat(ge, quot)),
                    low.eq(low << 1),
                ]
                with m.If(div_left == 1):
                    m.d.sync += recips[lane].eq(Cat(ge, quot)[: RF + 1])

        # ------------------------------------------------------------ state machine
        with m.Switch(state):
            with m.Case(IN):
                with m.If(x_fire):
                    with m.If(row_end):
                        m.d.sync += [state.eq(DRAIN1), count.eq(wptr + 1), wptr.eq(0)]
                    with m.Else():
                        m.d.sync += wptr.eq(wptr + 1)
            with m.Case(DRAIN1):
                with m.If(~stall & s5.valid & ~s5.pass2 & s5.last):
                    m.d.sync += state.eq(NORM)
            with m.Case(NORM):
                m.d.sync += [state.eq(DIV), div_left.eq(RF + 1)]
            with m.Case(DIV):
                m.d.sync += div_left.eq(div_left - 1)
                with m.If(div_left == 1):
                    m.d.sync += [state.eq(OUT), rptr.eq(0)]
            with m.Case(OUT):
                with m.If(issue):
                    with m.If(rptr == count - 1):
                        m.d.sync += state.eq(IN)
                    with m.Else():
                        m.d.sync += rptr.eq(rptr + 1)
        return m


# --------------------------------------------------------------------------- stream packing
def x_beats(x, mask=None) -> list[dict]:
    """``x`` payloads for logits (lanes, n) and an optional bool mask of the same shape."""
    import numpy as np

    x = np.asarray(x)
    mask = np.ones(x.shape, dtype=bool) if mask is None else np.broadcast_to(mask, x.shape)
    n = x.shape[1]
    return [
        {
            "data": [int(v) for v in x[:, j]],
            "mask": [int(v) for v in mask[:, j]],
            "last": int(j == n - 1),
        }
        for j in range(n)
    ]
