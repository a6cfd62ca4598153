"""QK engine: attention logits ``dst[h, t, j] = requant(q_q[h, t] . k_q[g, j],
scale_mul(sq[h, t], sk[g, j]), SoftmaxConfig.in_frac_bits, in_bits)`` with g = h //
(heads / kv_heads), causal (query t sees keys j <= keys - rows + t; masked entries are
written 0). Golden: ``Executor._op_qk`` -> ``golden.model.op_qk``.

Operands (``golden/isa.py``, QK): q codes int8 of head h, token t at ``q + (h*q_ld +
t)*head_dim``, its scale record at ``q_scale + (h*q_ld + t)*4``; k codes / records of KV
head g, key j at ``k + (g*kv_ld + j)*head_dim`` / ``k_scale + (g*kv_ld + j)*4``; dst
int16 Q7.8 [heads, rows, keys], contiguous. No data value can fail (the dot product and
``scale_mul`` always fit, ``requant`` saturates): the only errors are argument errors.

Checks: the QK contract (``golden.isa.CONTRACTS``), over three cycles before any memory
access: CHK_DIM its ``Dims`` (rows, heads, kv_heads, head_dim >= 1; kv_heads divides
heads; rows <= keys <= ``SoftmaxConfig.max_len``; kv_ld >= keys; q_ld >= rows) and the RTL
limit head_dim <= dma_bytes (``LIMITS``; below); CHK_SPAN (the head strides of the run,
the tensor spans registered meanwhile); CHK_ADDR q, q_scale, k, k_scale, dst, each aligned
then in range over all its heads (heads are at increasing addresses, so the first head's
first byte and the last head's last byte decide).

Micro-architecture
==================
One query row (h, t) at a time; per row the request side issues the q row (head_dim
bytes, one beat), the q scale record, then the visible keys j = 0 .. keys - rows + t of
KV head g, one key row per read (one beat), preceded every ``dma_bytes/4`` keys (32 on a
128-byte port) by one read of the next 32 key scale records in a single beat. Requests
run ahead of the responses without limit (the memory applies backpressure); the
response side follows the same sequence:

* q / q-scale responses load the held query vector and its scale (the previous row's
  keys have all been accepted by then, and each key uses them in its accept cycle);
* a k-scale response loads the 32-record buffer;
* a key response enters the pipeline: stage 1 registers ``dma_bytes/16`` partial sums
  of 16 int8 x int8 products (q beyond head_dim is 0: the response is zero beyond len)
  and the pair scale ``scale_mul(sq, sk_j)`` (``hw.ops.base.scale_mul``); stage 2 the
  int32 dot product; stage 3 ``requant(dot, pair.mant, pair.shift - in_frac_bits)``
  (``hw.ops.base.requant``, saturating to int16);
* after a row's last visible key the response side emits the row's masked keys as
  zero runs of up to one output beat (``dma_bytes/2`` logits) per cycle, without any
  read.

The output packer gathers the logits of the contiguous dst into ``dma_bytes`` beats
(relative to dst; a flush clears the gather register, so a zero run only advances the
slot pointer) and hands each full beat (and the final partial one) to a one-entry write
register: the pipeline stalls only when a second beat is ready before the first was
written.

Cycles
======
With no memory stalls (the response side takes one beat per cycle; ``expected_cycles``)::

    cycles = 8 + latency + sum over (h, t) of
             [2 + v_t + ceil(v_t / 32) + z_t]          v_t = keys - rows + t + 1

(three check cycles, the first response's latency, the 3-stage pipeline, the final write
and the done cycle; per row the q and q-scale beats, one cycle per visible key, one per 32 scale
records, and z_t <= ceil((keys - v_t) / 64) + 1 zero-run cycles; on a 128-byte port).
One key per cycle; decode (rows = 1, keys = S) of 16 heads: ~16 * (1.03 S + 2) cycles.
Measured by ``sim/test_op_qk.py`` (``test_qk_cycles``): heads 4, kv_heads 2, rows 3,
keys 40, head_dim 64: 533 cycles with a 1-cycle memory (row sum 524), exactly the formula;
decode of 16 heads over 512 keys, head_dim 96: 8489 cycles (formula: 8489).

Differences from the golden backend
===================================
* head_dim <= dma_bytes (one key row per beat; 128 covers BitNet-0.73B's 96), else
  BAD_DIM. keys, rows, q_ld, kv_ld take their full 16-bit ranges (nothing is buffered
  per key).
* dst overlapping q, q_scale, k or k_scale is not supported (the golden backend reads
  every operand before writing; the engine streams). The command stream never does this.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode

from .base import Engine, requant, scale_mul

_ABITS = isa.ADDR_BITS + 1  # addresses inside the window (mem_hi <= 2^32)


def expected_cycles(heads: int, rows: int, keys: int, dma_bytes: int, latency: int = 1) -> int:
    """Cycles of one command without memory stalls (module docstring), walking the output
    slots of the zero runs."""
    epb, rpb = dma_bytes // 2, dma_bytes // isa.SCALE_RECORD_BYTES
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
    return 3 + latency + 3 + total + 2


def _tree_sum(vals):
    """Balanced adder tree (a chain would be a long carry path)."""
    vals = list(vals)
    while len(vals) > 1:
        nxt = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)]
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0]


class QKEngine(Engine):
    OPCODE = Opcode.QK
    LIMITS = ("head_dim <= max_head_dim",)  # one key row per beat

    def __init__(self, cfg: DatapathConfig, dma_bytes: int):
        if dma_bytes < 16 or dma_bytes & (dma_bytes - 1):
            raise ValueError(f"dma_bytes: expected a power of two >= 16, got {dma_bytes}")
        self.max_head_dim = dma_bytes
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        m = Module()
        W = self.signature.dma_bytes
        RPB = W // isa.SCALE_RECORD_BYTES  # scale records per beat
        EPB = W // 2  # int16 logits per output beat
        GRP = 16  # products per partial sum
        sc = self.cfg.softmax
        rq = self.cfg.requant
        MB = rq.mult_bits
        a = self.op_args

        chk = self.checks(m, registered=True)
        err_dims, err_tensors = chk.error(stop="q"), chk.error(start="q")
        n_rep = Signal(isa.HEADS_BITS)
        q_stride = Signal(32)  # q_ld * head_dim
        kv_stride = Signal(32)  # kv_ld * head_dim
        vis0 = Signal(isa.ROWS_BITS + 1)  # visible keys of query 0
        m.d.comb += vis0.eq(a.keys - a.rows + 1)
        hd = a.head_dim
        start_run = Signal()
        all_done = self._run(
            m, W, RPB, EPB, GRP, MB, sc, rq, a, n_rep, q_stride, kv_stride, vis0, start_run
        )

        with m.FSM():
            passed = self.check_states(
                m, ("CHK_DIM", err_dims), ("CHK_SPAN", None), ("CHK_ADDR", err_tensors)
            )
            with m.State("RUN"):
                with m.If(all_done):
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["CHK_SPAN"]):
            m.d.sync += [
                n_rep.eq(a.heads // a.kv_heads),
                q_stride.eq(a.q_ld * hd),
                kv_stride.eq(a.kv_ld * hd),
            ]
        m.d.comb += start_run.eq(passed["CHK_ADDR"])
        return m

    def _run(self, m, W, RPB, EPB, GRP, MB, sc, rq, a, n_rep, q_stride, kv_stride, vis0, start_run):
        """The request side, response side, pipeline and packer; returns 'all written'."""
        hd = a.head_dim
        rbits = isa.ROWS_BITS + 1

        # ------------------------------------------------------------ request side
        I_Q, I_QS, I_KS, I_K, I_DONE = range(5)
        ist = Signal(range(5), init=I_DONE)
        ih = Signal(isa.HEADS_BITS + 1)
        it = Signal(rbits)
        ij = Signal(rbits)
        ivis = Signal(rbits)
        irep = Signal(isa.HEADS_BITS)
        q_head = Signal(_ABITS)  # q row 0 of head ih
        q_row = Signal(_ABITS)
        qs_head = Signal(_ABITS)
        qs_row = Signal(_ABITS)
        k_head = Signal(_ABITS)  # key 0 of KV head ih // n_rep
        k_ptr = Signal(_ABITS)
        ks_head = Signal(_ABITS)
        ks_ptr = Signal(_ABITS)
        left = Signal(rbits)
        m.d.comb += left.eq(ivis - ij)

        with m.If(start_run):
            m.d.sync += [
                ist.eq(I_Q),
                ih.eq(0),
                it.eq(0),
                ij.eq(0),
                ivis.eq(vis0),
                irep.eq(0),
                q_head.eq(a.q),
                q_row.eq(a.q),
                qs_head.eq(a.q_scale),
                qs_row.eq(a.q_scale),
                k_head.eq(a.k),
                k_ptr.eq(a.k),
                ks_head.eq(a.k_scale),
                ks_ptr.eq(a.k_scale),
            ]

        rd = self.rd
        with m.Switch(ist):
            with m.Case(I_Q):
                m.d.comb += [rd.valid.eq(1), rd.payload.addr.eq(q_row), rd.payload.len.eq(hd)]
                with m.If(rd.ready):
                    m.d.sync += ist.eq(I_QS)
            with m.Case(I_QS):
                m.d.comb += [
                    rd.valid.eq(1),
                    rd.payload.addr.eq(qs_row),
                    rd.payload.len.eq(isa.SCALE_RECORD_BYTES),
                ]
                with m.If(rd.ready):
                    m.d.sync += ist.eq(I_KS)
            with m.Case(I_KS):
                m.d.comb += [
                    rd.valid.eq(1),
                    rd.payload.addr.eq(ks_ptr),
                    rd.payload.len.eq(Mux(left > RPB, RPB, left) * 4),
                ]
                with m.If(rd.ready):
                    m.d.sync += [ist.eq(I_K), ks_ptr.eq(ks_ptr + W)]
            with m.Case(I_K):
                m.d.comb += [rd.valid.eq(1), rd.payload.addr.eq(k_ptr), rd.payload.len.eq(hd)]
                with m.If(rd.ready):
                    m.d.sync += [ij.eq(ij + 1), k_ptr.eq(k_ptr + hd)]
                    with m.If(ij + 1 == ivis):
                        # next query row
                        m.d.sync += [ij.eq(0), ist.eq(I_Q)]
                        with m.If(it + 1 == a.rows):
                            m.d.sync += [
                                it.eq(0),
                                ivis.eq(vis0),
                                ih.eq(ih + 1),
                                q_head.eq(q_head + q_stride),
                                q_row.eq(q_head + q_stride),
                                qs_head.eq(qs_head + a.q_ld * 4),
                                qs_row.eq(qs_head + a.q_ld * 4),
                            ]
                            with m.If(ih + 1 == a.heads):
                                m.d.sync += ist.eq(I_DONE)
                            with m.If(irep + 1 == n_rep):
                                m.d.sync += [
                                    irep.eq(0),
                                    k_head.eq(k_head + kv_stride),
                                    k_ptr.eq(k_head + kv_stride),
                                    ks_head.eq(ks_head + a.kv_ld * 4),
                                    ks_ptr.eq(ks_head + a.kv_ld * 4),
                                ]
                            with m.Else():
                                m.d.sync += [
                                    irep.eq(irep + 1),
                                    k_ptr.eq(k_head),
                                    ks_ptr.eq(ks_head),
                                ]
                        with m.Else():
                            m.d.sync += [
                                it.eq(it + 1),
                                ivis.eq(ivis + 1),
                                q_row.eq(q_row + hd),
                                qs_row.eq(qs_row + 4),
                                k_ptr.eq(k_head),
                                ks_ptr.eq(ks_head),
                            ]
                    with m.Elif((ij + 1)[: (RPB - 1).bit_length()] == 0):
                        m.d.sync += ist.eq(I_KS)

        # ------------------------------------------------------------ response side
        C_Q, C_QS, C_KS, C_K, C_Z, C_DONE = range(6)
        cst = Signal(range(6), init=C_DONE)
        ch = Signal(isa.HEADS_BITS + 1)
        ct = Signal(rbits)
        cj = Signal(rbits)
        cvis = Signal(rbits)
        zl = Signal(rbits)  # masked keys left in the row
        slot = Signal(range(EPB))  # output position inside the gather beat
        q_vec = Signal(8 * W)
        sq_mant = Signal(isa.SCALE_MANT_BITS)
        sq_shift = Signal(signed(isa.SCALE_SHIFT_BITS))
        ks_buf = Signal(8 * W)

        # pipeline tokens: a logit (val) or a zero run; flush: the gather beat is done
        # (holding ``end`` logits)
        stall = Signal()
        go = Signal()
        m.d.comb += go.eq(~stall)

        tok_valid = Signal()
        tok_val = Signal()
        tok_flush = Signal()
        tok_end = Signal(range(EPB + 1))

        with m.If(start_run):
            m.d.sync += [cst.eq(C_Q), ch.eq(0), ct.eq(0), cj.eq(0), cvis.eq(vis0), slot.eq(0)]

        last_row = (ch + 1 == a.heads) & (ct + 1 == a.rows)

        def next_row():
            m.d.sync += [cj.eq(0), cst.eq(C_Q)]
            with m.If(ct + 1 == a.rows):
                m.d.sync += [ct.eq(0), cvis.eq(vis0), ch.eq(ch + 1)]
                with m.If(ch + 1 == a.heads):
                    m.d.sync += cst.eq(C_DONE)
            with m.Else():
                m.d.sync += [ct.eq(ct + 1), cvis.eq(cvis + 1)]

        rdata = self.rdata
        zn = Signal(range(EPB + 1))  # this cycle's zero run
        m.d.comb += zn.eq(Mux(zl > EPB - slot, EPB - slot, zl))
        with m.Switch(cst):
            with m.Case(C_Q):
                m.d.comb += rdata.ready.eq(go)
                with m.If(go & rdata.valid):
                    m.d.sync += [q_vec.eq(rdata.payload), cst.eq(C_QS)]
            with m.Case(C_QS):
                m.d.comb += rdata.ready.eq(go)
                with m.If(go & rdata.valid):
                    m.d.sync += [
                        sq_mant.eq(rdata.payload[:16]),
                        sq_shift.eq(rdata.payload[16:32]),
                        cst.eq(C_KS),
                    ]
            with m.Case(C_KS):
                m.d.comb += rdata.ready.eq(go)
                with m.If(go & rdata.valid):
                    m.d.sync += [ks_buf.eq(rdata.payload), cst.eq(C_K)]
            with m.Case(C_K):
                m.d.comb += rdata.ready.eq(go)
                row_end = cj + 1 == cvis
                m.d.comb += [
                    tok_valid.eq(go & rdata.valid),
                    tok_val.eq(1),
                    tok_flush.eq((slot == EPB - 1) | (row_end & last_row)),
                    tok_end.eq(slot + 1),
                ]
                with m.If(go & rdata.valid):
                    m.d.sync += [cj.eq(cj + 1), slot.eq(slot + 1)]
                    with m.If(row_end):
                        with m.If(cvis == a.keys):
                            next_row()
                        with m.Else():
                            m.d.sync += [zl.eq(a.keys - cvis), cst.eq(C_Z)]
                    with m.Elif((cj + 1)[: (RPB - 1).bit_length()] == 0):
                        m.d.sync += cst.eq(C_KS)
            with m.Case(C_Z):
                # the last row has no masked key: a zero run never ends the command
                m.d.comb += [
                    tok_valid.eq(go),
                    tok_val.eq(0),
                    tok_flush.eq(slot + zn == EPB),
                    tok_end.eq(slot + zn),
                ]
                with m.If(go):
                    m.d.sync += [zl.eq(zl - zn), slot.eq(slot + zn)]
                    with m.If(zl == zn):
                        next_row()

        # ------------------------------------------------------------ pipeline
        # stage 1: partial sums and the pair scale (q_vec/sq are this row's: a new row's
        # q responses come after every key of this row was accepted)
        prods = [
            q_vec[8 * i : 8 * i + 8].as_signed() * rdata.payload[8 * i : 8 * i + 8].as_signed()
            for i in range(W)
        ]
        n_part = W // GRP
        part_bits = 8 + 8 + (GRP - 1).bit_length()
        recs = [ks_buf[32 * i : 32 * i + 32] for i in range(RPB)]
        rsel = cj[: (RPB - 1).bit_length()]
        sk_mant = Signal(16)
        sk_shift = Signal(signed(isa.SCALE_SHIFT_BITS))
        with m.Switch(rsel):
            for i, r in enumerate(recs):
                with m.Case(i):
                    m.d.comb += [sk_mant.eq(r[:16]), sk_shift.eq(r[16:32])]
        pm, ps = scale_mul(m, sq_mant, sq_shift, sk_mant, sk_shift, MB, "pair")

        v1, val1, fl1 = Signal(), Signal(), Signal()
        end1 = Signal(range(EPB + 1))
        slot1 = Signal(range(EPB))
        parts1 = [Signal(signed(part_bits), name=f"part1_{i}") for i in range(n_part)]
        pm1 = Signal(MB)
        ps1 = Signal(signed(isa.SCALE_SHIFT_BITS + 2))
        v2, val2, fl2 = Signal(), Signal(), Signal()
        end2 = Signal(range(EPB + 1))
        slot2 = Signal(range(EPB))
        dot_bits = 8 + 8 + (W - 1).bit_length()
        dot2 = Signal(signed(dot_bits))
        pm2 = Signal(MB)
        ps2 = Signal(signed(isa.SCALE_SHIFT_BITS + 2))
        v3, val3, fl3 = Signal(), Signal(), Signal()
        end3 = Signal(range(EPB + 1))
        slot3 = Signal(range(EPB))
        y3 = Signal(signed(sc.in_bits))

        with m.If(go):
            m.d.sync += [
                v1.eq(tok_valid),
                val1.eq(tok_val),
                fl1.eq(tok_flush),
                end1.eq(tok_end),
                slot1.eq(slot),
                pm1.eq(pm),
                ps1.eq(ps),
            ]
            m.d.sync += [
                parts1[i].eq(_tree_sum(prods[GRP * i : GRP * (i + 1)])) for i in range(n_part)
            ]
            m.d.sync += [
                v2.eq(v1),
                val2.eq(val1),
                fl2.eq(fl1),
                end2.eq(end1),
                slot2.eq(slot1),
                dot2.eq(_tree_sum(parts1)),
                pm2.eq(pm1),
                ps2.eq(ps1),
            ]
        y = requant(m, dot2, pm2, ps2 - sc.in_frac_bits, sc.in_bits, rq.shift_max, "lg")
        with m.If(go):
            m.d.sync += [
                v3.eq(v2),
                val3.eq(val2),
                fl3.eq(fl2),
                end3.eq(end2),
                slot3.eq(slot2),
                y3.eq(y),
            ]

        # ------------------------------------------------------------ packer
        gather = Signal(16 * EPB)
        pend_valid = Signal()
        pend_data = Signal(8 * W)
        pend_len = Signal(range(W + 1))
        pend_addr = Signal(_ABITS)
        waddr = Signal(_ABITS)
        with m.If(start_run):
            m.d.sync += [gather.eq(0), waddr.eq(a.dst)]

        wr = self.wr
        m.d.comb += [
            wr.valid.eq(pend_valid),
            wr.payload.addr.eq(pend_addr),
            wr.payload.len.eq(pend_len),
            wr.payload.data.eq(pend_data),
            stall.eq(v3 & fl3 & pend_valid & ~wr.ready),
        ]
        merged = Signal(16 * EPB)
        m.d.comb += merged.eq(gather)
        with m.If(val3):
            with m.Switch(slot3):
                for i in range(EPB):
                    with m.Case(i):
                        m.d.comb += merged[16 * i : 16 * i + 16].eq(y3)
        with m.If(wr.valid & wr.ready):
            m.d.sync += pend_valid.eq(0)
        with m.If(go & v3):
            with m.If(fl3):
                m.d.sync += [
                    pend_valid.eq(1),
                    pend_data.eq(merged),
                    pend_len.eq(end3 * 2),
                    pend_addr.eq(waddr),
                    waddr.eq(waddr + W),
                    gather.eq(0),
                ]
            with m.Else():
                m.d.sync += gather.eq(merged)

        all_done = Signal()
        m.d.comb += all_done.eq((cst == C_DONE) & ~v1 & ~v2 & ~v3 & ~pend_valid)
        return all_done
