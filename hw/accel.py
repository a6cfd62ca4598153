"""Accelerator top: command processor + DMA port + CSR block + one op engine per opcode.

What runs where
===============
- The command processor executes ``END`` and ``NOP`` itself and hands every other command
  to the op engine of its opcode (``hw/ops/``; the contract is ``hw.ops.base``):
  ``ENGINES`` below. An ``Accel`` built with ``ops=`` a subset of ``RTL_OPS`` (smaller,
  faster to compile) stops at the other commands with ``HOST_OP`` = 1 (``hw/csr.py``) and
  PC = its index; the sim backend then executes it with the golden backend's op executor
  and writes CTRL.RESUME (or CTRL.HOST_ERROR + code). Cycles are not counted while the RTL
  waits for the host.
- ``LM_HEAD`` runs on the accelerator (INT8 x INT8); the host only multiplies the INT32
  results by the per-row float scales (as TeLLMe v2's ARM cores finish the head).
- Errors: UNKNOWN_OPCODE and MISSING_END here; each engine reports its own (see its
  docstring, including its "Differences from the golden backend").

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
The port is registered both ways, so no combinational path runs between an engine and
the memory behind the port (the AXI shell): read requests leave from a two-entry skid
buffer (the engine sees its ready as a flop; one cycle of latency, full throughput), and
responses enter one (``mem_rdata_ready`` is a flop; the beat the engines see is the skid's
head register: its data goes to every engine as is, only ``rdata.valid`` is switched to the
running one, no 8*W-bit gate per engine). A read sees every write accepted before it was
requested.

Bus errors and write completion (driven by the AXI shell ``hw/shell.py``; a memory that
applies writes at once and never fails, like the sim backend's harness, leaves them 0):
``mem_rdata_err`` marks a response beat as an error (SLVERR/DECERR); ``mem_wr_err`` pulses
when a write failed, with ``mem_wr_err_op`` = the ``cmd_index`` (PC) the core showed when
that write was accepted; ``mem_wr_busy``: writes accepted and not yet completed.
``stream_addr_hi`` (STREAM_ADDR_HI) and ``irq`` (``hw/csr.py``) are outputs for the shell.

Command processor
=================
FETCH (one 64-byte read at ``stream_addr + 64*pc``) -> DECODE (``data.View`` of
``golden.isa.COMMAND`` over the fetched bits; the command register stays stable while the
engine runs) -> EXEC (the engine's ``start`` pulse; the DMA port is switched to it until
its ``done``) -> next (MISSING_END after ``n_cmds`` commands without END).
During EXEC the next command (pc + 1 < n_cmds) is prefetched in a read slot the engine
leaves free, so the next DECODE follows ``done`` directly instead of waiting a memory
latency (PF_WAIT if it is still in flight).

Every stream ends in DRAIN: the reads still outstanding (a prefetch, an aborted engine's)
are taken and dropped and the posted writes complete (``mem_wr_busy`` low) before
STATUS shows the end and IRQ_STATUS.END is set, so the host never reads memory a write
has not reached, and the next stream starts clean. A host-executed command waits for the
writes before it the same way (HOST_FENCE).

Bus errors: the first error in stream order is kept (a read's command: the one running, or
pc + 1 for the prefetch; a write's: ``mem_wr_err_op``); a running engine at or past it is
reset (``ResetInserter``) and the stream ends in DRAIN with BUS_ERROR at that index. CTRL.RESET
while a stream runs aborts it the same way and ends with STATUS clear.

Timing (the 250 MHz rule of ``hw/timing.py``): the top's own decisions start at registers.
CTRL.RESET is registered in the CSR block (it acts one cycle after the CTRL write); pc + 1,
pc + 2, the fetch addresses of pc and pc + 1 and the compares with N_CMDS (last command, a
next one to prefetch) are registers (in IDLE, loaded with their values for pc = 0); the
counters of outstanding reads take the requests/responses of the previous cycle; the running
engine is a one-hot register and the DMA switch an AND-OR over it (but for the wide write
data, a mux on the same index kept binary); the engine's ``done`` and ``error`` are
registered and EXEC acts on them the cycle after (with the bus errors as of the ``done``
cycle, so the outcome is the one of acting at once); a bus error is registered
(``c_rd``/``c_wr``) and folded into the first-error register ``berr``/``berr_op`` a cycle
later (the aborts and the end-of-command checks look at both, so they act in the same cycle
as with a one-cycle capture), and DRAIN ends in DRAIN_ERR (the last errors reach
``berr_op``) and DRAIN_END (the status is written). RESUME is acted on in HOST_NEXT, a cycle
after the CSR write. Cycle cost: one cycle per command run on an engine (the registered
``done``; ~21 per layer step of ~21 commands, against thousands of cycles of engine work),
one more where the prefetched command arrives in that cycle (it then goes through PF_WAIT),
one per host-executed command (HOST_NEXT), and two (at times three: the late read count) per
stream in DRAIN; one cycle of latency on every read (the request skid buffer), which the
engines' outstanding reads hide.

Busy/host lines ``busy`` and ``host_req`` are also top-level outputs (an interrupt line
for the harness).

``gate_idle_engines=True`` (the sim backend's build) gives each engine its own clock,
running only while it is started, running or in reset (the enable sampled on the
falling edge, so the gated clock cannot glitch). Functionally identical -- an idle engine
sits in IDLE -- it lets Verilator skip the next-state logic of idle engines (~2x the
simulated cycles per second); it is also how an ASIC would save their power. FPGA
builds keep the default (one clock; a clock enable is the FPGA way).
"""

