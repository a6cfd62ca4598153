"""host/gguf.py, host/convert.py: GGUF files of BitNet models with the `gguf` package.

The ternary block layouts of gguf-py (TQ1_0, TQ2_0) are checked against scalar decoders
written from ggml's block structs and dequantize_row_tq*_0, and I2_S against bitnet.cpp's
x86 layout. Round trips (checkpoint directory -> GGUF -> directory) give identical logits
for the shipped model and for random transformers BitNet models; the CLI streams the same
text from a GGUF file as from the directory it came from; every bad file is a one-line
error naming the file."""

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from model_util import hf_random

from golden.model import GoldenModel
from golden.modelspec import ATTN_PROJ, MLP_PROJ
from host import checkpoint, cli
from host import gguf as hg
from host.modelfile import open_model
from host.tokenizer import CharTokenizer, train_bpe

Q = gguf.GGMLQuantizationType
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "default"
PROJ = ATTN_PROJ + MLP_PROJ
PROMPT = "ROMEO:\nWhat light through yonder window breaks?"


def assert_same_model(a, b):
    assert a.config == b.config
    wa, wb = a.weights, b.weights
    for x, y in ((wa.embed_tokens, wb.embed_tokens), (wa.norm, wb.norm), (wa.lm_head, wb.lm_head)):
        np.testing.assert_array_equal(x, y)
    for la, lb in zip(wa.layers, wb.layers, strict=True):
        for f in ("input_layernorm", "post_attention_layernorm", "attn_sub_norm", "ffn_sub_norm"):
            np.testing.assert_array_equal(getattr(la, f), getattr(lb, f))
        for p in PROJ:
            np.testing.assert_array_equal(la.proj[p].codes, lb.proj[p].codes, err_msg=p)
            assert la.proj[p].scale == lb.proj[p].scale, p


def assert_same_logits(a, b, ids):
    for mode in ("integer", "reference"):
        np.testing.assert_array_equal(
            GoldenModel(a, mode).forward(ids), GoldenModel(b, mode).forward(ids), err_msg=mode
        )


# ----------------------------------------------------------------------------- layouts
def ref_tq2_0(block: bytes) -> list[float]:
    """ggml block_tq2_0 {uint8 qs[64]; fp16 d}: byte j+m of each 32-byte half holds
    weights j*4 + 32*l + m at bits 2l (l = 0..3), code q - 1."""
    d = float(np.frombuffer(block[64:66], "<f2")[0])
    out = []
    for j in range(0, 64, 32):
        for ll in range(4):
            for m in range(32):
                out.append(((block[j + m] >> (2 * ll)) & 3) - 1)
    return [q * d for q in out]


def ref_tq1_0(block: bytes) -> list[float]:
    """ggml block_tq1_0 {uint8 qs[48]; uint8 qh[4]; fp16 d}: base-3 digits as fixed-point
    fractions, digit n of byte b is ((uint8)(b * 3^n) * 3) >> 8."""
    d = float(np.frombuffer(block[52:54], "<f2")[0])
    pow3 = [1, 3, 9, 27, 81]

    def trit(b, n):
        return (((b * pow3[n]) & 0xFF) * 3 >> 8) - 1

    out = []
    for n in range(5):
        out += [trit(block[m], n) for m in range(32)]
    for n in range(5):
        out += [trit(block[32 + m], n) for m in range(16)]
    for n in range(4):
        out += [trit(block[48 + j], n) for j in range(4)]
    return [q * d for q in out]


