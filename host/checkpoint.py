"""BitNet b1.58 checkpoints in the Hugging Face layout <-> ``golden.modelspec.Model``.

A checkpoint directory holds ``config.json`` (``model_type: bitnet``) and either
``model.safetensors`` or a sharded ``model.safetensors.index.json`` (``weight_map``:
tensor name -> shard file). Tensor names are those of ``transformers``'
``BitNetForCausalLM``: ``model.embed_tokens.weight``, ``model.layers.<i>.input_layernorm.weight``,
``model.layers.<i>.self_attn.{q,k,v,o}_proj.weight``, ``...self_attn.attn_sub_norm.weight``,
``...post_attention_layernorm.weight``, ``...mlp.{gate,up,down}_proj.weight``,
``...mlp.ffn_sub_norm.weight``, ``model.norm.weight``, ``lm_head.weight`` (absent when
``tie_word_embeddings``).

Two weight formats of the seven projections per layer (DESIGN §6):

**online** -- full-precision latent weights (float16/bfloat16/float32); ternarized at load
    with absmean exactly as ``transformers`` ``WeightQuant`` (``golden.quant.weight_quant``):
    ``inv = 1/max(mean|W|, eps)``, codes ``clamp(round(W*inv), -1, 1)``, dequant
    ``codes / inv``, held as ``TernaryWeight(codes, scale=1/inv)``. Chosen when
    ``quantization_config`` is absent or has ``quantization_mode: online``. A config
    without ``quantization_config`` runs as a plain float model in transformers; this
    loader still ternarizes it (the BitNet meaning of latent weights).

**offline** -- ``quantization_config.quant_method == "bitnet"`` and ``quantization_mode``
    ``offline`` (the transformers default): each projection has ``weight`` packed uint8
    [out/4, in] (``golden.packing.pack_hf``: code w+1, byte row r holds output rows
    r + i*out/4 in bits 2i+1:2i) -- or, for ``autobitlinear`` only, an unpacked float
    tensor with values in {-1, 0, 1} -- and a one-element ``weight_scale``. Its
    direction depends on ``linear_class`` (checked in transformers 5.x
    ``integrations/bitnet.py``):

    - ``bitlinear`` (``BitLinear``, the transformers default): ``y = (x_q @ W_t^T) /
      (x_scale * weight_scale)``, i.e. weight_scale *divides*: ``scale = 1/weight_scale``
      (= mean|W| of the latent weights);
    - ``autobitlinear`` offline (``AutoBitLinear``): ``y = fake_quant(x) @ W_t^T *
      weight_scale``: weight_scale *multiplies*: ``scale = weight_scale``.

    ``TernaryWeight.scale`` is always the multiplicative scale (dequant = codes * scale).

Norm weights, embeddings and the full-precision ``lm_head`` are read as float32.

``save`` writes config.json (loadable by ``transformers.BitNetForCausalLM.from_pretrained``;
offline needs ``accelerate``), model.safetensors (float32 + uint8) and, given a
tokenizer, tokenizer.json. Offline needs every projection's out dimension to be a
multiple of 4. Online writes latent weights ``codes * scale / density`` (density = the
fraction of nonzero codes) so that transformers' absmean ternarization gives back exactly
the codes and, to float32 rounding, the scale.

Errors (missing/unreadable/truncated files, bad JSON, missing tensors, wrong shapes or
dtypes, invalid codes, unsupported config) raise ValueError naming the file and tensor.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from golden.modelspec import (
    ATTN_PROJ,
    LAYER_NORMS,
    POSITIVE_INT_FIELDS,
    PROJ,
    Model,
    ModelConfig,
    TernaryWeight,
    build_model,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# transformers' BitNetConfig defaults, used where config.json leaves a key out
HF_DEFAULTS = {
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "hidden_act": "relu2",
    "tie_word_embeddings": False,
}
HF_DEFAULT_ROPE_THETA = 500000.0  # BitNetConfig.default_theta
LINEAR_CLASSES = ("bitlinear", "autobitlinear")
PACK_ROWS = 4  # ternary output rows per packed byte (2 bits each)


def _proj_prefix(i: int, name: str) -> str:
    return f"model.layers.{i}.{'self_attn' if name in ATTN_PROJ else 'mlp'}.{name}"


def _norm_name(i: int, name: str) -> str:
    """The HF tensor of layer ``i``'s RMSNorm weight ``name`` (LAYER_NORMS)."""
    block = {"attn_sub_norm": "self_attn.", "ffn_sub_norm": "mlp."}.get(name, "")
    return f"model.layers.{i}.{block}{name}.weight"