from __future__ import annotations

import importlib

from amaranth import (
    ClockDomain,
    ClockSignal,
    Const,
    DomainRenamer,
    Module,
    Mux,
    ResetInserter,
    ResetSignal,
    Signal,
    Value,
)
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden import isa
from golden.config import DEFAULT_DESIGN_POINT, AccelConfig, design_point
from golden.isa import ErrorCode, Opcode
from hw.csr import CSR_ADDR_BITS, CSRBlock, design_id

# opcode -> "module:class" of its engine (hw/ops/); END and NOP are the processor's own
ENGINES = {
    Opcode.EMBED: "hw.ops.embed:EmbedEngine",
    Opcode.NORM_QUANT: "hw.ops.norm_quant:NormQuantEngine",
    Opcode.TLMM: "hw.ops.tlmm:TLMMEngine",
    Opcode.RESIDUAL: "hw.ops.residual:ResidualEngine",
    Opcode.LM_HEAD: "hw.ops.lm_head:LMHeadEngine",
    Opcode.ROPE_QUANT: "hw.ops.rope_quant:RopeQuantEngine",
    Opcode.QK: "hw.ops.qk:QKEngine",
    Opcode.SOFTMAX: "hw.ops.softmax:SoftmaxEngine",
    Opcode.PV: "hw.ops.pv:PVEngine",
    Opcode.ACT: "hw.ops.act:ActEngine",
    Opcode.TLMM_SPARSE: "hw.ops.tlmm_sparse:TLMMSparseEngine",
    Opcode.ADD: "hw.ops.add:AddEngine",
}
RTL_OPS = (Opcode.NOP, Opcode.END, *ENGINES)


def default_ops(dp: AccelConfig) -> tuple:
    """The opcodes a top of ``dp`` executes on RTL: every engine's, TLMM_SPARSE's only
    where the design point builds it (``AccelConfig.tlmm_sparse``)."""
    return tuple(op for op in RTL_OPS if op != Opcode.TLMM_SPARSE or dp.tlmm_sparse)


PF_COUNT_BITS = 10  # engine reads outstanding while a prefetch waits (1023 max)


def engine_class(op: Opcode):
    mod, cls = ENGINES[op].split(":")
    return getattr(importlib.import_module(mod), cls)


