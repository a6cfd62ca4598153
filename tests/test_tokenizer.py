"""host/tokenizer.py: Hugging Face tokenizer.json files through `tokenizers` (the shipped
character tokenizer, BPE, byte-level BPE, WordPiece, Unigram), special tokens from the
config files, the legacy char format, streaming of byte-level BPE, EOS / --ignore-eos in
the CLI, and one-line errors for bad tokenizer files."""

import json
import shutil
from pathlib import Path

import pytest
import tokenizers
from model_util import MICRO, save_char_model
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from host import cli
from host.data import DEFAULT_CORPUS, split
from host.generate import Sampler, generate
from host.modelfile import open_model
from host.tokenizer import CharTokenizer, StreamDecoder, Tokenizer, load_tokenizer, train_bpe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "default"
SAMPLE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, "
    "speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
)


def corpus_text() -> str:
    with open(DEFAULT_CORPUS, encoding="utf-8") as f:
        return f.read()


# ----------------------------------------------------------------------------- shipped
def test_shipped_tokenizer_is_hf_format_with_the_char_table_ids():
    """tokenizers and transformers load the shipped file and give the ids of the sorted
    character table of the corpus (the ids the shipped model was trained on)."""
    from transformers import AutoTokenizer

    text = corpus_text()
    table = {c: i for i, c in enumerate(sorted(set(text)))}
    excerpt = text[:5000] + split(text)[1][:5000]
    want = [table[c] for c in excerpt]
    hf = tokenizers.Tokenizer.from_file(str(SHIPPED / "tokenizer.json"))
    assert hf.encode(excerpt).ids == want
    assert AutoTokenizer.from_pretrained(SHIPPED)(excerpt)["input_ids"] == want
    tok = load_tokenizer(SHIPPED)
    assert tok.encode(excerpt) == want
    assert tok.decode(want) == excerpt
    assert tok.vocab == sorted(table) and tok.vocab_size == len(table)
    assert tok.eos_ids == () and tok.bos_id is None  # generation never stops early


def test_legacy_char_format_loads_as_the_same_tokenizer(tmp_path):
    vocab = sorted(set(SAMPLE))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": "char", "vocab": vocab}))
    old = load_tokenizer(tmp_path)
    assert old.vocab == vocab
    assert old.encode(SAMPLE) == [vocab.index(c) for c in SAMPLE]
    old.save(tmp_path / "new")  # rewritten in the HF format
    data = json.loads((tmp_path / "new" / "tokenizer.json").read_text())
    assert data["model"]["type"] == "WordLevel"
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "new" / "tokenizer.json"))
    assert hf.encode(SAMPLE).ids == old.encode(SAMPLE)
    assert CharTokenizer.from_text(SAMPLE).encode(SAMPLE) == old.encode(SAMPLE)


def test_char_tokenizer_refuses_unknown_characters():
    tok = CharTokenizer.from_text(SAMPLE)
    with pytest.raises(ValueError, match=r"'Z' at position 3"):
        tok.encode("FirZt")
    with pytest.raises(ValueError, match=r"'\\u00e9' at position 3|'é' at position 3"):
        tok.encode("caf\u00e9")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([tok.vocab_size])


# ----------------------------------------------------------------------------- other types
def _train(model, trainer, pre=None, decoder=None, normalizer=None) -> tokenizers.Tokenizer:
    tk = tokenizers.Tokenizer(model)
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.pre_tokenizer = pre or pre_tokenizers.Whitespace()
    if decoder is not None:
        tk.decoder = decoder
    tk.train_from_iterator([corpus_text()[:20000]], trainer)
    return tk


