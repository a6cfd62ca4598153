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

hw_act_quant16 is golden's 16-bit hardware quantizer (``golden.quant.hw_act_quant`` with
act_bits = F): amax = max|x| over the row, then ``(x * recip + 2^(R-1)) >> R``; silu_fx
is ``hw.activations.lut_lane`` (``LutActivation``'s lane).

Checks: the ACT contract (``golden.isa.CONTRACTS``), before any memory access
---------------------------------------------------------------------------
kind not an ``ActKind`` (5 .. 7: golden's decoder says BAD_OPERAND); rows, dim >= 1 and
the engine limit dim <= ``max_dim`` (``LIMITS``; BAD_DIM); gate, up: 4-byte aligned
(ALIGN) and [addr, addr + rows*dim*4) inside [mem_lo, mem_hi) (ADDR_RANGE); src_scale:
aligned to its 4-byte record, rows*4 bytes in range; dst as gate. The byte counts, the
spans, each condition and the error code are registered in turn (``ArgChecks
(registered=3)``); the check state reads the code in the fifth cycle of the command. No
data-dependent error exists.

Micro-architecture: two passes over each row, no row buffer
-----------------------------------------------------------
The quantizers need a row's amax before its first output; instead of buffering the row
(two 16 KB buffers per row of 4096), the engine reads it twice: pass 1 finds the amax,
pass 2 reads gate and up again and computes. Per row the reads are (each walker, the
request side and the response side, follows the same sequence; responses come in
request order)::

    sx (4 bytes); pass 1: [gate chunks (relu2)], up chunks (LA elements each);
    pass 2: (gate chunk, up chunk) pairs of 2L elements each

LA = ``amax_lanes`` (``AccelConfig.act_amax_lanes``, 16 on kv260), L = ``lanes``
(``AccelConfig.act_lanes``, 4 on kv260). The requests of pass 2 follow those of pass 1
at once, so the memory latency is hidden behind the per-row scale steps.

- Pass 1: one response beat of LA int32 per cycle into a max tree of the keys
  ``2*(x ^ sign) + sign`` (the largest key has the largest |x| = (x ^ sign) + sign: no
  negation per element), one tree level per pipeline stage, then a running max per
  stream; amax = c + s at the stream's end.
- Row scale (``hw.pipeline.ScalePipe``, one scale_mul / scale_of_int per cycle, 8 cycles
  each, run as a short program): tok*c_g, tok*c_u when sx arrives; after pass 1
  scale_of_int(ag), scale_of_int(au), sg, su, sa, the row's product scale sc; beside it
  ``hw.pipeline.Reciprocal`` for recip_g (relu2) and recip_u. Then the row's parameters
  go live (once the previous row has left the lanes): the gate's multiplier and requant
  parameters (relu2: recip_g, right shift R_g -- the quantizer as a requant whose
  saturation never acts; silu: tok*c_g, its shift - in_frac_bits, saturating to
  ActivationConfig.in_bits), up's recip_u and R_u, and sc for the output requant.
- Pass 2: ``hw.ops.elem.pair_reader`` (gate chunk, up chunk) -> L lanes per cycle, each:
  S0 (g, u) registered; S1-S2 g * k_g and u * recip_u (``hw.pipeline.mul_split``: two
  DSP48E2 partial products, then their sum); S3-S5 g16 (``rss_lane``), S3-S4 u16
  (``quant_lane``); relu2: relu, square (a DSP), rhu(., F - 1); silu: the SiLU LUT lane
  (5 stages); a registered; a * u16 (a DSP); * sc mantissa (``mul_split``);
  ``rss_lane`` to int32 -> ``hw.ops.elem.packer``: one write of 2L int32 per chunk. The
  lanes freeze while a write waits.

Cycles (no memory stalls, read latency 1; ``expected_cycles``)
-------------------------------------------------------------
Per row: the record and pass 1 (ceil(dim/LA) response beats per stream: relu2 two
streams, silu one), the row scale after pass 1 (``ROW_SCALE`` + log2(LA) cycles: the
amax tree, then the dependent scale_muls -- relu2 four, silu three, 8 cycles each -- and
the parameters going live; the reciprocals run beside them), pass 2 (2 cycles per chunk
of 2L: the pair of response beats); then once the lanes' pipeline and the last write::

    rows * (1 + s * ceil(dim/LA) + ROW_SCALE + log2(LA) + 2 * ceil(dim/(2L)))
        + FIXED_CYCLES + latency

(s = 2 for relu2, 1 for silu; ROW_SCALE = 44 (relu2) / 37 (silu); FIXED_CYCLES = 25: the
checks, the 17-stage lanes, the last write, done), measured exactly by sim/test_op_act.py.
The next row's record and pass 1 follow its predecessor's pass 2 at once (reads run
ahead). BitNet-0.73B FFN (relu2, dim 4096, LA = 16, L = 4): 1 + 512 + 48 + 1024 + 25 +
latency = 1610 + latency cycles for one token (the memory carries 64 bytes per cycle in
pass 1, 32 bytes of reads and 16 of writes per cycle in pass 2; the kv260 point's DRAM
gives ~68 bytes per cycle).

NL-ADC kinds (RELU2_NLADC, RELU2_LINADC, SILU_NLADC; ``golden.model.op_act``'s ``adc``)
---------------------------------------------------------------------------------------
Before the first row the engine reads the threshold table (2^N - 1 int16 at
``adc_table``, N = ``adc_bits``; one 2-byte request per entry) into the twin
``hw.nl_adc.NLADC`` (``runtime_bits``: N from the command, a 2^act_max_bits-word RAM,
one comparator per lane sharing the ramp counter). Rows run as relu2 (RELU2_* kinds: the
gate's 16-bit quantizer) or silu (SILU_NLADC: the gate requantized to Q7.8). In pass 2
the sub-beat at G16 (the gate value X of each lane) is held there while the twin
converts it: 2^N cycles (its ramp-reset cycle and 2^N - 1 steps, all lanes compared with
table[k] in step k) plus ``ADC_HANDOFF`` = 3 (into the twin, its codes c registered with
2c + 1, c == 0 and max(2c + 1 - 2^N, 0), on to G16 + 1); the whole lane pipeline holds
meanwhile. One multiplier per lane (the relu2 square's DSP) then forms a: RELU2_NLADC
(c ? 2c + 1 : 0) * 1, RELU2_LINADC t * t (t = max(2c + 1 - 2^N, 0)), SILU_NLADC g * (2c
+ 1) then rhu(., N + 1) (two stages); sa's shift offset follows the kind and N. Cycles
(``expected_cycles(..., adc_bits=N)``, exact on the bench): with q = 1 + s *
ceil(dim/LA) + ROW_SCALE + log2(LA), sb = 2 ceil(dim/(2L)) sub-beats per row and
p = 2^N + 3::

    q + sb p + (rows - 1) max(sb p + 23, q + 2 + (sb - 6) p, q + sb)
        + 2^N - 1 + FIXED_CYCLES + latency

(a later row is bound by its conversions and the lanes' drain, or by its record, pass 1
and scale, which overlap the last 6 conversions of the row before, or all of them). The
conversions dominate: BitNet-0.73B's FFN row (dim 4096, L = 4) at N = 6 is 1024 * 67 =
68,608 cycles, against 1,024 for the digital kinds.

Differences from the golden backend
-----------------------------------
- ``max_dim`` (``AccelConfig.max_dim``): dim > max_dim is BAD_DIM (golden takes any dim);
  the engine itself holds no row.
- gate, up and dst are read twice / streamed: a dst that partially overlaps gate or up
  (other than dst == gate or dst == up exactly) gives different results.
- ``lanes``, ``amax_lanes``: change only timing.
- ``cfg.quant.hw_in_bits`` must be 32 (the accumulators are int32) and
  ``cfg.activation.in_bits`` equal to ``cfg.forward.ffn_bits`` (the gate's requant and
  quantizer share one datapath; checked at build).
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import enum

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ActKind, Opcode
from hw.activations import LutActivation, lut_lane
from hw.fixed import rhu
from hw.nl_adc import NLADC
from hw.pipeline import (
    RSS_STAGES,
    Pipe,
    Reciprocal,
    RssParams,
    ScalePipe,
    mul_split,
    quant_lane,
    rss_lane,
)

from .base import Engine
from .elem import Chunks, Rows, packer, pair_reader

SHIFT_BITS = 20  # scale shifts: sg^2 * su reaches |shift| < 3 * 2^16 + 256 < 2^18


# cycles per row between pass 1's last beat and pass 2's first (module docstring), less
# the amax tree's log2(amax_lanes) levels: relu2 runs 4 dependent scale_muls after amax
# (scale_of_int(ag), sg, sa, sc), silu 3
ROW_SCALE = {ActKind.RELU2: 44, ActKind.SILU: 37}
FIXED_CYCLES = 25  # the checks, the lanes' pipeline, the last write, done
RELU2_KINDS = (ActKind.RELU2, ActKind.RELU2_NLADC, ActKind.RELU2_LINADC)


ADC_HANDOFF = 3  # into the twin, its result captured, the sub-beat moves on
ADC_BUFFER = 6  # sub-beats the lane stages S0 .. G16 hold while the twin converts
ADC_DRAIN = 23  # after a row's last conversion: the lanes drain, the next row goes live
ADC_LIVE = 2  # the next row's parameters live -> its first sub-beat converts


def conversion_cycles(adc_bits: int) -> int:
    """Cycles per sub-beat (L lanes) of the NL-ADC kinds: the twin's 2^N (its ramp-reset
    cycle and 2^N - 1 steps, ``hw.nl_adc.cycles_per_conversion``) plus ``ADC_HANDOFF``
    (the lanes hold the sub-beat meanwhile)."""
    return (1 << adc_bits) + ADC_HANDOFF


def expected_cycles(
    rows: int,
    dim: int,
    kind,
    lanes: int,
    amax_lanes: int,
    latency: int = 1,
    adc_bits: int = 0,
) -> int:
    """The module docstring's cycle formula (no stalls, read latency ``latency``)."""
    kind = ActKind(kind)
    relu2 = kind in RELU2_KINDS
    streams = 2 if relu2 else 1
    chunks = -(-dim // (2 * lanes))
    tree = (amax_lanes - 1).bit_length()
    scale = ROW_SCALE[ActKind.RELU2 if relu2 else ActKind.SILU]
    q = 1 + streams * -(-dim // amax_lanes) + scale + tree  # record, pass 1, row scale
    if not isa.adc_kind(kind):
        return rows * (q + 2 * chunks) + FIXED_CYCLES + latency
    sb, p = 2 * chunks, conversion_cycles(adc_bits)  # sub-beats per row, cycles per one
    # a later row: bound by the conversions and the drain, or by its record, pass 1 and
    # scale (which overlap the last ADC_BUFFER conversions of the row before, or all)
    later = max(sb * p + ADC_DRAIN, q + ADC_LIVE + (sb - ADC_BUFFER) * p, q + sb)
    table = (1 << adc_bits) - 1  # one two-byte read per entry, before the first row
    return q + sb * p + (rows - 1) * later + table + FIXED_CYCLES + latency


class _Item(enum.Enum, shape=3):
    TBL = 5  # the NL-ADC threshold table (one entry per request), before the first row
    SX = 0
    P1G = 1  # pass 1, gate
    P1U = 2  # pass 1, up
    P2G = 3  # pass 2, gate
    P2U = 4  # pass 2, up


class ActEngine(Engine):
    """ACT op engine (see module docstring)."""

    OPCODE = Opcode.ACT
    DESIGN_FIELDS = {"max_dim": "max_dim", "lanes": "act_lanes", "amax_lanes": "act_amax_lanes"}
    LIMITS = ("dim <= max_dim",)

    def __init__(
        self,
        cfg: DatapathConfig,
        dma_bytes: int,
        *,
        max_dim: int,
        lanes: int,
        amax_lanes: int,
    ):
        if not isinstance(cfg, DatapathConfig):
            raise ValueError(f"cfg: expected a DatapathConfig, got {type(cfg).__name__}")
        if dma_bytes < 4 or dma_bytes % 4:
            raise ValueError(f"dma_bytes: expected a positive multiple of 4, got {dma_bytes}")
        for name, v in (("lanes", lanes), ("amax_lanes", amax_lanes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if 8 * lanes > dma_bytes:
            raise ValueError(f"lanes: a chunk of 2 * {lanes} int32 exceeds {dma_bytes} bytes")
        if amax_lanes & (amax_lanes - 1) or 4 * amax_lanes > dma_bytes:
            raise ValueError(
                f"amax_lanes: expected a power of two of at most {dma_bytes // 4}, got {amax_lanes}"
            )
        if not 1 <= max_dim < (1 << isa.DIM_BITS):
            raise ValueError(f"max_dim: expected 1..{(1 << isa.DIM_BITS) - 1}, got {max_dim}")
        if cfg.quant.hw_in_bits != 32:
            raise ValueError(
                f"cfg.quant.hw_in_bits: the engine feeds int32 accumulators, "
                f"needs 32, got {cfg.quant.hw_in_bits}"
            )
        if cfg.activation.in_bits != cfg.forward.ffn_bits:
            raise ValueError(
                f"cfg.activation.in_bits ({cfg.activation.in_bits}) must equal "
                f"cfg.forward.ffn_bits ({cfg.forward.ffn_bits}): one gate datapath"
            )
        ad = cfg.adc
        if ad.threshold_bits != cfg.forward.ffn_bits or (
            ad.threshold_frac_bits != cfg.activation.in_frac_bits
        ):
            raise ValueError(
                "cfg.adc: the NL-ADC kinds convert the gate datapath's value: threshold_bits "
                "must equal ffn_bits and threshold_frac_bits ActivationConfig.in_frac_bits"
            )
        # the NL-ADC twin: act_max_bits-bit table and codes, one comparator per lane
        self.adc_cfg = replace(ad, bits=ad.act_max_bits, lanes=lanes)
        # a: relu2 < 2^(F-1), a SiLU output, or (RELU2_LINADC) an odd square < 2^(2N);
        # |a * u16| must be an int32 for golden's requant
        self.a_bits = max(cfg.forward.ffn_bits, cfg.activation.out_bits, 2 * ad.act_max_bits + 1)
        self.prod_bits = self.a_bits + cfg.forward.ffn_bits - 1
        if self.prod_bits > cfg.requant.in_bits:
            raise ValueError(
                f"cfg: a * u16 needs {self.prod_bits} bits, more than "
                f"RequantConfig.in_bits = {cfg.requant.in_bits}"
            )
        self.max_dim = max_dim
        self.lanes = lanes
        self.amax_lanes = amax_lanes
        # golden's hw_act_quant16: the INT8 quantizer widened to ffn_bits
        self.quant16 = replace(cfg.quant, act_bits=cfg.forward.ffn_bits)
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        L, LA = self.lanes, self.amax_lanes
        C = 2 * L  # pass-2 chunk
        B = cfg.requant.mult_bits
        FB = cfg.forward.ffn_bits
        q16 = self.quant16
        ac, nc, rc = cfg.activation, cfg.norm, cfg.requant
        a = self.op_args
        ptr_w = isa.ADDR_BITS + 1

        relu2 = Signal()  # the gate through the 16-bit quantizer (relu2 and its ADC kinds)
        adc = Signal()  # an NL-ADC kind: the table first, the gate through the twin
        m.d.comb += [
            relu2.eq(
                (a.kind == ActKind.RELU2)
                | (a.kind == ActKind.RELU2_NLADC)
                | (a.kind == ActKind.RELU2_LINADC)
            ),
            adc.eq(isa.adc_kind(a.kind)),
        ]
        # the kind's flags and the ADC's N as registers (the command is held until done)
        k_nl, k_lin, k_sadc, k_lut, k_adc = (
            Signal(name=n) for n in ("k_nl", "k_lin", "k_sadc", "k_lut", "k_adc")
        )
        nbits = Signal(range(self.adc_cfg.bits + 1))
        ad_n = Signal(range(1 << isa.ADC_BITS_BITS))
        m.d.comb += ad_n.eq(a.adc_bits)
        m.d.sync += [
            k_nl.eq(a.kind == ActKind.RELU2_NLADC),
            k_lin.eq(a.kind == ActKind.RELU2_LINADC),
            k_sadc.eq(a.kind == ActKind.SILU_NLADC),
            k_lut.eq(a.kind == ActKind.SILU),
            k_adc.eq(adc),
            nbits.eq(ad_n),
        ]
        # sa = sg^2 / 2^e: relu2 e = F - 1; RELU2_NLADC 2(F-1) - N - 1; RELU2_LINADC 2(F-1) - 2N
        sa_off = Signal(range(2 * FB))
        m.d.sync += sa_off.eq(
            Mux(k_nl, 2 * (FB - 1) - 1 - nbits, Mux(k_lin, 2 * (FB - 1) - 2 * nbits, FB - 1))
        )
        tbl_last = Signal(range(1 << self.adc_cfg.bits))  # index of the table's last entry
        m.d.sync += tbl_last.eq((1 << nbits) - 2)
        row_bytes = Signal(unsigned(isa.DIM_BITS + 2))
        m.d.comb += row_bytes.eq(a.dim * 4)
        running = Signal()
        begin = Signal()  # the checks passed: initialize everything

        # ---------------------------------------------------------------- walkers
        def walker(name: str, advance) -> SimpleNamespace:
            """The row's item sequence (module docstring); ``advance``: the current item
            was issued / consumed."""
            item = Signal(_Item, name=f"{name}_item")
            t = Signal(range(1 << self.adc_cfg.bits), name=f"{name}_t")  # table entry
            rows = Rows(a.rows, name)
            c1, c2 = Chunks(a.dim, LA, f"{name}_p1"), Chunks(a.dim, C, f"{name}_p2")
            p1 = (item == _Item.P1G) | (item == _Item.P1U)
            n = Signal(range(max(LA, C) + 1), name=f"{name}_n")
            m.d.comb += n.eq(Mux(p1, c1.n, c2.n))
            end = Mux(p1, c1.end, c2.end)
            with m.If(begin):
                m.d.sync += [item.eq(Mux(adc, _Item.TBL, _Item.SX)), t.eq(0)]
                m.d.sync += rows.first() + c1.first() + c2.first()
            with m.Elif(advance):
                with m.Switch(item):
                    with m.Case(_Item.TBL):
                        m.d.sync += t.eq(t + 1)
                        with m.If(t == tbl_last):
                            m.d.sync += item.eq(_Item.SX)
                    with m.Case(_Item.SX):
                        m.d.sync += item.eq(Mux(relu2, _Item.P1G, _Item.P1U))
                    with m.Case(_Item.P1G):
                        with m.If(c1.end):
                            m.d.sync += [item.eq(_Item.P1U)] + c1.first()
                        with m.Else():
                            m.d.sync += c1.advance()
                    with m.Case(_Item.P1U):
                        with m.If(c1.end):
                            m.d.sync += [item.eq(_Item.P2G)] + c1.first()
                        with m.Else():
                            m.d.sync += c1.advance()
                    with m.Case(_Item.P2G):
                        m.d.sync += item.eq(_Item.P2U)
                    with m.Case(_Item.P2U):
                        with m.If(c2.end):
                            m.d.sync += [item.eq(_Item.SX)] + rows.advance() + c2.first()
                        with m.Else():
                            m.d.sync += [item.eq(_Item.P2G)] + c2.advance()
            return SimpleNamespace(item=item, n=n, end=end, rows=rows, c2=c2, t=t)

        # request side: per stream a row pointer and an offset within the row
        rq_adv = Signal()
        rq = walker("rq", rq_adv)
        sx_ptr = Signal(ptr_w)
        g_row, u_row = Signal(ptr_w), Signal(ptr_w)
        off = Signal(isa.DIM_BITS + 3)  # byte offset in the row of the current chunk
        is_g = (rq.item == _Item.P1G) | (rq.item == _Item.P2G)
        m.d.comb += [
            self.rd.valid.eq(running & rq.rows.more),
            self.rd.payload.addr.eq(
                Mux(
                    rq.item == _Item.TBL,
                    a.adc_table + 2 * rq.t,
                    Mux(rq.item == _Item.SX, sx_ptr, Mux(is_g, g_row, u_row) + off),
                )
            ),
            self.rd.payload.len.eq(
                Mux(
                    rq.item == _Item.TBL,
                    2,
                    Mux(rq.item == _Item.SX, isa.SCALE_RECORD_BYTES, rq.n * 4),
                )
            ),
            rq_adv.eq(self.rd.valid & self.rd.ready),
        ]
        with m.If(begin):
            m.d.sync += [sx_ptr.eq(a.src_scale), g_row.eq(a.gate), u_row.eq(a.up), off.eq(0)]
        with m.Elif(rq_adv):
            with m.Switch(rq.item):
                with m.Case(_Item.SX):
                    m.d.sync += [sx_ptr.eq(sx_ptr + isa.SCALE_RECORD_BYTES), off.eq(0)]
                with m.Case(_Item.P1G, _Item.P1U):
                    m.d.sync += off.eq(Mux(rq.end, 0, off + 4 * LA))
                with m.Case(_Item.P2U):
                    m.d.sync += off.eq(off + 4 * C)
                    with m.If(rq.end):
                        m.d.sync += [g_row.eq(g_row + row_bytes), u_row.eq(u_row + row_bytes)]

        # response side
        rs_adv = Signal()
        rs = walker("rs", rs_adv)
        rs_live = Signal()
        m.d.comb += rs_live.eq(running & rs.rows.more & self.rdata.valid)

        # ---------------------------------------------------------------- pass 1
        # keys 2*(x ^ sign) + sign: one tree level per stage, then a running max per stream
        p1_in = rs_live & ((rs.item == _Item.P1G) | (rs.item == _Item.P1U))
        # the beat registered as it is (FFs only: the keys fold into the first level's LUTs)
        beat = Signal(32 * LA, name="amax_beat")
        m.d.sync += beat.eq(self.rdata.payload[: 32 * LA])
        level = []
        for i in range(LA):
            x = beat[32 * i : 32 * i + 32]
            s = x[31]
            level.append(Cat(s, (x ^ s.replicate(32))[:31]))
        tag = Signal(3, name="amax_tag")  # valid, up, the stream's end
        m.d.sync += tag.eq(Cat(p1_in, rs.item == _Item.P1U, rs.end))
        k = 0
        while len(level) > 1:
            nxt = [Signal(32, name=f"amax_l{k}_{j}") for j in range(len(level) // 2)]
            for j, r in enumerate(nxt):
                x0, x1 = level[2 * j], level[2 * j + 1]
                m.d.sync += r.eq(Mux(x1 > x0, x1, x0))
            t = Signal(3, name=f"amax_tag{k}")
            m.d.sync += t.eq(tag)
            level, tag, k = nxt, t, k + 1
        key = level[0]
        t_valid, t_up, t_end = tag[0], tag[1], tag[2]
        run_g, run_u = Signal(32, name="run_g"), Signal(32, name="run_u")
        first_g, first_u = Signal(init=1), Signal(init=1)
        amax_g, amax_u = Signal(32), Signal(32)  # the row's amax (c + s of the max key)
        fin_g, fin_u = Signal(), Signal()  # the running max is final
        have_g, have_u = Signal(), Signal()  # amax_* valid
        for up, run, first, fin in ((0, run_g, first_g, fin_g), (1, run_u, first_u, fin_u)):
            hit = t_valid & (t_up == up)
            with m.If(hit):
                m.d.sync += [
                    run.eq(Mux(first | (key > run), key, run)),
                    first.eq(t_end),
                    fin.eq(t_end),
                ]
        with m.If(fin_g):
            m.d.sync += [amax_g.eq(run_g[1:] + run_g[0]), have_g.eq(1), fin_g.eq(0)]
        with m.If(fin_u):
            m.d.sync += [amax_u.eq(run_u[1:] + run_u[0]), have_u.eq(1), fin_u.eq(0)]

        # ---------------------------------------------------------------- row scale
        sp = ScalePipe(m, B, SHIFT_BITS, 2 * B, "sc")
        m.submodules.rcp_g = rcp_g = Reciprocal(q16)
        m.submodules.rcp_u = rcp_u = Reciprocal(q16)
        rec = self.rdata.payload
        tok_m = Signal(B)
        tok_s = Signal(signed(SHIFT_BITS))
        regs = {
            n: (Signal(B, name=f"{n}_m"), Signal(signed(SHIFT_BITS), name=f"{n}_s"))
            for n in ("tg", "tu", "og", "ou", "sg", "su", "sa", "sc")
        }
        DST = {n: i for i, n in enumerate(regs)}
        got = {n: Signal(name=f"got_{n}") for n in regs}
        # the op in flight: its destination travels with it
        dst_pipe = [Signal(range(len(regs)), name=f"sc_dst{i}") for i in range(sp.LATENCY)]
        dst_in = Signal(range(len(regs)))
        m.d.sync += [dst_pipe[0].eq(dst_in)]
        m.d.sync += [dst_pipe[i].eq(dst_pipe[i - 1]) for i in range(1, len(dst_pipe))]
        with m.If(sp.done):
            with m.Switch(dst_pipe[-1]):
                for n, i in DST.items():
                    with m.Case(i):
                        rm, rsh = regs[n]
                        if n == "sa":  # a = g^2 / 2^e: the exponent follows
                            shift = Mux(sp.mant == 0, 0, sp.shift - sa_off)
                        else:
                            shift = sp.shift
                        m.d.sync += [rm.eq(sp.mant), rsh.eq(shift), got[n].eq(1)]

        def issue(dst, a_op, b_op=None, soi_v=None):
            m.d.comb += [sp.go.eq(1), dst_in.eq(DST[dst])]
            if soi_v is not None:
                m.d.comb += [sp.soi.eq(1), sp.v.eq(soi_v)]
            else:
                m.d.comb += [
                    sp.a_m.eq(a_op[0]),
                    sp.a_s.eq(a_op[1]),
                    sp.b_m.eq(b_op[0]),
                    sp.b_s.eq(b_op[1]),
                ]

        c_g = (a.g_mant, a.g_shift)
        c_u = (a.u_mant, a.u_shift)
        tok = (tok_m, tok_s)

        # the live parameters of the lanes (changed only while the lanes are empty)
        k_g = Signal(q16.recip_bits)  # the gate's multiplier: recip_g or tok*c_g's mantissa
        s_g = Signal(signed(SHIFT_BITS + 1))  # its shift (R_g, or tok*c_g's - in_frac_bits)
        k_u = Signal(q16.recip_bits)
        t_u = Signal(range(32))  # R_u - 1 - F_q
        m_c = Signal(B)
        s_c = Signal(signed(SHIFT_BITS + 1))
        QG = 32 + q16.recip_bits  # |g * k_g| < 2^(31 + recip_bits)
        rp_g = RssParams(QG, ac.in_bits, rc.shift_max, "rp_g")
        rp_g.setup(m, s_g)
        QC = self.prod_bits + B  # |a * u16 * m_c| < 2^(prod_bits - 1 + B)
        rp_c = RssParams(QC, nc.in_bits, rc.shift_max, "rp_c")
        rp_c.setup(m, s_c)
        live = Signal()  # the row's parameters are live: pass 2 may enter the lanes
        lanes_busy = Signal()

        sx_take = Signal()
        rcp_start = Signal()
        m.d.comb += [
            rcp_g.amax.eq(amax_g),
            rcp_u.amax.eq(amax_u),
            rcp_g.start.eq(rcp_start & relu2),
            rcp_u.start.eq(rcp_start),
        ]
        rcp_done = Signal()
        wait = Signal(range(4))
        with m.FSM(name="scale"):
            with m.State("IDLE"):
                m.d.comb += sx_take.eq(rs_live & (rs.item == _Item.SX) & ~live)
                with m.If(sx_take):
                    m.d.sync += [
                        tok_m.eq(rec[: isa.SCALE_MANT_BITS]),
                        tok_s.eq(rec[isa.SCALE_MANT_BITS : 32].as_signed()),
                    ]
                    m.d.sync += [g.eq(0) for g in got.values()]
                    m.next = "TOK_G"
            with m.State("TOK_G"):
                issue("tg", tok, c_g)
                m.next = "TOK_U"
            with m.State("TOK_U"):
                issue("tu", tok, c_u)
                m.next = "AMAX"
            with m.State("AMAX"):
                with m.If(have_u & (have_g | ~relu2)):
                    m.d.comb += rcp_start.eq(1)
                    m.d.sync += [have_g.eq(0), have_u.eq(0), rcp_done.eq(0)]
                    m.next = "SOI_G"
            with m.State("SOI_G"):
                with m.If(relu2):
                    issue("og", None, soi_v=amax_g)
                m.next = "SOI_U"
            with m.State("SOI_U"):
                issue("ou", None, soi_v=amax_u)
                m.next = "SG_SU"
            with m.State("SG_SU"):  # sg then su (relu2), su (silu)
                with m.If(got["ou"] & got["tu"] & (got["og"] | ~relu2)):
                    with m.If(relu2):
                        issue("sg", regs["tg"], regs["og"])
                        m.next = "SU"
                    with m.Else():
                        issue("su", regs["tu"], regs["ou"])
                        m.d.sync += [
                            regs["sa"][0].eq(1 << (B - 1)),
                            regs["sa"][1].eq(
                                Mux(k_sadc, B - 1 + ac.in_frac_bits, B - 1 + ac.out_frac_bits)
                            ),
                            got["sa"].eq(1),
                        ]
                        m.next = "SC"
            with m.State("SU"):
                issue("su", regs["tu"], regs["ou"])
                m.next = "SA"
            with m.State("SA"):
                with m.If(got["sg"]):
                    issue("sa", regs["sg"], regs["sg"])
                    m.next = "SC"
            with m.State("SC"):
                with m.If(got["sa"] & got["su"]):
                    issue("sc", regs["sa"], regs["su"])
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                # the reciprocals and sc ready, the previous row out of the lanes
                with m.If(got["sc"] & rcp_done & ~lanes_busy):
                    tg_m, tg_s = regs["tg"]
                    m.d.sync += [
                        k_g.eq(Mux(relu2, rcp_g.recip, tg_m)),
                        s_g.eq(Mux(relu2, rcp_g.n + q16.recip_frac_bits, tg_s - ac.in_frac_bits)),
                        k_u.eq(rcp_u.recip),
                        t_u.eq(Mux(rcp_u.n == 0, 0, rcp_u.n - 1)),
                        m_c.eq(regs["sc"][0]),
                        s_c.eq(regs["sc"][1] - nc.in_frac_bits),
                        wait.eq(3),
                    ]
                    m.next = "SETTLE"
            with m.State("SETTLE"):  # RssParams follow s_g / s_c two cycles later
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 1):
                    m.d.sync += live.eq(1)
                    m.next = "IDLE"
        with m.If(rcp_u.done):
            m.d.sync += rcp_done.eq(1)
        with m.If(begin):
            m.d.sync += [live.eq(0), have_g.eq(0), have_u.eq(0), first_g.eq(1), first_u.eq(1)]

        # ---------------------------------------------------------------- pass 2
        stall = Signal()  # a write waits (the packer)
        hold = Signal()  # the sub-beat at G16 is being converted by the NL-ADC
        stall_all = Signal()
        m.d.comb += stall_all.eq(stall | hold)
        rd = pair_reader(m, self.rdata.payload, L, 32, 32, "rd")
        p2g = rs_live & (rs.item == _Item.P2G) & live
        p2u = rs_live & (rs.item == _Item.P2U)
        m.submodules.adc = nladc = NLADC(self.adc_cfg, runtime_bits=True)
        tbl_in = rs_live & (rs.item == _Item.TBL)
        m.d.comb += [
            nladc.bits.eq(nbits),
            nladc.wr.valid.eq(tbl_in),
            nladc.wr.payload.addr.eq(rs.t),
            nladc.wr.payload.data.eq(self.rdata.payload[:16]),
            nladc.out.ready.eq(1),
        ]
        m.d.comb += [
            rd.a_valid.eq(p2g),
            rd.b_valid.eq(p2u),
            rd.n.eq(rs.n),
            rd.last.eq(rs.end),
            rd.ready.eq(~stall_all),
            self.rdata.ready.eq(sx_take | p1_in | rd.take | (tbl_in & nladc.wr.ready)),
            rs_adv.eq(self.rdata.valid & self.rdata.ready),
        ]
        with m.If(rd.take & (rs.item == _Item.P2U) & rs.end):
            m.d.sync += live.eq(0)  # the row's last chunk is in

        pipe = Pipe(m, stall_all)
        tags0 = [pipe.reg(t, f"t0_{i}") for i, t in enumerate((rd.half, rd.n_out, rd.last_out))]
        outs = []
        G16 = 2 + RSS_STAGES  # the stage of g16 (S0 the lane registers)
        A_AT = G16 + LutActivation.LATENCY  # a: after the SiLU lane, registered
        # the conversion of the sub-beat at G16: sent to the twin, its codes captured
        sent, conv_done = Signal(), Signal()
        pow_n = Signal(self.adc_cfg.bits + 1)  # 2^N
        m.d.sync += pow_n.eq(1 << nbits)
        NB = self.adc_cfg.bits
        od_r = [Signal(NB + 1, name=f"od{i}") for i in range(L)]  # 2c + 1
        zero_r = [Signal(name=f"cz{i}") for i in range(L)]  # c == 0
        tl_r = [Signal(NB + 1, name=f"tl{i}") for i in range(L)]  # max(2c + 1 - 2^N, 0)
        with m.If(nladc.out.valid):
            m.d.sync += conv_done.eq(1)
            for i in range(L):
                c = nladc.out.payload.data[i]
                od = Cat(Const(1, 1), c)
                m.d.sync += [
                    od_r[i].eq(od),
                    zero_r[i].eq(c == 0),
                    tl_r[i].eq(Mux(od > pow_n, od - pow_n, 0)),
                ]
        with m.If(nladc.x.valid & nladc.x.ready):
            m.d.sync += sent.eq(1)
        with m.If(~stall_all):
            m.d.sync += [sent.eq(0), conv_done.eq(0)]
        g16s = []
        for i in range(L):
            g0 = pipe.reg(rd.a[i], f"g0_{i}")
            u0 = pipe.reg(rd.b[i], f"u0_{i}")
            qg = mul_split(pipe, g0, k_g, f"qg{i}")  # S2
            qu = mul_split(pipe, u0, k_u, f"qu{i}")
            g16 = rss_lane(pipe, qg, rp_g, f"g{i}")  # S5
            g16s.append(g16)
            u16 = quant_lane(pipe, qu, t_u, 31, q16.recip_frac_bits, FB, f"u{i}")  # S4
            # one multiplier: relu2 max(g16, 0)^2; RELU2_NLADC (c ? 2c + 1 : 0) * 1;
            # RELU2_LINADC t^2; SILU_NLADC g16 * (2c + 1)  (operands registered at G16 + 1)
            rl = Mux(g16 < 0, 0, g16)[: FB - 1]
            tl = tl_r[i]
            pa = pipe.reg(
                Mux(k_sadc, g16, Mux(k_lin, tl, Mux(k_nl, Mux(zero_r[i], 0, od_r[i]), rl))),
                f"pa{i}",
                signed(FB + 1),
            )
            pb = pipe.reg(
                Mux(k_sadc, od_r[i], Mux(k_lin, tl, Mux(k_nl, 1, rl))), f"pb{i}", unsigned(FB - 1)
            )
            sq = pipe.reg(pa * pb, f"sq{i}")  # G16 + 2
            # relu2: rhu(., F - 1); SILU_NLADC: rhu(., N + 1) in two stages; else as is
            plain = ~(k_nl | k_lin | k_sadc)
            ar = pipe.reg(
                Mux(plain, rhu(sq, FB - 1), sq + Mux(k_sadc, pow_n, 0)),
                f"ar{i}",
                signed(len(sq) + 1),
            )  # G16 + 3
            ar = pipe.reg(Mux(k_sadc, ar >> (nbits + 1), ar), f"ar4_{i}", signed(self.a_bits))
            ar = pipe.delay(ar, LutActivation.LATENCY - 5, f"ar{i}")
            # silu: the LUT lane, combinational from its registers at G16 + LATENCY - 1
            sl = lut_lane(m, pipe, ac, ("silu",), g16, 0, f"silu{i}")
            av = pipe.reg(Mux(k_lut, sl, ar), f"a{i}", signed(self.a_bits))  # A_AT
            u9 = pipe.delay(u16, A_AT - 4, f"u{i}")
            prod = pipe.reg(av * u9, f"prod{i}", signed(self.prod_bits))
            qc = mul_split(pipe, prod, m_c, f"qc{i}")
            outs.append(rss_lane(pipe, qc, rp_c, f"y{i}"))
        depth = A_AT + 1 + 2 + RSS_STAGES
        valids = [pipe.reg(rd.valid, "v0")]
        for j in range(depth):
            valids.append(pipe.reg(valids[-1], f"v{j + 1}"))
        vN = valids[-1]
        tN = [pipe.delay(t, depth, f"t{i}") for i, t in enumerate(tags0)]
        m.d.comb += lanes_busy.eq(~rd.empty | Cat(*valids).any())
        convert = valids[G16] & k_adc
        m.d.comb += [
            hold.eq(convert & ~conv_done),
            nladc.x.valid.eq(convert & ~sent & ~conv_done),
            nladc.x.payload.last.eq(0),
        ]
        m.d.comb += [nladc.x.payload.data[i].eq(g16s[i]) for i in range(L)]

        ptr, row_done = packer(
            m, self.wr, stall, vN & ~hold, Cat(*outs), *tN, lanes=L, elem_bytes=4
        )
        out_rows = Rows(a.rows, "out")
        with m.If(row_done):
            m.d.sync += out_rows.advance()

        # ---------------------------------------------------------------- control
        err = self.checks(m, registered=3).error_reg()
        m.d.comb += begin.eq(self.rows_fsm(m, err, running, out_rows))
        with m.If(begin):
            m.d.sync += out_rows.first() + [ptr.eq(a.dst), rd.phase.eq(0)]
        return m
