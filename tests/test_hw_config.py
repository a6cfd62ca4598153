"""Fast checks of the RTL generators (no simulation): widths come from the config, the
stream packing helpers follow the documented beat order, bad parameters are refused.
The bit-exact RTL checks are in sim/test_*.py."""

from dataclasses import replace

import numpy as np
import pytest

from golden import tlmm as gt
from golden.config import DEFAULT, QuantConfig, RequantConfig, TLMMConfig
from hw import quant as hq
from hw import requant as hr
from hw import tlmm as ht

CFGS = [
    DEFAULT.tlmm,
    TLMMConfig(group=2, tables=3, replicas=2, table="mirrored"),
    TLMMConfig(group=4, tables=2, replicas=3),
]


@pytest.mark.parametrize("cfg", CFGS, ids=str)
def test_tlmm_layout_widths_follow_config(cfg):
    assert ht.act_layout(cfg).size == cfg.group * cfg.tables * cfg.act_bits + 1
    assert ht.wgt_layout(cfg).size == cfg.tables * cfg.replicas * cfg.code_bits + 1
    assert ht.out_layout(cfg).size == cfg.replicas * cfg.acc_bits + 1
    comp = ht.TLMM(cfg, max_k=64)
    assert comp.depth == ht.chunk_count(64, cfg)


@pytest.mark.parametrize("cfg", CFGS, ids=str)
def test_tlmm_beats_replay_to_golden(cfg, rng):
    """Replaying the act/wgt beats as the module doc describes gives golden.tlmm."""
    m, k, n = 2, int(rng.integers(1, 200)), int(rng.integers(1, 3 * cfg.replicas))
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    codes = gt.join_codes(*gt.encode_weights(w, cfg), cfg)
    zero = int(gt.join_codes(*gt.encode_weights(np.zeros((1, cfg.group), np.int8), cfg), cfg)[0, 0])
    beats = ht.wgt_beats(codes, cfg, zero)
    kc, nb = ht.chunk_count(k, cfg), -(-n // cfg.replicas)
    assert len(beats) == kc * nb and [b["last"] for b in beats].count(1) == 1
    y = np.zeros((m, nb * cfg.replicas), np.int64)
    for tok in range(m):
        acts = ht.act_beats(x[tok], cfg)
        assert len(acts) == kc and acts[-1]["last"] == 1
        xs = np.concatenate([a["data"] for a in acts]).astype(np.int8)[None, :]
        tables = gt.build_tables(xs, cfg)[0]  # [groups, entries]
        for i, b in enumerate(beats):
            blk, c = divmod(i, kc)
            idx, sign = gt.split_codes(np.array(b["code"]).reshape(cfg.replicas, cfg.tables), cfg)
            for q in range(cfg.replicas):
                for t in range(cfg.tables):
                    v = int(tables[c * cfg.tables + t, idx[q, t]])
                    y[tok, blk * cfg.replicas + q] += -v if sign is not None and sign[q, t] else v
    np.testing.assert_array_equal(y[:, :n], gt.tlmm(x, w, cfg))
    assert not y[:, n:].any()


def test_tlmm_cycle_formula_is_at_least_ideal():
    for cfg in CFGS:
        for m, k, n in ((1, 1536, 1536), (3, 7, 5)):
            assert ht.expected_cycles(m, k, n, cfg) >= ht.ideal_cycles(m, k, n, cfg)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="max_k"):
        ht.TLMM(DEFAULT.tlmm, max_k=0)
    with pytest.raises(ValueError, match="max_k"):
        ht.TLMM(DEFAULT.tlmm, max_k=DEFAULT.tlmm.max_k() + 1)
    with pytest.raises(ValueError, match="tree_levels_per_stage"):
        ht.TLMM(DEFAULT.tlmm, tree_levels_per_stage=0)
    with pytest.raises(ValueError, match="lanes"):
        hq.ActQuant(DEFAULT.quant, lanes=0)
    with pytest.raises(ValueError, match="max_len"):
        hq.ActQuant(DEFAULT.quant, lanes=4, max_len=3)
    with pytest.raises(ValueError, match="lanes"):
        hr.Requant(DEFAULT.requant, lanes=0)


def test_quant_requant_layouts_follow_config():
    q = QuantConfig(act_bits=6, hw_in_bits=20, recip_frac_bits=5)
    assert hq.inp_layout(q, 3).size == 3 * 20 + 1
    assert hq.out_layout(q, 3).size == 3 * 6 + 20 + 1
    r = replace(RequantConfig(), out_bits=16)
    assert hr.out_layout(r, 2).size == 2 * 16 + 1
    assert hr.shift_shape(r).width == r.shift_max.bit_length()


# --------------------------------------------------------------------------- design points
def test_design_points_are_valid_and_distinct():
    from golden.config import DEFAULT_DESIGN_POINT, DESIGN_POINTS, design_point

    assert DEFAULT_DESIGN_POINT in DESIGN_POINTS
    digests = {name: dp.digest() for name, dp in DESIGN_POINTS.items()}
    assert len(set(digests.values())) == len(digests)
    for name, dp in DESIGN_POINTS.items():
        assert dp.name == name and design_point(name) is dp
        assert 0 <= dp.digest() < 2**32
    kv = design_point("kv260")
    assert kv.bytes_per_cycle == pytest.approx(17.1e9 / 250e6)
    assert kv.with_(dram_latency=20).digest() != kv.digest()


