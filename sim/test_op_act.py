"""ACT engine (hw/ops/act.py) == the golden executor's ACT, bit for bit, in
Amaranth's simulator (sim/op_bench.check_op: random memory stalls and read latency).

Random shapes (dims across partial chunks and partial amax beats), both kinds, stall
levels 0 / 0.3 / 0.6, several lane counts (pass-2 lanes and amax lanes); numeric corners
(int32 extremes, zero rows, zero / unnormalized / extreme-shift scales that drive the
final requant far beyond both of its ends); every argument error in the contract's check
order; the engine's own limits (dim > max_dim, an invalid kind) against a direct
testbench; the no-stall cycle count against ``hw.ops.act.expected_cycles``. The ALIGN /
ADDR_RANGE cases come from the contract (``sim/op_bench.arg_error_cases``).
"""

from __future__ import annotations

import numpy as np
import pytest

from golden import isa
from golden.config import DEFAULT, ADCDeviceConfig, design_point
from golden.isa import ActKind, ErrorCode, Opcode
from golden.nl_adc import ActADC
from host.backends.golden import GoldenDevice
from host.device import DeviceError
from hw.ops.act import ActEngine, expected_cycles
from sim.op_bench import Job, check_arg_errors, check_op, put, run_engine

DP = design_point("kv260")
W = DP.dma_bytes
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
MANT_LO, MANT_HI = 1 << (DEFAULT.requant.mult_bits - 1), 1 << DEFAULT.requant.mult_bits
SH_MIN, SH_MAX = -(1 << (isa.SCALE_SHIFT_BITS - 1)), (1 << (isa.SCALE_SHIFT_BITS - 1)) - 1
KINDS = (ActKind.RELU2, ActKind.SILU)


def _bits(row: np.ndarray) -> int:
    return int(np.max(np.abs(row.astype(np.int64)))).bit_length()


def accumulators(
    rng, rows: int, dim: int, bits=None, extreme=None, first_plain: bool = False
) -> np.ndarray:
    """TLMM-like int32 rows, row r of magnitude < 2^bits[r]; zero rows (p 0.1) and, in
    the rows ``extreme`` marks, one int32 extreme (random choices when not given);
    ``first_plain``: row 0 is never a zero row."""
    if bits is None:
        bits = rng.integers(1, 32, size=rows)
    if extreme is None:
        extreme = rng.random(rows) < 0.2
    out = np.zeros((rows, dim), dtype=np.int64)
    for r in range(rows):
        if rng.random() < 0.1 and not (first_plain and r == 0):
            continue  # an all-zero row
        lim = (1 << int(bits[r])) - 1
        out[r] = rng.integers(-lim, lim + 1, size=dim)
        if extreme[r]:
            out[r, rng.integers(0, dim)] = I32_MIN if rng.random() < 0.5 else I32_MAX
    return out.astype(np.int32)


def gate_up(rng, rows: int, dim: int):
    """gate and up of one token come from the same x_q: similar magnitudes per row. Row 0
    is plain (no zero row, no extreme), so every command has meaningful outputs."""
    bits = rng.integers(1, 32, size=rows)
    extreme = rng.random(rows) < 0.2
    extreme[0] = False
    gate = accumulators(rng, rows, dim, bits, extreme, True)
    gate[0, 0] = max(abs(int(gate[0, 0])), 1)  # relu2 has a positive value too
    return gate, accumulators(
        rng, rows, dim, np.clip(bits + rng.integers(-2, 3, size=rows), 1, 31), extreme, True
    )


