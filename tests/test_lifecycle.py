"""After the first model ships: is re-optimising worth it, and would a few variants pay off?"""

from __future__ import annotations

import json

import pytest

from hdap_engine import cli
from hdap_engine.errors import HdapError
from hdap_engine.lifecycle.reoptimise import read_deployed, reoptimise_check
from hdap_engine.pruning.baseline import export_result, prune_baseline
from hdap_engine.study.run import run_study
from tests.helpers.studies import quick_options

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(small_fleet, tmp_path_factory):
    """An hdap bundle optimised for the small fleet (OLD), and a uniform one of the same budget."""
    out = tmp_path_factory.mktemp("bundles")
    # One representative per cluster: the bundles record these settings and every check
    # re-optimises with them, so each of its studies measures a third as much.
    options = quick_options(representatives=1)
    run_study(options, small_fleet, out_dir=out / "hdap")
    export_result(prune_baseline("resnet56", options.query.budget, "uniform"), out / "uniform")
    # The uniform bundle records the study's settings so that the check re-optimises alike.
    report = json.loads((out / "hdap" / "report.json").read_text())
    uniform = json.loads((out / "uniform" / "report.json").read_text())
    uniform["settings"] = report["settings"]
    (out / "uniform" / "report.json").write_text(json.dumps(uniform))
    return out


def test_no_reoptimise_when_the_deployed_model_is_still_the_best(deployed, small_fleet):
    r = reoptimise_check(deployed / "hdap", small_fleet)
    assert r["recommend_reoptimise"] is False and r["gap"] <= 0.03
    assert r["deployed_objective_ms"] > 0 and r["reoptimised_objective_ms"] > 0


def test_reoptimise_when_the_gap_is_large(deployed, small_fleet):
    r = reoptimise_check(deployed / "uniform", small_fleet)
    assert r["recommend_reoptimise"] is True and r["gap"] > 0.03
    assert r["deployed_objective_ms"] > r["reoptimised_objective_ms"]
    assert reoptimise_check(deployed / "uniform", small_fleet, threshold=0.9)["recommend_reoptimise"] is False


def test_a_folder_that_is_not_a_bundle_is_one_clear_line(tmp_path):
    with pytest.raises(HdapError, match="not a bundle folder .report.json is missing."):
        read_deployed(tmp_path)


def test_cli_drift_with_a_bundle_says_whether_to_reoptimise(deployed, small_fleet, tmp_path, capsys):
    out = tmp_path / "drift.json"
    assert cli.main(["drift", str(small_fleet), str(small_fleet), "--bundle", str(deployed / "uniform"),
                     "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "re-optimise" in text and "0 devices moved" in text
    d = json.loads(out.read_text())
    assert d["recommend_reoptimise"] is True and d["deployed_objective_ms"] > d["reoptimised_objective_ms"]
    assert cli.main(["drift", str(small_fleet), str(small_fleet), "--bundle", str(tmp_path / "none")]) == 2
    assert "no such bundle folder" in capsys.readouterr().err


def test_a_baseline_bundle_is_checked_against_its_own_budget(deployed):
    options, widths, report = read_deployed(deployed / "uniform")
    assert options.model == "resnet56" and len(widths) > 0
    plain = deployed.parent / "plain_uniform"
    export_result(prune_baseline("resnet56", "0.4", "uniform"), plain)
    options, widths, report = read_deployed(plain)
    assert float(options.query.budget) == pytest.approx(report["budget_macs"])
