"""RMSNorm fused with INT8 quantization in RTL (golden: ``golden.rmsnorm.rmsnorm_quant``).

Per row of d residual elements x (signed ``in_bits``) and the norm weight gamma (signed
``gamma_bits``), streamed together, ``lanes`` (L) elements per beat, exactly as the golden
model states it:

* pass 1 (one beat per cycle): ``S = sum x^2`` (exact, ``NormConfig.sumsq_bits(max_len)``
  bits), ``p = x * gamma`` (exact) into a row buffer, running max and min of p;
* per row (a short sequencer, one step per cycle): ``S' = S + eps_term``; rsqrt seed from
  a ROM generated from ``golden.rmsnorm.rsqrt_lut`` addressed by the exponent parity and
  the top mantissa bits, ``newton_steps`` Newton steps (3 cycles each); ``amax_p``,
  ``sh_p = max(0, bit_length(amax_p) - (hw_in_bits - 1))`` and the quantizer's amax
  ``amax' = max|p >> sh_p| = max(max_p >> sh_p, -(min_p >> sh_p))`` (floor shifts are
  monotonic, so max and min give it without another pass); the output scale
  ``scale_mant * 2^-scale_shift`` from amax', c and y (two multiplies, normalize, round);
* pass 2: the buffer is read back as ``p' = p >> sh_p`` into the hardware activation
  quantizer ``hw.quant.ActQuant`` (``golden.quant.hw_act_quant``, reused as a
  submodule: it finds the same amax', divides and quantizes), whose output beats leave
  with the row's scale attached.

Streams (``amaranth.lib.stream``; a beat transfers when valid & ready)
----------------------------------------------------------------------
``x`` (in)  ``{x: L x signed(in_bits), gamma: L x signed(gamma_bits), last}``: L
    consecutive elements of a row and their gamma; ``last`` on the row's final beat. A row
    is a whole number of beats (the host pads x with zeros: they change nothing) and at
    most ``max_len / L`` beats (a row that reaches that many ends there).
``y`` (out) ``{data: L x signed(act_bits), scale_mant: unsigned(scale_mant_bits),
    scale_shift: signed(32), last}``: the quantized row, beat for beat, with its scale
    (``golden.rmsnorm.scale_to_float``) on every beat.

Row constants (``golden.rmsnorm.norm_constants(d)``, computed by the host for the true
row length d, held stable while rows of that length are processed): ``eps_term``,
``c_mant``, ``c_exp``.

The next row's pass 1 starts as soon as the previous row's last buffer read is issued;
a small queue holds the scales of rows still inside the quantizer.

Cycle count (rows of B beats, no stalls): pass 1 B + 2 (pipeline), ``seq_cycles(cfg)`` =
``3 * newton_steps + 9`` sequencer cycles, 1 read-register cycle, then the quantizer's own
row (``hw.quant.row_cycles(B)``: its fill is this block's pass 2, then its divide and
drain): one row from its first input beat to its last output beat, both included,
``expected_cycles(B) = B + 3 + seq_cycles + hw.quant.row_cycles(B)``. The extra pass over
the row (vs. quantizing straight from this block's buffer) is the price of reusing
``ActQuant`` unchanged.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, NormConfig, QuantConfig
from golden.rmsnorm import rsqrt_lut
from hw.beats import check_lanes, lanes_layout
from hw.fixed import bit_length, rhu

# Elements per beat by default: the quantizer's (the TLMM engine's Q), rows up to its K.
from .quant import DEFAULT_LANES, ActQuant
from .quant import row_cycles as quant_row_cycles
from .tlmm import DEFAULT_MAX_K

NORM_SHIFT_BITS = 32  # golden.rmsnorm: the norm block's scale_shift is a signed int32 (the
# engine narrows it to the scale record's isa.SCALE_SHIFT_BITS)
C_EXP_BITS = 16  # c_exp port: sqrt(d)/act_max * 2^-B exponents, far inside


def seq_cycles(cfg: NormConfig) -> int:
    """Sequencer cycles between the sum being final and pass 2 starting."""
    return 3 * cfg.newton_steps + 9


def expected_cycles(
    beats: int, cfg: NormConfig = DEFAULT.norm, qcfg: QuantConfig = DEFAULT.quant
) -> int:
    """One row of ``beats`` beats, no stalls: first input beat to last output beat."""
    return beats + 3 + seq_cycles(cfg) + quant_row_cycles(beats, qcfg)


def x_layout(cfg: NormConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(
        signed(cfg.in_bits), lanes, name="x", gamma=data.ArrayLayout(signed(cfg.gamma_bits), lanes)
    )


def y_layout(cfg: NormConfig, qcfg: QuantConfig, lanes: int) -> data.StructLayout:
    return lanes_layout(
        signed(qcfg.act_bits),
        lanes,
        scale_mant=unsigned(cfg.scale_mant_bits),
        scale_shift=signed(NORM_SHIFT_BITS),
    )


def _signed(v):
    """An unsigned value as a non-negative signed one (so that differences can go below 0)."""
    return Cat(v, Const(0, 1)).as_signed()


class RMSNormQuant(wiring.Component):
    """Fixed-point RMSNorm + INT8 quantization (see module docstring)."""

    def __init__(
        self,
        cfg: NormConfig = DEFAULT.norm,
        qcfg: QuantConfig = DEFAULT.quant,
        *,
        lanes: int = DEFAULT_LANES,
        max_len: int = DEFAULT_MAX_K,
    ):
        if not isinstance(cfg, NormConfig):
            raise ValueError(f"cfg: expected NormConfig, got {type(cfg).__name__}")
        if not isinstance(qcfg, QuantConfig):
            raise ValueError(f"qcfg: expected QuantConfig, got {type(qcfg).__name__}")
        check_lanes(lanes)
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < lanes:
            raise ValueError(f"max_len: expected an int >= lanes ({lanes}), got {max_len!r}")
        self.cfg, self.qcfg = cfg, qcfg
        self.lanes = lanes
        self.max_len = max_len
        self.depth = -(-max_len // lanes)
        self.sum_bits = cfg.sumsq_bits(self.depth * lanes)
        super().__init__(
            {
                "x": In(stream.Signature(x_layout(cfg, lanes))),
                "y": Out(stream.Signature(y_layout(cfg, qcfg, lanes))),
                "eps_term": In(unsigned(self.sum_bits)),
                "c_mant": In(unsigned(cfg.scale_mant_bits)),
                "c_exp": In(signed(C_EXP_BITS)),
            }
        )

    def elaborate(self, platform):
        cfg, qcfg, L = self.cfg, self.qcfg, self.lanes
        F, LB, B = cfg.rsqrt_frac_bits, cfg.rsqrt_lut_bits, cfg.scale_mant_bits
        # x * gamma reaches +2^(in_bits + gamma_bits - 2) (both at their minimum), one bit
        # more than NormConfig.product_bits holds
        PB = cfg.in_bits + cfg.gamma_bits
        m = Module()
        m.submodules.quant = aq = ActQuant(qcfg, lanes=L, max_len=self.depth * L)

        buf = Memory(shape=data.ArrayLayout(signed(PB), L), depth=self.depth, init=[])
        m.submodules.buf = buf
        bw = buf.write_port()
        br = buf.read_port()

        # ------------------------------------------------------------ states
        P1, DRAIN1, NORM, SEED, NT, NU, NY, AMAX, SCALE_A, PROD1, PROD2, ROUND, FINAL, PUSH, P2 = (
            range(15)
        )
        state = Signal(range(15))

        # ------------------------------------------------------------ pass 1
        x_fire = Signal()
        m.d.comb += [self.x.ready.eq(state == P1), x_fire.eq(self.x.valid & self.x.ready)]
        a_valid, a_last = Signal(), Signal()
        b_valid, b_last = Signal(), Signal()
        xa = [Signal(signed(cfg.in_bits), name=f"xa{i}") for i in range(L)]
        ga = [Signal(signed(cfg.gamma_bits), name=f"ga{i}") for i in range(L)]
        sqb = [Signal(unsigned(2 * cfg.in_bits - 1), name=f"sq{i}") for i in range(L)]
        pb = [Signal(signed(PB), name=f"p{i}") for i in range(L)]
        wptr = Signal(range(self.depth))
        count = Signal(range(self.depth + 1))
        wptr_in = Signal(range(self.depth))  # beats of the row accepted so far
        row_end = Signal()
        m.d.comb += row_end.eq(self.x.payload.last | (wptr_in == self.depth - 1))
        m.d.sync += [
            a_valid.eq(x_fire),
            a_last.eq(x_fire & row_end),
            b_valid.eq(a_valid),
            b_last.eq(a_last),
        ]
        with m.If(x_fire):
            m.d.sync += wptr_in.eq(Mux(row_end, 0, wptr_in + 1))
            m.d.sync += [r.eq(self.x.payload.x[i]) for i, r in enumerate(xa)]
            m.d.sync += [r.eq(self.x.payload.gamma[i]) for i, r in enumerate(ga)]
        # stage B: squares and products (|x|^2 <= 2^(2 in_bits - 2))
        m.d.sync += [r.eq(xa[i] * xa[i]) for i, r in enumerate(sqb)]
        m.d.sync += [r.eq(xa[i] * ga[i]) for i, r in enumerate(pb)]
        # stage C: accumulate, track max/min of p, write the buffer
        S = Signal(unsigned(self.sum_bits))
        pmax = Signal(signed(PB))
        pmin = Signal(signed(PB))
        first = Signal(init=1)  # next stage-C beat starts a row
        beat_sum = sum(sqb[1:], sqb[0])
        # a named signal per step: a chain of bare Mux expressions, each using the
        # previous one twice, would grow exponentially with the lanes when exported
        bmax, bmin = pb[0], pb[0]
        for i, v in enumerate(pb[1:]):
            nmax, nmin = Signal(signed(PB), name=f"bmax{i}"), Signal(signed(PB), name=f"bmin{i}")
            m.d.comb += [nmax.eq(Mux(v > bmax, v, bmax)), nmin.eq(Mux(v < bmin, v, bmin))]
            bmax, bmin = nmax, nmin
        m.d.comb += [bw.addr.eq(wptr), bw.en.eq(b_valid)]
        m.d.comb += [bw.data[i].eq(pb[i]) for i in range(L)]
        with m.If(b_valid):
            m.d.sync += [
                S.eq(Mux(first, 0, S) + beat_sum),
                pmax.eq(Mux(first | (bmax > pmax), bmax, pmax)),
                pmin.eq(Mux(first | (bmin < pmin), bmin, pmin)),
                first.eq(b_last),
                wptr.eq(Mux(b_last, 0, wptr + 1)),
            ]
            with m.If(b_last):
                m.d.sync += count.eq(wptr + 1)

        # ------------------------------------------------------------ sequencer
        Sp = Signal(unsigned(self.sum_bits + 1))  # S + eps_term
        e_len = bit_length(m, Sp, "sp_len")
        e = Signal(range(self.sum_bits + 1))  # bit_length(S') - 1 (S' = 0 as 1)
        m.d.comb += e.eq(Mux(e_len == 0, 0, e_len - 1))
        k = Signal(range(self.sum_bits // 2 + 1))
        parity = Signal()
        mfx = Signal(unsigned(F + 2))  # UQ2.F mantissa of S' / 4^k
        y = Signal(unsigned(F + 2))  # rsqrt, UQ1.F
        t = Signal(unsigned(2 * F + 4))
        u = Signal(unsigned(2 * F + 4))
        step = Signal(range(max(cfg.newton_steps, 1) + 1))
        lut = Array(Const(int(v), unsigned(F + 1)) for v in rsqrt_lut(cfg))

        amax_p = Signal(unsigned(PB))
        amax_len = bit_length(m, amax_p, "amax_p_len")
        sh_p = Signal(range(PB + 1))
        amax_q = Signal(unsigned(qcfg.hw_in_bits))  # amax' of p' = p >> sh_p
        aq_len = bit_length(m, amax_q, "amax_q_len")
        a_e = Signal(range(qcfg.hw_in_bits + 1))
        a_m = Signal(unsigned(B))
        prod = Signal(unsigned(2 * B + F + 2))  # a_m * c_mant * y
        prod_len = bit_length(m, prod, "prod_len")
        r = Signal(range(2 * B + F + 4))
        mant0 = Signal(unsigned(B + 1))
        scale_mant = Signal(unsigned(B))
        scale_shift = Signal(signed(NORM_SHIFT_BITS))

        scales = fifo.SyncFIFO(width=B + NORM_SHIFT_BITS, depth=2)
        m.submodules.scales = scales

        with m.Switch(state):
            with m.Case(P1):
                with m.If(x_fire & row_end):
                    m.d.sync += state.eq(DRAIN1)
            with m.Case(DRAIN1):  # the last beat reaches stage C
                with m.If(b_valid & b_last):
                    m.d.sync += state.eq(NORM)
            with m.Case(NORM):
                m.d.sync += [Sp.eq(S + self.eps_term), state.eq(SEED)]
                # amax_p from the extremes (|min| of a product of two minima fits PB bits)
                m.d.sync += amax_p.eq(Mux(-pmin > pmax, -pmin, pmax))
            with m.Case(SEED):
                kk = e >> 1
                # M = S' / 4^k as UQ2.F: (S' << F) >> 2k (floor), in [2^F, 2^(F+2))
                mm = ((Sp << F) >> (kk << 1))[: F + 2]
                # the fraction of S'/2^e sits in the F + parity bits below the leading one
                frac = mm - Mux(e[0], 1 << (F + 1), 1 << F)
                top = Mux(e[0], frac >> (F + 1 - (LB - 1)), frac >> (F - (LB - 1)))
                addr = Cat(top[: LB - 1], e[0])
                m.d.sync += [
                    k.eq(kk),
                    parity.eq(e[0]),
                    mfx.eq(mm),
                    y.eq(lut[addr]),
                    step.eq(0),
                    sh_p.eq(
                        Mux(amax_len > qcfg.hw_in_bits - 1, amax_len - (qcfg.hw_in_bits - 1), 0)
                    ),
                ]
                m.d.sync += state.eq(NT if cfg.newton_steps else AMAX)
            with m.Case(NT):
                m.d.sync += [t.eq(rhu(y * y, F)), state.eq(NU)]
            with m.Case(NU):
                m.d.sync += [u.eq(rhu(mfx * t, F)), state.eq(NY)]
            with m.Case(NY):
                diff = Const(3 << F, signed(F + 4)) - u.as_signed()
                m.d.sync += [y.eq(rhu(y * diff, F + 1)), step.eq(step + 1)]
                m.d.sync += state.eq(Mux(step + 1 == cfg.newton_steps, AMAX, NT))
            with m.Case(AMAX):
                hi = pmax >> sh_p
                lo = -(pmin >> sh_p)
                m.d.sync += [amax_q.eq(Mux(lo > hi, lo, hi)), state.eq(SCALE_A)]
            with m.Case(SCALE_A):
                ae = Signal(range(qcfg.hw_in_bits + 1), name="ae")
                m.d.comb += ae.eq(Mux(aq_len > B, aq_len - B, 0))
                m.d.sync += [a_e.eq(ae), a_m.eq(amax_q >> ae), state.eq(PROD1)]
            with m.Case(PROD1):
                m.d.sync += [prod.eq(a_m * self.c_mant), state.eq(PROD2)]
            with m.Case(PROD2):
                m.d.sync += [prod.eq(prod * y), state.eq(ROUND)]
            with m.Case(ROUND):
                rr = Signal.like(r, name="rr")
                m.d.comb += rr.eq(Mux(prod_len > B + 1, prod_len - B, 1))
                half = (Const(1, 2 * B + F + 3) << rr) >> 1
                m.d.sync += [r.eq(rr), mant0.eq((prod + half) >> rr), state.eq(FINAL)]
            with m.Case(FINAL):
                carry = mant0[B]
                rf = r + carry
                shift = (
                    (F + cfg.gamma_frac_bits)
                    + _signed(k)
                    - _signed(sh_p)
                    - _signed(a_e)
                    - self.c_exp
                    - _signed(rf)
                )
                zero = amax_q == 0
                m.d.sync += [
                    scale_mant.eq(Mux(zero, 0, Mux(carry, mant0 >> 1, mant0))),
                    scale_shift.eq(Mux(zero, 0, shift)),
                    state.eq(PUSH),
                ]
            with m.Case(PUSH):
                with m.If(scales.w_rdy):
                    m.d.sync += state.eq(P2)
            with m.Case(P2):
                pass
        m.d.comb += [
            scales.w_data.eq(Cat(scale_mant, scale_shift)),
            scales.w_en.eq((state == PUSH) & scales.w_rdy),
        ]

        # ------------------------------------------------------------ pass 2
        # the read port's output is the quantizer's input register: it holds while the
        # quantizer is not ready, and the next word is read as the current one is taken
        pv = Signal()  # a word is offered to the quantizer
        p_last = Signal()
        rptr = Signal(range(self.depth))
        take = pv & aq.inp.ready
        free = ~pv | aq.inp.ready
        issue = (state == P2) & free
        m.d.comb += [br.addr.eq(rptr), br.en.eq(free)]
        # pass 2 shifts by its own copy of sh_p, taken at the row's first read: the next
        # row's SEED may update sh_p while this row's last word still waits for the quantizer
        sh_p2 = Signal.like(sh_p)
        with m.If(issue & (rptr == 0)):
            m.d.sync += sh_p2.eq(sh_p)
        with m.If(issue):
            m.d.sync += [pv.eq(1), p_last.eq(rptr == count - 1)]
            with m.If(rptr == count - 1):
                m.d.sync += [rptr.eq(0), state.eq(P1)]
            with m.Else():
                m.d.sync += rptr.eq(rptr + 1)
        with m.Elif(take):
            m.d.sync += pv.eq(0)
        m.d.comb += [aq.inp.valid.eq(pv), aq.inp.payload.last.eq(p_last)]
        for i in range(L):
            # |p >> sh_p| <= 2^(hw_in_bits - 1): the value fits the quantizer input
            m.d.comb += aq.inp.payload.data[i].eq(br.data[i] >> sh_p2)

        # ------------------------------------------------------------ output
        head = scales.r_data
        m.d.comb += [
            self.y.valid.eq(aq.out.valid),
            aq.out.ready.eq(self.y.ready),
            self.y.payload.data.eq(aq.out.payload.data),
            self.y.payload.last.eq(aq.out.payload.last),
            self.y.payload.scale_mant.eq(head[:B]),
            self.y.payload.scale_shift.eq(head[B:]),
            scales.r_en.eq(aq.out.valid & self.y.ready & aq.out.payload.last),
        ]
        return m


# --------------------------------------------------------------------------- stream packing
def x_beats(x_row, gamma, lanes: int) -> list[dict]:
    """``x`` payloads for one row and its gamma, zero-padded to a whole number of beats."""
    import numpy as np

    x = np.asarray(x_row, dtype=np.int64).reshape(-1)
    g = np.asarray(gamma, dtype=np.int64).reshape(-1)
    nb = -(-x.size // lanes)
    xp = np.zeros(nb * lanes, dtype=np.int64)
    gp = np.zeros(nb * lanes, dtype=np.int64)
    xp[: x.size], gp[: g.size] = x, g
    return [
        {
            "x": xp[b * lanes : (b + 1) * lanes].tolist(),
            "gamma": gp[b * lanes : (b + 1) * lanes].tolist(),
            "last": int(b == nb - 1),
        }
        for b in range(nb)
    ]


def synth_tops() -> dict:
    """Factories for ``hw.synth``: the default fused RMSNorm + quantizer."""
    return {"rmsnorm": RMSNormQuant}
