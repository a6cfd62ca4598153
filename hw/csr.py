"""Control/status registers of the accelerator: the ONE register map.

``REGISTERS`` below is the single definition: the ``CSR`` offsets enum, the ``CSRBlock``
decode, the AXI4-Lite slave of the SoC shell (``hw/shell.py``: which offsets are mapped),
the C header ``docs/csr/accel_csr.h``, the JSON file ``docs/csr/accel_csr.json`` and the
register table in the README are all made from it. ``python -m hw.csr`` rewrites the
three exports; ``tests/test_csr_map.py`` fails when a committed one differs from what the
definition gives.

32-bit registers at byte offsets from the register block base. Access: ``RW`` read and
write, ``RO`` read only (writes are ignored), ``WO`` write only (reads 0), ``W1C`` read,
write 1 to clear.

Bus of the core (``csr_*`` ports of ``hw.accel.Accel``): ``addr`` (byte offset),
``w_en`` + ``w_data`` (written at the clock edge), ``r_data`` = the register at ``addr``
(combinational). The shell reaches the same registers through AXI4-Lite (``s_axi_*``).

Addresses: every address inside a command (and STREAM_ADDR_LO, MEM_LO, MEM_HI) is a
32-bit *device* address. The bus address the AXI shell puts on its master ports is
``STREAM_ADDR_HI << 32 | device address``: STREAM_ADDR_HI selects the 4 GiB-aligned
segment of the (49-bit) bus address space that holds the stream and every tensor it
names; {STREAM_ADDR_HI, STREAM_ADDR_LO} is the 64-bit bus address of the stream. The core
itself (and the sim backend, whose memory starts at 0) ignores STREAM_ADDR_HI.

Design-point ID: ``ID`` reads ``design_id(params)``, the low 32 bits of the SHA-256 of the
build parameters (``Accel.id_params``, plus the shell's in ``AccelShell``) as canonical
JSON, so a driver can refuse a bitstream built for another design point.
"""

from __future__ import annotations

import enum as _pyenum
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden import isa
from golden.isa import ErrorCode

CSR_ADDR_BITS = 8
MAP_VERSION = (1, 0)  # (major, minor) of this register map: VERSION[15:8], [7:0]
VERSION_MAGIC = 0xA7  # VERSION[31:24]: identifies this accelerator family


@dataclass(frozen=True)
class Field:
    name: str
    lsb: int
    width: int
    doc: str


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: str  # RW | RO | WO | W1C
    doc: str
    fields: tuple[Field, ...] = field(default_factory=tuple)


def _f(name, lsb, width, doc):
    return Field(name, lsb, width, doc)


