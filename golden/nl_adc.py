"""Analog ramp-ADC nonlinearity (NL-ADC): golden model, device model, calibration, RTL twin.

After Yang, Mao et al., "Efficient nonlinear function approximation in analog resistive
crossbars for recurrent neural networks" (Nature Communications 2025, arXiv 2411.18271):
an extra memristor column generates a pre-distorted ramp, so that the count of a ramp
ADC's comparator *is* f(x) quantized to N bits. DESIGN §4; parameters in
``golden.config.ADCConfig`` (RTL twin) and ``ADCDeviceConfig`` (analog non-idealities).

Ideal model (``design``)
------------------------
For an increasing f, N bits and an output range [y_lo, y_hi]:

- LSB ``Δ = (y_hi - y_lo) / 2^N``; targets ``y_k = y_lo + kΔ``, k = 1 .. 2^N - 1.
- Thresholds ``T_k = f⁻¹(y_k)``: the float64 number where f crosses y_k,
  ``f(T_k) >= y_k > f(T_k - 1 ulp)``, found by bisection over float64 numbers (ordered
  as int64, at most 64 halvings) inside a bracket from the closed-form inverse when the
  function has one, else over the function's stated ``domain``. Tolerance: one ulp.
- Ramp: the ramp starts at T_1 (the integrator's reset level, a fixed fraction of the
  read voltage: ratiometric and exact) and rises by steps ``s_k = T_{k+1} - T_k``, one
  memristor per step; the step cells are programmed to conductances
  ``G_k = s_k / g_scale`` (units of G_max) with ``g_scale = max_k s_k`` (the largest step
  is G_max), i.e. G_k ∝ T_{k+1} - T_k.
- Code ``c = #{k : x >= T_k}`` (a counting comparator: one count per ramp step at which
  the input is at or above the ramp); output ``ŷ = y_lo + (c + ½)Δ``.
- Error: for x with f(x) in [y_lo, y_hi], ``|ŷ - f(x)| <= ½Δ`` (``HALF_LSB``; tests
  allow ``FLOAT_SLACK_LSB`` = 1e-9 LSB for float64 rounding of f and f⁻¹). Outside the
  range the code saturates at 0 / 2^N - 1, so ŷ is within ½Δ of clip(f(x), y_lo, y_hi)
  and the error against f itself is unbounded.

Named functions (``FUNCTIONS``): ``"sigmoid"``, ``"tanh"``, ``"exp"``, ``"linear"`` (the
identity: a conventional ramp ADC; all increasing on R);
``"relu2"`` = max(x, 0)^2, inverted on its increasing branch x >= 0 (f⁻¹ = sqrt); for
x < 0 f is flat at 0, which the counting comparator reproduces (code of f = 0).
``"gelu"`` (exact erf form) and ``"silu"`` are not monotonic: each has a minimum at
x_min (GELU: -0.7518, SiLU: -1.2785). The ADC implements their increasing branch: it
computes ``f(max(x, x_min))``; the default y_lo is f(x_min). On x >= x_min the ½-LSB
bound holds; on x < x_min, f(x) lies in (f(x_min), 0), so
``|ŷ - f(x)| <= ½Δ + |f(x_min)|`` (0.170 for GELU, 0.278 for SiLU), stated and tested.
Decreasing functions are rejected with a ValueError that names the mirror: pass
g(u) = f(-u) and feed u = -x (swap the comparator's inputs). A custom ``NLFunction`` must
be non-decreasing on its domain (checked on a 4097-point grid).

Device model (``sample_device``, ``NLADCDevice``)
-------------------------------------------------
One ``ADCDeviceConfig`` (config.py) with a seed, CrossSim-style named noise models:

- Programming error per cell (``prog_model``, ``sigma_prog``): "NormalProportional"
  G*(1 + σn) or "NormalIndependent" G + σn (σ in G_max units); clipped at 0. The ramp is
  the cumulative sum of its steps, so the error of threshold k is
  ``g_scale * Σ_{j<k} (G_j^prog - G_j)``: it accumulates along the ramp.
- Stuck-at-OFF (``stuck_off_prob``): a stuck cell conducts 0, its step is missing.
- Read noise (``read_model``, ``sigma_read``): per conversion, per cell, same two laws
  applied to the programmed conductance; it too accumulates along the ramp. One ramp
  serves ``columns`` comparators, so one conversion is one row of up to ``columns``
  inputs sharing one noisy ramp.
- Comparator offset per column (``sigma_offset``): Gaussian, in input units at nominal
  read voltage; column c fires at ramp step k when ``v*(x - T_k) + o_c >= 0`` (the
  comparator sees the difference voltage plus its offset), i.e. x >= T_k - o_c / v.
- Read-voltage scaling (``v_read``): ramp and input are both currents from the same
  read voltage integrated on the same kind of capacitor, so both scale by v. Without
  comparator offset the decision ``v*(x - T_k) >= 0`` does not depend on v
  (ratiometric; exactly so in float64 too, since x - T_k is zero only when x == T_k and
  a positive scale keeps the sign); the offset, a voltage, does not scale, so it acts
  as o_c / v in input units.

A device is drawn from ``numpy.random.default_rng([*seed, stream])``: stream 0 samples
the cells (programming noise, stuck flags of ramp and bias cells, comparator offsets,
always drawn in that order), stream 1 is the device's own read-noise generator (used by
conversions unless an ``rng`` is passed), stream 2 drives calibration. Same config and
seed give the same device; with the same generator state, the same conversions.

Input layout for conversions: any shape; element j of the last axis is compared by
column ``j % columns``; each leading index, and each block of ``columns`` along the last
axis, is one conversion (one ramp sweep, one read-noise draw).

Bias-cell calibration (``calibrate``)
-------------------------------------
The paper places 5 bias memristors below the 32 ramp cells of each NL-ADC column and
shows that they calibrate ramps with low or high programming error and with stuck-at-OFF
cells to a better INL (Fig. 3a; only its caption was available to us). How those cells
are sequenced and set is our model: the ramp column holds
``bias_cells`` extra cells, pulsed with ±V_read (the sign is a control bit) so they can
add or remove charge. ``"segmented"`` (default): the 2^N - 1 thresholds are cut into
B = min(bias_cells, 2^N - 1) equal-count segments and cell b is pulsed with the first
step of segment b, shifting every later threshold. ``"start"``: all cells are pulsed at
the ramp start (an offset correction only). Per iteration the host:

1. reads back the ramp (threshold levels in input units, the verify path, no comparator)
   ``cal_reads`` times with read noise and averages;
2. computes the threshold errors e_k and, per segment, the shift that minimizes
   Σ_k (e_k + D)^2 / h_k^2 (h_k: local ideal step, so the weight is 1/step^2 and the
   quantity minimized is the threshold error in LSB), i.e. D = -Σ(e/h²) / Σ(1/h²);
3. re-programs the bias cells to the new cumulative shifts (with programming error;
   magnitudes clip at G_max; a verify read tells the host which bias cells are stuck,
   and the next live cell takes their share).

Comparator offsets are per column and the bias cells are shared: calibration does not
touch them. ``calibration_study`` returns per-device RMS errors with and without it.

Digital twin (RTL contract)
---------------------------
Inputs and thresholds are signed ``threshold_bits``-bit fixed point with
``threshold_frac_bits`` = F fraction bits (Q(b-1-F).F).

- ``quantize_inputs``: X = floor(x * 2^F + ½) (round half up), saturated to the signed
  range.
- ``threshold_table``: Q_k = ceil(T_k * 2^F). For integer X, X >= ceil(T * 2^F) exactly
  when X / 2^F >= T, so on the fixed-point grid the twin's code equals the float model's
  code: threshold quantization adds no error there (additional bound 0). A threshold
  below the range clamps to the minimum (still exact: every input is >= it); one above
  the range raises ValueError unless ``saturate=True`` (then it clamps to the maximum and
  only X = max counts it). A sampled device's static error (programming, stuck cells,
  calibration bias, and the offset of one ``column`` if given, at the device's v_read)
  is folded into T_k before quantization; read noise is per conversion and is not.
  Without offset the twin reproduces the device's codes on the grid bit for bit; with a
  folded offset (device decides (x - T) + o >= 0, twin x >= T - o, at v_read = 1) they
  can differ only where x - (T - o) is within float64 rounding of 0.
- ``ramp_counter_codes``: the RTL's computation: for k = 0 .. 2^N - 2 in table order,
  code += (X >= Q_k). Tables need not be sorted (a calibrated ramp may step down).
- For a real input rounded to the grid, the twin adds at most
  ``max|f'| * 2^-(F+1) / Δ`` LSB (``twin_rounding_bound_lsb``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .config import DEFAULT, ADCConfig, ADCDeviceConfig, DatapathConfig

# ----------------------------------------------------------------------------- bounds
HALF_LSB = 0.5  # ideal quantization error bound, in LSB
FLOAT_SLACK_LSB = 1e-9  # float64 rounding of f and f⁻¹, in LSB
IDEAL_BOUND_LSB = HALF_LSB + FLOAT_SLACK_LSB
TWIN_SLOPE_MARGIN = 1.001  # max|f'| found on a dense grid, times this margin

# Calibration study operating point (error_report and tests): 6-bit sigmoid, 10 %
# programming error, 1 % stuck-at-OFF, small read noise, no comparator offset (which the
# shared bias cells cannot correct).
CAL_STUDY_FUNCTION = "sigmoid"
CAL_STUDY_BITS = 6
CAL_STUDY_DEVICES = 200
CAL_STUDY_INPUTS = 1024
CAL_STUDY_DEVICE = ADCDeviceConfig(
    seed=2411, sigma_prog=0.10, stuck_off_prob=0.01, sigma_read=0.002, cal_reads=4
)
# Calibration must beat no calibration by these factors (uncalibrated / calibrated RMS).
CAL_MIN_FACTOR_MEAN = 3.0
CAL_MIN_FACTOR_P90 = 4.0


# ----------------------------------------------------------------------------- checks
def _as_float_array(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.floating)
        or np.issubdtype(a.dtype, np.integer)
        or a.dtype == np.bool_
    ):
        raise ValueError(f"{name}: expected a real numeric array, got {a.dtype}")
    a = a.astype(np.float64)
    if np.isnan(a).any():
        raise ValueError(f"{name}: contains NaN")
    return a


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 12:
        raise ValueError(f"bits: expected an int in [1, 12], got {bits!r}")
    return int(bits)


def _check_v_read(v) -> float:
    v = float(v)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"v_read: must be finite and > 0, got {v}")
    return v


def _adc_cfg(cfg) -> ADCConfig:
    if isinstance(cfg, DatapathConfig):
        return cfg.adc
    if isinstance(cfg, ADCConfig):
        return cfg
    raise ValueError(f"cfg: expected DatapathConfig or ADCConfig, got {type(cfg).__name__}")


# ----------------------------------------------------------------------------- functions
def _sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def _logit(y):
    y = np.asarray(y, dtype=np.float64)
    return np.log(y) - np.log1p(-y)


_erf_ufunc = np.frompyfunc(math.erf, 1, 1)


def _erf(x):
    return np.asarray(_erf_ufunc(np.asarray(x, dtype=np.float64)), dtype=np.float64)


def _gelu(x):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _dgelu(x):
    x = np.asarray(x, dtype=np.float64)
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * pdf


def _silu(x):
    x = np.asarray(x, dtype=np.float64)
    return x * _sigmoid(x)


def _dsilu(x):
    s = _sigmoid(x)
    return s * (1.0 + np.asarray(x, dtype=np.float64) * (1.0 - s))


def _relu2(x):
    x = np.asarray(x, dtype=np.float64)
    r = np.maximum(x, 0.0)
    return r * r


def _root(df, lo: float, hi: float) -> float:
    """Zero of an increasing derivative on [lo, hi] by bisection to adjacent floats."""
    lo, hi = float(lo), float(hi)
    while True:
        mid = lo + (hi - lo) / 2
        if mid in (lo, hi):
            return hi
        if float(df(np.array(mid))) >= 0:
            hi = mid
        else:
            lo = mid


# Minima of GELU and SiLU: start of their increasing branch.
GELU_X_MIN = _root(_dgelu, -2.0, 0.0)
SILU_X_MIN = _root(_dsilu, -3.0, 0.0)


@dataclass(frozen=True)
class NLFunction:
    """A function the NL-ADC can compute.

    ``f`` is vectorized float64 and non-decreasing on ``domain`` = [a, b] (the interval
    used for inversion). ``finv`` is an optional closed-form inverse on [f(a), f(b)];
    ``df`` an optional derivative (used only for the twin's input-rounding bound).
    ``branch_min``: the ADC computes ``f(max(x, branch_min))`` (-inf: f itself).
    ``y_range`` is the default output range [y_lo, y_hi].
    """

    name: str
    f: Callable[[np.ndarray], np.ndarray]
    domain: tuple[float, float]
    y_range: tuple[float, float]
    finv: Callable[[np.ndarray], np.ndarray] | None = None
    df: Callable[[np.ndarray], np.ndarray] | None = None
    branch_min: float = -math.inf

    def implemented(self, x) -> np.ndarray:
        """The function the ADC approximates: f(max(x, branch_min))."""
        x = np.asarray(x, dtype=np.float64)
        return self.f(np.maximum(x, self.branch_min))


def _gated(name: str, f, df, x_min: float) -> NLFunction:
    """A gated activation (GELU, SiLU) on its increasing branch from its minimum ``x_min``
    to 50, output range [f(x_min), 4]."""
    return NLFunction(name, f, (x_min, 50.0), (float(f(x_min)), 4.0), df=df, branch_min=x_min)


FUNCTIONS: dict[str, NLFunction] = {
    "sigmoid": NLFunction(
        "sigmoid",
        _sigmoid,
        (-50.0, 50.0),
        (0.0, 1.0),
        finv=_logit,
        df=lambda x: _sigmoid(x) * (1.0 - _sigmoid(x)),
    ),
    "tanh": NLFunction(
        "tanh",
        np.tanh,
        (-25.0, 25.0),
        (-1.0, 1.0),
        finv=np.arctanh,
        df=lambda x: 1.0 - np.tanh(x) ** 2,
    ),
    "relu2": NLFunction(
        "relu2",
        _relu2,
        (0.0, 1e3),
        (0.0, 16.0),
        finv=np.sqrt,
        df=lambda x: 2.0 * np.maximum(x, 0.0),
        branch_min=0.0,
    ),
    "exp": NLFunction("exp", np.exp, (-60.0, 10.0), (0.0, 1.0), finv=np.log, df=np.exp),
    # the identity: a conventional (linear) ramp ADC, for comparisons
    "linear": NLFunction(
        "linear",
        lambda x: np.asarray(x, dtype=np.float64).copy(),
        (-1e6, 1e6),
        (-1.0, 1.0),
        finv=lambda y: np.asarray(y, dtype=np.float64).copy(),
        df=lambda x: np.ones_like(np.asarray(x, dtype=np.float64)),
    ),
    "gelu": _gated("gelu", _gelu, _dgelu, GELU_X_MIN),
    "silu": _gated("silu", _silu, _dsilu, SILU_X_MIN),
}


def get_function(fn: str | NLFunction) -> NLFunction:
    if isinstance(fn, NLFunction):
        return fn
    if isinstance(fn, str) and fn in FUNCTIONS:
        return FUNCTIONS[fn]
    raise ValueError(f"fn: expected one of {sorted(FUNCTIONS)} or an NLFunction, got {fn!r}")


def check_monotonic(fn: NLFunction, points: int = 4097) -> None:
    """Raise ValueError unless fn.f is non-decreasing on its domain (dense grid)."""
    a, b = fn.domain
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"fn: domain must be finite with a < b, got {fn.domain}")
    y = fn.f(np.linspace(a, b, points))
    if not np.all(np.isfinite(y)):
        raise ValueError(f"fn: {fn.name} is not finite on its domain {fn.domain}")
    d = np.diff(y)
    tol = 1e-12 * max(1.0, float(np.max(np.abs(y))))
    if np.all(d <= tol) and np.any(d < -tol):
        raise ValueError(
            f"fn: {fn.name} is decreasing on {fn.domain}; mirror it: pass "
            "g(u) = f(-u) on the mirrored domain and feed u = -x (swap the "
            "comparator inputs)"
        )
    if np.any(d < -tol):
        raise ValueError(
            f"fn: {fn.name} is not monotonic on {fn.domain}; restrict the "
            "domain to an increasing branch and set branch_min (as gelu/silu)"
        )


_SIGN_BIT = np.int64(-(1 << 63))
_MAGNITUDE = np.int64((1 << 63) - 1)


def _to_ordered(x) -> np.ndarray:
    """float64 -> int64 whose order is the float order (adjacent floats differ by 1)."""
    i = np.asarray(x, dtype=np.float64).view(np.int64)
    return np.where(i >= 0, i, -(i & _MAGNITUDE))


def _from_ordered(o: np.ndarray) -> np.ndarray:
    o = np.asarray(o, dtype=np.int64)
    return np.where(o >= 0, o, (-o) | _SIGN_BIT).view(np.float64)


def _crossing(fn: NLFunction, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Bisection over float64 numbers: with f(lo) < y <= f(hi), returns hi once hi is the
    float right after lo (at most 64 halvings)."""
    for _ in range(70):
        active = hi > lo + 1
        if not active.any():
            break
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # overflow-free floor average
        up = fn.f(_from_ordered(mid)) >= y
        hi = np.where(active & up, mid, hi)
        lo = np.where(active & ~up, mid, lo)
    return hi


def inverse(fn: str | NLFunction, y) -> np.ndarray:
    """The float64 x in fn.domain = [a, b] where f crosses y: f(x) >= y > f(x - 1 ulp)
    (x = a if f(a) >= y). Bisection over float64 numbers (int64 order), bracketed by the
    closed-form inverse when there is one, else by [a, b]; at most 64 halvings.

    Raises ValueError if some y lies outside [f(a), f(b)].
    """
    fn = get_function(fn)
    y = _as_float_array(y, "y")
    a, b = fn.domain
    fa, fb = float(fn.f(np.array(a))), float(fn.f(np.array(b)))
    if np.any(y < fa) or np.any(y > fb):
        raise ValueError(f"y: values must lie in f(domain) = [{fa}, {fb}] for {fn.name}")
    oa, ob = int(_to_ordered(a)), int(_to_ordered(b))
    at_a = fn.f(np.full(y.shape, a)) >= y
    if fn.finv is None:
        lo, hi = np.full(y.shape, oa), np.full(y.shape, ob)
    else:
        # bracket the closed-form estimate, widening by doubling numbers of ulps
        with np.errstate(divide="ignore", invalid="ignore"):
            x0 = np.asarray(fn.finv(y), dtype=np.float64)
        hi = _to_ordered(np.clip(np.nan_to_num(x0, nan=a, posinf=b, neginf=a), a, b))
        step = 1
        for _ in range(62):
            short = fn.f(_from_ordered(hi)) < y
            if not short.any():
                break
            hi = np.where(short, np.where(hi <= ob - step, hi + step, ob), hi)
            step *= 2
        lo = np.maximum(hi - 1, oa)
        step = 1
        for _ in range(62):
            over = (fn.f(_from_ordered(lo)) >= y) & (lo > oa)
            if not over.any():
                break
            lo = np.where(over, np.where(lo >= oa + step, lo - step, oa), lo)
            step *= 2
    x = _from_ordered(_crossing(fn, y, lo, hi))
    return np.where(at_a, a, x)


# ----------------------------------------------------------------------------- ideal ADC
def codes_from_thresholds(x, thresholds) -> np.ndarray:
    """Counting comparator: code = #{k : x >= T_k} (any order of T), int64."""
    x = _as_float_array(x, "x")
    t = np.sort(_as_float_array(thresholds, "thresholds").ravel())
    return np.searchsorted(t, x, side="right").astype(np.int64)


@dataclass(frozen=True, eq=False)
class NLADCDesign:
    """The ideal NL-ADC for one function, bit count and output range."""

    function: NLFunction
    bits: int
    y_lo: float
    y_hi: float
    thresholds: np.ndarray  # T_k, k = 1 .. 2^N - 1, float64, non-decreasing

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def n_thresholds(self) -> int:
        return self.levels - 1

    @property
    def lsb(self) -> float:
        return (self.y_hi - self.y_lo) / self.levels

    @property
    def start_level(self) -> float:
        """T_1: the ramp's reset level (input units)."""
        return float(self.thresholds[0])

    @property
    def steps(self) -> np.ndarray:
        """Ramp steps s_k = T_{k+1} - T_k (input units), 2^N - 2 of them."""
        return np.diff(self.thresholds)

    @property
    def g_scale(self) -> float:
        """Input units per G_max: the largest step is programmed to G_max."""
        s = self.steps
        return float(s.max()) if s.size and s.max() > 0 else 1.0

    @property
    def conductances(self) -> np.ndarray:
        """Step-cell target conductances G_k = s_k / g_scale, in units of G_max."""
        return self.steps / self.g_scale

    def target(self, x) -> np.ndarray:
        """What the ADC approximates: clip(f(max(x, branch_min)), y_lo, y_hi)."""
        return np.clip(self.function.implemented(_as_float_array(x, "x")), self.y_lo, self.y_hi)

    def codes(self, x) -> np.ndarray:
        return codes_from_thresholds(x, self.thresholds)

    def decode(self, codes) -> np.ndarray:
        """ŷ = y_lo + (c + ½)Δ."""
        c = np.asarray(codes)
        if not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"codes: expected an integer array, got {c.dtype}")
        if c.size and (c.min() < 0 or c.max() > self.n_thresholds):
            raise ValueError(f"codes: values must lie in [0, {self.n_thresholds}]")
        return self.y_lo + (c.astype(np.float64) + 0.5) * self.lsb

    def convert(self, x) -> np.ndarray:
        return self.decode(self.codes(x))


