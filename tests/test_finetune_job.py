"""Fine-tuning as a job: ``execute("finetune", ...)`` and the job row's partial result.

A real bundle (the demo weights pruned uniformly to 25 % of their MACs) is
fine-tuned for one epoch on a small ImageFolder of real digit images; the
epochs reach the job's row while it trains, which is what the Fine-tune page
draws live.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from hdap_engine.errors import HdapError
from tests.helpers.bundles import export_bundle_fast
from tests.helpers.images import write_digit_folder
from tests.helpers.paths import DEMO


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    return write_digit_folder(tmp_path_factory.mktemp("digits") / "train", 8)


@pytest.fixture(scope="module")
def pruned_bundle(tmp_path_factory):
    from hdap_engine.pruning.baseline import prune_baseline

    res = prune_baseline("resnet56", "0.25", "uniform", model_weights=str(DEMO))
    res.report["settings"] = {"model": "resnet56", "model_weights": str(DEMO)}
    return export_bundle_fast(res, tmp_path_factory.mktemp("bundle") / "r56_u25")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads per process are slower on a shared 2-core machine
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_a_finetune_job_writes_a_new_bundle_and_reports_every_epoch_as_it_goes(
        pruned_bundle, digit_folder):
    from hdap_engine.export.bundle import BUNDLE_FILES, SOURCE_FILE
    from hdap_engine.export.reading import load_bundle
    from hdap_engine.jobs import execute

    seen, partials = [], []
    result = execute("finetune", {"finetune": {"bundle": str(pruned_bundle),
                                               "data": str(digit_folder), "epochs": 1,
                                               "of_job": 7}},
                     progress=lambda stage, step, total: seen.append((stage, step, total)),
                     partial=partials.append)
    assert seen[0] == ("finetune", 0, 1) and seen[-1] == ("finetune", 1, 1)
    assert len(partials) == 1 and partials[0]["epochs"] == 1
    row = partials[0]["history"][0]
    assert row["epoch"] == 1 and row["loss"] > 0 and 0 <= row["val_top1"] <= 1

    bundle = result["bundle"]
    assert bundle != str(pruned_bundle) and result["of_job"] == 7
    from pathlib import Path

    assert sorted(p.name for p in Path(bundle).iterdir()) == sorted(
        f for f in BUNDLE_FILES if f != SOURCE_FILE)  # a registered model ships no source
    acc = result["accuracy"]
    assert acc == result["report"]["accuracy"]
    assert acc["classes"] == 10 and acc["finetune"]["epochs"] == 1
    assert 0 <= acc["finetuned"] <= 1 and acc["unpruned"] > 0.9  # the demo teacher is trained
    assert result["history"] == partials[0]["history"]
    assert result["report"]["finetuned_from"] == str(pruned_bundle)
    json.dumps(result)  # the job's result is plain JSON
    model, _ = load_bundle(bundle)
    assert sum(p.numel() for p in model.parameters()) == result["report"]["params"]


def test_a_finetune_job_without_data_or_with_other_classes_says_what_is_wrong(
        pruned_bundle, tmp_path):
    from hdap_engine.jobs import execute

    with pytest.raises(HdapError, match="no bundle or no labelled data"):
        execute("finetune", {"finetune": {"bundle": str(pruned_bundle)}})
    three = write_digit_folder(tmp_path / "three", 4)
    for extra in range(3, 10):
        for f in (three / str(extra)).iterdir():
            f.unlink()
        (three / str(extra)).rmdir()
    with pytest.raises(HdapError, match="has 3 classes but the bundle's weights have 10"):
        execute("finetune", {"finetune": {"bundle": str(pruned_bundle), "data": str(three),
                                          "epochs": 1}})


def test_a_study_that_asks_to_finetune_random_weights_is_refused_before_it_starts(
        small_fleet):
    from hdap_engine.jobs import execute
    from tests.helpers.studies import quick_options

    options = quick_options(data="digits", finetune_epochs=1)
    with pytest.raises(HdapError, match="weights are random"):
        execute("study", {"options": options.settings(), "telemetry": str(small_fleet)})


def test_the_job_table_keeps_a_running_jobs_partial_result_and_upgrades_old_stores(tmp_path):
    from hdap_engine.jobs import JobTable

    db = tmp_path / "store.sqlite"
    with sqlite3.connect(db) as con:  # a store made before jobs had a partial result
        con.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT, "
                    "kind TEXT NOT NULL, settings TEXT NOT NULL, dedupe_key TEXT NOT NULL, "
                    "state TEXT NOT NULL, stage TEXT, step INTEGER NOT NULL DEFAULT 0, "
                    "total INTEGER NOT NULL DEFAULT 0, stages TEXT NOT NULL DEFAULT '[]', "
                    "cancel_requested INTEGER NOT NULL DEFAULT 0, runner TEXT, "
                    "worker_pid INTEGER, attempts INTEGER NOT NULL DEFAULT 0, result TEXT, "
                    "error TEXT, created_at REAL NOT NULL, started_at REAL, ended_at REAL, "
                    "updated_at REAL NOT NULL)")
    table = JobTable(db)
    job, _ = table.submit("finetune", {"finetune": {"bundle": "b", "data": "digits"}})
    assert job.partial is None
    table.partial(job.id, {"history": [{"epoch": 1}]})
    assert table.get(job.id).partial is None  # only a running job reports progress
    assert table.claim(job.id, "me")
    table.partial(job.id, {"history": [{"epoch": 1}], "epochs": 3})
    assert table.get(job.id).partial == {"history": [{"epoch": 1}], "epochs": 3}
    JobTable(db)  # a second opening finds the column there


@pytest.mark.slow
def test_a_study_job_with_data_and_finetune_epochs_reports_accuracy_everywhere(
        small_fleet, digit_folder):
    """The Model page's data, floor-free, with fine-tune epochs: the study job measures
    accuracy, fine-tunes its own bundle in place and the comparison rows carry top-1."""
    from pathlib import Path

    from hdap_engine.export.bundle import BUNDLE_FILES, SOURCE_FILE
    from hdap_engine.jobs import execute
    from tests.helpers.studies import quick_options

    # The accuracy side as small as test_accuracy_study's (6 sampled candidates instead of
    # 24, each pruned, calibrated and evaluated) and a short search: what is pinned here is
    # where accuracy is reported, not how good the search is.
    options = quick_options(data=str(digit_folder), finetune_epochs=1, model_weights=str(DEMO),
                            samples=20, representatives=1, population=8, generations=3,
                            refine_rounds=0, finalists=3, restarts=1, polish_batch=3,
                            accuracy_samples=6, calibration_images=64, calibration_eval=96)
    stages, partials = set(), []
    result = execute("study", {"options": options.settings(), "telemetry": str(small_fleet),
                               "compare": ["uniform"]},
                     progress=lambda stage, step, total: stages.add(stage),
                     partial=partials.append)
    acc = result["report"]["accuracy"]
    assert {"data", "accuracy", "finetune"} <= stages
    assert len(partials) == 1 and acc["finetune"]["epochs"] == 1
    for stage in ("unpruned", "pruned", "calibrated", "finetuned"):
        assert 0 <= acc[stage] <= 1, stage
    assert [r["method"] for r in result["comparison"]["rows"]] == ["hdap", "uniform"]
    assert all(0 <= r["accuracy"]["calibrated"] <= 1 for r in result["comparison"]["rows"])
    # Fine-tuned in place: a complete bundle, no checkpoint left behind.
    assert sorted(p.name for p in Path(result["bundle"]).iterdir()) == sorted(
        f for f in BUNDLE_FILES if f != SOURCE_FILE)
