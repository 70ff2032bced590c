"""Plotly figures of a fleet and a study, built from plain data.

The app shows these figures and the HTML report embeds the same ones, so a
chart looks the same on screen and in a shared file. Every function takes
plain data (DataFrames, the report dict, lists of rows) and returns a
`plotly.graph_objects.Figure`; nothing here computes a result.

Every latency axis names where its numbers come from (the backend's
``measured_source``: "twin (simulated)", "host (real)", ...), and every
surrogate number is labelled "predicted".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from hdap_engine.search.methods import style

# One colour per cluster everywhere (map, bars, scatter); Plotly's qualitative set.
CLUSTER_COLORS = px.colors.qualitative.Plotly + px.colors.qualitative.D3
SERIES_COLORS = {"predicted": "#636EFA", "measured": "#EF553B", "unpruned": "#B6B6B6",
                 "pruned": "#EF553B", "what-if": "#00CC96"}
# Above this many points the map is drawn with WebGL (SVG gets slow); below, SVG
# works everywhere, including browsers without GPU acceleration.
SVG_POINTS = 6000
_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=80, b=50),
               legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0))
_LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0)


def cluster_color(cluster: int) -> str:
    """The colour of a cluster in every chart."""
    return CLUSTER_COLORS[int(cluster) % len(CLUSTER_COLORS)]


def fleet_map(embedding: pd.DataFrame, color: str = "cluster",
              hover: Sequence[str] = ()) -> go.Figure:
    """The 2-D map of the fleet's devices (UMAP or PCA), coloured by cluster or a context column.

    Parameters
    ----------
    embedding:
        Rows of device_id, x, y, cluster and context columns
        (`hdap_engine.fleet.embedding.embed`); ``attrs["method"]`` names the layout.
    color:
        "cluster" or a column of ``embedding``.
    hover:
        Extra columns shown on hover (device id and cluster always are).

    Returns
    -------
    A scatter figure.
    """
    df = embedding.copy()
    method = str(embedding.attrs.get("method", "umap")).upper()
    if color not in df.columns:
        color = "cluster"
    hover_cols = ["device_id", "cluster"] + [c for c in hover
                                             if c in df.columns and c not in ("device_id",
                                                                              "cluster", color)]
    numeric = color != "cluster" and pd.api.types.is_numeric_dtype(df[color]) \
        and not pd.api.types.is_bool_dtype(df[color])
    kwargs: dict = {}
    if color == "cluster":
        df["cluster "] = df["cluster"].astype(int).map(lambda c: f"cluster {c}")
        order = [f"cluster {c}" for c in sorted(df["cluster"].unique())]
        kwargs = dict(color="cluster ", category_orders={"cluster ": order},
                      color_discrete_map={f"cluster {c}": cluster_color(c)
                                          for c in sorted(df["cluster"].unique())})
    elif numeric:
        kwargs = dict(color=color, color_continuous_scale="Viridis")
    else:
        df[color] = df[color].astype(str)
        kwargs = dict(color=color)
    fig = px.scatter(df, x="x", y="y", hover_data={c: True for c in hover_cols} | {
        "x": False, "y": False}, render_mode="svg" if len(df) <= SVG_POINTS else "webgl",
        **kwargs)
    fig.update_traces(marker=dict(size=4 if len(df) > 2000 else 6, opacity=0.75))
    fig.update_layout(**_LAYOUT, title=f"{len(df):,} devices, {method} of the hardware response",
                      legend_title_text="",
                      xaxis=dict(title=f"{method} 1", showticklabels=False),
                      yaxis=dict(title=f"{method} 2", showticklabels=False), height=520)
    return fig


def cluster_latency(clusters: Sequence[Mapping], measured_source: str, *,
                    title: str | None = None) -> go.Figure:
    """Predicted vs measured latency per cluster (grouped bars, measured with its spread).

    Parameters
    ----------
    clusters:
        The report's ``clusters`` rows: cluster, share, predicted_ms (or None),
        measured_ms, measured_spread_ms, unpruned_ms.
    measured_source:
        Where the measurements come from (named on the axis).
    title:
        Figure title.

    Returns
    -------
    A grouped bar figure.
    """
    labels = [f"cluster {c['cluster']}<br>{c.get('share', 0):.0%} of devices" for c in clusters]
    fig = go.Figure()
    pred = [c.get("predicted_ms") for c in clusters]
    if any(p is not None for p in pred):
        fig.add_bar(name="pruned, predicted (surrogate)", x=labels,
                    y=[np.nan if p is None else p for p in pred],
                    marker_color=SERIES_COLORS["predicted"])
    fig.add_bar(name=f"pruned, measured ({measured_source})", x=labels,
                y=[c["measured_ms"] for c in clusters], marker_color=SERIES_COLORS["measured"],
                error_y=dict(type="data", array=[c.get("measured_spread_ms") or 0.0
                                                 for c in clusters], visible=True))
    if all(c.get("unpruned_ms") is not None for c in clusters):
        fig.add_bar(name=f"unpruned, measured ({measured_source})", x=labels,
                    y=[c["unpruned_ms"] for c in clusters],
                    marker_color=SERIES_COLORS["unpruned"])
    fig.update_layout(**_LAYOUT, barmode="group", height=420,
                      title=title or "Latency per cluster: predicted vs measured",
                      yaxis_title="latency per image (ms)")
    return fig


def cluster_bars(shares: Sequence[float], series: Mapping[str, Sequence[float | None]], *,
                 title: str, yaxis_title: str = "latency per image (ms)") -> go.Figure:
    """Any latency series per cluster as grouped bars (e.g. a study against a what-if).

    Parameters
    ----------
    shares:
        Each cluster's share of devices (for the labels).
    series:
        Name -> one value per cluster (None: not available).
    title, yaxis_title:
        Texts of the figure.

    Returns
    -------
    A grouped bar figure.
    """
    labels = [f"cluster {c}<br>{s:.0%} of devices" for c, s in enumerate(shares)]
    fig = go.Figure()
    palette = ["#EF553B", "#636EFA", "#00CC96", "#B6B6B6", "#AB63FA"]
    for i, (name, values) in enumerate(series.items()):
        fig.add_bar(name=name, x=labels, y=[np.nan if v is None else v for v in values],
                    marker_color=palette[i % len(palette)])
    fig.update_layout(**_LAYOUT, barmode="group", height=420, title=title,
                      yaxis_title=yaxis_title)
    return fig


def widths_chart(series: Mapping[str, Mapping[str, int]], *, title: str | None = None) -> \
        go.Figure:
    """Channel widths group by group (layer order), one bar series per candidate.

    Parameters
    ----------
    series:
        Name -> {group: width}, e.g. {"unpruned": base, "pruned": widths}; the
        first series fixes the group order.

    Returns
    -------
    A grouped bar figure.
    """
    names = list(series)
    groups = list(series[names[0]]) if names else []
    base = series[names[0]] if names else {}
    fig = go.Figure()
    for name in names:
        widths = series[name]
        ratio = [widths.get(g, np.nan) / base[g] if base.get(g) else np.nan for g in groups]
        fig.add_bar(name=name, x=groups, y=[widths.get(g, np.nan) for g in groups],
                    customdata=ratio, hovertemplate="%{x}<br>%{y} channels (%{customdata:.0%} "
                    "of unpruned)<extra>" + name + "</extra>",
                    marker_color=SERIES_COLORS.get(name))
    fig.update_layout(**_LAYOUT, barmode="group", height=460,
                      title=title or "Channels kept, layer group by layer group",
                      xaxis=dict(title="prunable group (first layer), input to output",
                                 tickangle=-45),
                      yaxis_title="channels")
    return fig


def surrogate_accuracy(points: pd.DataFrame | Mapping, report: Mapping | None,
                       measured_source: str) -> go.Figure:
    """The surrogate's held-out accuracy: predicted vs measured latency of unseen candidates.

    Parameters
    ----------
    points:
        Held-out rows of cluster, measured_ms, predicted_ms (`Surrogate.test_points_`).
    report:
        The surrogate's report (``overall.mape`` goes in the title), or None.
    measured_source:
        Where the measurements come from.

    Returns
    -------
    A scatter figure with the y = x line.
    """
    df = pd.DataFrame(points)
    fig = go.Figure()
    if len(df):
        for c in sorted(df["cluster"].unique()):
            sub = df[df["cluster"] == c]
            fig.add_scatter(x=sub["measured_ms"], y=sub["predicted_ms"], mode="markers",
                            name=f"cluster {int(c)}", marker=dict(color=cluster_color(c), size=7),
                            hovertemplate="measured %{x:.3f} ms<br>predicted %{y:.3f} ms")
        lo = float(min(df["measured_ms"].min(), df["predicted_ms"].min()))
        hi = float(max(df["measured_ms"].max(), df["predicted_ms"].max()))
        fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = measured",
                        line=dict(color="#888", dash="dash"))
    title = "Surrogate on held-out candidates"
    overall = (report or {}).get("overall") or {}
    if "mape" in overall:
        title += (f"<br><sup>mean error {overall['mape']:.1%}, "
                  f"{overall.get('within_10pct', 0):.0%} within 10 %</sup>")
    fig.update_layout(**{**_LAYOUT, "legend": _LEGEND_BELOW}, title=title, height=460,
                      xaxis_title=f"measured latency (ms, {measured_source})",
                      yaxis_title="predicted latency (ms, surrogate)")
    return fig


def pareto_chart(sweep: Mapping, *, chosen: Mapping | None = None) -> go.Figure:
    """MACs vs measured fleet latency over a budget sweep, one line per method.

    Parameters
    ----------
    sweep:
        `hdap_engine.study.compare.sweep_context`'s result (points with method,
        macs, fleet_mean_ms).
    chosen:
        The study's candidate: {"macs", "fleet_mean_ms"}, drawn as a star.

    Returns
    -------
    A line figure.
    """
    source = sweep.get("measured_source", "")
    fig = go.Figure()
    points = pd.DataFrame(sweep.get("points", []))
    if len(points):
        for method, sub in points.groupby("method", sort=False):
            sub = sub.sort_values("macs")
            fig.add_scatter(x=sub["macs"] / 1e9, y=sub["fleet_mean_ms"], mode="lines+markers",
                            name=_method_label(method),
                            line=dict(color=_method_color(method)),
                            customdata=np.stack([sub["p95_ms"], sub["speedup"]], axis=1),
                            hovertemplate="%{x:.3f} G MACs<br>mean %{y:.2f} ms<br>p95 "
                                          "%{customdata[0]:.2f} ms<br>%{customdata[1]:.2f}x")
    if chosen is not None:
        fig.add_scatter(x=[chosen["macs"] / 1e9], y=[chosen["fleet_mean_ms"]], mode="markers",
                        name="this study's model",
                        marker=dict(symbol="star", size=16, color="#222"))
    if sweep.get("unpruned_mean_ms") is not None:
        fig.add_hline(y=sweep["unpruned_mean_ms"], line=dict(color="#999", dash="dot"),
                      annotation_text="unpruned", annotation_position="top left")
    fig.update_layout(**_LAYOUT, height=420, title="Budget sweep: MACs vs fleet latency",
                      xaxis_title="G MACs (\"FLOPs\" in pruning papers)",
                      yaxis_title=f"fleet mean latency (ms, measured: {source})")
    return fig


def accuracy_points(rows: Sequence[Mapping]) -> pd.DataFrame:
    """Rows (bench rows, sweep points) that carry a calibrated held-out accuracy."""
    out = []
    for r in rows:
        acc = (r.get("accuracy") or {}).get("calibrated")
        if acc is not None and r.get("fleet_mean_ms") is not None:
            out.append({"method": r["method"], "fleet_mean_ms": r["fleet_mean_ms"],
                        "calibrated": acc, "macs": r.get("macs"),
                        "budget": r.get("budget", "")})
    return pd.DataFrame(out)


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other point beats on both latency (lower) and accuracy (higher)."""
    if not len(points):
        return points
    pts = points.sort_values(["fleet_mean_ms", "calibrated"], ascending=[True, False])
    best, keep = -np.inf, []
    for i, row in pts.iterrows():
        if row["calibrated"] > best:
            keep.append(i)
            best = row["calibrated"]
    return pts.loc[keep]


