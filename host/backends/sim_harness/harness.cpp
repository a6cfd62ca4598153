// In-process Verilator harness of hw/accel.py: the top, a DRAM model serving its DMA
// port, and a C ABI for ctypes (build.py beside it builds it, host/backends/sim.py uses it).
//
// DRAM model: a byte array owned by the caller (Python's numpy buffer, shared with the host
// fallback); every read request is answered by one response beat of its len bytes (zero
// beyond len and beyond the array), in request order. Timing: a request issued at cycle t
// starts transferring at max(t + latency, end of the previous transfer) and takes
// len / bandwidth cycles (bandwidth in bytes/cycle, shared by all reads); its beat is
// offered from the cycle its transfer ends. At most max_outstanding requests are queued
// (rd_ready low beyond). Writes are posted: applied at the clock edge they are accepted.
#include "Vaccel.h"
#include "verilated.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>

namespace {

struct Req {
    uint64_t ready_at;
    uint32_t addr;
    uint32_t len;
};

struct Harness {
    VerilatedContext* ctx = nullptr;
    Vaccel* top = nullptr;
    uint8_t* mem = nullptr;
    uint64_t mem_size = 0;
    double bandwidth = 64.0;
    uint64_t latency = 1;
    double bw_free = 0.0;
    size_t max_outstanding = 64;
    std::deque<Req> queue;
    uint64_t cycle = 0;
    uint64_t wr_lo = UINT64_MAX, wr_hi = 0;    // bytes written by the RTL since last query
    uint64_t rd_stall = 0;                     // cycles the RTL waited for read data
    bool in_have = false, in_rd_ready = false; // inputs the RTL sees this cycle
};

Harness h;
const uint32_t DMA_BYTES = sizeof(h.top->mem_rdata);   // the port width of the export

void fill_beat(const Req& r) {
    uint8_t beat[sizeof(h.top->mem_rdata)];
    std::memset(beat, 0, sizeof(beat));
    uint64_t a = r.addr, n = r.len;
    if (a < h.mem_size) {
        uint64_t avail = h.mem_size - a;
        std::memcpy(beat, h.mem + a, n < avail ? n : avail);
    }
    std::memcpy(h.top->mem_rdata.data(), beat, sizeof(beat));
}

// The memory-side inputs pass one flop in the exported top (RegisteredInputs in
// build.py): the values set before a rising edge are those the accelerator sees in the
// next cycle. set_inputs() computes the next cycle's from the DRAM model's state.
void set_inputs() {
    Vaccel* t = h.top;
    h.in_have = !h.queue.empty() && h.queue.front().ready_at <= h.cycle + 1;
    if (h.in_have) fill_beat(h.queue.front());
    h.in_rd_ready = h.queue.size() < h.max_outstanding;
    t->mem_rdata_valid = h.in_have;
    t->mem_rd_ready = h.in_rd_ready;
    t->mem_wr_ready = 1;
}

// One clock cycle: clock low (the outputs settle), this cycle's handshakes, the next
// cycle's inputs, then the rising edge.
void tick() {
    Vaccel* t = h.top;
    t->clk = 0;
    t->eval();
    bool rd = t->mem_rd_valid && h.in_rd_ready;
    bool rs = h.in_have && t->mem_rdata_ready;
    bool wr = t->mem_wr_valid;
    if (!h.queue.empty() && !h.in_have) h.rd_stall++;
    uint32_t rd_addr = t->mem_rd_addr, rd_len = t->mem_rd_len;
    uint32_t wr_addr = t->mem_wr_addr, wr_len = t->mem_wr_len;
    if (wr && wr_len && (uint64_t)wr_addr + wr_len <= h.mem_size) {
        std::memcpy(h.mem + wr_addr, t->mem_wr_data.data(), wr_len);
        if (wr_addr < h.wr_lo) h.wr_lo = wr_addr;
        if ((uint64_t)wr_addr + wr_len > h.wr_hi) h.wr_hi = (uint64_t)wr_addr + wr_len;
    }
    if (rs) h.queue.pop_front();
    if (rd) {
        double start = std::fmax((double)(h.cycle + h.latency), h.bw_free);
        h.bw_free = start + rd_len / h.bandwidth;
        h.queue.push_back({(uint64_t)std::ceil(h.bw_free), rd_addr, rd_len});
    }
    set_inputs();
    t->clk = 1;
    t->eval();
    h.cycle++;
}

}  // namespace

extern "C" {

uint32_t acc_dma_bytes() { return DMA_BYTES; }

int acc_init(uint8_t* mem, uint64_t mem_size, double bandwidth, uint64_t latency,
             uint64_t max_outstanding) {
    if (!h.ctx) {
        h.ctx = new VerilatedContext;
        h.top = new Vaccel{h.ctx};
    }
    h.mem = mem;
    h.mem_size = mem_size;
    h.bandwidth = bandwidth > 0 ? bandwidth : 1.0;
    h.latency = latency ? latency : 1;
    h.max_outstanding = max_outstanding ? max_outstanding : 1;
    return 0;
}

void acc_set_timing(double bandwidth, uint64_t latency) {
    h.bandwidth = bandwidth > 0 ? bandwidth : 1.0;
    h.latency = latency ? latency : 1;
}

// Hard reset: the RTL (rst for 3 cycles) and the DRAM model's queue; memory is kept.
void acc_reset() {
    Vaccel* t = h.top;
    t->csr_w_en = 0;
    t->rst = 1;
    h.queue.clear();
    for (int i = 0; i < 3; i++) tick();   // rst passes one flop (build.py)
    t->rst = 0;
    h.queue.clear();                       // reads issued before the reset took effect
    h.bw_free = (double)h.cycle;
    set_inputs();
    tick();                                // the empty queue's inputs reach the RTL
    t->eval();
}

uint32_t acc_csr_read(uint32_t addr) {
    h.top->csr_addr = addr;
    h.top->eval();
    return h.top->csr_r_data;
}

// One clock cycle with the write strobe up.
void acc_csr_write(uint32_t addr, uint32_t data) {
    h.top->csr_addr = addr;
    h.top->csr_w_data = data;
    h.top->csr_w_en = 1;
    tick();
    h.top->csr_w_en = 0;
    h.top->eval();
}

// Step until the command processor is idle or waits for the host, at most max_cycles.
// Returns the cycles stepped.
uint64_t acc_run(uint64_t max_cycles) {
    uint64_t n = 0;
    while (n < max_cycles && h.top->busy && !h.top->host_req) {
        tick();
        n++;
    }
    return n;
}

void acc_step(uint64_t cycles) {
    for (uint64_t i = 0; i < cycles; i++) tick();
}

int acc_busy() { return h.top->busy; }
int acc_host_req() { return h.top->host_req; }
uint64_t acc_cycle() { return h.cycle; }
uint64_t acc_read_stall_cycles() { return h.rd_stall; }

// Byte range [lo, hi) the RTL wrote since the last call (lo >= hi: nothing); clears it.
void acc_take_written(uint64_t* lo, uint64_t* hi) {
    *lo = h.wr_lo;
    *hi = h.wr_hi;
    h.wr_lo = UINT64_MAX;
    h.wr_hi = 0;
}

}  // extern "C"
