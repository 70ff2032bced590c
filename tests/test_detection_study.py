"""Detection inside a study: the report's accuracy block, COCO data in a study, floors on mAP."""

from __future__ import annotations

import json

import pytest

from hdap_engine.accuracy.detection import DetectionAccuracy
from hdap_engine.accuracy.report import accuracy_block, accuracy_summary, metric_label
from hdap_engine.accuracy.study import accuracy_columns
from tests.helpers.paths import SAMPLES


class _Data:
    """The few fields of `DetectionData` a block reads."""

    name = "shapes"
    num_classes = 4
    n_heldout = 10

    @staticmethod
    def describe_heldout():
        return "10 images held out of shapes"


def _acc(m, m50, ci=None):
    return DetectionAccuracy(map=m, map_50=m50, map_75=m, n_images=10, n_objects=30,
                             map_interval=ci, map_50_interval=ci and (ci[0] + .1, ci[1] + .1),
                             n_boot=50 if ci else 0)


def test_a_detector_block_names_its_metric_and_carries_both_maps_per_stage():
    block = accuracy_block(_Data(), unpruned=_acc(0.7, 0.9, (0.65, 0.75)), pruned=_acc(0.0, 0.01),
                           calibrated=0.5, n_calibration=8, metric="map_50")
    assert block["metric"] == "map_50" and metric_label(block) == "mAP@.5"
    assert block["unpruned"] == pytest.approx(0.9) and block["calibrated"] == 0.5
    assert block["metrics"]["map"]["unpruned"] == pytest.approx(0.7)
    assert block["metrics"]["map_50"]["pruned"] == pytest.approx(0.01)
    # a bare fraction is known only in the study's metric
    assert block["metrics"]["map_50"]["calibrated"] == 0.5
    assert block["metrics"]["map"]["calibrated"] is None
    assert block["ci95"]["unpruned"] == pytest.approx([0.75, 0.85])
    assert block["metrics_ci95"]["map"]["unpruned"] == pytest.approx([0.65, 0.75])
    line = accuracy_summary(block)
    assert line.startswith("accuracy (mAP@.5, 10 images") and "mAP@[.5:.95] unpruned 70.0%" in line
    assert set(accuracy_columns(block)) == {"pruned mAP@.5", "calibrated mAP@.5",
                                            "fine-tuned mAP@.5"}


def test_a_finetuned_stage_added_to_a_detector_block_carries_both_maps():
    from hdap_engine.accuracy.report import with_stage

    block = accuracy_block(_Data(), unpruned=_acc(0.7, 0.9), calibrated=_acc(0.2, 0.5),
                           metric="map_50")
    out = with_stage(block, "finetuned", _acc(0.68, 0.89, (0.6, 0.7)))
    assert out["finetuned"] == pytest.approx(0.89) and block["finetuned"] is None
    assert out["metrics"]["map"]["finetuned"] == pytest.approx(0.68)
    assert out["metrics_ci95"]["map"]["finetuned"] == pytest.approx([0.6, 0.7])
    assert out["ci95"]["finetuned"] == pytest.approx([0.7, 0.8])
    assert out["status"] == "measured: unpruned, calibrated, finetuned"
    assert accuracy_columns(out)["fine-tuned mAP@.5"] == "89.0%"


def test_metric_labels_of_classifier_and_unknown_blocks_stay_top1():
    assert metric_label(accuracy_block(None)) == "top-1"
    assert metric_label({"metric": "top1"}) == "top-1"
    assert metric_label({"metric": "map"}) == "mAP@[.5:.95]"
    assert "pruned top-1" in accuracy_columns(None)


# -- a whole study on the demo detector (its shipped weights) with a few shapes images -----

DET_WEIGHTS = str(SAMPLES / "detector_demo_shapes.pt")
# Small enough for a test: 4 sampled candidates, 8 + 8 calibration images, a short search.
QUICK = ["--samples", "20", "--population", "8", "--generations", "2", "--refine-rounds", "0",
         "--finalists", "2", "--restarts", "1", "--polish-rounds", "0",
         "--accuracy-samples", "4"]


@pytest.fixture(scope="module")
def shapes160(tmp_path_factory):
    """20 shapes images at the demo's 160x160 (another seed than its training data)."""
    from hdap_engine.data.shapes import ShapesOptions, write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes"),
                        ShapesOptions(images=20, size=160, seed=11))


