"""The sample fleets (`hdap_engine.fleet.samples`): how they are found, and the shipped ones' clusters, which are their drift mechanisms and prefer different models."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from hdap_engine.fleet.clustering import Clustering
from hdap_engine.fleet.telemetry import load_fleet
from hdap_engine.pruning.budget import repair
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.twin import Twin, get_preset, load_twin_states, select_states
from tests.helpers.paths import SAMPLES


@pytest.mark.parametrize("name,devices", [("jetson_nano_fleet.csv", 5000),
                                          ("rpi4_fleet.csv", 2000)])
def test_automatic_clusters_recover_the_drift_mechanisms(name, devices):
    fleet = load_fleet(SAMPLES / name)
    assert fleet.n_devices == devices
    states = load_twin_states(SAMPLES / name)
    clustering = Clustering().fit(fleet)  # k chosen automatically
    truth = dict(zip(states.device_id, states.mechanism, strict=True))
    labels = [truth[d] for d in fleet.device_ids]
    assert adjusted_rand_score(labels, clustering.labels_) >= 0.9


def test_equal_mac_candidates_swap_order_between_clusters_representatives():
    """The problem is real on the shipped fleet: which of two candidates of equal MACs is
    faster depends on the cluster, as measured (by the twin) on its representatives."""
    fleet = load_fleet(SAMPLES / "jetson_nano_fleet.csv")
    clustering = Clustering().fit(fleet)
    states = load_twin_states(SAMPLES / "jetson_nano_fleet.csv")
    space = PruningSpace.for_model("mobilenet_v1")
    target = 0.5 * space.macs(space.base_widths)
    rng = np.random.default_rng(0)
    cands = np.unique(repair(space, rng.uniform(0.2, 1.0, size=(200, space.n_groups)), target),
                      axis=0)
    twin = Twin(get_preset("jetson-nano"))
    per_cluster = np.stack([
        twin.expected_ms(space.layer_table(cands),
                         select_states(states, clustering.representatives_[c])).mean(axis=1)
        for c in range(clustering.k_)], axis=1)  # (candidates, clusters)
    log = np.log(per_cluster)
    best = 0.0
    for i in range(clustering.k_):
        for j in range(i + 1, clustering.k_):
            di = log[:, None, i] - log[None, :, i]  # > 0: a slower than b on cluster i
            dj = log[:, None, j] - log[None, :, j]
            best = max(best, float(np.max(np.minimum(di, -dj))))
    # Some A is at least 3 % slower than some B on one cluster and 3 % faster on another.
    assert best > np.log(1.03)


def test_sample_fleets_are_telemetry_files_with_a_twin_sidecar(tmp_path, monkeypatch):
    from hdap_engine.fleet.samples import sample_fleets

    for name in ("b_fleet.csv", "b_fleet.twin.parquet", "a_fleet.csv.gz",
                 "a_fleet.twin.parquet", "lonely.csv", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = sample_fleets(tmp_path)
    assert [s.name for s in found] == ["a_fleet", "b_fleet"]
    assert found[0].sidecar == tmp_path / "a_fleet.twin.parquet"
    monkeypatch.setenv("HDAP_SAMPLE_DATA", str(tmp_path))  # what the app lists by default
    assert {s.name: s.path for s in sample_fleets()}["b_fleet"] == tmp_path / "b_fleet.csv"
    assert sample_fleets(tmp_path / "missing") == []
