"""TLMM_SPARSE engine: the ternary projection that reads only the weight beats of live
activation groups (golden: ``Executor._op_tlmm_sparse`` -> ``golden.model.op_tlmm``; the
weight format: ``golden.isa.pack_sparse_weights``; DESIGN §9).

Checks: the TLMM_SPARSE contract (``golden.isa.CONTRACTS``) pipelined as TLMM's
(``hw/ops/checkpipe.py``): rows/k/n >= 1, k <= ``TLMMConfig.max_k()`` and the engine
limit k <= ``max_k`` (``LIMITS``; BAD_DIM); src in range; weights in range; dst aligned to
4 (ALIGN) and in range. The data check "weight codes" is golden's only (``GOLDEN_ONLY``):
the engine decodes any code, and never reads the padding rows of the last block.

Per token row m (rows follow one another)
-----------------------------------------
* Activations: the k bytes of the row in chunks of CB = G * LG bytes (LG = dma_bytes // G
  groups: 42 at G = 3 and 128-byte beats), the last one short (the memory zero-fills), each
  written as one word of the *row memory* (``ceil(max_k / CB)`` words of CB bytes + LG
  live bits: group j of the word is live when one of its G bytes is non-zero). While the
  chunks land, the first and last words holding a live group (Fw, Lw) are noted.
* Weights: for each row block r (R = T*Q output rows), the *scanner* walks the live bits
  of words Fw..Lw, one live group (c, o) a cycle (the lowest set bit of the word it holds,
  isolated as ``cur & -cur``, then cleared; whether the word ends with this pick is a
  register kept from a count of its live groups, stored per word as the chunk lands), and
  requests the beat of group g = c*LG + o
  at ``weights + (r*Kg + g) * beat_bytes``, ``beat_bytes`` long (the last block: as far as
  its codes reach, ``golden.isa.sparse_beat_read_bytes``). A word costs a cycle even if
  it holds no live group; the next word is read from the row memory while the current one
  is scanned, so a word boundary costs nothing. A row with no live group issues one
  *empty* item per block (no read: the block's outputs are 0).
* Every request (activation chunk, weight beat, empty item) pushes a descriptor into the
  request FIFO (``outstanding`` deep; a request waits while the FIFO held
  ``outstanding - 3`` entries a cycle before, which bounds the reads in flight): the response
  side pops it with the response beat, so it needs no second scanner. A weight beat's
  descriptor carries its group's G activations, read from the row memory at request time.
* Datapath per weight beat (registered stages): the table of the group
  (``hw.tlmm.build_table``: 3^G entries, or the mirrored half), with the beat's R codes;
  R lane lookups (``hw.tlmm.lookup``); R int32 accumulators (cleared by a block's first
  beat). A block's last beat copies the accumulators into the output buffer, written to
  ``dst + (m*n + r*R) * 4`` in writes of dma_bytes (the rows < n only); a block that ends
  while the previous one is still being written waits (the lookup pipeline freezes).
* The next row's activation chunks are requested once the scanner has finished the row;
  they land after the row's last beat, and its scan starts when its last chunk has landed
  (a memory round trip per row).

Cycles (no memory stalls; ``expected_cycles``): the recurrence of its docstring, per row:
its chunk requests, the round trip, per block one cycle per live group and per word of
Fw..Lw without one (empty rows: one per block), the pipeline, and the output writes where
a block has fewer beats than writes; ``sim/test_op_tlmm_sparse.py`` measures it exactly.

Timing and size (kv260 point alone, ``python -m hw.synth engine_tlmm_sparse --no-ecp5``):
22.3 K LUT (the R lane lookups most of it), 156 LUTRAM (the row memory and the counts),
12.5 K FF, 11 DSP (the set-up and checks); 9.1 levels by the depth rule of ``hw.timing``:
the scanner's pick (``cur & -cur`` into the activation select and the beat offset), then
the contract checks' pipeline and the FIFO's level (8.1), the table build (7.25), the
rest 7 or less.

Differences from the golden backend: k above ``max_k`` is BAD_DIM (golden allows up to
``TLMMConfig.max_k()``); invalid weight codes are not detected.
"""

from __future__ import annotations

from functools import reduce

import numpy as np
from amaranth import Array, Cat, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.tlmm import build_table, lookup

from .base import Engine
from .checkpipe import PolyCtx, materialize