def accuracy_pareto(rows: Sequence[Mapping], *, measured_source: str = "",
                    unpruned: Mapping | None = None, chosen: Mapping | None = None,
                    metric: str = "top-1") -> go.Figure:
    """Fleet latency vs calibrated accuracy: the trade-off a floor picks from.

    Parameters
    ----------
    rows:
        Bench rows or sweep points, each with ``method``, ``fleet_mean_ms`` and an
        ``accuracy`` block (rows without a calibrated accuracy are left out).
    measured_source:
        Where latency was measured (axis title).
    unpruned:
        {"fleet_mean_ms", "accuracy"} of the unpruned model, drawn as a cross.
    chosen:
        {"fleet_mean_ms", "accuracy"} of the study's model, drawn as a star.
    metric:
        What the accuracies are (`hdap_engine.accuracy.report.metric_label`: "top-1",
        "mAP@.5", "mAP@[.5:.95]").

    Returns
    -------
    A scatter figure with the Pareto front as a dotted line.
    """
    pts = accuracy_points(rows)
    fig = go.Figure()
    for method, sub in (pts.groupby("method", sort=False) if len(pts) else []):
        fig.add_scatter(x=sub["fleet_mean_ms"], y=100 * sub["calibrated"], mode="markers",
                        name=_method_label(method), marker=dict(color=_method_color(method),
                                                                size=10),
                        text=sub["budget"],
                        hovertemplate="%{x:.2f} ms<br>%{y:.1f}% calibrated<br>%{text}")
    front = pareto_front(pts)
    if len(front) > 1:
        fig.add_scatter(x=front["fleet_mean_ms"], y=100 * front["calibrated"], mode="lines",
                        name="Pareto front", line=dict(color="#999", dash="dot"))
    for point, name, symbol in ((unpruned, "unpruned", "x"), (chosen, "this study's model",
                                                             "star")):
        if point and point.get("accuracy") is not None:
            fig.add_scatter(x=[point["fleet_mean_ms"]], y=[100 * point["accuracy"]],
                            mode="markers", name=name,
                            marker=dict(symbol=symbol, size=14, color="#222"))
    fig.update_layout(**_LAYOUT, height=420,
                      title="Fleet latency vs accuracy (held out, after batch-norm "
                            "re-estimation)",
                      xaxis_title=f"fleet mean latency (ms, measured: {measured_source})",
                      yaxis_title=f"{metric} (%)")
    return fig


