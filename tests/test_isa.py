"""golden/isa.py: command encoding round trips (host packing == amaranth's layout packing),
field-width errors, memory formats (TLMM tiles, scale records, RoPE table)."""

from dataclasses import replace

import numpy as np
import pytest
from amaranth import Shape

from golden import isa
from golden import tlmm as gtlmm
from golden.config import DEFAULT, TLMMConfig
from golden.isa import ARGS, COMMAND, ActKind, Opcode, command, decode, encode
from hw import csr


def _random_args(op, rng, extreme=None):
    """Random in-range values for every field of op; extreme='lo'/'hi' picks the ends."""
    out = {}
    for name, f in ARGS[op]:
        if isinstance(f.shape, type) and issubclass(f.shape, ActKind):
            out[name] = list(ActKind)[rng.integers(len(ActKind))]
            continue
        s = Shape.cast(f.shape)
        lo = -(1 << (s.width - 1)) if s.signed else 0
        hi = (1 << (s.width - 1)) - 1 if s.signed else (1 << s.width) - 1
        if extreme == "lo":
            out[name] = lo
        elif extreme == "hi":
            out[name] = hi
        else:
            out[name] = (
                int(rng.integers(lo, hi, endpoint=True, dtype=np.int64))
                if s.width < 63
                else int(rng.integers(0, 1 << 62))
            )
    return out


def test_layout_sizes():
    assert COMMAND.size == isa.COMMAND_BITS == 8 * isa.COMMAND_BYTES
    assert COMMAND["opcode"].offset == 0 and COMMAND["opcode"].width == isa.OPCODE_BITS
    for op, lay in ARGS.items():
        assert lay.size <= isa.COMMAND_BITS - isa.OPCODE_BITS, op
    assert isa.SCALE_RECORD.size == 8 * isa.SCALE_RECORD_BYTES
    # every address field is ADDR_BITS wide (the range checker relies on ADDR_FIELDS)
    for op, names in isa.ADDR_FIELDS.items():
        for n in names:
            assert ARGS[op][n].width == isa.ADDR_BITS


@pytest.mark.parametrize("op", list(Opcode))
def test_round_trip_and_amaranth_packing(op, rng):
    for extreme in ("lo", "hi", None, None, None):
        c = command(op, **_random_args(op, rng, extreme))
        word = encode(c)
        assert len(word) == isa.COMMAND_BYTES
        assert decode(word) == c
        # the fast packer and amaranth's own layout packing give the same bits
        assert int.from_bytes(word, "little") == isa.encode_const(c)
        assert isa.decode_const(word) == c
        assert word[0] == op.value  # opcode in bits [7:0]


def test_fields_land_where_the_layout_says(rng):
    c = command(Opcode.TLMM, src=0x11223344, weights=5, dst=6, rows=7, k=8, n=0xBEEF)
    bits = int.from_bytes(encode(c), "little")
    base = COMMAND["args"].offset
    f = ARGS[Opcode.TLMM]["n"]
    assert (bits >> (base + f.offset)) & ((1 << f.width) - 1) == 0xBEEF
    f = ARGS[Opcode.TLMM]["src"]
    assert (bits >> (base + f.offset)) & ((1 << f.width) - 1) == 0x11223344


def test_signed_fields_round_trip():
    io = dict(h=64, acc=128, src_scale=192, dst=64, rows=1, dim=4)
    c = command(Opcode.RESIDUAL, **io, c_mant=(1 << 16) - 1, c_shift=-(1 << 15))
    d = decode(encode(c))
    assert d.c_shift == -(1 << 15) and d.c_mant == (1 << 16) - 1
    assert "RESIDUAL(" in str(d) and "h=0x40" in str(d)