def design(
    fn: str | NLFunction = "sigmoid",
    bits: int = 6,
    y_lo: float | None = None,
    y_hi: float | None = None,
) -> NLADCDesign:
    """Ideal thresholds T_k = f⁻¹(y_lo + kΔ) for an increasing f (see module docstring).

    The targets y_lo + kΔ, k = 1 .. 2^N - 1, must lie in f(domain); otherwise ValueError.
    """
    fn = get_function(fn)
    bits = _check_bits(bits)
    check_monotonic(fn)
    lo = fn.y_range[0] if y_lo is None else float(y_lo)
    hi = fn.y_range[1] if y_hi is None else float(y_hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"y_lo/y_hi: must be finite, got {lo}, {hi}")
    if not lo < hi:
        raise ValueError(f"y_hi: must exceed y_lo, got y_lo={lo}, y_hi={hi}")
    levels = 1 << bits
    lsb = (hi - lo) / levels
    targets = lo + np.arange(1, levels) * lsb
    a, b = fn.domain
    fa, fb = float(fn.f(np.array(a))), float(fn.f(np.array(b)))
    if targets[0] < fa:
        raise ValueError(f"y_lo: y_lo + LSB = {targets[0]} is below f({a}) = {fa} for {fn.name}")
    if targets[-1] > fb:
        raise ValueError(f"y_hi: y_hi - LSB = {targets[-1]} is above f({b}) = {fb} for {fn.name}")
    t = inverse(fn, targets)
    t.setflags(write=False)
    return NLADCDesign(fn, bits, lo, hi, t)


