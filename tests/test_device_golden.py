"""host/device.py + host/backends/golden.py: memory, single commands against the golden
block functions, error reporting (op index, opcode, reason), timeouts, reset."""

import numpy as np
import pytest
from device_util import put_stream, put_tlmm

from golden import isa
from golden.config import DEFAULT
from golden.isa import ErrorCode, Opcode, command
from golden.rmsnorm import norm_constants, rmsnorm_quant
from golden.rope import rope_from_table, rope_fx, rope_tables
from host.backends import make_device
from host.backends.golden import GoldenDevice
from host.device import Device, DeviceError, DeviceTimeout, Status

MEM = 1 << 20


@pytest.fixture
def dev():
    return GoldenDevice(mem_size=MEM)


def _tlmm_setup(dev, rng, rows=3, k=50, n=9):
    x = rng.integers(-128, 128, size=(rows, k)).astype(np.int8)
    w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    xa, wa, ya = put_tlmm(dev, x, w)
    cmd = command(Opcode.TLMM, src=xa, weights=wa, dst=ya, rows=rows, k=k, n=n)
    return x, w, ya, cmd


# --------------------------------------------------------------------------- memory
def test_alloc_write_read(dev, rng):
    a = dev.alloc(100)
    b = dev.alloc(10, align=256)
    assert a % 64 == 0 and a >= 64 and b % 256 == 0 and b >= a + 100
    data = rng.integers(-(2**31), 2**31, 25, dtype=np.int64).astype(np.int32)
    dev.write(a, data)
    assert dev.read(a, 100) == data.astype("<i4").tobytes()
    assert np.array_equal(dev.read_array(a, np.int32, (25,)), data)
    dev.write(b, b"\x01\x02")
    assert dev.read(b, 2) == b"\x01\x02"


def test_out_of_range_write_read(dev):
    a = dev.alloc(16)
    with pytest.raises(
        ValueError,
        match=rf"write: \[0x{a + 8:x}, 0x{a + 24:x}\) is outside "
        rf"allocated memory \[0x40, 0x{a + 16:x}\)",
    ):
        dev.write(a + 8, b"\x00" * 16)
    with pytest.raises(ValueError, match=r"read: \[0x0, 0x4\) is outside allocated memory"):
        dev.read(0, 4)
    with pytest.raises(ValueError, match="data: expected bytes or a numpy array"):
        dev.write(a, [1, 2])
    with pytest.raises(ValueError, match="nbytes"):
        dev.alloc(MEM)
    with pytest.raises(ValueError, match="align"):
        dev.alloc(4, align=3)


def test_make_device_registry():
    assert isinstance(make_device("golden", mem_size=1 << 16), GoldenDevice)
    with pytest.raises(ValueError, match="backend: expected one of"):
        make_device("fpga9000")


# --------------------------------------------------------------------------- ops
def test_rope_from_table_equals_rope_fx(rng):
    hd, pos_n = 12, 40
    x = rng.integers(-(2**31), 2**31, size=(3, pos_n, hd), dtype=np.int64).astype(np.int32)
    x[0, 0] = np.iinfo(np.int32).min  # saturation corner
    x[0, 1] = np.iinfo(np.int32).max
    pos = np.arange(pos_n)
    cos_q, sin_q = rope_tables(hd, DEFAULT.rope)
    got = rope_from_table(x, cos_q[pos], sin_q[pos], DEFAULT.rope)
    assert np.array_equal(got, rope_fx(x, pos, DEFAULT.rope))


def test_tlmm_command_is_the_integer_matmul(dev, rng):
    x, w, ya, cmd = _tlmm_setup(dev, rng)
    dev.run(*put_stream(dev, [cmd, command(Opcode.END)]))
    st = dev.wait(5.0)
    assert st.done and st.ok and st.ops_done == 2
    want = x.astype(np.int64) @ w.astype(np.int64).T
    assert np.array_equal(dev.read_array(ya, np.int32, want.shape), want)
    c = dev.counters()
    assert c["ops"] == 2 and c["cycles"] is None
    assert c["bytes_written"] == want.size * 4
    assert c["bytes_read"] >= x.nbytes + isa.tlmm_weight_bytes(9, 50) + 2 * isa.COMMAND_BYTES


