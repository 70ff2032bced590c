"""Detection data in COCO format: a folder of images plus ``annotations.json``, or a zip.

A detection dataset is named by one string: a folder holding ``annotations.json``
(COCO's object-detection format: ``images``, ``annotations`` with ``bbox`` as
``[x, y, width, height]`` in pixels, ``categories``) and the image files its
``file_name`` entries name relative to the folder (``images/`` or beside the
JSON; both forms are common); a ``.json`` file directly (images relative to its
folder); or a ``.zip`` of either, extracted with the same safety rules as
classification data (`hdap_engine.data.safezip`: no path may escape, no links,
no bombs). A zip whose only top-level entry is the dataset folder works too.

Categories are mapped to contiguous labels ``1..K`` in the order of their ids
(0 is the background, torchvision's convention), so a model has ``K + 1``
class outputs. Every fault a user can make is one `HdapError` line that names
the file, the image or annotation, and what to do: malformed or empty JSON, no
images, no annotations, an unknown category or image id, an image entry whose
file is missing or unreadable, a box outside its image or with no area, a
class count that differs from the model's weights. Crowd annotations
(``iscrowd: 1``) are dropped and counted in the notes: their boxes cover many
objects, and torchvision's detectors do not train on them.

The held-out split: ``--val-data`` (another COCO set with the same categories)
or a seeded share of the images (a permutation, like `hdap_engine.data.datasets`
does for classification, but by image: one image's objects never straddle the
split).

Public API
----------
``load_coco(data, *, val_data=None, val_fraction=0.2, seed=0) -> DetectionData``
``DetectionData``: ``train`` / ``heldout`` datasets of ``(image, target)`` with
``image`` a float32 (3, H, W) tensor in [0, 1] and ``target`` ``{"boxes": (N, 4)
float32 xyxy pixels, "labels": (N,) int64 in 1..K}``; ``categories``,
``num_classes`` (K, without background), ``fingerprint``, ``notes``.
``CocoImages(records)``: the torch ``Dataset`` itself; ``read_coco(source, label)``.
``check_detector_classes(data, num_classes, *, weights_name=...)``: refuse a
model whose class outputs (background included) are not ``K + 1``.
``collate(batch) -> (list of images, list of targets)`` for a ``DataLoader``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hdap_engine.errors import HdapError

ANNOTATIONS = "annotations.json"
_EDGE_TOLERANCE = 1.0  # pixels a box may pass its image's edge (rounding in exporters)


@dataclass(frozen=True)
class ImageRecord:
    """One image and its objects (boxes xyxy in pixels, labels 1..K)."""

    path: Path
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32
    labels: np.ndarray  # (N,) int64


class CocoImages(Dataset):
    """``(float32 image (3, H, W) in [0, 1], {"boxes", "labels"})`` per image record."""

    def __init__(self, records: list[ImageRecord] | tuple[ImageRecord, ...]):
        self.records = tuple(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from PIL import Image

        rec = self.records[i]
        with Image.open(rec.path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        target = {"boxes": torch.from_numpy(rec.boxes.copy()),
                  "labels": torch.from_numpy(rec.labels.copy())}
        return image, target


def collate(batch):
    """A detection batch stays lists: images may differ in size, targets in length."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


@dataclass(frozen=True)
class DetectionData:
    """A checked COCO dataset: training part, held-out part, categories."""

    name: str
    categories: tuple[str, ...]
    category_ids: tuple[int, ...]
    train: CocoImages
    heldout: CocoImages
    heldout_source: str  # "val-data" or "split"
    fingerprint: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    val_name: str | None = None

    @property
    def num_classes(self) -> int:
        """K, the object classes (the model has K + 1 outputs with the background)."""
        return len(self.categories)

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_heldout(self) -> int:
        return len(self.heldout)

    def describe_heldout(self) -> str:
        """One line for reports: where the held-out mAP comes from."""
        if self.heldout_source == "val-data":
            return f"{self.n_heldout} images of {self.val_name}"
        return (f"{self.n_heldout} images held out of {self.name} "
                "(seeded split by image; no --val-data given)")


