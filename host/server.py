"""Token server: ``python -m host serve`` (``make serve``) -- an OpenAI-compatible HTTP API
in front of the one accelerator (DESIGN §5, the board path).

    python -m host serve [--backend sim|golden|board] [--transport pynq|verilator]
                         [--host 127.0.0.1] [--port 8080]
                         [-m MODEL] [--clock-mhz F] [--bandwidth-gbs F]
                         [--device-timeout S] [--max-queue N] [--device-opt KEY=VALUE ...]

``-m`` takes what ``python -m host -m`` takes -- a Hugging Face checkpoint directory or a
GGUF file -- opened by the same function (``host.modelfile.open_model``: configuration,
tokenizer, their vocabulary sizes), so a bad model is the CLI's one-line error. The
device is created through the backend registry (``host.backends``, the one list of
backend names; ``host.runtime.make_runtime``) with the CLI's construction arguments
(``host.runtime.backend_kwargs``), so a new backend is served without a change here;
``--device-opt KEY=VALUE`` (repeatable) passes extra keyword arguments to its
constructor (a value is read as JSON when it parses, else as a string). Any error while
loading the model or constructing the device prints one line ``error: ...`` and exits
with status 2. ``--port 0`` picks a free port; the line ``listening on
http://HOST:PORT`` on stderr says which.

Endpoints (FastAPI on uvicorn):

``POST /v1/completions``
    OpenAI's completions API: ``prompt`` (a string, or a list of one string),
    ``max_tokens`` (default 16; 0 .. the model's context), ``temperature`` (default 0.8;
    0 = greedy), ``top_k`` (default 40; 0 = off), ``top_p`` (default 0.95, in (0, 1]),
    ``seed`` (default: random, reported in ``timings.seed``), ``stream`` (server-sent
    events: one ``data: {chunk}`` per token in OpenAI's ``text_completion`` chunk format,
    the last chunk carrying ``finish_reason`` and ``timings``, then ``data: [DONE]``),
    ``stream_options`` (``{"include_usage": true}``: a final chunk with ``usage`` and no
    choices, as OpenAI sends it), ``model`` (optional; when given it must be the served
    model's id, see ``/v1/models``), ``n`` (1 only), ``user`` (ignored) and
    ``ignore_eos`` (llama.cpp's server field, default false: never sample the tokenizer's
    end-of-sequence tokens). Any other field is an error. A completion runs as the CLI's
    (``host.completion.complete``: ``host.generate``'s ``Sampler`` and ``generate``, the
    tokenizer's ``StreamDecoder``): the same seed and flags give the same text as
    ``python -m host`` on the same backend; a character split over several byte-level
    BPE tokens is sent once whole, in the chunk of the token that completes it (a token
    that completes nothing sends no chunk). Generation stops at the tokenizer's EOS
    (not sent) with ``finish_reason`` ``"stop"``, else after ``max_tokens`` with
    ``"length"``. ``timings`` (an extension, like llama.cpp's) holds the CLI's summary
    figures (``host.completion``, from which the remote CLI prints the CLI's lines):
    ``prompt_tokens``, ``generated_tokens`` (an EOS that stopped generation counted, as
    the CLI counts it), ``ttft_s`` (start of prefill -> first token),
    ``prefill_tokens_per_s``, ``decode_tokens_per_s``, ``window_slides``, ``queue_s``
    (time waiting for the accelerator), ``backend``, ``mode``, ``seed``, ``eos_token`` and
    ``eos_token_text`` (the EOS id and string that stopped generation, or null), and
    ``accelerator`` (null when the backend counts no cycles, else ``cycles``,
    ``prefill_cycles``, ``cycles_per_token`` of decoding, ``clock_mhz``, ``bandwidth_gbs``,
    ``modeled_tokens_per_s``). Non-finite numbers are sent as null.
``GET /v1/models``
    The one served model: ``{"object": "list", "data": [{"id", "object": "model",
    "created", "owned_by", "max_model_len", "backend"}]}``; its id is the model
    directory's name, or the GGUF file's without ``.gguf``.
``GET /health``
    ``{"status": "ok", ...}`` (HTTP 200) while the accelerator worker runs, else 503.
``GET /metrics``
    Prometheus text format (version 0.0.4), names prefixed ``ternary_``: requests by
    outcome (``ok``, ``cancelled``, ``bad_request``, ``busy``, ``device_timeout``,
    ``device_error``), prompt and generated token counters, ``queue_depth`` (requests
    waiting for the accelerator), its high-water mark, ``busy``, ``decode_tokens_per_second``
    and ``accelerator_cycles_per_token`` (over the last 100 completed requests; NaN when
    none or when the backend counts no cycles), ``time_to_first_token_seconds`` and
    ``queue_wait_seconds`` summaries (p50/p90/p99 of the last 1000 requests; TTFT is
    from the request's arrival to its first token, queueing included).

Scheduling: one worker thread owns the runtime (which is not thread-safe) and runs one
generation at a time, in arrival order; every request has its own event queue, so its
tokens never mix with another's. A client that disconnects (mid-stream, or while its
request waits) cancels its request: a waiting one leaves the queue, a running one stops
at its next token. More than ``--max-queue`` waiting requests: HTTP 503 at once.

Errors: a malformed body, an unknown field, a value out of range (``max_tokens`` < 0 or
above the context, ``temperature`` NaN or < 0, ...), a prompt with characters outside
the vocabulary or longer than the context: HTTP 400 with a one-line reason in OpenAI's
error object ``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``.
The device timing out (``--device-timeout``, default the runtime's 120 s; the running
server's ``Engine.device_timeout`` may be changed): HTTP 503 for that request, the
device is reset and the next request runs normally; any other device error: HTTP 500,
device reset. An error after a stream has started (headers sent) ends the stream with
one ``data: {"error": {...}}`` event and ``data: [DONE]`` (the OpenAI client raises it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from starlette.requests import Request  # module level: FastAPI resolves the annotation

from host.generate import encode_prompt
from host.usage import Parser as _Parser
from host.usage import UsageError as _UsageError
from host.usage import flag_errors, run_main
from host.usage import one_line as _one_line

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_TEMP, DEFAULT_TOP_K, DEFAULT_TOP_P = 0.8, 40, 0.95  # the CLI's defaults
DEFAULT_MAX_QUEUE = 64
MAX_BODY_BYTES = 1 << 20
WINDOW = 100  # completed requests the rate gauges average over
QUANTILE_WINDOW = 1000
OWNER = "ternary-accel"

ACCEPTED_FIELDS = (
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "stream",
    "stream_options",
    "n",
    "user",
    "ignore_eos",
)


# ---------------------------------------------------------------------------- requests
class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(_one_line(message))
        self.param = param


@dataclass
class CompletionRequest:
    prompt: str
    prompt_ids: list
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stream: bool
    include_usage: bool
    ignore_eos: bool = False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_request(body: bytes, tok, context: int, model_id: str) -> CompletionRequest:
    """Validate a /v1/completions body; BadRequest (one line) for anything wrong."""
    try:
        obj = json.loads(body)
    except UnicodeDecodeError as e:
        raise BadRequest(f"body: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BadRequest(
            f"body: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    except RecursionError:
        raise BadRequest("body: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(obj).__name__}")
    unknown = [k for k in obj if k not in ACCEPTED_FIELDS]
    if unknown:
        raise BadRequest(
            f"unknown field {unknown[0]!r} (accepted: {', '.join(ACCEPTED_FIELDS)})", unknown[0]
        )

    def get(name, default):
        v = obj.get(name)
        return default if v is None else v

    model = obj.get("model")
    if model is not None and model != model_id:
        raise BadRequest(
            f"model: {model!r} is not served here (this server serves {model_id!r})", "model"
        )
    n = get("n", 1)
    if not _is_int(n) or n != 1:
        raise BadRequest(f"n: only 1 completion per request is supported, got {n!r}", "n")
    if "user" in obj and obj["user"] is not None and not isinstance(obj["user"], str):
        raise BadRequest("user: expected a string", "user")

    if "prompt" not in obj:
        raise BadRequest("prompt: required", "prompt")
    prompt = obj["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt: expected a string (or a list of one string)", "prompt")
    try:  # the CLI's checks and messages
        ids = encode_prompt(tok, prompt, context)
    except ValueError as e:
        raise BadRequest(f"prompt: {e}", "prompt") from None

    max_tokens = get("max_tokens", DEFAULT_MAX_TOKENS)
    if not _is_int(max_tokens):
        raise BadRequest(f"max_tokens: expected an integer, got {max_tokens!r}", "max_tokens")
    if not 0 <= max_tokens <= context:
        raise BadRequest(
            f"max_tokens: expected 0..{context} (the context window), got {max_tokens}",
            "max_tokens",
        )
    temp = get("temperature", DEFAULT_TEMP)
    if not (_is_number(temp) and math.isfinite(temp) and temp >= 0):
        raise BadRequest(f"temperature: expected a finite number >= 0, got {temp!r}", "temperature")
    top_k = get("top_k", DEFAULT_TOP_K)
    if not (_is_int(top_k) and top_k >= 0):
        raise BadRequest(f"top_k: expected an integer >= 0, got {top_k!r}", "top_k")
    top_p = get("top_p", DEFAULT_TOP_P)
    if not (_is_number(top_p) and 0 < top_p <= 1):
        raise BadRequest(f"top_p: expected a number in (0, 1], got {top_p!r}", "top_p")
    seed = obj.get("seed")
    if seed is None:
        seed = int(time.time_ns() % (2**31))
    elif not (_is_int(seed) and 0 <= seed < 2**63):
        raise BadRequest(f"seed: expected an integer in [0, 2^63), got {seed!r}", "seed")
    stream = get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream: expected true or false, got {stream!r}", "stream")
    so = obj.get("stream_options")
    include_usage = False
    if so is not None:
        if not stream:
            raise BadRequest("stream_options: only allowed with stream: true", "stream_options")
        if not isinstance(so, dict) or set(so) - {"include_usage"}:
            raise BadRequest(
                'stream_options: expected {"include_usage": true|false}', "stream_options"
            )
        include_usage = so.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise BadRequest(
                "stream_options.include_usage: expected true or false", "stream_options"
            )
    ignore_eos = get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise BadRequest(f"ignore_eos: expected true or false, got {ignore_eos!r}", "ignore_eos")
    return CompletionRequest(
        prompt=prompt,
        prompt_ids=ids,
        max_tokens=max_tokens,
        temperature=float(temp),
        top_k=top_k,
        top_p=float(top_p),
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        ignore_eos=ignore_eos,
    )


# ---------------------------------------------------------------------------- the engine
class _Cancelled(Exception):
    pass


class QueueFull(RuntimeError):
    pass


@dataclass
class Event:
    kind: str  # "token" | "done" | "error"
    text: str = ""
    timings: dict | None = None
    finish_reason: str | None = None
    status: int = 0  # HTTP status of an error
    message: str = ""
    etype: str = ""


@dataclass(eq=False)
class Job:
    req: CompletionRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    t_arrival: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False

    def emit(self, ev: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, ev)
        except RuntimeError:  # the event loop has closed (server shutting down)
            self.cancelled.set()


class Engine:
    """Owns the runtime; one worker thread runs the queued jobs one at a time."""

    def __init__(
        self,
        runtime,
        tokenizer,
        *,
        model_id: str,
        backend: str,
        dp=None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        device_timeout: float | None = None,
    ):
        self.rt, self.tok = runtime, tokenizer
        self.model_id, self.backend = model_id, backend
        from golden.config import DEFAULT_DESIGN_POINT, design_point

        self.dp = design_point(DEFAULT_DESIGN_POINT) if dp is None else dp
        self.context = runtime.config.max_position_embeddings
        self.max_queue = int(max_queue)
        if device_timeout is not None:
            self.device_timeout = device_timeout
        self.created = int(time.time())
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._stop = False
        self._lock = threading.Lock()  # metrics
        self.outcomes = collections.Counter()
        self.prompt_tokens_total = 0
        self.generated_tokens_total = 0
        self.cycles_total = 0
        self.queue_depth_max = 0
        self._recent = collections.deque(maxlen=WINDOW)  # (decoded, decode_s, cycles)
        self._ttft = collections.deque(maxlen=QUANTILE_WINDOW)
        self._queue_wait = collections.deque(maxlen=QUANTILE_WINDOW)
        self._ttft_sum = self._queue_wait_sum = 0.0
        self._ttft_count = self._queue_wait_count = 0
        self._thread = threading.Thread(target=self._worker, name="accelerator", daemon=True)
        self._thread.start()

    # -- settings
    @property
    def device_timeout(self) -> float:
        """Seconds the runtime waits for one command stream (``Device.wait``)."""
        return self.rt.timeout_s

    @device_timeout.setter
    def device_timeout(self, s: float) -> None:
        if not (_is_number(s) and math.isfinite(s) and s > 0):
            raise ValueError(f"device_timeout: expected a number > 0, got {s!r}")
        self.rt.timeout_s = float(s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._running is not None

    # -- submission / cancellation (event-loop side)
    def submit(self, req: CompletionRequest) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(req=req, loop=loop, events=asyncio.Queue())
        with self._cond:
            if self._stop:
                raise QueueFull("server shutting down")
            if len(self._waiting) >= self.max_queue:
                self._count("busy")
                raise QueueFull(
                    f"server busy: {len(self._waiting)} requests waiting for the "
                    f"accelerator (--max-queue {self.max_queue})"
                )
            self._waiting.append(job)
            self.queue_depth_max = max(self.queue_depth_max, len(self._waiting))
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job if it waits, stop it at its next token if it
        runs; nothing if it has finished."""
        if job.finished:
            return
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                job.finished = True
                self._count("cancelled")

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            for job in self._waiting:
                job.cancelled.set()
                job.emit(
                    Event("error", status=503, etype="server_busy", message="server shutting down")
                )
            self._waiting.clear()
            if self._running is not None:
                self._running.cancelled.set()
            self._cond.notify_all()
        self._thread.join(timeout)
        try:
            self.rt.close()
        except Exception:
            pass

    # -- the worker thread
    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _worker(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job = self._waiting.popleft()
                self._running = job
            try:
                self._run(job)
            except Exception as e:  # outside generate (e.g. reading the counters)
                self._reset_device()
                self._fail(
                    job,
                    "device_error",
                    500,
                    "server_error",
                    f"{type(e).__name__}: {e}",
                    time.perf_counter() - job.t_arrival,
                )
            finally:
                job.finished = True
                with self._cond:
                    self._running = None

    def _reset_device(self) -> None:
        try:
            self.rt.device.reset()
        except Exception as e:  # a device that cannot even reset: keep serving
            print(f"server: device reset failed: {_one_line(e)}", file=sys.stderr)

    def _run(self, job: Job) -> None:
        from host.completion import complete
        from host.device import DeviceError, DeviceTimeout
        from host.generate import Sampler

        req = job.req
        t_start = time.perf_counter()
        queue_s = t_start - job.t_arrival
        first = {}
        n = [0]

        def on_token(t: int) -> None:
            if not first:
                first["t"] = time.perf_counter()
            n[0] += 1
            if job.cancelled.is_set():
                raise _Cancelled

        def on_text(piece: str) -> None:
            job.emit(Event("token", text=piece))

        try:
            sampler = Sampler(temp=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=req.seed)
            if job.cancelled.is_set():
                raise _Cancelled
            c = complete(
                self.rt,
                self.tok,
                req.prompt_ids,
                req.max_tokens,
                sampler,
                ignore_eos=req.ignore_eos,
                on_text=on_text,
                on_token=on_token,
            )
        except _Cancelled:
            self._finish(job, "cancelled", len(req.prompt_ids), n[0], queue_s, first)
            return
        except DeviceTimeout as e:
            self._reset_device()
            self._fail(
                job,
                "device_timeout",
                503,
                "device_timeout",
                f"{e} (the device was reset; retry the request)",
                queue_s,
            )
            return
        except DeviceError as e:
            self._reset_device()
            self._fail(
                job, "device_error", 500, "device_error", f"{e} (the device was reset)", queue_s
            )
            return
        except Exception as e:  # keep serving whatever happened
            self._reset_device()
            self._fail(
                job, "device_error", 500, "server_error", f"{type(e).__name__}: {e}", queue_s
            )
            return
        st = c.stats
        if st.generated_tokens and not first:  # the first token was EOS
            first["t"] = t_start + st.ttft_s
        timings = c.timings(
            backend=self.backend,
            mode=getattr(self.rt, "mode", "integer"),
            seed=req.seed,
            dp=self.dp,
        )
        timings["queue_s"] = queue_s
        self._finish(
            job,
            "ok",
            st.prompt_tokens,
            st.generated_tokens,
            queue_s,
            first,
            decode=(st.generated_tokens - 1, st.decode_s, timings["accelerator"]),
        )
        finish = "stop" if st.eos_token is not None else "length"
        job.emit(Event("done", timings=timings, finish_reason=finish))

    def _finish(self, job, outcome, prompt_n, gen_n, queue_s, first, decode=None) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            self.prompt_tokens_total += prompt_n
            self.generated_tokens_total += gen_n
            self._queue_wait.append(queue_s)
            self._queue_wait_sum += queue_s
            self._queue_wait_count += 1
            if first:
                ttft = first["t"] - job.t_arrival
                self._ttft.append(ttft)
                self._ttft_sum += ttft
                self._ttft_count += 1
            if decode is not None:
                n_dec, dec_s, acc = decode
                cyc = None
                if acc is not None:
                    self.cycles_total += acc["cycles"]
                    if n_dec > 0:
                        cyc = acc["cycles"] - acc["prefill_cycles"]
                self._recent.append((max(n_dec, 0), dec_s, cyc))

    def _fail(self, job, outcome, status, etype, message, queue_s) -> None:
        with self._lock:
            self.outcomes[outcome] += 1
            self._queue_wait.append(queue_s)
            self._queue_wait_sum += queue_s
            self._queue_wait_count += 1
        job.emit(Event("error", status=status, etype=etype, message=_one_line(message)))

    # -- metrics
    def metrics_text(self) -> str:
        def q(values, p):
            return float(np.quantile(np.asarray(values), p)) if values else float("nan")

        def num(x):
            if x is None or (isinstance(x, float) and math.isnan(x)):
                return "NaN"
            return repr(float(x)) if isinstance(x, float) else str(x)

        with self._lock:
            outcomes = dict(self.outcomes)
            recent = list(self._recent)
            ttft, qw = list(self._ttft), list(self._queue_wait)
            sums = (self._ttft_sum, self._ttft_count, self._queue_wait_sum, self._queue_wait_count)
            ptok, gtok, cyc_total = (
                self.prompt_tokens_total,
                self.generated_tokens_total,
                self.cycles_total,
            )
        dec_n = sum(r[0] for r in recent)
        dec_s = sum(r[1] for r in recent)
        cyc = [r for r in recent if r[2] is not None and r[0] > 0]
        lines = []

        def metric(name, kind, help_, samples):
            lines.append(f"# HELP ternary_{name} {help_}")
            lines.append(f"# TYPE ternary_{name} {kind}")
            for labels, v in samples:
                lab = (
                    "{" + ",".join(f'{k}="{_label(val)}"' for k, val in labels.items()) + "}"
                    if labels
                    else ""
                )
                lines.append(f"ternary_{name}{lab} {num(v)}")

        metric(
            "info",
            "gauge",
            "The served model and backend.",
            [({"model": self.model_id, "backend": self.backend, "context": str(self.context)}, 1)],
        )
        metric(
            "requests_total",
            "counter",
            "Completion requests by outcome.",
            [
                ({"outcome": o}, outcomes.get(o, 0))
                for o in (
                    "ok",
                    "cancelled",
                    "bad_request",
                    "busy",
                    "device_timeout",
                    "device_error",
                )
            ],
        )
        metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", [({}, ptok)])
        metric(
            "generated_tokens_total",
            "counter",
            "Tokens generated (cancelled requests included).",
            [({}, gtok)],
        )
        metric(
            "queue_depth",
            "gauge",
            "Requests waiting for the accelerator.",
            [({}, self.queue_depth)],
        )
        metric(
            "queue_depth_max",
            "gauge",
            "Most requests ever waiting at once.",
            [({}, self.queue_depth_max)],
        )
        metric("busy", "gauge", "1 while the accelerator generates.", [({}, int(self.busy))])
        metric(
            "decode_tokens_per_second",
            "gauge",
            f"Decoded tokens per second of generation, last {WINDOW} completed requests.",
            [({}, dec_n / dec_s if dec_n and dec_s > 0 else float("nan"))],
        )
        metric(
            "accelerator_cycles_per_token",
            "gauge",
            f"Accelerator cycles per decoded token, last {WINDOW} completed requests "
            "(NaN: the backend counts no cycles).",
            [({}, sum(r[2] for r in cyc) / sum(r[0] for r in cyc) if cyc else float("nan"))],
        )
        metric(
            "accelerator_cycles_total",
            "counter",
            "Accelerator cycles of completed requests.",
            [({}, cyc_total)],
        )
        for name, vals, s, c, help_ in (
            (
                "time_to_first_token_seconds",
                ttft,
                sums[0],
                sums[1],
                "Request arrival to its first token (queueing included).",
            ),
            (
                "queue_wait_seconds",
                qw,
                sums[2],
                sums[3],
                "Request arrival to the start of its generation.",
            ),
        ):
            metric(
                name,
                "summary",
                help_ + f" Quantiles of the last {QUANTILE_WINDOW}.",
                [({"quantile": str(p)}, q(vals, p)) for p in (0.5, 0.9, 0.99)],
            )
            lines.append(f"ternary_{name}_sum {num(float(s))}")
            lines.append(f"ternary_{name}_count {c}")
        return "\n".join(lines) + "\n"


def _label(v) -> str:
    """A Prometheus label value, escaped."""
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# ---------------------------------------------------------------------------- the app
def _error_body(
    status: int, message: str, etype: str = "invalid_request_error", param: str | None = None
) -> dict:
    return {"error": {"message": _one_line(message), "type": etype, "param": param, "code": status}}


def create_app(engine: Engine):
    """The FastAPI application serving ``engine``."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(
        title="ternary-accel token server", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.engine = engine

    def error(status, message, etype="invalid_request_error", param=None):
        return JSONResponse(_error_body(status, message, etype, param), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error(exc.status_code, exc.detail, "invalid_request_error")

    @app.exception_handler(Exception)
    async def _any_error(request, exc):
        return error(500, f"{type(exc).__name__}: {exc}", "server_error")

    @app.get("/health")
    async def health():
        body = {
            "status": "ok" if engine.alive else "error",
            "model": engine.model_id,
            "backend": engine.backend,
            "queue_depth": engine.queue_depth,
            "busy": engine.busy,
        }
        return JSONResponse(body, status_code=200 if engine.alive else 503)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": engine.model_id,
                    "object": "model",
                    "created": engine.created,
                    "owned_by": OWNER,
                    "max_model_len": engine.context,
                    "backend": engine.backend,
                }
            ],
        }

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(
            engine.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def next_event(job: Job, request: Request) -> Event | None:
        """The job's next event, or None when the client disconnects first (the job is
        then cancelled)."""
        get = asyncio.ensure_future(job.events.get())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (get, gone):
                if not t.done():
                    t.cancel()
        if get in done:
            return get.result()
        engine.cancel(job)
        return None

    def chunk(job: Job, text: str, finish=None, **extra) -> str:
        d = {
            "id": job.id,
            "object": "text_completion",
            "created": job.created,
            "model": engine.model_id,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        }
        d.update(extra)
        return f"data: {json.dumps(d)}\n\n"

    def usage(t: dict) -> dict:
        return {
            "prompt_tokens": t["prompt_tokens"],
            "completion_tokens": t["generated_tokens"],
            "total_tokens": t["prompt_tokens"] + t["generated_tokens"],
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            engine._count("bad_request")
            return error(413, f"body: {declared} bytes exceed {MAX_BODY_BYTES}")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            engine._count("bad_request")
            return error(413, f"body: {len(body)} bytes exceed {MAX_BODY_BYTES}")
        try:
            req = parse_request(body, engine.tok, engine.context, engine.model_id)
        except BadRequest as e:
            engine._count("bad_request")
            return error(400, str(e), param=e.param)
        try:
            job = engine.submit(req)
        except QueueFull as e:
            return error(503, str(e), "server_busy")
        try:
            first = await next_event(job, request)
        except BaseException:
            engine.cancel(job)
            raise
        if first is None:  # the client left while waiting
            return error(499, "client closed the request")
        if first.kind == "error":
            return error(first.status, first.message, first.etype)

        if not req.stream:
            parts, ev = [], first
            try:
                while ev is not None and ev.kind == "token":
                    parts.append(ev.text)
                    ev = await next_event(job, request)
            except BaseException:
                engine.cancel(job)
                raise
            if ev is None:
                return error(499, "client closed the request")
            if ev.kind == "error":
                return error(ev.status, ev.message, ev.etype)
            t = ev.timings
            return {
                "id": job.id,
                "object": "text_completion",
                "created": job.created,
                "model": engine.model_id,
                "choices": [
                    {
                        "text": "".join(parts),
                        "index": 0,
                        "logprobs": None,
                        "finish_reason": ev.finish_reason,
                    }
                ],
                "usage": usage(t),
                "timings": t,
            }

        async def sse():
            ev = first
            try:
                while True:
                    if ev.kind == "token":
                        yield chunk(job, ev.text)
                    elif ev.kind == "done":
                        yield chunk(job, "", ev.finish_reason, timings=ev.timings)
                        if req.include_usage:
                            d = {
                                "id": job.id,
                                "object": "text_completion",
                                "created": job.created,
                                "model": engine.model_id,
                                "choices": [],
                                "usage": usage(ev.timings),
                            }
                            yield f"data: {json.dumps(d)}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    else:
                        body = _error_body(ev.status, ev.message, ev.etype)
                        yield f"data: {json.dumps(body)}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    ev = await job.events.get()
            finally:  # disconnected (cancelled) or finished
                engine.cancel(job)

        return StreamingResponse(
            sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


async def _disconnected(request) -> None:
    """Returns when the client disconnects (the body has been read already)."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


