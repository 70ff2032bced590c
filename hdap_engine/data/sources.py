"""Where labelled images come from: an ImageFolder directory, a zip of one, or ``digits``.

Reading only (see `hdap_engine.data.datasets` for checks, splits and
preprocessing): torchvision's ``ImageFolder`` with PIL decoding, class
folders sorted by name (hidden folders and ``__MACOSX`` ignored), a lone
wrapper folder descended into, unreadable images skipped and counted;
scikit-learn's bundled digits as (1, 8, 8) images in [0, 1].

Public API
----------
``read_source(source, label, geometry) -> (dataset, classes, labels, fingerprint, skipped,
notes)``; ``WithTransform(base)`` with ``.set_transform(t)``; ``DIGITS``;
``IMAGE_EXTENSIONS``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hdap_engine.errors import HdapError

DIGITS = "digits"
# Extensions ImageFolder accepts; non-image files (README, .DS_Store) are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _visible(p: Path) -> bool:
    return not p.name.startswith((".", "__MACOSX"))


def _dataset_root(path: Path) -> Path:
    """Descend through a lone wrapper folder (a zip of ``mydata/`` holds ``mydata/cat/...``)."""
    while True:
        entries = [p for p in path.iterdir() if _visible(p)]
        dirs = [p for p in entries if p.is_dir()]
        files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if len(dirs) == 1 and not files and any(q.is_dir() and _visible(q)
                                                for q in dirs[0].iterdir()):
            path = dirs[0]
        else:
            return path


def _image_folder(root: Path, label: str, transform):
    """torchvision ImageFolder over ``root``, skipping and counting unreadable images."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    counts = {"unreadable": 0, "ignored": 0, "first_bad": None}

    def readable(path: str) -> bool:
        if not path.lower().endswith(IMAGE_EXTENSIONS) or not _visible(Path(path)):
            counts["ignored"] += 1
            return False
        try:
            with Image.open(path) as im:
                im.load()  # a truncated file fails here, not in the middle of a run
            return True
        except Exception:
            counts["unreadable"] += 1
            counts["first_bad"] = counts["first_bad"] or Path(path).relative_to(root).as_posix()
            return False

    class _Folder(ImageFolder):
        def find_classes(self, directory):
            classes = sorted(p.name for p in Path(directory).iterdir()
                             if p.is_dir() and _visible(p))
            if not classes:
                raise HdapError(
                    f"{label}: no class folders in {directory}; an ImageFolder dataset has one "
                    "subfolder per class (e.g. cat/, dog/) holding that class's images")
            return classes, {c: i for i, c in enumerate(classes)}

    folder = _Folder(str(root), transform=transform, is_valid_file=readable, allow_empty=True)
    return folder, counts


def _open_source(source: str | Path, label: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise HdapError(f"{label}: dataset {str(source)!r} not found; give an ImageFolder "
                        f"directory, a .zip of one, or {DIGITS!r}")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise HdapError(f"{label}: {path.name} is a file but not a .zip; give an "
                            f"ImageFolder directory, a .zip of one, or {DIGITS!r}")
        from hdap_engine.data.safezip import extract_zip

        path = extract_zip(path)
    return _dataset_root(path)


def _folder_dataset(source, label: str, geometry):
    root = _open_source(source, label)
    folder, counts = _image_folder(root, label, geometry)
    classes = tuple(folder.classes)
    labels = np.asarray(folder.targets, dtype=np.int64)
    if len(classes) < 2:
        raise HdapError(
            f"{label}: only one class folder ({classes[0]!r}); classification needs at least "
            "two class folders, one per class")
    if len(labels) == 0:
        bad = counts["unreadable"]
        raise HdapError(
            f"{label}: no readable images in {len(classes)} class folders"
            + (f" ({bad} unreadable, e.g. {counts['first_bad']})" if bad else "")
            + "; put PNG, JPEG, BMP or WebP images in the class folders")
    present = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, present, strict=True) if n == 0]
    if empty:
        raise HdapError(
            f"{label}: class folder {empty[0]!r} has no readable images"
            + (f" ({len(empty)} such classes)" if len(empty) > 1 else "")
            + "; add images to it or remove the folder (class order must match the weights)")
    h = hashlib.sha256()
    for (path, target) in folder.samples:
        rel = Path(path).relative_to(root).as_posix()
        h.update(f"{rel}\0{Path(path).stat().st_size}\0{target}\n".encode())
    notes = []
    if counts["unreadable"]:
        notes.append(f"{label}: skipped {counts['unreadable']} unreadable image"
                     f"{'s' if counts['unreadable'] != 1 else ''} (e.g. {counts['first_bad']})")
    return folder, classes, labels, h.hexdigest(), counts["unreadable"], notes


class _Digits(Dataset):
    """scikit-learn's digits as (1, 8, 8) float images in [0, 1], through a v2 transform."""

    def __init__(self, transform):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        self.images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
        self.targets = bunch.target.astype(np.int64)
        self.transform = transform
        # The transform is deterministic, so it is applied once for the whole set.
        self._cache = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        if self._cache is None:
            probe = self.transform(self.images[:1])
            # Deterministic transform: apply it once for the whole set when that fits
            # in memory (32x32: 22 MB), per image otherwise (224x224 would be 1 GB).
            if probe[0].numel() * len(self.targets) * 4 <= 256 * 1024**2:
                self._cache = self.transform(self.images)
            else:
                self._cache = False
        if self._cache is False:
            return self.transform(self.images[i]), int(self.targets[i])
        return self._cache[i], int(self.targets[i])


class WithTransform(Dataset):
    """A folder dataset whose transform can be swapped (geometry first, then normalised)."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i]

    def set_transform(self, transform) -> None:
        if isinstance(self.base, _Digits):
            self.base.transform, self.base._cache = transform, None
        else:
            self.base.transform = transform


def read_source(source, label: str, geometry):
    if str(source) == DIGITS:
        ds = _Digits(geometry)
        classes = tuple(str(i) for i in range(10))
        return ds, classes, ds.targets, "sklearn-digits-1797", 0, []
    return _folder_dataset(source, label, geometry)