class Accel(wiring.Component):
    """The accelerator top (see module docstring) of design point ``dp`` (an
    ``AccelConfig`` or its name). ``ops``: the opcodes executed on RTL (default
    ``default_ops(dp)``; END and NOP always); the others go to the host."""

    def __init__(
        self,
        dp: AccelConfig | str = DEFAULT_DESIGN_POINT,
        *,
        ops=None,
        gate_idle_engines: bool = False,
        ident: int | None = None,
    ):
        dp = design_point(dp) if isinstance(dp, str) else dp
        if not isinstance(dp, AccelConfig):
            raise ValueError(f"dp: expected an AccelConfig or a design point name, got {dp!r}")
        self.dp, self.cfg = dp, dp.datapath
        self.gate_idle_engines = bool(gate_idle_engines)
        ops = default_ops(dp) if ops is None else tuple(ops)
        unknown = [op for op in ops if op not in RTL_OPS]
        if unknown:
            raise ValueError(f"ops: no RTL engine for {[op.name for op in unknown]}")
        self.ops = tuple(op for op in ENGINES if op in ops)
        self.dma_bytes = dp.dma_bytes
        W = self.dma_bytes
        # the ID register: the design point's hash (the shell passes its own, which
        # covers these parameters and the shell's)
        self.ident = design_id(self.id_params()) if ident is None else int(ident)
        super().__init__(
            {
                "csr_addr": In(CSR_ADDR_BITS),
                "csr_w_en": In(1),
                "csr_w_data": In(32),
                "csr_r_data": Out(32),
                "mem_rd_valid": Out(1),
                "mem_rd_ready": In(1),
                "mem_rd_addr": Out(isa.ADDR_BITS),
                "mem_rd_len": Out(range(W + 1)),
                "mem_rdata_valid": In(1),
                "mem_rdata_ready": Out(1),
                "mem_rdata": In(8 * W),
                "mem_wr_valid": Out(1),
                "mem_wr_ready": In(1),
                "mem_wr_addr": Out(isa.ADDR_BITS),
                "mem_wr_len": Out(range(W + 1)),
                "mem_wr_data": Out(8 * W),
                "busy": Out(1),
                "host_req": Out(1),
                # bus errors and write completion (the AXI shell; tied to 0 by a memory that
                # applies writes at once and never fails, like the sim backend's harness)
                "mem_rdata_err": In(1),
                "mem_wr_err": In(1),
                "mem_wr_err_op": In(32),
                "mem_wr_busy": In(1),
                "cmd_index": Out(32),
                "stream_addr_hi": Out(32),
                "irq": Out(1),
            }
        )

    def id_params(self) -> dict:
        """The build parameters the ID register hashes (``hw.csr.design_id``)."""
        from dataclasses import asdict

        return {"dp": asdict(self.dp), "ops": [op.name for op in self.ops]}

    def _engine(self, op: Opcode):
        return engine_class(op).for_design(self.dp)

    def elaborate(self, platform):
        m = Module()
        m.submodules.csr = csr = CSRBlock(self.ident)
        m.d.comb += [
            csr.addr.eq(self.csr_addr),
            csr.w_en.eq(self.csr_w_en),
            csr.w_data.eq(self.csr_w_data),
            self.csr_r_data.eq(csr.r_data),
        ]

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
        ev_end = Signal()
        ev_host = Signal()
        m.d.comb += [
            csr.busy.eq(busy),
            csr.done.eq(done),
            csr.error.eq(error),
            csr.err_op.eq(err_op),
            csr.ops_done.eq(ops_done),
            csr.cycles.eq(cycles),
            csr.bytes_rd.eq(bytes_rd),
            csr.bytes_wr.eq(bytes_wr),
            csr.host_op.eq(host_op),
            csr.pc.eq(pc),
            csr.ev_end.eq(ev_end),
            csr.ev_host.eq(ev_host),
            self.busy.eq(busy),
            self.host_req.eq(host_op),
            self.irq.eq(csr.irq),
            self.cmd_index.eq(pc),
            self.stream_addr_hi.eq(csr.stream_addr_hi),
        ]
        with m.If(busy & ~host_op):
            m.d.sync += cycles.eq(cycles + 1)
        # the byte counters add the transfer of the previous cycle (registered: the length
        # comes through the DMA switch)
        rd_bytes_q = Signal(range(self.dma_bytes + 1))
        wr_bytes_q = Signal(range(self.dma_bytes + 1))
        m.d.sync += [
            rd_bytes_q.eq(Mux(self.mem_rd_valid & self.mem_rd_ready, self.mem_rd_len, 0)),
            wr_bytes_q.eq(Mux(self.mem_wr_valid & self.mem_wr_ready, self.mem_wr_len, 0)),
            bytes_rd.eq(bytes_rd + rd_bytes_q),
            bytes_wr.eq(bytes_wr + wr_bytes_q),
        ]

        # ------------------------------------------------ command register + decode
        cmd = Signal(isa.COMMAND)
        opv = cmd.opcode.as_value()
        known = Signal()
        with m.Switch(opv):
            for op in Opcode:
                with m.Case(op.value):
                    m.d.comb += known.eq(1)

        # ------------------------------------------------ read-response skid buffer
        # The response beat is registered before it fans out to the engines (rs: the wide
        # data path to every engine starts at a flop, which is also what lets Verilator
        # evaluate it once per cycle), and the ready the memory sees is a flop too: a beat
        # that arrives while rs is held waits in the skid register (sk). One beat per
        # cycle, one cycle of latency; the engine's ready ends at rs/sk's enables instead
        # of running on into the memory's read FIFO.
        rs_valid = Signal()
        rs_data = Signal(8 * self.dma_bytes)
        rs_err = Signal()  # the beat is a bus error
        rs_ready = Signal()  # the consumer takes rs this cycle
        sk_valid = Signal()
        sk_data = Signal(8 * self.dma_bytes)
        sk_err = Signal()
        m.d.comb += self.mem_rdata_ready.eq(~sk_valid)
        with m.If(~rs_valid | rs_ready):
            m.d.sync += rs_valid.eq(sk_valid | self.mem_rdata_valid)
            with m.If(sk_valid):
                m.d.sync += [rs_data.eq(sk_data), rs_err.eq(sk_err), sk_valid.eq(0)]
            with m.Elif(self.mem_rdata_valid):
                m.d.sync += [rs_data.eq(self.mem_rdata), rs_err.eq(self.mem_rdata_err)]
        with m.Elif(self.mem_rdata_valid & ~sk_valid):
            m.d.sync += [sk_valid.eq(1), sk_data.eq(self.mem_rdata), sk_err.eq(self.mem_rdata_err)]

        # ------------------------------------------------ read-request skid buffer
        # The requests of the processor and the engines (q_rd_*) reach the port from a
        # register (rq), with a second one (rk) taking the request of a cycle where rq is
        # held: the port's ready ends here, and the switch sees ~rk_v, a flop.
        q_rd_valid, q_rd_ready = Signal(), Signal()
        q_rd_addr, q_rd_len = Signal(isa.ADDR_BITS), Signal(range(self.dma_bytes + 1))
        rq_v, rq_addr, rq_len = Signal(), Signal.like(q_rd_addr), Signal.like(q_rd_len)
        rk_v, rk_addr, rk_len = Signal(), Signal.like(q_rd_addr), Signal.like(q_rd_len)
        m.d.comb += [
            self.mem_rd_valid.eq(rq_v),
            self.mem_rd_addr.eq(rq_addr),
            self.mem_rd_len.eq(rq_len),
            q_rd_ready.eq(~rk_v),
        ]
        with m.If(~rq_v | self.mem_rd_ready):
            m.d.sync += rq_v.eq(rk_v | q_rd_valid)
            with m.If(rk_v):
                m.d.sync += [rq_addr.eq(rk_addr), rq_len.eq(rk_len), rk_v.eq(0)]
            with m.Elif(q_rd_valid):
                m.d.sync += [rq_addr.eq(q_rd_addr), rq_len.eq(q_rd_len)]
        with m.Elif(q_rd_valid & ~rk_v):
            m.d.sync += [rk_v.eq(1), rk_addr.eq(q_rd_addr), rk_len.eq(q_rd_len)]
        # reads requested and not yet taken from rs (every kind: fetch, prefetch, engine),
        # counted a cycle late (from registered request/take flags): the reads outstanding
        # are rd_out + rd_fire_q - rs_fire_q, and DRAIN waits for rd_out == 0 & ~rd_fire_q
        rd_out = Signal(PF_COUNT_BITS + 1)
        rd_fire_q = Signal()
        rs_fire_q = Signal()
        m.d.sync += [
            rd_fire_q.eq(q_rd_valid & q_rd_ready),
            rs_fire_q.eq(rs_valid & rs_ready),
            rd_out.eq(rd_out + rd_fire_q - rs_fire_q),
        ]

        # ------------------------------------------------ engines and the DMA switch
        engines = {}
        # the running engine, one-hot (all 0: none); the switch is an AND-OR over it
        act = Signal(max(1, len(self.ops)))
        active = Signal(range(len(self.ops) + 1))  # the same, binary: 1 + its index
        eng_rst = Signal()  # abort: the engines return to idle (a bus error, RESET)
        if self.gate_idle_engines:
            m.domains.gate = ClockDomain("gate", clk_edge="neg", local=True)
            m.d.comb += [
                ClockSignal("gate").eq(ClockSignal()),
                ResetSignal("gate").eq(ResetSignal()),
            ]
        for i, op in enumerate(self.ops):
            name = f"op_{isa.op_name(op)}"
            e = engines[op] = self._engine(op)
            # the response beat goes to every engine as is (rdata.valid, switched below,
            # says when it counts): no 8*W-bit gate per engine
            m.d.comb += [
                e.args.eq(cmd.args),
                e.mem_lo.eq(csr.mem_lo),
                e.mem_hi.eq(csr.mem_hi),
                e.rdata.payload.eq(rs_data),
            ]
            if not self.gate_idle_engines:
                m.submodules[name] = ResetInserter(eng_rst)(e)
                continue
            # the engine's clock runs while it is started, running or in reset; the enable
            # is sampled on the falling edge so the gated clock cannot glitch
            en = Signal(name=f"{name}_en", init=1, reset_less=True)
            m.d.gate += en.eq(act[i] | e.start | ResetSignal() | eng_rst)
            m.domains += ClockDomain(name, local=True)
            m.d.comb += [
                ClockSignal(name).eq(ClockSignal() & en),
                ResetSignal(name).eq(ResetSignal()),
            ]
            m.submodules[name] = ResetInserter({name: eng_rst})(DomainRenamer(name)(e))
        eng_done = Signal()
        eng_error = Signal(8)
        # the engine's done is acted on the cycle after (registered with its error, and
        # with the bus-error state as of that cycle, berr_now below)
        done_q = Signal()
        err_q = Signal(8)
        err_nz_q = Signal()
        m.d.sync += [done_q.eq(eng_done), err_q.eq(eng_error), err_nz_q.eq(eng_error != 0)]
        # the running engine's read port, before the prefetcher shares it (below)
        e_rd_valid, e_rd_ready = Signal(), Signal()
        e_rd_addr, e_rd_len = Signal(isa.ADDR_BITS), Signal(range(self.dma_bytes + 1))
        e_rs_valid, e_rs_ready = Signal(), Signal()

        def pick(get):
            """The running engine's output ``get(e)`` (0 when none runs)."""
            v = Const(0, 1)
            for i, op in enumerate(self.ops):
                x = Value.cast(get(engines[op]))
                v = v | Mux(act[i], x, Const(0, len(x)))
            return v

        m.d.comb += [
            e_rd_valid.eq(pick(lambda e: e.rd.valid)),
            e_rd_addr.eq(pick(lambda e: e.rd.payload.addr)),
            e_rd_len.eq(pick(lambda e: e.rd.payload.len)),
            e_rs_ready.eq(pick(lambda e: e.rdata.ready)),
            self.mem_wr_valid.eq(pick(lambda e: e.wr.valid)),
            self.mem_wr_addr.eq(pick(lambda e: e.wr.payload.addr)),
            self.mem_wr_len.eq(pick(lambda e: e.wr.payload.len)),
            eng_done.eq(pick(lambda e: e.done)),
            eng_error.eq(pick(lambda e: e.error.as_value())),
        ]
        # the wide write data: a mux on the binary index (an AND-OR over 10 engines would
        # take ~1K LUT more; the data leaves for the shell, not a decision)
        with m.Switch(active):
            for i, op in enumerate(self.ops):
                with m.Case(i + 1):
                    m.d.comb += self.mem_wr_data.eq(engines[op].wr.payload.data)
        # ------------------------------------------------ command prefetch
        # While an engine runs, the next command is read in a request slot the engine
        # leaves free; responses come back in request order, so the prefetch's is the
        # one after the engine reads that were outstanding when it was issued.
        # The engine responses taken are counted a cycle late (ers_q): the engine reads
        # outstanding are eng_out - ers_q, the engine responses due before the
        # prefetch's pf_ahead - ers_q (so the prefetch's is at the head when
        # pf_ahead == ers_q).
        pf_req = Signal()  # the prefetch read is in flight
        pf_have = Signal()  # pf_buf holds command pc + 1
        pf_buf = Signal(isa.COMMAND_BITS)
        eng_out = Signal(PF_COUNT_BITS)  # engine reads outstanding (+ ers_q)
        pf_ahead = Signal(PF_COUNT_BITS)  # engine responses due before the prefetch's (+ ers_q)
        ers_q = Signal()  # an engine response was taken last cycle
        pf_head = Signal()
        pf_zero = Signal()  # pf_ahead == ers_q, as a register (set from next cycle's values)
        m.d.comb += pf_head.eq(pf_req & pf_zero)
        # the running engine's handshakes come from registers (act is non-zero only in
        # EXEC): its read ready is the request skid's, its response valid rs less an
        # error beat and the prefetch's (pf_head), one LUT each
        for i, op in enumerate(self.ops):
            e = engines[op]
            m.d.comb += [
                e.rd.ready.eq(e_rd_ready & act[i]),
                # (written out from the flops, not through e_rs_valid: one LUT per engine)
                e.rdata.valid.eq(rs_valid & ~rs_err & ~(pf_req & pf_zero) & act[i]),
                e.wr.ready.eq(self.mem_wr_ready & act[i]),
            ]

        eng_rd_fire = Signal()
        eng_rs_fire = Signal()
        pf_fire = Signal()
        m.d.comb += [
            eng_rd_fire.eq(e_rd_valid & e_rd_ready),
            eng_rs_fire.eq(e_rs_valid & e_rs_ready),
        ]
        eng_full = Signal()  # eng_out at its maximum (registered with it)
        eng_next = Mux(eng_rd_fire, eng_out + 1 - ers_q, eng_out - ers_q)
        m.d.sync += [
            ers_q.eq(eng_rs_fire),
            eng_out.eq(eng_next),
            eng_full.eq(eng_next == (1 << PF_COUNT_BITS) - 1),
        ]
        m.d.comb += [
            e_rd_ready.eq(q_rd_ready & ~eng_full),
            e_rs_valid.eq(rs_valid & ~rs_err & ~pf_head),
        ]
        rs_ready_own = Signal()  # rs taken by the processor (rs_ready: or by the engine)
        m.d.comb += rs_ready.eq(rs_ready_own | e_rs_ready)
        with m.If(pf_fire):
            m.d.sync += [pf_req.eq(1), pf_ahead.eq(eng_out - ers_q)]
        with m.Elif(pf_req):
            m.d.sync += pf_ahead.eq(pf_ahead - ers_q)
        # next cycle: pf_ahead' == ers_q' (= eng_rs_fire), the compares from this cycle's
        # registers (pf_ahead' is eng_out - ers_q or pf_ahead - ers_q)
        m.d.sync += pf_zero.eq(
            Mux(
                pf_fire,
                Mux(eng_rs_fire, eng_out == ers_q + 1, eng_out == ers_q),
                Mux(eng_rs_fire, pf_ahead == ers_q + 1, pf_ahead == ers_q),
            )
        )

        # ------------------------------------------------ command index
        # pc + 1, pc + 2 and the fetch addresses of pc and pc + 1 are registers, and so are
        # the compares with N_CMDS (recomputed every cycle from the registers; where pc
        # advances, from the values of the next pc)
        pc1 = Signal(34)
        pc2 = Signal(34)
        faddr = Signal(isa.ADDR_BITS)  # stream_addr + 64 * pc
        faddr1 = Signal(isa.ADDR_BITS)  # stream_addr + 64 * (pc + 1)
        last = Signal()  # pc == n_cmds - 1
        more = Signal()  # pc + 1 < n_cmds
        m.d.sync += [
            faddr.eq(csr.stream_addr + (pc << 6)),
            faddr1.eq(csr.stream_addr + (pc1 << 6)),
            last.eq(pc1 == csr.n_cmds),
            more.eq(pc1 < csr.n_cmds),
        ]

        def advance():
            """pc <= pc + 1 (and its companions)."""
            m.d.sync += [
                pc.eq(pc1),
                pc1.eq(pc2),
                pc2.eq(pc2 + 1),
                faddr.eq(faddr1),
                faddr1.eq(csr.stream_addr + (pc2 << 6)),
                last.eq(pc2 == csr.n_cmds),
                more.eq(pc2 < csr.n_cmds),
            ]

        # ------------------------------------------------ bus errors
        # A read response or a write (tagged by the shell with the index of the command
        # that issued it) answered with an error: the first in stream order is kept
        # (berr_op); the stream ends with BUS_ERROR at that index once nothing is
        # outstanding (an engine at or past it is reset first).
        # The capture takes two cycles: the errors of a cycle are registered (c_rd, c_wr)
        # and folded into berr / berr_op the cycle after. The decisions that need the
        # errors as of the previous cycle look at both (berr_now, berr_le_pc).
        berr = Signal()
        berr_op = Signal(32)
        cap_rd = Signal()  # a read response with an error is taken now
        cap_rd_op = Signal(32)
        c_rd, c_rd_op = Signal(), Signal(32)
        c_wr, c_wr_op = Signal(), Signal(32)
        m.d.sync += [
            c_rd.eq(cap_rd),
            c_rd_op.eq(cap_rd_op),
            c_wr.eq(self.mem_wr_err),
            c_wr_op.eq(self.mem_wr_err_op),
        ]
        # fold: the read's error first, then the write's (ties keep the earlier)
        take_rd = Signal()
        take_wr = Signal()
        m.d.comb += [
            take_rd.eq(c_rd & (~berr | (c_rd_op < berr_op))),
            take_wr.eq(
                c_wr & (~(berr | c_rd) | Mux(take_rd, c_wr_op < c_rd_op, c_wr_op < berr_op))
            ),
        ]
        m.d.sync += [
            berr.eq(berr | c_rd | c_wr),
            berr_op.eq(Mux(take_wr, c_wr_op, Mux(take_rd, c_rd_op, berr_op))),
        ]
        berr_now = Signal()  # an error before this cycle
        berr_le_pc = Signal()  # ... at or before command pc
        m.d.comb += [
            berr_now.eq(berr | c_rd | c_wr),
            berr_le_pc.eq(
                (berr & (berr_op <= pc)) | (c_rd & (c_rd_op <= pc)) | (c_wr & (c_wr_op <= pc))
            ),
        ]

        # ------------------------------------------------ control FSM
        # Every stream ends in DRAIN: the memory transfers still outstanding (reads of an
        # aborted engine, a prefetch, posted writes) complete first, so that the status
        # (and the interrupt) come after the last write and the top starts the next
        # stream clean.
        pend_code = Signal(8)
        pend_op = Signal(32)
        pend_done = Signal()  # END was reached
        pend_reset = Signal()  # aborted by CTRL.RESET: status cleared

        # pend_op: the command a drain() names, pc as of the cycle before (pc does not
        # change where drain() is called, nor in DRAIN after one)
        m.d.sync += pend_op.eq(pc)

        def drain(code=0, end=False):
            m.d.sync += [pend_code.eq(code), pend_done.eq(int(end))]
            m.next = "DRAIN"

        def next_cmd():
            m.d.sync += ops_done.eq(ops_done + 1)
            with m.If(last):
                drain(ErrorCode.MISSING_END.value)
            with m.Else():
                advance()
                m.next = "FETCH"

        def aborted(running_engine=False):
            """RESET, or a bus error at or before this command: stop and drain."""
            cond = csr.soft_reset | berr_le_pc
            with m.If(cond):
                m.next = "DRAIN"
                m.d.sync += [pend_code.eq(0), pend_done.eq(0)]
                if running_engine:
                    m.d.comb += eng_rst.eq(1)
                    m.d.sync += [act.eq(0), active.eq(0)]
            return cond

        def draining():
            m.d.comb += rs_ready_own.eq(1)
            m.d.sync += [
                act.eq(0),
                active.eq(0),
                eng_out.eq(0),
                eng_full.eq(0),
                pf_req.eq(0),
                pf_ahead.eq(0),
                pf_have.eq(0),
            ]

        with m.FSM(init="IDLE"):
            with m.State("IDLE"):
                # pc's companions as of pc = 0 (loaded every cycle: not behind START)
                m.d.sync += [
                    pc1.eq(1),
                    pc2.eq(2),
                    faddr.eq(csr.stream_addr),
                    faddr1.eq(csr.stream_addr + 64),
                    last.eq(csr.n_cmds == 1),
                    more.eq(csr.n_cmds > 1),
                ]
                with m.If(csr.start):
                    m.d.sync += [
                        busy.eq(1),
                        done.eq(0),
                        error.eq(0),
                        err_op.eq(0),
                        pc.eq(0),
                        berr.eq(0),
                        c_rd.eq(0),
                        c_wr.eq(0),
                        pend_reset.eq(0),
                        pf_have.eq(0),
                        pend_code.eq(0),
                        pend_done.eq(0),
                    ]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += [
                    q_rd_valid.eq(1),
                    q_rd_addr.eq(faddr),
                    q_rd_len.eq(isa.COMMAND_BYTES),
                ]
                with m.If(q_rd_ready):
                    m.next = "FETCH_WAIT"
                aborted()
            with m.State("FETCH_WAIT"):
                m.d.comb += rs_ready_own.eq(1)
                with m.If(rs_valid & rs_err):
                    m.d.comb += [cap_rd.eq(1), cap_rd_op.eq(pc)]
                    m.next = "DRAIN"
                with m.Elif(rs_valid):
                    m.d.sync += cmd.eq(rs_data[: isa.COMMAND_BITS])
                    m.next = "DECODE"
                aborted()
            with m.State("DECODE"):
                with m.If(csr.soft_reset | berr_now):
                    m.d.sync += [pend_code.eq(0), pend_done.eq(0)]
                    m.next = "DRAIN"
                with m.Elif(~known):
                    drain(ErrorCode.UNKNOWN_OPCODE.value)
                with m.Elif(opv == Opcode.END.value):
                    m.d.sync += ops_done.eq(ops_done + 1)
                    drain(end=True)
                with m.Elif(opv == Opcode.NOP.value):
                    next_cmd()
                with m.Else():
                    with m.Switch(opv):
                        for i, op in enumerate(self.ops):
                            with m.Case(op.value):
                                m.d.comb += engines[op].start.eq(1)
                                m.d.sync += [act.eq(1 << i), active.eq(i + 1)]
                                m.next = "EXEC"
                        with m.Default():
                            m.next = "HOST_FENCE"
            with m.State("EXEC"):
                # reads: the engine first, the prefetch in a free slot (not in the cycle
                # the engine finishes: the next state decides on pf_req/pf_have)
                want_pf = ~pf_req & ~pf_have & ~eng_done & ~done_q & more & ~berr_now
                m.d.comb += [
                    q_rd_valid.eq((e_rd_valid & ~eng_full) | want_pf),
                    q_rd_addr.eq(Mux(e_rd_valid, e_rd_addr, faddr1)),
                    q_rd_len.eq(Mux(e_rd_valid, e_rd_len, isa.COMMAND_BYTES)),
                    pf_fire.eq(want_pf & ~e_rd_valid & q_rd_ready),
                ]
                pf_arrives = Signal()  # the prefetched word is taken now
                m.d.comb += pf_arrives.eq(pf_head & rs_valid & ~rs_err)
                with m.If(pf_head):
                    m.d.comb += rs_ready_own.eq(1)
                    with m.If(rs_valid & rs_err):  # command pc + 1 cannot be fetched
                        m.d.comb += [cap_rd.eq(1), cap_rd_op.eq(pc1)]
                        m.d.sync += pf_req.eq(0)
                with m.Else():
                    # an errored beat is not given to the engine (it is reset next cycle;
                    # e_rs_valid above), the processor drops it
                    m.d.comb += rs_ready_own.eq(rs_err)
                    with m.If(rs_valid & rs_err):
                        m.d.comb += [cap_rd.eq(1), cap_rd_op.eq(pc)]
                with m.If(pf_arrives):
                    m.d.sync += [
                        pf_buf.eq(rs_data[: isa.COMMAND_BITS]),
                        pf_req.eq(0),
                        pf_have.eq(1),
                    ]
                with m.If(done_q):
                    # the engine finished last cycle; berr_now: the bus errors as of then
                    m.d.sync += [act.eq(0), active.eq(0)]
                    with m.If(err_nz_q):
                        m.d.sync += pf_have.eq(0)
                        drain(err_q)
                    with m.Elif(berr_now):
                        # the next command's fetch failed
                        m.d.sync += [ops_done.eq(ops_done + 1), pend_code.eq(0), pend_done.eq(0)]
                        m.next = "DRAIN"  # BUS_ERROR at berr_op (= pc + 1)
                    with m.Elif(last):
                        m.d.sync += ops_done.eq(ops_done + 1)
                        drain(ErrorCode.MISSING_END.value)
                    with m.Else():
                        m.d.sync += ops_done.eq(ops_done + 1)
                        advance()
                        with m.If(pf_have):
                            m.d.sync += [cmd.eq(pf_buf), pf_have.eq(0)]
                            m.next = "DECODE"
                        with m.Elif(pf_req):  # (it may arrive now: PF_WAIT takes pf_buf)
                            m.next = "PF_WAIT"
                        with m.Else():
                            m.next = "FETCH"
                aborted(running_engine=True)
            with m.State("PF_WAIT"):
                m.d.comb += rs_ready_own.eq(1)
                with m.If(pf_have):  # it arrived in the cycle EXEC ended
                    m.d.sync += [cmd.eq(pf_buf), pf_have.eq(0)]
                    m.next = "DECODE"
                with m.Elif(rs_valid & rs_err):
                    m.d.comb += [cap_rd.eq(1), cap_rd_op.eq(pc)]
                    m.d.sync += pf_req.eq(0)
                    m.next = "DRAIN"
                with m.Elif(rs_valid):
                    m.d.sync += [cmd.eq(rs_data[: isa.COMMAND_BITS]), pf_req.eq(0)]
                    m.next = "DECODE"
                aborted()
            with m.State("HOST_FENCE"):
                # the host executes the command on memory: the writes before it first
                with m.If(~self.mem_wr_busy):
                    m.d.sync += host_op.eq(1)
                    m.d.comb += ev_host.eq(1)
                    m.next = "HOST"
                aborted()
            with m.State("HOST"):
                with m.If(csr.soft_reset | berr_now):
                    m.d.sync += [host_op.eq(0), pend_code.eq(0), pend_done.eq(0)]
                    m.next = "DRAIN"
                with m.Elif(csr.host_error):
                    m.d.sync += host_op.eq(0)
                    drain(csr.host_code)
                with m.Elif(csr.resume):
                    m.d.sync += host_op.eq(0)
                    m.next = "HOST_NEXT"
            with m.State("HOST_NEXT"):
                # the command after a host-executed one, a cycle after RESUME (not behind
                # the CSR write's decode); no transfer is outstanding here
                next_cmd()
                aborted()
            with m.State("DRAIN"):
                draining()
                # the engine finished in the cycle its stream was aborted: what the end of
                # the command did then (its count, the next pc)
                with m.If(done_q & ~err_nz_q):
                    m.d.sync += ops_done.eq(ops_done + 1)
                    with m.If(~berr_now & ~last):
                        advance()
                with m.If((rd_out == 0) & ~rd_fire_q & ~self.mem_wr_busy):
                    m.next = "DRAIN_ERR"
            with m.State("DRAIN_ERR"):
                # the bus errors of the last DRAIN cycle reach berr / berr_op
                draining()
                m.next = "DRAIN_END"
            with m.State("DRAIN_END"):
                draining()
                m.d.sync += busy.eq(0)
                m.d.comb += ev_end.eq(1)
                with m.If(pend_reset | csr.soft_reset):
                    m.d.sync += [done.eq(0), error.eq(0), err_op.eq(0)]
                with m.Elif(berr & (pend_done | (pend_code == 0) | (berr_op <= pend_op))):
                    m.d.sync += [
                        done.eq(0),
                        error.eq(ErrorCode.BUS_ERROR.value),
                        err_op.eq(berr_op),
                    ]
                with m.Else():
                    m.d.sync += [done.eq(pend_done), error.eq(pend_code), err_op.eq(pend_op)]
                m.next = "IDLE"

        # soft reset (CTRL.RESET): status and counters; a running stream is aborted (the
        # engine reset, what is outstanding drained in DRAIN, then idle)
        with m.If(csr.soft_reset):
            m.d.sync += [
                done.eq(0),
                error.eq(0),
                err_op.eq(0),
                ops_done.eq(0),
                cycles.eq(0),
                bytes_rd.eq(0),
                bytes_wr.eq(0),
                rd_bytes_q.eq(0),
                wr_bytes_q.eq(0),
            ]
            with m.If(busy):
                m.d.sync += pend_reset.eq(1)
        return m
