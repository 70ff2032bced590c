"""Detection inside a study: the report's accuracy block, COCO data in a study, floors on mAP."""

from __future__ import annotations

import pytest

from hdap_engine.accuracy.detection import DetectionAccuracy
from hdap_engine.accuracy.report import accuracy_block, accuracy_summary, metric_label
from hdap_engine.accuracy.study import accuracy_columns


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


def test_metric_labels_of_classifier_and_unknown_blocks_stay_top1():
    assert metric_label(accuracy_block(None)) == "top-1"
    assert metric_label({"metric": "top1"}) == "top-1"
    assert metric_label({"metric": "map"}) == "mAP@[.5:.95]"
    assert "pruned top-1" in accuracy_columns(None)
