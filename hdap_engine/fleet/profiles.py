"""Cluster profiles: what sets each cluster apart, as a table and as aligned text.

`Clustering.fit` stores `cluster_profiles` as ``profiles_`` (the app shows
it); `profile_table` is the text the CLI prints.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hdap_engine.fleet.contract import AGENT_URL_COLUMN, PROBE_PATTERN
from hdap_engine.fleet.telemetry import Fleet

# Categorical context columns with more distinct values than this (serial
# numbers, URLs) say nothing about a cluster; the profile skips them.
_MAX_CATEGORIES = 50
# Context worth naming in a profile: a value at least 10 points more common
# than in the fleet, or a numeric median half a fleet standard deviation away.
_MIN_LIFT = 0.10
_MIN_SHIFT = 0.5


def cluster_profiles(
    fleet: Fleet,
    *,
    labels: np.ndarray,
    members: list[np.ndarray],
    shares: np.ndarray,
    representatives: dict[int, list[str]],
    probe_columns: tuple[str, ...],
) -> pd.DataFrame:
    """One row per cluster, for people: size, share, probes relative to the fleet, context.

    Parameters
    ----------
    fleet:
        The fitted fleet.
    labels:
        Cluster id of every device (0..k-1).
    members:
        Row positions of each cluster's devices.
    shares:
        Each cluster's share of devices.
    representatives:
        Cluster id -> its representative device ids.
    probe_columns:
        The probe columns clustered on.

    Returns
    -------
    pandas.DataFrame
        ``cluster``, ``devices``, ``share``, one ``rel_<probe>`` column per
        probe (median of the cluster / median of the fleet), ``context`` and
        ``representatives``.
    """
    k = len(members)
    # One probe at a time: np.median copies what it sorts, and a whole
    # fleet's probes at once was the largest allocation of clustering ten
    # million devices.
    fleet_median = np.empty(len(probe_columns))
    medians = np.empty((k, len(probe_columns)))
    for j, c in enumerate(probe_columns):
        values = fleet.frame[c].to_numpy(dtype=np.float64)
        fleet_median[j] = np.median(values)
        for i, m in enumerate(members):
            medians[i, j] = np.median(values[m])
    rel = pd.DataFrame(
        medians / fleet_median,
        columns=[f"rel_{PROBE_PATTERN.match(c).group(1)}" for c in probe_columns],
    )
    table = pd.DataFrame(
        {
            "cluster": np.arange(k),
            "devices": np.bincount(labels, minlength=k),
            "share": shares,
        }
    )
    table = pd.concat([table, rel.round(3)], axis=1)
    table["context"] = _context_text(fleet, labels, members)
    table["representatives"] = [", ".join(representatives[c]) for c in range(k)]
    return table


def _context_text(fleet: Fleet, labels: np.ndarray, members: list[np.ndarray]) -> list[str]:
    """Per cluster, the context that sets it apart, most distinctive first."""
    k = len(members)
    parts: list[list[tuple[float, str]]] = [[] for _ in range(k)]
    for c in fleet.categorical_context_columns:
        if c == AGENT_URL_COLUMN:
            continue
        codes, values = pd.factorize(fleet.frame[c], use_na_sentinel=False)
        if len(values) > _MAX_CATEGORIES:
            continue
        names = ["(missing)" if pd.isna(v) else str(v) for v in values]
        counts = np.bincount(labels * len(values) + codes, minlength=k * len(values))
        counts = counts.reshape(k, len(values)).astype(float)
        fleet_share = counts.sum(axis=0) / counts.sum()
        shares = counts / counts.sum(axis=1, keepdims=True)
        for cl in range(k):
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
        for cl, rows in enumerate(members):
            own = values[rows]
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


def profile_table(profiles: pd.DataFrame) -> str:
    """Cluster profiles as aligned text: probes as x fleet median, context below.

    Parameters
    ----------
    profiles:
        `Clustering.profiles_`.

    Returns
    -------
    str
    """
    table = profiles.drop(columns=["context"]).copy()
    table["devices"] = table["devices"].map("{:,}".format)
    table["share"] = table["share"].map("{:.1%}".format)
    rel = [c for c in table.columns if c.startswith("rel_")]
    for c in rel:
        table[c] = table[c].map("{:.2f}x".format)
    table = table.rename(columns={c: c[4:] for c in rel})
    lines = [
        "probe columns: median latency of the cluster / median of the fleet",
        table.to_string(index=False),
    ]
    if profiles["context"].astype(bool).any():
        lines += ["", "context (most distinctive first):"]
        lines += [f"  {row.cluster}: {row.context or '-'}" for row in profiles.itertuples()]
    return "\n".join(lines)
