"""Labelled images for calibration, fine-tuning and evaluation.

A dataset is named by one string:

- an ImageFolder directory (one subfolder per class; PNG, JPEG, BMP, WebP and
  the other formats torchvision's ``ImageFolder`` reads, grayscale or colour);
- a ``.zip`` of one (extracted safely, see `hdap_engine.data.safezip`; a zip
  whose only top-level entry is the dataset folder works too);
- ``digits``: scikit-learn's bundled 1,797 8x8 digit images (10 classes),
  which ships with scikit-learn, so the demo and the tests need no download.

Decoding is torchvision's (``ImageFolder``'s PIL loader, which converts every
image to RGB, so grayscale becomes three equal channels); preprocessing is
``torchvision.transforms.v2`` and follows the model: resize to its input size,
three channels, normalise with mean / std. Defaults: ImageNet's statistics
for 224x224 models (their weights are trained on them), the per-channel
statistics of the ``--data`` images for 32x32 models (CIFAR-style models are
trained on their own data's statistics). The choice is recorded in
`Preprocess.as_dict` so that anyone can reproduce a number.

``--data`` is what calibration and fine-tuning use; ``--val-data`` is the
held-out set every reported accuracy is measured on. Without it, a seeded
stratified split of ``--data`` is held out and `LabelledData.heldout_source`
says so.

Public API
----------
``load_data(data, *, model, val_data=None, mean=None, std=None, val_fraction=0.2,
seed=0) -> LabelledData``
    Read and check a dataset for a zoo model. ``train`` and ``heldout`` are
    torch ``Dataset`` objects yielding ``(image, label)``: ``image`` a float32
    tensor (3, H, W), already resized and normalised; ``label`` an int.
``check_classes(data, num_classes, *, weights_name="the model's weights") -> None``
    Refuse a dataset whose class count differs from the model's.
``materialise(dataset, indices=None, *, batch_size=256) -> (images, labels)``
    Stack (a subset of) a dataset into tensors (N, 3, H, W) and (N,).
``stratified_indices(labels, n, seed) -> np.ndarray``
    ``n`` indices with every class represented in proportion.
``Preprocess(size, mean, std, channels=3, stats="...")``
    The preprocessing, with ``.transform()`` (a v2 transform for PIL images or
    uint8/float tensors) and ``.as_dict()`` -> ``{size, mean, std, channels, stats}``.
``DIGITS``, ``IMAGENET_MEAN``, ``IMAGENET_STD``.

Every problem a user can cause is one `HdapError` that names it: a missing
path, an empty folder, one class, no readable images, a class folder with no
readable image, a class with too few images to split, held-out classes that
differ from the training classes. A few unreadable images are skipped and
counted (`LabelledData.skipped`, one line in `LabelledData.notes`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from hdap_engine.data.sources import DIGITS, IMAGE_EXTENSIONS, WithTransform, read_source
from hdap_engine.errors import HdapError

__all__ = ["DIGITS", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "LabelledData",
           "Preprocess", "check_classes", "load_data", "materialise", "stratified_indices"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_STATS_IMAGES = 2048  # images used for per-channel statistics (plenty for 3 numbers)


@dataclass(frozen=True)
class Preprocess:
    """How images become model inputs.

    Parameters
    ----------
    size:
        (height, width) of the model input.
    mean, std:
        Per-channel normalisation (after scaling to [0, 1]).
    channels:
        Input channels (3: grayscale is repeated).
    stats:
        Where mean / std come from: ``"imagenet"``, ``"data"`` or ``"user"``.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    stats: str = "imagenet"

    def transform(self):
        """The v2 transform: PIL image or (C, H, W) tensor -> normalised float32 (3, H, W)."""
        from torchvision.transforms import v2

        return v2.Compose([self.geometry(), v2.Normalize(list(self.mean), list(self.std)),
                           v2.ToPureTensor()])

    def geometry(self):
        """The transform without normalisation: -> float32 in [0, 1], 3 channels, model size."""
        from torchvision.transforms import v2

        return v2.Compose([v2.ToImage(), v2.RGB(), v2.ToDtype(torch.float32, scale=True),
                           v2.Resize(list(self.size), antialias=True), v2.ToPureTensor()])

    def as_dict(self) -> dict:
        """``{size, mean, std, channels, stats}`` for reports (plain JSON)."""
        return {"size": [int(s) for s in self.size],
                "mean": [round(float(m), 6) for m in self.mean],
                "std": [round(float(s), 6) for s in self.std],
                "channels": int(self.channels), "stats": self.stats}


