"""GGUF files (llama.cpp / bitnet.cpp) <-> ``golden.modelspec.Model`` + ``host.tokenizer``.

Read and written with the ``gguf`` package (llama.cpp's gguf-py): its reader parses the
header and metadata, its writer lays the file out, and ``gguf.quants`` packs and unpacks
the ternary block types.

**Architecture** ``general.architecture``: ``bitnet`` (llama.cpp), and ``bitnet-b1.58`` /
``bitnet-25`` (bitnet.cpp's names for BitNet b1.58 2B-4T). Metadata, with llama.cpp's key
names (``{arch}.`` prefix): ``embedding_length``, ``block_count``, ``feed_forward_length``,
``attention.head_count``, ``attention.head_count_kv`` (default: head_count),
``context_length``, ``attention.layer_norm_rms_epsilon``, ``rope.freq_base`` (default
10000), ``rope.dimension_count`` / ``attention.key_length`` (head_dim; a rotary dimension
other than head_dim is refused), ``vocab_size`` (default: the token embedding's rows) and
``hidden_activation`` (``relu2`` or ``silu``; without it llama.cpp runs ``bitnet`` with
SiLU, and bitnet.cpp's 2B-4T architectures with ReLU²). Float32 metadata reads back as the
shortest decimal that rounds to it (1e-5 stays 1e-5).

**Tensors** (llama.cpp's bitnet names, from ``gguf.TENSOR_NAMES``): ``token_embd``,
``output_norm``, ``output`` (absent: tied to token_embd, which is all llama.cpp's bitnet
graph uses), and per block ``attn_norm``, ``attn_q/k/v``, ``attn_output``,
``attn_sub_norm``, ``ffn_norm``, ``ffn_gate/up/down``, ``ffn_sub_norm``. Norms and
embeddings: F32, F16 or BF16. The seven projections:

- ``TQ2_0`` / ``TQ1_0`` (llama.cpp's ternary types; blocks of 256 weights with one fp16
  scale ``d``; 2 bits per weight, or 5 weights per byte in base 3), dequantized by
  ``gguf.quants``;
- ``I2_S`` (bitnet.cpp, type id 36): the whole tensor, row-major, in blocks of 128 weights
  of 32 bytes: weight ``j`` of a block sits in byte ``j % 32`` at bits
  ``6 - 2*(j // 32)``, code 0/1/2 = -1/0/+1; then one float32 scale (``n/4`` bytes in),
  in a 32-byte tail. This is the x86 layout of bitnet.cpp's ``quantize_i2_s`` and of its
  published ``ggml-model-i2_s.gguf`` files; bitnet.cpp builds for ARM (blocks of 64) or
  without ``ACT_PARALLEL`` (rows interleaved by 4) write other layouts that the file does
  not mark, and are read wrongly;
- F32 / F16 / BF16 values (llama.cpp's converter writes ``ternary * scale`` floats).

An optional ``<name>.scale`` tensor of one float (llama.cpp's ``wq_s`` ... ``ffn_down_s``)
multiplies the projection's output. A projection becomes a ``TernaryWeight`` whose codes
are the signs of the dequantized weight and whose scale is the one magnitude its nonzero
weights share (times ``.scale``); blocks with different ``d`` are refused (the
accelerator has one scale per tensor). Float values that are not ternary are latent
weights and are ternarized with absmean, as ``host.checkpoint`` does.

**Writing** (``write``): the projections as ``tq2_0`` (default), ``tq1_0`` (both need
rows of a multiple of 256 weights) or ``f32`` -- ternary codes (block scale ``d = 1``)
with the scale in ``<name>.scale``: float32 as llama.cpp reads it, or float64 where
float32 would round it (a scale computed as a reciprocal, e.g. ``bitlinear`` checkpoints),
so that the round trip is exact -- or as ``i2_s`` (a multiple of 128 weights), whose
float32 tail is its only scale (exact for float32 scales, as the package's own models
have). Norms and embeddings are float32. The tokenizer goes in twice: its whole
``tokenizer.json`` as ``tokenizer.huggingface.json`` (read back first, so the round trip is
exact) and llama.cpp's ``tokenizer.ggml.*`` keys (``tokens``, ``token_type``, ``merges``,
``bos/eos_token_id``; model ``gpt2`` for byte-level BPE, ``llama`` with merge-order
``scores`` for sentencepiece BPE with byte fallback, ``bert``, ``t5``, else ``none``).

**Tokenizer without the HF JSON** (what llama.cpp's converters write): rebuilt from
``tokenizer.ggml.*`` by transformers' GGUF tokenizer builder (``llama`` sentencepiece,
``gpt2`` byte-level with the pre-tokenizer regex ``tokenizer.ggml.pre`` names, ``t5``);
with a transformers that lacks it, the package rebuilds ``gpt2`` itself (GPT-2 regex, or
LLaMA-3's for ``llama-bpe``) and refuses the rest. BOS is added as
``tokenizer.ggml.add_bos_token`` says (default: for ``llama``, as llama.cpp).

Errors (not a GGUF file, truncated tensors, unknown architecture, an unsupported tensor
type, metadata that disagrees with the tensor shapes, missing tensors) raise ValueError
naming the file and what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from golden.modelspec import PROJ, Model, ModelConfig, TernaryWeight, build_model

GGUF_MAGIC = b"GGUF"
ARCHITECTURES = {"bitnet": "silu", "bitnet-b1.58": "relu2", "bitnet-25": "relu2"}
WRITE_ARCH = "bitnet"
I2_S = 36  # bitnet.cpp's GGML_TYPE_I2_S
I2_S_BLOCK = 128  # weights per I2_S block (x86 layout)
I2_S_TAIL = 32  # bytes after the codes: float32 scale + padding
I2_S_FTYPE = 40  # bitnet.cpp's LLAMA_FTYPE_MOSTLY_I2_S
WRITE_TYPES = ("tq2_0", "tq1_0", "i2_s", "f32")
HIDDEN_ACT_KEY = "{arch}.hidden_activation"
LLAMA3_PRE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
    r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _g():
    import gguf

    return gguf


def is_gguf(path: str | os.PathLike) -> bool:
    """A regular file that starts with the GGUF magic (or is named *.gguf)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    if path.lower().endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


