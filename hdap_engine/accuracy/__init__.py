"""Accuracy: evaluation with a confidence interval, adaptive-BN calibration, the accuracy
surrogate, accuracy floors and the report block.

Modules: `evaluate` (``evaluate``, ``Evaluation``, ``wilson_interval``), `calibrate`
(``calibration_set``, ``recalibrate_bn``, ``calibrated_accuracy``, ``CalibratedEvaluator``),
`cache` (``AccuracyCache``), `surrogate` (``AccuracySurrogate``), `floor`
(``parse_floor``, ``AccuracyFloor``), `report` (``accuracy_block``).
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

__all__ = ["CalibratedEvaluator", "CalibrationSet", "Evaluation", "calibrated_accuracy",
           "calibration_set", "evaluate", "prune_candidate", "recalibrate_bn",
           "weights_digest", "wilson_interval"]
