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
    """Ternary weights and INT8 per-token activations (DESIGN §3).

    The hardware activation quantizer (``golden.quant.hw_act_quant``) takes signed
    ``hw_in_bits`` integers and multiplies by a per-row reciprocal
    ``recip = round(act_max * 2^(n+F) / amax)``, ``n = bit_length(amax)``,
    ``F = recip_frac_bits``; ``recip`` is unsigned ``recip_bits`` wide.
    """

    act_bits: int = 8  # signed activations: [-2^(b-1), 2^(b-1)-1]
    weight_eps: float = 1e-5  # clamp on mean|W| (as transformers)
    act_eps: float = 1e-5  # clamp on max|x| (as transformers)
    hw_in_bits: int = 32  # hardware quantizer input: signed int32 per element
    # F = 9 makes recip 17 bits unsigned: it fits the 18-bit signed B port of one DSP48E2.
    recip_frac_bits: int = 9

    def __post_init__(self) -> None:
        _check(2 <= self.act_bits <= 16, "act_bits", f"must be in [2, 16], got {self.act_bits}")
        _check(
            2 <= self.hw_in_bits <= 32, "hw_in_bits", f"must be in [2, 32], got {self.hw_in_bits}"
        )
        _check(
            0 <= self.recip_frac_bits,
            "recip_frac_bits",
            f"must be >= 0, got {self.recip_frac_bits}",
        )
        # the golden model evaluates x*recip + 2^(R-1) in int64
        _check(
            self.hw_product_bits <= 63,
            "recip_frac_bits",
            f"hw_in_bits + recip_bits + 1 = {self.hw_product_bits} exceeds 63",
        )

    @property
    def act_min(self) -> int:
        return -(1 << (self.act_bits - 1))

    @property
    def act_max(self) -> int:
        return (1 << (self.act_bits - 1)) - 1

    @property
    def recip_bits(self) -> int:
        """Unsigned width of the reciprocal: recip <= 2*act_max*2^F < 2^(act_bits+F)."""
        return self.act_bits + self.recip_frac_bits

    @property
    def hw_product_bits(self) -> int:
        """Signed width of x*recip + 2^(R-1) (|.| < 2^(hw_in_bits+recip_bits))."""
        return self.hw_in_bits + self.recip_bits + 1


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
        _check(
            self.table in ("full", "mirrored"),
            "table",
            f"must be 'full' or 'mirrored', got {self.table!r}",
        )
        _check(self.tables >= 1, "tables", f"must be >= 1, got {self.tables}")
        _check(self.replicas >= 1, "replicas", f"must be >= 1, got {self.replicas}")

    @property
    def full_entries(self) -> int:
        return 3**self.group

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
        """Signed width of a table entry.

        Entries lie in [-G*2^(a-1), +G*2^(a-1)]; the top is reached (all x = -2^(a-1),
        all w = -1), so the width is bit_length(G*2^(a-1)) + 1: 10 bits for G=2 and 3,
        11 for G=4 (a = act_bits = 8).
        """
        return (self.group << (self.act_bits - 1)).bit_length() + 1

    def max_k(self) -> int:
        """Longest K whose worst-case sum fits the signed accumulator.

        |y| <= K * 2^(act_bits-1) (reached at +K*2^(a-1) by all x = -2^(a-1), w = -1),
        and every partial sum obeys the same bound, so K <= max_k() means no overflow.
        """
        return ((1 << (self.acc_bits - 1)) - 1) // (1 << (self.act_bits - 1))


# --------------------------------------------------------------------------- requant
@dataclass(frozen=True)
class RequantConfig:
    """INT32 -> INTn by a fixed-point multiplier and right shift (round half up)."""

    in_bits: int = 32  # signed accumulator input
    mult_bits: int = 16  # unsigned multiplier width
    shift_max: int = 63
    out_bits: int = 8

    def __post_init__(self) -> None:
        _check(2 <= self.out_bits <= 32, "out_bits", f"must be in [2, 32], got {self.out_bits}")
        _check(2 <= self.in_bits <= 32, "in_bits", f"must be in [2, 32], got {self.in_bits}")
        _check(self.mult_bits >= 1, "mult_bits", f"must be >= 1, got {self.mult_bits}")
        _check(0 <= self.shift_max <= 63, "shift_max", f"must be in [0, 63], got {self.shift_max}")
        # the golden model evaluates acc*mult + 2^(shift-1) in int64
        _check(
            self.in_bits - 1 + self.mult_bits <= 61,
            "mult_bits",
            f"in_bits - 1 + mult_bits = {self.in_bits - 1 + self.mult_bits} exceeds 61",
        )

    @property
    def out_min(self) -> int:
        return -(1 << (self.out_bits - 1))

    @property
    def out_max(self) -> int:
        return (1 << (self.out_bits - 1)) - 1

    @property
    def mult_max(self) -> int:
        return (1 << self.mult_bits) - 1

    @property
    def product_bits(self) -> int:
        """Signed width of acc*mult (acc signed in_bits, mult unsigned mult_bits)."""
        return self.in_bits + self.mult_bits