@pytest.mark.parametrize("qt, ref", [(Q.TQ2_0, ref_tq2_0), (Q.TQ1_0, ref_tq1_0)])
def test_gguf_ternary_layouts_match_ggml(rng, qt, ref):
    codes = rng.integers(-1, 2, size=(3, 512)).astype(np.float32)
    packed = gguf.quants.quantize(codes, qt)
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    assert packed.shape == (3, 512 // bs * ts)
    flat = packed.reshape(-1, ts)
    decoded = np.array([ref(bytes(b)) for b in flat]).reshape(codes.shape)
    np.testing.assert_array_equal(decoded, codes)  # d = max|x| = 1
    np.testing.assert_array_equal(gguf.quants.dequantize(packed, qt), codes)


def test_i2s_layout(rng):
    codes = rng.integers(-1, 2, size=(4, 256)).astype(np.int8)
    data = hg.pack_i2s(codes, 0.0375)
    assert data.size == codes.size // 4 + 32
    for e in rng.integers(0, codes.size, size=200):  # weight e: block e // 128
        blk, j = divmod(int(e), 128)
        q = (int(data[blk * 32 + j % 32]) >> (6 - 2 * (j // 32))) & 3
        assert q - 1 == codes.reshape(-1)[e]
    assert np.frombuffer(data[256:260].tobytes(), "<f4")[0] == np.float32(0.0375)
    back, scale = hg.unpack_i2s(data, codes.size)
    np.testing.assert_array_equal(back.reshape(codes.shape), codes)
    assert scale == np.float32(0.0375)


# ----------------------------------------------------------------------------- round trips
@pytest.fixture(scope="module")
def shipped():
    src = open_model(SHIPPED)
    return src.load(), src.tokenizer


@pytest.fixture(scope="module")
def shipped_gguf(tmp_path_factory) -> Path:
    """The shipped model converted by the CLI (`python -m host convert`)."""
    out = tmp_path_factory.mktemp("gguf") / "default.gguf"
    r = subprocess.run(
        [sys.executable, "-m", "host", "convert", str(SHIPPED), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "TQ2_0" in r.stdout
    return out


def test_shipped_model_round_trip_identical(shipped, shipped_gguf, tmp_path):
    model, tok = shipped
    g = open_model(shipped_gguf)
    assert g.kind == "gguf" and g.tokenizer.vocab == tok.vocab
    back = g.load()
    ids = tok.encode(PROMPT)
    assert_same_model(model, back)
    assert_same_logits(model, back, ids)
    from host import convert

    assert convert.main([str(shipped_gguf), str(tmp_path / "hf")]) == 0  # and back
    again = open_model(tmp_path / "hf")
    assert again.tokenizer.vocab == tok.vocab
    assert_same_model(model, again.load())
    for qt in ("tq1_0", "i2_s", "f32"):
        hg.write(model, tok, tmp_path / f"m_{qt}.gguf", qtype=qt)
        assert_same_model(model, open_model(tmp_path / f"m_{qt}.gguf").load())
    sizes = {qt: (tmp_path / f"m_{qt}.gguf").stat().st_size for qt in ("tq1_0", "i2_s")}
    assert sizes["tq1_0"] < sizes["i2_s"] < shipped_gguf.stat().st_size * 1.01


def test_gguf_streams_the_same_text_as_the_directory(shipped_gguf, capsys):
    def run(m):
        assert cli.main(["-m", str(m), "-s", "1", "-n", "50", "--backend", "golden"]) == 0
        return capsys.readouterr().out

    hf = run(SHIPPED)
    assert run(shipped_gguf) == hf and len(hf) > 50


@pytest.mark.parametrize(
    "shape, fmt",
    [
        ((256, 512, 1, 4, 2, 70, False), "online"),  # latent weights, GQA
        ((256, 256, 2, 8, 8, 90, True), "bitlinear"),  # packed, weight_scale divides, tied
    ],
)
def test_random_transformers_models_round_trip_identical(tmp_path, shape, fmt):
    vocab = shape[5]
    tok = CharTokenizer([chr(0x20 + i) for i in range(vocab)])
    hf = hf_random(shape, seed=vocab)
    hf.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf")
    src = tmp_path / "hf"
    if fmt == "bitlinear":  # transformers' own offline layout
        checkpoint.save(
            checkpoint.load(src), tmp_path / "bl", linear_class="bitlinear", tokenizer=tok
        )
        src = tmp_path / "bl"
    model = open_model(src).load()
    scales = [tw.scale for lw in model.weights.layers for tw in lw.proj.values()]
    assert any(float(np.float32(s)) != s for s in scales)  # float64 scales survive too
    from host import convert

    assert convert.main([str(src), str(tmp_path / "m.gguf")]) == 0
    assert convert.main([str(tmp_path / "m.gguf"), str(tmp_path / "back")]) == 0
    ids = tok.encode("".join(tok.vocab[i % vocab] for i in range(0, 7 * 40, 7)))
    for path in (tmp_path / "m.gguf", tmp_path / "back"):
        other = open_model(path).load()
        assert_same_model(model, other)
        assert_same_logits(model, other, ids)


def _corpus(n: int) -> str:
    with open(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt", encoding="utf-8") as f:
        return f.read()[:n]


def _sentencepiece_bpe():
    """A LLaMA-2-style tokenizer: BPE over Metaspace words with byte fallback (<0xNN>)."""
    import tokenizers as t
    from tokenizers import decoders, pre_tokenizers, trainers

    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tr = t.Tokenizer(t.models.BPE())
    tr.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tr.train_from_iterator(
        [_corpus(30000)],
        trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False),
    )
    d = json.loads(tr.to_str())
    tk = t.Tokenizer(
        t.models.BPE(
            d["model"]["vocab"],
            [tuple(m) for m in d["model"]["merges"]],
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    tk.add_special_tokens([t.AddedToken(x, special=True, normalized=False) for x in specials[:3]])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    from host.tokenizer import Tokenizer

    return Tokenizer(tk, eos_ids=[2], bos_id=1, add_bos=True)


@pytest.mark.parametrize(
    "kind, builder", [("gpt2", "transformers"), ("gpt2", "own"), ("llama", "transformers")]
)
def test_tokenizer_without_hf_json(tmp_path, shipped, monkeypatch, kind, builder):
    """A GGUF carrying only llama.cpp's tokenizer.ggml.* keys (as llama.cpp's converters
    write them) encodes and decodes as the original tokenizer: byte-level BPE (gpt2) and
    sentencepiece BPE with byte fallback (llama), through transformers' GGUF tokenizer
    builder, or the package's own byte-level rebuild where transformers has none."""
    from dataclasses import replace

    from golden.model import random_model

    tok = train_bpe(_corpus(50000), 300) if kind == "gpt2" else _sentencepiece_bpe()
    model = random_model(
        replace(shipped[0].config, vocab_size=tok.vocab_size, num_hidden_layers=1), seed=1
    )
    hg.write(model, tok, tmp_path / "t.gguf", hf_json=False)
    f = hg.GGUFFile(tmp_path / "t.gguf")
    assert gguf.Keys.Tokenizer.HF_JSON not in f.fields
    assert f.fields[gguf.Keys.Tokenizer.MODEL] == kind
    if builder == "own":
        monkeypatch.setitem(
            sys.modules, "transformers.integrations.gguf.gguf_tokenizer_mapping", None
        )
    back = f.tokenizer()
    text = PROMPT + " -- 'tis naïve, 100 times!\n\n  spaced, Ωμέγα"
    assert back.encode(text) == tok.encode(text)
    assert back.decode(back.encode(text, add_bos=False)) == text
    assert back.eos_ids == tok.eos_ids and back.vocab_size == tok.vocab_size
    assert back.bos_id == tok.bos_id and back.add_bos == tok.add_bos


def test_no_transformers_builder_is_a_clear_error(tmp_path, shipped, monkeypatch):
    from dataclasses import replace

    from golden.model import random_model

    tok = _sentencepiece_bpe()
    model = random_model(
        replace(shipped[0].config, vocab_size=tok.vocab_size, num_hidden_layers=1), seed=1
    )
    hg.write(model, tok, tmp_path / "t.gguf", hf_json=False)
    monkeypatch.setitem(sys.modules, "transformers.integrations.gguf.gguf_tokenizer_mapping", None)
    with pytest.raises(
        ValueError,
        match=r"t.gguf: tokenizer: tokenizer.ggml.model 'llama' "
        r"without tokenizer.huggingface.json needs",
    ):
        open_model(tmp_path / "t.gguf")


# ----------------------------------------------------------------------------- bad files
def rewrite(src: Path, dst: Path, arch=None, fields=None, drop=(), tensors=None) -> Path:
    """Copy a GGUF file with gguf's reader and writer, changing metadata / tensors.
    tensors: name -> (array, raw_dtype or None, raw_shape or None)."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch or r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in drop:
            continue
        vt = f.types[0]
        w.add_key_value(
            k,
            (fields or {}).get(k, f.contents()),
            vt,
            sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None,
        )
    for t in r.tensors:
        if t.name in drop:
            continue
        if tensors and t.name in tensors:
            a, raw, shape = tensors[t.name]
            w.add_tensor(t.name, a, raw_shape=shape, raw_dtype=raw)
        elif t.tensor_type in (Q.F32, Q.F16, Q.F64):
            w.add_tensor(t.name, np.array(t.data))
        else:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> Path:
    """A one-layer random model with the shipped vocabulary, as TQ2_0."""
    from dataclasses import replace

    from golden.model import random_model

    src = open_model(SHIPPED)
    cfg = replace(src.config, num_hidden_layers=1)
    d = tmp_path_factory.mktemp("small")
    checkpoint.save(random_model(cfg, seed=3), d / "hf", tokenizer=src.tokenizer)
    hg.write(open_model(d / "hf").load(), src.tokenizer, d / "small.gguf")
    return d / "small.gguf"


def _bad(case: str, good: Path, d: Path) -> tuple[Path, str]:
    out = d / f"{case.replace(' ', '_')}.gguf"
    q = "blk.0.attn_q.weight"
    if case == "truncated tensor":
        out.write_bytes(good.read_bytes()[:-5000])
        return out, "is truncated"
    if case == "truncated header":
        out.write_bytes(good.read_bytes()[:300])
        return out, "not a readable GGUF file"
    if case == "not gguf":
        out.write_bytes(b"PK\x03\x04 this is a zip file, not a model" * 10)
        return out, "not a readable GGUF file"
    if case == "unknown architecture":
        return rewrite(good, out, arch="llama"), "unknown architecture 'llama'"
    if case == "metadata vs shapes":
        return (
            rewrite(good, out, fields={"bitnet.feed_forward_length": 1024}),
            "has shape (768,), but the metadata (feed_forward_length 1024) implies (1024,)",
        )
    if case == "missing tensor":
        return rewrite(good, out, drop=("blk.0.ffn_up.weight",)), "missing tensor"
    if case == "Q8_0 projection":
        codes = np.sign(np.random.default_rng(0).standard_normal((256, 256))).astype(np.float32)
        return (
            rewrite(good, out, tensors={q: (gguf.quants.quantize(codes, Q.Q8_0), Q.Q8_0, None)}),
            "unsupported tensor type Q8_0 (id 8)",
        )
    if case == "unknown type id":
        return (
            rewrite(good, out, tensors={q: (np.zeros(1000, np.int8), 99, (256, 256))}),
            "unsupported tensor type id 99",
        )
    if case == "I2_S invalid code":
        data = hg.pack_i2s(np.zeros((256, 256), np.int8), 0.5)
        data[7] = 0xFF
        return (
            rewrite(good, out, tensors={q: (data.view(np.int8), hg.I2_S, (256, 256))}),
            "I2_S code 3",
        )
    if case == "block scales differ":
        codes = np.ones((256, 256), np.float32)
        codes[:, :256] *= np.where(np.arange(256) < 128, 1.0, 2.0)[:, None]
        return (
            rewrite(good, out, tensors={q: (gguf.quants.quantize(codes, Q.TQ2_0), Q.TQ2_0, None)}),
            "different scales",
        )
    if case == "tokenizer vocab size":
        tj = json.loads(gguf.GGUFReader(good).fields[gguf.Keys.Tokenizer.HF_JSON].contents())
        tj["model"]["vocab"]["<extra>"] = len(tj["model"]["vocab"])
        return (
            rewrite(good, out, fields={gguf.Keys.Tokenizer.HF_JSON: json.dumps(tj)}),
            "the tokenizer has 66 tokens, but the model has 65",
        )
    if case == "invalid tokenizer json":
        return (
            rewrite(good, out, fields={gguf.Keys.Tokenizer.HF_JSON: '{"model": {"x": 1}}'}),
            "tokenizer.huggingface.json: not a valid Hugging Face tokenizer.json",
        )
    raise AssertionError(case)


BAD = [
    "truncated tensor",
    "truncated header",
    "not gguf",
    "unknown architecture",
    "metadata vs shapes",
    "missing tensor",
    "Q8_0 projection",
    "unknown type id",
    "I2_S invalid code",
    "block scales differ",
    "tokenizer vocab size",
    "invalid tokenizer json",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_gguf_is_one_line_error_naming_the_file(small_gguf, tmp_path, capsys, case):
    path, what = _bad(case, small_gguf, tmp_path)
    with pytest.raises(ValueError, match=str(path)) as e:
        open_model(path).load()
    assert what in str(e.value)
    assert cli.main(["-m", str(path), "-n", "2", "--backend", "golden"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: -m/--model: {path}"), err
    assert what in err[0]


def test_float_projections(small_gguf, tmp_path, rng):
    """llama.cpp's converter writes ternary * scale as F16: codes and that scale come back;
    latent (non-ternary) float weights are ternarized with absmean, as transformers does."""
    from golden.quant import weight_quant

    q, k = "blk.0.attn_q.weight", "blk.0.attn_k.weight"
    codes = rng.integers(-1, 2, size=(256, 256)).astype(np.int8)
    latent = rng.standard_normal((128, 256)).astype(np.float32) * 0.02
    path = rewrite(
        small_gguf,
        tmp_path / "f.gguf",
        drop=("blk.0.attn_q.scale", "blk.0.attn_k.scale"),
        tensors={q: ((codes * 0.375).astype(np.float16), None, None), k: (latent, None, None)},
    )
    layer = open_model(path).load().weights.layers[0]
    np.testing.assert_array_equal(layer.proj["q_proj"].codes, codes)
    assert layer.proj["q_proj"].scale == 0.375
    want, inv = weight_quant(latent)
    np.testing.assert_array_equal(layer.proj["k_proj"].codes, want)
    assert layer.proj["k_proj"].scale == 1.0 / float(inv)


def test_good_file_loads_and_a_rewrite_of_it_too(small_gguf, tmp_path):
    """The rewrite helper itself keeps a file valid (so the cases above fail for their
    one change)."""
    a = open_model(small_gguf).load()
    b = open_model(rewrite(small_gguf, tmp_path / "copy.gguf")).load()
    assert_same_model(a, b)


def test_writer_refuses_what_the_format_cannot_hold(shipped, tmp_path):
    from dataclasses import replace

    from golden.model import random_model

    model, tok = shipped
    odd = random_model(
        replace(
            model.config,
            hidden_size=96,
            num_attention_heads=3,
            num_key_value_heads=3,
            head_dim=32,
            intermediate_size=96,
            num_hidden_layers=1,
        ),
        seed=0,
    )
    with pytest.raises(ValueError, match="TQ2_0 needs rows of a multiple of 256"):
        hg.write(odd, tok, tmp_path / "x.gguf")
    hg.write(odd, tok, tmp_path / "x.gguf", qtype="f32")  # f32 holds any shape
    assert open_model(tmp_path / "x.gguf").config == odd.config
    with pytest.raises(ValueError, match="tokenizer: 66 tokens, the model 65"):
        hg.write(model, CharTokenizer(tok.vocab + ["~"]), tmp_path / "y.gguf")
    from host import convert

    assert convert.main([str(SHIPPED), str(tmp_path)]) == 2  # a directory as DST
