"""The contract between the accelerator top and its op engines, and shared RTL helpers.

Engine ports (``EngineSignature(dma_bytes)``; the top drives the ``In`` ports)
=============================================================================
``start`` (in)   one-cycle pulse: a command for this engine; ``args`` is valid from this
                 cycle until ``done`` (the top holds the command register).
``args`` (in)    ``golden.isa.ARGS_UNION``: the engine reads its own member
                 (``Engine.op_args``: ``args.norm_quant`` ...).
``mem_lo``, ``mem_hi`` (in)  the memory window: a tensor [a, a+n) must satisfy
                 ``mem_lo <= a`` and ``a + n <= mem_hi`` (else ADDR_RANGE).
``done`` (out)   one-cycle pulse: the command is finished; ``error`` (out, ``ErrorCode``)
                 is valid in that cycle (NONE: success).
``rd`` (out)     read requests ``{addr, len}``: ``len`` (1..dma_bytes) bytes at byte
                 address ``addr`` (any alignment).
``rdata`` (in)   one response beat per request, in request order: byte i of the request in
                 bits [8i, 8i+8) of the payload, zero beyond ``len``.
``wr`` (out)     posted writes ``{addr, len, data}``: the low ``len`` bytes of ``data``.

Rules every engine keeps (the top relies on them; ``sim/op_bench.py`` checks them)
* errors are reported in the order of the opcode's contract (``golden.isa.CONTRACTS``),
  which is the golden executor's: argument errors (BAD_DIM, ALIGN, ADDR_RANGE) before any
  write; data-dependent errors (the contract's ``Data`` checks: BAD_OPERAND of a value,
  SCALE_RANGE) when found (a failing command may then have written part of its output, as
  the golden executor may); the arguments the contract checks after a ``Data`` check are
  checked up front but reported after it: a bad one makes the command run *dry*
  (computing, writing nothing);
* the error comes with ``done`` and no read left outstanding;
* ``done`` comes only after every read it requested has been consumed and every write
  has been accepted; it issues nothing after ``done``;
* between commands it ignores ``args``; a reset returns it to idle.

The engine base (``Engine``)
============================
Every engine derives from ``Engine`` and sets ``OPCODE``. The base owns ``finish`` (done
+ error, back to IDLE), the IDLE and check states (``check_states``) and the argument
checks: ``checks(m)`` builds them (``ArgChecks``) from the opcode's contract -- the
``Dims`` rules (BAD_DIM), each tensor's ALIGN and ADDR_RANGE over the span its layout
gives -- plus what the engine states once:

* ``LIMITS``: its own BAD_DIM rules (the hardware's sizes, e.g. ``"k <= max_k"``: names
  are command fields or engine attributes), checked with the contract's first ``Dims``;
  each is a documented difference from the golden executor;
* ``GOLDEN_ONLY``: the contract's ``Data`` checks the RTL does not make (also documented).

``ArgChecks.error(start, stop)`` is the ``ErrorCode`` of the first failing check among the
contract's items from ``start`` up to ``stop`` (item names: a tensor field or a ``Data``
check's name); an engine spreads these ranges over its check states (``check_states``;
the ranges split at the ``Data`` checks it makes itself), which fixes the cycles its
checks take: a failing command ends in the check state that finds the error. With
``registered=True`` the tensor spans come from registers loaded every cycle (valid from
the cycle after ``start``), for engines whose tensor checks come a cycle or more later;
``registered=3`` in steps for engines that meet the 250 MHz depth rule (``hw.timing``):
the byte counts (a product), the spans, each condition, and (``ArgChecks.error_reg``)
the error code, each registered: the code is valid from the fourth cycle after
``start``.
With ``pipelined=True`` (``hw/ops/checkpipe.py``) the spans are expanded into sums of
products of fields, every product a registered DSP fed by registers, and every
``error()`` is a register too: no check path is deeper than a comparison, and
``ArgChecks.latency`` says from which cycle after ``start`` all of them are valid (the
engine's check state that uses the tensor checks must come no earlier; the ``Dims``
checks of the first item are valid from the first cycle after ``start``).
With ``registered=2`` the span products and then the ends are registers (valid from the
second cycle after ``start``: every multiplier registered around its DSP, the window
compare starting at a register), for engines whose tensor checks come two cycles or more
later; with ``registered="deep"`` every product of an extent is a register as well (a
DSP chain registered around each DSP), the checks valid ``ArgChecks.latency`` cycles after
``start``. ``rule_values`` {rule: value} gives the engine's own value of a ``Dims`` rule of
the contract (e.g. a divisibility from a sequential divider, valid when its check runs).

Each engine module exports ``expected_cycles(...)``: its cycle count without memory
stalls (the formula of its docstring), which ``sim/test_op_<name>.py`` measures.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, ValueCastable, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from golden import isa
from golden.isa import ErrorCode, Opcode
from hw.fixed import bit_length, saturate


def rd_layout(dma_bytes: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(isa.ADDR_BITS), "len": range(dma_bytes + 1)})


def wr_layout(dma_bytes: int) -> data.StructLayout:
    return data.StructLayout(
        {
            "addr": unsigned(isa.ADDR_BITS),
            "len": range(dma_bytes + 1),
            "data": unsigned(8 * dma_bytes),
        }
    )


class EngineSignature(wiring.Signature):
    def __init__(self, dma_bytes: int):
        self.dma_bytes = dma_bytes
        super().__init__(
            {
                "start": In(1),
                "args": In(isa.ARGS_UNION),
                "mem_lo": In(isa.ADDR_BITS),
                "mem_hi": In(isa.ADDR_BITS + 1),
                "done": Out(1),
                "error": Out(ErrorCode),
                "rd": Out(stream.Signature(rd_layout(dma_bytes))),
                "rdata": In(stream.Signature(unsigned(8 * dma_bytes))),
                "wr": Out(stream.Signature(wr_layout(dma_bytes))),
            }
        )


# ------------------------------------------------------------------ argument checks
def check_power_of_two(name: str, v, lo: int = 1, hi: int | None = None) -> None:
    """A constructor's check of a parameter that must be an int power of two in [lo, hi]
    (hi None: no bound): ValueError naming it otherwise."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or v & (v - 1):
        bad = True
    else:
        bad = hi is not None and v > hi
    if bad:
        within = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected a power of two {within}, got {v!r}")