# --------------------------------------------------------------------------- norm
@dataclass(frozen=True)
class NormConfig:
    """Fixed-point RMSNorm fused with INT8 output quantization (golden/rmsnorm.py).

    Residual rows are signed ``in_bits`` (Q(in_bits-1-in_frac_bits).in_frac_bits), gamma
    signed ``gamma_bits``. rsqrt: LUT seed addressed by (exponent parity, top
    ``rsqrt_lut_bits - 1`` mantissa bits), ``newton_steps`` Newton steps in UQ.
    ``rsqrt_frac_bits``. The output scale is ``scale_mant * 2^-scale_shift`` with an
    unsigned ``scale_mant_bits``-bit normalized mantissa. ``eps`` is the model's
    ``rms_norm_eps`` (build a config with ``dataclasses.replace`` for another model).
    """

    in_bits: int = 32  # residual stream: signed int32
    in_frac_bits: int = 16  # ... Q15.16
    gamma_bits: int = 16  # norm weight: signed int16
    gamma_frac_bits: int = 12  # ... Q3.12
    rsqrt_lut_bits: int = 6  # LUT address bits: 1 parity bit + 5 mantissa bits
    rsqrt_frac_bits: int = 16  # rsqrt seed / Newton precision: UQ1.16
    newton_steps: int = 1
    scale_mant_bits: int = 16  # output scale mantissa (also amax and sqrt(d)/127 mantissas)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        _check(2 <= self.in_bits <= 32, "in_bits", f"must be in [2, 32], got {self.in_bits}")
        _check(
            0 <= self.in_frac_bits < self.in_bits,
            "in_frac_bits",
            f"must be in [0, in_bits), got {self.in_frac_bits}",
        )
        _check(
            2 <= self.gamma_bits <= 16, "gamma_bits", f"must be in [2, 16], got {self.gamma_bits}"
        )
        _check(
            0 <= self.gamma_frac_bits < self.gamma_bits,
            "gamma_frac_bits",
            f"must be in [0, gamma_bits), got {self.gamma_frac_bits}",
        )
        _check(
            2 <= self.rsqrt_lut_bits <= 12,
            "rsqrt_lut_bits",
            f"must be in [2, 12], got {self.rsqrt_lut_bits}",
        )
        # y0*y0 and M*t stay below 2^63 in the golden model
        _check(
            self.rsqrt_lut_bits <= self.rsqrt_frac_bits <= 28,
            "rsqrt_frac_bits",
            f"must be in [rsqrt_lut_bits, 28], got {self.rsqrt_frac_bits}",
        )
        _check(
            0 <= self.newton_steps <= 3,
            "newton_steps",
            f"must be in [0, 3], got {self.newton_steps}",
        )
        _check(
            8 <= self.scale_mant_bits <= 20,
            "scale_mant_bits",
            f"must be in [8, 20], got {self.scale_mant_bits}",
        )
        _check(
            math.isfinite(self.eps) and self.eps >= 0,
            "eps",
            f"must be finite and >= 0, got {self.eps}",
        )

    @property
    def product_bits(self) -> int:
        """Signed width of x*gamma (|x| <= 2^(in_bits-1), |gamma| <= 2^(gamma_bits-1))."""
        return self.in_bits + self.gamma_bits - 1

    def sumsq_bits(self, dim: int) -> int:
        """Unsigned width of the exact sum of squares of a row of ``dim`` elements."""
        return (dim << (2 * (self.in_bits - 1))).bit_length()


# --------------------------------------------------------------------------- rope
@dataclass(frozen=True)
class RopeConfig:
    """Rotate-half RoPE from cos/sin tables (golden/rope.py).

    Tables: signed int16 Q1.``table_frac_bits``, positions 0..max_pos-1, frequencies
    theta^(-2i/head_dim). Output of a ``b``-bit input is ``min(b + 1, out_bits_max)`` bits
    signed (saturating; only reachable when b + 1 > out_bits_max).
    """

    table_frac_bits: int = 14  # cos/sin tables: signed int16, Q1.14
    theta: float = 10000.0
    max_pos: int = 2048  # table rows (positions 0..max_pos-1)
    out_bits_max: int = 32

    def __post_init__(self) -> None:
        _check(
            1 <= self.table_frac_bits <= 14,
            "table_frac_bits",
            f"must be in [1, 14] (int16 Q1.f), got {self.table_frac_bits}",
        )
        _check(
            math.isfinite(self.theta) and self.theta > 1,
            "theta",
            f"must be finite and > 1, got {self.theta}",
        )
        _check(self.max_pos >= 1, "max_pos", f"must be >= 1, got {self.max_pos}")
        _check(
            9 <= self.out_bits_max <= 32,
            "out_bits_max",
            f"must be in [9, 32], got {self.out_bits_max}",
        )

    def out_bits(self, in_bits: int) -> int:
        return min(in_bits + 1, self.out_bits_max)


