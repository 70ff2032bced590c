"""A study's report as one HTML page with its charts, for sharing.

The page is self-contained (Plotly's JavaScript is inlined once by default),
so it opens offline and can be mailed around. It holds the same figures the
app shows (`hdap_engine.report.charts.study_figures`), the summary table, the
per-cluster numbers, the notes, and the settings that reproduce the run.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from datetime import UTC, datetime

from hdap_engine.errors import HdapError
from hdap_engine.pruning.budget import format_macs

# The order and the captions of the figures on the page.
FIGURE_CAPTIONS = {
    "clusters": "Latency per cluster. Predicted bars come from the surrogate; measured bars "
                "(with the spread of repeated runs) from the backend named in the legend.",
    "comparison": "Other methods pruned to the same budget and measured the same way.",
    "pareto": "Budget sweep: each point is a candidate searched for that budget and measured.",
    "widths": "Channels kept in each prunable group (input side left).",
    "surrogate": "Surrogate accuracy on candidates it never saw in training.",
}



def _fmt_ms(value) -> str:
    return "–" if value is None else f"{float(value):.2f} ms"



def summary_rows(report: Mapping) -> list[tuple[str, str]]:
    """(label, value) rows that summarise a study for people."""
    settings = report.get("settings") or {}
    fleet = report.get("fleet") or {}
    rows = [
        ("model", str(report.get("model") or settings.get("model", "?"))),
        ("model weights", str(report.get("model_weights", "random initialisation"))),
        ("method", str(report.get("method", "?"))),
        ("budget", f"{report.get('budget', '?')} = {format_macs(report['budget_macs'])} MACs"
         if report.get("budget_macs") else str(report.get("budget", "?"))),
    ]
    if report.get("macs") is not None:
        base = report.get("base_macs")
        share = f" ({report['macs'] / base:.0%} of the unpruned model)" if base else ""
        rows.append(("pruned model MACs", f"{format_macs(report['macs'])}{share}"))
    rows += [
        ("objective", str(report.get("objective_label", report.get("objective", "?")))),
        ("cluster weights", str(report.get("cluster_weights_source")
                                 or report.get("weights_source", "?"))),
        ("fleet", f"{report.get('fleet_source', '?')}: {report.get('n_devices', '?')} devices, "
                  f"{report.get('k', '?')} clusters"),
        ("measured on", str(report.get("measured_source", "?"))),
        ("fleet mean latency", f"{_fmt_ms(fleet.get('measured_mean_ms'))} measured, "
                               f"{_fmt_ms(fleet.get('predicted_mean_ms'))} predicted"),
        ("fleet p95 latency", _fmt_ms(fleet.get("measured_p95_ms"))),
        ("unpruned mean latency", _fmt_ms(fleet.get("unpruned_mean_ms"))),
        ("speedup", f"{fleet['speedup']:.2f}x" if fleet.get("speedup") else "–"),
        ("measured over", str(fleet.get("basis", "?"))),
    ]
    return rows



def report_html(report: Mapping, figures: Mapping, *, title: str | None = None,
                plotlyjs: str = "inline") -> str:
    """One HTML page with the study's summary, charts, per-cluster table, notes and settings.

    Parameters
    ----------
    report:
        The study's report (report.json content).
    figures:
        Name -> Plotly figure (`hdap_engine.report.charts.study_figures`).
    title:
        Page title (default: model, method and budget).
    plotlyjs:
        "inline" (works offline, ~4 MB) or "cdn" (small, needs the internet to draw).

    Returns
    -------
    The page as a string.
    """
    if plotlyjs not in ("inline", "cdn"):
        raise HdapError(f"plotlyjs must be 'inline' or 'cdn', got {plotlyjs!r}")
    esc = html.escape
    model = report.get("model") or (report.get("settings") or {}).get("model", "")
    title = title or f"HDAP Studio report: {model} pruned to {report.get('budget', '')}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p class='meta'>Written {datetime.now(UTC).isoformat(timespec='seconds')} by "
             "HDAP Studio. Every measured number names its source; predicted numbers come "
             "from the latency surrogate.</p>",
             "<h2>Summary</h2><table class='kv'>"]
    parts += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary_rows(report)]
    parts.append("</table>")
    include = "cdn" if plotlyjs == "cdn" else True
    ordered = [n for n in FIGURE_CAPTIONS if n in figures] + \
        [n for n in figures if n not in FIGURE_CAPTIONS]
    for name in ordered:
        parts.append(f"<h2>{esc(name.capitalize())}</h2>")
        parts.append(f"<p class='caption'>{esc(FIGURE_CAPTIONS.get(name, ''))}</p>")
        parts.append(figures[name].to_html(full_html=False, include_plotlyjs=include,
                                           config={"displaylogo": False}))
        if include is True:
            include = False
    clusters = report.get("clusters") or []
    if clusters:
        parts.append("<h2>Clusters</h2><table class='grid'><tr><th>cluster</th><th>devices</th>"
                     "<th>share</th><th>weight</th><th>predicted</th><th>measured</th>"
                     "<th>spread</th><th>unpruned</th><th>representatives</th></tr>")
        for c in clusters:
            parts.append(
                "<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in (
                    c.get("cluster"), c.get("devices"), f"{c.get('share', 0):.1%}",
                    f"{c.get('weight', 0):.3f}", _fmt_ms(c.get("predicted_ms")),
                    _fmt_ms(c.get("measured_ms")), _fmt_ms(c.get("measured_spread_ms")),
                    _fmt_ms(c.get("unpruned_ms")), ", ".join(c.get("representatives") or [])))
                + "</tr>")
        parts.append("</table>")
    notes = report.get("notes") or []
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(str(n))}</li>" for n in notes)
                     + "</ul>")
    parts.append("<h2>Settings</h2><pre>"
                 + esc(json.dumps(report.get("settings") or {}, indent=2, default=str))
                 + "</pre></body></html>")
    return "\n".join(parts)



_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse}th,td{padding:.25em .7em;text-align:left;vertical-align:top}
table.kv th{color:#555;font-weight:600}table.grid th,table.grid td{border:1px solid #ddd}
.meta,.caption{color:#666}pre{background:#f6f6f6;padding:1em;overflow:auto}
"""