REGISTERS: tuple[Register, ...] = (
    Register("CTRL", 0x00, "WO", "control pulses (one write = one action)", (
        _f("START", 0, 1, "start the stream at STREAM_ADDR (N_CMDS commands)"),
        _f("RESET", 1, 1, "soft reset: clears status, counters and IRQ_STATUS; a running stream "
                          "is aborted (its engine reset, outstanding memory transfers drained) "
                          "and the top is idle again"),
        _f("RESUME", 2, 1, "continue after a host-executed command (HOST_OP = 1)"),
        _f("HOST_ERROR", 3, 1, "end the stream with error CODE at PC (HOST_OP = 1)"),
        _f("CODE", 8, 8, "the ErrorCode of HOST_ERROR"),
    )),
    Register("STATUS", 0x04, "RO", "state of the last stream", (
        _f("BUSY", 0, 1, "a stream is running"),
        _f("DONE", 1, 1, "the last stream ended with END"),
        _f("ERROR", 8, 8, "ErrorCode of the last stream (0: none); ERR_OP names its command"),
    )),
    Register("STREAM_ADDR_LO", 0x08, "RW",
             "device address of the command stream (64-byte aligned); bits [31:0] of its "
             "64-bit bus address"),
    Register("N_CMDS", 0x0C, "RW", "commands in the stream (it must end with END)"),
    Register("ERR_OP", 0x10, "RO", "index of the command that failed"),
    Register("OPS_DONE", 0x14, "RO", "commands executed (END included)"),
    Register("CYCLES_LO", 0x18, "RO", "cycles while busy, bits [31:0]"),
    Register("CYCLES_HI", 0x1C, "RO", "cycles while busy, bits [63:32]"),
    Register("BYTES_RD_LO", 0x20, "RO", "DMA bytes read, bits [31:0]"),
    Register("BYTES_RD_HI", 0x24, "RO", "DMA bytes read, bits [63:32]"),
    Register("BYTES_WR_LO", 0x28, "RO", "DMA bytes written, bits [31:0]"),
    Register("BYTES_WR_HI", 0x2C, "RO", "DMA bytes written, bits [63:32]"),
    Register("MEM_LO", 0x30, "RW", "first device address commands may touch"),
    Register("MEM_HI", 0x34, "RW",
             "one past the last: a tensor [a, a+n) must satisfy MEM_LO <= a and a + n <= "
             "MEM_HI, else ADDR_RANGE (0 = the whole 4 GiB)"),
    Register("HOST_OP", 0x38, "RO", "the processor waits for the host", (
        _f("WAIT", 0, 1, "stopped at command PC, a known opcode without an engine in this build: "
                         "the host executes it and writes RESUME or HOST_ERROR"),
    )),
    Register("PC", 0x3C, "RO", "index of the current command of the stream"),
    Register("ID", 0x40, "RO",
             "design-point hash: low 32 bits of SHA-256 of the build parameters as canonical"
             " JSON (hw.csr.design_id)"),
    Register("VERSION", 0x44, "RO", "register-map version", (
        _f("MINOR", 0, 8, "minor version of this map"),
        _f("MAJOR", 8, 8, "major version of this map"),
        _f("MAGIC", 24, 8, f"0x{VERSION_MAGIC:02X}: this accelerator family"),
    )),
    Register("STREAM_ADDR_HI", 0x48, "RW",
             "bits [63:32] of the stream's bus address: the 4 GiB segment of every device "
             "address of the stream (AXI shell; bits above the master ports' address width "
             "must be 0)"),
    Register("IRQ_ENABLE", 0x4C, "RW",
             "interrupt enables (the irq line is OR(IRQ_STATUS & IRQ_ENABLE))", (
        _f("END", 0, 1, "enable IRQ_STATUS.END"),
        _f("HOST", 1, 1, "enable IRQ_STATUS.HOST"),
    )),
    Register("IRQ_STATUS", 0x50, "W1C", "interrupt events (sticky; write 1 to clear)", (
        _f("END", 0, 1, "a stream ended (END, an error, or an abort by RESET)"),
        _f("HOST", 1, 1, "the processor stopped for a host-executed command"),
    )),
)  # fmt: skip

_ACCESS = {"RW", "RO", "WO", "W1C"}


def _check_map(regs) -> None:
    seen = {}
    for r in regs:
        if r.access not in _ACCESS:
            raise ValueError(f"{r.name}: access {r.access!r} not in {sorted(_ACCESS)}")
        if r.offset % 4 or not 0 <= r.offset < (1 << CSR_ADDR_BITS):
            raise ValueError(f"{r.name}: offset 0x{r.offset:x} not a word inside the block")
        if r.offset in seen:
            raise ValueError(f"{r.name}: offset 0x{r.offset:x} also {seen[r.offset]}")
        seen[r.offset] = r.name
        bits = 0
        for f in r.fields:
            mask = ((1 << f.width) - 1) << f.lsb
            if f.lsb + f.width > 32 or bits & mask:
                raise ValueError(f"{r.name}.{f.name}: outside the word or overlapping")
            bits |= mask


_check_map(REGISTERS)
REG = {r.name: r for r in REGISTERS}

