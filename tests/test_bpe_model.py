"""A BPE model end to end: a byte-level BPE trained with `tokenizers` on the training split
of the corpus, a tiny model with that vocabulary trained for a few steps by host.train, run
through the CLI on the golden and sim backends, and the held-out evaluation in bits per
character (comparable with the character model's)."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
from model_util import MICRO, tiny_train

from golden.model import GoldenModel
from host import cli
from host import data as hdata
from host import eval as hev
from host.generate import Sampler, generate
from host.modelfile import open_model
from host.tokenizer import load_tokenizer, train_bpe
from host.train import TrainConfig, load_corpus, train

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 512
TINY = tiny_train(
    **MICRO, steps=15, warmup_steps=3, eval_interval=15, eval_windows=4, corpus_limit=40000
)


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bpe")
    with open(hdata.DEFAULT_CORPUS, encoding="utf-8") as f:
        train_text, held = hdata.split(f.read())
    tok = train_bpe(train_text, VOCAB)
    assert tok.vocab_size == VOCAB
    tok.save(d / "tokenizer")
    train(
        TrainConfig(**TINY, tokenizer=str(d / "tokenizer")),
        str(d / "model"),
        str(d / "state"),
        progress=False,
    )
    return d / "model"


def test_training_uses_the_bpe_on_each_split(bpe_model):
    tok = load_tokenizer(bpe_model)
    assert tok.vocab_size == VOCAB and tok.eos_tokens == ["<|endoftext|>"]
    with open(hdata.DEFAULT_CORPUS, encoding="utf-8") as f:
        text = f.read()[: TINY["corpus_limit"]]
    _, train_ids, val_ids = load_corpus(hdata.DEFAULT_CORPUS, TINY["corpus_limit"], str(bpe_model))
    a, b = hdata.split(text)
    assert tok.decode(train_ids.tolist()) == a and tok.decode(val_ids.tolist()) == b
    assert len(train_ids) < 0.7 * len(a)  # BPE: fewer tokens than characters


def test_bpe_model_streams_on_golden_and_sim(bpe_model, capsys):
    """The CLI prints prompt + the decode of the sampled tokens, the same on both
    backends (48 tokens: past the 32-token context, so the window slides)."""
    prompt, n, seed = "ROMEO:\nIs the day so young?", 48, 5
    src = open_model(bpe_model)
    tok = src.tokenizer
    ids, _ = generate(
        GoldenModel(src.load(), "integer"),
        tok.encode(prompt),
        n,
        Sampler(temp=0.8, top_k=40, top_p=0.95, seed=seed),
        eos_ids=tok.eos_ids,
    )
    want = prompt + tok.decode([t for t in ids if t not in tok.eos_ids]) + "\n"
    outs = {}
    for backend in ("golden", "sim"):
        assert (
            cli.main(
                [
                    "-m",
                    str(bpe_model),
                    "-p",
                    prompt,
                    "-n",
                    str(n),
                    "-s",
                    str(seed),
                    "--backend",
                    backend,
                ]
            )
            == 0
        )
        cap = capsys.readouterr()
        outs[backend] = cap.out
        assert f"generated tokens: {len(ids)}" in cap.err, cap.err
    assert outs["golden"] == want
    assert outs["sim"] == want


def _eval_rows(argv, capsys) -> tuple[dict, str]:
    assert hev.main(argv) == 0
    out = capsys.readouterr().out
    rows = {
        ln.split()[0]: [float(v) for v in ln.split()[1:]]
        for ln in out.splitlines()
        if ln.split() and ln.split()[0] in hev.MODES
    }
    return rows, out


def test_eval_reports_bits_per_character_for_any_tokenizer(bpe_model, capsys):
    chars = 3000
    rows, out = _eval_rows(
        ["-m", str(bpe_model), "--chars", str(chars), "--modes", "reference"], capsys
    )
    nats, bits, ppl, per_token = rows["reference"][:4]
    # independently: total nats over the predicted tokens / characters those tokens cover
    text = hdata.heldout_text(hdata.DEFAULT_CORPUS, chars)
    tok = load_tokenizer(bpe_model)
    enc = tok.tk.encode(text, add_special_tokens=False)
    ids = np.array(enc.ids)
    gm = GoldenModel(open_model(bpe_model).load(), "reference")
    ctx = gm.config.max_position_embeddings
    total, count = 0.0, 0
    for s in range(0, len(ids) - 1, ctx):
        x, y = ids[s : s + ctx], ids[s + 1 : s + ctx + 1]
        z = gm.forward(x[: len(y)]).astype(np.float64)
        z -= z.max(-1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        total -= lp[np.arange(len(y)), y].sum()
        count += len(y)
    covered = chars - enc.offsets[0][1]
    assert count == len(ids) - 1 and f"{count} predictions of {covered} characters" in out
    assert nats == pytest.approx(total / covered, abs=1e-4)
    assert per_token == pytest.approx(total / count, abs=1e-4)
    assert bits == pytest.approx(nats / math.log(2), abs=2e-4)
    assert ppl == pytest.approx(math.exp(nats), rel=1e-3)
    assert covered / count > 1.5  # a BPE token covers several characters

    # the character model on the same text: per character = per token
    rows, out = _eval_rows(
        ["-m", str(ROOT / "models" / "default"), "--chars", "1000", "--modes", "reference"], capsys
    )
    nats, bits, _, per_token = rows["reference"][:4]
    assert nats == pytest.approx(per_token, abs=1e-4)
    assert re.search(r"999 predictions of 999 characters", out)
