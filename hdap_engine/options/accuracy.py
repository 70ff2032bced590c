"""The accuracy section of a study's options: labelled data, preprocessing, the floor.

One file per section that would push `hdap_engine.options.study` past the size the
architecture test allows; `StudyOptions.accuracy` is an `AccuracyPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdap_engine.errors import HdapError
from hdap_engine.options.base import option


@dataclass(frozen=True)
class AccuracyPlan:
    """Labelled data, its preprocessing, and the accuracy floor of the search.

    Without ``data`` nothing here runs and reports say accuracy is unknown.
    """

    data: str | None = option(None, flag="--data", parse="str", metavar="DIR|ZIP|digits",
                              help="labelled images the search calibrates on (an ImageFolder "
                                   "directory, a .zip of one, or 'digits'; for a detector COCO "
                                   "data: a folder with annotations.json, or a .zip of one)")
    val_data: str | None = option(None, flag="--val-data", parse="str", metavar="DIR|ZIP",
                                  help="held-out images every reported accuracy is measured "
                                       "on (default: a seeded stratified 20%% of --data)")
    mean: str | None = option(None, flag="--mean", parse="str", metavar="M|R,G,B",
                              help="normalisation mean (default: ImageNet's for 224x224 "
                                   "models, the data's own for 32x32 models)")
    std: str | None = option(None, flag="--std", parse="str", metavar="S|R,G,B",
                             help="normalisation std (defaults as --mean)")
    min_accuracy: str | None = option(
        None, flag="--min-accuracy", parse="str", metavar="0.9|95%|-2pt|uniform",
        help="accuracy floor of the search, after batch-norm re-estimation: a fraction of "
             "the unpruned model's (0.9, 95%%), a drop in points (-2pt), or 'uniform' (at "
             "least the uniform architecture at the same budget); needs --data")
    accuracy_metric: str | None = option(
        None, flag="--accuracy-metric", parse="str", choices=("map_50", "map"),
        help="a detector's accuracy: map_50 (mAP@.5, the default) or map (mAP@[.5:.95]); "
             "the floor, the accuracy surrogate and the report's stage values use it (a "
             "classifier's is top-1)")
    finetune_epochs: int = option(
        0, flag="--finetune-epochs", parse="int", metavar="N",
        help="fine-tune the exported model by distillation from the unpruned one for N "
             "epochs on --data (hdap_engine.finetune's recipe; default 0: no fine-tuning)")
    accuracy_samples: int = option(
        24, flag="--accuracy-samples", parse="positive_int", metavar="N",
        help="candidates pruned and calibrated per budget to train the accuracy surrogate "
             "(default %(default)s; at least 4)")
    calibration_images: int = 256  # forward passes that re-estimate batch norm
    calibration_eval: int = 512  # images the calibrated top-1 is measured on

    def __post_init__(self):
        if self.min_accuracy is not None:
            # Only here: the floor's parser is standard library, but its package is not.
            from hdap_engine.accuracy.floor import parse_floor

            parse_floor(self.min_accuracy)
            if not self.data:
                raise HdapError("--min-accuracy needs labelled data: give --data (an "
                                "ImageFolder directory, a .zip of one, or 'digits')")
        if self.accuracy_metric not in (None, "map_50", "map"):
            raise HdapError(f"--accuracy-metric {self.accuracy_metric!r}: use map_50 (mAP@.5) "
                            "or map (mAP@[.5:.95]); it is for detectors")
        if self.val_data and not self.data:
            raise HdapError("--val-data needs --data (the images the search calibrates on)")
        if self.finetune_epochs < 0:
            raise HdapError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if self.finetune_epochs and not self.data:
            raise HdapError("--finetune-epochs needs labelled data to train on: give --data "
                            "(an ImageFolder directory, a .zip of one, or 'digits')")
        if self.accuracy_samples < 4 or self.calibration_images < 2 or \
                self.calibration_eval < 1:
            raise HdapError("the accuracy surrogate needs at least 4 samples, batch norm at "
                            "least 2 images and scoring at least 1")
