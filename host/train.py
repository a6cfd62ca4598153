"""Quantization-aware training of the shipped BitNet b1.58 character model.

    python -m host.train --out models/default [--steps N] [--resume] [--state-dir DIR]

The torch module here computes exactly what ``transformers``' ``BitNetForCausalLM`` computes
with ``AutoBitLinear`` in online mode (fake quantization, straight-through estimator):

* weights: ``inv = 1 / max(mean|W|, 1e-5)``, ``W_q = clamp(round(W * inv), -1, 1) / inv``
* activations, per token: ``s = 127 / max(max|x|, 1e-5)``,
  ``x_q = clamp(round(x*s), -128, 127) / s``
* gradients pass both roundings unchanged (STE).

Layer: input_layernorm -> q/k/v -> RoPE (rotate-half) -> causal GQA attention ->
attn_sub_norm -> o_proj -> residual; post_attention_layernorm -> gate/up -> relu2(gate)*up
-> ffn_sub_norm -> down_proj -> residual. Final norm, full-precision lm_head.

Data: the characters of ``tinyshakespeare.txt`` (``host.data.DEFAULT_CORPUS``); the first
90 % train, the last 10 % is held out (never trained on; ``host.data.split``, the split
``host.eval`` scores). Tokens: the character tokenizer of
the corpus (the shipped model; loss in nats per character), or any tokenizer given by
``--tokenizer PATH`` (a tokenizer.json or a directory holding one, e.g. a BPE trained by
``python -m host.tokenizer``; loss in nats per token), each split encoded on its own.

Training state (model, optimizer, step, RNG states, log) is written every few minutes to
``<state-dir>/train_state.pt`` (default ``runs/<basename of out>_train``); ``--resume``
continues from it. At the end the model is exported to ``--out`` in the packed "offline"
Hugging Face layout with ``tokenizer.json`` and ``training_log.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

# Passive OpenMP waiting: on a shared, oversubscribed CPU, spinning threads of one GEMM
# steal the time the other thread needs (measured: 1-18 s/step instead of ~1 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn as nn
import torch.nn.functional as F

from golden.modelspec import (
    ATTN_PROJ,
    MLP_PROJ,
    PROJ,
    Model,
    ModelConfig,
    TernaryWeight,
    build_model,
)
from host.data import DEFAULT_CORPUS, read_corpus, split
from host.tokenizer import CharTokenizer, Tokenizer, load_tokenizer

STATE_FILE = "train_state.pt"
LOG_FILE = "training_log.json"

WEIGHT_EPS = 1e-5  # clamp on mean|W|, as transformers' WeightQuant
ACT_EPS = 1e-5  # clamp on max|x|, as transformers' ActQuant
ACT_MIN, ACT_MAX = -128, 127


# ----------------------------------------------------------------------------- quantizers
def _absmean_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes clamp(round(W / mean|W|), -1, 1) in w's dtype, mean|W| clamped to WEIGHT_EPS)."""
    mean = w.abs().mean().clamp(min=WEIGHT_EPS)
    return (w * (1.0 / mean)).round().clamp(-1, 1), mean


class _TernarizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        codes, mean = _absmean_ternary(w)
        return codes / (1.0 / mean)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _ActQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS)
        return (x * s).round().clamp(ACT_MIN, ACT_MAX) / s

    @staticmethod
    def backward(ctx, grad):
        return grad


def ternarize_ste(w: torch.Tensor) -> torch.Tensor:
    """Absmean ternary fake quantization; the gradient passes unchanged (STE)."""
    return _TernarizeSTE.apply(w)


def act_quant_ste(x: torch.Tensor) -> torch.Tensor:
    """Per-token (last axis) INT8 absmax fake quantization; gradient passes unchanged (STE)."""
    return _ActQuantSTE.apply(x)


