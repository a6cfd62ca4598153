"""host/backends/sim.py: the Verilator RTL of hw/accel.py through the C++ harness gives
bit-identical memory and logits to the golden backend for the same command stream; its
errors name the same code and op index; a stream that never finishes times out and
reset() recovers. (The first run builds the harness: ~2 min; later runs reuse it.)"""

import numpy as np
import pytest
from device_util import put, put_stream, put_tlmm
from model_util import GQA4

from golden import isa
from golden.isa import ErrorCode, Opcode, command
from golden.model import GoldenModel, random_model
from golden.modelspec import ModelConfig
from host.backends import make_device
from host.backends.golden import GoldenDevice
from host.backends.sim import SimDevice
from host.device import DeviceError, DeviceTimeout
from host.runtime import Runtime
from hw.accel import RTL_OPS

MEM = 4 << 20
SHAPE = GQA4
# the top with every engine, TLMM_SPARSE included (the kv260 point leaves it out for area)
DP = "kv260-sparse"


@pytest.fixture(scope="module")
def sim():
    dev = SimDevice(DP, mem_size=MEM)
    yield dev
    dev.close()


@pytest.fixture
def pair(sim):
    sim.reset()
    sim.free_all()
    sim.set_memory_timing(128.0, 20)
    return GoldenDevice(mem_size=MEM), sim


def _both(devs, fn):
    return [fn(d) for d in devs]


def _run(dev, cmds, timeout=10.0):
    dev.run(*put_stream(dev, cmds))
    return dev.wait(timeout)


def test_every_op_runs_on_rtl(sim):
    """Every opcode has an RTL engine; the kv260-sparse top has them all, the kv260 top all
    but TLMM_SPARSE (an area choice), and the runtime on it keeps to TLMM."""
    from golden.config import design_point
    from hw.accel import default_ops

    assert set(RTL_OPS) == set(Opcode)
    assert sim.rtl_ops == set(Opcode)
    assert set(default_ops(design_point("kv260"))) == set(Opcode) - {Opcode.TLMM_SPARSE}


@pytest.mark.parametrize(
    "rows,k,n,bw,lat", [(3, 256, 30, 128.0, 20), (2, 100, 7, 8.0, 50), (1, 768, 64, 1.0, 3)]
)
def test_tlmm_op_equals_golden(pair, rng, rows, k, n, bw, lat):
    gold, sim = pair
    sim.set_memory_timing(bw, lat)
    x = rng.integers(-128, 128, (rows, k), dtype=np.int8)
    w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    outs = []
    for dev in (gold, sim):
        xs, wa, dst = put_tlmm(dev, x, w)
        st = _run(
            dev,
            [
                command(Opcode.NOP),
                command(Opcode.TLMM, src=xs, weights=wa, dst=dst, rows=rows, k=k, n=n),
                command(Opcode.END),
            ],
        )
        assert st.done and st.ok and st.ops_done == 3
        # every tensor of the op, byte for byte (inputs untouched, outputs equal)
        outs.append(
            [
                dev.read(xs, x.nbytes),
                dev.read(wa, isa.tlmm_weight_bytes(n, k)),
                dev.read(dst, rows * n * 4),
            ]
        )
    assert outs[0] == outs[1]
    y = sim.read_array(dst, np.int32, (rows, n))
    assert np.array_equal(y, x.astype(np.int64) @ w.T.astype(np.int64))
    c = sim.counters()
    assert c["ops"] == 3 and c["bytes_written"] == rows * n * 4
    # at least one weight beat per cycle cannot be beaten; bandwidth bounds from below too
    beats = rows * isa.tlmm_blocks(n) * isa.tlmm_chunks(k)
    wbytes = beats * isa.tlmm_beat_bytes()
    assert c["cycles"] >= max(beats, wbytes / bw)


