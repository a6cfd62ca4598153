"""Multiply-accumulate lanes for a DSP48E2, with one behaviour and two elaborations.

Yosys (0.70) maps a multiplier to an UltraScale+ DSP48E2 but packs none of the registers
around it and none of the adders after it into the DSP (its ``xilinx_dsp`` pattern knows
the 7-series DSP48E1 only): an accumulator written as ``acc += a * b`` costs a fabric
adder per lane, where Vivado would use the DSP's own post-adder and P register. The
engines that accumulate many lanes (``hw.ops.pv``) build each lane with ``mac``:

* elaborated for ``XILINX`` (``hw.synth``'s UltraScale+ runs pass it as the platform):
  a ``DSP48E2`` instance with its A, B, M and P registers (AREG = 1, BREG = 1 or 2,
  MREG = 1, PREG = 1), the post-adder accumulating into P (OPMODE Z = P, or 0 for a
  restart) and its pattern detector telling whether P fits ``range_bits`` signed bits;
* elaborated for anything else (the simulators, ECP5): the same registers and the same
  arithmetic in plain Amaranth.

``mac_slots``: the same lane for ``slots`` accumulators interleaved one operation a cycle
(``hw.ops.pv``'s blocks of held queries): the post-adder adds M to 0, to P (one slot) or
to C, fed from a ring of ``slots - 1`` acc_bits-wide shift registers behind P with a tap
(``tap`` = slots - 2: the slot whose turn comes next); P and the ring move only in the
cycles ``ce`` says (an operation in M, or a rotation that brings the next slot's
accumulator back into P with M = 0). For ``XILINX`` the ring is SRL16E shift registers
(one LUT per bit, the tap their address); else flip-flops and a multiplexer.

``dot2`` (``hw.ops.qk``'s dot products, in pairs) likewise: two DSP48E2 in cascade, the
second adding the first's P to its product.

``mac`` follows this cycle behaviour (``a``, ``b``, ``first`` presented in cycle c; with
``b_lead`` = 1, ``b`` one cycle earlier, in c - 1)::

    c + 1:  A = a, B = b                    (input registers)
    c + 2:  M = A * B                       (multiplier register)
    c + 3:  P = (first ? 0 : P) + M         (48-bit accumulator, wraps)
            in_range = P[range_bits-1 :] all 0 or all 1   (P fits signed range_bits)

A cycle whose ``a`` is 0 adds 0. The registers have no reset (a DSP's need none: a lane
restarts with ``first``).
"""

from __future__ import annotations

from amaranth import Array, C, Cat, ClockSignal, Const, Module, Mux, Signal, signed
from amaranth.hdl import Instance

A_BITS = 27  # the multiplier's A input (signed)
B_BITS = 18  # its B input (signed)
P_BITS = 48


# The DSP48E2 inputs tied to 0 where an instance does not drive them (in port order).
_UNUSED_INPUTS = (
    ("C", P_BITS),
    ("D", 27),
    ("INMODE", 5),
    ("ALUMODE", 4),
    ("CARRYINSEL", 3),
    ("CARRYIN", 1),
    ("ACIN", 30),
    ("BCIN", 18),
    ("PCIN", P_BITS),
    ("CARRYCASCIN", 1),
    ("MULTSIGNIN", 1),
    ("CEC", 1),
    ("CED", 1),
    ("CEAD", 1),
    ("CECTRL", 1),
    ("CEALUMODE", 1),
    ("CEINMODE", 1),
    ("CECARRYIN", 1),
    ("RSTA", 1),
    ("RSTB", 1),
    ("RSTC", 1),
    ("RSTD", 1),
    ("RSTM", 1),
    ("RSTP", 1),
    ("RSTCTRL", 1),
    ("RSTALLCARRYIN", 1),
    ("RSTALUMODE", 1),
    ("RSTINMODE", 1),
)


