"""Rollout plans: cohorts of clusters, never worse than one model, complete outputs, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hdap_engine.latency.store import Store
from hdap_engine.lifecycle.rollout import (
    ONE_MODEL,
    ROLLOUT_COLUMNS,
    cluster_cohorts,
    plan_rollout,
    rollout_rows,
    write_rollout,
)
from hdap_engine.study.prepare import prepare
from tests.helpers.apptest import ok, small_study, start, wait_for_job
from tests.helpers.studies import quick_options


def test_clusters_that_prefer_alike_candidates_share_a_cohort_and_cuts_are_nested():
    # Clusters 0, 1 lose little on each other's best, as do 2, 3; across, a lot.
    regret = np.array([[0.0, 0.01, 0.30, 0.32],
                       [0.02, 0.0, 0.28, 0.30],
                       [0.31, 0.29, 0.0, 0.05],
                       [0.33, 0.30, 0.04, 0.0]])
    assert cluster_cohorts(regret, 1) == ((0, 1, 2, 3),)
    assert cluster_cohorts(regret, 2) == ((0, 1), (2, 3))
    three = cluster_cohorts(regret, 3)
    assert len(three) == 3 and (0, 1) in three  # the pair that is least alike splits
    assert cluster_cohorts(regret, 4) == ((0,), (1,), (2,), (3,))


def test_the_rollout_table_names_cohorts_and_reads_documents_saved_as_groups():
    plan = {"variants": 2, "models": 2, "fleet_mean_ms": 10.0, "p95_ms": 12.0,
            "worst_cluster_ms": 13.0, "gain_vs_one_model": 0.05, "within_noise": False}
    now = rollout_rows({"plans": [{**plan, "cohorts": [[0, 1], [2]]}]})
    earlier = rollout_rows({"plans": [{**plan, "groups": [[0, 1], [2]]}]})  # before the rename
    assert now == earlier
    assert now[0]["cohorts"] == "0,1 | 2"
    assert list(now[0]) == ROLLOUT_COLUMNS


@pytest.fixture(scope="module")
def rollout(small_fleet, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store") / "s.sqlite")
    # One representative per cluster: every variant is measured on each one, and what is
    # pinned here (no plan worse than one model, every device once) does not depend on it.
    ctx = prepare(quick_options(k=3, representatives=1), small_fleet, store=store)
    plan = plan_rollout(ctx, variants=ctx.k + 2)  # more than the clusters: capped
    out = tmp_path_factory.mktemp("rollout")
    doc = write_rollout(ctx, plan, out, formats=("ts",))
    return ctx, plan, doc, out


@pytest.mark.slow
def test_no_rollout_plan_measures_worse_than_one_model_or_fewer_variants(rollout):
    ctx, plan, _, _ = rollout
    one = plan.plans[0]
    assert one.variants == 1 and one.variant_models == (ONE_MODEL,)
    assert one.gain_vs_one_model == 0.0
    for fewer, p in zip(plan.plans, plan.plans[1:], strict=False):
        assert p.fleet_mean_ms <= one.fleet_mean_ms + 1e-9
        assert p.fleet_mean_ms <= fewer.fleet_mean_ms + 1e-9  # more variants never lose
        assert p.objective_value <= one.objective_value + 1e-9
        assert p.gain_vs_one_model >= 0.0
        # The verdict follows the measured gain and noise, whatever they are (a plan that
        # ships the one model alone is the one model, not a gain within noise).
        assert p.within_noise == (p.models > 1 and p.gain_vs_one_model < plan.noise)
    assert 0 < plan.noise < 0.2  # the twin's run-to-run spread, measured


@pytest.mark.slow
def test_more_variants_than_clusters_are_capped_with_a_note(rollout):
    ctx, plan, _, _ = rollout
    assert [p.variants for p in plan.plans] == list(range(1, ctx.k + 1))
    assert any(f"capped at {ctx.k}" in n for n in plan.notes)


@pytest.mark.slow
def test_rollout_outputs_cover_every_cluster_and_every_device_once(rollout):
    ctx, plan, doc, out = rollout
    written = json.loads((out / "rollout.json").read_text())
    assert written["plans"] == json.loads(json.dumps(doc["plans"]))
    every = sorted(str(d) for d in ctx.fleet.device_ids)
    labels = dict(zip((str(d) for d in ctx.fleet.device_ids), ctx.clustering.labels_,
                      strict=True))
    for p in written["plans"]:
        for key in ("variants", "fleet_mean_ms", "p95_ms", "worst_cluster_ms",
                    "gain_vs_one_model", "assignment"):
            assert key in p
        assert sorted(int(c) for c in p["assignment"]) == list(range(ctx.k))
        assert set(p["assignment"].values()) == set(range(p["models"]))
        seen = []
        for v in p["variant_list"]:
            with open(out / v["devices_csv"], newline="") as f:
                ids = [r["device_id"] for r in csv.DictReader(f)]
            assert len(ids) == v["devices"]
            # Each device's variant is its cluster's.
            assert all(p["assignment"][str(labels[d])] == v["variant"] for d in ids)
            assert (out / v["bundle"] / "widths.json").is_file()
            seen.extend(ids)
        assert sorted(seen) == every  # every device in exactly one variant's CSV


def test_zero_variants_is_one_clear_line(cli, small_fleet, tmp_path):
    r = cli("rollout", "--model", "resnet56", "--macs", "0.5", "--telemetry", str(small_fleet),
            "--variants", "0", "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--variants" in lines[0]


def test_an_impossible_budget_is_one_clear_line(cli, small_fleet, tmp_path):
    r = cli("rollout", "--model", "resnet56", "--macs", "1K", "--telemetry", str(small_fleet),
            "--quiet", "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert not (tmp_path / "o").exists()


# -- the Rollout page -------------------------------------------------------------------------


@pytest.mark.app
def test_rollout_page_points_to_the_run_page_before_any_run(samples):  # noqa: F811
    at = ok(start().switch_page("views/rollout.py").run())
    assert any("Run a study first" in i.value for i in at.info)


@pytest.mark.app
@pytest.mark.slow
def test_rollout_and_drift_pages_plan_and_check_on_the_last_run(samples):  # noqa: F811
    """One small study serves both pages that build on it (a study is the slow part)."""
    import pandas as pd

    from hdap_engine.twin.simulate import later_snapshot
    from hdap_engine.twin.states import load_twin_states

    at = small_study(start(), compare=(), sweep=False)
    ok(at.switch_page("views/rollout.py").run())
    ok(at.number_input(key="rollout_variants").set_value(2).run())
    ok(at.button(key="rollout_button").click().run())
    job_id = at.session_state["rollout_job"]["job"]
    shown = [m.value for m in at.markdown] + [i.value for i in at.info]
    assert any(f"Job {job_id}" in v for v in shown), shown  # the page follows it as a job
    wait_for_job(at, job_id=job_id)
    table = at.dataframe[0].value
    assert list(table["variants"]) == [1, 2]
    assert table["verdict"].iloc[0] == "one model"
    assert any("Measurement noise" in c.value for c in at.caption)
    assert at.get("plotly_chart")

    # Drift: the run's fleet probed again after 15 % of it started throttling, uploaded
    # without a sidecar (as a user's snapshot is); the deployed model is checked as a job.
    old = load_twin_states(samples / "jetson_small.csv").to_frame()
    later, _, changed = later_snapshot(old, 0.15, "thermal_throttling", seed=4)
    ok(at.switch_page("views/drift.py").run())
    ok(at.selectbox(key="drift_new_choice").set_value("upload a snapshot").run())
    ok(at.file_uploader(key="drift_upload").set_value(
        ("later.csv", later.to_csv(index=False).encode(), "text/csv")).run())
    ok(at.run())
    assert at.selectbox(key="drift_new_choice").value == "uploaded: later.csv"
    moved = int(next(m.value for m in at.metric if m.label == "Moved between clusters"))
    assert abs(moved - len(changed)) <= 0.1 * len(changed)
    ok(at.button(key="drift_check_button").click().run())
    wait_for_job(at, job_id=at.session_state["drift_job"]["job"])
    labels = [m.label for m in at.metric]
    assert "Deployed model" in labels and "Re-optimised for NEW" in labels
    verdict = [s.value for s in at.success] + [w.value for w in at.warning]
    assert any(v.startswith(("Keep the deployed model", "Re-optimise:")) for v in verdict)
    assert pd.notna(float(next(m.value for m in at.metric if m.label == "Deployed model")
                           .removesuffix(" ms")))


def test_a_method_that_ignores_cluster_weights_is_refused_in_one_line(cli, small_fleet, tmp_path):
    r = cli("rollout", "--model", "resnet56", "--macs", "0.5", "--telemetry", str(small_fleet),
            "--method", "uniform", "--quiet", "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--method hdap" in lines[0], r.stderr


def test_a_rollout_job_on_a_job_that_is_not_a_finished_study_says_so(tmp_path):
    from hdap_engine.errors import HdapError
    from hdap_engine.jobs import execute
    from hdap_engine.latency.store import Store

    store = Store(tmp_path / "store.sqlite")
    with pytest.raises(HdapError, match="job 7 is not a finished study"):
        execute("rollout", {"rollout": {"job": 7, "variants": 2}}, store=store)
    with pytest.raises(HdapError, match="names no study job"):
        execute("rollout", {"rollout": {}}, store=store)