# ----------------------------------------------------------------------------- config
def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable or malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def parse_config(cfg: dict, path: str = CONFIG_FILE) -> tuple[ModelConfig, dict | None]:
    """(ModelConfig, normalized quantization_config or None) from a parsed config.json."""
    if cfg.get("model_type") != "bitnet":
        raise ValueError(f"{path}: model_type must be 'bitnet', got {cfg.get('model_type')!r}")
    if cfg.get("attention_bias"):
        raise ValueError(f"{path}: attention_bias is not supported (BitNet has no biases)")
    kw = dict(HF_DEFAULTS)
    optional = ("rms_norm_eps", "hidden_act", "tie_word_embeddings", "head_dim")
    for k in (*POSITIVE_INT_FIELDS, *optional):
        if cfg.get(k) is not None:
            kw[k] = cfg[k]
    if "num_key_value_heads" not in kw and "num_attention_heads" in kw:
        kw["num_key_value_heads"] = kw["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ValueError(f"{path}: rope_parameters must be an object")
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"{path}: rope_type {rope.get('rope_type')!r} is not supported (only 'default')"
        )
    if cfg.get("rope_scaling"):
        raise ValueError(f"{path}: rope_scaling is not supported")
    theta = rope.get("rope_theta", cfg.get("rope_theta", HF_DEFAULT_ROPE_THETA))
    kw["rope_theta"] = float(theta)
    if isinstance(kw.get("rms_norm_eps"), (int, float)):
        kw["rms_norm_eps"] = float(kw["rms_norm_eps"])
    try:
        mc = ModelConfig.from_hf(kw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None

    q = cfg.get("quantization_config")
    if q is None:
        return mc, None
    if not isinstance(q, dict) or q.get("quant_method") != "bitnet":
        raise ValueError(
            f"{path}: quantization_config.quant_method must be 'bitnet', got "
            f"{(q or {}).get('quant_method') if isinstance(q, dict) else q!r}"
        )
    qn = {
        "linear_class": q.get("linear_class") or "bitlinear",
        "quantization_mode": q.get("quantization_mode") or "offline",
    }
    if qn["linear_class"] not in LINEAR_CLASSES:
        raise ValueError(
            f"{path}: quantization_config.linear_class must be one of "
            f"{LINEAR_CLASSES}, got {qn['linear_class']!r}"
        )
    if qn["quantization_mode"] not in ("online", "offline"):
        raise ValueError(
            f"{path}: quantization_config.quantization_mode must be 'online' or "
            f"'offline', got {qn['quantization_mode']!r}"
        )
    if qn["linear_class"] == "bitlinear" and qn["quantization_mode"] == "online":
        raise ValueError(f"{path}: linear_class 'bitlinear' has no online mode in transformers")
    if q.get("use_rms_norm"):
        raise ValueError(f"{path}: quantization_config.use_rms_norm is not supported")
    return mc, qn


# ----------------------------------------------------------------------------- tensors
class _TensorSource:
    """Tensor name -> (file, loader) over a single or sharded safetensors checkpoint."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        self.files: dict[str, str] = {}
        single = os.path.join(directory, WEIGHTS_FILE)
        index = os.path.join(directory, INDEX_FILE)
        if os.path.exists(single):
            shard_of = None
            shards = [single]
        elif os.path.exists(index):
            wm = _read_json(index).get("weight_map")
            if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                raise ValueError(f"{index}: missing or malformed weight_map")
            shard_of = {k: os.path.join(directory, v) for k, v in wm.items()}
            shards = sorted(set(shard_of.values()))
        else:
            raise ValueError(f"{directory}: neither {WEIGHTS_FILE} nor {INDEX_FILE} found")
        self.handles = {}
        for path in shards:
            try:
                h = safe_open(path, framework="pt")
                names = list(h.keys())
            except FileNotFoundError:
                raise ValueError(f"{path}: file not found") from None
            except Exception as e:  # SafetensorError, OSError: header or size problems
                raise ValueError(f"{path}: malformed or truncated safetensors file ({e})") from None
            self.handles[path] = h
            for n in names:
                if shard_of is None or shard_of.get(n) == path:
                    self.files[n] = path
        if shard_of is not None:
            for n, p in shard_of.items():
                if n not in self.files:
                    raise ValueError(f"{p}: tensor {n!r} listed in {INDEX_FILE} is missing")

    def has(self, name: str) -> bool:
        return name in self.files

    def where(self, name: str) -> str:
        return self.files.get(name, next(iter(self.handles)))

    def get(self, name: str):
        """The tensor as a torch tensor (bfloat16 kept); ValueError naming file and tensor."""
        if name not in self.files:
            raise ValueError(f"{self.where(name)}: missing tensor {name!r}")
        path = self.files[name]
        try:
            return self.handles[path].get_tensor(name)
        except Exception as e:
            raise ValueError(f"{path}: tensor {name!r} unreadable ({e})") from None

    def get_float(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        import torch

        t = self.get(name)
        if not t.is_floating_point():
            raise ValueError(
                f"{self.where(name)}: tensor {name!r}: expected a float dtype, got {t.dtype}"
            )
        if tuple(t.shape) != tuple(shape):
            raise ValueError(
                f"{self.where(name)}: tensor {name!r}: expected shape "
                f"{tuple(shape)}, got {tuple(t.shape)}"
            )
        a = t.to(torch.float32).numpy()
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.where(name)}: tensor {name!r}: non-finite values")
        return np.ascontiguousarray(a)


def _online_ternary(w: np.ndarray) -> TernaryWeight:
    from golden.quant import weight_quant

    codes, inv = weight_quant(w)  # transformers WeightQuant: codes / inv
    return TernaryWeight(codes=codes, scale=1.0 / float(inv))


def _offline_ternary(
    src: _TensorSource, prefix: str, shape: tuple[int, int], linear_class: str
) -> TernaryWeight:
    import torch

    from golden.packing import unpack_hf

    wname, sname = prefix + ".weight", prefix + ".weight_scale"
    w, where = src.get(wname), src.where(wname)
    out_f, in_f = shape
    if w.dtype == torch.uint8:
        packed_shape = (-(-out_f // PACK_ROWS), in_f)
        if out_f % PACK_ROWS or tuple(w.shape) != packed_shape:
            raise ValueError(
                f"{where}: tensor {wname!r}: expected packed uint8 shape "
                f"{packed_shape} for a [{out_f}, {in_f}] projection, got "
                f"{tuple(w.shape)}"
            )
        try:
            codes = unpack_hf(w.numpy())
        except ValueError as e:
            raise ValueError(f"{where}: tensor {wname!r}: {e}") from None
    elif w.is_floating_point() and linear_class == "autobitlinear":
        if tuple(w.shape) != shape:
            raise ValueError(
                f"{where}: tensor {wname!r}: expected shape {shape}, got {tuple(w.shape)}"
            )
        a = w.to(torch.float32).numpy()
        if not np.all(np.isin(a, (-1.0, 0.0, 1.0))):
            raise ValueError(
                f"{where}: tensor {wname!r}: offline float weights must be in {{-1, 0, 1}}"
            )
        codes = a.astype(np.int8)
    else:
        raise ValueError(
            f"{where}: tensor {wname!r}: expected packed uint8 weights for "
            f"linear_class {linear_class!r}, got {w.dtype}"
        )
    s = src.get(sname)
    if not s.is_floating_point() or s.numel() != 1:
        raise ValueError(
            f"{src.where(sname)}: tensor {sname!r}: expected one float, got "
            f"{s.dtype} with shape {tuple(s.shape)}"
        )
    sv = float(s.to(torch.float32).reshape(()))
    if not (math.isfinite(sv) and sv > 0):
        raise ValueError(
            f"{src.where(sname)}: tensor {sname!r}: expected a positive finite scale, got {sv}"
        )
    scale = 1.0 / sv if linear_class == "bitlinear" else sv
    return TernaryWeight(codes=np.ascontiguousarray(codes, dtype=np.int8), scale=scale)


def load(path: str | os.PathLike) -> Model:
    """Read a HF-layout BitNet checkpoint directory (online or offline) into a Model."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a checkpoint directory")
    cfg_path = os.path.join(path, CONFIG_FILE)
    cfg, qcfg = parse_config(_read_json(cfg_path), cfg_path)
    src = _TensorSource(path)
    offline = qcfg is not None and qcfg["quantization_mode"] == "offline"
    h, v = cfg.hidden_size, cfg.vocab_size

    def proj(i, name):
        prefix, shape = _proj_prefix(i, name), cfg.proj_shape(name)
        if offline:
            return _offline_ternary(src, prefix, shape, qcfg["linear_class"])
        return _online_ternary(src.get_float(prefix + ".weight", shape))

    def layer_norm(i, name):
        return src.get_float(_norm_name(i, name), (cfg.norm_dim(name),))

    embed = src.get_float("model.embed_tokens.weight", (v, h))
    if cfg.tie_word_embeddings and not src.has("lm_head.weight"):
        lm_head = embed
    else:
        lm_head = src.get_float("lm_head.weight", (v, h))
    norm = src.get_float("model.norm.weight", (h,))
    return build_model(cfg, embed, norm, lm_head, layer_norm, proj)