KINDS = {
    "bpe": lambda: _train(
        models.BPE(unk_token="[UNK]"),
        trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "</s>"], show_progress=False),
    ),
    "byte-level bpe": lambda: train_bpe(corpus_text()[:20000], 300).tk,
    "wordpiece": lambda: _train(
        models.WordPiece(unk_token="[UNK]"),
        trainers.WordPieceTrainer(
            vocab_size=300, show_progress=False, special_tokens=["[UNK]", "</s>"]
        ),
        decoder=decoders.WordPiece(),
    ),
    "unigram": lambda: _train(
        models.Unigram(),
        trainers.UnigramTrainer(
            vocab_size=300, unk_token="<unk>", special_tokens=["<unk>", "</s>"], show_progress=False
        ),
        pre=pre_tokenizers.Metaspace(),
        decoder=decoders.Metaspace(),
    ),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_any_hf_tokenizer_json_loads(tmp_path, kind):
    tk = KINDS[kind]()
    (tmp_path / "tokenizer.json").write_text(tk.to_str())
    eos_name = "<|endoftext|>" if kind == "byte-level bpe" else "</s>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_name}))
    tok = load_tokenizer(tmp_path)
    text = SAMPLE.replace("\n", " ")
    assert tok.encode(text) == tk.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == tk.decode(tk.encode(text).ids)
    assert tok.eos_ids == (tk.token_to_id(eos_name),)
    assert tok.vocab_size == tk.get_vocab_size()
    if kind == "byte-level bpe":
        assert tok.decode(tok.encode(SAMPLE)) == SAMPLE  # lossless


def test_special_tokens_from_the_config_files(tmp_path):
    tk = KINDS["bpe"]()
    unk, eos = tk.token_to_id("[UNK]"), tk.token_to_id("</s>")
    tk.post_processor = processors.TemplateProcessing(
        single="[UNK] $A", special_tokens=[("[UNK]", unk)]
    )  # a post-processor that adds "BOS"
    (tmp_path / "tokenizer.json").write_text(tk.to_str())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "</s>"}, "bos_token": "[UNK]"})
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 7]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_ids == tuple(sorted({eos, 7, 9}))  # the union of the three files
    assert tok.bos_id == unk and tok.add_bos  # detected from the post-processor
    plain = tk.encode("speak", add_special_tokens=False).ids
    assert tok.encode("speak") == [unk] + plain
    assert tok.encode("speak", add_bos=False) == plain
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "</s>", "bos_token": "[UNK]", "add_bos_token": False})
    )
    assert load_tokenizer(tmp_path).encode("speak") == plain
    # the special tokens survive save / load
    load_tokenizer(tmp_path).save(tmp_path / "copy")
    again = load_tokenizer(tmp_path / "copy")
    assert again.eos_ids == tok.eos_ids and again.bos_id == unk


