"""Fleet objectives: one number per candidate from its latency on every cluster.

All objectives are minimised and take per-cluster latencies (P, k) in ms:

- ``mean``  weighted mean over clusters (cluster weights = the shares or the user's);
- ``p95``   the 95th percentile over *devices*: each cluster's devices are
            modelled as log-normal around the cluster's latency with the
            cluster's own dispersion, and the fleet is their weighted mixture;
- ``worst`` the slowest cluster;
- ``slo``   minus the share of devices whose latency is under a target (so
            that minimising it maximises the share meeting the SLO).

The dispersion of a cluster is how much its devices' hardware response
varies around the cluster: the standard deviation, within the cluster, of each
device's mean log probe time relative to the cluster median.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from hdap_engine.errors import HdapError

# Every objective with its one-line description (the app's objective pickers read these).
OBJECTIVE_DESCRIPTIONS = {
    "mean": "weighted mean latency over clusters",
    "p95": "95th-percentile latency over devices",
    "worst": "latency of the slowest cluster",
    "slo": "share of devices slower than a latency target (SLO)",
}
OBJECTIVES = tuple(OBJECTIVE_DESCRIPTIONS)


@dataclass(frozen=True)
class Objective:
    """A fleet objective with what it needs: cluster weights, dispersions, SLO target."""

    kind: str
    cluster_weights: np.ndarray  # (k,) normalised
    dispersion: np.ndarray  # (k,) log-space std of device latency within each cluster
    slo_ms: float | None = None

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise HdapError(f"unknown objective {self.kind!r}; choose one of: "
                            f"{', '.join(OBJECTIVES)}")
        if self.kind == "slo" and (self.slo_ms is None or not self.slo_ms > 0):
            raise HdapError("the slo objective needs a latency target in ms (--slo-ms 25)")
        w = np.asarray(self.cluster_weights, dtype=np.float64)
        if w.ndim != 1 or (w < 0).any() or not w.sum() > 0:
            raise HdapError("cluster weights must be non-negative and not all zero")

    @property
    def label(self) -> str:
        return {"mean": "weighted mean latency", "p95": "p95 latency over devices",
                "worst": "worst-cluster latency",
                "slo": f"share of devices over {self.slo_ms} ms"}[self.kind]

    def __call__(self, cluster_ms: np.ndarray) -> np.ndarray:
        """Scores (P,) to minimise from per-cluster latencies (P, k)."""
        lat = np.atleast_2d(cluster_ms)
        w = np.asarray(self.cluster_weights) / np.sum(self.cluster_weights)
        if self.kind == "mean":
            return lat @ w
        if self.kind == "worst":
            # Only clusters that carry weight count: a weight of 0 means "ignore it".
            return np.where(w > 0, lat, -np.inf).max(axis=1)
        if self.kind == "p95":
            return mixture_quantile(lat, w, self.dispersion, 0.95)
        return -share_under(lat, w, self.dispersion, float(self.slo_ms))


def share_under(lat: np.ndarray, w: np.ndarray, sigma: np.ndarray, target: float) -> np.ndarray:
    """Share of devices (P,) whose latency is at most ``target``."""
    s = np.maximum(np.asarray(sigma, dtype=np.float64), 1e-6)
    z = (np.log(target) - np.log(lat)) / s
    return ndtr(z) @ w


def mixture_quantile(lat: np.ndarray, w: np.ndarray, sigma: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile (P,) of the weighted log-normal mixture of cluster latencies."""
    s = np.maximum(np.asarray(sigma, dtype=np.float64), 1e-6)
    log_lat = np.log(lat)
    lo = (log_lat - 4 * s).min(axis=1)
    hi = (log_lat + 4 * s).max(axis=1)
    for _ in range(40):  # bisection in log space, vectorised over candidates
        mid = 0.5 * (lo + hi)
        cdf = ndtr((mid[:, None] - log_lat) / s) @ w
        lo = np.where(cdf < q, mid, lo)
        hi = np.where(cdf < q, hi, mid)
    return np.exp(0.5 * (lo + hi))


def cluster_dispersion(probes_ms: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(k,) spread of devices around their cluster, in log latency.

    Parameters
    ----------
    probes_ms:
        (n, p) probe latencies of every device.
    labels:
        (n,) cluster of every device.
    k:
        Number of clusters.
    """
    logp = np.log(np.asarray(probes_ms, dtype=np.float64))
    out = np.zeros(k)
    for c in range(k):
        m = labels == c
        if m.sum() < 2:
            continue
        rel = logp[m] - np.median(logp[m], axis=0)
        out[c] = float(np.std(rel.mean(axis=1)))
    return out


def predicted_fleet_mean(cluster_ms, shares) -> float:
    """The fleet mean of per-cluster latencies (k,): each cluster weighted by its share of
    devices (what "predicted fleet mean" means in reports, sweeps and the what-if page)."""
    return float(np.sum(np.asarray(cluster_ms, dtype=np.float64)
                        * np.asarray(shares, dtype=np.float64)))


def cluster_weights(shares: np.ndarray, user: dict[int, float] | None = None) -> np.ndarray:
    """Cluster weights summing to 1: the device shares, or the user's weights normalised.

    Clusters missing from ``user`` get weight 0 (the user chose which clusters
    matter); give every cluster to keep them all.

    Parameters
    ----------
    shares:
        (k,) device share of every cluster (the default cluster weights).
    user:
        Cluster id -> non-negative weight, or None for the device shares.

    Returns
    -------
    float64 array of shape (k,).
    """
    shares = np.asarray(shares, dtype=np.float64)
    k = len(shares)
    if user is None:
        return shares.copy()
    w = np.zeros(k)
    for cluster, value in dict(user).items():
        try:
            c = int(cluster)
        except (TypeError, ValueError):
            raise HdapError(f"cluster weights: {cluster!r} is not a cluster id "
                            f"(0..{k - 1})") from None
        if not 0 <= c < k or c != cluster:
            raise HdapError(f"cluster weights: no cluster {cluster!r}; clusters are 0..{k - 1}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise HdapError(f"cluster weights: weight of cluster {c} is not a number "
                            f"({value!r})") from None
        if not np.isfinite(v) or v < 0:
            raise HdapError(f"cluster weights: weight of cluster {c} is {value!r}; weights "
                            "must be finite and >= 0")
        w[c] = v
    total = w.sum()
    if total <= 0:
        raise HdapError("cluster weights are all zero; give at least one cluster a positive "
                        "weight")
    return w / total