def misaligned(addr, size: int):
    """addr not a multiple of ``size`` (a power of two)."""
    assert size & (size - 1) == 0
    return addr[: size.bit_length() - 1] != 0 if size > 1 else Const(0)


class _Piped(ValueCastable):
    """A value of a tensor extent whose products and sums with other values are
    registered (every DSP registered around); ``depth``: the registers on its longest
    chain."""

    def __init__(self, m: Module, value, depth: int = 0):
        self.m, self.value, self.depth = m, Value.cast(value), depth

    def as_value(self):
        return self.value

    def shape(self):
        return self.value.shape()

    def _op(self, other, f, mul: bool = False):
        ov, od = (other.value, other.depth) if isinstance(other, _Piped) else (other, 0)
        r = f(self.value, ov)
        depth = max(self.depth, od)
        if mul and isinstance(ov, int):
            return _Piped(self.m, r, depth)  # a constant factor: a shift or an adder
        # a product, or a sum that may feed one: registered, so that every DSP's inputs
        # come from registers and its output goes into one
        reg = Signal(Value.cast(r).shape())
        self.m.d.sync += reg.eq(r)
        return _Piped(self.m, reg, depth + 1)

    def __add__(self, other):
        return self._op(other, lambda a, b: a + b)

    def __radd__(self, other):
        return self._op(other, lambda a, b: b + a)

    def __sub__(self, other):
        return self._op(other, lambda a, b: a - b)

    def __rsub__(self, other):
        return self._op(other, lambda a, b: b - a)

    def __mul__(self, other):
        return self._op(other, lambda a, b: a * b, mul=True)

    def __rmul__(self, other):
        return self._op(other, lambda a, b: b * a, mul=True)

    def __floordiv__(self, d):
        # a power-of-two divisor (kv_row's head_dim // 2): a shift, no register
        assert isinstance(d, int) and d >= 1 and d & (d - 1) == 0, d
        return _Piped(self.m, self.value >> (d.bit_length() - 1), self.depth)