def scales_for(rng, gate, up, kind):
    """sx records and constants that put most outputs inside int32 Q15.16: the gate's
    real max (or the SiLU input's, in Q7.8 units) near 2^x, x random per row, up's near
    2^1; some rows after the first get a zero or an unnormalized sx instead."""
    rows = gate.shape[0]
    lo, hi = (-3, 4) if kind == ActKind.RELU2 else (-2, 7)
    cg_m, cu_m = (int(v) for v in rng.integers(MANT_LO, MANT_HI, size=2))
    cg_s = int(rng.integers(4, 24))
    mant = rng.integers(MANT_LO, MANT_HI, size=rows)
    # tok * c ~ 2^(31 - sx_shift - c_shift)
    shift = np.array(
        [_bits(gate[r]) + 31 - int(rng.integers(lo, hi + 1)) - cg_s for r in range(rows)]
    )
    cu_s = _bits(up[0]) + 30 - int(shift[0])  # row 0 is plain (gate_up)
    # a 16-bit quantized operand's constant carries 1/A16 (golden.model: c = s_w / A16)
    a16 = DEFAULT.forward.ffn_bits - 1
    cu_s += a16
    if kind == ActKind.RELU2:
        cg_s += a16
    for r in range(1, rows):
        odd = rng.random()
        if odd < 0.08:
            mant[r], shift[r] = 0, 0  # zero scale
        elif odd < 0.16:
            mant[r] = rng.integers(1, MANT_LO)  # unnormalized mantissa
    shift = np.clip(shift, SH_MIN, SH_MAX)
    return isa.pack_scales(mant, shift), (cg_m, cg_s), (cu_m, int(np.clip(cu_s, SH_MIN, SH_MAX)))


def act_command(gd, gate, up, sx_rec, c_g, c_u, kind, **override):
    rows, dim = gate.shape
    fields = dict(
        gate=put(gd, gate),
        up=put(gd, up),
        src_scale=put(gd, sx_rec),
        dst=put(gd, np.full((rows, dim), 0x5A5A5A5A, dtype=np.int32)),
        rows=rows,
        dim=dim,
        g_mant=c_g[0],
        g_shift=c_g[1],
        u_mant=c_u[0],
        u_shift=c_u[1],
        kind=kind,
        adc_table=0,
        adc_bits=0,
    )
    fields.update(override)
    return isa.command(Opcode.ACT, **fields)


def golden_out(gd, cmd) -> np.ndarray:
    return np.frombuffer(gd.read(cmd.dst, cmd.rows * cmd.dim * 4), dtype="<i4")


def engine(lanes: int = DP.act_lanes, amax_lanes: int = DP.act_amax_lanes, max_dim=DP.max_dim):
    return ActEngine(DEFAULT, W, lanes=lanes, amax_lanes=amax_lanes, max_dim=max_dim)


# (stall, lanes, amax_lanes, max_latency): no stalls at the design point's lanes with
# latency 1 (the cycle formula's conditions), heavier stalls at other widths
STALLS = (
    (0.0, DP.act_lanes, DP.act_amax_lanes, 1),
    (0.3, 2, 8, 6),
    (0.6, 3, 2, 6),
    (0.3, 1, 1, 6),
)


def run_checked(rng, gd, cmd, rows, dim, lanes, amax_lanes, stall, latency, want_cycles):
    """The command on the engine against the golden executor (``check_op``): no error, every
    output written, row 0 neither all 0 nor saturated (the scales keep the test meaningful),
    and without stalls exactly ``want_cycles``."""
    res = check_op(
        engine(lanes, amax_lanes),
        gd,
        cmd,
        seed=int(rng.integers(1 << 30)),
        stall=stall,
        max_latency=latency,
    )
    assert res["error"] == ErrorCode.NONE and res["bytes_written"] == rows * dim * 4
    row0 = golden_out(gd, cmd)[:dim]
    assert np.any((row0 != 0) & (row0 != I32_MAX) & (row0 != I32_MIN)), row0
    if stall == 0.0:
        assert res["cycles"] == want_cycles, (res["cycles"], want_cycles)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize(
    "stall,lanes,amax_lanes,latency", STALLS, ids=[f"stall{s}_l{n}" for s, n, _, _ in STALLS]
)
def test_random(rng, kind, stall, lanes, amax_lanes, latency):
    rows, dim = int(rng.integers(1, 4)), int(rng.integers(1, 71))
    gate, up = gate_up(rng, rows, dim)
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    cmd = act_command(gd, gate, up, *scales_for(rng, gate, up, kind), kind)
    want = expected_cycles(rows, dim, kind, lanes, amax_lanes)
    run_checked(rng, gd, cmd, rows, dim, lanes, amax_lanes, stall, latency, want)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_cycles(rng, kind):
    """No stalls, 1-cycle memory: the module docstring's formula, exactly, for one-chunk,
    partial-chunk and multi-row commands at several widths (zero rows included: the
    reciprocal takes the same time)."""
    for lanes, amax_lanes, rows, dim in (
        (DP.act_lanes, DP.act_amax_lanes, 1, 1),
        (DP.act_lanes, DP.act_amax_lanes, 2, 2 * DP.act_lanes),
        (DP.act_lanes, DP.act_amax_lanes, 3, 2 * DP.act_lanes + 1),
        (DP.act_lanes, DP.act_amax_lanes, 1, 3 * DP.act_amax_lanes + 5),
        (2, 8, 2, 19),
        (1, 2, 1, 5),
    ):
        gate, up = gate_up(rng, rows, dim)
        if rows > 1:  # an all-zero last row (amax 0: the same cycles)
            gate[-1], up[-1] = 0, 0
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cmd = act_command(gd, gate, up, *scales_for(rng, gate, up, kind), kind)
        res = check_op(engine(lanes, amax_lanes), gd, cmd, seed=1, stall=0.0, max_latency=1)
        assert res["error"] == ErrorCode.NONE
        want = expected_cycles(rows, dim, kind, lanes, amax_lanes)
        assert res["cycles"] == want, (lanes, amax_lanes, rows, dim, res["cycles"], want)