def _find_annotations(source: str | Path, label: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise HdapError(f"{label}: detection dataset {str(source)!r} not found; give a folder "
                        f"with {ANNOTATIONS} and its images, a .zip of one, or the .json file")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return path
        if path.suffix.lower() != ".zip":
            raise HdapError(f"{label}: {path.name} is neither a .zip nor a .json; give a folder "
                            f"with {ANNOTATIONS} and its images, or a .zip of one")
        from hdap_engine.data.safezip import extract_zip

        path = extract_zip(path)
    # Descend through lone wrapper folders (a zip of ``shapes/`` holds ``shapes/...``).
    while not (path / ANNOTATIONS).is_file():
        entries = [p for p in path.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        jsons = [p for p in entries if p.is_file() and p.suffix.lower() == ".json"]
        dirs = [p for p in entries if p.is_dir()]
        if len(jsons) == 1:
            return jsons[0]
        if len(dirs) == 1 and not jsons:
            path = dirs[0]
            continue
        raise HdapError(f"{label}: no {ANNOTATIONS} in {Path(source).name}; a COCO detection "
                        f"dataset is a folder with {ANNOTATIONS} (images, annotations, "
                        "categories) and the images it names")
    return path / ANNOTATIONS


def _load_json(path: Path, label: str) -> dict:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if not text.strip():
        raise HdapError(f"{label}: {path.name} is empty; it must hold COCO's 'images', "
                        "'annotations' and 'categories'")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HdapError(f"{label}: {path.name} is not valid JSON ({exc.msg} at line "
                        f"{exc.lineno}, column {exc.colno}); fix or re-export it") from None
    if not isinstance(doc, dict):
        raise HdapError(f"{label}: {path.name} holds a JSON {type(doc).__name__}, not COCO's "
                        "object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise HdapError(f"{label}: {path.name} has no {key!r} list; COCO detection "
                            "annotations need 'images', 'annotations' and 'categories'")
    return doc


def _categories(doc: dict, name: str, label: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    cats = {}
    for c in doc["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int):
            raise HdapError(f"{label}: {name}: category {c!r} has no integer 'id'")
        if c["id"] in cats:
            raise HdapError(f"{label}: {name}: category id {c['id']} appears twice")
        cats[c["id"]] = str(c.get("name", c["id"]))
    if not cats:
        raise HdapError(f"{label}: {name} lists no categories; add one entry per object class")
    ids = tuple(sorted(cats))
    return ids, tuple(cats[i] for i in ids)


def _image_size(path: Path, file_name: str, name: str, label: str) -> tuple[int, int]:
    from PIL import Image

    if not path.is_file():
        raise HdapError(f"{label}: {name}: image {file_name!r} is listed but has no file at "
                        f"{path}; add the file or remove its entry")
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except Exception:
        raise HdapError(f"{label}: {name}: image {file_name!r} cannot be read as an image; "
                        "replace it or remove its entry") from None


def read_coco(source: str | Path, label: str = "--data"):
    """Read and check one COCO dataset.

    Parameters
    ----------
    source:
        Folder, ``.json`` or ``.zip``.
    label:
        How the dataset is named in messages (``--data``, ``--val-data``).

    Returns
    -------
    ``(records, category_ids, category_names, fingerprint, notes)``.
    """
    ann_path = _find_annotations(source, label)
    root, name = ann_path.parent, ann_path.name
    doc = _load_json(ann_path, label)
    ids, names = _categories(doc, name, label)
    label_of = {cid: i + 1 for i, cid in enumerate(ids)}
    if not doc["images"]:
        raise HdapError(f"{label}: {name} lists no images; add an 'images' entry per file")
    if not doc["annotations"]:
        raise HdapError(f"{label}: {name} has no annotations (no boxes); a detector needs "
                        "labelled boxes to train and to be evaluated")
    images: dict = {}
    for im in doc["images"]:
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise HdapError(f"{label}: {name}: image entry {str(im)[:80]} needs an 'id' and a "
                            "'file_name'")
        if im["id"] in images:
            raise HdapError(f"{label}: {name}: image id {im['id']} appears twice")
        path = root / im["file_name"]
        width, height = _image_size(path, im["file_name"], name, label)
        images[im["id"]] = (im["file_name"], path, width, height)
    boxes: dict = {k: [] for k in images}
    labels: dict = {k: [] for k in images}
    crowd = 0
    for a in doc["annotations"]:
        aid = a.get("id", "?") if isinstance(a, dict) else "?"
        if not isinstance(a, dict) or "image_id" not in a or "bbox" not in a:
            raise HdapError(f"{label}: {name}: annotation {aid} needs 'image_id', "
                            "'category_id' and 'bbox'")
        if a["image_id"] not in images:
            raise HdapError(f"{label}: {name}: annotation {aid} refers to image id "
                            f"{a['image_id']!r}, which is not in 'images'")
        if a.get("category_id") not in label_of:
            raise HdapError(f"{label}: {name}: annotation {aid} has category id "
                            f"{a.get('category_id')!r}, which is not in 'categories' (ids "
                            f"{', '.join(map(str, ids[:10]))}{', ...' if len(ids) > 10 else ''})")
        file_name, _, width, height = images[a["image_id"]]
        bbox = a["bbox"]
        ok = (isinstance(bbox, list) and len(bbox) == 4
              and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox))
        if not ok:
            raise HdapError(f"{label}: {name}: annotation {aid} ({file_name}) has bbox "
                            f"{bbox!r}; COCO boxes are [x, y, width, height] in pixels")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise HdapError(f"{label}: {name}: annotation {aid} ({file_name}) has an empty box "
                            f"{bbox!r} (width and height must be > 0); fix or remove it")
        t = _EDGE_TOLERANCE
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            raise HdapError(
                f"{label}: {name}: annotation {aid} has box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] "
                f"outside its image {file_name} ({width}x{height} pixels); fix the box or the "
                "image (COCO boxes are [x, y, width, height] in pixels)")
        if a.get("iscrowd", 0):
            crowd += 1
            continue
        boxes[a["image_id"]].append([max(x, 0.0), max(y, 0.0), min(x + w, width),
                                     min(y + h, height)])
        labels[a["image_id"]].append(label_of[a["category_id"]])
    records = []
    h = hashlib.sha256(json.dumps(names).encode())
    for iid in sorted(images, key=lambda k: images[k][0]):
        file_name, path, width, height = images[iid]
        b = np.asarray(boxes[iid], dtype=np.float32).reshape(-1, 4)
        lab = np.asarray(labels[iid], dtype=np.int64)
        records.append(ImageRecord(path, file_name, int(width), int(height), b, lab))
        h.update(f"{file_name}\0{path.stat().st_size}\0".encode())
        h.update(b.tobytes() + lab.tobytes())
    notes = []
    if crowd:
        notes.append(f"{label}: dropped {crowd} crowd annotation{'s' if crowd != 1 else ''} "
                     "(iscrowd=1)")
    return records, ids, names, h.hexdigest(), notes


def load_coco(data: str | Path, *, val_data: str | Path | None = None,
              val_fraction: float = 0.2, seed: int = 0) -> DetectionData:
    """Read and check a COCO detection dataset and its held-out part.

    Parameters
    ----------
    data:
        Folder with ``annotations.json``, the ``.json`` itself, or a ``.zip`` (``--data``).
    val_data:
        Held-out COCO dataset with the same categories (``--val-data``); without it a
        seeded ``val_fraction`` of the images of ``data`` is held out.
    val_fraction:
        Share of images held out when ``val_data`` is not given.
    seed:
        Seed of the split.

    Returns
    -------
    `DetectionData`.
    """
    if not 0 < val_fraction < 1:
        raise HdapError(f"the held-out fraction must be in (0, 1), got {val_fraction}")
    records, ids, names, fp, notes = read_coco(data, "--data")
    if val_data is None:
        if len(records) < 2:
            raise HdapError(f"--data {data}: one image cannot be split into training and "
                            "held-out parts; add images or give --val-data")
        n_held = min(len(records) - 1, max(1, int(round(val_fraction * len(records)))))
        order = np.random.default_rng(seed).permutation(len(records))
        held = sorted(order[:n_held].tolist())
        train = sorted(order[n_held:].tolist())
        train_set = CocoImages([records[i] for i in train])
        held_set = CocoImages([records[i] for i in held])
        source, val_fp = "split", ""
    else:
        vrecords, vids, vnames, val_fp, vnotes = read_coco(val_data, "--val-data")
        if vnames != names or vids != ids:
            raise HdapError(
                f"--val-data has categories {', '.join(vnames[:6])} but --data has "
                f"{', '.join(names[:6])}; both need the same categories (ids and names)")
        notes = notes + vnotes
        train_set, held_set, source = CocoImages(records), CocoImages(vrecords), "val-data"
    key = hashlib.sha256(f"{fp}|{val_fp}|{source}|{val_fraction}|{seed}".encode()).hexdigest()
    return DetectionData(
        name=str(data), categories=names, category_ids=ids, train=train_set,
        heldout=held_set, heldout_source=source, fingerprint=key[:24], notes=tuple(notes),
        val_name=None if val_data is None else str(val_data))


def check_detector_classes(data: DetectionData, num_classes: int, *,
                           weights_name: str = "the model's weights") -> None:
    """Refuse a detector whose class outputs are not the data's K categories + background.

    Parameters
    ----------
    data:
        The loaded dataset.
    num_classes:
        The detector's class outputs, background included (torchvision's ``num_classes``).
    weights_name:
        How the weights are named in the message.
    """
    if int(num_classes) != data.num_classes + 1:
        raise HdapError(
            f"{data.name} has {data.num_classes} categories ({data.num_classes + 1} classes with "
            f"the background) but {weights_name} have {num_classes} class outputs; give data "
            f"with {int(num_classes) - 1} categories, or weights trained on these "
            f"{data.num_classes}")
