"""Accuracy in a whole study: flags, the floor in the search, report.json, bench rows, chart."""

from __future__ import annotations

import json

import pytest

from hdap_engine.errors import HdapError
from hdap_engine.options import StudyOptions
from tests.helpers.paths import DEMO as DEMO_PATH
from tests.helpers.studies import quick_options

DEMO = str(DEMO_PATH)
# Small enough for a test; the accuracy side: 6 sampled candidates, 64 + 96 calibration images.
SMALL = dict(samples=20, population=8, generations=3, refine_rounds=0, finalists=3,
             restarts=1, polish_rounds=1, polish_batch=3, accuracy_samples=6,
             calibration_images=64, calibration_eval=96)


@pytest.mark.parametrize("settings, message", [
    (dict(min_accuracy="0.9"), "--min-accuracy needs labelled data"),
    (dict(data="digits", min_accuracy="1.2"), "outside"),
    (dict(data="digits", min_accuracy="fast"), "not an accepted floor"),
    (dict(val_data="x"), "--val-data needs --data"),
])
def test_accuracy_settings_are_checked_before_any_work(settings, message):
    with pytest.raises(HdapError, match=message):
        StudyOptions.of(**settings)


def test_without_data_the_report_says_accuracy_is_unknown(small_fleet):
    from hdap_engine.study.run import run_study

    result = run_study(quick_options(**SMALL), small_fleet, export=False, record=False)
    acc = result.report["accuracy"]
    assert acc["status"].startswith("unknown") and acc["unpruned"] is None
    assert result.report["preprocess"] is None


@pytest.mark.slow
def test_the_uniform_floor_keeps_the_search_at_least_as_accurate_as_uniform(small_fleet,
                                                                            tmp_path):
    from hdap_engine.study.run import run_study

    options = quick_options(model_weights=DEMO, data="digits", min_accuracy="uniform",
                            budget="0.3", **SMALL)
    result = run_study(options, small_fleet, out_dir=tmp_path / "b", record=False)
    acc = result.report["accuracy"]
    floor = acc["floor"]
    assert floor["kind"] == "uniform" and floor["threshold"] == floor["uniform_calibrated"]
    # The chosen candidate was evaluated for real and meets the floor.
    assert floor["chosen_calibrated"] >= floor["threshold"]
    assert acc["unpruned"] >= 0.98 and acc["n_heldout"] == 359 and acc["classes"] == 10
    assert acc["calibrated"] is not None and acc["pruned"] is not None
    assert acc["surrogate"]["n"] >= 6 and "spearman" in acc["surrogate"]
    assert result.report["preprocess"]["size"] == [32, 32]
    saved = json.loads((tmp_path / "b" / "report.json").read_text())
    assert saved["accuracy"]["calibrated"] == pytest.approx(acc["calibrated"])


@pytest.mark.slow
def test_cli_optimize_prints_accuracy_and_a_floor_the_budget_cannot_meet_is_one_error(
        cli, small_fleet, tmp_path):
    common = ["optimize", "--model", "resnet56", "--model-weights", DEMO, "--data", "digits",
              "--telemetry", str(small_fleet), "--samples", "20", "--population", "8",
              "--generations", "2", "--refine-rounds", "0", "--finalists", "2",
              "--restarts", "1", "--polish-rounds", "0", "--accuracy-samples", "8",
              "--quiet"]
    bad = cli(*common, "--macs", "0.15", "--min-accuracy", "0.99", "--out",
              str(tmp_path / "x"))
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("error: no candidate at 0.15 MACs reaches the floor 0.99")
    assert "use --min-accuracy 0." in bad.stderr and "Traceback" not in bad.stderr
    ok = cli(*common, "--macs", "0.5", "--out", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    assert "accuracy (top-1, 359 images held out of digits" in ok.stdout
    assert "calibrated" in ok.stdout


def test_accuracy_pareto_keeps_the_points_nothing_beats():
    from hdap_engine.report.charts import accuracy_pareto, accuracy_points, pareto_front

    rows = [{"method": "hdap", "fleet_mean_ms": 2.0, "accuracy": {"calibrated": 0.6}},
            {"method": "uniform", "fleet_mean_ms": 2.5, "accuracy": {"calibrated": 0.5}},
            {"method": "hdap", "fleet_mean_ms": 3.0, "accuracy": {"calibrated": 0.9}},
            {"method": "global", "fleet_mean_ms": 2.2, "accuracy": {"calibrated": None}}]
    pts = accuracy_points(rows)
    assert len(pts) == 3  # the row without a calibrated accuracy is left out
    front = pareto_front(pts)
    assert front["fleet_mean_ms"].tolist() == [2.0, 3.0]
    fig = accuracy_pareto(rows, measured_source="twin", chosen={"fleet_mean_ms": 2.0,
                                                                 "accuracy": 0.6})
    names = [t.name for t in fig.data]
    assert "Pareto front" in names and "this study's model" in names