@pytest.mark.parametrize("skip", [0, 1])
def test_masked_tlmm_op_equals_golden(pair, rng, skip):
    """masked TLMM (the ReLU^2 FFN's up_proj) through the top and its DRAM model: the
    outputs where the mask is <= 0 zeroed, as golden; with skip the wholly masked row
    blocks' weight beats are not read (bytes read as golden's, a wholly masked row too)."""
    gold, sim = pair
    rows, k, n = 3, 200, 47
    x = rng.integers(-128, 128, (rows, k), dtype=np.int8)
    w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    mask = np.where(rng.random((rows, n)) < 0.75, -rng.integers(0, 5, (rows, n)), 3)
    mask[1] = 0  # a wholly masked row
    mask = mask.astype(np.int32)
    outs, read = [], []
    for dev in (gold, sim):
        xs, wa, dst = put_tlmm(dev, x, w)
        ma = dev.alloc(mask.nbytes)
        dev.write(ma, mask)
        fields = dict(src=xs, weights=wa, dst=dst, rows=rows, k=k, n=n)
        cmd = command(Opcode.TLMM, **fields, mask=ma, masked=1, skip=skip)
        st = _run(dev, [command(Opcode.NOP), cmd, command(Opcode.END)])
        assert st.done and st.ok and st.ops_done == 3
        outs.append(
            [dev.read(a, b) for a, b in ((xs, x.nbytes), (ma, mask.nbytes), (dst, mask.nbytes))]
        )
        read.append(dev.counters()["bytes_read"])
    assert outs[0] == outs[1]
    y = sim.read_array(dst, np.int32, (rows, n))
    assert np.array_equal(y, np.where(mask > 0, x.astype(np.int64) @ w.T.astype(np.int64), 0))
    assert read[0] == read[1]


@pytest.mark.parametrize("rows,k,n,bw,lat", [(3, 300, 130, 128.0, 20), (1, 700, 40, 4.0, 3)])
def test_tlmm_sparse_op_equals_golden(pair, rng, rows, k, n, bw, lat):
    """TLMM_SPARSE through the whole top: activations mostly zero (one row all zero), the
    sparse tile format; the same memory as golden, the exact product."""
    gold, sim = pair
    sim.set_memory_timing(bw, lat)
    x = rng.integers(-128, 128, (rows, k), dtype=np.int8)
    x[rng.random((rows, k)) < 0.85] = 0
    x[0] = 0
    w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    outs = []
    for dev in (gold, sim):
        xs = put(dev, x)
        wa = put(dev, isa.pack_sparse_weights(w, dev.cfg.tlmm))
        dst = dev.alloc(rows * n * 4)
        cmd = command(Opcode.TLMM_SPARSE, src=xs, weights=wa, dst=dst, rows=rows, k=k, n=n)
        st = _run(dev, [cmd, command(Opcode.END)])
        assert st.done and st.ok and st.ops_done == 2
        outs.append([dev.read(xs, x.nbytes), dev.read(dst, rows * n * 4)])
    assert outs[0] == outs[1]
    y = sim.read_array(dst, np.int32, (rows, n))
    assert np.array_equal(y, x.astype(np.int64) @ w.T.astype(np.int64))
    assert sim.counters()["bytes_written"] == rows * n * 4


def test_model_prefill_decode_bit_identical(rng, seed):
    sim = SimDevice(DP, mem_size=MEM, bandwidth=32.0, latency=40)  # fresh memory, slow DRAM
    m = random_model(ModelConfig(**SHAPE), seed=seed)
    gm = GoldenModel(m, "integer")
    rt_g = Runtime(m, GoldenDevice(mem_size=MEM), max_chunk=5)
    rt_s = Runtime(m, sim, max_chunk=5)
    toks = rng.integers(0, SHAPE["vocab_size"], size=11)
    cache = gm.new_cache()
    outs = [(rt_g.forward(toks[:8]), rt_s.forward(toks[:8]), gm.forward(toks[:8], cache))]
    for i in range(8, 11):
        outs.append(
            (
                rt_g.forward(toks[i : i + 1]),
                rt_s.forward(toks[i : i + 1]),
                gm.forward(toks[i : i + 1], cache),
            )
        )
    for g, s, ref in outs:
        assert s.dtype == np.float32 and np.array_equal(s, g) and np.array_equal(s, ref)
    lo, hi = rt_g.device.alloc_base, rt_g.device.brk
    assert hi == sim.brk
    assert rt_g.device.read(lo, hi - lo) == sim.read(lo, hi - lo)
    c = sim.counters()
    assert c["cycles"] > 0 and c["ops"] == rt_g.device.counters()["ops"]
    assert not sim.stats["host_ops"]  # the whole model ran on the RTL


