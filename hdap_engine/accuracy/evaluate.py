"""Top-1 / top-5 accuracy of a classifier on labelled images, with a 95 % interval.

Metrics are torchmetrics' (``MulticlassAccuracy``, micro average, which is the
plain share of correct predictions); top-5 is reported when the model has more
than 10 classes (with 10 or fewer it says little). The 95 % interval is
Wilson's score interval for a binomial proportion: unlike the normal
approximation it stays inside [0, 1] and is honest near 100 %, where pruned
models on small held-out sets live.

Public API
----------
``evaluate(model, data, *, batch_size=256, progress=None, device=None) -> Evaluation``
    ``data`` is a torch ``Dataset`` of ``(image, label)`` or a pair of tensors
    ``(images, labels)``; ``progress(done, total)`` is called after each batch.
``wilson_interval(correct, n, z=1.96) -> (low, high)``
``Evaluation``: ``top1``, ``top5`` (None at <= 10 classes), ``n``, ``correct``,
``ci95`` (low, high), ``seconds``, ``images_per_s``; ``.as_dict()``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hdap_engine.errors import HdapError

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Evaluation:
    """The result of one evaluation (accuracies are fractions 0..1)."""

    top1: float
    top5: float | None
    n: int
    correct: int
    ci95: tuple[float, float]
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "n": self.n, "correct": self.correct,
                "ci95": [self.ci95[0], self.ci95[1]], "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 1)}


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``correct / n``.

    Parameters
    ----------
    correct:
        Successes.
    n:
        Trials (> 0).
    z:
        Normal quantile (1.96 for 95 %).

    Returns
    -------
    ``(low, high)`` within [0, 1].
    """
    if n <= 0:
        raise HdapError("an accuracy interval needs at least one image")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; floating point leaves 1e-17.
    low = 0.0 if correct <= 0 else max(0.0, centre - half)
    high = 1.0 if correct >= n else min(1.0, centre + half)
    return low, high


def _loader(data, batch_size: int) -> DataLoader:
    if isinstance(data, tuple):
        images, labels = data
        data = TensorDataset(images, torch.as_tensor(labels, dtype=torch.int64))
    if not isinstance(data, Dataset):
        raise TypeError(f"expected a Dataset or (images, labels), got {type(data).__name__}")
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)


def evaluate(model: nn.Module, data, *, batch_size: int = 256,
             progress: Callable[[int, int], None] | None = None,
             device: str | torch.device | None = None) -> Evaluation:
    """Accuracy of ``model`` on ``data``, batched, without gradients, in eval mode.

    Parameters
    ----------
    model:
        A classifier returning logits (N, classes). Its train/eval mode is restored.
    data:
        A ``Dataset`` yielding ``(image, label)`` or a tuple ``(images, labels)``.
    batch_size:
        Images per forward pass.
    progress:
        Called as ``progress(images_done, images_total)`` after every batch.
    device:
        Where to run (default: where the model's parameters are).

    Returns
    -------
    `Evaluation`.
    """
    from torchmetrics.classification import MulticlassAccuracy

    loader = _loader(data, batch_size)
    total = len(loader.dataset)
    if total == 0:
        raise HdapError("nothing to evaluate: the dataset has no images")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    top1 = top5 = None
    done = correct = 0
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                logits = model(images)
                if top1 is None:
                    classes = int(logits.shape[1])
                    top1 = MulticlassAccuracy(classes, top_k=1, average="micro").to(device)
                    if classes > 10:
                        top5 = MulticlassAccuracy(classes, top_k=5, average="micro").to(device)
                if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
                    raise HdapError(f"a label ({int(labels.max())}) is outside the model's "
                                    f"{logits.shape[1]} classes; the dataset does not fit the "
                                    "model")
                top1.update(logits, labels)
                if top5 is not None:
                    top5.update(logits, labels)
                correct += int((logits.argmax(1) == labels).sum())
                done += len(labels)
                if progress is not None:
                    progress(done, total)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    acc = float(top1.compute())
    return Evaluation(top1=acc, top5=None if top5 is None else float(top5.compute()),
                      n=done, correct=correct, ci95=wilson_interval(correct, done),
                      seconds=seconds)