# --------------------------------------------------------------------------- softmax
@dataclass(frozen=True)
class SoftmaxConfig:
    """Online softmax with a base-2 exponent: integer part by shift, fraction by LUT.

    Logits: signed ``in_bits`` Q.``in_frac_bits``. t = x * log2(e) with log2(e) as
    UQ1.``log2e_frac_bits``. 2^-f from a (2^exp_lut_bits + 1)-entry table of UQ1.
    ``exp_frac_bits`` values, linear interpolation on the next ``exp_interp_bits`` bits
    of f. Running sum: unsigned ``sum_bits`` UQ.``sum_frac_bits``. Reciprocal: divider,
    UQ1.``recip_frac_bits`` normalized. Probabilities: unsigned UQ0.``out_bits``.
    """

    in_bits: int = 16  # logits (scaled scores): signed int16
    in_frac_bits: int = 8  # ... Q7.8
    log2e_frac_bits: int = 20  # log2(e) constant: UQ1.20 (21 bits: one DSP48 port)
    exp_lut_bits: int = 6  # LUT address bits of the fraction of 2^-f
    exp_interp_bits: int = 10  # fraction bits fed to the interpolation multiplier
    exp_frac_bits: int = 15  # 2^-f values: UQ1.15
    sum_bits: int = 40  # running sum: UQ16.24
    sum_frac_bits: int = 24
    recip_frac_bits: int = 16  # reciprocal mantissa: UQ1.16
    out_bits: int = 16  # probabilities: UQ0.16 (see golden/softmax.py for why)

    def __post_init__(self) -> None:
        _check(2 <= self.in_bits <= 24, "in_bits", f"must be in [2, 24], got {self.in_bits}")
        _check(
            0 <= self.in_frac_bits < self.in_bits,
            "in_frac_bits",
            f"must be in [0, in_bits), got {self.in_frac_bits}",
        )
        _check(
            1 <= self.log2e_frac_bits <= 30,
            "log2e_frac_bits",
            f"must be in [1, 30], got {self.log2e_frac_bits}",
        )
        _check(
            1 <= self.exp_lut_bits <= 12,
            "exp_lut_bits",
            f"must be in [1, 12], got {self.exp_lut_bits}",
        )
        _check(
            0 <= self.exp_interp_bits
            and self.exp_lut_bits + self.exp_interp_bits <= self.t_frac_bits,
            "exp_interp_bits",
            "must be >= 0 with exp_lut_bits + exp_interp_bits <= "
            f"in_frac_bits + log2e_frac_bits, got {self.exp_interp_bits}",
        )
        _check(
            4 <= self.exp_frac_bits <= 24,
            "exp_frac_bits",
            f"must be in [4, 24], got {self.exp_frac_bits}",
        )
        _check(
            self.exp_frac_bits <= self.sum_frac_bits < self.sum_bits <= 62,
            "sum_frac_bits",
            "must satisfy exp_frac_bits <= sum_frac_bits < sum_bits <= 62, got "
            f"{self.sum_frac_bits} (sum_bits {self.sum_bits})",
        )
        _check(1 <= self.out_bits <= 24, "out_bits", f"must be in [1, 24], got {self.out_bits}")
        # the output shift E + RF - 1 - P must stay positive (see golden/softmax.py)
        _check(
            self.out_bits < self.exp_frac_bits + self.recip_frac_bits - 1
            and self.recip_frac_bits <= 30,
            "recip_frac_bits",
            f"must be <= 30 and > out_bits + 1 - exp_frac_bits, got {self.recip_frac_bits}",
        )

    @property
    def t_frac_bits(self) -> int:
        """Fraction bits of t = x * log2(e)."""
        return self.in_frac_bits + self.log2e_frac_bits

    @property
    def max_len(self) -> int:
        """Longest row: every term is <= 1.0, so N terms need log2(N+1) integer bits."""
        return (1 << (self.sum_bits - self.sum_frac_bits)) - 1


