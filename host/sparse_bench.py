"""Exact activation sparsity on the shipped model: ``python -m host.sparse_bench`` (part of
``make bench``; DESIGN §9).

Runs the same held-out text twice through one backend -- dense (every TLMM weight beat
read) and exact-sparse (``Runtime(sparse=True)``: the projections as TLMM_SPARSE, which
reads only the weight beats of live activation groups, and up_proj skipping the Q-row
blocks whose ReLU(gate) is all zero; FFN channels ordered by ``host.ffn_order`` unless
``--no-order``) -- and prints DRAM bytes read and RTL cycles per decoded
token, per projection and in total, and whether the two runs' logits are bit-identical.
Every decode step runs one command at a time (the device's counters around each), so
each figure is attributed to its command; the cycles are the sum of the commands' own
(each started from an idle device, so the small overlap of a stream is not counted).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

from golden import isa
from golden.isa import Opcode
from host.data import DEFAULT_MODEL

BACKENDS = ("golden", "sim")


def _label(rt, c) -> str:
    """A command's row in the table: the projection for TLMM / TLMM_SPARSE, else the op."""
    if c.op in (Opcode.TLMM, Opcode.TLMM_SPARSE):
        names = {r.addr: r.name for r in rt.address_map.regions.values()}
        return names[c.weights].split(".", 1)[1]
    return c.op.name


def decode_step(rt, token: int) -> tuple[np.ndarray, list]:
    """One decoded token, command by command: its logits and [(label, bytes read,
    cycles)] per command (cycles None on the golden backend)."""
    pos = rt.cache.length
    rt.device.write(rt.address_map.addr("tokens"), np.array([token], np.uint32))
    per = []
    for c in rt.step_commands(pos, 1, 1)[:-1]:
        before = rt.device.counters()
        rt.run_stream([c, isa.command(Opcode.END)])
        after = rt.device.counters()
        cyc = None if after.get("cycles") is None else after["cycles"] - before["cycles"]
        per.append((_label(rt, c), after["bytes_read"] - before["bytes_read"], cyc))
    rt.cache.length = pos + 1
    return rt._read_logits(1), per


def compare(
    model, backend: str = "golden", prompt=(), n_decode: int = 8, ffn_order=None, **device_kw
) -> dict:
    """Dense vs exact-sparse on ``backend``: greedy decode of ``n_decode`` tokens after
    ``prompt``; per mode the logits, and bytes / cycles per decoded token by label. The
    sparse run takes the FFN channel order ``ffn_order`` (``host.ffn_order``), if any."""
    from host.runtime import make_runtime

    if len(prompt) < 1:
        raise ValueError("prompt: expected at least one token")
    out = {"host_ops": {}}
    for sparse in (False, True):
        order = ffn_order if sparse else None
        rt = make_runtime(model, backend, sparse=sparse, ffn_order=order, **device_kw)
        try:
            logits = [rt.forward(np.asarray(prompt))[-1:]]
            by = defaultdict(lambda: [0, 0])
            for _ in range(n_decode):
                lg, per = decode_step(rt, int(np.argmax(logits[-1][-1])))
                logits.append(lg)
                for label, nbytes, cyc in per:
                    by[label][0] += nbytes / n_decode
                    by[label][1] += (cyc or 0) / n_decode
            out["host_ops"].update(getattr(rt.device, "stats", {}).get("host_ops", {}))
        finally:
            rt.close()
        out["sparse" if sparse else "dense"] = {
            "logits": np.concatenate(logits),
            "by": dict(by),
            "bytes": sum(b for b, _ in by.values()),
            "cycles": sum(c for _, c in by.values()) if backend != "golden" else None,
        }
    out["identical"] = bool(np.array_equal(out["dense"]["logits"], out["sparse"]["logits"]))
    return out


def report(r: dict, backend: str) -> str:
    d, s = r["dense"], r["sparse"]
    cyc = d["cycles"] is not None
    lines = [
        f"{'per decoded token':<20} {'dense B':>10} {'sparse B':>10} {'ratio':>6}"
        + (f" {'dense cyc':>10} {'sparse cyc':>10}" if cyc else "")
    ]
    for label in d["by"]:
        (db, dc), (sb, sc) = d["by"][label], s["by"].get(label, (0, 0))
        lines.append(
            f"{label:<20} {db:>10.0f} {sb:>10.0f} {db / max(sb, 1):>5.2f}x"
            + (f" {dc:>10.0f} {sc:>10.0f}" if cyc else "")
        )
    lines.append(
        f"{'total':<20} {d['bytes']:>10.0f} {s['bytes']:>10.0f} "
        f"{d['bytes'] / s['bytes']:>5.2f}x"
        + (f" {d['cycles']:>10.0f} {s['cycles']:>10.0f}" if cyc else "")
    )
    lines.append(
        f"logits dense vs sparse on {backend}: "
        + ("bit-identical" if r["identical"] else "DIFFERENT")
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m host.sparse_bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL)
    ap.add_argument("--backend", choices=BACKENDS, default="sim")
    ap.add_argument("--prompt-chars", type=int, default=48, help="held-out text as the prompt")
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument(
        "--design-point",
        default="kv260-sparse",
        help="the sim backend's top (default kv260-sparse: the TLMM_SPARSE engine built; on "
        "kv260 only up_proj's masked blocks are skipped)",
    )
    ap.add_argument(
        "--no-order",
        action="store_true",
        help="keep the model's FFN channel order (no host.ffn_order calibration)",
    )
    a = ap.parse_args(argv)
    if a.prompt_chars < 1 or a.decode_tokens < 1:
        ap.error("--prompt-chars and --decode-tokens: expected >= 1")

    from golden.config import design_point
    from host.checkpoint import load
    from host.data import heldout_text
    from host.ffn_order import calibrate_on_corpus
    from host.tokenizer import load_tokenizer

    model = load(a.model)
    tok = load_tokenizer(a.model)
    if model.config.hidden_act != "relu2":
        ap.error(
            f"--model: exact sparsity needs a ReLU^2 model, {a.model} is {model.config.hidden_act}"
        )
    ids = tok.encode(heldout_text(chars=a.prompt_chars))
    kw = {"dp": design_point(a.design_point)} if a.backend == "sim" else {}
    print(
        f"exact sparsity, model {a.model}: {len(ids)}-token held-out prompt, "
        f"{a.decode_tokens} greedy decode steps on {a.backend}",
        flush=True,
    )
    order = None if a.no_order else calibrate_on_corpus(model, tok)
    r = compare(model, a.backend, ids, a.decode_tokens, order, **kw)
    print(report(r, a.backend))
    return 0 if r["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
