"""ROPE_QUANT engine: RoPE (rotate-half, table rows from memory) + INT8 absmax per
(token, head) (golden: ``Executor._op_rope_quant`` -> ``golden.rope.rope_from_table`` +
``golden.model.op_v_quant``; rope=0 is ``op_v_quant`` alone).

For token t (row of src, int32 [rows, heads*head_dim]) and head h, with hd = head_dim,
half = hd/2, table row p = pos + t (cos_q[p, 0:half] then sin_q[p, 0:half], int16 Q1.T)::

    y[i]      = sat(rhu(x[i]*cos[i] - x[i+half]*sin[i], T))     i < half
    y[i+half] = sat(rhu(x[i+half]*cos[i] + x[i]*sin[i], T))     (rope=0: y = x)
    codes, amax = hw_act_quant(y)                               (``hw.quant.ActQuant``)
    scale = scale_mul(scale_mul(sx[t], c), scale_of_int(amax))

codes (int8 [hd]) go to ``dst + (h*ld + t)*hd``, the record to ``dst_scale + (h*ld +
t)*4``. T = ``RopeConfig.table_frac_bits``; sat to ``RopeConfig.out_bits(32)`` bits.

Checks: the ROPE_QUANT contract (``golden.isa.CONTRACTS``)
---------------------------------------------------------
1. DIMS: rows, heads >= 1, head_dim even and >= 2, ld >= rows, and the engine limit
   head_dim <= ``max_head_dim`` (``LIMITS``): BAD_DIM;
2. SIZES: the run's head stride and table offset (the tensor spans are registered
   meanwhile); ARGS:
3. src: ALIGN (4), ADDR_RANGE (rows*heads*hd*4 bytes); src_scale: ALIGN (4),
   ADDR_RANGE (rows*4);
4. rope=1 only: pos + rows <= table_rows (BAD_DIM); table: ALIGN (2), ADDR_RANGE
   ([table + pos*hd*2, + rows*hd*2));
5. dst: ADDR_RANGE of every head's span (int8: never misaligned): the spans grow with
   h, so "any head out" is ``dst < mem_lo`` or ``dst + ((heads-1)*ld + rows)*hd >
   mem_hi``;
6. the data check "records", SCALE_RANGE: a record's shift outside int16, found per head
   as it is computed;
7. dst_scale: ALIGN (4), ADDR_RANGE (likewise over all heads, 4-byte records).
Golden stores all of dst before it packs the records (SCALE_RANGE) and only then checks
dst_scale. The engine checks dst_scale up front with the others so that nothing is
written before an argument error: when dst_scale is bad it runs the command *dry*
(computing every head, writing nothing) and reports SCALE_RANGE if a head has one, else
the dst_scale error -- the same code as golden in every case.

Micro-architecture
------------------
The rotation is done in this engine (4*P products of int32 x int16, round, saturate),
not in ``hw.rope.RoPE``: that block's cos/sin come from a ROM built for one head_dim at
elaboration, while the ISA reads the table rows from memory; the arithmetic is a few
lines, so no change to the verified block (and no Verilator rebuild) was needed.

* Reads (one request sequencer, a tag FIFO of ``max_outstanding`` entries says what each
  response is): per token the scale record sx (4 bytes); with rope, the table row in
  chunks of C = dma_bytes/4 elements, cos part then sin part (``2n`` bytes each, n =
  min(C, half - i)); then per head the src chunks in the same pairing: x[i..i+n) (A) and
  x[half+i..half+i+n) (B), ``4n`` bytes each. Reading the two halves of a pair chunk
  back to back means no half-head buffer: A is latched (one cycle), then B's beat is
  consumed in ceil(n/P) groups of P pairs, one group per cycle.
* Table buffer: a small memory of ceil(max_head_dim/2/P) words of P (cos, sin) pairs,
  written from the table chunks of a token and read (asynchronously) by the src groups.
  rope=0 uses cos = 2^T, sin = 0, which gives y = x exactly.
* Rotation: 2 pipeline stages (products; round + saturate), frozen while its output is
  refused. Output beats of 2P lanes (P first-half, P second-half elements of the same
  pairs) go to ``quantizers`` ``ActQuant`` instances round-robin by head (a head is one
  quantizer row of G = ceil(half/P) beats; pad lanes are 0, which changes nothing).
  Several quantizers hide the quantizer's per-row divide (recip_bits cycles) and drain.
* Collector: takes the quantizer outputs in head order, places each beat's P + P codes
  in two half-head registers; a full head moves to the writer (double buffering).
* Writer: scale_of_int(amax) (1 cycle), scale_mul with the token's scale_mul(sx, c)
  (computed when sx arrives, carried per head in a small FIFO) and the SCALE_RANGE check
  (1 cycle), then three writes: codes[0:half], codes[half:hd], the record.
* SCALE_RANGE stops the reads, waits for the outstanding responses, then reports. The
  datapath (quantizers, FIFOs) is held in reset while the engine is idle, so an aborted
  command leaves nothing behind.

Cycles (no stalls, short read latency; ``expected_cycles`` computes it)
----------------------------------------------------------------------
G = ceil(half/P) groups (quantizer beats) per head, Kc = ceil(half/C) chunks per half,
Q = ``quantizers``, R = recip_bits + 2 (``row_overhead``: flush, setup, norm, divide).
A head enters in ``I = Kc + G`` cycles (Kc A-latches, G groups); a quantizer holds a row
for about ``I + G + R`` cycles (fill, flush/setup/divide, drain), so heads are accepted
every ``max(I, (I + G + R) / Q)`` cycles. Per token add 1 cycle (sx) and, with rope,
``I`` for the table row. The last head adds the drain and the writer::

    cycles ~= FIXED + rows * (1 + rope*I + heads * max(I, (I + G + R)/Q)) + G + R

(FIXED = 23). Measured (``sim/test_op_rope_quant.py``, P = 4, Q = 4, 128-byte DMA):
BitNet-0.73B q/k (16 heads x 96: G = 12, Kc = 2, I = 14, input-bound) 532 cycles for 2
tokens, 5.8 elements per cycle, tending to 1536 / (15 + 16*14) = 6.4 per token over
many tokens (6.9 per head; v, rope=0: 6.8 per token); within 6 % of the formula for
head_dim 2..128. Small heads are bound by the quantizer's per-row divide (head_dim 16:
~1.6 elements/cycle). The reads are src + 4 bytes per token + one table row per token
(rope=1).

Parameters (constructor keywords): ``max_head_dim`` (128), ``pairs`` P (4: 4P = 16
int32 x int16 multipliers), ``quantizers`` Q (4 ``ActQuant`` of 2P lanes: 8Q int32 x
17-bit multipliers), ``max_outstanding`` reads (16).

Differences from the golden backend
-----------------------------------
* head_dim above ``max_head_dim`` (default 128; BitNet-0.73B uses 96) is BAD_DIM: it
  sizes the table buffer, the quantizer row buffers and the code registers (each half
  head is written with one request, so ``max_head_dim <= 2*dma_bytes``).
* The datapath must be ``QuantConfig.hw_in_bits == 32`` and ``act_bits == 8`` (int32
  inputs, int8 codes, as the ISA formats say); the constructor refuses anything else.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.hdl import ResetInserter
from amaranth.lib import data, enum, fifo
from amaranth.lib.memory import Memory

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.fixed import saturate
from hw.quant import ActQuant

from .base import Engine, scale_mul, scale_of_int, shift_fits_record

DEFAULT_MAX_HEAD_DIM = 128
DEFAULT_PAIRS = 4  # P: pairs rotated per cycle (2P elements per cycle)
DEFAULT_QUANTIZERS = 4
DEFAULT_MAX_OUTSTANDING = 16

ELEM_BITS = 32  # src elements: int32 accumulators
TABLE_BITS = 16  # table elements: int16 Q1.T
# Cycles a quantizer row costs beyond its fill and drain beats: flush 2, setup 1, norm 1
# and the divide (recip_bits), less the overlap of the next row's first beats (measured).
ROW_OVERHEAD_EXTRA = 2
# Command cycles outside the per-token work (3 check states, the first reads' latency,
# the rotation pipeline, the quantizer's output pipeline, the writer; measured).
FIXED_CYCLES = 23


class _Kind(enum.Enum, shape=3):
    SX = 0  # one scale record
    COS = 1  # table chunk, cos part (A)
    SIN = 2  # table chunk, sin part (B)
    X1 = 3  # src chunk, first half (A)
    X2 = 4  # src chunk, second half (B)


class _Phase(enum.Enum, shape=2):
    SX = 0
    TAB = 1
    SRC = 2
    DONE = 3


class _W(enum.Enum, shape=3):
    IDLE = 0
    SOI = 1  # scale_of_int(amax)
    MUL = 2  # record scale and its range check
    C1 = 3  # codes, first half
    C2 = 4  # codes, second half
    REC = 5  # scale record


def row_overhead(cfg: DatapathConfig) -> int:
    return cfg.quant.recip_bits + ROW_OVERHEAD_EXTRA


def expected_cycles(
    rows: int,
    heads: int,
    head_dim: int,
    rope: bool,
    cfg: DatapathConfig,
    dma_bytes: int,
    pairs: int = DEFAULT_PAIRS,
    quantizers: int = DEFAULT_QUANTIZERS,
) -> int:
    """The module docstring's cycle formula (no stalls, short read latency)."""
    half = head_dim // 2
    G = -(-half // pairs)
    Kc = -(-half // (dma_bytes // 4))
    inp = Kc + G
    R = row_overhead(cfg)
    period = max(inp, (inp + G + R) / quantizers)
    return round(FIXED_CYCLES + rows * (1 + int(rope) * inp + heads * period) + G + R)


class RopeQuantEngine(Engine):
    OPCODE = Opcode.ROPE_QUANT
    LIMITS = ("head_dim <= max_head_dim",)  # sizes the buffers (see Differences)

    def __init__(
        self,
        cfg: DatapathConfig,
        dma_bytes: int,
        *,
        max_head_dim: int = DEFAULT_MAX_HEAD_DIM,
        pairs: int = DEFAULT_PAIRS,
        quantizers: int = DEFAULT_QUANTIZERS,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
    ):
        if cfg.quant.hw_in_bits != ELEM_BITS or cfg.quant.act_bits != 8:
            raise ValueError(
                f"cfg.quant: the engine needs hw_in_bits 32 and act_bits 8, got "
                f"{cfg.quant.hw_in_bits} and {cfg.quant.act_bits}"
            )
        if cfg.requant.mult_bits > isa.SCALE_MANT_BITS:
            raise ValueError(
                f"cfg.requant.mult_bits: {cfg.requant.mult_bits} exceeds the "
                f"scale record's {isa.SCALE_MANT_BITS} bits"
            )
        if dma_bytes < 8 or dma_bytes & (dma_bytes - 1):
            raise ValueError(f"dma_bytes: expected a power of two >= 8, got {dma_bytes}")
        C = dma_bytes // 4
        if pairs < 1 or pairs & (pairs - 1) or pairs > C:
            raise ValueError(f"pairs: expected a power of two in [1, {C}], got {pairs}")
        if max_head_dim < 2 or max_head_dim % (2 * pairs) or max_head_dim > 2 * dma_bytes:
            raise ValueError(
                f"max_head_dim: expected a multiple of {2 * pairs} in "
                f"[2, {2 * dma_bytes}], got {max_head_dim}"
            )
        if quantizers < 1:
            raise ValueError(f"quantizers: expected >= 1, got {quantizers}")
        if max_outstanding < 2:
            raise ValueError(f"max_outstanding: expected >= 2, got {max_outstanding}")
        self.max_head_dim = max_head_dim
        self.pairs = pairs
        self.quantizers = quantizers
        self.max_outstanding = max_outstanding
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        W = self.signature.dma_bytes
        C = W // 4  # elements per pair chunk (A or B)
        P = self.pairs
        LP = P.bit_length() - 1
        NQ = self.quantizers
        HMAX = self.max_head_dim // 2
        GMAX = HMAX // P  # groups (quantizer beats) per head, max
        T = cfg.rope.table_frac_bits
        OB = cfg.rope.out_bits(ELEM_BITS)
        B = cfg.requant.mult_bits
        SHB = isa.SCALE_SHIFT_BITS + 2  # shift width of base.normalize
        a = self.op_args

        # ---------------------------------------------------------------- datapath parts
        busy = Signal()  # a command is running (else: reset)
        dp_rst = Signal()
        m.d.comb += dp_rst.eq(~busy)
        quants = [ActQuant(cfg.quant, lanes=2 * P, max_len=GMAX * 2 * P) for _ in range(NQ)]
        for k, q in enumerate(quants):
            m.submodules[f"quant{k}"] = ResetInserter(dp_rst)(q)
        tag_layout = data.StructLayout(
            {"kind": _Kind, "n": range(C + 1), "word": range(GMAX), "last": 1}
        )
        tag_q = fifo.SyncFIFO(width=tag_layout.size, depth=self.max_outstanding)
        m.submodules.tag_q = ResetInserter(dp_rst)(tag_q)
        side_q = fifo.SyncFIFO(width=B + SHB, depth=2 * NQ + 4)  # per head: sx*c
        m.submodules.side_q = ResetInserter(dp_rst)(side_q)
        m.submodules.tbuf = tbuf = Memory(shape=unsigned(2 * P * TABLE_BITS), depth=GMAX, init=[])
        tb_w = tbuf.write_port()
        tb_r = tbuf.read_port(domain="comb")

        # ---------------------------------------------------------------- command values
        hd = a.head_dim
        half = Signal(range(HMAX + 1))
        m.d.comb += half.eq(hd >> 1)
        ldhd = Signal(isa.ROWS_BITS + isa.DIM_BITS)  # head stride in dst
        tab_off = Signal(isa.ROWS_BITS + isa.DIM_BITS + 1)  # pos*hd*2
        dry = Signal()  # dst_scale is bad: compute, write nothing
        pend_err = Signal(ErrorCode)  # the dst_scale error a dry run reports
        abort = Signal()

        # ---------------------------------------------------------------- read sequencer
        ph = Signal(_Phase)
        rq_t = Signal(isa.ROWS_BITS)
        rq_h = Signal(isa.HEADS_BITS)
        rq_i = Signal(range(HMAX + 1))  # chunk start within the half
        rq_b = Signal()  # 0: A part, 1: B part
        sx_ptr = Signal(isa.ADDR_BITS + 1)
        tab_ptr = Signal(isa.ADDR_BITS + 1)  # current token's table row
        src_ptr = Signal(isa.ADDR_BITS + 1)  # current head's src vector
        rq_left = Signal(range(HMAX + 1))
        rq_n = Signal(range(C + 1))
        rq_last = Signal()  # the half's last chunk
        m.d.comb += [
            rq_left.eq(half - rq_i),
            rq_n.eq(Mux(rq_left > C, C, rq_left)),
            rq_last.eq(rq_left <= C),
        ]
        off = Signal(range(HMAX * 2 + 1))  # element offset of the request in the row
        m.d.comb += off.eq(rq_i + Mux(rq_b, half, 0))
        rq_tag = Signal(tag_layout)
        m.d.comb += [
            rq_tag.n.eq(rq_n),
            rq_tag.word.eq(rq_i >> LP),
            rq_tag.last.eq(rq_last),
            tag_q.w_data.eq(rq_tag.as_value()),
        ]
        with m.Switch(ph):
            with m.Case(_Phase.SX):
                m.d.comb += [
                    self.rd.payload.addr.eq(sx_ptr),
                    self.rd.payload.len.eq(4),
                    rq_tag.kind.eq(_Kind.SX),
                ]
            with m.Case(_Phase.TAB):
                m.d.comb += [
                    self.rd.payload.addr.eq(tab_ptr + off * 2),
                    self.rd.payload.len.eq(rq_n * 2),
                    rq_tag.kind.eq(Mux(rq_b, _Kind.SIN, _Kind.COS)),
                ]
            with m.Case(_Phase.SRC):
                m.d.comb += [
                    self.rd.payload.addr.eq(src_ptr + off * 4),
                    self.rd.payload.len.eq(rq_n * 4),
                    rq_tag.kind.eq(Mux(rq_b, _Kind.X2, _Kind.X1)),
                ]
        running = Signal()  # in RUN and not aborting
        m.d.comb += [
            self.rd.valid.eq(running & (ph != _Phase.DONE) & tag_q.w_rdy),
            tag_q.w_en.eq(self.rd.valid & self.rd.ready),
        ]
        with m.If(self.rd.valid & self.rd.ready):
            with m.If(ph == _Phase.SX):
                m.d.sync += [ph.eq(Mux(a.rope, _Phase.TAB, _Phase.SRC)), rq_i.eq(0), rq_b.eq(0)]
            with m.Elif(~rq_b):
                m.d.sync += rq_b.eq(1)
            with m.Elif(~rq_last):
                m.d.sync += [rq_b.eq(0), rq_i.eq(rq_i + C)]
            with m.Else():
                m.d.sync += [rq_b.eq(0), rq_i.eq(0)]
                with m.If(ph == _Phase.TAB):
                    m.d.sync += [ph.eq(_Phase.SRC), rq_h.eq(0)]
                with m.Else():
                    m.d.sync += src_ptr.eq(src_ptr + hd * 4)
                    with m.If(rq_h != a.heads - 1):
                        m.d.sync += rq_h.eq(rq_h + 1)
                    with m.Else():
                        m.d.sync += [
                            rq_h.eq(0),
                            tab_ptr.eq(tab_ptr + hd * 2),
                            sx_ptr.eq(sx_ptr + 4),
                        ]
                        with m.If(rq_t == a.rows - 1):
                            m.d.sync += ph.eq(_Phase.DONE)
                        with m.Else():
                            m.d.sync += [rq_t.eq(rq_t + 1), ph.eq(_Phase.SX)]

        # ---------------------------------------------------------------- responses
        tag = Signal(tag_layout)
        m.d.comb += tag.eq(tag_q.r_data)
        pay = self.rdata.payload
        a_reg = Signal(C * ELEM_BITS)  # the latched A chunk (cos: sign-extended)
        grp = Signal(range(C // P + 1))
        ngrp = Signal(range(C // P + 1))
        m.d.comb += ngrp.eq((tag.n + (P - 1)) >> LP)
        grp_last = Signal()
        m.d.comb += grp_last.eq(grp == ngrp - 1)
        sx_mant = Signal(isa.SCALE_MANT_BITS)
        sx_shift = Signal(signed(isa.SCALE_SHIFT_BITS))
        tc_mant, tc_shift = scale_mul(m, sx_mant, sx_shift, a.c_mant, a.c_shift, B, "tc")
        hq = Signal(range(NQ))  # quantizer of the head being fed
        en = Signal()  # the rotation pipeline advances
        ext = Signal()  # a src group enters the pipeline
        head_end = Signal()
        m.d.comb += head_end.eq(tag.last & grp_last)
        a_grp = a_reg.word_select(grp, P * ELEM_BITS)
        x1 = [a_grp[ELEM_BITS * j : ELEM_BITS * (j + 1)].as_signed() for j in range(P)]
        x2_grp = pay.word_select(grp, P * ELEM_BITS)
        x2 = [x2_grp[ELEM_BITS * j : ELEM_BITS * (j + 1)].as_signed() for j in range(P)]
        sin_grp = pay.word_select(grp, P * TABLE_BITS)
        m.d.comb += [
            tb_r.addr.eq(tag.word + grp),
            tb_w.addr.eq(tag.word + grp),
            tb_w.data.eq(
                Cat(*[a_grp[ELEM_BITS * j : ELEM_BITS * j + TABLE_BITS] for j in range(P)], sin_grp)
            ),
        ]
        pop = Signal()
        m.d.comb += tag_q.r_en.eq(pop)
        with m.If(abort):
            # drain: every response still owed is consumed and dropped
            m.d.comb += [self.rdata.ready.eq(1), pop.eq(self.rdata.valid)]
        with m.Elif(tag_q.r_rdy):
            with m.Switch(tag.kind):
                with m.Case(_Kind.SX):
                    m.d.comb += [self.rdata.ready.eq(1), pop.eq(self.rdata.valid)]
                    with m.If(self.rdata.valid):
                        m.d.sync += [sx_mant.eq(pay[:16]), sx_shift.eq(pay[16:32])]
                with m.Case(_Kind.COS):
                    m.d.comb += [self.rdata.ready.eq(1), pop.eq(self.rdata.valid)]
                    with m.If(self.rdata.valid):
                        # int16 lanes sign-extended into the int32 lane layout
                        lanes = [pay[TABLE_BITS * j : TABLE_BITS * (j + 1)] for j in range(C)]
                        m.d.sync += a_reg.eq(
                            Cat(*[Cat(v, v[-1].replicate(ELEM_BITS - TABLE_BITS)) for v in lanes])
                        )
                with m.Case(_Kind.X1):
                    m.d.comb += [self.rdata.ready.eq(1), pop.eq(self.rdata.valid)]
                    with m.If(self.rdata.valid):
                        m.d.sync += a_reg.eq(pay[: C * ELEM_BITS])
                with m.Case(_Kind.SIN):
                    m.d.comb += [
                        self.rdata.ready.eq(grp_last),
                        pop.eq(self.rdata.valid & grp_last),
                        tb_w.en.eq(self.rdata.valid),
                    ]
                    with m.If(self.rdata.valid):
                        m.d.sync += grp.eq(Mux(grp_last, 0, grp + 1))
                with m.Case(_Kind.X2):
                    can = en & (~head_end | side_q.w_rdy)
                    m.d.comb += [
                        self.rdata.ready.eq(grp_last & can),
                        pop.eq(self.rdata.valid & grp_last & can),
                        ext.eq(self.rdata.valid & can),
                    ]
                    with m.If(ext):
                        m.d.sync += grp.eq(Mux(grp_last, 0, grp + 1))
                        with m.If(head_end):
                            m.d.comb += side_q.w_en.eq(1)
                            m.d.sync += hq.eq(Mux(hq == NQ - 1, 0, hq + 1))
        m.d.comb += side_q.w_data.eq(Cat(tc_mant, tc_shift))

        # ---------------------------------------------------------------- rotation
        one = 1 << T  # rope=0: cos = 1.0, sin = 0 gives y = x
        cs = [
            Mux(a.rope, tb_r.data[TABLE_BITS * j : TABLE_BITS * (j + 1)].as_signed(), one)
            for j in range(P)
        ]
        sn = [
            Mux(a.rope, tb_r.data[TABLE_BITS * (P + j) : TABLE_BITS * (P + j + 1)].as_signed(), 0)
            for j in range(P)
        ]
        pw = ELEM_BITS + TABLE_BITS
        r1_valid, r1_last = Signal(), Signal()
        r1_inst = Signal(range(NQ))
        p_x1c = [Signal(signed(pw), name=f"p_x1c{j}") for j in range(P)]
        p_x2s = [Signal(signed(pw), name=f"p_x2s{j}") for j in range(P)]
        p_x2c = [Signal(signed(pw), name=f"p_x2c{j}") for j in range(P)]
        p_x1s = [Signal(signed(pw), name=f"p_x1s{j}") for j in range(P)]
        r2_valid, r2_last = Signal(), Signal()
        r2_inst = Signal(range(NQ))
        r2_y = [Signal(signed(ELEM_BITS), name=f"r2_y{j}") for j in range(2 * P)]
        with m.If(en):
            m.d.sync += [
                r1_valid.eq(ext),
                r1_last.eq(head_end),
                r1_inst.eq(hq),
                r2_valid.eq(r1_valid),
                r2_last.eq(r1_last),
                r2_inst.eq(r1_inst),
            ]
            for j in range(P):
                m.d.sync += [
                    p_x1c[j].eq(x1[j] * cs[j]),
                    p_x2s[j].eq(x2[j] * sn[j]),
                    p_x2c[j].eq(x2[j] * cs[j]),
                    p_x1s[j].eq(x1[j] * sn[j]),
                ]
        rnd = 1 << (T - 1)
        for j in range(P):
            y1 = saturate(m, (p_x1c[j] - p_x2s[j] + rnd) >> T, OB, f"y1_{j}")
            y2 = saturate(m, (p_x2c[j] + p_x1s[j] + rnd) >> T, OB, f"y2_{j}")
            with m.If(en):
                m.d.sync += [r2_y[j].eq(y1), r2_y[P + j].eq(y2)]
        r2_ready = Signal()
        for k, q in enumerate(quants):
            m.d.comb += [q.inp.valid.eq(r2_valid & (r2_inst == k)), q.inp.payload.last.eq(r2_last)]
            for j in range(2 * P):
                m.d.comb += q.inp.payload.data[j].eq(r2_y[j])
            with m.If(r2_inst == k):
                m.d.comb += r2_ready.eq(q.inp.ready)
        m.d.comb += en.eq(~r2_valid | r2_ready)

        # ---------------------------------------------------------------- collector
        k_out = Signal(range(NQ))
        col_g = Signal(range(GMAX))
        col_full = Signal()
        col_amax = Signal(cfg.quant.hw_in_bits)
        col_h1 = Signal(HMAX * 8)
        col_h2 = Signal(HMAX * 8)
        o_valid, o_last = Signal(), Signal()
        o_amax = Signal(cfg.quant.hw_in_bits)
        o_codes = Signal(2 * P * 8)
        for k, q in enumerate(quants):
            with m.If(k_out == k):
                m.d.comb += [
                    o_valid.eq(q.out.valid),
                    o_last.eq(q.out.payload.last),
                    o_amax.eq(q.out.payload.amax),
                    o_codes.eq(q.out.payload.data.as_value()),
                    q.out.ready.eq(~col_full),
                ]
        with m.If(o_valid & ~col_full):
            with m.Switch(col_g):
                for g in range(GMAX):
                    with m.Case(g):
                        m.d.sync += [
                            col_h1[g * P * 8 : (g + 1) * P * 8].eq(o_codes[: P * 8]),
                            col_h2[g * P * 8 : (g + 1) * P * 8].eq(o_codes[P * 8 :]),
                        ]
            with m.If(o_last):
                m.d.sync += [
                    col_full.eq(1),
                    col_amax.eq(o_amax),
                    col_g.eq(0),
                    k_out.eq(Mux(k_out == NQ - 1, 0, k_out + 1)),
                ]
            with m.Else():
                m.d.sync += col_g.eq(col_g + 1)

        # ---------------------------------------------------------------- writer
        ws = Signal(_W)
        w_h1 = Signal(HMAX * 8)
        w_h2 = Signal(HMAX * 8)
        w_amax = Signal(cfg.quant.hw_in_bits)
        w_sm = Signal(B)
        w_ss = Signal(signed(SHB))
        soi_m = Signal(B)
        soi_s = Signal(signed(SHB))
        rec_m = Signal(B)
        rec_s = Signal(signed(SHB))
        w_t = Signal(isa.ROWS_BITS)
        w_h = Signal(isa.HEADS_BITS)
        code_tok = Signal(isa.ADDR_BITS + 1)  # dst + t*hd
        code_ptr = Signal(isa.ADDR_BITS + 1)  # dst + (h*ld + t)*hd
        rec_tok = Signal(isa.ADDR_BITS + 1)
        rec_ptr = Signal(isa.ADDR_BITS + 1)
        w_done = Signal()  # the command's last head is finished
        w_err = Signal()  # a record shift left int16
        om, osh = scale_of_int(m, w_amax, B, "soi")
        pm, psh = scale_mul(m, w_sm, w_ss, soi_m, soi_s, B, "rec")
        m.d.comb += side_q.r_en.eq(0)
        next_head = Signal()
        with m.If(next_head):
            with m.If(w_h != a.heads - 1):
                m.d.sync += [
                    w_h.eq(w_h + 1),
                    code_ptr.eq(code_ptr + ldhd),
                    rec_ptr.eq(rec_ptr + a.ld * 4),
                ]
            with m.Else():
                m.d.sync += [
                    w_h.eq(0),
                    w_t.eq(w_t + 1),
                    code_tok.eq(code_tok + hd),
                    code_ptr.eq(code_tok + hd),
                    rec_tok.eq(rec_tok + 4),
                    rec_ptr.eq(rec_tok + 4),
                ]
                with m.If(w_t == a.rows - 1):
                    m.d.comb += w_done.eq(1)
            m.d.sync += ws.eq(_W.IDLE)
        with m.Switch(ws):
            with m.Case(_W.IDLE):
                with m.If(running & col_full & side_q.r_rdy):
                    m.d.comb += side_q.r_en.eq(1)
                    m.d.sync += [
                        w_h1.eq(col_h1),
                        w_h2.eq(col_h2),
                        w_amax.eq(col_amax),
                        w_sm.eq(side_q.r_data[:B]),
                        w_ss.eq(side_q.r_data[B:]),
                        col_full.eq(0),
                        ws.eq(_W.SOI),
                    ]
            with m.Case(_W.SOI):
                m.d.sync += [soi_m.eq(om), soi_s.eq(osh), ws.eq(_W.MUL)]
            with m.Case(_W.MUL):
                m.d.sync += [rec_m.eq(pm), rec_s.eq(psh)]
                with m.If(~shift_fits_record(psh)):
                    m.d.comb += w_err.eq(1)
                    m.d.sync += ws.eq(_W.IDLE)
                with m.Elif(dry):
                    m.d.comb += next_head.eq(1)
                with m.Else():
                    m.d.sync += ws.eq(_W.C1)
            with m.Case(_W.C1):
                m.d.comb += [
                    self.wr.valid.eq(1),
                    self.wr.payload.addr.eq(code_ptr),
                    self.wr.payload.len.eq(half),
                    self.wr.payload.data.eq(w_h1),
                ]
                with m.If(self.wr.ready):
                    m.d.sync += ws.eq(_W.C2)
            with m.Case(_W.C2):
                m.d.comb += [
                    self.wr.valid.eq(1),
                    self.wr.payload.addr.eq(code_ptr + half),
                    self.wr.payload.len.eq(half),
                    self.wr.payload.data.eq(w_h2),
                ]
                with m.If(self.wr.ready):
                    m.d.sync += ws.eq(_W.REC)
            with m.Case(_W.REC):
                m.d.comb += [
                    self.wr.valid.eq(1),
                    self.wr.payload.addr.eq(rec_ptr),
                    self.wr.payload.len.eq(isa.SCALE_RECORD_BYTES),
                    self.wr.payload.data.eq(
                        Cat(rec_m, Const(0, isa.SCALE_MANT_BITS - B), rec_s[: isa.SCALE_SHIFT_BITS])
                    ),
                ]
                with m.If(self.wr.ready):
                    m.d.comb += next_head.eq(1)

        # ---------------------------------------------------------------- control
        chk = self.checks(m, registered=True)
        err_dims = chk.error(stop="src")
        err_args = chk.error(start="src", stop="records")
        err_scale = chk.error(start="records")
        with m.FSM() as fsm:
            passed = self.check_states(m, ("DIMS", err_dims), ("SIZES", None), ("ARGS", err_args))
            with m.State("RUN"):
                m.d.comb += running.eq(1)
                with m.If(w_err):
                    m.d.sync += abort.eq(1)
                    m.next = "ABORT"
                with m.Elif(w_done):
                    self.finish(m, pend_err)
            with m.State("ABORT"):
                with m.If(~tag_q.r_rdy):
                    self.finish(m, ErrorCode.SCALE_RANGE)
        m.d.comb += busy.eq(~fsm.ongoing("IDLE"))
        with m.If(fsm.ongoing("IDLE")):
            # nothing in flight survives a command (an aborted one leaves beats here)
            m.d.sync += [r1_valid.eq(0), r2_valid.eq(0), col_full.eq(0), ws.eq(_W.IDLE)]
        with m.If(passed["SIZES"]):
            m.d.sync += [ldhd.eq(a.ld * hd), tab_off.eq(a.pos * hd * 2)]
        with m.If(passed["ARGS"]):
            m.d.sync += [
                dry.eq(err_scale != ErrorCode.NONE),
                pend_err.eq(err_scale),
                abort.eq(0),
                ph.eq(_Phase.SX),
                rq_t.eq(0),
                rq_h.eq(0),
                rq_i.eq(0),
                rq_b.eq(0),
                sx_ptr.eq(a.src_scale),
                tab_ptr.eq(a.table + tab_off),
                src_ptr.eq(a.src),
                grp.eq(0),
                hq.eq(0),
                k_out.eq(0),
                col_g.eq(0),
                col_full.eq(0),
                ws.eq(_W.IDLE),
                w_t.eq(0),
                w_h.eq(0),
                code_tok.eq(a.dst),
                code_ptr.eq(a.dst),
                rec_tok.eq(a.dst_scale),
                rec_ptr.eq(a.dst_scale),
            ]
        return m
