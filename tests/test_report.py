"""Charts, the HTML report, sample fleets and workspace uploads (engine side of the app)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hdap_engine.errors import HdapError
from hdap_engine.export.reading import bundle_files, read_bundle_report
from hdap_engine.report import charts
from hdap_engine.report.page import report_html, summary_rows


def _report(k: int = 3, predicted: bool = True) -> dict:
    clusters = [{"cluster": c, "devices": 10 * (k - c), "share": (k - c) / (k * (k + 1) / 2),
                 "weight": 1 / k, "predicted_ms": (5.0 + c) if predicted else None,
                 "measured_ms": 5.2 + c, "measured_spread_ms": 0.1, "unpruned_ms": 12.0 + c,
                 "representatives": [f"d{c}a", f"d{c}b"]} for c in range(k)]
    return {"model": "resnet56", "method": "hdap", "budget": "0.25", "budget_macs": 3.2e7,
            "macs": 3.1e7, "base_macs": 1.27e8, "objective": "mean",
            "objective_label": "weighted mean latency", "cluster_weights_source": "device shares",
            "measured_source": "twin (simulated)", "fleet_source": "f.csv", "n_devices": 60,
            "k": k, "model_weights": "random initialisation", "clusters": clusters,
            "fleet": {"predicted_mean_ms": 5.5, "measured_mean_ms": 5.6, "measured_p95_ms": 7.0,
                      "unpruned_mean_ms": 12.5, "unpruned_p95_ms": 14.0, "speedup": 2.23,
                      "basis": "every device of the fleet"},
            "surrogate": {"overall": {"mape": 0.031, "within_10pct": 0.97}},
            "notes": ["a <note> to escape"], "settings": {"model": "resnet56", "seed": 0}}


def _sweep() -> dict:
    pts = []
    for m in ("hdap", "uniform"):
        for i, f in enumerate((0.2, 0.4, 0.6)):
            pts.append({"method": m, "macs": f * 1.27e8, "fleet_mean_ms": 4 + 6 * f + i * 0.1,
                        "p95_ms": 6 + 6 * f, "speedup": 12.5 / (4 + 6 * f), "budget": str(f)})
    return {"measured_source": "twin (simulated)", "unpruned_mean_ms": 12.5, "points": pts}


def _figures(report: dict) -> dict:
    base = {"conv1": 16, "layer1.0.conv1": 16, "layer2.0.conv1": 32}
    pruned = {"conv1": 8, "layer1.0.conv1": 16, "layer2.0.conv1": 8}
    points = pd.DataFrame({"cluster": [0, 0, 1, 2], "measured_ms": [5, 6, 7, 8],
                           "predicted_ms": [5.1, 5.8, 7.3, 8.1]})
    comparison = {"measured_source": "twin (simulated)", "unpruned_mean_ms": 12.5, "rows": [
        {"method": "hdap", "fleet_mean_ms": 5.6, "p95_ms": 7.0, "speedup": 2.2},
        {"method": "uniform", "fleet_mean_ms": 6.4, "p95_ms": 8.0, "speedup": 1.9}]}
    return charts.study_figures(report, widths=pruned, base_widths=base, test_points=points,
                                sweep=_sweep(), comparison=comparison)


def test_study_figures_name_the_measured_source_and_label_predictions():
    figs = _figures(_report())
    assert set(figs) == {"clusters", "widths", "surrogate", "pareto", "comparison"}
    names = [t.name for t in figs["clusters"].data]
    assert names == ["pruned, predicted (surrogate)", "pruned, measured (twin (simulated))",
                     "unpruned, measured (twin (simulated))"]
    measured = figs["clusters"].data[1]
    assert list(measured.y) == [5.2, 6.2, 7.2] and list(measured.error_y.array) == [0.1] * 3
    assert "twin (simulated)" in figs["surrogate"].layout.xaxis.title.text
    assert "mean error 3.1%" in figs["surrogate"].layout.title.text
    assert "twin (simulated)" in figs["pareto"].layout.yaxis.title.text
    star = [t for t in figs["pareto"].data if t.name == "this study's model"][0]
    assert star.x[0] == pytest.approx(0.031) and star.y[0] == 5.6


def test_cluster_chart_without_a_surrogate_has_no_predicted_bars():
    fig = charts.cluster_latency(_report(predicted=False)["clusters"], "host (real)")
    assert [t.name for t in fig.data] == ["pruned, measured (host (real))",
                                          "unpruned, measured (host (real))"]


def test_widths_chart_keeps_layer_order_and_reports_keep_ratios():
    fig = charts.widths_chart({"unpruned": {"b": 64, "a": 32}, "pruned": {"b": 16, "a": 32}})
    assert list(fig.data[0].x) == ["b", "a"]
    assert list(fig.data[1].customdata) == [0.25, 1.0]


def test_fleet_map_colours_by_cluster_number_or_category():
    rng = np.random.default_rng(0)
    emb = pd.DataFrame({"device_id": [f"d{i}" for i in range(40)], "x": rng.random(40),
                        "y": rng.random(40), "cluster": np.arange(40) % 3,
                        "temperature_c": rng.random(40) * 50, "power_mode": ["5W", "MAXN"] * 20})
    emb.attrs["method"] = "umap"
    by_cluster = charts.fleet_map(emb)
    assert sorted(t.name for t in by_cluster.data) == ["cluster 0", "cluster 1", "cluster 2"]
    assert by_cluster.data[0].marker.color == charts.cluster_color(0)
    numeric = charts.fleet_map(emb, color="temperature_c", hover=["power_mode"])
    assert len(numeric.data) == 1 and numeric.layout.coloraxis.colorbar.title.text == \
        "temperature_c"
    assert "power_mode" in numeric.data[0].hovertemplate
    categorical = charts.fleet_map(emb, color="power_mode")
    assert sorted(t.name for t in categorical.data) == ["5W", "MAXN"]
    assert charts.fleet_map(emb, color="no such column").data[0].name == "cluster 0"


def test_report_html_is_one_offline_page_with_every_chart_and_escaped_text():
    report = _report()
    page = report_html(report, _figures(report))
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("plotly-graph-div") >= 5
    assert page.count("Plotly.newPlot") >= 5
    assert len(page) > 1_000_000  # Plotly's JavaScript inlined (opens offline)
    assert "a &lt;note&gt; to escape" in page and "<note>" not in page
    assert "random initialisation" in page and "twin (simulated)" in page
    small = report_html(report, _figures(report), plotlyjs="cdn")
    assert len(small) < 200_000 and "cdn.plot.ly" in small
    with pytest.raises(HdapError):
        report_html(report, {}, plotlyjs="nowhere")


def test_summary_rows_say_where_numbers_come_from():
    rows = dict(summary_rows(_report()))
    assert rows["measured on"] == "twin (simulated)"
    assert rows["model weights"] == "random initialisation"
    assert rows["speedup"] == "2.23x"
    assert rows["pruned model MACs"].endswith("(24% of the unpruned model)")


def test_bundle_files_and_report_of_a_bundle(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "model.ts").write_bytes(b"ts")
    (bundle / "report.json").write_text(json.dumps({"model": "resnet56"}))
    (tmp_path / "b.zip").write_bytes(b"zip")
    assert set(bundle_files(bundle)) == {"bundle", "model.ts", "report.json"}
    assert read_bundle_report(bundle) == {"model": "resnet56"}
    (bundle / "report.json").write_text("{not json")
    with pytest.raises(HdapError, match="not valid JSON"):
        read_bundle_report(bundle)
    with pytest.raises(HdapError, match="no report.json"):
        read_bundle_report(tmp_path / "missing")


def test_sample_fleets_are_telemetry_files_with_a_twin_sidecar(tmp_path, monkeypatch):
    from hdap_engine.fleet.samples import get_sample_fleet, sample_fleets

    for name in ("b_fleet.csv", "b_fleet.twin.parquet", "a_fleet.csv.gz",
                 "a_fleet.twin.parquet", "lonely.csv", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = sample_fleets(tmp_path)
    assert [s.name for s in found] == ["a_fleet", "b_fleet"]
    assert found[0].sidecar == tmp_path / "a_fleet.twin.parquet"
    monkeypatch.setenv("HDAP_SAMPLE_DATA", str(tmp_path))
    assert get_sample_fleet("b_fleet").path == tmp_path / "b_fleet.csv"
    with pytest.raises(HdapError, match="no sample fleet 'lonely'; the shipped ones are: "
                                        "a_fleet, b_fleet"):
        get_sample_fleet("lonely")
    assert sample_fleets(tmp_path / "missing") == []


def test_uploads_are_stored_by_content_and_bundle_folders_are_fresh():
    from hdap_engine.infra.workspace import home, new_bundle_dir, save_upload, upload_label

    a = save_upload(b"weights", "../../my model.pt", "weights")
    assert a.parent == home() / "weights" and a.name.endswith("-my_model.pt")
    assert save_upload(b"weights", "../../my model.pt", "weights") == a
    assert save_upload(b"other", "my model.pt", "weights") != a
    assert a.read_bytes() == b"weights"
    assert upload_label(a) == upload_label(str(a)) == "my_model.pt"  # as its user knows it
    assert upload_label("digits") == "digits" and upload_label(None) == "none"
    d1, d2 = new_bundle_dir("resnet56 hdap"), new_bundle_dir("resnet56 hdap")
    assert d1 != d2 and d1.parent == home() / "bundles" and "resnet56-hdap" in d1.name
