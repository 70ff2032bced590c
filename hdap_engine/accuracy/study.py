"""Accuracy in a study: the prepared data, the guide for a budget, the held-out figures.

`prepare_accuracy` reads ``--data`` / ``--val-data`` once for a study: the
dataset checked against the model (classes from the weights), the
calibration set, the parsed floor and the unpruned model. It is read-only and
reused by every query. `AccuracyContext.guide` builds the `AccuracyGuide` of
one budget (its evaluations are cached in the workspace, so a second query
at the same budget evaluates nothing). `heldout_figures` measures the chosen
model on the held-out set: the unpruned model, right after pruning, and
after batch-norm re-estimation (that calibrated model is what is exported).

A detector (its spec's ``task == "detection"``) goes through the same functions: its
``--data`` is COCO (`hdap_engine.data.coco.load_coco`), its class count is checked
against the weights (`check_detector_classes`), its calibration set is a
`DetectionCalibrationSet` (adaptive BN on training images, mAP on a disjoint training
split) and its held-out figures are `DetectionAccuracy` (both mAPs). ``ctx.metric`` says
which: ``top1``, or ``--accuracy-metric`` (``map_50``, default, or ``map``), the metric
of the floor, the accuracy surrogate and the report's stage values.

Without ``--data`` none of this runs and reports say accuracy is unknown.

Public API
----------
``prepare_accuracy(model_name, model_weights, data, *, val_data=None, mean=None, std=None,
min_accuracy=None, seed=0, n_bn=256, n_eval=512, samples=24, metric=None) -> AccuracyContext``
``AccuracyContext``: ``.data``, ``.calib``, ``.model``, ``.floor``, ``.samples``, ``.metric``,
``.evaluate(model) -> Evaluation | DetectionAccuracy`` (held-out),
``.guide(space, target_macs, *, progress=None, budget_label=None) -> AccuracyGuide``,
``.heldout_unpruned(progress=None) -> Evaluation``
``heldout_figures(ctx, pruned_model, *, progress=None) -> dict`` of `Evaluation`
(``unpruned``, ``pruned``, ``calibrated``); ``pruned_model`` ends BN-recalibrated.
``candidate_accuracy(ctx, space, widths) -> dict``: held-out accuracy of one candidate
(pruned and calibrated) without touching anything else (bench rows).
``candidate_block(ctx, space, widths, *, floor=None) -> dict``: its report block (a block
saying accuracy is unknown when ``ctx`` is None).
``accuracy_columns(block) -> dict``: short strings for terminal tables.
``check_data(model_name, model_weights, data, *, val_data=None, seed=0) -> dict``: the
dataset read and checked as a study would, summed up (the app checks an upload with it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from hdap_engine.accuracy.calibrate import (
    CalibrationSet,
    calibration_set,
    default_threads,
    prune_candidate,
    torch_threads,
    weights_digest,
)
from hdap_engine.accuracy.detection import DetectionAccuracy, DetectionCalibrationSet
from hdap_engine.accuracy.evaluate import Evaluation, evaluate
from hdap_engine.accuracy.floor import AccuracyFloor, parse_floor
from hdap_engine.data.datasets import LabelledData, check_classes, load_data
from hdap_engine.errors import HdapError
from hdap_engine.infra.progress import Progress

DEFAULT_DETECTION_METRIC = "map_50"  # docs/detection.md says why


@dataclass(frozen=True)
class AccuracyContext:
    """What a study knows about accuracy before any query (read-only)."""

    data: LabelledData  # a detector's: `hdap_engine.data.coco.DetectionData`
    calib: CalibrationSet | DetectionCalibrationSet
    model: nn.Module  # the unpruned model with the user's weights; never modified
    model_key: str
    floor: AccuracyFloor | None
    samples: int = 24
    seed: int = 0
    weights_label: str = "random initialisation"  # which model weights (`zoo.weights_label`)
    n_boot: int = 0  # a detector's bootstrap resamples for held-out intervals (slow)
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def metric(self) -> str:
        """What accuracy is here: ``top1``, ``map_50`` or ``map``."""
        return self.calib.metric

    @property
    def is_detection(self) -> bool:
        return isinstance(self.calib, DetectionCalibrationSet)

    def evaluate(self, model: nn.Module, progress: Callable[[int, int], None] | None = None
                 ) -> Evaluation | DetectionAccuracy:
        """``model`` on the held-out set: top-1 (`Evaluation`) or both mAPs."""
        if self.is_detection:
            from hdap_engine.accuracy.detection import evaluate_detector

            return evaluate_detector(model, self.data.heldout, categories=self.data.categories,
                                     n_boot=self.n_boot, seed=self.seed)
        return evaluate(model, self.data.heldout, progress=progress)

    def guide(self, space, target_macs: float, *, floor: AccuracyFloor | None | str = "",
              progress: Progress | None = None, budget_label: str | None = None,
              finetune: bool = False):
        """The `AccuracyGuide` of one budget and floor (default: the prepared floor);
        evaluations are cached in the workspace. ``finetune``: the chosen model will be
        fine-tuned (`AccuracyGuide.prepare`)."""
        from hdap_engine.accuracy.guide import AccuracyGuide

        floor = self.floor if floor == "" else floor
        key = (space.model, round(float(target_macs)), None if floor is None else floor.text,
               bool(finetune))
        if key not in self._memo:
            self._memo[key] = AccuracyGuide.prepare(
                self.model, space, self.calib, target_macs, floor,
                samples=self.samples, seed=self.seed, progress=progress,
                budget_label=budget_label, finetune=finetune)
        return self._memo[key]

    def heldout_unpruned(self, progress: Callable[[int, int], None] | None = None
                         ) -> Evaluation:
        """The unpruned model on the held-out set (computed once)."""
        if "unpruned" not in self._memo:
            with torch_threads(default_threads()):
                self._memo["unpruned"] = self.evaluate(self.model, progress=progress)
        return self._memo["unpruned"]


def prepare_accuracy(model_name: str, model_weights, data, *, val_data=None, mean=None,
                     std=None, min_accuracy=None, seed: int = 0, n_bn: int = 256,
                     n_eval: int = 512, samples: int = 24, metric: str | None = None,
                     n_boot: int = 0) -> AccuracyContext:
    """Read the data, check it against the model, pick the calibration images.

    Parameters
    ----------
    model_name:
        Zoo model.
    model_weights:
        Its weights (as `hdap_engine.models.zoo.build_model` takes them); the
        classifier's size gives the number of classes.
    data, val_data, mean, std:
        As `hdap_engine.data.load_data` takes them (a detector: COCO data as
        `hdap_engine.data.coco.load_coco` takes it; ``mean`` / ``std`` are the detector's
        transform's and refused).
    min_accuracy:
        ``--min-accuracy`` text (or None).
    seed:
        Seed of the split, the calibration images and the sampled candidates.
    n_bn, n_eval:
        Calibration images (batch-norm statistics, scoring).
    samples:
        Candidates evaluated per budget for the accuracy surrogate.
    metric:
        A detector's metric (``map_50``, the default, or ``map``); a classifier's is top-1
        and refuses another.
    n_boot:
        A detector's bootstrap resamples for the held-out intervals (0: none).

    Returns
    -------
    `AccuracyContext`.
    """
    from hdap_engine.accuracy.detection import detection_calibration_set
    from hdap_engine.models.zoo import get_spec, weights_label

    floor = parse_floor(min_accuracy)  # a bad floor fails before any work
    detection = get_spec(model_name).task == "detection"
    if metric is not None and not detection:
        raise HdapError(f"--accuracy-metric {metric} is for detectors; {model_name} is a "
                        "classifier, whose accuracy is top-1: leave the flag out")
    model, labelled = _checked(model_name, model_weights, data, val_data=val_data, mean=mean,
                               std=std, seed=seed)
    label = weights_label(model_weights, model_name)
    if detection:
        calib = detection_calibration_set(labelled, n_bn=n_bn, n_eval=n_eval, seed=seed,
                                          metric=metric or DEFAULT_DETECTION_METRIC)
    else:
        calib = calibration_set(labelled, n_bn=n_bn, n_eval=n_eval, seed=seed)
    return AccuracyContext(data=labelled, calib=calib, model=model,
                           model_key=f"{model_name}:{weights_digest(model)}", floor=floor,
                           samples=samples, seed=seed, weights_label=label, n_boot=n_boot)


def _checked(model_name: str, model_weights, data, *, val_data=None, mean=None, std=None,
             seed: int = 0):
    """(unpruned model, `LabelledData`): the data read for the model, its classes checked
    against the weights' classifier (the weights decide the number of classes)."""
    from hdap_engine.models.zoo import build_model, get_spec, num_classes_of, weights_label

    detection = get_spec(model_name).task == "detection"
    if detection and (mean is not None or std is not None):
        raise HdapError("--mean / --std are for classifiers; a detector normalises images "
                        "with its own transform: leave them out")
    model = build_model(model_name, model_weights, seed=seed)
    if detection:
        from hdap_engine.data.coco import load_coco

        labelled = load_coco(data, val_data=val_data, seed=seed)
    else:
        labelled = load_data(data, model=model_name, val_data=val_data, mean=mean, std=std,
                             seed=seed)
    named = (f"the weights in {Path(model_weights).name}"
             if isinstance(model_weights, (str, Path)) and model_weights not in ("random",
                                                                                "pretrained")
             else f"the model ({weights_label(model_weights, model_name)})")
    if detection:
        from hdap_engine.data.coco import check_detector_classes

        check_detector_classes(labelled, num_classes_of(model, model_name), weights_name=named)
    else:
        check_classes(labelled, num_classes_of(model, model_name), weights_name=named)
    return model, labelled


def check_data(model_name: str, model_weights, data, *, val_data=None, seed: int = 0) -> dict:
    """Read labelled data as a study would and check it against the model; sum it up.

    Everything a study refuses is refused here, with the same message (a bad or
    unsafe zip, no class folders, one class, no readable images, a class count that
    differs from the weights' classifier), so a page can check an upload before any
    job is queued. A detector's data is COCO (`hdap_engine.data.coco.load_coco`: one
    line per fault, such as a box outside its image, an unknown category, a missing
    image file, an empty annotation file), its categories checked against the
    detector's class outputs.

    Parameters
    ----------
    model_name, model_weights:
        The zoo model and its weights (they decide the number of classes).
    data, val_data:
        As `hdap_engine.data.load_data` (a classifier) or `load_coco` (a detector) takes
        them.
    seed:
        Seed of the held-out split.

    Returns
    -------
    ``{task, dataset, classes, class_names, n_train, n_heldout, heldout, skipped, notes}``
    (``task``: the model's, "classification" or "detection"; a detector's ``classes``
    are its categories, without the background).
    """
    from hdap_engine.models.zoo import get_spec

    _, ld = _checked(model_name, model_weights, data, val_data=val_data, seed=seed)
    names = getattr(ld, "classes", None) or ld.categories  # a detector's: its categories
    return {"task": get_spec(model_name).task, "dataset": ld.name, "classes": ld.num_classes,
            "class_names": list(names), "n_train": ld.n_train, "n_heldout": ld.n_heldout,
            "heldout": ld.describe_heldout(),
            "skipped": int(getattr(ld, "skipped", 0)), "notes": list(ld.notes)}


def heldout_figures(ctx: AccuracyContext, pruned_model: nn.Module, *,
                    progress: Progress | None = None) -> dict[str, Evaluation]:
    """Held-out accuracy of the unpruned model, of ``pruned_model`` as pruned, and after
    batch-norm re-estimation on the calibration images (``pruned_model`` is left so).

    Parameters
    ----------
    ctx:
        The prepared accuracy context.
    pruned_model:
        The chosen candidate, pruned (L2); its batch norms are re-estimated in place.
    progress:
        Called with ("accuracy", step, 3).

    Returns
    -------
    ``{"unpruned", "pruned", "calibrated"}`` -> `Evaluation` (a detector's:
    `DetectionAccuracy`).
    """
    def tick(step):
        if progress is not None:
            progress("accuracy", step, 3)

    tick(0)
    out = {"unpruned": ctx.heldout_unpruned()}
    tick(1)
    with torch_threads(default_threads()):
        out["pruned"] = ctx.evaluate(pruned_model)
        tick(2)
        ctx.calib.recalibrate(pruned_model)
        out["calibrated"] = ctx.evaluate(pruned_model)
    tick(3)
    return out


def candidate_accuracy(ctx: AccuracyContext, space, widths) -> dict[str, Evaluation]:
    """Held-out accuracy of one candidate, pruned and calibrated (the model is not touched)."""
    with torch_threads(default_threads()):
        pruned = prune_candidate(ctx.model, space, widths)
    return heldout_figures(ctx, pruned)



def candidate_block(ctx: AccuracyContext | None, space, widths, *,
                    floor: dict | None = None) -> dict:
    """The ``accuracy`` block of one candidate (bench rows, sweep points).

    Parameters
    ----------
    ctx:
        The study's accuracy context, or None (the block says accuracy is unknown).
    space:
        The pruning space.
    widths:
        The candidate.
    floor:
        The floor the candidate was searched under (``AccuracyGuide.summary()``).

    Returns
    -------
    `hdap_engine.accuracy.report.accuracy_block`'s dict.
    """
    from hdap_engine.accuracy.report import accuracy_block

    if ctx is None:
        return accuracy_block(None)
    figures = candidate_accuracy(ctx, space, widths)
    return accuracy_block(ctx.data, **figures, n_calibration=ctx.calib.n_bn, floor=floor,
                          metric=ctx.metric)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def accuracy_columns(block: dict | None) -> dict[str, str]:
    """``{"pruned top-1", "calibrated top-1", "fine-tuned top-1"}`` as short strings,
    named after the block's metric (`metric_label`: ``"pruned mAP@.5"`` for a detector)."""
    from hdap_engine.accuracy.report import metric_label

    block = block or {}
    label = metric_label(block)
    return {f"pruned {label}": _pct(block.get("pruned")),
            f"calibrated {label}": _pct(block.get("calibrated")),
            f"fine-tuned {label}": _pct(block.get("finetuned"))}