def ternary_linear_eval(xq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Inference form of a ternary projection, in transformers' offline AutoBitLinear order.

    ``F.linear(x_q, codes) * mean|W|``: with the exported ``weight_scale`` (= mean|W| in
    float32) transformers computes exactly these floats. The training form
    ``F.linear(x_q, codes / inv)`` is the same number up to float32 rounding, but such
    ulp differences can flip an INT8 activation rounding downstream, which attention
    then spreads to later positions (measured on the shipped model: max logit
    difference 1.1e-2 of max|logit| with the training form, 0 with this one).
    """
    codes, mean = _absmean_ternary(w)
    return F.linear(xq, codes) * mean


def ternary_codes(w: torch.Tensor) -> tuple[np.ndarray, float]:
    """Export: int8 codes and the multiplicative scale mean|W| (same rounding as training)."""
    codes, mean = _absmean_ternary(w.detach().float())
    return codes.to(torch.int8).numpy(), float(mean)


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _bitlinear_weight(out_f: int, in_f: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(out_f, in_f))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hd = cfg.head_dim
        self.n_head, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            hd,
        )
        self.q_proj = _bitlinear_weight(cfg.num_attention_heads * hd, cfg.hidden_size)
        self.k_proj = _bitlinear_weight(cfg.num_key_value_heads * hd, cfg.hidden_size)
        self.v_proj = _bitlinear_weight(cfg.num_key_value_heads * hd, cfg.hidden_size)
        self.o_proj = _bitlinear_weight(cfg.hidden_size, cfg.num_attention_heads * hd)
        self.attn_sub_norm = RMSNorm(cfg.num_attention_heads * hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        # q, k, v quantize the same input: one activation quantization, one fused matmul
        xq = act_quant_ste(x)
        if self.training:
            w = torch.cat(
                [ternarize_ste(self.q_proj), ternarize_ste(self.k_proj), ternarize_ste(self.v_proj)]
            )
            qkv = F.linear(xq, w)
        else:
            qkv = torch.cat(
                [
                    ternary_linear_eval(xq, self.q_proj),
                    ternary_linear_eval(xq, self.k_proj),
                    ternary_linear_eval(xq, self.v_proj),
                ],
                dim=-1,
            )
        nq, nk = self.q_proj.shape[0], self.k_proj.shape[0]
        q = qkv[..., :nq].view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = qkv[..., nq : nq + nk].view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = qkv[..., nq + nk :].view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_head
        )
        y = y.transpose(1, 2).reshape(B, T, -1)
        y = act_quant_ste(self.attn_sub_norm(y))
        if not self.training:
            return ternary_linear_eval(y, self.o_proj)
        return F.linear(y, ternarize_ste(self.o_proj))


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = _bitlinear_weight(cfg.intermediate_size, cfg.hidden_size)
        self.up_proj = _bitlinear_weight(cfg.intermediate_size, cfg.hidden_size)
        self.down_proj = _bitlinear_weight(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_sub_norm = RMSNorm(cfg.intermediate_size, cfg.rms_norm_eps)
        self.act = cfg.hidden_act

    def forward(self, x):
        xq = act_quant_ste(x)
        if self.training:  # one fused matmul for gate and up
            g, u = F.linear(
                xq, torch.cat([ternarize_ste(self.gate_proj), ternarize_ste(self.up_proj)])
            ).chunk(2, dim=-1)
        else:
            g, u = ternary_linear_eval(xq, self.gate_proj), ternary_linear_eval(xq, self.up_proj)
        g = torch.relu(g).square() if self.act == "relu2" else F.silu(g)
        h = act_quant_ste(self.ffn_sub_norm(g * u))
        if not self.training:
            return ternary_linear_eval(h, self.down_proj)
        return F.linear(h, ternarize_ste(self.down_proj))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, dropout: float):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(dropout)  # training only; model.eval() disables it

    def forward(self, x, cos, sin):
        x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class BitNetLM(nn.Module):
    """BitNet b1.58 causal LM, fake-quantized as transformers' AutoBitLinear (online)."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0, init_std: float = 0.02):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, dropout) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # RoPE tables as transformers computes them (float32, cat(freqs, freqs))
        hd = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
        pos = torch.arange(cfg.max_position_embeddings, dtype=torch.float)
        freqs = pos[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos(), persistent=False)
        self.register_buffer("rope_sin", emb.sin(), persistent=False)
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, mean=0.0, std=init_std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.config.max_position_embeddings:
            raise ValueError(
                f"idx: sequence length {T} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed_tokens(idx)
        for blk in self.layers:
            x = blk(x, cos, sin)
        return self.lm_head(self.norm(x))

    def _module(self, i: int, name: str) -> nn.Module:
        """Layer ``i``'s projection or RMSNorm ``name`` (modelspec's PROJ, LAYER_NORMS)."""
        blk = self.layers[i]
        if name in ATTN_PROJ or name == "attn_sub_norm":
            return getattr(blk.self_attn, name)
        if name in MLP_PROJ or name == "ffn_sub_norm":
            return getattr(blk.mlp, name)
        return getattr(blk, name)

    def ternary_parameters(self):
        for i in range(len(self.layers)):
            for n in PROJ:
                yield i, n, self._module(i, n)

    def to_modelspec(self) -> Model:
        """Ternarize and pack into the shared in-memory description (codes * mean|W|)."""

        def f32(t):
            return t.detach().float().numpy().copy()

        return build_model(
            self.config,
            f32(self.embed_tokens.weight),
            f32(self.norm.weight),
            f32(self.lm_head.weight),
            lambda i, name: f32(self._module(i, name).weight),
            lambda i, name: TernaryWeight(*ternary_codes(self._module(i, name))),
        )


# ----------------------------------------------------------------------------- recipe
# the recipe's fields that are ModelConfig fields of the same name
_MODEL_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "tie_word_embeddings",
)  # fmt: skip


@dataclass
class TrainConfig:
    # model
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    context: int = 256
    tie_word_embeddings: bool = False
    # optimisation
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    dropout: float = 0.0
    # bookkeeping
    seed: int = 1337
    eval_interval: int = 200
    eval_windows: int = 64
    ckpt_minutes: float = 5.0
    threads: int = 2
    corpus_limit: int = 0  # >0: use only the first N characters (tests)
    tokenizer: str = ""  # tokenizer.json (or its directory); "" = characters of the corpus

    def model_config(self, vocab_size: int) -> ModelConfig:
        shape = {f: getattr(self, f) for f in _MODEL_FIELDS}
        return ModelConfig(vocab_size=vocab_size, max_position_embeddings=self.context, **shape)


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup then cosine decay to min_lr at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    t = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1.0 + math.cos(math.pi * min(t, 1.0)))


