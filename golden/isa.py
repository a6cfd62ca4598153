"""Accelerator command set: the ONE definition of the command encoding, the error codes
and the memory format of every tensor. (The register map is hardware: ``hw/csr.py``.)

It lives in ``golden/`` because it is part of the specification: the command-level
golden executor (``golden/executor.py``) decodes with ``decode`` and executes each
command with the op functions of ``golden/model.py``; the RTL decoder (``hw/accel.py``)
views a 512-bit command register as ``COMMAND`` (``amaranth.lib.data.View``); the host
encoder (``encode``) builds the same bits from the same layout, walking its field
offsets (``encode_const``, via ``COMMAND.const``, is the slow reference it is tested
against) -- there is no second bit map. The command stream of one step mirrors the
integer forward of ``golden/model.py`` op for op (see its module docstring for the
arithmetic).

Command word
============

``COMMAND_BITS`` = 512 bits = 64 bytes, stored little-endian: bit i of the word is bit
(i mod 8) of byte (i div 8) (``encode``/``decode``). Bits [7:0] hold the ``Opcode``;
bits [511:8] hold ``args``, a union with one struct per opcode (fields packed LSB first
in the order listed below; unused high bits are 0). A stream is ``n_cmds`` consecutive
commands at a 64-byte aligned ``stream_addr``; it must end with ``END`` (else
MISSING_END after n_cmds commands, err_op = n_cmds - 1).

Widths: every address is an unsigned ``ADDR_BITS`` (32) *byte* address in accelerator
memory; ``rows`` (tokens T), ``keys`` (S), ``pos``, ``ld``, ``table_rows``, ``dim``,
``k``, ``n``, ``head_dim`` are unsigned 16 bits; ``vocab``/``lm_head n`` 32 bits;
``heads``/``kv_heads`` 8 bits. Constant scales are (``*_mant`` unsigned
``SCALE_MANT_BITS``, ``*_shift`` signed ``SCALE_SHIFT_BITS``), value mant * 2^-shift.

========== ===================================================================================
opcode     semantics (golden/model.py function; shapes per command)
========== ===================================================================================
NOP (1)    nothing.
END (2)    stop; status DONE. (Opcode 0 is reserved: zeroed memory is an unknown opcode.)
EMBED (3)  ``dst[t] = table[tokens[t]]`` (``op_embed``): tokens u32 [rows], table int32
           [vocab, dim] Q15.16, dst int32 [rows, dim]. A token >= vocab: BAD_OPERAND.
NORM_QUANT ``op_norm_quant``: src int32 [rows, dim] Q15.16, gamma int16 [dim] (``gamma_q``),
(4)        dst int8 [rows, dim], dst_scale [rows] scale records. Constants of
           ``golden.rmsnorm.norm_constants(dim)``: eps_term (48 bits), c_mant, c_exp; the
           norm's gamma exponent g_exp (the record's shift is rmsnorm's shift - g_exp).
TLMM (5)   ``op_tlmm``: src int8 [rows, k] (x_q; row m at ``src + m*(k + src_skip)``:
           src_skip > 0 reads a k slice of a wider matrix), weights in the TLMM tile
           format below (n rows, k inputs), dst int32 [rows, n]. masked=1: ``mask`` int32 [rows, n]
           (the gate accumulators of a ReLU^2 FFN) zeroes every output whose mask entry is
           <= 0 (up_proj computes only the rows whose ReLU(gate) is non-zero, DESIGN §9);
           skip=1 (with masked) lets the engine leave unread the weight beats of a row
           block whose Q outputs are all masked (``tlmm_live_blocks``): the result is the
           same, only the bytes read differ.
ROPE_QUANT ``op_rope_quant`` (rope=1) / ``op_v_quant`` (rope=0): src int32 [rows,
(6)        heads*head_dim] (TLMM accumulators), src_scale [rows] (the token scale sx of the
           TLMM input); RoPE rotate-half with the table rows pos..pos+rows-1 (RoPE table
           format below; needs pos + rows <= table_rows), then absmax per (token, head):
           INT8 codes, or with kv=1 (k and v: a KV-cache row) codes in the datapath's KV
           format (KV rows below). Output row of head h, token t at ``dst + (h*ld +
           t)*R``, R = ``kv_row(head_dim, kv)`` bytes; its scale record at ``dst_scale +
           (h*ld + t)*4``, scale = scale_mul(scale_mul(sx, c), scale_of_int(amax)), c =
           (c_mant, c_shift). With ld = capacity and dst = cache + pos*R this appends to
           the KV cache. rope=0 (v): no rotation; table, pos, table_rows are not used.
           kv is a field because the same engine writes q (INT8, QK's query operand)
           and the cache rows; with kv_bits = 8 it changes nothing.
QK (7)     ``op_qk``: q codes/scales of head h, token t at ``q + (h*q_ld + t)*head_dim`` /
           ``q_scale + (h*q_ld + t)*4``; k rows (KV format) / scales of KV head g, key j
           at ``k + (g*kv_ld + j)*R`` / ``k_scale + (g*kv_ld + j)*4``, R = ``kv_row(
           head_dim, 1)``; query head h
           reads KV head h // (heads/kv_heads). dst int16 Q7.8 [heads, rows, keys]; the
           rows queries are the last rows of keys (causal: query t sees keys j <=
           keys - rows + t); masked entries are written as 0.
SOFTMAX    ``op_softmax``: src int16 [heads, rows, keys] -> dst uint16 UQ0.16 [heads, rows,
(8)        keys], causal as QK (masked entries are 0).
PV (9)     ``op_pv``: p uint16 [heads, rows, keys], v codes/scales as k in QK (v, v_scale,
           kv_ld); dst int32 Q15.16 [rows, heads*head_dim] (heads concatenated per token).
RESIDUAL   ``op_residual``: ``dst = sat32(h + requant(acc, sx * c, 16, 32))``: h, acc, dst
(10)       int32 [rows, dim] (dst may equal h), src_scale [rows] = sx, c = (c_mant, c_shift).
ACT (11)   ``op_act``: gate, up int32 [rows, dim] (TLMM accumulators), src_scale [rows] = sx,
           constants (g_mant, g_shift), (u_mant, u_shift), kind ``ActKind`` (RELU2/SILU;
           the NL-ADC kinds RELU2_NLADC, RELU2_LINADC, SILU_NLADC convert the gate through
           the ramp-ADC threshold table int16 [2^adc_bits - 1] at ``adc_table``, written
           by the host: ``golden.nl_adc.ActADC``); dst int32 Q15.16 [rows, dim].
LM_HEAD    INT8 x INT8 matmul: src int8 [rows, k], weights int8 [n, k] (``lm_q``), dst
(12)       int32 [rows, n]. The host dequantizes: logits = acc * sx * lm_row_scale.
TLMM_SPARSE ``op_tlmm`` as TLMM, weights in the sparse (group-major) tile format below:
(13)       the engine reads, per token row, only the weight beats of the activation groups
           that hold a non-zero value (``golden.tlmm.live_groups``): exact, the result is
           TLMM's. For inputs that are mostly zero (a ReLU^2 FFN's down_proj, DESIGN §9).
ADD (14)   ``dst = a + b``: int32 [rows, dim] each, two's-complement (wraps modulo 2^32).
           The runtime splits a projection whose k exceeds the engines' ``max_k`` into
           TLMMs over slices of k (all rows at once, TLMM's src_skip; per row for
           TLMM_SPARSE) and sums their partial accumulators with ADD (exact:
           |sum| <= k * 2^7 fits int32 for every k the TLMM contract allows).
========== ===================================================================================

Memory formats (all little-endian, row-major, rows contiguous: row stride = row length x
element size)
====================================================================================

- int8 / int16 / uint16 / int32 / uint32 tensors: as numpy ``<i1``/``<i2``/``<u2``/``<i4``/
  ``<u4`` in C order.
- Scale record (``SCALE_RECORD``, 4 bytes): mant unsigned 16 bits (bytes 0-1), shift
  signed 16 bits (bytes 2-3); value mant * 2^-shift; (0, 0) is the zero scale. One per
  token for x_q (dst_scale of NORM_QUANT), one per (head, token) for q/k/v. A computed
  shift outside int16 stops the stream with SCALE_RANGE.
- KV rows (``pack_kv`` / ``unpack_kv``; ``ForwardConfig.kv_bits`` of the datapath the
  device implements, one format per build): kv_bits = 8: int8 [head_dim] codes;
  kv_bits = 4: head_dim/2 bytes, code 2i in the low nibble of byte i and code 2i+1 in its
  high nibble, two's complement (codes in [-7, 7]: symmetric absmax), ``kv_row(head_dim,
  1)`` bytes a row. One scale record per (token, KV head) in both formats.
- RoPE table (``rope_table``): int16 [table_rows, head_dim]; row p is
  ``cos_q[p, 0:head_dim/2]`` followed by ``sin_q[p, 0:head_dim/2]``
  (``golden.rope.rope_tables``, Q1.14): one row per position, read in one burst.
- TLMM weights (``pack_tlmm_weights``): the ``wgt`` beats of ``hw.tlmm.TLMM`` in stream
  order, so a DMA feeds the engine directly. With G, T, Q, code_bits of the device's
  ``TLMMConfig``: Kc = ceil(ceil(k/G)/T) chunks, Nb = ceil(n/Q) row blocks; for b in
  0..Nb-1, for c in 0..Kc-1 one beat of T*Q codes, ``code[q*T + t]`` = code
  (``golden.tlmm.join_codes``) of weight row b*Q + q, group c*T + t, packed LSB first
  (code i in beat bits [i*code_bits, (i+1)*code_bits)), zero-filled to
  ``beat_bytes`` = ceil(T*Q*code_bits/8) bytes (70 for G=3, T=28, Q=4, 5-bit codes).
  Groups beyond ceil(k/G) and rows beyond n hold the all-zero weight group's code.
  Size ``tlmm_weight_bytes(n, k, cfg)`` = Nb * Kc * beat_bytes.
- Sparse TLMM weights (``pack_sparse_weights``, TLMM_SPARSE): one beat per (row block,
  activation group), so that a zero group skips whole reads. R = T*Q lanes (as many codes
  as a TLMM beat), Nr = ceil(n/R) row blocks, Kg = ceil(k/G) groups; for r in 0..Nr-1,
  for g in 0..Kg-1 the beat at ``(r*Kg + g) * beat_bytes`` holds ``code[i]`` = code of
  weight row r*R + i, group g, for i < R, packed LSB first as above. Rows beyond n hold
  the all-zero group's code; a beat of the last block is read only as far as its
  ``min(R, n - r*R)`` codes reach (``sparse_beat_read_bytes``). Size
  ``sparse_weight_bytes(n, k, cfg)`` = Nr * Kg * beat_bytes.

Op contracts (``CONTRACTS``)
============================

An opcode's argument checks, in the order they are made, are one row of ``CONTRACTS``: a
tuple of items, each one of

- ``Dims(*rules, when=None)``: BAD_DIM unless every rule holds. Rules are Python
  expressions over the command's fields and ``contract_names`` (``softmax_max_len``,
  ``tlmm_max_k``, ``tlmm_weight_bytes(n, k)``, ``sparse_weight_bytes(n, k)``,
  ``adc_max_bits``, ``adc_kind(kind)``, ``kv_bits``, ``kv_row(head_dim, kv)``), e.g.
  ``"rows <= keys"``;
- ``Tensor(field, dtype, shape, ld=None, offset=None, when=None, out=False)``: the tensor
  at the address in ``field`` -- elements of ``dtype`` (``I8``, ``U8``, ``I16``, ``U16``,
  ``I32``, ``U32``, ``RECORD``) in the C-order ``shape`` (expressions); head-strided with
  ``ld`` (head h, row t at ``(h*ld + t) * row``); ``offset`` elements in. Its address must
  be a multiple of the element size (else ALIGN), and every byte of its extent must lie
  inside the memory window (the golden backend: its allocated memory; else ADDR_RANGE);
- ``Data(name, code, text)``: a data-dependent check the op makes at that point (a token
  id >= vocab, a record shift outside int16, ...); the items after it are checked once it
  has passed.

``when``: the item applies only if that expression is true (ROPE_QUANT's table with
rope=1). Before any item, a field that holds no member of its enum (ACT's ``kind``) is
BAD_OPERAND (``decode``). Command streams must be 64-byte aligned. The golden executor
(``golden/executor.py``) checks commands and reads / writes their tensors from this table,
the engines build their check states from it (``hw.ops.base.ArgChecks``, adding their own
documented hardware limits), and the engine tests generate their ALIGN / ADDR_RANGE cases
from it (``sim/op_bench.arg_error_cases``). Adding an opcode: its ``Opcode`` member,
``ARGS`` layout and ``CONTRACTS`` row here, its golden function
(``Executor._op_<name>``), its engine (``hw/ops/``, listed in ``hw.accel.ENGINES``) and
its test file (``sim/test_op_<name>.py``).

Status / errors
===============

The accelerator reports ``ErrorCode`` + the index of the failing command (``err_op``) in
its status register; ``TIMEOUT`` is never reported by hardware, only by the driver when
``wait`` gives up. The registers that carry them: ``hw/csr.py``.
"""