def test_stream_round_trip(rng):
    cmds = [command(op, **_random_args(op, rng)) for op in Opcode]
    assert isa.decode_stream(isa.encode_stream(cmds)) == cmds
    with pytest.raises(ValueError, match="multiple of 64"):
        isa.decode_stream(b"\x00" * 65)


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("k", 1 << 16, r"tlmm\.k: 65536 does not fit unsigned\(16\)"),
        ("n", -1, r"tlmm\.n: -1 does not fit unsigned\(16\)"),
        ("src", 1 << 32, r"tlmm\.src: 4294967296 does not fit unsigned\(32\)"),
        ("rows", 2.5, r"tlmm\.rows: expected an integer, got float"),
    ],
)
def test_field_width_errors(field, value, msg):
    args = dict(src=64, weights=128, dst=256, rows=1, k=3, n=4)
    args[field] = value
    with pytest.raises(ValueError, match=msg):
        command(Opcode.TLMM, **args)


def test_signed_width_error_and_enum_error():
    base = dict(gate=64, up=64, src_scale=64, dst=64, rows=1, dim=1, kind=ActKind.SILU)
    base.update(g_mant=1, g_shift=0, u_mant=1, u_shift=0, adc_table=0, adc_bits=0)
    with pytest.raises(ValueError, match=r"act\.g_shift: 32768 does not fit signed\(16\)"):
        command(Opcode.ACT, **{**base, "g_shift": 1 << 15})
    with pytest.raises(ValueError, match=r"act\.kind: 5 is not a ActKind"):
        command(Opcode.ACT, **{**base, "kind": 5})


def test_missing_and_unknown_fields():
    with pytest.raises(ValueError, match=r"tlmm: missing field\(s\) \['n'\]"):
        command(Opcode.TLMM, src=64, weights=128, dst=256, rows=1, k=3)
    with pytest.raises(ValueError, match=r"tlmm: unknown field\(s\) \['bogus'\]"):
        command(Opcode.TLMM, src=64, weights=128, dst=256, rows=1, k=3, n=4, bogus=1)
    with pytest.raises(ValueError, match="op: 99 is not an Opcode"):
        command(99)


def test_encode_rechecks_hand_built_command():
    bad = isa.Command(Opcode.TLMM, dict(src=64, weights=128, dst=256, rows=1, k=3, n=1 << 20))
    with pytest.raises(ValueError, match=r"tlmm\.n"):
        encode(bad)


def test_unknown_opcode_decode():
    word = bytearray(isa.COMMAND_BYTES)
    with pytest.raises(isa.UnknownOpcode) as ei:
        decode(bytes(word))  # zeroed memory is not a command
    assert ei.value.value == 0
    word[0] = 0xEE
    with pytest.raises(ValueError, match="opcode: 238 is not a known Opcode"):
        decode(bytes(word))
    with pytest.raises(ValueError, match="expected 64 bytes"):
        decode(b"\x02")


def test_status_layout_and_error_codes():
    assert csr.STATUS.size == 16
    assert csr.STATUS["error"].offset == 8
    assert isa.ErrorCode.NONE.value == 0
    assert set(isa.ERROR_TEXT) == set(isa.ErrorCode)
    assert len({r.value for r in csr.CSR}) == len(csr.CSR)


# --------------------------------------------------------------------------- memory formats
TLMM_CFGS = [
    DEFAULT.tlmm,
    replace(DEFAULT.tlmm, table="mirrored"),
    TLMMConfig(group=2, tables=5, replicas=3),
    TLMMConfig(group=4, tables=3, replicas=2),
    TLMMConfig(group=4, tables=2, replicas=1, table="mirrored"),
]