class ArgChecks:
    """An engine's argument checks: its opcode's contract (``golden.isa.CONTRACTS``) with
    the engine's ``LIMITS``, on its ``op_args``, ``mem_lo`` and ``mem_hi`` (see the module
    docstring). Build it, and its ``error`` signals, outside the FSM (``Engine.checks``)."""

    def __init__(
        self,
        engine: Engine,
        m: Module,
        *,
        registered: bool | int | str = False,
        pipelined: bool = False,
        rule_values: dict | None = None,
    ):
        op = engine.OPCODE
        rule_values = dict(rule_values or {})
        view = engine.op_args
        fields = {n: view[n] for n, _ in isa.ARGS[op]}
        names = isa.contract_names(fields, engine.cfg)
        self.op, self.m, self.golden_only = op, m, tuple(engine.GOLDEN_ONLY)
        self.pipelined = pipelined
        self.stages: list[list[int]] = []  # per item, per condition: cycle it is valid
        # cycles after start from which the tensor checks are valid
        self.latency = 2 if registered == 2 else 1 if (registered or pipelined) else 0
        if pipelined:
            from .checkpipe import PolyCtx, materialize

            ctx = PolyCtx(m, f"{isa.op_name(op)}_chk")
            pnames = isa.contract_names(
                {n: ctx.atom(Value.cast(v)) for n, v in fields.items()}, engine.cfg
            )
        self.items = isa.CONTRACTS[op]
        for name in self.golden_only:
            assert any(isinstance(d, isa.Data) and d.name == name for d in self.items), name

        def bad(rules, extra=None):
            conds = []
            for rule in rules:
                if rule in rule_values:  # the engine's own value of the rule
                    conds.append(~Value.cast(rule_values.pop(rule)))
                    continue
                env = names
                if extra is not None:
                    env = {
                        **names,
                        **{n: getattr(extra, n) for n in isa.expr_names(rule) if n not in names},
                    }
                conds.append(~Value.cast(isa.evaluate(rule, env)))
            return conds

        # the decoder's check, before every other: an enum field that holds no member
        self.decode = []
        for n, f in isa.ARGS[op]:
            if isinstance(f.shape, type) and issubclass(f.shape, enum.Enum):
                v = fields[n].as_value()
                member = Const(0)
                for e in f.shape:
                    member = member | (v == e.value)
                self.decode.append((~member, ErrorCode.BAD_OPERAND))
        # per item: [(condition, code)] in check order
        limits = bad(engine.LIMITS, engine)
        self.conds = []
        if registered == 3:
            self.decode = [
                (self._reg(c, f"dec{j}"), code) for j, (c, code) in enumerate(self.decode)
            ]
        lo, hi = engine.mem_lo, engine.mem_hi
        for i, item in enumerate(self.items):
            conds = []
            stages = None
            when = (
                None
                if getattr(item, "when", None) is None
                else Value.cast(isa.evaluate(item.when, names))
            )
            if isinstance(item, isa.Dims):
                conds = [(c, ErrorCode.BAD_DIM) for c in bad(item.rules) + limits]
                limits = []  # with the first Dims only
            elif isinstance(item, isa.Tensor) and pipelined:
                addr = names[item.field]
                start_p, nbytes_p = item.extent(pnames)
                end, s_end = materialize(ctx, start_p + nbytes_p, f"{item.field}_end")
                start, s_start = materialize(ctx, start_p, f"{item.field}_start")
                if item.size > 1:
                    conds.append((misaligned(addr, item.size), ErrorCode.ALIGN))
                out = Signal(name=f"{item.field}_out")  # the range compares, registered
                m.d.sync += out.eq((start < lo) | (end > hi))
                conds.append((out, ErrorCode.ADDR_RANGE))
                stages = [0] * (len(conds) - 1) + [max(s_end, s_start) + 1]
            elif isinstance(item, isa.Tensor):
                addr = names[item.field]
                if registered == 3:
                    # the byte count (a product: a DSP registered around), then the end
                    start, nbytes = item.extent(names)
                    nb_r = Signal(Value.cast(nbytes).shape(), name=f"{item.field}_nbytes")
                    start_r = Signal(Value.cast(start).shape(), name=f"{item.field}_start")
                    m.d.sync += [nb_r.eq(nbytes), start_r.eq(start)]
                    end = Signal(Value.cast(start_r + nb_r).shape(), name=f"{item.field}_end")
                    start_r2 = Signal.like(start_r, name=f"{item.field}_start2")
                    m.d.sync += [end.eq(start_r + nb_r), start_r2.eq(start_r)]
                    start = start_r2
                elif registered == "deep":
                    # every product of the extent registered, then the start and the end:
                    # valid ``self.latency`` cycles after start
                    piped = {
                        k: _Piped(m, v) if isinstance(v, Value | data.View) else v
                        for k, v in names.items()
                    }
                    start_p, span_p = item.extent(piped)
                    start_p = start_p if isinstance(start_p, _Piped) else _Piped(m, start_p)
                    span_p = span_p if isinstance(span_p, _Piped) else _Piped(m, span_p)
                    start_r = Signal(start_p.shape(), name=f"{item.field}_start")
                    span_r = Signal(span_p.shape(), name=f"{item.field}_span")
                    m.d.sync += [start_r.eq(start_p.value), span_r.eq(span_p.value)]
                    end_r = Signal(Value.cast(start_r + span_r).shape(), name=f"{item.field}_end")
                    m.d.sync += end_r.eq(start_r + span_r)
                    start, end = start_r, end_r
                    self.latency = max(self.latency, max(start_p.depth, span_p.depth) + 2)
                else:
                    start, nbytes = item.extent(names)
                    end = start + nbytes
                if registered == 2:
                    # the span (a product: a DSP) and a computed start into registers, then
                    # their sum: every multiplier registered around its DSP, and the
                    # compare with the window starts at a register
                    span_r = Signal(Value.cast(nbytes).shape(), name=f"{item.field}_span")
                    m.d.sync += span_r.eq(nbytes)
                    if item.offset is not None:
                        start_r = Signal(Value.cast(start).shape(), name=f"{item.field}_start")
                        m.d.sync += start_r.eq(start)
                        start = start_r
                    end_r = Signal(Value.cast(start + span_r).shape(), name=f"{item.field}_end")
                    m.d.sync += end_r.eq(start + span_r)
                    end = end_r
                elif registered is True:
                    end_r = Signal(Value.cast(end).shape(), name=f"{item.field}_end")
                    m.d.sync += end_r.eq(end)
                    end = end_r
                    if item.offset is not None:
                        start_r = Signal(Value.cast(start).shape(), name=f"{item.field}_start")
                        m.d.sync += start_r.eq(start)
                        start = start_r
                if item.size > 1:
                    conds.append((misaligned(addr, item.size), ErrorCode.ALIGN))
                conds.append(((start < lo) | (end > hi), ErrorCode.ADDR_RANGE))
            if when is not None:
                conds = [(when & c, code) for c, code in conds]
            if registered == 3:  # each condition registered (a third step)
                conds = [(self._reg(c, f"{i}_{j}"), code) for j, (c, code) in enumerate(conds)]
            self.conds.append(conds)
            self.stages.append(stages or [0] * len(conds))
        assert not limits, f"{op.name}: LIMITS but no Dims in the contract"
        assert not rule_values, f"{op.name}: no contract rule {sorted(rule_values)}"
        if pipelined:
            self.latency = 1 + max((s for st in self.stages for s in st), default=0)

    def _reg(self, cond, tag) -> Signal:
        r = Signal(name=f"chk_{tag}")
        self.m.d.sync += r.eq(cond)
        return r

    def _index(self, name: str | None, start: bool) -> int:
        if name is None:
            return 0 if start else len(self.items)
        for i, item in enumerate(self.items):
            if getattr(item, "field", None) == name:
                return i
            if isinstance(item, isa.Data) and item.name == name:
                return i + 1 if start else i  # start after a Data check
        raise ValueError(f"{self.op.name}: no contract item {name!r}")

    def error(self, start: str | None = None, stop: str | None = None, name: str | None = None):
        """``ErrorCode`` (a combinational signal) of the first failing check among the
        contract's items from ``start`` (a tensor field: from it; a ``Data`` check: the
        items after it; None: from the first, the decoder's enum check included) up to
        ``stop`` (excluded; None: to the end); NONE if every one passes. A ``Data`` check
        inside the range must be one of the engine's ``GOLDEN_ONLY``."""
        i, j = self._index(start, True), self._index(stop, False)
        conds = list(self.decode) if i == 0 else []
        for item, c in zip(self.items[i:j], self.conds[i:j], strict=False):
            if isinstance(item, isa.Data):
                assert item.name in self.golden_only, (
                    f"{self.op.name}: the engine must make data check {item.name!r} itself"
                )
            conds += c
        err = Signal(
            ErrorCode, name=name or f"err_{start or 'first'}_{stop or 'last'}".replace(" ", "_")
        )
        v = Const(ErrorCode.NONE.value, 8)
        for cond, code in reversed(conds):
            v = Mux(cond, code, v)
        if self.pipelined:  # a register: valid from the cycle ArgChecks.latency says
            self.m.d.sync += err.eq(v)
        else:
            self.m.d.comb += err.eq(v)
        return err

    def error_reg(self, start: str | None = None, stop: str | None = None) -> Signal:
        """:meth:`error` registered (free running: with ``registered=3`` valid from the
        fourth cycle after ``start``)."""
        name = f"err_{start or 'first'}_{stop or 'last'}_r".replace(" ", "_")
        err = self.error(start, stop)
        r = Signal(ErrorCode, name=name)
        self.m.d.sync += r.eq(err)
        return r


