"""host/runtime.py on the golden backend: logits and KV cache bit-equal to the golden
integer forward (golden/model.py) over prefill + decode, several model shapes; address
map; bad inputs; errors and timeouts surfacing through the runtime."""

import numpy as np
import pytest
from model_util import GQA4, shape

from golden import isa
from golden.config import DEFAULT, design_point
from golden.isa import ErrorCode, Opcode
from golden.model import GoldenModel, random_model
from golden.modelspec import ModelConfig
from host.backends.golden import GoldenDevice
from host.device import DeviceError, DeviceTimeout, Status
from host.generate import Sampler, generate
from host.runtime import Runtime, make_runtime

SHAPES = {
    # relu2, GQA 4:1, two layers
    "relu2-gqa": GQA4,
    # silu, MHA, head_dim 8, K not a multiple of G*T
    "silu-mha": shape(
        40, 70, 2, 5, 5, vocab_size=53, max_position_embeddings=40, hidden_act="silu"
    ),
    # multi-query (one KV head), head_dim 12, tied embeddings, one layer
    "relu2-mqa": shape(36, 50, 1, 3, 1, vocab_size=31, max_position_embeddings=32)
    | dict(tie_word_embeddings=True, rope_theta=500.0, rms_norm_eps=1e-6),
}
MEM = 4 << 20


KV4 = design_point("kv260-kv4").datapath  # the INT4 KV cache


def _models(name, seed, cfg=DEFAULT):
    m = random_model(ModelConfig(**SHAPES[name]), seed=seed)
    return m, GoldenModel(m, "integer", cfg)


@pytest.mark.parametrize(
    "name,chunk,kv_bits",
    [("relu2-gqa", 64, 8), ("silu-mha", 7, 8), ("relu2-mqa", 5, 8), ("relu2-gqa", 5, 4),
     ("relu2-mqa", 64, 4)],
)  # fmt: skip
def test_prefill_decode_bit_exact(name, chunk, kv_bits, rng, seed):
    cfg = KV4 if kv_bits == 4 else DEFAULT
    m, gm = _models(name, seed, cfg)
    mc = m.config
    rt = Runtime(m, GoldenDevice(mem_size=MEM, cfg=cfg), max_chunk=chunk)
    n_prompt = int(rng.integers(9, 20))
    n_total = n_prompt + 6
    toks = rng.integers(0, mc.vocab_size, size=n_total)
    cache = gm.new_cache()
    want = [gm.forward(toks[:n_prompt], cache)]
    got = [rt.forward(toks[:n_prompt])]
    for i in range(n_prompt, n_total):
        want.append(gm.forward(toks[i : i + 1], cache))
        got.append(rt.forward(toks[i : i + 1]))
    for w, g in zip(want, got, strict=False):
        assert g.dtype == np.float32 and g.shape == w.shape
        assert np.array_equal(g, w)
    assert rt.cache.length == cache.length == n_total
    # the device KV cache holds what golden's KVCache holds, position for position
    row = mc.head_dim * kv_bits // 8
    kv_bytes = mc.num_key_value_heads * mc.max_position_embeddings * row
    assert rt.address_map["kv0.k"].nbytes == kv_bytes
    lim = (1 << (kv_bits - 1)) - 1
    for li in range(mc.num_hidden_layers):
        assert np.abs(cache.k[li]).max() == lim and np.abs(cache.v[li]).max() == lim
        kv = rt.kv_cache(li)
        for name_ in ("k", "v"):
            assert np.array_equal(kv[name_][:, :n_total], getattr(cache, name_)[li][0, :, :n_total])
            ref = getattr(cache, f"{name_}_scale")[li]
            assert np.array_equal(kv[f"{name_}_scale"].mant[:, :n_total], ref.mant[0, :, :n_total])
            assert np.array_equal(
                kv[f"{name_}_scale"].shift[:, :n_total], ref.shift[0, :, :n_total]
            )


def test_exact_tlmm_device_and_last_only(seed, rng):
    m, gm = _models("relu2-mqa", seed)
    rt = make_runtime(m, "golden", mem_size=MEM, exact_tlmm=True, max_chunk=8)
    toks = rng.integers(0, m.config.vocab_size, size=13)
    want = gm.forward(toks)
    last = rt.forward(toks, last_only=True)
    assert last.shape == (1, m.config.vocab_size)
    assert np.array_equal(last[0], want[-1])
    rt.reset()
    assert np.array_equal(rt.forward(toks), want)


def test_generate_runs_on_the_runtime(seed):
    # host.generate.generate takes the Runtime in place of a GoldenModel (window slides too)
    m, gm = _models("relu2-mqa", seed)
    rt = make_runtime(m, "golden", mem_size=MEM)
    prompt = [1, 2, 3, 4, 5]
    for temp in (0.0, 0.9):
        ids_g, st_g = generate(gm, prompt, 34, Sampler(temp=temp, seed=seed))
        ids_r, st_r = generate(rt, prompt, 34, Sampler(temp=temp, seed=seed))
        assert ids_r == ids_g
        assert st_r.window_slides == st_g.window_slides >= 1


