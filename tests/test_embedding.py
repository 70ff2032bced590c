"""Embedding: a stratified, seeded, cached 2-D picture of the clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import silhouette_score

from hdap_engine.fleet import embedding
from hdap_engine.fleet.bench_data import synthetic_fleet
from hdap_engine.fleet.clustering import Clustering
from hdap_engine.fleet.embedding import MIN_PER_CLUSTER, embed, stratified_sample
from hdap_engine.fleet.telemetry import fleet_from_frame
from hdap_engine.options import ClusteringPlan


def test_stratified_sample_keeps_small_clusters_visible():
    labels = np.repeat([0, 1, 2], [97_000, 2_500, 500])
    rows = stratified_sample(labels, 5_000, seed=0)
    assert len(rows) == 5_000
    assert np.all(np.diff(rows) > 0)
    counts = np.bincount(labels[rows], minlength=3)
    assert counts[2] >= min(500, MIN_PER_CLUSTER)  # 0.5 % of devices, still drawn
    assert counts[1] >= MIN_PER_CLUSTER
    assert counts[0] > counts[1] >= counts[2]


def test_stratified_sample_is_seeded_and_takes_all_of_a_small_fleet():
    labels = np.repeat([0, 1], [3000, 1000])
    np.testing.assert_array_equal(stratified_sample(labels, 1000, 3), stratified_sample(labels, 1000, 3))
    assert not np.array_equal(stratified_sample(labels, 1000, 3), stratified_sample(labels, 1000, 4))
    np.testing.assert_array_equal(stratified_sample(labels, 10_000), np.arange(4000))


def test_stratified_sample_with_more_clusters_than_points():
    labels = np.arange(50) % 25
    rows = stratified_sample(labels, 10, seed=0)
    assert len(rows) == 10 and len(np.unique(rows)) == 10


def _fitted(n, seed=0, **options):
    frame, truth = synthetic_fleet(n, seed=seed)
    fleet = fleet_from_frame(frame)
    return fleet, Clustering(ClusteringPlan(**options)).fit(fleet), truth


def test_tiny_fleet_is_drawn_by_pca_with_all_columns():
    fleet, clustering, _ = _fitted(40, k=2)
    out = embed(fleet, clustering, seed=0)
    assert out.attrs["method"] == "pca"
    assert list(out.columns[:4]) == ["device_id", "x", "y", "cluster"]
    assert set(fleet.context_columns) <= set(out.columns)
    assert len(out) == 40 and np.isfinite(out[["x", "y"]].to_numpy()).all()
    np.testing.assert_array_equal(out["cluster"], clustering.labels_)


def test_single_device_and_identical_devices_do_not_crash():
    frame = pd.DataFrame({"device_id": ["a", "b", "c"], "probe_a_ms": [1.0] * 3, "probe_b_ms": [2.0] * 3})
    fleet = fleet_from_frame(frame)
    out = embed(fleet, Clustering().fit(fleet))
    assert (out[["x", "y"]].to_numpy() == 0).all()
    one = fleet.subset([0])
    assert len(embed(one, Clustering().fit(one))) == 1


@pytest.mark.slow
def test_umap_separates_the_clusters_deterministically_and_is_cached():
    embedding.warm_up()
    fleet, clustering, _ = _fitted(3000, seed=2)
    embedding.clear_cache()
    first = embed(fleet, clustering, max_points=1500, seed=0)
    assert first.attrs["method"] == "umap"
    assert len(first) == 1500
    # Every cluster shows, and the picture keeps them apart.
    assert set(first["cluster"]) == set(range(clustering.k_))
    assert silhouette_score(first[["x", "y"]], first["cluster"]) > 0.5
    embedding.clear_cache()
    second = embed(fleet, clustering, max_points=1500, seed=0)
    pd.testing.assert_frame_equal(first, second)
    cached = embed(fleet, clustering, max_points=1500, seed=0)
    pd.testing.assert_frame_equal(first, cached)
    cached.loc[0, "x"] = 1e9  # callers get copies: the cache is not changed
    assert embed(fleet, clustering, max_points=1500, seed=0).loc[0, "x"] != 1e9


def test_embedding_refuses_a_clustering_of_another_fleet():
    fleet, clustering, _ = _fitted(40, k=2)
    with pytest.raises(ValueError, match="different fleet"):
        embed(fleet.subset(np.arange(10)), clustering)