# --------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class ActivationConfig:
    """ReLU^2 exact; SiLU/GELU as ReLU(x) - delta(|x|) with a linearly interpolated LUT.

    Inputs/outputs of GELU/SiLU: signed ``in_bits`` Q.``in_frac_bits`` / signed
    ``out_bits`` Q.``out_frac_bits``. delta tables: 2^lut_bits + 1 entries over
    |x| in [0, 2^range_log2] (per function), unsigned UQ0.``lut_frac_bits``; delta = 0
    for |x| >= 2^range_log2.
    """

    in_bits: int = 16  # GELU/SiLU input: signed int16, Q7.8
    in_frac_bits: int = 8
    out_bits: int = 16  # GELU/SiLU output: signed int16, Q7.8
    out_frac_bits: int = 8
    lut_frac_bits: int = 12  # delta table entries: UQ0.12
    gelu_lut_bits: int = 6  # 64 segments over [0, 4): step 1/16
    gelu_range_log2: int = 2  # GELU delta(4) = 1.3e-4 < half an output LSB
    silu_lut_bits: int = 8  # 256 segments over [0, 16): step 1/16
    silu_range_log2: int = 4  # SiLU delta(16) = 1.8e-6; delta(8) = 2.7e-3 is not negligible

    def __post_init__(self) -> None:
        for name in ("in_bits", "out_bits"):
            v = getattr(self, name)
            _check(2 <= v <= 32, name, f"must be in [2, 32], got {v}")
        _check(
            0 <= self.in_frac_bits < self.in_bits,
            "in_frac_bits",
            f"must be in [0, in_bits), got {self.in_frac_bits}",
        )
        _check(
            0 <= self.out_frac_bits < self.out_bits,
            "out_frac_bits",
            f"must be in [0, out_bits), got {self.out_frac_bits}",
        )
        _check(
            max(self.in_frac_bits, self.out_frac_bits) <= self.lut_frac_bits <= 24,
            "lut_frac_bits",
            f"must be in [max(in_frac_bits, out_frac_bits), 24], got {self.lut_frac_bits}",
        )
        for kind in ("gelu", "silu"):
            lb, rl = getattr(self, f"{kind}_lut_bits"), getattr(self, f"{kind}_range_log2")
            _check(1 <= lb <= 12, f"{kind}_lut_bits", f"must be in [1, 12], got {lb}")
            # segments must be whole input LSBs so the address is a plain shift of |x|
            _check(
                0 <= rl and lb <= self.in_frac_bits + rl,
                f"{kind}_range_log2",
                f"need 0 <= range_log2 and lut_bits <= in_frac_bits + range_log2, got {rl}",
            )

    def lut_bits(self, kind: str) -> int:
        return getattr(self, f"{kind}_lut_bits")

    def range_log2(self, kind: str) -> int:
        return getattr(self, f"{kind}_range_log2")

    def seg_shift(self, kind: str) -> int:
        """Input LSBs per LUT segment, log2: address = |x| >> seg_shift."""
        return self.in_frac_bits + self.range_log2(kind) - self.lut_bits(kind)


# --------------------------------------------------------------------------- NL-ADC
_ADC_NOISE_MODELS = ("NormalProportional", "NormalIndependent")