class Engine(wiring.Component):
    """Base of the op engines (see the module docstring): ``OPCODE``, ``LIMITS``,
    ``GOLDEN_ONLY``; ``op_args``, ``checks``, ``check_states``, ``finish``."""

    OPCODE: Opcode
    LIMITS: tuple[str, ...] = ()
    GOLDEN_ONLY: tuple[str, ...] = ()

    def __init__(self, cfg, dma_bytes: int):
        self.cfg = cfg
        super().__init__(EngineSignature(dma_bytes))

    @classmethod
    def for_design(cls, dp):
        """The engine of design point ``dp`` (``golden.config.AccelConfig``): its datapath,
        DMA width, and the limits and widths it names for this engine."""
        return cls(dp.datapath, dp.dma_bytes, **cls.design_params(dp))

    # The constructor's keyword arguments that are design point fields: {argument: field of
    # golden.config.AccelConfig}. An engine whose arguments are computed from the design
    # point overrides design_params instead.
    DESIGN_FIELDS: dict[str, str] = {}

    @classmethod
    def design_params(cls, dp) -> dict:
        """The constructor's keyword arguments that come from the design point."""
        return {arg: getattr(dp, field) for arg, field in cls.DESIGN_FIELDS.items()}

    @property
    def op_args(self):
        """The engine's member of ``args``: a View of ``golden.isa.ARGS[OPCODE]``."""
        return getattr(self.args, isa.op_name(self.OPCODE))

    def checks(
        self,
        m: Module,
        *,
        registered: bool | int | str = False,
        pipelined: bool = False,
        rule_values: dict | None = None,
    ) -> ArgChecks:
        return ArgChecks(
            self, m, registered=registered, pipelined=pipelined, rule_values=rule_values
        )

    def read(self, m: Module, addr, length):
        """Request a read of ``length`` bytes at ``addr`` in this cycle; returns the
        handshake (1 in the cycle the read is issued)."""
        m.d.comb += [
            self.rd.valid.eq(1),
            self.rd.payload.addr.eq(addr),
            self.rd.payload.len.eq(length),
        ]
        return self.rd.ready

    def finish(self, m: Module, code) -> None:
        """In a state of the engine's FSM: the command ends in this cycle with ``code``
        (``done``, ``error``); the FSM goes back to IDLE."""
        m.d.comb += [self.done.eq(1), self.error.eq(code)]
        m.next = "IDLE"

    def check_states(self, m: Module, *steps, then: str = "RUN", idle: bool = True) -> dict:
        """In the engine's FSM: IDLE (``start`` goes to the first step; ``idle=False``: no
        IDLE) and one state per step ``(name, err)``, in order. A step finishes the command
        with ``err`` unless it is NONE (``err`` None: a state without a check), else goes to
        the next step, the last one to ``then``. Returns {name: a signal that is 1 in the
        cycle the step passes} (where the engine loads what it runs with)."""
        if idle:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = steps[0][0]
        passed = {}
        for (name, err), nxt in zip(steps, [s[0] for s in steps[1:]] + [then], strict=False):
            ok = passed[name] = Signal(name=f"{name.lower()}_passed")
            with m.State(name):
                if err is None:
                    m.d.comb += ok.eq(1)
                    m.next = nxt
                    continue
                with m.If(err != ErrorCode.NONE):
                    self.finish(m, err)
                with m.Else():
                    m.d.comb += ok.eq(1)
                    m.next = nxt
        return passed

    def rows_fsm(self, m: Module, err, running, out_rows) -> Signal:
        """The whole FSM of a row-streaming engine (ACT, RESIDUAL): IDLE, the contract's
        SPAN / SPAN2 / COND walk and CHECK (``err``), then RUN (``running`` 1) until the
        last output row (``out_rows``, an ``elem.Rows``) is written. Returns the signal
        that is 1 in the cycle CHECK passes (where the engine loads its walkers)."""
        with m.FSM():
            passed = self.check_states(
                m, ("SPAN", None), ("SPAN2", None), ("COND", None), ("CHECK", err)
            )
            with m.State("RUN"):
                m.d.comb += running.eq(1)
                with m.If(~out_rows.more & ~self.wr.valid):
                    self.finish(m, ErrorCode.NONE)
        return passed["CHECK"]


