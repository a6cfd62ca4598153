"""The command-level golden model: what each command of ``golden/isa.py`` does to memory.

    ex = Executor(mem, cfg)              # mem: a uint8 numpy array; device address = index
    ex.set_window(lo, hi)                # the bytes commands may touch (else ADDR_RANGE)
    out = ex.step(word)                  # one 64-byte command word -> Outcome

``step`` decodes one command word and executes it; ``execute(cmd)`` does the same for a
decoded ``Command`` and raises ``OpError``. The arguments are checked as the opcode's
contract (``golden.isa.CONTRACTS``) says, in its order: its ``Dims`` rules (BAD_DIM) and
its tensors (ALIGN, then ADDR_RANGE against the window [lo, hi)) are checked here, from
the table; its ``Data`` checks are the op's own (``_op_<name>`` below), which calls
``passed(name)`` once one has passed, and only then are the items after it checked. The
op reads and writes its tensors through the contract's layouts (``_Operands``), each
only once it is checked, and computes with the op functions of ``golden/model.py``. A
golden block that refuses the data it was given (a ValueError) is BAD_OPERAND. Nothing is
written before an argument error; after a data-dependent error (BAD_OPERAND of a value,
SCALE_RANGE) part of the output may be written, as on the RTL.

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
``tlmm_tokens`` (P, the design point's ``AccelConfig.tlmm_tokens``): an unmasked TLMM
reads its weights once per block of P rows (``golden.isa.tlmm_weight_passes``); results do
not depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from . import isa
from . import model as _gm
from . import tlmm as _gtlmm
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

    def __init__(
        self,
        mem: np.ndarray,
        cfg: DatapathConfig = DEFAULT,
        exact_tlmm: bool = False,
        tlmm_tokens: int = 1,
    ):
        if not isinstance(cfg, DatapathConfig):
            raise ValueError(f"cfg: expected a DatapathConfig, got {type(cfg).__name__}")
        if not isinstance(mem, np.ndarray) or mem.dtype != np.uint8 or mem.ndim != 1:
            raise ValueError("mem: expected a 1-D uint8 numpy array")
        isa.check_datapath(cfg)
        isa.tlmm_weight_passes(1, tlmm_tokens)  # checks it
        self.tlmm_tokens = tlmm_tokens
        self.mem, self.cfg, self.exact_tlmm = mem, cfg, bool(exact_tlmm)
        self.lo, self.hi = 0, mem.size
        self.bytes_read = self.bytes_written = 0
        self._cache: dict = {}  # (kind, addr, nbytes, shape) -> decoded constant
        self._cache_ranges: dict = {}  # same key -> (lo, hi) bytes it was read from

    def set_window(self, lo: int, hi: int) -> None:
        """Commands may touch bytes [lo, hi) only."""
        if not 0 <= lo <= hi <= self.mem.size:
            raise ValueError(
                f"window: [0x{lo:x}, 0x{hi:x}) is not inside memory [0, 0x{self.mem.size:x})"
            )
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
        except ValueError as e:  # a field value outside its enum
            return Outcome(opv, ErrorCode.BAD_OPERAND, str(e))
        if cmd.op == Opcode.END:
            return Outcome(opv, end=True)
        try:
            self.execute(cmd)
        except OpError as e:
            return Outcome(opv, e.code, e.detail)
        return Outcome(opv)

    def execute(self, cmd: isa.Command) -> None:
        """Execute one decoded command; OpError when it fails. The arguments are checked
        as the opcode's contract (``golden.isa.CONTRACTS``) says, in its order."""
        t = _Operands(self, cmd)
        try:
            t.check()
            getattr(self, f"_op_{isa.op_name(cmd.op)}")(cmd, t)
        except OpError:
            raise
        except ValueError as e:  # a golden block refused the data it was given
            raise OpError(ErrorCode.BAD_OPERAND, str(e)) from None
        t.finished()

    # ------------------------------------------------------------------ memory
    def _read(self, lo: int, nbytes: int, dtype, shape) -> np.ndarray:
        self.bytes_read += nbytes
        return self.mem[lo : lo + nbytes].view(dtype).reshape(shape).copy()

    def _write(self, lo: int, a: np.ndarray) -> None:
        buf = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        self.mem[lo : lo + buf.size] = buf
        self.bytes_written += buf.size
        self.invalidate(lo, lo + buf.size)

    def _records(self, what: str, sc: _gm.Scale) -> np.ndarray:
        try:
            rec = isa.pack_scales(sc.mant, sc.shift)
        except ValueError as e:
            raise OpError(ErrorCode.SCALE_RANGE, f"{what}: {e}") from None
        return rec.view(isa.SCALE_DTYPE)[..., 0]

    def _cached(self, kind: str, addr: int, nbytes: int, shape: tuple, make, counted=None):
        """A constant decoded from [addr, addr + nbytes) (checked by the contract), kept
        until those bytes change; ``counted``: the bytes the op reads of it, if not all."""
        key = (kind, addr, nbytes, shape)
        if key not in self._cache:
            self._cache[key] = make(self.mem[addr : addr + nbytes])
            self._cache_ranges[key] = (addr, addr + nbytes)
        # the hardware streams constants in on every use
        self.bytes_read += nbytes if counted is None else counted
        return self._cache[key]

    # ------------------------------------------------------------------ ops
    # Each ``_op_<name>(c, t)`` runs once the contract's items before its first ``Data``
    # check have passed; it calls ``t.passed(name)`` when its data check ``name`` has
    # passed, which checks the items up to the next one.
    def _op_nop(self, c, t) -> None:
        pass

    def _op_embed(self, c, t) -> None:
        tok = t.load("tokens").astype(np.int64)
        if int(tok.max()) >= c.vocab:
            raise OpError(ErrorCode.BAD_OPERAND, f"tokens: id {int(tok.max())} >= vocab {c.vocab}")
        t.passed("token ids")
        t.store("dst", t.load("table", rows=tok))

    def _op_norm_quant(self, c, t) -> None:
        cfg = self.cfg
        eps = c.eps_term / (c.dim * 2.0 ** (2 * cfg.norm.in_frac_bits))
        ncfg = cfg.with_(norm=replace(cfg.norm, eps=eps))
        want = norm_constants(c.dim, ncfg.norm, cfg.quant)
        if want != (c.eps_term, c.c_mant, c.c_exp):
            raise OpError(
                ErrorCode.BAD_OPERAND,
                f"(eps_term, c_mant, c_exp) = {(c.eps_term, c.c_mant, c.c_exp)} are not "
                f"norm_constants(dim={c.dim}) = {want}",
            )
        t.passed("norm constants")
        x_q, sx = _gm.op_norm_quant(t.load("src"), _gm.NormConst(t.load("gamma"), c.g_exp), ncfg)
        t.store("dst", x_q)
        rec = self._records("dst_scale", sx)
        t.passed("records")
        t.store("dst_scale", rec)

    def _op_tlmm(self, c, t) -> None:
        self._tlmm(c, t, isa.unpack_tlmm_weights)

    def _op_tlmm_sparse(self, c, t) -> None:
        self._tlmm(c, t, isa.unpack_sparse_weights)

    def _tlmm(self, c, t, unpack) -> None:
        """TLMM and TLMM_SPARSE: the weights decoded by ``unpack``; bytes_read counts the
        weight beats the engine reads (a skipped beat is not read)."""
        x = t.load("src")
        tcfg = self.cfg.tlmm
        sparse = c.op == Opcode.TLMM_SPARSE
        masked = not sparse and c.masked

        def make(raw):
            try:
                codes = unpack(raw, c.n, c.k, tcfg)
            except ValueError as e:
                raise OpError(ErrorCode.BAD_OPERAND, f"weights: {e}") from None
            return _gm.ProjConst(codes=codes, weight_scale=1.0, const=_gm.Scale(1, 0))

        addr, nbytes = t.extent("weights")
        counted = nbytes * isa.tlmm_weight_passes(c.rows, self.tlmm_tokens, masked)
        if sparse:
            counted = isa.sparse_read_bytes(x, c.n, tcfg) - x.nbytes
        elif masked and c.skip:
            counted = 0  # counted below, once the mask is read
        proj = self._cached("weights", addr, nbytes, (c.n, c.k), make, counted)
        t.passed("weight codes")
        mask = t.load("mask") if masked else None
        if masked and c.skip:
            live = int(_gtlmm.live_blocks(mask, tcfg).sum())
            self.bytes_read += live * isa.tlmm_chunks(c.k, tcfg) * isa.tlmm_beat_bytes(tcfg)
        t.store("dst", _gm.op_tlmm(x, proj, self.cfg, self.exact_tlmm, mask))

    def _op_rope_quant(self, c, t) -> None:
        hd = c.head_dim
        acc, sx = t.load("src"), t.scales("src_scale")
        if c.rope:
            tab = t.load("table")
            heads = acc.reshape(c.rows, c.heads, hd).transpose(1, 0, 2)
            r = rope_from_table(heads, tab[:, : hd // 2], tab[:, hd // 2 :], self.cfg.rope)
            acc = r.transpose(1, 0, 2).reshape(c.rows, c.heads * hd)
        x_q, s = _gm.op_v_quant(
            acc[None],
            c.heads,
            _gm.Scale(sx.mant[None], sx.shift[None]),
            _gm.Scale(np.int64(c.c_mant), np.int64(c.c_shift)),
            self.cfg,
            kv=bool(c.kv),
        )
        t.store("dst", isa.pack_kv(x_q[0], self.cfg.forward.kv_bits) if c.kv else x_q[0])
        rec = self._records("dst_scale", s)[0]
        t.passed("records")
        t.store("dst_scale", rec)

    def _op_qk(self, c, t) -> None:
        sq, sk = t.scales("q_scale"), t.scales("k_scale")
        lg = _gm.op_qk(
            t.load("q")[None],
            _gm.Scale(sq.mant[None], sq.shift[None]),
            isa.unpack_kv(t.load("k"), self.cfg.forward.kv_bits)[None],
            _gm.Scale(sk.mant[None], sk.shift[None]),
            c.heads // c.kv_heads,
            self.cfg,
        )[0]
        t.store("dst", np.where(causal_mask(c.rows, c.keys), lg, 0).astype(lg.dtype))

    def _op_softmax(self, c, t) -> None:
        p = _gm.op_softmax(t.load("src"), self.cfg)
        t.store("dst", np.where(causal_mask(c.rows, c.keys), p, 0).astype(np.uint16))

    def _op_pv(self, c, t) -> None:
        p = np.where(causal_mask(c.rows, c.keys), t.load("p"), 0).astype(np.uint16)
        sv = t.scales("v_scale")
        o = _gm.op_pv(
            p[None],
            isa.unpack_kv(t.load("v"), self.cfg.forward.kv_bits)[None],
            _gm.Scale(sv.mant[None], sv.shift[None]),
            c.heads // c.kv_heads,
            self.cfg,
        )[0]
        t.passed("acc range")
        t.store("dst", o.transpose(1, 0, 2).reshape(c.rows, c.heads * c.head_dim))

    def _op_residual(self, c, t) -> None:
        out = _gm.op_residual(
            t.load("h"),
            t.load("acc"),
            t.scales("src_scale"),
            _gm.Scale(np.int64(c.c_mant), np.int64(c.c_shift)),
            self.cfg,
        )
        t.store("dst", out)

    def _op_add(self, c, t) -> None:
        t.store("dst", (t.load("a").astype(np.int64) + t.load("b")).astype(np.int32))

    def _op_act(self, c, t) -> None:
        relu2 = c.kind in (ActKind.RELU2, ActKind.RELU2_NLADC, ActKind.RELU2_LINADC)
        kind = "relu2" if relu2 else "silu"
        adc = None
        if isa.adc_kind(c.kind):
            variant = "linear" if c.kind == ActKind.RELU2_LINADC else "nl"
            adc = (variant, c.adc_bits, t.load("adc_table").astype(np.int64))
        m = _gm.op_act(
            t.load("gate"),
            t.load("up"),
            t.scales("src_scale"),
            _gm.Scale(np.int64(c.g_mant), np.int64(c.g_shift)),
            _gm.Scale(np.int64(c.u_mant), np.int64(c.u_shift)),
            kind,
            self.cfg,
            adc,
        )
        t.store("dst", m)

    def _op_lm_head(self, c, t) -> None:
        x = t.load("src")
        # |acc| <= k * 2^14: exact in float32 below 2^24, else float64 (k < 2^16 here)
        ft = np.float32 if c.k * (1 << 14) < (1 << 24) else np.float64
        addr, nbytes = t.extent("weights")
        w_t = self._cached(
            "lm_head",
            addr,
            nbytes,
            (c.n, c.k),
            lambda raw: np.ascontiguousarray(raw.view(np.int8).reshape(c.n, c.k).T.astype(ft)),
        )
        acc = np.matmul(x.astype(ft), w_t).astype(np.int64)
        t.store("dst", acc.astype(np.int32))


class _Operands:
    """One command's tensors as its contract (``golden.isa.CONTRACTS``) lays them out: its
    items checked in order (``check``, ``passed``), each tensor loaded or stored only once
    it is checked."""

    def __init__(self, ex: Executor, cmd: isa.Command):
        self.ex, self.cmd = ex, cmd
        self.items = isa.CONTRACTS[cmd.op]
        self.names = isa.contract_names(cmd.args, ex.cfg)
        self.tensors = {t.field: t for t in self.items if isinstance(t, isa.Tensor)}
        self.pos = 0  # the next item to check
        self.checked: set = set()

    def check(self) -> None:
        """Check the items from the current one up to the next ``Data`` check (or the end)."""
        while self.pos < len(self.items) and not isinstance(self.items[self.pos], isa.Data):
            item = self.items[self.pos]
            self.pos += 1
            err = isa.check_item(item, self.names, self.ex.lo, self.ex.hi)
            if err is not None:
                raise OpError(*err)
            if isinstance(item, isa.Tensor) and (
                item.when is None or isa.evaluate(item.when, self.names)
            ):
                self.checked.add(item.field)

    def passed(self, name: str) -> None:
        """The op's data check ``name`` passed: check the items up to the next one."""
        item = self.items[self.pos] if self.pos < len(self.items) else None
        assert isinstance(item, isa.Data) and item.name == name, (
            f"{self.cmd.op.name}: data check {name!r} out of the contract's order (next: {item})"
        )
        self.pos += 1
        self.check()

    def finished(self) -> None:
        assert self.pos == len(self.items), (
            f"{self.cmd.op.name}: the op skipped data check {self.items[self.pos]}"
        )

    def _tensor(self, name: str) -> isa.Tensor:
        assert name in self.checked, f"{self.cmd.op.name}: {name} used before its check"
        return self.tensors[name]

    def extent(self, name: str) -> tuple[int, int]:
        return self._tensor(name).extent(self.names)

    def load(self, name: str, rows=None) -> np.ndarray:
        """The tensor (its contract shape); ``rows``: only these rows (index 0) of a
        contiguous one, in that order."""
        t = self._tensor(name)
        dims = t.dims(self.names)
        start, nbytes = t.extent(self.names)
        if t.ld is not None:
            stride = isa.evaluate(t.ld, self.names) * math.prod(dims[2:]) * t.size
            n = math.prod(dims[1:]) * t.size
            return np.stack(
                [self.ex._read(start + h * stride, n, t.dtype, dims[1:]) for h in range(dims[0])]
            )
        if rows is not None:
            n = math.prod(dims[1:]) * t.size
            return np.stack([self.ex._read(start + int(r) * n, n, t.dtype, dims[1:]) for r in rows])
        return self.ex._read(start, nbytes, t.dtype, dims)

    def scales(self, name: str) -> _gm.Scale:
        raw = self.load(name)
        return _gm.Scale(raw["mant"].astype(np.int64), raw["shift"].astype(np.int64))

    def store(self, name: str, a: np.ndarray) -> None:
        t = self._tensor(name)
        assert t.out, f"{self.cmd.op.name}: {name} is an input"
        dims = tuple(t.dims(self.names))
        a = np.asarray(a)
        assert a.shape == dims and np.can_cast(a.dtype, t.dtype, "same_kind"), (
            f"{self.cmd.op.name}: {name} {a.dtype}{a.shape}, the contract says {t.dtype}{dims}"
        )
        a = np.ascontiguousarray(a, dtype=t.dtype)
        start, _ = t.extent(self.names)
        if t.ld is None:
            self.ex._write(start, a)
            return
        stride = isa.evaluate(t.ld, self.names) * math.prod(dims[2:]) * t.size
        for h in range(dims[0]):
            self.ex._write(start + h * stride, a[h])