def _dsp48e2(*, areg: int, breg: int, a, b, opmode, p, pattern: dict, ports: dict, ce, cep=None):
    """A DSP48E2 instance as both elaborations use it: A * B into the post-adder (OPMODE
    picks Z), no pre-adder or D, C unregistered (CREG = 0) where ``ports`` drives it; A, B,
    M and P registers (AREG/BREG 1 or 2) all enabled by ``ce`` (P by ``cep`` if given);
    ``pattern`` the pattern-detector parameters, ``ports`` the other ports (every other
    input tied to 0). The argument order is the Verilog's."""
    driven = {name[2:] for name in ports if name.startswith("i_")}
    return Instance(
        "DSP48E2",
        p_A_INPUT="DIRECT",
        p_B_INPUT="DIRECT",
        p_AMULTSEL="A",
        p_BMULTSEL="B",
        p_PREADDINSEL="A",
        p_USE_MULT="MULTIPLY",
        p_USE_SIMD="ONE48",
        p_AREG=areg,
        p_ACASCREG=areg,
        p_BREG=breg,
        p_BCASCREG=breg,
        p_CREG=0,
        p_DREG=0,
        p_ADREG=0,
        p_MREG=1,
        p_PREG=1,
        p_OPMODEREG=0,
        p_ALUMODEREG=0,
        p_INMODEREG=0,
        p_CARRYINREG=0,
        p_CARRYINSELREG=0,
        **pattern,
        i_CLK=ClockSignal(),
        i_A=a,
        i_B=b,
        i_OPMODE=opmode,
        o_P=p,
        **ports,
        **{f"i_{port}": C(0, width) for port, width in _UNUSED_INPUTS if port not in driven},
        **{f"i_{port}": ce for port in ("CEA1", "CEA2", "CEB1", "CEB2", "CEM")},
        i_CEP=ce if cep is None else cep,
    )


class DSP48E2Target:
    """The platform ``hw.synth`` elaborates UltraScale+ designs with: engines build their
    multiply-accumulate lanes as DSP48E2 instances (``targets_dsp48e2``)."""

    dsp48e2 = True

    def __repr__(self) -> str:
        return "XILINX"


XILINX = DSP48E2Target()


def targets_dsp48e2(platform) -> bool:
    return bool(getattr(platform, "dsp48e2", False))


def _range_pattern(range_bits: int) -> dict:
    """The pattern detector's setting for "P fits ``range_bits`` signed bits": P's bits from
    range_bits - 1 up all 0 (PATTERNDETECT) or all 1 (PATTERNBDETECT)."""
    return dict(
        p_USE_PATTERN_DETECT="PATDET",
        p_SEL_PATTERN="PATTERN",
        p_PATTERN=Const(0, P_BITS),
        p_SEL_MASK="MASK",
        p_MASK=Const((1 << (range_bits - 1)) - 1, P_BITS),  # 1: bit ignored
        p_AUTORESET_PATDET="NO_RESET",
    )


def _b_regs(m: Module, name: str, b, b_lead: int) -> list:
    """b and its 1 + b_lead B registers in plain Amaranth (no reset, as the DSP's)."""
    bs = [b]
    for i in range(1 + b_lead):
        r = Signal(signed(B_BITS), name=f"{name}_b{i + 1}", reset_less=True)
        m.d.sync += r.eq(bs[-1])
        bs.append(r)
    return bs


