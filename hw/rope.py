"""Rotary position embedding in RTL (golden: ``golden.rope.rope_fx``, rotate-half).

For a head vector of ``head_dim`` = 2h elements at position ``pos``, pair i (i < h) is
``(x[i], x[i+h])``::

    y[i]   = sat(rhu(x[i] * cos_q[pos, i] - x[i+h] * sin_q[pos, i], T))
    y[i+h] = sat(rhu(x[i+h] * cos_q[pos, i] + x[i] * sin_q[pos, i], T))

with ``rhu(v, T) = (v + 2^(T-1)) >> T`` and saturation to ``RopeConfig.out_bits(in_bits)``
bits, exactly as the golden model. The cos/sin tables are a ROM generated from
``golden.rope.rope_tables(head_dim, cfg)``: word ``pos * C + c`` (C = h / lanes) holds the
(cos, sin) pairs of frequencies ``c*lanes .. c*lanes + lanes - 1``.

Streams (``amaranth.lib.stream``; a beat transfers when valid & ready)
----------------------------------------------------------------------
``x`` (in)  ``{x1: lanes x signed(in_bits), x2: lanes x signed(in_bits), pos, last}``:
    ``lanes`` pairs of one head: ``x1[l] = x[c*lanes + l]``, ``x2[l] = x[h + c*lanes + l]``
    for the c-th beat of the head (C beats per head, in order; the beat counter wraps
    after C beats). ``pos`` (unsigned, < ``max_pos``) is the token position, ``last`` is
    passed through.
``y`` (out) ``{y1: lanes x signed(out_bits), y2: lanes x signed(out_bits), last}``: the
    rotated pairs, same layout.

``pos_error`` (out): sticky, set by a beat with ``pos >= max_pos`` (its output is
undefined; the golden model rejects such positions); cleared by reset.

Pipeline: ROM read and input register; four ``in_bits x 16`` products; sums, rounding and
saturation into the output register. One beat per cycle; it freezes while ``y`` holds an
unaccepted beat. No stalls: n beats take ``expected_cycles(n) = n + LATENCY`` cycles
(``LATENCY`` = 3) from the first input beat to the last output beat, both included.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import DEFAULT, RopeConfig
from golden.rope import rope_tables
from hw.beats import lanes_layout

LATENCY = 3
# Pairs per beat when the instantiating code does not say (RopeConfig has no lane count).
DEFAULT_LANES = 8
# Head dimension of the default instance (BitNet b1.58 0.73B / 2B: 64).
DEFAULT_HEAD_DIM = 64
TABLE_BITS = 16  # golden.rope: cos/sin tables are signed int16 Q1.T


def expected_cycles(n: int) -> int:
    return n + LATENCY


def x_layout(cfg: RopeConfig, in_bits: int, lanes: int) -> data.StructLayout:
    return lanes_layout(
        signed(in_bits),
        lanes,
        name="x1",
        x2=data.ArrayLayout(signed(in_bits), lanes),
        pos=unsigned(max(1, (cfg.max_pos - 1).bit_length())),
    )


def y_layout(cfg: RopeConfig, in_bits: int, lanes: int) -> data.StructLayout:
    ob = cfg.out_bits(in_bits)
    return lanes_layout(signed(ob), lanes, name="y1", y2=data.ArrayLayout(signed(ob), lanes))


class RoPE(wiring.Component):
    """Rotate-half RoPE from ROM tables (see module docstring)."""

    def __init__(
        self,
        cfg: RopeConfig = DEFAULT.rope,
        *,
        head_dim: int = DEFAULT_HEAD_DIM,
        in_bits: int = DEFAULT.quant.act_bits,
        lanes: int = DEFAULT_LANES,
    ):
        if not isinstance(cfg, RopeConfig):
            raise ValueError(f"cfg: expected RopeConfig, got {type(cfg).__name__}")
        if (
            isinstance(head_dim, bool)
            or not isinstance(head_dim, int)
            or head_dim < 2
            or head_dim % 2
        ):
            raise ValueError(f"head_dim: expected an even int >= 2, got {head_dim!r}")
        if (
            isinstance(lanes, bool)
            or not isinstance(lanes, int)
            or lanes < 1
            or (head_dim // 2) % lanes
        ):
            raise ValueError(
                f"lanes: expected an int >= 1 dividing head_dim/2 = {head_dim // 2}, got {lanes!r}"
            )
        if isinstance(in_bits, bool) or not isinstance(in_bits, int) or not 2 <= in_bits <= 32:
            raise ValueError(f"in_bits: expected an int in [2, 32], got {in_bits!r}")
        self.cfg = cfg
        self.head_dim, self.in_bits, self.lanes = head_dim, in_bits, lanes
        self.beats_per_head = head_dim // 2 // lanes
        self.latency = LATENCY
        super().__init__(
            {
                "x": In(stream.Signature(x_layout(cfg, in_bits, lanes))),
                "y": Out(stream.Signature(y_layout(cfg, in_bits, lanes))),
                "pos_error": Out(1),
            }
        )

    def rom_words(self) -> list[int]:
        """ROM contents from the golden tables, packed as ``rom_layout``: word pos*C + c,
        lane l = frequency c*L + l (cos in the low 16 bits of each lane, then sin)."""
        import numpy as np

        cos_q, sin_q = rope_tables(self.head_dim, self.cfg)
        L, C = self.lanes, self.beats_per_head
        mask = (1 << TABLE_BITS) - 1
        # (pos, chunk, lane) -> one 2*16-bit entry per lane
        cos_u = (cos_q.astype(np.int64) & mask).reshape(self.cfg.max_pos * C, L)
        sin_u = (sin_q.astype(np.int64) & mask).reshape(self.cfg.max_pos * C, L)
        words = []
        for cs, sn in zip(cos_u.tolist(), sin_u.tolist(), strict=False):
            w = 0
            for lane in range(L - 1, -1, -1):
                w = (w << (2 * TABLE_BITS)) | (sn[lane] << TABLE_BITS) | cs[lane]
            words.append(w)
        return words

    def rom_layout(self) -> data.ArrayLayout:
        entry = data.StructLayout({"cos": signed(TABLE_BITS), "sin": signed(TABLE_BITS)})
        return data.ArrayLayout(entry, self.lanes)

    def elaborate(self, platform):
        cfg, L, C = self.cfg, self.lanes, self.beats_per_head
        T = cfg.table_frac_bits
        ob = cfg.out_bits(self.in_bits)
        lo, hi = -(1 << (ob - 1)), (1 << (ob - 1)) - 1
        m = Module()
        # plain integer words: Amaranth converts layout-typed init values slowly
        layout = self.rom_layout()
        rom = Memory(shape=unsigned(layout.size), depth=cfg.max_pos * C, init=self.rom_words())
        m.submodules.rom = rom
        rp = rom.read_port()
        table = data.View(layout, rp.data)

        stall = Signal()
        m.d.comb += stall.eq(self.y.valid & ~self.y.ready)
        fire = Signal()
        m.d.comb += [self.x.ready.eq(~stall), fire.eq(self.x.valid & self.x.ready)]

        chunk = Signal(range(C))
        with m.If(fire):
            m.d.sync += chunk.eq(Mux(chunk == C - 1, 0, chunk + 1))
            with m.If(self.x.payload.pos >= cfg.max_pos):
                m.d.sync += self.pos_error.eq(1)
        m.d.comb += [rp.addr.eq(self.x.payload.pos * C + chunk), rp.en.eq(~stall)]

        def reg(value, name, shape=None):
            r = Signal(value.shape() if shape is None else shape, name=name)
            with m.If(~stall):
                m.d.sync += r.eq(value)
            return r

        # stage 1: table word arrives; inputs registered
        v1, last1 = reg(fire, "s1_valid"), reg(self.x.payload.last, "s1_last")
        x1 = [reg(self.x.payload.x1[l], f"s1_x1_{l}") for l in range(L)]
        x2 = [reg(self.x.payload.x2[l], f"s1_x2_{l}") for l in range(L)]
        # stage 2: the four products of each pair
        v2, last2 = reg(v1, "s2_valid"), reg(last1, "s2_last")
        outs1, outs2 = [], []
        for l in range(L):
            c, s = table[l].cos, table[l].sin
            x1c, x2s = reg(x1[l] * c, f"x1c_{l}"), reg(x2[l] * s, f"x2s_{l}")
            x2c, x1s = reg(x2[l] * c, f"x2c_{l}"), reg(x1[l] * s, f"x1s_{l}")
            # stage 3: exact sums, round half up by T, saturate
            for acc, outs in ((x1c - x2s, outs1), (x2c + x1s, outs2)):
                r = (acc + (1 << (T - 1))) >> T
                outs.append(Mux(r > hi, hi, Mux(r < lo, lo, r)))
        with m.If(~stall):
            m.d.sync += [self.y.valid.eq(v2), self.y.payload.last.eq(last2)]
            m.d.sync += [self.y.payload.y1[l].eq(outs1[l]) for l in range(L)]
            m.d.sync += [self.y.payload.y2[l].eq(outs2[l]) for l in range(L)]
        return m


# --------------------------------------------------------------------------- stream packing
def x_beats(x_head, pos: int, lanes: int, last: bool = True) -> list[dict]:
    """``x`` payloads of one head vector (length 2h) at position ``pos``; ``last`` on its
    final beat if ``last``."""
    import numpy as np

    x = np.asarray(x_head, dtype=np.int64).reshape(-1)
    h = x.size // 2
    nb = h // lanes
    return [
        {
            "x1": x[c * lanes : (c + 1) * lanes].tolist(),
            "x2": x[h + c * lanes : h + (c + 1) * lanes].tolist(),
            "pos": int(pos),
            "last": int(last and c == nb - 1),
        }
        for c in range(nb)
    ]
