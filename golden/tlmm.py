"""Table-lookup ternary matmul (TLMM): the golden specification (DESIGN §4).

Computes ``y[M, N] = x_q[M, K] @ w_t[N, K]^T`` exactly, in signed ``acc_bits`` (int32),
the way the hardware does: per group of G = ``TLMMConfig.group`` activations a table of
all signed sums is built online, each weight group is an index into that table, and the
lookups are accumulated.

Groups and padding
    Group g covers k = g*G .. g*G+G-1; weight i of a group is w[n, g*G+i]. When K is not
    a multiple of G, x_q and w_t are padded along K with zero activations *and* zero
    weights to Kp = G*ceil(K/G) (so a padded lane contributes 0 whichever is used).

Full table (``table="full"``, 3^G entries, TeLLMe v2)
    ``T[j] = sum_i w_i(j) * x_i`` with ``j = sum_i (w_i + 1) * 3^i`` (w_0 least
    significant). Online build (``build_tables``): start from the 1-entry table [0];
    step i = 0..G-1 appends digit i as the new most significant one:
    ``T'[d*3^i + j] = T[j] + (d-1)*x_i`` for d in {0, 1, 2}.

Mirrored table (``table="mirrored"``, (3^G+1)/2 entries + sign bit, bitnet.cpp TL2 style)
    With c = (3^G-1)/2 and the balanced-ternary value ``v = sum_i w_i * 3^i``, the full
    index is j = v + c, and negating the group negates v. The *leading* weight is the
    most significant nonzero one (largest i, the last one in K order); a group is
    canonical when it is positive, i.e. v >= 0. Encoding: ``sign = (v < 0)``,
    ``index = |v|`` in [0, c]; entry ``index`` is the sum of the canonical group, so
    ``Tm[v] = T[c + v]`` (the upper half of the full table; entry 0 = all-zero group).
    Lookup: ``T[index]``, negated when sign = 1.

Codes in memory (``join_codes`` / ``split_codes``; golden.packing packs them densely)
    ``code = index | sign << index_bits``; ``code_bits`` = index_bits (+1 if mirrored):
    G=3 full 5 bits (index 0..26), G=3 mirrored 5 bits (index 0..13 in bits [3:0],
    sign in bit 4).

Widths (proved, checked)
    |table entry| <= G*2^(a-1) (a = act_bits) fits ``entry_bits`` signed (10 bits for
    G=3). |y| and every partial sum <= K*2^(a-1) (padding adds 0), so K <= ``max_k()``
    guarantees no overflow of ``acc_bits`` (K <= 16,777,215 for 8/32 bits). ``tlmm`` and
    ``build_tables`` raise ValueError naming K beyond that; ``lookup_accumulate`` checks
    the data bound sum_g max_j |T[m, g, j]| itself. Tables are int16 (int32 if wider),
    accumulation is in int32 (int64 when acc_bits > 32) -- safe by the bound above.

The result equals the plain integer matmul for every input (tests and ``error_report``).
How the numpy code orders the lookups (per row for M < 8, per group otherwise) is a
speed choice only: integer sums are exact, so the result is the same either way.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .config import DEFAULT, TLMMConfig

# bound on |tlmm - int64 matmul|: the model is exact
TLMM_ERROR_BOUND = 0


# --------------------------------------------------------------------------- helpers
def _signed_dtype(bits: int):
    return np.int16 if bits <= 16 else np.int32 if bits <= 32 else np.int64


def _acc_dtype(cfg: TLMMConfig):
    return np.int32 if cfg.acc_bits <= 32 else np.int64


def num_groups(k: int, cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    """Groups along K: ceil(K / G)."""
    return -(-k // cfg.group)


def center(cfg: TLMMConfig = DEFAULT.tlmm) -> int:
    """c = (3^G - 1)/2: full index of the all-zero group; mirrored indices are 0..c."""
    return (cfg.full_entries - 1) // 2


@cache
def _patterns(group: int, table: str) -> np.ndarray:
    full = 3**group
    j = np.arange(full)
    digits = np.stack([(j // 3**i) % 3 - 1 for i in range(group)], axis=1).astype(np.int8)
    if table == "mirrored":
        digits = digits[(full - 1) // 2 :]
    digits.setflags(write=False)
    return digits


def group_patterns(cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """Weight group of every table entry: int8 [entries, G], entry j holds w_0..w_{G-1}."""
    return _patterns(cfg.group, cfg.table)


def _check_int(a, name: str, lo: int, hi: int, ndim: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer dtype, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ValueError(f"{name}: values outside [{lo}, {hi}]")
    return a


def _check_k(k: int, cfg: TLMMConfig) -> None:
    if k < 1:
        raise ValueError(f"K: must be >= 1, got {k}")
    if k > cfg.max_k():
        raise ValueError(
            f"K: {k} exceeds max_k() = {cfg.max_k()} for acc_bits={cfg.acc_bits}, "
            f"act_bits={cfg.act_bits} (the accumulator could overflow)"
        )


def _check_x(x_q, cfg: TLMMConfig) -> np.ndarray:
    x_q = np.asarray(x_q)
    if x_q.ndim != 2:
        raise ValueError(f"x_q: expected [M, K], got shape {x_q.shape}")
    _check_k(x_q.shape[1], cfg)
    lo = -(1 << (cfg.act_bits - 1))
    return _check_int(x_q, "x_q", lo, -lo - 1, 2)


def _pad_k(a: np.ndarray, cfg: TLMMConfig) -> np.ndarray:
    pad = num_groups(a.shape[-1], cfg) * cfg.group - a.shape[-1]
    return np.pad(a, ((0, 0), (0, pad))) if pad else a


# --------------------------------------------------------------------------- tables
def build_tables(x_q: np.ndarray, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """Online table build: int [M, ceil(K/G), entries], entry_bits signed (see module doc)."""
    x = _pad_k(_check_x(x_q, cfg), cfg).astype(_signed_dtype(cfg.entry_bits))
    m, kp = x.shape
    xg = x.reshape(m, kp // cfg.group, cfg.group)
    table = np.zeros((m, kp // cfg.group, 1), dtype=x.dtype)
    for i in range(cfg.group):
        xi = xg[:, :, i : i + 1]
        # digit i becomes the most significant: T'[d*3^i + j] = T[j] + (d-1)*x_i
        table = np.concatenate([table - xi, table, table + xi], axis=2)
    if cfg.table == "mirrored":
        table = table[:, :, center(cfg) :]
    return np.ascontiguousarray(table)


# --------------------------------------------------------------------------- weights
def encode_weights(
    w_t: np.ndarray, cfg: TLMMConfig = DEFAULT.tlmm
) -> tuple[np.ndarray, np.ndarray | None]:
    """Ternary w_t [N, K] -> (index uint8 [N, ceil(K/G)], sign uint8 same shape or None).

    Full: index = sum (w_i+1)*3^i, sign None. Mirrored: v = sum w_i*3^i,
    index = |v|, sign = (v < 0). K is padded with zero weights.
    """
    w_t = np.asarray(w_t)
    if w_t.ndim != 2:
        raise ValueError(f"w_t: expected [N, K], got shape {w_t.shape}")
    _check_k(w_t.shape[1], cfg)
    w = _pad_k(_check_int(w_t, "w_t", -1, 1, 2), cfg).astype(np.int16)
    n, kp = w.shape
    wg = w.reshape(n, kp // cfg.group, cfg.group)
    powers = 3 ** np.arange(cfg.group, dtype=np.int16)
    v = (wg * powers).sum(axis=2, dtype=np.int16)  # balanced-ternary value
    if cfg.table == "full":
        return (v + center(cfg)).astype(np.uint8), None
    return np.abs(v).astype(np.uint8), (v < 0).astype(np.uint8)


def _check_codes(index, sign, cfg: TLMMConfig) -> tuple[np.ndarray, np.ndarray | None]:
    index = _check_int(index, "index", 0, cfg.entries - 1, 2)
    if cfg.table == "full":
        if sign is not None:
            raise ValueError("sign: must be None for table='full'")
        return index, None
    if sign is None:
        raise ValueError("sign: required for table='mirrored'")
    sign = _check_int(sign, "sign", 0, 1, 2)
    if sign.shape != index.shape:
        raise ValueError(f"sign: shape {sign.shape} differs from index shape {index.shape}")
    return index, sign


def decode_weights(
    index: np.ndarray, sign: np.ndarray | None, k: int, cfg: TLMMConfig = DEFAULT.tlmm
) -> np.ndarray:
    """Inverse of encode_weights: int8 [N, k]. Padding weights must decode to 0, and a
    mirrored zero group must have sign 0 (the canonical form the encoder writes)."""
    index, sign = _check_codes(index, sign, cfg)
    if index.shape[1] != num_groups(k, cfg):
        raise ValueError(f"k: {k} needs {num_groups(k, cfg)} groups, index has {index.shape[1]}")
    w = group_patterns(cfg)[index.astype(np.intp)]  # [N, Gn, G]
    if sign is not None:
        if np.any((sign == 1) & (index == 0)):
            raise ValueError("sign: set on the all-zero group (non-canonical code)")
        w = np.where(sign[..., None] == 1, -w, w)
    w = w.reshape(index.shape[0], -1)
    if np.any(w[:, k:]):
        raise ValueError(f"index: padding weights beyond k={k} must be zero")
    return np.ascontiguousarray(w[:, :k]).astype(np.int8)


def join_codes(
    index: np.ndarray, sign: np.ndarray | None, cfg: TLMMConfig = DEFAULT.tlmm
) -> np.ndarray:
    """Memory code of each group: index | sign << index_bits, uint8, code_bits wide."""
    index, sign = _check_codes(index, sign, cfg)
    code = index.astype(np.uint8)
    if sign is not None:
        code = code | (sign.astype(np.uint8) << cfg.index_bits)
    return code


def split_codes(
    code: np.ndarray, cfg: TLMMConfig = DEFAULT.tlmm
) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverse of join_codes (ValueError on an index >= entries)."""
    code = _check_int(code, "code", 0, (1 << cfg.code_bits) - 1, 2).astype(np.uint8)
    index = code & np.uint8((1 << cfg.index_bits) - 1)
    if int(index.max(initial=0)) >= cfg.entries:
        raise ValueError(f"code: index >= entries ({cfg.entries})")
    if cfg.table == "full":
        return index, None
    return index, (code >> cfg.index_bits).astype(np.uint8)