# ----------------------------------------------------------------------------- device
def _seed_tuple(seed) -> tuple[int, ...]:
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        seeds = (int(seed),)
    elif (
        isinstance(seed, Sequence)
        and seed
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seed)
    ):
        seeds = tuple(int(s) for s in seed)
    else:
        raise ValueError(f"seed: expected a non-negative int or a sequence of them, got {seed!r}")
    if any(s < 0 for s in seeds):
        raise ValueError(f"seed: must be non-negative, got {seed!r}")
    return seeds


def _apply_noise(g: np.ndarray, model: str, sigma: float, n: np.ndarray) -> np.ndarray:
    if model == "NormalProportional":
        return g * (1.0 + sigma * n)
    return g + sigma * n  # NormalIndependent, sigma in G_max units


def _program(
    target: np.ndarray, cfg: ADCDeviceConfig, n: np.ndarray, stuck: np.ndarray
) -> np.ndarray:
    g = np.maximum(_apply_noise(target, cfg.prog_model, cfg.sigma_prog, n), 0.0)
    return np.where(stuck, 0.0, g)


def _bias_positions(n_thr: int, cfg: ADCDeviceConfig) -> np.ndarray:
    """First threshold index each bias cell shifts; -1: cell unused."""
    cells = cfg.bias_cells
    pos = np.full(cells, -1, dtype=np.int64)
    if cells == 0:
        return pos
    if cfg.bias_placement == "start":
        pos[:] = 0
        return pos
    used = min(cells, n_thr)
    pos[:used] = (np.arange(used) * n_thr) // used
    return pos


