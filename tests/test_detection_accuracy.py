"""Detection accuracy: COCO mAP through torchmetrics, its bootstrap, adaptive BN, floors on mAP."""

from __future__ import annotations

import pytest
import torch

from hdap_engine.accuracy.detection import (
    evaluate_detector,
    mean_average_precision,
    recalibrate_detector_bn,
)
from hdap_engine.accuracy.floor import check_reachable, parse_floor
from hdap_engine.data.coco import load_coco
from hdap_engine.data.shapes import write_shapes
from hdap_engine.errors import HdapError
from hdap_engine.options import ShapesOptions
from tests.helpers.detectors import tiny_ssd


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = write_shapes(tmp_path_factory.mktemp("shapes"),
                       ShapesOptions(images=10, size=64, seed=5))
    return load_coco(out, val_fraction=0.4, seed=0)


def _targets():
    return [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 5.0, 60.0, 20.0]]),
             "labels": torch.tensor([1, 2])},
            {"boxes": torch.tensor([[0.0, 0.0, 20.0, 40.0]]), "labels": torch.tensor([3])}]


def _as_preds(targets, shift=0.0, labels=None):
    return [{"boxes": t["boxes"] + shift, "scores": torch.full((len(t["labels"]),), 0.9),
             "labels": t["labels"] if labels is None else torch.full_like(t["labels"], labels)}
            for t in targets]


def test_perfect_boxes_score_one_and_shifted_boxes_lose_only_the_strict_thresholds():
    t = _targets()
    perfect = mean_average_precision(_as_preds(t), t, categories=["a", "b", "c"])
    assert perfect.map == pytest.approx(1.0) and perfect.map_50 == pytest.approx(1.0)
    assert perfect.per_class == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})
    assert perfect.n_images == 2 and perfect.n_objects == 3
    # A 3-pixel shift keeps IoU above 0.5 for every box but not above 0.95.
    shifted = mean_average_precision(_as_preds(t, shift=3.0), t)
    assert shifted.map_50 == pytest.approx(1.0) and shifted.map < 0.8
    wrong = mean_average_precision(_as_preds(t, labels=4), t)
    assert wrong.map == 0.0 and wrong.map_50 == 0.0


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    t = _targets() * 4
    preds = _as_preds(t, shift=2.0)
    preds[1]["labels"] = torch.tensor([2])  # one image wrong: resamples differ
    a = mean_average_precision(preds, t, n_boot=30, seed=1)
    b = mean_average_precision(preds, t, n_boot=30, seed=1)
    lo, hi = a.map_50_interval
    assert a.map_50_interval == b.map_50_interval and lo <= a.map_50 <= hi and lo < hi
    assert a.as_dict()["n_boot"] == 30
    assert mean_average_precision(preds, t).map_50_interval is None


def test_no_labelled_box_is_one_clear_error():
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    with pytest.raises(HdapError, match="at least one labelled box"):
        mean_average_precision(_as_preds(empty), empty)


def test_evaluate_detector_runs_a_torchvision_detector_on_the_heldout_split(shapes):
    model = tiny_ssd(shapes.num_classes + 1)
    model.train()
    acc = evaluate_detector(model, shapes.heldout, categories=shapes.categories)
    assert model.training  # mode restored
    assert acc.n_images == shapes.n_heldout == 4
    assert 0.0 <= acc.map <= acc.map_50 <= 1.0
    assert acc.metric("map_50") == acc.map_50
    with pytest.raises(HdapError, match="unknown detection metric"):
        acc.metric("top1")


def test_adaptive_bn_reestimates_statistics_whatever_the_order(shapes):
    images = [shapes.train[i][0] for i in range(len(shapes.train))]
    model = tiny_ssd(shapes.num_classes + 1)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before, momentum = bn.running_mean.clone(), bn.momentum
    recalibrate_detector_bn(model, images, batch_size=3)
    first = bn.running_mean.clone()
    assert not torch.allclose(first, before)
    assert bn.momentum == momentum and not bn.training and not model.training
    recalibrate_detector_bn(model, images[::-1], batch_size=2)
    assert torch.allclose(bn.running_mean, first, atol=1e-5)


def test_floors_work_on_map_with_the_metric_named():
    floor = parse_floor("95%")
    assert floor.threshold(0.80) == pytest.approx(0.76)
    assert "calibrated mAP@.5" in floor.describe("map_50")
    assert parse_floor("-2pt").threshold(0.80) == pytest.approx(0.78)
    with pytest.raises(HdapError, match=r"calibrated mAP@.5.*calibrates to 70.0% \(0.8[78]"):
        check_reachable(floor, 0.76, 0.70, 0.80, "50%", metric="map_50")
    with pytest.raises(HdapError, match="not 'iou'"):
        floor.describe("iou")