# --------------------------------------------------------------------------- lookup
def lookup_accumulate(
    tables: np.ndarray, index: np.ndarray, sign: np.ndarray | None, cfg: TLMMConfig = DEFAULT.tlmm
) -> np.ndarray:
    """y[m, n] = sum_g (-1)^sign[n,g] * tables[m, g, index[n, g]]: int32 [M, N]."""
    tables = np.asarray(tables)
    if tables.ndim != 3 or tables.shape[2] != cfg.entries:
        raise ValueError(f"tables: expected [M, groups, {cfg.entries}], got shape {tables.shape}")
    lo = -(1 << (cfg.entry_bits - 1))
    tables = _check_int(tables, "tables", lo, -lo - 1, 3)
    index, sign = _check_codes(index, sign, cfg)
    m, groups, _ = tables.shape
    if index.shape[1] != groups:
        raise ValueError(f"index: {index.shape[1]} groups, tables have {groups}")
    acc_dtype = _acc_dtype(cfg)
    # no partial sum can exceed sum_g max_j |T| (the data form of the max_k() bound)
    # (abs is safe in the table dtype: entries were range-checked to entry_bits above)
    worst = np.abs(tables).max(axis=2, initial=0).sum(axis=1, dtype=np.int64)
    if worst.size and int(worst.max()) > (1 << (cfg.acc_bits - 1)) - 1:
        raise ValueError(
            f"tables: worst-case sum {int(worst.max())} overflows acc_bits={cfg.acc_bits}"
        )

    # +-1 per lookup (mirrored): multiplying is the cheapest vectorized conditional negate
    flip = None if sign is None else (1 - 2 * sign.astype(np.int16)).astype(tables.dtype)
    if m < _ROW_LOOP_MAX_M:
        return _lookup_by_row(tables, index, flip, acc_dtype)
    return _lookup_by_group(tables, index, flip, acc_dtype)