def test_multi_token_prefill_bit_identical(rng, seed):
    """kv260-p2 (2 tokens per weight beat, mirrored tables: the point that fits the XCK26):
    a 7-token prompt (TLMM blocks of 2, 2, 2 and 1 rows) then a decoded token, on a top with
    its TLMM engine (the other ops on the host fallback), equals the golden backend with the
    same P and golden.model (full tables) bit for bit; the bytes read equal golden's, and
    the prompt reads fewer than at P = 1. (P = 4 and 8: sim/test_op_tlmm.py.)"""
    from golden.config import design_point

    dp = design_point("kv260-p2")
    assert dp.datapath.tlmm.table == "mirrored"
    sim = SimDevice(dp, mem_size=MEM, bandwidth=32.0, latency=40, ops=(Opcode.TLMM,))
    m = random_model(ModelConfig(**SHAPE), seed=seed)
    gm = GoldenModel(m, "integer")
    devs = [
        GoldenDevice(mem_size=MEM, cfg=dp.datapath, tlmm_tokens=p) for p in (dp.tlmm_tokens, 1)
    ] + [sim]
    rts = [Runtime(m, d, max_chunk=7) for d in devs]
    toks = rng.integers(0, SHAPE["vocab_size"], size=8)
    cache = gm.new_cache()
    for part in (toks[:7], toks[7:]):
        ref = gm.forward(part, cache)
        before = [d.counters()["bytes_read"] for d in devs]
        outs = [rt.forward(part) for rt in rts]
        assert all(o.dtype == np.float32 and np.array_equal(o, ref) for o in outs)
        read = [d.counters()["bytes_read"] - b for d, b in zip(devs, before, strict=True)]
        assert read[2] == read[0], read
        if len(part) > 1:
            assert read[0] < read[1], read  # the prompt's weight beats read once per block
        else:
            assert read[0] == read[1], read  # decode: one row, P = 1 behaviour
    assert sim.stats["host_ops"]  # the other ops ran on the host


ADC_SETTINGS = {
    "relu2 NL-ADC 6 bit": ("relu2", "nl", 6, None),
    "relu2 linear 3 bit, device": ("relu2", "linear", 3, 11),
    "silu NL-ADC 5 bit, calibrated device": ("silu", "nl", 5, 12),
}


@pytest.mark.parametrize("case", sorted(ADC_SETTINGS))
def test_act_adc_model_bit_identical(case):
    """A model compiled with the ACT engine's NL-ADC kinds (golden.nl_adc.ActADC): prefill
    and decode logits on the RTL equal the golden backend's and golden.model's integer
    forward with the same setting, bit for bit."""
    from golden.config import ADCDeviceConfig
    from golden.nl_adc import ActADC

    act, variant, bits, dev_seed = ADC_SETTINGS[case]
    dev = None if dev_seed is None else ADCDeviceConfig.rram_typical(seed=dev_seed)
    adc = ActADC(variant, bits, dev, calibrate=dev is not None and act == "silu")
    m = random_model(ModelConfig(hidden_act=act, **SHAPE), seed=3)
    toks = np.array([5, 1, 40, 22, 9, 60, 2])
    want = GoldenModel(m, "integer", act_adc=adc).forward(toks)
    for dev_ in (
        GoldenDevice(mem_size=MEM),
        SimDevice(DP, mem_size=MEM, bandwidth=32.0, latency=9),
    ):
        rt = Runtime(m, dev_, max_chunk=5, act_adc=adc)
        got = np.concatenate([rt.forward(toks[:5]), rt.forward(toks[5:6]), rt.forward(toks[6:])])
        assert np.array_equal(got, want), (case, type(dev_).__name__)
        if isinstance(dev_, SimDevice):
            assert not dev_.stats["host_ops"]  # the ACT commands ran on the RTL
        rt.close()