def method_comparison(comparison: Mapping) -> go.Figure:
    """Fleet mean and p95 latency of each method at the same budget.

    Parameters
    ----------
    comparison:
        `hdap_engine.study.compare.compare_context`'s result.

    Returns
    -------
    A grouped bar figure.
    """
    rows = list(comparison.get("rows", []))
    source = comparison.get("measured_source", "")
    labels = [_method_label(r["method"]) for r in rows]
    fig = go.Figure()
    fig.add_bar(name="fleet mean", x=labels, y=[r["fleet_mean_ms"] for r in rows],
                marker_color=[_method_color(r["method"]) for r in rows],
                text=[f"{r['speedup']:.2f}x" for r in rows], textposition="outside")
    fig.add_bar(name="p95 over devices", x=labels, y=[r["p95_ms"] for r in rows],
                marker_color="#CCCCCC")
    if comparison.get("unpruned_mean_ms") is not None:
        fig.add_hline(y=comparison["unpruned_mean_ms"], line=dict(color="#999", dash="dot"),
                      annotation_text="unpruned mean", annotation_position="top left")
    fig.update_layout(**_LAYOUT, barmode="group", height=420,
                      title="Methods at the same budget (speedup over unpruned on the bars)",
                      yaxis_title=f"latency (ms, measured: {source})")
    return fig