from __future__ import annotations

import enum as _pyenum
import functools
import math
from dataclasses import dataclass, field

import numpy as np
from amaranth import Shape, signed, unsigned
from amaranth.lib import data, enum

from golden import tlmm as _gtlmm
from golden.config import DEFAULT, DatapathConfig, TLMMConfig

# ---------------------------------------------------------------------- widths (ISA)
COMMAND_BITS = 512  # one command = 64 bytes = one 512-bit DMA beat
COMMAND_BYTES = COMMAND_BITS // 8
OPCODE_BITS = 8
ADDR_BITS = 32  # byte addresses: a 4 GiB window
ROWS_BITS = 16  # tokens per command, keys, positions, leading dims
DIM_BITS = 16  # k, n, dim, head_dim
VOCAB_BITS = 32  # vocabulary-sized dims (embedding rows, lm_head n)
HEADS_BITS = 8
SCALE_MANT_BITS = 16  # scale mantissa in memory and in commands
SCALE_SHIFT_BITS = 16  # scale shift (signed) in memory and in commands
EPS_TERM_BITS = 48  # rmsnorm eps_term = round(dim * eps * 2^(2*IF))
C_EXP_BITS = 16  # rmsnorm c_exp, signed
G_EXP_BITS = 16  # gamma exponent, signed
STREAM_ALIGN = COMMAND_BYTES


