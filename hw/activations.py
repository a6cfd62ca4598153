"""FFN activations in RTL (golden: ``golden/activations.py``).

Two components, ``lanes`` elements per beat, one beat per cycle:

``LutActivation(cfg, kinds)`` -- GELU and/or SiLU exactly as ``golden.activations.act_fx``:
    ``y = sat(rhu(ReLU(x) * 2^(LF-IF) - delta(|x|), LF - OF))`` with delta linearly
    interpolated in a ROM generated from ``golden.activations.delta_lut(kind, cfg)``. The
    ROM word i of a kind's table holds ``T[i]`` and the slope ``T[i+1] - T[i]`` (2^Lb
    words; both kinds' tables back to back); each lane has its own ROM copy and reads one
    word per element.
    Formats: ``ActivationConfig``.
``Relu2(in_bits, up_bits=None)`` -- ``golden.activations.relu2`` (max(x, 0)^2, Q.F ->
    Q.2F) or, with ``up_bits``, ``relu2_gated`` (relu2(gate) * up, the BitNet gated FFN
    product). Exact.

Streams (``amaranth.lib.stream``; a beat transfers when valid & ready)
----------------------------------------------------------------------
LutActivation: ``x`` (in) ``{data: lanes x signed(in_bits), kind, last}`` (``kind``, one
    bit, only when the instance has two kinds: index into ``kinds``, per beat),
    ``y`` (out) ``{data: lanes x signed(out_bits), last}``.
Relu2: ``x`` (in) ``{data: lanes x signed(in_bits), last}`` (gated:
    ``{gate: lanes x signed(in_bits), up: lanes x signed(up_bits), last}``),
    ``y`` (out) ``{data: lanes x signed(out_bits), last}``, ``out_bits`` =
    ``relu2_out_bits(in_bits, up_bits)``: 2*in_bits (the golden dtype: int8 -> int16 ...)
    or, gated, 2*in_bits + up_bits - 2 (|relu2(g) * u| < 2^(2*in_bits - 2 + up_bits - 1)).
``last`` is passed through (it marks the end of a vector for the command sequencer).

Pipelines freeze as a whole when ``y`` holds an unaccepted beat (``x.ready = ~stall``).
Latency (accepting edge of an input to its output being valid) ``LATENCY``: 6 for
LutActivation (|x|; the ROM address; the ROM word and slope * position; the interpolated
delta; ReLU - delta; rounding and saturation: each step within the 250 MHz depth rule of
``hw.timing``), 2 for Relu2 (input register; square), 3 gated (square; times up). No
stalls: n beats take ``expected_cycles(n, latency) = n + latency`` cycles from the first
input beat to the last output beat, both included.

Reset empties the pipelines; the ROM is constant.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.activations import KINDS, delta_lut
from golden.config import DEFAULT, ActivationConfig
from hw.beats import check_lanes, lanes_layout
from hw.fixed import rhu
from hw.pipeline import Pipe

# Elements per beat when the instantiating code does not say (ActivationConfig has no
# lane count: the number of lanes is a throughput choice of the instance, not a format).
DEFAULT_LANES = 16


def expected_cycles(n: int, latency: int) -> int:
    """n beats, no stalls: first input beat to last output beat, both included."""
    return n + latency


def relu2_out_bits(in_bits: int, up_bits: int | None = None) -> int:
    return 2 * in_bits if up_bits is None else 2 * in_bits + up_bits - 2


def _input(m: Module, port):
    """The pipeline behind input ``port``: it holds (and ``port`` is not ready) while
    ``stall`` (driven by :func:`_drive_output`); (pipe, stall, fire: a beat enters)."""
    stall = Signal()
    m.d.comb += port.ready.eq(~stall)
    return Pipe(m, stall), stall, port.valid & port.ready


def _drive_output(m: Module, port, stall, valid, last, values):
    """Output register: loaded from the last stage when not stalled."""
    m.d.comb += stall.eq(port.valid & ~port.ready)
    with m.If(~stall):
        m.d.sync += [port.valid.eq(valid), port.payload.last.eq(last)]
        m.d.sync += [port.payload.data[i].eq(v) for i, v in enumerate(values)]


# --------------------------------------------------------------------------- GELU / SiLU
class LutActivation(wiring.Component):
    """GELU / SiLU as ReLU(x) - interpolated delta(|x|) (see module docstring).

    ``kinds``: the functions this instance computes, a subset of ("gelu", "silu"); with
    two, the ``x`` payload has a ``kind`` field (index into ``kinds``) chosen per beat, and
    the tables sit back to back in one ROM.
    """

    LATENCY = 6

    def __init__(
        self, cfg: ActivationConfig = DEFAULT.activation, kinds=KINDS, *, lanes: int = DEFAULT_LANES
    ):
        if not isinstance(cfg, ActivationConfig):
            raise ValueError(f"cfg: expected ActivationConfig, got {type(cfg).__name__}")
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        if not kinds or len(set(kinds)) != len(kinds) or any(k not in KINDS for k in kinds):
            raise ValueError(f"kinds: expected distinct names from {KINDS}, got {kinds!r}")
        self.cfg = cfg
        self.kinds = kinds
        self.lanes = check_lanes(lanes)
        self.latency = self.LATENCY
        kind = {"kind": unsigned(1)} if len(kinds) > 1 else {}
        super().__init__(
            {
                "x": In(stream.Signature(lanes_layout(signed(cfg.in_bits), lanes, **kind))),
                "y": Out(stream.Signature(lanes_layout(signed(cfg.out_bits), lanes))),
            }
        )

    def rom_offsets(self) -> list[int]:
        """First ROM word of each kind's table."""
        return rom_offsets(self.cfg, self.kinds)

    def rom_words(self) -> list[dict]:
        """ROM contents from the golden tables: per kind, word i = {T[i], T[i+1] - T[i]}."""
        return rom_words(self.cfg, self.kinds)

    def elaborate(self, platform):
        m = Module()
        pipe, stall, fire = _input(m, self.x)
        sel = self.x.payload.kind if len(self.kinds) > 1 else 0
        outs = [
            lut_lane(m, pipe, self.cfg, self.kinds, self.x.payload.data[lane], sel, f"l{lane}")
            for lane in range(self.lanes)
        ]
        valid = pipe.delay(fire, self.LATENCY - 1, "valid")
        last = pipe.delay(self.x.payload.last, self.LATENCY - 1, "last")
        _drive_output(m, self.y, stall, valid, last, outs)
        return m