@dataclass(frozen=True)
class ADCDeviceConfig:
    """Non-idealities of the analog NL-ADC ramp column (golden/nl_adc.py), one seed.

    Named noise models as Sandia CrossSim names its device errors:
    ``"NormalProportional"``: G -> G * (1 + sigma * n);  ``"NormalIndependent"``:
    G -> G + sigma * n, sigma in units of G_max (n ~ N(0, 1)). Conductances are in units
    of G_max (the largest ramp step is programmed to 1.0); programmed values clip at 0.

    - ``sigma_prog`` / ``prog_model``: programming error, drawn once per cell when a
      device is sampled (ramp step cells and calibration bias cells alike).
    - ``stuck_off_prob``: probability that a cell is stuck at OFF (conducts 0).
    - ``sigma_read`` / ``read_model``: read noise, drawn per conversion per cell; the ramp
      is shared by all ``columns`` comparators of one conversion.
    - ``sigma_offset``: comparator offset per column, Gaussian, in *input units at
      nominal read voltage* (an offset voltage divided by the volts per input unit at
      ``v_read = 1``); it is a voltage, so it does not scale with ``v_read``.
    - ``v_read``: read voltage relative to nominal; scales ramp and input alike.
    - ``bias_cells``: extra cells in the ramp column used by bias calibration (the paper
      uses 5); ``bias_placement`` ``"segmented"`` pulses cell b at the start of ramp
      segment b (equal-count segments), ``"start"`` pulses all at the ramp start (a pure
      offset correction). ``cal_reads`` ramp read-backs are averaged per calibration
      iteration; ``cal_iterations`` measure/re-program rounds.

    The default is the ideal device (all errors zero).
    """

    seed: int = 0
    prog_model: str = "NormalProportional"
    sigma_prog: float = 0.0
    stuck_off_prob: float = 0.0
    read_model: str = "NormalProportional"
    sigma_read: float = 0.0
    sigma_offset: float = 0.0
    v_read: float = 1.0
    columns: int = 64
    bias_cells: int = 5
    bias_placement: str = "segmented"
    cal_reads: int = 4
    cal_iterations: int = 1

    def __post_init__(self) -> None:
        for name in ("prog_model", "read_model"):
            _check(
                getattr(self, name) in _ADC_NOISE_MODELS,
                name,
                f"must be one of {_ADC_NOISE_MODELS}, got {getattr(self, name)!r}",
            )
        for name in ("sigma_prog", "sigma_read", "sigma_offset"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v >= 0, name, f"must be finite and >= 0, got {v}")
        _check(
            0.0 <= self.stuck_off_prob <= 1.0,
            "stuck_off_prob",
            f"must be in [0, 1], got {self.stuck_off_prob}",
        )
        _check(
            math.isfinite(self.v_read) and self.v_read > 0,
            "v_read",
            f"must be finite and > 0, got {self.v_read}",
        )
        _check(self.columns >= 1, "columns", f"must be >= 1, got {self.columns}")
        _check(self.bias_cells >= 0, "bias_cells", f"must be >= 0, got {self.bias_cells}")
        _check(
            self.bias_placement in ("segmented", "start"),
            "bias_placement",
            f"must be 'segmented' or 'start', got {self.bias_placement!r}",
        )
        _check(self.cal_reads >= 1, "cal_reads", f"must be >= 1, got {self.cal_reads}")
        _check(
            self.cal_iterations >= 1, "cal_iterations", f"must be >= 1, got {self.cal_iterations}"
        )

    @property
    def is_ideal(self) -> bool:
        return (
            self.sigma_prog == 0
            and self.stuck_off_prob == 0
            and self.sigma_read == 0
            and self.sigma_offset == 0
        )

    @classmethod
    def rram_typical(cls, seed: int = 0) -> ADCDeviceConfig:
        """An illustrative RRAM operating point (write-verified cells), not a measured one."""
        return cls(
            seed=seed, sigma_prog=0.05, stuck_off_prob=0.01, sigma_read=0.005, sigma_offset=0.002
        )


@dataclass(frozen=True)
class ADCConfig:
    """Ramp ADC that computes a monotonic f (DESIGN §4, arXiv 2411.18271).

    Digital twin (RTL): a ramp counter steps through ``n_thresholds`` = 2^bits - 1
    thresholds; every lane compares its input with the current threshold in parallel;
    the code is the count of thresholds <= input. Thresholds and inputs are signed
    ``threshold_bits``-bit fixed point with ``threshold_frac_bits`` fraction bits.
    ``lanes`` is the number of comparators sharing one counter in the RTL.
    ``device`` holds the analog non-idealities used when the host programs thresholds
    from a sampled device. ``act_max_bits``: the largest N an ACT command's NL-ADC kinds
    may ask for (``golden.isa`` ACT ``adc_bits``); the ACT engine's threshold RAM holds
    2^act_max_bits words.
    """

    bits: int = 6
    threshold_bits: int = 16  # threshold table entries (digital twin, signed)
    threshold_frac_bits: int = 8
    lanes: int = 16
    device: ADCDeviceConfig = field(default_factory=ADCDeviceConfig)
    act_max_bits: int = 8

    def __post_init__(self) -> None:
        _check(1 <= self.bits <= 12, "bits", f"must be in [1, 12], got {self.bits}")
        _check(
            2 <= self.threshold_bits <= 32,
            "threshold_bits",
            f"must be in [2, 32], got {self.threshold_bits}",
        )
        _check(
            0 <= self.threshold_frac_bits < self.threshold_bits,
            "threshold_frac_bits",
            f"must be in [0, threshold_bits), got {self.threshold_frac_bits}",
        )
        _check(self.lanes >= 1, "lanes", f"must be >= 1, got {self.lanes}")
        _check(
            1 <= self.act_max_bits <= 12,
            "act_max_bits",
            f"must be in [1, 12], got {self.act_max_bits}",
        )

    @property
    def levels(self) -> int:
        """Number of output codes, 2^bits."""
        return 1 << self.bits

    @property
    def n_thresholds(self) -> int:
        """Thresholds in the table (ramp steps compared per conversion), 2^bits - 1."""
        return (1 << self.bits) - 1

    @property
    def threshold_min(self) -> int:
        return -(1 << (self.threshold_bits - 1))

    @property
    def threshold_max(self) -> int:
        return (1 << (self.threshold_bits - 1)) - 1


