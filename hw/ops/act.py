"""ACT engine: the gated FFN product ``act(gate) * up`` (golden: ``Executor._op_act``
-> ``golden.model.op_act``, item 10 of the golden/model.py docstring).

What it computes, per row t (B = ``RequantConfig.mult_bits``, F = ``ForwardConfig.ffn_bits``,
tok = sx[t] the row's scale record, c_g = (g_mant, g_shift), c_u = (u_mant, u_shift))::

    u16, au = hw_act_quant16(up[t])                 # absmax to F bits, per row
    su      = scale_mul(scale_mul(tok, c_u), scale_of_int(au))
    relu2:  g16, ag = hw_act_quant16(gate[t])
            a  = rhu(max(g16, 0)^2, F - 1)
            sg = scale_mul(scale_mul(tok, c_g), scale_of_int(ag))
            sa = scale_mul(sg, sg) with shift - (F - 1)   (a zero scale stays (0, 0))
    silu:   g  = requant(gate[t], scale_mul(tok, c_g), ActivationConfig.in_frac_bits, in_bits)
            a  = silu_fx(g);  sa = (2^(B-1), B - 1 + ActivationConfig.out_frac_bits)
    dst[t]  = requant(a * u16, scale_mul(sa, su), NormConfig.in_frac_bits, 32)   # int32 Q15.16

hw_act_quant16 is ``hw.quant.ActQuant`` with golden's 16-bit ``QuantConfig`` (act_bits = F),
silu_fx is ``hw.activations.LutActivation`` (kind "silu"), and every scale_mul /
scale_of_int / requant is the bit-exact helper of ``hw.ops.base``. Scale shifts are kept
``SHIFT_BITS`` (20) wide: record shifts are int16, one product of two of them needs 18 bits,
and sa = sg^2 and sa * su reach |shift| < 3 * 2^16 + 256 < 2^18.

Checks: the ACT contract (``golden.isa.CONTRACTS``), all in one cycle before any memory
access
--------------------------------------------------------------------------------------
kind not an ``ActKind`` (2, 3: golden's decoder says BAD_OPERAND); rows, dim >= 1 and
the engine limit dim <= ``max_dim`` (``LIMITS``; BAD_DIM); gate, up: 4-byte aligned
(ALIGN) and [addr, addr + rows*dim*4) inside [mem_lo, mem_hi) (ADDR_RANGE); src_scale:
aligned to its 4-byte record, rows*4 bytes in range; dst as gate. No data-dependent
error exists (every int32 input is a valid quantizer input and no scale is stored).

Micro-architecture (E = dma_bytes/4 int32 per DMA beat, L = ``lanes`` per datapath beat)
----------------------------------------------------------------------------------------
- Two walkers of one item sequence per row: the request side issues the reads, the
  response side (responses come in request order) routes each beat; no tag FIFO.
  relu2: ``G0, U0, G1, U1, ..., sx`` (gate and up rows arrive together; each quantizer
  needs its whole row before its first output). silu: ``U0, U1, ..., sx, G0, G1, ...``
  (only up needs the row; gate is read while up drains, as the product consumes it; its
  requant needs tok*c_g, so sx comes first there). sx after the row's up data: the scale
  unit has published the previous row's scale by then, so its record never blocks the
  next row's fill.
  Beat j of a row is the bytes [j*dma_bytes, ...) of that row (the last one partial: the
  port returns zeros beyond ``len``, which are the zero padding ActQuant wants).
- Per stream (gate, up) a width adapter holds one DMA beat and hands it out as E/L beats
  of L lanes (``last`` on the row's final one); it takes the next DMA beat in the cycle
  its final sub-beat leaves, so both quantizers fill at the full port rate.
- relu2: gate adapter -> ActQuant(16-bit) ; silu: gate adapter -> requant register
  (``requant`` per lane with the row's scale_mul(tok, c_g), latched with the DMA beat) ->
  LutActivation. Up adapter -> ActQuant(16-bit) in both kinds.
- Scale unit, per row: takes the sx record from the response stream (tok*c_g, tok*c_u
  registered); when both quantizers show the row's first output beat (amax valid) and the
  previous row has left the join: sg/su (1 cycle), sa (1), sc (1) -> the row's
  (mant, shift - 16), which travels down the product pipeline with each beat (so the
  next row's scale can be set while this row's last beats are still in flight).
- Join + 4-stage product pipeline (all stages freeze together when the output stalls):
  P1 register gate-side value and u16; P2 a = rhu(relu(g)^2, F-1) (relu2) or the SiLU
  value; P3 a * u16 (|.| < 2^30); P4 requant to int32 Q15.16.
- Packer: E/L pipeline beats -> one write of dma_bytes (a row's last write: the row's
  remaining bytes), rows written back to back from dst.

Cycles (no memory stalls, read latency 1; ``expected_cycles``)
-------------------------------------------------------------
With b = ceil(dim/L) datapath beats per row and D = ``recip_bits`` of the 16-bit
quantizer (ffn_bits + recip_frac_bits = 25, its divider)::

    rows * (2*b + D + 9) + 15 - Z * (D + 1)

(Z: rows whose quantized operands are all zero -- up for silu, gate and up for relu2 -- for
which ActQuant skips its divider.) per row: fill b (each quantizer takes L lanes a cycle; with L
= E/2 gate and up together use the whole port, one DMA beat per cycle), flush/setup/normalize 4,
divide D, drain pipeline 6, scale unit 4, drain b; the next row's fill overlaps the last ~6
drain cycles (the row's sx record comes after its data, so no read waits for the scale unit).
Measured (sim/test_op_act.py checks it): exact for relu2 with b >= 2; silu, one-beat rows and
zero rows up to 3 cycles a row shorter (silu at most 2 cycles longer in all). BitNet-0.73B FFN
(dim 4096, L = 16): 561 cycles for one token, 546 per further row (7.5 output elements per
cycle; gate + up read at 32 int32 per cycle).

Differences from the golden backend
-----------------------------------
- ``max_dim`` (constructor, default 4096 = BitNet-0.73B FFN width): each ActQuant buffers
  one row of ``max_dim`` int32; dim > max_dim is BAD_DIM (golden takes any dim).
- ``lanes`` (default 16): a power of two dividing dma_bytes/4; changes only timing.
- ``cfg.quant.hw_in_bits`` must be 32 (the accumulators are int32; checked at build).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import enum

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ActKind, ErrorCode, Opcode
from hw.activations import LutActivation
from hw.fixed import rhu
from hw.quant import ActQuant

from .base import Engine, requant, scale_mul, scale_of_int

DEFAULT_MAX_DIM = 4096  # BitNet-0.73B intermediate (FFN) size
DEFAULT_LANES = 16
SHIFT_BITS = 20  # scale shifts inside the engine (see module docstring)


def expected_cycles(
    rows: int, dim: int, cfg: DatapathConfig, lanes: int = DEFAULT_LANES, zero_rows: int = 0
) -> int:
    """The module docstring's cycle formula (no stalls, read latency 1); ``zero_rows``:
    rows whose quantized operands are all zero (they skip the divider)."""
    b = -(-dim // lanes)
    d = cfg.forward.ffn_bits + cfg.quant.recip_frac_bits  # 16-bit quantizer's recip_bits
    return rows * (2 * b + d + 9) + 15 - zero_rows * (d + 1)


class _Item(enum.Enum, shape=2):
    SX = 0
    GATE = 1
    UP = 2


class ActEngine(Engine):
    """ACT op engine (see module docstring)."""

    OPCODE = Opcode.ACT
    LIMITS = ("dim <= max_dim",)  # each ActQuant buffers one row

    def __init__(
        self,
        cfg: DatapathConfig,
        dma_bytes: int,
        *,
        max_dim: int = DEFAULT_MAX_DIM,
        lanes: int = DEFAULT_LANES,
    ):
        if not isinstance(cfg, DatapathConfig):
            raise ValueError(f"cfg: expected a DatapathConfig, got {type(cfg).__name__}")
        if dma_bytes < 4 or dma_bytes % 4:
            raise ValueError(f"dma_bytes: expected a positive multiple of 4, got {dma_bytes}")
        per_beat = dma_bytes // 4
        if lanes < 1 or lanes & (lanes - 1) or per_beat % lanes:
            raise ValueError(f"lanes: expected a power of two dividing {per_beat}, got {lanes}")
        if not 1 <= max_dim < (1 << isa.DIM_BITS):
            raise ValueError(f"max_dim: expected 1..{(1 << isa.DIM_BITS) - 1}, got {max_dim}")
        if cfg.quant.hw_in_bits != 32:
            raise ValueError(
                f"cfg.quant.hw_in_bits: the engine feeds int32 accumulators, "
                f"needs 32, got {cfg.quant.hw_in_bits}"
            )
        # a: relu2 < 2^(F-1) or a SiLU output; |a * u16| must be an int32 for golden's requant
        self.a_bits = max(cfg.forward.ffn_bits, cfg.activation.out_bits)
        self.prod_bits = self.a_bits + cfg.forward.ffn_bits - 1
        if self.prod_bits > cfg.requant.in_bits:
            raise ValueError(
                f"cfg: a * u16 needs {self.prod_bits} bits, more than "
                f"RequantConfig.in_bits = {cfg.requant.in_bits}"
            )
        self.max_dim = max_dim
        self.lanes = lanes
        # golden's hw_act_quant16: the INT8 quantizer widened to ffn_bits
        self.quant16 = replace(cfg.quant, act_bits=cfg.forward.ffn_bits)
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        W = self.signature.dma_bytes
        E = W // 4  # int32 per DMA beat
        L = self.lanes
        SUB = E // L  # datapath beats per DMA beat
        B = cfg.requant.mult_bits
        FB = cfg.forward.ffn_bits
        ac = cfg.activation
        nc = cfg.norm
        a = self.op_args

        m.submodules.gq = gq = ActQuant(self.quant16, lanes=L, max_len=self.max_dim)
        m.submodules.uq = uq = ActQuant(self.quant16, lanes=L, max_len=self.max_dim)
        m.submodules.silu = lut = LutActivation(ac, ("silu",), lanes=L)

        relu2 = Signal()
        m.d.comb += relu2.eq(a.kind == ActKind.RELU2)
        row_bytes = Signal(unsigned(isa.DIM_BITS + 2))
        m.d.comb += row_bytes.eq(a.dim * 4)
        running = Signal()
        begin = Signal()  # CHECK passed: initialize everything

        # ---------------------------------------------------------------- walkers
        def walker(name: str, advance) -> SimpleNamespace:
            """The row's item sequence (module docstring); ``advance``: the current item
            was issued / consumed. Gate and up rows have the same length, so in relu2 the
            up beat that ends its row also ends the gate row."""
            item = Signal(_Item, name=f"{name}_item")
            row = Signal(isa.ROWS_BITS, name=f"{name}_row")
            g_left = Signal(unsigned(isa.DIM_BITS + 2), name=f"{name}_g_left")
            u_left = Signal(unsigned(isa.DIM_BITS + 2), name=f"{name}_u_left")
            finished = Signal(name=f"{name}_finished")
            left = Mux(item == _Item.GATE, g_left, u_left)
            nbytes = Signal(range(W + 1), name=f"{name}_nbytes")
            m.d.comb += nbytes.eq(Mux(item == _Item.SX, 4, Mux(left > W, W, left)))
            row_end = Signal(name=f"{name}_row_end")
            m.d.comb += row_end.eq(left <= W)

            first = Mux(relu2, _Item.GATE, _Item.UP)

            def next_row():
                m.d.sync += [
                    row.eq(row + 1),
                    item.eq(first),
                    g_left.eq(row_bytes),
                    u_left.eq(row_bytes),
                ]
                with m.If(row == a.rows - 1):
                    m.d.sync += finished.eq(1)

            with m.If(begin):
                m.d.sync += [
                    row.eq(0),
                    item.eq(first),
                    finished.eq(0),
                    g_left.eq(row_bytes),
                    u_left.eq(row_bytes),
                ]
            with m.Elif(advance):
                with m.Switch(item):
                    with m.Case(_Item.SX):
                        with m.If(relu2):
                            next_row()
                        with m.Else():
                            m.d.sync += item.eq(_Item.GATE)
                    with m.Case(_Item.GATE):
                        m.d.sync += g_left.eq(g_left - nbytes)
                        with m.If(relu2):
                            m.d.sync += item.eq(_Item.UP)
                        with m.Elif(row_end):
                            next_row()
                    with m.Case(_Item.UP):
                        m.d.sync += u_left.eq(u_left - nbytes)
                        with m.If(row_end):
                            m.d.sync += item.eq(_Item.SX)
                        with m.Elif(relu2):
                            m.d.sync += item.eq(_Item.GATE)
            return SimpleNamespace(item=item, nbytes=nbytes, row_end=row_end, finished=finished)

        # request side: one read per item, pointers run through the contiguous tensors
        rq_adv = Signal()
        rq = walker("rq", rq_adv)
        sx_ptr = Signal(isa.ADDR_BITS + 1)
        g_ptr = Signal(isa.ADDR_BITS + 1)
        u_ptr = Signal(isa.ADDR_BITS + 1)
        m.d.comb += [
            self.rd.valid.eq(running & ~rq.finished),
            self.rd.payload.addr.eq(
                Mux(rq.item == _Item.SX, sx_ptr, Mux(rq.item == _Item.GATE, g_ptr, u_ptr))
            ),
            self.rd.payload.len.eq(rq.nbytes),
            rq_adv.eq(self.rd.valid & self.rd.ready),
        ]
        with m.If(begin):
            m.d.sync += [sx_ptr.eq(a.src_scale), g_ptr.eq(a.gate), u_ptr.eq(a.up)]
        with m.Elif(rq_adv):
            with m.Switch(rq.item):
                with m.Case(_Item.SX):
                    m.d.sync += sx_ptr.eq(sx_ptr + 4)
                with m.Case(_Item.GATE):
                    m.d.sync += g_ptr.eq(g_ptr + rq.nbytes)
                with m.Case(_Item.UP):
                    m.d.sync += u_ptr.eq(u_ptr + rq.nbytes)

        # response side
        rs_adv = Signal()
        rs = walker("rs", rs_adv)

        # ---------------------------------------------------------------- scale unit
        class _Sc(enum.Enum, shape=3):
            WAIT_SX = 0
            WAIT_AMAX = 1
            SG = 2
            SA = 3
            SC = 4

        sc_state = Signal(_Sc)
        tg_m, tu_m = Signal(B), Signal(B)  # tok * c_g, tok * c_u
        tg_s, tu_s = Signal(signed(SHIFT_BITS)), Signal(signed(SHIFT_BITS))
        ag, au = Signal(cfg.quant.hw_in_bits), Signal(cfg.quant.hw_in_bits)  # row amax
        sg_m, su_m, sa_m = Signal(B), Signal(B), Signal(B)
        sg_s, su_s, sa_s = (Signal(signed(SHIFT_BITS), name=n) for n in ("sg_s", "su_s", "sa_s"))
        cur_valid = Signal()  # the join's row scale is set
        cur_m = Signal(B)
        cur_s = Signal(signed(SHIFT_BITS + 1))  # shift - NormConfig.in_frac_bits

        def wide_mul(am, ash, bm, bsh, name):
            """scale_mul with the shift added here, SHIFT_BITS wide (base.normalize keeps
            18 bits, too few for sg^2 * su): the helper gets shifts 0 and returns -r."""
            zero = Const(0, signed(2))
            mant, sh = scale_mul(m, am, zero, bm, zero, B, name)
            full = Signal(signed(SHIFT_BITS), name=f"{name}_full")
            m.d.comb += full.eq(Mux(mant == 0, 0, ash + bsh + sh))
            return mant, full

        rec = self.rdata.payload
        sx_m = rec[: isa.SCALE_MANT_BITS]
        sx_s = rec[isa.SCALE_MANT_BITS : isa.SCALE_MANT_BITS + isa.SCALE_SHIFT_BITS].as_signed()
        ng_m, ng_s = wide_mul(sx_m, sx_s, a.g_mant, a.g_shift, "tok_g")
        nu_m, nu_s = wide_mul(sx_m, sx_s, a.u_mant, a.u_shift, "tok_u")
        og_m, og_s = scale_of_int(m, ag, B, "soi_g")
        ou_m, ou_s = scale_of_int(m, au, B, "soi_u")
        xg_m, xg_s = wide_mul(tg_m, tg_s, og_m, og_s, "sg")
        xu_m, xu_s = wide_mul(tu_m, tu_s, ou_m, ou_s, "su")
        sq_m, sq_s = wide_mul(sg_m, sg_s, sg_m, sg_s, "sg2")
        pc_m, pc_s = wide_mul(sa_m, sa_s, su_m, su_s, "sc")

        up_out, g_out, lut_out = uq.out, gq.out, lut.y
        sx_take = Signal()
        m.d.comb += sx_take.eq(
            (sc_state == _Sc.WAIT_SX)
            & (rs.item == _Item.SX)
            & self.rdata.valid
            & running
            & ~rs.finished
        )
        with m.Switch(sc_state):
            with m.Case(_Sc.WAIT_SX):
                with m.If(sx_take):
                    m.d.sync += [
                        tg_m.eq(ng_m),
                        tg_s.eq(ng_s),
                        tu_m.eq(nu_m),
                        tu_s.eq(nu_s),
                        sc_state.eq(_Sc.WAIT_AMAX),
                    ]
            with m.Case(_Sc.WAIT_AMAX):
                # with the previous row gone from the join, the beats shown are this row's
                with m.If(~cur_valid & up_out.valid & (~relu2 | g_out.valid)):
                    m.d.sync += [
                        ag.eq(g_out.payload.amax),
                        au.eq(up_out.payload.amax),
                        sc_state.eq(_Sc.SG),
                    ]
            with m.Case(_Sc.SG):
                m.d.sync += [
                    sg_m.eq(xg_m),
                    sg_s.eq(xg_s),
                    su_m.eq(xu_m),
                    su_s.eq(xu_s),
                    sc_state.eq(_Sc.SA),
                ]
            with m.Case(_Sc.SA):
                with m.If(relu2):
                    # a = g^2 / 2^(F-1): the scale's exponent follows (zero stays zero)
                    m.d.sync += [sa_m.eq(sq_m), sa_s.eq(Mux(sq_m == 0, 0, sq_s - (FB - 1)))]
                with m.Else():
                    m.d.sync += [sa_m.eq(1 << (B - 1)), sa_s.eq(B - 1 + ac.out_frac_bits)]
                m.d.sync += sc_state.eq(_Sc.SC)
            with m.Case(_Sc.SC):
                m.d.sync += [
                    cur_m.eq(pc_m),
                    cur_s.eq(pc_s - nc.in_frac_bits),
                    cur_valid.eq(1),
                    sc_state.eq(_Sc.WAIT_SX),
                ]

        # ---------------------------------------------------------------- adapters
        def adapter(name: str, load, extra=()):
            """One DMA beat out as SUB beats of L lanes (``load``: take the response beat);
            ``extra``: signals whose values are latched with the beat (``latched``)."""
            buf = Signal(8 * W, name=f"{name}_buf")
            n_sub = Signal(range(SUB + 1), name=f"{name}_n_sub")
            idx = Signal(range(SUB + 1), name=f"{name}_idx")
            end = Signal(name=f"{name}_end")
            valid = Signal(name=f"{name}_valid")
            ready = Signal(name=f"{name}_ready")
            latched = [Signal.like(v, name=f"{name}_{i}") for i, v in enumerate(extra)]
            final = idx == n_sub - 1
            fire = valid & ready
            can_load = Signal(name=f"{name}_can_load")
            m.d.comb += can_load.eq(~valid | (fire & final))
            with m.If(fire):
                with m.If(final):
                    m.d.sync += valid.eq(0)
                with m.Else():
                    m.d.sync += idx.eq(idx + 1)
            with m.If(load):
                # lanes beyond the beat's bytes are the zeros the port returns
                m.d.sync += [
                    buf.eq(self.rdata.payload),
                    n_sub.eq((rs.nbytes + 4 * L - 1) >> (4 * L).bit_length() - 1),
                    idx.eq(0),
                    end.eq(rs.row_end),
                    valid.eq(1),
                ]
                m.d.sync += [s.eq(v) for s, v in zip(latched, extra, strict=False)]
            with m.If(begin):
                m.d.sync += valid.eq(0)
            return SimpleNamespace(
                valid=valid,
                ready=ready,
                data=buf.word_select(idx, 32 * L),
                last=end & final,
                can_load=can_load,
                latched=latched,
            )

        g_load, u_load = Signal(), Signal()
        ga = adapter("ga", g_load, (tg_m, tg_s))
        ua = adapter("ua", u_load)
        m.d.comb += [
            self.rdata.ready.eq(
                running
                & ~rs.finished
                & Mux(
                    rs.item == _Item.SX,
                    sc_state == _Sc.WAIT_SX,
                    Mux(rs.item == _Item.GATE, ga.can_load, ua.can_load),
                )
            ),
            rs_adv.eq(self.rdata.valid & self.rdata.ready),
            g_load.eq(rs_adv & (rs.item == _Item.GATE)),
            u_load.eq(rs_adv & (rs.item == _Item.UP)),
        ]

        # up -> quantizer; gate -> quantizer (relu2) or requant register -> SiLU LUT
        m.d.comb += [
            uq.inp.valid.eq(ua.valid),
            uq.inp.payload.data.as_value().eq(ua.data),
            uq.inp.payload.last.eq(ua.last),
            ua.ready.eq(uq.inp.ready),
        ]
        m.d.comb += [
            gq.inp.valid.eq(ga.valid & relu2),
            gq.inp.payload.data.as_value().eq(ga.data),
            gq.inp.payload.last.eq(ga.last),
        ]
        sr_valid, sr_last = Signal(), Signal()
        sr_data = [Signal(signed(ac.in_bits), name=f"sr_g{i}") for i in range(L)]
        sr_free = ~sr_valid | lut.x.ready
        m.d.comb += ga.ready.eq(Mux(relu2, gq.inp.ready, sr_free))
        gm_l, gs_l = ga.latched
        g_s = gs_l - ac.in_frac_bits
        with m.If(lut.x.valid & lut.x.ready):
            m.d.sync += sr_valid.eq(0)
        with m.If(ga.valid & ~relu2 & sr_free):
            m.d.sync += [sr_valid.eq(1), sr_last.eq(ga.last)]
            for i in range(L):
                g = requant(
                    m,
                    ga.data[32 * i : 32 * i + 32],
                    gm_l,
                    g_s,
                    ac.in_bits,
                    cfg.requant.shift_max,
                    f"g{i}",
                )
                m.d.sync += sr_data[i].eq(g)
        with m.If(begin):
            m.d.sync += sr_valid.eq(0)
        m.d.comb += [lut.x.valid.eq(sr_valid), lut.x.payload.last.eq(sr_last)]
        m.d.comb += [lut.x.payload.data[i].eq(sr_data[i]) for i in range(L)]

        # ---------------------------------------------------------------- join + product
        stall = Signal()
        fire = Signal()
        a_valid = Mux(relu2, g_out.valid, lut_out.valid)
        m.d.comb += [
            fire.eq(a_valid & up_out.valid & cur_valid & ~stall),
            g_out.ready.eq(fire & relu2),
            lut_out.ready.eq(fire & ~relu2),
            up_out.ready.eq(fire),
        ]
        with m.If(fire & up_out.payload.last):
            m.d.sync += cur_valid.eq(0)
        with m.If(begin):
            m.d.sync += [cur_valid.eq(0), sc_state.eq(_Sc.WAIT_SX)]

        def stage(value, name, shape=None):
            r = Signal(value.shape() if shape is None else shape, name=name)
            with m.If(~stall):
                m.d.sync += r.eq(value)
            return r

        def carry(prev, n):
            """valid, last, scale mant and shift of the previous stage, one stage on."""
            return [
                stage(v, f"p{n}_{k}")
                for k, v in zip(("valid", "last", "m", "s"), prev, strict=False)
            ]

        gin = [Mux(relu2, g_out.payload.data[i], lut_out.payload.data[i]) for i in range(L)]
        p1 = [fire, up_out.payload.last, cur_m, cur_s]
        p1 = carry(p1, 1)
        p1_x = [stage(gin[i], f"p1_x{i}", signed(self.a_bits)) for i in range(L)]
        p1_u = [stage(up_out.payload.data[i], f"p1_u{i}") for i in range(L)]
        p2 = carry(p1, 2)
        p2_a, p2_u = [], []
        for i in range(L):
            pos = Mux(p1_x[i] < 0, 0, p1_x[i])[: self.a_bits - 1]
            sq = rhu(pos * pos, FB - 1)  # < 2^(F-1): g16 <= act_max
            p2_a.append(stage(Mux(relu2, sq, p1_x[i]), f"p2_a{i}", signed(self.a_bits)))
            p2_u.append(stage(p1_u[i], f"p2_u{i}"))
        p3 = carry(p2, 3)
        p3_prod = [
            stage(p2_a[i] * p2_u[i], f"p3_prod{i}", signed(self.prod_bits)) for i in range(L)
        ]
        p4 = carry(p3, 4)
        p3_m, p3_s = p3[2], p3[3]
        p4_y = [
            stage(
                requant(m, p3_prod[i], p3_m, p3_s, nc.in_bits, cfg.requant.shift_max, f"y{i}"),
                f"p4_y{i}",
            )
            for i in range(L)
        ]
        p4_valid, p4_last = p4[0], p4[1]
        with m.If(begin):
            m.d.sync += [p[0].eq(0) for p in (p1, p2, p3, p4)]

        # ---------------------------------------------------------------- packer
        pk_buf = Signal(32 * E)
        pk_idx = Signal(range(SUB + 1))
        w_ptr = Signal(isa.ADDR_BITS + 1)
        w_left = Signal(unsigned(isa.DIM_BITS + 2))
        rows_out = Signal(isa.ROWS_BITS + 1)
        completes = (pk_idx == SUB - 1) | p4_last
        take = Signal()
        m.d.comb += [
            stall.eq(p4_valid & completes & self.wr.valid & ~self.wr.ready),
            take.eq(p4_valid & ~stall),
        ]
        merged = Signal(32 * E)
        m.d.comb += [merged.eq(pk_buf), merged.word_select(pk_idx, 32 * L).eq(Cat(*p4_y))]
        with m.If(self.wr.valid & self.wr.ready):
            m.d.sync += self.wr.valid.eq(0)
        with m.If(take):
            with m.If(completes):
                wlen = Mux(p4_last, w_left, W)
                m.d.sync += [
                    self.wr.valid.eq(1),
                    self.wr.payload.addr.eq(w_ptr),
                    self.wr.payload.len.eq(wlen),
                    self.wr.payload.data.eq(merged),
                    w_ptr.eq(w_ptr + wlen),
                    pk_idx.eq(0),
                    w_left.eq(Mux(p4_last, row_bytes, w_left - W)),
                ]
                with m.If(p4_last):
                    m.d.sync += rows_out.eq(rows_out + 1)
            with m.Else():
                m.d.sync += [pk_buf.eq(merged), pk_idx.eq(pk_idx + 1)]
        with m.If(begin):
            m.d.sync += [w_ptr.eq(a.dst), w_left.eq(row_bytes), pk_idx.eq(0), rows_out.eq(0)]

        # ---------------------------------------------------------------- control
        err = self.checks(m).error()
        with m.FSM():
            passed = self.check_states(m, ("CHECK", err))
            with m.State("RUN"):
                m.d.comb += running.eq(1)
                # every row written and accepted (all reads were consumed to get there)
                with m.If((rows_out == a.rows) & ~self.wr.valid):
                    self.finish(m, ErrorCode.NONE)
        m.d.comb += begin.eq(passed["CHECK"])
        return m
