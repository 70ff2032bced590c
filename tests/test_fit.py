"""Fitting the twin to probes: device states for telemetry, a preset for the host."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hdap_engine.errors import HdapError
from hdap_engine.fleet.probes import PROBE_COLUMNS, STANDARD_PROBES
from hdap_engine.twin import (
    PRESETS,
    DeviceStates,
    Twin,
    fit_preset_from_probes,
    fit_states_from_probes,
    generic_cpu_preset,
    preset_probe_error,
    simulate_fleet,
)
from hdap_engine.twin.calibration import reference_table


@pytest.mark.parametrize("sku", sorted(PRESETS))
def test_fitted_states_explain_the_probes_and_predict_networks(sku):
    tel, truth = simulate_fleet(sku, 300, seed=7)
    states, err = fit_states_from_probes(tel, sku)
    assert list(states.device_id) == list(tel["device_id"]) and states.sku == sku
    errors = np.array([err[d] for d in tel["device_id"]])
    assert np.median(errors) < 0.02 and errors.max() < 0.08
    fitted, true = states.to_frame(), truth
    for f in ("mem_bw_scale", "overhead_scale"):
        assert np.corrcoef(np.log(fitted[f]), np.log(true[f]))[0, 1] > 0.95
    # what matters: the fitted twin predicts a network like the true one
    tw = Twin(PRESETS[sku])
    table = reference_table("resnet50")
    a = tw.latency_ms(table, DeviceStates.from_frame(truth), noise=False)[0]
    b = tw.latency_ms(table, states, noise=False)[0]
    assert np.median(np.abs(b / a - 1)) < 0.02 and np.quantile(np.abs(b / a - 1), 0.95) < 0.08


def test_fitting_needs_enough_valid_probe_columns():
    tel, _ = simulate_fleet("rpi4", 5, seed=0)
    with pytest.raises(HdapError, match="at least 4"):
        fit_states_from_probes(tel[["device_id", "probe_tiny_ms", "probe_linear_ms"]], "rpi4")
    bad = tel.copy()
    bad.loc[2, "probe_conv3x3_ms"] = -1.0
    with pytest.raises(HdapError, match="rows \\[4\\]"):
        fit_states_from_probes(bad, "rpi4")


def _synthetic_host_row(preset) -> dict:
    p = Twin(preset).probe_ms(DeviceStates.nominal(1, sku=preset.name), noise=False)
    row = p.drop(columns="device_id").iloc[0].to_dict()
    row.update(threads=preset.compute_units, l2_kb=preset.cache_kb, llc_kb=preset.llc_kb)
    return row


def test_host_preset_reproduces_its_own_probe_row():
    truth = generic_cpu_preset(name="host", cores=2, clock_ghz=3.0, flops_per_cycle=32,
                               channel_tile=8, dram_gbps=15, cache_kb=1024, cache_gbps=80,
                               llc_kb=16384, llc_gbps=40, kernel_overhead_us=5,
                               eff_dwconv=0.05, eff_linear=0.2, mac_overhead_us=6,
                               k_half=64.0)
    row = _synthetic_host_row(truth)
    fitted = fit_preset_from_probes(row)
    errors = preset_probe_error(fitted, row)
    assert set(errors) == set(STANDARD_PROBES)
    assert np.median(np.abs(list(errors.values()))) < 0.02
    assert max(abs(e) for e in errors.values()) < 0.2
    assert fitted.channel_tile == 8  # recovered from the odd-channel conv
    # and it predicts a network the probes never ran
    table = reference_table("resnet18")
    a = Twin(truth).latency_ms(table, DeviceStates.nominal(1, sku="host"), noise=False)[0, 0]
    b = Twin(fitted).latency_ms(table, DeviceStates.nominal(1, sku="host"), noise=False)[0, 0]
    assert b == pytest.approx(a, rel=0.1)


def test_host_preset_uses_the_vector_width_from_the_row_input_channels_padding_to_8():
    # a 16-lane (AVX-512) CPU: outputs fill the vector, inputs run 8-channel blocks
    truth = generic_cpu_preset(name="host", cores=1, channel_tile=16, cin_tile=8,
                               misaligned_eff=0.8, misaligned_tile=8)
    fitted = fit_preset_from_probes(_synthetic_host_row(truth) | {"simd_lanes": 16})
    assert (fitted.channel_tile, fitted.cin_tile) == (16, 8)
    assert fitted.misaligned_eff == pytest.approx(0.8, abs=0.05)
    narrow = generic_cpu_preset(name="host", cores=1, channel_tile=4, misaligned_tile=4)
    fitted = fit_preset_from_probes(_synthetic_host_row(narrow) | {"simd_lanes": 4})
    assert (fitted.channel_tile, fitted.cin_tile) == (4, 4)


def test_host_preset_refuses_an_incomplete_row():
    row = _synthetic_host_row(generic_cpu_preset(name="host"))
    del row[PROBE_COLUMNS[0]]
    with pytest.raises(HdapError, match="missing"):
        fit_preset_from_probes(row)
    row = _synthetic_host_row(generic_cpu_preset(name="host")) | {PROBE_COLUMNS[1]: "n/a"}
    with pytest.raises(HdapError, match=PROBE_COLUMNS[1]):
        fit_preset_from_probes(row)


def test_fitted_host_preset_is_a_cpu_preset():
    fitted = fit_preset_from_probes(_synthetic_host_row(replace(generic_cpu_preset(name="h"))))
    assert fitted.kind == "cpu" and fitted.name == "host" and not fitted.async_launch


def test_host_preset_takes_a_depthwise_calls_fixed_cost_from_the_host_probe():
    from hdap_engine.fleet.probes import probe_tables

    truth = generic_cpu_preset(name="host", cores=1, dw_overhead_us=45.0)
    row = _synthetic_host_row(truth)
    small = probe_tables(host=True)["dwconv3x3_small"]
    row["probe_dwconv3x3_small_ms"] = float(
        Twin(truth).expected_ms(small, DeviceStates.nominal(1, sku="host"))[0, 0])
    fitted = fit_preset_from_probes(row)
    assert fitted.dw_overhead_us == pytest.approx(45.0, rel=0.15)
    # without the host probe the standard row says nothing about it
    assert fit_preset_from_probes(_synthetic_host_row(truth)).dw_overhead_us == 0.0
