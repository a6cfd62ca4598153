"""Token-streaming CLI: ``python -m host [options]`` (``make run ARGS="..."``).

Flags follow llama.cpp / llama2.c::

    -m, --model PATH     checkpoint directory (config.json + safetensors + tokenizer.json)
                         or GGUF file (host.gguf); default: models/default in the repository
    -p, --prompt TEXT    prompt (default "ROMEO:"); echoed, then the generated text
    -n, --n-predict N    tokens to generate (default 200; 0 = only run the prompt)
    --temp T             sampling temperature (default 0.8; 0 = greedy)
    --top-k K            keep the K most likely tokens (default 40; 0 = off)
    --top-p P            nucleus sampling, P in (0, 1] (default 0.95; 1 = off)
    -s, --seed S         RNG seed (default: random, printed in the summary); same seed,
                         same model and flags => same text
    --mode MODE          integer (default: the accelerator datapath, run as a command
                         stream on the chosen backend) or reference (float, as
                         transformers; golden models only, no device)
    --backend NAME       device that executes the command stream: sim (the Verilator-
                         compiled accelerator RTL, default; built on first use, a few
                         minutes), golden (the golden models; the default with
                         --mode reference) or board (a real accelerator behind its
                         register map, host.backends.board)
    --transport NAME     with --backend board: pynq (a KV260 running PYNQ, the default)
                         or verilator (the AXI top of the bitstream, simulated in-process:
                         the same driver without a board)
    --clock-mhz F        modeled accelerator clock (default 250)
    --bandwidth-gbs F    modeled memory bandwidth (default 17.1, KV260-class DDR4); the sim
                         backend's DRAM model serves bandwidth / clock bytes per cycle
    --act-adc BITS       the FFN activation through the ACT engine's ramp ADC at BITS bits
                         (relu2: ReLU^2 by the NL-ADC; silu: sigma by the NL-ADC);
                         --act-adc-variant nl|linear (relu2: linear ADC + digital square),
                         --act-adc-device ideal|rram (a sampled device per layer),
                         --act-adc-seed S, --act-adc-calibrate (bias-cell calibration);
                         the summary names the setting
    --sparse             exact activation sparsity (ReLU^2 models): the projections read only
                         the weights of non-zero activation groups (TLMM_SPARSE), up_proj
                         only the row blocks whose ReLU(gate) is non-zero; the same tokens,
                         fewer bytes
    --ignore-eos         do not stop at the end-of-sequence token: it is never sampled
                         (llama.cpp's flag)
    --remote URL         stream from a token server (``python -m host serve``, see
                         ``host.remote``) instead of a local device: same sampling flags,
                         same text for the same seed; the server chooses model and backend

``python -m host serve ...`` starts the token server (``host.server``);
``python -m host convert SRC DST`` converts an HF checkpoint directory <-> a GGUF file
(``host.convert``).

Generated tokens are written to stdout as they are produced (flushed one by one; a
character split over several tokens, as byte-level BPE does, is written once it is whole).
Generation stops early at an end-of-sequence token of the tokenizer (``host.tokenizer``);
the summary says so. The summary goes to stderr: prompt tokens, generated tokens, time to
first token, prefill and decode tokens/s (wall clock), and for the sim backend the
accelerator cycles it counted: cycles per decoded token and the modeled tokens/s at the
stated clock and bandwidth. When
generation fills the context window the window slides (see ``host.generate``): the last
context/2 tokens are re-prefilled and decoding continues.

Bad values (unknown backend/mode, negative -n, temp < 0, top-p outside (0, 1], an empty
prompt or one longer than the context, characters outside the vocabulary, a missing or
malformed model directory or GGUF file, a tokenizer whose vocabulary is not the model's)
print one line ``error: ...`` to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# Small matmuls: single-threaded BLAS is faster than worker threads (see host/eval.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from golden.model import MODES  # noqa: E402
from host.backends import BACKENDS  # noqa: E402
from host.data import DEFAULT_MODEL  # noqa: E402
from host.usage import Parser as _Parser  # noqa: E402
from host.usage import UsageError as _UsageError
from host.usage import flag_errors, run_main

DEFAULT_PROMPT = "ROMEO:"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m host",
        description="Stream tokens from a ternary BitNet model.",
        epilog="python -m host convert SRC DST: checkpoint directory <-> GGUF file "
        "(python -m host convert --help)",
    )
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help="checkpoint directory or GGUF file")
    p.add_argument("-p", "--prompt", default=DEFAULT_PROMPT, help="prompt text")
    p.add_argument("-n", "--n-predict", type=int, default=200, help="tokens to generate")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=40, help="top-k (0 = off)")
    p.add_argument("--top-p", type=float, default=0.95, help="top-p in (0, 1] (1 = off)")
    p.add_argument("-s", "--seed", type=int, default=None, help="RNG seed (default: random)")
    p.add_argument("--mode", choices=MODES, default="integer", help="golden forward mode")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="device backend (default: sim; golden with --mode reference)",
    )
    from host.runtime import add_design_point_args

    add_design_point_args(p)
    from host.runtime import add_transport_arg

    add_transport_arg(p)
    from host.runtime import add_act_adc_args

    add_act_adc_args(p)
    p.add_argument(
        "--sparse",
        action="store_true",
        help="exact activation sparsity (ReLU^2 models; DESIGN §9): skip the weight "
        "beats of all-zero activation groups (TLMM_SPARSE) and of wholly masked up_proj "
        "row blocks; bit-identical tokens",
    )
    p.add_argument(
        "--ignore-eos",
        action="store_true",
        help="never sample the end-of-sequence token (do not stop at it)",
    )
    p.add_argument(
        "--remote",
        metavar="URL",
        default=None,
        help="stream from a token server (python -m host serve) at URL",
    )
    return p


def _check_args(a) -> None:
    if a.n_predict < 0:
        raise _UsageError(f"-n/--n-predict: expected >= 0, got {a.n_predict}")
    if not (math.isfinite(a.temp) and a.temp >= 0):
        raise _UsageError(f"--temp: expected a finite value >= 0, got {a.temp}")
    if a.top_k < 0:
        raise _UsageError(f"--top-k: expected >= 0, got {a.top_k}")
    if not (0 < a.top_p <= 1):
        raise _UsageError(f"--top-p: expected a value in (0, 1], got {a.top_p}")
    if a.seed is not None and a.seed < 0:
        raise _UsageError(f"--seed: expected >= 0, got {a.seed}")
    from host.runtime import design_point_from_args

    try:
        a.dp = design_point_from_args(a)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    if a.backend is None:
        a.backend = "golden" if a.mode == "reference" else "sim"
    if a.mode == "reference" and a.backend != "golden":
        raise _UsageError(
            f"--backend {a.backend}: the accelerator runs the integer datapath "
            "only; use --mode integer"
        )
    from host.runtime import act_adc_from_args, transport_opts

    try:
        a.act_adc_setting = act_adc_from_args(a)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    if a.act_adc_setting is not None and a.mode == "reference":
        raise _UsageError("--act-adc: the ACT engine's ADC runs in --mode integer only")

    try:
        a.device_opts = transport_opts(a)
    except ValueError as e:
        raise _UsageError(str(e)) from None


def run(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.remote is not None:
        from host.remote import run_remote

        return run_remote(a, parser)
    _check_args(a)
    from host.modelfile import open_model

    # config and tokenizer first: bad prompts are reported before the weights load
    with flag_errors("-m/--model"):
        source = open_model(a.model)
    from host.generate import encode_prompt

    try:
        prompt_ids = encode_prompt(
            source.tokenizer, a.prompt, source.config.max_position_embeddings
        )
    except ValueError as e:
        raise _UsageError(f"-p/--prompt: {e}") from None

    from golden.model import GoldenModel
    from host.completion import complete, summary_lines
    from host.device import DeviceError
    from host.ffn_order import calibrate_on_corpus
    from host.generate import Sampler
    from host.runtime import backend_kwargs, make_runtime

    with flag_errors("-m/--model"):
        model = source.load()
    seed = a.seed if a.seed is not None else int(time.time_ns() % (2**31))
    sampler = Sampler(temp=a.temp, top_k=a.top_k, top_p=a.top_p, seed=seed)
    if a.sparse and (a.mode == "reference" or model.config.hidden_act != "relu2"):
        raise _UsageError(
            "--sparse: exact sparsity needs --mode integer and a ReLU^2 model "
            f"(this one is {model.config.hidden_act}, mode {a.mode})"
        )
    if a.mode == "reference":
        gm = GoldenModel(model, mode="reference")
    else:
        try:
            if a.act_adc_setting is not None:  # the model's activation decides the kind
                a.act_adc_setting.table(model.config.hidden_act, 0)
        except ValueError as e:
            raise _UsageError(f"--act-adc: {e}") from None
        try:
            gm = make_runtime(
                model,
                a.backend,
                act_adc=a.act_adc_setting,
                sparse=a.sparse,
                ffn_order=calibrate_on_corpus(model, source.tokenizer) if a.sparse else None,
                **backend_kwargs(a.backend, a.dp, a.device_opts),
            )
        except (DeviceError, OSError, RuntimeError, ValueError) as e:
            raise _UsageError(f"--backend {a.backend}: {e}") from None

    out = sys.stdout
    out.write(a.prompt)
    out.flush()

    def emit(piece: str) -> None:
        out.write(piece)
        out.flush()

    try:
        c = complete(
            gm,
            source.tokenizer,
            prompt_ids,
            a.n_predict,
            sampler,
            ignore_eos=a.ignore_eos,
            on_text=emit,
        )
    except DeviceError as e:
        raise _UsageError(f"--backend {a.backend}: {e}") from None
    out.write("\n")
    out.flush()
    t = c.timings(
        backend=a.backend,
        mode=a.mode,
        seed=seed,
        dp=a.dp,
    )
    if a.act_adc_setting is not None:
        t["act_adc"] = a.act_adc_setting.describe()
    if a.sparse:
        t["sparse"] = (
            "exact (projections on TLMM_SPARSE, up_proj's masked blocks skipped)"
            if gm.sparse_engine
            else "exact, up_proj's masked blocks skipped only (this top has no TLMM_SPARSE "
            "engine: --design-point kv260-sparse)"
        )
    for line in summary_lines(t):  # the same lines as python -m host --remote
        print(line, file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["serve"]:
        from host.server import main as serve_main

        return serve_main(args[1:])
    return run_main(run, args)