@pytest.mark.parametrize("tokens", [1, 2, 4])
def test_tlmm_bytes_read_per_block_of_tokens(rng, tokens):
    """tlmm_tokens = P: the same result; an unmasked TLMM reads its weights once per block
    of P rows (ceil(5/P) times), a masked one once per row (row by row at any P)."""
    d = GoldenDevice(mem_size=MEM, tlmm_tokens=tokens)
    rows, k, n = 5, 50, 9
    x, w, ya, cmd = _tlmm_setup(d, rng, rows, k, n)
    mask = np.where(rng.random((rows, n)) < 0.5, 1, -1).astype(np.int32)
    ma = d.alloc(mask.nbytes, 64)
    d.write(ma, mask)
    masked = command(Opcode.TLMM, **{**cmd.args, "mask": ma, "masked": 1})
    want = x.astype(np.int64) @ w.astype(np.int64).T
    for c, passes, extra in ((cmd, -(-rows // tokens), 0), (masked, rows, mask.nbytes)):
        d.reset()
        d.run(*put_stream(d, [c, command(Opcode.END)]))
        assert d.wait(5.0).ok
        y = want if c is cmd else np.where(mask > 0, want, 0)
        assert np.array_equal(d.read_array(ya, np.int32, want.shape), y)
        weights = passes * isa.tlmm_weight_bytes(n, k)
        assert d.counters()["bytes_read"] == x.nbytes + extra + weights + 2 * isa.COMMAND_BYTES
        assert isa.tlmm_read_bytes(x, n, tokens=tokens, mask=mask if extra else None) == (
            x.nbytes + extra + weights
        )
    with pytest.raises(ValueError, match="tokens"):
        GoldenDevice(mem_size=MEM, tlmm_tokens=0)


def test_tlmm_exact_path_matches(rng):
    d = GoldenDevice(mem_size=MEM, exact_tlmm=True)
    x, w, ya, cmd = _tlmm_setup(d, rng, rows=2, k=31, n=5)
    d.run(*put_stream(d, [cmd, command(Opcode.END)]))
    d.wait(5.0)
    assert np.array_equal(
        d.read_array(ya, np.int32, (2, 5)), x.astype(np.int64) @ w.T.astype(np.int64)
    )


def test_weight_cache_sees_rewrites(dev, rng):
    x, w, ya, cmd = _tlmm_setup(dev, rng, rows=1, k=9, n=4)
    dev.run(*put_stream(dev, [cmd, command(Opcode.END)]))
    dev.wait(5.0)
    w2 = -w
    dev.write(cmd.weights, isa.pack_tlmm_weights(w2, dev.cfg.tlmm))
    dev.run(*put_stream(dev, [cmd, command(Opcode.END)]))
    dev.wait(5.0)
    assert np.array_equal(
        dev.read_array(ya, np.int32, (1, 4)), x.astype(np.int64) @ w2.T.astype(np.int64)
    )


def test_norm_quant_command_matches_rmsnorm_quant(dev, rng):
    rows, dim, g_exp, eps = 4, 37, -2, 1e-5
    h = rng.integers(-(2**24), 2**24, size=(rows, dim)).astype(np.int32)
    gamma = rng.integers(-(2**15), 2**15, size=dim).astype(np.int16)
    from dataclasses import replace

    ncfg = replace(DEFAULT.norm, eps=eps)
    consts = dict(zip(("eps_term", "c_mant", "c_exp"), norm_constants(dim, ncfg), strict=True))
    ha, ga = dev.alloc(h.nbytes), dev.alloc(gamma.nbytes)
    xa, sa = dev.alloc(rows * dim), dev.alloc(rows * 4)
    dev.write(ha, h)
    dev.write(ga, gamma)
    io = dict(src=ha, gamma=ga, dst=xa, dst_scale=sa)
    cmd = command(Opcode.NORM_QUANT, **io, rows=rows, dim=dim, **consts, g_exp=g_exp)
    dev.run(*put_stream(dev, [cmd, command(Opcode.END)]))
    dev.wait(5.0)
    x_q, mant, shift = rmsnorm_quant(h, gamma, ncfg)
    assert np.array_equal(dev.read_array(xa, np.int8, (rows, dim)), x_q)
    m, s = isa.unpack_scales(dev.read(sa, rows * 4))
    assert np.array_equal(m, mant)
    assert np.array_equal(s, np.where(mant == 0, 0, shift - g_exp))


def test_embed_command(dev, rng):
    table = rng.integers(-(2**31), 2**31, size=(11, 6), dtype=np.int64).astype(np.int32)
    tok = np.array([3, 0, 10, 3], np.uint32)
    ta, ka, da = dev.alloc(table.nbytes), dev.alloc(16), dev.alloc(4 * 6 * 4)
    dev.write(ta, table)
    dev.write(ka, tok)
    cmd = command(Opcode.EMBED, tokens=ka, table=ta, dst=da, rows=4, dim=6, vocab=11)
    dev.run(*put_stream(dev, [command(Opcode.NOP), cmd, command(Opcode.END)]))
    dev.wait(5.0)
    assert np.array_equal(dev.read_array(da, np.int32, (4, 6)), table[tok])


# --------------------------------------------------------------------------- errors
def test_out_of_range_address_names_op_index(dev, rng):
    x, w, ya, cmd = _tlmm_setup(dev, rng)
    bad = command(Opcode.TLMM, **{**cmd.args, "dst": dev.brk + 4096})
    dev.run(*put_stream(dev, [command(Opcode.NOP), cmd, bad, command(Opcode.END)]))
    with pytest.raises(
        DeviceError, match=r"command 2 \(opcode TLMM\): address out of range: dst"
    ) as ei:
        dev.wait(5.0)
    assert ei.value.code == ErrorCode.ADDR_RANGE and ei.value.op_index == 2
    st = dev.status()
    assert not st.busy and not st.done and st.err_op == 2 and st.ops_done == 2


def test_unknown_opcode(dev):
    raw = bytearray(isa.encode_stream([command(Opcode.NOP), command(Opcode.END)]))
    raw[isa.COMMAND_BYTES] = 0xEE  # second command: opcode 0xEE
    dev.run(*put_stream(dev, bytes(raw)))
    with pytest.raises(DeviceError, match=r"command 1 \(opcode 0xee\): unknown opcode") as ei:
        dev.wait(5.0)
    assert ei.value.code == ErrorCode.UNKNOWN_OPCODE and ei.value.opcode == 0xEE


def test_missing_end(dev):
    dev.run(*put_stream(dev, [command(Opcode.NOP)] * 3))
    with pytest.raises(
        DeviceError, match=r"command 2 \(opcode NOP\): stream ended without END"
    ) as ei:
        dev.wait(5.0)
    assert ei.value.code == ErrorCode.MISSING_END


@pytest.mark.parametrize(
    "change,code",
    [
        ({"k": 0}, ErrorCode.BAD_DIM),
        ({"src": "misalign"}, None),  # int8 source: any byte address is aligned
        ({"dst": "misalign"}, ErrorCode.ALIGN),  # int32 destination
    ],
)
def test_bad_dims_and_alignment(dev, rng, change, code):
    x, w, ya, cmd = _tlmm_setup(dev, rng)
    args = dict(cmd.args)
    for k, v in change.items():
        args[k] = args[k] + 1 if v == "misalign" else v
    dev.run(*put_stream(dev, [command(Opcode.TLMM, **args), command(Opcode.END)]))
    if code is None:
        dev.wait(5.0)
        return
    with pytest.raises(DeviceError) as ei:
        dev.wait(5.0)
    assert ei.value.code == code and ei.value.op_index == 0


def test_bad_operands(dev):
    tab, tok, dst = dev.alloc(4 * 4 * 2), dev.alloc(4), dev.alloc(4 * 4)
    dev.write(tok, np.array([2], np.uint32))
    emb = command(Opcode.EMBED, tokens=tok, table=tab, dst=dst, rows=1, dim=4, vocab=2)
    dev.run(*put_stream(dev, [emb, command(Opcode.END)]))
    with pytest.raises(DeviceError, match="bad operand: tokens: id 2 >= vocab 2"):
        dev.wait(5.0)
    h, g, x, s = dev.alloc(16), dev.alloc(8), dev.alloc(4), dev.alloc(4)
    e, cm, ce = norm_constants(4)
    io = dict(src=h, gamma=g, dst=x, dst_scale=s, rows=1, dim=4)
    nq = command(Opcode.NORM_QUANT, **io, eps_term=e, c_mant=cm + 1, c_exp=ce, g_exp=0)
    dev.run(*put_stream(dev, [nq, command(Opcode.END)]))
    with pytest.raises(DeviceError, match="norm_constants") as ei:
        dev.wait(5.0)
    assert ei.value.code == ErrorCode.BAD_OPERAND


def test_run_while_busy_and_bad_run_args(dev):
    addr, n = put_stream(dev, [command(Opcode.NOP), command(Opcode.END)])
    dev.run(addr, n)
    with pytest.raises(RuntimeError, match="still running"):
        dev.run(addr, n)
    dev.wait(1.0)
    with pytest.raises(ValueError, match="n_cmds"):
        dev.run(addr, 0)
    with pytest.raises(ValueError, match="stream_addr"):
        dev.run(addr, 100)
    with pytest.raises(ValueError, match="timeout_s"):
        dev.wait(-1)


# --------------------------------------------------------------------------- timeout / reset
class HangingDevice(GoldenDevice):
    """Test double: a command processor that never finishes (stuck DMA)."""

    def _poll(self) -> Status:
        if self._stream is None:
            return self._status
        return Status(
            busy=True, done=False, ops_done=3, last_opcode=Opcode.TLMM.value, n_cmds=self._stream[1]
        )


def test_wait_timeout_on_a_device_that_never_finishes():
    dev = HangingDevice(mem_size=MEM)
    dev.run(*put_stream(dev, [command(Opcode.NOP)] * 5 + [command(Opcode.END)]))
    with pytest.raises(
        DeviceTimeout,
        match=r"timeout after 0.05 s: last completed command 2 "
        r"\(opcode TLMM\) of 6",
    ) as ei:
        dev.wait(0.05)
    assert ei.value.code == ErrorCode.TIMEOUT and ei.value.op_index == 2
    assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, DeviceError)
    dev.reset()
    assert not dev.status().busy


def test_golden_timeout_resumes_then_reset_clean_run(dev, rng):
    x, w, ya, cmd = _tlmm_setup(dev, rng)
    addr, n = put_stream(dev, [cmd] * 4 + [command(Opcode.END)])
    dev.run(addr, n)
    with pytest.raises(DeviceTimeout):
        dev.wait(0)  # deadline before the stream can end
    assert dev.status().busy
    st = dev.wait(5.0)  # the stream carries on where it was
    assert st.done and st.ops_done == 5
    # error, then reset, then a clean run on the same device
    bad = command(Opcode.TLMM, **{**cmd.args, "weights": 0})
    dev.run(*put_stream(dev, [bad, command(Opcode.END)]))
    with pytest.raises(DeviceError):
        dev.wait(5.0)
    assert dev.status().error == ErrorCode.ADDR_RANGE
    dev.reset()
    assert dev.status() == Status(busy=False, done=False)
    assert dev.counters()["ops"] == 0
    dev.run(addr, n)
    assert dev.wait(5.0).ok
    assert np.array_equal(
        dev.read_array(ya, np.int32, (3, 9)), x.astype(np.int64) @ w.T.astype(np.int64)
    )


def test_reset_abandons_running_stream(dev):
    addr, n = put_stream(dev, [command(Opcode.NOP)] * 3 + [command(Opcode.END)])
    dev.run(addr, n)
    dev.reset()
    dev.run(addr, n)  # accepted: nothing is running any more
    assert dev.wait(1.0).ops_done == 4


def test_device_is_abstract():
    with pytest.raises(TypeError):
        Device(1024, DEFAULT)


def test_lm_head_bad_dst_fails_before_the_matmul():
    """A huge LM_HEAD whose dst cannot fit is refused before computing rows x n sums (the
    product here would be ~64 G int32)."""
    dev = GoldenDevice(mem_size=4 << 20)
    rows, k, n = 65535, 1, 1 << 20
    x = dev.alloc(rows * k)
    w = dev.alloc(n * k)
    cmd = command(Opcode.LM_HEAD, src=x, weights=w, dst=dev.alloc(64), rows=rows, k=k, n=n)
    addr, count = put_stream(dev, [cmd, command(Opcode.END)])
    dev.run(addr, count)
    with pytest.raises(DeviceError) as ei:
        dev.wait(5.0)
    assert ei.value.code == ErrorCode.ADDR_RANGE and ei.value.op_index == 0


# --------------------------------------------------------------------------- the contract
def test_strided_output_is_checked_whole_before_any_head_is_written(dev, rng):
    """ROPE_QUANT's dst and dst_scale are head-strided: one head beyond the window is
    ADDR_RANGE before any head is written (golden.isa.CONTRACTS: a tensor is checked over
    its whole extent)."""
    rows, heads, hd, ld = 1, 2, 4, 1000
    src, sx = dev.alloc(rows * heads * hd * 4), dev.alloc(4)
    dev.write(src, rng.integers(1, 1 << 20, size=rows * heads * hd).astype(np.int32))
    dev.write(sx, isa.pack_scales([1 << 15], [10]))
    dst, dsc = dev.alloc(rows * hd), dev.alloc(4)  # head 1 at dst + ld*hd: outside
    io = dict(src=src, src_scale=sx, table=src, dst=dst, dst_scale=dsc)
    dims = dict(rows=rows, heads=heads, head_dim=hd, ld=ld, pos=0, table_rows=1)
    cmd = command(Opcode.ROPE_QUANT, **io, **dims, c_mant=1 << 15, c_shift=0, rope=0)
    addr, n = put_stream(dev, [cmd, command(Opcode.END)])
    before = dev.memory[: dev.brk].copy()
    dev.run(addr, n)
    with pytest.raises(DeviceError, match="address out of range: dst") as ei:
        dev.wait(5.0)
    assert ei.value.code == ErrorCode.ADDR_RANGE
    assert np.array_equal(dev.memory[: dev.brk], before)


def test_cached_weights_are_range_checked_on_every_use(dev, rng):
    """A TLMM whose weights the executor has cached, run again after the memory window
    shrank below them: ADDR_RANGE (the cache does not skip the contract's checks)."""
    x = rng.integers(-128, 128, size=(1, 12)).astype(np.int8)
    xa = dev.alloc(x.nbytes)
    dev.write(xa, x)
    dev.alloc(1 << 16)  # keep the weights far up
    packed = isa.pack_tlmm_weights(rng.integers(-1, 2, size=(3, 12)).astype(np.int8))
    wa = dev.alloc(packed.nbytes)
    dev.write(wa, packed)
    cmd = command(Opcode.TLMM, src=xa, weights=wa, dst=dev.alloc(12), rows=1, k=12, n=3)
    dev.run(*put_stream(dev, [cmd, command(Opcode.END)]))
    assert dev.wait(5.0).ok
    dev.free_all()
    assert dev.alloc(x.nbytes) == xa
    again = command(Opcode.TLMM, **{**cmd.args, "dst": dev.alloc(12)})
    dev.run(*put_stream(dev, [again, command(Opcode.END)]))
    with pytest.raises(DeviceError, match="address out of range: weights") as ei:
        dev.wait(5.0)
    assert ei.value.code == ErrorCode.ADDR_RANGE and dev.brk < wa