@dataclass(frozen=True)
class LabelledData:
    """A checked dataset: training / calibration part, held-out part, preprocessing.

    ``train`` and ``heldout`` yield ``(float32 tensor (3, H, W), int label)``.
    ``train_labels`` / ``heldout_labels`` are the labels in dataset order (for
    stratified subsets and samplers without touching the images).
    """

    name: str
    classes: tuple[str, ...]
    train: Dataset
    heldout: Dataset
    train_labels: np.ndarray
    heldout_labels: np.ndarray
    heldout_source: str  # "val-data" or "split"
    preprocess: Preprocess
    fingerprint: str
    skipped: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    val_name: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def n_train(self) -> int:
        return len(self.train_labels)

    @property
    def n_heldout(self) -> int:
        return len(self.heldout_labels)

    def describe_heldout(self) -> str:
        """One line for reports: where the held-out accuracy comes from."""
        if self.heldout_source == "val-data":
            return f"{self.n_heldout} images of {self.val_name}"
        return (f"{self.n_heldout} images held out of {self.name} "
                "(seeded stratified split; no --val-data given)")


# -- public functions ----------------------------------------------------------------------
def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices into ``labels`` (all when ``n >= len``), classes in proportion, sorted.

    Parameters
    ----------
    labels:
        Label of every item.
    n:
        How many to take.
    seed:
        Seed of the choice.

    Returns
    -------
    Sorted int64 indices.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # Round-robin over classes in a random order: every class gets its share.
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    frac = n / len(labels)
    take = [idx[: max(1, int(round(frac * len(idx))))] for idx in by_class]
    chosen = np.concatenate(take)
    if len(chosen) > n:
        chosen = rng.permutation(chosen)[:n]
    elif len(chosen) < n:
        rest = np.setdiff1d(order, chosen, assume_unique=True)
        chosen = np.concatenate([chosen, rest[: n - len(chosen)]])
    return np.sort(chosen).astype(np.int64)


