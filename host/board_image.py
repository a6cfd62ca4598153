"""What goes onto the board: ``make board-image BOARD=kv260`` and its check on the board.

    python -m host.board_image build --board kv260 [-m MODEL] [--out DIR]
    python -m host.board_image check DIR [--transport pynq|verilator]

``build`` writes ``build/<board>/board-image/`` (``--out``) and a ``.tar.gz`` of it:

``overlay/``     ``ternary_accel.bit`` + ``.hwh`` from ``build/<board>/`` when the Vivado
                 flow has made them (``make bitstream``); else ``MISSING.txt`` says so
``model/``       the model as ``python -m host -m`` opens it (checkpoint directory)
``image/``       the compiled model image: ``image.bin`` (the constant regions -- packed
                 ternary weights, tables, norms -- exactly as the runtime lays them into
                 device memory, from the first constant to the last) and ``image.json``
                 (design point and ID register value, every region's offset, size and
                 SHA-256, and a reference completion: prompt, seed, tokens and the text the
                 golden backend gives)
``src/``         the package source (``git archive`` of HEAD), installed on the board
``setup.sh``     installs it into Kria-PYNQ's virtual environment
``run.sh``       the token server on the board's accelerator
``check.sh``     ``python -m host.board_image check .`` on the board
``README.md``    these steps

``check`` compiles the bundled model for the board backend (the transport named; the
bundle's bitstream for pynq), compares every constant region of the device memory with the
bundled image, byte for byte, and runs the reference completion: PASS when the image and
the text both match (exit 0), FAIL with the first difference otherwise (exit 1). With
``--transport verilator`` it runs here, on the simulated AXI top.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK_PROMPT = "ROMEO:"
CHECK_SEED = 1
CHECK_TOKENS = 16
IMAGE_FILE, INDEX_FILE = "image.bin", "image.json"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def const_regions(rt) -> list:
    return [r for r in rt.address_map.regions.values() if r.kind == "const"]


def image_of(rt) -> tuple[bytes, list[dict]]:
    """The constant regions of a runtime's device memory: (bytes from the first to the
    end of the last, [{name, offset (from the first), nbytes, fmt, sha256}])."""
    regs = const_regions(rt)
    lo = min(r.addr for r in regs)
    hi = max(r.addr + r.nbytes for r in regs)
    blob = rt.device.read(lo, hi - lo)
    index = [
        {
            "name": r.name,
            "offset": r.addr - lo,
            "nbytes": r.nbytes,
            "fmt": r.fmt,
            "sha256": _sha(blob[r.addr - lo : r.addr - lo + r.nbytes]),
        }
        for r in regs
    ]
    return blob, index


def reference_text(rt, tokenizer, prompt, n, seed) -> str:
    from host.generate import Sampler, generate

    rt.reset()
    # the CLI's default sampling (temperature 0.8, top-k 40, top-p 0.95)
    ids, _ = generate(rt, tokenizer.encode(prompt), n, Sampler(0.8, 40, 0.95, seed))
    return tokenizer.decode(ids)


def _git_archive(dest: Path) -> str:
    try:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar.gz", "-o", str(dest), "HEAD"],
            check=True,
            capture_output=True,
        )
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev
    except (OSError, subprocess.CalledProcessError) as e:
        raise RuntimeError(f"git archive of the source failed: {e}") from None


SETUP_SH = r"""#!/bin/bash
# Install ternary-accel into Kria-PYNQ's virtual environment (run on the KV260, as root:
#   sudo bash setup.sh). Needs: the KV260 Ubuntu image with Kria-PYNQ installed
# (github.com/Xilinx/Kria-PYNQ: sudo bash install.sh -b KV260) and network access for pip.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
venv=/usr/local/share/pynq-venv
if [ ! -f /etc/profile.d/pynq_venv.sh ] || [ ! -d "$venv" ]; then
    echo "error: Kria-PYNQ is not installed (no $venv): install it first" >&2
    exit 1
fi
source /etc/profile.d/pynq_venv.sh
python3 -c "import pynq" || { echo "error: pynq does not import in $venv" >&2; exit 1; }
ver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
flags=""
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "note: ternary-accel declares Python >= 3.11; Kria-PYNQ's venv has $ver." >&2
    if [ "${TERNARY_IGNORE_PYTHON:-0}" != 1 ]; then
        echo "error: rerun with TERNARY_IGNORE_PYTHON=1 to install anyway (untested on $ver)" >&2
        exit 1
    fi
    flags="--ignore-requires-python"
