"""Fleet drift between two telemetry snapshots: who moved, which clusters changed, what is new.

*Fleet drift* is the fleet's devices moving between clusters from one snapshot to the
next; each device's own change is device drift (`hdap_engine.twin.mechanisms`).

After a model ships, its fleet keeps drifting (a heat wave, a firmware that
changes the power governor, batteries ageing). `compare` answers "has the
fleet drifted since we shipped?" from two snapshots, OLD (what the model
was optimised for) and NEW:

- devices are matched by ``device_id``: new (only in NEW), gone (only in
  OLD), and moved (matched devices whose cluster changed);
- NEW's devices are assigned to OLD's clusters with OLD's fitted clustering
  (`Clustering.assign`), so "moved" means "now looks like another of the
  clusters we optimised for"; moves are counted per (from, to) pair;
- per OLD cluster: its share of devices then and now, and each probe's
  median now relative to then, over the devices assigned to it (a cluster
  whose devices all slowed down by 20 % stays the same cluster but has
  shifted);
- NEW is also clustered afresh; a fresh cluster whose centre is far from
  every OLD centre (in OLD's scaled feature space, relative to the nearest
  OLD cluster's own spread) is a cluster that appears only in NEW: devices
  the deployed model was never optimised for.

Everything is plain data (`DriftReport.to_dict` is the JSON of ``hdap
drift``); the Sankey of the moves is `charts.drift_sankey`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.fleet.clustering import Clustering
from hdap_engine.fleet.contract import ID_COLUMN, PROBE_PATTERN
from hdap_engine.fleet.telemetry import Fleet
from hdap_engine.options import DriftOptions


@dataclass
class DriftReport:
    """What changed between OLD and NEW (see the module docstring).

    Attributes
    ----------
    old_source, new_source:
        The two snapshots' names.
    devices_old, devices_new_total:
        Devices in each snapshot.
    devices_matched:
        Devices in both.
    new_ids, gone_ids:
        Devices only in NEW, only in OLD.
    moved:
        One row per matched device whose cluster changed: device_id, from, to.
    moves:
        [{"from", "to", "devices"}], largest first.
    flows:
        Every (from, to) pair of matched devices, stays included (for the Sankey).
    clusters:
        One entry per OLD cluster: cluster, old_devices, new_devices,
        old_share, new_share, probes ({probe: relative change of the median}),
        shifted_probes, shifted.
    new_clusters:
        Fresh NEW clusters far from every OLD cluster: fresh_cluster, devices,
        share, nearest_old, distance (in radii), profile ({probe: median ms}).
    old_clustering, new_clustering, new_assigned:
        OLD's fitted clustering, NEW's own, and NEW's devices in OLD's clusters.
    notes:
        What the reader should know.
    """

    old_source: str
    new_source: str
    devices_old: int
    devices_new_total: int
    devices_matched: int
    new_ids: list[str]
    gone_ids: list[str]
    moved: pd.DataFrame
    moves: list[dict]
    flows: list[dict]
    clusters: list[dict]
    new_clusters: list[dict]
    old_clustering: Clustering
    new_clustering: Clustering
    new_assigned: np.ndarray
    notes: list[str] = field(default_factory=list)
    bundle: dict | None = None

    @property
    def devices_moved(self) -> int:
        """Matched devices now in another OLD cluster."""
        return len(self.moved)

    def to_dict(self) -> dict:
        """The JSON of ``hdap drift`` (plain data; device lists are ids)."""
        out = {
            "old": self.old_source,
            "new": self.new_source,
            "devices_old": self.devices_old,
            "devices_in_new": self.devices_new_total,
            "devices_matched": self.devices_matched,
            "devices_new": len(self.new_ids),
            "devices_gone": len(self.gone_ids),
            "devices_moved": self.devices_moved,
            "share_moved": self.devices_moved / self.devices_matched if self.devices_matched else 0.0,
            "moves": self.moves,
            "clusters": self.clusters,
            "clusters_shifted": [c["cluster"] for c in self.clusters if c["shifted"]],
            "clusters_only_in_new": self.new_clusters,
            "k_old": int(self.old_clustering.k_),
            "k_new": int(self.new_clustering.k_),
            "new_device_ids": self.new_ids[:1000],
            "gone_device_ids": self.gone_ids[:1000],
            "notes": list(self.notes),
            "deployed_objective_ms": None,
            "reoptimised_objective_ms": None,
            "recommend_reoptimise": None,
        }
        if self.bundle is not None:
            out.update(self.bundle)
        return out


def compare(old: Fleet, new: Fleet, options: DriftOptions | None = None) -> DriftReport:
    """Compare two snapshots of a fleet.

    Parameters
    ----------
    old:
        The snapshot the deployed model was optimised for.
    new:
        The latest snapshot; it needs OLD's probe columns.
    options:
        `DriftOptions`; defaults when None.

    Returns
    -------
    The `DriftReport`.
    """
    options = options or DriftOptions()
    missing = [c for c in old.probe_columns if c not in new.probe_columns]
    if missing:
        raise HdapError(
            f"{new.source}: lacks probe column(s) {', '.join(missing)} that {old.source} has; "
            "both snapshots need the same probe suite"
        )
    if old.sku is not None and new.sku is not None and old.sku != new.sku:
        raise HdapError(
            f"{old.source} is SKU {old.sku} but {new.source} is SKU {new.sku}; compare snapshots of one SKU"
        )
    notes: list[str] = []
    old_c = Clustering(options.clustering).fit(old)
    new_c = Clustering(options.clustering).fit(new)
    assigned = old_c.assign(new)

    old_ids = pd.Index(old.frame[ID_COLUMN].astype(str))
    new_ids = pd.Index(new.frame[ID_COLUMN].astype(str))
    in_old = new_ids.isin(old_ids)
    gone = ~old_ids.isin(new_ids)
    pos_old = old_ids.get_indexer(new_ids[in_old])
    before = old_c.labels_[pos_old]
    after = assigned[in_old]
    moved_mask = before != after
    moved = pd.DataFrame({
        ID_COLUMN: np.asarray(new_ids[in_old])[moved_mask],
        "from": before[moved_mask].astype(int),
        "to": after[moved_mask].astype(int),
    })
    k = old_c.k_
    pair = np.bincount(before * k + after, minlength=k * k).reshape(k, k)
    flows = [{"from": int(a), "to": int(b), "devices": int(pair[a, b])}
             for a in range(k) for b in range(k) if pair[a, b]]
    moves = sorted((f for f in flows if f["from"] != f["to"]), key=lambda f: -f["devices"])

    clusters = _cluster_shifts(old, new, old_c, assigned, options)
    fresh = _only_in_new(old, new, old_c, new_c, options)
    if not in_old.any():
        notes.append(f"no device of {new.source} is in {old.source}: the snapshots share no device_id")
    if fresh:
        notes.append(
            f"{len(fresh)} cluster(s) of {new.source} lie far from every cluster of {old.source}: "
            "devices the deployed model was not optimised for"
        )
    return DriftReport(
        old_source=old.source, new_source=new.source,
        devices_old=old.n_devices, devices_new_total=new.n_devices,
        devices_matched=int(in_old.sum()),
        new_ids=[str(i) for i in new_ids[~in_old]], gone_ids=[str(i) for i in old_ids[gone]],
        moved=moved, moves=moves, flows=flows, clusters=clusters, new_clusters=fresh,
        old_clustering=old_c, new_clustering=new_c, new_assigned=assigned, notes=notes,
    )


def _probe_name(column: str) -> str:
    return PROBE_PATTERN.match(column).group(1)


def _cluster_shifts(old: Fleet, new: Fleet, old_c: Clustering, assigned: np.ndarray,
                    options: DriftOptions) -> list[dict]:
    cols = list(old_c.probe_columns_)
    old_p = old.frame[cols].to_numpy(dtype=np.float64)
    new_p = new.frame[cols].to_numpy(dtype=np.float64)
    out = []
    for c in range(old_c.k_):
        o = old_c.labels_ == c
        n = assigned == c
        old_share = float(o.mean())
        new_share = float(n.mean()) if len(n) else 0.0
        changes = {}
        if n.any():
            rel = np.median(new_p[n], axis=0) / np.median(old_p[o], axis=0) - 1.0
            changes = {_probe_name(col): round(float(r), 4) for col, r in zip(cols, rel, strict=True)}
        shifted_probes = [p for p, r in changes.items() if abs(r) > options.shift_threshold]
        out.append({
            "cluster": c,
            "old_devices": int(o.sum()), "new_devices": int(n.sum()),
            "old_share": round(old_share, 4), "new_share": round(new_share, 4),
            "probes": changes,
            "shifted_probes": shifted_probes,
            "shifted": bool(shifted_probes) or abs(new_share - old_share) > options.share_threshold
                       or not n.any(),
        })
    return out


def _only_in_new(old: Fleet, new: Fleet, old_c: Clustering, new_c: Clustering,
                 options: DriftOptions) -> list[dict]:
    X_old = old_c.transform(old)
    X_new = old_c.transform(new)
    radius = np.array([
        np.sqrt(np.mean(np.sum((X_old[old_c.labels_ == c] - old_c.centroids_[c]) ** 2, axis=1)))
        for c in range(old_c.k_)
    ])
    radius = np.maximum(radius, 1e-6)
    cols = list(new_c.probe_columns_)
    probes = new.frame[cols].to_numpy(dtype=np.float64)
    out = []
    for c in range(new_c.k_):
        members = new_c.labels_ == c
        centre = X_new[members].mean(axis=0)
        d = np.sqrt(((old_c.centroids_ - centre) ** 2).sum(axis=1)) / radius
        nearest = int(np.argmin(d))
        if d[nearest] > options.new_cluster_distance:
            out.append({
                "fresh_cluster": c,
                "devices": int(members.sum()),
                "share": round(float(members.mean()), 4),
                "nearest_old": nearest,
                "distance": round(float(d[nearest]), 2),
                "profile": {_probe_name(col): round(float(v), 4)
                            for col, v in zip(cols, np.median(probes[members], axis=0), strict=True)},
            })
    return out


__all__ = ["DriftReport", "compare"]