def test_host_fallback_of_a_partial_top(rng, seed):
    """A top built with the TLMM engine only hands every other op to the host (the golden
    executor on the same memory): the logits stay bit-identical."""
    sim = SimDevice(mem_size=MEM, ops=(Opcode.TLMM,))
    m = random_model(ModelConfig(**SHAPE), seed=seed + 1)
    toks = rng.integers(0, SHAPE["vocab_size"], size=6)
    want = GoldenModel(m, "integer").forward(toks)
    rt = Runtime(m, sim, max_chunk=4)
    got = rt.forward(toks)
    assert np.array_equal(got, want)
    streamed = {c.op for c in rt.last_stream} - {Opcode.TLMM, Opcode.NOP, Opcode.END}
    assert set(sim.stats["host_ops"]) == {op.name for op in streamed}
    assert len(streamed) >= 8  # every other op of a layer went to the host
    sim.close()


def _bad_tlmm(dev, rng, **change):
    x = rng.integers(-128, 128, (2, 50), dtype=np.int8)
    w = rng.integers(-1, 2, (9, 50)).astype(np.int8)
    xs, wa, dst = put_tlmm(dev, x, w)
    f = dict(src=xs, weights=wa, dst=dst, rows=2, k=50, n=9)
    f.update({k: (v(f) if callable(v) else v) for k, v in change.items()})
    return [
        command(Opcode.NOP),
        command(Opcode.NOP),
        command(Opcode.TLMM, **f),
        command(Opcode.END),
    ]


@pytest.mark.parametrize(
    "change,code",
    [
        (dict(dst=lambda f: f["dst"] + 4096), ErrorCode.ADDR_RANGE),  # beyond brk
        (dict(src=lambda f: 8), ErrorCode.ADDR_RANGE),  # below alloc_base
        (dict(weights=lambda f: f["weights"] + 4096), ErrorCode.ADDR_RANGE),
        (dict(dst=lambda f: f["dst"] + 2), ErrorCode.ALIGN),
        (dict(k=0), ErrorCode.BAD_DIM),
        (dict(rows=0), ErrorCode.BAD_DIM),
    ],
)
def test_tlmm_errors_name_the_op_index(pair, rng, change, code):
    errs = []
    for dev in pair:
        with pytest.raises(DeviceError) as ei:
            _run(dev, _bad_tlmm(dev, rng, **change))
        errs.append(ei.value)
    for e in errs:
        assert e.code == code and e.op_index == 2 and e.opcode == Opcode.TLMM.value
    assert "command 2 (opcode TLMM)" in str(errs[1])


def test_engine_error_is_reported_like_golden(pair):
    # a RESIDUAL reading outside memory, after a NOP
    errs = []
    for dev in pair:
        h = dev.alloc(64)
        cmd = command(
            Opcode.RESIDUAL,
            h=h,
            acc=h,
            src_scale=h + (1 << 20),
            dst=h,
            rows=1,
            dim=16,
            c_mant=1,
            c_shift=0,
        )
        with pytest.raises(DeviceError) as ei:
            _run(dev, [command(Opcode.NOP), cmd, command(Opcode.END)])
        errs.append(ei.value)
    assert errs[0].code == errs[1].code == ErrorCode.ADDR_RANGE
    assert errs[0].op_index == errs[1].op_index == 1
    assert errs[1].opcode == Opcode.RESIDUAL.value


def test_unknown_opcode_and_missing_end(pair):
    for dev in pair:
        bad = bytearray(isa.encode(command(Opcode.NOP)))
        bad[0] = 0x7F
        words = isa.encode(command(Opcode.NOP)) + bytes(bad) + isa.encode(command(Opcode.END))
        with pytest.raises(DeviceError, match=r"command 1 \(opcode 0x7f\): unknown opcode") as ei:
            _run(dev, words)
        assert ei.value.code == ErrorCode.UNKNOWN_OPCODE
        dev.reset()
        with pytest.raises(DeviceError) as ei:
            _run(dev, [command(Opcode.NOP)] * 3)
        assert ei.value.code == ErrorCode.MISSING_END and ei.value.op_index == 2
        dev.reset()


