// In-process Verilator harness of the AXI SoC shell (hw/shell.py) for the board driver's
// verilator transport (host/backends/board_verilator.py; build.py beside it builds it).
//
// The top is the shell behind one flop on every input (RegisteredInputs in build.py):
// what this file sets before a rising edge, the shell sees in the next cycle. The flops
// are the output registers of the two AXI agents modelled here:
//
// * an AXI4-Lite master on s_axi_* (brd_csr_read / brd_csr_write: one transaction each,
//   AW and W presented together, BREADY and RREADY high; the clock runs while it waits);
// * an AXI4 slave on every master port m_axi{i}_* in front of one memory: the caller's
//   byte array (the DRAM: bus addresses [bus_base, bus_base + mem_size)). An address
//   outside it answers DECERR. Timing is the design point's DRAM, shared by all ports:
//   a read burst accepted at cycle t starts at max(t + latency, when the DRAM is free)
//   and each of its beats takes data_bytes / bandwidth cycles of the DRAM (bandwidth in
//   bytes per cycle); every written beat takes the same. Per port: up to MAX_RD_BURSTS
//   read bursts and MAX_WR_BURSTS write bursts accepted and not yet answered, one R beat
//   and one W beat per cycle at most, W accepted only for an accepted AW (a slave may
//   wait for AW), B `latency` cycles after the last beat. A read burst takes the memory's
//   bytes when it is accepted (its beats keep them while they wait), a write applies
//   WSTRB when its beat is taken.
// * error injection (brd_inject): a read or write burst that overlaps a bus-address range
//   is answered SLVERR on every beat (R) or on its B response, `count` times (< 0: always).
//
// The rules the model keeps with its registered outputs: VALID, once raised, stays with the
// same payload until the cycle of the handshake (the front of a queue leaves it only then);
// READY may rise before VALID.
#include "Vaccel_shell.h"
#include "verilated.h"
#include "ports.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