class Opcode(enum.Enum, shape=OPCODE_BITS):
    NOP = 1
    END = 2
    EMBED = 3
    NORM_QUANT = 4
    TLMM = 5
    ROPE_QUANT = 6
    QK = 7
    SOFTMAX = 8
    PV = 9
    RESIDUAL = 10
    ACT = 11
    LM_HEAD = 12
    TLMM_SPARSE = 13
    ADD = 14


class ActKind(enum.Enum, shape=3):
    RELU2 = 0
    SILU = 1
    RELU2_NLADC = 2  # ReLU^2 by the ramp NL-ADC (code 0 decoded as 0)
    RELU2_LINADC = 3  # a linear ramp ADC, then a digital square
    SILU_NLADC = 4  # sigma(gate) by the ramp NL-ADC, then gate * sigma digitally


# the ACT kinds that convert through the threshold table at ``adc_table``
ADC_KINDS = (ActKind.RELU2_NLADC, ActKind.RELU2_LINADC, ActKind.SILU_NLADC)
ADC_BITS_BITS = 4  # the ACT command's adc_bits field (N of the conversion)


def adc_kind(kind):
    """True if the ACT ``kind`` converts through the NL-ADC table: an ``ActKind`` member
    (golden) or the command field's Amaranth view (engines)."""
    if isinstance(kind, ActKind):
        return kind in ADC_KINDS
    v = kind.as_value()
    return (v >= ActKind.RELU2_NLADC.value) & (v <= ActKind.SILU_NLADC.value)


class ErrorCode(enum.Enum, shape=8):
    NONE = 0
    UNKNOWN_OPCODE = 1  # opcode not in Opcode (incl. 0: zeroed memory)
    ADDR_RANGE = 2  # a tensor of the command reaches outside device memory
    BAD_DIM = 3  # a dimension is 0, inconsistent or beyond the datapath limits
    MISSING_END = 4  # n_cmds commands ran without END (err_op = n_cmds - 1)
    BAD_OPERAND = 5  # a data value/constant the op cannot take (token >= vocab, ...)
    SCALE_RANGE = 6  # a computed scale shift does not fit the scale record
    ALIGN = 7  # an address not aligned to its element size
    TIMEOUT = 8  # driver only: wait() gave up (the device was still busy)
    BUS_ERROR = 9  # the memory answered a read or write with SLVERR/DECERR (AXI shell)


ERROR_TEXT = {
    ErrorCode.NONE: "no error",
    ErrorCode.UNKNOWN_OPCODE: "unknown opcode",
    ErrorCode.ADDR_RANGE: "address out of range",
    ErrorCode.BAD_DIM: "bad dimension",
    ErrorCode.MISSING_END: "stream ended without END",
    ErrorCode.BAD_OPERAND: "bad operand",
    ErrorCode.SCALE_RANGE: "scale shift out of range",
    ErrorCode.ALIGN: "misaligned address",
    ErrorCode.TIMEOUT: "timeout",
    ErrorCode.BUS_ERROR: "memory bus error",
}


# ---------------------------------------------------------------------- layouts
_A = unsigned(ADDR_BITS)
_R = unsigned(ROWS_BITS)
_D = unsigned(DIM_BITS)
_V = unsigned(VOCAB_BITS)
_H = unsigned(HEADS_BITS)
_M = unsigned(SCALE_MANT_BITS)
_S = signed(SCALE_SHIFT_BITS)

SCALE_RECORD = data.StructLayout({"mant": _M, "shift": _S})
SCALE_RECORD_BYTES = SCALE_RECORD.size // 8


def _record_dtype(layout: data.StructLayout) -> np.dtype:
    """numpy structured dtype of a byte-aligned struct layout (little-endian)."""
    names, formats, offsets = [], [], []
    for name, f in layout:
        s = Shape.cast(f.shape)
        if f.offset % 8 or s.width not in (8, 16, 32, 64):
            raise ValueError(f"{name}: field not byte-aligned")
        names.append(name)
        formats.append(f"<{'i' if s.signed else 'u'}{s.width // 8}")
        offsets.append(f.offset // 8)
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": layout.size // 8}
    )


SCALE_DTYPE = _record_dtype(SCALE_RECORD)

ARGS = {
    Opcode.NOP: data.StructLayout({}),
    Opcode.END: data.StructLayout({}),
    Opcode.EMBED: data.StructLayout(
        {"tokens": _A, "table": _A, "dst": _A, "rows": _R, "dim": _D, "vocab": _V}),
    Opcode.NORM_QUANT: data.StructLayout(
        {"src": _A, "gamma": _A, "dst": _A, "dst_scale": _A, "rows": _R, "dim": _D,
         "eps_term": unsigned(EPS_TERM_BITS), "c_mant": _M, "c_exp": signed(C_EXP_BITS),
         "g_exp": signed(G_EXP_BITS)}),
    Opcode.TLMM: data.StructLayout(
        {"src": _A, "weights": _A, "dst": _A, "rows": _R, "k": _D, "n": _D, "mask": _A,
         "masked": 1, "skip": 1, "src_skip": _D}),
    Opcode.ROPE_QUANT: data.StructLayout(
        {"src": _A, "src_scale": _A, "table": _A, "dst": _A, "dst_scale": _A, "rows": _R,
         "heads": _H, "head_dim": _D, "ld": _R, "pos": _R, "table_rows": _R, "c_mant": _M,
         "c_shift": _S, "rope": 1, "kv": 1}),
    Opcode.QK: data.StructLayout(
        {"q": _A, "q_scale": _A, "k": _A, "k_scale": _A, "dst": _A, "rows": _R, "keys": _R,
         "heads": _H, "kv_heads": _H, "head_dim": _D, "q_ld": _R, "kv_ld": _R}),
    Opcode.SOFTMAX: data.StructLayout(
        {"src": _A, "dst": _A, "rows": _R, "keys": _R, "heads": _H}),
    Opcode.PV: data.StructLayout(
        {"p": _A, "v": _A, "v_scale": _A, "dst": _A, "rows": _R, "keys": _R, "heads": _H,
         "kv_heads": _H, "head_dim": _D, "kv_ld": _R}),
    Opcode.RESIDUAL: data.StructLayout(
        {"h": _A, "acc": _A, "src_scale": _A, "dst": _A, "rows": _R, "dim": _D,
         "c_mant": _M, "c_shift": _S}),
    Opcode.ACT: data.StructLayout(
        {"gate": _A, "up": _A, "src_scale": _A, "dst": _A, "rows": _R, "dim": _D,
         "g_mant": _M, "g_shift": _S, "u_mant": _M, "u_shift": _S, "kind": ActKind,
         "adc_table": _A, "adc_bits": unsigned(ADC_BITS_BITS)}),
    Opcode.LM_HEAD: data.StructLayout(
        {"src": _A, "weights": _A, "dst": _A, "rows": _R, "k": _D, "n": _V}),
    Opcode.TLMM_SPARSE: data.StructLayout(
        {"src": _A, "weights": _A, "dst": _A, "rows": _R, "k": _D, "n": _D}),
    Opcode.ADD: data.StructLayout(
        {"a": _A, "b": _A, "dst": _A, "rows": _R, "dim": _D}),
}  # fmt: skip


