"""QK engine: attention logits ``dst[h, t, j] = requant(q_q[h, t] . k_q[g, j],
scale_mul(sq[h, t], sk[g, j]), SoftmaxConfig.in_frac_bits, in_bits)`` with g = h //
(heads / kv_heads), causal (query t sees keys j <= keys - rows + t; masked entries are
written 0). Golden: ``Executor._op_qk`` -> ``golden.model.op_qk``.

Operands (``golden/isa.py``, QK): q codes int8 of head h, token t at ``q + (h*q_ld +
t)*head_dim``, its scale record at ``q_scale + (h*q_ld + t)*4``; k rows / records of KV
head g, key j at ``k + (g*kv_ld + j)*KR`` / ``k_scale + (g*kv_ld + j)*4``, KR =
``golden.isa.kv_row(head_dim)``: head_dim int8 codes, or in an int4-KV build
(``ForwardConfig.kv_bits`` = 4, e.g. kv260-kv4) head_dim/2 bytes of packed int4 codes;
dst int16 Q7.8 [heads, rows, keys], contiguous. No data value can fail (the dot product and
``scale_mul`` always fit, ``requant`` saturates): the only errors are argument errors.

Checks: the QK contract (``golden.isa.CONTRACTS``), over seven cycles before any memory
access: the head ratio n_rep = heads // kv_heads and whether kv_heads divides heads
(``hw.ops.gqa``: a sequential divider, five cycles); CHK_DIM its ``Dims`` (rows, heads,
kv_heads, head_dim >= 1; kv_heads divides heads; rows <= keys <=
``SoftmaxConfig.max_len``; kv_ld >= keys; q_ld >= rows) and the RTL limit head_dim <=
dma_bytes (``LIMITS``; below); CHK_ADDR q, q_scale, k, k_scale, dst, each aligned then in
range over all its heads (heads are at increasing addresses, so the first head's first
byte and the last head's last byte decide). Every verdict comes from a register.

Micro-architecture
==================
One query row (h, t) at a time; per row the request side issues the q row (head_dim
bytes, one beat), the q scale record, then the visible keys j = 0 .. keys - rows + t of
KV head g, one key row per read (one beat), preceded every R = ``records`` keys by one
read of the next R key scale records (4R bytes). Requests run ahead of the responses
without limit (the memory applies backpressure); the response side follows the same
sequence:

* q / q-scale responses load the held query vector and its scale (the previous row's
  keys have all been accepted by then, and each key uses them in its accept cycle);
* a k-scale response loads the R-record register;
* a key response enters the pipeline (every stage holds while the output is stalled);
  an int4 row is first unpacked into the int8 lanes (``hw.ops.kvrow.unpack_lanes``:
  each nibble sign-extended, wiring only, the one piece that knows the format):
  - the dot product: ``dma_bytes/2`` pairs of DSP48E2 (``hw.dsp.dot2``: q_i k_i +
    q_i+1 k_i+1, the second DSP adding the first's product through the cascade; q beyond
    head_dim is 0: the response is zero beyond len), then an adder tree of three stages;
  - meanwhile the pair scale ``scale_mul(sq, sk_j)``: the mantissa product (a DSP), its
    bit length (two stages: per byte, then the top byte), the normalizing (rounding)
    shift, the carry (each a stage);
  - ``requant(dot, pair.mant, pair.shift - in_frac_bits)`` saturating to int16: the
    product (a DSP), the shifters, the rounding and the saturation (each a stage);
* after a row's last visible key the response side emits the row's masked keys as
  zero runs of up to one output write (``out_lanes`` logits) per cycle, without any
  read.

The output packer gathers the logits of the contiguous dst into writes of ``out_lanes``
logits (relative to dst; a flush clears the gather register, so a zero run only advances
the slot pointer) and hands each full one (and the final partial one) to a one-entry write
register: the pipeline stalls only when a second write is ready before the first was
written.

Cycles
======
With no memory stalls (the response side takes one beat per cycle; ``expected_cycles``)::

    cycles = G + 14 + latency + sum over (h, t) of
             [2 + v_t + ceil(v_t / R) + z_t]          v_t = keys - rows + t + 1

(G + 2 check cycles: the head-ratio divider ``hw.ops.gqa``, G = ``gqa.cycles()`` = 9 for
8-bit head fields, and two cycles of registered checks; the first response's latency,
the pipeline (``PIPE`` = 10 stages), the final write and the done cycle; per row the q
and q-scale beats, one cycle per visible key, one per R scale records, and z_t <=
ceil((keys - v_t) / out_lanes) + 1 zero-run cycles). One key per cycle; decode (rows = 1,
keys = S) of 16 heads: ~16 * (1.03 S + 2) cycles with R = 32 (the kv260 point): 2168 at
128 keys, 33848 at 2048 (before: 2153 and 33833); the memory's bandwidth sets the pace on
the KV260 (100 bytes a key; 52 with the INT4 cache, whose cycle count with a 1-cycle
memory is the same formula: still one key row per cycle).
Measured by ``sim/test_op_qk.py`` (``test_qk_cycles``) with a 1-cycle memory, exactly the
formula.

Differences from the golden backend
===================================
* head_dim <= dma_bytes (one key row per beat; 128 covers BitNet-0.73B's 96), else
  BAD_DIM. keys, rows, q_ld, kv_ld take their full 16-bit ranges (nothing is buffered
  per key).
* dst overlapping q, q_scale, k or k_scale is not supported (the golden backend reads
  every operand before writing; the engine streams). The command stream never does this.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.dsp import dot2
from hw.softmax import tree_bit_length

from . import kvrow
from .base import Engine, check_power_of_two
from .gqa import Cursor, head_ratio
from .gqa import cycles as gqa_cycles

_ABITS = isa.ADDR_BITS + 1  # addresses inside the window (mem_hi <= 2^32)
PIPE = 10  # stages from a key's accept to the packer


def expected_cycles(
    heads: int, rows: int, keys: int, records: int, out_lanes: int, latency: int = 1
) -> int:
    """Cycles of one command without memory stalls (module docstring), walking the output
    slots of the zero runs."""
    epb, rpb = out_lanes, records
    slot, total = 0, 0
    for _ in range(heads):
        for t in range(rows):
            v = keys - rows + t + 1
            total += 2 + v + -(-v // rpb)
            slot = (slot + v) % epb
            z = keys - v
            while z:
                n = min(z, epb - slot)
                z, slot, total = z - n, (slot + n) % epb, total + 1
    return gqa_cycles() + 2 + latency + PIPE + total + 2


def _tree(vals):
    """One level of pairwise sums."""
    nxt = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)]
    if len(vals) % 2:
        nxt.append(vals[-1])
    return nxt


class _Rows:
    """One side's walk over the query rows (module docstring; the request side issues it,
    the response side takes it): head h, row t, and per row its visible keys j (``vis``
    of them; ``left``: keys from j to the row's end; ``lastk``: j is the row's last).
    ``tlast`` / ``hlast`` (t / h at their last) are registers kept a step ahead by the
    registered compares ``t_next_last`` / ``h_next_last`` ("the next row / head is the
    last", :meth:`lookahead`: these counters change at most once per row, >= 3 cycles
    apart). With ``n_rep``: also the repeat ``rep`` = h mod n_rep and ``rlast`` (after the
    last repeat the side moves to the next KV head); with ``full``: ``full``, the row has
    no masked key. Signals are named ``<prefix><field>``; each method returns the
    statements of one step of the walk, to which the side adds its own."""

    def __init__(self, prefix: str, a, vis0, *, n_rep=None, full: bool = False):
        rbits = isa.ROWS_BITS + 1
        self.a, self.vis0, self.n_rep = a, vis0, n_rep

        def reg(field: str, shape=1):
            return Signal(shape, name=prefix + field)

        self.h = reg("h", isa.HEADS_BITS + 1)
        self.t, self.j, self.vis, self.left = (reg(f, rbits) for f in ("t", "j", "vis", "left"))
        self.lastk, self.tlast, self.hlast = reg("lastk"), reg("tlast"), reg("hlast")
        self.h_next_last, self.t_next_last = reg("h_next_last"), reg("t_next_last")
        self.full = reg("full") if full else None
        if n_rep is not None:
            self.rep, self.rlast = reg("rep", isa.HEADS_BITS), reg("rlast")
            self.rep_next_last = reg("rep_next_last")

    def _row_start(self, vis, full) -> list:
        s = [self.vis.eq(vis), self.left.eq(vis), self.lastk.eq(vis == 1)]
        return s + ([self.full.eq(full)] if self.full is not None else [])

    def start(self) -> list:
        """The command's first row."""
        a = self.a
        s = [self.h.eq(0), self.t.eq(0), self.j.eq(0), *self._row_start(self.vis0, a.rows == 1)]
        s += [self.tlast.eq(a.rows == 1), self.hlast.eq(a.heads == 1)]
        if self.n_rep is not None:
            s += [self.rlast.eq(self.n_rep == 1), self.rep.eq(0)]
        return s

    def first_repeat(self) -> list:
        """After the last repeat of a KV head: repeat 0 (of the next KV head)."""
        return [self.rep.eq(0), self.rlast.eq(self.n_rep == 1)]

    def lookahead(self) -> list:
        """The registered "the next is the last" compares (every cycle)."""
        a = self.a
        s = [self.h_next_last.eq(self.h + 2 == a.heads)]
        if self.n_rep is not None:
            s.append(self.rep_next_last.eq(self.rep + 2 == self.n_rep))
        return s + [self.t_next_last.eq(self.t + 2 == self.a.rows)]

    def key(self) -> list:
        """Past one key of the row."""
        return [self.j.eq(self.j + 1), self.left.eq(self.left - 1), self.lastk.eq(self.left == 2)]

    def next_row(self) -> list:
        """After a row's last key, not the head's last row: row t + 1, one more visible
        key (the caller sets j and its state)."""
        s = [self.t.eq(self.t + 1), self.tlast.eq(self.t_next_last)]
        s += [self.vis.eq(self.vis + 1), self.left.eq(self.vis + 1), self.lastk.eq(0)]
        return s + ([self.full.eq(self.t_next_last)] if self.full is not None else [])

    def next_head(self) -> list:
        """After the head's last row: row 0 of head h + 1 (the caller ends the walk after
        the last head)."""
        a = self.a
        s = [self.t.eq(0), self.tlast.eq(a.rows == 1), *self._row_start(self.vis0, a.rows == 1)]
        return s + [self.h.eq(self.h + 1), self.hlast.eq(self.h_next_last)]