# the offsets enum; STREAM_ADDR is an alias of STREAM_ADDR_LO (the 32-bit device address)
CSR = _pyenum.IntEnum(
    "CSR", [(r.name, r.offset) for r in REGISTERS] + [("STREAM_ADDR", REG["STREAM_ADDR_LO"].offset)]
)
CSR.__doc__ = "Register offsets (``REGISTERS``)."
MAPPED_OFFSETS = frozenset(r.offset for r in REGISTERS)


def _fbit(reg: str, name: str) -> int:
    f = next(f for f in REG[reg].fields if f.name == name)
    return f.lsb


CTRL_START = 1 << _fbit("CTRL", "START")
CTRL_RESET = 1 << _fbit("CTRL", "RESET")
CTRL_RESUME = 1 << _fbit("CTRL", "RESUME")
CTRL_HOST_ERROR = 1 << _fbit("CTRL", "HOST_ERROR")
CTRL_CODE_SHIFT = _fbit("CTRL", "CODE")
IRQ_END = 1 << _fbit("IRQ_STATUS", "END")
IRQ_HOST = 1 << _fbit("IRQ_STATUS", "HOST")
VERSION_VALUE = (VERSION_MAGIC << 24) | (MAP_VERSION[0] << 8) | MAP_VERSION[1]

STATUS = data.StructLayout(
    {
        "busy": 1,
        "done": 1,
        "_reserved": 6,
        "error": ErrorCode,
    }
)
assert STATUS["error"].offset == _fbit("STATUS", "ERROR")


