"""Cluster a fleet's devices by their hardware response.

Features are the probe latencies, log-scaled (drift is multiplicative: a
device 30 % slower at conv3x3 is 30 % slower whatever the nominal time) and
standardised, plus any numeric context columns the user asks for
(standardised). k-means groups them. Large fleets are clustered with
mini-batch k-means started from the centroids found on a sample.

Unless the user fixes k, it is chosen on a sample of at most `auto_sample`
devices by `hdap_engine.fleet.choose_k` (k-means restarts, the BIC of a
Gaussian mixture, merging overlapping components).

Cluster ids are 0..k-1 ordered by size (0 = largest), so they are stable and
readable. Each cluster gets a weight (its share of devices by default), its
devices ranked by distance to the centroid (the first `representatives` are
measured; the next ones replace a representative that fails) and a profile
for people (`hdap_engine.fleet.profiles`: size, share, median probes relative
to the fleet median, dominant context values). `hdap_engine.fleet.assignments`
writes the ``device_id,cluster`` CSV.

Degenerate fleets (one device, all devices identical) give one cluster and a
note, never a crash.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Imported here, not lazily: threadpool_limits only reaches thread pools of
# libraries already loaded, and sklearn loads OpenMP.
from sklearn.cluster import KMeans, MiniBatchKMeans
from threadpoolctl import threadpool_limits

from hdap_engine.errors import HdapError
from hdap_engine.fleet.choose_k import (
    DEQUANTIZE_MIN_ROWS,
    choose_k,
    count_distinct,
    dequantize,
    grown_centers,
    means_by_label,
)
from hdap_engine.fleet.contract import AGENT_URL_COLUMN, PROBE_PATTERN
from hdap_engine.fleet.profiles import cluster_profiles
from hdap_engine.fleet.telemetry import Fleet
from hdap_engine.infra.locks import CLUSTER_LOCK, serialised
from hdap_engine.options import ClusteringPlan

# Rows per chunk when computing distances, so that 1M devices never need a
# (n, k, features) temporary.
_CHUNK = 65_536


class Clustering:
    """k-means clustering of a fleet's devices, sklearn style (`fit`, `assign`).

    Parameters
    ----------
    options:
        `ClusteringPlan`; the defaults choose k automatically.

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
    shares_ : np.ndarray of shape (k,)
        Share of devices per cluster (sums to 1); the default cluster weights.
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

    def __init__(self, options: ClusteringPlan | None = None):
        self.options = options if options is not None else ClusteringPlan()

    # ------------------------------------------------------------------ fit

    @serialised(CLUSTER_LOCK)  # app sessions call it from their threads at once
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
        # Column by column: the fleet-sized temporaries of a whole-array
        # mean and std are one column, not all of them.
        center = np.array([raw[:, j].mean() for j in range(raw.shape[1])])
        scale = np.array([raw[:, j].std() for j in range(raw.shape[1])])
        # A constant feature carries no information; scale 1 keeps it at 0.
        scale[~(scale > 1e-12)] = 1.0
        self._center, self._scale = center, scale
        n = len(raw)

        rng = np.random.default_rng(opts.seed)
        sample = np.sort(rng.choice(n, opts.auto_sample, replace=False)) if n > opts.auto_sample else None
        # Auto k scores a de-quantised copy of the sample's raw features.
        raw_s = None
        if opts.k is None:
            raw_s = raw[sample] if sample is not None else raw.copy()
        # Scaled in place: the fleet's features are in memory once.
        X = raw
        X -= center
        X /= scale
        del raw
        Xs = X[sample] if sample is not None else X
        distinct_sample = count_distinct(Xs, limit=opts.k_max + 1)

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
            distinct = distinct_sample if distinct_sample >= k else count_distinct(X, limit=k)
            if distinct < k:
                raise HdapError(
                    f"{fleet.source}: cannot make {k} clusters: the fleet has only {distinct} "
                    f"distinct device profile(s); use k <= {distinct} or auto"
                )
            if k > 1 and len(Xs) > k:
                # Grow k-means from 2 to k clusters on the sample, as auto k does,
                # so that a fixed k finds small clusters as reliably.
                with threadpool_limits(1):
                    init = grown_centers(Xs, k, opts.seed)
        else:
            # Scores are computed on a de-quantised copy of the sample: telemetry
            # rounded to 0.01 ms would otherwise give the mixture point masses.
            if count_distinct(Xs, limit=DEQUANTIZE_MIN_ROWS) >= DEQUANTIZE_MIN_ROWS:
                Xd = (dequantize(raw_s, len(self.probe_columns_), rng) - center) / scale
            else:
                # A few distinct devices repeated are point clusters, not rounding.
                Xd = Xs
            # Dozens of small fits: threads cost more than they give, and on a
            # busy machine OpenMP spinning makes them several times slower
            # (measured: 1.3 s single-threaded vs 3-8 s with 2 threads).
            with threadpool_limits(1):
                choice = choose_k(Xd, distinct_sample, notes, opts)
            k, init = choice.k, choice.init
            self.scores_, self.bic_, self.merged_ = choice.scores, choice.bic, choice.merged
            self.criterion_ = choice.criterion
            if k == 1 and n > 1 and distinct_sample > 1:
                notes.append("too few distinct devices to choose k: one cluster")

        del raw_s
        if k == 1:
            labels = np.zeros(n, dtype=np.int64)
            if n == 1:
                notes.append("one device: one cluster")
            elif distinct_sample == 1 and count_distinct(X, limit=2) == 1:
                notes.append("all devices have identical features: one cluster")
        else:
            with threadpool_limits(1):
                labels = self._final_fit(X, k, init, opts)

        self._set_clusters(fleet, X, labels, notes)
        self.notes_ = tuple(notes)
        return self

    def _final_fit(
        self, X: np.ndarray, k: int, init: np.ndarray | None, opts: ClusteringPlan
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
        means = means_by_label(X, labels, k_found)
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
        self.shares_ = sizes / sizes.sum()
        n_probes = len(self.probe_columns_)
        self.centroid_probes_ms_ = np.exp(
            self.centroids_[:, :n_probes] * self._scale[:n_probes] + self._center[:n_probes]
        )

        dist = _own_distance(X, self.centroids_, self.labels_)
        # The id column itself (no copy): a million ids as a numpy str array
        # cost more than the rest of this step.
        self.device_ids_ = fleet.frame["device_id"]
        self._ranked: dict[int, np.ndarray] = {}
        by_label = np.argsort(self.labels_, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        self._members = [by_label[bounds[c] : bounds[c + 1]] for c in range(self.k_)]
        for c, members in enumerate(self._members):
            # Ties (identical devices) fall back to file order: deterministic.
            self._ranked[c] = members[np.lexsort((members, dist[members]))]
        r = self.options.representatives
        self.representatives_ = {c: self._id_list(self._ranked[c][:r]) for c in range(self.k_)}
        self.profiles_ = cluster_profiles(
            fleet, labels=self.labels_, members=self._members, shares=self.shares_,
            representatives=self.representatives_, probe_columns=self.probe_columns_,
        )

    def _id_list(self, positions: np.ndarray) -> list[str]:
        return [str(i) for i in self.device_ids_.iloc[positions]]

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
        return pd.DataFrame({"device_id": self.device_ids_.to_numpy(), "cluster": self.labels_})

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
            if len(self.device_ids_) > o.auto_sample:
                how += f" on {o.auto_sample:,} sampled devices"
        if len(self.device_ids_) > o.sample_fit_above and self.k_ > 1:
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


__all__ = ["Clustering"]
