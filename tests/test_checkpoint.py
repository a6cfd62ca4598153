"""host.checkpoint: HF-layout BitNet checkpoints <-> golden.modelspec.Model.

Cross-checked against transformers itself: its packer, its save_pretrained, its
from_pretrained and the effective (dequantized) weights its BitLinear / AutoBitLinear
modules compute with.
"""

import json

import numpy as np
import pytest
import torch
from model_util import checkpoint_shape, hf_random, set_online_quantization

from golden.modelspec import (
    ATTN_PROJ,
    MLP_PROJ,
    LayerWeights,
    Model,
    ModelConfig,
    ModelWeights,
    TernaryWeight,
)
from host import checkpoint
from host.tokenizer import CharTokenizer

transformers = pytest.importorskip("transformers")
from transformers import BitNetForCausalLM  # noqa: E402
from transformers.integrations import bitnet as hf_bitnet  # noqa: E402

PROJ = ATTN_PROJ + MLP_PROJ
# Scales go through float32 on disk, and for bitlinear a reciprocal there plus a division in
# transformers: up to 4 float32 roundings of 2^-24 each.
SCALE_RTOL = 2.0**-21
# Same-input output of one projection, transformers BitLinear vs AutoBitLinear (offline):
# both compute (x_q @ W_t) * s_w / s_x in float32, in different orders.
PROJ_OUT_RTOL = 1e-5
# "online" files hold latent weights that transformers re-ternarizes with its own float32
# mean|W| (its summation order, not ours): the scale agrees to golden.quant's stated bound.
from golden.quant import WEIGHT_SCALE_REL_TOL  # noqa: E402

SHAPES = [  # (hidden, intermediate, layers, heads, kv heads, vocab, tie)
    (32, 64, 1, 4, 4, 40, False),
    (48, 96, 2, 6, 2, 65, True),  # GQA 3:1, tied head
    (64, 128, 2, 8, 4, 33, False),  # GQA 2:1
]
# the (fmt, linear_class) pairs checkpoint.save writes
FORMATS = [("offline", "bitlinear"), ("offline", "autobitlinear"), ("online", "autobitlinear")]


@pytest.fixture(autouse=True)
def _eager_transformers():
    # transformers wraps BitNet's (un)packing and quantizers in torch.compile; running them
    # eagerly keeps these tests fast and compiler-free, with the same math.
    torch.manual_seed(0)
    with torch._dynamo.config.patch(disable=True):
        yield


def _config(shape) -> ModelConfig:
    return ModelConfig(**checkpoint_shape(shape))