def load_corpus(
    path: str, limit: int = 0, tokenizer: str = ""
) -> tuple[Tokenizer, torch.Tensor, torch.Tensor]:
    """The tokenizer (``tokenizer``'s file, or the characters of the whole corpus) and the
    ids of the train split (first 90 % of the characters) and of the held-out split."""
    text = read_corpus(path)
    if limit:
        text = text[:limit]
    tok = load_tokenizer(tokenizer) if tokenizer else CharTokenizer.from_text(text)
    return tok, *(
        torch.tensor(tok.encode(part, add_bos=False), dtype=torch.long) for part in split(text)
    )


def heldout_windows(
    val: torch.Tensor, context: int, limit: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of the held-out split (inputs, targets), evenly spaced."""
    n = (len(val) - 1) // context
    starts = torch.arange(n) * context
    if limit and limit < n:
        starts = starts[torch.linspace(0, n - 1, limit).long()]
    x = torch.stack([val[s : s + context] for s in starts])
    y = torch.stack([val[s + 1 : s + 1 + context] for s in starts])
    return x, y


@torch.no_grad()
def evaluate(model: BitNetLM, x: torch.Tensor, y: torch.Tensor, batch: int = 32) -> float:
    """Mean cross entropy (nats/char) over the given windows, eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])
        total += F.cross_entropy(
            logits.flatten(0, 1), y[i : i + batch].flatten(), reduction="sum"
        ).item()
        count += y[i : i + batch].numel()
    model.train(was_training)
    return total / count