# ------------------------------------------------------------------ integer helpers
def normalize(m: Module, p, shift, bits: int, name: str):
    """``golden.model._normalize`` in combinational logic: the unsigned value p as a
    ``bits``-bit mantissa (round half up; carry renormalizes) and the shift
    ``shift - r``; p = 0 gives (0, 0). Returns (mant, shift) Signals; shift is signed, two
    bits wider than the wider of ``shift`` and ``isa.SCALE_SHIFT_BITS`` (the caller checks
    the record range)."""
    pw = len(p)
    bl = bit_length(m, p, f"{name}_bl")
    r = Signal(signed(max(pw, bits).bit_length() + 2), name=f"{name}_r")
    m.d.comb += r.eq(bl - bits)
    # right shift by r > 0 with rounding, or left shift by -r (exact; p < 2^(bits-1) then)
    rs = Signal(range(pw + 1), name=f"{name}_rs")
    ls = Signal(range(bits + 1), name=f"{name}_ls")
    m.d.comb += [rs.eq(Mux(r > 0, r, 0)), ls.eq(Mux(r < 0, -r, 0))]
    wide = Signal(unsigned(pw + 2), name=f"{name}_wide")
    m.d.comb += wide.eq(Mux(r > 0, (p + ((Const(1, pw + 2) << rs) >> 1)) >> rs, p << ls))
    carry = wide[bits]
    mant = Signal(unsigned(bits), name=f"{name}_mant")
    shift = shift if hasattr(shift, "shape") else Const(shift)
    sh = Signal(signed(max(len(shift), isa.SCALE_SHIFT_BITS) + 2), name=f"{name}_shift")
    with m.If(p == 0):
        m.d.comb += [mant.eq(0), sh.eq(0)]
    with m.Else():
        m.d.comb += [mant.eq(Mux(carry, wide >> 1, wide)), sh.eq(shift - r - carry)]
    return mant, sh


