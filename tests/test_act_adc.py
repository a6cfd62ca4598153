"""The ACT command's NL-ADC kinds in golden (golden/model.py op_act item 10,
golden/nl_adc.py act_design / ActADC, golden/isa.py ACT adc_table / adc_bits).

- op_act with each ADC kind against float math: the activation is the float NL-ADC
  model (``NLADCDesign.convert`` of the same quantized input) within the stated bounds,
  and that model is within 1/2 LSB (1 LSB at the code-0 decode) of the exact function;
- the command stream (golden executor) computes exactly the integer forward with the
  same ADC setting (ideal, a sampled device, a calibrated one; relu2 and silu models);
- argument errors of the new fields in the contract's order; bad ADC options are
  one-line ValueErrors naming the option.
"""

from __future__ import annotations

import numpy as np
import pytest

from golden import isa
from golden import nl_adc as N
from golden.config import DEFAULT, ADCDeviceConfig
from golden.isa import ActKind, ErrorCode, Opcode
from golden.model import GoldenModel, Scale, op_act, random_model
from golden.modelspec import ModelConfig
from golden.quant import hw_act_quant
from host.backends.golden import GoldenDevice
from host.device import DeviceError
from host.runtime import make_runtime
from tests.model_util import GQA4

FB = DEFAULT.forward.ffn_bits
A16 = (1 << (FB - 1)) - 1
F = DEFAULT.adc.threshold_frac_bits
# m = act * up in Q15.16 against the float model: scale roundings (four scale_muls,
# 2^-16 relative each, and the host constants' 2^-16) -> 2^-13 relative, plus up's
# 16-bit quantization (1/2 LSB of the row's up amax, times |act|), plus the final
# rounding (1/2 LSB of Q15.16), plus, for silu, a's rounding (1/2 LSB of Q7.8 times |up|)
REL = 2.0**-13


def _rows(rng, rows, dim):
    g = rng.integers(-(1 << 20), 1 << 20, size=(rows, dim)).astype(np.int32)
    u = rng.integers(-(1 << 20), 1 << 20, size=(rows, dim)).astype(np.int32)
    return g, u


KINDS = [("relu2", "nl"), ("relu2", "linear"), ("silu", "nl")]


@pytest.mark.parametrize("hidden_act,variant", KINDS)
@pytest.mark.parametrize("bits", [3, 6, 8])
def test_op_act_adc_vs_float(rng, hidden_act, variant, bits):
    rows, dim = 3, 257
    g, u = _rows(rng, rows, dim)
    sx = Scale(rng.integers(1 << 15, 1 << 16, size=rows), np.full(rows, 30))
    # real gate and up of a few units (relu2: c carries 1/A16, golden.model.compile_integer)
    c_g = Scale(np.int64(40000), np.int64(34 if hidden_act == "relu2" else 18))
    c_u = Scale(np.int64(50000), np.int64(34))
    dsg = N.act_design(hidden_act, variant, bits, DEFAULT)
    table = N.threshold_table(dsg, DEFAULT.adc.__class__(bits=bits)).astype(np.int16)
    m = op_act(g, u, sx, c_g, c_u, hidden_act, DEFAULT, (variant, bits, table))
    assert m.dtype == np.int32 and m.shape == (rows, dim)

    tok = sx.to_float()[:, None]
    u_f = u * tok * c_u.to_float() * A16
    _, au = hw_act_quant(u, DEFAULT.quant.__class__(act_bits=FB))
    u_lsb = au * tok * c_u.to_float()  # one LSB of up's 16-bit quantizer, real units
    if hidden_act == "relu2":
        g16, ag = hw_act_quant(g, DEFAULT.quant.__class__(act_bits=FB))
        sg = tok * c_g.to_float() * ag  # real units per g16 step
        v = g16 / 2.0**F
        c = dsg.codes(v)
        if variant == "nl":
            y = np.where(c == 0, 0.0, dsg.decode(c))
            exact = np.maximum(v, 0) ** 2
            # the ADC: <= 1/2 LSB (code > 0), < 1 LSB where code 0 is decoded as 0
            err = np.abs(y - exact) / dsg.lsb
            assert np.all(err[c > 0] <= N.IDEAL_BOUND_LSB) and np.all(err[c == 0] < 1.0)
        else:
            y = np.maximum(dsg.decode(c), 0.0) ** 2
            # the linear ADC: |y_hat - v| <= LSB/2, so |y_hat^2 - v^2| <= LSB(|v| + LSB/4)
            lin = np.maximum(dsg.decode(c), 0.0)
            assert np.all(np.abs(lin - np.maximum(v, 0)) <= dsg.lsb * N.IDEAL_BOUND_LSB)
        act = y * (2.0**F * sg) ** 2
        a_lsb = 0.0
    else:
        from golden.model import requant, scale_mul

        tg = scale_mul(Scale(sx.mant[:, None], sx.shift[:, None]), c_g, 16)
        gq = requant(g, tg, DEFAULT.activation.in_frac_bits, DEFAULT.activation.in_bits)
        x = gq / 2.0**F
        c = dsg.codes(x)
        sig = dsg.decode(c)
        # the NL-ADC sigmoid: <= 1/2 LSB
        assert np.all(np.abs(sig - N.FUNCTIONS["sigmoid"].f(x)) <= dsg.lsb * N.IDEAL_BOUND_LSB)
        act = x * sig
        a_lsb = 0.5 / 2.0**F
    m_f = act * u_f
    bound = REL * np.abs(m_f) + np.abs(act) * u_lsb * 0.5 + a_lsb * np.abs(u_f) + 2.0**-16
    got = m.astype(np.float64) / 2.0**16
    inside = np.abs(m_f) < 2.0**14  # not saturated at int32 Q15.16
    assert inside.mean() > 0.9
    assert np.all(np.abs(got - m_f)[inside] <= bound[inside] * 1.01)
    assert np.any(m != 0)


