"""Runtime: compiles a BitNet model for the accelerator and runs it through a ``Device``.

    rt = make_runtime(model, "golden")             # or Runtime(model, GoldenDevice())
    logits = rt.forward(prompt_ids)                # prefill: [T, vocab] float32
    logits = rt.forward([next_id])                 # decode at the next position
    print(rt.address_map)                          # where everything lives

Compilation (``golden.model.compile_integer`` for the device's datapath ``device.cfg``)
gives the integer constants; the runtime lays them out in device memory in the formats
of ``golden/isa.py`` and writes them once:

- ``embed``: int32 [vocab, hidden] Q15.16; ``lm_head``: int8 [vocab, hidden] (its float
  row scales stay on the host);
- ``rope``: RoPE table int16 [context, head_dim] (``golden.isa.rope_table`` of
  ``golden.rope.rope_tables`` for the model's rope_theta);
- per layer ``L{i}.<norm>``: gamma_q int16 [dim] (its g_exp and the norm constants go
  into the commands); ``L{i}.<proj>``: ternary codes in the TLMM tile format;
- ``kv{i}.k`` / ``kv{i}.v``: KV rows [kv_heads, context] of ``golden.isa.kv_row(head_dim)``
  bytes (int8 codes, or packed int4 with ``ForwardConfig.kv_bits`` = 4); ``kv{i}.k_scale`` /
  ``kv{i}.v_scale``: scale records [kv_heads, context] (the KV cache of one sequence);
- scratch activations sized for ``max_chunk`` tokens (``tokens``, ``h``, ``x``/
  ``x_scale``, TLMM accumulators, ``q``/``q_scale``, ``logits``/``probs`` [heads,
  max_chunk, context], ``attn``, ``ffn``, ``lm_acc``) and the command ``stream``.

Each step (a chunk of at most ``max_chunk`` tokens at positions pos..pos+T-1) is one
command stream that mirrors ``GoldenModel._forward_integer`` op for op: EMBED, then per
layer NORM_QUANT, TLMM q/k/v, ROPE_QUANT q (into ``q``), k and v (appended to the KV
cache at pos), QK, SOFTMAX, PV, NORM_QUANT, TLMM o_proj, RESIDUAL, NORM_QUANT, TLMM
gate/up, ACT, NORM_QUANT, TLMM down_proj, RESIDUAL; the final NORM_QUANT and LM_HEAD;
END. The host reads the int32 head accumulators and the final norm's scale records and
computes ``logits = acc * sx * lm_row_scale`` exactly as ``golden.model.op_lm_head``
(float64, then float32) -- bit for bit the golden integer forward, for any chunking.

Positions: the runtime keeps one KV cache on the device. ``forward(tokens)`` continues
at ``self.cache.length`` (``reset()`` starts over); ``new_cache()`` / ``forward(tokens,
cache)`` give the ``GoldenModel`` calling convention (``host.generate.generate`` runs
unchanged on a Runtime), the newest cache owning the device's KV memory. Positions
beyond ``max_position_embeddings`` raise ValueError, as in golden/model.py. One
sequence at a time (tokens [T]; a batch [B, T] raises ValueError).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from golden import isa
from golden.isa import ActKind, Opcode, command
from golden.model import IntegerModel, Scale, check_tokens, compile_integer, permute_ffn
from golden.modelspec import ATTN_PROJ, LAYER_NORMS, MLP_PROJ, Model
from golden.rmsnorm import norm_constants
from golden.rope import rope_tables
from host.device import Device

DEFAULT_MAX_CHUNK = 64  # tokens per stream (golden.model.ATTN_QUERY_BLOCK)
DEFAULT_TIMEOUT_S = 120.0


def _sizes(mc) -> tuple[int, int, int, int, int, int, int]:
    """(hidden, intermediate, vocab, heads, KV heads, head_dim, context) of a ModelConfig."""
    return (
        mc.hidden_size,
        mc.intermediate_size,
        mc.vocab_size,
        mc.num_attention_heads,
        mc.num_key_value_heads,
        mc.head_dim,
        mc.max_position_embeddings,
    )


@dataclass(frozen=True)
class Region:
    name: str
    addr: int
    nbytes: int
    fmt: str  # memory format, in the words of golden/isa.py
    kind: str  # "const" (written once), "kv" or "scratch"


@dataclass
class AddressMap:
    """Where every tensor of the compiled model lives in device memory."""

    regions: dict = field(default_factory=dict)

    def add(self, r: Region) -> None:
        self.regions[r.name] = r

    def __getitem__(self, name: str) -> Region:
        return self.regions[name]

    def addr(self, name: str) -> int:
        return self.regions[name].addr

    def total(self, kind: str | None = None) -> int:
        return sum(r.nbytes for r in self.regions.values() if kind is None or r.kind == kind)

    @property
    def span(self) -> tuple[int, int]:
        lo = min(r.addr for r in self.regions.values())
        hi = max(r.addr + r.nbytes for r in self.regions.values())
        return lo, hi

    def __str__(self) -> str:
        lines = [f"{'region':<28} {'address':>10} {'bytes':>10}  {'kind':<7} format"]
        for r in self.regions.values():
            lines.append(f"{r.name:<28} 0x{r.addr:08x} {r.nbytes:>10}  {r.kind:<7} {r.fmt}")
        lo, hi = self.span
        lines.append(
            f"total: const {self.total('const')} B, kv {self.total('kv')} B, scratch "
            f"{self.total('scratch')} B; image span 0x{lo:x}..0x{hi:x} ({hi - lo} B)"
        )
        return "\n".join(lines)


class DeviceKVCache:
    """Handle on the runtime's device KV cache (``length`` valid positions)."""

    _ids = itertools.count()

    def __init__(self, runtime: Runtime):
        self.runtime, self.length, self.id = runtime, 0, next(self._ids)
        self.capacity = runtime.config.max_position_embeddings

    def reset(self) -> None:
        self.length = 0