# ---------------------------------------------------------------------------- serving
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); OSError if it cannot."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def make_uvicorn(app, log_level: str = "warning"):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, lifespan="off")
    return uvicorn.Server(config)


class ServerThread:
    """A uvicorn server for ``app`` on ``sock`` in a background thread (tests, load test).

    with ServerThread(app, bind_socket("127.0.0.1", 0)) as s: ... s.url ...
    """

    def __init__(self, app, sock: socket.socket, log_level: str = "warning"):
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.server = make_uvicorn(app, log_level)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
        )

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def build_parser() -> argparse.ArgumentParser:
    from host.backends import BACKENDS
    from host.cli import build_parser as cli_parser

    defaults = cli_parser()
    p = _Parser(
        prog="python -m host serve",
        description="Serve the accelerator over an OpenAI-compatible HTTP API.",
    )
    p.add_argument(
        "--backend", choices=sorted(BACKENDS), default="sim", help="device backend (default: sim)"
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (default {DEFAULT_PORT}; 0 = a free port)",
    )
    p.add_argument(
        "-m",
        "--model",
        default=defaults.get_default("model"),
        help="checkpoint directory or GGUF file (default: the shipped model)",
    )
    from host.runtime import add_design_point_args, add_transport_arg

    add_design_point_args(p)
    add_transport_arg(p)
    p.add_argument(
        "--device-timeout",
        type=float,
        default=None,
        help="seconds to wait for one command stream before the request fails "
        "with 503 and the device is reset (default: the runtime's)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"requests that may wait for the accelerator (default {DEFAULT_MAX_QUEUE})",
    )
    p.add_argument(
        "--device-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword argument of the backend's constructor (repeatable)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (info: one line per request)",
    )
    return p