def _model(hidden_act):
    mc = ModelConfig(hidden_act=hidden_act, **GQA4)
    return random_model(mc, seed=7)


SETTINGS = [
    ("relu2", N.ActADC("nl", 6)),
    ("relu2", N.ActADC("linear", 4, ADCDeviceConfig.rram_typical(seed=2))),
    ("silu", N.ActADC("nl", 5, ADCDeviceConfig.rram_typical(seed=3), calibrate=True)),
]


@pytest.mark.parametrize("hidden_act,adc", SETTINGS, ids=lambda v: str(v)[:20])
def test_command_stream_equals_integer_forward(hidden_act, adc):
    """The golden backend (command stream) and golden.model's integer forward with the same
    ActADC give the same logits bit for bit, prefill then decode."""
    model = _model(hidden_act)
    toks = np.array([3, 14, 15, 9, 26, 5, 35, 8])
    gm = GoldenModel(model, "integer", act_adc=adc)
    cache = gm.new_cache()
    want = [gm.forward(toks[:6], cache), gm.forward(toks[6:], cache)]
    rt = make_runtime(model, "golden", act_adc=adc)
    got = [rt.forward(toks[:6]), rt.forward(toks[6:])]
    for w, g in zip(want, got, strict=True):
        assert np.array_equal(w, g)
    # the ADC changes the result (the setting reaches the ACT commands)
    plain = GoldenModel(model, "integer").forward(toks)
    assert not np.array_equal(plain[:6], want[0])
    kinds = {c.kind for c in rt.last_stream if c.op == Opcode.ACT}
    assert len(kinds) == 1 and isa.adc_kind(kinds.pop())


def test_device_tables_differ_per_layer_and_calibration():
    """A sampled device gives each layer its own table; calibration changes it; the ideal
    table is the design's thresholds quantized (golden.nl_adc.threshold_table)."""
    dev = ADCDeviceConfig.rram_typical(seed=5)
    a = N.ActADC("nl", 6, dev)
    t0, t1 = a.table("relu2", 0), a.table("relu2", 1)
    assert t0.dtype == np.int16 and t0.shape == (63,) and not np.array_equal(t0, t1)
    tc = N.ActADC("nl", 6, dev, calibrate=True).table("relu2", 0)
    ideal = N.ActADC("nl", 6).table("relu2", 0)
    assert not np.array_equal(tc, t0)
    # calibration brings the table nearer the ideal one
    assert np.abs(tc.astype(int) - ideal).mean() < np.abs(t0.astype(int) - ideal).mean()


