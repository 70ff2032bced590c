"""Simulated fleets and the shipped sample fleets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.preprocessing import StandardScaler

from hdap_engine.cli import main
from hdap_engine.errors import HdapError
from hdap_engine.fleet.probes import PROBE_COLUMNS
from hdap_engine.twin import (
    LATENT_FIELDS,
    MECHANISMS,
    load_twin_states,
    mechanism_counts,
    simulate_fleet,
    write_fleet,
)
from tests.helpers.paths import SAMPLES

SHIPPED = {"jetson-nano": ("jetson_nano_fleet", 5000), "rpi4": ("rpi4_fleet", 2000)}


def test_simulation_follows_the_telemetry_contract_and_is_deterministic():
    tel, states = simulate_fleet("rpi4", 300, seed=4)
    again, _ = simulate_fleet("rpi4", 300, seed=4)
    other, _ = simulate_fleet("rpi4", 300, seed=5)
    pd.testing.assert_frame_equal(tel, again)
    assert not tel[list(PROBE_COLUMNS)].equals(other[list(PROBE_COLUMNS)])
    assert tel["device_id"].is_unique and (tel["device_id"] != "").all()
    assert (tel["sku"] == "rpi4").all()
    probes = tel[list(PROBE_COLUMNS)].to_numpy()
    assert np.isfinite(probes).all() and (probes > 0).all()
    for col in ("temperature_c", "power_mode", "firmware", "battery_health_pct", "uptime_h"):
        assert col in tel.columns
    assert list(states["device_id"]) == list(tel["device_id"])
    assert set(states["mechanism"]) == set(MECHANISMS)
    assert set(LATENT_FIELDS) <= set(states.columns)


def test_mechanism_shares_are_exact_realistic_and_unequal():
    for sku in ("jetson-nano", "rpi4"):
        counts = mechanism_counts(sku, 1000)
        assert sum(counts.values()) == 1000
        assert 450 <= counts["nominal"] <= 550
        others = [c for m, c in counts.items() if m != "nominal"]
        assert all(80 <= c <= 150 for c in others) and len(set(others)) > 1
        _, states = simulate_fleet(sku, 1000, seed=0)
        assert states["mechanism"].value_counts().to_dict() == counts


def test_context_columns_follow_the_mechanisms():
    tel, states = simulate_fleet("jetson-nano", 2000, seed=2)
    tel["mechanism"] = states["mechanism"]
    med = tel.groupby("mechanism").median(numeric_only=True)
    assert med.loc["thermal_throttling", "temperature_c"] > med.loc["nominal", "temperature_c"] + 15
    assert med.loc["battery_ageing", "battery_health_pct"] < med.loc["nominal", "battery_health_pct"] - 10
    assert med.loc["background_load", "cpu_load_pct"] > 3 * med.loc["nominal", "cpu_load_pct"]
    share_5w = (tel["power_mode"] == "5W").groupby(tel["mechanism"]).mean()
    assert share_5w["power_saving"] > 0.8 and share_5w["nominal"] < 0.1


def test_written_fleet_round_trips_with_its_sidecar(tmp_path):
    tel, states = simulate_fleet("jetson-nano", 50, seed=1)
    csv, side = write_fleet(tmp_path / "fleet.csv", tel, states)
    assert csv == tmp_path / "fleet.csv" and side == tmp_path / "fleet.twin.parquet"
    loaded = load_twin_states(csv)
    assert loaded.sku == "jetson-nano" and list(loaded.device_id) == list(tel["device_id"])
    for f in LATENT_FIELDS:
        assert np.allclose(getattr(loaded, f), states[f])
    # gzip telemetry finds the same sidecar
    tel.to_csv(tmp_path / "fleet.csv.gz", index=False)
    assert len(load_twin_states(tmp_path / "fleet.csv.gz")) == 50


def test_unknown_sku_and_bad_device_count_are_refused():
    with pytest.raises(HdapError, match="jetson-nano"):
        simulate_fleet("tpu", 10)
    with pytest.raises(HdapError, match="at least one"):
        simulate_fleet("rpi4", 0)


def test_cli_simulate_writes_both_files(tmp_path, capsys):
    args = ["simulate", "--sku", "rpi4", "--devices", "40", "--seed", "3",
            "--out", str(tmp_path / "pi")]
    assert main(args) == 0
    assert (tmp_path / "pi.csv").exists() and (tmp_path / "pi.twin.parquet").exists()
    assert "nominal" in capsys.readouterr().out
    assert main(["simulate", "--sku", "nope", "--devices", "4", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error:")


@pytest.mark.parametrize("sku", sorted(SHIPPED))
def test_shipped_sample_fleet_is_what_the_readme_command_regenerates(sku):
    stem, devices = SHIPPED[sku]
    shipped = pd.read_csv(SAMPLES / f"{stem}.csv")
    tel, states = simulate_fleet(sku, devices, seed=0)
    assert len(shipped) == devices
    pd.testing.assert_frame_equal(shipped[["device_id", "sku"]], tel[["device_id", "sku"]])
    assert np.allclose(shipped[list(PROBE_COLUMNS)], tel[list(PROBE_COLUMNS)], rtol=1e-5)
    side = load_twin_states(SAMPLES / f"{stem}.csv")
    assert list(side.mechanism) == list(states["mechanism"])


def test_the_shipped_later_snapshot_is_what_its_readme_command_regenerates():
    from hdap_engine.twin.simulate import later_snapshot

    old = load_twin_states(SAMPLES / "jetson_nano_fleet.csv").to_frame()
    tel, states, changed = later_snapshot(old, 0.12, "thermal_throttling", seed=1)
    shipped = pd.read_csv(SAMPLES / "jetson_nano_fleet_later.csv")
    pd.testing.assert_frame_equal(shipped[["device_id", "sku"]], tel[["device_id", "sku"]])
    assert np.allclose(shipped[list(PROBE_COLUMNS)], tel[list(PROBE_COLUMNS)], rtol=1e-5)
    assert len(changed) == 600 and set(states.loc[states["device_id"].isin(changed),
                                                  "mechanism"]) == {"thermal_throttling"}
    # Only the changed devices changed mechanism.
    assert (states["mechanism"] != old["mechanism"]).sum() == 600


def test_a_later_snapshot_refuses_an_unknown_mechanism_and_too_large_a_share():
    from hdap_engine.errors import HdapError
    from hdap_engine.twin.simulate import later_snapshot

    old = load_twin_states(SAMPLES / "rpi4_fleet.csv").to_frame()
    with pytest.raises(HdapError, match="not a drift mechanism of rpi4; choose one of"):
        later_snapshot(old, 0.1, "sunspots")
    with pytest.raises(HdapError, match="nominal ones; ask for at most"):
        later_snapshot(old, 0.99, "thermal_throttling")


@pytest.mark.slow
@pytest.mark.parametrize("sku", sorted(SHIPPED))
def test_kmeans_on_probes_recovers_the_mechanisms_of_the_sample_fleets(sku):
    """k chosen by silhouette (2..10) on log-scaled, standardised probes: ARI >= 0.9."""
    stem, _ = SHIPPED[sku]
    tel = pd.read_csv(SAMPLES / f"{stem}.csv")
    truth = load_twin_states(SAMPLES / f"{stem}.csv").mechanism
    x = StandardScaler().fit_transform(np.log(tel.filter(like="probe_").to_numpy()))
    best = None
    for k in range(2, 11):
        labels = KMeans(k, n_init=10, random_state=0).fit_predict(x)
        score = silhouette_score(x, labels, sample_size=min(len(x), 3000), random_state=0)
        if best is None or score > best[0]:
            best = (score, k, labels)
    _, k, labels = best
    assert k == len(MECHANISMS)
    assert adjusted_rand_score(truth, labels) >= 0.9
