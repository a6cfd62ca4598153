"""AXI bridges of the SoC shell (``hw/shell.py``), written for Amaranth 0.5.

``AxiLiteCSR``: an AXI4-Lite slave in front of the core's CSR bus (``hw/csr.py``).
``AxiDma``: the core's DMA port (``hw/accel.py``) on ``n_ports`` AXI4 master ports.

Port names follow Vivado IP integrator's inference rules: a prefix (``s_axi``,
``m_axi0``, ``m_axi1``, ...) and the standard lower-case AXI channel suffixes
(``awaddr``, ``awvalid``, ..., ``rready``); 1-bit ID signals, every transaction uses ID 0
(responses of one port return in order).

AxiLiteCSR (32-bit data, ``addr_bits`` of address)
=================================================
* AW and W are taken in any order (each has a one-entry register; ``awready`` /
  ``wready`` are low while it is full); the write is performed when both are present and
  the B register is free; B and R hold their response until ``bready`` / ``rready``.
* A write to an offset of ``hw.csr.REGISTERS`` with all four strobes set reaches the
  register (read-only registers ignore it) and answers OKAY; an unmapped offset
  (including any offset not a multiple of 4 or beyond the register block) answers SLVERR
  and changes nothing, and so does a write with partial strobes (the registers are whole
  words: CTRL pulses and W1C bits must not be merged with read data).
* Reads of a mapped offset answer OKAY with the register; unmapped ones SLVERR and 0.
  Reads have no side effects. A write waiting with a read gets the CSR bus first.
* Every output is a flop or the inverse of one.

AxiDma (128-bit data at the default ``data_bytes=16``, ``addr_bits``-bit addresses)
===================================================================================
Core side: the DMA port of ``hw.accel.Accel`` (same names: ``mem_rd_*``, ``mem_rdata*``,
``mem_wr_*``, plus ``mem_rdata_err``, ``mem_wr_err``, ``mem_wr_err_op``, ``mem_wr_busy``),
``cmd_index`` (the core's PC, tags each write) and ``addr_hi`` (STREAM_ADDR_HI: bus
address = ``addr_hi << 32 | device address``).

Reads. A request (1..dma_bytes bytes at any byte address) passes a 2-entry FIFO, a
register that computes its beats (R1) and one that dispatches it (R2, with its write hazard
and the port's room as flops). Its beats: the aligned 16-byte beats it touches (1..9 at
128 bytes), split into two INCR bursts where it crosses a 4 KB boundary (never more: a request
is at most dma_bytes <= 4 KB). Requests go to the ports in strict round robin (request i
to port i mod N, both bursts of a split request to the same port), so every port carries
1/N of the requests and responses are reassembled in request order without tags. Each
port has an R FIFO of ``rd_fifo_beats`` beats (LUT RAM) and issues a request only when
the FIFO has room for all of its beats (credits), so R is never backpressured by the
reassembly and several requests per port (``rd_fifo_beats // 9`` at worst, 16 at most)
are outstanding on every port at once. A per-port *assembler* (9 x 128-bit register)
collects the beats of its next request from the R FIFO at one beat per cycle. One shared
*realigner* takes the assembled requests in round-robin order (one per cycle) and
shifts them down by the request's byte offset in two registered 4:1 stages (byte offset
[1:0], then [3:2]), zeroing the bytes beyond ``len``, into a 4-entry output FIFO: one
response per cycle (128 bytes/cycle), response order = request order. The stages advance
every cycle and a request is taken only while the FIFO has room for it and those in
flight (a count of flops), so the core's ``mem_rdata_ready`` only moves the FIFO's read
pointer: no ready path runs back through the wide stages. Per port: 8 beats per aligned
128-byte request, 9 misaligned, so 5 ports carry 71..80 bytes/cycle (the KV260 point
needs 68.4). An error response (RRESP SLVERR/DECERR) on any beat marks
the request's response (``mem_rdata_err``).

Writes. A write request (1..dma_bytes bytes at any byte address; ``mem_wr_ready`` is
one flop) is taken into the serializer as it comes (no logic between the core's switch
and these flops), which computes its beats the cycle after, waits until no
outstanding write overlaps its bytes (so two writes to the same byte cannot pass each
other on different ports), books it on the next port in round robin (AW burst(s) into
that port's address register, an entry in its write table: bytes, command index, bursts
left) and sends its beats to that port's W register at one beat per cycle, each beat
shifted by the byte offset (one 16:1 byte funnel shared by all ports) with WSTRB set for
exactly the request's bytes and WLAST at the end of each burst. The write tables hold
``wr_outstanding`` requests per port; B responses retire them in order. A B error pulses
``mem_wr_err`` with the command index of the write (the core ends the stream with
BUS_ERROR there). ``mem_wr_busy``: a write accepted and not yet acknowledged by B (the
core waits for it before it reports a stream's end or hands a command to the host).

Ordering. A read is dispatched only when no accepted, unacknowledged write overlaps its
bytes (read-after-write through memory is safe across ports and channels: AXI itself
orders nothing between them); a write waits for overlapping earlier writes (above).
Non-overlapping transfers pass each other freely.

Constant outputs: ``*size`` = log2(data_bytes) (full beats), ``*burst`` = INCR,
``*cache`` = 0b0011 (normal non-cacheable bufferable), ``*prot`` = 0, ``*lock`` = 0,
``*qos`` = 0. ``bready`` is always 1; ``rready`` is the R FIFO's room (always 1 in
practice, by the credits).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from golden import isa
from hw.csr import CSR_ADDR_BITS, MAPPED_OFFSETS

AXI_OKAY = 0b00
AXI_SLVERR = 0b10
AXI_BURST_INCR = 0b01
AXI_CACHE = 0b0011
PAGE_BYTES = 4096  # AXI: a burst never crosses a 4 KB boundary
MAX_BURST = 256  # AXI4 INCR


# ---------------------------------------------------------------------- signatures
def axi_lite_slave_members(prefix: str, addr_bits: int) -> dict:
    """Members of an AXI4-Lite slave port (32-bit data), flow as seen by the slave."""
    p = prefix + "_"
    return {
        p + "awaddr": In(addr_bits),
        p + "awprot": In(3),
        p + "awvalid": In(1),
        p + "awready": Out(1),
        p + "wdata": In(32),
        p + "wstrb": In(4),
        p + "wvalid": In(1),
        p + "wready": Out(1),
        p + "bresp": Out(2),
        p + "bvalid": Out(1),
        p + "bready": In(1),
        p + "araddr": In(addr_bits),
        p + "arprot": In(3),
        p + "arvalid": In(1),
        p + "arready": Out(1),
        p + "rdata": Out(32),
        p + "rresp": Out(2),
        p + "rvalid": Out(1),
        p + "rready": In(1),
    }


def axi4_master_members(prefix: str, addr_bits: int, data_bytes: int) -> dict:
    """Members of an AXI4 master port (1-bit IDs, always 0), flow as seen by the master."""
    p = prefix + "_"
    d = {}
    for ch in ("aw", "ar"):
        d.update(
            {
                p + ch + "id": Out(1),
                p + ch + "addr": Out(addr_bits),
                p + ch + "len": Out(8),
                p + ch + "size": Out(3),
                p + ch + "burst": Out(2),
                p + ch + "lock": Out(1),
                p + ch + "cache": Out(4),
                p + ch + "prot": Out(3),
                p + ch + "qos": Out(4),
                p + ch + "valid": Out(1),
                p + ch + "ready": In(1),
            }
        )
    d.update(
        {
            p + "wdata": Out(8 * data_bytes),
            p + "wstrb": Out(data_bytes),
            p + "wlast": Out(1),
            p + "wvalid": Out(1),
            p + "wready": In(1),
            p + "bid": In(1),
            p + "bresp": In(2),
            p + "bvalid": In(1),
            p + "bready": Out(1),
            p + "rid": In(1),
            p + "rdata": In(8 * data_bytes),
            p + "rresp": In(2),
            p + "rlast": In(1),
            p + "rvalid": In(1),
            p + "rready": Out(1),
        }
    )
    return d


class _Port:
    """Attribute access to one prefixed AXI port of a component: ``P(c, "m_axi0").awaddr``."""

    def __init__(self, comp, prefix):
        self._c, self._p = comp, prefix

    def __getattr__(self, name):
        return getattr(self._c, f"{self._p}_{name}")


# ---------------------------------------------------------------------- AXI4-Lite -> CSR
class AxiLiteCSR(wiring.Component):
    """AXI4-Lite slave (``s_axi_*``) driving the core's CSR bus (``csr_*``); see the
    module docstring. ``addr_bits``: width of ``s_axi_awaddr``/``araddr`` (>= 8)."""

    def __init__(self, addr_bits: int = 12, prefix: str = "s_axi"):
        if addr_bits < CSR_ADDR_BITS:
            raise ValueError(f"addr_bits {addr_bits} < CSR_ADDR_BITS {CSR_ADDR_BITS}")
        self.addr_bits, self.prefix = addr_bits, prefix
        super().__init__(
            {
                **axi_lite_slave_members(prefix, addr_bits),
                "csr_addr": Out(CSR_ADDR_BITS),
                "csr_w_en": Out(1),
                "csr_w_data": Out(32),
                "csr_r_data": In(32),
            }
        )

    def _mapped(self, m, addr, name):
        hit = Signal(name=name)
        with m.Switch(addr):
            for off in sorted(MAPPED_OFFSETS):
                with m.Case(off):
                    m.d.comb += hit.eq(1)
        return hit

    def elaborate(self, platform):
        m = Module()
        s = _Port(self, self.prefix)
        A = self.addr_bits
        aw_have, aw_addr = Signal(), Signal(A)
        w_have, w_data = Signal(), Signal(32)
        ar_have, ar_addr = Signal(), Signal(A)
        bvalid, bresp = Signal(), Signal(2)
        rvalid, rresp, rdata = Signal(), Signal(2), Signal(32)
        m.d.comb += [
            s.awready.eq(~aw_have),
            s.wready.eq(~w_have),
            s.arready.eq(~ar_have),
            s.bvalid.eq(bvalid),
            s.bresp.eq(bresp),
            s.rvalid.eq(rvalid),
            s.rresp.eq(rresp),
            s.rdata.eq(rdata),
        ]
        # the address decode and the strobe check are made as the address/data are taken,
        # so that the write enable the core sees is one gate of flops
        aw_ok, ar_ok, w_full = Signal(), Signal(), Signal()
        with m.If(s.awvalid & ~aw_have):
            m.d.sync += [
                aw_have.eq(1),
                aw_addr.eq(s.awaddr),
                aw_ok.eq(self._mapped(m, s.awaddr, "aw_mapped")),
            ]
        with m.If(s.wvalid & ~w_have):
            m.d.sync += [
                w_have.eq(1),
                w_data.eq(s.wdata),
                w_full.eq(s.wstrb == 0xF),
            ]
        with m.If(s.arvalid & ~ar_have):
            m.d.sync += [
                ar_have.eq(1),
                ar_addr.eq(s.araddr),
                ar_ok.eq(self._mapped(m, s.araddr, "ar_mapped")),
            ]
        do_write = Signal()
        do_read = Signal()
        m.d.comb += [
            do_write.eq(aw_have & w_have & (~bvalid | s.bready)),
            do_read.eq(ar_have & ~do_write & (~rvalid | s.rready)),
        ]
        m.d.comb += [
            self.csr_addr.eq(Mux(do_write, aw_addr, ar_addr)[:CSR_ADDR_BITS]),
            self.csr_w_data.eq(w_data),
            self.csr_w_en.eq(do_write & aw_ok & w_full),
        ]
        with m.If(do_write):
            m.d.sync += [
                aw_have.eq(0),
                w_have.eq(0),
                bvalid.eq(1),
                bresp.eq(Mux(aw_ok & w_full, AXI_OKAY, AXI_SLVERR)),
            ]
        with m.Elif(s.bready):
            m.d.sync += bvalid.eq(0)
        with m.If(do_read):
            m.d.sync += [
                ar_have.eq(0),
                rvalid.eq(1),
                rresp.eq(Mux(ar_ok, AXI_OKAY, AXI_SLVERR)),
                rdata.eq(Mux(ar_ok, self.csr_r_data, 0)),
            ]
        with m.Elif(s.rready):
            m.d.sync += rvalid.eq(0)
        return m


# ---------------------------------------------------------------------- DMA -> AXI4
def _log2(n: int) -> int:
    assert n > 0 and n & (n - 1) == 0, n
    return n.bit_length() - 1


class AxiDma(wiring.Component):
    """The core's DMA port on ``n_ports`` AXI4 master ports ``m_axi0_*`` ... (see the
    module docstring for the striping, realignment and ordering rules)."""

    def __init__(
        self,
        dma_bytes: int,
        *,
        n_ports: int = 1,
        data_bytes: int = 16,
        addr_bits: int = 49,
        rd_fifo_beats: int = 64,
        wr_outstanding: int = 2,
    ):
        if n_ports < 1:
            raise ValueError(f"n_ports must be >= 1, not {n_ports}")
        if data_bytes & (data_bytes - 1) or not 4 <= data_bytes <= 128:
            raise ValueError(f"data_bytes must be a power of two in 4..128, not {data_bytes}")
        if dma_bytes & (dma_bytes - 1) or dma_bytes < data_bytes or dma_bytes > PAGE_BYTES:
            raise ValueError(f"dma_bytes {dma_bytes}: a power of two in {data_bytes}..4096")
        if not isa.ADDR_BITS < addr_bits <= 64:
            raise ValueError(f"addr_bits must be in {isa.ADDR_BITS + 1}..64, not {addr_bits}")
        self.max_beats = dma_bytes // data_bytes + 1  # a request at any alignment
        if rd_fifo_beats < self.max_beats:
            raise ValueError(
                f"rd_fifo_beats {rd_fifo_beats} < {self.max_beats} (the beats of one request)"
            )
        if wr_outstanding < 1:
            raise ValueError("wr_outstanding must be >= 1")
        self.dma_bytes, self.n_ports, self.data_bytes = dma_bytes, n_ports, data_bytes
        self.addr_bits, self.rd_fifo_beats = addr_bits, rd_fifo_beats
        self.wr_outstanding = wr_outstanding
        W = dma_bytes
        members = {
            "mem_rd_valid": In(1),
            "mem_rd_ready": Out(1),
            "mem_rd_addr": In(isa.ADDR_BITS),
            "mem_rd_len": In(range(W + 1)),
            "mem_rdata_valid": Out(1),
            "mem_rdata_ready": In(1),
            "mem_rdata": Out(8 * W),
            "mem_rdata_err": Out(1),
            "mem_wr_valid": In(1),
            "mem_wr_ready": Out(1),
            "mem_wr_addr": In(isa.ADDR_BITS),
            "mem_wr_len": In(range(W + 1)),
            "mem_wr_data": In(8 * W),
            "mem_wr_err": Out(1),
            "mem_wr_err_op": Out(32),
            "mem_wr_busy": Out(1),
            "cmd_index": In(32),
            "addr_hi": In(32),
        }
        for i in range(n_ports):
            members.update(axi4_master_members(f"m_axi{i}", addr_bits, data_bytes))
        super().__init__(members)

    def params(self) -> dict:
        return {
            "n_ports": self.n_ports,
            "data_bytes": self.data_bytes,
            "addr_bits": self.addr_bits,
            "rd_fifo_beats": self.rd_fifo_beats,
            "wr_outstanding": self.wr_outstanding,
        }

    # ------------------------------------------------------------------ helpers
    def _range_info(self, m, addr, length, name):
        """(end, n_beats, first-burst beats, crosses) of [addr, addr+len) (comb)."""
        DB = self.data_bytes
        ob = _log2(DB)
        pb = _log2(PAGE_BYTES)
        end = Signal(isa.ADDR_BITS, name=f"{name}_end")
        nb = Signal(range(self.max_beats + 1), name=f"{name}_nb")
        b1 = Signal(range(self.max_beats + 1), name=f"{name}_b1")
        cross = Signal(name=f"{name}_cross")
        m.d.comb += [
            end.eq(addr + length - 1),
            nb.eq((end[ob:] - addr[ob:])[: len(nb)] + 1),
            cross.eq(end[pb:] != addr[pb:]),
            b1.eq(Mux(cross, (PAGE_BYTES // DB) - addr[ob:pb], nb)),
        ]
        return end, nb, b1, cross

    def _bus_addr(self, dev_addr):
        return Cat(dev_addr, self.addr_hi)[: self.addr_bits]

    def _addr_channel(self, m, port, ch, name):
        """A job register (beat-aligned device address, beats of burst 1, of burst 2)
        feeding the registered ``ch`` (``ar``/``aw``) outputs of ``port``. Returns
        (job_valid, load(addr, n1, n2) statements)."""
        DB = self.data_bytes
        jv = Signal(name=f"{name}_job")
        ja = Signal(isa.ADDR_BITS, name=f"{name}_job_addr")
        n1 = Signal(range(self.max_beats + 1), name=f"{name}_job_n1")
        n2 = Signal(range(self.max_beats + 1), name=f"{name}_job_n2")
        valid = Signal(name=f"{name}_valid")
        addr = Signal(self.addr_bits, name=f"{name}_addr")
        alen = Signal(8, name=f"{name}_len")

        def g(suffix):
            return getattr(port, ch + suffix)

        m.d.comb += [
            g("valid").eq(valid),
            g("addr").eq(addr),
            g("len").eq(alen),
            g("size").eq(_log2(DB)),
            g("burst").eq(AXI_BURST_INCR),
            g("cache").eq(AXI_CACHE),
            g("prot").eq(0),
            g("lock").eq(0),
            g("qos").eq(0),
            g("id").eq(0),
        ]
        with m.If(~valid | g("ready")):
            with m.If(jv):
                m.d.sync += [valid.eq(1), addr.eq(self._bus_addr(ja)), alen.eq(n1 - 1)]
                with m.If(n2 != 0):
                    m.d.sync += [ja.eq(ja + n1 * DB), n1.eq(n2), n2.eq(0)]
                with m.Else():
                    m.d.sync += jv.eq(0)
            with m.Else():
                m.d.sync += valid.eq(0)

        def load(a, b1, b2):
            return [jv.eq(1), ja.eq(a), n1.eq(b1), n2.eq(b2)]

        return jv, load

    # ------------------------------------------------------------------ elaborate
    def elaborate(self, platform):
        m = Module()
        N, DB, W = self.n_ports, self.data_bytes, self.dma_bytes
        MB = self.max_beats
        ob = _log2(DB)
        ports = [_Port(self, f"m_axi{i}") for i in range(N)]
        rr_bits = max(1, (N - 1).bit_length())

        def rr_next(p):
            return Mux(p == N - 1, 0, p + 1)

        # ============================================================ write side
        # serializer registers (the request being booked / sent)
        sv = Signal()  # holds a request
        s_send = Signal()  # booked: sending its beats
        s_addr = Signal(isa.ADDR_BITS)
        s_len = Signal(range(W + 1))
        s_data = Signal(8 * W)
        s_tag = Signal(32)
        m.d.comb += self.mem_wr_ready.eq(~sv)
        # the request is taken as it comes (the core's switch ends at these flops) and its
        # beats are computed the cycle after (s_info), so that booking (overlap compares)
        # starts from flops instead of behind an adder: one cycle per write request
        i_end, i_nb, i_b1, i_cross = self._range_info(m, s_addr, s_len, "wr")
        s_info = Signal()  # s_end .. s_cross are the request's
        s_end, s_nb, s_b1, s_cross = (
            Signal.like(i_end),
            Signal.like(i_nb),
            Signal.like(i_b1),
            Signal(),
        )
        with m.If(self.mem_wr_valid & ~sv):
            m.d.sync += [
                sv.eq(1),
                s_send.eq(0),
                s_info.eq(0),
                s_addr.eq(self.mem_wr_addr),
                s_len.eq(self.mem_wr_len),
                s_data.eq(self.mem_wr_data),
                s_tag.eq(self.cmd_index),
            ]
        with m.Elif(sv & ~s_info):
            m.d.sync += [
                s_info.eq(1),
                s_end.eq(i_end),
                s_nb.eq(i_nb),
                s_b1.eq(i_b1),
                s_cross.eq(i_cross),
            ]

        # per-port write tables: entries {lo, hi, tag, two bursts}, in issue order
        WD = self.wr_outstanding
        tables = []
        for i in range(N):
            t = {
                "valid": [Signal(name=f"wt{i}_{k}_v") for k in range(WD)],
                "lo": [Signal(isa.ADDR_BITS, name=f"wt{i}_{k}_lo") for k in range(WD)],
                "hi": [Signal(isa.ADDR_BITS, name=f"wt{i}_{k}_hi") for k in range(WD)],
                "tag": [Signal(32, name=f"wt{i}_{k}_tag") for k in range(WD)],
                "two": [Signal(name=f"wt{i}_{k}_two") for k in range(WD)],
                "wp": Signal(range(WD), name=f"wt{i}_wp"),
                "rp": Signal(range(WD), name=f"wt{i}_rp"),
            }
            tables.append(t)

        def overlaps(lo_a, hi_a, lo_b, hi_b):
            return (lo_a <= hi_b) & (lo_b <= hi_a)

        def table_hit(lo, hi, name):
            hit = Signal(name=name)
            terms = [
                t["valid"][k] & overlaps(lo, hi, t["lo"][k], t["hi"][k])
                for t in tables
                for k in range(WD)
            ]
            m.d.comb += hit.eq(Cat(*terms).any())
            return hit

        wrr = Signal(rr_bits)  # port of the next write
        s_port = Signal(rr_bits)  # port of the request being sent
        aw_jobs = []
        for i, p in enumerate(ports):
            aw_jobs.append(self._addr_channel(m, p, "aw", f"p{i}_aw"))
        waw = table_hit(s_addr, s_end, "wr_overlap")
        book_ok = Signal()
        with m.Switch(wrr):
            for i in range(N):
                with m.Case(i):
                    t = tables[i]
                    full = Signal(name=f"wt{i}_full")
                    m.d.comb += full.eq(Cat(*t["valid"]).all())
                    m.d.comb += book_ok.eq(~aw_jobs[i][0] & ~full)
        book = Signal()
        m.d.comb += book.eq(sv & s_info & ~s_send & book_ok & ~waw)
        s_nb_q = Signal.like(s_nb)
        s_b1_q = Signal.like(s_b1)
        s_j = Signal(range(MB + 1))
        s_pos = Signal(range(-DB, W + DB))  # 16 * j - offset (signed)
        s_prev = Signal(8 * DB)  # chunk j - 1 of the data
        with m.If(book):
            m.d.sync += [
                s_send.eq(1),
                s_port.eq(wrr),
                wrr.eq(rr_next(wrr)),
                s_nb_q.eq(s_nb),
                s_b1_q.eq(s_b1),
                s_j.eq(0),
                s_pos.eq(-s_addr[:ob]),
                s_prev.eq(0),
            ]
            with m.Switch(wrr):
                for i in range(N):
                    with m.Case(i):
                        t = tables[i]
                        m.d.sync += aw_jobs[i][1](
                            Cat(Const(0, ob), s_addr[ob:]), s_b1, Mux(s_cross, s_nb - s_b1, 0)
                        )
                        with m.Switch(t["wp"]):
                            for k in range(WD):
                                with m.Case(k):
                                    m.d.sync += [
                                        t["valid"][k].eq(1),
                                        t["lo"][k].eq(s_addr),
                                        t["hi"][k].eq(s_end),
                                        t["tag"][k].eq(s_tag),
                                        t["two"][k].eq(s_cross),
                                    ]
                        m.d.sync += t["wp"].eq(Mux(t["wp"] == WD - 1, 0, t["wp"] + 1))

        # the beat being sent: bytes [16j - off, 16j - off + 16) of the data
        chunk = Signal(8 * DB)
        with m.Switch(s_j):
            for j in range(MB + 1):
                with m.Case(j):
                    m.d.comb += chunk.eq(
                        s_data[8 * DB * j : 8 * DB * (j + 1)] if j < W // DB else 0
                    )
        off = s_addr[:ob]
        funnel = Signal(16 * DB)
        m.d.comb += funnel.eq(Cat(s_prev, chunk))
        beat = Signal(8 * DB)
        with m.Switch(off):
            for o in range(DB):
                with m.Case(o):
                    m.d.comb += beat.eq(funnel[8 * (DB - o) : 8 * (2 * DB - o)])
        strb = Signal(DB)
        m.d.comb += strb.eq(Cat(*[((s_pos + b) >= 0) & ((s_pos + b) < s_len) for b in range(DB)]))
        last = Signal()
        m.d.comb += last.eq((s_j == s_b1_q - 1) | (s_j == s_nb_q - 1))
        # per-port W registers
        w_free = Signal()
        wregs = []
        for i, p in enumerate(ports):
            wv = Signal(name=f"p{i}_wvalid")
            wd = Signal(8 * DB, name=f"p{i}_wdata")
            ws = Signal(DB, name=f"p{i}_wstrb")
            wl = Signal(name=f"p{i}_wlast")
            m.d.comb += [p.wvalid.eq(wv), p.wdata.eq(wd), p.wstrb.eq(ws), p.wlast.eq(wl)]
            wregs.append((wv, wd, ws, wl))
            with m.If(p.wready):
                m.d.sync += wv.eq(0)
        with m.Switch(s_port):
            for i, p in enumerate(ports):
                with m.Case(i):
                    m.d.comb += w_free.eq(~wregs[i][0] | p.wready)
        send = Signal()
        m.d.comb += send.eq(sv & s_send & w_free)
        with m.If(send):
            with m.Switch(s_port):
                for i in range(N):
                    with m.Case(i):
                        wv, wd, ws, wl = wregs[i]
                        m.d.sync += [wv.eq(1), wd.eq(beat), ws.eq(strb), wl.eq(last)]
            m.d.sync += [s_j.eq(s_j + 1), s_pos.eq(s_pos + DB), s_prev.eq(chunk)]
            with m.If(s_j == s_nb_q - 1):
                m.d.sync += [sv.eq(0), s_send.eq(0)]

        # B responses retire the tables in order; an error pulses mem_wr_err
        err_q = Signal()
        err_op_q = Signal(32)
        m.d.comb += [self.mem_wr_err.eq(err_q), self.mem_wr_err_op.eq(err_op_q)]
        m.d.sync += err_q.eq(0)
        any_valid = []
        for i in reversed(range(N)):  # the lowest port's error wins a tie
            p, t = ports[i], tables[i]
            m.d.comb += p.bready.eq(1)
            any_valid += t["valid"]
            with m.If(p.bvalid):
                with m.Switch(t["rp"]):
                    for k in range(WD):
                        with m.Case(k):
                            with m.If(p.bresp[1]):
                                m.d.sync += [err_q.eq(1), err_op_q.eq(t["tag"][k])]
                            with m.If(t["two"][k]):
                                m.d.sync += t["two"][k].eq(0)
                            with m.Else():
                                m.d.sync += [
                                    t["valid"][k].eq(0),
                                    t["rp"].eq(Mux(t["rp"] == WD - 1, 0, t["rp"] + 1)),
                                ]
        m.d.comb += self.mem_wr_busy.eq(sv | Cat(*any_valid).any())

        # ============================================================ read side
        rq = fifo.SyncFIFO(width=isa.ADDR_BITS + len(self.mem_rd_len), depth=2)
        m.submodules.rd_req = rq
        m.d.comb += [
            rq.w_data.eq(Cat(self.mem_rd_addr, self.mem_rd_len)),
            rq.w_en.eq(self.mem_rd_valid),
            self.mem_rd_ready.eq(rq.w_rdy),
        ]
        # R1: the head request with its beats computed
        r1v = Signal()
        r1_addr = Signal(isa.ADDR_BITS)
        r1_len = Signal(range(W + 1))
        r1_end = Signal(isa.ADDR_BITS)
        r1_nb = Signal(range(MB + 1))
        r1_b1 = Signal(range(MB + 1))
        r1_cross = Signal()
        q_addr = rq.r_data[: isa.ADDR_BITS]
        q_len = rq.r_data[isa.ADDR_BITS :]
        q_end, q_nb, q_b1, q_cross = self._range_info(m, q_addr, q_len, "rd")
        dispatch = Signal()
        r1_free = Signal()
        r2_free = Signal()
        m.d.comb += [r1_free.eq(~r1v | r2_free), rq.r_en.eq(r1_free)]
        with m.If(r1_free):
            m.d.sync += r1v.eq(rq.r_rdy)
            with m.If(rq.r_rdy):
                m.d.sync += [
                    r1_addr.eq(q_addr),
                    r1_len.eq(q_len),
                    r1_end.eq(q_end),
                    r1_nb.eq(q_nb),
                    r1_b1.eq(q_b1),
                    r1_cross.eq(q_cross),
                ]

        def hazard(addr, end, name):
            """An accepted, unacknowledged write overlaps [addr, end] (comb)."""
            return table_hit(addr, end, f"{name}_table") | (
                sv & (~s_info | overlaps(addr, end, s_addr, s_end))
            )

        # R2: the request to dispatch, with its write hazard as of the cycle before
        # (r2_raw: computed from R1 as it moves up, then from R2 while it waits), so that
        # the dispatch decision starts from flops. A write taken meanwhile was accepted
        # after the read was requested: the read need not wait for it.
        r2v, r2_raw = Signal(), Signal()
        r2_addr, r2_len, r2_end = Signal.like(r1_addr), Signal.like(r1_len), Signal.like(r1_end)
        r2_nb, r2_b1, r2_cross = Signal.like(r1_nb), Signal.like(r1_b1), Signal()
        raw1 = hazard(r1_addr, r1_end, "rd1_overlap")
        raw2 = hazard(r2_addr, r2_end, "rd2_overlap")
        m.d.comb += r2_free.eq(~r2v | dispatch)
        r1_regs = (r1v, raw1, r1_addr, r1_len, r1_end, r1_nb, r1_b1, r1_cross)
        r2_regs = (r2v, r2_raw, r2_addr, r2_len, r2_end, r2_nb, r2_b1, r2_cross)
        with m.If(r2_free):
            m.d.sync += [r2.eq(r1) for r2, r1 in zip(r2_regs, r1_regs, strict=True)]
        with m.Else():
            m.d.sync += r2_raw.eq(raw2)

        rrr = Signal(rr_bits)  # port of the next read
        credits, metas, rfifos, ar_jobs = [], [], [], []
        meta_w = ob + len(r1_len) + len(r1_nb)
        can_now = Signal(N)  # port i can take a request (credits, AR job, meta FIFO)
        can = Signal()  # ... port rrr, as of the cycle before (a flop)
        for i, p in enumerate(ports):
            c = Signal(range(self.rd_fifo_beats + 1), init=self.rd_fifo_beats, name=f"p{i}_credit")
            meta = fifo.SyncFIFOBuffered(width=meta_w, depth=16)
            rf = fifo.SyncFIFOBuffered(width=8 * DB + 1, depth=self.rd_fifo_beats)
            m.submodules[f"p{i}_meta"] = meta
            m.submodules[f"p{i}_rfifo"] = rf
            credits.append(c)
            metas.append(meta)
            rfifos.append(rf)
            ar_jobs.append(self._addr_channel(m, p, "ar", f"p{i}_ar"))
            m.d.comb += [
                rf.w_data.eq(Cat(p.rdata, p.rresp[1])),
                rf.w_en.eq(p.rvalid),
                p.rready.eq(rf.w_rdy),
            ]
        for i in range(N):
            m.d.comb += can_now[i].eq(~ar_jobs[i][0] & (credits[i] >= MB) & metas[i].w_rdy)
        # A port that can take a request still can a cycle later unless it was given one
        # (only a dispatch lowers its credits or fills its AR job and meta FIFO), so the
        # flop is exact but a cycle late; after a dispatch it looks at the next port (with
        # one port: it waits a cycle).
        m.d.sync += can.eq(
            Mux(
                dispatch,
                can_now.bit_select(rr_next(rrr), 1) if N > 1 else 0,
                can_now.bit_select(rrr, 1),
            )
        )
        m.d.comb += dispatch.eq(r2v & can & ~r2_raw)
        with m.If(dispatch):
            m.d.sync += rrr.eq(rr_next(rrr))
        with m.Switch(rrr):
            for i in range(N):
                with m.Case(i):
                    with m.If(dispatch):
                        m.d.sync += ar_jobs[i][1](
                            Cat(Const(0, ob), r2_addr[ob:]), r2_b1, Mux(r2_cross, r2_nb - r2_b1, 0)
                        )
                        m.d.comb += [
                            metas[i].w_en.eq(1),
                            metas[i].w_data.eq(Cat(r2_addr[:ob], r2_len, r2_nb)),
                        ]

        # per-port assemblers
        take = [Signal(name=f"p{i}_take") for i in range(N)]
        asm = []
        for i in range(N):
            rf, meta, c = rfifos[i], metas[i], credits[i]
            slots = [Signal(8 * DB, name=f"p{i}_asm{j}") for j in range(MB)]
            full = Signal(name=f"p{i}_asm_full")
            a_err = Signal(name=f"p{i}_asm_err")
            a_off = Signal(ob, name=f"p{i}_asm_off")
            a_len = Signal(range(W + 1), name=f"p{i}_asm_len")
            j = Signal(range(MB), name=f"p{i}_asm_j")
            asm.append((slots, full, a_err, a_off, a_len))
            m_off = meta.r_data[:ob]
            m_len = meta.r_data[ob : ob + len(a_len)]
            m_nb = meta.r_data[ob + len(a_len) :]
            pop = Signal(name=f"p{i}_pop")
            m.d.comb += pop.eq(meta.r_rdy & rf.r_rdy & (~full | take[i]))
            m.d.comb += rf.r_en.eq(pop)
            is_disp = Signal(name=f"p{i}_disp")
            m.d.comb += is_disp.eq(dispatch & (rrr == i))
            m.d.sync += c.eq(c + pop - Mux(is_disp, r2_nb, 0))
            with m.If(take[i]):
                m.d.sync += full.eq(0)
            with m.If(pop):
                beat_d, beat_e = rf.r_data[: 8 * DB], rf.r_data[8 * DB]
                with m.Switch(j):
                    for k in range(MB):
                        with m.Case(k):
                            m.d.sync += slots[k].eq(beat_d)
                m.d.sync += a_err.eq(Mux(j == 0, 0, a_err) | beat_e)
                with m.If(j == m_nb - 1):
                    m.d.sync += [j.eq(0), full.eq(1), a_off.eq(m_off), a_len.eq(m_len)]
                    m.d.comb += meta.r_en.eq(1)
                with m.Else():
                    m.d.sync += j.eq(j + 1)

        # the shared realigner: select (round robin) -> shift by off[1:0] -> shift by
        # off[3:2] and mask -> a 4-entry output FIFO. The stages advance every cycle; a
        # request is taken only while the FIFO has room for it and for those in flight,
        # so no ready travels back from the core through the wide stages.
        OUT_DEPTH = 4
        ofifo = fifo.SyncFIFO(width=8 * W + 1, depth=OUT_DEPTH)
        m.submodules.rd_out = ofifo
        m.d.comb += [
            self.mem_rdata_valid.eq(ofifo.r_rdy),
            self.mem_rdata.eq(ofifo.r_data[: 8 * W]),
            self.mem_rdata_err.eq(ofifo.r_data[8 * W]),
            ofifo.r_en.eq(self.mem_rdata_ready),
        ]
        s1v, s1_d, s1_off, s1_len, s1_err = (
            Signal(),
            Signal(8 * DB * MB),
            Signal(ob),
            Signal(range(W + 1)),
            Signal(),
        )
        s2v, s2_d, s2_offhi, s2_mask, s2_err = (
            Signal(),
            Signal(8 * DB * MB),
            Signal(max(1, ob - 2)),
            Signal(W),
            Signal(),
        )
        room = Signal()
        m.d.comb += room.eq(ofifo.level + s1v + s2v < OUT_DEPTH)
        srr = Signal(rr_bits)
        m.d.sync += s1v.eq(0)
        with m.Switch(srr):
            for i in range(N):
                with m.Case(i):
                    slots, full, a_err, a_off, a_len = asm[i]
                    m.d.comb += take[i].eq(full & room)
                    with m.If(take[i]):
                        m.d.sync += [
                            s1v.eq(1),
                            s1_d.eq(Cat(*slots)),
                            s1_off.eq(a_off),
                            s1_len.eq(a_len),
                            s1_err.eq(a_err),
                            srr.eq(rr_next(srr)),
                        ]
        m.d.sync += s2v.eq(s1v)
        with m.If(s1v):
            with m.Switch(s1_off[:2]):
                for o in range(4):
                    with m.Case(o):
                        m.d.sync += s2_d.eq(s1_d >> (8 * o))
            m.d.sync += [
                s2_offhi.eq(s1_off[2:]) if ob > 2 else s2_offhi.eq(0),
                s2_mask.eq(Cat(*[s1_len > b for b in range(W)])),
                s2_err.eq(s1_err),
            ]
        shifted = Signal(8 * W)
        with m.Switch(s2_offhi):
            for o in range(1 << len(s2_offhi)):
                with m.Case(o):
                    m.d.comb += shifted.eq(s2_d >> (32 * o))
        m.d.comb += [
            ofifo.w_en.eq(s2v),
            ofifo.w_data.eq(
                Cat(
                    *[shifted[8 * b : 8 * b + 8] & s2_mask[b].replicate(8) for b in range(W)],
                    s2_err,
                )
            ),
        ]
        return m


def synth_tops() -> dict:
    """For ``make synth``: the two bridges at the default design point (its AXI ports,
    width and address bits; the core's DMA width)."""
    from golden.config import DEFAULT_DESIGN_POINT, design_point

    dp = design_point(DEFAULT_DESIGN_POINT)
    return {
        "axi_lite_csr": AxiLiteCSR,
        "axi_dma": lambda: AxiDma(
            dp.dma_bytes,
            n_ports=dp.axi_ports,
            data_bytes=dp.axi_data_bits // 8,
            addr_bits=dp.axi_addr_bits,
        ),
    }