@pytest.mark.parametrize(
    "cfg", TLMM_CFGS, ids=lambda c: f"G{c.group}T{c.tables}Q{c.replicas}{c.table[0]}"
)
def test_tlmm_tiles_round_trip_and_beat_order(cfg, rng):
    for n, k in ((1, 1), (7, 10), (13, 200)):
        w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
        buf = isa.pack_tlmm_weights(w, cfg)
        assert buf.dtype == np.uint8 and buf.size == isa.tlmm_weight_bytes(n, k, cfg)
        assert np.array_equal(isa.unpack_tlmm_weights(buf, n, k, cfg), w)
        # independent check of the beat order the RTL engine consumes:
        # beat (b, c), code q*T + t = code of row b*Q + q, group c*T + t
        codes = gtlmm.join_codes(*gtlmm.encode_weights(w, cfg), cfg).astype(np.int64)
        kc, bb, cb = isa.tlmm_chunks(k, cfg), isa.tlmm_beat_bytes(cfg), cfg.code_bits
        zero = gtlmm.join_codes(*gtlmm.encode_weights(np.zeros((1, cfg.group), np.int8), cfg), cfg)[
            0, 0
        ]
        for _ in range(20):
            b, c = int(rng.integers(isa.tlmm_blocks(n, cfg))), int(rng.integers(kc))
            q, t = int(rng.integers(cfg.replicas)), int(rng.integers(cfg.tables))
            beat = int.from_bytes(
                buf[(b * kc + c) * bb : (b * kc + c + 1) * bb].tobytes(), "little"
            )
            got = (beat >> ((q * cfg.tables + t) * cb)) & ((1 << cb) - 1)
            row, grp = b * cfg.replicas + q, c * cfg.tables + t
            want = codes[row, grp] if row < n and grp < codes.shape[1] else zero
            assert got == want


def test_tlmm_tiles_errors():
    with pytest.raises(ValueError, match="codes: expected a 2-D int8"):
        isa.pack_tlmm_weights(np.zeros((2, 3), np.int16))
    with pytest.raises(ValueError, match="buf: expected"):
        isa.unpack_tlmm_weights(np.zeros(3, np.uint8), 4, 4)
    # a code beyond the table (index 31 of a 27-entry table) is rejected
    bad = np.full(isa.tlmm_weight_bytes(1, 3), 0xFF, np.uint8)
    with pytest.raises(ValueError, match="code"):
        isa.unpack_tlmm_weights(bad, 1, 3)


def test_default_beat_is_70_bytes():
    t = DEFAULT.tlmm
    assert isa.tlmm_beat_bytes(t) * 8 >= t.tables * t.replicas * t.code_bits
    assert isa.tlmm_beat_bytes(t) == 70  # 28 * 4 * 5 bits = 560 bits exactly


def test_scale_records(rng):
    mant = rng.integers(0, 1 << 16, 50)
    shift = rng.integers(-(1 << 15), 1 << 15, 50)
    rec = isa.pack_scales(mant, shift)
    assert rec.shape == (50, 4) and rec.dtype == np.uint8
    # layout: mant u16 in bytes 0-1, shift s16 in bytes 2-3, little-endian
    assert int.from_bytes(rec[3, :2].tobytes(), "little") == mant[3]
    assert int.from_bytes(rec[3, 2:].tobytes(), "little", signed=True) == shift[3]
    m, s = isa.unpack_scales(rec)
    assert np.array_equal(m, mant) and np.array_equal(s, shift)
    with pytest.raises(ValueError, match="shift: values outside"):
        isa.pack_scales([1], [1 << 15])
    with pytest.raises(ValueError, match="mant: values outside"):
        isa.pack_scales([1 << 16], [0])


def test_rope_table_layout():
    from golden.rope import rope_tables

    cos_q, sin_q = rope_tables(8)
    tab = isa.rope_table(cos_q[:5], sin_q[:5])
    assert tab.shape == (5, 8) and tab.dtype == np.int16
    assert np.array_equal(tab[3, :4], cos_q[3]) and np.array_equal(tab[3, 4:], sin_q[3])
    with pytest.raises(ValueError, match="cos_q/sin_q"):
        isa.rope_table(cos_q.astype(np.int32), sin_q)


def test_check_datapath():
    isa.check_datapath(DEFAULT)
    wide = DEFAULT.with_(requant=replace(DEFAULT.requant, mult_bits=18))
    with pytest.raises(ValueError, match="mult_bits"):
        isa.check_datapath(wide)


