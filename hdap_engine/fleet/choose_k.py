"""Choosing the number of clusters k: k-means restarts, a Gaussian mixture's BIC, merging overlaps.

On a sample of at most `ClusteringPlan.auto_sample` devices:

1. k-means for k = k_min..k_max, each k the best of k-means++ starts and of
   the (k-1)-solution grown by one centre (small clusters next to a big one
   are missed by k-means++ alone; `kmeans_restarts`);
2. each solution starts a full-covariance Gaussian mixture; the smallest k
   whose log-likelihood is within `bic_tolerance` of the best-BIC k wins.
   The silhouette is computed too (``scores``) but is not the default
   criterion: with one far cluster and four near ones it scores k = 2 as
   high as k = 5 (measured on the synthetic fleets of `bench_data`);
3. mixture components that are one cluster (two Gaussians covering one
   elongated cluster, e.g. a drift of varying severity) are merged: by
   classification entropy, or because there is no density dip between
   them (`merge_overlapping`).

Telemetry rounded to a coarse resolution (0.01 ms on a 0.05 ms probe) is
blurred over its rounding interval before step 2 (`dequantize`), or the
mixture would fit the rounding lattice. `hdap_engine.fleet.clustering`
calls `choose_k` and then fits the whole fleet with the chosen k.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture

# Below this many (sampled) devices automatic k uses the silhouette; below
# _FULL_COVARIANCE_DEVICES the mixture has diagonal covariances.
_BIC_MIN_DEVICES = 30
_FULL_COVARIANCE_DEVICES = 200
# Variance floor of the mixture (scaled units): keeps a cluster of identical
# or quantised devices from an unbounded likelihood.
_REG_COVAR = 1e-4
# Mixture components sharing more classification entropy than this (nats
# per device of the pair), or with no dip between them, are one cluster;
# see merge_overlapping.
_MERGE_ENTROPY = 0.07
_MERGE_DIP = 0.6
_DIP_MIN_DEVICES = 200
_DIP_MAX_SIZE_RATIO = 2.0
_DIP_MIN_ALIGNMENT = 0.8
# Rounded telemetry is de-quantised before the mixture is scored, unless
# the sample has fewer distinct devices than this.
DEQUANTIZE_MIN_ROWS = 100
# Extra k-means starts grown from the (k-1)-cluster solution.
_GROW_TRIES = 2


class KRange(Protocol):
    """The options `choose_k` reads (`hdap_engine.options.ClusteringPlan` has them)."""

    k_min: int
    k_max: int
    criterion: str
    bic_tolerance: float
    silhouette_sample: int
    silhouette_tolerance: float
    seed: int


@dataclass(frozen=True)
class KChoice:
    """What `choose_k` found: k, the centres to start the final fit from, and the scores per k.

    ``criterion`` is the one actually used ("bic", or "silhouette" on small
    samples); ``merged`` counts mixture components merged into others.
    """

    k: int
    init: np.ndarray | None
    criterion: str
    scores: dict[int, float] = field(default_factory=dict)
    bic: dict[int, float] = field(default_factory=dict)
    merged: int = 0


def choose_k(Xs: np.ndarray, distinct: int, notes: list[str], opts: KRange) -> KChoice:
    """Choose k on (a sample of) scaled features; the chosen k and its starting centres.

    Parameters
    ----------
    Xs:
        Scaled features of the (sampled, de-quantised) devices.
    distinct:
        Distinct device profiles among them (counted up to ``opts.k_max + 1``).
    notes:
        Notes for the user; appended to.
    opts:
        The k range, criterion, tolerances and seed (a `ClusteringPlan`).

    Returns
    -------
    KChoice
    """
    scores: dict[int, float] = {}
    bic: dict[int, float] = {}
    # Silhouette needs 2 <= k <= samples - 1, and k-means cannot find more
    # clusters than distinct points.
    k_hi = min(opts.k_max, distinct, len(Xs) - 1)
    if k_hi < opts.k_min:
        return KChoice(1, None, opts.criterion, scores, bic)
    criterion = opts.criterion
    if criterion == "bic" and len(Xs) < _BIC_MIN_DEVICES:
        criterion = "silhouette"
        notes.append(f"fewer than {_BIC_MIN_DEVICES} devices: k chosen by silhouette")
    # A full covariance per cluster needs tens of devices per cluster;
    # smaller fleets get a diagonal one (measured: both recover 5
    # unequal clusters from 40 devices up, full only from 200).
    covariance = "full" if len(Xs) >= _FULL_COVARIANCE_DEVICES else "diag"
    rng = np.random.default_rng(opts.seed + 1)
    sub = (
        np.sort(rng.choice(len(Xs), opts.silhouette_sample, replace=False))
        if len(Xs) > opts.silhouette_sample
        else np.arange(len(Xs))
    )
    centers: dict[int, np.ndarray] = {}
    loglik: dict[int, float] = {}
    mixtures: dict[int, GaussianMixture] = {}
    previous = None
    for k in range(opts.k_min, k_hi + 1):
        km = kmeans_restarts(Xs, k, previous, opts.seed)
        previous = km.cluster_centers_
        if len(np.unique(km.labels_)) < k:
            break  # fewer distinct points than k: larger k cannot do better
        centers[k] = km.cluster_centers_
        labels = km.labels_[sub]
        if len(np.unique(labels)) >= 2:
            scores[k] = float(silhouette_score(Xs[sub], labels))
        if criterion == "bic":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                weights, means, precisions = gaussians_from_labels(Xs, km.labels_, k, covariance)
                # Started from the k-means partition ("random" only skips
                # sklearn's own k-means run; every start value is given).
                gm = GaussianMixture(
                    n_components=k,
                    covariance_type=covariance,
                    init_params="random",
                    weights_init=weights,
                    means_init=means,
                    precisions_init=precisions,
                    reg_covar=_REG_COVAR,
                    random_state=opts.seed,
                ).fit(Xs)
            bic[k] = float(gm.bic(Xs))
            loglik[k] = float(gm.score(Xs))
            mixtures[k] = gm
    if criterion == "bic" and bic:
        best = min(bic, key=bic.get)
        # The smallest k that explains the devices almost as well: a
        # cluster that costs measurements must earn its keep.
        k = min(k for k in loglik if k <= best and loglik[best] - loglik[k] < opts.bic_tolerance)
        groups = merge_overlapping(mixtures[k].predict_proba(Xs), Xs, opts.k_min)
        n_merged = k - len(groups)
        if n_merged:
            # One elongated cluster (a drift of varying severity) takes
            # two Gaussians; k-means restarts from the merged groups.
            resp = mixtures[k].predict_proba(Xs)
            merged = np.column_stack([resp[:, g].sum(axis=1) for g in groups])
            labels = merged.argmax(axis=1)
            return KChoice(len(groups), means_by_label(Xs, labels, len(groups)), criterion,
                           scores, bic, n_merged)
        return KChoice(k, centers[k], criterion, scores, bic)
    if not scores:
        return KChoice(1, None, criterion, scores, bic)
    best_score = max(scores.values())
    k = min(k for k, s in scores.items() if s >= best_score - opts.silhouette_tolerance)
    return KChoice(k, centers[k], criterion, scores, bic)


def kmeans_restarts(X: np.ndarray, k: int, previous: np.ndarray | None, seed: int):
    """The best of several k-means runs: k-means++ starts, and the (k-1)-solution plus one more centre.

    With clusters of very unequal size, k-means++ often seeds the big cluster
    twice and leaves two small ones merged; growing the previous solution by
    one D^2-sampled centre reaches the right partition from the other side.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        best = KMeans(n_clusters=k, n_init=2, random_state=seed).fit(X)
        if previous is None or len(previous) != k - 1:
            return best
        rng = np.random.default_rng([seed, k])
        d2 = np.min(((X[:, None, :] - previous[None, :, :]) ** 2).sum(axis=2), axis=1)
        if not d2.sum() > 0:
            return best
        for _ in range(_GROW_TRIES):
            new = X[rng.choice(len(X), p=d2 / d2.sum())]
            km = KMeans(n_clusters=k, init=np.vstack([previous, new]), n_init=1).fit(X)
            if km.inertia_ < best.inertia_ * (1 - 1e-9):
                best = km
    return best