def runs_comparison(runs: Sequence[tuple[str, Mapping]]) -> go.Figure:
    """Fleet metrics of several recorded runs side by side.

    Parameters
    ----------
    runs:
        (label, run result) pairs; a result has ``fleet`` with measured_mean_ms,
        measured_p95_ms and unpruned_mean_ms.

    Returns
    -------
    A grouped bar figure.
    """
    fig = go.Figure()
    metrics = (("measured_mean_ms", "fleet mean"), ("measured_p95_ms", "p95 over devices"),
               ("unpruned_mean_ms", "unpruned mean"))
    for key, name in metrics:
        fig.add_bar(name=name, x=[label for label, _ in runs],
                    y=[(r.get("fleet") or {}).get(key) for _, r in runs])
    fig.update_layout(**_LAYOUT, barmode="group", height=380, title="Runs side by side",
                      yaxis_title="latency (ms, measured)")
    return fig


def _method_label(method: str) -> str:
    return style(method)[0]


def _method_color(method: str) -> str:
    return style(method)[1]


def study_figures(report: Mapping, *, widths: Mapping[str, int],
                  base_widths: Mapping[str, int], test_points=None, sweep: Mapping | None = None,
                  comparison: Mapping | None = None,
                  extra_widths: Mapping[str, Mapping[str, int]] | None = None) -> \
        dict[str, go.Figure]:
    """Every chart of one study, by name (what the app's run page and the HTML report show).

    Parameters
    ----------
    report:
        The study's report (report.json content).
    widths, base_widths:
        The pruned and the unpruned candidate, group -> channels.
    test_points:
        The surrogate's held-out points, or None.
    sweep:
        A budget sweep (`sweep_context`), or None.
    comparison:
        A method comparison (`compare_context`), or None.
    extra_widths:
        More candidates for the widths chart (e.g. a what-if one).

    Returns
    -------
    {"clusters", "widths", and when given "surrogate", "pareto", "accuracy_pareto" (a sweep
    with accuracies), "comparison"}.
    """
    source = report.get("measured_source", "")
    figs = {"clusters": cluster_latency(report["clusters"], source)}
    figs["widths"] = widths_chart({"unpruned": dict(base_widths), "pruned": dict(widths),
                                   **(extra_widths or {})})
    if test_points is not None and len(pd.DataFrame(test_points)):
        figs["surrogate"] = surrogate_accuracy(test_points, report.get("surrogate"), source)
    if sweep is not None:
        fleet = report.get("fleet") or {}
        chosen = None
        macs = report.get("macs", report.get("budget_macs"))
        if macs is not None and fleet.get("measured_mean_ms") is not None:
            chosen = {"macs": macs, "fleet_mean_ms": fleet["measured_mean_ms"]}
        figs["pareto"] = pareto_chart(sweep, chosen=chosen)
        if len(accuracy_points(sweep.get("points", []))):
            from hdap_engine.accuracy.report import metric_label

            acc = (report.get("accuracy") or {})
            figs["accuracy_pareto"] = accuracy_pareto(
                sweep["points"], measured_source=source,
                unpruned={"fleet_mean_ms": fleet.get("unpruned_mean_ms"),
                          "accuracy": acc.get("unpruned")},
                chosen={"fleet_mean_ms": fleet.get("measured_mean_ms"),
                        "accuracy": acc.get("calibrated")},
                metric=metric_label(acc))
    if comparison is not None:
        figs["comparison"] = method_comparison(comparison)
    return figs


