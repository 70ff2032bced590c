"""Drift between snapshots: moved devices found on the twin, new clusters, the CLI's one report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from hdap_engine import cli
from hdap_engine.errors import HdapError
from hdap_engine.fleet.drift import compare
from hdap_engine.fleet.telemetry import fleet_from_frame
from hdap_engine.report import charts
from hdap_engine.twin import LATENT_FIELDS, DeviceStates, Twin, get_preset, simulate_fleet
from hdap_engine.twin.mechanisms import draw_states

SKU = "jetson-nano"


@pytest.fixture(scope="module")
def snapshot():
    telemetry, states = simulate_fleet(SKU, 1500, seed=5)
    return telemetry, DeviceStates.from_frame(states)


def _reprobe(states: DeviceStates, seed: int) -> pd.DataFrame:
    """NEW telemetry: the standard probes run again (fresh noise) on every device."""
    probes = Twin(get_preset(SKU)).probe_ms(states, runs=20, rng=np.random.default_rng(seed))
    return pd.concat([probes[["device_id"]], pd.DataFrame({"sku": [SKU] * len(states)}),
                      probes.drop(columns="device_id")], axis=1)


def _change_mechanism(states: DeviceStates, devices: np.ndarray, target: str) -> DeviceStates:
    """The given devices take the latent state of `target` devices from another draw."""
    other = draw_states(SKU, 6000, np.random.default_rng(9))
    donors = np.flatnonzero((other.mechanism == target) & (other.severity > 0.3))[: len(devices)]
    assert len(donors) == len(devices)
    latent = {f: np.asarray(getattr(states, f)).copy() for f in LATENT_FIELDS}
    for f in LATENT_FIELDS:
        latent[f][devices] = np.asarray(getattr(other, f))[donors]
    mechanism = states.mechanism.copy()
    mechanism[devices] = target
    return replace(states, mechanism=mechanism, **latent)


@pytest.mark.parametrize("target", ["power_saving", "thermal_throttling"])
def test_devices_that_changed_mechanism_are_found_as_moved_within_5_percent(snapshot, target):
    telemetry, states = snapshot
    rng = np.random.default_rng(1)
    changed = rng.choice(np.flatnonzero(states.mechanism == "nominal"), 225, replace=False)  # 15 %
    new = fleet_from_frame(_reprobe(_change_mechanism(states, changed, target), seed=77), source="new.csv")
    report = compare(fleet_from_frame(telemetry, source="old.csv"), new)
    truth = set(states.device_id[changed])
    found = set(report.moved["device_id"])
    assert abs(len(found) - len(truth)) <= 0.05 * len(truth)
    assert len(found & truth) >= 0.95 * len(truth)
    # Most moves leave the nominal cluster (0, the largest) for one other cluster.
    top = report.moves[0]
    assert top["from"] == 0 and top["devices"] >= 0.9 * len(truth)
    shares = {c["cluster"]: c for c in report.clusters}
    assert shares[top["to"]]["new_share"] - shares[top["to"]]["old_share"] == pytest.approx(0.15, abs=0.01)
    assert shares[top["to"]]["shifted"] and shares[0]["shifted"]
    d = report.to_dict()
    assert d["devices_new"] == d["devices_gone"] == 0 and d["devices_moved"] == len(found)
    assert not d["clusters_only_in_new"]


def test_a_mechanism_never_seen_before_is_a_cluster_only_in_new(snapshot):
    telemetry, states = snapshot
    nominal = np.flatnonzero(states.mechanism == "nominal")
    hit = np.random.default_rng(2).choice(nominal, 150, replace=False)
    bw = np.asarray(states.mem_bw_scale).copy()
    bw[hit] *= 0.35  # DRAM far slower than any drift mechanism makes it
    new = fleet_from_frame(_reprobe(states.with_latent(mem_bw_scale=bw), seed=78), source="new.csv")
    report = compare(fleet_from_frame(telemetry, source="old.csv"), new)
    assert len(report.new_clusters) == 1
    assert report.new_clusters[0]["devices"] == pytest.approx(150, abs=8)


def test_devices_new_and_gone_are_matched_by_id(snapshot):
    telemetry, _ = snapshot
    old = fleet_from_frame(telemetry.iloc[100:], source="old.csv")
    new = fleet_from_frame(telemetry.iloc[:1400], source="new.csv")
    d = compare(old, new).to_dict()
    assert (d["devices_new"], d["devices_gone"], d["devices_matched"], d["devices_moved"]) == (100, 100, 1300, 0)


def test_snapshots_without_a_common_probe_suite_are_refused(snapshot):
    telemetry, _ = snapshot
    old = fleet_from_frame(telemetry, source="old.csv")
    new = fleet_from_frame(telemetry.drop(columns=["probe_conv1x1_ms"]), source="new.csv")
    with pytest.raises(HdapError, match="new.csv: lacks probe column.s. probe_conv1x1_ms that old.csv has"):
        compare(old, new)


def test_sankey_shows_stays_grey_and_moves_coloured():
    fig = charts.drift_sankey([{"from": 0, "to": 0, "devices": 90}, {"from": 0, "to": 1, "devices": 10},
                               {"from": 1, "to": 1, "devices": 50}], 2)
    link = fig.data[0].link
    assert list(link.value) == [90, 10, 50] and list(link.target) == [2, 3, 3]
    assert link.color[0].startswith("rgba(180") and not link.color[1].startswith("rgba(180")
    assert "10 " in fig.layout.title.text


def test_cli_drift_prints_moves_and_writes_json(snapshot, tmp_path, capsys):
    telemetry, states = snapshot
    changed = np.flatnonzero(states.mechanism == "nominal")[:150]
    old_path, new_path = tmp_path / "old.csv", tmp_path / "new.parquet"
    telemetry.to_csv(old_path, index=False)
    _reprobe(_change_mechanism(states, changed, "power_saving"), seed=79).to_parquet(new_path, index=False)
    out = tmp_path / "drift.json"
    assert cli.main(["drift", str(old_path), str(new_path), "--json", str(out),
                     "--html", str(tmp_path / "s.html")]) == 0
    text = capsys.readouterr().out
    assert "moved" in text and "share then" in text
    d = json.loads(out.read_text())
    for key in ("devices_new", "devices_gone", "devices_moved", "moves", "deployed_objective_ms",
                "reoptimised_objective_ms", "recommend_reoptimise"):
        assert key in d
    assert abs(d["devices_moved"] - 150) <= 8 and d["moves"][0]["devices"] >= 140
    assert (tmp_path / "s.html").stat().st_size > 10_000
    assert cli.main(["drift", str(old_path), str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