def merge_overlapping(resp: np.ndarray, X: np.ndarray, k_min: int) -> list[list[int]]:
    """Group mixture components that are one cluster: overlapping, or no density gap between.

    Two signs, either one merges a pair (the strongest first, then again):

    - classification entropy (Baudry et al., "Combining mixture components
      for clustering", 2010): merging two Gaussians that cover one cluster
      removes much entropy (0.07-0.45 nats per device of the pair on our
      synthetic and twin fleets; 0.045 for one long streak), separate
      clusters share almost none (< 0.015; up to 0.053 for clusters that
      touch); above `_MERGE_ENTROPY`, merge;
    - no dip: devices of the pair projected on the line through the two
      means; a long streak (a drift of uniformly varying severity) is flat
      there (density in the middle / at the ends: 0.86-1.9, measured), two
      clusters have a valley (< 0.4); above `_MERGE_DIP`, merge. Only for
      groups of similar size (a big cluster's tail looks flat towards any
      small neighbour), each stretched along the line to the other (two
      drifts fanning out of the nominal devices are not), and with
      `_DIP_MIN_DEVICES` devices together.
    """

    def entropy(p: np.ndarray) -> float:
        p = p[p > 1e-12]
        return float(-(p * np.log(p)).sum())

    groups = [[c] for c in range(resp.shape[1])]
    columns = [resp[:, c] for c in range(resp.shape[1])]
    while len(groups) > k_min:
        labels = np.column_stack(columns).argmax(axis=1)
        best, pair = 1.0, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                mass = columns[a].sum() + columns[b].sum()
                gain = entropy(columns[a]) + entropy(columns[b]) - entropy(columns[a] + columns[b])
                strength = gain / mass / _MERGE_ENTROPY if mass > 0 else 0.0
                strength = max(strength, dip_ratio(X, labels, a, b) / _MERGE_DIP)
                if strength > best:
                    best, pair = strength, (a, b)
        if pair is None:
            break
        a, b = pair
        groups[a] = groups[a] + groups[b]
        columns[a] = columns[a] + columns[b]
        del groups[b], columns[b]
    return groups