fi
rm -rf "$here/src/tree" && mkdir -p "$here/src/tree"
tar -xzf "$here/src/ternary-accel-src.tar.gz" -C "$here/src/tree"
# pynq is already in the venv (the [board] extra names it; pip keeps the installed one)
python3 -m pip install $flags "$here/src/tree[board]"
python3 -c "import host.backends.board_pynq" && echo "ternary-accel installed in $venv"
"""

RUN_SH = r"""#!/bin/bash
# The token server on the KV260's accelerator (as root: the PL and CMA need it):
#   sudo bash run.sh [--port 8080] [more python -m host serve flags]
here="$(cd "$(dirname "$0")" && pwd)"
source /etc/profile.d/pynq_venv.sh
exec python3 -m host serve --backend board --transport pynq -m "$here/model" \
    --design-point {dp} --device-opt bitstream="$here/overlay/ternary_accel.bit" \
    --host 0.0.0.0 "$@"
"""

CHECK_SH = r"""#!/bin/bash
# Check the board against the bundle (as root): the device memory image and the reference
# completion must equal what was computed when the bundle was made.
here="$(cd "$(dirname "$0")" && pwd)"
source /etc/profile.d/pynq_venv.sh
exec python3 -m host.board_image check "$here" --transport pynq "$@"
"""


def build(board: str, model: str | None = None, out: Path | None = None) -> Path:
    """Write the bundle (see the module docstring); returns its directory."""
    from golden.config import design_point
    from host.backends.board import expected_id
    from host.data import DEFAULT_MODEL
    from host.modelfile import open_model
    from host.runtime import backend_kwargs, make_runtime
    from hw.vivado import BOARDS, OUTPUT, bitstream_path, out_dir

    if board not in BOARDS:
        raise ValueError(f"BOARD: expected one of {sorted(BOARDS)}, got {board!r}")
    dp = design_point(board)
    src = open_model(model or DEFAULT_MODEL)
    m = src.load()
    out = Path(out) if out is not None else out_dir(board) / "board-image"
    if out.exists():
        shutil.rmtree(out)
    for d in ("overlay", "model", "image", "src"):
        (out / d).mkdir(parents=True)
    bit = bitstream_path(board)
    hwh = bit.with_suffix(".hwh")
    if bit.is_file() and hwh.is_file():
        shutil.copy2(bit, out / "overlay" / bit.name)
        shutil.copy2(hwh, out / "overlay" / hwh.name)
        overlay = "bundled"
    else:
        (out / "overlay" / "MISSING.txt").write_text(
            f"No {OUTPUT}.bit/.hwh in {bit.parent}: the bitstream needs Vivado "
            f"(make bitstream BOARD={board} on a machine with Vivado, then make board-image "
            f"again, or copy {OUTPUT}.bit and {OUTPUT}.hwh here).\n"
        )
        overlay = "missing"
    # the model as a checkpoint directory (GGUF sources are copied as their file)
    mpath = Path(model or DEFAULT_MODEL)
    if mpath.is_dir():
        for f in sorted(mpath.iterdir()):
            if f.is_file() and f.suffix in (".json", ".safetensors", ".model", ".txt"):
                shutil.copy2(f, out / "model" / f.name)
    else:
        shutil.copy2(mpath, out / "model" / mpath.name)
    # the compiled image, on the golden backend (the same bytes every backend holds)
    rt = make_runtime(m, "golden", **backend_kwargs("golden", dp))
    blob, index = image_of(rt)
    (out / "image" / IMAGE_FILE).write_bytes(blob)
    text = reference_text(rt, src.tokenizer, CHECK_PROMPT, CHECK_TOKENS, CHECK_SEED)
    meta = {
        "board": board,
        "design_point": dp.name,
        "id": f"0x{expected_id(dp):08x}",
        "model": src.name,
        "image_sha256": _sha(blob),
        "image_bytes": len(blob),
        "regions": index,
        "check": {
            "prompt": CHECK_PROMPT,
            "seed": CHECK_SEED,
            "tokens": CHECK_TOKENS,
            "text": text,
        },
        "overlay": overlay,
    }
    (out / "image" / INDEX_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    rev = _git_archive(out / "src" / "ternary-accel-src.tar.gz")
    for name, body in (
        ("setup.sh", SETUP_SH),
        ("run.sh", RUN_SH.replace("{dp}", dp.name)),
        ("check.sh", CHECK_SH),
    ):
        (out / name).write_text(body)
        (out / name).chmod(0o755)
    (out / "README.md").write_text(_readme(board, dp.name, overlay, rev, meta))
    tar = out.parent / f"ternary-accel-{board}.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(out, arcname=f"ternary-accel-{board}")
    return out


def _readme(board, dp, overlay, rev, meta) -> str:
    have = (
        "overlay/ holds the bitstream"
        if overlay == "bundled"
        else "overlay/ has NO bitstream yet (see overlay/MISSING.txt)"
    )
    return f"""# ternary-accel for the {board.upper()} (source {rev}, design point {dp})

