"""Shared helpers of the study notebooks (not a notebook itself).

- ``load(model_dir)``: the checkpoint (``host.checkpoint.load``) and its tokenizer.
- ``heldout_windows(tok, n_windows, context)``: the first ``n_windows * context + 1``
  characters of the held-out split (last 10 % of the corpus, ``host.eval.heldout_text``), cut into the
  non-overlapping windows ``host.eval`` scores.
- ``score(fwd, wins)``: bits per character over the windows, plus the per-window mean
  so that two runs on the same text can be compared pairwise.
- ``AblationForward``: the float (reference-mode) BitNet forward of
  ``golden.model.GoldenModel`` rebuilt from golden functions, with switches that put
  single hardware approximations back into the float path, and hooks for the studies
  (projection inputs, the FFN activation). With no switch it equals the golden
  reference forward (the notebooks assert it).

Switches (``approx``, a set of names from ``APPROXIMATIONS``):

``rmsnorm``
    Every RMSNorm that feeds a BitLinear (input, attn_sub, post_attention, ffn_sub) is
    the fixed-point block ``golden.rmsnorm.rmsnorm_quant`` (integer sum of squares,
    LUT+Newton rsqrt, hardware INT8 quantizer) on the residual in Q15.16, with gamma in
    int16 as the integer model compiles it; its dequantized INT8 output feeds the
    BitLinear (whose own fake quantizer then gives back the same codes).
``rope``
    RoPE of q and k by ``golden.rope.rope_fx`` (Q1.14 cos/sin tables, rounding) on the
    exact int32 accumulators ``x_q @ codes.T``, as the integer datapath does.
``attn_int8``
    q (after RoPE), k (after RoPE) and v quantized to INT8 absmax per (token, head)
    (``golden.quant.act_fake_quant``; the hardware quantizer rounds half up instead of
    half to even, within 1 LSB).
``softmax``
    Attention logits rounded to the softmax input format (signed int16 Q7.8,
    saturating) and the integer online softmax ``golden.softmax.softmax_fx`` (base-2
    exponent, LUT + interpolation, reciprocal), probabilities UQ0.16.
``act``
    The FFN activation unit: ``relu2`` -- gate and up quantized per token to
    ``ffn_bits`` (16) bit absmax, square exact (``golden.activations.relu2``);
    ``silu`` -- gate rounded to Q7.8 int16 and ``golden.activations.silu_fx`` (LUT of
    delta with linear interpolation), up quantized to 16 bits.
``lm_head``
    Final-norm output and lm_head rows INT8 absmax (``golden.quant.act_quant``), as the
    integer model's head.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from golden import activations as gact
from golden import quant as gquant
from golden import rope as grope
from golden import softmax as gsoftmax
from golden.config import DEFAULT, DatapathConfig
from golden.modelspec import ATTN_PROJ, MLP_PROJ, Model
from host import checkpoint as hckpt
from host import eval as heval
from host.tokenizer import CharTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = "models/default"          # repo-relative: the shipped model

APPROXIMATIONS = ("rmsnorm", "rope", "attn_int8", "softmax", "act", "lm_head")


def resolve(path: str) -> str:
    """A repo-relative path made absolute (absolute paths pass through)."""
    return path if os.path.isabs(path) else os.path.join(REPO, path)


def load(model_dir: str = DEFAULT_MODEL) -> tuple[Model, CharTokenizer]:
    d = resolve(model_dir)
    return hckpt.load(d), CharTokenizer.load(d)


def heldout_windows(tok: CharTokenizer, n_windows: int, context: int):
    """The first ``n_windows`` full windows of the held-out split (n*context + 1 chars)."""
    text = heval.heldout_text(heval.DEFAULT_CORPUS, n_windows * context + 1)
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    return heval.windows(ids, context)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def score(fwd, wins, batch: int = 8, argmax: list | None = None) -> tuple[float, np.ndarray]:
    """(bits per char over all predictions, per-window mean bits per char).

    ``fwd(tokens [B, T]) -> logits [B, T, V]``; windows of equal length are batched.
    ``argmax``: if a list, the greedy prediction [B, T] of each batch is appended."""
    per_win = []
    total, count = 0.0, 0
    i = 0
    while i < len(wins):
        n = len(wins[i][0])
        j = i
        while j < len(wins) and j - i < batch and len(wins[j][0]) == n:
            j += 1
        x = np.stack([w[0] for w in wins[i:j]])
        y = np.stack([w[1] for w in wins[i:j]])
        logits = fwd(x)
        if argmax is not None:
            argmax.append(np.argmax(logits, axis=-1))
        nll = -np.take_along_axis(_log_softmax(logits), y[..., None], axis=-1)[..., 0]
        nll = nll / np.log(2.0)
        per_win.extend(nll.mean(axis=-1).tolist())
        total += float(nll.sum())
        count += nll.size
        i = j
    return total / count, np.asarray(per_win)


def _heads(a: np.ndarray, n: int) -> np.ndarray:
    b, t, d = a.shape
    return a.reshape(b, t, n, d // n).transpose(0, 2, 1, 3)


def _merge(o: np.ndarray) -> np.ndarray:
    b, n, t, d = o.shape
    return o.transpose(0, 2, 1, 3).reshape(b, t, n * d)


class AblationForward:
    """Float32 BitNet forward with switchable hardware approximations (module doc).

    ``proj_hook(layer, name, x)`` is called with the float input of every projection
    (before its activation quantizer). ``act_hook(layer, g, tok_scale)`` replaces the
    FFN activation act(g) (before the product with up): ``g = acc * tok_scale`` with
    ``acc`` the exact integer accumulator of the gate projection and ``tok_scale``
    [B, T, 1] = s_w / s_x (weight scale over the token's activation scale).
    """

    def __init__(self, model: Model, approx=frozenset(), cfg: DatapathConfig = DEFAULT,
                 proj_hook=None, act_hook=None):
        bad = set(approx) - set(APPROXIMATIONS)
        if bad:
            raise ValueError(f"approx: unknown {sorted(bad)}; choose from {APPROXIMATIONS}")
        from golden.model import _compile_norm, model_datapath_config
        self.model, self.approx = model, frozenset(approx)
        self.cfg = model_datapath_config(model, cfg)
        self.proj_hook, self.act_hook = proj_hook, act_hook
        mc, w = model.config, model.weights
        self.w_t = [{k: lw.proj[k].dequant(np.float32).T.copy() for k in ATTN_PROJ + MLP_PROJ}
                    for lw in w.layers]
        self.codes_t = [{k: lw.proj[k].codes.T.astype(np.float32) for k in ATTN_PROJ + MLP_PROJ}
                        for lw in w.layers]
        self.s_w = [{k: float(lw.proj[k].scale) for k in ATTN_PROJ + MLP_PROJ} for lw in w.layers]
        self.norm_fx = [{k: _compile_norm(getattr(lw, k), self.cfg, k)
                         for k in ("input_layernorm", "attn_sub_norm",
                                   "post_attention_layernorm", "ffn_sub_norm")}
                        for lw in w.layers]
        hd = mc.head_dim
        expo = np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)
        self.inv_freq = (np.float32(1.0) / np.power(np.float32(mc.rope_theta), expo)).astype(np.float32)
        self.lm_head = np.asarray(w.lm_head, np.float32)
        self.lm_q, lm_scale = gquant.act_quant(self.lm_head, self.cfg.quant)
        self.lm_row = (1.0 / lm_scale[:, 0]).astype(np.float32)
        self.wide = replace(self.cfg.quant, act_bits=self.cfg.forward.ffn_bits)

    # ------------------------------------------------------------------ pieces
    def _rms(self, x, weight):
        var = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float32)
        inv = np.float32(1.0) / np.sqrt(var + np.float32(self.model.config.rms_norm_eps))
        return np.asarray(weight, np.float32) * (x * inv)

    def _norm(self, h, li, name):
        """RMSNorm(h) * gamma, float or the fixed-point block (dequantized INT8)."""
        if "rmsnorm" not in self.approx:
            gamma = getattr(self.model.weights.layers[li], name)
            return self._rms(h, gamma)
        from golden.model import op_norm_quant
        nc = self.cfg.norm
        lim = (1 << (nc.in_bits - 1)) - 1
        h_fx = np.clip(np.floor(h.astype(np.float64) * 2.0 ** nc.in_frac_bits + 0.5),
                       -lim - 1, lim).astype(np.int32)
        x_q, sx = op_norm_quant(h_fx, self.norm_fx[li][name], self.cfg)
        return (x_q * sx.to_float()[..., None]).astype(np.float32)

    def _linear(self, x, li, name):
        if self.proj_hook is not None:
            self.proj_hook(li, name, x)
        return np.matmul(gquant.act_fake_quant(x, self.cfg.quant), self.w_t[li][name])

    def _linear_acc(self, x, li, name):
        """(exact integer accumulator x_q @ codes.T as float32, s_w / s_x [..., 1])."""
        if self.proj_hook is not None:
            self.proj_hook(li, name, x)
        x_q, sx = gquant.act_quant(x, self.cfg.quant)
        acc = np.matmul(x_q.astype(np.float32), self.codes_t[li][name])   # |acc| < 2^24: exact
        return acc, (np.float32(self.s_w[li][name]) / sx).astype(np.float32)

    # ------------------------------------------------------------------ forward
    def __call__(self, tokens) -> np.ndarray:
        return self.forward(tokens)

    def forward(self, tokens) -> np.ndarray:
        """Logits [B, T, vocab] (float32) of token windows [B, T] from position 0."""
        tok = np.atleast_2d(np.asarray(tokens, dtype=np.int64))
        mc, w, ap, cfg = self.model.config, self.model.weights, self.approx, self.cfg
        b, n = tok.shape
        nh, nkv, hd = mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim
        n_rep = nh // nkv
        pos = np.arange(n)
        freqs = pos.astype(np.float32)[:, None] * self.inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos, sin = np.cos(emb), np.sin(emb)
        half = hd // 2

        def rope_float(x):
            rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
            return x * cos + rot * sin

        def qk_proj(x, li, name, heads):
            if "rope" not in ap:
                return rope_float(_heads(self._linear(x, li, name), heads))
            acc, s = self._linear_acc(x, li, name)
            r = grope.rope_fx(np.ascontiguousarray(_heads(acc, heads)).astype(np.int32),
                              pos, cfg.rope)
            return r.astype(np.float32) * _heads(np.broadcast_to(s, acc.shape), heads)[..., :1]

        allowed = pos[None, :] <= pos[:, None]
        scaling = np.float32(hd ** -0.5)
        h = np.asarray(w.embed_tokens, np.float32)[tok]
        for li, lw in enumerate(w.layers):
            x = self._norm(h, li, "input_layernorm")
            q = qk_proj(x, li, "q_proj", nh)
            k = qk_proj(x, li, "k_proj", nkv)
            v = _heads(self._linear(x, li, "v_proj"), nkv)
            if "attn_int8" in ap:
                q, k, v = (gquant.act_fake_quant(t, cfg.quant) for t in (q, k, v))
            kk = np.repeat(k, n_rep, axis=1)
            vv = np.repeat(v, n_rep, axis=1)
            s = np.matmul(q, kk.transpose(0, 1, 3, 2)) * scaling
            if "softmax" in ap:
                sc = cfg.softmax
                lim = 1 << (sc.in_bits - 1)
                lg = np.clip(np.floor(s.astype(np.float64) * 2.0 ** sc.in_frac_bits + 0.5),
                             -lim, lim - 1).astype(np.int16)
                p = (gsoftmax.softmax_fx(lg, sc, causal=True).astype(np.float32)
                     * np.float32(2.0 ** -sc.out_bits))
            else:
                s = np.where(allowed, s, np.float32(-np.inf))
                s = np.exp(s - np.max(s, axis=-1, keepdims=True))
                p = s / np.sum(s, axis=-1, keepdims=True)
            o = self._norm(_merge(np.matmul(p, vv)), li, "attn_sub_norm")
            h = h + self._linear(o, li, "o_proj")
            x = self._norm(h, li, "post_attention_layernorm")
            u = self._linear(x, li, "up_proj")
            if self.act_hook is not None:
                acc, s_g = self._linear_acc(x, li, "gate_proj")
                a = self.act_hook(li, acc * s_g, s_g).astype(np.float32)
            else:
                g = self._linear(x, li, "gate_proj")
                a = self._act(g)
            if "act" in ap:
                u = gquant.act_fake_quant(u, self.wide)
            m = self._norm(a * u, li, "ffn_sub_norm")
            h = h + self._linear(m, li, "down_proj")
        h = self._rms(h, w.norm)
        if "lm_head" in ap:
            x_q, sx = gquant.act_quant(h, cfg.quant)
            acc = np.matmul(x_q.astype(np.float32), self.lm_q.T.astype(np.float32))
            return (acc / sx * self.lm_row).astype(np.float32)
        return np.matmul(h, self.lm_head.T).astype(np.float32)

    def _act(self, g):
        if self.model.config.hidden_act == "relu2":
            if "act" in self.approx:
                g16, sg = gquant.act_quant(g, self.wide)
                return (gact.relu2(g16).astype(np.float64)
                        / sg.astype(np.float64) ** 2).astype(np.float32)
            return np.square(np.maximum(g, np.float32(0)))
        if "act" in self.approx:
            ac = self.cfg.activation
            lim = 1 << (ac.in_bits - 1)
            gq = np.clip(np.floor(g.astype(np.float64) * 2.0 ** ac.in_frac_bits + 0.5),
                         -lim, lim - 1).astype(np.int16)
            return (gact.silu_fx(gq, ac).astype(np.float32)
                    * np.float32(2.0 ** -ac.out_frac_bits))
        return g / (np.float32(1) + np.exp(-g))
