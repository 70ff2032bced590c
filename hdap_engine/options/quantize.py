"""How the shipped INT8 model is calibrated: `QuantizePlan`, a section of `StudyOptions`."""

from __future__ import annotations

from dataclasses import dataclass

from hdap_engine.errors import HdapError
from hdap_engine.options.base import one_of, option

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_SOURCES = ("data", "random")


@dataclass(frozen=True)
class QuantizePlan:
    """How the shipped INT8 model is calibrated (`hdap_engine.quantize`); read only with
    ``--precision int8``.

    Post-training static quantisation by ONNX Runtime (QDQ, per-channel weights,
    symmetric activations) calibrated on ``quant_images`` images of ``--data``,
    preprocessed as for evaluation. Without labelled data the only calibration is
    on random inputs, and only when asked for (``--calibrate-on random``): the
    report then carries the warning.
    """

    calibration: str = option("minmax", flag="--calibration", choices=CALIBRATION_METHODS,
                              help="INT8 calibration: activation ranges from min/max, "
                                   "entropy (KL) or a percentile (default %(default)s)")
    calibrate_on: str = option("data", flag="--calibrate-on", choices=CALIBRATION_SOURCES,
                               help="INT8 calibration images: the --data images, or random "
                                    "inputs (no data; the INT8 accuracy is then unknown and "
                                    "the report warns) (default %(default)s)")
    quant_images: int = option(256, flag="--quant-images", parse="positive_int", metavar="N",
                               help="images the INT8 model is calibrated on (default "
                                    "%(default)s; at least 2)")
    ptq_threshold: float = option(1.0, flag="--ptq-threshold", parse="float", metavar="POINTS",
                                  help="top-1 points INT8 may lose against FP32 before the "
                                       "report suggests quantisation-aware fine-tuning "
                                       "(default %(default)s)")
    timing_images: int = 8  # calibration images of a candidate quantised only to be timed

    def __post_init__(self):
        one_of("calibration", self.calibration, CALIBRATION_METHODS)
        one_of("calibration source", self.calibrate_on, CALIBRATION_SOURCES)
        if self.quant_images < 2:
            raise HdapError(f"INT8 calibration needs at least 2 images (activation ranges "
                            f"from one image clip every other input), got {self.quant_images}")
        if self.timing_images < 2:
            raise HdapError("timing_images must be at least 2")
        if self.ptq_threshold < 0:
            raise HdapError(f"--ptq-threshold must be >= 0 points, got {self.ptq_threshold}")
