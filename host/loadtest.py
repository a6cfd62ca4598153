"""Load test of the token server: ``python -m host.loadtest`` (``make loadtest``).

    python -m host.loadtest [--clients 8] [--duration 60] [--cases 16]
                            [--min-tokens 16] [--max-tokens 48]
                            [--url http://HOST:PORT | -m MODEL --backend golden]

Without ``--url`` it starts ``python -m host serve --backend golden --port 0`` (loopback,
a free port) on ``-m MODEL`` (default: the shipped model) and stops it at the end.

1. References: each of ``--cases`` requests (a prompt, a seed, a length between
   ``--min-tokens`` and ``--max-tokens``; the CLI's sampling defaults) is streamed once,
   alone -- the text its seed gives alone.
2. Load: ``--clients`` threads each stream request after request (the cases in turn,
   neighbouring clients on different cases) for ``--duration`` seconds; a request that
   is running at the deadline finishes.

Every load response must equal its case's reference text, carry one completion id in all
its chunks, end with a ``finish_reason`` chunk and ``data: [DONE]``, and the server's
``ternary_requests_total{outcome="ok"}`` must have grown by exactly the number of
requests sent (none lost, none mixed). Printed: requests, tokens, tokens/s (generated
tokens over the load phase's wall time), p50/p99 time to first token as the clients
saw it (queueing for the one accelerator included). Exit status 0 when every check
passed, 1 otherwise, 2 for a bad flag or a server that does not start.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import numpy as np

PROMPTS = (
    "ROMEO:",
    "JULIET:",
    "First Citizen:",
    "To be, or not",
    "KING HENRY:",
    "O, ",
    "MENENIUS:",
    "What say you",
    "Good morrow, ",
    "LADY CAPULET:",
)


@dataclass(frozen=True)
class Case:
    prompt: str
    seed: int
    max_tokens: int

    def body(self) -> dict:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "stream": True,
        }


def make_cases(n: int, min_tokens: int, max_tokens: int) -> list[Case]:
    span = max_tokens - min_tokens + 1
    return [
        Case(PROMPTS[i % len(PROMPTS)], 1000 + i, min_tokens + (i * 7) % span) for i in range(n)
    ]


@dataclass
class Response:
    ok: bool
    text: str = ""
    ttft_s: float = float("nan")
    tokens: int = 0
    error: str = ""


def stream_once(url: str, case: Case, timeout: float = 600.0) -> Response:
    """One streaming completion over a fresh connection; checks its framing."""
    u = urllib.parse.urlsplit(url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname, u.port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request(
            "POST",
            "/v1/completions",
            body=json.dumps(case.body()),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        if resp.status != 200:
            return Response(False, error=f"HTTP {resp.status}: {resp.read()[:200]!r}")
        parts, ids, ttft, finish, done, gen = [], set(), float("nan"), None, False, None
        for raw in resp:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            d = json.loads(data)
            if "error" in d:
                return Response(False, error=f"stream error: {d['error']}")
            ids.add(d["id"])
            for ch in d["choices"]:
                if ch["text"]:
                    if not parts:
                        ttft = time.perf_counter() - t0
                    parts.append(ch["text"])
                if ch["finish_reason"] is not None:
                    finish = ch["finish_reason"]
                    gen = d.get("timings", {}).get("generated_tokens")
        text = "".join(parts)
        if not done or finish is None:
            return Response(False, text, ttft, error="stream ended before [DONE]/finish_reason")
        if len(ids) != 1:
            return Response(False, text, ttft, error=f"{len(ids)} completion ids in one stream")
        return Response(True, text, ttft, gen if gen is not None else 0)
    except (OSError, ValueError, KeyError) as e:
        return Response(False, error=f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def server_ok_count(url: str) -> int:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith('ternary_requests_total{outcome="ok"}'):
            return int(float(line.split()[-1]))
    raise ValueError('/metrics has no ternary_requests_total{outcome="ok"}')


@dataclass
class LoadResult:
    clients: int
    duration_s: float
    cases: int
    sent: int = 0
    completed: int = 0
    mismatched: int = 0
    lost: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    ttft_s: list = field(default_factory=list)
    server_ok: int | None = None  # server's ok-count growth during the load
    load_avg: float | None = None  # this machine's 1-minute load average at the end
    errors: list = field(default_factory=list)
    reference_errors: list = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")

    def ttft_ms(self, q: float) -> float:
        return float(np.quantile(self.ttft_s, q)) * 1e3 if self.ttft_s else float("nan")

    @property
    def passed(self) -> bool:
        return (
            not self.reference_errors
            and self.sent > 0
            and self.completed == self.sent
            and not self.mismatched
            and not self.lost
            and self.server_ok == self.sent
        )

    def report(self) -> str:
        lines = [
            f"load: {self.clients} concurrent streaming clients for {self.duration_s:g} s, "
            f"{self.cases} prompt/seed/length cases (each checked against its text alone)",
            f"requests: {self.sent} sent, {self.completed} completed and equal to their "
            f"reference, {self.mismatched} mismatched, {self.lost} lost "
            f"(server counted {self.server_ok} ok)",
            f"tokens: {self.tokens} generated in {self.wall_s:.1f} s -> "
            f"{self.tokens_per_s:.1f} tokens/s",
            f"time to first token at the client (queueing included): p50 "
            f"{self.ttft_ms(0.5):.1f} ms, p99 {self.ttft_ms(0.99):.1f} ms",
            f"result: {'PASS' if self.passed else 'FAIL'}",
        ]
        if self.load_avg is not None:
            lines.insert(
                -1,
                f"machine: {os.cpu_count()} CPUs, load average "
                f"{self.load_avg:.1f} at the end (other jobs included)",
            )
        for e in (self.reference_errors + self.errors)[:10]:
            lines.append(f"  {e}")
        return "\n".join(lines)


def run_load(
    url: str,
    clients: int = 8,
    duration_s: float = 60.0,
    cases: int = 16,
    min_tokens: int = 16,
    max_tokens: int = 48,
    log=None,
) -> LoadResult:
    log = log or (lambda msg: None)
    pool = make_cases(cases, min_tokens, max_tokens)
    res = LoadResult(clients, duration_s, cases)
    refs = {}
    log(f"references: {len(pool)} requests, one at a time")
    for c in pool:
        r = stream_once(url, c)
        if not r.ok or not 0 < r.tokens <= c.max_tokens:  # fewer: stopped at an EOS
            res.reference_errors.append(f"reference {c}: {r.error or f'{r.tokens} tokens'}")
        refs[c] = (r.text, r.tokens)
    if res.reference_errors:
        return res
    ok0 = server_ok_count(url)
    lock = threading.Lock()
    turn = itertools.count()
    log(f"load: {clients} clients for {duration_s:g} s")
    t0 = time.perf_counter()
    deadline = t0 + duration_s

    def client() -> None:
        while time.perf_counter() < deadline:
            with lock:
                k = next(turn)
            case = pool[k % len(pool)]
            r = stream_once(url, case)
            with lock:
                res.sent += 1
                if not r.ok:
                    res.lost += 1
                    res.errors.append(f"{case}: {r.error}")
                elif (r.text, r.tokens) != refs[case]:
                    res.mismatched += 1
                    res.errors.append(
                        f"{case}: got {r.text!r} ({r.tokens} tokens), alone "
                        f"{refs[case][0]!r} ({refs[case][1]} tokens)"
                    )
                else:
                    res.completed += 1
                    res.tokens += r.tokens
                    res.ttft_s.append(r.ttft_s)

    threads = [threading.Thread(target=client, name=f"client{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res.wall_s = time.perf_counter() - t0
    res.server_ok = server_ok_count(url) - ok0
    if hasattr(os, "getloadavg"):
        res.load_avg = os.getloadavg()[0]
    return res


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


def start_server(model: str | None, backend: str, timeout_s: float = 600.0):
    """``python -m host serve`` on a free loopback port: (process, url)."""
    cmd = [
        sys.executable,
        "-m",
        "host",
        "serve",
        "--backend",
        backend,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ] + (["-m", model] if model else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        cmd, cwd=root, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    found: list = []
    ready = threading.Event()
    tail: list = []

    def drain() -> None:
        for line in proc.stderr:
            tail.append(line.rstrip())
            if "listening on " in line and not found:
                found.append(line.rsplit("listening on ", 1)[1].strip())
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    ready.wait(timeout_s)
    if not found:
        stop_server(proc)
        raise _UsageError(f"the server did not start: {tail[-1] if tail else 'no output'}")
    return proc, found[0]


def stop_server(proc) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv=None) -> int:
    p = _Parser(prog="python -m host.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start one)")
    p.add_argument("-m", "--model", default=None, help="model of the started server")
    p.add_argument("--backend", default="golden", help="backend of the started server")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--min-tokens", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=48)
    try:
        a = p.parse_args(argv)
        if a.clients < 1 or a.cases < 1 or not a.duration > 0:
            raise _UsageError("--clients, --cases must be >= 1 and --duration > 0")
        if not 0 <= a.min_tokens <= a.max_tokens:
            raise _UsageError("expected 0 <= --min-tokens <= --max-tokens")
        proc = None
        url = a.url
        if url is None:
            print(
                f"starting python -m host serve --backend {a.backend} on loopback ...",
                file=sys.stderr,
                flush=True,
            )
            proc, url = start_server(a.model, a.backend)
        try:
            print(f"server: {url}", file=sys.stderr, flush=True)
            res = run_load(
                url,
                a.clients,
                a.duration,
                a.cases,
                a.min_tokens,
                a.max_tokens,
                log=lambda m: print(m, file=sys.stderr, flush=True),
            )
        finally:
            if proc is not None:
                stop_server(proc)
    except _UsageError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(res.report())
    return 0 if res.passed else 1


if __name__ == "__main__":
    sys.exit(main())