def make_optimizer(model: BitNetLM, tc: TrainConfig) -> torch.optim.AdamW:
    # decay the projection latents only; norms, embeddings and head are left alone
    ternary = {id(p) for _, _, p in model.ternary_parameters()}
    decay = [p for p in model.parameters() if id(p) in ternary]
    other = [p for p in model.parameters() if id(p) not in ternary]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": tc.weight_decay},
            {"params": other, "weight_decay": 0.0},
        ],
        lr=tc.lr,
        betas=(tc.beta1, tc.beta2),
    )


def _atomic_save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export(model: BitNetLM, tok: Tokenizer, out: str, log: dict) -> None:
    from host import checkpoint  # imported late: export is the last step of a long run

    # autobitlinear: transformers then computes exactly the fake-quant forward trained here
    checkpoint.save(
        model.to_modelspec(), out, fmt="offline", linear_class="autobitlinear", tokenizer=tok
    )
    with open(os.path.join(out, LOG_FILE), "w") as f:
        json.dump(log, f, indent=1)


def train(
    tc: TrainConfig,
    out: str,
    state_dir: str,
    corpus: str = DEFAULT_CORPUS,
    resume: bool = False,
    progress: bool = True,
    export_model: bool = True,
    resume_steps: int | None = None,
    stop_at: int | None = None,
) -> dict:
    """Run (or resume) training; returns the training log (also exported as JSON).

    On resume the saved recipe is used; ``resume_steps`` (``--resume --steps N``) changes
    only the total step count (the cosine schedule is recomputed for the new length).
    ``stop_at``: save the state and return after that step (an interruption; the schedule
    still runs to ``steps``), without the final evaluation and export.
    """
    torch.set_num_threads(tc.threads)
    os.makedirs(state_dir, exist_ok=True)
    state_path = os.path.join(state_dir, STATE_FILE)
    state = None
    if resume:
        if not os.path.exists(state_path):
            raise ValueError(f"{state_path}: no training state to resume from")
        state = torch.load(state_path, weights_only=False)
        saved = TrainConfig(**state["train_config"])
        if saved != tc:
            print(f"resume: using the saved recipe {asdict(saved)}", file=sys.stderr)
        if resume_steps is not None and resume_steps != saved.steps:
            print(f"resume: total steps {saved.steps} -> {resume_steps}", file=sys.stderr)
            saved = replace(saved, steps=resume_steps)
        tc = saved

    torch.manual_seed(tc.seed)
    tok, train_ids, val_ids = load_corpus(corpus, tc.corpus_limit, tc.tokenizer)
    if len(train_ids) <= tc.context + 1 or len(val_ids) <= tc.context + 1:
        raise ValueError(f"corpus: too short for context {tc.context}")
    cfg = tc.model_config(tok.vocab_size)
    model = BitNetLM(cfg, dropout=tc.dropout)
    opt = make_optimizer(model, tc)
    batch_gen = torch.Generator().manual_seed(tc.seed + 1)
    ex, ey = heldout_windows(val_ids, tc.context, tc.eval_windows)
    n_params = sum(p.numel() for p in model.parameters())
    log = {
        "recipe": asdict(tc),
        "model_config": cfg.to_hf(),
        "parameters": n_params,
        "tokens_per_step": tc.batch_size * tc.context,
        "curve": [],
        "elapsed_s": 0.0,
    }
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        batch_gen.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        step, log = state["step"], state["log"]
        if log["recipe"]["steps"] != tc.steps:
            log.setdefault("resumed_with_steps", []).append({"at_step": step, "steps": tc.steps})
            log["recipe"]["steps"] = tc.steps

    def save_state():
        _atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "batch_rng": batch_gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "train_config": asdict(tc),
                "log": log,
            },
            state_path,
        )

    from tqdm import tqdm

    bar = tqdm(
        total=tc.steps, initial=step, disable=not progress, dynamic_ncols=True, mininterval=2.0
    )
    model.train()
    t_start = time.time() - log["elapsed_s"]
    t_ckpt = time.time()
    high = len(train_ids) - tc.context - 1
    tokens_per_step = tc.batch_size * tc.context
    tps_t, tps_step = time.time(), step
    while step < tc.steps and (stop_at is None or step < stop_at):
        lr = lr_at(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, high + 1, (tc.batch_size,), generator=batch_gen)
        offs = starts[:, None] + torch.arange(tc.context + 1)
        chunk = train_ids[offs]
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        bar.update(1)
        now = time.time()
        tps = (step - tps_step) * tokens_per_step / max(now - tps_t, 1e-9)
        if now - tps_t > 30:
            tps_t, tps_step = now, step
        rec = None
        if step % tc.eval_interval == 0 or step == tc.steps:
            rec = {
                "step": step,
                "train_loss": round(loss.item(), 5),
                "heldout_loss": round(evaluate(model, ex, ey), 5),
                "lr": lr,
                "elapsed_s": round(now - t_start, 1),
            }
            log["curve"].append(rec)
            bar.write(json.dumps(rec))
        bar.set_postfix(
            loss=f"{loss.item():.3f}",
            lr=f"{lr:.2e}",
            tok_s=f"{tps:.0f}",
            gn=f"{gnorm.item():.2f}",
            refresh=False,
        )
        log["elapsed_s"] = time.time() - t_start
        if now - t_ckpt > tc.ckpt_minutes * 60 or step == tc.steps:
            save_state()
            t_ckpt = time.time()
    bar.close()
    if step < tc.steps:  # interrupted on purpose (stop_at)
        save_state()
        return log

    # final: the whole held-out split, non-overlapping windows of `context` characters
    fx, fy = heldout_windows(val_ids, tc.context)
    final = evaluate(model, fx, fy)
    log["final"] = {
        "heldout_loss_nats_per_char": final,
        "heldout_bits_per_char": final / math.log(2),
        "heldout_chars": int(fy.numel()),
        "steps": step,
        "train_tokens": step * tokens_per_step,
        "wall_s": round(log["elapsed_s"], 1),
    }
    print(json.dumps(log["final"]), file=sys.stderr)
    save_state()
    if export_model:
        export(model, tok, out, log)
    return log