def op_name(op: Opcode) -> str:
    """Union member name of an opcode's arguments: the lower-case opcode name."""
    return op.name.lower()


ARGS_BITS = COMMAND_BITS - OPCODE_BITS
for _op, _lay in ARGS.items():
    assert _lay.size <= ARGS_BITS, f"{_op.name} arguments ({_lay.size} bits) overflow the command"

# 'raw' fixes the union (and so the command) at exactly COMMAND_BITS
ARGS_UNION = data.UnionLayout(
    {**{op_name(op): lay for op, lay in ARGS.items()}, "raw": unsigned(ARGS_BITS)}
)
COMMAND = data.StructLayout({"opcode": Opcode, "args": ARGS_UNION})
assert COMMAND.size == COMMAND_BITS
_OPCODE_FIELD = COMMAND["opcode"]


# ---------------------------------------------------------------------- op contracts
# Element types of the tensors (little-endian); an element's size is the alignment its
# address needs.
I8, U8, I16, U16, I32, U32 = (np.dtype(f"<{c}") for c in ("i1", "u1", "i2", "u2", "i4", "u4"))
RECORD = SCALE_DTYPE


@dataclass(frozen=True, init=False)
class Dims:
    """BAD_DIM unless every rule holds. A rule is a Python expression over the command's
    fields and ``contract_names`` (the datapath's limits), read on ints by the golden
    executor and on Amaranth values by the engines. ``when``: only if that expression is
    true."""

    rules: tuple[str, ...]
    when: str | None

    def __init__(self, *rules: str, when: str | None = None):
        object.__setattr__(self, "rules", tuple(rules))
        object.__setattr__(self, "when", when)


@dataclass(frozen=True)
class Tensor:
    """The tensor at the address in command field ``field``: elements of ``dtype`` in the
    C-order ``shape`` (expressions). Head-strided with ``ld``: index 0 of the shape steps by
    ``ld`` rows of index 1 (element (h, t, i) at ``(h*ld + t)*row + i``, row = the product
    of the shape after index 1; a 2-D shape: rows ``ld`` elements apart). ``offset``:
    elements from the field's address to the first one. ``when``: checked and used only if
    that expression is true. ``out``: the command writes it (else it reads it).

    Checks: the field's address is a multiple of the element size (else ALIGN), then every
    byte of ``extent`` lies inside the memory window (else ADDR_RANGE)."""

    field: str
    dtype: np.dtype
    shape: tuple[str, ...]
    ld: str | None = None
    offset: str | None = None
    when: str | None = None
    out: bool = False

    @property
    def size(self) -> int:
        """Element size in bytes (the address alignment)."""
        return self.dtype.itemsize

    def dims(self, names) -> list:
        return [evaluate(d, names) for d in self.shape]

    def extent(self, names) -> tuple:
        """(address of the first byte, bytes from it to the end of the last element)."""
        dims = self.dims(names)
        if self.ld is None:
            count = math.prod(dims)
        else:
            count = ((dims[0] - 1) * evaluate(self.ld, names) + dims[1]) * math.prod(dims[2:])
        start = names[self.field]
        if self.offset is not None:
            start = start + evaluate(self.offset, names) * self.size
        return start, count * self.size


@dataclass(frozen=True)
class Data:
    """A data-dependent check, made at this point of the order by the op itself (the golden
    op function; the engine's datapath): ``code`` when ``text``. The golden executor checks
    the items after it only once it has passed; an engine that checks them earlier reports
    their errors after it (a dry run: computing, writing nothing)."""

    name: str
    code: ErrorCode
    text: str


_ATTN_DIMS = (
    "rows >= 1",
    "heads >= 1",
    "kv_heads >= 1",
    "head_dim >= 1",
    "heads % kv_heads == 0",
    "rows <= keys",
    "keys <= softmax_max_len",
    "kv_ld >= keys",
    "kv_bits == 8 or head_dim % 2 == 0",
)


def _two_int32_rows(a: str, b: str) -> tuple:
    """The contract of RESIDUAL and ACT: int32 [rows, dim] inputs ``a`` and ``b``, a scale
    record per row, an int32 [rows, dim] output."""
    return (
        Dims("rows >= 1", "dim >= 1"),
        Tensor(a, I32, ("rows", "dim")),
        Tensor(b, I32, ("rows", "dim")),
        Tensor("src_scale", RECORD, ("rows",)),
        Tensor("dst", I32, ("rows", "dim"), out=True),
    )