namespace {

const int MAX_RD_BURSTS = 16;
const int MAX_WR_BURSTS = 8;
const uint8_t OKAY = 0, SLVERR = 2, DECERR = 3;

// A top-level signal of any width, as bytes (Verilator keeps them little-endian).
struct Sig {
    void* p = nullptr;
    uint32_t n = 0;
    uint64_t get() const {
        uint64_t v = 0;
        std::memcpy(&v, p, n < 8 ? n : 8);
        return v;
    }
    void set(uint64_t v) { std::memcpy(p, &v, n < 8 ? n : 8); }
    uint8_t* bytes() const { return (uint8_t*)p; }
};
template <typename T> Sig sig(T& m) { return Sig{(void*)&m, (uint32_t)sizeof(T)}; }
template <std::size_t W> Sig sig(VlWide<W>& m) { return Sig{(void*)m.data(), (uint32_t)(4 * W)}; }

struct PortIO {
    Sig awvalid, awready, awaddr, awlen, awsize;
    Sig wvalid, wready, wdata, wstrb, wlast;
    Sig bvalid, bready, bresp, bid;
    Sig arvalid, arready, araddr, arlen, arsize;
    Sig rvalid, rready, rdata, rresp, rlast, rid;
};

const uint32_t MAX_DATA_BYTES = 16;  // 128-bit ports at most (AccelConfig.axi_data_bits)

struct RBeat {
    uint64_t ready_at;
    uint8_t resp;
    bool last;
    uint8_t data[MAX_DATA_BYTES];
};
struct WBurst {
    uint64_t addr;
    uint32_t beats, done;
    uint8_t resp;
};
struct BResp {
    uint64_t ready_at;
    uint8_t resp;
};
struct Port {
    PortIO io;
    std::deque<RBeat> r;
    std::deque<WBurst> aw;
    std::deque<BResp> b;
    int rd_bursts = 0;  // accepted read bursts with beats not yet taken
    // what the shell sees in this cycle (latched at the last rising edge) and what it
    // will see in the next (set since)
    bool in_arready = false, in_awready = false, in_wready = false;
    bool in_rvalid = false, in_bvalid = false;
    bool nx_arready = false, nx_awready = false, nx_wready = false;
    bool nx_rvalid = false, nx_bvalid = false;
    uint64_t stats[4] = {0, 0, 0, 0};  // read bursts, read beats, write bursts, write beats
};
struct Inject {
    int kind;  // 0 read, 1 write
    uint64_t lo, hi;
    int64_t count;
};
struct Lite {
    bool aw = false, w = false, ar = false;  // presented, not yet taken
    uint32_t awaddr = 0, wdata = 0, araddr = 0;
    bool b_got = false, r_got = false;
    uint8_t bresp = 0, rresp = 0;
    uint32_t rdata = 0;
    bool in_aw = false, in_w = false, in_ar = false;  // VALIDs the shell sees now
    bool nx_aw = false, nx_w = false, nx_ar = false;  // ... in the next cycle
};

struct Harness {
    VerilatedContext* ctx = nullptr;
    Vaccel_shell* top = nullptr;
    uint8_t* mem = nullptr;
    uint64_t mem_size = 0, bus_base = 0;
    double bandwidth = 16.0;
    uint64_t latency = 1;
    double dram_free = 0.0;
    uint64_t cycle = 0;
    uint32_t data_bytes = 0;
    std::vector<Port> ports;
    std::vector<Inject> inject;
    Lite lite;
};

Harness h;

bool in_mem(uint64_t a, uint64_t n) {
    return a >= h.bus_base && a - h.bus_base <= h.mem_size && n <= h.mem_size - (a - h.bus_base);
}

uint8_t injected(int kind, uint64_t lo, uint64_t hi) {
    for (auto& e : h.inject) {
        if (e.kind == kind && e.count != 0 && lo < e.hi && e.lo < hi) {
            if (e.count > 0) e.count--;
            return SLVERR;
        }
    }
    return OKAY;
}

double beat_cycles() { return h.data_bytes / h.bandwidth; }

void accept_ar(Port& p) {
    uint64_t addr = p.io.araddr.get();
    uint32_t beats = (uint32_t)p.io.arlen.get() + 1;
    uint64_t bytes = (uint64_t)beats * h.data_bytes;
    uint8_t resp = in_mem(addr, bytes) ? injected(0, addr, addr + bytes) : DECERR;
    double start = std::fmax((double)(h.cycle + h.latency), h.dram_free);
    for (uint32_t k = 0; k < beats; k++) {
        start += beat_cycles();
        RBeat b{(uint64_t)std::ceil(start), resp, k == beats - 1, {}};
        if (resp != DECERR)  // the memory as the burst reaches it: a payload that is
            std::memcpy(b.data, h.mem + (addr - h.bus_base) + (uint64_t)k * h.data_bytes,
                        h.data_bytes);  // stable while RVALID waits, whatever comes later
        p.r.push_back(b);
    }
    h.dram_free = start;
    p.rd_bursts++;
    p.stats[0]++;
}

void accept_aw(Port& p) {
    uint64_t addr = p.io.awaddr.get();
    uint32_t beats = (uint32_t)p.io.awlen.get() + 1;
    uint64_t bytes = (uint64_t)beats * h.data_bytes;
    uint8_t resp = in_mem(addr, bytes) ? injected(1, addr, addr + bytes) : DECERR;
    p.aw.push_back({addr, beats, 0, resp});
    p.stats[2]++;
}

void take_w(Port& p) {
    WBurst& w = p.aw.front();
    uint64_t a = w.addr + (uint64_t)w.done * h.data_bytes;
    if (w.resp == OKAY) {  // an erroneous burst writes nothing
        uint64_t strb = p.io.wstrb.get();
        const uint8_t* d = p.io.wdata.bytes();
        uint8_t* m = h.mem + (a - h.bus_base);
        for (uint32_t i = 0; i < h.data_bytes; i++)
            if ((strb >> i) & 1) m[i] = d[i];
    }
    h.dram_free = std::fmax(h.dram_free, (double)h.cycle) + beat_cycles();
    p.stats[3]++;
    if (++w.done == w.beats) {
        p.b.push_back({h.cycle + h.latency, w.resp});
        p.aw.pop_front();
    }
}

// The outputs of the agents for the next cycle, from their state now: the inputs of the
// flops, latched at the next rising edge (latch_inputs).
void set_inputs() {
    Vaccel_shell* t = h.top;
    uint64_t next = h.cycle + 1;
    for (auto& p : h.ports) {
        PortIO& io = p.io;
        p.nx_arready = p.rd_bursts < MAX_RD_BURSTS;
        p.nx_awready = (int)p.aw.size() < MAX_WR_BURSTS;
        p.nx_wready = !p.aw.empty();
        p.nx_rvalid = !p.r.empty() && p.r.front().ready_at <= next;
        p.nx_bvalid = !p.b.empty() && p.b.front().ready_at <= next;
        io.arready.set(p.nx_arready);
        io.awready.set(p.nx_awready);
        io.wready.set(p.nx_wready);
        io.rvalid.set(p.nx_rvalid);
        io.bvalid.set(p.nx_bvalid);
        io.rid.set(0);
        io.bid.set(0);
        if (p.nx_rvalid) {
            const RBeat& r = p.r.front();
            std::memcpy(io.rdata.bytes(), r.data, h.data_bytes);
            io.rresp.set(r.resp);
            io.rlast.set(r.last);
        }
        if (p.nx_bvalid) io.bresp.set(p.b.front().resp);
    }
    Lite& l = h.lite;
    l.nx_aw = l.aw;
    l.nx_w = l.w;
    l.nx_ar = l.ar;
    t->s_axi_awvalid = l.aw;
    t->s_axi_awaddr = l.awaddr;
    t->s_axi_awprot = 0;
    t->s_axi_wvalid = l.w;
    t->s_axi_wdata = l.wdata;
    t->s_axi_wstrb = 0xF;
    t->s_axi_bready = 1;
    t->s_axi_arvalid = l.ar;
    t->s_axi_araddr = l.araddr;
    t->s_axi_arprot = 0;
    t->s_axi_rready = 1;
}

// At a rising edge the flops take what set_inputs prepared.
void latch_inputs() {
    for (auto& p : h.ports) {
        p.in_arready = p.nx_arready;
        p.in_awready = p.nx_awready;
        p.in_wready = p.nx_wready;
        p.in_rvalid = p.nx_rvalid;
        p.in_bvalid = p.nx_bvalid;
    }
    Lite& l = h.lite;
    l.in_aw = l.nx_aw;
    l.in_w = l.nx_w;
    l.in_ar = l.nx_ar;
}

// One clock cycle: clock low (the outputs settle), this cycle's handshakes, the agents'
// next outputs, the rising edge.
void tick() {
    Vaccel_shell* t = h.top;
    t->aclk = 0;
    t->eval();
    Lite& l = h.lite;
    if (l.in_aw && t->s_axi_awready) l.aw = false;
    if (l.in_w && t->s_axi_wready) l.w = false;
    if (t->s_axi_bvalid) {
        l.b_got = true;
        l.bresp = t->s_axi_bresp;
    }
    if (l.in_ar && t->s_axi_arready) l.ar = false;
    if (t->s_axi_rvalid) {
        l.r_got = true;
        l.rresp = t->s_axi_rresp;
        l.rdata = t->s_axi_rdata;
    }
    for (auto& p : h.ports) {
        PortIO& io = p.io;
        if (p.in_rvalid && io.rready.get() && !p.r.empty()) {
            if (p.r.front().last) p.rd_bursts--;
            p.r.pop_front();
            p.stats[1]++;
        }
        if (p.in_bvalid && io.bready.get() && !p.b.empty()) p.b.pop_front();
        if (p.in_wready && io.wvalid.get() && !p.aw.empty()) take_w(p);
        if (p.in_arready && io.arvalid.get()) accept_ar(p);
        if (p.in_awready && io.awvalid.get()) accept_aw(p);
    }
    set_inputs();
    t->aclk = 1;
    t->eval();
    latch_inputs();
    h.cycle++;
}

void clear_agents() {
    for (auto& p : h.ports) {
        p.r.clear();
        p.aw.clear();
        p.b.clear();
        p.rd_bursts = 0;
        p.in_arready = p.in_awready = p.in_wready = p.in_rvalid = p.in_bvalid = false;
    }
    h.lite = Lite();
    h.dram_free = (double)h.cycle;
}

const uint64_t LITE_TIMEOUT = 10000;  // cycles: the bridge answers in a few

}  // namespace

