"""Token server (host/server.py), remote CLI (host/remote.py) and load test (host/loadtest.py)
on loopback: a real uvicorn server on an ephemeral port, the golden backend, a small
random model; the official ``openai`` client, raw HTTP for bad requests, a client that
disconnects mid-stream, a real device timeout (503, reset, recovery), concurrent clients,
the remote CLI against the local CLI, and start-up errors of ``python -m host serve``.
A byte-level BPE model served: the CLI's text (a two-token character included), the
end-of-sequence stop and ``ignore_eos``; a GGUF file served by ``serve -m``."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from model_util import TINY, VOCAB_TEXT, char_model_fixture

from golden.config import design_point
from golden.model import GoldenModel, random_model
from golden.modelspec import ModelConfig
from host import cli
from host import gguf as hg
from host.data import DEFAULT_CORPUS
from host.generate import Sampler, generate
from host.modelfile import open_model
from host.runtime import backend_kwargs, make_runtime
from host.server import (
    DEFAULT_TEMP,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    Engine,
    ServerThread,
    bind_socket,
    create_app,
)
from host.tokenizer import CharTokenizer, Tokenizer, train_bpe

ROOT = Path(__file__).resolve().parents[1]
CTX = 256


tiny_model = char_model_fixture(CTX, seed=7, tag="srv", name="tiny")


def serve_engine(model_dir, backend="golden"):
    """An Engine on ``model_dir`` opened as ``python -m host serve -m`` opens it."""
    src = open_model(model_dir)
    rt = make_runtime(src.load(), backend, **backend_kwargs(backend, design_point("kv260")))
    return Engine(rt, src.tokenizer, model_id=src.name, backend=backend)


@pytest.fixture(scope="module")
def server(tiny_model):
    engine = serve_engine(tiny_model)
    model_id = engine.model_id
    with ServerThread(create_app(engine), bind_socket("127.0.0.1", 0)) as s:
        s.engine, s.model_id = engine, model_id
        yield s
    engine.close()


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The text a request gives alone: host.generate on a separate golden device."""
    src = open_model(tiny_model)
    tok, rt = src.tokenizer, make_runtime(src.load(), "golden")
    memo = {}

    def ref(prompt, n, seed, temp=DEFAULT_TEMP, top_k=DEFAULT_TOP_K, top_p=DEFAULT_TOP_P):
        key = (prompt, n, seed, temp, top_k, top_p)
        if key not in memo:
            ids, _ = generate(rt, tok.encode(prompt), n, Sampler(temp, top_k, top_p, seed))
            memo[key] = tok.decode(ids)
        return memo[key]

    return ref


def metrics(url) -> dict:
    out = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


OK = 'ternary_requests_total{outcome="ok"}'
CANCELLED = 'ternary_requests_total{outcome="cancelled"}'
TIMEOUTS = 'ternary_requests_total{outcome="device_timeout"}'
BAD = 'ternary_requests_total{outcome="bad_request"}'


def sse_events(lines):
    """(chunks, done) of a server-sent event stream."""
    chunks = []
    for line in lines:
        if line.startswith("data: "):
            if line == "data: [DONE]":
                return chunks, True
            chunks.append(json.loads(line[6:]))
    return chunks, False


def stream_text(client, url, body):
    with client.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        chunks, done = sse_events(r.iter_lines())
    assert done
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"]), chunks


# ---------------------------------------------------------------------------- happy paths
def test_openai_client_streaming_and_not(server, reference):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [server.model_id]
    want = reference("To be", 24, 3, 0.9, 20, 0.9)
    request = dict(model=server.model_id, prompt="To be", max_tokens=24, seed=3)
    request.update(temperature=0.9, top_p=0.9, extra_body={"top_k": 20})
    r = client.completions.create(**request)
    assert r.choices[0].text == want
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 24)
    stream = client.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == want
    assert len([c for c in chunks if c.choices and c.choices[0].text]) == 24  # token by token
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24 and not chunks[-1].choices
    assert len({c.id for c in chunks}) == 1
    # greedy: the seed does not matter; another seed samples another text
    g = [
        client.completions.create(
            model=server.model_id, prompt="ab", max_tokens=12, temperature=0, seed=s
        )
        .choices[0]
        .text
        for s in (1, 2)
    ]
    assert g[0] == g[1] == reference("ab", 12, 1, 0.0)
    assert reference("To be", 24, 4, 0.9, 20, 0.9) != want
    with pytest.raises(openai.BadRequestError, match="not in the vocabulary"):
        client.completions.create(model=server.model_id, prompt="caf\u00e9", max_tokens=3)


