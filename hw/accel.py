"""Accelerator top: command processor + DMA port + CSR block + TLMM engine.

What runs where
===============
- On RTL: ``END``, ``NOP`` and ``TLMM`` (the ternary projection: activations and packed
  weight codes streamed from memory into ``hw.tlmm.TLMM``, INT32 accumulators written
  back), plus the errors UNKNOWN_OPCODE, MISSING_END and, for TLMM, BAD_DIM, ALIGN and
  ADDR_RANGE (checked in the golden backend's order: dims, src, weights, dst).
- On the host ("unsupported on RTL"): EMBED, NORM_QUANT, ROPE_QUANT, QK, SOFTMAX, PV,
  RESIDUAL, ACT, LM_HEAD. The command processor stops at such a command with
  ``HOST_OP`` = 1 (``hw/csr.py``) and PC = its index; the sim backend executes it with the
  golden backend's op executor and writes CTRL.RESUME (or CTRL.HOST_ERROR + code).
  Cycles are not counted while the RTL waits for the host.

Differences from the golden backend: TLMM ``k`` above the engine's table depth
(``max_k``, default ``hw.tlmm.DEFAULT_MAX_K``) is BAD_DIM here (golden allows up to
``TLMMConfig.max_k()``).

DMA port (external memory; one request = one response beat)
===========================================================
- read request ``mem_rd_{valid,ready,addr,len}``: ``len`` (1..``dma_bytes``) bytes from byte
  address ``addr`` (any alignment);
- read response ``mem_rdata_{valid,ready}``, ``mem_rdata`` (``dma_bytes`` x 8 bits): the
  bytes of one request, in request order, byte i in bits [8i, 8i+8), zero beyond ``len``;
- write ``mem_wr_{valid,ready,addr,len,data}``: write the low ``len`` bytes of ``data`` at
  ``addr`` (posted).
A transfer happens on a clock edge where valid & ready. Requests may run ahead of
responses by any number (the memory buffers them and applies backpressure with ready).

Command processor
=================
FETCH (one 64-byte read at ``stream_addr + 64*pc``) -> DECODE (``data.View`` of
``hw.isa.COMMAND`` over the fetched bits) -> execute -> next (MISSING_END after
``n_cmds`` commands without END). TLMM: for each token row m, read the Kc activation
chunks (G*T bytes from ``src + m*k``; the last one short, zero-filled) then the Nb*Kc
weight beats (``tlmm_beat_bytes``) in tile order; route the responses in order to the
engine's ``act``/``wgt`` streams; each ``out`` beat (Q accumulators) is written to
``dst + (m*n + b*Q)*4`` (the last block of a row short). Reads of row m+1 start when
those of row m are issued, so the engine's next table build overlaps the lookups.

Busy/host lines ``busy`` and ``host_req`` are also top-level outputs (an interrupt line
for the harness).
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, DatapathConfig
from hw import isa
from hw.csr import CSR_ADDR_BITS, CSRBlock
from hw.isa import ErrorCode, Opcode
from hw.tlmm import DEFAULT_MAX_K, TLMM, chunk_count

# opcodes executed by the RTL; every other Opcode member goes to the host
RTL_OPS = (Opcode.NOP, Opcode.END, Opcode.TLMM)
HOST_OPS = tuple(op for op in Opcode if op not in RTL_OPS)


def dma_bytes_for(cfg: DatapathConfig) -> int:
    """DMA beat width: the smallest power of two holding a command, an activation chunk
    (G*T bytes), a weight beat and an output beat (Q int32)."""
    t = cfg.tlmm
    need = max(isa.COMMAND_BYTES, t.group * t.tables, isa.tlmm_beat_bytes(t),
               t.replicas * t.acc_bits // 8)
    return 1 << (need - 1).bit_length()


class Accel(wiring.Component):
    """The accelerator top (see module docstring)."""

    def __init__(self, cfg: DatapathConfig = DEFAULT, *, max_k: int = DEFAULT_MAX_K):
        self.cfg = cfg
        self.max_k = max_k
        self.dma_bytes = dma_bytes_for(cfg)
        W = self.dma_bytes
        super().__init__({
            "csr_addr": In(CSR_ADDR_BITS), "csr_w_en": In(1), "csr_w_data": In(32),
            "csr_r_data": Out(32),
            "mem_rd_valid": Out(1), "mem_rd_ready": In(1), "mem_rd_addr": Out(isa.ADDR_BITS),
            "mem_rd_len": Out(range(W + 1)),
            "mem_rdata_valid": In(1), "mem_rdata_ready": Out(1), "mem_rdata": In(8 * W),
            "mem_wr_valid": Out(1), "mem_wr_ready": In(1), "mem_wr_addr": Out(isa.ADDR_BITS),
            "mem_wr_len": Out(range(W + 1)), "mem_wr_data": Out(8 * W),
            "busy": Out(1), "host_req": Out(1),
        })

    def elaborate(self, platform):
        cfg, tc = self.cfg, self.cfg.tlmm
        G, T, Q = tc.group, tc.tables, tc.replicas
        GT = G * T
        BB = isa.tlmm_beat_bytes(tc)
        ACC_BYTES = tc.acc_bits // 8
        m = Module()
        m.submodules.csr = csr = CSRBlock()
        m.submodules.tlmm = tl = TLMM(tc, max_k=self.max_k)
        m.d.comb += [csr.addr.eq(self.csr_addr), csr.w_en.eq(self.csr_w_en),
                     csr.w_data.eq(self.csr_w_data), self.csr_r_data.eq(csr.r_data)]

        # ------------------------------------------------ status
        busy = Signal()
        done = Signal()
        error = Signal(8)
        err_op = Signal(32)
        ops_done = Signal(32)
        cycles = Signal(64)
        bytes_rd = Signal(64)
        bytes_wr = Signal(64)
        host_op = Signal()
        pc = Signal(32)
        m.d.comb += [csr.busy.eq(busy), csr.done.eq(done), csr.error.eq(error),
                     csr.err_op.eq(err_op), csr.ops_done.eq(ops_done), csr.cycles.eq(cycles),
                     csr.bytes_rd.eq(bytes_rd), csr.bytes_wr.eq(bytes_wr),
                     csr.host_op.eq(host_op), csr.pc.eq(pc),
                     self.busy.eq(busy), self.host_req.eq(host_op)]
        with m.If(busy & ~host_op):
            m.d.sync += cycles.eq(cycles + 1)
        with m.If(self.mem_rd_valid & self.mem_rd_ready):
            m.d.sync += bytes_rd.eq(bytes_rd + self.mem_rd_len)
        with m.If(self.mem_wr_valid & self.mem_wr_ready):
            m.d.sync += bytes_wr.eq(bytes_wr + self.mem_wr_len)

        # ------------------------------------------------ command register + decode
        cmd = Signal(isa.COMMAND)
        opv = cmd.opcode.as_value()
        a = cmd.args.tlmm                      # TLMM arguments (View over the same bits)
        known = Signal()
        m.d.comb += known.eq(0)
        with m.Switch(opv):
            for op in Opcode:
                with m.Case(op.value):
                    m.d.comb += known.eq(1)

        # per-op derived sizes (registered in CHECK)
        kc = Signal(range(chunk_count(self.max_k, tc) + 1))
        nbkc = Signal(32)                      # weight beats per row: Nb*Kc
        kc_c = Signal.like(kc)
        nb_c = Signal(17)
        m.d.comb += [kc_c.eq(((a.k + (G - 1)) // G + (T - 1)) // T),
                     nb_c.eq((a.n + (Q - 1)) // Q)]
        src_bytes = Signal(33)
        wgt_bytes = Signal(40)
        dst_bytes = Signal(40)
        m.d.comb += [src_bytes.eq(a.rows * a.k), wgt_bytes.eq(nb_c * kc_c * BB),
                     dst_bytes.eq(a.rows * a.n * ACC_BYTES)]

        def out_of_range(addr, nbytes):
            return (addr < csr.mem_lo) | ((addr + nbytes) > csr.mem_hi)

        # ------------------------------------------------ TLMM data movers
        # request side
        rq_active = Signal()
        rq_act = Signal()                      # phase: 1 = activation chunks, 0 = weights
        rq_cnt = Signal(32)                    # chunk / beat index within the phase
        rq_row = Signal(16)
        rq_aptr = Signal(isa.ADDR_BITS + 1)   # next activation chunk address
        rq_arem = Signal(17)                   # activation bytes left in the row
        rq_wptr = Signal(isa.ADDR_BITS + 8)
        rq_rowbase = Signal(isa.ADDR_BITS + 1)
        # response side
        rs_act = Signal()
        rs_cnt = Signal(32)
        # write side
        wr_ptr = Signal(isa.ADDR_BITS + 8)
        wr_rowbase = Signal(isa.ADDR_BITS + 8)
        wr_nrem = Signal(17)
        wr_row = Signal(16)
        tlmm_done = Signal()

        fetch_req = Signal()
        fetch_wait = Signal()
        W = self.dma_bytes

        # read request mux: command fetch or TLMM stream reads
        act_len = Mux(rq_arem > GT, GT, rq_arem)
        with m.If(fetch_req):
            m.d.comb += [self.mem_rd_valid.eq(1),
                         self.mem_rd_addr.eq(csr.stream_addr + (pc << 6)),
                         self.mem_rd_len.eq(isa.COMMAND_BYTES)]
        with m.Elif(rq_active):
            m.d.comb += [self.mem_rd_valid.eq(1),
                         self.mem_rd_addr.eq(Mux(rq_act, rq_aptr, rq_wptr)),
                         self.mem_rd_len.eq(Mux(rq_act, act_len, BB))]
        rq_fire = Signal()
        m.d.comb += rq_fire.eq(rq_active & ~fetch_req & self.mem_rd_ready)
        with m.If(rq_fire):
            with m.If(rq_act):
                m.d.sync += [rq_aptr.eq(rq_aptr + GT), rq_arem.eq(rq_arem - act_len)]
                with m.If(rq_cnt == kc - 1):
                    m.d.sync += [rq_act.eq(0), rq_cnt.eq(0), rq_wptr.eq(a.weights)]
                with m.Else():
                    m.d.sync += rq_cnt.eq(rq_cnt + 1)
            with m.Else():
                m.d.sync += rq_wptr.eq(rq_wptr + BB)
                with m.If(rq_cnt == nbkc - 1):
                    m.d.sync += [rq_act.eq(1), rq_cnt.eq(0), rq_row.eq(rq_row + 1),
                                 rq_rowbase.eq(rq_rowbase + a.k),
                                 rq_aptr.eq(rq_rowbase + a.k), rq_arem.eq(a.k)]
                    with m.If(rq_row == a.rows - 1):
                        m.d.sync += rq_active.eq(0)
                with m.Else():
                    m.d.sync += rq_cnt.eq(rq_cnt + 1)

        # response routing (in request order); the fetch response goes to the command reg
        m.d.comb += [
            tl.act.payload.eq(Cat(self.mem_rdata[:GT * 8], rs_cnt == kc - 1)),
            tl.wgt.payload.eq(Cat(self.mem_rdata[:T * Q * tc.code_bits], rs_cnt == nbkc - 1)),
        ]
        with m.If(fetch_wait):
            m.d.comb += self.mem_rdata_ready.eq(1)
        with m.Elif(rs_act):
            m.d.comb += [tl.act.valid.eq(self.mem_rdata_valid),
                         self.mem_rdata_ready.eq(tl.act.ready)]
        with m.Else():
            m.d.comb += [tl.wgt.valid.eq(self.mem_rdata_valid),
                         self.mem_rdata_ready.eq(tl.wgt.ready)]
        rs_fire = Signal()
        m.d.comb += rs_fire.eq(~fetch_wait & self.mem_rdata_valid & self.mem_rdata_ready)
        with m.If(rs_fire):
            with m.If(rs_act):
                with m.If(rs_cnt == kc - 1):
                    m.d.sync += [rs_act.eq(0), rs_cnt.eq(0)]
                with m.Else():
                    m.d.sync += rs_cnt.eq(rs_cnt + 1)
            with m.Else():
                with m.If(rs_cnt == nbkc - 1):
                    m.d.sync += [rs_act.eq(1), rs_cnt.eq(0)]
                with m.Else():
                    m.d.sync += rs_cnt.eq(rs_cnt + 1)

        # accumulator write-back
        wr_q = Mux(wr_nrem > Q, Q, wr_nrem)
        m.d.comb += [self.mem_wr_valid.eq(tl.out.valid),
                     tl.out.ready.eq(self.mem_wr_ready),
                     self.mem_wr_addr.eq(wr_ptr),
                     self.mem_wr_len.eq(wr_q * ACC_BYTES),
                     self.mem_wr_data.eq(tl.out.payload.data.as_value())]
        m.d.comb += tlmm_done.eq(0)
        with m.If(tl.out.valid & tl.out.ready):
            with m.If(tl.out.payload.last):
                m.d.sync += [wr_row.eq(wr_row + 1), wr_nrem.eq(a.n),
                             wr_rowbase.eq(wr_rowbase + a.n * ACC_BYTES),
                             wr_ptr.eq(wr_rowbase + a.n * ACC_BYTES)]
                with m.If(wr_row == a.rows - 1):
                    m.d.comb += tlmm_done.eq(1)
            with m.Else():
                m.d.sync += [wr_ptr.eq(wr_ptr + Q * ACC_BYTES), wr_nrem.eq(wr_nrem - Q)]

        # ------------------------------------------------ control FSM
        def fail(code: ErrorCode):
            m.d.sync += [busy.eq(0), done.eq(0), error.eq(code.value), err_op.eq(pc)]
            m.next = "IDLE"

        def next_cmd():
            m.d.sync += ops_done.eq(ops_done + 1)
            with m.If(pc == csr.n_cmds - 1):
                fail(ErrorCode.MISSING_END)
            with m.Else():
                m.d.sync += pc.eq(pc + 1)
                m.next = "FETCH"

        with m.FSM(init="IDLE"):
            with m.State("IDLE"):
                with m.If(csr.start):
                    m.d.sync += [busy.eq(1), done.eq(0), error.eq(0), err_op.eq(0), pc.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += fetch_req.eq(1)
                with m.If(self.mem_rd_ready):
                    m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += fetch_wait.eq(1)
                with m.If(self.mem_rdata_valid):
                    m.d.sync += cmd.eq(self.mem_rdata[:isa.COMMAND_BITS])
                    m.next = "DECODE"
            with m.State("DECODE"):
                with m.If(~known):
                    fail(ErrorCode.UNKNOWN_OPCODE)
                with m.Elif(opv == Opcode.END.value):
                    m.d.sync += [busy.eq(0), done.eq(1), ops_done.eq(ops_done + 1)]
                    m.next = "IDLE"
                with m.Elif(opv == Opcode.NOP.value):
                    next_cmd()
                with m.Elif(opv == Opcode.TLMM.value):
                    m.next = "TLMM_CHECK"
                with m.Else():
                    m.d.sync += host_op.eq(1)
                    m.next = "HOST"
            with m.State("HOST"):
                with m.If(csr.host_error):
                    m.d.sync += host_op.eq(0)
                    m.d.sync += [busy.eq(0), done.eq(0), error.eq(csr.host_code), err_op.eq(pc)]
                    m.next = "IDLE"
                with m.Elif(csr.resume):
                    m.d.sync += host_op.eq(0)
                    next_cmd()
            with m.State("TLMM_CHECK"):
                m.d.sync += [kc.eq(kc_c), nbkc.eq(nb_c * kc_c)]
                with m.If((a.rows == 0) | (a.k == 0) | (a.n == 0) | (a.k > self.max_k)):
                    fail(ErrorCode.BAD_DIM)
                with m.Elif(out_of_range(a.src, src_bytes) | out_of_range(a.weights, wgt_bytes)):
                    fail(ErrorCode.ADDR_RANGE)
                with m.Elif(a.dst[:2] != 0):
                    fail(ErrorCode.ALIGN)
                with m.Elif(out_of_range(a.dst, dst_bytes)):
                    fail(ErrorCode.ADDR_RANGE)
                with m.Else():
                    m.d.sync += [rq_active.eq(1), rq_act.eq(1), rq_cnt.eq(0), rq_row.eq(0),
                                 rq_aptr.eq(a.src), rq_rowbase.eq(a.src), rq_arem.eq(a.k),
                                 rs_act.eq(1), rs_cnt.eq(0),
                                 wr_ptr.eq(a.dst), wr_rowbase.eq(a.dst), wr_nrem.eq(a.n),
                                 wr_row.eq(0)]
                    m.next = "TLMM_RUN"
            with m.State("TLMM_RUN"):
                with m.If(tlmm_done):
                    next_cmd()

        # soft reset (CTRL.RESET): status and counters; abandons a stream only when idle
        # or waiting for the host (a hard reset abandons anything)
        with m.If(csr.soft_reset):
            m.d.sync += [done.eq(0), error.eq(0), err_op.eq(0), ops_done.eq(0),
                         cycles.eq(0), bytes_rd.eq(0), bytes_wr.eq(0)]
        return m


def export(cfg: DatapathConfig = DEFAULT, max_k: int = DEFAULT_MAX_K) -> str:
    """Verilog text of the top (module ``accel``)."""
    from sim.runner import export_verilog

    return export_verilog(Accel(cfg, max_k=max_k), "accel")