# opcode -> its checks in order; the tensors in the memory formats of the module docstring
CONTRACTS = {
    Opcode.NOP: (),
    Opcode.END: (),
    Opcode.EMBED: (
        Dims("rows >= 1", "dim >= 1", "vocab >= 1"),
        Tensor("tokens", U32, ("rows",)),
        Data("token ids", ErrorCode.BAD_OPERAND, "a token id >= vocab"),
        Tensor("table", I32, ("vocab", "dim")),
        Tensor("dst", I32, ("rows", "dim"), out=True),
    ),
    Opcode.NORM_QUANT: (
        Dims("rows >= 1", "dim >= 1"),
        Data(
            "norm constants",
            ErrorCode.BAD_OPERAND,
            "(eps_term, c_mant, c_exp) are not norm_constants(dim) of the eps they imply",
        ),
        Tensor("src", I32, ("rows", "dim")),
        Tensor("gamma", I16, ("dim",)),
        Tensor("dst", I8, ("rows", "dim"), out=True),
        Data("records", ErrorCode.SCALE_RANGE, "a row's record shift leaves int16"),
        Tensor("dst_scale", RECORD, ("rows",), out=True),
    ),
    Opcode.TLMM: (
        Dims("rows >= 1", "k >= 1", "n >= 1", "k <= tlmm_max_k"),
        # rows of k bytes, src_skip bytes apart (a k slice of a wider matrix: K-split)
        Tensor("src", I8, ("rows", "k"), ld="k + src_skip"),
        Tensor("weights", U8, ("tlmm_weight_bytes(n, k)",)),
        Data(
            "weight codes",
            ErrorCode.BAD_OPERAND,
            "a weight code or padding that pack_tlmm_weights never writes",
        ),
        Tensor("mask", I32, ("rows", "n"), when="masked"),
        Tensor("dst", I32, ("rows", "n"), out=True),
    ),
    Opcode.ROPE_QUANT: (
        Dims(
            "rows >= 1",
            "heads >= 1",
            "head_dim >= 2",
            "head_dim % 2 == 0",
            "kv_row(head_dim, kv) % 2 == 0",
            "ld >= rows",
        ),
        Tensor("src", I32, ("rows", "heads * head_dim")),
        Tensor("src_scale", RECORD, ("rows",)),
        Dims("pos + rows <= table_rows", when="rope"),
        Tensor("table", I16, ("rows", "head_dim"), offset="pos * head_dim", when="rope"),
        Tensor("dst", I8, ("heads", "rows", "kv_row(head_dim, kv)"), ld="ld", out=True),
        Data("records", ErrorCode.SCALE_RANGE, "a (token, head) record shift leaves int16"),
        Tensor("dst_scale", RECORD, ("heads", "rows"), ld="ld", out=True),
    ),
    Opcode.QK: (
        Dims(*_ATTN_DIMS, "q_ld >= rows"),
        Tensor("q", I8, ("heads", "rows", "head_dim"), ld="q_ld"),
        Tensor("q_scale", RECORD, ("heads", "rows"), ld="q_ld"),
        Tensor("k", I8, ("kv_heads", "keys", "kv_row(head_dim, 1)"), ld="kv_ld"),
        Tensor("k_scale", RECORD, ("kv_heads", "keys"), ld="kv_ld"),
        Tensor("dst", I16, ("heads", "rows", "keys"), out=True),
    ),
    Opcode.SOFTMAX: (
        Dims("rows >= 1", "heads >= 1", "rows <= keys", "keys <= softmax_max_len"),
        Tensor("src", I16, ("heads", "rows", "keys")),
        Tensor("dst", U16, ("heads", "rows", "keys"), out=True),
    ),
    Opcode.PV: (
        Dims(*_ATTN_DIMS),
        Tensor("p", U16, ("heads", "rows", "keys")),
        Tensor("v", I8, ("kv_heads", "keys", "kv_row(head_dim, 1)"), ld="kv_ld"),
        Tensor("v_scale", RECORD, ("kv_heads", "keys"), ld="kv_ld"),
        Data(
            "acc range",
            ErrorCode.BAD_OPERAND,
            "an output accumulator outside int32 (p rows that sum above 2^16)",
        ),
        Tensor("dst", I32, ("rows", "heads * head_dim"), out=True),
    ),
    Opcode.RESIDUAL: _two_int32_rows("h", "acc"),
    Opcode.ACT: (
        *_two_int32_rows("gate", "up")[:4],
        Dims("adc_bits >= 1", "adc_bits <= adc_max_bits", when="adc_kind(kind)"),
        Tensor("adc_table", I16, ("(1 << adc_bits) - 1",), when="adc_kind(kind)"),
        _two_int32_rows("gate", "up")[4],
    ),
    Opcode.LM_HEAD: (
        Dims("rows >= 1", "k >= 1", "n >= 1"),
        Tensor("src", I8, ("rows", "k")),
        Tensor("weights", I8, ("n", "k")),
        Tensor("dst", I32, ("rows", "n"), out=True),
    ),
    Opcode.TLMM_SPARSE: (
        Dims("rows >= 1", "k >= 1", "n >= 1", "k <= tlmm_max_k"),
        Tensor("src", I8, ("rows", "k")),
        Tensor("weights", U8, ("sparse_weight_bytes(n, k)",)),
        Data(
            "weight codes",
            ErrorCode.BAD_OPERAND,
            "a weight code or padding that pack_sparse_weights never writes",
        ),
        Tensor("dst", I32, ("rows", "n"), out=True),
    ),
    Opcode.ADD: (
        Dims("rows >= 1", "dim >= 1"),
        Tensor("a", I32, ("rows", "dim")),
        Tensor("b", I32, ("rows", "dim")),
        Tensor("dst", I32, ("rows", "dim"), out=True),
    ),
}
assert set(CONTRACTS) == set(Opcode)


_DTYPE_NAMES = {
    I8: "int8",
    U8: "uint8",
    I16: "int16",
    U16: "uint16",
    I32: "int32",
    U32: "uint32",
    RECORD: "record",
}


def contract_markdown() -> str:
    """The README's opcode table, from ``CONTRACTS`` (``tests/test_isa.py`` checks the
    README holds exactly this): each opcode's checks in order."""

    def item(t) -> str:
        if isinstance(t, Dims):
            return (
                "dims: "
                + ", ".join(f"`{r}`" for r in t.rules)
                + (f" (if `{t.when}`)" if t.when else "")
            )
        if isinstance(t, Tensor):
            shape = ", ".join(t.shape)
            extra = "".join(
                f", {k} `{v}`" for k, v in (("ld", t.ld), ("offset", t.offset), ("if", t.when)) if v
            )
            return (
                f"{'**out** ' if t.out else ''}`{t.field}` {_DTYPE_NAMES[t.dtype]} [{shape}]{extra}"
            )
        return f"data: {t.name} ({t.code.name})"

    rows = ["| opcode | checks and operands, in order |", "|---|---|"]
    for op, items in CONTRACTS.items():
        rows.append(
            f"| {op.name} ({op.value}) | " + ("; ".join(item(t) for t in items) or "none") + " |"
        )
    return "\n".join(rows)


# the fields that hold memory addresses: the contract's tensors (the debug dump uses them)
ADDR_FIELDS = {
    op: tuple(t.field for t in items if isinstance(t, Tensor)) for op, items in CONTRACTS.items()
}
for _op, _items in CONTRACTS.items():
    _data = [d.name for d in _items if isinstance(d, Data)]
    assert len(set(_data)) == len(_data) and not set(_data) & set(ADDR_FIELDS[_op]), _op.name
    for _f in ADDR_FIELDS[_op]:
        assert ARGS[_op][_f].shape == _A, f"{_op.name}.{_f}: not an address field"


@functools.cache
def _code(expr: str):
    return compile(expr, f"<contract: {expr}>", "eval")


def evaluate(expr: str, names):
    """A contract expression over ``names`` (``contract_names``): ints in, an int (or bool)
    out; Amaranth values in, an Amaranth value out."""
    return eval(_code(expr), {"__builtins__": {}}, names)


def expr_names(expr: str) -> tuple[str, ...]:
    """The names an expression uses."""
    return _code(expr).co_names


def contract_names(args, cfg: DatapathConfig = DEFAULT) -> dict:
    """What the contract's expressions may name: the command's fields (``args``: ints, or
    Amaranth values in the engines) and the datapath's limits."""
    t = cfg.tlmm
    return {
        **args,
        "softmax_max_len": cfg.softmax.max_len,
        "tlmm_max_k": t.max_k(),
        "tlmm_weight_bytes": lambda n, k: tlmm_weight_bytes(n, k, t),
        "sparse_weight_bytes": lambda n, k: sparse_weight_bytes(n, k, t),
        "adc_max_bits": cfg.adc.act_max_bits,
        "adc_kind": adc_kind,
        "kv_bits": cfg.forward.kv_bits,
        "kv_row": lambda head_dim, kv: kv_row(head_dim, kv, cfg),
    }


