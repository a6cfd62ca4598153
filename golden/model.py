"""BitNet b1.58 forward pass: golden models of the whole network, in two modes.

Architecture exactly as ``transformers`` 5.x ``BitNetForCausalLM`` (``model_type:
bitnet``): embeddings; per layer ``input_layernorm`` -> q/k/v BitLinear -> RoPE
(rotate-half) -> causal GQA attention (query head h reads KV head h // (n_heads/n_kv))
-> ``attn_sub_norm`` -> o_proj -> residual; ``post_attention_layernorm`` -> gate/up ->
act(gate) * up (``relu2`` or ``silu``) -> ``ffn_sub_norm`` -> down_proj -> residual;
final ``norm``; ``lm_head``.

    gm = GoldenModel(model, mode="integer")       # model: golden.modelspec.Model
    cache = gm.new_cache()
    logits = gm.forward(prompt_ids, cache)         # prefill, [T, vocab] float32
    logits = gm.forward([next_id], cache)          # decode: identical to a full forward

``tokens`` is [T] (logits [T, vocab]) or a batch [B, T] (logits [B, T, vocab]); with a
cache, positions continue from ``cache.length``; the cache holds at most
``max_position_embeddings`` positions (ValueError beyond). Prefill and decode give
bit-identical (integer) / float-identical-up-to-BLAS-order (reference) results as one
full-sequence forward, because every op is per token except attention, which only reads
keys at positions <= the query's.

Mode ``"reference"``: float32 with fake quantization exactly as transformers
(``AutoBitLinear`` online / ``BitLinear``): activations per token
``x_q = clamp(round(x * 127/max|x|))`` (``golden.quant.act_fake_quant``, bit-equal to
transformers), weights ``codes * scale`` (``TernaryWeight``), RMSNorm in float32, RoPE
cos/sin from float32 angles (as transformers), float32 softmax, float32 lm_head.
``dtype=np.float64`` computes the same formulas in float64 (to compare semantics with
transformers without float32 summation-order noise; see tests/test_model.py).

Mode ``"integer"``: the datapath the accelerator computes, every approximation on, as
an explicit sequence of block-level ops over integer tensors (below). The accelerator's
command stream mirrors it op for op and must match it bit for bit; ``trace=[]`` collects
every op's outputs (``forward(..., trace=lst)`` appends ``(layer, op, {name: array})``).

Ablations (reference mode only; the study notebooks use them)
=============================================================

``GoldenModel(model, "reference", approx={...}, proj_hook=..., act_hook=...)`` is the
reference forward with single hardware approximations put back into the float path
(``approx``: names from ``APPROXIMATIONS``); with none and no hooks it is the reference
forward itself. The switches act per token (or, for attention, on keys <= the query),
so a KV-cache decode stays equal to a full forward as in plain reference mode.

``rmsnorm``
    Every RMSNorm that feeds a BitLinear (input, attn_sub, post_attention, ffn_sub) is
    the fixed-point block (``op_norm_quant``: integer sum of squares, LUT+Newton rsqrt,
    hardware INT8 quantizer) on the residual in Q15.16, with gamma in int16 as
    ``compile_integer`` makes it; its dequantized INT8 output feeds the BitLinear (whose
    own fake quantizer then gives back the same codes).
``rope``
    RoPE of q and k by ``golden.rope.rope_fx`` (Q1.14 cos/sin tables, rounding) on the
    exact int32 accumulators ``x_q @ codes.T``, as the integer datapath does.
``attn_int8``
    q (after RoPE), k (after RoPE) and v quantized to INT8 absmax per (token, head)
    (``golden.quant.act_fake_quant``; the hardware quantizer rounds half up instead of
    half to even, within 1 LSB).
``softmax``
    Attention logits rounded to the softmax input format (signed int16 Q7.8,
    saturating) and the integer online softmax ``golden.softmax.softmax_fx``,
    probabilities UQ0.16.
``act``
    The FFN activation unit: ``relu2`` -- gate and up quantized per token to
    ``ffn_bits`` (16) bit absmax, square exact (``golden.activations.relu2``);
    ``silu`` -- gate rounded to Q7.8 int16 and ``golden.activations.silu_fx``, up
    quantized to 16 bits.
``lm_head``
    Final-norm output and lm_head rows INT8 absmax (``golden.quant.act_quant``), as the
    integer model's head.

Hooks: ``proj_hook(layer, name, x)`` is called with the float input of every projection
(before its activation quantizer). ``act_hook(layer, g, tok_scale)`` replaces the FFN
activation act(g) (before the product with up): ``g = acc * tok_scale`` with ``acc`` the
exact integer accumulator of the gate projection and ``tok_scale`` [B, T, 1] = s_w / s_x
(weight scale over the token's activation scale); it returns act(g) as floats (e.g. an
analog NL-ADC's ReLU^2, notebooks/nl_adc.py).

Thresholded activation sparsity (integer mode; ``golden.sparsity``)
====================================================================

``GoldenModel(model, "integer", act_sparsity=golden.sparsity.ActSparsity(...))``: TEAL /
WINA zero the INT8 input x_q of a projection where its score is <= that projection's
threshold before the TLMM (each projection its own copy: q, k, v share a norm output);
CATS zeroes ReLU^2 gate accumulators whose 16-bit code g16 is in (0, tau] before the up
mask and ``act`` (SiLU: ``op_act``'s output a with |a| <= tau). Every other op is
unchanged; ``act_sparsity=None`` (or every tau 0) is the dense forward, bit for bit.
``sparsity_hook(layer, name, arrays)`` sees every projection's TLMM (name a projection,
arrays ``x_in`` before and ``x_q`` after the threshold, ``acc``, ``mask`` or None) and
every FFN gate (name ``"act"``, ``gate_score``: CATS's score of each gate before its
threshold, int64; SiLU: the LUT's output also with an ADC);
``host.sparsity`` calibrates and counts bytes with it.

Integer datapath formats
========================

Notation: ``B`` = ``RequantConfig.mult_bits`` (16). A *scale* is a pair (mant, shift)
meaning ``mant * 2^-shift``; mant is unsigned, normalized to [2^(B-1), 2^B) (0 for a zero
scale, then shift = 0); shift is a signed integer. ``rhu(v, s) = (v + 2^(s-1)) >> s``
(round half up, ``>>`` arithmetic = floor; a negative s is an exact left shift, then the
result saturates). ``requant(acc, sc, f, bits)`` = ``golden.requant.requantize(acc,
mant, shift - f)`` saturating to signed ``bits`` (shift - f < 0: left shift, saturating;
> 63: 63): it puts ``acc * sc`` into fixed point Q.f. ``act_max`` = 127.

Scale arithmetic (per-token scalars, a 16x16 multiplier and a normalizer in hardware):

- ``scale_mul(a, b)``: p = a.mant * b.mant (< 2^2B), r = bit_length(p) - B,
  mant = rhu(p, r) (carry to 2^B: mant >>= 1, r += 1), shift = a.shift + b.shift - r.
- ``scale_of_int(v)`` for an unsigned integer v (an amax): r = bit_length(v) - B,
  mant = rhu(v, r) (r <= 0: exact left shift), shift = -r, with the same carry rule.
- Host constants ``const(x)`` for real x > 0: ``golden.requant.quantize_multiplier``.

Host-compiled constants (``compile_integer``; no float at run time):

- embedding table: int32 Q.``NormConfig.in_frac_bits`` (Q15.16), rhu of x * 2^16.
- norm weights: ``gamma_q = rhu(gamma * 2^(GF - g_exp))`` int16 with a per-vector
  exponent g_exp chosen so max|gamma_q| is in [2^14, 2^15) (full int16 precision); the
  norm's output scale shift is corrected by ``- g_exp`` (exact).
- projections: ternary codes int8 [out, in] and one scale constant each:
  ``c_q = s_wq / (act_max * sqrt(head_dim))`` (the attention 1/sqrt(d) folded in),
  ``c_k = s_wk / kv_max``, ``c_v = s_wv / kv_max``, ``c_o = s_wo``, ``c_d = s_wd``;
  relu2: ``c_g = s_wg / A16``, ``c_u = s_wu / A16`` (A16 = 2^(ffn_bits-1) - 1); silu:
  ``c_g = s_wg``. s_w is the multiplicative per-tensor weight scale (dequant = codes*s_w).
- lm_head: INT8 per row, ``golden.quant.act_quant`` (absmax per output row, round half
  even); row scale kept as float on the host (the head runs on the host ARM cores, as in
  TeLLMe v2).

Ops of one layer, in command-stream order (shapes per token; T tokens at once):

1. ``norm_quant`` (input_layernorm): residual ``h`` int32 Q15.16 [H] ->
   ``golden.rmsnorm.rmsnorm_quant`` -> ``x_q`` int8 [H] and scale ``sx`` (shift - g_exp).
2. ``tlmm`` q/k/v: ``acc = x_q @ codes.T`` int32 exact (``golden.tlmm.tlmm``; see
   "speed" below).
3. ``rope_quant`` q and k: ``golden.rope.rope_fx`` on the int32 accumulators per head
   (RoPE is linear and the row's scale is uniform, so it runs before any rescale; int32
   out, saturating), then ``golden.quant.hw_act_quant`` per (token, head) over head_dim
   -> int8 codes + amax; scale ``sq = scale_mul(scale_mul(sx, c_q), scale_of_int(amax))``
   (likewise sk with c_k). v: hw_act_quant of acc_v per (token, KV head), scale
   ``sv`` with c_v. K and V codes and scales are appended to the KV cache. KV codes are
   ``ForwardConfig.kv_bits`` wide (``kv_quant_config``): 8 (as q), or 4 -- the same
   quantizer with act_max ``kv_max`` = 7 (codes in [-7, 7]), still one scale per
   (token, KV head) (a streaming append can finalize only per-token scales; KIVI's
   per-channel K would need scales over future tokens); kv_max is folded into c_k, c_v.
4. ``qk``: ``s = q_q . k_q`` int32 (|s| <= 2^7 * (kv_max + 1) * head_dim), per (query, key)
   ``l = requant(s, scale_mul(sq, sk), SoftmaxConfig.in_frac_bits, in_bits)`` -> int16
   Q7.8 logits.
5. ``softmax``: ``golden.softmax.softmax_fx(l, causal=True)`` (queries are the last T
   of the S cached positions) -> p uint16 UQ0.16.
6. ``pv``: per query t and KV head, ``s_min = min(sv.shift)`` over keys j <= t with a
   nonzero scale (a prefix minimum over the cache, so decode == prefill);
   ``pt_j = rhu(p_j * sv_j.mant, B - X + sv_j.shift - s_min)`` (X = ``pv_extra_bits``;
   pt < 2^(P+X)); ``acc = sum_j pt_j * v_q[j]`` int32 (|acc| < 2^(7+X) (2^P + S) < 2^31
   for S < 2^16); output ``o = requant(acc, (1, s_min + P + X - B), IF_res, 32)``
   int32 Q15.16, i.e. ``acc * 2^(B - X - P - s_min)`` in real units.
7. ``norm_quant`` (attn_sub_norm) of o (all heads concatenated) -> x_q, sx.
8. ``tlmm`` o_proj -> acc; ``residual``: ``h = sat32(h + requant(acc, scale_mul(sx, c_o),
   16, 32))``.
9. ``norm_quant`` (post_attention_layernorm) -> x_q, sx; ``tlmm`` gate and up.
10. ``act`` (``ffn_bits`` = F16 = 16):
   relu2: ``g16, ag = hw_act_quant16(acc_g)`` (per token over the intermediate dim),
   ``a = rhu(golden.activations.relu2(g16), F16 - 1)`` (< 2^(F16-1)), scale
   ``sa = scale_mul(sg, sg)`` with shift - (F16 - 1) (a stands for g^2 / 2^(F16-1)),
   ``sg = scale_mul(scale_mul(sx, c_g), scale_of_int(ag))``.
   silu: ``g = requant(acc_g, scale_mul(sx, c_g), ActivationConfig.in_frac_bits,
   in_bits)`` (int16 Q7.8), ``a = golden.activations.silu_fx(g)`` (int16 Q7.8),
   ``sa = (2^(B-1), B - 1 + out_frac_bits)``.
   NL-ADC kinds (``GoldenModel(..., act_adc=golden.nl_adc.ActADC(...))``; N bits, table
   Q = the layer's int16 thresholds, ``c = golden.nl_adc.ramp_counter_codes(X, Q)``):
   relu2 ``"nl"``: X = g16, ``a = 0 if c == 0 else 2c + 1``, ``sa = sg^2`` with shift
   - (2(F16-1) - N - 1); relu2 ``"linear"``: X = g16, t = 2c + 1 - 2^N,
   ``a = t^2 if t > 0 else 0``, ``sa = sg^2`` with shift - (2(F16-1) - 2N); silu
   ``"nl"``: X = g (Q7.8 as above), ``a = rhu(g * (2c + 1), N + 1)`` (g * sigma, sigma =
   (c + 1/2) / 2^N), ``sa = (2^(B-1), B - 1 + in_frac_bits)``. The tables' ideal
   thresholds: ``golden.nl_adc.act_design``.
   up: ``u16, au = hw_act_quant16(acc_u)``, ``su = scale_mul(scale_mul(sx, c_u),
   scale_of_int(au))``.
   product: ``m = requant(a * u16, scale_mul(sa, su), 16, 32)`` int32 Q15.16
   (|a * u16| < 2^30).
11. ``norm_quant`` (ffn_sub_norm) of m; ``tlmm`` down_proj; ``residual`` with c_d.

After the last layer: ``norm_quant`` (final norm) -> x_q, sx; ``lm_head``:
``acc = x_q @ lm_q.T`` int32 on the accelerator; on the host
``logits = acc * sx * lm_row_scale`` in float64, returned as float32.

Residual adds saturate to signed ``NormConfig.in_bits`` (int32). Positions must be
< ``RopeConfig.max_pos`` (the compiler raises max_pos to the model's context) and RoPE
uses the model's ``rope_theta``; RMSNorm uses the model's ``rms_norm_eps``.

Parameters of the whole-layer ops (``ffn_bits``, ``pv_extra_bits``) are in
``golden.config.ForwardConfig`` (``cfg.forward``); every other width comes from the block
sections of golden/config.py.

Simulation details that do not change any bit: the integer matmuls (TLMM, Q.K, P.V,
lm_head) run as float BLAS matmuls on integer-valued operands, exact because every
partial sum is an integer below 2^24 (float32: TLMM |sum| <= 2^7 K, Q.K <= 2^14
head_dim) or 2^53 (float64, used when the bound needs it, e.g. P.V);
``exact_tlmm=True`` runs ``golden.tlmm.tlmm`` (table build + lookup) instead, and
tests/test_model.py checks the whole op trace equal. Attention runs over blocks of
``ATTN_QUERY_BLOCK`` queries, each reading only the keys up to its last query (masked
keys take no part in the softmax, so any block size gives the same bits; tested). In the
trace, logits and probabilities at masked positions are 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cache
from typing import NamedTuple

import numpy as np

from . import activations as _act
from . import nl_adc as _nl_adc
from . import quant as _quant
from . import requant as _requant
from . import rmsnorm as _rmsnorm
from . import rope as _rope
from . import softmax as _softmax
from . import sparsity as _sparsity
from . import tlmm as _tlmm
from .config import DEFAULT, DatapathConfig, RequantConfig
from .fixed import bit_length as _bit_length
from .fixed import rhu as _rhu
from .modelspec import ATTN_PROJ, LAYER_NORMS, MLP_PROJ, Model

MODES = ("reference", "integer")
# hardware approximations that reference mode can switch on one by one (module doc)
APPROXIMATIONS = ("rmsnorm", "rope", "attn_int8", "softmax", "act", "lm_head")
# queries per attention block in the simulation (any value gives the same bits)
ATTN_QUERY_BLOCK = 64

# ---- stated bounds (asserted by tests/test_model.py; error_report measures them) --------
# reference vs transformers, max |logit diff| / max |logit|, float64 compute on both sides
# (float32 differs by float summation order; see tests for that statement)
REF_VS_HF_REL_ERR = 1e-3
# integer vs reference: per-position cosine similarity of the logits is >= 1 - this
INT_COSINE_GAP = 0.01
# integer vs reference greedy next-token agreement on the shipped model, held-out text
GREEDY_AGREEMENT_MIN = 0.95
# KV-cache decode (any chunking) vs one full-sequence forward, integer mode: bit-equal
DECODE_VS_FULL_INT = 0


def attn_vs_float_bound(kv_bits: int) -> float:
    """max |attention output (qk -> softmax -> pv) - float attention| / max|v| on
    Gaussian q, k, v (tests/test_model.py): half a KV code step, 1 / (2 kv_max), bounds V's
    share (each value within half a step of its token's amax, and p sums to 1); K's codes,
    within the same half step, move the logits of unit-variance q and k by about as much
    and p with them: another 1 / (2 kv_max); 0.01 covers the rest of the datapath (INT8 q,
    Q7.8 logits, the softmax LUT). Measured over 400 seeds: 0.005 with the INT8 cache, up to
    0.106 with INT4 (bound 0.153). Keys with an outlier channel (4x) give 0.30 with INT4
    (0.010 INT8): per-token K scales are what a streaming append can write; the held-out
    cost on the shipped model is the measure (README)."""
    return 1.0 / ((1 << (kv_bits - 1)) - 1) + 0.01


# --------------------------------------------------------------------------- integer helpers
class Scale(NamedTuple):
    """mant * 2^-shift, mant normalized to [2^(B-1), 2^B) or 0 (int64 arrays)."""

    mant: np.ndarray
    shift: np.ndarray

    def to_float(self) -> np.ndarray:
        return np.ldexp(
            np.asarray(self.mant, dtype=np.float64),
            (-np.asarray(self.shift, dtype=np.int64)).astype(np.int32),
        )


def _normalize(p, shift, bits: int) -> Scale:
    p = np.asarray(p, dtype=np.int64)
    r = _bit_length(p) - bits
    mant = _rhu(p, r)
    carry = mant >> bits
    mant = mant >> carry
    r = r + carry
    zero = p == 0
    return Scale(np.where(zero, 0, mant), np.where(zero, 0, np.asarray(shift) - r))


def _normalized(m, bits: int) -> bool:
    m = np.asarray(m)
    return bool(np.all((m == 0) | ((m >= 1 << (bits - 1)) & (m < 1 << bits))))


def scale_mul(a: Scale, b: Scale, bits: int) -> Scale:
    """Product of two scales, renormalized to a ``bits``-bit mantissa (round half up)."""
    am, bm = np.asarray(a.mant, dtype=np.int64), np.asarray(b.mant, dtype=np.int64)
    shift = np.asarray(a.shift, dtype=np.int64) + np.asarray(b.shift, dtype=np.int64)
    p = am * bm
    if _normalized(am, bits) and _normalized(bm, bits):
        # same result as _normalize, cheaper: p is 0 or in [2^(2B-2), 2^2B), so
        # r = B - 1 + (p >= 2^(2B-1)) without a general bit_length
        r = (bits - 1) + (p >> (2 * bits - 1))
        mant = (p + np.left_shift(np.int64(1), r - 1)) >> r
        carry = mant >> bits
        zero = p == 0
        return Scale(np.where(zero, 0, mant >> carry), np.where(zero, 0, shift - r - carry))
    return _normalize(p, shift, bits)


def scale_rel_bound(bits: int) -> float:
    """|scale_mul / scale_of_int result - exact| / exact <= 2^-bits: the rounding drops at
    most half of 2^r from a value >= 2^(bits-1+r)."""
    return 2.0**-bits


def scale_of_int(v, bits: int) -> Scale:
    """An unsigned integer (e.g. an amax, < 2^62) as a normalized scale."""
    return _normalize(v, np.zeros(np.shape(v), dtype=np.int64), bits)


def const_scale(x: float, rcfg: RequantConfig) -> Scale:
    """A host constant as (mult, shift) by golden.requant.quantize_multiplier."""
    mult, shift = _requant.quantize_multiplier(x, rcfg)
    return Scale(np.int64(mult), np.int64(shift))


def _shift_scale(sc: Scale, d) -> Scale:
    """sc * 2^-d (exponent adjustment only; zero scales stay (0, 0))."""
    return Scale(sc.mant, np.where(np.asarray(sc.mant) == 0, 0, np.asarray(sc.shift) + d))


@cache
def _rq_cfg(base: RequantConfig, out_bits: int) -> RequantConfig:
    return replace(base, out_bits=out_bits)


def requant(
    acc, sc: Scale, frac_bits: int, out_bits: int, rcfg: RequantConfig = DEFAULT.requant
) -> np.ndarray:
    """acc * sc in signed fixed point Q.frac_bits, saturated to ``out_bits`` (see module doc).

    ``golden.requant.requantize(acc, mant, shift - frac_bits)`` for shifts in
    [0, shift_max]; a shift above shift_max acts as shift_max (the result is already 0
    there: |acc * mant| < 2^47); a negative shift is an exact left shift, saturating.
    """
    cfg = _rq_cfg(rcfg, out_bits)
    acc = np.asarray(acc, dtype=np.int64)
    mant = np.asarray(sc.mant, dtype=np.int64)
    s = np.asarray(sc.shift, dtype=np.int64) - frac_bits
    y = _requant.requantize(acc, mant, np.clip(s, 0, cfg.shift_max), cfg).astype(np.int64)
    left = s < 0
    if np.any(left):
        # exact left shift then saturation; pre-clipping the product to +-2^31 and the
        # shift to 31 changes no result (out_bits <= 32: anything shifted left from beyond
        # +-2^31 saturates) and keeps int64 from overflowing
        ls = np.clip(-s, 0, 31)
        v = np.clip(acc * mant, -(1 << 31), 1 << 31)
        y = np.where(left, np.clip(v << ls, cfg.out_min, cfg.out_max), y)
    return y.astype(np.int8 if out_bits <= 8 else np.int16 if out_bits <= 16 else np.int32)


def _int_matmul(a: np.ndarray, b_t: np.ndarray, bound: float) -> np.ndarray:
    """a @ b_t for integer-valued arrays via float BLAS; exact because every partial sum is
    an integer of magnitude <= ``bound`` (< 2^24 -> float32, < 2^53 -> float64)."""
    if bound < 2.0**24:
        dt = np.float32
    elif bound < 2.0**53:
        dt = np.float64
    else:
        raise ValueError(f"bound: {bound} too large for an exact float matmul")
    return np.matmul(a.astype(dt), b_t.astype(dt)).astype(np.int64)


# --------------------------------------------------------------------------- compiled model
@dataclass
class NormConst:
    """A norm weight as int16 ``gamma_q`` = rhu(gamma * 2^(GF - g_exp)) and its exponent."""

    gamma_q: np.ndarray
    g_exp: int


@dataclass
class ProjConst:
    """A ternary projection: codes int8 [out, in], the weight scale s_w and the folded
    constant scale ``const`` (c_* of the module doc)."""

    codes: np.ndarray
    weight_scale: float
    const: Scale
    codes_t: np.ndarray = field(repr=False, default=None)  # float32 [in, out] for BLAS

    def __post_init__(self) -> None:
        if self.codes_t is None:
            self.codes_t = np.ascontiguousarray(self.codes.T.astype(np.float32))


@dataclass
class LayerConst:
    input_layernorm: NormConst
    post_attention_layernorm: NormConst
    attn_sub_norm: NormConst
    ffn_sub_norm: NormConst
    proj: dict


@dataclass
class IntegerModel:
    """Everything the host compiles for the accelerator (integers only, except the lm_head
    row scales that stay on the host)."""

    config: object  # golden.modelspec.ModelConfig
    cfg: DatapathConfig  # with the model's rms_norm_eps / rope_theta / context
    embed_fx: np.ndarray  # int32 [vocab, hidden], Q.in_frac_bits
    layers: list
    norm: NormConst
    lm_q: np.ndarray  # int8 [vocab, hidden]
    lm_row_scale: np.ndarray  # float64 [vocab]: dequant step max|W_row| / act_max
    act_adc: object = None  # golden.nl_adc.ActADC of the ACT commands (None: no ADC)
    adc_tables: list = field(default_factory=list)  # per layer: int16 thresholds

    def act_adc_arg(self, layer: int):
        """``op_act``'s ``adc`` argument for ``layer`` (None without an ADC)."""
        a = self.act_adc
        return None if a is None else (a.variant, a.bits, self.adc_tables[layer])


def model_datapath_config(model: Model, cfg: DatapathConfig = DEFAULT) -> DatapathConfig:
    """cfg with the model's RMSNorm eps, RoPE theta and enough RoPE table rows."""
    mc = model.config
    return cfg.with_(
        norm=replace(cfg.norm, eps=float(mc.rms_norm_eps)),
        rope=replace(
            cfg.rope,
            theta=float(mc.rope_theta),
            max_pos=max(cfg.rope.max_pos, mc.max_position_embeddings),
        ),
    )


def _compile_norm(gamma: np.ndarray, cfg: DatapathConfig, name: str) -> NormConst:
    g = np.asarray(gamma, dtype=np.float64)
    if not np.all(np.isfinite(g)):
        raise ValueError(f"{name}: non-finite norm weight")
    nc = cfg.norm
    top = nc.gamma_bits - 1
    m = float(np.max(np.abs(g))) if g.size else 0.0
    g_exp = 0 if m == 0 else math.frexp(m)[1] + nc.gamma_frac_bits - top
    q = np.floor(g * 2.0 ** (nc.gamma_frac_bits - g_exp) + 0.5)
    if np.max(np.abs(q), initial=0) > (1 << top) - 1:  # rounded up to 2^top
        g_exp += 1
        q = np.floor(g * 2.0 ** (nc.gamma_frac_bits - g_exp) + 0.5)
    return NormConst(q.astype(np.int16), int(g_exp))


def compile_integer(model: Model, cfg: DatapathConfig = DEFAULT, act_adc=None) -> IntegerModel:
    """Host compilation: quantize every tensor and constant of the integer datapath;
    ``act_adc`` (``golden.nl_adc.ActADC``): the FFN activation through the ACT engine's
    NL-ADC kinds, one threshold table per layer."""
    mc, w = model.config, model.weights
    if act_adc is not None and not isinstance(act_adc, _nl_adc.ActADC):
        raise ValueError(
            f"act_adc: expected golden.nl_adc.ActADC or None, got {type(act_adc).__name__}"
        )
    cfg = model_datapath_config(model, cfg)
    fc = cfg.forward
    rc = cfg.requant
    act_max = cfg.quant.act_max
    wide_max = (1 << (fc.ffn_bits - 1)) - 1
    nc = cfg.norm
    lim = (1 << (nc.in_bits - 1)) - 1
    emb = np.floor(np.asarray(w.embed_tokens, dtype=np.float64) * 2.0**nc.in_frac_bits + 0.5)
    embed_fx = np.clip(emb, -lim - 1, lim).astype(np.int32)
    hd = mc.head_dim
    kv_max = fc.kv_max  # k and v codes are kv_bits wide (the cache's format)
    folds = {
        "q_proj": 1.0 / (act_max * math.sqrt(hd)),
        "k_proj": 1.0 / kv_max,
        "v_proj": 1.0 / kv_max,
        "o_proj": 1.0,
        "down_proj": 1.0,
        "gate_proj": 1.0 / wide_max if mc.hidden_act == "relu2" else 1.0,
        "up_proj": 1.0 / wide_max,
    }
    for k_in in (mc.hidden_size, mc.intermediate_size, mc.num_attention_heads * hd):
        if k_in > cfg.tlmm.max_k():
            raise ValueError(
                f"model: K={k_in} exceeds the TLMM accumulator (max_k {cfg.tlmm.max_k()})"
            )
    layers = []
    for i, lw in enumerate(w.layers):
        proj = {}
        for name in ATTN_PROJ + MLP_PROJ:
            tw = lw.proj[name]
            try:
                c = const_scale(float(tw.scale) * folds[name], rc)
            except ValueError as e:
                raise ValueError(
                    f"model: layer {i} {name} weight scale {tw.scale!r}: {e}"
                ) from None
            proj[name] = ProjConst(codes=tw.codes, weight_scale=float(tw.scale), const=c)
        layers.append(
            LayerConst(
                proj=proj,
                **{k: _compile_norm(getattr(lw, k), cfg, f"layers.{i}.{k}") for k in LAYER_NORMS},
            )
        )
    lm_q, lm_scale = _quant.act_quant(np.asarray(w.lm_head, dtype=np.float32), cfg.quant)
    tables = (
        []
        if act_adc is None
        else [act_adc.table(mc.hidden_act, i, cfg) for i in range(mc.num_hidden_layers)]
    )
    return IntegerModel(
        config=mc,
        cfg=cfg,
        embed_fx=embed_fx,
        layers=layers,
        norm=_compile_norm(w.norm, cfg, "norm"),
        lm_q=lm_q,
        lm_row_scale=1.0 / lm_scale[:, 0].astype(np.float64),
        act_adc=act_adc,
        adc_tables=tables,
    )


# --------------------------------------------------------------------------- integer ops
def permute_ffn(im: IntegerModel, orders) -> IntegerModel:
    """``im`` with layer i's FFN channels in the order ``orders[i]`` (a permutation of
    0..intermediate_size-1): gate_proj / up_proj rows, the ffn_sub_norm gamma and the
    down_proj columns move together, so every output is the same bit for bit (the FFN's
    integer sums, ACT's absmax and the norm's exact sum of squares ignore channel order).
    Exact sparsity uses it to put channels that are zero together into the same up_proj
    row block and down_proj input group (``host.ffn_order``)."""
    n = im.config.intermediate_size
    if len(orders) != len(im.layers):
        raise ValueError(f"orders: expected {len(im.layers)} permutations, got {len(orders)}")
    layers = []
    for i, (lc, order) in enumerate(zip(im.layers, orders, strict=True)):
        order = np.asarray(order)
        if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
            raise ValueError(f"orders[{i}]: not a permutation of 0..{n - 1}")
        pr = dict(lc.proj)
        for name in ("gate_proj", "up_proj"):
            pr[name] = replace(pr[name], codes=pr[name].codes[order], codes_t=None)
        down = pr["down_proj"]
        pr["down_proj"] = replace(
            down, codes=np.ascontiguousarray(down.codes[:, order]), codes_t=None
        )
        norm = replace(lc.ffn_sub_norm, gamma_q=lc.ffn_sub_norm.gamma_q[order])
        layers.append(replace(lc, proj=pr, ffn_sub_norm=norm))
    return replace(im, layers=layers)


def op_embed(tokens: np.ndarray, im: IntegerModel) -> np.ndarray:
    """Residual stream init: int32 Q15.16 rows of the compiled embedding table."""
    return im.embed_fx[tokens]


def op_norm_quant(h: np.ndarray, norm: NormConst, cfg: DatapathConfig) -> tuple[np.ndarray, Scale]:
    """RMSNorm + INT8 quant (golden.rmsnorm); the scale carries the gamma exponent."""
    x_q, mant, shift = _rmsnorm.rmsnorm_quant(h, norm.gamma_q, cfg.norm, cfg.quant)
    return x_q, _shift_scale(Scale(mant, shift), -norm.g_exp)


def op_tlmm(
    x_q: np.ndarray, proj: ProjConst, cfg: DatapathConfig, exact: bool = False, mask=None
) -> np.ndarray:
    """acc = x_q @ codes.T, int32 (golden.tlmm when exact, else the equal BLAS form); with
    ``mask`` (int32, acc's shape: a ReLU^2 FFN's gate accumulators) the outputs whose mask
    entry is <= 0 are 0 -- up_proj only where ReLU(gate) is non-zero (DESIGN §9)."""
    lead, k = x_q.shape[:-1], x_q.shape[-1]
    x2 = x_q.reshape(-1, k)
    if exact:
        acc = _tlmm.tlmm(x2, proj.codes, cfg.tlmm)
    else:
        acc = _int_matmul(x2, proj.codes_t, float(k) * (1 << (cfg.tlmm.act_bits - 1)))
    acc = acc.reshape(*lead, proj.codes.shape[0]).astype(np.int32)
    return acc if mask is None else np.where(np.asarray(mask) > 0, acc, 0).astype(np.int32)


def _heads(a: np.ndarray, n: int) -> np.ndarray:
    """[B, T, n*hd] -> [B, n, T, hd]."""
    b, t, d = a.shape
    return a.reshape(b, t, n, d // n).transpose(0, 2, 1, 3)


def _per_head_scale(sx_c: Scale, amax: np.ndarray, bits: int) -> Scale:
    """scale_mul(token scale [B, T] (already times the constant), amax [B, n, T])."""
    tok = Scale(sx_c.mant[:, None, :], sx_c.shift[:, None, :])
    return scale_mul(tok, scale_of_int(amax, bits), bits)


def kv_quant_config(cfg: DatapathConfig, kv: bool):
    """The quantizer of a ROPE_QUANT output: ``cfg.quant`` (INT8) for q, the KV-cache
    width ``cfg.forward.kv_bits`` for k and v (kv)."""
    bits = cfg.forward.kv_bits if kv else cfg.quant.act_bits
    return cfg.quant if bits == cfg.quant.act_bits else _kv_quant(cfg.quant, bits)


@cache
def _kv_quant(qc, bits: int):
    return replace(qc, act_bits=bits)


def op_rope_quant(
    acc: np.ndarray,
    positions: np.ndarray,
    n_heads: int,
    sx: Scale,
    c: Scale,
    cfg: DatapathConfig,
    kv: bool = False,
) -> tuple[np.ndarray, Scale]:
    """q or k: RoPE on int32 accumulators per head, then absmax per (token, head): INT8,
    or with ``kv`` (k, into the cache) ``cfg.forward.kv_bits`` wide.

    acc int32 [B, T, n*hd] -> (codes int8 [B, n, T, hd], scale [B, n, T])."""
    r = _rope.rope_fx(
        np.ascontiguousarray(_heads(acc, n_heads)).astype(np.int32), positions, cfg.rope
    )
    return _head_quant(r, sx, c, cfg, kv)


def op_v_quant(
    acc: np.ndarray, n_heads: int, sx: Scale, c: Scale, cfg: DatapathConfig, kv: bool = True
) -> tuple[np.ndarray, Scale]:
    """v: absmax per (token, KV head), ``cfg.forward.kv_bits`` wide (INT8 without ``kv``)
    -> (codes int8 [B, n, T, hd], scale [B, n, T])."""
    return _head_quant(np.ascontiguousarray(_heads(acc, n_heads)), sx, c, cfg, kv)


def _head_quant(x, sx: Scale, c: Scale, cfg: DatapathConfig, kv: bool):
    bits = cfg.requant.mult_bits
    x_q, amax = _quant.hw_act_quant(x, kv_quant_config(cfg, kv))
    return x_q, _per_head_scale(scale_mul(sx, c, bits), amax[..., 0], bits)


def op_qk(
    q_q: np.ndarray, sq: Scale, k_q: np.ndarray, sk: Scale, n_rep: int, cfg: DatapathConfig
) -> np.ndarray:
    """Logits int16 Q7.8 [B, nh, T, S] = requant(q_q . k_q, sq * sk)."""
    sc = cfg.softmax
    bits = cfg.requant.mult_bits
    k_rep = np.repeat(k_q, n_rep, axis=1)
    hd = q_q.shape[-1]
    s = _int_matmul(q_q, k_rep.transpose(0, 1, 3, 2), float(hd) * (1 << 14))
    pair = scale_mul(
        Scale(sq.mant[..., :, None], sq.shift[..., :, None]),
        Scale(
            np.repeat(sk.mant, n_rep, axis=1)[..., None, :],
            np.repeat(sk.shift, n_rep, axis=1)[..., None, :],
        ),
        bits,
    )
    return requant(s, pair, sc.in_frac_bits, sc.in_bits, cfg.requant)


def op_softmax(logits: np.ndarray, cfg: DatapathConfig) -> np.ndarray:
    """Causal online softmax (golden.softmax): the T queries are the last T of S keys."""
    return _softmax.softmax_fx(logits, cfg.softmax, causal=True)


def op_pv(p: np.ndarray, v_q: np.ndarray, sv: Scale, n_rep: int, cfg: DatapathConfig) -> np.ndarray:
    """Attention output int32 Q15.16 [B, nh, T, hd] from p UQ0.P and per-key-scaled V."""
    fc = cfg.forward
    bits, x_bits, p_bits = cfg.requant.mult_bits, fc.pv_extra_bits, cfg.softmax.out_bits
    t, s_len = p.shape[-2], p.shape[-1]
    vm = np.repeat(sv.mant, n_rep, axis=1)  # [B, nh, S]
    vs = np.repeat(sv.shift, n_rep, axis=1)
    never = np.iinfo(np.int64).max
    prefix = np.minimum.accumulate(np.where(vm > 0, vs, never), axis=-1)
    s_min = prefix[..., s_len - t :]  # query t sees keys <= its position
    s_min = np.where(s_min == never, 0, s_min)  # [B, nh, T]
    sh = bits - x_bits + vs[..., None, :] - s_min[..., :, None]
    # keys with p = 0 (masked) or a zero scale give 0 whatever the shift; keep it in range
    sh = np.clip(sh, 0, 62)
    pt = _rhu(p.astype(np.int64) * vm[..., None, :], sh)  # < 2^(P+X)
    v_rep = np.repeat(v_q, n_rep, axis=1)
    acc = _int_matmul(pt, v_rep, float(s_len) * (1 << (p_bits + x_bits)) * (1 << 7))
    nc = cfg.norm
    return requant(
        acc,
        Scale(np.int64(1), s_min[..., None] + p_bits + x_bits - bits),
        nc.in_frac_bits,
        nc.in_bits,
        cfg.requant,
    )


def _merge_heads(o: np.ndarray) -> np.ndarray:
    b, n, t, d = o.shape
    return o.transpose(0, 2, 1, 3).reshape(b, t, n * d)


def op_residual(
    h: np.ndarray, acc: np.ndarray, sx: Scale, c: Scale, cfg: DatapathConfig
) -> np.ndarray:
    """h + requant(acc, sx * c) in Q15.16, saturating to signed NormConfig.in_bits."""
    nc = cfg.norm
    bits = cfg.requant.mult_bits
    sc = scale_mul(Scale(sx.mant[..., None], sx.shift[..., None]), c, bits)
    delta = requant(acc, sc, nc.in_frac_bits, nc.in_bits, cfg.requant)
    lim = 1 << (nc.in_bits - 1)
    return np.clip(h.astype(np.int64) + delta, -lim, lim - 1).astype(np.int32)


def relu2_gate(acc_g: np.ndarray, cfg: DatapathConfig) -> np.ndarray:
    """ReLU^2's 16-bit gate codes g16 (per-token absmax of the accumulators), as op_act."""
    wide = replace(cfg.quant, act_bits=cfg.forward.ffn_bits)
    return _quant.hw_act_quant(acc_g, wide)[0]


def silu_gate(acc_g: np.ndarray, sx: Scale, c_g: Scale, cfg: DatapathConfig) -> np.ndarray:
    """SiLU's gate in the ACT input format (int16 Q7.8), as op_act."""
    bits, ac = cfg.requant.mult_bits, cfg.activation
    tok = Scale(sx.mant[..., None], sx.shift[..., None])
    return requant(acc_g, scale_mul(tok, c_g, bits), ac.in_frac_bits, ac.in_bits, cfg.requant)


def op_act(
    acc_g: np.ndarray,
    acc_u: np.ndarray,
    sx: Scale,
    c_g: Scale,
    c_u: Scale,
    hidden_act: str,
    cfg: DatapathConfig,
    adc: tuple | None = None,
    cats_tau: int | None = None,
) -> np.ndarray:
    """Gated FFN product act(gate) * up as int32 Q15.16 (relu2 exact square; silu LUT).

    ``adc`` = (variant, N, table): the ACT NL-ADC kinds (module doc, item 10): the gate is
    converted by ``golden.nl_adc.ramp_counter_codes`` through ``table`` (int, 2^N - 1
    thresholds, ``golden.nl_adc.act_design`` for the ideal ones). ``cats_tau`` (silu
    only): outputs a with |a| <= cats_tau are 0 (CATS, golden.sparsity; ReLU^2's CATS
    acts on the gate accumulators before this op)."""
    fc = cfg.forward
    bits = cfg.requant.mult_bits
    wide = replace(cfg.quant, act_bits=fc.ffn_bits)
    tok = Scale(sx.mant[..., None], sx.shift[..., None])
    if adc is not None:
        variant, n, table = adc
        if variant not in _nl_adc.ACT_VARIANTS or (hidden_act == "silu" and variant != "nl"):
            raise ValueError(f"adc: no ACT kind for {hidden_act} with variant {variant!r}")
        acfg = replace(cfg.adc, bits=int(n))
    if hidden_act == "relu2" and cats_tau is not None:
        raise ValueError("cats_tau: silu only (ReLU^2's CATS thresholds the gate accumulators)")
    if hidden_act == "relu2":
        g16, ag = _quant.hw_act_quant(acc_g, wide)
        sg = scale_mul(scale_mul(tok, c_g, bits), scale_of_int(ag, bits), bits)
        if adc is None:
            a = _rhu(_act.relu2(g16).astype(np.int64), fc.ffn_bits - 1)
            e = fc.ffn_bits - 1
        else:
            c = _nl_adc.ramp_counter_codes(g16.astype(np.int64), table, acfg)
            if variant == "nl":  # y = (2c + 1) * M^2 / 2^(N+1), code 0 -> 0
                a = np.where(c == 0, 0, 2 * c + 1)
                e = 2 * (fc.ffn_bits - 1) - n - 1
            else:  # y = (2c + 1 - 2^N) * M / 2^N, then relu and square
                t = 2 * c + 1 - (1 << n)
                a = np.where(t > 0, t * t, 0)
                e = 2 * (fc.ffn_bits - 1) - 2 * n
        sa = _shift_scale(scale_mul(sg, sg, bits), -e)
    else:
        ac = cfg.activation
        g = silu_gate(acc_g, sx, c_g, cfg)
        if adc is None:
            a = _act.silu_fx(g, ac).astype(np.int64)
            sa = Scale(np.int64(1 << (bits - 1)), np.int64(bits - 1 + ac.out_frac_bits))
        else:  # sigma = (2c + 1) / 2^(N+1); a = g * sigma in Q.in_frac_bits
            c = _nl_adc.ramp_counter_codes(g.astype(np.int64), table, acfg)
            a = _rhu(g.astype(np.int64) * (2 * c + 1), n + 1)
            sa = Scale(np.int64(1 << (bits - 1)), np.int64(bits - 1 + ac.in_frac_bits))
        if cats_tau is not None:
            a = np.where(np.abs(a) <= cats_tau, 0, a)
    u16, au = _quant.hw_act_quant(acc_u, wide)
    su = scale_mul(scale_mul(tok, c_u, bits), scale_of_int(au, bits), bits)
    prod = a * u16.astype(np.int64)
    nc = cfg.norm
    return requant(prod, scale_mul(sa, su, bits), nc.in_frac_bits, nc.in_bits, cfg.requant)


def op_lm_head(x_q: np.ndarray, sx: Scale, im: IntegerModel) -> np.ndarray:
    """INT8 x INT8 head (int32 accumulate), dequantized to float32 logits on the host."""
    k = x_q.shape[-1]
    acc = _int_matmul(x_q, im.lm_q.T, float(k) * (1 << 14))
    return (acc * sx.to_float()[..., None] * im.lm_row_scale).astype(np.float32)


# --------------------------------------------------------------------------- KV cache
class KVCache:
    """Keys/values of past positions for one batch of sequences.

    reference: float k, v [B, n_kv, capacity, head_dim] (after RoPE; the model's dtype).
    integer: int8 codes (``ForwardConfig.kv_bits`` wide: in [-7, 7] for the INT4 cache,
    unpacked here; the device packs them, ``golden.isa.pack_kv``) plus per-(position, KV
    head) scales (mant, shift) int64.
    ``length`` positions are valid; capacity = max_position_embeddings.
    """

    def __init__(self, config, mode: str, batch: int = 1, dtype=np.float32):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch: expected a positive integer, got {batch!r}")
        self.config, self.mode, self.batch = config, mode, int(batch)
        self.capacity = config.max_position_embeddings
        self.length = 0
        shape = (self.batch, config.num_key_value_heads, self.capacity, config.head_dim)
        n = config.num_hidden_layers
        if mode == "reference":
            self.k = [np.zeros(shape, dtype) for _ in range(n)]
            self.v = [np.zeros(shape, dtype) for _ in range(n)]
        else:
            self.k = [np.zeros(shape, np.int8) for _ in range(n)]
            self.v = [np.zeros(shape, np.int8) for _ in range(n)]
            self.k_scale = [
                Scale(np.zeros(shape[:3], np.int64), np.zeros(shape[:3], np.int64))
                for _ in range(n)
            ]
            self.v_scale = [
                Scale(np.zeros(shape[:3], np.int64), np.zeros(shape[:3], np.int64))
                for _ in range(n)
            ]

    def reset(self) -> None:
        self.length = 0


# --------------------------------------------------------------------------- the model
def check_tokens(tokens, vocab: int, batch: bool = True) -> np.ndarray:
    """Token ids as int64 [T] or [B, T] (only [T] with ``batch=False``), each in [0, vocab);
    ValueError naming ``tokens`` otherwise."""
    try:
        t = np.asarray(tokens)
    except Exception:
        raise ValueError(
            f"tokens: expected integer token ids, got {type(tokens).__name__}"
        ) from None
    if t.dtype.kind not in "iu":
        raise ValueError(f"tokens: expected integer token ids, got dtype {t.dtype}")
    if batch and (t.ndim not in (1, 2) or t.shape[-1] < 1 or (t.ndim == 2 and t.shape[0] < 1)):
        raise ValueError(f"tokens: expected shape [T] or [B, T] with T >= 1, got {t.shape}")
    if not batch and (t.ndim != 1 or t.shape[0] < 1):
        raise ValueError(f"tokens: expected shape [T] with T >= 1 (one sequence), got {t.shape}")
    if int(t.min()) < 0 or int(t.max()) >= vocab:
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"tokens: id {bad} outside the vocabulary [0, {vocab})")
    return t.astype(np.int64)


class GoldenModel:
    """The BitNet forward in ``mode`` "reference" or "integer" (see module doc).

    Reference mode only: ``approx`` (names from ``APPROXIMATIONS``) puts single hardware
    approximations back into the float forward, ``proj_hook`` / ``act_hook`` observe the
    projection inputs / replace the FFN activation (module doc, "Ablations"). Integer
    mode only: ``act_sparsity`` thresholds (``golden.sparsity``) and ``sparsity_hook``
    (module doc, "Thresholded activation sparsity").
    """

    def __init__(
        self,
        model: Model,
        mode: str = "integer",
        cfg: DatapathConfig = DEFAULT,
        exact_tlmm: bool = False,
        dtype=np.float32,
        approx=(),
        proj_hook=None,
        act_hook=None,
        act_adc=None,
        act_sparsity=None,
        sparsity_hook=None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype: expected float32 or float64, got {np.dtype(dtype)}")
        bad = sorted(set(approx) - set(APPROXIMATIONS))
        if bad:
            raise ValueError(f"approx: unknown {bad}; choose from {APPROXIMATIONS}")
        if mode != "reference" and (approx or proj_hook is not None or act_hook is not None):
            raise ValueError(
                "approx, proj_hook, act_hook: reference mode only (the integer "
                "mode has every approximation on)"
            )
        # reference compute dtype: float32 is what transformers computes; float64 serves
        # to compare semantics without float-order noise (tests)
        self.dtype = np.dtype(dtype).type
        if not isinstance(model, Model):
            raise ValueError(f"model: expected golden.modelspec.Model, got {type(model).__name__}")
        self.model, self.mode, self.exact_tlmm = model, mode, exact_tlmm
        self.approx = frozenset(approx)
        self.proj_hook, self.act_hook = proj_hook, act_hook
        self.config = model.config
        if act_adc is not None and mode != "integer":
            raise ValueError("act_adc: integer mode only (the ACT engine's NL-ADC kinds)")
        if mode != "integer" and (act_sparsity is not None or sparsity_hook is not None):
            raise ValueError("act_sparsity, sparsity_hook: integer mode only (golden.sparsity)")
        if act_sparsity is not None:
            if not isinstance(act_sparsity, _sparsity.ActSparsity):
                raise ValueError(
                    "act_sparsity: expected golden.sparsity.ActSparsity or None, got "
                    f"{type(act_sparsity).__name__}"
                )
            act_sparsity.check(model.config)
        self.act_sparsity, self.sparsity_hook = act_sparsity, sparsity_hook
        if mode == "integer":
            self.compiled = compile_integer(model, cfg, act_adc)
            self.cfg = self.compiled.cfg
            self._wina_cols = {}
            if act_sparsity is not None and act_sparsity.method == "wina":
                self._wina_cols = {
                    (li, nm): _sparsity.column_weights(self.compiled.layers[li].proj[nm].codes)
                    for li, nm, _ in act_sparsity.thresholds
                }
        else:
            self.compiled = None
            self.cfg = model_datapath_config(model, cfg)
            self._prepare_reference()

    # ------------------------------------------------------------------ common
    def new_cache(self, batch: int = 1) -> KVCache:
        return KVCache(self.config, self.mode, batch, self.dtype)

    def forward(
        self, tokens, cache: KVCache | None = None, trace: list | None = None
    ) -> np.ndarray:
        """Logits [T, vocab] (or [B, T, vocab]) of the tokens at positions cache.length..
        (0.. without a cache); appends their K/V to the cache. float32 (float64 in the
        float64 reference mode)."""
        mc = self.config
        t = check_tokens(tokens, mc.vocab_size)
        squeeze = t.ndim == 1
        if squeeze:
            t = t[None, :]
        b, n = t.shape
        start = 0
        if cache is not None:
            if (
                not isinstance(cache, KVCache)
                or cache.mode != self.mode
                or cache.config != mc
                or (self.mode == "reference" and cache.k[0].dtype != self.dtype)
            ):
                raise ValueError("cache: not a KV cache of this model and mode (use new_cache())")
            if cache.batch != b:
                raise ValueError(f"cache: batch {cache.batch} does not match tokens batch {b}")
            start = cache.length
        if start + n > mc.max_position_embeddings:
            raise ValueError(
                f"tokens: positions {start}..{start + n - 1} exceed the context window "
                f"(max_position_embeddings = {mc.max_position_embeddings})"
            )
        if cache is None:
            cache = KVCache(mc, self.mode, b, self.dtype)
        run = self._forward_reference if self.mode == "reference" else self._forward_integer
        logits = run(t, start, cache, trace)
        cache.length = start + n
        return logits[0] if squeeze else logits

    __call__ = forward

    # ------------------------------------------------------------------ reference
    def _prepare_reference(self) -> None:
        mc, w, ft, cfg, ap = self.config, self.model.weights, self.dtype, self.cfg, self.approx
        self._ref_w = [
            {k: lw.proj[k].dequant(ft).T.copy() for k in ATTN_PROJ + MLP_PROJ} for lw in w.layers
        ]
        hd = mc.head_dim
        # transformers: inv_freq = 1 / theta^(arange(0, d, 2)/d), in float32 (float64 mode:
        # the same formula in float64)
        expo = np.arange(0, hd, 2, dtype=ft) / ft(hd)
        self._inv_freq = (ft(1.0) / np.power(ft(mc.rope_theta), expo)).astype(ft)
        if "rmsnorm" in ap:
            self._norm_fx = [
                {k: _compile_norm(getattr(lw, k), cfg, f"layers.{i}.{k}") for k in LAYER_NORMS}
                for i, lw in enumerate(w.layers)
            ]
        if "rope" in ap or self.act_hook is not None:
            # codes as float32 (exact integer products) and s_w, for the exact accumulators
            self._codes_t = [
                {k: lw.proj[k].codes.T.astype(np.float32) for k in ATTN_PROJ + MLP_PROJ}
                for lw in w.layers
            ]
            self._s_w = [
                {k: float(lw.proj[k].scale) for k in ATTN_PROJ + MLP_PROJ} for lw in w.layers
            ]
        if "lm_head" in ap:
            self._lm_q, lm_scale = _quant.act_quant(np.asarray(w.lm_head, np.float32), cfg.quant)
            self._lm_row = (1.0 / lm_scale[:, 0]).astype(np.float32)
        self._wide = replace(cfg.quant, act_bits=cfg.forward.ffn_bits)

    def _rms_ref(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        ft = self.dtype
        var = np.mean(np.square(x), axis=-1, keepdims=True, dtype=ft)
        inv = ft(1.0) / np.sqrt(var + ft(self.config.rms_norm_eps))  # torch.rsqrt
        return np.asarray(weight, ft) * (x * inv)

    def _norm_ref(self, h: np.ndarray, li: int, name: str) -> np.ndarray:
        """A layer's RMSNorm before a BitLinear: float, or (``rmsnorm``) the fixed-point
        block on h in Q15.16 with the compiled int16 gamma, dequantized INT8 out."""
        if "rmsnorm" not in self.approx:
            return self._rms_ref(h, getattr(self.model.weights.layers[li], name))
        nc = self.cfg.norm
        lim = (1 << (nc.in_bits - 1)) - 1
        h_fx = np.clip(
            np.floor(h.astype(np.float64) * 2.0**nc.in_frac_bits + 0.5), -lim - 1, lim
        ).astype(np.int32)
        x_q, sx = op_norm_quant(h_fx, self._norm_fx[li][name], self.cfg)
        return (x_q * sx.to_float()[..., None]).astype(self.dtype)

    def _bitlinear_ref(self, x: np.ndarray, w_t: np.ndarray) -> np.ndarray:
        """BitLinear: fake-quantized x @ dequantized ternary weight (transposed)."""
        return np.matmul(_quant.act_fake_quant(x, self.cfg.quant), w_t)

    def _linear_ref(self, x: np.ndarray, li: int, name: str) -> np.ndarray:
        """Projection ``name`` of layer ``li`` (``proj_hook`` sees its input)."""
        if self.proj_hook is not None:
            self.proj_hook(li, name, x)
        return self._bitlinear_ref(x, self._ref_w[li][name])

    def _linear_acc_ref(self, x: np.ndarray, li: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(exact integer accumulator x_q @ codes.T, s_w / s_x [..., 1]) in the model's dtype."""
        ft = self.dtype
        if self.proj_hook is not None:
            self.proj_hook(li, name, x)
        x_q, sx = _quant.act_quant(x, self.cfg.quant)
        acc = np.matmul(x_q.astype(np.float32), self._codes_t[li][name])  # |acc| < 2^24: exact
        return acc.astype(ft, copy=False), (ft(self._s_w[li][name]) / sx).astype(ft)

    def _qk_ref(self, x, li, name, heads, pos, rope) -> np.ndarray:
        """q or k after RoPE [B, heads, T, hd]: float, or (``rope``) ``golden.rope.rope_fx``
        on the exact int32 accumulators, times the token's scale."""
        if "rope" not in self.approx:
            return rope(_heads(self._linear_ref(x, li, name), heads))
        acc, s = self._linear_acc_ref(x, li, name)
        r = _rope.rope_fx(
            np.ascontiguousarray(_heads(acc, heads)).astype(np.int32), pos, self.cfg.rope
        )
        return r.astype(self.dtype) * _heads(np.broadcast_to(s, acc.shape), heads)[..., :1]

    def _softmax_ref(self, s: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """Causal softmax of the scaled scores: float, or (``softmax``) logits rounded to
        Q7.8 and ``golden.softmax.softmax_fx`` (UQ0.16 probabilities)."""
        ft = self.dtype
        if "softmax" in self.approx:
            sc = self.cfg.softmax
            lim = 1 << (sc.in_bits - 1)
            lg = np.clip(
                np.floor(s.astype(np.float64) * 2.0**sc.in_frac_bits + 0.5), -lim, lim - 1
            ).astype(np.int16)
            return _softmax.softmax_fx(lg, sc, causal=True).astype(ft) * ft(2.0**-sc.out_bits)
        s = np.where(allowed, s, ft(-np.inf))
        s = np.exp(s - np.max(s, axis=-1, keepdims=True))
        return s / np.sum(s, axis=-1, keepdims=True)

    def _ffn_ref(self, x: np.ndarray, li: int) -> tuple[np.ndarray, np.ndarray]:
        """(act(gate), up) of the gated FFN; ``act_hook`` replaces act(gate), ``act``
        quantizes up to ffn_bits."""
        ft = self.dtype
        if self.act_hook is not None:
            acc, s_g = self._linear_acc_ref(x, li, "gate_proj")
            a = self.act_hook(li, acc * s_g, s_g).astype(ft)
        else:
            a = self._act_ref(self._linear_ref(x, li, "gate_proj"))
        u = self._linear_ref(x, li, "up_proj")
        if "act" in self.approx:
            u = _quant.act_fake_quant(u, self._wide)
        return a, u

    def _act_ref(self, g: np.ndarray) -> np.ndarray:
        """relu2 or silu of the gate: float, or (``act``) the activation unit's input
        format and function (relu2: 16-bit gate, exact square; silu: Q7.8 and silu_fx)."""
        ft, on = self.dtype, "act" in self.approx
        if self.config.hidden_act == "relu2":
            if on:
                g16, sg = _quant.act_quant(g, self._wide)
                return (_act.relu2(g16).astype(np.float64) / sg.astype(np.float64) ** 2).astype(ft)
            return np.square(np.maximum(g, ft(0)))
        if on:
            ac = self.cfg.activation
            lim = 1 << (ac.in_bits - 1)
            gq = np.clip(
                np.floor(g.astype(np.float64) * 2.0**ac.in_frac_bits + 0.5), -lim, lim - 1
            ).astype(np.int16)
            return _act.silu_fx(gq, ac).astype(ft) * ft(2.0**-ac.out_frac_bits)
        return g / (ft(1) + np.exp(-g))

    def _lm_head_ref(self, h: np.ndarray) -> np.ndarray:
        """Float head, or (``lm_head``) INT8 final-norm output x INT8 rows."""
        ft = self.dtype
        if "lm_head" in self.approx:
            x_q, sx = _quant.act_quant(h, self.cfg.quant)
            acc = np.matmul(x_q.astype(np.float32), self._lm_q.T.astype(np.float32))
            return (acc / sx * self._lm_row).astype(ft)
        return np.matmul(h, np.asarray(self.model.weights.lm_head, ft).T).astype(ft)

    def _forward_reference(self, tok, start, cache, trace) -> np.ndarray:
        mc, w, ft = self.config, self.model.weights, self.dtype
        b, n = tok.shape
        nh, nkv, hd = mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim
        n_rep = nh // nkv
        end = start + n
        pos = np.arange(start, end)
        h = np.asarray(w.embed_tokens, ft)[tok]
        freqs = pos.astype(ft)[:, None] * self._inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos, sin = np.cos(emb), np.sin(emb)

        def rope(x):  # x [B, heads, T, hd]
            half = hd // 2
            rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
            return x * cos + rot * sin

        def rec(layer, op, **arrays):
            if trace is not None:
                trace.append((layer, op, arrays))

        allowed = np.arange(end)[None, :] <= pos[:, None]  # [T, S]
        scaling = ft(hd**-0.5)
        rec(-1, "embed", h=h)
        for li in range(len(w.layers)):
            x = self._norm_ref(h, li, "input_layernorm")
            q = self._qk_ref(x, li, "q_proj", nh, pos, rope)
            k = self._qk_ref(x, li, "k_proj", nkv, pos, rope)
            v = _heads(self._linear_ref(x, li, "v_proj"), nkv)
            if "attn_int8" in self.approx:
                q, k, v = (_quant.act_fake_quant(t, self.cfg.quant) for t in (q, k, v))
            cache.k[li][:, :, start:end] = k
            cache.v[li][:, :, start:end] = v
            kk = np.repeat(cache.k[li][:, :, :end], n_rep, axis=1)
            vv = np.repeat(cache.v[li][:, :, :end], n_rep, axis=1)
            p = self._softmax_ref(np.matmul(q, kk.transpose(0, 1, 3, 2)) * scaling, allowed)
            rec(li, "softmax", p=p)
            o = _merge_heads(np.matmul(p, vv))
            rec(li, "pv", o=o)
            h = h + self._linear_ref(self._norm_ref(o, li, "attn_sub_norm"), li, "o_proj")
            rec(li, "tlmm_residual.o_proj", h=h)
            a, u = self._ffn_ref(self._norm_ref(h, li, "post_attention_layernorm"), li)
            rec(li, "act", m=a * u)
            h = h + self._linear_ref(self._norm_ref(a * u, li, "ffn_sub_norm"), li, "down_proj")
            rec(li, "tlmm_residual.down_proj", h=h)
        return self._lm_head_ref(self._rms_ref(h, w.norm))

    # ------------------------------------------------------------------ integer
    def _attention(self, q_q, sq, k, ks, v, vs, start, end, n_rep, keep):
        """qk -> softmax -> pv over blocks of queries; each block reads only the keys up to
        its last query (the others are masked for all of its rows), so the result is the
        same for any block size. With ``keep``, the full [B, nh, T, S] logits and p are
        returned for the trace, 0 at masked (never computed) positions."""
        cfg = self.cfg
        b, nh, n, hd = q_q.shape
        o = np.empty((b, nh, n, hd), dtype=np.int32)
        logits = np.zeros((b, nh, n, end), np.int16) if keep else None
        probs = np.zeros((b, nh, n, end), np.uint16) if keep else None
        for q0 in range(0, n, ATTN_QUERY_BLOCK):
            q1 = min(n, q0 + ATTN_QUERY_BLOCK)
            s_end = start + q1
            lg = op_qk(
                q_q[:, :, q0:q1],
                Scale(sq.mant[..., q0:q1], sq.shift[..., q0:q1]),
                k[:, :, :s_end],
                Scale(ks.mant[:, :, :s_end], ks.shift[:, :, :s_end]),
                n_rep,
                cfg,
            )
            p = op_softmax(lg, cfg)
            o[:, :, q0:q1] = op_pv(
                p, v[:, :, :s_end], Scale(vs.mant[:, :, :s_end], vs.shift[:, :, :s_end]), n_rep, cfg
            )
            if keep:
                seen = _softmax.causal_mask(q1 - q0, s_end)
                logits[:, :, q0:q1, :s_end] = np.where(seen, lg, 0)
                probs[:, :, q0:q1, :s_end] = p
        return o, logits, probs

    def _forward_integer(self, tok, start, cache, trace) -> np.ndarray:
        im, cfg, mc = self.compiled, self.cfg, self.config
        b, n = tok.shape
        nh, nkv = mc.num_attention_heads, mc.num_key_value_heads
        n_rep = nh // nkv
        end = start + n
        pos = np.arange(start, end)
        exact = self.exact_tlmm

        def rec(layer, op, **arrays):
            if trace is not None:
                trace.append((layer, op, arrays))

        def norm_quant(x, nc, li, name):
            x_q, sx = op_norm_quant(x, nc, cfg)
            rec(li, f"norm_quant.{name}", x_q=x_q, mant=sx.mant, shift=sx.shift)
            return x_q, sx

        sp, hook = self.act_sparsity, self.sparsity_hook

        def tlmm(x_q, li, proj, mask=None):
            """op_tlmm of a projection; its input thresholded by act_sparsity (TEAL/WINA)
            and shown to sparsity_hook with the result."""
            x_in = x_q
            tau = None if sp is None or sp.method == "cats" else sp.tau(li, proj)
            if tau is not None:
                x_q = _sparsity.threshold_inputs(
                    sp.method, x_q, tau, self._wina_cols.get((li, proj))
                )
            acc = op_tlmm(x_q, im.layers[li].proj[proj], cfg, exact, mask)
            if hook is not None:
                hook(li, proj, {"x_in": x_in, "x_q": x_q, "acc": acc, "mask": mask})
            return acc

        def sub_norm_residual(h, x, li, norm, proj):
            """norm_quant(x) -> tlmm -> residual into h (o_proj and down_proj)."""
            lc = im.layers[li]
            x_q, sx = norm_quant(x, getattr(lc, norm), li, norm)
            acc = tlmm(x_q, li, proj)
            h = op_residual(h, acc, sx, lc.proj[proj].const, cfg)
            rec(li, f"tlmm_residual.{proj}", acc=acc, h=h)
            return h

        h = op_embed(tok, im)
        rec(-1, "embed", h=h)
        for li, lc in enumerate(im.layers):
            pr = lc.proj
            x_q, sx = norm_quant(h, lc.input_layernorm, li, "input_layernorm")
            acc = {k: tlmm(x_q, li, k) for k in ("q_proj", "k_proj", "v_proj")}
            rec(li, "tlmm.qkv", **acc)
            q_q, sq = op_rope_quant(acc["q_proj"], pos, nh, sx, pr["q_proj"].const, cfg)
            k_q, sk = op_rope_quant(acc["k_proj"], pos, nkv, sx, pr["k_proj"].const, cfg, True)
            v_q, sv = op_v_quant(acc["v_proj"], nkv, sx, pr["v_proj"].const, cfg)
            rec(
                li,
                "rope_quant",
                q=q_q,
                q_mant=sq.mant,
                q_shift=sq.shift,
                k=k_q,
                k_mant=sk.mant,
                k_shift=sk.shift,
                v=v_q,
                v_mant=sv.mant,
                v_shift=sv.shift,
            )
            cache.k[li][:, :, start:end] = k_q
            cache.v[li][:, :, start:end] = v_q
            for store, new in ((cache.k_scale[li], sk), (cache.v_scale[li], sv)):
                store.mant[:, :, start:end] = new.mant
                store.shift[:, :, start:end] = new.shift
            ks, vs = cache.k_scale[li], cache.v_scale[li]
            o, logits, p = self._attention(
                q_q, sq, cache.k[li], ks, cache.v[li], vs, start, end, n_rep, trace is not None
            )
            rec(li, "qk", logits=logits)
            rec(li, "softmax", p=p)
            o = _merge_heads(o)
            rec(li, "pv", o=o)
            h = sub_norm_residual(h, o, li, "attn_sub_norm", "o_proj")
            x_q, sx = norm_quant(h, lc.post_attention_layernorm, li, "post_attention_layernorm")
            acc_g = tlmm(x_q, li, "gate_proj")
            relu2 = mc.hidden_act == "relu2"
            cats = None if sp is None or sp.method != "cats" else sp.tau(li, _sparsity.ACT)
            if hook is not None:  # CATS's score of every gate (golden.sparsity)
                if relu2:
                    score = np.maximum(relu2_gate(acc_g, cfg).astype(np.int64), 0)
                else:
                    g = silu_gate(acc_g, sx, pr["gate_proj"].const, cfg)
                    score = np.abs(_act.silu_fx(g, cfg.activation).astype(np.int64))
                hook(li, _sparsity.ACT, {"gate_score": score})
            if cats is not None and relu2:
                acc_g = _sparsity.cats_relu2_gate(acc_g, relu2_gate(acc_g, cfg), cats)
            # ReLU^2: up only where ReLU(gate) != 0, so the product and up's scale (its
            # absmax) see only the live rows, and a sparse run need not compute the rest
            up_mask = acc_g if relu2 else None
            acc_u = tlmm(x_q, li, "up_proj", up_mask)
            rec(li, "tlmm.gate_up", gate=acc_g, up=acc_u)
            m = op_act(
                acc_g,
                acc_u,
                sx,
                pr["gate_proj"].const,
                pr["up_proj"].const,
                mc.hidden_act,
                cfg,
                im.act_adc_arg(li),
                None if relu2 else cats,
            )
            rec(li, "act", m=m)
            h = sub_norm_residual(h, m, li, "ffn_sub_norm", "down_proj")
        x_q, sx = norm_quant(h, im.norm, -1, "norm")
        logits = op_lm_head(x_q, sx, im)
        rec(-1, "lm_head", logits=logits)
        return logits


# --------------------------------------------------------------------------- synthetic models
def random_model(config, seed: int = 0) -> Model:
    """A random BitNet model (for tests and reports): N(0, 1) embeddings, ternary codes
    with ~1/3 zeros and scale 1/sqrt(in) (unit-variance outputs for unit inputs), norm
    weights U(0.5, 1.5), lm_head N(0, 1/hidden)."""
    from .modelspec import LayerWeights, ModelWeights, TernaryWeight

    rng = np.random.default_rng(seed)
    mc = config
    hd = mc.head_dim
    shapes = {
        "q_proj": (mc.num_attention_heads * hd, mc.hidden_size),
        "k_proj": (mc.num_key_value_heads * hd, mc.hidden_size),
        "v_proj": (mc.num_key_value_heads * hd, mc.hidden_size),
        "o_proj": (mc.hidden_size, mc.num_attention_heads * hd),
        "gate_proj": (mc.intermediate_size, mc.hidden_size),
        "up_proj": (mc.intermediate_size, mc.hidden_size),
        "down_proj": (mc.hidden_size, mc.intermediate_size),
    }

    def norm(n):
        return rng.uniform(0.5, 1.5, n).astype(np.float32)

    layers = []
    for _ in range(mc.num_hidden_layers):
        proj = {
            k: TernaryWeight(
                rng.integers(-1, 2, size=s).astype(np.int8),
                float(1.0 / math.sqrt(s[1]) * rng.uniform(0.8, 1.2)),
            )
            for k, s in shapes.items()
        }
        layers.append(
            LayerWeights(
                norm(mc.hidden_size),
                norm(mc.hidden_size),
                norm(mc.num_attention_heads * hd),
                norm(mc.intermediate_size),
                proj,
            )
        )
    emb = rng.standard_normal((mc.vocab_size, mc.hidden_size)).astype(np.float32)
    lm = (
        emb
        if mc.tie_word_embeddings
        else (
            rng.standard_normal((mc.vocab_size, mc.hidden_size)) / math.sqrt(mc.hidden_size)
        ).astype(np.float32)
    )
    return Model(mc, ModelWeights(emb, layers, norm(mc.hidden_size), lm))


# --------------------------------------------------------------------------- report
def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of a and b along the last axis (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


REPORT_CONFIGS = (
    # (ModelConfig kwargs, description); small random models, both activations, GQA/MHA
    (dict(vocab_size=67, hidden_size=64, intermediate_size=100, num_hidden_layers=2,
          num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=48),
     "relu2 GQA 4:1"),
    (dict(vocab_size=67, hidden_size=40, intermediate_size=70, num_hidden_layers=2,
          num_attention_heads=5, num_key_value_heads=5, max_position_embeddings=48,
          hidden_act="silu"),
     "silu MHA 5 heads"),
)  # fmt: skip


def error_report(cfg=DEFAULT) -> list[dict]:
    """Scale arithmetic, requant extension, integer-vs-reference and decode-vs-full."""
    from .modelspec import ModelConfig

    rng = np.random.default_rng(0)
    bits = cfg.requant.mult_bits
    # scale_mul and scale_of_int vs exact products
    lo, hi = 1 << (bits - 1), 1 << bits
    am, bm = rng.integers(lo, hi, 20000), rng.integers(lo, hi, 20000)
    am[:3], bm[:3] = hi - 1, hi - 1
    prod = scale_mul(Scale(am, np.zeros_like(am)), Scale(bm, np.zeros_like(bm)), bits)
    exact = am.astype(np.float64) * bm.astype(np.float64)
    rel = float(np.max(np.abs(prod.to_float() / exact - 1.0)))
    v = np.concatenate([rng.integers(1, 1 << 40, 20000), np.arange(1, 70000)])
    rel = max(rel, float(np.max(np.abs(scale_of_int(v, bits).to_float() / v - 1.0))))
    # requant with shifts on both sides of [0, shift_max] vs exact rational rounding
    acc = rng.integers(-(1 << 31), 1 << 31, 4000)
    acc[:8] = rng.integers(-300, 300, 8)
    mant = rng.integers(lo, hi, 4000)
    shift = rng.integers(-40, 80, 4000)
    got = requant(acc, Scale(mant, shift), 0, 32, cfg.requant).astype(np.int64)
    req_err = 0
    for a_, m_, s_, g_ in zip(
        acc.tolist(), mant.tolist(), shift.tolist(), got.tolist(), strict=False
    ):
        v_ = a_ * m_
        want = v_ << -s_ if s_ <= 0 else (v_ + (1 << (s_ - 1))) >> s_
        want = min(max(want, -(1 << 31)), (1 << 31) - 1)
        req_err = max(req_err, abs(want - g_))
    # integer vs reference logits and decode == full on small random models
    gap, dec = 0.0, 0
    for kw, _ in REPORT_CONFIGS:
        m = random_model(ModelConfig(**kw), seed=1)
        toks = rng.integers(0, kw["vocab_size"], size=kw["max_position_embeddings"])
        ref = GoldenModel(m, "reference", cfg).forward(toks)
        gi = GoldenModel(m, "integer", cfg)
        full = gi.forward(toks)
        gap = max(gap, float(np.max(1.0 - cosine_rows(full, ref))))
        cache = gi.new_cache()
        parts = [gi.forward(toks[:5], cache)] + [
            gi.forward(toks[i : i + 1], cache) for i in range(5, len(toks))
        ]
        dec = max(dec, float(np.max(np.abs(np.concatenate(parts) - full))))
    return [
        {
            "block": "model",
            "quantity": "scale_mul / scale_of_int relative error",
            "domain": f"random {bits}-bit mantissas, integers 1..2^40",
            "bound": scale_rel_bound(bits),
            "measured": rel,
        },
        {
            "block": "model",
            "quantity": "requant (negative/large shifts) vs exact rounding (LSB)",
            "domain": "int32 acc, shift -40..79, 32-bit out",
            "bound": 0.0,
            "measured": float(req_err),
        },
        {
            "block": "model",
            "quantity": "1 - cosine(integer logits, reference logits), per position",
            "domain": "random models: " + ", ".join(d for _, d in REPORT_CONFIGS) + ", 48 tokens",
            "bound": INT_COSINE_GAP,
            "measured": gap,
        },
        {
            "block": "model",
            "quantity": "integer decode (prefill 5 + 1 by 1) vs full forward (abs)",
            "domain": "same models",
            "bound": float(DECODE_VS_FULL_INT),
            "measured": dec,
        },
    ]