def _export_only(out: str, state_dir: str, corpus: str) -> None:
    state = torch.load(os.path.join(state_dir, STATE_FILE), weights_only=False)
    tc = TrainConfig(**state["train_config"])
    tok, _, _ = load_corpus(corpus, tc.corpus_limit, tc.tokenizer)
    model = BitNetLM(tc.model_config(tok.vocab_size))
    model.load_state_dict(state["model"])
    model.eval()
    export(model, tok, out, state["log"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m host.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="export directory (HF layout)")
    p.add_argument(
        "--state-dir",
        default=None,
        help="training-state directory (default runs/<basename of out>_train)",
    )
    p.add_argument("--corpus", default=DEFAULT_CORPUS)
    p.add_argument("--resume", action="store_true", help="continue from the saved state")
    p.add_argument(
        "--export-only",
        action="store_true",
        help="export the saved state to --out without training",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="save the state and stop after this step (continue with --resume)",
    )
    for f in fields(TrainConfig):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default)
            if not isinstance(f.default, bool)
            else (lambda s: s.lower() in ("1", "true", "yes")),
            default=None,
        )
    a = p.parse_args(argv)
    state_dir = a.state_dir or os.path.join(
        "runs", os.path.basename(os.path.normpath(a.out)) + "_train"
    )
    if a.export_only:
        _export_only(a.out, state_dir, a.corpus)
        return 0
    kw = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if getattr(a, f.name) is not None}
    tc = TrainConfig(**kw)
    train(
        tc,
        a.out,
        state_dir,
        corpus=a.corpus,
        resume=a.resume,
        progress=not a.no_progress,
        resume_steps=a.steps if a.resume else None,
        stop_at=a.stop_at,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
