"""The one definition of every datapath parameter.

The golden models, the Amaranth generators in ``hw/`` and the host runtime all read
these objects; no block repeats a width, group size or table size as a literal.
Each section belongs to one datapath block (``golden/<block>.py``); derived widths are
properties so they cannot drift from the parameters they come from.

``DatapathConfig`` bundles the sections; ``DEFAULT`` is the shipped design point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {msg}")


# --------------------------------------------------------------------------- quant
@dataclass(frozen=True)
class QuantConfig:
    """Ternary weights and INT8 per-token activations (DESIGN §3)."""

    act_bits: int = 8            # signed activations: [-2^(b-1), 2^(b-1)-1]
    weight_eps: float = 1e-5     # clamp on mean|W| (as transformers)
    act_eps: float = 1e-5        # clamp on max|x| (as transformers)

    @property
    def act_min(self) -> int:
        return -(1 << (self.act_bits - 1))

    @property
    def act_max(self) -> int:
        return (1 << (self.act_bits - 1)) - 1


# --------------------------------------------------------------------------- tlmm
@dataclass(frozen=True)
class TLMMConfig:
    """Table-lookup ternary matmul.

    ``group`` (G) activations share one table of signed sums; ``tables`` (T) tables are
    built in parallel, each read by ``replicas`` (Q) copies per cycle (RTL only).
    ``table`` is ``"full"`` (3^G entries, TeLLMe v2) or ``"mirrored"`` ((3^G+1)/2
    entries + sign, bitnet.cpp TL2).
    """

    group: int = 3
    tables: int = 28
    replicas: int = 4
    table: str = "full"
    act_bits: int = 8
    acc_bits: int = 32

    def __post_init__(self) -> None:
        _check(self.group in (2, 3, 4), "group", f"must be 2, 3 or 4, got {self.group}")
        _check(self.table in ("full", "mirrored"), "table",
               f"must be 'full' or 'mirrored', got {self.table!r}")
        _check(self.tables >= 1, "tables", f"must be >= 1, got {self.tables}")
        _check(self.replicas >= 1, "replicas", f"must be >= 1, got {self.replicas}")

    @property
    def full_entries(self) -> int:
        return 3 ** self.group

    @property
    def entries(self) -> int:
        return self.full_entries if self.table == "full" else (self.full_entries + 1) // 2

    @property
    def index_bits(self) -> int:
        """Bits of one weight-group index (mirrored: magnitude index only, sign extra)."""
        return max(1, math.ceil(math.log2(self.entries)))

    @property
    def code_bits(self) -> int:
        """Bits per weight group in memory (mirrored adds the sign bit: 5 for G=3)."""
        return self.index_bits + (1 if self.table == "mirrored" else 0)

    @property
    def entry_bits(self) -> int:
        """Signed width of a table entry: |sum| <= G * 2^(act_bits-1)."""
        return self.act_bits + math.ceil(math.log2(self.group))

    def max_k(self) -> int:
        """Longest K whose worst-case sum fits the signed accumulator."""
        return ((1 << (self.acc_bits - 1)) - 1) // (1 << (self.act_bits - 1))


# --------------------------------------------------------------------------- requant
@dataclass(frozen=True)
class RequantConfig:
    """INT32 -> INTn by a fixed-point multiplier and right shift (round half up)."""

    mult_bits: int = 16          # unsigned multiplier width
    shift_max: int = 63
    out_bits: int = 8


# --------------------------------------------------------------------------- norm
@dataclass(frozen=True)
class NormConfig:
    """Fixed-point RMSNorm fused with INT8 output quantization."""

    in_frac_bits: int = 16       # residual stream: signed int32, Q15.16
    gamma_frac_bits: int = 12    # norm weight: signed int16, Q3.12
    rsqrt_lut_bits: int = 6      # LUT address bits (mantissa) for the rsqrt seed
    rsqrt_frac_bits: int = 16    # rsqrt mantissa precision
    newton_steps: int = 1
    eps: float = 1e-6


# --------------------------------------------------------------------------- rope
@dataclass(frozen=True)
class RopeConfig:
    table_frac_bits: int = 14    # cos/sin tables: signed int16, Q1.14
    theta: float = 10000.0


# --------------------------------------------------------------------------- softmax
@dataclass(frozen=True)
class SoftmaxConfig:
    """Online softmax with a base-2 exponent: integer part by shift, fraction by LUT."""

    in_frac_bits: int = 8        # logits (scaled scores) as signed fixed point
    exp_lut_bits: int = 6        # LUT address bits of the fraction of 2^f
    exp_frac_bits: int = 15      # precision of 2^f values
    sum_bits: int = 32
    recip_frac_bits: int = 16
    out_bits: int = 8            # probabilities as unsigned UQ0.8


# --------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class ActivationConfig:
    """ReLU^2 exact; SiLU/GELU as ReLU(x) - delta(|x|) with a linearly interpolated LUT."""

    in_frac_bits: int = 8        # input signed fixed point
    out_frac_bits: int = 8
    lut_bits: int = 6            # LUT address bits over |x| in [0, x_max)
    lut_frac_bits: int = 12
    x_max: float = 8.0           # beyond it delta(|x|) is taken as 0 (GELU) / exact tail (SiLU)


# --------------------------------------------------------------------------- NL-ADC
@dataclass(frozen=True)
class ADCConfig:
    """Ramp ADC that computes a monotonic f (DESIGN §4, arXiv 2411.18271)."""

    bits: int = 6
    threshold_bits: int = 16     # threshold table entries (digital twin, signed)
    threshold_frac_bits: int = 8


# --------------------------------------------------------------------------- all
@dataclass(frozen=True)
class DatapathConfig:
    quant: QuantConfig = field(default_factory=QuantConfig)
    tlmm: TLMMConfig = field(default_factory=TLMMConfig)
    requant: RequantConfig = field(default_factory=RequantConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    rope: RopeConfig = field(default_factory=RopeConfig)
    softmax: SoftmaxConfig = field(default_factory=SoftmaxConfig)
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    adc: ADCConfig = field(default_factory=ADCConfig)

    def with_(self, **sections) -> "DatapathConfig":
        return replace(self, **sections)


DEFAULT = DatapathConfig()