def rom_offsets(cfg: ActivationConfig, kinds) -> list[int]:
    """First ROM word of each kind's table (tables back to back)."""
    offs, pos = [], 0
    for kind in kinds:
        offs.append(pos)
        pos += 1 << cfg.lut_bits(kind)
    return offs


def rom_words(cfg: ActivationConfig, kinds) -> list[dict]:
    """ROM contents from the golden tables: per kind, word i = {T[i], T[i+1] - T[i]}."""
    words = []
    for kind in kinds:
        t = [int(v) for v in delta_lut(kind, cfg)]
        words += [{"base": t[i], "slope": t[i + 1] - t[i]} for i in range(len(t) - 1)]
    return words


def lut_lane(m: Module, pipe, cfg: ActivationConfig, kinds, x, sel, name: str):
    """One lane of :class:`LutActivation`: ``act_fx(x)`` of the kind ``sel`` (an index
    into ``kinds``; ignored for one kind), ``LutActivation.LATENCY - 1`` stages of
    ``pipe`` after x (a register), as a value for the output register. Its own ROM (one
    read port). Stages: |x|; the segment (ROM address) and the position in it; the ROM
    word and slope * position; the interpolated delta; ReLU - delta; (the output
    register:) rounding to Q.OF and saturation."""
    lf = cfg.lut_frac_bits
    words, offsets = rom_words(cfg, kinds), rom_offsets(cfg, kinds)
    base_shape = unsigned(max(1, max(w["base"] for w in words).bit_length()))
    slope_shape = signed(max(1, max(abs(w["slope"]) for w in words).bit_length()) + 1)
    word_layout = data.StructLayout({"base": base_shape, "slope": slope_shape})
    shifts = [cfg.seg_shift(k) for k in kinds]
    w_bits = max(1, max(shifts))
    x = Value.cast(x).as_signed()

    def pick(vals, s):
        return Mux(s, vals[1], vals[0]) if len(kinds) > 1 else vals[0]

    # stage 0: |x|; stage 1: ROM address of its segment, position in the segment
    a = pipe.reg(Mux(x < 0, -x, x), f"{name}_abs", unsigned(cfg.in_bits))  # |-2^(b-1)| fits
    x0, sel0 = pipe.reg(x, f"{name}_s0_x"), pipe.reg(sel, f"{name}_s0_kind", unsigned(1))
    addr, inside, pos = [], [], []
    for kind, off, sg in zip(kinds, offsets, shifts, strict=False):
        seg = a >> sg
        inside.append(seg < (1 << cfg.lut_bits(kind)))
        addr.append(off + seg[: cfg.lut_bits(kind)])
        pos.append(a[:sg] if sg else 0)
    rom = Memory(shape=word_layout, depth=len(words), init=words)
    m.submodules[f"{name}_rom"] = rom
    port = rom.read_port()
    m.d.comb += [
        port.addr.eq(pick(addr, sel0)),
        port.en.eq(1 if pipe.stall is None else ~pipe.stall),
    ]
    sel1 = pipe.reg(sel0, f"{name}_s1_kind", unsigned(1))
    x1 = pipe.reg(x0, f"{name}_s1_x")
    w1 = pipe.reg(pick(pos, sel0), f"{name}_s1_w", unsigned(w_bits))
    in1 = pipe.reg(pick(inside, sel0), f"{name}_s1_inside")
    # stage 2: the ROM word arrives; slope * position; ReLU scaled to Q.LF
    word = port.data
    prod2 = pipe.reg(word.slope * w1, f"{name}_s2_prod")
    base2 = pipe.reg(word.base, f"{name}_s2_base")
    relu2 = pipe.reg(Mux(x1 < 0, 0, x1) << (lf - cfg.in_frac_bits), f"{name}_s2_relu")
    in2, sel2 = pipe.reg(in1, f"{name}_s2_inside"), pipe.reg(sel1, f"{name}_s2_kind")
    # stage 3: the interpolated delta (each kind's table has its own segment width)
    deltas = [base2 + (rhu(prod2, sg) if sg else prod2) for sg in shifts]
    delta3 = pipe.reg(Mux(in2, pick(deltas, sel2), 0), f"{name}_s3_delta")
    relu3 = pipe.reg(relu2, f"{name}_s3_relu")
    # stage 4: ReLU - delta
    acc = pipe.reg(relu3 - delta3, f"{name}_s4_acc")
    # output: round to Q.OF and saturate
    y = rhu(acc, lf - cfg.out_frac_bits)
    top = y[cfg.out_bits - 1 :]
    lo, hi = -(1 << (cfg.out_bits - 1)), (1 << (cfg.out_bits - 1)) - 1
    return Mux(top.all() | ~top.any(), y[: cfg.out_bits].as_signed(), Mux(y[-1], lo, hi))


