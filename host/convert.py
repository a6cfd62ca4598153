"""``python -m host convert SRC DST``: Hugging Face checkpoint directory <-> GGUF file.

    python -m host convert models/default build/default.gguf [--type tq2_0]
    python -m host convert build/default.gguf build/default_hf [--linear-class autobitlinear]

SRC a checkpoint directory: DST is written as a ``bitnet`` GGUF file (``host.gguf``) with
the projections as ``--type`` tq2_0 (default), tq1_0, i2_s (bitnet.cpp) or f32, and the
tokenizer. SRC a GGUF file: DST is written as a checkpoint directory (``host.checkpoint``,
packed "offline" weights) with ``tokenizer.json`` and the special tokens' config files;
``--linear-class`` auto (default) stores ``weight_scale`` for transformers'
``autobitlinear`` (the scale itself) when every scale is a float32, else for
``bitlinear`` (its reciprocal, as such checkpoints hold it), so that no scale is rounded.
Either way the model reads back to the same ternary codes, scales and float tensors, so
the two give the same logits (``python -m host -m DST`` streams the text of ``-m SRC`` for
the same seed).

Bad input prints one ``error: ...`` line and exits with status 2.
"""

from __future__ import annotations

import os
import sys
from functools import partial

from host.usage import Parser as _Parser
from host.usage import UsageError as _UsageError
from host.usage import run_main


def _linear_class(model) -> str:
    """autobitlinear when every projection scale is a float32 (stored as is), else
    bitlinear (stored as the float32 reciprocal, exact for scales that are reciprocals)."""
    import numpy as np

    scales = [tw.scale for lw in model.weights.layers for tw in lw.proj.values()]
    return "autobitlinear" if all(float(np.float32(s)) == s for s in scales) else "bitlinear"


def run(argv=None) -> int:
    from host.gguf import WRITE_TYPES

    p = _Parser(
        prog="python -m host convert",
        description="Convert a BitNet checkpoint directory to GGUF, or GGUF to a "
        "checkpoint directory.",
    )
    p.add_argument("src", help="checkpoint directory or GGUF file")
    p.add_argument("dst", help="GGUF file (from a directory) or directory (from a GGUF file)")
    p.add_argument(
        "--type",
        choices=WRITE_TYPES,
        default="tq2_0",
        help="GGUF type of the ternary projections (default tq2_0)",
    )
    p.add_argument(
        "--linear-class",
        choices=("auto", "autobitlinear", "bitlinear"),
        default="auto",
        help="transformers linear class of the directory",
    )
    a = p.parse_args(argv)

    from host import checkpoint, gguf
    from host.modelfile import open_model

    try:
        src = open_model(a.src)
        model = src.load()
    except (ValueError, OSError) as e:
        raise _UsageError(f"{e}") from None
    try:
        if src.kind == "hf":
            if os.path.isdir(a.dst):
                raise _UsageError(
                    f"{a.dst}: is a directory; converting a checkpoint directory writes a GGUF file"
                )
            gguf.write(model, src.tokenizer, a.dst, qtype=a.type)
            what = f"GGUF ({gguf.WRITE_ARCH}, projections {a.type.upper()})"
        else:
            if os.path.exists(a.dst) and not os.path.isdir(a.dst):
                raise _UsageError(f"{a.dst}: exists and is not a directory")
            lc = a.linear_class if a.linear_class != "auto" else _linear_class(model)
            checkpoint.save(model, a.dst, fmt="offline", linear_class=lc, tokenizer=src.tokenizer)
            what = f"checkpoint directory (offline, {lc})"
    except (ValueError, OSError) as e:
        raise _UsageError(f"{a.dst}: {e}") from None
    cfg = model.config
    print(
        f"{a.dst}: {what}; {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"vocabulary {cfg.vocab_size}, from {a.src}"
    )
    return 0


# the entry point: run under host.usage's error contract (exit status 2 / 130 / 0)
main = partial(run_main, run)


if __name__ == "__main__":
    sys.exit(main())
