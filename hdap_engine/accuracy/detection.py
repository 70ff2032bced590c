"""Detection accuracy: mAP@[.5:.95] and mAP@.5, and adaptive BN for detectors.

mAP is torchmetrics' ``MeanAveragePrecision`` with the ``pycocotools`` backend:
COCO's own evaluation code, so a figure here means what "COCO mAP" means
everywhere (101-point interpolated precision, IoU thresholds .50:.05:.95, up to
100 detections per image, areas of all sizes). ``faster_coco_eval`` gives the
same numbers faster but is a second compiled dependency with its own release
cycle; the reference wins for a number people compare.

A detector here is any module with torchvision's detection interface: in eval
mode ``model(list of (3, H, W) float images in [0, 1]) -> list of {"boxes" (N, 4)
xyxy pixels, "labels", "scores"}``.

The interval: mAP is not a mean over images, so the binomial interval of top-1
does not apply. ``n_boot > 0`` gives a percentile bootstrap over *images*
(images are the independent units; objects in one image are not): resample the
held-out images with replacement, recompute mAP, take the 2.5th and 97.5th
percentiles. Each resample is a full COCO evaluation (~0.1 s per hundred
images), so it is off by default for the search and on for reports.

Adaptive BN (EagleEye, see `hdap_engine.accuracy.calibrate`): a pruned
detector's batch-norm statistics belong to the unpruned one. Detectors' train
forward needs targets and computes losses, so the statistics are re-estimated
with the model in *eval* mode and only its batch-norm layers in train mode:
the eval forward (transform, backbone, neck, head, post-processing) runs on
training images and every batch norm on the way re-estimates its statistics.

Public API
----------
``DetectionAccuracy``: ``map``, ``map_50``, ``map_75``, ``map_50_interval``,
``map_interval``, ``per_class`` (AP@[.5:.95] by category name), ``n_images``,
``n_objects``, ``.as_dict()``, ``.metric(name)``.
``evaluate_detector(model, dataset, *, categories=None, batch_size=8, n_boot=0,
seed=0, max_images=None) -> DetectionAccuracy``
``predict(model, dataset, *, batch_size=8) -> (predictions, targets)``
``mean_average_precision(predictions, targets, *, n_boot=0, seed=0, categories=None)``
``recalibrate_detector_bn(model, images, *, batch_size=8) -> model`` (in place)
``METRICS``: the metric names a floor or a report can name (``map``, ``map_50``).
``detection_calibration_set(data, *, n_bn=256, n_eval=512, seed=0, metric="map_50")
-> DetectionCalibrationSet``: a detector's calibration images (batch norm) and a disjoint
scoring split, both from the training part; ``.recalibrate(model)``, ``.score(model)``,
the interface of `hdap_engine.accuracy.calibrate.CalibrationSet`, so the search's
calibrated evaluations, their cache and the accuracy surrogate work on mAP unchanged.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from hdap_engine.errors import HdapError

METRICS = {"map": "mAP@[.5:.95]", "map_50": "mAP@.5"}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class DetectionAccuracy:
    """mAP of a detector on a labelled set (fractions in [0, 1])."""

    map: float
    map_50: float
    map_75: float
    n_images: int
    n_objects: int
    per_class: dict[str, float] = field(default_factory=dict)
    map_interval: tuple[float, float] | None = None  # 95 % bootstrap over images
    map_50_interval: tuple[float, float] | None = None
    n_boot: int = 0

    def metric(self, name: str) -> float:
        """``map`` or ``map_50`` by name (what a floor is measured on)."""
        if name not in METRICS:
            raise HdapError(f"unknown detection metric {name!r}; use one of "
                            f"{', '.join(METRICS)}")
        return float(getattr(self, name))

    def as_dict(self) -> dict:
        """Plain JSON for reports."""
        return {"map": self.map, "map_50": self.map_50, "map_75": self.map_75,
                "map_interval": None if self.map_interval is None else list(self.map_interval),
                "map_50_interval": (None if self.map_50_interval is None
                                    else list(self.map_50_interval)),
                "n_boot": self.n_boot, "n_images": self.n_images,
                "n_objects": self.n_objects, "per_class": dict(self.per_class),
                "backend": "torchmetrics MeanAveragePrecision (pycocotools)"}


def _images_of(batch) -> list[torch.Tensor]:
    return [b[0] for b in batch]


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, *, batch_size: int = 8,
            indices: Sequence[int] | None = None):
    """The detector's outputs and the ground truth, image by image, on the CPU.

    Parameters
    ----------
    model:
        A detector (torchvision's interface); put in eval mode and restored after.
    dataset:
        Yields ``(image, {"boxes", "labels"})``.
    batch_size:
        Images per forward call.
    indices:
        Which items (default all).

    Returns
    -------
    ``(predictions, targets)``: two lists of dicts of tensors.
    """
    was = model.training
    model.eval()
    device = next(iter(model.parameters())).device
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    preds, targets = [], []
    try:
        for start in range(0, len(idx), batch_size):
            batch = [dataset[i] for i in idx[start:start + batch_size]]
            out = model([b[0].to(device) for b in batch])
            for o, (_, t) in zip(out, batch, strict=True):
                preds.append({k: o[k].detach().cpu() for k in ("boxes", "scores", "labels")})
                targets.append({"boxes": t["boxes"], "labels": t["labels"]})
    finally:
        model.train(was)
    return preds, targets


def _compute(preds, targets, class_metrics: bool) -> dict:
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
                                  class_metrics=class_metrics, backend="pycocotools")
    # COCO keeps the 100 best detections per image: its rule, kept on purpose, so
    # torchmetrics' warning about detectors that return more (SSD: 300) is off.
    metric.warn_on_many_detections = False
    metric.update(preds, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric.compute()


def _clean(v: float) -> float:
    # COCO reports -1 where a quantity is undefined (no ground truth); say 0 instead:
    # a set with objects always defines mAP, and a class with no objects is left out.
    return max(0.0, float(v))


def mean_average_precision(preds: list[dict], targets: list[dict], *, n_boot: int = 0,
                           seed: int = 0,
                           categories: Sequence[str] | None = None) -> DetectionAccuracy:
    """mAP of predictions against targets, with an optional bootstrap over images.

    Parameters
    ----------
    preds, targets:
        One dict per image (`predict`'s output).
    n_boot:
        Bootstrap resamples for the 95 % intervals (0: none).
    seed:
        Seed of the resampling.
    categories:
        Names of labels 1..K, for ``per_class``.

    Returns
    -------
    `DetectionAccuracy`.
    """
    n_objects = int(sum(len(t["labels"]) for t in targets))
    if not targets or n_objects == 0:
        raise HdapError("mAP needs held-out images with at least one labelled box; the "
                        "held-out set has none")
    res = _compute(preds, targets, class_metrics=categories is not None)
    per_class = {}
    if categories is not None:
        classes = res["classes"].reshape(-1).tolist()
        values = res["map_per_class"].reshape(-1).tolist()
        for c, v in zip(classes, values, strict=True):
            if 1 <= int(c) <= len(categories) and v >= 0:
                per_class[categories[int(c) - 1]] = float(v)
    intervals = [None, None]
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(n_boot):
            pick = rng.integers(0, len(targets), size=len(targets))
            r = _compute([preds[i] for i in pick], [targets[i] for i in pick], False)
            draws.append((_clean(r["map"]), _clean(r["map_50"])))
        arr = np.asarray(draws)
        lo, hi = np.percentile(arr, [2.5, 97.5], axis=0)
        intervals = [(float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))]
    return DetectionAccuracy(map=_clean(res["map"]), map_50=_clean(res["map_50"]),
                             map_75=_clean(res["map_75"]), n_images=len(targets),
                             n_objects=n_objects, per_class=per_class,
                             map_interval=intervals[0], map_50_interval=intervals[1],
                             n_boot=int(n_boot))


def evaluate_detector(model: nn.Module, dataset: Dataset, *,
                      categories: Sequence[str] | None = None, batch_size: int = 8,
                      n_boot: int = 0, seed: int = 0,
                      max_images: int | None = None) -> DetectionAccuracy:
    """mAP@[.5:.95] and mAP@.5 of a detector on a labelled set (the held-out split).

    Parameters
    ----------
    model:
        A detector with torchvision's interface.
    dataset:
        ``(image, target)`` pairs (`hdap_engine.data.coco.DetectionData.heldout`).
    categories:
        Category names of labels 1..K (per-class AP in the result).
    batch_size:
        Images per forward call.
    n_boot:
        Bootstrap resamples over images for 95 % intervals (0: none).
    seed:
        Seed of the bootstrap and of the subset when ``max_images`` cuts.
    max_images:
        Evaluate on a seeded subset of this many images (None: all).

    Returns
    -------
    `DetectionAccuracy`.
    """
    if len(dataset) == 0:
        raise HdapError("the held-out set is empty; mAP needs labelled images")
    indices = None
    if max_images is not None and max_images < len(dataset):
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(dataset), size=max_images, replace=False)).tolist()
    preds, targets = predict(model, dataset, batch_size=batch_size, indices=indices)
    return mean_average_precision(preds, targets, n_boot=n_boot, seed=seed,
                                  categories=categories)


@torch.no_grad()
def recalibrate_detector_bn(model: nn.Module, images: Sequence[torch.Tensor], *,
                            batch_size: int = 8) -> nn.Module:
    """Re-estimate a detector's batch-norm statistics on training images (in place).

    Parameters
    ----------
    model:
        A detector (torchvision's interface); left in eval mode.
    images:
        Training images, (3, H, W) float in [0, 1] (never held-out ones).
    batch_size:
        Images per forward call (the statistics are a cumulative average, so it
        changes nothing but memory).

    Returns
    -------
    The same model.
    """
    if len(images) == 0:
        raise HdapError("batch-norm calibration needs at least one training image")
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if not bns:
        return model
    model.eval()
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
        m.train()
    device = next(iter(model.parameters())).device
    # A lone last image would meet 1x1 feature maps (SSD's extra layers) with one
    # value per channel, which batch norm refuses in train mode: it joins the batch before.
    starts = list(range(0, len(images), max(2, batch_size)))
    if len(starts) > 1 and len(images) - starts[-1] == 1:
        starts.pop()
    bounds = list(zip(starts, starts[1:] + [len(images)], strict=True))
    try:
        for lo, hi in bounds:
            model([im.to(device) for im in images[lo:hi]])
    finally:
        for m, (momentum, training) in zip(bns, saved, strict=True):
            m.momentum = momentum
            m.train(training)
    model.eval()
    return model


@dataclass(frozen=True)
class DetectionCalibrationSet:
    """A detector's calibration split: images for batch norm, a disjoint labelled set to
    score mAP on (both from the training part, never held-out images)."""

    bn_images: tuple[torch.Tensor, ...]
    eval_set: Dataset
    fingerprint: str  # the dataset's, the split's sizes and seed, and the metric
    metric: str = "map_50"

    @property
    def n_bn(self) -> int:
        return len(self.bn_images)

    @property
    def n_eval(self) -> int:
        return len(self.eval_set)

    def recalibrate(self, model: nn.Module) -> nn.Module:
        """Adaptive BN on the batch-norm images (`recalibrate_detector_bn`, in place)."""
        return recalibrate_detector_bn(model, self.bn_images)

    def score(self, model: nn.Module) -> float:
        """``metric`` of ``model`` on the scoring images (no bootstrap: the search's many
        evaluations need only the value)."""
        return evaluate_detector(model, self.eval_set).metric(self.metric)


def detection_calibration_set(data, *, n_bn: int = 256, n_eval: int = 512, seed: int = 0,
                              metric: str = "map_50") -> DetectionCalibrationSet:
    """Pick a detector's calibration images from ``data.train`` (seeded, disjoint).

    Parameters
    ----------
    data:
        `hdap_engine.data.coco.DetectionData`.
    n_bn:
        Images whose forward passes re-estimate batch norm.
    n_eval:
        Images the calibrated mAP is scored on. When the training part has fewer than
        ``n_bn + n_eval`` images, both shrink in proportion.
    seed:
        Seed of the choice.
    metric:
        ``map_50`` or ``map``: what `DetectionCalibrationSet.score` returns.

    Returns
    -------
    `DetectionCalibrationSet`.
    """
    from hdap_engine.data.coco import CocoImages

    if metric not in METRICS:
        raise HdapError(f"unknown detection metric {metric!r}; use one of {', '.join(METRICS)}")
    if n_bn < 1 or n_eval < 1:
        raise HdapError("calibration needs at least one image for batch norm and one to score")
    total = len(data.train)
    if total < 3:
        raise HdapError(f"{data.name}: {total} training images are too few to calibrate a "
                        "detector on (batch norm needs two, scoring one)")
    if n_bn + n_eval > total:
        n_eval = max(1, int(round(total * n_eval / (n_bn + n_eval))))
        n_bn = total - n_eval
    n_bn = max(2, n_bn) if total - n_eval >= 2 else n_bn
    # Images, not objects, are the units: one image's boxes never straddle the two parts.
    order = np.random.default_rng(seed).permutation(total)
    eval_idx, bn_idx = np.sort(order[:n_eval]), np.sort(order[n_eval:n_eval + n_bn])
    records = data.train.records
    bn_images = tuple(data.train[int(i)][0] for i in bn_idx)
    eval_set = CocoImages([records[int(i)] for i in eval_idx])
    key = hashlib.sha256(f"{data.fingerprint}|{n_bn}|{n_eval}|{seed}|{metric}".encode())
    return DetectionCalibrationSet(bn_images, eval_set, key.hexdigest()[:24], metric)