def dip_ratio(X: np.ndarray, labels: np.ndarray, a: int, b: int) -> float:
    """Density half-way between two groups relative to the density at their means (0 = gap)."""
    in_a, in_b = labels == a, labels == b
    n_a, n_b = int(in_a.sum()), int(in_b.sum())
    if n_a + n_b < _DIP_MIN_DEVICES or min(n_a, n_b) == 0:
        return 0.0
    if max(n_a, n_b) > _DIP_MAX_SIZE_RATIO * min(n_a, n_b):
        # A streak cut in two gives halves of similar size; a small cluster
        # next to a big one always looks "flat" from the big one's tail.
        return 0.0
    mean_a, mean_b = X[in_a].mean(axis=0), X[in_b].mean(axis=0)
    d = mean_b - mean_a
    if not d @ d > 0:
        return np.inf
    # Halves of one streak lie along it: each group's main axis points at the
    # other group. Two drifts fanning out of the nominal devices do not.
    for members in (X[in_a], X[in_b]):
        axis = np.linalg.svd(members - members.mean(axis=0), full_matrices=False)[2][0]
        if abs(axis @ d) / np.sqrt(d @ d) < _DIP_MIN_ALIGNMENT:
            return 0.0
    t = (X[in_a | in_b] - mean_a) @ d / (d @ d)  # 0 at mean a, 1 at mean b
    h, _ = np.histogram(t, bins=10, range=(0.0, 1.0))
    ends = min(h[:2].mean(), h[-2:].mean())
    middle = np.convolve(h, np.ones(3) / 3, mode="valid")[1:-1].min()
    return float(middle / ends) if ends > 0 else 0.0


def gaussians_from_labels(
    X: np.ndarray, labels: np.ndarray, k: int, covariance: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and precisions ("full" matrices or "diag" vectors) of a partition's groups."""
    d = X.shape[1]
    weights = np.bincount(labels, minlength=k) / len(X)
    means = np.zeros((k, d))
    precisions = np.zeros((k, d, d)) if covariance == "full" else np.zeros((k, d))
    for c in range(k):
        members = X[labels == c]
        means[c] = members.mean(axis=0)
        diff = members - means[c]
        if covariance == "full":
            cov = diff.T @ diff / len(members) + _REG_COVAR * np.eye(d)
            precisions[c] = np.linalg.inv(cov)
        else:
            precisions[c] = 1.0 / ((diff**2).mean(axis=0) + _REG_COVAR)
    return weights, means, precisions


def dequantize(raw: np.ndarray, n_probes: int, rng: np.random.Generator) -> np.ndarray:
    """Blur quantised values over about their rounding interval.

    Probe columns are log latencies: they are de-quantised in ms, where the
    rounding happened. Columns whose values are mostly distinct are left as
    they are.
    """
    out = raw.copy()
    for j in range(raw.shape[1]):
        values = np.exp(raw[:, j]) if j < n_probes else raw[:, j]
        unique = np.unique(values)
        if len(unique) < 2 or len(unique) >= 0.5 * len(values):
            continue
        step = float(np.median(np.diff(unique)))
        # Gaussian rather than uniform jitter: a cluster whose values all fall
        # in one rounding bin becomes a Gaussian, not a box that a mixture
        # would split; at sigma = step / 2 a run of bins blends smoothly.
        jittered = values + rng.normal(0.0, step / 2, size=len(values))
        if j < n_probes:
            jittered = np.log(np.maximum(jittered, unique[0] / 2))
        out[:, j] = jittered
    return out


def count_distinct(X: np.ndarray, limit: int) -> int:
    """Number of distinct rows, counted up to `limit` (cheap when rows differ)."""
    if len(X) == 0:
        return 0
    first = X[: min(len(X), 4 * limit)]
    if len(np.unique(first, axis=0)) >= limit:
        return limit
    hashed = pd.util.hash_pandas_object(pd.DataFrame(X), index=False)
    return min(limit, int(hashed.nunique()))


def means_by_label(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    counts = np.maximum(np.bincount(labels, minlength=k), 1)
    sums = np.column_stack([np.bincount(labels, weights=X[:, j], minlength=k) for j in range(X.shape[1])])
    return sums / counts[:, None]


def grown_centers(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centres for a fixed k, grown from 2 clusters like the automatic choice."""
    previous = None
    for j in range(2, k + 1):
        previous = kmeans_restarts(X, j, previous, seed).cluster_centers_
    return previous
