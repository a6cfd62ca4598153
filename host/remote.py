"""Remote CLI: ``python -m host --remote http://HOST:PORT -p ... [-n --temp --top-k --top-p -s
--ignore-eos]``.

Streams from a token server (``python -m host serve``, ``host.server``) instead of a
local device: the sampling flags become the fields of one streaming ``POST
/v1/completions`` (the seed is chosen here when not given, so the summary can name it),
the text is written to stdout as the server-sent events arrive, and stderr gets the
local CLI's summary lines with the server's figures (its backend, its accelerator
cycles, clock and bandwidth), plus one line with what this client saw: the time the
request waited for the accelerator and the time to first token here. The same seed and
flags give the same text as ``python -m host`` on the server's backend.

The server chooses model and backend: ``-m``, ``--backend``, ``--transport``, ``--mode``,
``--clock-mhz`` and ``--bandwidth-gbs`` are errors with ``--remote``. A URL may end in
``/v1`` (the OpenAI client's base URL). Connections use the standard library
(``urllib``; proxy environment variables apply as usual).

The server stops at its tokenizer's end-of-sequence token as the local CLI does
(``--ignore-eos`` becomes the request's ``ignore_eos``), streams text with the same
``StreamDecoder``, and its ``timings`` carry the EOS that stopped it; the summary lines
are printed by ``host.completion.summary_lines``, the local CLI's own function, so they
are the local CLI's lines (the EOS suffix included) with the server's figures.

Errors -- a bad flag, an unreachable server, a request the server refuses (HTTP 4xx/5xx,
its one-line reason quoted), a stream that fails or ends early -- print one line
``error: ...`` to stderr and exit with status 2, as the local CLI does.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from host.completion import summary_lines

# seconds one socket operation may block (connect; a wait between two events: the
# request may queue behind others on the one accelerator)
TIMEOUT_S = 600.0
SERVER_SIDE_FLAGS = (
    ("model", "-m/--model"),
    ("backend", "--backend"),
    ("transport", "--transport"),
    ("mode", "--mode"),
    ("design_point", "--design-point"),
    ("clock_mhz", "--clock-mhz"),
    ("bandwidth_gbs", "--bandwidth-gbs"),
)


def base_url(url: str) -> str:
    """http(s)://HOST[:PORT] without a trailing slash or /v1; ValueError when not a URL."""
    u = urllib.parse.urlsplit(url.strip())
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError(f"expected http://HOST:PORT, got {url!r}")
    path = u.path.rstrip("/").removesuffix("/v1")
    return f"{u.scheme}://{u.netloc}{path}"


def _server_message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read())
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if body.get("detail"):
            return str(body["detail"])
    except Exception:
        pass
    return e.reason if isinstance(e.reason, str) else "no reason given"


def iter_sse(resp):
    """The ``data:`` payloads of a server-sent event stream (one per event)."""
    data = []
    for raw in resp:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


def open_stream(url: str, body: dict, timeout: float = TIMEOUT_S):
    """POST a streaming completion; the open response (HTTPError / URLError / OSError as
    urllib raises them)."""
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    )
    return urllib.request.urlopen(req, timeout=timeout)


def run_remote(a, parser) -> int:
    """``python -m host --remote URL ...`` (``a``: the CLI's parsed arguments)."""
    from host import cli

    for dest, flag in SERVER_SIDE_FLAGS:
        if getattr(a, dest) != parser.get_default(dest):
            raise cli._UsageError(
                f"{flag}: not used with --remote (the server chooses it: "
                f"python -m host serve {flag.split('/')[-1]} ...)"
            )
    cli._check_args(a)
    try:
        url = base_url(a.remote)
    except ValueError as e:
        raise cli._UsageError(f"--remote: {e}") from None
    seed = a.seed if a.seed is not None else int(time.time_ns() % (2**31))
    body = {
        "prompt": a.prompt,
        "max_tokens": a.n_predict,
        "temperature": a.temp,
        "top_k": a.top_k,
        "top_p": a.top_p,
        "seed": seed,
        "stream": True,
    }
    if a.ignore_eos:
        body["ignore_eos"] = True

    def fail(msg: str) -> cli._UsageError:
        return cli._UsageError(f"--remote {url}: {msg}")

    t0 = time.perf_counter()
    try:
        resp = open_stream(url, body)
    except urllib.error.HTTPError as e:
        raise fail(f"HTTP {e.code}: {_server_message(e)}") from None
    except urllib.error.URLError as e:
        raise fail(f"cannot reach the server ({e.reason})") from None
    except OSError as e:  # e.g. a timeout, a reset connection
        raise fail(f"cannot reach the server ({e})") from None

    out = sys.stdout
    out.write(a.prompt)
    out.flush()
    timings, t_first, done = None, None, False
    try:
        with resp:
            for data in iter_sse(resp):
                if data == "[DONE]":
                    done = True
                    break
                d = json.loads(data)
                if isinstance(d.get("error"), dict):
                    raise fail(f"server: {d['error'].get('message', 'error')}")
                for ch in d.get("choices") or ():
                    if ch.get("text"):
                        if t_first is None:
                            t_first = time.perf_counter()
                        out.write(ch["text"])
                        out.flush()
                    if ch.get("finish_reason") is not None:
                        timings = d.get("timings")
    except (OSError, ValueError) as e:  # dropped connection, bad JSON from the server
        raise fail(f"stream failed: {e}") from None
    if not done or timings is None:
        raise fail("the stream ended before the server finished the completion")
    out.write("\n")
    out.flush()
    for line in summary_lines(timings):
        print(line, file=sys.stderr)
    client_ttft = f"{(t_first - t0) * 1e3:.1f} ms" if t_first is not None else "n/a"
    queue = timings.get("queue_s")
    queue = (
        f"{queue * 1e3:.1f} ms"
        if isinstance(queue, (int, float)) and math.isfinite(queue)
        else "n/a"
    )
    print(
        f"remote: {url}, waited for the accelerator {queue}, time to first token at this "
        f"client {client_ttft}",
        file=sys.stderr,
    )
    return 0