def design_id(params: dict) -> int:
    """The ID register's value for build parameters ``params`` (JSON-serialisable)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


class CSRBlock(wiring.Component):
    """Register file: writable configuration out, status/counters in, one read mux.

    Outputs (to the command processor): ``start``, ``soft_reset``, ``resume``,
    ``host_error`` (one-cycle pulses on a CTRL write; ``soft_reset`` is registered: the
    cycle after it), ``host_code``, ``stream_addr``, ``stream_addr_hi``, ``n_cmds``,
    ``mem_lo``, ``mem_hi``, ``irq``. Inputs: ``busy``, ``done``, ``error``, ``err_op``,
    ``ops_done``, ``cycles``, ``bytes_rd``, ``bytes_wr``, ``host_op``, ``pc``, and the
    interrupt events ``ev_end``, ``ev_host`` (one-cycle pulses). ``ident``: the ID
    register's value.
    """

    def __init__(self, ident: int = 0):
        self.ident = int(ident) & 0xFFFF_FFFF
        super().__init__(
            {
                "addr": In(CSR_ADDR_BITS),
                "w_en": In(1),
                "w_data": In(32),
                "r_data": Out(32),
                "start": Out(1),
                "soft_reset": Out(1),
                "resume": Out(1),
                "host_error": Out(1),
                "host_code": Out(8),
                "stream_addr": Out(isa.ADDR_BITS),
                "stream_addr_hi": Out(32),
                "n_cmds": Out(32),
                "mem_lo": Out(isa.ADDR_BITS),
                "mem_hi": Out(isa.ADDR_BITS + 1),
                "busy": In(1),
                "done": In(1),
                "error": In(8),
                "err_op": In(32),
                "ops_done": In(32),
                "cycles": In(64),
                "bytes_rd": In(64),
                "bytes_wr": In(64),
                "host_op": In(1),
                "pc": In(32),
                "ev_end": In(1),
                "ev_host": In(1),
                "irq": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        C = CSR
        ctrl_write = self.w_en & (self.addr == C.CTRL)
        m.d.comb += [
            self.start.eq(ctrl_write & self.w_data[0]),
            self.resume.eq(ctrl_write & self.w_data[2]),
            self.host_error.eq(ctrl_write & self.w_data[3]),
            self.host_code.eq(self.w_data[CTRL_CODE_SHIFT : CTRL_CODE_SHIFT + 8]),
        ]
        # RESET is registered (it acts the cycle after the write): the address decode then
        # does not reach the many registers it clears
        m.d.sync += self.soft_reset.eq(ctrl_write & self.w_data[1])
        irq_en = Signal(2)
        irq_st = Signal(2)
        w1c = Signal(2)
        with m.If(self.w_en):
            with m.Switch(self.addr):
                with m.Case(C.STREAM_ADDR_LO):
                    m.d.sync += self.stream_addr.eq(self.w_data)
                with m.Case(C.STREAM_ADDR_HI):
                    m.d.sync += self.stream_addr_hi.eq(self.w_data)
                with m.Case(C.N_CMDS):
                    m.d.sync += self.n_cmds.eq(self.w_data)
                with m.Case(C.MEM_LO):
                    m.d.sync += self.mem_lo.eq(self.w_data)
                with m.Case(C.MEM_HI):
                    # 0 means the full 4 GiB window (MEM_HI is one bit wider internally)
                    m.d.sync += self.mem_hi.eq(self.w_data | ((self.w_data == 0) << isa.ADDR_BITS))
                with m.Case(C.IRQ_ENABLE):
                    m.d.sync += irq_en.eq(self.w_data[:2])
                with m.Case(C.IRQ_STATUS):
                    m.d.comb += w1c.eq(self.w_data[:2])
        # events set, W1C clears (an event in the cycle of its clear wins), RESET clears
        events = Signal(2)
        m.d.comb += events.eq(self.ev_end | (self.ev_host << 1))
        with m.If(self.soft_reset):
            m.d.sync += irq_st.eq(0)
        with m.Else():
            m.d.sync += irq_st.eq((irq_st & ~w1c) | events)
        irq_q = Signal()  # a registered output (one cycle after the event)
        m.d.sync += irq_q.eq((irq_st & irq_en).any())
        m.d.comb += self.irq.eq(irq_q)

        status = Signal(STATUS)
        m.d.comb += [
            status.busy.eq(self.busy),
            status.done.eq(self.done),
            status.error.eq(self.error),
        ]
        regs = {
            C.STATUS: status.as_value(),
            C.STREAM_ADDR_LO: self.stream_addr,
            C.N_CMDS: self.n_cmds,
            C.ERR_OP: self.err_op,
            C.OPS_DONE: self.ops_done,
            C.CYCLES_LO: self.cycles[:32],
            C.CYCLES_HI: self.cycles[32:],
            C.BYTES_RD_LO: self.bytes_rd[:32],
            C.BYTES_RD_HI: self.bytes_rd[32:],
            C.BYTES_WR_LO: self.bytes_wr[:32],
            C.BYTES_WR_HI: self.bytes_wr[32:],
            C.MEM_LO: self.mem_lo,
            C.MEM_HI: self.mem_hi[:32],
            C.HOST_OP: self.host_op,
            C.PC: self.pc,
            C.ID: self.ident,
            C.VERSION: VERSION_VALUE,
            C.STREAM_ADDR_HI: self.stream_addr_hi,
            C.IRQ_ENABLE: irq_en,
            C.IRQ_STATUS: irq_st,
        }
        assert set(regs) | {C.CTRL} == set(CSR), "every register of the map has a value"
        with m.Switch(self.addr):
            for off, val in regs.items():
                with m.Case(int(off)):
                    m.d.comb += self.r_data.eq(val)
        return m


# ---------------------------------------------------------------------- exports
ROOT = Path(__file__).resolve().parents[1]
EXPORT_DIR = ROOT / "docs" / "csr"
HEADER = EXPORT_DIR / "accel_csr.h"
JSON_FILE = EXPORT_DIR / "accel_csr.json"
README = ROOT / "README.md"
TABLE_BEGIN = "<!-- csr-table: generated by `python -m hw.csr` from hw/csr.py; do not edit -->"
TABLE_END = "<!-- csr-table end -->"
_PREFIX = "TACCEL"


def as_json() -> str:
    doc = {
        "name": "ternary-accel",
        "generated_by": "python -m hw.csr (from hw/csr.py)",
        "version": {
            "major": MAP_VERSION[0],
            "minor": MAP_VERSION[1],
            "magic": VERSION_MAGIC,
            "value": VERSION_VALUE,
        },
        "word_bits": 32,
        "addr_bits": CSR_ADDR_BITS,
        "registers": [
            {
                "name": r.name,
                "offset": r.offset,
                "access": r.access,
                "doc": r.doc,
                "fields": [
                    {"name": f.name, "lsb": f.lsb, "width": f.width, "doc": f.doc} for f in r.fields
                ],
            }
            for r in REGISTERS
        ],
        "error_codes": {e.name: e.value for e in ErrorCode},
        "error_text": {e.name: isa.ERROR_TEXT[e] for e in ErrorCode},
    }
    return json.dumps(doc, indent=1) + "\n"


def as_c_header() -> str:
    P = _PREFIX
    out = [
        "/* Register map of the ternary-accel accelerator (hw/csr.py).",
        " * Generated by `python -m hw.csr`; do not edit. */",
        f"#ifndef {P}_CSR_H",
        f"#define {P}_CSR_H",
        "",
        f"#define {P}_MAP_VERSION_MAJOR {MAP_VERSION[0]}u",
        f"#define {P}_MAP_VERSION_MINOR {MAP_VERSION[1]}u",
        f"#define {P}_VERSION_MAGIC 0x{VERSION_MAGIC:02X}u",
        f"#define {P}_VERSION_VALUE 0x{VERSION_VALUE:08X}u",
        "",
        "/* register byte offsets */",
    ]
    for r in REGISTERS:
        out.append(f"#define {P}_{r.name} 0x{r.offset:02X}u  /* {r.access}: {r.doc} */")
    out += ["", "/* fields: <REG>_<FIELD>_SHIFT, _WIDTH, _MASK (in place) */"]
    for r in REGISTERS:
        for f in r.fields:
            n = f"{P}_{r.name}_{f.name}"
            mask = ((1 << f.width) - 1) << f.lsb
            out += [
                f"#define {n}_SHIFT {f.lsb}u",
                f"#define {n}_WIDTH {f.width}u",
                f"#define {n}_MASK 0x{mask:08X}u",
            ]
    out += ["", "/* STATUS.ERROR / CTRL.CODE values (golden.isa.ErrorCode) */"]
    for e in ErrorCode:
        out.append(f"#define {P}_ERR_{e.name} {e.value}u  /* {isa.ERROR_TEXT[e]} */")
    out += ["", f"#endif /* {P}_CSR_H */", ""]
    return "\n".join(out)


def as_markdown_table() -> str:
    def esc(s):
        return s.replace("|", "\\|")

    lines = ["| offset | register | access | meaning |", "|---|---|---|---|"]
    for r in REGISTERS:
        text = esc(r.doc)
        if r.fields:
            text += "<br>" + "<br>".join(
                f"`[{f.lsb + f.width - 1}:{f.lsb}]` {f.name}: {esc(f.doc)}"
                if f.width > 1
                else f"`[{f.lsb}]` {f.name}: {esc(f.doc)}"
                for f in r.fields
            )
        lines.append(f"| 0x{r.offset:02X} | `{r.name}` | {r.access} | {text} |")
    return "\n".join(lines) + "\n"


def readme_with_table(text: str) -> str:
    """``text`` (the README) with the generated table between the markers."""
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise ValueError("README.md: the csr-table markers are missing")
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return head + TABLE_BEGIN + "\n" + as_markdown_table() + TABLE_END + tail


def exports() -> dict[Path, str]:
    """Every generated file and its text (the README with its table)."""
    return {
        HEADER: as_c_header(),
        JSON_FILE: as_json(),
        README: readme_with_table(README.read_text()),
    }


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m hw.csr",
        description="write the C header, the JSON file and the "
        "README register table from hw/csr.py",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file differs from the definition",
    )
    args = ap.parse_args(argv)
    stale = []
    for path, text in exports().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    for p in stale:
        print(f"{'stale' if args.check else 'wrote'} {p.relative_to(ROOT)}")
    if not stale:
        print("CSR exports up to date")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