def kv_row(head_dim, kv=1, cfg: DatapathConfig = DEFAULT):
    """Bytes of one row of ``head_dim`` codes: int8 (kv = 0: q) or, for a KV-cache row
    (kv = 1), the datapath's KV format (``ForwardConfig.kv_bits``: 8, or 4 -- head_dim/2
    bytes). ints in, an int out; Amaranth values (or the engines' check polynomials) in,
    the same expression out."""
    if cfg.forward.kv_bits == 8 or (isinstance(kv, int) and kv == 0):
        return head_dim
    return head_dim - kv * (head_dim // 2)  # ceil(head_dim / 2): the contract needs it even


def pack_kv(codes: np.ndarray, kv_bits: int) -> np.ndarray:
    """KV-cache codes (int8 [..., head_dim], in [-2^(b-1), 2^(b-1))) as their memory rows
    (int8 [..., head_dim * kv_bits / 8]): kv_bits 8 as is; 4: two codes a byte, code 2i in
    the low nibble, 2i+1 in the high one (two's complement nibbles)."""
    c = np.asarray(codes)
    if kv_bits == 8:
        return c.astype(np.int8)
    if kv_bits != 4 or c.shape[-1] % 2:
        raise ValueError(f"pack_kv: kv_bits {kv_bits} with head_dim {c.shape[-1]}")
    if c.size and (c.min() < -8 or c.max() > 7):
        raise ValueError("pack_kv: a code outside int4 [-8, 7]")
    u = c.astype(np.int64) & 0xF
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8).view(np.int8)


def unpack_kv(rows: np.ndarray, kv_bits: int) -> np.ndarray:
    """Inverse of ``pack_kv``: int8 codes [..., head_dim] (nibbles sign-extended)."""
    r = np.asarray(rows)
    if kv_bits == 8:
        return r.astype(np.int8)
    u = r.view(np.uint8).astype(np.int16)
    lo, hi = u & 0xF, u >> 4
    out = np.stack([lo, hi], axis=-1).reshape(*r.shape[:-1], 2 * r.shape[-1])
    return np.where(out >= 8, out - 16, out).astype(np.int8)


def check_item(item, names, lo: int, hi: int) -> tuple[ErrorCode, str] | None:
    """The check of one ``Dims`` / ``Tensor`` item on int fields, memory window [lo, hi):
    (code, detail) of its first failure, or None (it passes, does not apply, or is
    ``Data``: the op's own)."""
    if isinstance(item, Data) or (item.when is not None and not evaluate(item.when, names)):
        return None
    if isinstance(item, Dims):
        for rule in item.rules:
            if not evaluate(rule, names):
                vals = ", ".join(
                    f"{n}={names[n]}" for n in expr_names(rule) if isinstance(names.get(n), int)
                )
                return ErrorCode.BAD_DIM, f"{rule} does not hold ({vals})"
        return None
    addr = names[item.field]
    if addr % item.size:
        return ErrorCode.ALIGN, f"{item.field}: 0x{addr:x} is not {item.size}-byte aligned"
    start, n = item.extent(names)
    if start < lo or start + n > hi:
        return ErrorCode.ADDR_RANGE, (
            f"{item.field}: [0x{start:x}, 0x{start + n:x}) outside "
            f"the memory window [0x{lo:x}, 0x{hi:x})"
        )
    return None


class UnknownOpcode(ValueError):
    """decode() of a word whose opcode is not an Opcode member (``.value`` holds it)."""

    def __init__(self, value: int):
        super().__init__(f"opcode: {value} is not a known Opcode")
        self.value = value


# ---------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Command:
    """One decoded command: ``op`` and its fields (ints; ActKind for ``kind``)."""

    op: Opcode
    args: dict = field(default_factory=dict)

    def __getattr__(self, name):
        args = self.__dict__.get("args", {})
        if name in args:
            return args[name]
        raise AttributeError(f"{self.__dict__.get('op')}: no field {name!r}")

    def __str__(self) -> str:
        parts = []
        for k, v in self.args.items():
            if k in ADDR_FIELDS[self.op]:
                parts.append(f"{k}=0x{v:x}")
            else:
                parts.append(f"{k}={v.name if isinstance(v, _pyenum.Enum) else v}")
        return f"{self.op.name}(" + ", ".join(parts) + ")"


def _shape_range(shape) -> tuple[int, int]:
    s = Shape.cast(shape)
    if s.signed:
        return -(1 << (s.width - 1)), (1 << (s.width - 1)) - 1
    return 0, (1 << s.width) - 1


@dataclass(frozen=True)
class _Field:
    name: str
    shape: object  # the layout's shape (Shape or enum class)
    offset: int  # bit offset in the command word
    width: int
    lo: int
    hi: int
    enum: type | None


_ARGS_OFFSET = COMMAND["args"].offset
# Field positions read off the layouts once (encode/decode walk these; COMMAND.const gives
# the same bits -- tests/test_isa.py checks -- but costs ~1 ms per command).
_FIELDS = {
    op: tuple(
        _Field(
            n,
            f.shape,
            _ARGS_OFFSET + f.offset,
            f.width,
            *_shape_range(f.shape),
            f.shape if isinstance(f.shape, type) and issubclass(f.shape, _pyenum.Enum) else None,
        )
        for n, f in lay
    )
    for op, lay in ARGS.items()
}


def _check_value(op: Opcode, fd: _Field, value):
    where = f"{op_name(op)}.{fd.name}"
    if fd.enum is not None:
        try:
            return fd.enum(value)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not a {fd.enum.__name__}") from None
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: expected an integer, got {type(value).__name__}")
    if not fd.lo <= int(value) <= fd.hi:
        s = Shape.cast(fd.shape)
        raise ValueError(
            f"{where}: {int(value)} does not fit "
            f"{'signed' if s.signed else 'unsigned'}({s.width}) [{fd.lo}, {fd.hi}]"
        )
    return int(value)


# fields a command may leave out: a mode that is off (TLMM's up_proj mask)
OPTIONAL_FIELDS = {
    Opcode.TLMM: {"mask": 0, "masked": 0, "skip": 0, "src_skip": 0},
    Opcode.ROPE_QUANT: {"kv": 0},  # q (not a KV-cache row)
}


def command(op: Opcode, **fields) -> Command:
    """A checked command: every field of ``op`` (but those of ``OPTIONAL_FIELDS``, 0 when
    left out) must be given and fit its width."""
    try:
        op = Opcode(op)
    except ValueError:
        raise ValueError(f"op: {op!r} is not an Opcode") from None
    fds = _FIELDS[op]
    names = [fd.name for fd in fds]
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise ValueError(f"{op_name(op)}: unknown field(s) {unknown}; fields are {names}")
    fields = {**OPTIONAL_FIELDS.get(op, {}), **fields}
    missing = [n for n in names if n not in fields]
    if missing:
        raise ValueError(f"{op_name(op)}: missing field(s) {missing}")
    return Command(op, {fd.name: _check_value(op, fd, fields[fd.name]) for fd in fds})


def encode_bits(cmd: Command) -> int:
    """The command word as an integer (bit i = word bit i); fields re-checked."""
    if not isinstance(cmd, Command):
        raise ValueError(f"cmd: expected a Command, got {type(cmd).__name__}")
    cmd = command(cmd.op, **cmd.args)
    bits = (cmd.op.value & ((1 << _OPCODE_FIELD.width) - 1)) << _OPCODE_FIELD.offset
    for fd in _FIELDS[cmd.op]:
        v = cmd.args[fd.name]
        v = v.value if fd.enum is not None else v
        bits |= (v & ((1 << fd.width) - 1)) << fd.offset
    return bits


def encode_const(cmd: Command) -> int:
    """The same word built by ``COMMAND.const`` (amaranth's own packing; slow)."""
    cmd = command(cmd.op, **cmd.args)
    c = COMMAND.const({"opcode": cmd.op, "args": {op_name(cmd.op): dict(cmd.args)}})
    return c.as_value().value