@pytest.mark.slow
def test_cli_optimize_on_a_detector_refuses_a_map_floor_its_budget_cannot_meet(
        cli, small_fleet, shapes160, tmp_path):
    bad = cli("optimize", "--model", "detector_demo", "--model-weights", DET_WEIGHTS,
              "--data", str(shapes160), "--telemetry", str(small_fleet), *QUICK, "--quiet",
              "--macs", "0.3", "--min-accuracy", "0.999", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith("error: no candidate at 0.3 MACs reaches the floor 0.999 (")
    assert "calibrated mAP@.5" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_cli_optimize_fine_tuning_a_detector_checks_a_high_floor_after_training_and_draws(
        cli, small_fleet, shapes160, tmp_path):
    """A floor no candidate keeps before training (refused without fine-tuning, above) is
    searched at uniform's calibrated mAP and checked on the fine-tuned detector; the
    bundle and its zip get the detection picture."""
    import zipfile

    from PIL import Image

    out = tmp_path / "det"
    run = cli("optimize", "--model", "detector_demo", "--model-weights", DET_WEIGHTS,
              "--data", str(shapes160), "--telemetry", str(small_fleet), *QUICK, "--quiet",
              "--macs", "0.3", "--min-accuracy", "0.999", "--finetune-epochs", "1",
              "--out", str(out))
    assert run.returncode == 0, run.stderr
    acc = json.loads((out / "report.json").read_text())["accuracy"]
    floor = acc["floor"]
    assert floor["checked_on"] == "finetuned"
    assert floor["threshold"] == pytest.approx(floor["uniform_calibrated"])
    assert floor["requested_threshold"] > floor["threshold"]
    assert floor["chosen_calibrated"] >= floor["threshold"] - 1e-9
    assert floor["finetuned_met"] is False  # 99.9 % of the unpruned mAP after one epoch
    assert floor["finetuned_threshold"] == pytest.approx(0.999 * acc["unpruned"])
    assert "does NOT meet the floor" in run.stdout
    assert any("checked on the fine-tuned model" in n
               for n in json.loads((out / "report.json").read_text())["notes"])
    assert f"detections: {out / 'detections.png'}" in run.stdout
    with Image.open(out / "detections.png") as im:
        assert im.width > 2 * 160 and im.height > 160  # two panels side by side
    with zipfile.ZipFile(f"{out}.zip") as zf:
        assert "det/detections.png" in zf.namelist() and "det/report.json" in zf.namelist()


@pytest.mark.slow
def test_a_detector_study_job_keeps_its_floor_fine_tunes_and_its_bundle_fine_tunes_as_a_job(
        small_fleet, shapes160, tmp_path, monkeypatch):
    """The app's jobs: settings as plain JSON (what a worker process reads) carry the COCO
    data path, the model key, its weights and the metric."""
    from hdap_engine.jobs import execute
    from hdap_engine.jobs.finetune_jobs import finetune_settings
    from hdap_engine.latency.store import Store
    from tests.helpers.studies import quick_options

    monkeypatch.setenv("HDAP_HOME", str(tmp_path / "home"))
    options = quick_options(model="detector_demo", model_weights=DET_WEIGHTS,
                            data=str(shapes160), budget="0.6", min_accuracy="uniform",
                            accuracy_metric="map", finetune_epochs=1, samples=20,
                            population=8, generations=2, refine_rounds=0, finalists=2,
                            restarts=1, polish_rounds=0, accuracy_samples=4)
    settings = json.loads(json.dumps({"options": options.settings(),
                                      "telemetry": str(small_fleet), "compare": [],
                                      "sweep": False}))
    result = execute("study", settings, job_id=3, store=Store(tmp_path / "store.sqlite"))
    acc = result["report"]["accuracy"]
    assert acc["metric"] == "map" and acc["classes"] == 4
    assert acc["floor"]["metric"] == "map" and acc["floor"]["kind"] == "uniform"
    assert acc["floor"]["chosen_calibrated"] >= acc["floor"]["threshold"] - 1e-9
    assert acc["metrics"]["map_50"]["unpruned"] > 0.5  # the demo's weights find the shapes
    assert acc["unpruned"] == acc["metrics"]["map"]["unpruned"]
    assert acc["finetune"]["epochs"] == 1 and acc["metrics"]["map"]["finetuned"] is not None
    # the fine-tuned bundle kept the study's calibrated figures and its floor
    assert acc["metrics"]["map_50"]["calibrated"] is not None and acc["floor"]

    job = json.loads(json.dumps(finetune_settings(settings, bundle=result["bundle"],
                                                  data=str(shapes160), epochs=1, of_job=3)))
    tuned = execute("finetune", job)
    assert tuned["accuracy"]["metric"] == "map" and len(tuned["history"]) == 1
    assert tuned["history"][0]["val_map_50"] is not None
    assert tuned["report"]["finetuned_from"] == result["bundle"]


@pytest.fixture(scope="module")
def shapes64(tmp_path_factory):
    from hdap_engine.data.shapes import ShapesOptions, write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes64"),
                        ShapesOptions(images=12, size=64, seed=7))