extern "C" {

uint32_t brd_n_ports() { return N_PORTS; }
uint32_t brd_data_bytes() { return h.data_bytes; }

int brd_init(uint8_t* mem, uint64_t mem_size, uint64_t bus_base, double bandwidth,
             uint64_t latency) {
    if (!h.ctx) {
        h.ctx = new VerilatedContext;
        h.top = new Vaccel_shell{h.ctx};
        Vaccel_shell* t = h.top;
        h.ports.resize(N_PORTS);
#define BIND(i)                                                                         \
    h.ports[i].io = PortIO{                                                             \
        sig(t->m_axi##i##_awvalid), sig(t->m_axi##i##_awready), sig(t->m_axi##i##_awaddr), \
        sig(t->m_axi##i##_awlen),   sig(t->m_axi##i##_awsize),  sig(t->m_axi##i##_wvalid), \
        sig(t->m_axi##i##_wready),  sig(t->m_axi##i##_wdata),   sig(t->m_axi##i##_wstrb),  \
        sig(t->m_axi##i##_wlast),   sig(t->m_axi##i##_bvalid),  sig(t->m_axi##i##_bready), \
        sig(t->m_axi##i##_bresp),   sig(t->m_axi##i##_bid),     sig(t->m_axi##i##_arvalid),\
        sig(t->m_axi##i##_arready), sig(t->m_axi##i##_araddr),  sig(t->m_axi##i##_arlen),  \
        sig(t->m_axi##i##_arsize),  sig(t->m_axi##i##_rvalid),  sig(t->m_axi##i##_rready), \
        sig(t->m_axi##i##_rdata),   sig(t->m_axi##i##_rresp),   sig(t->m_axi##i##_rlast),  \
        sig(t->m_axi##i##_rid)};
        FOR_EACH_PORT(BIND)
#undef BIND
        h.data_bytes = h.ports[0].io.rdata.n;
        if (h.data_bytes > MAX_DATA_BYTES) return -1;
    }
    h.mem = mem;
    h.mem_size = mem_size;
    h.bus_base = bus_base;
    h.bandwidth = bandwidth > 0 ? bandwidth : 1.0;
    h.latency = latency ? latency : 1;
    return 0;
}

void brd_set_timing(double bandwidth, uint64_t latency) {
    h.bandwidth = bandwidth > 0 ? bandwidth : 1.0;
    h.latency = latency ? latency : 1;
}

// aresetn low for `cycles` cycles (it passes one flop), every agent's state dropped
// (transactions in flight are lost, as on a board), then a few idle cycles.
void brd_hard_reset(uint32_t cycles) {
    Vaccel_shell* t = h.top;
    clear_agents();
    set_inputs();
    t->aresetn = 0;
    for (uint32_t i = 0; i < (cycles < 2 ? 2 : cycles); i++) tick();
    clear_agents();
    t->aresetn = 1;
    set_inputs();
    for (int i = 0; i < 3; i++) tick();
}

// AXI-Lite read of `addr`: RRESP, or -1 when the slave did not answer.
int brd_csr_read(uint32_t addr, uint32_t* data) {
    Lite& l = h.lite;
    l.ar = true;
    l.araddr = addr;
    l.r_got = false;
    set_inputs();  // presented from the next cycle
    for (uint64_t n = 0; n < LITE_TIMEOUT && !l.r_got; n++) tick();
    l.ar = false;
    if (!l.r_got) return -1;
    *data = l.rdata;
    return l.rresp;
}

// AXI-Lite write: BRESP, or -1 when the slave did not answer.
int brd_csr_write(uint32_t addr, uint32_t data) {
    Lite& l = h.lite;
    l.aw = l.w = true;
    l.awaddr = addr;
    l.wdata = data;
    l.b_got = false;
    set_inputs();
    for (uint64_t n = 0; n < LITE_TIMEOUT && !l.b_got; n++) tick();
    l.aw = l.w = false;
    return l.b_got ? l.bresp : -1;
}

// Run until the interrupt line is high, at most max_cycles. Returns the cycles run.
uint64_t brd_run(uint64_t max_cycles) {
    uint64_t n = 0;
    while (n < max_cycles && !h.top->irq) {
        tick();
        n++;
    }
    return n;
}

int brd_irq() { return h.top->irq; }
uint64_t brd_cycle() { return h.cycle; }

void brd_inject(int kind, uint64_t lo, uint64_t hi, int64_t count) {
    h.inject.push_back({kind, lo, hi, count});
}
void brd_clear_injections() { h.inject.clear(); }

// out[0..3]: read bursts, read beats, write bursts, write beats of port `i` so far.
void brd_port_stats(uint32_t i, uint64_t* out) {
    for (int k = 0; k < 4; k++) out[k] = i < h.ports.size() ? h.ports[i].stats[k] : 0;
}

}  // extern "C"
