"""Accuracy: evaluation with a confidence interval, adaptive-BN calibration, the accuracy
surrogate, accuracy floors and the report block.

Modules: `evaluate` (``evaluate``, ``Evaluation``, ``wilson_interval``), `calibrate`
(``calibration_set``, ``recalibrate_bn``, ``calibrated_accuracy``, ``CalibratedEvaluator``),
`cache` (``AccuracyCache``), `surrogate` (``AccuracySurrogate``), `floor`
(``parse_floor``, ``AccuracyFloor``), `guide` (``AccuracyGuide``), `study`
(``prepare_accuracy``, ``heldout_figures``), `report` (``accuracy_block``), `detection`
(``evaluate_detector``, ``DetectionAccuracy``, ``recalibrate_detector_bn``: mAP, imported
from its module so that classification never loads torchmetrics).
"""

from hdap_engine.accuracy.calibrate import (
    CalibratedEvaluator,
    CalibrationSet,
    calibrated_accuracy,
    calibration_set,
    prune_candidate,
    recalibrate_bn,
    weights_digest,
)
from hdap_engine.accuracy.evaluate import Evaluation, evaluate, wilson_interval
from hdap_engine.accuracy.floor import AccuracyFloor, check_reachable, parse_floor
from hdap_engine.accuracy.guide import AccuracyGuide
from hdap_engine.accuracy.report import accuracy_block, preprocess_block
from hdap_engine.accuracy.surrogate import AccuracySurrogate

__all__ = ["AccuracyFloor", "AccuracyGuide", "AccuracySurrogate", "accuracy_block",
           "check_reachable",
           "parse_floor", "preprocess_block", "CalibratedEvaluator", "CalibrationSet", "Evaluation", "calibrated_accuracy",
           "calibration_set", "evaluate", "prune_candidate", "recalibrate_bn",
           "weights_digest", "wilson_interval"]