def k_slices(k: int, max_k: int | None, tc) -> list[tuple[int, int]]:
    """[k0, k1) slices of a projection's inputs that engines of ``max_k`` take (``tc``: the
    TLMM config): one if k <= max_k, else equal slices of whole activation chunks
    (K-splitting: each slice's partial accumulators are summed by ADD; exact)."""
    if max_k is None or k <= max_k:
        return [(0, k)]
    chunk = tc.group * tc.tables
    ns = -(-k // max_k)
    ks = -(-k // ns // chunk) * chunk
    while ks > max_k:  # rounding up to whole chunks overshot: one slice more
        ns += 1
        ks = -(-k // ns // chunk) * chunk
    return [(k0, min(k, k0 + ks)) for k0 in range(0, k, ks)]


class Runtime:
    """A model compiled for ``device`` (see module docstring)."""

    mode = "integer"

    def __init__(
        self,
        model: Model,
        device: Device,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        act_adc=None,
        sparse: bool = False,
        ffn_order=None,
    ):
        if not isinstance(model, Model):
            raise ValueError(f"model: expected golden.modelspec.Model, got {type(model).__name__}")
        if not isinstance(device, Device):
            raise ValueError(f"device: expected a host.device.Device, got {type(device).__name__}")
        if not isinstance(max_chunk, (int, np.integer)) or max_chunk < 1:
            raise ValueError(f"max_chunk: expected a positive integer, got {max_chunk!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s: expected a number > 0, got {timeout_s!r}")
        isa.check_datapath(device.cfg)
        self.model, self.device, self.config = model, device, model.config
        self.timeout_s = float(timeout_s)
        mc = self.config
        self.max_chunk = int(min(max_chunk, mc.max_position_embeddings))
        self.im: IntegerModel = compile_integer(model, device.cfg, act_adc)
        if ffn_order is not None:  # same outputs; zeros gathered for sparsity (host.ffn_order)
            self.im = permute_ffn(self.im, ffn_order)
        self.act_adc = act_adc
        if not isinstance(sparse, bool):
            raise ValueError(f"sparse: expected True or False, got {sparse!r}")
        self.sparse = sparse
        # the engines' k limit (the design point's table depth); the golden backend has none
        self.max_k = getattr(getattr(device, "dp", None), "max_k", None)
        # a top without the TLMM_SPARSE engine (the kv260 point) gets the masked up_proj's
        # skips only; the golden backend executes every opcode
        rtl_ops = getattr(device, "rtl_ops", None)
        self.sparse_engine = rtl_ops is None or Opcode.TLMM_SPARSE in rtl_ops
        self.cfg = self.im.cfg
        self._check_dims()
        self.address_map = AddressMap()
        self._layout_and_write()
        self._owner = None
        self.cache = self.new_cache()
        self.last_stream: list = []
        self.stats = {"streams": 0, "tokens": 0, "device_s": 0.0}

    # ------------------------------------------------------------------ layout
    def _check_dims(self) -> None:
        mc = self.config
        limits = {
            "hidden_size": (mc.hidden_size, isa.DIM_BITS),
            "intermediate_size": (mc.intermediate_size, isa.DIM_BITS),
            "head_dim": (mc.head_dim, isa.DIM_BITS),
            "num_attention_heads": (mc.num_attention_heads, isa.HEADS_BITS),
            "max_position_embeddings": (mc.max_position_embeddings, isa.ROWS_BITS),
            "vocab_size": (mc.vocab_size, isa.VOCAB_BITS),
            "num_attention_heads * head_dim": (mc.num_attention_heads * mc.head_dim, isa.DIM_BITS),
        }
        for name, (v, bits) in limits.items():
            if v >= 1 << bits:
                raise ValueError(f"model: {name} = {v} exceeds the command field ({bits} bits)")
        if isa.kv_row(mc.head_dim, 1, self.cfg) % 2:
            raise ValueError(
                f"model: head_dim {mc.head_dim} is not a multiple of 4, which the INT4 KV "
                "cache needs (ROPE_QUANT writes each half row as whole bytes)"
            )
        if mc.max_position_embeddings > self.cfg.softmax.max_len:
            raise ValueError(
                f"model: context {mc.max_position_embeddings} exceeds the softmax "
                f"row limit {self.cfg.softmax.max_len}"
            )

    def _region(self, name: str, nbytes: int, fmt: str, kind: str, align: int = 64) -> int:
        addr = self.device.alloc(int(nbytes), align)
        self.address_map.add(Region(name, addr, int(nbytes), fmt, kind))
        return addr

    def _const(self, name: str, data: np.ndarray, fmt: str) -> int:
        data = np.ascontiguousarray(data)
        addr = self._region(name, data.nbytes, fmt, "const")
        self.device.write(addr, data)
        return addr

    def _layout_and_write(self) -> None:
        mc, im = self.config, self.im
        h_, i_, v_, nh, nkv, hd, ctx = _sizes(mc)
        qd = nh * hd
        self._const("embed", im.embed_fx.astype(np.int32), f"int32 [{v_}, {h_}] Q15.16")
        cos_q, sin_q = rope_tables(hd, self.cfg.rope)
        self._const(
            "rope",
            isa.rope_table(cos_q[:ctx], sin_q[:ctx]),
            f"int16 [{ctx}, {hd}] cos|sin Q1.{self.cfg.rope.table_frac_bits}",
        )
        for li, lc in enumerate(im.layers):
            for nm in LAYER_NORMS:
                g = getattr(lc, nm).gamma_q
                self._const(f"L{li}.{nm}", g.astype(np.int16), f"int16 [{g.size}] gamma_q")
            for nm in ATTN_PROJ + MLP_PROJ:
                codes = lc.proj[nm].codes
                for j, (k0, k1) in enumerate(self._k_slices(codes.shape[1])):
                    name = f"L{li}.{nm}" + (f".k{j}" if k0 or k1 < codes.shape[1] else "")
                    self._const(name, *self._packed(nm, codes[:, k0:k1]))
        for li, tbl in enumerate(im.adc_tables):
            self._const(f"L{li}.adc_table", tbl, f"int16 [{tbl.size}] NL-ADC thresholds")
        self._const("norm", im.norm.gamma_q.astype(np.int16), f"int16 [{h_}] gamma_q")
        self._const("lm_head", im.lm_q.astype(np.int8), f"int8 [{v_}, {h_}]")
        rec = isa.SCALE_RECORD_BYTES
        row = isa.kv_row(hd, 1, self.cfg)
        kv_fmt = f"int8 [{nkv}, {ctx}, {hd}]" if row == hd else f"int4x2 [{nkv}, {ctx}, {row}]"
        for li in range(mc.num_hidden_layers):
            for kv in ("k", "v"):
                self._region(f"kv{li}.{kv}", nkv * ctx * row, kv_fmt, "kv")
                self._region(f"kv{li}.{kv}_scale", nkv * ctx * rec, f"scale [{nkv}, {ctx}]", "kv")
        t = self.max_chunk
        xd = max(h_, i_, qd)
        scratch = [
            ("tokens", t * 4, f"uint32 [{t}]"),
            ("h", t * h_ * 4, f"int32 [{t}, {h_}] Q15.16 residual"),
            ("x", t * xd, f"int8 [{t}, {xd}] x_q"),
            ("x_scale", t * rec, f"scale [{t}]"),
            ("acc_q", t * qd * 4, f"int32 [{t}, {qd}]"),
            ("acc_k", t * nkv * hd * 4, f"int32 [{t}, {nkv * hd}]"),
            ("acc_v", t * nkv * hd * 4, f"int32 [{t}, {nkv * hd}]"),
            ("q", nh * t * hd, f"int8 [{nh}, T<={t}, {hd}]"),
            ("q_scale", nh * t * rec, f"scale [{nh}, T<={t}]"),
            ("logits", nh * t * ctx * 2, f"int16 [{nh}, T, S] Q7.8 (<= {t}x{ctx})"),
            ("probs", nh * t * ctx * 2, f"uint16 [{nh}, T, S] UQ0.16"),
            ("attn", t * qd * 4, f"int32 [{t}, {qd}] Q15.16"),
            ("acc_h", t * h_ * 4, f"int32 [{t}, {h_}]"),
            ("acc_g", t * i_ * 4, f"int32 [{t}, {i_}]"),
            ("acc_u", t * i_ * 4, f"int32 [{t}, {i_}]"),
            ("ffn", t * i_ * 4, f"int32 [{t}, {i_}] Q15.16"),
            ("lm_acc", t * v_ * 4, f"int32 [{t}, {v_}]"),
        ]
        split = [
            (len(self._k_slices(k)) - 1, n)
            for lc in im.layers
            for n, k in (p.codes.shape for p in lc.proj.values())
        ]
        parts = max(p for p, _ in split)
        n_part = max((n for p, n in split if p), default=0)
        if parts:  # K-split partial accumulators (slices 1.. of a projection)
            scratch.append(
                ("acc_part", parts * t * n_part * 4, f"int32 [{parts}, {t}, <={n_part}]")
            )
        for name, nbytes, fmt in scratch:
            self._region(name, nbytes, fmt, "scratch")
        # K-split TLMM_SPARSE projections issue commands per token row: the longest stream
        # is a max_chunk-token step
        self.max_cmds = len(self.step_commands(0, self.max_chunk, 1))
        self._region(
            "stream",
            self.max_cmds * isa.COMMAND_BYTES,
            f"{self.max_cmds} commands x {isa.COMMAND_BYTES} B",
            "scratch",
            align=isa.STREAM_ALIGN,
        )

    @property
    def image_bytes(self) -> int:
        """Bytes of device memory the model occupies (constants + KV cache + scratch)."""
        lo, hi = self.address_map.span
        return hi - lo

    # ------------------------------------------------------------------ commands
    def _at(self, **regions: str) -> dict[str, int]:
        """Command fields -> the addresses of the address map's regions named for them."""
        return {field: self.address_map.addr(name) for field, name in regions.items()}

    def _norm_cmd(self, src: int, nc, dim: int, rows: int) -> isa.Command:
        consts = norm_constants(dim, self.cfg.norm, self.cfg.quant)
        consts = dict(zip(("eps_term", "c_mant", "c_exp"), consts, strict=True), g_exp=nc[1])
        io = dict(src=src, gamma=nc[0], **self._at(dst="x", dst_scale="x_scale"))
        return command(Opcode.NORM_QUANT, **io, rows=rows, dim=dim, **consts)

    def _packed(self, proj: str, codes: np.ndarray) -> tuple[np.ndarray, str]:
        """A projection's codes in the tile format its command reads, and its description."""
        tc = self.cfg.tlmm
        n, k = codes.shape
        if self._sparse_proj(proj):
            return isa.pack_sparse_weights(codes, tc), (
                f"sparse tiles n={n} k={k} ({isa.sparse_blocks(n, tc)}x"
                f"{-(-k // tc.group)} beats of {isa.tlmm_beat_bytes(tc)} B)"
            )
        return isa.pack_tlmm_weights(codes, tc), (
            f"TLMM tiles n={n} k={k} ({isa.tlmm_blocks(n, tc)}x"
            f"{isa.tlmm_chunks(k, tc)} beats of {isa.tlmm_beat_bytes(tc)} B)"
        )

    def _k_slices(self, k: int) -> list[tuple[int, int]]:
        return k_slices(k, self.max_k, self.cfg.tlmm)

    def _sparse_proj(self, proj: str) -> bool:
        """In sparse mode (ReLU^2 models) every projection but the masked up_proj runs as
        TLMM_SPARSE (DESIGN §9): down_proj's input (ReLU^2(gate) * up) is mostly zero, and
        for the others the group-major tiles read only ceil(k/G) groups where TLMM's read
        whole chunks of T groups (k = 256: 86 groups against 112) at the same beats per
        cycle."""
        relu2 = self.config.hidden_act == "relu2"
        return self.sparse and self.sparse_engine and relu2 and proj != "up_proj"

    def _tlmm_cmds(self, li: int, proj: str, dst: str, rows: int) -> list:
        """A projection's commands: one TLMM (or TLMM_SPARSE), or, when its k exceeds the
        engines' max_k, one TLMM per k slice over all rows (src_skip steps over the rest of
        each row; TLMM_SPARSE, which has no src_skip: one per row and slice), slice j > 0
        into ``acc_part``, and an ADD per slice j > 0 that sums the partial accumulators
        into ``dst``."""
        n, k = self.im.layers[li].proj[proj].codes.shape
        op = Opcode.TLMM_SPARSE if self._sparse_proj(proj) else Opcode.TLMM
        x, out = self.address_map.addr("x"), self.address_map.addr(dst)
        extra = {}
        if op == Opcode.TLMM and proj == "up_proj" and self.config.hidden_act == "relu2":
            # ReLU^2: up_proj only where ReLU(gate) != 0 (golden.model); sparse mode also
            # skips the weight beats of the row blocks that are wholly masked
            extra = dict(mask=self.address_map.addr("acc_g"), masked=1, skip=int(self.sparse))
        slices = self._k_slices(k)
        if len(slices) == 1:
            w = self.address_map.addr(f"L{li}.{proj}")
            return [command(op, src=x, weights=w, dst=out, rows=rows, k=k, n=n, **extra)]
        part = self.address_map.addr("acc_part")
        dsts = [out] + [part + (j - 1) * self.max_chunk * n * 4 for j in range(1, len(slices))]
        cmds = []
        if op == Opcode.TLMM:  # all rows at once: the slice of each row, src_skip apart
            for j, (k0, k1) in enumerate(slices):
                w = self.address_map.addr(f"L{li}.{proj}.k{j}")
                skip = k - (k1 - k0)
                cmds.append(
                    command(
                        op, src=x + k0, src_skip=skip, weights=w, dst=dsts[j], rows=rows,
                        k=k1 - k0, n=n, **extra,
                    )
                )  # fmt: skip
        else:  # TLMM_SPARSE has no src_skip: one per row and slice
            for m in range(rows):
                for j, (k0, k1) in enumerate(slices):
                    w = self.address_map.addr(f"L{li}.{proj}.k{j}")
                    src, d = x + m * k + k0, dsts[j] + m * n * 4
                    cmds.append(command(op, src=src, weights=w, dst=d, rows=1, k=k1 - k0, n=n))
        for d in dsts[1:]:
            cmds.append(command(Opcode.ADD, a=out, b=d, dst=out, rows=rows, dim=n))
        return cmds

    def _residual_cmd(self, c: tuple[int, int], rows: int) -> isa.Command:
        """h += acc_h requantized by the projection's constant ``c`` (mantissa, shift)."""
        io = self._at(h="h", acc="acc_h", src_scale="x_scale", dst="h")
        dim = self.config.hidden_size
        return command(Opcode.RESIDUAL, **io, rows=rows, dim=dim, c_mant=c[0], c_shift=c[1])

    def step_commands(self, pos: int, rows: int, lm_rows: int) -> list:
        """The command stream of tokens pos..pos+rows-1 (already in ``tokens``); the head
        runs on the last ``lm_rows`` of them."""
        mc, im, a = self.config, self.im, self.address_map
        h_, i_, v_, nh, nkv, hd, ctx = _sizes(mc)
        keys = pos + rows
        rec = isa.SCALE_RECORD_BYTES
        row = isa.kv_row(hd, 1, self.cfg)  # bytes of a K/V cache row
        embed_io = self._at(tokens="tokens", table="embed", dst="h")
        cmds = [command(Opcode.EMBED, **embed_io, rows=rows, dim=h_, vocab=v_)]

        def const(sc: Scale) -> tuple[int, int]:
            return int(sc.mant), int(sc.shift)

        def norm(li, nm):
            nc = getattr(im.layers[li], nm)
            return a.addr(f"L{li}.{nm}"), nc.g_exp

        kind = act_kind(mc.hidden_act, im.act_adc)
        for li, lc in enumerate(im.layers):
            pr = lc.proj
            cmds.append(self._norm_cmd(a.addr("h"), norm(li, "input_layernorm"), h_, rows))
            for p, dst in (("q_proj", "acc_q"), ("k_proj", "acc_k"), ("v_proj", "acc_v")):
                cmds += self._tlmm_cmds(li, p, dst, rows)
            k, k_scale, v, v_scale = (
                a.addr(f"kv{li}.{n}") for n in ("k", "k_scale", "v", "v_scale")
            )
            for p, src, heads, dst, dst_scale, ld, rope, kv in (
                ("q_proj", "acc_q", nh, a.addr("q"), a.addr("q_scale"), rows, 1, 0),
                ("k_proj", "acc_k", nkv, k + pos * row, k_scale + pos * rec, ctx, 1, 1),
                ("v_proj", "acc_v", nkv, v + pos * row, v_scale + pos * rec, ctx, 0, 1),
            ):
                cm, cs = const(pr[p].const)
                cmds.append(
                    command(
                        Opcode.ROPE_QUANT,
                        src=a.addr(src),
                        src_scale=a.addr("x_scale"),
                        table=a.addr("rope"),
                        dst=dst,
                        dst_scale=dst_scale,
                        rows=rows,
                        heads=heads,
                        head_dim=hd,
                        ld=ld,
                        pos=pos,
                        table_rows=ctx,
                        c_mant=cm,
                        c_shift=cs,
                        rope=rope,
                        kv=kv,
                    )
                )
            # attention over keys 0..keys-1 of layer li's cache (rows of queries, nh heads)
            attn = dict(rows=rows, keys=keys, heads=nh)
            kv = dict(kv_heads=nkv, head_dim=hd, kv_ld=ctx)
            qk_src = dict(q=a.addr("q"), q_scale=a.addr("q_scale"), k=k, k_scale=k_scale)
            cmds.append(command(Opcode.QK, **qk_src, dst=a.addr("logits"), **attn, **kv, q_ld=rows))
            cmds.append(command(Opcode.SOFTMAX, src=a.addr("logits"), dst=a.addr("probs"), **attn))
            pv_src = dict(p=a.addr("probs"), v=v, v_scale=v_scale)
            cmds.append(command(Opcode.PV, **pv_src, dst=a.addr("attn"), **attn, **kv))
            cmds.append(self._norm_cmd(a.addr("attn"), norm(li, "attn_sub_norm"), nh * hd, rows))
            cmds += self._tlmm_cmds(li, "o_proj", "acc_h", rows)
            cmds.append(self._residual_cmd(const(pr["o_proj"].const), rows))
            cmds.append(self._norm_cmd(a.addr("h"), norm(li, "post_attention_layernorm"), h_, rows))
            cmds += self._tlmm_cmds(li, "gate_proj", "acc_g", rows)
            cmds += self._tlmm_cmds(li, "up_proj", "acc_u", rows)
            gm_, gs = const(pr["gate_proj"].const)
            um, us = const(pr["up_proj"].const)
            act_io = self._at(gate="acc_g", up="acc_u", src_scale="x_scale", dst="ffn")
            act_c = dict(g_mant=gm_, g_shift=gs, u_mant=um, u_shift=us)
            if im.act_adc is None:
                act_c.update(adc_table=0, adc_bits=0)
            else:
                act_c.update(adc_table=a.addr(f"L{li}.adc_table"), adc_bits=im.act_adc.bits)
            cmds.append(command(Opcode.ACT, **act_io, rows=rows, dim=i_, **act_c, kind=kind))
            cmds.append(self._norm_cmd(a.addr("ffn"), norm(li, "ffn_sub_norm"), i_, rows))
            cmds += self._tlmm_cmds(li, "down_proj", "acc_h", rows)
            cmds.append(self._residual_cmd(const(pr["down_proj"].const), rows))
        first = rows - lm_rows
        cmds.append(
            self._norm_cmd(
                a.addr("h") + first * h_ * 4, (a.addr("norm"), im.norm.g_exp), h_, lm_rows
            )
        )
        head_io = self._at(src="x", weights="lm_head", dst="lm_acc")
        cmds.append(command(Opcode.LM_HEAD, **head_io, rows=lm_rows, k=h_, n=v_))
        cmds.append(command(Opcode.END))
        return cmds

    # ------------------------------------------------------------------ running
    def new_cache(self) -> DeviceKVCache:
        """A fresh sequence; it owns the device KV cache from now on."""
        c = DeviceKVCache(self)
        self._owner = c.id
        return c

    def reset(self) -> None:
        """Start the runtime's own sequence over (position 0)."""
        self.cache = self.new_cache()

    def run_stream(self, cmds) -> None:
        """Write ``cmds`` to the stream region, run them, wait (DeviceError/DeviceTimeout)."""
        if len(cmds) > self.max_cmds:
            raise ValueError(
                f"cmds: {len(cmds)} commands exceed the stream region ({self.max_cmds})"
            )
        addr = self.address_map.addr("stream")
        self.device.write(addr, isa.encode_stream(cmds))
        self.last_stream = list(cmds)
        t0 = time.perf_counter()
        self.device.run(addr, len(cmds))
        self.device.wait(self.timeout_s)
        self.stats["device_s"] += time.perf_counter() - t0
        self.stats["streams"] += 1

    def forward(
        self, tokens, cache: DeviceKVCache | None = None, last_only: bool = False
    ) -> np.ndarray:
        """Logits [T, vocab] float32 of ``tokens`` at positions cache.length.. ([1, vocab]
        for the last token only with ``last_only``); appends their K/V to the cache."""
        t = check_tokens(tokens, self.config.vocab_size, batch=False)
        cache = self.cache if cache is None else cache
        if not isinstance(cache, DeviceKVCache) or cache.runtime is not self:
            raise ValueError("cache: not a cache of this runtime (use new_cache())")
        if cache.id != self._owner:
            raise ValueError("cache: stale: a newer cache owns the device KV memory")
        mc, a = self.config, self.address_map
        n, start = t.shape[0], cache.length
        if start + n > mc.max_position_embeddings:
            raise ValueError(
                f"tokens: positions {start}..{start + n - 1} exceed the context window "
                f"(max_position_embeddings = {mc.max_position_embeddings})"
            )
        out = []
        for c0 in range(0, n, self.max_chunk):
            chunk = t[c0 : c0 + self.max_chunk]
            rows = chunk.shape[0]
            lm_rows = 1 if last_only else rows
            if last_only and c0 + rows < n:
                lm_rows = 1  # the head of a non-final chunk is not needed
            self.device.write(a.addr("tokens"), chunk.astype(np.uint32))
            self.run_stream(self.step_commands(start + c0, rows, lm_rows))
            cache.length = start + c0 + rows
            if last_only and c0 + rows < n:
                continue
            out.append(self._read_logits(lm_rows))
        self.stats["tokens"] += n
        return np.concatenate(out, axis=0)

    def _read_logits(self, rows: int) -> np.ndarray:
        """acc * sx * lm_row_scale, as golden.model.op_lm_head computes it."""
        a, v = self.address_map, self.config.vocab_size
        acc = self.device.read_array(a.addr("lm_acc"), np.int32, (rows, v)).astype(np.int64)
        mant, shift = isa.unpack_scales(
            self.device.read(a.addr("x_scale"), rows * isa.SCALE_RECORD_BYTES)
        )
        sx = Scale(mant, shift)
        return (acc * sx.to_float()[..., None] * self.im.lm_row_scale).astype(np.float32)

    __call__ = forward

    # ------------------------------------------------------------------ inspection
    def kv_cache(self, layer: int) -> dict:
        """The device KV cache of ``layer``: k, v codes int8 [kv_heads, context, head_dim]
        (unpacked from the KV format) and their scales (mant, shift) int64 [kv_heads,
        context]."""
        mc, a = self.config, self.address_map
        nkv, ctx, hd = mc.num_key_value_heads, mc.max_position_embeddings, mc.head_dim
        row, bits = isa.kv_row(hd, 1, self.cfg), self.cfg.forward.kv_bits
        out = {}
        for kv in ("k", "v"):
            raw = self.device.read_array(a.addr(f"kv{layer}.{kv}"), np.int8, (nkv, ctx, row))
            out[kv] = isa.unpack_kv(raw, bits)
            m, s = isa.unpack_scales(
                self.device.read(
                    a.addr(f"kv{layer}.{kv}_scale"), nkv * ctx * isa.SCALE_RECORD_BYTES
                )
            )
            out[f"{kv}_scale"] = Scale(m.reshape(nkv, ctx), s.reshape(nkv, ctx))
        return out

    def counters(self) -> dict:
        return self.device.counters()

    def close(self) -> None:
        self.device.close()


def act_kind(hidden_act: str, act_adc=None) -> ActKind:
    """The ACT command's kind for the model's activation and NL-ADC setting
    (``golden.nl_adc.ActADC`` or None)."""
    if act_adc is None:
        return ActKind.RELU2 if hidden_act == "relu2" else ActKind.SILU
    if hidden_act == "silu":
        if act_adc.variant != "nl":
            raise ValueError("act_adc: a silu model takes only the 'nl' variant (sigma by NL-ADC)")
        return ActKind.SILU_NLADC
    return ActKind.RELU2_NLADC if act_adc.variant == "nl" else ActKind.RELU2_LINADC


# runtime keyword arguments (the rest go to the device backend)
_RUNTIME_KW = ("max_chunk", "timeout_s", "act_adc", "sparse", "ffn_order")


def add_design_point_args(p) -> None:
    """The command lines' design-point flags (``python -m host``, ``serve``)."""
    from golden.config import DEFAULT_DESIGN_POINT, DESIGN_POINTS

    p.add_argument(
        "--design-point",
        choices=sorted(DESIGN_POINTS),
        default=DEFAULT_DESIGN_POINT,
        help="the accelerator design point (golden.config.DESIGN_POINTS): the top the sim "
        "backend builds, its clock and DRAM",
    )
    p.add_argument("--clock-mhz", type=float, default=None, help="override its clock (MHz)")
    p.add_argument(
        "--bandwidth-gbs", type=float, default=None, help="override its DRAM bandwidth (GB/s)"
    )


ADC_DEVICES = ("ideal", "rram")  # --act-adc-device: ideal thresholds, or rram_typical


def add_act_adc_args(p) -> None:
    """The FFN activation through the ACT engine's NL-ADC kinds (``golden.nl_adc.ActADC``)."""
    p.add_argument(
        "--act-adc",
        type=int,
        metavar="BITS",
        default=None,
        help="compute the FFN activation through the ACT engine's ramp ADC at BITS bits "
        "(1..8): relu2 models ReLU^2 by the NL-ADC (code 0 decoded as 0), silu models "
        "sigma(gate) by the NL-ADC; the threshold table is written by the host",
    )
    p.add_argument(
        "--act-adc-variant",
        choices=("nl", "linear"),
        default="nl",
        help="with --act-adc: nl (the nonlinear ramp, default) or linear (relu2 models: "
        "a linear ramp ADC, then a digital square)",
    )
    p.add_argument(
        "--act-adc-device",
        choices=ADC_DEVICES,
        default="ideal",
        help="with --act-adc: ideal thresholds (default) or rram: one device per layer "
        "sampled from ADCDeviceConfig.rram_typical (programming error, stuck cells) "
        "folded into the table",
    )
    p.add_argument(
        "--act-adc-seed",
        type=int,
        default=0,
        help="with --act-adc-device rram: the device seed (layer i uses (seed, i))",
    )
    p.add_argument(
        "--act-adc-calibrate",
        action="store_true",
        help="with --act-adc-device rram: bias-cell calibration of each sampled ramp",
    )


def act_adc_from_args(a):
    """The ``golden.nl_adc.ActADC`` the ``add_act_adc_args`` flags name, or None
    (ValueError naming a bad flag)."""
    from golden.config import DEFAULT, ADCDeviceConfig
    from golden.nl_adc import ActADC

    given = [
        f
        for f, v, d in (
            ("--act-adc-variant", a.act_adc_variant, "nl"),
            ("--act-adc-device", a.act_adc_device, "ideal"),
            ("--act-adc-seed", a.act_adc_seed, 0),
            ("--act-adc-calibrate", a.act_adc_calibrate, False),
        )
        if v != d
    ]
    if a.act_adc is None:
        if given:
            raise ValueError(f"{given[0]}: only with --act-adc BITS")
        return None
    top = DEFAULT.adc.act_max_bits
    if not 1 <= a.act_adc <= top:
        raise ValueError(f"--act-adc: expected 1..{top} bits, got {a.act_adc}")
    if a.act_adc_device == "ideal":
        for f in ("--act-adc-seed", "--act-adc-calibrate"):
            if f in given:
                raise ValueError(f"{f}: only with --act-adc-device rram")
        return ActADC(a.act_adc_variant, a.act_adc, None)
    if a.act_adc_seed < 0:
        raise ValueError(f"--act-adc-seed: expected >= 0, got {a.act_adc_seed}")
    dev = ADCDeviceConfig.rram_typical(seed=a.act_adc_seed)
    return ActADC(a.act_adc_variant, a.act_adc, dev, calibrate=a.act_adc_calibrate)


def add_transport_arg(p) -> None:
    """``--transport`` of the board backend (``python -m host``, ``serve``)."""
    from host.backends import DEFAULT_TRANSPORT, TRANSPORTS

    p.add_argument(
        "--transport",
        choices=sorted(TRANSPORTS),
        default=None,
        help=f"with --backend board: how the driver reaches the accelerator: pynq (a KV260 "
        f"running PYNQ; the default: {DEFAULT_TRANSPORT}) or verilator (the AXI top "
        "simulated in-process)",
    )


def transport_opts(a) -> dict:
    """The device options ``--transport`` gives (ValueError when the backend is not board)."""
    if a.transport is None:
        return {}
    if a.backend != "board":
        raise ValueError(f"--transport: only with --backend board (not {a.backend})")
    return {"transport": a.transport}


def design_point_from_args(a):
    """The ``AccelConfig`` the flags of ``add_design_point_args`` name (ValueError naming a
    bad flag)."""
    import math

    from golden.config import design_point_with

    for name, v in (("--clock-mhz", a.clock_mhz), ("--bandwidth-gbs", a.bandwidth_gbs)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: expected a finite value > 0, got {v}")
    return design_point_with(a.design_point, clock_mhz=a.clock_mhz, dram_gbs=a.bandwidth_gbs)


def backend_kwargs(backend: str, dp, device_opts: dict | None = None) -> dict:
    """Keyword arguments of ``make_runtime`` for ``backend`` at design point ``dp`` (a
    ``golden.config.AccelConfig``) -- the one place ``python -m host`` and ``python -m host
    serve`` get them from: the golden backend implements the design point's datapath; the
    sim backend builds its top, and its DRAM model serves the design point's bandwidth per
    accelerator cycle with its latency; ``device_opts`` (``serve --device-opt``) are passed
    through to the backend's constructor and win over the computed values."""
    kw = {"cfg": dp.datapath} if backend == "golden" else {"dp": dp}
    kw.update(device_opts or {})
    return kw


def make_runtime(model: Model, backend: str = "golden", **kw) -> Runtime:
    """Runtime of ``model`` on a new device of ``backend`` ("golden", "sim", ...).

    ``max_chunk`` and ``timeout_s`` configure the Runtime; every other keyword goes to the
    backend's constructor (e.g. ``cfg``, ``mem_size`` for golden). For the golden
    backend ``cfg`` defaults to ``golden.config.DEFAULT``.
    """
    from host.backends import make_device

    rt_kw = {k: kw.pop(k) for k in _RUNTIME_KW if k in kw}
    device = make_device(backend, **kw)
    return Runtime(model, device, **rt_kw)
