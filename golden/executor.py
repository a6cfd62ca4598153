"""The command-level golden model: what each command of ``golden/isa.py`` does to memory.

    ex = Executor(mem, cfg)              # mem: a uint8 numpy array; device address = index
    ex.set_window(lo, hi)                # the bytes commands may touch (else ADDR_RANGE)
    out = ex.step(word)                  # one 64-byte command word -> Outcome

``step`` decodes one command word and executes it by calling the op functions of
``golden/model.py`` on tensors read from memory in the formats of ``golden/isa.py``,
writing the results back; ``execute(cmd)`` does the same for a decoded ``Command`` and
raises ``OpError``. Every tensor a command touches must lie inside the window
[lo, hi) and be aligned to its element size, else ADDR_RANGE / ALIGN. A golden block
that refuses the data it was given (a ValueError) is BAD_OPERAND. Arguments are checked
before anything is written; data-dependent errors (BAD_OPERAND of a value, SCALE_RANGE)
may come after part of the output was written, as on the RTL.

The stream semantics around ``step`` (START, the program counter, END, MISSING_END after
``n_cmds`` commands) are the device's: ``host/backends/golden.py`` runs streams with
this executor, and the sim backend executes the commands of a partial RTL top here.

Two details the golden op functions do not take as arguments:

- NORM_QUANT's eps comes from the command's ``eps_term``: eps = eps_term / (dim *
  2^(2*in_frac_bits)) reproduces ``golden.rmsnorm.norm_constants`` exactly (checked
  against the command's c_mant / c_exp, else BAD_OPERAND).
- ROPE_QUANT reads its cos/sin rows from the RoPE table in memory and applies them with
  ``golden.rope.rope_from_table`` (the datapath of ``rope_fx``), then
  ``golden.model.op_v_quant`` quantizes per head exactly as ``op_rope_quant`` does.

Counters ``bytes_read`` / ``bytes_written``: tensor traffic of the executed commands
(constants such as weights count on every use, as the hardware streams them each time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from . import isa
from . import model as _gm
from .config import DEFAULT, DatapathConfig
from .isa import ActKind, ErrorCode, Opcode
from .rmsnorm import norm_constants
from .rope import rope_from_table
from .softmax import causal_mask


class OpError(Exception):
    """A command failed: ``code`` (ErrorCode) and ``detail`` (what was wrong)."""

    def __init__(self, code: ErrorCode, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class Outcome:
    """What one command word did: its raw opcode, the error (NONE: success), whether it
    was END."""

    opcode: int
    error: ErrorCode = ErrorCode.NONE
    detail: str = ""
    end: bool = False


class Executor:
    """The golden model of the accelerator's op engines over one memory buffer."""

    def __init__(self, mem: np.ndarray, cfg: DatapathConfig = DEFAULT, exact_tlmm: bool = False):
        if not isinstance(cfg, DatapathConfig):
            raise ValueError(f"cfg: expected a DatapathConfig, got {type(cfg).__name__}")
        if not isinstance(mem, np.ndarray) or mem.dtype != np.uint8 or mem.ndim != 1:
            raise ValueError("mem: expected a 1-D uint8 numpy array")
        isa.check_datapath(cfg)
        self.mem, self.cfg, self.exact_tlmm = mem, cfg, bool(exact_tlmm)
        self.lo, self.hi = 0, mem.size
        self.bytes_read = self.bytes_written = 0
        self._cache: dict = {}          # (kind, addr, nbytes, shape) -> decoded constant
        self._cache_ranges: dict = {}   # same key -> (lo, hi) bytes it was read from

    def set_window(self, lo: int, hi: int) -> None:
        """Commands may touch bytes [lo, hi) only."""
        if not 0 <= lo <= hi <= self.mem.size:
            raise ValueError(f"window: [0x{lo:x}, 0x{hi:x}) is not inside memory [0, 0x{self.mem.size:x})")
        self.lo, self.hi = int(lo), int(hi)

    def invalidate(self, lo: int, hi: int) -> None:
        """Bytes [lo, hi) changed behind the executor's back: forget constants read there."""
        if self._cache_ranges:
            for key, (a, b) in list(self._cache_ranges.items()):
                if a < hi and lo < b:
                    del self._cache_ranges[key], self._cache[key]

    # ------------------------------------------------------------------ commands
    def step(self, word) -> Outcome:
        """Decode and execute one 64-byte command word (END only reports itself)."""
        word = bytes(word)
        opv = word[0]
        try:
            cmd = isa.decode(word)
        except isa.UnknownOpcode:
            return Outcome(opv, ErrorCode.UNKNOWN_OPCODE, f"opcode value {opv}")
        except ValueError as e:         # a field value outside its enum
            return Outcome(opv, ErrorCode.BAD_OPERAND, str(e))
        if cmd.op == Opcode.END:
            return Outcome(opv, end=True)
        try:
            self.execute(cmd)
        except OpError as e:
            return Outcome(opv, e.code, e.detail)
        return Outcome(opv)

    def execute(self, cmd: isa.Command) -> None:
        """Execute one decoded command; OpError when it fails."""
        try:
            getattr(self, f"_op_{isa.op_name(cmd.op)}")(cmd)
        except OpError:
            raise
        except ValueError as e:         # a golden block refused the data it was given
            raise OpError(ErrorCode.BAD_OPERAND, str(e)) from None

    # ------------------------------------------------------------------ tensor access
    def _span(self, what: str, addr: int, nbytes: int, itemsize: int) -> tuple[int, int]:
        if addr % itemsize:
            raise OpError(ErrorCode.ALIGN, f"{what}: 0x{addr:x} is not {itemsize}-byte aligned")
        if addr < self.lo or addr + nbytes > self.hi:
            raise OpError(ErrorCode.ADDR_RANGE,
                          f"{what}: [0x{addr:x}, 0x{addr + nbytes:x}) outside the memory window "
                          f"[0x{self.lo:x}, 0x{self.hi:x})")
        return addr, addr + nbytes

    def _load(self, what: str, addr: int, dtype, shape) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        n = math.prod(shape) * dt.itemsize
        lo, hi = self._span(what, addr, n, dt.itemsize)
        self.bytes_read += n
        return self.mem[lo:hi].view(dt).reshape(shape).copy()

    def _store(self, what: str, addr: int, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a)
        buf = a.view(np.uint8).reshape(-1)
        lo, hi = self._span(what, addr, buf.size, a.dtype.itemsize)
        self.mem[lo:hi] = buf
        self.bytes_written += buf.size
        self.invalidate(lo, hi)

    def _load_heads(self, what: str, addr: int, dtype, heads: int, ld: int, rows: int,
                    width: int) -> np.ndarray:
        """[heads, rows, width] where row t of head h is at addr + (h*ld + t)*width*size."""
        size = np.dtype(dtype).itemsize
        return np.stack([self._load(f"{what} (head {h})", addr + h * ld * width * size, dtype,
                                    (rows, width)) for h in range(heads)])

    def _store_heads(self, what: str, addr: int, a: np.ndarray, ld: int) -> None:
        heads, _, width = a.shape
        for h in range(heads):
            self._store(f"{what} (head {h})", addr + h * ld * width * a.dtype.itemsize, a[h])

    def _load_scales(self, what: str, addr: int, shape) -> _gm.Scale:
        raw = self._load(what, addr, isa.SCALE_DTYPE, shape)
        return _gm.Scale(raw["mant"].astype(np.int64), raw["shift"].astype(np.int64))

    def _load_scales_heads(self, what, addr, heads, ld, rows) -> _gm.Scale:
        raw = self._load_heads(what, addr, isa.SCALE_DTYPE, heads, ld, rows, 1)[..., 0]
        return _gm.Scale(raw["mant"].astype(np.int64), raw["shift"].astype(np.int64))

    def _records(self, what: str, sc: _gm.Scale) -> np.ndarray:
        try:
            rec = isa.pack_scales(sc.mant, sc.shift)
        except ValueError as e:
            raise OpError(ErrorCode.SCALE_RANGE, f"{what}: {e}") from None
        return rec.view(isa.SCALE_DTYPE)[..., 0]

    def _cached(self, kind: str, addr: int, nbytes: int, shape: tuple, make):
        key = (kind, addr, nbytes, shape)
        if key not in self._cache:
            lo, hi = self._span(kind, addr, nbytes, 1)
            self._cache[key] = make()
            self._cache_ranges[key] = (lo, hi)
        self.bytes_read += nbytes       # the hardware streams constants in on every use
        return self._cache[key]

    # ------------------------------------------------------------------ ops
    @staticmethod
    def _need(cond: bool, detail: str) -> None:
        if not cond:
            raise OpError(ErrorCode.BAD_DIM, detail)

    def _op_nop(self, c) -> None:
        pass

    def _op_embed(self, c) -> None:
        self._need(c.rows >= 1 and c.dim >= 1 and c.vocab >= 1, "rows, dim, vocab must be >= 1")
        tok = self._load("tokens", c.tokens, np.uint32, (c.rows,)).astype(np.int64)
        if int(tok.max()) >= c.vocab:
            raise OpError(ErrorCode.BAD_OPERAND, f"tokens: id {int(tok.max())} >= vocab {c.vocab}")
        self._span("table", c.table, c.vocab * c.dim * 4, 4)
        h = np.stack([self._load("table", c.table + int(t) * c.dim * 4, np.int32, (c.dim,))
                      for t in tok])
        self._store("dst", c.dst, h)

    def _op_norm_quant(self, c) -> None:
        self._need(c.rows >= 1 and c.dim >= 1, "rows, dim must be >= 1")
        cfg = self.cfg
        eps = c.eps_term / (c.dim * 2.0 ** (2 * cfg.norm.in_frac_bits))
        ncfg = cfg.with_(norm=replace(cfg.norm, eps=eps))
        want = norm_constants(c.dim, ncfg.norm, cfg.quant)
        if want != (c.eps_term, c.c_mant, c.c_exp):
            raise OpError(ErrorCode.BAD_OPERAND,
                          f"(eps_term, c_mant, c_exp) = {(c.eps_term, c.c_mant, c.c_exp)} are not "
                          f"norm_constants(dim={c.dim}) = {want}")
        h = self._load("src", c.src, np.int32, (c.rows, c.dim))
        gamma = self._load("gamma", c.gamma, np.int16, (c.dim,))
        x_q, sx = _gm.op_norm_quant(h, _gm.NormConst(gamma, c.g_exp), ncfg)
        self._store("dst", c.dst, x_q)
        self._store("dst_scale", c.dst_scale, self._records("dst_scale", sx))

    def _proj(self, addr: int, n: int, k: int) -> _gm.ProjConst:
        tcfg = self.cfg.tlmm
        nbytes = isa.tlmm_weight_bytes(n, k, tcfg)

        def make():
            raw = self.mem[addr:addr + nbytes]
            try:
                codes = isa.unpack_tlmm_weights(raw, n, k, tcfg)
            except ValueError as e:
                raise OpError(ErrorCode.BAD_OPERAND, f"weights: {e}") from None
            return _gm.ProjConst(codes=codes, weight_scale=1.0, const=_gm.Scale(1, 0))
        return self._cached("weights", addr, nbytes, (n, k), make)

    def _op_tlmm(self, c) -> None:
        self._need(c.rows >= 1 and c.k >= 1 and c.n >= 1, "rows, k, n must be >= 1")
        self._need(c.k <= self.cfg.tlmm.max_k(), f"k {c.k} > TLMM max_k {self.cfg.tlmm.max_k()}")
        x = self._load("src", c.src, np.int8, (c.rows, c.k))
        proj = self._proj(c.weights, c.n, c.k)
        self._store("dst", c.dst, _gm.op_tlmm(x, proj, self.cfg, self.exact_tlmm))

    def _op_rope_quant(self, c) -> None:
        hd = c.head_dim
        self._need(c.rows >= 1 and c.heads >= 1 and hd >= 2 and hd % 2 == 0,
                   "rows, heads >= 1 and an even head_dim >= 2 required")
        self._need(c.ld >= c.rows, f"ld {c.ld} < rows {c.rows}")
        acc = self._load("src", c.src, np.int32, (c.rows, c.heads * hd))
        sx = self._load_scales("src_scale", c.src_scale, (c.rows,))
        if c.rope:
            self._need(c.pos + c.rows <= c.table_rows,
                       f"positions {c.pos}..{c.pos + c.rows - 1} beyond table_rows {c.table_rows}")
            tab = self._load("table", c.table + c.pos * hd * 2, np.int16, (c.rows, hd))
            heads = acc.reshape(c.rows, c.heads, hd).transpose(1, 0, 2)
            r = rope_from_table(heads, tab[:, :hd // 2], tab[:, hd // 2:], self.cfg.rope)
            acc = r.transpose(1, 0, 2).reshape(c.rows, c.heads * hd)
        x_q, s = _gm.op_v_quant(acc[None], c.heads, _gm.Scale(sx.mant[None], sx.shift[None]),
                                _gm.Scale(np.int64(c.c_mant), np.int64(c.c_shift)), self.cfg)
        self._store_heads("dst", c.dst, x_q[0], c.ld)
        self._store_heads("dst_scale", c.dst_scale, self._records("dst_scale", s)[0][..., None],
                          c.ld)

    def _attn_dims(self, c) -> int:
        self._need(c.rows >= 1 and c.heads >= 1 and c.kv_heads >= 1 and c.head_dim >= 1,
                   "rows, heads, kv_heads, head_dim must be >= 1")
        self._need(c.heads % c.kv_heads == 0, f"kv_heads {c.kv_heads} does not divide heads {c.heads}")
        self._need(c.rows <= c.keys <= self.cfg.softmax.max_len,
                   f"keys {c.keys} must be in [rows {c.rows}, softmax max_len {self.cfg.softmax.max_len}]")
        self._need(c.kv_ld >= c.keys, f"kv_ld {c.kv_ld} < keys {c.keys}")
        return c.heads // c.kv_heads

    def _op_qk(self, c) -> None:
        n_rep = self._attn_dims(c)
        self._need(c.q_ld >= c.rows, f"q_ld {c.q_ld} < rows {c.rows}")
        hd = c.head_dim
        q = self._load_heads("q", c.q, np.int8, c.heads, c.q_ld, c.rows, hd)
        sq = self._load_scales_heads("q_scale", c.q_scale, c.heads, c.q_ld, c.rows)
        k = self._load_heads("k", c.k, np.int8, c.kv_heads, c.kv_ld, c.keys, hd)
        sk = self._load_scales_heads("k_scale", c.k_scale, c.kv_heads, c.kv_ld, c.keys)
        lg = _gm.op_qk(q[None], _gm.Scale(sq.mant[None], sq.shift[None]), k[None],
                       _gm.Scale(sk.mant[None], sk.shift[None]), n_rep, self.cfg)[0]
        self._store("dst", c.dst, np.where(causal_mask(c.rows, c.keys), lg, 0).astype(lg.dtype))

    def _op_softmax(self, c) -> None:
        self._need(c.rows >= 1 and c.heads >= 1, "rows, heads must be >= 1")
        self._need(c.rows <= c.keys <= self.cfg.softmax.max_len,
                   f"keys {c.keys} must be in [rows {c.rows}, softmax max_len {self.cfg.softmax.max_len}]")
        lg = self._load("src", c.src, np.int16, (c.heads, c.rows, c.keys))
        p = _gm.op_softmax(lg, self.cfg)
        self._store("dst", c.dst, np.where(causal_mask(c.rows, c.keys), p, 0).astype(np.uint16))

    def _op_pv(self, c) -> None:
        n_rep = self._attn_dims(c)
        p = self._load("p", c.p, np.uint16, (c.heads, c.rows, c.keys))
        p = np.where(causal_mask(c.rows, c.keys), p, 0).astype(np.uint16)
        v = self._load_heads("v", c.v, np.int8, c.kv_heads, c.kv_ld, c.keys, c.head_dim)
        sv = self._load_scales_heads("v_scale", c.v_scale, c.kv_heads, c.kv_ld, c.keys)
        o = _gm.op_pv(p[None], v[None], _gm.Scale(sv.mant[None], sv.shift[None]), n_rep,
                      self.cfg)[0]
        self._store("dst", c.dst, o.transpose(1, 0, 2).reshape(c.rows, c.heads * c.head_dim))

    def _op_residual(self, c) -> None:
        self._need(c.rows >= 1 and c.dim >= 1, "rows, dim must be >= 1")
        h = self._load("h", c.h, np.int32, (c.rows, c.dim))
        acc = self._load("acc", c.acc, np.int32, (c.rows, c.dim))
        sx = self._load_scales("src_scale", c.src_scale, (c.rows,))
        out = _gm.op_residual(h, acc, sx, _gm.Scale(np.int64(c.c_mant), np.int64(c.c_shift)),
                              self.cfg)
        self._store("dst", c.dst, out)

    def _op_act(self, c) -> None:
        self._need(c.rows >= 1 and c.dim >= 1, "rows, dim must be >= 1")
        g = self._load("gate", c.gate, np.int32, (c.rows, c.dim))
        u = self._load("up", c.up, np.int32, (c.rows, c.dim))
        sx = self._load_scales("src_scale", c.src_scale, (c.rows,))
        kind = "relu2" if c.kind == ActKind.RELU2 else "silu"
        m = _gm.op_act(g, u, sx, _gm.Scale(np.int64(c.g_mant), np.int64(c.g_shift)),
                       _gm.Scale(np.int64(c.u_mant), np.int64(c.u_shift)), kind, self.cfg)
        self._store("dst", c.dst, m)

    def _op_lm_head(self, c) -> None:
        self._need(c.rows >= 1 and c.k >= 1 and c.n >= 1, "rows, k, n must be >= 1")
        x = self._load("src", c.src, np.int8, (c.rows, c.k))
        nbytes = c.n * c.k
        self._span("weights", c.weights, nbytes, 1)
        # dst before the matmul (the op has no data-dependent error): a bad dst must not
        # cost a rows x n product first
        self._span("dst", c.dst, c.rows * c.n * 4, 4)
        # |acc| <= k * 2^14: exact in float32 below 2^24, else float64 (k < 2^16 here)
        ft = np.float32 if c.k * (1 << 14) < (1 << 24) else np.float64
        w_t = self._cached("lm_head", c.weights, nbytes, (c.n, c.k), lambda: np.ascontiguousarray(
            self.mem[c.weights:c.weights + nbytes].view(np.int8).reshape(c.n, c.k).T.astype(ft)))
        acc = np.matmul(x.astype(ft), w_t).astype(np.int64)
        self._store("dst", c.dst, acc.astype(np.int32))
