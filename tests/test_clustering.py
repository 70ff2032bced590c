"""Clustering: automatic k recovers simulated drift mechanisms; results are usable and stable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from hdap_engine import cli
from hdap_engine.errors import HdapError
from hdap_engine.fleet.bench_data import MECHANISMS, synthetic_fleet, write_fleet
from hdap_engine.fleet.clustering import Clustering
from hdap_engine.fleet.telemetry import fleet_from_frame, load_fleet
from hdap_engine.options import ClusteringPlan
from hdap_engine.search.objectives import cluster_weights


def _fleet(n, seed=0, **kw):
    frame, truth = synthetic_fleet(n, seed=seed, **kw)
    return fleet_from_frame(frame, source="synthetic.csv"), truth


@pytest.fixture(scope="module")
def fleet_2000():
    return _fleet(2000, seed=7)


@pytest.fixture(scope="module")
def fitted_2000(fleet_2000):
    fleet, _ = fleet_2000
    return Clustering(ClusteringPlan(seed=0)).fit(fleet)


@pytest.mark.parametrize(
    "n,seed,spread",
    [(400, 1, 0.03), (2000, 2, 0.03), (2000, 3, 0.05), (8000, 4, 0.04)],
)
def test_auto_k_recovers_unequal_mechanisms(n, seed, spread):
    # 55/15/12/10/8 % of devices; thermal and memory ageing move only 1-2 probes.
    fleet, truth = _fleet(n, seed=seed, spread=spread)
    clustering = Clustering(ClusteringPlan(seed=seed)).fit(fleet)
    assert clustering.k_ == len(MECHANISMS)
    assert adjusted_rand_score(truth, clustering.labels_) >= 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_k_recovers_mechanisms_of_varying_severity(seed):
    # Each affected device is slowed by factor ** s, s uniform in [1, 3]:
    # mechanisms are long streaks, not blobs; a mixture needs two Gaussians
    # for some of them, and must not count them as two clusters.
    fleet, truth = _fleet(5000, seed=seed, severity=(1.0, 3.0))
    clustering = Clustering(ClusteringPlan(seed=seed)).fit(fleet)
    assert clustering.k_ == len(MECHANISMS)
    assert adjusted_rand_score(truth, clustering.labels_) >= 0.9


def test_auto_k_recovers_mechanisms_on_a_large_fleet_with_mini_batch():
    fleet, truth = _fleet(60_000, seed=5)
    options = ClusteringPlan(seed=1, minibatch_above=50_000, auto_sample=20_000)
    clustering = Clustering(options).fit(fleet)
    assert clustering.k_ == len(MECHANISMS)
    assert adjusted_rand_score(truth, clustering.labels_) >= 0.9


def test_auto_k_survives_telemetry_rounded_to_10_microseconds():
    # A 0.05 ms probe rounded to 0.01 ms is a lattice of a few values: the
    # mixture must not mistake the rounding for clusters.
    frame, truth = synthetic_fleet(5000, seed=8)
    probes = [c for c in frame if c.startswith("probe_")]
    frame[probes] = np.maximum(frame[probes].round(2), 0.01)
    clustering = Clustering().fit(fleet_from_frame(frame))
    assert clustering.k_ == len(MECHANISMS)
    assert adjusted_rand_score(truth, clustering.labels_) >= 0.9


def test_silhouette_criterion_is_available_and_scored(fleet_2000):
    fleet, _ = fleet_2000
    clustering = Clustering(ClusteringPlan(criterion="silhouette")).fit(fleet)
    assert clustering.criterion_ == "silhouette"
    assert set(clustering.scores_) == set(range(2, 11))
    best = max(clustering.scores_.values())
    assert clustering.scores_[clustering.k_] >= best - 0.01


def test_scores_are_reported_for_every_k_tried(fitted_2000):
    assert set(fitted_2000.scores_) == set(range(2, 11))
    assert set(fitted_2000.bic_) == set(range(2, 11))
    assert all(-1 <= s <= 1 for s in fitted_2000.scores_.values())
    assert min(fitted_2000.bic_, key=fitted_2000.bic_.get) >= fitted_2000.k_


def test_cluster_ids_are_ordered_by_size(fitted_2000):
    sizes = np.bincount(fitted_2000.labels_)
    assert list(sizes) == sorted(sizes, reverse=True)
    np.testing.assert_allclose(fitted_2000.shares_, sizes / sizes.sum())
    assert fitted_2000.shares_.sum() == pytest.approx(1.0)


def test_same_seed_gives_the_same_clusters(fleet_2000, fitted_2000):
    fleet, _ = fleet_2000
    again = Clustering(ClusteringPlan(seed=0)).fit(fleet)
    np.testing.assert_array_equal(again.labels_, fitted_2000.labels_)
    np.testing.assert_allclose(again.centroids_, fitted_2000.centroids_)
    assert again.representatives_ == fitted_2000.representatives_


def test_representatives_are_the_devices_closest_to_the_centroid(fleet_2000, fitted_2000):
    fleet, _ = fleet_2000
    X = fitted_2000.transform(fleet)
    ids = fleet.device_ids
    for c in range(fitted_2000.k_):
        members = np.flatnonzero(fitted_2000.labels_ == c)
        dist = np.linalg.norm(X[members] - fitted_2000.centroids_[c], axis=1)
        expected = [str(i) for i in ids[members[np.argsort(dist, kind="stable")]]]
        ranked = fitted_2000.ranked_devices(c)
        assert ranked == expected
        assert fitted_2000.representatives_[c] == expected[:3]


def test_representatives_count_is_configurable(fleet_2000):
    fleet, _ = fleet_2000
    clustering = Clustering(ClusteringPlan(k=3, representatives=5)).fit(fleet)
    assert all(len(v) == 5 for v in clustering.representatives_.values())
    with pytest.raises(HdapError, match="no cluster 3"):
        clustering.ranked_devices(3)


def test_centroids_map_back_to_milliseconds(fleet_2000, fitted_2000):
    fleet, _ = fleet_2000
    probes = fleet.probes()
    assert fitted_2000.centroids_.shape == (fitted_2000.k_, len(fleet.probe_columns))
    assert fitted_2000.centroid_probes_ms_.shape == (fitted_2000.k_, len(fleet.probe_columns))
    for c in range(fitted_2000.k_):
        geo_mean = np.exp(np.log(probes[fitted_2000.labels_ == c]).mean(axis=0))
        np.testing.assert_allclose(fitted_2000.centroid_probes_ms_[c], geo_mean, rtol=1e-9)


def test_profiles_describe_each_cluster(fleet_2000, fitted_2000):
    fleet, truth = fleet_2000
    profiles = fitted_2000.profiles_
    assert list(profiles["cluster"]) == list(range(fitted_2000.k_))
    assert profiles["devices"].sum() == fleet.n_devices
    assert profiles["share"].sum() == pytest.approx(1.0)
    for col in ("rel_conv3x3", "rel_memcopy", "rel_launch", "context", "representatives"):
        assert col in profiles
    # The power-saving cluster: every probe slower than the fleet median and
    # most devices in power-saving mode.
    power = int(pd.Series(fitted_2000.labels_[truth == 1]).mode()[0])
    row = profiles.loc[power]
    assert row["rel_conv3x3"] == pytest.approx(1.6 / fleet_median_factor(fleet, "probe_conv3x3_ms"), rel=0.05)
    in_power = fleet.frame["power_mode"][fitted_2000.labels_ == power]
    in_fleet = fleet.frame["power_mode"]
    share, fleet_share = (in_power == "power_saving").mean(), (in_fleet == "power_saving").mean()
    assert share > 0.7
    assert f"{share:.0%} power_mode=power_saving (fleet {fleet_share:.0%})" in row["context"]
    # The thermal cluster runs hot.
    thermal = int(pd.Series(fitted_2000.labels_[truth == 2]).mode()[0])
    assert "ambient_c median" in profiles.loc[thermal, "context"]


def fleet_median_factor(fleet, column):
    """Fleet median of a probe relative to its nominal value."""
    from hdap_engine.fleet.bench_data import NOMINAL_PROBES_MS

    return float(np.median(fleet.frame[column])) / NOMINAL_PROBES_MS[column]


def test_assign_puts_new_devices_in_their_mechanism_cluster(fleet_2000, fitted_2000):
    fleet, truth = fleet_2000
    np.testing.assert_array_equal(fitted_2000.assign(fleet), fitted_2000.labels_)
    new, new_truth = _fleet(500, seed=99)
    mapping = {m: int(pd.Series(fitted_2000.labels_[truth == m]).mode()[0]) for m in range(len(MECHANISMS))}
    expected = np.array([mapping[m] for m in new_truth])
    assert (fitted_2000.assign(new) == expected).mean() >= 0.98


def test_assign_refuses_devices_without_the_probe_columns(fitted_2000):
    other = fleet_from_frame(
        pd.DataFrame({"device_id": ["a"], "probe_x_ms": [1.0], "probe_y_ms": [2.0]}), source="other.csv"
    )
    with pytest.raises(HdapError, match="other.csv: lacks column"):
        fitted_2000.assign(other)


def test_fixed_k_is_honoured(fleet_2000):
    fleet, _ = fleet_2000
    clustering = Clustering(ClusteringPlan(k=3)).fit(fleet)
    assert clustering.k_ == 3 and clustering.scores_ == {} and clustering.criterion_ == "fixed"
    assert set(np.unique(clustering.labels_)) == {0, 1, 2}


def test_numeric_context_can_be_a_feature(fleet_2000):
    fleet, _ = fleet_2000
    clustering = Clustering(ClusteringPlan(k=5, context_features=("ambient_c",))).fit(fleet)
    assert clustering.feature_names_[-1] == "ambient_c"
    assert clustering.centroids_.shape == (5, len(fleet.probe_columns) + 1)
    assert clustering.transform(fleet).shape == (fleet.n_devices, len(fleet.probe_columns) + 1)


@pytest.mark.parametrize(
    "feature,message",
    [
        ("power_mode", "'power_mode' is not numeric"),
        ("nope", "'nope' is not a context column"),
        ("agent_url", "never a clustering feature"),
    ],
)
def test_unusable_context_features_are_refused(fleet_2000, feature, message):
    fleet, _ = fleet_2000
    with pytest.raises(HdapError, match=message):
        Clustering(ClusteringPlan(context_features=(feature,))).fit(fleet)


def test_missing_context_values_are_filled_with_the_median(fleet_2000):
    fleet, _ = fleet_2000
    frame = fleet.frame.copy()
    frame.loc[:9, "ambient_c"] = np.nan
    clustering = Clustering(ClusteringPlan(k=2, context_features=("ambient_c",))).fit(fleet_from_frame(frame))
    assert any("ambient_c: 10 missing value(s) set to the median" in n for n in clustering.notes_)


def _tiny(rows):
    frame = pd.DataFrame(rows, columns=["probe_a_ms", "probe_b_ms"])
    frame.insert(0, "device_id", [f"d{i}" for i in range(len(frame))])
    return fleet_from_frame(frame, source="tiny.csv")


def test_a_single_device_is_a_single_cluster():
    clustering = Clustering().fit(_tiny([[1.0, 2.0]]))
    assert clustering.k_ == 1
    assert list(clustering.labels_) == [0]
    assert clustering.representatives_ == {0: ["d0"]}
    assert clustering.shares_.tolist() == [1.0]
    assert any("one device" in n for n in clustering.notes_)


def test_identical_devices_are_a_single_cluster():
    clustering = Clustering().fit(_tiny([[1.0, 2.0]] * 50))
    assert clustering.k_ == 1 and set(clustering.labels_) == {0}
    assert any("identical" in n for n in clustering.notes_)
    assert clustering.ranked_devices(0)[:3] == ["d0", "d1", "d2"]  # ties: file order
    np.testing.assert_allclose(clustering.centroid_probes_ms_, [[1.0, 2.0]])


def test_k_never_exceeds_the_distinct_devices():
    clustering = Clustering().fit(_tiny([[1.0, 2.0]] * 30 + [[3.0, 1.0]] * 30 + [[5.0, 5.0]] * 30))
    assert clustering.k_ == 3
    assert max(clustering.scores_) <= 3


def test_two_devices_give_one_cluster_with_auto_k():
    clustering = Clustering().fit(_tiny([[1.0, 2.0], [3.0, 4.0]]))
    assert clustering.k_ == 1


def test_impossible_fixed_k_is_refused():
    with pytest.raises(HdapError, match="only 1 distinct device profile"):
        Clustering(ClusteringPlan(k=2)).fit(_tiny([[1.0, 2.0]] * 5))
    with pytest.raises(HdapError, match="cannot make 9 clusters from 5 devices"):
        Clustering(ClusteringPlan(k=9)).fit(_tiny([[1.0, 2.0]] * 5))


@pytest.mark.parametrize(
    "kwargs,message",
    [({"k": 0}, "k must be"), ({"k_min": 1}, "k_min"), ({"k_min": 5, "k_max": 3}, "k_max"),
     ({"representatives": 0}, "representatives"), ({"criterion": "gap"}, "criterion")],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(HdapError, match=message):
        ClusteringPlan(**kwargs)


def test_cli_cluster_prints_profiles_and_writes_assignments(tmp_path, capsys):
    frame, truth = synthetic_fleet(1500, seed=11)
    path = write_fleet(frame, tmp_path / "fleet.csv")
    out = tmp_path / "assignments.csv"
    assert cli.main(["cluster", str(path), "--out", str(out), "--representatives", "2"]) == 0
    text = capsys.readouterr().out
    assert "fleet.csv: 1,500 devices, 6 probe columns, SKU edge-a" in text
    assert "k = 5 (chosen by BIC" in text
    assert "conv3x3" in text and "power_mode=power_saving" in text
    written = pd.read_csv(out, dtype={"device_id": str})
    assert list(written.columns) == ["device_id", "cluster"]
    assert list(written["device_id"]) == list(frame["device_id"])
    assert adjusted_rand_score(truth, written["cluster"]) >= 0.9
    assert out.read_text().startswith("device_id,cluster\n")


def test_cli_cluster_with_fixed_k_and_bad_flags(tmp_path, capsys):
    frame, _ = synthetic_fleet(300, seed=2)
    path = write_fleet(frame, tmp_path / "fleet.parquet")
    assert cli.main(["cluster", str(path), "--k", "2"]) == 0
    assert "k = 2 (fixed by the user)" in capsys.readouterr().out
    assert cli.main(["cluster", str(path), "--k", "many"]) == 2
    assert "--k must be auto or a whole number, got 'many'" in capsys.readouterr().err
    assert cli.main(["cluster", str(path), "--out", str(tmp_path / "no" / "a.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["cluster", str(path), "--context", "power_mode"]) == 2
    assert "error: fleet.parquet: context feature 'power_mode' is not numeric" in capsys.readouterr().err


def test_cli_cluster_on_degenerate_fleet_gives_one_cluster(tmp_path, capsys):
    path = tmp_path / "same.csv"
    path.write_text("device_id,probe_a_ms,probe_b_ms\n" + "".join(f"d{i},1,2\n" for i in range(10)))
    assert cli.main(["cluster", str(path)]) == 0
    out = capsys.readouterr().out
    assert "k = 1" in out and "identical" in out


def test_clusters_survive_a_round_trip_through_a_file(tmp_path):
    frame, _ = synthetic_fleet(800, seed=3)
    direct = Clustering().fit(fleet_from_frame(frame))
    loaded = Clustering().fit(load_fleet(write_fleet(frame, tmp_path / "f.csv")))
    np.testing.assert_array_equal(direct.labels_, loaded.labels_)


def test_user_cluster_weights_are_normalised(fitted_2000):
    shares, k = fitted_2000.shares_, fitted_2000.k_
    np.testing.assert_allclose(cluster_weights(shares), shares)
    w = cluster_weights(shares, {c: 2.0 for c in range(k)})
    np.testing.assert_allclose(w, np.full(k, 1 / k))
    w = cluster_weights(shares, {0: 3, 1: 1})
    np.testing.assert_allclose(w[:2], [0.75, 0.25])
    assert w[2:].sum() == 0  # clusters left out get no weight


@pytest.mark.parametrize(
    "weights,message",
    [
        ({0: -1.0, 1: 2.0}, "weight of cluster 0 is -1.0"),
        ({0: 0.0, 1: 0.0}, "all zero"),
        ({0: float("nan")}, "must be finite"),
        ({17: 1.0}, "no cluster 17"),
        ({0: "heavy"}, "not a number"),
    ],
)
def test_bad_user_cluster_weights_are_refused(fitted_2000, weights, message):
    with pytest.raises(HdapError, match=message):
        cluster_weights(fitted_2000.shares_, weights)