# below this many rows, gathering a row's whole table set at once beats a loop over groups
_ROW_LOOP_MAX_M = 8


def _lookup_by_row(tables, index, flip, acc_dtype) -> np.ndarray:
    m, groups, entries = tables.shape
    flat_index = np.arange(groups, dtype=np.intp) * entries + index  # [N, groups]
    out = np.empty((m, index.shape[0]), dtype=acc_dtype)
    for row in range(m):
        hit = tables[row].ravel()[flat_index]  # [N, groups]
        if flip is not None:
            hit *= flip
        out[row] = hit.sum(axis=1, dtype=acc_dtype)
    return out


def _lookup_by_group(tables, index, flip, acc_dtype) -> np.ndarray:
    m = tables.shape[0]
    table_t = np.ascontiguousarray(tables.transpose(1, 2, 0))  # [groups, entries, M]
    index_t = np.ascontiguousarray(index.T.astype(np.intp))  # [groups, N]
    flip_t = None if flip is None else np.ascontiguousarray(flip.T)[:, :, None]
    acc = np.zeros((index.shape[0], m), dtype=acc_dtype)
    for g in range(index_t.shape[0]):
        hit = table_t[g][index_t[g]]  # [N, M] lookups
        if flip_t is not None:
            hit *= flip_t[g]
        acc += hit
    return np.ascontiguousarray(acc.T)


