"""The detection picture: two detectors' boxes side by side on one chosen held-out image;
and the report's accuracy chart naming a detector's metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from hdap_engine.data.coco import load_coco
from hdap_engine.data.shapes import write_shapes
from hdap_engine.errors import HdapError
from hdap_engine.options import ShapesOptions
from hdap_engine.report.detections import choose_image, detections_picture
from tests.helpers.detectors import tiny_ssd
from tests.helpers.paths import ROOT


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = write_shapes(tmp_path_factory.mktemp("shapes"),
                       ShapesOptions(images=10, size=64, seed=5))
    return load_coco(out, val_fraction=0.4, seed=0)


def test_the_chosen_image_is_the_held_out_one_with_most_objects(shapes):
    counts = [len(r.labels) for r in shapes.heldout.records]
    i = choose_image(shapes.heldout)
    assert counts[i] == max(counts) and counts.index(max(counts)) == i


def test_picture_puts_both_detectors_side_by_side_and_draws_their_boxes(shapes):
    a, b = tiny_ssd(seed=1), tiny_ssd(seed=2)
    # A random tiny SSD scores every anchor about 1/5: a threshold of 0 keeps its boxes.
    pic = detections_picture(a, b, shapes.heldout, categories=shapes.categories,
                             score_threshold=0.0, titles=("unpruned", "pruned"))
    left, right = pic.panels
    assert left.title == "unpruned" and right.title == "pruned"
    assert len(left.boxes) > 0 and len(right.boxes) > 0
    assert set(left.labels) <= set(shapes.categories) and min(left.scores) >= 0.0
    # 64-pixel images are drawn 5x (320 px) in two panels with a gap, under a title bar.
    assert pic.image.size == (2 * 320 + 8, 320 + 26)
    assert pic.png().startswith(b"\x89PNG")
    assert "unpruned" in pic.caption() and pic.file_name in pic.caption()
    # Same models, same data: the same bytes (the app caches it, a bundle keeps it).
    again = detections_picture(a, b, shapes.heldout, categories=shapes.categories,
                               score_threshold=0.0)
    assert again.png() == pic.png()


def test_a_threshold_above_every_score_draws_the_bare_image(shapes):
    a = tiny_ssd(seed=1)
    pic = detections_picture(a, a, shapes.heldout, categories=shapes.categories,
                             score_threshold=1.0)
    assert all(len(p.boxes) == 0 for p in pic.panels)
    image, _ = shapes.heldout[pic.index]
    panel = np.asarray(pic.image)[26:26 + 320, :320]
    want = np.kron((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                   np.ones((5, 5, 1), dtype=np.uint8))
    assert np.array_equal(panel, want)


@pytest.mark.parametrize(("kwargs", "words"), [({"score_threshold": 1.5}, "score threshold"),
                                               ({"index": 99}, "no image 99")])
def test_bad_picture_arguments_are_one_line(shapes, kwargs, words):
    a = tiny_ssd(seed=1)
    with pytest.raises(HdapError, match=words):
        detections_picture(a, a, shapes.heldout, categories=shapes.categories, **kwargs)


def test_the_demo_detector_labels_shapes_by_name_above_the_threshold(tmp_path):
    from hdap_engine.models.zoo import build_model

    out = write_shapes(tmp_path, ShapesOptions(images=4, size=160, seed=123))
    data = load_coco(out, val_fraction=0.5, seed=0)
    model = build_model("detector_demo", str(ROOT / "sample_data" / "detector_demo_shapes.pt"))
    pic = detections_picture(model, model, data.heldout, categories=data.categories)
    left, right = pic.panels
    assert left.boxes == right.boxes and left.labels == right.labels  # one model twice
    assert left.boxes and all(s >= 0.5 for s in left.scores)
    # Every box it is sure of is a labelled object of that class (IoU above 0.5).
    record = data.heldout.records[pic.index]
    iou = box_iou(torch.tensor(left.boxes), torch.from_numpy(record.boxes))
    best = iou.max(dim=1)
    assert (best.values > 0.5).all()
    assert [data.categories[int(record.labels[j]) - 1] for j in best.indices] == \
        list(left.labels)


def test_a_studys_picture_reads_its_bundle_and_lands_in_the_bundle_folder(tmp_path):
    from hdap_engine.export.bundle import export_bundle
    from hdap_engine.pruning.baseline import prune_baseline
    from hdap_engine.report.detections import PICTURE_FILE, study_detectors, write_study_picture

    weights = str(ROOT / "sample_data" / "detector_demo_shapes.pt")
    pruned = prune_baseline("detector_demo", "0.5", model_weights=weights)
    bundle = export_bundle(pruned.model, pruned.space, pruned.widths, tmp_path / "b",
                           pruned.report, kept=pruned.kept, formats=())
    data = write_shapes(tmp_path / "shapes", ShapesOptions(images=6, size=160, seed=3))
    study = study_detectors(bundle, "detector_demo", weights, data)
    assert study.titles[0] == "unpruned (38.8 M MACs)" and study.titles[1].startswith("pruned (")
    # Pruned to half its MACs without batch-norm re-estimation, it finds none of the shapes
    # the trained detector finds: the picture shows the loss that mAP measures.
    pic = study.picture()
    assert len(pic.panels[0].boxes) > 0 and len(pic.panels[1].boxes) < len(pic.panels[0].boxes)
    path = write_study_picture(bundle, "detector_demo", weights, data)
    assert path == bundle / PICTURE_FILE and path.read_bytes() == pic.png()


@pytest.mark.parametrize(("metric", "axis"), [("map_50", "mAP@.5 (%)"), ("top1", "top-1 (%)")])
def test_the_accuracy_chart_names_the_reports_metric(metric, axis):
    from hdap_engine.report.charts import study_figures

    point = {"method": "hdap", "macs": 2e7, "fleet_mean_ms": 2.5, "p95_ms": 4.0,
             "speedup": 1.2, "accuracy": {"calibrated": 0.4, "metric": metric}}
    report = {"measured_source": "twin (simulated)", "macs": 2e7,
              "clusters": [{"cluster": 0, "share": 1.0, "measured_ms": 2.5}],
              "fleet": {"measured_mean_ms": 2.5, "unpruned_mean_ms": 3.0},
              "accuracy": {"metric": metric, "unpruned": 0.9, "calibrated": 0.4}}
    figs = study_figures(report, widths={"g": 8}, base_widths={"g": 16},
                         sweep={"points": [point], "measured_source": "twin (simulated)"})
    assert figs["accuracy_pareto"].layout.yaxis.title.text == axis