SETUP_CYCLES = 9  # wait states after start: Kg * beat_bytes and the checks, pipelined
OUTSTANDING = 64  # request FIFO depth: the reads in flight


class Kind:
    ACT, WGT, EMPTY = 0, 1, 2


def _dims(cfg: DatapathConfig, dma_bytes: int) -> tuple[int, int, int, int]:
    """(R lanes, LG groups per row-memory word, CB bytes per chunk, beat_bytes)."""
    tc = cfg.tlmm
    lg = dma_bytes // tc.group
    return isa.sparse_lanes(tc), lg, lg * tc.group, isa.tlmm_beat_bytes(tc)


def expected_cycles(
    rows: int,
    k: int,
    n: int,
    live,
    cfg: DatapathConfig,
    dma_bytes: int | None = None,
    latency: int = 1,
    outstanding: int = OUTSTANDING,
) -> int:
    """Cycles of one command without memory stalls, the memory answering ``latency``
    cycles after a request; ``live``: the groups' live bits (``golden.tlmm.live_groups``,
    bool [rows, Kg]); ``dma_bytes`` None: ``golden.isa.dma_bytes(cfg)``. The engine's
    pipeline replayed (cycle 0: ``start``):

    * row 0's chunk c is requested at SETUP_CYCLES + 3 + c; a request's descriptor heads
      the FIFO 2 cycles later, its response ``latency`` cycles later: it is popped at the
      later of the two (an empty item: the first), a cycle after the one before it at the
      earliest (items: not while the accumulators stall);
    * the scan starts 4 cycles after the row's last chunk is popped and picks a live
      group a cycle (a word of Fw..Lw without one: a cycle, no item; an empty row: an item
      per block from the third cycle, no scan), each requested 2 cycles after its pick;
      the next row's chunks follow from 3 cycles after the last pick;
    * a popped item reaches the accumulators 2 cycles later (its stages freeze while they
      stall); a block's last item stalls there while the previous block's P writes
      (P = ceil(outputs * 4 / dma_bytes), the cycles after its own last item) last;
      ``done`` comes with the final write.

    The request FIFO (``outstanding`` deep) is taken to have room for every request:
    ValueError where the replay finds it (nearly) full, which would delay the requests.
    """
    dma_bytes = isa.dma_bytes(cfg) if dma_bytes is None else dma_bytes
    R, LG, CB, _ = _dims(cfg, dma_bytes)
    live = np.asarray(live, bool)
    nr, chunks = -(-n // R), -(-k // CB)
    words = -(-live.shape[1] // LG)
    # the FIFO in request order: [available, kind, last, write pieces (a block's last item),
    # popped, requested]
    fifo: list[list] = []
    head = 0
    r1 = r2 = None
    busy_end, done, t = -1, None, 0

    def chunk_requests(t0):
        for c in range(chunks):
            fifo.append([t0 + c + max(latency, 2), Kind.ACT, c == chunks - 1, 0, None, t0 + c])

    def items(m, popped):
        """Row m's items, its last chunk popped at ``popped``; the cycle of the last pick."""
        pops = [int(live[m, w * LG : (w + 1) * LG].sum()) for w in range(words)]
        nz = [w for w in range(words) if pops[w]]
        pick = popped + (5 if nz else 3)
        for b in range(nr):
            pieces = -(-min(R, n - b * R) * 4 // dma_bytes)
            for w in range(nz[0], nz[-1] + 1) if nz else [None]:
                cnt = 1 if w is None else pops[w]
                if cnt == 0:
                    pick += 1  # a word without a live group
                for i in range(cnt):
                    last = (w is None or w == nz[-1]) and i == cnt - 1
                    wait = 2 if w is None else max(latency, 2)  # an empty item reads nothing
                    fifo.append([pick + 2 + wait, Kind.WGT, last, pieces, None, pick + 2])
                    pick += 1
        return pick - 1

    chunk_requests(SETUP_CYCLES + 3)
    m = 0
    while done is None:
        stall = r2 is not None and r2[2] and t <= busy_end
        if r2 is not None and not stall and r2[2]:
            busy_end = t + r2[3]
            if head == len(fifo) and r1 is None and m == rows:
                done = busy_end
        pop = None
        if head < len(fifo) and fifo[head][0] <= t and (fifo[head][1] == Kind.ACT or not stall):
            fifo[head][4] = t
            if fifo[head][1] == Kind.ACT:
                if fifo[head][2]:  # the row's last chunk: its items, the next row's chunks
                    last_pick = items(m, t)
                    m += 1
                    if m < rows:
                        chunk_requests(last_pick + 3)
                head += 1
            else:
                pop = fifo[head]
                head += 1
        if not stall:
            r1, r2 = pop, r1
        t += 1
    # the entries in the FIFO a cycle before each request (pops and requests are in order)
    popped = 0
    for i, e in enumerate(fifo):
        fired = e[5]
        while fifo[popped][4] < fired - 1:
            popped += 1
        if i - popped >= outstanding - 4:
            raise ValueError(f"the request FIFO ({outstanding} deep) fills: not modelled")
    return done


def _popcount(bits) -> Value:
    """The number of set ``bits``: a balanced tree of adds (not a chain)."""
    vals = [Value.cast(b) for b in bits]
    while len(vals) > 1:
        vals = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)] + (
            [vals[-1]] if len(vals) % 2 else []
        )
    return vals[0]


class TLMMSparseEngine(Engine):
    OPCODE = Opcode.TLMM_SPARSE
    DESIGN_FIELDS = {"max_k": "max_k"}
    LIMITS = ("k <= max_k",)  # the row memory's depth
    GOLDEN_ONLY = ("weight codes",)

    def __init__(
        self, cfg: DatapathConfig, dma_bytes: int, *, max_k: int, outstanding: int = OUTSTANDING
    ):
        tc = cfg.tlmm
        need = max(tc.group, isa.tlmm_beat_bytes(tc), tc.acc_bits // 8)
        if dma_bytes < need:
            raise ValueError(f"dma_bytes: {dma_bytes} is below the {need} bytes of a beat")
        if tc.acc_bits != 32:
            raise ValueError(f"cfg.tlmm.acc_bits: the engine writes int32, got {tc.acc_bits}")
        if not 1 <= max_k <= tc.max_k():
            raise ValueError(f"max_k: expected 1..{tc.max_k()}, got {max_k}")
        if outstanding < 5:
            raise ValueError(f"outstanding: expected >= 5, got {outstanding}")
        self.max_k, self.outstanding = max_k, outstanding
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        tc = self.cfg.tlmm
        G, cb = tc.group, tc.code_bits
        W = self.signature.dma_bytes
        R, LG, CB, BB = _dims(self.cfg, W)
        LW = W // 4  # int32 outputs per write
        words = -(-self.max_k // CB)
        ab = tc.act_bits
        m = Module()
        a = self.op_args

        chk = self.checks(m, pipelined=True)
        if chk.latency > SETUP_CYCLES + 1:
            raise ValueError(f"TLMM_SPARSE checks need {chk.latency} cycles")
        err = chk.error()
        ctx = PolyCtx(m, "setup")
        kgbb_c, kgbb_at = materialize(ctx, ((ctx.atom(a.k) + (G - 1)) // G) * BB, "kgbb_c")
        if kgbb_at > SETUP_CYCLES + 1:
            raise ValueError(f"TLMM_SPARSE set-up needs {kgbb_at} cycles")
        kgbb = Signal(32)

        # ---------------------------------------------------------- row memory
        word_l = data.StructLayout({"data": unsigned(CB * 8), "live": unsigned(LG)})
        m.submodules.rowmem = rowmem = Memory(shape=word_l, depth=words, init=[])
        wport, rport = rowmem.write_port(), rowmem.read_port()
        # each word's live group count, written a cycle after the word (from registers)
        m.submodules.cntmem = cntmem = Memory(shape=range(LG + 1), depth=words, init=[])
        cwport, cport = cntmem.write_port(), cntmem.read_port()

        # ---------------------------------------------------------- request FIFO
        widx = range(max(words, 2))
        entry_l = data.StructLayout(
            {
                "kind": 2,
                "first": 1,  # ACT: the row's first chunk; else the block's first item
                "last": 1,  # ACT: the row's last chunk; else the block's last item
                "idx": widx,  # ACT: the chunk's row-memory word
                "xs": unsigned(G * ab),  # WGT: the group's activations
            }
        )
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=entry_l.size, depth=self.outstanding)
        head = data.View(entry_l, fifo.r_data)

        # ---------------------------------------------------------- shared row state
        fw = Signal(widx)  # first / last word with a live group
        lw = Signal(widx)
        fw_off = Signal(32)  # Fw * LG * beat_bytes
        act_off = Signal(32)  # the same for the next chunk to land
        any_live = Signal()
        row_ready = Signal()  # the row's chunks have all landed
        row_ready_clr = Signal()

        # ---------------------------------------------------------- request side
        ST_IDLE, ST_ACT, ST_WAIT, ST_PRIME, ST_SCAN, ST_EMPTY = range(6)
        st = Signal(range(6))
        rq_rows = Signal(16)  # rows left, this one included
        rq_lastrow = Signal()  # rq_rows == 1
        rq_rowbase = Signal(isa.ADDR_BITS + 1)
        rq_nextbase = Signal(isa.ADDR_BITS + 1)  # rq_rowbase + k (the row end is far off)
        m.d.sync += rq_nextbase.eq(rq_rowbase + a.k)
        aptr = Signal(isa.ADDR_BITS + 1)
        arem = Signal(17)
        aidx = Signal(widx)
        nrem = Signal(17)  # outputs of the row from the current block on
        cur = Signal(LG)  # live bits of word c not yet requested
        cur_data = Signal(CB * 8)
        n1 = Signal(widx)  # the word on the row memory's read port
        c_last = Signal()  # word c is Lw
        fresh = Signal()  # no word loaded yet in this row
        blk_first = Signal()
        wbase = Signal(isa.ADDR_BITS + 8)  # beat address of group (c, 0) in this block
        nb_first = Signal(isa.ADDR_BITS + 8)  # the same of (Fw, 0) in the next block
        # stage 1 (a picked item) and the request register
        s1 = Signal(
            data.StructLayout(
                {
                    "valid": 1,
                    "kind": 2,
                    "first": 1,
                    "last": 1,
                    "off": range((LG - 1) * BB + 1),  # o * beat_bytes
                    "xs": unsigned(G * ab),
                    "wbase": unsigned(isa.ADDR_BITS + 8),
                    "blen": range(BB + 1),
                }
            )
        )
        rq_valid = Signal()
        rq_read = Signal()
        rq_addr = Signal(isa.ADDR_BITS)
        rq_len = Signal(range(W + 1))
        rq_entry = Signal(entry_l)

        rq_fire = Signal()
        adv = Signal()
        # the FIFO has room for a push: a register (the FIFO's own w_rdy is a compare) from
        # a count of its entries (a cycle old: at most one more since), below outstanding - 3
        room = Signal(init=1)
        fifo_n = Signal(range(self.outstanding + 1))
        m.d.sync += [
            fifo_n.eq(fifo_n + fifo.w_en - fifo.r_en),
            room.eq(fifo_n < self.outstanding - 3),
        ]
        m.d.comb += [
            self.rd.valid.eq(rq_valid & rq_read & room),
            self.rd.payload.addr.eq(rq_addr),
            self.rd.payload.len.eq(rq_len),
            rq_fire.eq(rq_valid & room & (~rq_read | self.rd.ready)),
            adv.eq(~rq_valid | rq_fire),
            fifo.w_en.eq(rq_fire),
            fifo.w_data.eq(rq_entry),
        ]

        # the scanner's pick: the lowest live group of cur
        iso = Signal(LG)
        rest = Signal(LG)
        # cur ends this cycle (it holds one live group or none): a register, kept with cur
        trans = Signal()
        cnt = Signal(range(LG + 1))  # the live groups in cur
        m.d.comb += [iso.eq(cur & -cur), rest.eq(cur & ~iso)]
        groups = [cur_data[j * G * ab : (j + 1) * G * ab] for j in range(LG)]
        pick_xs = reduce(lambda x, y: x | y, [Mux(iso[j], groups[j], 0) for j in range(LG)])
        last_blk = Signal()  # nrem <= R, kept with nrem (a register, not a compare)
        blen = Signal(range(BB + 1))
        outs = Mux(last_blk, nrem[: R.bit_length()], R)
        # outs * code_bits as shifted adds (a constant multiply would map to a bare DSP)
        m.d.comb += blen.eq(
            (sum(outs << i for i in range(cb.bit_length()) if cb >> i & 1) + 7) >> 3
        )
        row_end = Signal()
        nxt_word = Mux(n1 == lw, fw, n1 + 1)
        m.d.comb += [
            rport.addr.eq(Mux(st == ST_PRIME, fw, nxt_word)),
            rport.en.eq((st == ST_PRIME) | ((st == ST_SCAN) & adv & trans & ~row_end)),
            cport.addr.eq(rport.addr),
            cport.en.eq(rport.en),
        ]
        with m.Switch(st):
            with m.Case(ST_SCAN):
                m.d.comb += row_end.eq(trans & c_last & ~fresh & last_blk)
            with m.Case(ST_EMPTY):
                m.d.comb += row_end.eq(last_blk)

        # S1 -> the request register: the beat address (wbase + o * beat_bytes)
        a_last = Signal()  # arem <= CB: kept with arem
        act_len = Mux(a_last, arem[: CB.bit_length()], CB)
        with m.If(adv):
            m.d.sync += [rq_valid.eq(0), s1.valid.eq(0)]
            with m.If(s1.valid):
                m.d.sync += [
                    rq_valid.eq(1),
                    rq_read.eq(s1.kind == Kind.WGT),
                    rq_addr.eq(s1.wbase + s1.off),
                    rq_len.eq(s1.blen),
                    rq_entry.kind.eq(s1.kind),
                    rq_entry.first.eq(s1.first),
                    rq_entry.last.eq(s1.last),
                    rq_entry.xs.eq(s1.xs),
                ]
            with m.Elif(st == ST_ACT):
                m.d.sync += [
                    rq_valid.eq(1),
                    rq_read.eq(1),
                    rq_addr.eq(aptr),
                    rq_len.eq(act_len),
                    rq_entry.kind.eq(Kind.ACT),
                    rq_entry.first.eq(aidx == 0),
                    rq_entry.last.eq(a_last),
                    rq_entry.idx.eq(aidx),
                    aptr.eq(aptr + CB),
                    arem.eq(arem - act_len),
                    a_last.eq(arem <= 2 * CB),
                    aidx.eq(aidx + 1),
                ]
                with m.If(a_last):
                    m.d.sync += st.eq(ST_WAIT)

            # the pick's data whatever the state (only an enable before these registers; an
            # empty item's activations are ignored by the response side)
            m.d.sync += [
                s1.off.eq(reduce(lambda x, y: x | y, [Mux(iso[j], j * BB, 0) for j in range(LG)])),
                s1.xs.eq(pick_xs),
                s1.wbase.eq(wbase),
                s1.blen.eq(blen),
            ]
            with m.If(st == ST_SCAN):
                m.d.sync += [
                    s1.valid.eq(cur != 0),
                    s1.kind.eq(Kind.WGT),
                    s1.first.eq(blk_first),
                    s1.last.eq(trans & c_last),
                ]
                with m.If(cur != 0):
                    m.d.sync += blk_first.eq(0)
                with m.If(~trans):  # rest holds one group at most when cur held two
                    m.d.sync += [cur.eq(rest), cnt.eq(cnt - 1), trans.eq(cnt <= 2)]
                with m.Elif(~row_end):  # load word n1 (read the one after it)
                    rd_word = rport.data
                    m.d.sync += [
                        cur.eq(rd_word.live),
                        cnt.eq(cport.data),
                        trans.eq(cport.data <= 1),
                        cur_data.eq(rd_word.data),
                        n1.eq(nxt_word),
                        c_last.eq(n1 == lw),
                        fresh.eq(0),
                    ]
                    with m.If(c_last):  # a new block (or the row's first)
                        m.d.sync += [
                            wbase.eq(nb_first),
                            nb_first.eq(nb_first + kgbb),
                            blk_first.eq(1),
                        ]
                        with m.If(~fresh):
                            m.d.sync += [nrem.eq(nrem - R), last_blk.eq(nrem <= 2 * R)]
                    with m.Else():
                        m.d.sync += wbase.eq(wbase + LG * BB)
            with m.If(st == ST_EMPTY):
                m.d.sync += [
                    s1.valid.eq(1),
                    s1.kind.eq(Kind.EMPTY),
                    s1.first.eq(1),
                    s1.last.eq(1),
                ]
                with m.If(~last_blk):
                    m.d.sync += [nrem.eq(nrem - R), last_blk.eq(nrem <= 2 * R)]
            with m.If(row_end):
                with m.If(rq_lastrow):
                    m.d.sync += st.eq(ST_IDLE)
                with m.Else():
                    m.d.sync += [
                        st.eq(ST_ACT),
                        rq_rows.eq(rq_rows - 1),
                        rq_lastrow.eq(rq_rows == 2),
                        rq_rowbase.eq(rq_nextbase),
                        aptr.eq(rq_nextbase),
                        arem.eq(a.k),
                        a_last.eq(a.k <= CB),
                        aidx.eq(0),
                    ]
        with m.If(st == ST_WAIT):
            with m.If(row_ready):
                m.d.comb += row_ready_clr.eq(1)
                m.d.sync += [
                    nrem.eq(a.n),
                    last_blk.eq(a.n <= R),
                    st.eq(Mux(any_live, ST_PRIME, ST_EMPTY)),
                ]
        with m.If(st == ST_PRIME):  # word Fw onto the read port; the first scan cycle loads it
            m.d.sync += [
                st.eq(ST_SCAN),
                n1.eq(fw),
                c_last.eq(1),
                fresh.eq(1),
                cur.eq(0),
                trans.eq(1),
                nb_first.eq(a.weights + fw_off),
            ]

        # ---------------------------------------------------------- response side
        stall = Signal()
        is_act = fifo.r_rdy & (head.kind == Kind.ACT)
        is_wgt = fifo.r_rdy & (head.kind == Kind.WGT)
        is_empty = fifo.r_rdy & (head.kind == Kind.EMPTY)
        act_pop = Signal()
        item_pop = Signal()
        m.d.comb += [
            act_pop.eq(is_act & self.rdata.valid),
            item_pop.eq(~stall & (is_empty | (is_wgt & self.rdata.valid))),
            self.rdata.ready.eq(is_act | (is_wgt & ~stall)),
            fifo.r_en.eq(act_pop | item_pop),
        ]
        # an activation chunk lands in the row memory with its live bits
        chunk = self.rdata.payload[: CB * 8]
        live = Signal(LG)
        m.d.comb += live.eq(Cat(chunk[j * G * ab : (j + 1) * G * ab] != 0 for j in range(LG)))
        m.d.comb += [
            wport.addr.eq(head.idx),
            wport.data.eq(Cat(chunk, live)),
            wport.en.eq(act_pop),
        ]
        # the row's Fw / Lw a cycle later, from registers (the live bits' OR tree ends here)
        landed = Signal(
            data.StructLayout(
                {"valid": 1, "first": 1, "last": 1, "nz": 1, "idx": widx, "live": unsigned(LG)}
            )
        )
        m.d.sync += [
            landed.valid.eq(act_pop),
            landed.first.eq(head.first),
            landed.last.eq(head.last),
            landed.nz.eq(live != 0),
            landed.idx.eq(head.idx),
            landed.live.eq(live),
        ]
        # the count in two registered steps: per 7 live bits, then their sum (written before
        # the scan of the row can read it: that waits for row_ready a cycle more)
        parts = [landed.live[i : i + 7] for i in range(0, LG, 7)]
        part_n = [Signal(range(len(p) + 1), name=f"cnt_part{j}") for j, p in enumerate(parts)]
        part_idx = Signal(widx)
        part_valid = Signal()
        m.d.sync += [n.eq(_popcount(p)) for n, p in zip(part_n, parts, strict=True)]
        m.d.sync += [part_idx.eq(landed.idx), part_valid.eq(landed.valid)]
        m.d.comb += [
            cwport.addr.eq(part_idx),
            cwport.data.eq(_popcount(part_n)),
            cwport.en.eq(part_valid),
        ]
        with m.If(row_ready_clr):
            m.d.sync += row_ready.eq(0)
        with m.If(landed.valid):
            m.d.sync += act_off.eq(Mux(landed.first, 0, act_off) + LG * BB)
            with m.If(landed.first):
                m.d.sync += [any_live.eq(landed.nz), fw.eq(0), lw.eq(0), fw_off.eq(0)]
            with m.Elif(landed.nz):
                m.d.sync += [lw.eq(landed.idx), any_live.eq(1)]
                with m.If(~any_live):
                    m.d.sync += [fw.eq(landed.idx), fw_off.eq(act_off)]
            with m.If(landed.last):
                m.d.sync += row_ready.eq(1)

        # stage r1: the group's table and the beat's codes
        ctrl = data.StructLayout({"valid": 1, "first": 1, "last": 1})
        r1 = Signal(ctrl)
        r1_table = Signal(tc.entries * tc.entry_bits)
        r1_codes = Signal(R * cb)
        # an empty item: a table of zeros (its codes are whatever the bus holds)
        head_xs = Mux(head.kind == Kind.EMPTY, 0, head.xs)
        xs = [head_xs[i * ab : (i + 1) * ab].as_signed() for i in range(G)]
        with m.If(~stall):
            m.d.sync += [
                r1.valid.eq(item_pop),
                r1.first.eq(head.first),
                r1.last.eq(head.last),
                r1_table.eq(build_table(m, xs, tc, "build")),
                r1_codes.eq(self.rdata.payload[: R * cb]),
            ]
        # stage r2: the R lane lookups
        r2 = Signal(ctrl)
        looks = [Signal(tc.entry_bits, name=f"look{i}") for i in range(R)]
        with m.If(~stall):
            m.d.sync += r2.eq(r1)
            for i in range(R):
                m.d.sync += looks[i].eq(lookup(r1_table, r1_codes[i * cb : (i + 1) * cb], tc))
        # accumulate; a block's last beat hands the sums to the output buffer
        acc = [Signal(32, name=f"acc{i}") for i in range(R)]
        acc_next = [Mux(r2.first, 0, acc[i].as_signed()) + looks[i].as_signed() for i in range(R)]
        out_busy = Signal()
        out_buf = Signal(R * 32)
        m.d.comb += stall.eq(r2.valid & r2.last & out_busy)

        wr_ptr = Signal(isa.ADDR_BITS + 8)
        wr_nrem = Signal(17)
        wr_row = Signal(16)
        blk_rem = Signal(range(R + 1))
        npieces = -(-R // LW)
        piece = Signal(range(max(npieces, 2)))  # the write of the block being made
        final = Signal()  # the output buffer holds the command's last block
        with m.If(r2.valid & ~stall):
            m.d.sync += [acc[i].eq(acc_next[i]) for i in range(R)]
            with m.If(r2.last):
                m.d.sync += [
                    out_buf.eq(Cat(v[:32] for v in acc_next)),
                    out_busy.eq(1),
                    blk_rem.eq(Mux(wr_nrem > R, R, wr_nrem)),
                    piece.eq(0),
                ]
                with m.If(wr_nrem <= R):
                    m.d.sync += [
                        wr_nrem.eq(a.n),
                        wr_row.eq(wr_row + 1),
                        final.eq(wr_row == a.rows - 1),
                    ]
                with m.Else():
                    m.d.sync += [wr_nrem.eq(wr_nrem - R), final.eq(0)]

        # writes of the output buffer, LW outputs each
        wr_len = Signal(range(W + 1))
        m.d.comb += [
            wr_len.eq(Mux(blk_rem > LW, LW, blk_rem) << 2),
            self.wr.valid.eq(out_busy),
            self.wr.payload.addr.eq(wr_ptr),
            self.wr.payload.len.eq(wr_len),
            # a multiplexer of the buffer's pieces (a shifting buffer costs a LUT a bit)
            self.wr.payload.data.eq(
                Array(out_buf[i * W * 8 : (i + 1) * W * 8] for i in range(npieces))[piece]
            ),
        ]
        all_done = Signal()
        with m.If(self.wr.valid & self.wr.ready):
            m.d.sync += [
                wr_ptr.eq(wr_ptr + wr_len),
                blk_rem.eq(blk_rem - LW),
                piece.eq(piece + 1),
            ]
            with m.If(blk_rem <= LW):
                m.d.sync += out_busy.eq(0)
                m.d.comb += all_done.eq(final)

        with m.FSM():
            waits = [(f"SETUP{i}", None) for i in range(SETUP_CYCLES)]
            passed = self.check_states(m, *waits, ("CHECK", err))
            with m.State("RUN"):
                with m.If(all_done):
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["CHECK"]):
            m.d.sync += [
                kgbb.eq(kgbb_c),
                st.eq(ST_ACT),
                rq_rows.eq(a.rows),
                rq_lastrow.eq(a.rows == 1),
                rq_rowbase.eq(a.src),
                aptr.eq(a.src),
                arem.eq(a.k),
                a_last.eq(a.k <= CB),
                aidx.eq(0),
                wr_ptr.eq(a.dst),
                wr_nrem.eq(a.n),
                wr_row.eq(0),
                final.eq(0),
                row_ready.eq(0),
            ]
        return m
