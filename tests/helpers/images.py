"""Small labelled image folders written on the fly (ImageFolder layout), and zips of them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("bmp", "BMP"), ("webp", "WEBP"))


def make_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 6,
                size: int = 12) -> Path:
    """An ImageFolder of small images: colour and grayscale, every format, one colour per class."""
    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext, fmt = FORMATS[i % len(FORMATS)]
            base = np.zeros((size, size, 3), np.uint8)
            base[..., ci % 3] = 200
            pixels = np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels)
            if i % 2:
                img = img.convert("L")  # grayscale images become three equal channels
            img.save(folder / f"{i}.{ext}", format=fmt)
    return root


def zip_folder(folder: Path, out: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return out


def write_digit_folder(root: Path, per_class: int, offset: int = 0) -> Path:
    """An ImageFolder of ``per_class`` scikit-learn digits per class, as 8x8 PNG files."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in range(10):
        idx = np.flatnonzero(d.target == c)[offset:offset + per_class]
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in idx:
            img = (d.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(img, mode="L").save(root / str(c) / f"{i}.png")
    return root

