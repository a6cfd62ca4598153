"""Exact activation sparsity (DESIGN §9), golden side: the sparse tile format, the live
groups / blocks that decide what an engine reads, TLMM_SPARSE and TLMM's mask on the golden
executor, and the shipped model dense vs sparse on the golden backend (bit-identical logits,
fewer bytes). The RTL engines' benches: sim/test_op_tlmm_sparse.py, sim/test_op_tlmm.py."""

import numpy as np
import pytest
from device_util import put_stream

from golden import isa
from golden.config import DEFAULT, TLMMConfig
from golden.isa import ErrorCode, Opcode, command
from golden.tlmm import live_blocks, live_groups
from host.backends.golden import GoldenDevice
from host.device import DeviceError

TC = DEFAULT.tlmm


@pytest.mark.parametrize("cfg", [TC, TLMMConfig(tables=3, replicas=2, table="full")])
def test_sparse_format_round_trip_and_size(rng, cfg):
    r = isa.sparse_lanes(cfg)
    for n, k in [(1, 1), (r - 1, 7), (r, 3 * 5), (r + 1, 100), (2 * r + 5, 257)]:
        w = rng.integers(-1, 2, (n, k)).astype(np.int8)
        buf = isa.pack_sparse_weights(w, cfg)
        assert buf.dtype == np.uint8 and buf.size == isa.sparse_weight_bytes(n, k, cfg)
        assert buf.size == -(-n // r) * -(-k // cfg.group) * isa.tlmm_beat_bytes(cfg)
        assert np.array_equal(isa.unpack_sparse_weights(buf, n, k, cfg), w)
    # the last block's beats are read only as far as its codes reach
    n = 2 * r + 5
    assert list(isa.sparse_beat_read_bytes(n, cfg)) == [
        isa.tlmm_beat_bytes(cfg),
        isa.tlmm_beat_bytes(cfg),
        -(-5 * cfg.code_bits // 8),
    ]


def test_sparse_format_beat_layout():
    """Beat (block r, group g) at (r*Kg + g) * beat_bytes holds rows r*R.. of group g."""
    r, bb = isa.sparse_lanes(TC), isa.tlmm_beat_bytes(TC)
    n, k = r + 2, 6  # two groups, two row blocks
    w = np.zeros((n, k), np.int8)
    w[r + 1, 3:6] = (1, -1, 1)  # block 1, lane 1, group 1
    buf = isa.pack_sparse_weights(w, TC)
    zero = isa.pack_sparse_weights(np.zeros((n, k), np.int8), TC)
    diff = np.flatnonzero(buf != zero)
    assert diff.size and diff.min() >= (1 * 2 + 1) * bb and diff.max() < (1 * 2 + 2) * bb


def test_sparse_format_errors():
    with pytest.raises(ValueError, match="codes"):
        isa.pack_sparse_weights(np.zeros((2, 3), np.int16))
    with pytest.raises(ValueError, match="expected"):
        isa.unpack_sparse_weights(np.zeros(3, np.uint8), 4, 4)
    buf = isa.pack_sparse_weights(np.zeros((1, 3), np.int8))
    buf[-1] = 0xFF  # a padding row's code that pack never writes
    with pytest.raises(ValueError, match="padding|code"):
        isa.unpack_sparse_weights(buf, 1, 3)


def test_live_groups_and_blocks():
    x = np.zeros((2, 7), np.int8)  # groups [0:3] [3:6] [6:7 + padding]
    x[0, 4] = -3
    x[1, 6] = 1
    assert live_groups(x, TC).tolist() == [[False, True, False], [False, False, True]]
    q = TC.replicas
    mask = np.full((1, 2 * q + 1), -5, np.int32)
    mask[0, q + 1] = 1  # block 1 live; block 2 (one real row) dead
    assert live_blocks(mask, TC).tolist() == [[False, True, False]]
    mask[0, 2 * q] = 0  # <= 0 is masked
    assert not live_blocks(mask, TC)[0, 2]


def _weights(dev, rng, n, k, sparse):
    w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    pack = isa.pack_sparse_weights if sparse else isa.pack_tlmm_weights
    buf = pack(w, TC)
    a = dev.alloc(buf.size)
    dev.write(a, buf)
    return w, a


def _x(dev, rng, rows, k, zero=0.85):
    x = rng.integers(-128, 128, (rows, k)).astype(np.int8)
    x[rng.random((rows, k)) < zero] = 0
    a = dev.alloc(x.nbytes)
    dev.write(a, x)
    return x, a


def _run(dev, cmd):
    """(error code, bytes read) of a one-command stream."""
    before = dev.counters()["bytes_read"]
    dev.run(*put_stream(dev, [cmd, command(Opcode.END)]))
    try:
        dev.wait(10)
    except DeviceError as e:
        return e.code, None
    return ErrorCode.NONE, dev.counters()["bytes_read"] - before


@pytest.mark.parametrize("rows,k,n", [(1, 100, 5), (3, 257, 130), (2, 6, 113)])
def test_tlmm_sparse_equals_tlmm_and_reads_live_beats(rng, rows, k, n):
    dev = GoldenDevice(mem_size=1 << 20)
    x, xa = _x(dev, rng, rows, k)
    x[-1] = 0  # an all-zero row reads no weight beat
    dev.write(xa, x)
    w, wa = _weights(dev, rng, n, k, sparse=True)
    dst = dev.alloc(rows * n * 4)
    err, nbytes = _run(
        dev, command(Opcode.TLMM_SPARSE, src=xa, weights=wa, dst=dst, rows=rows, k=k, n=n)
    )
    assert err == ErrorCode.NONE
    want = x.astype(np.int64) @ w.astype(np.int64).T
    assert np.array_equal(dev.read_array(dst, np.int32, (rows, n)), want)
    live = live_groups(x, TC).sum()
    want_bytes = isa.sparse_read_bytes(x, n, TC)
    assert want_bytes == x.nbytes + live * isa.sparse_beat_read_bytes(n, TC).sum()
    assert nbytes == want_bytes + 2 * isa.COMMAND_BYTES


@pytest.mark.parametrize("skip", [0, 1])
def test_masked_tlmm_zeroes_masked_rows(rng, skip):
    rows, k, n = 2, 50, 11
    dev = GoldenDevice(mem_size=1 << 20)
    x, xa = _x(dev, rng, rows, k, zero=0.0)
    w, wa = _weights(dev, rng, n, k, sparse=False)
    mask = rng.integers(-3, 2, (rows, n)).astype(np.int32)  # 1 of 5 entries > 0
    mask[1] = -1  # a wholly masked row
    ma = dev.alloc(mask.nbytes)
    dev.write(ma, mask)
    dst = dev.alloc(rows * n * 4)
    f = dict(src=xa, weights=wa, dst=dst, rows=rows, k=k, n=n, mask=ma, masked=1, skip=skip)
    err, nbytes = _run(dev, command(Opcode.TLMM, **f))
    assert err == ErrorCode.NONE
    want = np.where(mask > 0, x.astype(np.int64) @ w.astype(np.int64).T, 0)
    assert np.array_equal(dev.read_array(dst, np.int32, (rows, n)), want)
    assert nbytes == isa.tlmm_read_bytes(x, n, TC, mask, bool(skip)) + 2 * isa.COMMAND_BYTES
    # the mask tensor is checked only when masked
    bad = command(Opcode.TLMM, **{**f, "mask": dev.brk + 4096})
    assert _run(dev, bad)[0] == ErrorCode.ADDR_RANGE
    assert (
        _run(dev, command(Opcode.TLMM, **{**f, "mask": 1 << 30, "masked": 0}))[0] == ErrorCode.NONE
    )


def test_tlmm_sparse_contract_errors(rng):
    dev = GoldenDevice(mem_size=1 << 20)
    _, xa = _x(dev, rng, 1, 9)
    _, wa = _weights(dev, rng, 4, 9, sparse=True)
    f = dict(src=xa, weights=wa, dst=dev.alloc(16), rows=1, k=9, n=4)
    for change, code in [
        (dict(n=0), ErrorCode.BAD_DIM),
        (dict(dst=f["dst"] + 2), ErrorCode.ALIGN),
        (dict(n=400), ErrorCode.ADDR_RANGE),  # the weights extent grows past the window
    ]:
        assert _run(dev, command(Opcode.TLMM_SPARSE, **{**f, **change}))[0] == code
    dev.write(wa, np.full(isa.sparse_weight_bytes(4, 9), 0xFF, np.uint8))
    assert _run(dev, command(Opcode.TLMM_SPARSE, **f))[0] == ErrorCode.BAD_OPERAND


def test_shipped_model_dense_vs_sparse_on_golden():
    """The runtime's sparse mode: the same logits, bit for bit, and fewer bytes, with the
    savings in the projections (down_proj's zero groups, up_proj's masked blocks, the
    group-major tiles of the others) and nowhere else."""
    from host import sparse_bench
    from host.checkpoint import load
    from host.data import DEFAULT_MODEL, heldout_text
    from host.ffn_order import calibrate_on_corpus
    from host.tokenizer import load_tokenizer

    model = load(DEFAULT_MODEL)
    tok = load_tokenizer(DEFAULT_MODEL)
    ids = tok.encode(heldout_text(chars=24))
    r = sparse_bench.compare(model, "golden", ids, 3, calibrate_on_corpus(model, tok))
    assert r["identical"]
    d, s = r["dense"]["by"], r["sparse"]["by"]
    assert s["down_proj"][0] < d["down_proj"][0] / 2  # most of its groups are zero
    assert s["up_proj"][0] < d["up_proj"][0]
    proj = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {k for k in d if d[k][0] != s[k][0]} == proj  # the other ops read the same
    assert all(s[k][0] < d[k][0] for k in proj)
    assert r["sparse"]["bytes"] < r["dense"]["bytes"]
    assert "bit-identical" in sparse_bench.report(r, "golden")


def test_sparse_runtime_and_cli_errors(capsys):
    from golden.model import random_model
    from golden.modelspec import ModelConfig
    from host.cli import main
    from host.runtime import Runtime

    mc = ModelConfig(vocab_size=16, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=2,
                     max_position_embeddings=16)  # fmt: skip
    with pytest.raises(ValueError, match="sparse"):
        Runtime(random_model(mc), GoldenDevice(mem_size=1 << 22), sparse="yes")
    assert main(["--mode", "reference", "--sparse", "-n", "1", "-p", "a"]) == 2
    assert "--sparse" in capsys.readouterr().err


def test_ffn_order_is_exact_and_gathers_idle_channels(rng):
    """permute_ffn changes no output bit; greedy_blocks puts channels that are idle together
    into one block (a planted pattern is found) and returns a permutation."""
    from golden.model import GoldenModel, permute_ffn, random_model
    from golden.modelspec import ModelConfig
    from host.ffn_order import calibrate, greedy_blocks

    act = rng.random((64, 12)) < 0.5
    act[:, [1, 5, 9, 11]] = False  # always idle: one block of four
    order = greedy_blocks(act, 4)
    assert sorted(order) == list(range(12)) and set(order[:4]) == {1, 5, 9, 11}
    with pytest.raises(ValueError, match="active"):
        greedy_blocks(act[0], 4)

    mc = ModelConfig(vocab_size=16, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                     hidden_act="relu2")  # fmt: skip
    model = random_model(mc, seed=3)
    ids = rng.integers(0, 16, 12)
    gm = GoldenModel(model, "integer")
    ref = gm.forward(ids)
    orders = calibrate(model, rng.integers(0, 16, 40))
    assert [sorted(o) for o in orders] == [list(range(48))] * 2
    gm.compiled = permute_ffn(gm.compiled, orders)
    assert np.array_equal(gm.forward(ids), ref)
    with pytest.raises(ValueError, match="permutation"):
        permute_ffn(gm.compiled, [np.zeros(48, int)] * 2)
    with pytest.raises(ValueError, match="orders"):
        permute_ffn(gm.compiled, orders[:1])


def test_perf_model_sparse_roofline():
    """The ReLU^2 shapes' exact-sparse roofline from the fractions measured on the shipped
    model: above the dense one; with nothing skipped and every group live it is the
    dense roofline but for the mask reads and the group-major tiles (within 3 %)."""
    from golden.config import design_point
    from host import perf_model

    dp = design_point("kv260")
    fr = perf_model.measured_sparsity(cfg=dp.datapath, chars=64)
    assert 0.2 < fr["up_skip"] < 0.9 and 0.05 < fr["down_live"] < 0.6
    mc = perf_model.BITNET_2B4T
    dense = sum(perf_model.roofline_bytes(mc, 128, dp.datapath).values())
    sparse = sum(perf_model.sparse_roofline_bytes(mc, 128, fr, dp.datapath).values())
    assert sparse < dense
    none = {"up_skip": 0.0, "down_live": 1.0}
    flat = sum(perf_model.sparse_roofline_bytes(mc, 128, none, dp.datapath).values())
    assert flat == pytest.approx(dense, rel=0.03)
    lines = []
    perf_model.sparsity_report(fr, [128, 4096], dp, out=lines.append)
    assert any("bitnet-2b-4t" in x and "4096" in x for x in lines)
    assert not any("bitnet-0.73b" in x for x in lines)  # SiLU: no exact zeros to skip
