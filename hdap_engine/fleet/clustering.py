"""Cluster a fleet's devices by their hardware response.

Features are the probe latencies, log-scaled (drift is multiplicative: a
device 30 % slower at conv3x3 is 30 % slower whatever the nominal time) and
standardised, plus any numeric context columns the user asks for
(standardised). k-means groups them. Large fleets are clustered with
mini-batch k-means started from the centroids found on a sample.

Choosing k (unless the user fixes it), on a sample of at most
`auto_sample` devices:

1. k-means for k = k_min..k_max, each k the best of k-means++ starts and of
   the (k-1)-solution grown by one centre (small clusters next to a big one
   are missed by k-means++ alone);
2. each solution starts a full-covariance Gaussian mixture; the smallest k
   whose log-likelihood is within `bic_tolerance` of the best-BIC k wins.
   The silhouette is computed too (``scores_``) but is not the default
   criterion: with one far cluster and four near ones it scores k = 2 as
   high as k = 5 (measured on the synthetic fleets of `bench_data`);
3. mixture components that are one cluster (two Gaussians covering one
   elongated cluster, e.g. a drift of varying severity) are merged: by
   classification entropy, or because there is no density dip between
   them (`_merge_overlapping`).

Telemetry rounded to a coarse resolution (0.01 ms on a 0.05 ms probe) is
blurred over its rounding interval before step 2, or the mixture would fit
the rounding lattice.

Cluster ids are 0..k-1 ordered by size (0 = largest), so they are stable and
readable. Each cluster gets a weight (its share of devices by default), its
devices ranked by distance to the centroid (the first `representatives` are
measured; the next ones replace a representative that fails) and a profile
for people (size, share, median probes relative to the fleet median,
dominant context values).

Degenerate fleets (one device, all devices identical) give one cluster and a
note, never a crash.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# Imported here, not lazily: threadpool_limits only reaches thread pools of
# libraries already loaded, and sklearn loads OpenMP.
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from hdap_engine.errors import HdapError
from hdap_engine.fleet.telemetry import AGENT_URL_COLUMN, PROBE_PATTERN, Fleet

# Rows per chunk when computing distances, so that 1M devices never need a
# (n, k, features) temporary.
_CHUNK = 65_536
# Categorical context columns with more distinct values than this (serial
# numbers, URLs) say nothing about a cluster; the profile skips them.
_MAX_CATEGORIES = 50
# Context worth naming in a profile: a value at least 10 points more common
# than in the fleet, or a numeric median half a fleet standard deviation away.
_MIN_LIFT = 0.10
_MIN_SHIFT = 0.5
# Below this many (sampled) devices automatic k uses the silhouette; below
# _FULL_COVARIANCE_DEVICES the mixture has diagonal covariances.
_BIC_MIN_DEVICES = 30
_FULL_COVARIANCE_DEVICES = 200
# Variance floor of the mixture (scaled units): keeps a cluster of identical
# or quantised devices from an unbounded likelihood.
_REG_COVAR = 1e-4
# Mixture components sharing more classification entropy than this (nats
# per device of the pair), or with no dip between them, are one cluster;
# see _merge_overlapping.
_MERGE_ENTROPY = 0.07
_MERGE_DIP = 0.6
_DIP_MIN_DEVICES = 200
_DIP_MAX_SIZE_RATIO = 2.0
_DIP_MIN_ALIGNMENT = 0.8
# Rounded telemetry is de-quantised before the mixture is scored, unless
# the sample has fewer distinct devices than this.
_DEQUANTIZE_MIN_ROWS = 100
# Extra k-means starts grown from the (k-1)-cluster solution.
_GROW_TRIES = 2


@dataclass(frozen=True)
class ClusteringOptions:
    """How to cluster a fleet.

    Attributes
    ----------
    k:
        Number of clusters, or None to choose it automatically.
    k_min, k_max:
        Range of k tried when choosing automatically.
    representatives:
        Devices per cluster to measure (closest to the centroid first).
    context_features:
        Numeric context columns to use as features besides the probes.
    seed:
        Seed for sampling and k-means; same inputs give the same clusters.
    auto_sample:
        Devices sampled to choose k (the whole fleet when smaller).
    minibatch_above:
        Fleets larger than this use mini-batch k-means for the final fit.
    sample_fit_above:
        Fleets larger than this (ten million devices, say) refine the
        centres with k-means on a seeded sample of `fit_sample` devices and
        then assign every device to its nearest centre: one pass over the
        fleet instead of mini-batch k-means' many. Smaller fleets are
        clustered exactly as before this option existed.
    fit_sample:
        Devices sampled for that refinement.
    criterion:
        How automatic k is chosen: "bic" (default) or "silhouette".
        "bic" fits a full-covariance Gaussian mixture (in the scaled log
        space) started from each k-means solution and takes the smallest k
        whose mean log-likelihood per device is within `bic_tolerance` of
        the k with the best BIC, then merges overlapping components (see the
        module docstring). Under 200 sampled devices the mixture has
        diagonal covariances; under 30, "bic" falls back to the silhouette.
        The silhouette prefers the first, coarsest split of nested structure
        (one far cluster and four near ones score like two clusters).
    silhouette_sample:
        Devices (from the auto sample) on which each k's silhouette is scored.
    bic_tolerance:
        Nats per device a smaller k may lose against the best-BIC k.
    silhouette_tolerance:
        With the silhouette criterion, the smallest k whose score is within
        this of the best is chosen.
    """

    k: int | None = None
    k_min: int = 2
    k_max: int = 10
    representatives: int = 3
    context_features: tuple[str, ...] = ()
    seed: int = 0
    auto_sample: int = 20_000
    minibatch_above: int = 50_000
    sample_fit_above: int = 2_000_000
    fit_sample: int = 200_000
    criterion: str = "bic"
    silhouette_sample: int = 2_000
    bic_tolerance: float = 0.02
    silhouette_tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.k is not None and (not isinstance(self.k, int | np.integer) or self.k < 1):
            raise HdapError(f"k must be a whole number >= 1 or auto, got {self.k!r}")
        if not (isinstance(self.k_min, int | np.integer) and isinstance(self.k_max, int | np.integer)):
            raise HdapError("k_min and k_max must be whole numbers")
        if self.k_min < 2 or self.k_max < self.k_min:
            raise HdapError(
                f"automatic k needs 2 <= k_min <= k_max, got k_min={self.k_min}, k_max={self.k_max}"
            )
        if self.criterion not in ("bic", "silhouette"):
            raise HdapError(f"criterion must be 'bic' or 'silhouette', got {self.criterion!r}")
        if self.representatives < 1:
            raise HdapError(f"representatives must be >= 1, got {self.representatives}")
        if self.auto_sample < 100 or self.silhouette_sample < 100:
            raise HdapError("auto_sample and silhouette_sample must be >= 100")
        if self.fit_sample < 100:
            raise HdapError(f"fit_sample must be >= 100, got {self.fit_sample}")
        if isinstance(self.context_features, str):
            object.__setattr__(self, "context_features", (self.context_features,))


class Clustering:
    """k-means clustering of a fleet's devices, sklearn style (`fit`, `assign`).

    Parameters
    ----------
    options:
        `ClusteringOptions`; the defaults choose k automatically.

    Attributes (after `fit`)
    ------------------------
    k_ : int
        Number of clusters.
    labels_ : np.ndarray of shape (n_devices,)
        Cluster of every device (0 = largest cluster).
    centroids_ : np.ndarray of shape (k, n_features)
        Cluster means in the scaled feature space.
    centroid_probes_ms_ : np.ndarray of shape (k, n_probes)
        Centroids mapped back to probe latencies in ms (geometric means).
    weights_ : np.ndarray of shape (k,)
        Share of devices per cluster (sums to 1).
    representatives_ : dict[int, list[str]]
        The `representatives` device ids closest to each centroid, closest first.
    profiles_ : pd.DataFrame
        One row per cluster: cluster, devices, share, ``rel_<probe>`` (median
        probe latency relative to the fleet median), context (dominant
        context values as text), representatives.
    scores_ : dict[int, float]
        Silhouette per k tried (empty when k was fixed).
    bic_ : dict[int, float]
        BIC of the Gaussian mixture per k tried (criterion "bic" only).
    criterion_ : str
        "bic", "silhouette" or "fixed": how k was reached.
    merged_ : int
        Mixture components merged into others as overlapping.
    feature_names_ : tuple[str, ...]
        Probe columns then context features, as in `centroids_`.
    notes_ : tuple[str, ...]
        What the user should know (single cluster, imputed context values).
    """

    def __init__(self, options: ClusteringOptions | None = None):
        self.options = options if options is not None else ClusteringOptions()

    # ------------------------------------------------------------------ fit

    def fit(self, fleet: Fleet) -> Clustering:
        """Cluster the fleet's devices.

        Parameters
        ----------
        fleet:
            A validated `Fleet`.

        Returns
        -------
        self, with the fitted attributes set.
        """
        opts = self.options
        notes: list[str] = []
        self.probe_columns_ = tuple(fleet.probe_columns)
        self.context_features_ = self._check_context_features(fleet)
        self.feature_names_ = self.probe_columns_ + self.context_features_
        raw = self._raw_features(fleet, notes, fitting=True)
        center = raw.mean(axis=0)
        scale = raw.std(axis=0)
        # A constant feature carries no information; scale 1 keeps it at 0.
        scale[~(scale > 1e-12)] = 1.0
        self._center, self._scale = center, scale
        X = (raw - center) / scale
        n = len(X)

        rng = np.random.default_rng(opts.seed)
        sample = np.sort(rng.choice(n, opts.auto_sample, replace=False)) if n > opts.auto_sample else None
        Xs = X[sample] if sample is not None else X
        distinct_sample = _count_distinct(Xs, limit=opts.k_max + 1)

        self.scores_: dict[int, float] = {}
        self.bic_: dict[int, float] = {}
        self.merged_ = 0
        self.criterion_ = "fixed" if opts.k is not None else opts.criterion
        init = None
        if opts.k is not None:
            k = int(opts.k)
            if k > n:
                raise HdapError(
                    f"{fleet.source}: cannot make {k} clusters from {n:,} devices; "
                    "use a smaller k or auto"
                )
            distinct = distinct_sample if distinct_sample >= k else _count_distinct(X, limit=k)
            if distinct < k:
                raise HdapError(
                    f"{fleet.source}: cannot make {k} clusters: the fleet has only {distinct} "
                    f"distinct device profile(s); use k <= {distinct} or auto"
                )
            if k > 1 and len(Xs) > k:
                # Grow k-means from 2 to k clusters on the sample, as auto k does,
                # so that a fixed k finds small clusters as reliably.
                with threadpool_limits(1):
                    init = _grown_centers(Xs, k, opts.seed)
        else:
            # Scores are computed on a de-quantised copy of the sample: telemetry
            # rounded to 0.01 ms would otherwise give the mixture point masses.
            raw_s = raw[sample] if sample is not None else raw
            if _count_distinct(Xs, limit=_DEQUANTIZE_MIN_ROWS) >= _DEQUANTIZE_MIN_ROWS:
                Xd = (_dequantize(raw_s, len(self.probe_columns_), rng) - center) / scale
            else:
                # A few distinct devices repeated are point clusters, not rounding.
                Xd = Xs
            # Dozens of small fits: threads cost more than they give, and on a
            # busy machine OpenMP spinning makes them several times slower
            # (measured: 1.3 s single-threaded vs 3-8 s with 2 threads).
            with threadpool_limits(1):
                k, init = self._choose_k(Xd, distinct_sample, notes, opts)
            if k == 1 and n > 1 and distinct_sample > 1:
                notes.append("too few distinct devices to choose k: one cluster")

        del raw
        if k == 1:
            labels = np.zeros(n, dtype=np.int64)
            if n == 1:
                notes.append("one device: one cluster")
            elif distinct_sample == 1 and _count_distinct(X, limit=2) == 1:
                notes.append("all devices have identical features: one cluster")
        else:
            with threadpool_limits(1):
                labels = self._final_fit(X, k, init, opts)

        self._set_clusters(fleet, X, labels, notes)
        self.notes_ = tuple(notes)
        return self

    def _choose_k(
        self, Xs: np.ndarray, distinct: int, notes: list[str], opts: ClusteringOptions
    ) -> tuple[int, np.ndarray | None]:
        # Silhouette needs 2 <= k <= samples - 1, and k-means cannot find more
        # clusters than distinct points.
        k_hi = min(opts.k_max, distinct, len(Xs) - 1)
        if k_hi < opts.k_min:
            return 1, None
        criterion = opts.criterion
        if criterion == "bic" and len(Xs) < _BIC_MIN_DEVICES:
            criterion = "silhouette"
            notes.append(f"fewer than {_BIC_MIN_DEVICES} devices: k chosen by silhouette")
        # A full covariance per cluster needs tens of devices per cluster;
        # smaller fleets get a diagonal one (measured: both recover 5
        # unequal clusters from 40 devices up, full only from 200).
        covariance = "full" if len(Xs) >= _FULL_COVARIANCE_DEVICES else "diag"
        self.criterion_ = criterion
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
            km = _kmeans_restarts(Xs, k, previous, opts.seed)
            previous = km.cluster_centers_
            if len(np.unique(km.labels_)) < k:
                break  # fewer distinct points than k: larger k cannot do better
            centers[k] = km.cluster_centers_
            labels = km.labels_[sub]
            if len(np.unique(labels)) >= 2:
                self.scores_[k] = float(silhouette_score(Xs[sub], labels))
            if criterion == "bic":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    weights, means, precisions = _gaussians_from_labels(Xs, km.labels_, k, covariance)
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
                self.bic_[k] = float(gm.bic(Xs))
                loglik[k] = float(gm.score(Xs))
                mixtures[k] = gm
        if criterion == "bic" and self.bic_:
            best = min(self.bic_, key=self.bic_.get)
            # The smallest k that explains the devices almost as well: a
            # cluster that costs measurements must earn its keep.
            k = min(k for k in loglik if k <= best and loglik[best] - loglik[k] < opts.bic_tolerance)
            groups = _merge_overlapping(mixtures[k].predict_proba(Xs), Xs, opts.k_min)
            self.merged_ = k - len(groups)
            if self.merged_:
                # One elongated cluster (a drift of varying severity) takes
                # two Gaussians; k-means restarts from the merged groups.
                resp = mixtures[k].predict_proba(Xs)
                merged = np.column_stack([resp[:, g].sum(axis=1) for g in groups])
                labels = merged.argmax(axis=1)
                return len(groups), _means_by_label(Xs, labels, len(groups))
            return k, centers[k]
        if not self.scores_:
            return 1, None
        best_score = max(self.scores_.values())
        k = min(k for k, s in self.scores_.items() if s >= best_score - opts.silhouette_tolerance)
        return k, centers[k]

    def _final_fit(
        self, X: np.ndarray, k: int, init: np.ndarray | None, opts: ClusteringOptions
    ) -> np.ndarray:
        if len(X) > opts.sample_fit_above:
            # A sample of 200,000 devices places 5-10 centres as well as ten
            # million do; the fleet is then one nearest-centre pass.
            rng = np.random.default_rng([opts.seed, 2])
            rows = np.sort(rng.choice(len(X), min(opts.fit_sample, len(X)), replace=False))
            km = KMeans(
                n_clusters=k,
                init=init if init is not None else "k-means++",
                n_init=1 if init is not None else 4,
                random_state=opts.seed,
            ).fit(X[rows])
            return _nearest(X, km.cluster_centers_)
        if len(X) > opts.minibatch_above:
            km = MiniBatchKMeans(
                n_clusters=k,
                init=init if init is not None else "k-means++",
                n_init=1 if init is not None else 3,
                batch_size=4096,
                random_state=opts.seed,
                compute_labels=False,
                # The sample's centres are trusted: never re-seed a small cluster.
                reassignment_ratio=0.0 if init is not None else 0.01,
            ).fit(X)
            return _nearest(X, km.cluster_centers_)
        if init is not None:
            # Refine the sample's solution on the whole fleet.
            km = KMeans(n_clusters=k, init=init, n_init=1, random_state=opts.seed).fit(X)
        else:
            km = KMeans(n_clusters=k, n_init=4, random_state=opts.seed).fit(X)
        return km.labels_.astype(np.int64)

    def _set_clusters(self, fleet: Fleet, X: np.ndarray, labels: np.ndarray, notes: list[str]) -> None:
        k_found = int(labels.max()) + 1
        # Centroids are the cluster means, and labels are re-drawn as the
        # nearest centroid, so that assign() on the fitted fleet gives labels_.
        means = _means_by_label(X, labels, k_found)
        if k_found > 1:
            labels = _nearest(X, means)
        counts = np.bincount(labels, minlength=k_found)
        used = np.flatnonzero(counts > 0)
        means = means[used]
        # 0 = largest; ties broken by the centroid's coordinates, so ids do
        # not depend on k-means' internal numbering.
        order = sorted(range(len(used)), key=lambda i: (-counts[used[i]], tuple(np.round(means[i], 9))))
        remap = np.full(k_found, -1, dtype=np.int64)
        remap[used[order]] = np.arange(len(used))
        self.labels_ = remap[labels]
        self.k_ = len(used)
        self.centroids_ = means[order]
        sizes = counts[used[order]]
        self.weights_ = sizes / sizes.sum()
        n_probes = len(self.probe_columns_)
        self.centroid_probes_ms_ = np.exp(
            self.centroids_[:, :n_probes] * self._scale[:n_probes] + self._center[:n_probes]
        )

        dist = _own_distance(X, self.centroids_, self.labels_)
        # The id column itself (no copy): a million ids as a numpy str array
        # cost more than the rest of this step.
        self._ids = fleet.frame["device_id"]
        self._ranked: dict[int, np.ndarray] = {}
        by_label = np.argsort(self.labels_, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        self._members = [by_label[bounds[c] : bounds[c + 1]] for c in range(self.k_)]
        for c, members in enumerate(self._members):
            # Ties (identical devices) fall back to file order: deterministic.
            self._ranked[c] = members[np.lexsort((members, dist[members]))]
        r = self.options.representatives
        self.representatives_ = {c: self._id_list(self._ranked[c][:r]) for c in range(self.k_)}
        self.profiles_ = self._profiles(fleet)

    def _id_list(self, positions: np.ndarray) -> list[str]:
        return [str(i) for i in self._ids.iloc[positions]]

    # ------------------------------------------------------------------ results

    def ranked_devices(self, cluster: int) -> list[str]:
        """All device ids of a cluster, closest to its centroid first.

        Parameters
        ----------
        cluster:
            Cluster id (0..k-1).

        Returns
        -------
        Device ids; the first `representatives` are `representatives_[cluster]`,
        the next ones replace a representative that cannot be measured.
        """
        self._check_fitted()
        if not (isinstance(cluster, int | np.integer) and 0 <= cluster < self.k_):
            raise HdapError(f"no cluster {cluster!r}: clusters are 0..{self.k_ - 1}")
        return self._id_list(self._ranked[int(cluster)])

    def assignments(self) -> pd.DataFrame:
        """The fitted fleet's ``device_id, cluster`` table, in fleet order."""
        self._check_fitted()
        return pd.DataFrame({"device_id": self._ids.to_numpy(), "cluster": self.labels_})

    def describe(self) -> str:
        """How k was reached, in one line for people."""
        self._check_fitted()
        o = self.options
        if self.criterion_ == "fixed":
            how = "fixed by the user"
        elif not self.scores_ and not self.bic_:
            how = "one cluster"
        else:
            tried = sorted(self.bic_ or self.scores_)
            what = "BIC of a Gaussian mixture" if self.criterion_ == "bic" else "silhouette"
            how = f"chosen by {what} over k = {tried[0]}..{tried[-1]}"
            if self.merged_:
                how += f", {self.merged_} overlapping component(s) merged"
            if len(self._ids) > o.auto_sample:
                how += f" on {o.auto_sample:,} sampled devices"
        if len(self._ids) > o.sample_fit_above and self.k_ > 1:
            how += f"; centres refined on {o.fit_sample:,} sampled devices, every device assigned to the nearest"
        return f"k = {self.k_} ({how})"

    def transform(self, fleet: Fleet) -> np.ndarray:
        """Scaled features of a fleet's devices (the space of `centroids_`).

        Parameters
        ----------
        fleet:
            A `Fleet` with the same probe columns (and context features).

        Returns
        -------
        float64 array of shape (n_devices, n_features).
        """
        self._check_fitted()
        self._check_compatible(fleet)
        raw = self._raw_features(fleet, [], fitting=False)
        return (raw - self._center) / self._scale

    def assign(self, fleet: Fleet) -> np.ndarray:
        """Assign (new) devices to the nearest existing cluster.

        Parameters
        ----------
        fleet:
            A `Fleet` with the same probe columns (and context features).

        Returns
        -------
        int64 array of cluster ids, shape (n_devices,).
        """
        return _nearest(self.transform(fleet), self.centroids_)

    def normalise_weights(self, user: dict[int, float] | None = None) -> np.ndarray:
        """Cluster weights summing to 1: the device shares, or the user's weights normalised.

        Clusters missing from `user` get weight 0 (the user chose which clusters
        matter); give every cluster to keep them all.

        Parameters
        ----------
        user:
            Cluster id -> non-negative weight, or None for the device shares.

        Returns
        -------
        float64 array of shape (k,).
        """
        self._check_fitted()
        if user is None:
            return self.weights_.copy()
        w = np.zeros(self.k_)
        for cluster, value in dict(user).items():
            try:
                c = int(cluster)
            except (TypeError, ValueError):
                raise HdapError(f"cluster weights: {cluster!r} is not a cluster id (0..{self.k_ - 1})") from None
            if not 0 <= c < self.k_ or c != cluster:
                raise HdapError(f"cluster weights: no cluster {cluster!r}; clusters are 0..{self.k_ - 1}")
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise HdapError(f"cluster weights: weight of cluster {c} is not a number ({value!r})") from None
            if not np.isfinite(v) or v < 0:
                raise HdapError(f"cluster weights: weight of cluster {c} is {value!r}; weights must be finite and >= 0")
            w[c] = v
        total = w.sum()
        if total <= 0:
            raise HdapError("cluster weights are all zero; give at least one cluster a positive weight")
        return w / total

    # ------------------------------------------------------------------ helpers

    def _check_fitted(self) -> None:
        if not hasattr(self, "labels_"):
            raise RuntimeError("Clustering is not fitted; call fit(fleet) first")

    def _check_compatible(self, fleet: Fleet) -> None:
        missing = [c for c in self.feature_names_ if c not in fleet.frame.columns]
        if missing:
            raise HdapError(
                f"{fleet.source}: lacks column(s) {', '.join(missing)} that the clusters were made "
                "from; give devices with the same probe columns"
            )

    def _check_context_features(self, fleet: Fleet) -> tuple[str, ...]:
        wanted = tuple(dict.fromkeys(self.options.context_features))
        numeric = fleet.numeric_context_columns
        for c in wanted:
            if c == AGENT_URL_COLUMN:
                raise HdapError(f"{AGENT_URL_COLUMN} is the device agent's address, never a clustering feature")
            if PROBE_PATTERN.match(c) and c in fleet.probe_columns:
                raise HdapError(f"{c} is a probe column and already a feature; list only context columns")
            if c not in numeric:
                available = ", ".join(numeric) if numeric else "none"
                what = "is not numeric" if c in fleet.context_columns else "is not a context column"
                raise HdapError(
                    f"{fleet.source}: context feature {c!r} {what}; numeric context columns: {available}"
                )
        return wanted

    def _raw_features(self, fleet: Fleet, notes: list[str], *, fitting: bool) -> np.ndarray:
        parts = [np.log(fleet.probes())]
        for j, c in enumerate(self.context_features_):
            values = fleet.frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~np.isfinite(values)
            if bad.any():
                if fitting:
                    if bad.all():
                        raise HdapError(f"{fleet.source}: context feature {c} has no values; drop it")
                    fill = float(np.median(values[~bad]))
                    self._fills = {**getattr(self, "_fills", {}), c: fill}
                    notes.append(f"{c}: {int(bad.sum()):,} missing value(s) set to the median {fill:g}")
                else:
                    fill = getattr(self, "_fills", {}).get(c, self._center[len(self.probe_columns_) + j])
                values = np.where(bad, fill, values)
            parts.append(values[:, None])
        return np.hstack(parts) if len(parts) > 1 else parts[0]

    def _profiles(self, fleet: Fleet) -> pd.DataFrame:
        probes = fleet.probes()
        fleet_median = np.median(probes, axis=0)
        medians = np.array([np.median(probes[m], axis=0) for m in self._members])
        rel = pd.DataFrame(
            medians / fleet_median,
            columns=[f"rel_{PROBE_PATTERN.match(c).group(1)}" for c in self.probe_columns_],
        )
        table = pd.DataFrame(
            {
                "cluster": np.arange(self.k_),
                "devices": np.bincount(self.labels_, minlength=self.k_),
                "share": self.weights_,
            }
        )
        table = pd.concat([table, rel.round(3)], axis=1)
        table["context"] = self._context_text(fleet)
        table["representatives"] = [", ".join(self.representatives_[c]) for c in range(self.k_)]
        return table

    def _context_text(self, fleet: Fleet) -> list[str]:
        """Per cluster, the context that sets it apart, most distinctive first."""
        parts: list[list[tuple[float, str]]] = [[] for _ in range(self.k_)]
        labels = self.labels_
        for c in fleet.categorical_context_columns:
            if c == AGENT_URL_COLUMN:
                continue
            codes, values = pd.factorize(fleet.frame[c], use_na_sentinel=False)
            if len(values) > _MAX_CATEGORIES:
                continue
            names = ["(missing)" if pd.isna(v) else str(v) for v in values]
            counts = np.bincount(labels * len(values) + codes, minlength=self.k_ * len(values))
            counts = counts.reshape(self.k_, len(values)).astype(float)
            fleet_share = counts.sum(axis=0) / counts.sum()
            shares = counts / counts.sum(axis=1, keepdims=True)
            for cl in range(self.k_):
                # The value most over-represented in the cluster, if notably so.
                top = int(np.argmax(shares[cl] - fleet_share))
                lift = shares[cl, top] - fleet_share[top]
                if lift >= _MIN_LIFT:
                    parts[cl].append(
                        (lift, f"{shares[cl, top]:.0%} {c}={names[top]} (fleet {fleet_share[top]:.0%})")
                    )
        for c in fleet.numeric_context_columns:
            values = fleet.frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
            fleet_med = np.nanmedian(values) if np.isfinite(values).any() else np.nan
            spread = np.nanstd(values) if np.isfinite(values).any() else np.nan
            if not np.isfinite(fleet_med) or not spread > 0:
                continue
            for cl, members in enumerate(self._members):
                own = values[members]
                m = np.nanmedian(own) if np.isfinite(own).any() else np.nan
                shift = abs(m - fleet_med) / spread
                if np.isfinite(m) and shift >= _MIN_SHIFT:
                    parts[cl].append((shift / 2, f"{c} median {m:.3g} (fleet {fleet_med:.3g})"))
        has_context = any(c != AGENT_URL_COLUMN for c in fleet.context_columns)
        return [
            "; ".join(text for _, text in sorted(p, key=lambda t: -t[0])[:3])
            or ("like the fleet" if has_context else "")
            for p in parts
        ]