# --------------------------------------------------------------------------- forward
@dataclass(frozen=True)
class ForwardConfig:
    """Whole-layer datapath parameters not owned by a single block.

    Read by golden/model.py's integer forward and the accelerator runtime.
    """

    ffn_bits: int = 16  # per-token absmax width of gate (relu2) and up before the product
    pv_extra_bits: int = 7  # extra bits of the key-scaled probabilities in P.V (see op 6)
    # KV-cache codes: 8 (int8) or 4 (int4, two per byte); absmax per (token, KV head) either
    # way, one scale record each (golden/model.py op 3, golden/isa.py KV rows)
    kv_bits: int = 8

    def __post_init__(self) -> None:
        if not 2 <= self.ffn_bits <= 16:
            raise ValueError(f"ffn_bits: must be in [2, 16], got {self.ffn_bits}")
        if not 0 <= self.pv_extra_bits <= 7:
            raise ValueError(f"pv_extra_bits: must be in [0, 7], got {self.pv_extra_bits}")
        if self.kv_bits not in (4, 8):
            raise ValueError(f"kv_bits: must be 4 or 8, got {self.kv_bits!r}")

    @property
    def kv_max(self) -> int:
        """Largest KV code magnitude (symmetric absmax codes: 127 or 7)."""
        return (1 << (self.kv_bits - 1)) - 1


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
    forward: ForwardConfig = field(default_factory=ForwardConfig)

    def with_(self, **sections) -> DatapathConfig:
        return replace(self, **sections)


DEFAULT = DatapathConfig()