def encode(cmd: Command) -> bytes:
    """The 64 little-endian bytes of one command."""
    return encode_bits(cmd).to_bytes(COMMAND_BYTES, "little")


def encode_stream(cmds) -> bytes:
    return b"".join(encode(c) for c in cmds)


def decode(word) -> Command:
    """Command from 64 bytes; UnknownOpcode (a ValueError) for an opcode not in Opcode."""
    if isinstance(word, np.ndarray):
        word = word.tobytes()
    word = bytes(word)
    if len(word) != COMMAND_BYTES:
        raise ValueError(f"word: expected {COMMAND_BYTES} bytes, got {len(word)}")
    bits = int.from_bytes(word, "little")
    opv = (bits >> _OPCODE_FIELD.offset) & ((1 << _OPCODE_FIELD.width) - 1)
    try:
        op = Opcode(opv)
    except ValueError:
        raise UnknownOpcode(opv) from None
    args = {}
    for fd in _FIELDS[op]:
        v = (bits >> fd.offset) & ((1 << fd.width) - 1)
        if fd.enum is not None:
            try:
                v = fd.enum(v)
            except ValueError:
                raise ValueError(
                    f"{op_name(op)}.{fd.name}: {v} is not a {fd.enum.__name__}"
                ) from None
        elif fd.lo < 0 and v > fd.hi:
            v -= 1 << fd.width
        args[fd.name] = v
    return Command(op, args)


def decode_const(word) -> Command:
    """decode() through amaranth's ``data.Const`` view (slow; the reference for tests)."""
    bits = int.from_bytes(bytes(word), "little")
    op = Opcode(bits & ((1 << _OPCODE_FIELD.width) - 1))
    view = data.Const(COMMAND, bits).args[op_name(op)]
    return Command(op, {n: view[n] for n, _ in ARGS[op]})


def decode_stream(buf) -> list[Command]:
    buf = bytes(buf)
    if len(buf) % COMMAND_BYTES:
        raise ValueError(f"buf: length {len(buf)} is not a multiple of {COMMAND_BYTES}")
    return [decode(buf[i : i + COMMAND_BYTES]) for i in range(0, len(buf), COMMAND_BYTES)]