def _kmeans_restarts(X: np.ndarray, k: int, previous: np.ndarray | None, seed: int):
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


def _merge_overlapping(resp: np.ndarray, X: np.ndarray, k_min: int) -> list[list[int]]:
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
                strength = max(strength, _dip_ratio(X, labels, a, b) / _MERGE_DIP)
                if strength > best:
                    best, pair = strength, (a, b)
        if pair is None:
            break
        a, b = pair
        groups[a] = groups[a] + groups[b]
        columns[a] = columns[a] + columns[b]
        del groups[b], columns[b]
    return groups


def _dip_ratio(X: np.ndarray, labels: np.ndarray, a: int, b: int) -> float:
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


def _gaussians_from_labels(
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


def _dequantize(raw: np.ndarray, n_probes: int, rng: np.random.Generator) -> np.ndarray:
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


def write_assignments(clustering: Clustering, path: str | Path) -> Path:
    """Write ``device_id,cluster`` for every device of the fitted fleet as CSV.

    Parameters
    ----------
    clustering:
        A fitted `Clustering`.
    path:
        The CSV file to write (its folder must exist).

    Returns
    -------
    The path written.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    table = pa.table(
        {"device_id": pa.Array.from_pandas(clustering._ids), "cluster": clustering.labels_}
    )
    try:
        with open(path, "wb") as sink:
            # pyarrow quotes the header; write a plain one. Ids that need
            # quotes (a comma inside) get them.
            sink.write(b"device_id,cluster\n")
            body = io.BytesIO()
            try:
                pacsv.write_csv(table, body, pacsv.WriteOptions(include_header=False, quoting_style="none"))
            except pa.ArrowInvalid:
                body = io.BytesIO()
                pacsv.write_csv(table, body, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
            sink.write(body.getbuffer())
    except (OSError, pa.ArrowException) as exc:
        reason = getattr(exc, "strerror", None) or _first_line(exc)
        raise HdapError(f"{path}: cannot write the assignments ({reason}); check the folder exists and is writable") from None
    return path


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__


def _count_distinct(X: np.ndarray, limit: int) -> int:
    """Number of distinct rows, counted up to `limit` (cheap when rows differ)."""
    if len(X) == 0:
        return 0
    first = X[: min(len(X), 4 * limit)]
    if len(np.unique(first, axis=0)) >= limit:
        return limit
    hashed = pd.util.hash_pandas_object(pd.DataFrame(X), index=False)
    return min(limit, int(hashed.nunique()))


def _means_by_label(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    counts = np.maximum(np.bincount(labels, minlength=k), 1)
    sums = np.column_stack([np.bincount(labels, weights=X[:, j], minlength=k) for j in range(X.shape[1])])
    return sums / counts[:, None]


def _grown_centers(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centres for a fixed k, grown from 2 clusters like the automatic choice."""
    previous = None
    for j in range(2, k + 1):
        previous = _kmeans_restarts(X, j, previous, seed).cluster_centers_
    return previous


def _nearest(X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    out = np.empty(len(X), dtype=np.int64)
    c2 = (centroids**2).sum(axis=1)
    for start in range(0, len(X), _CHUNK):
        chunk = X[start : start + _CHUNK]
        d = c2[None, :] - 2.0 * chunk @ centroids.T
        out[start : start + _CHUNK] = d.argmin(axis=1)
    return out


def _own_distance(X: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.empty(len(X))
    for start in range(0, len(X), _CHUNK):
        diff = X[start : start + _CHUNK] - centroids[labels[start : start + _CHUNK]]
        out[start : start + _CHUNK] = np.sqrt((diff**2).sum(axis=1))
    return out


__all__ = ["Clustering", "ClusteringOptions", "write_assignments"]
