"""The shipped sample fleets: valid telemetry whose clusters are its drift mechanisms."""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.metrics import adjusted_rand_score

from hdap_engine.fleet.clustering import Clustering
from hdap_engine.fleet.simulate import load_twin_states
from hdap_engine.fleet.telemetry import load_fleet

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


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
