"""TLMM engine: the ternary projection (golden: ``Executor._op_tlmm`` ->
``golden.model.op_tlmm``; the datapath is ``hw.tlmm.TLMM``).

Checks: the TLMM contract (``golden.isa.CONTRACTS``), in one cycle: rows/k/n >= 1, k <=
``TLMMConfig.max_k()`` and the engine limits k <= ``max_k``, n <= ``max_n`` when masked
(``LIMITS``; BAD_DIM); src in range (int8: no alignment); weights in range; mask (when
masked) and dst aligned to 4 (ALIGN) and in range. The
contract's data check "weight codes" (a code ``pack_tlmm_weights`` never writes:
BAD_OPERAND) is golden's only (``GOLDEN_ONLY``): the engine decodes any 5-bit code.

For each token row m: read the Kc activation chunks (G*T bytes from ``src + m*(k +
src_skip)``; the last one short, zero-filled by the memory) then the Nb*Kc weight beats
(``golden.isa.tlmm_beat_bytes``) in tile order; the responses go, in order, to the engine's
``act``/``wgt`` streams; each ``out`` beat (Q accumulators) is written to
``dst + (m*n + b*Q)*4`` (the last block of a row short). Reads of row m+1 are issued as
soon as those of row m are, so the engine's next table build overlaps the lookups.

P tokens per weight beat (``tokens`` = ``AccelConfig.tlmm_tokens``, a power of two; P = 1
is the above): an unmasked command's rows go in blocks of P (the last np = rows mod P, if
any, short). Per block the request side reads each row's Kc activation chunks (row by
row), then the Nb*Kc weight beats once; the datapath (``hw.tlmm.TLMM(tokens=P)``) looks
each beat up in the np rows' tables and gives, per row block b, np ``out`` beats, row by
row, written to ``dst + ((m0 + p)*n + b*Q)*4``. Bytes read: ``golden.isa.tlmm_read_bytes(...,
tokens=P)`` (weights ceil(rows/P) times). A masked command goes row by row at any P (as
P = 1: bytes, cycles and the mask logic below unchanged). Decode (rows = 1) is the P = 1
command exactly. The runtime (``host.runtime``) issues each projection of a prefill chunk
(up to ``max_chunk`` = 64 tokens) as one TLMM over its rows, so the blocking needs nothing
of it; only the commands it splits per row (k above ``max_k``: K slices, rows = 1) and the
masked ReLU^2 up_proj read their weights per row.

Cycles (no memory stalls; ``expected_cycles``): one beat per cycle, rows * Kc * (1 + Nb)
(each row's activation chunks, then its weight beats: the block's table build of row m+1
comes after row m's lookups through the one port) plus the first response's latency, the
set-up and check cycles and the block's pipeline latency -- ``hw.tlmm.expected_cycles(rows,
k, n) + (rows - 1) * Kc + latency + 1 + SETUP_CYCLES``, measured exactly so by
``sim/test_op_tlmm.py``.

Cycles at P > 1 (unmasked, no memory stalls; ``expected_cycles(..., tokens=P)``): per
block of np rows (np + Nb) * Kc reads, plus (Nb - 1) * max(0, np - Kc) (a row block's np
outputs leave one a cycle: with Kc < np each row block takes np cycles), plus
max(0, np' - (np + 1) * Kc) after a block of np' rows (its last outputs against this
block's first); then the last block's np - 1 outputs after its end, and the P = 1 tail
(the first response's latency, the pipeline latency, 1 and SETUP_CYCLES). Measured
exactly so by ``sim/test_op_tlmm.py``. With Kc >= P: rows*Kc + ceil(rows/P)*Nb*Kc + tail,
against rows*Kc*(1 + Nb) at P = 1.

Masked (masked=1: ``mask`` int32 [rows, n], output j of row m is 0 where mask[m, j] <= 0)
-------------------------------------------------------------------------------------
Per row the request side first reads the mask row (Mr = ceil(4n/dma_bytes) reads from
``mask + m*n*4``), then the activation chunks, then the weight beats. The response side
turns each mask beat into its E = dma_bytes/4 "entry > 0" bits (a register stage), writes
them into the *mask memory* (one word per mask beat, a bank per row mod 4; sized by the
design limit ``max_n``, ``LIMITS``: n <= max_n when masked) and counts the row's live
blocks. A *scanner* walks a row's blocks once its whole mask is in the memory (a word
read ahead, one block a cycle) and pushes per block {its Q bits, live, last of the row}
into the write side's entry FIFO and, with skip, the request side's. The write side takes
the entries in order: a live block's ``out`` beat is written with the lanes whose bit is
0 zeroed (a per-lane mux), a dead block's Q outputs as zeros without an ``out`` beat.

skip=0: every block is live; the weight requests do not wait for the mask (only the
writes use it). skip=1: live is "any of the Q bits" (``golden.tlmm.live_blocks``). The
request side takes the row's entries from its FIFO -- so the row's mask is known before
its weight requests -- and reads the Kc weight beats of a live block and none of a dead
one (its Kc*beat_bytes are skipped); the datapath gets the activation chunks and the live
blocks' beats only (``last`` on the last live block's last beat, from the count). A row
with no live block has its activation chunks read (as the golden executor counts) and
dropped once its count is known: the datapath sees nothing of that row, so its ping-pong
table banks never wait for weights that do not come. Bytes read:
``golden.isa.tlmm_read_bytes``. The command ends when the last output is written, every
response is consumed and nothing is left to request.

A row's mask beats are taken only while fewer than 4 rows are in the memory unscanned, so
its bank's earlier row is scanned (a register of the count: it only falls while a row
waits). With skip the scanner is never more than a row behind (the request side needs
row m-1's entries before it asks for row m's mask); without skip it may lag the reads by
a row or so (its row takes Nb + 2 cycles, the request side's at least as many): the
wait never comes without memory stalls.

Masked cycles (no memory stalls, read latency L; ``expected_cycles(..., masked=True,
live=)``). skip=0: the unmasked count plus rows * Mr. skip=1 (``live``: the live blocks
per row): per row Mr + max(Kc, L + 4) (the mask reads, then the activation chunks or, if
longer, the wait from the last mask read to the row's first entry: L, the bit stage, the
memory write, the scanner's read and load, the FIFO) plus Kc per live block, 1 per dead
block (the request side takes one entry a cycle) and 1 per run of live blocks (a live
block after a dead one, or first in its row: its entry is taken in a cycle of its own,
as rd.valid is a register); plus the unmasked tail (L + pipeline latency + 1 +
SETUP_CYCLES). A last row with no live block ends with its request side and zero writes
instead of the pipeline: Mr + Nb + max(L + 4, Kc, L + Kc + 1 - Nb) - (pipeline latency +
L - 1) for that row. Both measured exactly by ``sim/test_op_tlmm.py``.

Differences from the golden backend: k above the engine's table depth ``max_k``
(``hw.tlmm.DEFAULT_MAX_K``) is BAD_DIM (golden allows up to ``TLMMConfig.max_k()``); so is
a masked command's n above ``max_n`` (the mask memory); invalid weight codes are not
detected. The engine relies on the memory's zero fill beyond a read's ``len`` (as for the
activations): a mask row's last beat has no entry > 0 past n.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Shape, Signal, Value
from amaranth.lib import fifo
from amaranth.lib.memory import Memory

from golden import isa
from golden.config import DatapathConfig
from golden.isa import ErrorCode, Opcode
from hw.tlmm import TLMM, _latency, check_tokens, chunk_count
from hw.tlmm import expected_cycles as tlmm_block_cycles

from .base import Engine
from .checkpipe import PolyCtx, materialize

SETUP_CYCLES = 9  # wait states after start: Kc, Nb*Kc and the checks through their pipelines
ENTRY_DEPTH = 64  # per-block mask entries the scanner may run ahead of the write side
BANK_BITS = 2  # the mask memory holds 4 rows: the scanner may lag the mask reads
BANKS = 1 << BANK_BITS


def expected_cycles(
    rows: int,
    k: int,
    n: int,
    cfg: DatapathConfig,
    latency: int = 1,
    *,
    masked: bool = False,
    live=None,
    dma_bytes: int | None = None,
    tokens: int = 1,
) -> int:
    """Cycles of one command without memory stalls (module docstring). ``masked``: with a
    mask (``dma_bytes``: the engine's DMA width, for the mask reads per row); ``live``:
    skip=1, the row blocks each row reads (bool [rows, ceil(n/Q)],
    ``golden.tlmm.live_blocks(mask)``)."""
    kc = chunk_count(k, cfg.tlmm)
    check_tokens(tokens)
    if not masked and live is None and tokens > 1:
        return _token_cycles(rows, kc, -(-n // cfg.tlmm.replicas), tokens) + (
            _latency(cfg.tlmm, 2) + latency + 1 + SETUP_CYCLES
        )
    lookups = tlmm_block_cycles(rows, k, n, cfg.tlmm) + (rows - 1) * kc
    if not masked and live is None:
        return lookups + latency + 1 + SETUP_CYCLES
    if dma_bytes is None:
        raise ValueError("dma_bytes: needed for a masked command's mask reads")
    mr = -(-4 * n // dma_bytes)  # mask reads per row
    if live is None:  # masked, skip=0: the mask reads come first in each row
        return lookups + rows * mr + latency + 1 + SETUP_CYCLES
    live = np.asarray(live, bool)
    nb = -(-n // cfg.tlmm.replicas)
    if live.shape != (rows, nb):
        raise ValueError(f"live: expected bool [{rows}, {nb}], got {live.shape}")
    tail = _latency(cfg.tlmm, 2) + latency - 1  # last read -> done through the block
    wait = latency + 4  # last mask read -> its first row block entry (docstring)
    total = tail + 2 + SETUP_CYCLES
    for r, row in enumerate(live):
        if r == rows - 1 and not row.any():  # ends with its request and write sides
            return total + mr + nb + max(wait, kc, latency + kc + 1 - nb) - tail
        runs = int(row[0]) + int(np.sum(row[1:] & ~row[:-1]))
        total += mr + max(kc, wait) + int(row.sum()) * kc + int((~row).sum()) + runs
    return total


def _token_cycles(rows: int, kc: int, nb: int, tokens: int) -> int:
    """An unmasked command's reads and waits on an engine of P = ``tokens`` (module
    docstring): per block of np rows np*Kc + Nb*Kc, plus (Nb-1)*max(0, np-Kc) where a row
    block's np outputs outlast its Kc beats, plus max(0, np' - (np+1)*Kc) after a block of
    np' rows, plus the last block's np-1 outputs after its end."""
    sizes = [min(tokens, rows - r) for r in range(0, rows, tokens)]
    total = sizes[-1] - 1
    for j, np_ in enumerate(sizes):
        total += (np_ + nb) * kc + (nb - 1) * max(0, np_ - kc)
        if j:
            total += max(0, sizes[j - 1] - (np_ + 1) * kc)
    return total


class TLMMEngine(Engine):
    OPCODE = Opcode.TLMM
    DESIGN_FIELDS = {"max_k": "max_k", "max_n": "max_n", "tokens": "tlmm_tokens"}
    # the engine's table depth; the mask memory's rows (masked only)
    LIMITS = ("k <= max_k", "(masked == 0) | (n <= max_n)")
    GOLDEN_ONLY = ("weight codes",)

    def __init__(
        self, cfg: DatapathConfig, dma_bytes: int, *, max_k: int, max_n: int, tokens: int = 1
    ):
        check_tokens(tokens)
        tc = cfg.tlmm
        need = max(tc.group * tc.tables, isa.tlmm_beat_bytes(tc), tc.replicas * tc.acc_bits // 8)
        if dma_bytes < need:
            raise ValueError(f"dma_bytes: {dma_bytes} is below the {need} bytes of a TLMM beat")
        lanes = dma_bytes // 4
        if lanes % tc.replicas or lanes // tc.replicas < 2:
            raise ValueError(
                f"dma_bytes: a mask beat's {lanes} entries must be >= 2 row blocks of "
                f"Q = {tc.replicas}"
            )
        if not isinstance(max_n, int) or max_n < 1:
            raise ValueError(f"max_n: must be an integer >= 1, got {max_n!r}")
        self.max_k = max_k
        self.max_n = max_n
        self.tokens = tokens
        super().__init__(cfg, dma_bytes)

    def elaborate(self, platform):
        tc = self.cfg.tlmm
        G, T, Q = tc.group, tc.tables, tc.replicas
        GT = G * T
        BB = isa.tlmm_beat_bytes(tc)
        ACC_BYTES = tc.acc_bits // 8
        W = self.signature.dma_bytes
        E = W // 4  # mask entries per mask beat
        BPW = E // Q  # row blocks per mask beat
        max_nb = -(-self.max_n // Q)
        m = Module()
        P = self.tokens
        m.submodules.tlmm = tl = TLMM(tc, max_k=self.max_k, tokens=P)
        a = self.op_args
        # the contract's checks pipelined too (valid by CHECK, after the set-up waits)
        chk = self.checks(m, pipelined=True)
        if chk.latency > SETUP_CYCLES + 1:
            raise ValueError(f"TLMM checks need {chk.latency} cycles")
        err = chk.error()

        kc = Signal(range(chunk_count(self.max_k, tc) + 1))
        nbkc = Signal(32)  # weight beats per row: Nb*Kc
        # the last index of each count, loaded at CHECK (no subtraction before a compare)
        kc_m1 = Signal.like(kc)
        nbkc_m1 = Signal.like(nbkc)
        nb_m1 = Signal(range(max_nb))  # row blocks - 1 (masked: n <= max_n)
        KB = len(kc_m1)  # a chunk index's bits (rq_cnt / rs_cnt count chunks below Kc)
        # Kc, Nb and Nb*Kc from the command's fields through registered stages (docstring)
        ctx = PolyCtx(m, "setup")
        kc_p = ((ctx.atom(a.k) + (G - 1)) // G + (T - 1)) // T
        nb_p = (ctx.atom(a.n) + (Q - 1)) // Q
        kc_c, kc_at = materialize(ctx, kc_p, "kc_c")
        nbkc_c, nbkc_at = materialize(ctx, nb_p * kc_p, "nbkc_c")
        nb_c, nb_at = materialize(ctx, nb_p, "nb_c")
        if max(kc_at, nbkc_at, nb_at) > SETUP_CYCLES + 1:  # CHECK is the cycle after the waits
            raise ValueError(
                f"TLMM set-up needs {max(kc_at, nbkc_at, nb_at)} cycles (G, T, Q = {G, T, Q})"
            )
        msk = Signal()  # masked (loaded at CHECK)
        skp = Signal()  # masked with skip
        kcbb = Signal(range(chunk_count(self.max_k, tc) * BB + 1))  # a row block's bytes
        m.d.sync += kcbb.eq(kc * BB)  # kc is loaded at CHECK, used rows later
        n4 = Signal(range(4 * self.max_n + 1))  # a mask row's bytes
        m.d.sync += n4.eq(Mux(a.n > self.max_n, 0, a.n) * 4)

        # ---- the mask memory: entry > 0 bits of a row, one word per mask beat, a bank
        # per row mod BANKS (written by the response side, read by the scanner)
        words = -(-self.max_n // E)
        word_bits = Shape.cast(range(words)).width if words > 1 else 1
        mmem = Memory(shape=E, depth=BANKS << word_bits, init=[])
        m.submodules.mask_mem = mmem
        mw = mmem.write_port()
        mr = mmem.read_port()
        # per row block entries {lanes, live, last block of the row}, scanner -> request
        # side and scanner -> write side
        ent_w = Q + 2
        fq = fifo.SyncFIFO(width=ent_w, depth=4)
        fw = fifo.SyncFIFO(width=ent_w, depth=ENTRY_DEPTH)
        m.submodules.ent_rq = fq
        m.submodules.ent_wr = fw

        def ent_lanes(v):
            return v[:Q]

        def ent_live(v):
            return v[Q]

        def ent_rlast(v):
            return v[Q + 1]

        # request side
        rq_active = Signal()
        rq_msk = Signal()  # phase: mask beats (masked only)
        rq_act = Signal()  # phase: 1 = activation chunks, 0 = weights
        rq_hold = Signal()  # masked weights: no live block loaded, no read
        rq_v = Signal()  # rd.valid: rq_active & ~rq_hold as one register
        rq_rlast = Signal()  # the loaded block is the row's last
        rq_cnt = Signal(32)  # chunk / beat index within the phase
        rq_row = Signal(16)
        rq_aptr = Signal(isa.ADDR_BITS + 1)  # next activation chunk address
        rq_arem = Signal(17)  # activation bytes left in the row
        rq_wptr = Signal(isa.ADDR_BITS + 8)
        rq_rownext = Signal(isa.ADDR_BITS + 1)  # the next row's activations
        tok_w = max(1, (P - 1).bit_length())
        rq_tok = Signal(tok_w)  # the row's token index in its block of P (unmasked)
        rq_mptr = Signal(isa.ADDR_BITS + 1)  # next mask read
        rq_mrem = Signal(range(4 * self.max_n + 1))  # mask bytes left in the row
        rq_mbase = Signal(isa.ADDR_BITS + 1)  # the mask row's address
        # response side
        rs_msk = Signal()
        rs_act = Signal()
        rs_cnt = Signal(32)
        rs_blk = Signal(range(max_nb + 1))  # masked weights: live block index in the row
        rs_mrem = Signal(range(4 * self.max_n + 1))
        rs_mword = Signal(word_bits)
        rs_row = Signal(16)
        rs_tok = Signal(tok_w)
        rs_done = Signal()  # masked: every response of the command consumed
        nlive = Signal(range(max_nb + 1))  # the row's live blocks (its weight blocks)
        nlive_m1 = Signal.like(nlive)  # nlive - 1 (used when nlive >= 1)
        l_ok = Signal()  # nlive (and rs_drop) hold the current row's
        rs_drop = Signal()  # no live block: the row's activations are not sent on
        # write side
        wr_ptr = Signal(isa.ADDR_BITS + 8)
        wr_rowbase = Signal(isa.ADDR_BITS + 8)  # the block's first row
        wr_bptr = Signal(isa.ADDR_BITS + 8)  # unmasked: the row block's output in that row
        wr_left = Signal(17)  # unmasked: rows from the block's first
        wr_nrem = Signal(17)
        wr_row = Signal(16)
        wr_have = Signal()  # masked: the block entry of the next write is loaded
        wr_lanes = Signal(Q)
        wr_live = Signal()
        wr_rlast = Signal()
        wr_fin = Signal()  # masked: the last write done (waiting for the other sides)
        running = Signal()

        # the mask memory's row banks: a row's mask is taken only into a bank whose
        # earlier row is scanned (rows written, not yet wholly scanned < BANKS); the
        # count only falls while a row waits, so a register of it is safe
        md_avail = Signal(range(BANKS + 1))  # rows whose mask is in, not yet scanned
        sc_busy = Signal()  # the scanner is on a row
        mem_ok = Signal()
        m.d.sync += mem_ok.eq(md_avail + sc_busy < BANKS)

        # ------------------------------------------------------------ request side
        act_len = Mux(rq_arem > GT, GT, rq_arem)
        mask_len = Mux(rq_mrem > W, W, rq_mrem)
        m.d.comb += [
            self.rd.valid.eq(rq_v),
            self.rd.payload.addr.eq(Mux(rq_msk, rq_mptr, Mux(rq_act, rq_aptr, rq_wptr))),
            self.rd.payload.len.eq(Mux(rq_msk, mask_len, Mux(rq_act, act_len, BB))),
        ]
        fire = self.rd.valid & self.rd.ready
        # the next mask row's address, ready before the row ends (masked rows are >= 2
        # cycles)
        rq_mbase_n = Signal.like(rq_mbase)
        # a row's first byte to the next one's: k + src_skip (the fields are stable in a
        # command, so this register is valid long before the set-up ends)
        row_stride = Signal(isa.ADDR_BITS)
        m.d.sync += [rq_mbase_n.eq(rq_mbase + n4), row_stride.eq(a.k + a.src_skip)]
        head = fq.r_data

        def next_row():
            """The request side's row is done: the next one (or the end)."""
            m.d.sync += [
                rq_act.eq(1),
                rq_msk.eq(msk),
                rq_hold.eq(0),
                rq_cnt.eq(0),
                rq_row.eq(rq_row + 1),
                rq_tok.eq(0),
                rq_rownext.eq(rq_rownext + row_stride),
                rq_aptr.eq(rq_rownext),
                rq_arem.eq(a.k),
                rq_mbase.eq(rq_mbase_n),
                rq_mptr.eq(rq_mbase_n),
                rq_mrem.eq(n4),
            ]
            with m.If(rq_row == a.rows - 1):
                m.d.sync += [rq_active.eq(0), rq_v.eq(0)]
            with m.Else():
                m.d.sync += rq_v.eq(1)

        # a row ends its block of tokens: masked rows go one at a time
        rq_tok_end = Signal()
        rs_tok_end = Signal()
        rows_m1 = Signal(16)  # loaded at CHECK
        if P == 1:
            m.d.comb += [rq_tok_end.eq(1), rs_tok_end.eq(1)]
        else:
            # from registers only (rows_m1: loaded at CHECK): rs_tok_end reaches the
            # datapath's bank flags through act.end
            m.d.comb += [
                rq_tok_end.eq(msk | (rq_tok == P - 1) | (rq_row == rows_m1)),
                rs_tok_end.eq(msk | (rs_tok == P - 1) | (rs_row == rows_m1)),
            ]
        with m.If(rq_active & rq_msk):
            with m.If(fire):
                m.d.sync += [rq_mptr.eq(rq_mptr + W), rq_mrem.eq(rq_mrem - mask_len)]
                with m.If(rq_mrem <= W):
                    m.d.sync += rq_msk.eq(0)
        with m.Elif(rq_active & rq_act):
            with m.If(fire):
                m.d.sync += [rq_aptr.eq(rq_aptr + GT), rq_arem.eq(rq_arem - act_len)]
                with m.If((rq_cnt[:KB] == kc_m1) & ~rq_tok_end):
                    # the block's next token (unmasked, P > 1)
                    m.d.sync += [
                        rq_cnt.eq(0),
                        rq_row.eq(rq_row + 1),
                        rq_tok.eq(rq_tok + 1),
                        rq_rownext.eq(rq_rownext + row_stride),
                        rq_aptr.eq(rq_rownext),
                        rq_arem.eq(a.k),
                    ]
                with m.Elif(rq_cnt[:KB] == kc_m1):
                    m.d.sync += [
                        rq_act.eq(0),
                        rq_cnt.eq(0),
                        rq_wptr.eq(a.weights),
                        rq_hold.eq(skp),
                        rq_v.eq(~skp),
                    ]
                with m.Else():
                    m.d.sync += rq_cnt.eq(rq_cnt + 1)
        with m.Elif(rq_active & ~skp):  # unmasked, or masked reading every block
            with m.If(fire):
                m.d.sync += rq_wptr.eq(rq_wptr + BB)
                with m.If(rq_cnt == nbkc_m1):
                    next_row()
                with m.Else():
                    m.d.sync += rq_cnt.eq(rq_cnt + 1)
        with m.Elif(rq_active & ~rq_hold):
            # masked, a live block: Kc beats; at its last the next entry if it is live
            with m.If(fire):
                m.d.sync += rq_wptr.eq(rq_wptr + BB)
                with m.If(rq_cnt[:KB] == kc_m1):
                    m.d.sync += rq_cnt.eq(0)
                    with m.If(rq_rlast):
                        next_row()
                    with m.Elif(fq.r_rdy & ent_live(head)):
                        m.d.comb += fq.r_en.eq(1)
                        m.d.sync += rq_rlast.eq(ent_rlast(head))
                    with m.Else():
                        m.d.sync += [rq_hold.eq(1), rq_v.eq(0)]
                with m.Else():
                    m.d.sync += rq_cnt.eq(rq_cnt + 1)
        with m.Elif(rq_active):
            # masked, between blocks: one entry a cycle; a dead block is not read
            with m.If(fq.r_rdy):
                m.d.comb += fq.r_en.eq(1)
                with m.If(ent_live(head)):
                    m.d.sync += [rq_hold.eq(0), rq_v.eq(1), rq_rlast.eq(ent_rlast(head))]
                with m.Else():
                    m.d.sync += rq_wptr.eq(rq_wptr + kcbb)
                    with m.If(ent_rlast(head)):
                        next_row()

        # ------------------------------------------------------------ response side
        # responses, in request order: mask beats to the mask memory, the rest to the
        # engine's act / wgt streams
        rs_last_blk = rs_blk == nlive_m1
        wlast = Mux(skp, (rs_cnt[:KB] == kc_m1) & rs_last_blk, rs_cnt == nbkc_m1)
        m.d.comb += [
            tl.act.payload.data.eq(self.rdata.payload[: GT * 8]),
            tl.act.payload.last.eq(rs_cnt[:KB] == kc_m1),
            tl.wgt.payload.eq(Cat(self.rdata.payload[: T * Q * tc.code_bits], wlast)),
        ]
        if P > 1:
            m.d.comb += tl.act.payload.end.eq(rs_tok_end)
        act_go = ~skp | (l_ok & ~rs_drop)  # skip: wait for the row's live count
        with m.If(running & rs_msk):
            m.d.comb += self.rdata.ready.eq(mem_ok)
        with m.Elif(running & rs_act):
            m.d.comb += [
                tl.act.valid.eq(self.rdata.valid & act_go),
                self.rdata.ready.eq(Mux(skp, l_ok & (rs_drop | tl.act.ready), tl.act.ready)),
            ]
        with m.Elif(running):
            m.d.comb += [tl.wgt.valid.eq(self.rdata.valid), self.rdata.ready.eq(tl.wgt.ready)]

        def rs_next_row():
            m.d.sync += [rs_act.eq(1), rs_msk.eq(1), rs_cnt.eq(0), rs_row.eq(rs_row + 1)]
            with m.If(rs_row == a.rows - 1):
                m.d.sync += rs_done.eq(1)

        # stage A: the mask beat's entry > 0 bits
        sa_valid = Signal()
        sa_lanes = Signal(E)
        sa_word = Signal(word_bits)
        sa_bank = Signal(BANK_BITS)
        sa_first = Signal()
        sa_last = Signal()
        m.d.sync += sa_valid.eq(0)
        rs_fire = self.rdata.valid & self.rdata.ready
        with m.If(rs_fire):
            with m.If(rs_msk):
                mlast = rs_mrem <= W
                m.d.sync += [
                    sa_valid.eq(1),
                    sa_lanes.eq(
                        Cat(
                            self.rdata.payload[32 * j : 32 * j + 32].as_signed() > 0
                            for j in range(E)
                        )
                    ),
                    sa_word.eq(rs_mword),
                    sa_bank.eq(rs_row[:BANK_BITS]),
                    sa_first.eq(rs_mword == 0),
                    sa_last.eq(mlast),
                    rs_mword.eq(rs_mword + 1),
                    rs_mrem.eq(rs_mrem - W),
                    l_ok.eq(0),
                ]
                with m.If(mlast):
                    m.d.sync += [rs_msk.eq(0), rs_mword.eq(0), rs_mrem.eq(n4)]
            with m.Elif(rs_act):
                with m.If((rs_cnt[:KB] == kc_m1) & ~rs_tok_end):
                    m.d.sync += [rs_cnt.eq(0), rs_tok.eq(rs_tok + 1), rs_row.eq(rs_row + 1)]
                with m.Elif(rs_cnt[:KB] == kc_m1):
                    m.d.sync += [rs_act.eq(0), rs_cnt.eq(0), rs_blk.eq(0), rs_tok.eq(0)]
                    with m.If(skp & rs_drop):
                        rs_next_row()
                with m.Else():
                    m.d.sync += rs_cnt.eq(rs_cnt + 1)
            with m.Elif(skp):
                with m.If(rs_cnt[:KB] == kc_m1):
                    m.d.sync += [rs_cnt.eq(0), rs_blk.eq(rs_blk + 1)]
                    with m.If(rs_last_blk):
                        rs_next_row()
                with m.Else():
                    m.d.sync += rs_cnt.eq(rs_cnt + 1)
            with m.Else():
                with m.If(rs_cnt == nbkc_m1):
                    with m.If(msk):
                        rs_next_row()
                    with m.Else():
                        m.d.sync += [rs_act.eq(1), rs_cnt.eq(0), rs_row.eq(rs_row + 1)]
                with m.Else():
                    m.d.sync += rs_cnt.eq(rs_cnt + 1)

        # stage B: the bits into the memory; the row's live blocks counted
        blive = [sa_lanes[b * Q : (b + 1) * Q].any() for b in range(BPW)]
        pc = sum(blive[1:], blive[0])
        base = Mux(sa_first, 0, nlive)
        md_inc = Signal()
        m.d.comb += [
            mw.addr.eq(Cat(sa_word, sa_bank)),
            mw.data.eq(sa_lanes),
            mw.en.eq(sa_valid),
            md_inc.eq(sa_valid & sa_last),
        ]
        with m.If(sa_valid):
            m.d.sync += [nlive.eq(base + pc), nlive_m1.eq(base + pc - 1)]  # skip only
            with m.If(sa_last):
                m.d.sync += [
                    l_ok.eq(1),
                    rs_drop.eq(skp & ~Cat(*blive).any() & (sa_first | (nlive == 0))),
                ]

        # ------------------------------------------------------------ scanner
        # walks a row's blocks once its mask is in the memory: per block {its Q bits,
        # live (skip: any bit; else 1), last of the row} into both entry FIFOs
        sc_bank = Signal(BANK_BITS)
        sc_addr = Signal(word_bits + BANK_BITS)
        sc_cur = Signal(E)
        sc_blk = Signal(range(max_nb + 1))
        sc_sub = Signal(range(BPW))
        sc_start = Signal()
        # a row's first word is read in the cycle the scanner starts it, the next words
        # from sc_addr (one ahead of the word being emitted)
        m.d.comb += mr.addr.eq(Mux(sc_start, Cat(Const(0, word_bits), sc_bank), sc_addr))
        m.d.sync += md_avail.eq(md_avail + md_inc - sc_start)
        lanes = sc_cur[:Q]
        entry = Cat(lanes, ~skp | lanes.any(), sc_blk == nb_m1)
        m.d.comb += [fq.w_data.eq(entry), fw.w_data.eq(entry)]
        with m.FSM(name="scan"):
            with m.State("IDLE"):
                with m.If(running & (md_avail != 0)):
                    m.d.comb += sc_start.eq(1)
                    m.d.sync += [sc_busy.eq(1), sc_addr.eq(Cat(Const(0, word_bits), sc_bank))]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += [sc_cur.eq(mr.data), sc_addr.eq(sc_addr + 1)]
                m.next = "EMIT"
            with m.State("EMIT"):
                # without skip the request side reads every block: no entries for it
                with m.If((fq.w_rdy | ~skp) & fw.w_rdy):
                    m.d.comb += [fq.w_en.eq(skp), fw.w_en.eq(1)]
                    with m.If(sc_blk == nb_m1):
                        m.d.sync += [
                            sc_bank.eq(sc_bank + 1),
                            sc_busy.eq(0),
                            sc_blk.eq(0),
                            sc_sub.eq(0),
                        ]
                        m.next = "IDLE"
                    with m.Elif(sc_sub == BPW - 1):
                        # the next word, read ahead since this one was loaded
                        m.d.sync += [
                            sc_cur.eq(mr.data),
                            sc_addr.eq(sc_addr + 1),
                            sc_sub.eq(0),
                            sc_blk.eq(sc_blk + 1),
                        ]
                    with m.Else():
                        m.d.sync += [
                            sc_cur.eq(sc_cur >> Q),
                            sc_sub.eq(sc_sub + 1),
                            sc_blk.eq(sc_blk + 1),
                        ]

        # ------------------------------------------------------------ write-back
        wr_q = Mux(wr_nrem > Q, Q, wr_nrem)
        out = tl.out.payload.data
        data = Cat(
            Mux(~msk | wr_lanes[q], Value.cast(out[q]), 0).as_unsigned()[: tc.acc_bits]
            for q in range(Q)
        )
        m.d.comb += [
            self.wr.valid.eq(Mux(msk, wr_have & (tl.out.valid | ~wr_live), tl.out.valid)),
            tl.out.ready.eq(self.wr.ready & (~msk | (wr_have & wr_live))),
            self.wr.payload.addr.eq(wr_ptr),
            self.wr.payload.len.eq(wr_q * ACC_BYTES),
            self.wr.payload.data.eq(data),
        ]
        wfire = self.wr.valid & self.wr.ready
        # masked: the next block's entry, loaded as the current one is written
        with m.If(msk & (~wr_have | wfire)):
            with m.If(fw.r_rdy):
                m.d.comb += fw.r_en.eq(1)
                m.d.sync += [
                    wr_have.eq(1),
                    wr_lanes.eq(ent_lanes(fw.r_data)),
                    wr_live.eq(ent_live(fw.r_data)),
                    wr_rlast.eq(ent_rlast(fw.r_data)),
                ]
            with m.Else():
                m.d.sync += wr_have.eq(0)
        last_out = Signal()
        row4 = a.n * ACC_BYTES  # a row's output bytes
        with m.If(wfire & msk):  # masked: one row at a time
            with m.If(wr_rlast):
                m.d.sync += [
                    wr_row.eq(wr_row + 1),
                    wr_nrem.eq(a.n),
                    wr_rowbase.eq(wr_rowbase + row4),
                    wr_ptr.eq(wr_rowbase + row4),
                ]
                m.d.comb += last_out.eq(wr_row == a.rows - 1)
            with m.Else():
                m.d.sync += [wr_ptr.eq(wr_ptr + Q * ACC_BYTES), wr_nrem.eq(wr_nrem - Q)]
        with m.Elif(wfire):
            # unmasked: a row block's outputs of the block's tokens in turn (token p at
            # wr_bptr + p*n*4), then the next row block; the last one ends the block
            tok_end = tl.out.payload.end if P > 1 else Const(1)
            with m.If(tok_end & tl.out.payload.last):
                nxt = wr_rowbase + row4 * P  # P: a power of two
                m.d.sync += [
                    wr_nrem.eq(a.n),
                    wr_rowbase.eq(nxt),
                    wr_bptr.eq(nxt),
                    wr_ptr.eq(nxt),
                    wr_left.eq(wr_left - P),
                ]
                m.d.comb += last_out.eq(wr_left <= P)
            with m.Elif(tok_end):
                m.d.sync += [
                    wr_nrem.eq(wr_nrem - Q),
                    wr_bptr.eq(wr_bptr + Q * ACC_BYTES),
                    wr_ptr.eq(wr_bptr + Q * ACC_BYTES),
                ]
            with m.Else():
                m.d.sync += wr_ptr.eq(wr_ptr + row4)
        with m.If(last_out):
            m.d.sync += wr_fin.eq(1)
        # masked: also every response consumed and nothing left to request
        end = Mux(msk, (last_out | wr_fin) & rs_done & ~rq_active, last_out)

        with m.FSM():
            waits = [(f"SETUP{i}", None) for i in range(SETUP_CYCLES)]
            passed = self.check_states(m, *waits, ("CHECK", err))
            with m.State("RUN"):
                with m.If(end):
                    m.d.sync += running.eq(0)
                    self.finish(m, ErrorCode.NONE)
        with m.If(passed["CHECK"]):
            m.d.sync += [kc.eq(kc_c), nbkc.eq(nbkc_c), running.eq(1)]
            m.d.sync += [kc_m1.eq(kc_c - 1), nbkc_m1.eq(nbkc_c - 1), nb_m1.eq(nb_c - 1)]
            m.d.sync += [msk.eq(a.masked), skp.eq(a.masked & a.skip)]
            # every side at row 0 and in its first phase
            m.d.sync += [s.eq(1) for s in (rq_active, rq_v, rq_act, rs_act)]
            m.d.sync += [rq_msk.eq(a.masked), rs_msk.eq(a.masked)]
            zero = (rq_row, rq_cnt, rs_cnt, wr_row, rq_hold, rs_row, rs_done, rs_mword, rs_drop)
            m.d.sync += [rq_tok.eq(0), rs_tok.eq(0), wr_left.eq(a.rows), wr_bptr.eq(a.dst)]
            m.d.sync += rows_m1.eq(a.rows - 1)
            m.d.sync += [
                s.eq(0) for s in zero + (wr_have, wr_fin, l_ok, md_avail, sc_bank, sc_busy)
            ]
            m.d.sync += [sc_blk.eq(0), sc_sub.eq(0)]
            m.d.sync += [rq_rownext.eq(a.src + row_stride), rq_aptr.eq(a.src), rq_arem.eq(a.k)]
            m.d.sync += [rq_mbase.eq(a.mask), rq_mptr.eq(a.mask), rq_mrem.eq(n4), rs_mrem.eq(n4)]
            m.d.sync += [wr_rowbase.eq(a.dst), wr_ptr.eq(a.dst), wr_nrem.eq(a.n)]
        return m