# --------------------------------------------------------------------------- design points
@dataclass(frozen=True)
class AccelConfig:
    """A design point of the accelerator: the datapath it implements and the hardware
    choices around it. The RTL (``hw.accel.Accel`` and every engine), the sim backend, the
    performance model, synthesis and the CLI read it; none repeats its values.

    Limits (``max_*``) size buffers: a command beyond them is BAD_DIM on the RTL. Widths
    (``*_lanes``) change throughput only. ``clock_mhz`` is the design target;
    ``evidence_mhz`` the clock the timing evidence supports (``evidence`` says which
    evidence: the UltraScale+ logic-depth rule of ``hw.timing`` or a routed nextpnr
    Fmax), set from ``make synth``'s report, which says when the two disagree. The DRAM
    figures are the board's: bandwidth in GB/s and read latency in cycles of the clock.
    """

    name: str = "kv260"
    datapath: DatapathConfig = field(default_factory=DatapathConfig)
    # limits
    # (the runtime splits a larger k into slices: host.runtime, ADD)
    max_k: int = 4096  # TLMM and LM_HEAD inner dimension (table / row buffers)
    # BitNet b1.58 2B-4T: FFN 6912 (NORM_QUANT rows, up_proj outputs), context 4096
    max_n: int = 8192  # a masked TLMM's outputs per row (its mask memory: max_n bits)
    max_dim: int = 8192  # NORM_QUANT and ACT row length (quantizer row buffers)
    max_keys: int = 4096  # QK / SOFTMAX / PV keys per row
    max_head_dim: int = 128  # ROPE_QUANT / QK / PV head_dim
    # engines: TLMM_SPARSE (exact activation sparsity) costs ~22 K LUT on the XCK26, more
    # than the kv260 point's 25 % LUT reserve allows; kv260-sparse builds it
    tlmm_sparse: bool = False
    # TLMM tokens per weight beat (P, a power of two): an unmasked command's rows go in
    # blocks of P, each weight beat read once per block and looked up in P table sets
    # (golden.isa.tlmm_read_bytes); 1 = row by row (decode's rows = 1 is the same at any P)
    tlmm_tokens: int = 1
    # widths
    norm_lanes: int = 8  # NORM_QUANT pass-2 elements per cycle (the quantize lanes)
    norm_stat_lanes: int = 4  # NORM_QUANT pass-1 elements per cycle (sum of squares, max/min)
    act_lanes: int = 4  # ACT pass-2 elements per cycle (the quantize/product lanes)
    act_amax_lanes: int = 16  # ACT pass-1 elements per cycle (the amax tree)
    residual_lanes: int = 4  # RESIDUAL elements per cycle
    softmax_lanes: int = 8  # SOFTMAX rows side by side
    softmax_chunk: int = 8  # SOFTMAX elements per lane read / write (>= lanes: a read a cycle)
    # SOFTMAX chunks read ahead: a power of two >= the DRAM latency + 2 lanes, so that reads
    # at one a cycle cover it (hw.ops.softmax.read_ahead_for); a logic width, not the latency
    softmax_read_ahead: int = 64
    pv_out_lanes: int = 4  # PV int32 outputs requantized and written per cycle
    pv_records: int = 32  # PV scale records per read (and 2x as many p values)
    qk_records: int = 32  # QK key scale records per read
    qk_out_lanes: int = 16  # QK logits per write
    # QK queries held at once: each K row and record is read once for them (hw.ops.qk)
    attn_block: int = 4
    rope_lanes: int = 4  # ROPE_QUANT elements rotated and quantized per cycle
    embed_scan_ids: int = 4  # EMBED token ids checked per scan read
    # memory system
    axi_ports: int = 5  # 128-bit AXI4 master ports (HP0-HP3 + HPC0 on a Zynq US+)
    axi_data_bits: int = 128
    axi_addr_bits: int = 49  # Zynq UltraScale+ HP port addresses
    dram_gbs: float = 17.1  # board DRAM bandwidth the design can use
    dram_latency: int = 32  # DRAM read latency, cycles of the clock (128 ns at 250 MHz)
    # clock and device
    device: str = "xck26"  # xck26 (KV260) or ecp5-85f
    clock_mhz: float = 250.0  # target
    evidence_mhz: float | None = None  # what the timing evidence supports (None: none yet)
    evidence: str = "no timing evidence yet"

    def __post_init__(self) -> None:
        for f in (
            "max_k",
            "max_n",
            "max_dim",
            "max_keys",
            "max_head_dim",
            "norm_lanes",
            "norm_stat_lanes",
            "act_lanes",
            "act_amax_lanes",
            "residual_lanes",
            "softmax_lanes",
            "softmax_chunk",
            "softmax_read_ahead",
            "pv_out_lanes",
            "pv_records",
            "qk_records",
            "qk_out_lanes",
            "attn_block",
            "rope_lanes",
            "embed_scan_ids",
            "axi_ports",
            "dram_latency",
            "tlmm_tokens",
        ):
            v = getattr(self, f)
            _check(isinstance(v, int) and v >= 1, f, f"must be an integer >= 1, got {v!r}")
        _check(
            isinstance(self.tlmm_sparse, bool),
            "tlmm_sparse",
            f"must be True or False, got {self.tlmm_sparse!r}",
        )
        _check(
            self.tlmm_tokens & (self.tlmm_tokens - 1) == 0,
            "tlmm_tokens",
            f"must be a power of two, got {self.tlmm_tokens}",
        )
        _check(
            33 <= self.axi_addr_bits <= 64,
            "axi_addr_bits",
            f"must be in 33..64 (bus addresses above the 32-bit device addresses), got "
            f"{self.axi_addr_bits}",
        )
        _check(
            self.axi_data_bits in (32, 64, 128),
            "axi_data_bits",
            f"must be 32, 64 or 128, got {self.axi_data_bits}",
        )
        for f in ("dram_gbs", "clock_mhz", "evidence_mhz"):
            v = getattr(self, f)
            _check(
                (v is None and f == "evidence_mhz")
                or (isinstance(v, (int, float)) and math.isfinite(v) and v > 0),
                f,
                f"must be a finite number > 0, got {v!r}",
            )
        _check(
            self.device in DEVICES,
            "device",
            f"must be one of {sorted(DEVICES)}, got {self.device!r}",
        )
        _check(
            self.max_k <= self.datapath.tlmm.max_k(),
            "max_k",
            f"{self.max_k} exceeds what the TLMM accumulator holds ({self.datapath.tlmm.max_k()})",
        )
        _check(
            self.max_keys <= self.datapath.softmax.max_len,
            "max_keys",
            f"{self.max_keys} exceeds the softmax sum's {self.datapath.softmax.max_len}",
        )

    @property
    def dma_bytes(self) -> int:
        """The engines' DMA beat width (``golden.isa.dma_bytes`` of the datapath)."""
        from golden.isa import dma_bytes

        return dma_bytes(self.datapath)

    @property
    def bytes_per_cycle(self) -> float:
        """DRAM bandwidth in bytes per cycle of the target clock."""
        return self.dram_gbs * 1e3 / self.clock_mhz

    def with_(self, **fields) -> AccelConfig:
        return replace(self, **fields)

    def clock_note(self) -> str:
        """How every modeled figure names its clock: the MHz it assumes, whether that is the
        design point's target, and what the timing evidence supports."""
        if self.evidence_mhz is None:
            ev = "no timing evidence yet"
        else:
            ev = f"timing evidence supports {self.evidence_mhz:g} MHz ({self.evidence})"
        return f"{self.clock_mhz:g} MHz ({self.name} target; {ev})"

    def digest(self) -> int:
        """32-bit hash of every field (the ID register's design-point hash)."""
        import hashlib
        import json
        from dataclasses import asdict

        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# The devices a design point may target: resources the fit checks against.
DEVICES = {
    "xck26": {"lut": 117_120, "ff": 234_240, "bram36": 144, "uram": 64, "dsp": 1248},
    "ecp5-85f": {"lut4": 83_640, "ff": 83_640, "dp16kd": 208, "mult18": 156},
}