def scale_mul(m: Module, a_mant, a_shift, b_mant, b_shift, bits: int, name: str):
    """``golden.model.scale_mul`` (any mantissas, normalized or not): (mant, shift)."""
    p = Signal(unsigned(2 * bits), name=f"{name}_p")
    m.d.comb += p.eq(a_mant * b_mant)
    return normalize(m, p, a_shift + b_shift, bits, name)


def scale_of_int(m: Module, v, bits: int, name: str):
    """``golden.model.scale_of_int`` of an unsigned value: (mant, shift)."""
    return normalize(m, v, Const(0, signed(2)), bits, name)


def shift_fits_record(shift):
    """The shift fits the scale record's signed ``SCALE_SHIFT_BITS`` (else SCALE_RANGE)."""
    lo, hi = -(1 << (isa.SCALE_SHIFT_BITS - 1)), (1 << (isa.SCALE_SHIFT_BITS - 1)) - 1
    return (shift >= lo) & (shift <= hi)


def requant(m: Module, acc, mant, s, out_bits: int, shift_max: int, name: str) -> Signal:
    """``golden.model.requant`` with s = shift - frac_bits (signed), combinational:
    s >= 0: ``sat((acc*mant + 2^(s-1)) >> s)`` (no constant for s = 0; s above shift_max
    acts as shift_max); s < 0: ``sat(clip(acc*mant, +-2^31) << min(-s, 31))``."""
    pw = len(acc) + len(mant) + 1
    p = Signal(signed(pw), name=f"{name}_p")
    m.d.comb += p.eq(acc.as_signed() * Cat(mant, Const(0, 1)).as_signed())
    # right: shifts at or beyond pw give 0 (|p| < 2^(pw-1)), so clamp there
    s_max = min(shift_max, pw)
    sr = Signal(range(s_max + 1), name=f"{name}_sr")
    m.d.comb += sr.eq(Mux(s <= 0, 0, Mux(s > s_max, s_max, s)))
    rnd = Signal(signed(pw + 1), name=f"{name}_rnd")
    m.d.comb += rnd.eq(p + ((Const(1, pw + 2) << sr) >> 1))
    right = Signal(signed(pw + 1), name=f"{name}_right")
    m.d.comb += right.eq(rnd >> sr)
    # left: pre-clip to +-2^31 and the shift to 31 (anything beyond saturates anyway)
    ls = Signal(range(32), name=f"{name}_ls")
    m.d.comb += ls.eq(Mux(s >= 0, 0, Mux(-s > 31, 31, -s)))
    v = Signal(signed(33), name=f"{name}_v")
    m.d.comb += v.eq(Mux(p > (1 << 31), 1 << 31, Mux(p < -(1 << 31), -(1 << 31), p)))
    left = Signal(signed(33 + 31), name=f"{name}_left")
    m.d.comb += left.eq(v << ls)
    return saturate(m, Mux(s < 0, left, right), out_bits, name)
