"""Accuracy in a study: the prepared data, the guide for a budget, the held-out figures.

`prepare_accuracy` reads ``--data`` / ``--val-data`` once for a study: the
dataset checked against the model (classes from the weights), the
calibration set, the parsed floor and the unpruned model. It is read-only and
reused by every query. `AccuracyContext.guide` builds the `AccuracyGuide` of
one budget (its evaluations are cached in the workspace, so a second query
at the same budget evaluates nothing). `heldout_figures` measures the chosen
model on the held-out set: the unpruned model, right after pruning, and
after batch-norm re-estimation (that calibrated model is what is exported).

Without ``--data`` none of this runs and reports say accuracy is unknown.

Public API
----------
``prepare_accuracy(model_name, model_weights, data, *, val_data=None, mean=None, std=None,
min_accuracy=None, seed=0, n_bn=256, n_eval=512, samples=24) -> AccuracyContext``
``AccuracyContext``: ``.data``, ``.calib``, ``.model``, ``.floor``, ``.samples``,
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
    recalibrate_bn,
    torch_threads,
    weights_digest,
)
from hdap_engine.accuracy.evaluate import Evaluation, evaluate
from hdap_engine.accuracy.floor import AccuracyFloor, parse_floor
from hdap_engine.data.datasets import LabelledData, check_classes, load_data
from hdap_engine.infra.progress import Progress


@dataclass(frozen=True)
class AccuracyContext:
    """What a study knows about accuracy before any query (read-only)."""

    data: LabelledData
    calib: CalibrationSet
    model: nn.Module  # the unpruned model with the user's weights; never modified
    model_key: str
    floor: AccuracyFloor | None
    samples: int = 24
    seed: int = 0
    weights_label: str = "random initialisation"  # which model weights (`zoo.weights_label`)
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def guide(self, space, target_macs: float, *, floor: AccuracyFloor | None | str = "",
              progress: Progress | None = None, budget_label: str | None = None):
        """The `AccuracyGuide` of one budget and floor (default: the prepared floor);
        evaluations are cached in the workspace."""
        from hdap_engine.accuracy.guide import AccuracyGuide

        floor = self.floor if floor == "" else floor
        key = (space.model, round(float(target_macs)), None if floor is None else floor.text)
        if key not in self._memo:
            self._memo[key] = AccuracyGuide.prepare(
                self.model, space, self.calib, target_macs, floor,
                samples=self.samples, seed=self.seed, progress=progress,
                budget_label=budget_label)
        return self._memo[key]

    def heldout_unpruned(self, progress: Callable[[int, int], None] | None = None
                         ) -> Evaluation:
        """The unpruned model on the held-out set (computed once)."""
        if "unpruned" not in self._memo:
            with torch_threads(default_threads()):
                self._memo["unpruned"] = evaluate(self.model, self.data.heldout,
                                                  progress=progress)
        return self._memo["unpruned"]


def prepare_accuracy(model_name: str, model_weights, data, *, val_data=None, mean=None,
                     std=None, min_accuracy=None, seed: int = 0, n_bn: int = 256,
                     n_eval: int = 512, samples: int = 24) -> AccuracyContext:
    """Read the data, check it against the model, pick the calibration images.

    Parameters
    ----------
    model_name:
        Zoo model.
    model_weights:
        Its weights (as `hdap_engine.models.zoo.build_model` takes them); the
        classifier's size gives the number of classes.
    data, val_data, mean, std:
        As `hdap_engine.data.load_data` takes them.
    min_accuracy:
        ``--min-accuracy`` text (or None).
    seed:
        Seed of the split, the calibration images and the sampled candidates.
    n_bn, n_eval:
        Calibration images (batch-norm statistics, scoring).
    samples:
        Candidates evaluated per budget for the accuracy surrogate.

    Returns
    -------
    `AccuracyContext`.
    """
    from hdap_engine.models.zoo import weights_label

    floor = parse_floor(min_accuracy)  # a bad floor fails before any work
    model, labelled = _checked(model_name, model_weights, data, val_data=val_data, mean=mean,
                               std=std, seed=seed)
    label = weights_label(model_weights, model_name)
    calib = calibration_set(labelled, n_bn=n_bn, n_eval=n_eval, seed=seed)
    return AccuracyContext(data=labelled, calib=calib, model=model,
                           model_key=f"{model_name}:{weights_digest(model)}", floor=floor,
                           samples=samples, seed=seed, weights_label=label)


def _checked(model_name: str, model_weights, data, *, val_data=None, mean=None, std=None,
             seed: int = 0):
    """(unpruned model, `LabelledData`): the data read for the model, its classes checked
    against the weights' classifier (the weights decide the number of classes)."""
    from hdap_engine.models.zoo import build_model, num_classes_of

    model = build_model(model_name, model_weights, seed=seed)
    labelled = load_data(data, model=model_name, val_data=val_data, mean=mean, std=std,
                         seed=seed)
    check_classes(labelled, num_classes_of(model, model_name),
                  weights_name=_weights_named(model_weights, model_name))
    return model, labelled