# Named design points (``--design-point NAME``). kv260: the XCK26 of the Kria KV260 at
# 250 MHz with its DDR4 (17.1 GB/s usable of 19.2 peak). ecp5: an ECP5-85F, where an open
# flow routes the whole design: fewer tables and lanes, a 64-byte DMA, 100 MHz target.
DESIGN_POINTS = {
    # evidence: the whole accelerator's netlist (python -m hw.synth accel --no-ecp5, commit
    # 2caa67e) has paths of 14.25 logic levels; hw.timing.rule_mhz(14.25) = 113.5 MHz
    # (README: Fitting the KV260)
    "kv260": AccelConfig(
        evidence_mhz=113.5,
        evidence="UltraScale+ logic-depth rule, whole accelerator, 14.25 levels",
    ),
    # kv260 with the TLMM_SPARSE engine: every op of --sparse on the RTL, at ~82 % of the
    # XCK26's LUTs (kv260's top + the engine alone; README: Activation sparsity). No
    # whole-top synthesis of it yet: no timing evidence (the engine alone: 9.1 levels)
    "kv260-sparse": AccelConfig(name="kv260-sparse", tlmm_sparse=True),
    # kv260 with the INT4 KV cache (ForwardConfig.kv_bits = 4): K/V rows of head_dim/2
    # bytes (two codes a byte) + the scale record; README: INT4 KV cache. No timing evidence
    "kv260-kv4": AccelConfig(
        name="kv260-kv4", datapath=DatapathConfig(forward=ForwardConfig(kv_bits=4))
    ),
    # kv260 with the multi-token TLMM: prompt rows in blocks of 4 per weight beat (README:
    # Multi-token TLMM). A point for the perf model and DSE: its 4 table sets need ~449
    # RAMB36 (the engine alone), more than the XCK26's 144; no timing evidence
    "kv260-p4": AccelConfig(name="kv260-p4", tlmm_tokens=4),
    # kv260 with a multi-token TLMM that fits the XCK26: P = 2 on mirrored tables (14
    # entries of 10 bits, a 4-bit index and a sign bit per weight group, the same 5-bit
    # codes): 140-bit table words, 56 RAMB36 per token instead of 112 (README: Multi-token
    # TLMM). Evidence: its whole accelerator with the AXI shell (python -m hw.synth
    # --no-ecp5 --design-point kv260-p2, commit c3d2c09, before PV's blocks) has paths of
    # 15.0 levels; hw.timing.rule_mhz(15.0) = 108.1 MHz (README: Fitting the KV260)
    "kv260-p2": AccelConfig(
        name="kv260-p2",
        datapath=DatapathConfig(tlmm=TLMMConfig(table="mirrored")),
        tlmm_tokens=2,
        evidence_mhz=108.1,
        evidence="UltraScale+ logic-depth rule, whole accelerator and AXI shell, 15.0 levels",
    ),
    "ecp5": AccelConfig(
        name="ecp5",
        datapath=DatapathConfig(tlmm=TLMMConfig(tables=8, replicas=2)),
        max_k=2048,
        max_n=2048,
        max_dim=2048,
        max_keys=512,
        max_head_dim=64,
        norm_lanes=4,
        norm_stat_lanes=2,
        act_lanes=1,
        act_amax_lanes=4,
        residual_lanes=2,
        softmax_lanes=2,
        softmax_chunk=4,
        softmax_read_ahead=32,
        pv_out_lanes=2,
        pv_records=4,
        qk_records=4,
        qk_out_lanes=8,
        attn_block=1,  # no held-query registers: the area is the ECP5's limit
        rope_lanes=1,
        embed_scan_ids=1,
        axi_ports=1,
        axi_data_bits=64,
        axi_addr_bits=40,
        dram_gbs=0.8,
        dram_latency=16,
        device="ecp5-85f",
        clock_mhz=100.0,
    ),
}
DEFAULT_DESIGN_POINT = "kv260"


def design_point(name: str) -> AccelConfig:
    """The named design point (ValueError naming the known ones)."""
    if name not in DESIGN_POINTS:
        raise ValueError(f"design point: {name!r} is not one of {sorted(DESIGN_POINTS)}")
    return DESIGN_POINTS[name]


def design_point_with(name: str, clock_mhz=None, dram_gbs=None, dram_latency=None) -> AccelConfig:
    """The named design point with the command lines' overrides of its clock and DRAM (a
    changed clock is a new target that no timing evidence backs yet)."""
    dp = design_point(name)
    over = {
        k: v
        for k, v in (
            ("clock_mhz", clock_mhz),
            ("dram_gbs", dram_gbs),
            ("dram_latency", dram_latency),
        )
        if v is not None
    }
    if "clock_mhz" in over and over["clock_mhz"] != dp.clock_mhz:
        over.update(evidence_mhz=None, evidence="no timing evidence yet")
    return dp.with_(**over) if over else dp