def _count_fired(x: np.ndarray, ramps: np.ndarray, v: float, off: np.ndarray) -> np.ndarray:
    """#{k : v*(x - T_k) + o >= 0} per element of x (n, C), ramps sorted per row (n or 1, K).

    The decision is monotone in T_k, so counting over the sorted ramp is a binary search
    (the count does not depend on the order the ramp visits its levels)."""
    k = ramps.shape[-1]
    rows = np.arange(x.shape[0])[:, None] if ramps.shape[0] > 1 else np.zeros((1, 1), np.int64)
    lo = np.zeros(x.shape, dtype=np.int64)
    hi = np.full(x.shape, k, dtype=np.int64)
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        mid = (lo + hi) // 2
        fire = v * (x - ramps[rows, np.minimum(mid, k - 1)]) + off >= 0
        lo = np.where(open_ & fire, mid + 1, lo)
        hi = np.where(open_ & ~fire, mid, hi)


@dataclass(eq=False)
class NLADCDevice:
    """One sampled NL-ADC instance (see module docstring for the model).

    Conductances are in units of G_max; ``g_steps`` are the programmed step cells,
    ``g_bias`` / ``bias_sign`` the bias cells (pulsed only once ``calibrated``),
    ``offsets`` the per-column comparator offsets in input units at nominal v_read.
    """

    design: NLADCDesign
    cfg: ADCDeviceConfig
    seed: tuple[int, ...]
    g_steps: np.ndarray
    stuck_steps: np.ndarray
    bias_pos: np.ndarray
    g_bias: np.ndarray
    bias_sign: np.ndarray
    stuck_bias: np.ndarray
    offsets: np.ndarray
    calibrated: bool = False
    read_rng: np.random.Generator = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.read_rng is None:
            self.read_rng = np.random.default_rng([*self.seed, 1])

    # -- ramp
    def _error(self, g_steps: np.ndarray, g_bias: np.ndarray) -> np.ndarray:
        """Threshold error (input units) of ramps with these cell conductances.

        g_steps: (..., K-1), g_bias: (..., B). Returns (..., K).
        """
        d = self.design
        lead = g_steps.shape[:-1]
        inc = np.zeros(lead + (d.n_thresholds,))
        inc[..., 1:] = g_steps - d.conductances
        if self.calibrated and g_bias.shape[-1]:
            # placement[b, k] = 1 where bias cell b is pulsed (before threshold k)
            placement = np.zeros((g_bias.shape[-1], d.n_thresholds))
            live = np.flatnonzero(self.bias_pos >= 0)
            placement[live, self.bias_pos[live]] = 1.0
            inc += (self.bias_sign * g_bias) @ placement
        return d.g_scale * np.cumsum(inc, axis=-1)

    def static_thresholds(self) -> np.ndarray:
        """Ramp levels without read noise or comparator offset (input units)."""
        return self.design.thresholds + self._error(self.g_steps, self.g_bias)

    def effective_thresholds(
        self, column: int | None = None, v_read: float | None = None
    ) -> np.ndarray:
        """Static thresholds as seen by comparator ``column`` (offset folded, o_c / v)."""
        t = self.static_thresholds()
        if column is None:
            return t
        if (
            isinstance(column, bool)
            or not isinstance(column, (int, np.integer))
            or not 0 <= column < self.cfg.columns
        ):
            raise ValueError(f"column: expected an int in [0, {self.cfg.columns}), got {column!r}")
        v = self.cfg.v_read if v_read is None else _check_v_read(v_read)
        return t - self.offsets[column] / v

    def noisy_ramps(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n ramp sweeps with read noise: (n, K) levels in input units (no comparator)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n: expected a non-negative int, got {n!r}")
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: expected numpy.random.Generator, got {type(rng).__name__}")
        gen, cfg = rng, self.cfg
        k1, nb = self.g_steps.size, self.g_bias.size
        z = gen.standard_normal((n, k1 + nb))
        gs = _apply_noise(self.g_steps, cfg.read_model, cfg.sigma_read, z[:, :k1])
        gb = _apply_noise(self.g_bias, cfg.read_model, cfg.sigma_read, z[:, k1:])
        return self.design.thresholds + self._error(gs, gb)

    def measure_ramp(self, reads: int, gen: np.random.Generator) -> np.ndarray:
        """Calibration read-back: the mean of ``reads`` noisy ramps (no comparator)."""
        if self.cfg.sigma_read == 0:
            return self.static_thresholds()
        return self.noisy_ramps(reads, gen).mean(axis=0)

    # -- conversion
    def codes(
        self, x, rng: np.random.Generator | None = None, v_read: float | None = None
    ) -> np.ndarray:
        """Output codes (int64, same shape as x). See the module docstring for the layout."""
        x = _as_float_array(x, "x")
        v = self.cfg.v_read if v_read is None else _check_v_read(v_read)
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: expected numpy.random.Generator, got {type(rng).__name__}")
        shape = x.shape
        if x.size == 0:
            return np.zeros(shape, dtype=np.int64)
        x2 = x.reshape(1, 1) if x.ndim == 0 else x.reshape(-1, shape[-1])
        rows, length = x2.shape
        cols = self.cfg.columns
        tiles = -(-length // cols)
        xp = np.pad(x2, ((0, 0), (0, tiles * cols - length))).reshape(rows * tiles, cols)
        if self.cfg.sigma_read == 0:
            ramps = self.static_thresholds()[None, :]  # one ramp for every conversion
        else:
            ramps = self.noisy_ramps(xp.shape[0], self.read_rng if rng is None else rng)
        out = _count_fired(xp, np.sort(ramps, axis=-1), v, np.asarray(self.offsets))
        out = out.reshape(rows, tiles * cols)[:, :length]
        return out.reshape(shape)

    def convert(
        self, x, rng: np.random.Generator | None = None, v_read: float | None = None
    ) -> np.ndarray:
        return self.design.decode(self.codes(x, rng=rng, v_read=v_read))

    def target(self, x) -> np.ndarray:
        return self.design.target(x)


def sample_device(
    dsg: NLADCDesign, cfg: ADCDeviceConfig | None = None, seed: int | Sequence[int] | None = None
) -> NLADCDevice:
    """Program the design's ramp onto a device drawn from (cfg, seed).

    ``cfg`` defaults to ``DEFAULT.adc.device`` (ideal); ``seed`` to ``cfg.seed``.
    """
    if not isinstance(dsg, NLADCDesign):
        raise ValueError(f"dsg: expected NLADCDesign, got {type(dsg).__name__}")
    cfg = DEFAULT.adc.device if cfg is None else cfg
    if not isinstance(cfg, ADCDeviceConfig):
        raise ValueError(f"cfg: expected ADCDeviceConfig, got {type(cfg).__name__}")
    seeds = _seed_tuple(cfg.seed if seed is None else seed)
    gen = np.random.default_rng([*seeds, 0])
    k1 = dsg.n_thresholds - 1
    n_steps = gen.standard_normal(k1)
    stuck_steps = gen.random(k1) < cfg.stuck_off_prob
    stuck_bias = gen.random(cfg.bias_cells) < cfg.stuck_off_prob
    offsets = cfg.sigma_offset * gen.standard_normal(cfg.columns)
    for arr in (stuck_steps, stuck_bias, offsets):
        arr.setflags(write=False)
    return NLADCDevice(
        design=dsg,
        cfg=cfg,
        seed=seeds,
        g_steps=_program(dsg.conductances, cfg, n_steps, stuck_steps),
        stuck_steps=stuck_steps,
        bias_pos=_bias_positions(dsg.n_thresholds, cfg),
        g_bias=np.zeros(cfg.bias_cells),
        bias_sign=np.ones(cfg.bias_cells),
        stuck_bias=stuck_bias,
        offsets=offsets,
    )


def _segment_shifts(err: np.ndarray, weight: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment, the shift D minimizing Σ w (e + D)^2 over its thresholds."""
    bounds = np.append(starts, err.size)
    return np.array(
        [
            -np.sum(weight[s:e] * err[s:e]) / np.sum(weight[s:e])
            for s, e in zip(bounds[:-1], bounds[1:], strict=False)
        ]
    )


def calibrate(device: NLADCDevice) -> NLADCDevice:
    """Bias-cell calibration (module docstring); returns a new, calibrated device.

    The step cells keep their programming error; only the bias cells are (re)programmed.
    Randomness (read-back noise, bias programming error) comes from stream 2 of the seed.
    """
    if not isinstance(device, NLADCDevice):
        raise ValueError(f"device: expected NLADCDevice, got {type(device).__name__}")
    cfg, d = device.cfg, device.design
    gen = np.random.default_rng([*device.seed, 2])
    live = (device.bias_pos >= 0) & ~device.stuck_bias
    dev = replace(
        device,
        calibrated=True,
        g_bias=np.zeros(cfg.bias_cells),
        bias_sign=np.ones(cfg.bias_cells),
        read_rng=None,
    )
    if not live.any():
        return dev
    h = np.gradient(d.thresholds) if d.n_thresholds > 1 else np.ones(1)
    weight = 1.0 / np.maximum(h, np.finfo(float).tiny) ** 2
    target = np.zeros(cfg.bias_cells)  # signed, input units (host's intent)
    cap = d.g_scale  # a bias cell delivers at most G_max
    for _ in range(cfg.cal_iterations):
        err = dev.measure_ramp(cfg.cal_reads, gen) - d.thresholds
        if cfg.bias_placement == "start":
            shift = _segment_shifts(err, weight, np.array([0]))[0]
            total = target[live].sum() + shift
            target[:] = 0.0
            target[live] = np.clip(total / live.sum(), -cap, cap)
        else:
            used = device.bias_pos >= 0
            starts = device.bias_pos[used]
            want = np.cumsum(np.where(live, target, 0.0)[used]) + _segment_shifts(
                err, weight, starts
            )
            running = 0.0
            new = np.zeros(cfg.bias_cells)
            for i, b in enumerate(np.flatnonzero(used)):
                if live[b]:
                    new[b] = np.clip(want[i] - running, -cap, cap)
                    running += new[b]
            target = new
        n = gen.standard_normal(cfg.bias_cells)
        g = _program(np.abs(target) / d.g_scale, cfg, n, device.stuck_bias)
        dev = replace(dev, g_bias=g, bias_sign=np.where(target < 0, -1.0, 1.0), read_rng=None)
    return dev


# ----------------------------------------------------------------------------- metrics
def evaluation_inputs(dsg: NLADCDesign, n_inputs: int = CAL_STUDY_INPUTS) -> np.ndarray:
    """Inputs x_i = f⁻¹(y_i) with y_i = y_lo + (i + ½)(y_hi - y_lo)/n: equal weight per level."""
    if isinstance(n_inputs, bool) or not isinstance(n_inputs, (int, np.integer)) or n_inputs < 1:
        raise ValueError(f"n_inputs: expected a positive int, got {n_inputs!r}")
    y = dsg.y_lo + (np.arange(n_inputs) + 0.5) * (dsg.y_hi - dsg.y_lo) / n_inputs
    return inverse(dsg.function, y)


def rms_error_lsb(
    adc: NLADCDesign | NLADCDevice,
    x=None,
    rng: np.random.Generator | None = None,
    v_read: float | None = None,
) -> float:
    """RMS of (ŷ - target(x)) / Δ; x defaults to ``evaluation_inputs`` (1024 points).

    The ideal value is about 1/sqrt(12) = 0.289 LSB.
    """
    dsg = adc.design if isinstance(adc, NLADCDevice) else adc
    if not isinstance(dsg, NLADCDesign):
        raise ValueError(f"adc: expected NLADCDesign or NLADCDevice, got {type(adc).__name__}")
    x = evaluation_inputs(dsg) if x is None else _as_float_array(x, "x")
    y = adc.convert(x, rng=rng, v_read=v_read) if isinstance(adc, NLADCDevice) else adc.convert(x)
    e = (y - dsg.target(x)) / dsg.lsb
    return float(np.sqrt(np.mean(e * e)))


def calibration_study(
    dsg: NLADCDesign,
    cfg: ADCDeviceConfig = CAL_STUDY_DEVICE,
    n_devices: int = CAL_STUDY_DEVICES,
    n_inputs: int = CAL_STUDY_INPUTS,
) -> dict:
    """Per-device RMS error (LSB) of devices (cfg.seed, i), i < n_devices, before and after
    ``calibrate``. Returns {"uncalibrated", "calibrated"} arrays and their "mean" / "p90"
    as (uncalibrated, calibrated) pairs."""
    if isinstance(n_devices, bool) or not isinstance(n_devices, (int, np.integer)) or n_devices < 1:
        raise ValueError(f"n_devices: expected a positive int, got {n_devices!r}")
    x = evaluation_inputs(dsg, n_inputs)
    unc = np.empty(n_devices)
    cal = np.empty(n_devices)
    for i in range(n_devices):
        dev = sample_device(dsg, cfg, seed=(cfg.seed, i))
        unc[i] = rms_error_lsb(dev, x)
        cal[i] = rms_error_lsb(calibrate(dev), x)
    return {
        "uncalibrated": unc,
        "calibrated": cal,
        "mean": (float(unc.mean()), float(cal.mean())),
        "p90": (float(np.percentile(unc, 90)), float(np.percentile(cal, 90))),
    }


# ----------------------------------------------------------------------------- RTL twin
def quantize_inputs(x, cfg: DatapathConfig | ADCConfig = DEFAULT) -> np.ndarray:
    """X = floor(x * 2^F + ½) saturated to the signed threshold_bits range (int64)."""
    a = _adc_cfg(cfg)
    x = _as_float_array(x, "x")
    q = np.floor(x * float(1 << a.threshold_frac_bits) + 0.5)
    return np.clip(q, a.threshold_min, a.threshold_max).astype(np.int64)


def threshold_table(
    source,
    cfg: DatapathConfig | ADCConfig = DEFAULT,
    column: int | None = None,
    saturate: bool = False,
) -> np.ndarray:
    """Integer threshold table Q_k = ceil(T_k * 2^F) (int64, ramp order).

    ``source``: an NLADCDesign (ideal), an NLADCDevice (static device error folded in,
    plus comparator ``column``'s offset if given) or float thresholds in input units.
    Its length must be ``cfg.adc.n_thresholds``.
    """
    a = _adc_cfg(cfg)
    if isinstance(source, NLADCDevice):
        t = source.effective_thresholds(column)
    elif column is not None:
        raise ValueError("column: only meaningful for an NLADCDevice source")
    elif isinstance(source, NLADCDesign):
        t = np.asarray(source.thresholds)
    else:
        t = _as_float_array(source, "source")
    if t.ndim != 1 or t.size != a.n_thresholds:
        raise ValueError(
            f"source: expected {a.n_thresholds} thresholds for {a.bits} bits, got shape {t.shape}"
        )
    if np.isinf(t).any():
        raise ValueError("source: thresholds must be finite")
    q = np.ceil(t * float(1 << a.threshold_frac_bits))
    if not saturate and np.any(q > a.threshold_max):
        raise ValueError(
            f"source: threshold above the largest input "
            f"{a.threshold_max / (1 << a.threshold_frac_bits)}; rescale the "
            "input or pass saturate=True"
        )
    return np.clip(q, a.threshold_min, a.threshold_max).astype(np.int64)


def _check_int_array(v, name: str, lo: int, hi: int) -> np.ndarray:
    arr = np.asarray(v)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer array, got {arr.dtype}")
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"{name}: values must lie in [{lo}, {hi}]")
    return arr.astype(np.int64)


def ramp_counter_codes(x_q, table, cfg: DatapathConfig | ADCConfig = DEFAULT) -> np.ndarray:
    """The RTL's conversion: the counter steps through the table, every lane compares.

    code = Σ_k [x_q >= table[k]], k = 0 .. 2^N - 2 in table order (int64, shape of x_q).
    """
    a = _adc_cfg(cfg)
    x = _check_int_array(x_q, "x_q", a.threshold_min, a.threshold_max)
    t = _check_int_array(table, "table", a.threshold_min, a.threshold_max)
    if t.shape != (a.n_thresholds,):
        raise ValueError(f"table: expected shape ({a.n_thresholds},), got {t.shape}")
    code = np.zeros(x.shape, dtype=np.int64)
    for q in t:  # one ramp step per cycle
        code += x >= q
    return code


def twin_rounding_bound_lsb(dsg: NLADCDesign, cfg: DatapathConfig | ADCConfig = DEFAULT) -> float:
    """Bound on |ŷ_twin(round(x)) - f(x)| in LSB for real x with f(x) in [y_lo, y_hi]:
    ½ + max|f'| * 2^-(F+1) / Δ, max|f'| over the input range widened by half a grid step
    (dense grid, times TWIN_SLOPE_MARGIN)."""
    a = _adc_cfg(cfg)
    half = 0.5 / (1 << a.threshold_frac_bits)
    fn = dsg.function
    lo_x = inverse(fn, max(dsg.y_lo, float(fn.f(np.array(fn.domain[0])))))
    hi_x = inverse(fn, min(dsg.y_hi, float(fn.f(np.array(fn.domain[1])))))
    grid = np.linspace(float(lo_x) - half, float(hi_x) + half, 200001)
    if fn.df is not None:
        slope = float(np.max(np.abs(fn.df(grid))))
    else:
        slope = float(np.max(np.abs(np.diff(fn.f(grid)) / np.diff(grid))))
    return HALF_LSB + FLOAT_SLACK_LSB + TWIN_SLOPE_MARGIN * slope * half / dsg.lsb


def twin_test_inputs(dsg: NLADCDesign, n: int, rng: np.random.Generator) -> np.ndarray:
    """n real inputs x = f⁻¹(y), y uniform over [y_lo, y_hi] ∩ f(domain)."""
    fn = dsg.function
    lo = max(dsg.y_lo, float(fn.f(np.array(fn.domain[0]))))
    hi = min(dsg.y_hi, float(fn.f(np.array(fn.domain[1]))))
    return inverse(fn, rng.uniform(lo, hi, n))


# ----------------------------------------------------------------------------- report
def ideal_max_error_lsb(dsg: NLADCDesign, points: int = 20001) -> float:
    """Max |ŷ - f(x)| / Δ over a dense grid of x with f(x) in [y_lo, y_hi], plus every
    threshold and its float neighbours (the worst points)."""
    t = np.asarray(dsg.thresholds)
    xs = np.concatenate(
        [evaluation_inputs(dsg, points), t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)]
    )
    fx = dsg.function.implemented(xs)
    keep = (fx >= dsg.y_lo) & (fx <= dsg.y_hi)
    return float(np.max(np.abs(dsg.convert(xs[keep]) - fx[keep])) / dsg.lsb)


def twin_grid_max_error_lsb(dsg: NLADCDesign, cfg: DatapathConfig | ADCConfig = DEFAULT) -> float:
    """Max |ŷ_twin(X) - f(X / 2^F)| / Δ over every representable X with f in range."""
    a = _adc_cfg(cfg)
    xq = np.arange(a.threshold_min, a.threshold_max + 1, dtype=np.int64)
    x = xq / float(1 << a.threshold_frac_bits)
    fx = dsg.function.implemented(x)
    keep = (fx >= dsg.y_lo) & (fx <= dsg.y_hi)
    c = ramp_counter_codes(xq[keep], threshold_table(dsg, a), a)
    return float(np.max(np.abs(dsg.decode(c) - fx[keep])) / dsg.lsb)


def error_report(cfg: DatapathConfig = DEFAULT) -> list[dict]:
    """Stated bounds vs measured values (rows for ``python -m golden.report``):
    ideal ½-LSB error of sigmoid/tanh/relu2 at N = 4..8; the RTL twin on the fixed-point
    grid (threshold quantization adds 0) and for rounded real inputs; V_read ratiometry;
    the calibration improvement over CAL_STUDY_DEVICES sampled devices."""
    a = _adc_cfg(cfg)
    rows = []
    for name in ("sigmoid", "tanh", "relu2"):
        for bits in range(4, 9):
            dsg = design(name, bits)
            rows.append(
                {
                    "block": "nl_adc",
                    "quantity": f"ideal max |y_hat - f(x)| [LSB], {name}, N={bits}",
                    "domain": f"20001 x = f^-1(y), y evenly spaced in "
                    f"{list(FUNCTIONS[name].y_range)}; every T_k and its "
                    "float neighbours",
                    "bound": IDEAL_BOUND_LSB,
                    "measured": ideal_max_error_lsb(dsg),
                }
            )
    frac = a.threshold_frac_bits
    for name in ("sigmoid", "tanh", "relu2"):
        dsg = design(name, a.bits)
        rows.append(
            {
                "block": "nl_adc",
                "quantity": f"twin max |y_hat - f(X/2^{frac})| [LSB], {name}, N={a.bits} "
                "(ceil-quantized thresholds add 0)",
                "domain": f"every int{a.threshold_bits} X with f in range",
                "bound": IDEAL_BOUND_LSB,
                "measured": twin_grid_max_error_lsb(dsg, a),
            }
        )
        x = twin_test_inputs(dsg, 100000, np.random.default_rng([a.bits, 7]))
        y = dsg.decode(ramp_counter_codes(quantize_inputs(x, a), threshold_table(dsg, a), a))
        rows.append(
            {
                "block": "nl_adc",
                "quantity": f"twin max |y_hat(round(x)) - f(x)| [LSB], {name}, N={a.bits}",
                "domain": "1e5 real x = f^-1(y), y uniform in [y_lo, y_hi]",
                "bound": twin_rounding_bound_lsb(dsg, a),
                "measured": float(np.max(np.abs(y - dsg.function.implemented(x))) / dsg.lsb),
            }
        )
    dsg = design(CAL_STUDY_FUNCTION, CAL_STUDY_BITS)
    dev = sample_device(dsg, replace(CAL_STUDY_DEVICE, sigma_read=0.0))
    x = evaluation_inputs(dsg, 4096)
    base = dev.codes(x)
    change = max(int(np.max(np.abs(dev.codes(x, v_read=v) - base))) for v in (0.5, 0.75, 1.25, 1.5))
    rows.append(
        {
            "block": "nl_adc",
            "quantity": "max code change for v_read in [0.5, 1.5] (ratiometric)",
            "domain": "device with programming error and stuck cells, no offset/read noise",
            "bound": 0.0,
            "measured": float(change),
        }
    )
    st = calibration_study(dsg)
    where = (
        f"{CAL_STUDY_DEVICES} devices, {CAL_STUDY_FUNCTION} N={CAL_STUDY_BITS}, "
        f"sigma_prog={CAL_STUDY_DEVICE.sigma_prog}, stuck={CAL_STUDY_DEVICE.stuck_off_prob}, "
        f"sigma_read={CAL_STUDY_DEVICE.sigma_read}; uncal mean {st['mean'][0]:.3f} p90 "
        f"{st['p90'][0]:.3f}, cal mean {st['mean'][1]:.3f} p90 {st['p90'][1]:.3f} LSB"
    )
    rows.append(
        {
            "block": "nl_adc",
            "quantity": "calibrated / uncalibrated mean RMS error",
            "domain": where,
            "bound": 1.0 / CAL_MIN_FACTOR_MEAN,
            "measured": st["mean"][1] / st["mean"][0],
        }
    )
    rows.append(
        {
            "block": "nl_adc",
            "quantity": "calibrated / uncalibrated p90 RMS error",
            "domain": where,
            "bound": 1.0 / CAL_MIN_FACTOR_P90,
            "measured": st["p90"][1] / st["p90"][0],
        }
    )
    return rows


# ----------------------------------------------------------------------------- ACT kinds
# The ACT command's NL-ADC kinds (golden/isa.py ActKind, golden/model.py op_act): what
# the threshold table in accelerator memory must hold, and the host's choice of table.
ACT_VARIANTS = ("nl", "linear")


def act_design(hidden_act: str, variant: str, bits: int, cfg: DatapathConfig = DEFAULT):
    """The ideal design whose thresholds an ACT NL-ADC kind's table holds.

    The engine converts X (a signed ``threshold_bits`` integer read as X / 2^F,
    F = ``threshold_frac_bits``):

    - relu2 (X = the gate's 16-bit row quantizer output g16, |g16| < 2^(FB-1),
      FB = ``ForwardConfig.ffn_bits``; full scale M = 2^(FB-1-F) in X / 2^F units):
      ``"nl"``: relu2 with output range [0, M^2]; ``"linear"``: the identity on
      [-M, M] (a linear ADC, the square is digital);
    - silu (X = the gate in Q.``ActivationConfig.in_frac_bits``, which must equal F):
      ``"nl"``: the sigmoid on [0, 1] (σ(g); the products g·σ and ·up are digital).
    """
    a = _adc_cfg(cfg)
    if variant not in ACT_VARIANTS:
        raise ValueError(f"variant: expected one of {ACT_VARIANTS}, got {variant!r}")
    bits = _check_bits(bits)
    if bits > a.act_max_bits:
        raise ValueError(f"bits: {bits} exceeds the ACT table's act_max_bits = {a.act_max_bits}")
    if hidden_act == "relu2":
        full = float(1 << (cfg.forward.ffn_bits - 1)) / float(1 << a.threshold_frac_bits)
        if variant == "nl":
            return design("relu2", bits, 0.0, full * full)
        return design("linear", bits, -full, full)
    if hidden_act == "silu":
        if variant != "nl":
            raise ValueError("variant: silu models take only 'nl' (sigma by the NL-ADC)")
        if cfg.activation.in_frac_bits != a.threshold_frac_bits:
            raise ValueError(
                "cfg: ActivationConfig.in_frac_bits must equal ADCConfig.threshold_frac_bits "
                "(the gate in Q7.8 is the ADC input)"
            )
        return design("sigmoid", bits)
    raise ValueError(f"hidden_act: expected 'relu2' or 'silu', got {hidden_act!r}")


@dataclass(frozen=True)
class ActADC:
    """The host's NL-ADC setting of a model's ACT commands.

    ``variant`` ``"nl"`` (relu2: ReLU^2 by the NL-ADC, code 0 decoded as 0; silu: σ by
    the NL-ADC) or ``"linear"`` (relu2 only: a linear ramp ADC, then a digital square);
    ``bits`` N (1 .. ``ADCConfig.act_max_bits``); ``device``: None for the ideal
    thresholds, else an ``ADCDeviceConfig`` from which one device is sampled per layer
    (seed (device.seed, layer)), its static errors (programming, stuck cells, and with
    ``calibrate`` the bias-cell calibration) folded into the table
    (``threshold_table``, thresholds beyond the input range saturated). Read noise and
    comparator offsets are per conversion / per column and are not in a digital table.
    """

    variant: str = "nl"
    bits: int = 6
    device: ADCDeviceConfig | None = None
    calibrate: bool = False

    def __post_init__(self) -> None:
        if self.variant not in ACT_VARIANTS:
            raise ValueError(f"variant: expected one of {ACT_VARIANTS}, got {self.variant!r}")
        _check_bits(self.bits)
        if self.device is not None and not isinstance(self.device, ADCDeviceConfig):
            raise ValueError(
                f"device: expected an ADCDeviceConfig or None, got {type(self.device).__name__}"
            )
        if self.calibrate and self.device is None:
            raise ValueError("calibrate: needs a device (the ideal table has nothing to correct)")

    def describe(self) -> str:
        what = "NL-ADC" if self.variant == "nl" else "linear ADC + digital square"
        if self.device is None:
            dev = "ideal thresholds"
        else:
            d = self.device
            dev = f"device seed {d.seed} (sigma_prog {d.sigma_prog}, stuck {d.stuck_off_prob})" + (
                ", calibrated" if self.calibrate else ", uncalibrated"
            )
        return f"{what}, {self.bits} bit, {dev}"

    def table(self, hidden_act: str, layer: int, cfg: DatapathConfig = DEFAULT) -> np.ndarray:
        """The int16 threshold table of layer ``layer``'s ACT command."""
        a = _adc_cfg(cfg)
        if a.threshold_bits > 16:
            raise ValueError(
                f"cfg.adc.threshold_bits: {a.threshold_bits} exceeds the int16 table format"
            )
        dsg = act_design(hidden_act, self.variant, self.bits, cfg)
        acfg = replace(a, bits=self.bits)
        if self.device is None:
            return threshold_table(dsg, acfg).astype(np.int16)
        dev = sample_device(dsg, self.device, seed=(self.device.seed, int(layer)))
        if self.calibrate:
            dev = calibrate(dev)
        return threshold_table(dev, acfg, saturate=True).astype(np.int16)