def tlmm(x_q: np.ndarray, w_t: np.ndarray, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """y = x_q @ w_t.T (int32 [M, N]) by table build, weight encoding and lookup."""
    x_q = _check_x(x_q, cfg)
    w_t = np.asarray(w_t)
    if w_t.ndim != 2 or w_t.shape[1] != x_q.shape[1]:
        raise ValueError(f"w_t: expected [N, {x_q.shape[1]}], got shape {w_t.shape}")
    tables = build_tables(x_q, cfg)
    index, sign = encode_weights(w_t, cfg)
    return lookup_accumulate(tables, index, sign, cfg)


# --------------------------------------------------------------------------- report
def error_report(cfg=DEFAULT) -> list[dict]:
    """TLMM is exact: max |tlmm - int64 matmul| over random and extreme inputs, all G/modes."""
    from dataclasses import replace

    rng = np.random.default_rng(0)
    base = cfg.tlmm
    lo, hi = -(1 << (base.act_bits - 1)), (1 << (base.act_bits - 1)) - 1
    worst = 0
    for group in (2, 3, 4):
        for table in ("full", "mirrored"):
            c = replace(base, group=group, table=table)
            for m, k, n in ((1, 1, 4), (3, 7, 5), (4, 130, 9), (8, 1001, 16)):
                x = rng.integers(lo, hi + 1, size=(m, k), dtype=np.int64).astype(np.int8)
                w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
                ref = x.astype(np.int64) @ w.astype(np.int64).T
                worst = max(worst, int(np.max(np.abs(tlmm(x, w, c).astype(np.int64) - ref))))
            k = 4096
            for xv, wv in ((hi, 1), (lo, -1), (lo, 1)):
                x = np.full((1, k), xv, dtype=np.int8)
                w = np.full((2, k), wv, dtype=np.int8)
                worst = max(worst, abs(int(tlmm(x, w, c)[0, 0]) - k * xv * wv))
    return [
        {
            "block": "tlmm",
            "quantity": "|tlmm - int64 matmul| (exact)",
            "domain": "G in {2,3,4}, full+mirrored, random int8 x ternary, K<=1001; "
            "extremes K=4096",
            "bound": float(TLMM_ERROR_BOUND),
            "measured": float(worst),
        }
    ]


# --------------------------------------------------------------------------- exact sparsity
def live_groups(x_q, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """bool [rows, ceil(K/G)]: groups of x_q with a non-zero activation. TLMM_SPARSE reads
    the weight beats of these groups only (an all-zero group's lookups add 0 whatever the
    weights): the exact skip of DESIGN §9."""
    x_q = np.asarray(x_q)
    rows, k = x_q.shape
    pad = np.zeros((rows, num_groups(k, cfg) * cfg.group), bool)
    pad[:, :k] = x_q != 0
    return pad.reshape(rows, -1, cfg.group).any(-1)


def live_blocks(mask, cfg: TLMMConfig = DEFAULT.tlmm) -> np.ndarray:
    """bool [rows, ceil(N/Q)]: the TLMM row blocks (Q outputs) with a mask entry > 0 -- the
    only blocks a masked TLMM with skip reads (the others' outputs are all zeroed)."""
    mask = np.asarray(mask)
    rows, n = mask.shape
    pad = np.zeros((rows, -(-n // cfg.replicas) * cfg.replicas), bool)
    pad[:, :n] = mask > 0
    return pad.reshape(rows, -1, cfg.replicas).any(-1)
