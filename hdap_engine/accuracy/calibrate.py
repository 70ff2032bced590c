"""Cheap accuracy of a candidate: prune, re-estimate batch norm, evaluate (adaptive BN).

EagleEye (Li et al., ECCV 2020) showed that a pruned network scored right
after pruning ranks candidates badly, because its batch-norm running
statistics still describe the unpruned network's activations; re-estimating
them on a few hundred training images (forward passes in train mode, no
gradients) gives an accuracy that ranks candidates like their fine-tuned
accuracy, at the cost of a few forward passes. That is the "calibrated
accuracy" the search uses.

Only the batch-norm layers are put in train mode (dropout stays off, so it
cannot disturb the statistics); each running mean / variance is reset and
re-estimated as a cumulative average (``momentum=None``) over all the
calibration images, so the order of batches does not matter.

The calibration images come from ``--data`` (never from the held-out set):
``n_bn`` images for the statistics and a disjoint ``n_eval`` images on which
top-1 is measured, both stratified and seeded.

Public API
----------
``calibration_set(data, *, n_bn=256, n_eval=512, seed=0) -> CalibrationSet``
``CalibrationSet``: ``.recalibrate(model)``, ``.score(model) -> float``, ``.metric``;
`hdap_engine.accuracy.detection.DetectionCalibrationSet` is a detector's, with the same
interface (batch norm on training images, mAP on a disjoint split), so everything below
works for both.
``recalibrate_bn(model, images, *, batch_size=128) -> model`` (in place)
``prune_candidate(model, space, widths) -> nn.Module`` (a pruned copy, L2 importance)
``calibrated_accuracy(model, space, widths, calib) -> float``
``CalibratedEvaluator(model, space, calib, *, model_key, cache=None)``: ``.unpruned()``,
``.accuracy(widths)``, ``.many(list_of_widths, progress=None) -> np.ndarray``, with every
result cached (`hdap_engine.accuracy.cache.AccuracyCache`), so nothing is evaluated twice.
``weights_digest(model) -> str``: a hash of a model's state dict, for cache keys.
``torch_threads(n)``: a context manager; ``default_threads()``: half the cores.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hdap_engine.accuracy.evaluate import evaluate
from hdap_engine.data.datasets import LabelledData, materialise, stratified_indices
from hdap_engine.errors import HdapError
from hdap_engine.pruning.space import PruningSpace

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class CalibrationSet:
    """Images for batch-norm statistics and a disjoint labelled split for top-1."""

    bn_images: torch.Tensor
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    fingerprint: str  # the dataset's fingerprint plus the split's sizes and seed
    metric: str = "top1"  # what `score` measures (a detector's set: map_50 or map)

    @property
    def n_bn(self) -> int:
        return int(self.bn_images.shape[0])

    @property
    def n_eval(self) -> int:
        return int(self.eval_images.shape[0])

    def recalibrate(self, model: nn.Module) -> nn.Module:
        """Re-estimate ``model``'s batch norms on the batch-norm images (in place)."""
        return recalibrate_bn(model, self.bn_images)

    def score(self, model: nn.Module) -> float:
        """Top-1 of ``model`` on the scoring images."""
        return evaluate(model, (self.eval_images, self.eval_labels)).top1


def calibration_set(data: LabelledData, *, n_bn: int = 256, n_eval: int = 512,
                    seed: int = 0) -> CalibrationSet:
    """Pick the calibration images from ``data.train`` (stratified, seeded, disjoint).

    Parameters
    ----------
    data:
        The loaded dataset (`hdap_engine.data.load_data`).
    n_bn:
        Images whose forward passes re-estimate the batch-norm statistics.
    n_eval:
        Labelled images on which the calibrated top-1 is measured. When
        ``data.train`` has fewer than ``n_bn + n_eval`` images, both shrink in
        proportion.
    seed:
        Seed of the choice.

    Returns
    -------
    `CalibrationSet`.
    """
    if n_bn < 1 or n_eval < 1:
        raise HdapError("calibration needs at least one image for batch norm and one to score")
    labels = np.asarray(data.train_labels)
    total = len(labels)
    if total < 2:
        raise HdapError(f"{data.name}: {total} training image is too few to calibrate on")
    if n_bn + n_eval > total:
        n_eval = max(1, int(round(total * n_eval / (n_bn + n_eval))))
        n_bn = total - n_eval
    eval_idx = stratified_indices(labels, n_eval, seed)
    rest = np.setdiff1d(np.arange(total), eval_idx)
    bn_idx = rest[stratified_indices(labels[rest], n_bn, seed + 1)]
    bn_x, _ = materialise(data.train, bn_idx)
    ev_x, ev_y = materialise(data.train, eval_idx)
    key = hashlib.sha256(f"{data.fingerprint}|{n_bn}|{n_eval}|{seed}".encode()).hexdigest()
    return CalibrationSet(bn_x, ev_x, ev_y, key[:24])