def _act_cmd(gd, kind, **over):
    rows, dim = 1, 8
    z = np.zeros((rows, dim), np.int32)
    tbl = N.ActADC("nl", 3).table("relu2", 0)
    f = dict(
        gate=gd.alloc(z.nbytes, 64),
        up=gd.alloc(z.nbytes, 64),
        src_scale=gd.alloc(4, 64),
        dst=gd.alloc(z.nbytes, 64),
        rows=rows,
        dim=dim,
        g_mant=1 << 15,
        g_shift=20,
        u_mant=1 << 15,
        u_shift=20,
        kind=kind,
        adc_table=gd.alloc(tbl.nbytes, 64),
        adc_bits=3,
    )
    gd.write(f["adc_table"], tbl)
    f.update(over)
    return isa.command(Opcode.ACT, **f)


def _run(gd, cmd):
    s = gd.alloc(2 * isa.COMMAND_BYTES, isa.STREAM_ALIGN)
    gd.write(s, isa.encode_stream([cmd, isa.command(Opcode.END)]))
    gd.run(s, 2)
    try:
        gd.wait(10.0)
    except DeviceError as e:
        return e.code
    return ErrorCode.NONE


@pytest.mark.parametrize(
    "over,code",
    [
        ({}, ErrorCode.NONE),
        ({"adc_bits": 0}, ErrorCode.BAD_DIM),
        ({"adc_bits": DEFAULT.adc.act_max_bits + 1}, ErrorCode.BAD_DIM),
        ({"adc_table": 1}, ErrorCode.ALIGN),
        ({"adc_table": (1 << 20) - 8}, ErrorCode.ADDR_RANGE),
        ({"adc_bits": 8}, ErrorCode.ADDR_RANGE),  # 255 entries run past the end
    ],
)
def test_adc_argument_errors(over, code):
    gd = GoldenDevice(DEFAULT, mem_size=1 << 20)
    if over.get("adc_bits") == 8:
        over = {**over, "adc_table": (1 << 20) - 64}
    assert _run(gd, _act_cmd(gd, ActKind.RELU2_NLADC, **over)) == code
    # the non-ADC kinds ignore the fields
    gd2 = GoldenDevice(DEFAULT, mem_size=1 << 20)
    assert _run(gd2, _act_cmd(gd2, ActKind.RELU2, **over)) == ErrorCode.NONE


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(variant="log"), r"^variant: expected one of \('nl', 'linear'\), got 'log'$"),
        (dict(bits=0), r"^bits: expected an int in \[1, 12\], got 0$"),
        (dict(calibrate=True), r"^calibrate: needs a device"),
        (dict(device="rram"), r"^device: expected an ADCDeviceConfig or None, got str$"),
    ],
)
def test_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        N.ActADC(**kw)


def test_bad_settings_for_the_model():
    with pytest.raises(ValueError, match=r"^bits: 9 exceeds the ACT table's act_max_bits = 8$"):
        N.ActADC("nl", 9).table("relu2", 0)
    with pytest.raises(ValueError, match=r"^variant: silu models take only 'nl'"):
        N.ActADC("linear", 4).table("silu", 0)
    with pytest.raises(ValueError, match=r"^act_adc: expected golden.nl_adc.ActADC or None"):
        GoldenModel(_model("relu2"), "integer", act_adc="nl")
    with pytest.raises(ValueError, match=r"^act_adc: integer mode only"):
        GoldenModel(_model("relu2"), "reference", act_adc=N.ActADC())


@pytest.mark.parametrize("variant,bits", [("nl", 3), ("linear", 6)])
def test_study_figures_equal_the_integer_forward(variant, bits):
    """host.adc_study's figure (the shipped model's held-out bits/char through the command
    stream) equals the integer forward's with the same ActADC (the notebook's section 4
    asserts the same on its points): the logits are bit-identical."""
    from host import adc_study
    from notebooks import lib

    model, tok = lib.load(None)
    x, y = lib.heldout_windows(tok, 1, model.config.max_position_embeddings)[0]
    wins = [(x[:96], y[:96])]
    adc = N.ActADC(variant, bits)
    got = adc_study.accelerator_bpc(model, wins, adc)
    want = adc_study.golden_bpc(GoldenModel(model, "integer", act_adc=adc), wins)
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    plain = adc_study.golden_bpc(GoldenModel(model, "integer"), wins)[0]
    assert got[0] != plain  # the ADC reaches the figure