def mac(m: Module, platform, name: str, a, b, first, *, range_bits: int = 32, b_lead: int = 0):
    """One multiply-accumulate lane (module docstring): returns (p, in_range) with p the
    signed 48-bit P register and in_range its pattern-detector verdict."""
    assert len(a) <= A_BITS and len(b) <= B_BITS and b_lead in (0, 1)
    assert 1 <= range_bits < P_BITS
    f1 = Signal(name=f"{name}_first1")
    f2 = Signal(name=f"{name}_first2")  # `first` when its product is in M
    m.d.sync += [f1.eq(first), f2.eq(f1)]
    in_range = Signal(name=f"{name}_in_range")
    if targets_dsp48e2(platform):
        p = Signal(signed(P_BITS), name=f"{name}_p")
        pd, pbd = Signal(name=f"{name}_pd"), Signal(name=f"{name}_pbd")
        ax = Signal(signed(30), name=f"{name}_ax")  # the A port (the multiplier takes 27)
        bx = Signal(signed(B_BITS), name=f"{name}_bx")
        m.d.comb += [ax.eq(a), bx.eq(b)]  # extended as a and b are signed or not
        breg = 1 + b_lead
        # OPMODE = W(2) Z(3) Y(2) X(2): X = Y = 01 (the multiplier), Z = 010 (P) or 000
        opmode = Cat(C(0b0101, 4), Mux(f2, C(0b000, 3), C(0b010, 3)), C(0, 2))
        m.submodules[name] = _dsp48e2(
            areg=1,
            breg=breg,
            a=ax,
            b=bx,
            opmode=opmode,
            p=p,
            pattern=_range_pattern(range_bits),
            ports={"o_PATTERNDETECT": pd, "o_PATTERNBDETECT": pbd},
            ce=C(1, 1),
        )
        m.d.comb += in_range.eq(pd | pbd)
        return p, in_range
    # the same registers in plain Amaranth (no reset, as the DSP's)
    bs = _b_regs(m, name, b, b_lead)
    ar = Signal(signed(A_BITS), name=f"{name}_a1", reset_less=True)
    mr = Signal(signed(P_BITS), name=f"{name}_m", reset_less=True)
    p = Signal(signed(P_BITS), name=f"{name}_p", reset_less=True)
    m.d.sync += [ar.eq(a), mr.eq(ar * bs[-1]), p.eq(Mux(f2, 0, p) + mr)]
    top = p[range_bits - 1 :]
    m.d.comb += in_range.eq((top == 0) | (top == (1 << len(top)) - 1))
    return p, in_range


def mac_slots(
    m: Module, platform, name: str, a, b, *, ce, zsel, tap, slots: int, acc_bits: int,
    range_bits: int = 32, b_lead: int = 0,
):  # fmt: skip
    """A lane of ``slots`` interleaved accumulators (module docstring). ``a`` and ``b``
    as in ``mac``; the controls belong to the cycle M holds the product of the ``a`` two
    cycles earlier: ``ce`` (P and the ring move), ``zsel`` (0: P = M, 1: P += M, 2: P = C +
    M with C = ring[tap], ring[0] the last P replaced). Every accumulator must fit
    ``acc_bits`` signed bits (the ring's width). Returns (p, in_range) as ``mac``."""
    assert len(a) <= A_BITS and len(b) <= B_BITS and b_lead in (0, 1)
    assert 2 <= slots <= 17 and acc_bits <= P_BITS and 1 <= range_bits < P_BITS
    depth = slots - 1
    in_range = Signal(name=f"{name}_in_range")
    p = Signal(signed(P_BITS), name=f"{name}_p", reset_less=True)
    cval = Signal(signed(acc_bits), name=f"{name}_c")
    if targets_dsp48e2(platform):
        tap4 = Signal(4, name=f"{name}_tap")
        m.d.comb += tap4.eq(tap)
        for i in range(acc_bits):  # SRL16E: Q = the bit shifted in A + 1 shifts ago
            m.submodules[f"{name}_srl{i}"] = Instance(
                "SRL16E",
                p_INIT=C(0, 16),
                i_CLK=ClockSignal(),
                i_CE=ce,
                i_D=p[i],
                **{f"i_A{k}": tap4[k] for k in range(4)},
                o_Q=cval[i],
            )
        pd, pbd = Signal(name=f"{name}_pd"), Signal(name=f"{name}_pbd")
        ax = Signal(signed(30), name=f"{name}_ax")
        bx = Signal(signed(B_BITS), name=f"{name}_bx")
        cx = Signal(signed(P_BITS), name=f"{name}_cx")
        m.d.comb += [ax.eq(a), bx.eq(b), cx.eq(cval)]
        # OPMODE Z: 000 (0), 010 (P), 011 (C); X = Y = 01 (the multiplier)
        zbits = Mux(zsel == 0, C(0b000, 3), Mux(zsel == 1, C(0b010, 3), C(0b011, 3)))
        m.submodules[name] = _dsp48e2(
            areg=1,
            breg=1 + b_lead,
            a=ax,
            b=bx,
            opmode=Cat(C(0b0101, 4), zbits, C(0, 2)),
            p=p,
            pattern=_range_pattern(range_bits),
            ports={"o_PATTERNDETECT": pd, "o_PATTERNBDETECT": pbd, "i_C": cx},
            ce=C(1, 1),
            cep=ce,
        )
        m.d.comb += in_range.eq(pd | pbd)
        return p, in_range
    bs = _b_regs(m, name, b, b_lead)
    ar = Signal(signed(A_BITS), name=f"{name}_a1", reset_less=True)
    mr = Signal(signed(P_BITS), name=f"{name}_m", reset_less=True)
    ring = [Signal(signed(acc_bits), name=f"{name}_r{i}", reset_less=True) for i in range(depth)]
    m.d.comb += cval.eq(Array(ring)[tap])
    m.d.sync += [ar.eq(a), mr.eq(ar * bs[-1])]
    with m.If(ce):
        z = Mux(zsel == 0, 0, Mux(zsel == 1, p, cval))
        m.d.sync += [p.eq(z + mr), ring[0].eq(p[:acc_bits])]
        m.d.sync += [ring[i].eq(ring[i - 1]) for i in range(1, depth)]
    top = p[range_bits - 1 :]
    m.d.comb += in_range.eq((top == 0) | (top == (1 << len(top)) - 1))
    return p, in_range