def drift_sankey(flows: Sequence[Mapping], k_old: int, *, old_label: str = "OLD",
                 new_label: str = "NEW", title: str | None = None) -> go.Figure:
    """Devices' clusters in OLD (left) and in NEW assigned to OLD's clusters (right).

    Parameters
    ----------
    flows:
        ``{"from", "to", "devices"}`` for every pair, stays included
        (`DriftReport.flows`).
    k_old:
        Number of OLD clusters.
    old_label, new_label:
        Names of the two snapshots.
    title:
        Figure title; default says how many devices moved.

    Returns
    -------
    A Plotly Sankey: grey links are devices that stayed, coloured ones moved.
    """
    labels = [f"{old_label} cluster {c}" for c in range(k_old)] + [
        f"{new_label} cluster {c}" for c in range(k_old)]
    colors = [CLUSTER_COLORS[c % len(CLUSTER_COLORS)] for c in range(k_old)] * 2
    src, dst, value, link_colors = [], [], [], []
    for f in flows:
        src.append(int(f["from"]))
        dst.append(k_old + int(f["to"]))
        value.append(int(f["devices"]))
        moved = int(f["from"]) != int(f["to"])
        link_colors.append(_with_alpha(CLUSTER_COLORS[int(f["to"]) % len(CLUSTER_COLORS)], 0.6)
                           if moved else "rgba(180,180,180,0.35)")
    moved_total = sum(v for f, v in zip(flows, value, strict=True) if int(f["from"]) != int(f["to"]))
    fig = go.Figure(go.Sankey(
        node=dict(label=labels, color=colors, pad=14, thickness=16),
        link=dict(source=src, target=dst, value=value, color=link_colors,
                  hovertemplate="%{source.label} -> %{target.label}: %{value:,} devices<extra></extra>"),
    ))
    fig.update_layout(**_LAYOUT, height=420,
                      title=title or f"Devices moved between clusters: {moved_total:,} "
                                     f"(grey: stayed)")
    return fig