# corner scales: (sx mant, sx shift) per row, constants (c_g, c_u)
CORNERS = {
    "tiny": ((MANT_HI - 1, SH_MAX), (1, SH_MAX), (MANT_HI - 1, SH_MAX)),
    "huge": ((MANT_HI - 1, SH_MIN), (MANT_HI - 1, SH_MIN), (MANT_HI - 1, SH_MIN)),
    "mixed": ((MANT_LO, SH_MAX), (MANT_HI - 1, SH_MIN), (3, 0)),
}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("corner", list(CORNERS))
def test_corners(rng, kind, corner):
    """int32 extremes, constant and zero rows; shifts at the ends of int16 everywhere, so
    sg^2 * su reaches ~3 * 2^16 (a wrapped shift would flip 0 <-> saturation)."""
    dim = int(rng.integers(17, 50))
    gate = np.stack(
        [
            np.zeros(dim),
            np.full(dim, I32_MIN),
            np.full(dim, I32_MAX),
            rng.choice([I32_MIN, I32_MAX, 0, -1, 1], size=dim),
            rng.integers(I32_MIN, I32_MAX, size=dim, endpoint=True),
        ]
    ).astype(np.int32)
    up = np.stack(
        [
            rng.integers(I32_MIN, I32_MAX, size=dim, endpoint=True),
            rng.choice([I32_MIN, I32_MAX, 0], size=dim),
            np.full(dim, -7),
            np.full(dim, I32_MIN),
            rng.integers(-3, 4, size=dim),
        ]
    ).astype(np.int32)
    (sx_m, sx_s), c_g, c_u = CORNERS[corner]
    rows = gate.shape[0]
    mant = np.full(rows, sx_m)
    shift = np.full(rows, sx_s)
    mant[-1], shift[-1] = 0, 0  # one zero scale
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    cmd = act_command(gd, gate, up, isa.pack_scales(mant, shift), c_g, c_u, kind)
    res = check_op(engine(2, 4), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.3)
    assert res["error"] == ErrorCode.NONE
    out = golden_out(gd, cmd).reshape(rows, dim)
    assert not out[-1].any()  # zero scale -> zero row
    if corner == "tiny":
        assert not out.any()  # shifts far beyond shift_max
    if corner == "huge":
        assert np.all(out[2] == I32_MIN)  # max gate * negative up, left shift


def _error_case(rng, gd, case: str, dim: int = 5, rows: int = 2):
    """A valid command (case "valid"), or one with the dimension error ``case``."""
    gate, up = accumulators(rng, rows, dim), accumulators(rng, rows, dim)
    sx_rec = isa.pack_scales(rng.integers(MANT_LO, MANT_HI, rows), np.full(rows, 40))
    kind = KINDS[int(rng.integers(2))]
    over = {
        "valid": {},
        "rows0": dict(rows=0, dst=1),  # dst misaligned too: BAD_DIM first
        "dim0": dict(dim=0),
    }[case]
    return act_command(gd, gate, up, sx_rec, (MANT_LO, 8), (MANT_LO, 8), kind, **over)