@pytest.mark.slow
def test_a_detectors_calibrated_maps_are_cached_in_the_workspace(shapes64, tmp_path,
                                                                 monkeypatch):
    from hdap_engine.accuracy.study import prepare_accuracy
    from hdap_engine.pruning.space import PruningSpace

    monkeypatch.setenv("HDAP_HOME", str(tmp_path / "home"))
    space = PruningSpace.for_model("detector_demo")

    def prepare(metric):
        ctx = prepare_accuracy("detector_demo", None, shapes64, n_bn=3, n_eval=3, samples=4,
                               metric=metric)
        assert ctx.metric == metric and ctx.calib.n_bn == 3 and ctx.data.n_heldout == 2
        return ctx

    first = prepare("map_50").guide(space, 0.5 * space.base_macs)
    assert first.evaluator.evaluated == len(first.widths) + 1  # the unpruned one too
    again = prepare("map_50").guide(space, 0.5 * space.base_macs)
    assert again.evaluator.evaluated == 0  # a second study: all from the cache
    assert again.accuracy.tolist() == first.accuracy.tolist()
    # mAP@[.5:.95] is another score: its rows are not mAP@.5's
    assert prepare("map").calib.fingerprint != first.evaluator.calib.fingerprint
    assert first.summary()["metric"] == "map_50"


@pytest.mark.parametrize("model, kwargs, message", [
    ("resnet56", dict(metric="map"), "--accuracy-metric map is for detectors"),
    ("detector_demo", dict(mean="0.5"), "--mean / --std are for classifiers"),
    ("torchvision:ssdlite320_mobilenet_v3_large@3x64x64", {},
     "4 categories .5 classes with the background. but the model .random initialisation. "
     "have 91 class outputs"),
])
def test_a_detector_study_refuses_what_does_not_fit_in_one_line(shapes64, model, kwargs,
                                                                message):
    from hdap_engine.accuracy.study import prepare_accuracy
    from hdap_engine.errors import HdapError

    with pytest.raises(HdapError, match=message):
        prepare_accuracy(model, None, shapes64, n_bn=3, n_eval=3, **kwargs)


@pytest.mark.slow
def test_cli_bench_on_a_detector_gives_each_methods_calibrated_map(
        cli, small_fleet, shapes160, tmp_path):
    out = tmp_path / "bench.json"
    res = cli("bench", "--model", "detector_demo", "--model-weights", DET_WEIGHTS, "--data",
              str(shapes160), "--telemetry", str(small_fleet), "--macs", "0.6",
              "--methods", "hdap,uniform", "--min-accuracy", "uniform", *QUICK,
              "--json", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "calibrated mAP@.5" in res.stdout and "fine-tuned mAP@.5" in res.stdout
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    for row in rows.values():
        acc = row["accuracy"]
        assert acc["metric"] == "map_50"
        for m in ("map", "map_50"):
            assert all(acc["metrics"][m][s] is not None
                       for s in ("unpruned", "pruned", "calibrated"))
    floor = rows["hdap"]["search_accuracy"]
    assert floor["metric"] == "map_50" and floor["chosen_calibrated"] >= floor["threshold"] - 1e-9


@pytest.mark.slow
def test_cli_finetune_on_a_detector_bundle_reports_both_maps(cli, shapes160, tmp_path):
    bundle, tuned = tmp_path / "b", tmp_path / "t"
    res = cli("prune", "--model", "detector_demo", "--model-weights", DET_WEIGHTS, "--macs",
              "50%", "--out", str(bundle))
    assert res.returncode == 0, res.stderr
    args = ["finetune", str(bundle), "--data", str(shapes160), "--epochs", "1",
            "--batch-size", "4", "--model-weights", DET_WEIGHTS, "--out", str(tuned)]
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "epoch 1/1" in res.stdout and "held-out mAP@.5 on 4 images" in res.stdout
    assert "held-out mAP@[.5:.95]: unpruned" in res.stdout
    acc = json.loads((tuned / "report.json").read_text())["accuracy"]
    assert acc["metric"] == "map_50" and acc["finetune"]["optimizer"] == "adamw"
    assert acc["finetune"]["options"]["lr"] == 2e-3  # the detector's recipe, not SGD's 0.01
    assert acc["metrics"]["map"]["finetuned"] is not None
    assert acc["unpruned"] > 0.5  # the teacher: the shipped demo weights
    # a finished run's checkpoint is gone; --resume on the same --out refuses nothing new
    assert not (tuned / "checkpoint.pt").exists()


def test_a_fine_tuned_bench_row_is_checked_against_the_studys_floor_held_out():
    from hdap_engine.study.compare import _check_floor_finetuned

    block = {"unpruned": 0.9, "finetuned": 0.88}
    _check_floor_finetuned(block, "95%", "map_50")
    assert block["floor"]["finetuned_met"] is True
    assert block["floor"]["finetuned_threshold"] == pytest.approx(0.855)
    block = {"unpruned": 0.9, "finetuned": 0.88}
    _check_floor_finetuned(block, "-1pt", "map_50")
    assert block["floor"]["finetuned_met"] is False
    block = {"unpruned": 0.9, "finetuned": 0.88}
    _check_floor_finetuned(block, "uniform", "map_50")  # needs uniform fine-tuned: unchecked
    assert block["floor"]["finetuned_met"] is None
    block = {"unpruned": 0.9, "finetuned": 0.88}
    _check_floor_finetuned(block, None, "map_50")
    assert "floor" not in block