# --------------------------------------------------------------------------- ReLU^2
class Relu2(wiring.Component):
    """max(x, 0)^2, or relu2(gate) * up with ``up_bits`` (see module docstring)."""

    def __init__(
        self,
        in_bits: int = DEFAULT.quant.act_bits,
        up_bits: int | None = None,
        *,
        lanes: int = DEFAULT_LANES,
    ):
        if isinstance(in_bits, bool) or not isinstance(in_bits, int) or not 2 <= in_bits <= 32:
            raise ValueError(f"in_bits: expected an int in [2, 32], got {in_bits!r}")
        if up_bits is not None and (
            isinstance(up_bits, bool) or not isinstance(up_bits, int) or not 2 <= up_bits <= 32
        ):
            raise ValueError(f"up_bits: expected None or an int in [2, 32], got {up_bits!r}")
        self.in_bits = in_bits
        self.up_bits = up_bits
        self.gated = up_bits is not None
        self.lanes = check_lanes(lanes)
        self.out_bits = relu2_out_bits(in_bits, up_bits)
        self.latency = 3 if self.gated else 2
        if self.gated:
            x_layout = lanes_layout(
                signed(in_bits), lanes, name="gate", up=data.ArrayLayout(signed(up_bits), lanes)
            )
        else:
            x_layout = lanes_layout(signed(in_bits), lanes)
        super().__init__(
            {
                "x": In(stream.Signature(x_layout)),
                "y": Out(stream.Signature(lanes_layout(signed(self.out_bits), lanes))),
            }
        )

    def elaborate(self, platform):
        m = Module()
        pipe, stall, fire = _input(m, self.x)
        p = self.x.payload
        valid, last = pipe.reg(fire, "s1_valid"), pipe.reg(p.last, "s1_last")
        outs = []
        for lane in range(self.lanes):
            g = p.gate[lane] if self.gated else p.data[lane]
            # stage 1: ReLU (a negative input squares to 0)
            r = pipe.reg(Mux(g < 0, 0, g), f"s1_relu{lane}", unsigned(self.in_bits - 1))
            sq = r * r
            if self.gated:
                up1 = pipe.reg(p.up[lane], f"s1_up{lane}")
                sq2 = pipe.reg(sq, f"s2_sq{lane}")
                up2 = pipe.reg(up1, f"s2_up{lane}")
                outs.append(sq2 * up2)
            else:
                outs.append(sq)
        if self.gated:
            valid, last = pipe.reg(valid, "s2_valid"), pipe.reg(last, "s2_last")
        _drive_output(m, self.y, stall, valid, last, outs)
        return m


# --------------------------------------------------------------------------- stream packing
def vector_beats(x, lanes: int, field: str = "data") -> list[dict]:
    """Payloads for a vector, zero-padded to a multiple of ``lanes``; ``last`` on the final
    beat. ``x`` may be a dict of equally long vectors (the gated ``gate`` / ``up``)."""
    import numpy as np

    fields = x if isinstance(x, dict) else {field: x}
    arrs = {k: np.asarray(v).reshape(-1).astype(np.int64) for k, v in fields.items()}
    n = next(iter(arrs.values())).size
    nb = max(1, -(-n // lanes))
    out = []
    for b in range(nb):
        beat = {}
        for k, a in arrs.items():
            chunk = np.zeros(lanes, dtype=np.int64)
            part = a[b * lanes : (b + 1) * lanes]
            chunk[: part.size] = part
            beat[k] = chunk.tolist()
        beat["last"] = int(b == nb - 1)
        out.append(beat)
    return out


def synth_tops() -> dict:
    """Factories for ``hw.synth``: the GELU+SiLU unit and the BitNet gated ReLU^2
    (int8 gate x int8 up), both at the default lane count."""
    act = DEFAULT.quant.act_bits
    return {
        "activations_gelu_silu": LutActivation,
        "activations_relu2_gated": lambda: Relu2(act, act),
    }
