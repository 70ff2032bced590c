"""Trained demo weights shipped in ``sample_data/`` (made by `hdap train`), by model name.

So that the accuracy side of the product (calibrated accuracy, floors,
fine-tuning) can be shown offline, without anyone's own weights. Each entry
has a ``.json`` beside it saying how it was trained and how accurate it is.
"""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
# model -> (file in sample_data/, the dataset it was trained on)
DEMO_WEIGHTS = {"resnet56": ("resnet56_digits.pt", "digits"),
                # benchmarks/detector_demo.py on `hdap data shapes` (docs/detection-data.md)
                "detector_demo": ("detector_demo_shapes.pt", "shapes")}


def demo_weights(model: str) -> Path | None:
    """The shipped trained state dict of ``model``, or None when there is none."""
    entry = DEMO_WEIGHTS.get(model)
    if entry is None:
        return None
    path = SAMPLES / entry[0]
    return path if path.is_file() else None


def demo_record(model: str) -> dict | None:
    """How the demo weights of ``model`` were made (`hdap train`'s JSON), or None."""
    path = demo_weights(model)
    side = None if path is None else path.with_name(path.name + ".json")
    return json.loads(side.read_text()) if side is not None and side.is_file() else None


def demo_label(model: str) -> str | None:
    """One line for people: what the demo weights are and how accurate, or None."""
    rec = demo_record(model)
    if rec is None:
        return None
    acc = rec["accuracy"]
    if "map_50" in acc:  # a detector's record (benchmarks/detector_demo.py)
        data = rec["data"]
        return (f"trained demo weights (synthetic {DEMO_WEIGHTS[model][1]}, "
                f"{data['train_images']:,} training images, seed {data['seed']}): mAP@.5 "
                f"{100 * acc['map_50']:.1f}%, mAP@[.5:.95] {100 * acc['map']:.1f}% on "
                f"{acc['n_images']} held-out images")
    return (f"trained demo weights ({rec['data']}): {100 * acc['top1']:.1f}% top-1 on "
            f"{rec['n_heldout']} held-out images")


def demo_data(model: str) -> str | None:
    """The dataset the demo weights of ``model`` were trained on (``"digits"``,
    ``"shapes"``), or None when there are none."""
    entry = DEMO_WEIGHTS.get(model)
    return None if entry is None else entry[1]
