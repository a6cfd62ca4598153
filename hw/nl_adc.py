"""NL-ADC digital twin in RTL: a ramp counter over a programmable threshold table
(golden: ``golden/nl_adc.py``, "Digital twin (RTL contract)").

Computes, for every lane l of an input beat, ``code[l] = sum_k [x[l] >= table[k]]``,
k = 0 .. 2^N - 2 in table order: exactly ``golden.nl_adc.ramp_counter_codes``. The table
is what the host programs (``golden.nl_adc.threshold_table`` of an ideal design or of a
sampled device); it need not be sorted.

Parameters (``ADCConfig``): N = ``bits``, ``lanes`` comparators sharing one ramp counter,
``threshold_bits`` (signed width of inputs and table entries). ``addr_bits`` (constructor,
default N) is the width of the write address; addresses >= 2^N - 1 are out of range.

Streams (``amaranth.lib.stream``; a beat transfers when valid & ready)
----------------------------------------------------------------------
``wr`` (in)  payload ``{addr: unsigned(addr_bits), data: signed(threshold_bits)}``: writes
    ``table[addr] = data``. Accepted only between conversions (``wr.ready`` is low while
    one runs, so a conversion always sees one table), and a pending write has priority
    over starting a conversion. An address >= 2^N - 1 is consumed but not written and
    sets the sticky ``wr_error`` flag.
``x`` (in)   payload ``{data: lanes x signed(threshold_bits), last}``: one conversion, the
    lanes' inputs X = ``golden.nl_adc.quantize_inputs(x)``; ``last`` is passed through.
``out`` (out) payload ``{data: lanes x unsigned(bits), last}``: the codes of one
    conversion, in input order.

Other ports: ``wr_error`` (out, sticky: an out-of-range write was seen since reset or
the last clear), ``wr_error_clear`` (in: clears it; a clear and a new error in the same
cycle leave it set). With ``runtime_bits=True`` (the ACT engine's twin) the resolution is
a port: ``bits`` (in, 1 .. ``cfg.bits``, set a cycle before a conversion starts and held
while it runs; the twin registers 2^bits - 1) sets this
conversion's N (2^N - 1 ramp steps over table[0 .. 2^N - 2], codes < 2^N in the
``cfg.bits``-wide ``out`` lanes); the table holds 2^cfg.bits - 1 entries.

Reset clears the counter, the in-flight conversion and the flag; the table is RAM and
keeps its contents (after power-up the host programs it before converting).

Cycle count
-----------
A conversion is 2^N cycles: one ramp-reset cycle that issues the read of table[0], then
2^N - 1 ramp steps, step k comparing all lanes with table[k] (one synchronous RAM read
per cycle, BRAM-friendly). The next input is accepted in the last step, so conversions
run back to back at one per 2^N cycles; a result is valid 2^N cycles after its input's
accepting edge. With streams that never stall, n conversions take
``expected_cycles(n) = n * 2^N + 2`` cycles from the first input beat to the last output
beat, both included. An output not yet taken stalls the next conversion's last step.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, ADCConfig
from hw.beats import lanes_layout


def cycles_per_conversion(cfg: ADCConfig) -> int:
    """2^N: the ramp-reset cycle plus 2^N - 1 ramp steps."""
    return cfg.levels


def expected_cycles(n: int, cfg: ADCConfig) -> int:
    """n back-to-back conversions, no stalls: first input beat to last output beat."""
    return n * cycles_per_conversion(cfg) + 2


def wr_layout(cfg: ADCConfig, addr_bits: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_bits), "data": signed(cfg.threshold_bits)})


def x_layout(cfg: ADCConfig) -> data.StructLayout:
    return lanes_layout(signed(cfg.threshold_bits), cfg.lanes)


def out_layout(cfg: ADCConfig) -> data.StructLayout:
    return lanes_layout(unsigned(cfg.bits), cfg.lanes)


class NLADC(wiring.Component):
    """Ramp-counter NL-ADC twin (see module docstring for the protocol)."""

    def __init__(
        self,
        cfg: ADCConfig = DEFAULT.adc,
        *,
        addr_bits: int | None = None,
        runtime_bits: bool = False,
    ):
        if not isinstance(cfg, ADCConfig):
            raise ValueError(f"cfg: expected ADCConfig, got {type(cfg).__name__}")
        addr_bits = cfg.bits if addr_bits is None else addr_bits
        if isinstance(addr_bits, bool) or not isinstance(addr_bits, int) or addr_bits < cfg.bits:
            raise ValueError(f"addr_bits: expected an int >= bits = {cfg.bits}, got {addr_bits!r}")
        self.cfg = cfg
        self.addr_bits = addr_bits
        self.runtime_bits = bool(runtime_bits)
        ports = {
            "wr": In(stream.Signature(wr_layout(cfg, addr_bits))),
            "x": In(stream.Signature(x_layout(cfg))),
            "out": Out(stream.Signature(out_layout(cfg))),
            "wr_error": Out(1),
            "wr_error_clear": In(1),
        }
        if self.runtime_bits:
            ports["bits"] = In(range(cfg.bits + 1))
        super().__init__(ports)

    def elaborate(self, platform):
        cfg = self.cfg
        n_thr = cfg.n_thresholds
        m = Module()
        if self.runtime_bits:
            last_phase = Signal(range(cfg.levels))  # registered: bits is set ahead
            m.d.sync += last_phase.eq((1 << self.bits) - 1)
        else:
            last_phase = cfg.levels - 1

        # 2^N words (the top one is never written) so that the phase counter addresses it
        # directly; the read in the last phase is ignored.
        table = Memory(shape=signed(cfg.threshold_bits), depth=cfg.levels, init=[])
        m.submodules.table = table
        wport = table.write_port()
        rport = table.read_port()

        busy = Signal()
        phase = Signal(range(cfg.levels))  # 0: ramp reset, k + 1: compare table[k]
        xr = Signal(x_layout(cfg))
        codes = [Signal(unsigned(cfg.bits), name=f"code{lane}") for lane in range(cfg.lanes)]

        at_last = Signal()
        stall = Signal()  # result ready but the previous one not taken
        advance = Signal()
        m.d.comb += [
            at_last.eq(busy & (phase == last_phase)),
            stall.eq(at_last & self.out.valid & ~self.out.ready),
            advance.eq(busy & ~stall),
        ]

        # ---------------------------------------------------------------- table writes
        wr_fire = Signal()
        in_range = Signal()
        m.d.comb += [
            self.wr.ready.eq(~busy),
            wr_fire.eq(self.wr.valid & self.wr.ready),
            in_range.eq(self.wr.payload.addr < n_thr),
            wport.addr.eq(self.wr.payload.addr),
            wport.data.eq(self.wr.payload.data),
            wport.en.eq(wr_fire & in_range),
        ]
        with m.If(self.wr_error_clear):
            m.d.sync += self.wr_error.eq(0)
        with m.If(wr_fire & ~in_range):
            m.d.sync += self.wr_error.eq(1)

        # ---------------------------------------------------------------- conversions
        x_fire = Signal()
        m.d.comb += [
            # writes first; a new input enters when idle or in the last step of the ramp
            self.x.ready.eq((~busy | (at_last & ~stall)) & ~self.wr.valid),
            x_fire.eq(self.x.valid & self.x.ready),
            rport.addr.eq(phase),
            rport.en.eq(~stall),
        ]
        with m.If(x_fire):
            m.d.sync += [xr.eq(self.x.payload), busy.eq(1), phase.eq(0)]
        with m.Elif(at_last & advance):
            m.d.sync += [busy.eq(0), phase.eq(0)]
        with m.Elif(advance):
            m.d.sync += phase.eq(phase + 1)

        # step k = phase - 1 compares every lane with table[k], read in the previous cycle
        step = [Signal(unsigned(cfg.bits), name=f"next{lane}") for lane in range(cfg.lanes)]
        for lane in range(cfg.lanes):
            ge = xr.data[lane] >= rport.data
            m.d.comb += step[lane].eq(codes[lane] + ge)
        with m.If(advance):
            with m.If(phase == 0):
                m.d.sync += [c.eq(0) for c in codes]
            with m.Else():
                m.d.sync += [c.eq(s) for c, s in zip(codes, step, strict=False)]

        with m.If(self.out.valid & self.out.ready):
            m.d.sync += self.out.valid.eq(0)
        with m.If(at_last & advance):
            m.d.sync += [self.out.valid.eq(1), self.out.payload.last.eq(xr.last)]
            m.d.sync += [self.out.payload.data[lane].eq(step[lane]) for lane in range(cfg.lanes)]
        return m


# --------------------------------------------------------------------------- stream packing
def wr_beats(table, base: int = 0) -> list[dict]:
    """``wr`` payloads that program ``table`` (int sequence) at addresses base, base+1, ..."""
    return [{"addr": base + i, "data": int(v)} for i, v in enumerate(table)]


def x_beats(x_q, cfg: ADCConfig) -> list[dict]:
    """``x`` payloads for a vector of quantized inputs, zero-padded to a multiple of lanes;
    ``last`` on the final beat."""
    import numpy as np

    x = np.asarray(x_q).reshape(-1)
    nb = -(-x.size // cfg.lanes)
    xp = np.zeros(nb * cfg.lanes, dtype=np.int64)
    xp[: x.size] = x
    return [
        {"data": xp[b * cfg.lanes : (b + 1) * cfg.lanes].tolist(), "last": int(b == nb - 1)}
        for b in range(nb)
    ]