def materialise(dataset: Dataset, indices: Sequence[int] | None = None, *,
                batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (a subset of) a dataset into tensors.

    Parameters
    ----------
    dataset:
        Yields ``(image tensor, int label)``.
    indices:
        Which items (default all).
    batch_size:
        Items decoded per batch.

    Returns
    -------
    ``(images (N, C, H, W) float32, labels (N,) int64)``.
    """
    from torch.utils.data import DataLoader

    ds = dataset if indices is None else Subset(dataset, [int(i) for i in indices])
    xs, ys = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        xs.append(x)
        ys.append(torch.as_tensor(y, dtype=torch.int64))
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return torch.cat(xs), torch.cat(ys)


def _parse_stats(value, label: str) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parts = [float(v) for v in value.replace(" ", "").split(",") if v]
        except ValueError:
            raise HdapError(f"{label} must be one number or three numbers separated by commas "
                            f"(e.g. 0.485,0.456,0.406), got {value!r}") from None
    else:
        parts = [float(v) for v in np.atleast_1d(value)]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or not all(np.isfinite(parts)):
        raise HdapError(f"{label} must be one number or three (one per channel), got {value!r}")
    return tuple(parts)


def load_data(data: str | Path, *, model: str, val_data: str | Path | None = None,
              mean=None, std=None, val_fraction: float = 0.2, seed: int = 0) -> LabelledData:
    """Read and check a labelled dataset for a zoo model.

    Parameters
    ----------
    data:
        ImageFolder directory, ``.zip`` of one, or ``"digits"`` (``--data``).
    model:
        Zoo model name: its input shape decides the size; 224x224 models default
        to ImageNet's mean / std, 32x32 models to the data's own statistics.
    val_data:
        Held-out dataset (``--val-data``), same classes; without it a seeded
        stratified ``val_fraction`` of ``data`` is held out.
    mean, std:
        Override the normalisation: one number, three numbers, or ``"a,b,c"``.
    val_fraction:
        Share of ``data`` held out when ``val_data`` is not given.
    seed:
        Seed of the split.

    Returns
    -------
    `LabelledData`.
    """
    from hdap_engine.models.zoo import get_spec

    spec = get_spec(model)
    channels, height, width = spec.input_shape
    user_mean, user_std = _parse_stats(mean, "--mean"), _parse_stats(std, "--std")
    if user_std is not None and min(user_std) <= 0:
        raise HdapError(f"--std must be positive, got {std!r}")
    if not 0 < val_fraction < 1:
        raise HdapError(f"the held-out fraction must be in (0, 1), got {val_fraction}")
    geometry = Preprocess((height, width), (0.0,) * 3, (1.0,) * 3, channels).geometry()

    base, classes, labels, fp, skipped, notes = read_source(data, "--data", geometry)
    ds = WithTransform(base)
    if val_data is None:
        train_idx, held_idx = _split(labels, classes, val_fraction, seed, str(data))
        val_ds, val_labels, val_fp, source = None, labels[held_idx], "", "split"
    else:
        vbase, vclasses, vlabels, val_fp, vskipped, vnotes = read_source(val_data, "--val-data",
                                                                   geometry)
        if tuple(vclasses) != tuple(classes):
            raise HdapError(
                f"--val-data has {len(vclasses)} classes ({', '.join(vclasses[:6])}"
                f"{', ...' if len(vclasses) > 6 else ''}) but --data has {len(classes)} "
                f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}); both need "
                "the same class folders")
        skipped += vskipped
        notes = notes + vnotes
        train_idx = np.arange(len(labels))
        held_idx = None
        val_ds, val_labels, source = WithTransform(vbase), vlabels, "val-data"

    if user_mean is not None and user_std is not None:
        mean_, std_, stats = user_mean, user_std, "user"
    elif height >= 64:
        mean_, std_, stats = user_mean or IMAGENET_MEAN, user_std or IMAGENET_STD, \
            "imagenet" if user_mean is None and user_std is None else "user"
    else:
        dm, dsd = _channel_stats(ds, train_idx[stratified_indices(labels[train_idx],
                                                                  _STATS_IMAGES, seed)])
        mean_, std_ = user_mean or dm, user_std or dsd
        stats = "data" if user_mean is None and user_std is None else "user"
    pre = Preprocess((height, width), tuple(float(m) for m in mean_),
                     tuple(float(s) for s in std_), channels, stats)
    ds.set_transform(pre.transform())
    if val_ds is not None:
        val_ds.set_transform(pre.transform())
        heldout = val_ds
    else:
        heldout = Subset(ds, held_idx.tolist())
    train = Subset(ds, train_idx.tolist()) if len(train_idx) != len(labels) else ds
    key = hashlib.sha256(
        f"{fp}|{val_fp}|{source}|{val_fraction}|{seed}|{pre.as_dict()}".encode()).hexdigest()
    return LabelledData(
        name=str(data), classes=tuple(classes), train=train, heldout=heldout,
        train_labels=labels[train_idx], heldout_labels=np.asarray(val_labels),
        heldout_source=source, preprocess=pre, fingerprint=key[:24], skipped=skipped,
        notes=tuple(notes), val_name=None if val_data is None else str(val_data))


def _split(labels, classes, val_fraction, seed, label):
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < 2:
        c = classes[int(np.argmin(counts))]
        raise HdapError(
            f"--data {label}: class {c!r} has only {counts.min()} image; a held-out split needs "
            "at least 2 per class; add images or give --val-data")
    n_held = max(len(classes), int(round(val_fraction * len(labels))))
    if n_held >= len(labels):
        raise HdapError(f"--data {label}: {len(labels)} images are too few to hold out one per "
                        "class and train on the rest; add images or give --val-data")
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, held_idx = train_test_split(idx, test_size=n_held, stratify=labels,
                                           random_state=seed)
    return np.sort(train_idx), np.sort(held_idx)


def _channel_stats(ds: Dataset, indices) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x, _ = materialise(ds, indices)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)  # a constant channel must not divide by 0
    return tuple(mean.tolist()), tuple(std.tolist())


def check_classes(data: LabelledData, num_classes: int, *,
                  weights_name: str = "the model's weights") -> None:
    """Refuse a dataset whose class count differs from the model's.

    Parameters
    ----------
    data:
        The loaded dataset.
    num_classes:
        The model's classifier outputs (`hdap_engine.models.zoo.num_classes_of`).
    weights_name:
        How the model weights are named in the message.
    """
    if data.num_classes != int(num_classes):
        raise HdapError(
            f"{data.name} has {data.num_classes} classes but {weights_name} have {num_classes} "
            f"outputs; give a dataset with {num_classes} class folders, or weights trained on "
            f"these {data.num_classes} classes")