# ----------------------------------------------------------------------------- names
def _names():
    """HF projection / norm name -> GGUF tensor-name template, from gguf's bitnet list."""
    g = _g()
    T = g.MODEL_TENSOR
    allowed = set(g.MODEL_TENSORS[g.MODEL_ARCH.BITNET]) | {T.OUTPUT}
    m = {
        "embed": T.TOKEN_EMBD,
        "norm": T.OUTPUT_NORM,
        "lm_head": T.OUTPUT,
        "input_layernorm": T.ATTN_NORM,
        "post_attention_layernorm": T.FFN_NORM,
        "attn_sub_norm": T.ATTN_SUB_NORM,
        "ffn_sub_norm": T.FFN_SUB_NORM,
        "q_proj": T.ATTN_Q,
        "k_proj": T.ATTN_K,
        "v_proj": T.ATTN_V,
        "o_proj": T.ATTN_OUT,
        "gate_proj": T.FFN_GATE,
        "up_proj": T.FFN_UP,
        "down_proj": T.FFN_DOWN,
    }
    assert all(t in allowed for t in m.values())
    return {k: g.TENSOR_NAMES[t] for k, t in m.items()}


def _tname(kind: str, bid: int | None = None, suffix: str = "weight") -> str:
    return _names()[kind].format(bid=bid) + "." + suffix