# ---------------------------------------------------------------------- memory formats
def pack_scales(mant, shift) -> np.ndarray:
    """Scale records (uint8 [..., 4]) from mant/shift arrays; ValueError if a value does
    not fit the record (the hardware's SCALE_RANGE)."""
    mant = np.asarray(mant, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    for name, v, shape in (("mant", mant, _M), ("shift", shift, _S)):
        lo, hi = _shape_range(shape)
        if v.size and (int(v.min()) < lo or int(v.max()) > hi):
            raise ValueError(f"{name}: values outside the scale record's [{lo}, {hi}]")
    rec = np.empty(mant.shape, dtype=SCALE_DTYPE)
    rec["mant"], rec["shift"] = mant, shift
    return (
        rec.view(np.uint8).reshape(*mant.shape, SCALE_RECORD_BYTES)
        if mant.ndim
        else rec.reshape(1).view(np.uint8)
    )


def unpack_scales(buf, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mant, shift) int64 [count] from scale-record bytes."""
    a = np.frombuffer(
        bytes(buf) if not isinstance(buf, np.ndarray) else buf.tobytes(), dtype=SCALE_DTYPE
    )
    if count is not None:
        a = a[:count]
    return a["mant"].astype(np.int64), a["shift"].astype(np.int64)


def rope_table(cos_q: np.ndarray, sin_q: np.ndarray) -> np.ndarray:
    """RoPE table int16 [rows, head_dim]: row p = cos_q[p] then sin_q[p]."""
    cos_q, sin_q = np.asarray(cos_q), np.asarray(sin_q)
    if (
        cos_q.dtype != np.int16
        or sin_q.dtype != np.int16
        or cos_q.shape != sin_q.shape
        or cos_q.ndim != 2
    ):
        raise ValueError(
            f"cos_q/sin_q: expected two int16 [rows, head_dim/2] arrays, got "
            f"{cos_q.dtype}{cos_q.shape} and {sin_q.dtype}{sin_q.shape}"
        )
    return np.ascontiguousarray(np.concatenate([cos_q, sin_q], axis=1))


def _cdiv(a, b: int):
    """ceil(a / b) for a >= 0 (an int or an Amaranth value)."""
    return (a + (b - 1)) // b


def tlmm_chunks(k: int, cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    """Kc = ceil(ceil(k/G)/T): chunks (beats) per row block."""
    return _cdiv(_cdiv(k, cfg.group), cfg.tables)


def tlmm_blocks(n: int, cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    """Nb = ceil(n/Q): row blocks."""
    return _cdiv(n, cfg.replicas)


def tlmm_beat_bytes(cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    return -(-(cfg.tables * cfg.replicas * cfg.code_bits) // 8)


def tlmm_weight_bytes(n: int, k: int, cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    return tlmm_blocks(n, cfg) * tlmm_chunks(k, cfg) * tlmm_beat_bytes(cfg)


def sparse_lanes(cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    """R = T*Q: output rows per sparse beat (TLMM_SPARSE)."""
    return cfg.tables * cfg.replicas


def sparse_blocks(n: int, cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    """Nr = ceil(n/R): row blocks of the sparse tile format."""
    return _cdiv(n, sparse_lanes(cfg))


def sparse_weight_bytes(n: int, k: int, cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    return sparse_blocks(n, cfg) * _cdiv(k, cfg.group) * tlmm_beat_bytes(cfg)


def sparse_beat_read_bytes(n: int, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """Bytes the engine reads of one beat of each row block: int64 [Nr] (the last block's
    beats only as far as its codes reach)."""
    r = sparse_lanes(cfg)
    rows = np.minimum(r, n - r * np.arange(sparse_blocks(n, cfg)))
    return -(-(rows * cfg.code_bits) // 8)


def tlmm_weight_passes(rows: int, tokens: int = 1, masked: bool = False) -> int:
    """Times a TLMM command reads its weights: once per block of ``tokens`` (P, the
    engine's ``AccelConfig.tlmm_tokens``) rows, ceil(rows/P); a masked command goes row
    by row (rows)."""
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens: must be an integer >= 1, got {tokens!r}")
    return rows if masked else _cdiv(rows, tokens)


def tlmm_read_bytes(
    x_q: np.ndarray,
    n: int,
    cfg: TLMMConfig = DEFAULT.tlmm,
    mask=None,
    skip: bool = False,
    tokens: int = 1,
) -> int:
    """Bytes a TLMM command reads (activations, its mask, the weight beats it needs) on an
    engine of ``tokens`` (P) tokens per weight beat (``tlmm_weight_passes``)."""
    rows, k = x_q.shape
    passes = tlmm_weight_passes(rows, tokens, mask is not None)
    beats = passes * tlmm_blocks(n, cfg) * tlmm_chunks(k, cfg)
    if mask is not None and skip:
        beats = int(_gtlmm.live_blocks(mask, cfg).sum()) * tlmm_chunks(k, cfg)
    return rows * k + (0 if mask is None else rows * n * 4) + beats * tlmm_beat_bytes(cfg)


def sparse_read_bytes(x_q: np.ndarray, n: int, cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    """Bytes a TLMM_SPARSE command reads: the activations and, per row, the beats of its
    live groups in every row block."""
    live = int(_gtlmm.live_groups(x_q, cfg).sum())
    return x_q.size + live * int(sparse_beat_read_bytes(n, cfg).sum())


def dma_bytes(cfg: DatapathConfig = DEFAULT) -> int:
    """DMA beat width of an accelerator for this datapath: the smallest power of two holding
    a command, an activation chunk (G*T bytes), a TLMM weight beat and an output beat (Q
    int32)."""
    t = cfg.tlmm
    need = max(COMMAND_BYTES, t.group * t.tables, tlmm_beat_bytes(t), t.replicas * t.acc_bits // 8)
    return 1 << (need - 1).bit_length()


def _zero_code(cfg: TLMMConfig) -> int:
    """Code of the all-zero weight group (full: the centre index; mirrored: 0, sign 0)."""
    idx, sign = _gtlmm.encode_weights(np.zeros((1, cfg.group), np.int8), cfg)
    return int(_gtlmm.join_codes(idx, sign, cfg)[0, 0])


def pack_tlmm_weights(codes: np.ndarray, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """Ternary codes int8 [n, k] -> uint8 [tlmm_weight_bytes(n, k)] in TLMM tile format."""
    codes = np.asarray(codes)
    if codes.dtype != np.int8 or codes.ndim != 2:
        raise ValueError(f"codes: expected a 2-D int8 array, got {codes.dtype} {codes.shape}")
    n, k = codes.shape
    t, q = cfg.tables, cfg.replicas
    nb, kc = tlmm_blocks(n, cfg), tlmm_chunks(k, cfg)
    grp = _gtlmm.join_codes(*_gtlmm.encode_weights(codes, cfg), cfg).astype(
        np.int64
    )  # [n, ceil(k/G)]
    full = np.full((nb * q, kc * t), _zero_code(cfg), dtype=np.int64)
    full[:n, : grp.shape[1]] = grp
    return _pack_beats(
        full.reshape(nb, q, kc, t).transpose(0, 2, 1, 3).reshape(nb * kc, q * t), cfg
    )


def unpack_tlmm_codes(buf, n: int, k: int, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """TLMM tile bytes -> group codes int64 [n, ceil(k/G)] (``golden.tlmm`` codes)."""
    nb, kc = tlmm_blocks(n, cfg), tlmm_chunks(k, cfg)
    t, q = cfg.tables, cfg.replicas
    beats = _unpack_beats(buf, nb * kc, tlmm_weight_bytes(n, k, cfg), f"n={n}, k={k}", cfg)
    full = beats.reshape(nb, kc, q, t).transpose(0, 2, 1, 3).reshape(nb * q, kc * t)
    return full[:n, : _gtlmm.num_groups(k, cfg)]


def _pack_beats(beats: np.ndarray, cfg: TLMMConfig) -> np.ndarray:
    """Beats of T*Q codes int64 [beats, T*Q] -> their bytes, beat_bytes each."""
    cb = cfg.code_bits
    bits = ((beats[..., None] >> np.arange(cb)) & 1).astype(np.uint8).reshape(len(beats), -1)
    bits = np.pad(bits, ((0, 0), (0, tlmm_beat_bytes(cfg) * 8 - bits.shape[1])))
    return np.packbits(bits, axis=1, bitorder="little").reshape(-1)


def _unpack_beats(buf, nbeats: int, need: int, what: str, cfg: TLMMConfig) -> np.ndarray:
    """Bytes of ``nbeats`` beats (``need`` bytes) -> their codes int64 [nbeats, T*Q]."""
    raw = np.frombuffer(
        bytes(buf) if not isinstance(buf, np.ndarray) else buf.tobytes(), dtype=np.uint8
    )
    if raw.size != need:
        raise ValueError(f"buf: expected {need} bytes for {what}, got {raw.size}")
    lanes, cb = cfg.tables * cfg.replicas, cfg.code_bits
    bits = np.unpackbits(raw.reshape(nbeats, -1), axis=1, bitorder="little")
    bits = bits[:, : lanes * cb].reshape(nbeats, lanes, cb).astype(np.int64)
    return np.sum(bits << np.arange(cb), axis=-1)


def pack_sparse_weights(codes: np.ndarray, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """Ternary codes int8 [n, k] -> uint8 [sparse_weight_bytes(n, k)] in the sparse tile
    format (TLMM_SPARSE)."""
    codes = np.asarray(codes)
    if codes.dtype != np.int8 or codes.ndim != 2:
        raise ValueError(f"codes: expected a 2-D int8 array, got {codes.dtype} {codes.shape}")
    n, _ = codes.shape
    r, nr = sparse_lanes(cfg), sparse_blocks(n, cfg)
    grp = _gtlmm.join_codes(*_gtlmm.encode_weights(codes, cfg), cfg).astype(np.int64)
    full = np.full((nr * r, grp.shape[1]), _zero_code(cfg), dtype=np.int64)
    full[:n] = grp
    beats = full.reshape(nr, r, -1).transpose(0, 2, 1).reshape(-1, r)  # [(r, g), lane]
    return _pack_beats(beats, cfg)


def unpack_sparse_weights(buf, n: int, k: int, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """Sparse tile bytes -> ternary int8 [n, k] (ValueError on invalid codes/padding)."""
    r, nr, kg = sparse_lanes(cfg), sparse_blocks(n, cfg), _gtlmm.num_groups(k, cfg)
    beats = _unpack_beats(buf, nr * kg, sparse_weight_bytes(n, k, cfg), f"n={n}, k={k}", cfg)
    code = beats.reshape(nr, kg, r).transpose(0, 2, 1).reshape(nr * r, kg)
    if np.any(code[n:] != _zero_code(cfg)):
        raise ValueError("buf: padding rows hold codes other than the all-zero group's")
    idx, sign = _gtlmm.split_codes(code[:n], cfg)
    return _gtlmm.decode_weights(idx, sign, k, cfg)


def unpack_tlmm_weights(buf, n: int, k: int, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """TLMM tile bytes -> ternary int8 [n, k] (ValueError on invalid codes/padding)."""
    code = unpack_tlmm_codes(buf, n, k, cfg)
    idx, sign = _gtlmm.split_codes(code, cfg)
    return _gtlmm.decode_weights(idx, sign, k, cfg)


def check_datapath(cfg: DatapathConfig) -> None:
    """The memory formats above hold this datapath's scales (ValueError otherwise)."""
    if cfg.requant.mult_bits > SCALE_MANT_BITS:
        raise ValueError(
            f"cfg.requant.mult_bits: {cfg.requant.mult_bits} exceeds the scale "
            f"record's {SCALE_MANT_BITS}-bit mantissa"
        )
    if cfg.norm.scale_mant_bits > SCALE_MANT_BITS:
        raise ValueError(
            f"cfg.norm.scale_mant_bits: {cfg.norm.scale_mant_bits} exceeds the "
            f"scale record's {SCALE_MANT_BITS}-bit mantissa"
        )
