"""In-memory description of a BitNet b1.58 model, shared by the loader, the golden forward,
the training exporter and the accelerator runtime.

Hyperparameters use the Hugging Face ``config.json`` names (``model_type: bitnet``).
Ternary projections are held as ``TernaryWeight``: int8 codes in {-1, 0, +1} of shape
[out, in] and ONE multiplicative per-tensor scale, so that the dequantized weight is
``codes * scale`` whatever direction the checkpoint stored its ``weight_scale`` in (the
loader normalizes that).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

# Names of the seven ternary projections of one decoder layer, in HF order.
ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
PROJ = ATTN_PROJ + MLP_PROJ
# Names of the four RMSNorm weights of one decoder layer (``LayerWeights`` fields).
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm", "attn_sub_norm", "ffn_sub_norm")
# ModelConfig fields a config.json must give; with the context, the positive integer ones
REQUIRED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
POSITIVE_INT_FIELDS = (*REQUIRED_FIELDS, "max_position_embeddings")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    hidden_act: str = "relu2"
    tie_word_embeddings: bool = False
    head_dim: int | None = None

    def __post_init__(self) -> None:
        for f in POSITIVE_INT_FIELDS:
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{f}: expected a positive integer, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads: {self.num_key_value_heads} does not divide "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ("relu2", "silu"):
            raise ValueError(f"hidden_act: expected 'relu2' or 'silu', got {self.hidden_act!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size: {self.hidden_size} not divisible by "
                    f"num_attention_heads {self.num_attention_heads}"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim: RoPE needs an even head_dim, got {self.head_dim}")

    @classmethod
    def from_hf(cls, cfg: dict) -> ModelConfig:
        """From a parsed config.json; unknown keys are ignored, missing required ones named."""
        names = {f.name for f in fields(cls)}
        kw = {k: cfg[k] for k in names if k in cfg and cfg[k] is not None}
        missing = [k for k in REQUIRED_FIELDS if k not in kw]
        if missing:
            raise ValueError(f"config.json: missing required keys {missing}")
        return cls(**kw)

    def proj_shape(self, name: str) -> tuple[int, int]:
        """[out, in] of ternary projection ``name`` (PROJ)."""
        h, q, kv, ff = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size
        return {
            "q_proj": (q, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "o_proj": (h, q),
            "gate_proj": (ff, h),
            "up_proj": (ff, h),
            "down_proj": (h, ff),
        }[name]

    def norm_dim(self, name: str) -> int:
        """Length of a layer's RMSNorm weight ``name`` (LAYER_NORMS)."""
        sub = {"attn_sub_norm": self.q_dim, "ffn_sub_norm": self.intermediate_size}
        return sub.get(name, self.hidden_size)

    @property
    def q_dim(self) -> int:
        """Width of all query heads (attention heads x head_dim)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads."""
        return self.num_key_value_heads * self.head_dim

    def to_hf(self) -> dict:
        d = asdict(self)
        d.update(model_type="bitnet", architectures=["BitNetForCausalLM"])
        return d


@dataclass
class TernaryWeight:
    """A ternary projection: ``codes`` int8 [out, in] in {-1,0,1}; dequant = codes * scale."""

    codes: np.ndarray
    scale: float

    def __post_init__(self) -> None:
        c = self.codes
        if not isinstance(c, np.ndarray) or c.dtype != np.int8 or c.ndim != 2:
            raise ValueError(
                f"codes: expected a 2-D int8 array, got "
                f"{getattr(c, 'dtype', type(c))} with shape {getattr(c, 'shape', None)}"
            )
        if c.size and (c.min() < -1 or c.max() > 1):
            raise ValueError("codes: values outside {-1, 0, 1}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale: expected a positive finite float, got {self.scale!r}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def dequant(self, dtype=np.float32) -> np.ndarray:
        return self.codes.astype(dtype) * dtype(self.scale)


@dataclass
class LayerWeights:
    input_layernorm: np.ndarray  # [hidden] float32
    post_attention_layernorm: np.ndarray  # [hidden]
    attn_sub_norm: np.ndarray  # [hidden] (num_heads * head_dim)
    ffn_sub_norm: np.ndarray  # [intermediate]
    proj: dict[str, TernaryWeight]  # keys ATTN_PROJ + MLP_PROJ


@dataclass
class ModelWeights:
    embed_tokens: np.ndarray  # [vocab, hidden] float32
    layers: list[LayerWeights]
    norm: np.ndarray  # [hidden]
    lm_head: np.ndarray  # [vocab, hidden] float32 (not ternary, as in HF)


@dataclass
class Model:
    config: ModelConfig
    weights: ModelWeights


def build_model(config: ModelConfig, embed_tokens, norm, lm_head, layer_norm, proj) -> Model:
    """A Model from its tensors: ``layer_norm(i, name)`` gives RMSNorm weight ``name``
    (LAYER_NORMS) of layer ``i``, ``proj(i, name)`` its projection ``name`` (PROJ, a
    TernaryWeight); each layer's projections are asked for first."""
    layers = []
    for i in range(config.num_hidden_layers):
        projections = {name: proj(i, name) for name in PROJ}
        norms = {name: layer_norm(i, name) for name in LAYER_NORMS}
        layers.append(LayerWeights(**norms, proj=projections))
    weights = ModelWeights(embed_tokens=embed_tokens, layers=layers, norm=norm, lm_head=lm_head)
    return Model(config=config, weights=weights)