{have}; ID register expected: {meta["id"]}.

1. Copy this directory to the board (`scp -r` or the tarball beside it).
2. `sudo bash setup.sh` -- installs the package into Kria-PYNQ's venv.
3. `sudo bash check.sh` -- loads the bitstream, compares the device memory image with
   image/image.bin and runs the reference completion ({meta["check"]["tokens"]} tokens of
   "{meta["check"]["prompt"]}", seed {meta["check"]["seed"]}); prints PASS or the first
   difference.
4. `sudo bash run.sh --port 8080` -- the token server; from another machine:
   `python -m host --remote http://<board>:8080 -p "ROMEO:"`.
"""


def check(bundle: Path, transport: str = "pynq") -> tuple[bool, list[str]]:
    """Compare a board (``transport``) with a bundle; (passed, report lines)."""
    from golden.config import design_point
    from host.modelfile import open_model
    from host.runtime import backend_kwargs, make_runtime

    bundle = Path(bundle)
    meta = json.loads((bundle / "image" / INDEX_FILE).read_text())
    blob = (bundle / "image" / IMAGE_FILE).read_bytes()
    dp = design_point(meta["design_point"])
    opts: dict = {"transport": transport}
    if transport == "pynq":
        opts["bitstream"] = str(bundle / "overlay" / "ternary_accel.bit")
    models = [p for p in (bundle / "model").iterdir() if p.suffix == ".gguf"]
    src = open_model(models[0] if models else bundle / "model")
    rt = make_runtime(src.load(), "board", **backend_kwargs("board", dp, opts))
    lines, ok = [], True
    try:
        got, index = image_of(rt)
        if _sha(got) != meta["image_sha256"] or got != blob:
            ok = False
            for want, have in zip(meta["regions"], index, strict=False):
                if want["name"] != have["name"] or want["sha256"] != have["sha256"]:
                    lines.append(
                        f"FAIL image: region {want['name']} differs from the bundle's "
                        f"(compiled here: {have['name']}, {have['nbytes']} bytes)"
                    )
                    break
            else:
                lines.append("FAIL image: the region layout differs from the bundle's")
        else:
            lines.append(f"image: {len(index)} regions, {len(got)} bytes equal the bundle's")
        c = meta["check"]
        text = reference_text(rt, src.tokenizer, c["prompt"], c["tokens"], c["seed"])
        if text == c["text"]:
            lines.append(f"completion: {c['tokens']} tokens equal the bundle's")
        else:
            ok = False
            k = next(
                (i for i, (a, b) in enumerate(zip(text, c["text"], strict=False)) if a != b),
                min(len(text), len(c["text"])),
            )
            lines.append(f"FAIL completion: differs at character {k}: {text!r} vs {c['text']!r}")
        cyc = rt.counters().get("cycles")
        if cyc:
            lines.append(f"accelerator: {cyc} cycles for the check's command streams")
    finally:
        rt.close()
    lines.append("PASS" if ok else "FAIL")
    return ok, lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m host.board_image", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the bundle for a board")
    b.add_argument("--board", default="kv260")
    b.add_argument("-m", "--model", default=None, help="checkpoint directory (default: shipped)")
    b.add_argument("--out", type=Path, default=None)
    c = sub.add_parser("check", help="compare a board with a bundle")
    c.add_argument("bundle", type=Path)
    c.add_argument("--transport", default="pynq", choices=("pynq", "verilator"))
    a = ap.parse_args(argv)
    try:
        if a.cmd == "build":
            out = build(a.board, a.model, a.out)
            meta = json.loads((out / "image" / INDEX_FILE).read_text())
            rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
            print(
                f"wrote {rel}/ and {rel.parent}/ternary-accel-{a.board}.tar.gz: model image "
                f"{meta['image_bytes']} bytes, bitstream {meta['overlay']}"
                + ("" if meta["overlay"] == "bundled" else " (make bitstream needs Vivado)")
            )
            return 0
        ok, lines = check(a.bundle, a.transport)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