class QKEngine(Engine):
    OPCODE = Opcode.QK
    DESIGN_FIELDS = {"records": "qk_records", "out_lanes": "qk_out_lanes"}
    LIMITS = ("head_dim <= max_head_dim",)  # one key row per beat

    def __init__(self, cfg: DatapathConfig, dma_bytes: int, *, records: int, out_lanes: int):
        check_power_of_two("dma_bytes", dma_bytes, lo=16, hi=128)
        check_power_of_two("records", records, hi=dma_bytes // 4)  # 4-byte records per beat
        check_power_of_two("out_lanes", out_lanes, hi=dma_bytes // 2)  # int16 outputs per beat
        self.max_head_dim = dma_bytes
        self.records = records
        self.out_lanes = out_lanes
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        R, OB = self.records, self.out_lanes
        sc = self.cfg.softmax
        rq = self.cfg.requant
        MB = rq.mult_bits
        a = self.op_args

        n_rep_q, divides = head_ratio(m, self.start, a.heads, a.kv_heads)
        # every product of the tensor extents registered (a DSP registered around each)
        chk = self.checks(m, registered="deep", rule_values={"heads % kv_heads == 0": divides})
        # the tensor checks' verdict (registered) is read in CHK_ADDR, two cycles after the
        # divider's result
        assert chk.latency + 1 <= gqa_cycles() + 2
        err_dims, err_tensors = Signal(ErrorCode), Signal(ErrorCode)
        m.d.sync += [err_dims.eq(chk.error(stop="q")), err_tensors.eq(chk.error(start="q"))]
        n_rep = Signal(isa.HEADS_BITS)
        q_stride = Signal(32)  # q_ld * head_dim
        kv_stride = Signal(32)  # kv_ld * krow
        krow = Signal(isa.DIM_BITS)  # bytes of a key row (the build's KV format)
        vis0 = Signal(isa.ROWS_BITS + 1)  # visible keys of query 0
        # from the command every cycle (valid from the cycle after start)
        m.d.sync += [
            vis0.eq(a.keys - a.rows + 1),
            q_stride.eq(a.q_ld * a.head_dim),
            krow.eq(kvrow.row_bytes(a.head_dim, self.cfg)),
            kv_stride.eq(a.kv_ld * kvrow.row_bytes(a.head_dim, self.cfg)),
        ]
        start_run = Signal()
        all_done = self._run(
            m, platform, W, R, OB, MB, sc, rq, a, n_rep, q_stride, kv_stride, krow, vis0, start_run
        )

        with m.FSM():
            waits = [(f"WAIT{i}", None) for i in range(1, gqa_cycles() + 1)]
            passed = self.check_states(m, *waits, ("CHK_DIM", err_dims), ("CHK_ADDR", err_tensors))
            with m.State("RUN"):
                with m.If(all_done):
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["CHK_DIM"]):
            m.d.sync += n_rep.eq(n_rep_q)
        m.d.comb += start_run.eq(passed["CHK_ADDR"])
        return m

    def _run(
        self,
        m,
        platform,
        W,
        R,
        OB,
        MB,
        sc,
        rq,
        a,
        n_rep,
        q_stride,
        kv_stride,
        krow,
        vis0,
        start_run,
    ):
        """The request side, response side, pipeline and packer; returns 'all written'."""
        hd = a.head_dim
        rbits = isa.ROWS_BITS + 1
        rlog = R.bit_length() - 1
        SB = isa.SCALE_SHIFT_BITS

        # ------------------------------------------------------------ request side
        I_Q, I_QS, I_KS, I_K, I_DONE = range(5)
        ist = Signal(range(5), init=I_DONE)
        iw = _Rows("i", a, vis0, n_rep=n_rep)
        # q rows and records of head h (row 0 at the base); keys and records of KV head
        # h // n_rep (key 0 at the base)
        q, qs = Cursor("q_head", "q_row"), Cursor("qs_head", "qs_row")
        k, ks = Cursor("k_head", "k_ptr"), Cursor("ks_head", "ks_ptr")

        with m.If(start_run):
            m.d.sync += [
                ist.eq(I_Q),
                *iw.start(),
                *q.start(a.q),
                *qs.start(a.q_scale),
                *k.start(a.k),
                *ks.start(a.k_scale),
            ]

        m.d.sync += iw.lookahead()
        with m.Switch(ist):
            with m.Case(I_Q):
                with m.If(self.read(m, q.ptr, hd)):
                    m.d.sync += ist.eq(I_QS)
            with m.Case(I_QS):
                with m.If(self.read(m, qs.ptr, isa.SCALE_RECORD_BYTES)):
                    m.d.sync += ist.eq(I_KS)
            with m.Case(I_KS):
                with m.If(self.read(m, ks.ptr, Mux(iw.left > R, R, iw.left) * 4)):
                    m.d.sync += [ist.eq(I_K), *ks.advance(4 * R)]
            with m.Case(I_K):
                with m.If(self.read(m, k.ptr, krow)):
                    m.d.sync += [*iw.key(), *k.advance(krow)]
                    with m.If(iw.lastk):
                        # next query row
                        m.d.sync += [iw.j.eq(0), ist.eq(I_Q)]
                        with m.If(iw.tlast):
                            m.d.sync += [
                                *iw.next_head(),
                                *q.next_base(q_stride),
                                *qs.next_base(a.q_ld * 4),
                            ]
                            with m.If(iw.hlast):
                                m.d.sync += ist.eq(I_DONE)
                            with m.If(iw.rlast):
                                m.d.sync += [
                                    *iw.first_repeat(),
                                    *k.next_base(kv_stride),
                                    *ks.next_base(a.kv_ld * 4),
                                ]
                            with m.Else():
                                m.d.sync += [
                                    iw.rep.eq(iw.rep + 1),
                                    iw.rlast.eq(iw.rep_next_last),
                                    *k.rewind(),
                                    *ks.rewind(),
                                ]
                        with m.Else():
                            m.d.sync += [
                                *iw.next_row(),
                                *q.advance(hd),
                                *qs.advance(4),
                                *k.rewind(),
                                *ks.rewind(),
                            ]
                    with m.Elif(iw.j[:rlog].all() if rlog else 1):
                        m.d.sync += ist.eq(I_KS)

        # ------------------------------------------------------------ response side
        C_Q, C_QS, C_KS, C_K, C_Z, C_DONE = range(6)
        cst = Signal(range(6), init=C_DONE)
        cw = _Rows("c", a, vis0, full=True)
        # a row's zero run: zend = slot + the masked keys left (its end, relative to the
        # current gather write); ztail = keys - vis, registered (vis changes at most once
        # per row)
        zend = Signal(rbits + 1)
        ztail = Signal(rbits)
        m.d.sync += ztail.eq(a.keys - cw.vis)
        slot = Signal(range(OB))  # output position inside the gather write
        q_vec = Signal(8 * W)
        sq_mant = Signal(isa.SCALE_MANT_BITS)
        sq_shift = Signal(signed(SB))
        ks_buf = Signal(32 * R)

        # pipeline tokens: a logit (val) or a zero run; flush: the gather write is done
        # (holding ``end`` logits)
        stall = Signal()
        go = Signal()
        m.d.comb += go.eq(~stall)

        tok = {
            "valid": Signal(),
            "val": Signal(),
            "flush": Signal(),
            "end": Signal(range(OB + 1)),
            "slot": Signal(range(OB)),
        }
        m.d.comb += tok["slot"].eq(slot)

        with m.If(start_run):
            m.d.sync += [
                cst.eq(C_Q),
                *cw.start(),
                slot.eq(0),
            ]

        last_row = cw.hlast & cw.tlast
        m.d.sync += cw.lookahead()

        def next_row():
            m.d.sync += [cw.j.eq(0), cst.eq(C_Q)]
            with m.If(cw.tlast):
                m.d.sync += cw.next_head()
                with m.If(cw.hlast):
                    m.d.sync += cst.eq(C_DONE)
            with m.Else():
                m.d.sync += cw.next_row()

        rdata = self.rdata
        zmore = Signal()  # the run goes beyond this gather write
        m.d.comb += zmore.eq(zend > OB)
        slog = OB.bit_length() - 1
        with m.Switch(cst):
            # the q row, its scale record, the next R key records: held for the keys
            sq = [sq_mant.eq(rdata.payload[:16]), sq_shift.eq(rdata.payload[16:32])]
            for state, loads, then in (
                (C_Q, [q_vec.eq(rdata.payload)], C_QS),
                (C_QS, sq, C_KS),
                (C_KS, [ks_buf.eq(rdata.payload)], C_K),
            ):
                with m.Case(state):
                    m.d.comb += rdata.ready.eq(go)
                    with m.If(go & rdata.valid):
                        m.d.sync += [*loads, cst.eq(then)]
            with m.Case(C_K):
                m.d.comb += rdata.ready.eq(go)
                m.d.comb += [
                    tok["valid"].eq(go & rdata.valid),
                    tok["val"].eq(1),
                    tok["flush"].eq((slot == OB - 1) | (cw.lastk & last_row)),
                    tok["end"].eq(slot + 1),
                ]
                with m.If(go & rdata.valid):
                    m.d.sync += [*cw.key(), slot.eq(slot + 1)]
                    with m.If(cw.lastk):
                        with m.If(cw.full):
                            next_row()
                        with m.Else():
                            m.d.sync += [
                                zend.eq(ztail + (slot + 1)[:slog] if slog else ztail),
                                cst.eq(C_Z),
                            ]
                    with m.Elif(cw.j[:rlog].all() if rlog else 1):
                        m.d.sync += cst.eq(C_KS)
            with m.Case(C_Z):
                # the last row has no masked key: a zero run never ends the command
                m.d.comb += [
                    tok["valid"].eq(go),
                    tok["val"].eq(0),
                    tok["flush"].eq(zend >= OB),
                    tok["end"].eq(Mux(zmore, OB, zend)),
                ]
                with m.If(go):
                    with m.If(zmore):  # up to the end of this gather write
                        m.d.sync += [zend.eq(zend - OB), slot.eq(0)]
                    with m.Else():  # the run ends here
                        m.d.sync += slot.eq(zend[:slog] if slog else 0)
                        next_row()

        # ------------------------------------------------------------ pipeline
        def reg(value, name, shape=None):
            r = Signal(value.shape() if shape is None else shape, name=name)
            with m.If(go):
                m.d.sync += r.eq(value)
            return r

        def tok_reg(t, i):
            return {k: reg(v, f"t{i}_{k}") for k, v in t.items()}

        toks = [tok]
        for i in range(1, PIPE + 1):
            toks.append(tok_reg(toks[-1], i))

        # the dot product: pairs of DSPs (accept cycle c -> c+4), three tree stages (c+7)
        k_lanes = kvrow.unpack_lanes(m, rdata.payload, W, self.cfg)  # int8 lanes of the key row
        pairs = [
            dot2(
                m,
                platform,
                f"dot{i}",
                q_vec[16 * i : 16 * i + 8].as_signed(),
                k_lanes[16 * i : 16 * i + 8].as_signed(),
                q_vec[16 * i + 8 : 16 * i + 16].as_signed(),
                k_lanes[16 * i + 8 : 16 * i + 16].as_signed(),
                ce=go,
            )[:17].as_signed()
            for i in range(W // 2)
        ]
        vals = pairs
        for st in range(3):  # up to 64 pairs: two adder levels a stage
            vals = _tree(_tree(vals)) if len(vals) > 2 else _tree(vals)
            vals = [reg(v, f"tree{st}_{i}") for i, v in enumerate(vals)]
        dot7 = vals[0]

        # the pair scale (c+1 .. c+5), delayed to c+7
        jr = cw.j[:rlog] if rlog else 0
        rec = Array(ks_buf[32 * i : 32 * i + 32] for i in range(R))[jr] if R > 1 else ks_buf
        sk1 = reg(rec, "sk1", 32)
        sp2 = reg(sq_mant * sk1[:16], "sprod2", 2 * isa.SCALE_MANT_BITS)
        ss2 = reg(sq_shift + sk1[16:32].as_signed(), "ssum2", signed(SB + 1))
        # the bit length in two stages (a 32-bit priority search is too deep for one):
        # c+3 each byte's bit length, c+4 the top nonzero byte's
        nby = -(-len(sp2) // 8)
        bytes2 = [sp2[8 * k : 8 * k + 8] for k in range(nby)]
        bbl3 = [reg(tree_bit_length(b), f"bbl3_{k}", 4) for k, b in enumerate(bytes2)]
        bl4 = Signal(range(2 * MB + 1), name="bl4")
        with m.If(go):
            m.d.sync += bl4.eq(0)
            for k in range(nby):  # the last nonzero byte wins
                with m.If(bbl3[k] != 0):
                    m.d.sync += bl4.eq(bbl3[k] + 8 * k)
        sp3 = reg(sp2, "sprod3")
        sp4 = reg(sp3, "sprod4")
        # the requant shift before the carry: shift - (bl - MB) - in_frac_bits
        s3 = reg(ss2 + (MB - sc.in_frac_bits), "s3", signed(SB + 3))
        s4 = reg(s3, "s4")
        z3 = reg(sp2 == 0, "z3")
        z4 = reg(z3, "z4")
        # rhu(p, bl - MB) (or p << (MB - bl) when bl < MB) as rhu(p << MB, bl): one shifter
        w5 = reg(((sp4 << (MB + 1)) >> bl4)[: MB + 2], "w5", MB + 2)
        s5 = reg(s4 - bl4, "s5", signed(SB + 3))
        z5 = reg(z4, "z5")
        wide = (w5 + 1) >> 1
        carry = wide[MB]
        mant6 = reg(Mux(z5, 0, Mux(carry, wide >> 1, wide)[:MB]), "mant6", MB)
        s6 = reg(s5 - carry, "s6", signed(SB + 3))
        mant7 = reg(mant6, "mant7")

        # requant(dot, mant, s): c+8 the product (DSP) and the shift controls; c+9 the
        # shifters; c+10 rounding and saturation to in_bits
        OUT = sc.in_bits
        lo, hi = -(1 << (OUT - 1)), (1 << (OUT - 1)) - 1
        pw = len(dot7) + MB + 1
        s_max = min(rq.shift_max, pw)
        prod8 = reg(dot7 * Cat(mant7, Const(0, 1)).as_signed(), "qprod8", signed(pw))
        # the shift controls from s6 (c+7), the saturation mask from them (c+8)
        ls = Signal(range(32))
        m.d.comb += ls.eq(Mux(s6 >= 0, 0, Mux(-s6 > 31, 31, -s6)))
        sr7 = reg(Mux(s6 <= 0, 0, Mux(s6 > s_max, s_max, s6)), "sr7", range(s_max + 1))
        ls7 = reg(ls, "ls7")
        neg7 = reg(s6 < 0, "neg7")
        big7 = reg(ls >= OUT, "big7")  # no nonzero product fits after such a shift
        sr8, ls8, neg8, big8 = (
            reg(sr7, "sr8"),
            reg(ls7, "ls8"),
            reg(neg7, "neg8"),
            reg(big7, "big8"),
        )
        keep = Signal(range(OUT))
        m.d.comb += keep.eq(Mux(big7, 0, OUT - 1 - ls7))
        mask8 = reg(~((Const(1, pw + 1) << keep) - 1)[:pw], "mask8", pw)
        sign = prod8[pw - 1]
        wr9 = reg((prod8 << 1) >> sr8, "wr9", signed(pw + 1))
        wl9 = reg((prod8 << ls8)[:OUT], "wl9", OUT)
        fit9 = reg((((prod8 ^ sign.replicate(pw)) & mask8) == 0) & (~big8 | ~sign), "fit9")
        sign9, neg9 = reg(sign, "sign9"), reg(neg8, "neg9")
        # rhu(p, sr) = (w + 1) >> 1 leaves int16 iff w >= 2^16 - 1 or w < -2^16 - 1
        r10 = (wr9 + 1) >> 1
        right = Mux(wr9 >= (1 << OUT) - 1, hi, Mux(wr9 < -(1 << OUT) - 1, lo, r10[:OUT]))
        left = Mux(fit9, wl9, Mux(sign9, lo, hi))
        y10 = reg(Mux(neg9, left, right), "y10", signed(OUT))

        # ------------------------------------------------------------ packer
        gather = Signal(16 * OB)
        pend_valid = Signal()
        pend_data = Signal(16 * OB)
        pend_len = Signal(range(2 * OB + 1))
        pend_addr = Signal(_ABITS)
        waddr = Signal(_ABITS)
        with m.If(start_run):
            m.d.sync += [gather.eq(0), waddr.eq(a.dst)]

        t = toks[PIPE]
        wr = self.wr
        m.d.comb += [
            wr.valid.eq(pend_valid),
            wr.payload.addr.eq(pend_addr),
            wr.payload.len.eq(pend_len),
            wr.payload.data.eq(pend_data),
            stall.eq(t["valid"] & t["flush"] & pend_valid & ~wr.ready),
        ]
        merged = Signal(16 * OB)
        m.d.comb += merged.eq(gather)
        with m.If(t["val"]):
            with m.Switch(t["slot"]):
                for i in range(OB):
                    with m.Case(i):
                        m.d.comb += merged[16 * i : 16 * i + 16].eq(y10)
        with m.If(wr.valid & wr.ready):
            m.d.sync += pend_valid.eq(0)
        with m.If(go & t["valid"]):
            with m.If(t["flush"]):
                m.d.sync += [
                    pend_valid.eq(1),
                    pend_data.eq(merged),
                    pend_len.eq(t["end"] * 2),
                    pend_addr.eq(waddr),
                    waddr.eq(waddr + 2 * OB),
                    gather.eq(0),
                ]
            with m.Else():
                m.d.sync += gather.eq(merged)

        all_done = Signal()
        busy = Cat(*(tk["valid"] for tk in toks[1:])).any()
        m.d.comb += all_done.eq((cst == C_DONE) & ~busy & ~pend_valid)
        return all_done
