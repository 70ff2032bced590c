"""Choosing k: mixture components that are one cluster are merged, separate clusters are not."""

from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from hdap_engine.fleet.choose_k import choose_k, merge_overlapping
from hdap_engine.options import ClusteringPlan


def test_overlapping_mixture_components_are_merged():
    rng = np.random.default_rng(0)
    # One uniform streak, which two Gaussians cover, and a blob far away.
    streak = np.column_stack([rng.uniform(0, 10, 3000), rng.normal(0, 0.2, 3000)])
    blob = rng.normal([5, 8], 0.3, size=(1000, 2))
    X = np.vstack([streak, blob])
    gm = GaussianMixture(3, random_state=0).fit(X)
    groups = merge_overlapping(gm.predict_proba(X), X, k_min=1)
    assert len(groups) == 2
    blob_component = int(np.bincount(gm.predict(blob)).argmax())
    assert [blob_component] in groups
    # Separate blobs stay apart.
    blobs = np.vstack([rng.normal(c, 0.3, size=(800, 2)) for c in ([0, 0], [4, 0], [0, 4])])
    gm = GaussianMixture(3, random_state=0).fit(blobs)
    assert len(merge_overlapping(gm.predict_proba(blobs), blobs, k_min=1)) == 3


def _one_hot(labels):
    return np.eye(labels.max() + 1)[labels]


def test_a_streak_cut_in_two_is_merged_even_without_overlap():
    rng = np.random.default_rng(1)
    # Hard responsibilities carry no entropy: only the missing density dip
    # along the streak can tell that its halves are one cluster.
    streak = np.column_stack([rng.uniform(0, 40, 2000), rng.normal(0, 0.3, 2000)])
    blob = rng.normal([20, 10], 0.3, size=(600, 2))
    X = np.vstack([streak, blob])
    labels = np.r_[(streak[:, 0] > 17).astype(int), np.full(600, 2)]  # uneven cut
    assert merge_overlapping(_one_hot(labels), X, k_min=1) == [[0, 1], [2]]


def test_drifts_fanning_out_of_the_nominal_devices_stay_apart():
    rng = np.random.default_rng(2)
    nominal = rng.normal(0, 0.3, size=(3000, 2))
    angle = np.deg2rad(40)
    rotate = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    drift_a = np.column_stack([rng.uniform(1, 6, 700), rng.normal(0, 0.3, 700)])
    drift_b = drift_a @ rotate.T
    X = np.vstack([nominal, drift_a, drift_b])
    labels = np.repeat([0, 1, 2], [3000, 700, 700])
    assert len(merge_overlapping(_one_hot(labels), X, k_min=1)) == 3


def test_a_streak_covered_by_two_gaussians_is_reported_as_one_merged_cluster():
    rng = np.random.default_rng(3)
    streak = np.column_stack([rng.uniform(-3, 3, 800), rng.normal(0, 0.05, 800)])
    blob = rng.normal([0, 3], 0.1, size=(300, 2))
    with threadpool_limits(1):  # as Clustering.fit calls it
        choice = choose_k(np.vstack([streak, blob]), 5, [], ClusteringPlan(k_max=4, seed=0))
    assert choice.criterion == "bic" and choice.merged >= 1
    assert choice.k == 2 and choice.init.shape == (2, 2)
    assert isinstance(choice.merged, int)