def test_never_finishing_stream_times_out_then_reset_recovers(pair, rng):
    _, sim = pair
    sim.set_memory_timing(latency=10**15)  # the DRAM never answers
    sim.cycles_per_poll = 1000
    cmds = [command(Opcode.NOP), command(Opcode.END)]
    with pytest.raises(DeviceTimeout) as ei:
        _run(sim, cmds, timeout=0.2)
    assert ei.value.code == ErrorCode.TIMEOUT and ei.value.op_index == -1
    assert sim.status().busy
    with pytest.raises(RuntimeError, match="still running"):
        sim.run(sim.alloc_base, 1)
    sim.reset()
    sim.cycles_per_poll = 100_000
    sim.set_memory_timing(latency=20)
    assert not sim.status().busy and sim.counters()["cycles"] == 0
    # a clean run afterwards: TLMM gives the integer matmul
    x = rng.integers(-128, 128, (2, 90), dtype=np.int8)
    w = rng.integers(-1, 2, (5, 90)).astype(np.int8)
    xs, wa, dst = put_tlmm(sim, x, w)
    st = _run(
        sim,
        [command(Opcode.TLMM, src=xs, weights=wa, dst=dst, rows=2, k=90, n=5), command(Opcode.END)],
    )
    assert st.ok and st.ops_done == 2
    assert np.array_equal(
        sim.read_array(dst, np.int32, (2, 5)), x.astype(np.int64) @ w.T.astype(np.int64)
    )


def test_registry_and_bad_args():
    dev = make_device("sim", mem_size=1 << 16)
    assert isinstance(dev, SimDevice) and dev.dma_bytes >= isa.COMMAND_BYTES
    with pytest.raises(ValueError, match="bandwidth"):
        SimDevice(mem_size=1 << 16, bandwidth=0)
    with pytest.raises(ValueError, match="latency"):
        dev.set_memory_timing(latency=0)
    with pytest.raises(ValueError, match="dp: expected an AccelConfig"):
        SimDevice(dp=3)


def test_shipped_model_sparse_bit_identical_on_rtl():
    """Exact sparsity on the RTL (DESIGN §9): the shipped model's logits with the runtime's
    sparse mode (down_proj on the TLMM_SPARSE engine, up_proj skipping masked row blocks,
    the calibrated FFN order) equal the dense run's and the golden forward's, bit for
    bit, with every command on the RTL and fewer bytes read per decoded token."""
    from host import sparse_bench
    from host.checkpoint import load
    from host.data import DEFAULT_MODEL, heldout_text
    from host.ffn_order import calibrate_on_corpus
    from host.tokenizer import load_tokenizer

    model = load(DEFAULT_MODEL)
    tok = load_tokenizer(DEFAULT_MODEL)
    ids = tok.encode(heldout_text(chars=20))
    r = sparse_bench.compare(model, "sim", ids, 2, calibrate_on_corpus(model, tok), dp=DP)
    assert r["identical"]
    want = GoldenModel(model, "integer")
    cache = want.new_cache()
    ref = [want.forward(np.asarray(ids), cache)[-1:]]
    for _ in range(2):
        ref.append(want.forward(np.asarray([int(np.argmax(ref[-1][-1]))]), cache))
    assert np.array_equal(r["sparse"]["logits"], np.concatenate(ref))
    d, s = r["dense"], r["sparse"]
    assert s["by"]["down_proj"][0] < d["by"]["down_proj"][0] / 2
    assert s["by"]["up_proj"][0] < d["by"]["up_proj"][0]
    assert s["bytes"] < d["bytes"] and s["cycles"] < d["cycles"]
    assert not r["host_ops"]  # every command ran on the RTL