def test_address_map_and_image(seed):
    m, _ = _models("relu2-gqa", seed)
    dev = GoldenDevice(mem_size=MEM)
    rt = Runtime(m, dev)
    regs = sorted(rt.address_map.regions.values(), key=lambda r: r.addr)
    for a, b in zip(regs, regs[1:], strict=False):
        assert a.addr + a.nbytes <= b.addr, (a.name, b.name)
    assert regs[0].addr >= dev.alloc_base and regs[-1].addr + regs[-1].nbytes <= dev.brk
    mc = m.config
    tc = dev.cfg.tlmm
    assert rt.address_map["L1.gate_proj"].nbytes == isa.tlmm_weight_bytes(
        mc.intermediate_size, mc.hidden_size, tc
    )
    assert rt.address_map["kv0.k"].nbytes == (
        mc.num_key_value_heads * mc.max_position_embeddings * mc.head_dim
    )
    assert rt.image_bytes == regs[-1].addr + regs[-1].nbytes - regs[0].addr
    text = str(rt.address_map)
    assert "L0.q_proj" in text and "kv1.v_scale" in text and "total:" in text
    # the stream mirrors the golden op sequence: 20 commands per layer + embed, head, END
    ops = [c.op for c in rt.step_commands(0, 1, 1)]
    assert len(ops) == 1 + 20 * mc.num_hidden_layers + 3
    assert ops[0] == Opcode.EMBED and ops[-3:] == [Opcode.NORM_QUANT, Opcode.LM_HEAD, Opcode.END]
    assert ops.count(Opcode.TLMM) == 7 * mc.num_hidden_layers


def test_bad_inputs(seed):
    m, _ = _models("relu2-mqa", seed)
    rt = make_runtime(m, "golden", mem_size=MEM)
    ctx = m.config.max_position_embeddings
    with pytest.raises(ValueError, match="tokens: id 31 outside the vocabulary"):
        rt.forward([31])
    with pytest.raises(ValueError, match=r"tokens: expected shape \[T\]"):
        rt.forward([[1, 2]])
    with pytest.raises(ValueError, match="tokens: expected integer token ids"):
        rt.forward([1.5])
    rt.forward(list(range(ctx - 1)))
    with pytest.raises(ValueError, match=rf"positions {ctx - 1}..{ctx} exceed the context window"):
        rt.forward([1, 2])
    rt.forward([1])  # the last position still fits
    old = rt.cache
    fresh = rt.new_cache()
    with pytest.raises(ValueError, match="cache: stale"):
        rt.forward([1], old)
    rt.forward([1], fresh)
    other = make_runtime(m, "golden", mem_size=MEM)
    with pytest.raises(ValueError, match="cache: not a cache of this runtime"):
        rt.forward([1], other.new_cache())
    with pytest.raises(ValueError, match="backend: expected one of"):
        make_runtime(m, "nonesuch")
    with pytest.raises(ValueError, match="max_chunk"):
        Runtime(m, GoldenDevice(mem_size=MEM), max_chunk=0)
    with pytest.raises(ValueError, match="model: expected"):
        Runtime("model", GoldenDevice(mem_size=MEM))
    with pytest.raises(ValueError, match="nbytes"):  # the model does not fit the device
        Runtime(m, GoldenDevice(mem_size=4096))


def test_device_error_surfaces_with_op_index(seed):
    m, _ = _models("relu2-mqa", seed)
    rt = make_runtime(m, "golden", mem_size=MEM)
    reg = rt.address_map["L0.up_proj"]
    rt.device.write(reg.addr, b"\xff" * reg.nbytes)  # codes beyond the 27-entry table
    with pytest.raises(DeviceError, match=r"command \d+ \(opcode TLMM\): bad operand") as ei:
        rt.forward([1, 2])
    bad = rt.last_stream[ei.value.op_index]
    assert bad.op == Opcode.TLMM and bad.weights == reg.addr
    assert ei.value.code == ErrorCode.BAD_OPERAND


class _Hanging(GoldenDevice):
    def _poll(self):
        if self._stream is None:
            return self._status
        return Status(busy=True, done=False, n_cmds=self._stream[1])


def test_runtime_timeout_then_reset(seed):
    m, gm = _models("relu2-mqa", seed)
    rt = Runtime(m, _Hanging(mem_size=MEM), timeout_s=0.05)
    with pytest.raises(DeviceTimeout, match="last completed command none"):
        rt.forward([1, 2, 3])
    # swap in a working processor: reset, start over, results are golden
    rt.device.__class__ = GoldenDevice
    rt.device.reset()
    rt.reset()
    rt.timeout_s = 60.0  # the golden device's run is timed too: no flake on a loaded machine
    assert np.array_equal(rt.forward([1, 2, 3]), gm.forward([1, 2, 3]))