def random_model(rng, cfg: ModelConfig) -> Model:
    def vec(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    shapes = {n: cfg.proj_shape(n) for n in PROJ}
    layers = []
    for _ in range(cfg.num_hidden_layers):
        proj = {
            n: TernaryWeight(
                codes=rng.integers(-1, 2, size=s).astype(np.int8),
                scale=float(np.float32(rng.uniform(0.005, 0.05))),
            )
            for n, s in shapes.items()
        }
        layers.append(
            LayerWeights(
                vec(cfg.hidden_size),
                vec(cfg.hidden_size),
                vec(cfg.num_attention_heads * cfg.head_dim),
                vec(cfg.intermediate_size),
                proj,
            )
        )
    emb = (0.5 * rng.standard_normal((cfg.vocab_size, cfg.hidden_size))).astype(np.float32)
    head = (
        emb
        if cfg.tie_word_embeddings
        else (0.1 * rng.standard_normal((cfg.vocab_size, cfg.hidden_size))).astype(np.float32)
    )
    return Model(cfg, ModelWeights(emb, layers, vec(cfg.hidden_size), head))


def assert_models_equal(a: Model, b: Model, scale_rtol=SCALE_RTOL):
    assert a.config == b.config
    wa, wb = a.weights, b.weights
    np.testing.assert_array_equal(wa.embed_tokens, wb.embed_tokens)
    np.testing.assert_array_equal(wa.lm_head, wb.lm_head)
    np.testing.assert_array_equal(wa.norm, wb.norm)
    for la, lb in zip(wa.layers, wb.layers, strict=True):
        for f in ("input_layernorm", "post_attention_layernorm", "attn_sub_norm", "ffn_sub_norm"):
            np.testing.assert_array_equal(getattr(la, f), getattr(lb, f))
        for n in PROJ:
            np.testing.assert_array_equal(la.proj[n].codes, lb.proj[n].codes, err_msg=n)
            assert lb.proj[n].scale == pytest.approx(la.proj[n].scale, rel=scale_rtol), n


def hf_effective(module) -> torch.Tensor:
    """The dequantized weight a transformers BitNet linear multiplies its input by."""
    if isinstance(module, hf_bitnet.BitLinear):  # y = x_q W_t / (s_x * weight_scale)
        return hf_bitnet.unpack_weights(module.weight, torch.float32) / module.weight_scale
    if isinstance(module, hf_bitnet.AutoBitLinear):
        if module.online_quant:
            return hf_bitnet.WeightQuant.apply(module.weight)
        return module.weight * module.weight_scale
    raise AssertionError(f"not a BitNet linear: {type(module).__name__}")


def assert_matches_hf(model: Model, hf, scale_rtol: float = SCALE_RTOL) -> None:
    """Our (codes * scale) equal transformers' effective weights; float tensors equal."""
    w = model.weights
    sd = hf.state_dict()
    np.testing.assert_array_equal(w.embed_tokens, sd["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(w.lm_head, sd["lm_head.weight"].numpy())
    for i, lw in enumerate(w.layers):
        layer = hf.model.layers[i]
        np.testing.assert_array_equal(
            lw.attn_sub_norm, layer.self_attn.attn_sub_norm.weight.detach().numpy()
        )
        np.testing.assert_array_equal(
            lw.ffn_sub_norm, layer.mlp.ffn_sub_norm.weight.detach().numpy()
        )
        for n in PROJ:
            mod = getattr(layer.self_attn if n in ATTN_PROJ else layer.mlp, n)
            eff = hf_effective(mod).detach().double().numpy()
            ours = lw.proj[n].codes.astype(np.float64) * lw.proj[n].scale
            np.testing.assert_allclose(ours, eff, rtol=SCALE_RTOL, atol=0, err_msg=f"layer {i} {n}")


# ----------------------------------------------------------------------------- round trips


def _save_random(path, rng, shape, fmt="offline", linear_class="bitlinear") -> Model:
    """A random model of this shape, saved to ``path``; returns the model."""
    model = random_model(rng, _config(shape))
    checkpoint.save(model, path, fmt=fmt, linear_class=linear_class)
    return model


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt,linear_class", FORMATS)
def test_round_trip(tmp_path, rng, shape, fmt, linear_class):
    model = _save_random(tmp_path, rng, shape, fmt, linear_class)
    back = checkpoint.load(tmp_path)
    # online re-derives the scale as mean|latent| in float32: a few ulp
    assert_models_equal(model, back, scale_rtol=SCALE_RTOL if fmt == "offline" else 1e-6)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"]["quantization_mode"] == fmt


def test_round_trip_with_tokenizer(tmp_path, rng):
    tok = CharTokenizer.from_text("hello, world\n")
    model = random_model(rng, _config((32, 64, 1, 4, 4, tok.vocab_size, False)))
    checkpoint.save(model, tmp_path, tokenizer=tok)
    assert CharTokenizer.load(tmp_path).vocab == tok.vocab
    assert checkpoint.load(tmp_path).config.vocab_size == tok.vocab_size


def test_packed_bytes_match_transformers_packer(tmp_path, rng):
    from safetensors.numpy import load_file

    model = _save_random(tmp_path, rng, SHAPES[1])
    tensors = load_file(str(tmp_path / "model.safetensors"))
    for i, lw in enumerate(model.weights.layers):
        for n in PROJ:
            name = checkpoint._proj_prefix(i, n)
            hf_packed = hf_bitnet.pack_weights(torch.from_numpy(lw.proj[n].codes.astype(np.int8)))
            np.testing.assert_array_equal(tensors[name + ".weight"], hf_packed.numpy())
            # bitlinear stores the divisor 1/scale
            assert tensors[name + ".weight_scale"][0] == pytest.approx(
                1 / lw.proj[n].scale, rel=SCALE_RTOL
            )


# ----------------------------------------------------------------------------- vs transformers
def _hf_random(shape, seed: int) -> BitNetForCausalLM:
    return hf_random(shape, seed).eval()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qconfig", [None, "online"])
def test_load_transformers_save_pretrained(tmp_path, shape, qconfig):
    """A transformers-written latent checkpoint loads ternarized as WeightQuant does."""
    hf = _hf_random(shape, seed=len(tmp_path.name))
    hf.save_pretrained(tmp_path)
    if qconfig:
        set_online_quantization(tmp_path)
        hf = BitNetForCausalLM.from_pretrained(tmp_path).eval()
        assert isinstance(hf.model.layers[0].mlp.up_proj, hf_bitnet.AutoBitLinear)
    model = checkpoint.load(tmp_path)
    assert model.config.num_key_value_heads == shape[4]
    assert model.config.rope_theta == 10000.0
    w = model.weights
    for i, lw in enumerate(w.layers):
        layer = hf.model.layers[i]
        for n in PROJ:
            latent = getattr(layer.self_attn if n in ATTN_PROJ else layer.mlp, n).weight
            eff = hf_bitnet.WeightQuant.apply(latent.detach()).double().numpy()
            ours = lw.proj[n].codes.astype(np.float64) * lw.proj[n].scale
            np.testing.assert_allclose(ours, eff, rtol=SCALE_RTOL, atol=0, err_msg=n)
    np.testing.assert_array_equal(w.embed_tokens, hf.model.embed_tokens.weight.detach().numpy())
    np.testing.assert_array_equal(w.lm_head, hf.lm_head.weight.detach().numpy())


def test_load_sharded(tmp_path):
    hf = _hf_random(SHAPES[2], seed=3)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / checkpoint.INDEX_FILE).exists()
    assert not (tmp_path / checkpoint.WEIGHTS_FILE).exists()
    model = checkpoint.load(tmp_path)
    np.testing.assert_array_equal(model.weights.norm, hf.model.norm.weight.detach().numpy())
    np.testing.assert_array_equal(
        model.weights.layers[1].ffn_sub_norm,
        hf.model.layers[1].mlp.ffn_sub_norm.weight.detach().numpy(),
    )


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("fmt,linear_class", FORMATS)
def test_saved_checkpoint_loads_in_transformers(tmp_path, rng, shape, fmt, linear_class):
    """transformers' effective weights of our saved file are codes * scale (scale direction)."""
    model = _save_random(tmp_path, rng, shape, fmt, linear_class)
    hf = BitNetForCausalLM.from_pretrained(tmp_path).eval()
    q = hf.model.layers[0].self_attn.q_proj
    assert isinstance(
        q, hf_bitnet.BitLinear if linear_class == "bitlinear" else hf_bitnet.AutoBitLinear
    )
    assert not isinstance(hf.lm_head, (hf_bitnet.BitLinear, hf_bitnet.AutoBitLinear))
    assert_matches_hf(model, hf, SCALE_RTOL if fmt == "offline" else WEIGHT_SCALE_REL_TOL)


def test_bitlinear_and_autobitlinear_compute_the_same(tmp_path, rng):
    """Both offline classes of one model: same projection output on the same input."""
    model = random_model(rng, _config(SHAPES[2]))
    outs = []
    x = torch.from_numpy(rng.standard_normal((3, 5, SHAPES[2][0])).astype(np.float32))
    for lc in ("bitlinear", "autobitlinear"):
        checkpoint.save(model, tmp_path / lc, fmt="offline", linear_class=lc)
        hf = BitNetForCausalLM.from_pretrained(tmp_path / lc).eval()
        with torch.no_grad():
            outs.append(hf.model.layers[1].mlp.gate_proj(x).numpy())
    ref = outs[1]
    assert np.max(np.abs(outs[0] - ref)) <= PROJ_OUT_RTOL * np.max(np.abs(ref))


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def saved(tmp_path, rng):
    _save_random(tmp_path, rng, SHAPES[1])
    return tmp_path


def _rewrite(path, drop=(), replace=None):
    from safetensors.torch import load_file, save_file

    t = load_file(str(path))
    for k in drop:
        del t[k]
    t.update(replace or {})
    save_file(t, str(path))


def test_truncated_safetensors(saved):
    f = saved / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="model.safetensors"):
        checkpoint.load(saved)


def test_garbage_safetensors(saved):
    (saved / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ValueError, match="model.safetensors.*malformed"):
        checkpoint.load(saved)


def test_missing_tensor(saved):
    name = "model.layers.1.mlp.down_proj.weight_scale"
    _rewrite(saved / "model.safetensors", drop=[name])
    with pytest.raises(ValueError, match=r"model\.safetensors.*missing tensor.*" + name):
        checkpoint.load(saved)


def test_wrong_shape(saved):
    name = "model.layers.0.self_attn.k_proj.weight"
    _rewrite(saved / "model.safetensors", replace={name: torch.zeros((3, 48), dtype=torch.uint8)})
    with pytest.raises(ValueError, match=r"model\.safetensors.*" + name + ".*shape"):
        checkpoint.load(saved)


def test_wrong_norm_shape(saved):
    name = "model.norm.weight"
    _rewrite(saved / "model.safetensors", replace={name: torch.ones(47)})
    with pytest.raises(ValueError, match=r"model\.safetensors.*" + name):
        checkpoint.load(saved)


def test_invalid_packed_code(saved):
    name = "model.layers.0.mlp.up_proj.weight"
    _rewrite(
        saved / "model.safetensors", replace={name: torch.full((24, 48), 0xFF, dtype=torch.uint8)}
    )
    with pytest.raises(ValueError, match=r"model\.safetensors.*" + name + ".*code 3"):
        checkpoint.load(saved)


def test_bad_scale(saved):
    name = "model.layers.0.mlp.up_proj.weight_scale"
    _rewrite(saved / "model.safetensors", replace={name: torch.tensor([-1.0])})
    with pytest.raises(ValueError, match=name):
        checkpoint.load(saved)


def test_index_lists_missing_tensor(tmp_path):
    hf = _hf_random(SHAPES[0], seed=1)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / checkpoint.INDEX_FILE).read_text())
    shard = index["weight_map"]["model.norm.weight"]
    index["weight_map"]["model.extra.weight"] = shard
    (tmp_path / checkpoint.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=shard + ".*model.extra.weight"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c.update(model_type="llama"), "model_type"),
        (lambda c: c.pop("hidden_size"), "hidden_size"),
        (lambda c: c.update(num_key_value_heads=5), "num_key_value_heads"),
        (lambda c: c["quantization_config"].update(linear_class="foo"), "linear_class"),
        (lambda c: c["quantization_config"].update(quant_method="gptq"), "quant_method"),
        (lambda c: c.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1.0}), "rope_type"),
    ],
)
def test_bad_config(saved, edit, match):
    cfg = json.loads((saved / "config.json").read_text())
    edit(cfg)
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json.*" + match):
        checkpoint.load(saved)


def test_malformed_config_json(saved):
    (saved / "config.json").write_text("{ nope")
    with pytest.raises(ValueError, match=r"config\.json"):
        checkpoint.load(saved)


def test_missing_files(tmp_path):
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        checkpoint.load(tmp_path / "absent")
    with pytest.raises(ValueError, match="config.json"):
        checkpoint.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(checkpoint.hf_config(_config(SHAPES[0]))))
    with pytest.raises(ValueError, match="model.safetensors"):
        checkpoint.load(tmp_path)


def test_save_rejects_unpackable(tmp_path, rng):
    cfg = _config(SHAPES[0])
    model = random_model(rng, cfg)
    lw = model.weights.layers[0]
    lw.proj["q_proj"] = TernaryWeight(np.zeros((30, 32), np.int8), 0.1)
    with pytest.raises(ValueError, match="q_proj"):
        checkpoint.save(model, tmp_path)
    with pytest.raises(ValueError, match="fmt"):
        checkpoint.save(random_model(rng, cfg), tmp_path, fmt="gguf")