def test_health_models_metrics(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["backend"] == "golden" and h["model"] == server.model_id
    m = httpx.get(server.url + "/v1/models").json()
    assert m["data"][0]["max_model_len"] == CTX
    before = metrics(server.url)
    r = httpx.post(
        server.url + "/v1/completions",
        json={"prompt": "ab", "max_tokens": 7, "seed": 1},
        timeout=60,
    )
    assert r.status_code == 200
    t = r.json()["timings"]
    assert t["generated_tokens"] == 7 and t["prompt_tokens"] == 2 and t["seed"] == 1
    assert t["accelerator"] is None  # golden counts no cycles
    after = metrics(server.url)
    assert after[OK] == before[OK] + 1
    assert after["ternary_generated_tokens_total"] == before["ternary_generated_tokens_total"] + 7
    assert after["ternary_prompt_tokens_total"] == before["ternary_prompt_tokens_total"] + 2
    assert after["ternary_queue_depth"] == 0
    assert (
        after["ternary_time_to_first_token_seconds_count"]
        == before["ternary_time_to_first_token_seconds_count"] + 1
    )
    assert after["ternary_decode_tokens_per_second"] > 0
    assert after['ternary_time_to_first_token_seconds{quantile="0.5"}'] > 0


# ---------------------------------------------------------------------------- bad input
BAD_BODIES = {
    "malformed JSON": b'{"prompt": "ab", "max_tokens": ',
    "not an object": b'["ab"]',
    "nested too deeply": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'{"prompt": "\xff"}',
    "unknown field": b'{"prompt": "ab", "stop": ["\\n"]}',
    "missing prompt": b'{"max_tokens": 3}',
    "empty prompt": b'{"prompt": ""}',
    "prompt not a string": b'{"prompt": [1, 2, 3]}',
    "char outside vocabulary": '{"prompt": "caf\u00e9"}'.encode(),
    "prompt longer than the context": json.dumps({"prompt": "a" * (CTX + 1)}).encode(),
    "negative max_tokens": b'{"prompt": "ab", "max_tokens": -1}',
    "max_tokens above the context": json.dumps({"prompt": "ab", "max_tokens": CTX + 1}).encode(),
    "max_tokens a string": b'{"prompt": "ab", "max_tokens": "5"}',
    "max_tokens a float": b'{"prompt": "ab", "max_tokens": 5.0}',
    "temperature NaN": b'{"prompt": "ab", "temperature": NaN}',
    "temperature Infinity": b'{"prompt": "ab", "temperature": Infinity}',
    "negative temperature": b'{"prompt": "ab", "temperature": -0.1}',
    "top_p zero": b'{"prompt": "ab", "top_p": 0}',
    "top_p above one": b'{"prompt": "ab", "top_p": 1.5}',
    "negative top_k": b'{"prompt": "ab", "top_k": -1}',
    "fractional top_k": b'{"prompt": "ab", "top_k": 1.5}',
    "negative seed": b'{"prompt": "ab", "seed": -1}',
    "stream not a bool": b'{"prompt": "ab", "stream": "yes"}',
    "stream_options without stream": b'{"prompt": "ab", "stream_options": {"include_usage": true}}',
    "n of 2": b'{"prompt": "ab", "n": 2}',
    "another model": b'{"prompt": "ab", "model": "gpt-4"}',
    "ignore_eos not a bool": b'{"prompt": "ab", "ignore_eos": 1}',
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_requests_are_400_with_one_line(server, case):
    r = httpx.post(
        server.url + "/v1/completions",
        content=BAD_BODIES[case],
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400, (case, r.text)
    err = r.json()["error"]
    msg = err["message"]
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    assert err["type"] == "invalid_request_error"


def test_server_keeps_serving_after_bad_requests(server, reference):
    before = metrics(server.url)
    for body in (b"{", b'{"prompt": "ab", "temperature": NaN}', b'{"prompt": "ab", "x": 1}'):
        assert httpx.post(server.url + "/v1/completions", content=body).status_code == 400
    r = httpx.post(
        server.url + "/v1/completions",
        json={"prompt": "ab", "max_tokens": 5, "seed": 2},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference("ab", 5, 2)
    after = metrics(server.url)
    assert after[BAD] == before[BAD] + 3 and after[OK] == before[OK] + 1
    assert httpx.get(server.url + "/v1/nothing").status_code == 404


# ---------------------------------------------------------------------------- faults
# a streamed request that runs for the whole context unless its client leaves
LONG_STREAM = {"prompt": "To be", "max_tokens": CTX, "seed": 5, "stream": True}


def test_disconnect_mid_stream_frees_the_accelerator(server, reference):
    before = metrics(server.url)
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", server.url + "/v1/completions", json=LONG_STREAM) as r:
            assert r.status_code == 200
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: {")
                if got == 3:
                    break
    # leaving the block closed the connection; the server stops at the next token
    m = _wait_metrics(
        server.url,
        lambda m: m[CANCELLED] > before[CANCELLED] and m["ternary_busy"] == 0,
        "the server kept generating for a closed stream",
    )
    generated = m["ternary_generated_tokens_total"] - before["ternary_generated_tokens_total"]
    assert 3 <= generated < CTX // 2, generated  # a full run would be CTX tokens
    assert m[OK] == before[OK]
    r = httpx.post(
        server.url + "/v1/completions",
        json={"prompt": "ab", "max_tokens": 6, "seed": 8},
        timeout=60,
    )
    assert r.json()["choices"][0]["text"] == reference("ab", 6, 8)


def _wait_metrics(url, ok, what, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url)
        if ok(m):
            return m
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_disconnect_while_queued_leaves_the_queue(server):
    """A request whose client gives up while another runs never reaches the device."""
    before = metrics(server.url)
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", server.url + "/v1/completions", json=LONG_STREAM) as running:
            lines = running.iter_lines()  # kept open: closing it closes the stream
            while not next(lines).startswith("data: {"):
                pass
            with pytest.raises(httpx.ReadTimeout):  # headers come with the first token
                httpx.post(
                    server.url + "/v1/completions",
                    json={"prompt": "abc", "max_tokens": 5, "seed": 1},
                    timeout=httpx.Timeout(60, read=0.5),
                )
            m = _wait_metrics(
                server.url,
                lambda m: m[CANCELLED] == before[CANCELLED] + 1,
                "the queued request was not cancelled",
            )
            assert m["ternary_queue_depth"] == 0 and m["ternary_busy"] == 1  # the first runs on
    m = _wait_metrics(
        server.url,
        lambda m: m[CANCELLED] == before[CANCELLED] + 2 and m["ternary_busy"] == 0,
        "the running request was not cancelled",
    )
    # only the running request's prompt reached the device
    assert m["ternary_prompt_tokens_total"] == before["ternary_prompt_tokens_total"] + 5
    assert m[OK] == before[OK]


def test_device_timeout_is_503_then_the_next_request_succeeds(server, reference):
    engine = server.engine
    saved = engine.device_timeout
    before = metrics(server.url)
    body = {"prompt": "To be", "max_tokens": 8, "seed": 4}
    engine.device_timeout = 1e-9  # real golden device, real Device.wait timeout
    try:
        r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 503, r.text
        msg = r.json()["error"]["message"]
        assert "device timeout" in msg and "reset" in msg and "\n" not in msg
        r = httpx.post(server.url + "/v1/completions", json={**body, "stream": True}, timeout=60)
        assert r.status_code == 503 and "device timeout" in r.json()["error"]["message"]
    finally:
        engine.device_timeout = saved
    assert metrics(server.url)[TIMEOUTS] == before[TIMEOUTS] + 2
    with httpx.Client(timeout=60) as c:
        text, _ = stream_text(c, server.url, body)
    assert text == reference("To be", 8, 4)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_concurrent_clients_each_get_their_own_text(server, reference):
    cases = [
        ("ROMEO:", 20, 11),
        ("To be", 12, 12),
        ("ab", 25, 13),
        ("KING:", 16, 14),
        ("ROMEO:", 20, 15),
        ("O, ", 22, 16),
    ]
    server.engine.queue_depth_max = 0
    barrier = threading.Barrier(len(cases))
    results, ids = {}, {}

    def client(i, prompt, n, seed):
        body = {"prompt": prompt, "max_tokens": n, "seed": seed}
        with httpx.Client(timeout=120) as c:
            barrier.wait()
            if i % 2:
                r = c.post(server.url + "/v1/completions", json=body)
                results[i], ids[i] = r.json()["choices"][0]["text"], {r.json()["id"]}
            else:
                results[i], chunks = stream_text(c, server.url, body)
                ids[i] = {ch["id"] for ch in chunks}

    threads = [threading.Thread(target=client, args=(i, *c)) for i, c in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, (prompt, n, seed) in enumerate(cases):
        assert results.get(i) == reference(prompt, n, seed), (i, results.get(i))
        assert len(ids[i]) == 1
    assert len(set().union(*ids.values())) == len(cases)
    assert server.engine.queue_depth_max >= 2  # requests really waited side by side
    assert results[0] != results[4]  # same prompt, other seed


# ---------------------------------------------------------------------------- remote CLI
SAMPLING = [
    "-p",
    "To be",
    "-n",
    "40",
    "-s",
    "9",
    "--temp",
    "0.9",
    "--top-k",
    "20",
    "--top-p",
    "0.9",
]


def _shape(line: str) -> str:
    return re.sub(r"\d+(\.\d+)?|nan", "N", line)


def test_remote_cli_equals_local_cli(server, tiny_model, capsys):
    assert cli.main(["-m", str(tiny_model), "--backend", "golden", *SAMPLING]) == 0
    local = capsys.readouterr()
    assert cli.main(["--remote", server.url + "/v1", *SAMPLING]) == 0
    remote = capsys.readouterr()
    assert remote.out == local.out and remote.out.startswith("To be")
    lerr, rerr = local.err.strip().splitlines(), remote.err.strip().splitlines()
    assert len(rerr) == len(lerr) + 1  # + the remote line
    assert _shape(rerr[0]) == _shape(lerr[-1])  # the same summary line
    assert "generated tokens: 40" in rerr[0] and "seed 9" in rerr[0]
    assert rerr[-1].startswith(f"remote: {server.url}, waited for the accelerator ")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


REMOTE_BAD = {
    "unreachable server": (["--remote", "http://127.0.0.1:{closed}"], "cannot reach the server"),
    "not a URL": (["--remote", "ftp://example"], "expected http://HOST:PORT"),
    "server-side flag": (["--remote", "{url}", "--backend", "golden"], "--backend: not used"),
    "model flag": (["--remote", "{url}", "-m", "/some/model"], "-m/--model: not used"),
    "refused by the server": (["--remote", "{url}", "-p", "caf\u00e9"], "HTTP 400"),
    "n above the context": (["--remote", "{url}", "-n", str(CTX + 1)], "max_tokens"),
    "local check": (["--remote", "{url}", "--temp", "-1"], "--temp"),
}


@pytest.mark.parametrize("case", sorted(REMOTE_BAD))
def test_remote_cli_errors_are_one_line(server, capsys, case):
    args, want = REMOTE_BAD[case]
    args = [x.format(url=server.url, closed=_closed_port()) for x in args]
    assert cli.main(args) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], cap.err
    assert cap.out == ""


# ---------------------------------------------------------------------------- serve as a process
def _env():
    return dict(os.environ, PYTHONIOENCODING="utf-8")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    """tiny_model as a GGUF file (f32: its rows are not multiples of TQ2_0's 256)."""
    src = open_model(tiny_model)
    path = tmp_path_factory.mktemp("gguf") / f"{tiny_model.name}.gguf"
    hg.write(src.load(), src.tokenizer, path, qtype="f32")
    return path


def _start_serve(model):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "host",
            "serve",
            "--backend",
            "golden",
            "-m",
            str(model),
            "--port",
            "0",
        ],
        cwd=ROOT,
        env=_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stderr:
        if "listening on " in line:
            return proc, line.rsplit("listening on ", 1)[1].strip()
    proc.kill()
    pytest.fail(f"the server did not start: {proc.communicate()[1]}")


def _stop(proc, sig) -> str:
    proc.send_signal(sig)
    rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, rest
    assert "server: stopped" in rest and "Traceback" not in rest
    return rest


def test_serve_process_and_remote_cli_process(tiny_gguf, server, capsys):
    """``python -m host serve -m FILE.gguf`` and ``python -m host --remote`` as the user
    runs them: the GGUF file of the in-process server's checkpoint directory serves the
    same model id and the same text; Ctrl-C (SIGINT) stops the server cleanly."""
    proc, url = _start_serve(tiny_gguf)
    try:
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == [
            server.model_id
        ]  # tiny.gguf serves as "tiny"
        r = subprocess.run(
            [sys.executable, "-m", "host", "--remote", url, *SAMPLING],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert cli.main(["--remote", server.url, *SAMPLING]) == 0  # in-process server
        assert r.stdout == capsys.readouterr().out
        assert "Traceback" not in r.stderr and "generated tokens: 40" in r.stderr
    finally:
        _stop(proc, signal.SIGINT)


def test_serve_process_stops_on_sigterm(tiny_model):
    proc, url = _start_serve(tiny_model)
    try:
        assert httpx.get(url + "/health").json()["status"] == "ok"
    finally:
        _stop(proc, signal.SIGTERM)


def test_serve_startup_errors_are_one_line(tiny_model, capsys):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    cases = {
        # the board backend's default transport needs pynq (a KV260): here its
        # construction error; the server reports one of any backend the same way
        "board": (["--backend", "board"], "--backend board: "),
        "bad device option": (["--device-opt", "frobnicate=1"], "--backend golden: "),
        "missing model": (["-m", "/nonexistent/model"], "-m/--model: "),
        "port in use": (["--port", str(busy.getsockname()[1])], "cannot listen"),
        "unknown backend": (["--backend", "fpga"], "--backend"),
        "bad timeout": (["--device-timeout", "nan"], "--device-timeout"),
    }
    try:
        for case, (args, want) in cases.items():
            # the last of a repeated flag wins
            code = cli.main(
                ["serve", "-m", str(tiny_model), "--backend", "golden", "--port", "0", *args]
            )
            cap = capsys.readouterr()
            errs = cap.err.strip().splitlines()
            assert code == 2, (case, cap.err)
            assert len(errs) == 1 and errs[0].startswith("error: ") and want in errs[0], (
                case,
                cap.err,
            )
            assert "Traceback" not in cap.err
    finally:
        busy.close()


def _bad_models(tmp: Path, tiny_model: Path, tiny_gguf: Path) -> dict:
    """Models that ``python -m host`` refuses with one ``-m/--model`` line."""
    cases = {"missing": tmp / "nonexistent"}
    cases["not a model"] = tmp / "notes.txt"
    cases["not a model"].write_text("not a model\n")
    cases["truncated GGUF"] = tmp / "cut.gguf"
    cases["truncated GGUF"].write_bytes(tiny_gguf.read_bytes()[:-1000])  # in the tensors
    d = tmp / "other_vocab"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        (d / f).write_bytes((tiny_model / f).read_bytes())
    CharTokenizer.from_text(VOCAB_TEXT + "0").save(d)  # one token too many
    cases["tokenizer vocabulary"] = d
    return cases


def test_serve_model_errors_are_the_clis(tiny_model, tiny_gguf, tmp_path, capsys):
    """``serve -m`` opens a model with the CLI's function: the same one line, exit 2."""
    for case, path in _bad_models(tmp_path, tiny_model, tiny_gguf).items():
        assert cli.main(["-m", str(path), "-n", "1", "--backend", "golden"]) == 2, case
        local = capsys.readouterr().err.strip().splitlines()
        assert cli.main(["serve", "-m", str(path), "--backend", "golden", "--port", "0"]) == 2
        served = capsys.readouterr().err.strip().splitlines()
        assert len(local) == 1 and local[0].startswith("error: -m/--model: "), (case, local)
        assert served == local, case
        assert str(path) in local[0] or str(path / "tokenizer.json") in local[0], local


# ---------------------------------------------------------------------------- a BPE model
BPE_PROMPT, BPE_N = "ROMEO:", 40
E_ACUTE = "\u00e9"  # UTF-8 C3 A9: two byte-level BPE tokens


def _printable(token: str) -> bool:
    """A byte-level BPE token of printable ASCII, space (U+0120) and newline (U+010A)."""
    return all("!" <= c <= "~" or c in "\u0120\u010a" for c in token)


def _arranged(base: Tokenizer, prompt_ids, gen, k: int, j: int) -> Tokenizer:
    """``base`` with its ids permuted (its BPE, merges and prompt ids unchanged) so that
    ``gen[k]``, ``gen[k + 1]`` are the bytes C3, A9 of 'é', ``gen[j]`` is the EOS and every
    other token of ``gen[:j]`` is printable ASCII."""
    v = base.vocab_size
    tokens = [base.tk.id_to_token(i) for i in range(v)]

    def swap(a, b):
        tokens[a], tokens[b] = tokens[b], tokens[a]

    eos = base.eos_tokens[0]
    targets = {gen[k]: "\u00c3", gen[k + 1]: "\u00a9", gen[j]: eos}  # byte-level C3, A9
    for pos, tok in targets.items():
        swap(pos, tokens.index(tok))
    fixed = set(prompt_ids)
    others = set(gen[:j]) - set(targets) - fixed
    pool = [i for i in range(v) if _printable(tokens[i]) and i not in fixed | set(targets) | others]
    for i in sorted(others):
        if not _printable(tokens[i]):
            swap(i, pool.pop())
    data = json.loads(base.to_json())
    data["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
    for added in data["added_tokens"]:
        added["id"] = tokens.index(added["content"])
    return Tokenizer.from_json(json.dumps(data), eos_ids=[tokens.index(eos)])


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    """A random model with a byte-level BPE vocabulary (tests/test_bpe_model.py trains one
    the same way), its token ids arranged so that the CLI's default sampling of BPE_PROMPT
    with ``seed`` gives printable ASCII, 'é' split over two tokens, then the EOS (token
    ``j``; ``text``: the decode of what comes before it)."""
    from host import checkpoint

    with open(DEFAULT_CORPUS, encoding="utf-8") as f:
        base = train_bpe(f.read()[:20000], 320)
    mc = ModelConfig(vocab_size=base.vocab_size, max_position_embeddings=CTX, **TINY)
    model = random_model(mc, seed=7)
    gm = GoldenModel(model, "integer")
    prompt_ids = base.encode(BPE_PROMPT)
    for seed in range(1, 50):  # the first seed whose tokens allow the arrangement
        gen, _ = generate(
            gm, prompt_ids, BPE_N, Sampler(DEFAULT_TEMP, DEFAULT_TOP_K, DEFAULT_TOP_P, seed)
        )
        once = [i for i in range(len(gen)) if gen.count(gen[i]) == 1 and gen[i] not in prompt_ids]
        k = next((i for i in once if i >= 3 and i + 1 in once), None)  # text, then 'é'
        j = (
            None
            if k is None
            else next(  # more text, EOS
                (
                    i
                    for i in range(k + 6, len(gen) - 1)
                    if gen[i] not in gen[:i] and gen[i] not in prompt_ids
                ),
                None,
            )
        )
        if j is not None:
            break
    assert j is not None, "no seed gives two single tokens and a later new one"
    tok = _arranged(base, prompt_ids, gen, k, j)
    assert tok.encode(BPE_PROMPT) == prompt_ids and tok.eos_ids == (gen[j],)
    text = tok.decode(gen[:j])
    assert E_ACUTE in text and text.replace(E_ACUTE, "").isascii()
    assert tok.decode(gen[k : k + 1]) == "\ufffd"  # half a character alone
    d = tmp_path_factory.mktemp("bpe") / "bpe"
    checkpoint.save(model, d, tokenizer=tok)
    return SimpleNamespace(
        path=d, seed=seed, j=j, eos=gen[j], text=text, eos_text=tok.eos_tokens[0]
    )


@pytest.fixture(scope="module")
def bpe_server(bpe_model):
    engine = serve_engine(bpe_model.path)
    with ServerThread(create_app(engine), bind_socket("127.0.0.1", 0)) as s:
        s.engine = engine
        yield s
    engine.close()


def test_bpe_model_streams_the_clis_text_and_stops_at_eos(bpe_model, bpe_server, capsys):
    """The served BPE model streams the local CLI's text for the same seed, 'é' whole in
    the chunk of its second token; it stops at the EOS ("stop"), and the remote CLI prints
    the local CLI's summary with its end-of-sequence suffix."""
    m = bpe_model
    args = ["-p", BPE_PROMPT, "-n", str(BPE_N), "-s", str(m.seed)]
    assert cli.main(["-m", str(m.path), "--backend", "golden", *args]) == 0
    local = capsys.readouterr()
    assert local.out == BPE_PROMPT + m.text + "\n"
    with httpx.Client(timeout=60) as c:
        text, chunks = stream_text(
            c, bpe_server.url, {"prompt": BPE_PROMPT, "max_tokens": BPE_N, "seed": m.seed}
        )
    assert BPE_PROMPT + text + "\n" == local.out
    pieces = [
        ch["choices"][0]["text"] for ch in chunks if ch["choices"] and ch["choices"][0]["text"]
    ]
    assert len(pieces) == m.j - 1  # j tokens before the EOS; byte C3 completes nothing
    assert [p for p in pieces if not p.isascii()] == [E_ACUTE]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    t = chunks[-1]["timings"]
    assert (t["generated_tokens"], t["eos_token"], t["eos_token_text"]) == (
        m.j + 1,
        m.eos,
        m.eos_text,
    )

    assert cli.main(["--remote", bpe_server.url, *args]) == 0
    remote = capsys.readouterr()
    assert remote.out == local.out
    lerr, rerr = local.err.strip().splitlines(), remote.err.strip().splitlines()
    suffix = f", stopped at end of sequence (token {m.eos} {m.eos_text!r})"
    assert lerr[0].endswith(suffix) and rerr[0].endswith(suffix), (lerr, rerr)
    assert len(rerr) == len(lerr) + 1 and _shape(rerr[0]) == _shape(lerr[0])
    assert f"generated tokens: {m.j + 1}," in rerr[0]


def test_bpe_model_ignore_eos(bpe_model, bpe_server, capsys):
    """``ignore_eos`` (the request field; ``--ignore-eos`` of the CLI and the remote CLI)
    never samples the EOS: ``max_tokens`` tokens, "length", the local CLI's text."""
    m = bpe_model
    client = openai.OpenAI(base_url=bpe_server.url + "/v1", api_key="unused", max_retries=0)
    r = client.completions.create(model="bpe", prompt=BPE_PROMPT, max_tokens=BPE_N, seed=m.seed)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (m.text, "stop")
    assert r.usage.completion_tokens == m.j + 1
    r = client.completions.create(
        model="bpe",
        prompt=BPE_PROMPT,
        max_tokens=BPE_N,
        seed=m.seed,
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == BPE_N
    assert r.model_extra["timings"]["eos_token"] is None
    args = ["-p", BPE_PROMPT, "-n", str(BPE_N), "-s", str(m.seed), "--ignore-eos"]
    assert cli.main(["-m", str(m.path), "--backend", "golden", *args]) == 0
    local = capsys.readouterr()
    assert local.out == BPE_PROMPT + r.choices[0].text + "\n"
    assert f"generated tokens: {BPE_N}," in local.err and "stopped at" not in local.err
    assert cli.main(["--remote", bpe_server.url, *args]) == 0
    remote = capsys.readouterr()
    assert remote.out == local.out
    assert f"generated tokens: {BPE_N}," in remote.err and "stopped at" not in remote.err


# ---------------------------------------------------------------------------- load test
def test_load_test_short(server):
    from host.loadtest import run_load

    res = run_load(server.url, clients=8, duration_s=2.0, cases=4, min_tokens=4, max_tokens=12)
    report = res.report()
    assert res.passed, report
    assert res.sent >= 8 and res.completed == res.sent == res.server_ok
    assert res.tokens > 0 and res.tokens_per_s > 0 and res.ttft_ms(0.99) >= res.ttft_ms(0.5) > 0
    assert "result: PASS" in report and f"requests: {res.sent} sent" in report


# ---------------------------------------------------------------------------- sim backend
def test_sim_backend_serves_golden_text_and_cycles(tiny_model, reference, capsys):
    """The server on the Verilator RTL: the golden text, and the CLI's accelerator line
    with the same cycle counts as a local ``python -m host`` on sim."""
    args = ["-p", "To be", "-n", "12", "-s", "6"]
    engine = serve_engine(tiny_model, "sim")
    try:
        with ServerThread(create_app(engine), bind_socket("127.0.0.1", 0)) as s:
            assert cli.main(["--remote", s.url, *args]) == 0
            remote = capsys.readouterr()
            m = metrics(s.url)
    finally:
        engine.close()
    assert cli.main(["-m", str(tiny_model), *args]) == 0  # local, sim (default)
    local = capsys.readouterr()
    assert remote.out == local.out == "To be" + reference("To be", 12, 6) + "\n"
    lerr, rerr = local.err.strip().splitlines(), remote.err.strip().splitlines()
    assert "backend sim" in rerr[0] and _shape(rerr[0]) == _shape(lerr[0])
    assert rerr[1].startswith("accelerator: ") and rerr[1] == lerr[1]  # same cycles
    assert 0 < m["ternary_accelerator_cycles_per_token"] < m["ternary_accelerator_cycles_total"]