# ----------------------------------------------------------------------------- save
def hf_config(cfg: ModelConfig, fmt: str = "offline", linear_class: str = "autobitlinear") -> dict:
    """config.json contents for transformers' BitNetForCausalLM."""
    d = cfg.to_hf()
    d.pop("rope_theta")
    d.update(
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=False,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        dtype="float32",
    )
    if fmt == "offline":
        d["quantization_config"] = {
            "quant_method": "bitnet",
            "linear_class": linear_class,
            "quantization_mode": "offline",
        }
    else:  # AutoBitLinear online: transformers ternarizes the latent weights each forward
        d["quantization_config"] = {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "online",
        }
    return d


def _latent_for(tw: TernaryWeight) -> np.ndarray:
    """Latent float weights whose absmean ternarization is (codes, scale); see module doc."""
    nz = np.count_nonzero(tw.codes)
    if nz == 0:
        return np.zeros(tw.shape, dtype=np.float32)
    return tw.codes.astype(np.float32) * np.float32(tw.scale * tw.codes.size / nz)


def save(
    model: Model,
    path: str | os.PathLike,
    fmt: str = "offline",
    linear_class: str = "autobitlinear",
    tokenizer=None,
) -> None:
    """Write config.json + model.safetensors (+ tokenizer.json) in the HF BitNet layout.

    fmt: "offline" (packed uint8 + weight_scale, ``linear_class`` "bitlinear" stores
    1/scale, "autobitlinear" stores scale) or "online" (latent float32 weights,
    AutoBitLinear online; ``linear_class`` is ignored).
    """
    import torch
    from safetensors.torch import save_file

    from golden.packing import pack_hf

    if fmt not in ("offline", "online"):
        raise ValueError(f"fmt: expected 'offline' or 'online', got {fmt!r}")
    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f"linear_class: expected one of {LINEAR_CLASSES}, got {linear_class!r}")
    if not isinstance(model, Model):
        raise ValueError(f"model: expected golden.modelspec.Model, got {type(model).__name__}")
    cfg, w = model.config, model.weights
    path = os.fspath(path)
    tensors: dict[str, torch.Tensor] = {}

    def f32(name, a, shape):
        a = np.asarray(a)
        if a.shape != tuple(shape):
            raise ValueError(f"model: {name}: expected shape {tuple(shape)}, got {a.shape}")
        tensors[name] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    h, v = cfg.hidden_size, cfg.vocab_size
    if len(w.layers) != cfg.num_hidden_layers:
        raise ValueError(f"model: {len(w.layers)} layers, config says {cfg.num_hidden_layers}")
    f32("model.embed_tokens.weight", w.embed_tokens, (v, h))
    for i, lw in enumerate(w.layers):
        for name in LAYER_NORMS:
            f32(_norm_name(i, name), getattr(lw, name), (cfg.norm_dim(name),))
        for name in PROJ:
            prefix, shape = _proj_prefix(i, name), cfg.proj_shape(name)
            tw = lw.proj.get(name)
            if not isinstance(tw, TernaryWeight) or tw.shape != shape:
                raise ValueError(
                    f"model: {prefix}.weight: expected a TernaryWeight of shape "
                    f"{shape}, got {getattr(tw, 'shape', tw)!r}"
                )
            if fmt == "online":
                f32(prefix + ".weight", _latent_for(tw), shape)
                continue
            if shape[0] % PACK_ROWS:
                raise ValueError(
                    f"model: {prefix}.weight: out dimension {shape[0]} must be a "
                    f"multiple of {PACK_ROWS} to pack"
                )
            tensors[prefix + ".weight"] = torch.from_numpy(pack_hf(tw.codes))
            ws = 1.0 / tw.scale if linear_class == "bitlinear" else tw.scale
            tensors[prefix + ".weight_scale"] = torch.tensor([ws], dtype=torch.float32)
    f32("model.norm.weight", w.norm, (h,))
    if cfg.tie_word_embeddings:
        if not np.array_equal(np.asarray(w.lm_head), np.asarray(w.embed_tokens)):
            raise ValueError("model: lm_head must equal embed_tokens when tie_word_embeddings")
    else:
        f32("lm_head.weight", w.lm_head, (v, h))

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(hf_config(cfg, fmt, linear_class), f, indent=2)
    save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(path)