def test_bpe_without_unknown_token_reports_dropped_characters(tmp_path):
    tk = _train(models.BPE(), trainers.BpeTrainer(vocab_size=200, show_progress=False))
    tok = Tokenizer(tk)
    assert tok.decode(tok.encode("hear me")).replace(" ", "") == "hearme"
    with pytest.raises(ValueError, match=r"'\^' at position 5"):
        tok.encode("hear ^me")  # no '^' in the corpus: BPE would drop it silently


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "malformed tokenizer JSON"),
        (json.dumps({"type": "bpe", "vocab": ["a"]}), "neither a Hugging Face tokenizer.json"),
        (json.dumps([1, 2, 3]), "neither a Hugging Face tokenizer.json"),
        (json.dumps({"model": {"type": "Frobnicator"}}), "not a valid Hugging Face tokenizer.json"),
        (json.dumps({"type": "char", "vocab": ["a", "bc"]}), "single character"),
        (json.dumps({"type": "char", "vocab": ["a", "a"]}), "duplicate"),
    ],
)
def test_invalid_tokenizer_json_names_the_file(tmp_path, content, match):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(ValueError, match=match) as e:
        load_tokenizer(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(e.value)


def test_special_token_errors_name_their_file(tmp_path):
    CharTokenizer.from_text(SAMPLE).save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '</s>' is not in"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 999}))
    with pytest.raises(ValueError, match="eos token id 999 outside"):
        load_tokenizer(tmp_path)
    (tmp_path / "generation_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="generation_config.json: unreadable or malformed"):
        load_tokenizer(tmp_path)


# ----------------------------------------------------------------------------- streaming
def test_stream_prints_a_split_multibyte_character_once_whole():
    tok = train_bpe(corpus_text()[:20000], 300)  # ASCII corpus: no merges of é, 😀
    text = "naïve café 😀 — 日本"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # multi-byte chars are split
    dec = StreamDecoder(tok)
    pieces = [dec.step(t) for t in ids]
    assert "".join(pieces) + dec.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    # 😀 is 4 UTF-8 bytes: none of its byte tokens but the last prints anything
    i = next(k for k, p in enumerate(pieces) if "😀" in p)
    assert pieces[i].count("😀") == 1
    byte_tokens = [t for t in ids if tok.decode([t]) == "\ufffd"]
    assert len(byte_tokens) >= 3
    # any prefix of the stream prints only whole characters
    for k in range(len(ids)):
        d = StreamDecoder(tok)
        shown = "".join(d.step(t) for t in ids[:k])
        assert text.startswith(shown)


def test_stream_of_random_tokens_equals_the_whole_decode(rng):
    tok = train_bpe(corpus_text()[:20000], 300)
    ids = rng.integers(0, tok.vocab_size, size=300).tolist()
    dec = StreamDecoder(tok, skip_special_tokens=False)
    assert "".join(dec.step(t) for t in ids) + dec.flush() == tok.decode(ids)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def char_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("eos") / "model"
    save_char_model(d, SAMPLE, 64, seed=11, body=MICRO)
    return d


def _greedy_ids(model_dir: Path, prompt: str, n: int, ban=()) -> list[int]:
    from golden.model import GoldenModel

    src = open_model(model_dir)
    gm = GoldenModel(src.load(), "integer")
    ids, _ = generate(gm, src.tokenizer.encode(prompt), n, Sampler(temp=0.0), ban_ids=ban)
    return ids


def test_generation_stops_at_eos_and_ignore_eos_continues(char_model, tmp_path, capsys):
    prompt, n = "All:", 24
    free = _greedy_ids(char_model, prompt, n)
    # make the token greedy decoding emits at some step k > 0 (first there) the EOS
    k = next(k for k in range(1, n) if free[k] not in free[:k])
    eos = free[k]
    d = tmp_path / "with_eos"
    shutil.copytree(char_model, d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    tok = load_tokenizer(d)
    assert tok.eos_ids == (eos,)

    args = ["-m", str(d), "-p", prompt, "-n", str(n), "--temp", "0", "--backend", "golden"]
    assert cli.main(args) == 0
    cap = capsys.readouterr()
    assert cap.out == prompt + tok.decode(free[:k]) + "\n"  # EOS itself not printed
    assert f"generated tokens: {k + 1}" in cap.err
    assert f"stopped at end of sequence (token {eos}" in cap.err

    assert cli.main(args + ["--ignore-eos"]) == 0
    cap = capsys.readouterr()
    banned = _greedy_ids(char_model, prompt, n, ban=[eos])
    assert eos not in banned and len(banned) == n
    assert cap.out == prompt + tok.decode(banned) + "\n"
    assert f"generated tokens: {n}" in cap.err and "stopped at" not in cap.err


@pytest.mark.parametrize("case", ["malformed", "neither format", "vocab size"])
def test_bad_tokenizer_cli_exit_2_with_one_line(char_model, tmp_path, capsys, case):
    d = tmp_path / "m"
    shutil.copytree(char_model, d)
    tj = d / "tokenizer.json"
    if case == "malformed":
        tj.write_text('{"model": ')
    elif case == "neither format":
        tj.write_text(json.dumps({"vocab": {"a": 0}}))
    else:
        CharTokenizer.from_text(SAMPLE + "Z").save(d)
    assert cli.main(["-m", str(d), "-n", "2", "--backend", "golden"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: -m/--model: ") and str(tj) in err[0]
    if case == "vocab size":
        n = len(set(SAMPLE))
        assert f"{n + 1} tokens" in err[0] and f"has {n}" in err[0]