def test_bitnet_2b4t_shapes_bit_identical():
    """BitNet b1.58 2B-4T's layer shapes (hidden 2560, FFN 6912, 20 query / 5 KV heads of
    128: GQA 4:1, ReLU^2, rope_theta 5e5) with random weights, one layer and a small
    vocabulary and context for test time: its down_proj's k = 6912 exceeds the engines'
    max_k 4096, so the runtime splits it (a TLMM per k slice over all rows, src_skip
    apart, and ADD of the partials); prefill and decode logits on the RTL equal the golden
    backend's (which needs no split) and the golden forward's, bit for bit, all on the RTL."""
    from golden.config import design_point

    shape = dict(
        vocab_size=256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=1,
        num_attention_heads=20, num_key_value_heads=5, max_position_embeddings=16,
        rope_theta=500000.0, hidden_act="relu2",
    )  # fmt: skip
    m = random_model(ModelConfig(**shape), seed=5)
    toks = np.array([7, 200, 31])
    gm = GoldenModel(m, "integer")
    cache = gm.new_cache()
    want = np.concatenate([gm.forward(toks[:2], cache), gm.forward(toks[2:], cache)])
    sim = SimDevice(DP, mem_size=40 << 20)
    assert design_point("kv260").max_k < 6912  # the split is exercised
    for dev in (GoldenDevice(mem_size=40 << 20), sim):
        rt = Runtime(m, dev, max_chunk=2)
        got = np.concatenate([rt.forward(toks[:2]), rt.forward(toks[2:])])
        assert np.array_equal(got, want), type(dev).__name__
    ops = [c.op for c in rt.last_stream]
    assert ops.count(Opcode.ADD) == 1 and ops.count(Opcode.TLMM) == 6 + 2  # down: 2 slices
    assert not sim.stats["host_ops"]
    sim.close()


def test_shipped_model_int4_kv_bit_identical_on_rtl():
    """kv260-kv4, the INT4 KV cache on the RTL: the shipped model's prefill (8 held-out
    characters) and two decode steps give logits equal to the golden backend's and to
    golden.model's for that datapath, bit for bit, with the engines that write and read
    the cache (ROPE_QUANT, QK, PV) on the RTL and the rest on the host fallback (a smaller
    Verilator build; the whole kv260 top runs every op elsewhere in this file); the device
    memory (the packed int4 KV cache included) and the bytes written are the golden
    backend's, and the KV regions are half-size rows."""
    from golden.config import design_point
    from host.checkpoint import load
    from host.data import DEFAULT_MODEL, heldout_text
    from host.tokenizer import load_tokenizer

    dp = design_point("kv260-kv4")
    model = load(DEFAULT_MODEL)
    mc = model.config
    ids = np.asarray(load_tokenizer(DEFAULT_MODEL).encode(heldout_text(chars=8)))
    gm = GoldenModel(model, "integer", dp.datapath)
    cache = gm.new_cache()
    want = [gm.forward(ids, cache)[-1:]]
    for _ in range(2):
        want.append(gm.forward([int(np.argmax(want[-1][-1]))], cache)[-1:])
    mem = 8 << 20
    kv_ops = (Opcode.ROPE_QUANT, Opcode.QK, Opcode.PV)
    sim = SimDevice(dp, mem_size=mem, ops=kv_ops)
    devs = (GoldenDevice(dp.datapath, mem_size=mem), sim)
    runs = []
    for dev in devs:
        rt = Runtime(model, dev, max_chunk=8)
        got = [rt.forward(ids, last_only=True)]
        for w in want[:-1]:  # the golden forward's greedy tokens
            got.append(rt.forward([int(np.argmax(w[-1]))], last_only=True))
        assert np.array_equal(np.concatenate(got), np.concatenate(want)), type(dev).__name__
        runs.append(rt)
    assert runs[0].address_map["kv0.k"].nbytes == (
        mc.num_key_value_heads * mc.max_position_embeddings * mc.head_dim // 2
    )
    lo, hi = devs[0].alloc_base, devs[0].brk
    assert hi == sim.brk and devs[0].read(lo, hi - lo) == sim.read(lo, hi - lo)
    g, s = devs[0].counters(), sim.counters()
    assert s["bytes_written"] == g["bytes_written"] and s["ops"] == g["ops"]
    assert sim.stats["host_ops"] and not set(sim.stats["host_ops"]) & {op.name for op in kv_ops}
    sim.close()