def test_design_point_errors_name_the_field():
    from golden.config import AccelConfig, design_point

    with pytest.raises(ValueError, match="design point: 'zynq' is not one of"):
        design_point("zynq")
    for field, value, match in (
        ("max_keys", 70000, "70000 exceeds the softmax sum"),
        ("act_lanes", 0, "must be an integer >= 1"),
        ("device", "xc7a35t", "must be one of"),
    ):
        with pytest.raises(ValueError, match=f"{field}: {match}"):
            AccelConfig(**{field: value})


# --------------------------------------------------------------------------- attention engines
@pytest.mark.parametrize("name", ["kv260", "ecp5"])
def test_attention_engines_take_their_widths_from_the_design_point(name):
    from golden.config import design_point
    from hw.ops.pv import PVEngine
    from hw.ops.qk import QKEngine
    from hw.ops.softmax import SoftmaxEngine, read_ahead_for

    dp = design_point(name)
    sm = SoftmaxEngine.for_design(dp)
    assert (sm.lanes, sm.chunk, sm.max_len) == (dp.softmax_lanes, dp.softmax_chunk, dp.max_keys)
    # the read-ahead FIFO covers the DRAM latency at one read per cycle
    assert sm.read_ahead == read_ahead_for(dp.dram_latency, dp.softmax_lanes)
    assert sm.read_ahead >= dp.dram_latency + 2 * dp.softmax_lanes
    assert sm.chunk >= sm.lanes  # one read per cycle feeds the block
    pv = PVEngine.for_design(dp)
    assert (pv.out_lanes, pv.records, pv.block) == (
        dp.pv_out_lanes,
        dp.pv_records,
        dp.attn_block,
    )
    qk = QKEngine.for_design(dp)
    assert (qk.records, qk.out_lanes, qk.block) == (
        dp.qk_records,
        dp.qk_out_lanes,
        dp.attn_block,
    )


def test_attention_engine_widths_are_checked():
    from hw.ops.pv import PVEngine
    from hw.ops.qk import QKEngine
    from hw.ops.softmax import SoftmaxEngine

    W = 128
    with pytest.raises(ValueError, match="chunk"):
        SoftmaxEngine(DEFAULT, W, lanes=8, max_len=64, chunk=3, read_ahead=8)
    with pytest.raises(ValueError, match="read_ahead"):
        SoftmaxEngine(DEFAULT, W, lanes=8, max_len=64, chunk=8, read_ahead=1)
    with pytest.raises(ValueError, match="records"):
        PVEngine(DEFAULT, W, max_keys=64, max_head_dim=8, out_lanes=4, records=64)
    with pytest.raises(ValueError, match="out_lanes"):
        QKEngine(DEFAULT, W, records=8, out_lanes=3, block=4)
    for block in (0, 17):
        with pytest.raises(ValueError, match="block"):
            QKEngine(DEFAULT, W, records=8, out_lanes=4, block=block)
        with pytest.raises(ValueError, match="block"):
            PVEngine(DEFAULT, W, max_keys=64, max_head_dim=8, out_lanes=4, records=8, block=block)


def test_mac_lanes_are_dsp48e2_for_the_xilinx_target():
    """hw.dsp: for UltraScale+ synthesis (platform XILINX) the PV accumulators and the QK
    pair products are DSP48E2 instances with their multiplier and P registers (Yosys packs
    no register into a DSP48E2); elsewhere they are plain Amaranth."""
    from hw.dsp import XILINX
    from hw.ops.pv import PVEngine
    from hw.ops.qk import QKEngine
    from hw.verilog import export_verilog

    pv = PVEngine(DEFAULT, 16, max_keys=8, max_head_dim=4, out_lanes=2, records=2)
    text = export_verilog(pv, "pv", platform=XILINX)
    assert text.count("DSP48E2 #(") == 4  # one per MAC lane
    assert text.count(".MREG(32'd1)") == 4 and text.count(".PREG(32'd1)") == 4
    assert text.count('.USE_PATTERN_DETECT("PATDET")') == 4  # the int32 range check
    assert "DSP48E2" not in export_verilog(
        PVEngine(DEFAULT, 16, max_keys=8, max_head_dim=4, out_lanes=2, records=2), "pv"
    )
    # held queries (block 3): each lane's other accumulators in a ring of SRL16E behind
    # its DSP's P (acc_bits wide, no DSP more), fed back through the C port
    pv3 = PVEngine(DEFAULT, 16, max_keys=8, max_head_dim=4, out_lanes=2, records=2, block=3)
    text = export_verilog(pv3, "pv", platform=XILINX)
    assert text.count("DSP48E2 #(") == 4 and text.count("SRL16E #(") == 4 * pv3.acc_bits
    assert text.count('.USE_PATTERN_DETECT("PATDET")') == 4
    qk = export_verilog(
        QKEngine(DEFAULT, 16, records=2, out_lanes=4, block=2), "qk", platform=XILINX
    )
    assert qk.count("DSP48E2 #(") == 16  # 8 pairs
    assert qk.count(".PCIN(") == 16 and qk.count(".PCOUT(") == 8  # the cascades