def _weights_named(model_weights, model_name: str) -> str:
    """The weights as a class-count message names them: the file, or where they came from."""
    from hdap_engine.models.zoo import weights_label

    if isinstance(model_weights, (str, Path)) and model_weights not in ("random", "pretrained"):
        return f"the weights in {Path(model_weights).name}"
    return f"the model ({weights_label(model_weights, model_name)})"


def check_data(model_name: str, model_weights, data, *, val_data=None, seed: int = 0) -> dict:
    """Read labelled data as a study would and check it against the model; sum it up.

    Everything a study refuses is refused here, with the same message (a bad or
    unsafe zip, no class folders, one class, no readable images, a class count that
    differs from the weights' classifier), so a page can check an upload before any
    job is queued. A detector's data is COCO (`hdap_engine.data.coco.load_coco`, one
    line per fault: a box outside its image, an unknown category, a missing image
    file, an empty annotation file), its categories checked against the detector's
    class outputs (`check_detector_classes`).

    Parameters
    ----------
    model_name, model_weights:
        The zoo model and its weights (they decide the number of classes).
    data, val_data:
        As `hdap_engine.data.load_data` (a classifier) or `load_coco` (a detector)
        takes them.
    seed:
        Seed of the held-out split.

    Returns
    -------
    ``{task, dataset, classes, class_names, n_train, n_heldout, heldout, skipped, notes}``
    (``task``: "classification" or "detection"; a detector's ``classes`` are its
    categories, without the background).
    """
    from hdap_engine.models.zoo import get_spec

    if get_spec(model_name).task == "detection":
        return _check_detection_data(model_name, model_weights, data, val_data=val_data,
                                     seed=seed)
    _, ld = _checked(model_name, model_weights, data, val_data=val_data, seed=seed)
    return {"task": "classification", "dataset": ld.name, "classes": ld.num_classes,
            "class_names": list(ld.classes), "n_train": ld.n_train,
            "n_heldout": ld.n_heldout, "heldout": ld.describe_heldout(),
            "skipped": int(ld.skipped), "notes": list(ld.notes)}


def _check_detection_data(model_name: str, model_weights, data, *, val_data=None,
                          seed: int = 0) -> dict:
    from hdap_engine.data.coco import check_detector_classes, load_coco
    from hdap_engine.models.zoo import build_model, num_classes_of

    detection = load_coco(data, val_data=val_data, seed=seed)  # data faults before a build
    model = build_model(model_name, model_weights, seed=seed)
    check_detector_classes(detection, num_classes_of(model, model_name),
                           weights_name=_weights_named(model_weights, model_name))
    return {"task": "detection", "dataset": detection.name,
            "classes": detection.num_classes, "class_names": list(detection.categories),
            "n_train": detection.n_train, "n_heldout": detection.n_heldout,
            "heldout": detection.describe_heldout(), "skipped": 0,
            "notes": list(detection.notes)}


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
    ``{"unpruned", "pruned", "calibrated"}`` -> `Evaluation`.
    """
    def tick(step):
        if progress is not None:
            progress("accuracy", step, 3)

    tick(0)
    out = {"unpruned": ctx.heldout_unpruned()}
    tick(1)
    with torch_threads(default_threads()):
        out["pruned"] = evaluate(pruned_model, ctx.data.heldout)
        tick(2)
        recalibrate_bn(pruned_model, ctx.calib.bn_images)
        out["calibrated"] = evaluate(pruned_model, ctx.data.heldout)
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
    return accuracy_block(ctx.data, **figures, n_calibration=ctx.calib.n_bn, floor=floor)


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