ERRORS = {"rows0": ErrorCode.BAD_DIM, "dim0": ErrorCode.BAD_DIM}


@pytest.mark.parametrize("case", list(ERRORS))
def test_argument_errors(rng, case):
    gd = GoldenDevice(DEFAULT, mem_size=1 << 16)
    cmd = _error_case(rng, gd, case)
    res = check_op(engine(1, 4, max_dim=64), gd, cmd, seed=int(rng.integers(1 << 30)), stall=0.3)
    assert res["error"] == ERRORS[case] and res["bytes_written"] == 0


def test_contract_errors(rng):
    """Every ALIGN / ADDR_RANGE case of the ACT contract, in its order
    (sim/op_bench.arg_error_cases)."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 16)
    check_arg_errors(
        engine(1, 4, max_dim=64),
        gd,
        _error_case(rng, gd, "valid"),
        seed=int(rng.integers(1 << 30)),
    )


def run_raw(engine, args_bits: int, lo: int, hi: int, max_cycles: int = 20) -> ErrorCode:
    """Start the engine on raw argument bits (fields check_op cannot encode) with a memory
    that never stalls (sim/op_bench.run_engine); its error. It must answer within
    ``max_cycles`` without touching memory."""
    (res,) = run_engine(
        engine,
        [Job(args_bits, np.zeros(hi, np.uint8), lo, hi, stall=0.0, max_cycles=max_cycles + 1)],
    )
    assert res["reads"] == 0 and res["writes"] == 0
    return res["error"]


def _args_bits(cmd) -> int:
    return isa.encode_bits(cmd) >> isa.COMMAND["args"].offset


def test_max_dim(rng):
    """dim = max_dim runs bit-exact; dim = max_dim + 1 is the engine's BAD_DIM (golden
    takes it: the documented difference)."""
    max_dim = int(rng.integers(20, 40))
    rows = 2
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    gate, up = gate_up(rng, rows, max_dim + 1)
    kind = KINDS[int(rng.integers(2))]
    sx_rec, c_g, c_u = scales_for(rng, gate, up, kind)
    full = act_command(gd, gate, up, sx_rec, c_g, c_u, kind)
    fits = isa.command(Opcode.ACT, **{**full.args, "dim": max_dim})
    eng = engine(2, 8, max_dim=max_dim)
    assert check_op(eng, gd, fits, seed=3, stall=0.3)["error"] == ErrorCode.NONE
    err = run_raw(engine(2, 8, max_dim=max_dim), _args_bits(full), gd.alloc_base, gd.brk)
    assert err == ErrorCode.BAD_DIM


def test_invalid_kind(rng):
    """kind 5 .. 7 is no ActKind: golden's decoder stops with BAD_OPERAND before any other
    check; so does the engine (here with rows = 0 as well)."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 16)
    gate = accumulators(rng, 1, 4)
    cmd = act_command(
        gd,
        gate,
        gate,
        isa.pack_scales([MANT_LO], [20]),
        (MANT_LO, 8),
        (MANT_LO, 8),
        ActKind.RELU2,
        rows=0,
    )
    bad = int(rng.integers(5, 8))
    off = isa.ARGS[Opcode.ACT]["kind"].offset
    args = _args_bits(cmd) | (bad << off)
    word = isa.encode_bits(cmd) | (bad << (off + isa.COMMAND["args"].offset))
    stream = gd.alloc(2 * isa.COMMAND_BYTES, isa.STREAM_ALIGN)
    gd.write(
        stream, word.to_bytes(isa.COMMAND_BYTES, "little") + isa.encode(isa.command(Opcode.END))
    )
    gd.run(stream, 2)
    with pytest.raises(DeviceError) as info:
        gd.wait(10.0)
    assert info.value.code == ErrorCode.BAD_OPERAND
    assert run_raw(engine(1, 4, max_dim=64), args, gd.alloc_base, gd.brk) == ErrorCode.BAD_OPERAND


# ---------------------------------------------------------------- the NL-ADC kinds
def adc_table(kind, bits: int, device_seed=None) -> np.ndarray:
    """The host's table for an ADC kind (golden.nl_adc.ActADC): ideal, or a sampled
    (calibrated) device."""
    hidden = "silu" if kind == ActKind.SILU_NLADC else "relu2"
    variant = "linear" if kind == ActKind.RELU2_LINADC else "nl"
    dev = None if device_seed is None else ADCDeviceConfig.rram_typical(seed=device_seed)
    return ActADC(variant, bits, dev, calibrate=dev is not None).table(hidden, 0)


