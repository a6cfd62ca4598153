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
# Names of the four RMSNorm weights of one decoder layer (``LayerWeights`` fields).
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm", "attn_sub_norm", "ffn_sub_norm")


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
        for f in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
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
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        )
        missing = [k for k in required if k not in kw]
        if missing:
            raise ValueError(f"config.json: missing required keys {missing}")
        return cls(**kw)

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