def _with_alpha(color: str, alpha: float) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def rollout_chart(doc: Mapping) -> go.Figure:
    """Measured fleet mean (and p95) per number of variants, against the one model.

    Parameters
    ----------
    doc:
        `hdap_engine.lifecycle.rollout.Rollout.as_dict`'s result.

    Returns
    -------
    A bar figure with the one model's fleet mean and its noise band.
    """
    plans = list(doc.get("plans", []))
    source = doc.get("measured_source", "")
    x = [f"{p['variants']} variant{'s' if p['variants'] != 1 else ''}" for p in plans]
    fig = go.Figure()
    fig.add_bar(name="fleet mean", x=x, y=[p["fleet_mean_ms"] for p in plans],
                marker_color=SERIES_COLORS["measured"],
                text=[f"{p['gain_vs_one_model']:+.1%}" for p in plans], textposition="outside")
    fig.add_bar(name="p95 over devices", x=x, y=[p["p95_ms"] for p in plans],
                marker_color="#CCCCCC")
    if plans:
        one = plans[0]["fleet_mean_ms"]
        noise = float(doc.get("noise") or 0.0)
        if noise > 0:
            fig.add_hrect(y0=one * (1 - noise), y1=one, line_width=0, fillcolor="#999",
                          opacity=0.15, annotation_text="within measurement noise",
                          annotation_position="bottom left")
        fig.add_hline(y=one, line=dict(color="#555", dash="dot"),
                      annotation_text="one model, fleet mean", annotation_position="top left")
    fig.update_layout(**_LAYOUT, barmode="group", height=420,
                      title="Rollout plans: one model per cohort of clusters "
                            "(gain over one model on the bars)",
                      yaxis_title=f"latency (ms, measured: {source})")
    return fig
