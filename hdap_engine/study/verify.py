"""Verifying a chosen candidate: measured again per cluster, and on every device with the twin.

What the search predicted is checked here against what the backend measures
on every cluster's representatives (with the twin, on every device of the
fleet too), and summed up as the fleet's mean, p95 and worst cluster. This is
the "measured" column of every report and chart. (Checking a telemetry file
against the contract is `hdap validate`, a different thing.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.latency.backends import TwinBackend, nanmean
from hdap_engine.search.objectives import Objective, mixture_quantile
from hdap_engine.study.prepare import StudyContext


@dataclass(frozen=True)
class Verification:
    """A candidate measured per cluster (representatives) and, with the twin, on every device."""

    widths: np.ndarray
    macs: float
    cluster_measured_ms: np.ndarray  # (k,) mean over the cluster's representatives
    cluster_spread_ms: np.ndarray  # (k,) mean interquartile range of their runs
    device_measured_ms: dict[str, float]  # representative -> median
    fleet_ms: np.ndarray | None = None  # (n_devices,) every device (twin only)
    notes: list[str] = field(default_factory=list)


def verify_candidate(ctx: StudyContext, widths, *, every_device: bool = True,
                     progress: Progress = no_progress) -> Verification:
    """Measure a candidate on every cluster's representatives, and with the twin on all devices.

    Parameters
    ----------
    ctx:
        The prepared study.
    widths:
        The candidate (G,).
    every_device:
        With the twin, also measure every device of the fleet.
    progress:
        Called with ("verify", step, 2).
    """
    widths = np.asarray(widths, dtype=np.int64)
    m = ctx.options.measurement
    progress("verify", 0, 2)
    meas = ctx.backend.measure(ctx.space, widths[None], list(ctx.rep_devices),
                               repeats=m.repeats, warmup=m.warmup, store=ctx.store)
    k = ctx.k
    cm = np.full(k, np.nan)
    cs = np.full(k, np.nan)
    for c in range(k):
        mask = ctx.rep_clusters == c
        cm[c] = float(nanmean(meas.median_ms[0, mask]))
        cs[c] = float(nanmean(meas.spread_ms[0, mask]))
    devices = {d: float(meas.median_ms[0, j]) for j, d in enumerate(ctx.rep_devices)}
    progress("verify", 1, 2)
    fleet_ms = None
    if every_device and isinstance(ctx.backend, TwinBackend):
        fleet_ms = ctx.backend.measure_fleet(ctx.space, widths, list(ctx.fleet.device_ids),
                                             repeats=m.repeats)
    progress("verify", 2, 2)
    return Verification(widths=widths, macs=float(ctx.space.macs(widths)),
                        cluster_measured_ms=cm, cluster_spread_ms=cs,
                        device_measured_ms=devices, fleet_ms=fleet_ms, notes=list(meas.notes))


def fleet_metrics(ctx: StudyContext, verification: Verification, objective: Objective) -> dict:
    """Fleet mean, p95 and worst cluster from a verification.

    With the twin every device was measured, so the mean and p95 are over
    devices. Otherwise the mean is the share-weighted mean of the clusters'
    measurements and the p95 comes from each cluster's dispersion.
    """
    val = verification
    shares = ctx.clustering.shares_
    if val.fleet_ms is not None:
        mean = float(np.mean(val.fleet_ms))
        p95 = float(np.quantile(val.fleet_ms, 0.95))
        basis = "every device of the fleet"
    else:
        ok = np.isfinite(val.cluster_measured_ms)
        basis = "cluster representatives, weighted by device share"
        if not ok.any():
            mean = p95 = float("nan")
            basis += " (no cluster was measured)"
        else:
            # A cluster with no measured device (agents that failed) is left out, not
            # counted as zero; the others are weighted by their shares among themselves.
            w = shares[ok] / shares[ok].sum()
            mean = float(np.sum(val.cluster_measured_ms[ok] * w))
            p95 = float(mixture_quantile(val.cluster_measured_ms[ok][None], w,
                                         ctx.dispersion[ok], 0.95)[0])
            if not ok.all():
                basis += (f"; clusters {', '.join(str(c) for c in np.flatnonzero(~ok))} "
                          f"({shares[~ok].sum():.0%} of devices) were not measured and "
                          "are left out")
    weighted = float(np.nansum(val.cluster_measured_ms * objective.cluster_weights))
    return {"measured_mean_ms": mean, "measured_p95_ms": p95,
            "worst_cluster_ms": float(np.nanmax(val.cluster_measured_ms)),
            "weighted_mean_ms": weighted, "objective_value": float(
                objective(val.cluster_measured_ms[None])[0]), "basis": basis}
