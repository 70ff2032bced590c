"""The device twin: calibration, physics, noise, speed, and that mechanisms change preferences."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hdap_engine.errors import HdapError
from hdap_engine.fleet.probes import PROBE_COLUMNS
from hdap_engine.pruning.layers import make_table
from hdap_engine.twin import (
    JETSON_NANO,
    LATENT_FIELDS,
    PRESETS,
    RPI4,
    DeviceStates,
    Twin,
    generic_cpu_preset,
    load_twin_states,
    mechanisms_for,
    select_states,
    sidecar_path,
    simulate_fleet,
)
from hdap_engine.twin.calibration import (
    PUBLISHED_MS,
    mobilenet_v1_rows,
    reference_table,
    resnet_rows,
    stack_tables,
)


def nominal(sku: str, n: int = 1) -> DeviceStates:
    return DeviceStates.nominal(n, sku=sku)


def mechanism_states(sku: str) -> DeviceStates:
    """One device per mechanism, at mid severity (geometric middle of each effect)."""
    mechs = mechanisms_for(sku)
    states = DeviceStates.nominal(len(mechs), sku=sku)
    values = {f: np.ones(len(mechs)) for f in LATENT_FIELDS}
    for j, m in enumerate(mechs):
        for f, (lo, hi) in m.effects.items():
            values[f][j] = np.sqrt(lo * hi)
    return replace(states.with_latent(**values),
                   mechanism=np.array([m.name for m in mechs], dtype=object))


@pytest.mark.parametrize("key", sorted(PUBLISHED_MS))
def test_nominal_presets_match_published_latencies(key):
    sku, model = key
    published, _source = PUBLISHED_MS[key]
    ms = Twin(PRESETS[sku]).latency_ms(reference_table(model), nominal(sku), noise=False)[0, 0]
    assert published / 1.25 < ms < published * 1.25


def test_presets_cite_their_sources():
    for preset in PRESETS.values():
        assert preset.sources and all(len(s) > 10 for s in preset.sources)


def test_mobilenet_is_faster_than_resnet50_but_not_by_its_macs_ratio():
    for sku, preset in PRESETS.items():
        tw = Twin(preset)
        r50 = tw.latency_ms(reference_table("resnet50"), nominal(sku), noise=False)[0, 0]
        mb1 = tw.latency_ms(reference_table("mobilenet_v1"), nominal(sku), noise=False)[0, 0]
        macs_ratio = reference_table("resnet50").macs().sum() / reference_table("mobilenet_v1").macs().sum()
        assert 1.5 < r50 / mb1 < macs_ratio  # depthwise layers are inefficient


def test_batch_norm_and_activation_are_fused_on_jetson_only():
    conv = dict(name="c", op="conv", cin=64, cout=64, h_in=56, w_in=56, kernel=3)
    bn = dict(name="c.bn", op="bn", cin=64, cout=64, h_in=56, w_in=56)
    act = dict(name="c.act", op="act", cin=64, cout=64, h_in=56, w_in=56)
    alone, fused = make_table([conv]), make_table([conv, bn, act])
    for preset, same in ((JETSON_NANO, True), (RPI4, False)):
        tw = Twin(preset)
        a = tw.latency_ms(alone, nominal(preset.name), noise=False)[0, 0]
        b = tw.latency_ms(fused, nominal(preset.name), noise=False)[0, 0]
        assert (b == pytest.approx(a)) if same else (b > a * 1.05)


def test_depthwise_costs_more_per_mac_than_dense():
    dense = make_table([dict(name="d", op="conv", cin=128, cout=128, h_in=28, w_in=28, kernel=3)])
    dw = make_table([dict(name="w", op="dwconv", cin=512, cout=512, h_in=56, w_in=56, kernel=3)])
    for sku, preset in PRESETS.items():
        tw = Twin(preset)
        per_mac = [tw.latency_ms(t, nominal(sku), noise=False)[0, 0] / t.macs().sum()
                   for t in (dense, dw)]
        assert per_mac[1] > 3 * per_mac[0]


def test_channels_off_the_tile_width_cost_like_the_padded_width():
    def conv(c):
        return make_table([dict(name="c", op="conv", cin=256, cout=c, h_in=28, w_in=28, kernel=3)])

    tw = Twin(JETSON_NANO)  # 32-channel tiles
    t97, t128 = (tw.latency_ms(conv(c), nominal("jetson-nano"), noise=False)[0, 0]
                 for c in (97, 128))
    assert t97 > 0.95 * t128  # 97 channels run as 128
    tw = Twin(RPI4)  # 4-lane NEON: almost no waste at 97
    t97, t128 = (tw.latency_ms(conv(c), nominal("rpi4"), noise=False)[0, 0] for c in (97, 128))
    assert t97 < 0.85 * t128


def test_memory_time_rises_when_the_working_set_spills_the_cache():
    def copy(elems):
        return make_table([dict(name="x", op="copy", cin=elems // 64, cout=elems // 64,
                                h_in=8, w_in=8)])

    tw = Twin(RPI4)
    small, large = 1 << 15, 1 << 22  # 256 KB and 32 MB of traffic (fp32, in + out)
    t_small, t_large = (tw.latency_ms(copy(e), nominal("rpi4"), noise=False)[0, 0]
                        - RPI4.kernel_overhead_us * 1e-3 for e in (small, large))
    assert t_large / large > 2.5 * t_small / small


def test_noise_is_seeded_multiplicative_and_a_few_percent():
    _, frame = simulate_fleet("jetson-nano", 50, seed=1)
    states = DeviceStates.from_frame(frame)
    tw = Twin(JETSON_NANO)
    table = reference_table("resnet18")
    a = tw.raw_latency_ms(table, states, runs=200, rng=5)
    b = tw.raw_latency_ms(table, states, runs=200, rng=5)
    c = tw.raw_latency_ms(table, states, runs=200, rng=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    expected = tw.latency_ms(table, states, noise=False)
    rel = np.log(a / expected[:, :, None]).std(axis=2)[0]
    assert np.allclose(rel, tw.noise_sigma(states), rtol=0.2)
    assert 0.01 < np.median(rel) < 0.06
    median = tw.latency_ms(table, states, runs=51, rng=7)
    assert np.allclose(median, expected, rtol=0.05)


def test_latency_has_one_row_per_candidate_and_one_column_per_device():
    table = stack_tables([make_table(resnet_rows(18, (s, s, s, s))) for s in (0.5, 0.75, 1.0)])
    states = nominal("rpi4", 7)
    out = Twin(RPI4).latency_ms(table, states, runs=3, rng=0)
    assert out.shape == (3, 7)
    assert np.all(np.diff(out.mean(axis=1)) > 0)  # wider is slower


def test_twin_computes_a_whole_fleet_at_once():
    rows = resnet_rows(50)[:150]
    base = make_table(rows, n_candidates=100)
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.3, 1.0, (100, 1))
    table = replace(base, cin=np.maximum(1, np.round(base.cin * scale)),
                    cout=np.maximum(1, np.round(base.cout * scale)))
    _, frame = simulate_fleet("jetson-nano", 5000, seed=0)
    states = DeviceStates.from_frame(frame)
    tw = Twin(JETSON_NANO)
    out = tw.latency_ms(table, states, noise=False)
    assert out.shape == (100, 5000) and np.all(np.isfinite(out))


def probe_slowdown(sku: str):
    """log(probe time / nominal probe time), one row per mechanism (mid severity)."""
    states = mechanism_states(sku)
    probes = Twin(PRESETS[sku]).probe_ms(states, noise=False).drop(columns="device_id")
    probes.index = states.mechanism
    return np.log(probes / probes.loc["nominal"])


@pytest.mark.parametrize("sku", sorted(PRESETS))
def test_mechanisms_move_different_bottlenecks(sku):
    slow = probe_slowdown(sku)
    # thermal throttling: compute slows, DRAM does not
    assert slow.loc["thermal_throttling", "probe_conv3x3_ms"] > 0.2
    assert abs(slow.loc["thermal_throttling", "probe_copy_large_ms"]) < 0.02
    # background load: DRAM bandwidth and the per-kernel path are stolen
    assert slow.loc["background_load", "probe_copy_large_ms"] > 0.2
    assert slow.loc["background_load", "probe_tiny_ms"] > 0.3
    # power saving: slower compute and slower memory
    assert slow.loc["power_saving", "probe_conv3x3_ms"] > 0.2
    assert slow.loc["power_saving", "probe_copy_large_ms"] > 0.1
    # battery ageing leaves DRAM alone
    assert abs(slow.loc["battery_ageing", "probe_copy_large_ms"]) < 0.02


def test_battery_ageing_hits_the_jetson_launch_path_and_the_pi_all_core_clock():
    jn = probe_slowdown("jetson-nano")
    assert jn.loc["battery_ageing", "probe_tiny_ms"] > 2 * jn.loc["battery_ageing",
                                                                   "probe_conv3x3_ms"]
    pi = probe_slowdown("rpi4")
    # a big conv uses every core and slows; one too small to use them does not
    assert pi.loc["battery_ageing", "probe_conv3x3_ms"] > 0.3
    assert abs(pi.loc["battery_ageing", "probe_conv3x3_small_ms"]) < 0.05


def test_equal_mac_candidates_swap_order_between_mechanisms():
    """The problem is real: which candidate is faster depends on the device's drift.

    A keeps the high-resolution blocks of MobileNetV1 thin and the 7x7 blocks
    wide; B does the opposite, at the same MACs. Wide high-resolution blocks
    move more activation bytes, so B suffers where DRAM bandwidth is stolen
    (background load) and wins where compute is throttled (thermal).
    """
    a = make_table(mobilenet_v1_rows((0.625, 0.375, 0.375, 1.0)))
    b = make_table(mobilenet_v1_rows((1.0, 0.75, 0.25, 0.5)))
    assert a.macs().sum() / b.macs().sum() == pytest.approx(1.0, abs=0.005)
    states = mechanism_states("jetson-nano")
    lat = Twin(JETSON_NANO).latency_ms(stack_tables([a, b]), states, noise=False)
    ratio = dict(zip(states.mechanism, lat[0] / lat[1], strict=True))
    assert ratio["background_load"] < 0.96  # A clearly faster
    assert ratio["thermal_throttling"] > 1.04  # A clearly slower


def test_states_of_another_sku_are_refused():
    with pytest.raises(HdapError, match="rpi4"):
        Twin(JETSON_NANO).latency_ms(reference_table("resnet18"), nominal("rpi4"))


def test_states_round_trip_through_a_frame_and_select_by_id():
    _, frame = simulate_fleet("rpi4", 20, seed=3)
    states = DeviceStates.from_frame(frame)
    assert states.sku == "rpi4" and len(states) == 20
    again = DeviceStates.from_frame(states.to_frame())
    for f in LATENT_FIELDS:
        assert np.array_equal(getattr(states, f), getattr(again, f))
    picked = select_states(states, ["rpi-00003", "rpi-00001"])
    assert list(picked.device_id) == ["rpi-00003", "rpi-00001"]
    with pytest.raises(HdapError, match="nope"):
        select_states(states, ["nope"])


@pytest.mark.parametrize(
    "name,sidecar",
    [("fleet.csv", "fleet.twin.parquet"), ("fleet.csv.gz", "fleet.twin.parquet"),
     ("a/b/nano.parquet", "a/b/nano.twin.parquet"), ("X.CSV", "X.twin.parquet"),
     ("a/x.twin.parquet", "a/x.twin.parquet")],
)
def test_sidecar_of_a_telemetry_file_is_its_stem_dot_twin_parquet(name, sidecar):
    assert sidecar_path(name) == Path(sidecar)


def test_missing_sidecar_is_a_clear_error(tmp_path):
    with pytest.raises(HdapError, match="no twin sidecar.*fleet.twin.parquet"):
        load_twin_states(tmp_path / "fleet.csv")


def test_twin_probes_are_positive_and_ordered_sensibly():
    for sku, preset in PRESETS.items():
        p = Twin(preset).probe_ms(DeviceStates.nominal(1, sku=sku), noise=False).iloc[0]
        assert all(p[c] > 0 for c in PROBE_COLUMNS)
        assert p["probe_copy_large_ms"] > 10 * p["probe_copy_small_ms"]
        assert p["probe_conv3x3_ms"] > p["probe_conv3x3_small_ms"]
        assert p["probe_tiny_ms"] < p["probe_conv3x3_ms"]


# --- every op of the layer vocabulary has a price ---------------------------

def _one_op(op: str, c: int, **extra) -> dict:
    """One layer of ``op`` with ``c`` channels, at a shape where it is used in real networks."""
    row = dict(name=op, op=op, cin=c, cout=c, h_in=28, w_in=28)
    if op == "gconv":
        row.update(kernel=3, groups=8)
    elif op in ("linear", "matmul"):
        row.update(h_in=197, w_in=1)  # token rows of a ViT
    elif op == "norm":
        row.update(h_in=197, w_in=1)
    elif op == "softmax":
        row.update(h_in=3 * 197, w_in=1)
    elif op == "mul":
        row.update(h_in=1, w_in=1, h_out=28, w_out=28)  # a squeeze-excitation gate
    row.update(extra)
    return row


NEW_OPS = ("gconv", "matmul", "norm", "softmax", "mul", "cat", "other")


@pytest.mark.parametrize("op", NEW_OPS + ("linear",))
@pytest.mark.parametrize("sku", sorted(PRESETS))
def test_every_new_op_costs_time_and_more_with_more_channels(op, sku):
    tw = Twin(PRESETS[sku])
    ms = [tw.latency_ms(make_table([_one_op(op, c, fn="einsum" if op == "other" else "")]),
                        nominal(sku), noise=False)[0, 0] for c in (64, 256, 1024, 4096)]
    assert ms[0] > 0 and np.all(np.isfinite(ms))
    # never cheaper with more channels; a GPU's smallest kernels all cost one launch
    assert np.all(np.diff(ms) >= 0) and ms[3] > 1.5 * ms[0]


@pytest.mark.parametrize("preset", [RPI4, generic_cpu_preset()],
                         ids=["rpi4", "generic-cpu"])
def test_transcendental_activations_cost_more_than_relu_on_a_cpu(preset):
    tw = Twin(preset)

    def act(fn):  # a MobileNet-sized activation that stays in the cache
        t = make_table([dict(name="a", op="act", fn=fn, cin=96, cout=96, h_in=28, w_in=28)])
        return tw.latency_ms(t, nominal(preset.name), noise=False)[0, 0]

    relu = act("relu")
    assert act("gelu") > 1.5 * relu
    assert act("silu") > 1.5 * relu
    assert act("sigmoid") > 1.5 * relu
    assert relu <= act("hardswish") < act("silu")  # piecewise linear: no exponential
    assert act("") == relu  # an unnamed activation is priced as a ReLU


def test_activations_on_a_gpu_are_memory_bound_so_gelu_is_never_cheaper():
    tw = Twin(JETSON_NANO)
    ms = {fn: tw.latency_ms(make_table([dict(name="a", op="act", fn=fn, cin=256, cout=256,
                                             h_in=56, w_in=56)]),
                            nominal("jetson-nano"), noise=False)[0, 0]
          for fn in ("relu", "gelu")}
    assert ms["gelu"] >= ms["relu"]


@pytest.mark.parametrize("sku", sorted(PRESETS))
def test_grouped_conv_costs_less_than_the_dense_one_but_more_per_mac(sku):
    tw = Twin(PRESETS[sku])

    def conv(op, groups=1):
        t = make_table([dict(name="c", op=op, cin=256, cout=256, h_in=28, w_in=28, kernel=3,
                             groups=groups)])
        return t, tw.latency_ms(t, nominal(sku), noise=False)[0, 0]

    dense_t, dense = conv("conv")
    g_t, grouped = conv("gconv", 8)
    assert grouped < dense
    assert grouped / g_t.macs().sum() > dense / dense_t.macs().sum()


def test_softmax_and_norm_sweep_memory_more_than_an_add():
    tw = Twin(RPI4)

    def cost(op):
        t = make_table([dict(name=op, op=op, cin=768, cout=768, h_in=197, w_in=1)])
        return tw.latency_ms(t, nominal("rpi4"), noise=False)[0, 0]

    assert cost("softmax") > cost("norm") > cost("add")


def test_fused_ops_still_fold_into_a_grouped_conv_on_jetson():
    g = dict(name="g", op="gconv", cin=128, cout=128, h_in=28, w_in=28, kernel=3, groups=8)
    bn = dict(name="g.bn", op="bn", cin=128, cout=128, h_in=28, w_in=28)
    act = dict(name="g.act", op="act", fn="silu", cin=128, cout=128, h_in=28, w_in=28)
    tw = Twin(JETSON_NANO)
    alone, fused = (tw.latency_ms(make_table(r), nominal("jetson-nano"), noise=False)[0, 0]
                    for r in ([g], [g, bn, act]))
    assert fused == pytest.approx(alone)


def test_an_op_without_physics_is_priced_by_its_traffic_and_named_as_a_fallback():
    rows = [dict(name="conv", op="conv", cin=64, cout=64, h_in=28, w_in=28, kernel=3),
            dict(name="shuffle", op="other", fn="channel_shuffle", cin=64, cout=64,
                 h_in=28, w_in=28),
            dict(name="act", op="act", fn="relu", cin=64, cout=64, h_in=28, w_in=28),
            dict(name="weird", op="act", fn="bent_identity", cin=64, cout=64, h_in=28, w_in=28)]
    table = make_table(rows)
    tw = Twin(RPI4)
    per_layer = tw.layer_ms(table, nominal("rpi4"))[0, :, 0]
    assert np.all(per_layer > 0)
    assert per_layer.sum() == pytest.approx(tw.latency_ms(table, nominal("rpi4"),
                                                          noise=False)[0, 0])
    # the fallback moves the bytes of a copy of the same shape
    copy = make_table([dict(rows[1], op="copy", fn="")])
    assert per_layer[1] == pytest.approx(tw.latency_ms(copy, nominal("rpi4"),
                                                       noise=False)[0, 0])
    listed = tw.fallback_layers(table)
    assert [(f["name"], f["fn"]) for f in listed] == [("shuffle", "channel_shuffle"),
                                                      ("weird", "bent_identity")]
    assert "memory traffic" in listed[0]["fallback"]
    assert tw.fallback_layers(reference_table("resnet18")) == []


def test_a_global_pool_pays_eager_pytorchs_three_kernel_calls_on_a_cpu_preset():
    pool = make_table([dict(name="p", op="pool", cin=64, cout=64, h_in=7, w_in=7, kernel=7,
                            h_out=1, w_out=1)])
    relu = make_table([dict(name="a", op="act", fn="relu", cin=64, cout=1, h_in=1, w_in=1)])
    cpu = generic_cpu_preset()
    tw = Twin(cpu)
    ms_pool, ms_relu = (tw.latency_ms(t, nominal(cpu.name), noise=False)[0, 0]
                        for t in (pool, relu))
    assert ms_pool > 2.5 * ms_relu  # sum, divide, copy: three fixed costs
    assert tw.layer_ms(pool, nominal(cpu.name))[0, 0, 0] == pytest.approx(ms_pool)