def adc_command(rng, gd, kind, bits, rows, dim, device_seed=None):
    base = ActKind.SILU if kind == ActKind.SILU_NLADC else ActKind.RELU2
    gate, up = gate_up(rng, rows, dim)
    tbl = put(gd, adc_table(kind, bits, device_seed))
    return act_command(
        gd, gate, up, *scales_for(rng, gate, up, base), kind, adc_table=tbl, adc_bits=bits
    )


@pytest.mark.parametrize("kind", isa.ADC_KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize(
    "stall,lanes,amax_lanes,latency", STALLS, ids=[f"stall{s}_l{n}" for s, n, _, _ in STALLS]
)
def test_adc_random(rng, kind, stall, lanes, amax_lanes, latency):
    """The NL-ADC kinds == golden under stalls: random N (short ramps keep it fast),
    ideal or sampled-device tables, several lane counts."""
    bits = int(rng.integers(1, 5))
    rows, dim = int(rng.integers(1, 3)), int(rng.integers(1, 40))
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    seed = int(rng.integers(1 << 16)) if rng.random() < 0.5 else None
    cmd = adc_command(rng, gd, kind, bits, rows, dim, seed)
    want = expected_cycles(rows, dim, kind, lanes, amax_lanes, adc_bits=bits)
    run_checked(rng, gd, cmd, rows, dim, lanes, amax_lanes, stall, latency, want)


@pytest.mark.parametrize("kind", isa.ADC_KINDS, ids=lambda k: k.name)
def test_adc_cycles_and_widest(rng, kind):
    """No stalls: the cycle formula at N = 1, 3 and act_max_bits (the whole table RAM,
    the widest codes: RELU2_LINADC's odd squares up to (2^N - 1)^2), == golden."""
    for bits, rows, dim in (
        (1, 2, 9),
        (3, 1, 2 * DP.act_lanes + 1),
        (DEFAULT.adc.act_max_bits, 1, 5),
    ):
        gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
        cmd = adc_command(rng, gd, kind, bits, rows, dim)
        res = check_op(engine(), gd, cmd, seed=2, stall=0.0, max_latency=1)
        assert res["error"] == ErrorCode.NONE
        want = expected_cycles(rows, dim, kind, DP.act_lanes, DP.act_amax_lanes, adc_bits=bits)
        assert res["cycles"] == want, (bits, rows, dim, res["cycles"], want)


@pytest.mark.parametrize("bits", [0, DEFAULT.adc.act_max_bits + 1])
def test_adc_bits_errors(rng, bits):
    """adc_bits outside 1 .. act_max_bits: BAD_DIM (the contract's Dims with adc_kind),
    nothing written; the digital kinds ignore the field."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    cmd = adc_command(rng, gd, ActKind.RELU2_NLADC, 2, 1, 5)
    bad = isa.command(Opcode.ACT, **{**cmd.args, "adc_bits": bits})
    res = check_op(engine(1, 4, max_dim=64), gd, bad, seed=int(rng.integers(1 << 30)), stall=0.3)
    assert res["error"] == ErrorCode.BAD_DIM and res["bytes_written"] == 0
    plain = isa.command(Opcode.ACT, **{**cmd.args, "adc_bits": bits, "kind": ActKind.RELU2})
    res = check_op(engine(1, 4, max_dim=64), gd, plain, seed=1, stall=0.0)
    assert res["error"] == ErrorCode.NONE


def test_adc_contract_errors(rng):
    """Every ALIGN / ADDR_RANGE case of the ACT contract with the table in use (an NL-ADC
    kind: adc_table int16 [2^N - 1] checked between src_scale and dst)."""
    gd = GoldenDevice(DEFAULT, mem_size=1 << 16)
    cmd = adc_command(rng, gd, ActKind.SILU_NLADC, 3, 2, 5)
    check_arg_errors(engine(1, 4, max_dim=64), gd, cmd, seed=int(rng.integers(1 << 30)))