def recalibrate_bn(model: nn.Module, images: torch.Tensor, *,
                   batch_size: int = 128) -> nn.Module:
    """Reset and re-estimate every batch norm's running statistics on ``images``.

    Parameters
    ----------
    model:
        Modified in place; left in eval mode.
    images:
        (N, C, H, W) preprocessed images.
    batch_size:
        Images per forward pass (batch statistics need more than one image).

    Returns
    -------
    ``model``.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if not bns:
        return model.eval()
    saved = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
        m.train()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size]
                if len(batch) < 2 and start > 0:
                    break  # a lone last image adds nothing and breaks BN1d
                model(batch)
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.eval()
    return model


def prune_candidate(model: nn.Module, space: PruningSpace, widths) -> nn.Module:
    """A pruned copy of ``model`` (L2 magnitude importance; ``model`` is untouched)."""
    from hdap_engine.pruning.apply import prune_to_widths

    pruned = copy.deepcopy(model).eval()
    prune_to_widths(pruned, space, widths, importance="l2")
    return pruned


def calibrated_accuracy(model: nn.Module, space: PruningSpace, widths,
                        calib: CalibrationSet) -> float:
    """The calibration split's score (top-1, or a detector's mAP) of ``model`` pruned to
    ``widths``, BN re-estimated.

    Parameters
    ----------
    model:
        The unpruned model (not modified).
    space:
        Its pruning space.
    widths:
        The candidate.
    calib:
        From `calibration_set`.

    Returns
    -------
    A fraction in ``calib.metric``.
    """
    pruned = prune_candidate(model, space, widths)
    calib.recalibrate(pruned)
    return calib.score(pruned)


def default_threads() -> int:
    """PyTorch threads for calibration: half the cores (at least one).

    Measured on the 2-core build machine with other jobs running: ResNet-56
    calibration of one candidate took 13 s with 2 threads and 1.2 s with one;
    oversubscribed threads spin against each other.
    """
    return max(1, (os.cpu_count() or 2) // 2)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` PyTorch threads (None: unchanged), restoring the count after."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 (first 24 hex digits) of a model's state dict: names, shapes and values."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:24]


class CalibratedEvaluator:
    """Calibrated accuracy of candidates of one model on one calibration set, cached.

    Parameters
    ----------
    model:
        The unpruned model (not modified).
    space:
        Its pruning space.
    calib:
        The calibration set (a classifier's or a detector's; its ``metric`` is what is
        scored and cached).
    model_key:
        Names the model in the cache (default: ``space.model`` + `weights_digest`).
    cache:
        An `AccuracyCache` (default: the workspace's); ``False`` for none.
    threads:
        PyTorch threads while evaluating (default `default_threads`; None: unchanged).
    """

    def __init__(self, model: nn.Module, space: PruningSpace, calib: CalibrationSet, *,
                 model_key: str | None = None, cache=None, threads: int | None = -1):
        from hdap_engine.accuracy.cache import AccuracyCache

        self.model = model.eval()
        self.space = space
        self.calib = calib
        self.model_key = model_key or f"{space.model}:{weights_digest(model)}"
        self.cache = AccuracyCache() if cache is None else (cache or None)
        self.evaluated = 0  # candidates actually evaluated (not from the cache)
        self.threads = default_threads() if threads == -1 else threads

    def unpruned(self) -> float:
        """Calibrated top-1 of the unpruned model (BN re-estimated on the same images)."""
        return float(self.many([self.space.base_widths])[0])

    def accuracy(self, widths) -> float:
        """Calibrated top-1 of one candidate."""
        return float(self.many([widths])[0])

    def many(self, candidates: Sequence, progress: Callable[[int, int], None] | None = None
             ) -> np.ndarray:
        """Calibrated top-1 of each candidate (cached ones are not evaluated again).

        Parameters
        ----------
        candidates:
            Widths of each candidate.
        progress:
            Called as ``progress(done, total)`` after each candidate.

        Returns
        -------
        Fractions, shape (N,).
        """
        from hdap_engine.latency.store import widths_key

        rows = [self.space.check_widths(w) for w in candidates]
        keys = [widths_key(w) for w in rows]
        known = (self.cache.get(self.model_key, self.calib.fingerprint, keys)
                 if self.cache is not None else {})
        out = np.empty(len(rows))
        fresh: dict[str, float] = {}
        for i, (w, k) in enumerate(zip(rows, keys, strict=True)):
            if k in known:
                out[i] = known[k]
            elif k in fresh:
                out[i] = fresh[k]
            else:
                with torch_threads(self.threads):
                    out[i] = fresh[k] = calibrated_accuracy(self.model, self.space, w,
                                                            self.calib)
                self.evaluated += 1
                if self.cache is not None:
                    self.cache.put(self.model_key, self.calib.fingerprint, {k: out[i]},
                                   n_eval=self.calib.n_eval)
            if progress is not None:
                progress(i + 1, len(rows))
        return out