def test_rtl_view_decodes_host_words(rng):
    # what hw/accel.py does: a 512-bit register viewed through COMMAND
    from amaranth import Module, Signal
    from amaranth.sim import Simulator

    word = Signal(isa.COMMAND_BITS)
    view = COMMAND(word)  # a View over the raw register
    cmds = [
        command(op, **_random_args(op, rng))
        for op in (Opcode.ROPE_QUANT, Opcode.ACT, Opcode.NORM_QUANT)
    ]
    seen = []

    async def bench(ctx):
        for c in cmds:
            ctx.set(word, int.from_bytes(encode(c), "little"))
            args = view.args[isa.op_name(c.op)]
            seen.append((ctx.get(view.opcode), {n: ctx.get(args[n]) for n, _ in ARGS[c.op]}))

    sim = Simulator(Module())
    sim.add_testbench(bench)
    sim.run()
    for c, (op, fields) in zip(cmds, seen, strict=False):
        assert op == c.op and fields == c.args


# --------------------------------------------------------------------------- op contracts
def test_contracts_name_fields_and_limits_only():
    """Every expression of every contract row names only its opcode's fields and the
    datapath names of ``contract_names``; every tensor field is an address field."""
    limits = set(isa.contract_names({}, DEFAULT))
    for op, items in isa.CONTRACTS.items():
        fields = {n for n, _ in ARGS[op]}
        for item in items:
            exprs = []
            if isinstance(item, isa.Dims):
                exprs += list(item.rules)
            elif isinstance(item, isa.Tensor):
                assert ARGS[op][item.field].width == isa.ADDR_BITS, (op, item.field)
                exprs += [*item.shape, *(e for e in (item.ld, item.offset) if e)]
            if getattr(item, "when", None):
                exprs.append(item.when)
            for e in exprs:
                assert set(isa.expr_names(e)) <= fields | limits, (op.name, e)


@pytest.mark.parametrize(
    "op,kv_bits",
    [(op, 8) for op in Opcode if isa.CONTRACTS[op]]
    # kv_bits changes only the KV operands' contracts
    + [(op, 4) for op in (Opcode.ROPE_QUANT, Opcode.QK, Opcode.PV)],
)
def test_contract_agrees_on_ints_and_amaranth_values(op, kv_bits, rng):
    """Each rule and each tensor's extent of the contract gives the same value on ints
    (the golden executor's checks) and on Amaranth values (the engines' checks,
    ``hw.ops.base.ArgChecks``), for random fields and their extremes (zero heads: a
    negative head span)."""
    from amaranth import Module, Signal, Value
    from amaranth.sim import Simulator

    cfg = DEFAULT.with_(forward=replace(DEFAULT.forward, kv_bits=kv_bits))
    args = Signal(ARGS[op])
    hw = isa.contract_names({n: args[n] for n, _ in ARGS[op]}, cfg)
    probes = []  # (what, Amaranth value, f(int names))
    for item in isa.CONTRACTS[op]:
        if isinstance(item, isa.Dims):
            for rule in item.rules:
                probes.append(
                    (
                        rule,
                        Value.cast(isa.evaluate(rule, hw)),
                        lambda names, r=rule: isa.evaluate(r, names),
                    )
                )
        elif isinstance(item, isa.Tensor):
            start, nbytes = item.extent(hw)
            probes.append(
                (f"{item.field} start", Value.cast(start), lambda names, t=item: t.extent(names)[0])
            )
            probes.append(
                (
                    f"{item.field} bytes",
                    Value.cast(nbytes),
                    lambda names, t=item: t.extent(names)[1],
                )
            )
    vectors = [_random_args(op, rng, e) for e in ("lo", "hi", None, None, None, None)]
    for v in vectors[2:]:  # small dims too: 0, 1 and a few
        v.update(
            {
                n: int(rng.integers(0, min(4, 1 << Shape.cast(f.shape).width)))
                for n, f in ARGS[op]
                if n not in isa.ADDR_FIELDS[op]
                and not isinstance(v[n], ActKind)
                and rng.random() < 0.5
                and not Shape.cast(f.shape).signed
            }
        )

    async def bench(ctx):
        for v in vectors:
            ctx.set(args, {n: (x.value if isinstance(x, ActKind) else x) for n, x in v.items()})
            names = isa.contract_names(v, cfg)
            for what, value, f in probes:
                try:
                    want = int(f(names))
                except ZeroDivisionError:  # heads % 0: never reached (kv_heads >= 1 first)
                    continue
                assert ctx.get(value) == want, (op.name, what, v)

    sim = Simulator(Module())
    sim.add_testbench(bench)
    sim.run()