def _device_opts(items) -> dict:
    opts = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key.isidentifier():
            raise _UsageError(f"--device-opt: expected KEY=VALUE, got {it!r}")
        try:
            opts[key] = json.loads(val)
        except json.JSONDecodeError:
            opts[key] = val
    return opts


def serve(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if not 0 <= a.port <= 65535:
        raise _UsageError(f"--port: expected 0..65535, got {a.port}")
    from host.runtime import design_point_from_args

    try:
        dp = design_point_from_args(a)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    if a.device_timeout is not None and not (
        math.isfinite(a.device_timeout) and a.device_timeout > 0
    ):
        raise _UsageError(f"--device-timeout: expected a finite value > 0, got {a.device_timeout}")
    if a.max_queue < 1:
        raise _UsageError(f"--max-queue: expected >= 1, got {a.max_queue}")
    from host.runtime import transport_opts

    try:
        opts = {**transport_opts(a), **_device_opts(a.device_opt)}
    except ValueError as e:
        raise _UsageError(str(e)) from None
    from host.modelfile import open_model

    with flag_errors("-m/--model"):  # python -m host's function, checks and messages
        source = open_model(a.model)
        model = source.load()
    tok, model_id = source.tokenizer, source.name

    try:  # before the device: a busy port fails before a long build
        sock = bind_socket(a.host, a.port)
    except OSError as e:
        raise _UsageError(
            f"--host/--port: cannot listen on {a.host}:{a.port}: {e.strerror or e}"
        ) from None

    from host.runtime import backend_kwargs, make_runtime

    try:
        rt = make_runtime(model, a.backend, **backend_kwargs(a.backend, dp, opts))
    except Exception as e:  # any construction error: one line (a bad bitstream included)
        sock.close()
        raise _UsageError(f"--backend {a.backend}: {_one_line(e)}") from None
    engine = Engine(
        rt,
        tok,
        model_id=model_id,
        backend=a.backend,
        dp=dp,
        max_queue=a.max_queue,
        device_timeout=a.device_timeout,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"server: {model_id} on the {a.backend} backend (context {engine.context}, device "
        f"timeout {engine.device_timeout:g} s); listening on http://{shown}:{port}",
        file=sys.stderr,
        flush=True,
    )
    server = make_uvicorn(create_app(engine), a.log_level)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the
    # handler installed before it: both end here as a normal stop
    prev_term = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, prev_term)
        engine.close()
        sock.close()
    print("server: stopped", file=sys.stderr)
    return 0


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop


def main(argv=None) -> int:
    return run_main(serve, argv)