def dot2(m: Module, platform, name: str, a0, b0, a1, b1, ce=C(1, 1)):
    """``a0*b0 + a1*b1`` of signed a (<= 27 bits) and b (<= 18 bits), four enabled cycles
    after the inputs: two DSP48E2, the second adding the first's P through the cascade
    (PCOUT -> PCIN) and taking its inputs through two registers (AREG = BREG = 2) so that
    both products are of the same cycle. ``ce`` enables every register (a stalled
    pipeline holds). Returns the signed 48-bit P of the second."""
    for v, w in ((a0, A_BITS), (a1, A_BITS), (b0, B_BITS), (b1, B_BITS)):
        assert len(v) <= w
    if targets_dsp48e2(platform):
        p = Signal(signed(P_BITS), name=f"{name}_p")
        casc = Signal(P_BITS, name=f"{name}_casc")
        for k, (a, b, reg, z) in enumerate(((a0, b0, 1, 0b000), (a1, b1, 2, 0b001))):
            ax = Signal(signed(30), name=f"{name}_ax{k}")
            bx = Signal(signed(B_BITS), name=f"{name}_bx{k}")
            m.d.comb += [ax.eq(a), bx.eq(b)]
            ports = {"i_PCIN": C(0, P_BITS), "o_PCOUT": casc} if k == 0 else {"i_PCIN": casc}
            m.submodules[f"{name}_{k}"] = _dsp48e2(
                areg=reg,
                breg=reg,
                a=ax,
                b=bx,
                # OPMODE = W(2) Z(3) Y(2) X(2): X = Y = 01 (the multiplier); Z = 0 / PCIN
                opmode=C((z << 4) | 0b0101, 9),
                p=p if k == 1 else Signal(P_BITS, name=f"{name}_p0"),
                pattern=dict(p_USE_PATTERN_DETECT="NO_PATDET"),
                ports=ports,
                ce=ce,
            )
        return p

    # the same registers in plain Amaranth (no reset, as the DSP's)
    def regs(v, n, tag):
        out = v
        for i in range(n):
            r = Signal(
                signed(A_BITS if tag[0] == "a" else B_BITS),
                name=f"{name}_{tag}{i}",
                reset_less=True,
            )
            with m.If(ce):
                m.d.sync += r.eq(out)
            out = r
        return out

    ar0, br0 = regs(a0, 1, "a0_"), regs(b0, 1, "b0_")
    ar1, br1 = regs(a1, 2, "a1_"), regs(b1, 2, "b1_")
    m0 = Signal(signed(P_BITS), name=f"{name}_m0", reset_less=True)
    p0 = Signal(signed(P_BITS), name=f"{name}_p0", reset_less=True)
    m1 = Signal(signed(P_BITS), name=f"{name}_m1", reset_less=True)
    p = Signal(signed(P_BITS), name=f"{name}_p", reset_less=True)
    with m.If(ce):
        m.d.sync += [m0.eq(ar0 * br0), p0.eq(m0), m1.eq(ar1 * br1), p.eq(p0 + m1)]
    return p