def test_kv_rows_pack_two_int4_codes_a_byte(rng):
    codes = rng.integers(-7, 8, size=(3, 5, 12)).astype(np.int8)
    rows = isa.pack_kv(codes, 4)
    assert rows.dtype == np.int8 and rows.shape == (3, 5, 6)
    u = rows.view(np.uint8)
    assert np.array_equal(u & 15, codes[..., 0::2] & 15)  # code 2i: the low nibble
    assert np.array_equal(u >> 4, codes[..., 1::2] & 15)
    assert np.array_equal(isa.unpack_kv(rows, 4), codes)
    assert np.array_equal(isa.unpack_kv(isa.pack_kv(codes, 8), 8), codes)
    with pytest.raises(ValueError, match="outside int4"):
        isa.pack_kv(np.array([8, 0], np.int8), 4)
    with pytest.raises(ValueError, match="head_dim 3"):
        isa.pack_kv(np.zeros(3, np.int8), 4)
    kv4 = DEFAULT.with_(forward=replace(DEFAULT.forward, kv_bits=4))
    assert isa.kv_row(96, 1, kv4) == 48 and isa.kv_row(96, 0, kv4) == 96
    assert isa.kv_row(96, 1, DEFAULT) == 96


def test_int4_kv_contracts():
    """With kv_bits = 4: ROPE_QUANT's kv rows are head_dim/2 bytes (each half row whole
    bytes: head_dim % 4 == 0), QK / PV need an even head_dim; q rows stay int8."""
    kv4 = DEFAULT.with_(forward=replace(DEFAULT.forward, kv_bits=4))

    def fails(op, cfg, **f):
        names = isa.contract_names(f, cfg)
        items = [i for i in isa.CONTRACTS[op] if isinstance(i, isa.Dims)][:1]
        return isa.check_item(items[0], names, 0, 1 << 32)

    rq = dict(rows=1, heads=1, ld=1, rope=1, pos=0, table_rows=1)
    assert fails(Opcode.ROPE_QUANT, kv4, head_dim=6, kv=1, **rq)[0] == isa.ErrorCode.BAD_DIM
    assert fails(Opcode.ROPE_QUANT, kv4, head_dim=6, kv=0, **rq) is None
    assert fails(Opcode.ROPE_QUANT, DEFAULT, head_dim=6, kv=1, **rq) is None
    at = dict(rows=1, heads=2, kv_heads=1, keys=3, kv_ld=3, q_ld=1)
    for op in (Opcode.QK, Opcode.PV):
        assert fails(op, kv4, head_dim=5, **at)[0] == isa.ErrorCode.BAD_DIM
        assert fails(op, DEFAULT, head_dim=5, **at) is None
    k = next(t for t in isa.CONTRACTS[Opcode.QK] if getattr(t, "field", "") == "k")
    names = isa.contract_names(dict(k=0, kv_heads=2, keys=3, kv_ld=10, head_dim=96), kv4)
    assert k.extent(names) == (0, (1 * 10 + 3) * 48)


def test_readme_contract_table_is_the_table():
    """The README's opcode table is generated from CONTRACTS (golden.isa.contract_markdown)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- contract table:")
    start = readme.index("\n", start) + 1
    end = readme.index("<!-- end contract table -->")
    assert readme[start:end].strip() == isa.contract_markdown()