def _expected(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name -> (numpy shape, which metadata implies it)."""
    h, v, ff = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size
    nq = cfg.num_attention_heads * cfg.head_dim
    out = {
        _tname("embed"): ((v, h), f"vocab_size {v}, embedding_length {h}"),
        _tname("norm"): ((h,), f"embedding_length {h}"),
    }
    if not cfg.tie_word_embeddings:
        out[_tname("lm_head")] = ((v, h), f"vocab_size {v}, embedding_length {h}")
    for i in range(cfg.num_hidden_layers):
        out[_tname("input_layernorm", i)] = ((h,), f"embedding_length {h}")
        out[_tname("post_attention_layernorm", i)] = ((h,), f"embedding_length {h}")
        out[_tname("attn_sub_norm", i)] = (
            (nq,),
            f"head_count {cfg.num_attention_heads} x head_dim {cfg.head_dim}",
        )
        out[_tname("ffn_sub_norm", i)] = ((ff,), f"feed_forward_length {ff}")
        for p in PROJ:
            desc = (
                f"embedding_length {h}, feed_forward_length {ff}, head_count "
                f"{cfg.num_attention_heads}, head_count_kv {cfg.num_key_value_heads}, "
                f"head_dim {cfg.head_dim}"
            )
            out[_tname(p, i)] = (cfg.proj_shape(p), desc)
    return out


# ----------------------------------------------------------------------------- I2_S
def pack_i2s(codes: np.ndarray, scale: float) -> np.ndarray:
    """bitnet.cpp I2_S bytes (x86 layout, see the module doc) of int8 codes in {-1,0,1}."""
    c = np.asarray(codes, dtype=np.int8).reshape(-1)
    n = c.size
    if n % I2_S_BLOCK:
        raise ValueError(f"I2_S needs a multiple of {I2_S_BLOCK} weights, got {n}")
    q = (c + 1).astype(np.uint8).reshape(-1, 4, 32)  # block, group, position
    packed = (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]
    out = np.zeros(n // 4 + I2_S_TAIL, dtype=np.uint8)
    out[: n // 4] = packed.reshape(-1)
    out[n // 4 : n // 4 + 4] = np.frombuffer(np.float32(scale).tobytes(), dtype=np.uint8)
    return out


def unpack_i2s(data: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """(int8 codes [n], float32 scale) of I2_S bytes; code 3 is invalid."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if n % I2_S_BLOCK:
        raise ValueError(f"I2_S needs a multiple of {I2_S_BLOCK} weights, got {n}")
    b = data[: n // 4].reshape(-1, 1, 32)
    q = (b >> np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)) & 3
    if np.any(q == 3):
        raise ValueError("I2_S code 3 (only 0, 1, 2 = -1, 0, +1 are defined)")
    scale = float(np.frombuffer(data[n // 4 : n // 4 + 4].tobytes(), dtype="<f4")[0])
    return (q.astype(np.int8) - 1).reshape(-1), scale


# ----------------------------------------------------------------------------- reading
@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (rows, cols): GGUF's ne reversed
    type_id: int
    offset: int  # absolute file offset
    nbytes: int | None  # None: unsupported type


def _type_name(type_id: int) -> str:
    """'Q8_0 (id 8)', 'I2_S (id 36)', or 'id 99' for an id no ggml type has."""
    if type_id == I2_S:
        return f"I2_S (id {I2_S})"
    try:
        return f"{_g().GGMLQuantizationType(type_id).name} (id {type_id})"
    except ValueError:
        return f"id {type_id}"


def _reader_class():
    g = _g()

    class _Reader(g.GGUFReader):
        """gguf's reader for the header and metadata; tensor data is read by GGUFFile,
        which also knows bitnet.cpp's I2_S and checks sizes against the file."""

        def _build_tensors(self, start_offs, fields):
            self.tensor_infos = []
            for field in fields:
                _nl, name_data, _nd, dims, raw_dtype, offset = field.parts
                self.tensor_infos.append(
                    (
                        bytes(name_data).decode("utf-8", "replace"),
                        [int(d) for d in dims],
                        int(raw_dtype[0]),
                        int(start_offs + int(offset[0])),
                    )
                )
            self.tensors = []

    return _Reader


def _f32_value(v) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it."""
    return float(str(np.float32(v))) if isinstance(v, (float, np.floating)) else float(v)


class GGUFFile:
    """A BitNet GGUF file: ``config``, ``tokenizer()``, ``load()`` (see the module doc).
    The header, metadata and every tensor's shape are checked when it is opened."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ValueError(f"{self.path}: no such GGUF file")
        try:
            r = _reader_class()(self.path)
        except Exception as e:
            msg = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(f"{self.path}: not a readable GGUF file ({msg})") from None
        self._r = r
        self._data = r.data
        self.fields = {}
        for k, f in r.fields.items():
            try:
                self.fields[k] = f.contents()
            except Exception:
                raise ValueError(f"{self.path}: metadata key {k!r} is unreadable") from None
        self.tensors: dict[str, TensorInfo] = {}
        g = _g()
        size = len(self._data)
        for name, dims, tid, off in r.tensor_infos:
            shape = tuple(reversed(dims))
            n = int(np.prod(dims, dtype=np.int64)) if dims else 1
            nbytes = None
            if tid == I2_S:
                nbytes = n // 4 + I2_S_TAIL
            else:
                try:
                    qt = g.GGMLQuantizationType(tid)
                    bs, ts = g.GGML_QUANT_SIZES[qt]
                except (ValueError, KeyError):
                    qt = None  # reported when the tensor is read
                if qt is not None:
                    if dims and dims[0] % bs:
                        raise ValueError(
                            f"{self.path}: tensor {name!r}: row of {dims[0]} is "
                            f"not a multiple of the {qt.name} block size {bs}"
                        )
                    nbytes = n // bs * ts
            self.tensors[name] = TensorInfo(name, shape, tid, off, nbytes)
            if nbytes is not None and off + nbytes > size:
                raise ValueError(
                    f"{self.path}: tensor {name!r} is truncated: it needs bytes "
                    f"{off}..{off + nbytes} but the file has {size}"
                )
        self.arch = self.fields.get("general.architecture")
        if not isinstance(self.arch, str) or self.arch not in ARCHITECTURES:
            raise ValueError(
                f"{self.path}: unknown architecture {self.arch!r} (this package "
                f"reads {', '.join(ARCHITECTURES)})"
            )
        self.config = self._config()
        self._check_tensors()

    # -------------------------------------------------------------- metadata
    def _key(self, key: str, default=None, required: bool = False):
        k = key.format(arch=self.arch)
        if k not in self.fields:
            if required:
                raise ValueError(f"{self.path}: missing metadata key {k!r}")
            return default
        return self.fields[k]

    def _int(self, key: str, default=None, required: bool = False):
        v = self._key(key, default, required)
        if v is None:
            return None
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(
                f"{self.path}: metadata {key.format(arch=self.arch)!r}: expected "
                f"a positive integer, got {v!r}"
            )
        return int(v)

    def _config(self) -> ModelConfig:
        g = _g()
        L, A, R = g.Keys.LLM, g.Keys.Attention, g.Keys.Rope
        for k in (R.SCALING_TYPE, R.SCALING_FACTOR):
            if self._key(k) not in (None, "none", 1.0):
                raise ValueError(f"{self.path}: {k.format(arch=self.arch)} is not supported")
        h = self._int(L.EMBEDDING_LENGTH, required=True)
        heads = self._int(A.HEAD_COUNT, required=True)
        kv = self._int(A.HEAD_COUNT_KV, heads)
        head_dim = (
            self._int(A.KEY_LENGTH)
            or self._int(R.DIMENSION_COUNT)
            or (h // heads if h % heads == 0 else None)
        )
        if head_dim is None:
            raise ValueError(
                f"{self.path}: embedding_length {h} is not a multiple of "
                f"head_count {heads} and no attention.key_length is given"
            )
        for k in (A.VALUE_LENGTH, R.DIMENSION_COUNT):
            v = self._int(k)
            if v is not None and v != head_dim:
                raise ValueError(
                    f"{self.path}: {k.format(arch=self.arch)} = {v} differs from "
                    f"the head dimension {head_dim} (partial rotary and unequal "
                    f"key/value heads are not supported)"
                )
        emb = self.tensors.get(_tname("embed"))
        vocab = self._int(L.VOCAB_SIZE)
        if vocab is None:
            if emb is None or len(emb.shape) != 2:
                raise ValueError(
                    f"{self.path}: no vocab_size and no 2-D {_tname('embed')!r} tensor"
                )
            vocab = emb.shape[0]
        act = self._key(HIDDEN_ACT_KEY, ARCHITECTURES[self.arch])
        if act not in ("relu2", "silu"):
            raise ValueError(
                f"{self.path}: {HIDDEN_ACT_KEY.format(arch=self.arch)} {act!r} is "
                f"not supported (relu2 or silu)"
            )
        eps = self._key(A.LAYERNORM_RMS_EPS, required=True)
        theta = self._key(R.FREQ_BASE, 10000.0)
        try:
            return ModelConfig(
                vocab_size=vocab,
                hidden_size=h,
                intermediate_size=self._int(L.FEED_FORWARD_LENGTH, required=True),
                num_hidden_layers=self._int(L.BLOCK_COUNT, required=True),
                num_attention_heads=heads,
                num_key_value_heads=kv,
                max_position_embeddings=self._int(L.CONTEXT_LENGTH, required=True),
                rms_norm_eps=_f32_value(eps),
                rope_theta=_f32_value(theta),
                hidden_act=act,
                tie_word_embeddings=_tname("lm_head") not in self.tensors,
                head_dim=head_dim,
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"{self.path}: metadata: {e}") from None

    def _check_tensors(self) -> None:
        want = _expected(self.config)
        for name, (shape, desc) in want.items():
            ti = self.tensors.get(name)
            if ti is None:
                raise ValueError(f"{self.path}: missing tensor {name!r}")
            if ti.shape != shape:
                raise ValueError(
                    f"{self.path}: tensor {name!r} has shape {ti.shape}, but the "
                    f"metadata ({desc}) implies {shape}"
                )
        for name, ti in self.tensors.items():
            if name in want:
                continue
            base = name[: -len(".scale")] if name.endswith(".scale") else None
            if base is not None and base + ".weight" in want and ti.shape in ((1,), ()):
                continue
            raise ValueError(
                f"{self.path}: unexpected tensor {name!r} for a {self.arch} model "
                f"with block_count {self.config.num_hidden_layers}"
            )

    # -------------------------------------------------------------- tensors
    def _raw(self, ti: TensorInfo) -> np.ndarray:
        if ti.nbytes is None:
            raise ValueError(
                f"{self.path}: tensor {ti.name!r}: unsupported tensor type {_type_name(ti.type_id)}"
            )
        return np.asarray(self._data[ti.offset : ti.offset + ti.nbytes])

    def _float(self, name: str, f64: bool = False) -> np.ndarray:
        g = _g()
        Q = g.GGMLQuantizationType
        ti = self.tensors[name]
        if f64 and ti.type_id == Q.F64:
            a = np.frombuffer(self._raw(ti).tobytes(), dtype="<f8").reshape(ti.shape)
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{self.path}: tensor {name!r}: non-finite values")
            return a
        if ti.type_id not in (Q.F32, Q.F16, Q.BF16):
            raise ValueError(
                f"{self.path}: tensor {name!r}: unsupported tensor type "
                f"{_type_name(ti.type_id)} for a norm or "
                f"embedding (F32, F16 or BF16)"
            )
        raw = self._raw(ti)
        qt = Q(ti.type_id)
        rows = int(np.prod(ti.shape[:-1])) if len(ti.shape) > 1 else 1
        a = g.quants.dequantize(raw.reshape(rows, -1), qt).astype(np.float32)
        a = np.ascontiguousarray(a.reshape(ti.shape))
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.path}: tensor {name!r}: non-finite values")
        return a

    def _ternary(self, name: str) -> TernaryWeight:
        g = _g()
        Q = g.GGMLQuantizationType
        ti = self.tensors[name]
        rows, cols = ti.shape
        mult = 1.0
        sname = name[: -len(".weight")] + ".scale"
        if sname in self.tensors:
            sv = self._float(sname, f64=True).reshape(-1)
            if sv.size != 1 or not (np.isfinite(sv[0]) and sv[0] > 0):
                raise ValueError(
                    f"{self.path}: tensor {sname!r}: expected one positive "
                    f"finite float, got {sv.tolist()}"
                )
            mult = float(sv[0])

        def weight(codes, scale):
            try:
                return TernaryWeight(codes=np.ascontiguousarray(codes, dtype=np.int8), scale=scale)
            except ValueError as e:
                raise ValueError(f"{self.path}: tensor {name!r}: {e}") from None

        if ti.type_id == I2_S:
            try:
                codes, s = unpack_i2s(self._raw(ti), rows * cols)
            except ValueError as e:
                raise ValueError(f"{self.path}: tensor {name!r}: {e}") from None
            return weight(codes.reshape(rows, cols), float(np.float32(s)) * mult)
        if ti.type_id in (Q.TQ1_0, Q.TQ2_0):
            w = g.quants.dequantize(self._raw(ti).reshape(rows, -1), Q(ti.type_id))
            quantized = True
        elif ti.type_id in (Q.F32, Q.F16, Q.BF16):
            w = self._float(name)
            quantized = False
        else:
            raise ValueError(
                f"{self.path}: tensor {name!r}: unsupported tensor type "
                f"{_type_name(ti.type_id)} for a ternary projection (TQ1_0, "
                f"TQ2_0, I2_S, F32, F16, BF16)"
            )
        w = np.asarray(w, dtype=np.float32).reshape(rows, cols)
        if not np.all(np.isfinite(w)):
            raise ValueError(f"{self.path}: tensor {name!r}: non-finite values")
        codes = np.sign(w).astype(np.int8)
        mags = np.abs(w[codes != 0])
        if mags.size == 0:
            return weight(codes, mult)
        if np.all(mags == mags[0]):  # ternary values: one magnitude
            return weight(codes, float(mags[0]) * mult)
        if quantized:
            raise ValueError(
                f"{self.path}: tensor {name!r}: its blocks carry different "
                f"scales ({float(mags.min()):g} .. {float(mags.max()):g}); the "
                f"accelerator needs one scale per tensor"
            )
        from golden.quant import weight_quant  # latent float weights: absmean, as transformers

        codes, inv = weight_quant(w)
        return weight(codes, mult / float(inv))

    def load(self) -> Model:
        cfg = self.config
        embed = self._float(_tname("embed"))
        lm_head = embed if cfg.tie_word_embeddings else self._float(_tname("lm_head"))
        return build_model(
            cfg,
            embed,
            self._float(_tname("norm")),
            lm_head,
            lambda i, name: self._float(_tname(name, i)),
            lambda i, name: self._ternary(_tname(name, i)),
        )

    # -------------------------------------------------------------- tokenizer
    def tokenizer(self):
        """The tokenizer the file carries (see the module doc)."""
        from host.tokenizer import Tokenizer

        g = _g()
        K = g.Keys.Tokenizer
        where = f"{self.path}: tokenizer"

        def tid(key):
            v = self.fields.get(key)
            if v is None:
                return None
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"{self.path}: metadata {key!r}: expected a token id, got {v!r}")
            return int(v)

        eos = [i for i in (tid(K.EOS_ID), tid(K.EOT_ID), tid(K.EOM_ID)) if i is not None]
        bos = tid(K.BOS_ID)
        add_bos = self.fields.get(K.ADD_BOS)
        add_bos = bool(add_bos) if add_bos is not None else None
        hf = self.fields.get(K.HF_JSON)
        if isinstance(hf, str):
            return Tokenizer.from_json(
                hf, path=f"{self.path}: {K.HF_JSON}", eos_ids=eos, bos_id=bos, add_bos=add_bos
            )
        model = self.fields.get(K.MODEL)
        if model is None or model in ("none", "no_vocab"):
            raise ValueError(
                f"{where}: the file carries no tokenizer ({K.HF_JSON} is missing "
                f"and {K.MODEL} is {model!r})"
            )
        if add_bos is None:  # llama.cpp: sentencepiece vocabularies add BOS
            add_bos = model == "llama"
        return Tokenizer(
            self._ggml_tokenizer(model, where), eos_ids=eos, bos_id=bos, add_bos=add_bos, path=where
        )

    def _ggml_tokenizer(self, model: str, where: str):
        """A tokenizers.Tokenizer rebuilt from tokenizer.ggml.* by transformers' GGUF
        tokenizer builder (sentencepiece 'llama', byte-level 'gpt2' with its pre-tokenizer
        regex, unigram 't5'); where transformers has no such builder, 'gpt2' only."""
        K = _g().Keys.Tokenizer
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import (
                convert_gguf_tokenizer,
                get_gguf_tokenizer,
            )
        except ImportError:
            if model != "gpt2":
                raise ValueError(
                    f"{where}: {K.MODEL} {model!r} without {K.HF_JSON} needs "
                    f"transformers' GGUF tokenizer builder (transformers."
                    f"integrations.gguf), which this transformers lacks"
                ) from None
            tokens, merges = self.fields.get(K.LIST), self.fields.get(K.MERGES)
            if not isinstance(tokens, list) or not isinstance(merges, list):
                raise ValueError(
                    f"{where}: {K.LIST} and {K.MERGES} must be string arrays"
                ) from None
            return _byte_level_bpe(
                tokens, merges, self.fields.get(K.TOKEN_TYPE) or [], self.fields.get(K.PRE), where
            )
        try:
            arch, tdict, _ = get_gguf_tokenizer(self.path)
            return convert_gguf_tokenizer(arch, tdict)[0]
        except Exception as e:
            msg = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(
                f"{where}: cannot rebuild the tokenizer of {K.MODEL} {model!r} ({msg})"
            ) from None


def _byte_level_bpe(tokens: list[str], merges: list[str], types: list[int], pre, where: str):
    import tokenizers as t

    vocab = {}
    for i, s in enumerate(tokens):
        vocab.setdefault(s, i)
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise ValueError(f"{where}: merge {m!r} is not 'left right'")
        pairs.append((a, b))
    try:
        tk = t.Tokenizer(t.models.BPE(vocab, pairs))
    except Exception as e:
        raise ValueError(f"{where}: cannot build a BPE model ({str(e).splitlines()[0]})") from None
    if pre in ("llama-bpe", "llama3", "llama-v3"):
        tk.pre_tokenizer = t.pre_tokenizers.Sequence(
            [
                t.pre_tokenizers.Split(t.Regex(LLAMA3_PRE), behavior="isolated"),
                t.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tk.pre_tokenizer = t.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = t.decoders.ByteLevel()
    control = [tokens[i] for i, ty in enumerate(types) if ty == 3 and i < len(tokens)]
    if control:
        tk.add_special_tokens([t.AddedToken(s, special=True, normalized=False) for s in control])
    return tk


# ----------------------------------------------------------------------------- writing
def _tokenizer_metadata(w, tok, hf_json: bool) -> None:
    import json

    g = _g()
    data = json.loads(tok.to_json())
    model = data.get("model", {})
    mtype = model.get("type")
    n = tok.vocab_size
    tokens = []
    for i in range(n):
        s = tok.tk.id_to_token(i)
        if s is None:
            raise ValueError(f"tokenizer: no token with id {i} (ids must be contiguous)")
        tokens.append(s)
    special = {i for i, a in tok.tk.get_added_tokens_decoder().items() if a.special}
    added = set(tok.tk.get_added_tokens_decoder())
    types = [
        g.TokenType.CONTROL
        if i in special
        else g.TokenType.USER_DEFINED
        if i in added
        else g.TokenType.NORMAL
        for i in range(n)
    ]
    pre = data.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" or any(
        p.get("type") == "ByteLevel" for p in pre.get("pretokenizers", []) or []
    )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if mtype == "BPE" and byte_level:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_merges(merges)
    elif mtype == "BPE" and model.get("byte_fallback"):  # sentencepiece BPE (LLaMA-2)
        w.add_tokenizer_model("llama")
        rank = {m.replace(" ", ""): r for r, m in reversed(list(enumerate(merges)))}
        w.add_token_scores([-float(rank.get(t, 0)) for t in tokens])  # merge priority
        w.add_token_merges(merges)
        types = [
            g.TokenType.BYTE
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">") and ty == g.TokenType.NORMAL
            else ty
            for t, ty in zip(tokens, types, strict=False)
        ]
    elif mtype == "WordPiece":
        w.add_tokenizer_model("bert")
    elif mtype == "Unigram":
        w.add_tokenizer_model("t5")
        w.add_token_scores([float(s) for _, s in model.get("vocab", [])])
    else:  # no llama.cpp equivalent (e.g. the character tokenizer)
        w.add_tokenizer_model("none")
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    if tok.bos_id is not None:
        w.add_bos_token_id(tok.bos_id)
        w.add_add_bos_token(tok.add_bos)
    if tok.eos_ids:
        w.add_eos_token_id(tok.eos_ids[0])
        if len(tok.eos_ids) > 1:
            w.add_eot_token_id(tok.eos_ids[1])
    if hf_json:
        w.add_string(g.Keys.Tokenizer.HF_JSON, tok.tk.to_str())


def write(
    model: Model,
    tokenizer,
    path: str | os.PathLike,
    qtype: str = "tq2_0",
    name: str | None = None,
    hf_json: bool = True,
) -> None:
    """Write ``model`` (+ ``tokenizer``) as a ``bitnet`` GGUF file (see the module doc)."""
    g = _g()
    Q = g.GGMLQuantizationType
    if qtype not in WRITE_TYPES:
        raise ValueError(f"qtype: expected one of {WRITE_TYPES}, got {qtype!r}")
    cfg, wts = model.config, model.weights
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer: {tokenizer.vocab_size} tokens, the model {cfg.vocab_size}")
    path = os.fspath(path)
    tensors: list[tuple[str, np.ndarray, int | None, tuple[int, ...] | None]] = []

    def f32(tname, a, shape):
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.shape != tuple(shape):
            raise ValueError(f"model: {tname}: expected shape {tuple(shape)}, got {a.shape}")
        tensors.append((tname, a, None, None))

    h, v = cfg.hidden_size, cfg.vocab_size
    f32(_tname("embed"), wts.embed_tokens, (v, h))
    f32(_tname("norm"), wts.norm, (h,))
    if not cfg.tie_word_embeddings:
        f32(_tname("lm_head"), wts.lm_head, (v, h))
    for i, lw in enumerate(wts.layers):
        f32(_tname("input_layernorm", i), lw.input_layernorm, (h,))
        f32(_tname("post_attention_layernorm", i), lw.post_attention_layernorm, (h,))
        f32(_tname("attn_sub_norm", i), lw.attn_sub_norm, (cfg.num_attention_heads * cfg.head_dim,))
        f32(_tname("ffn_sub_norm", i), lw.ffn_sub_norm, (cfg.intermediate_size,))
        for p in PROJ:
            tname, shape = _tname(p, i), cfg.proj_shape(p)
            tw = lw.proj[p]
            if tw.shape != shape:
                raise ValueError(f"model: {tname}: expected shape {shape}, got {tw.shape}")
            codes = tw.codes
            # the scale: float32 as llama.cpp reads it, float64 where float32 would round it
            sc = np.float32(tw.scale)
            sc = sc if float(sc) == tw.scale else np.float64(tw.scale)
            scale_t = (tname[: -len(".weight")] + ".scale", np.array([sc]), None, None)
            if qtype == "f32":
                tensors += [(tname, codes.astype(np.float32), None, None), scale_t]
                continue
            if qtype == "i2_s":
                if codes.size % I2_S_BLOCK:
                    raise ValueError(
                        f"model: {tname}: I2_S needs a multiple of {I2_S_BLOCK} "
                        f"weights, got {shape[0]} x {shape[1]}; use --type f32"
                    )
                tensors.append((tname, pack_i2s(codes, tw.scale).view(np.int8), I2_S, shape))
                continue
            qt = Q.TQ2_0 if qtype == "tq2_0" else Q.TQ1_0
            bs = g.GGML_QUANT_SIZES[qt][0]
            if shape[1] % bs:
                raise ValueError(
                    f"model: {tname}: {qt.name} needs rows of a multiple of {bs} "
                    f"weights, got {shape[1]}; use --type i2_s or f32"
                )
            tensors += [
                (tname, g.quants.quantize(codes.astype(np.float32), qt), int(qt), None),
                scale_t,
            ]

    ftype = {
        "tq2_0": g.LlamaFileType.MOSTLY_TQ2_0,
        "tq1_0": g.LlamaFileType.MOSTLY_TQ1_0,
        "i2_s": I2_S_FTYPE,
        "f32": g.LlamaFileType.ALL_F32,
    }[qtype]
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    w = g.GGUFWriter(path, WRITE_ARCH)
    try:
        w.add_name(name or os.path.splitext(os.path.basename(path))[0])
        w.add_vocab_size(v)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(h)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_string(HIDDEN_ACT_KEY.format(arch=WRITE_ARCH), cfg.hidden_act)
        w.add_file_type(int(ftype))
        w.add_quantization_version(g.GGML_QUANT_VERSION)
        if tokenizer is not None:
            _tokenizer_metadata(w, tokenizer, hf_json)
        for tname, a, raw, raw_shape in tensors:
            if raw is None:
                w.add_tensor(tname, a)
            elif raw == I2_S:  # not in gguf's enum: written as raw bytes of type 36
                w.add_tensor(tname, a, raw_shape=raw_shape, raw_dtype=raw)
            else:
                w.add_tensor(tname, a, raw_dtype=Q(raw))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
