"""The synthetic shapes detection dataset: a detection demo that needs no download.

Images of coloured shapes (circle, square, triangle, cross) on textured, noisy
backgrounds, several objects per image with varied size and colour, partial
overlaps allowed, written in COCO format (``images/*.png`` plus
``annotations.json``, see `hdap_engine.data.coco`). Everything is drawn from one
seed, so the same arguments give the same annotations and pixels (numpy's
``default_rng`` and PIL's drawing are deterministic); the PNG bytes are identical too
with the same Pillow and zlib (the test compares them on one machine).

Why these choices: a detector must learn *shape*, not colour or size, so colours
are drawn independently of the class and sizes span a factor of three; the
background has smooth blobs and pixel noise so that "anything not flat is an
object" does not work; overlaps are capped (IoU at most 0.3 with an earlier
object) so that every box still shows enough of its object to be detectable,
which keeps the achievable mAP near 1 and a pruned model's loss visible.

Public API
----------
``SHAPE_CLASSES``: the class names, category ids 1..4 in this order.
``write_shapes(out, options=ShapesOptions()) -> Path``: the folder, with ``images/`` and
``annotations.json`` (`hdap_engine.options.ShapesOptions`: images, size, seed, objects).
``draw_image(rng, options) -> (PIL image, list of (category_id, [x, y, w, h]))``
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.options import ShapesOptions

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")
_MAX_IOU = 0.3  # overlap allowed with an earlier object (boxes' IoU)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field with pixel noise, uint8 (size, size, 3)."""
    coarse = rng.uniform(40, 215, size=(5, 5, 3))
    # Bilinear upsampling of a 5x5 grid: blotches a shape can sit on or across.
    grid = np.linspace(0, 4, size)
    i0 = np.clip(np.floor(grid).astype(int), 0, 3)
    t = (grid - i0)[:, None]
    rows = coarse[i0] * (1 - t)[:, :, None] + coarse[i0 + 1] * t[:, :, None]  # (size, 5, 3)
    field = rows[:, i0] * (1 - t.T)[:, :, None] + rows[:, i0 + 1] * t.T[:, :, None]
    noise = rng.normal(0, 18, size=(size, size, 3))
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def _iou(a: list[float], b: list[float]) -> float:
    ax1, ay1, aw, ah = a
    bx1, by1, bw, bh = b
    iw = max(0.0, min(ax1 + aw, bx1 + bw) - max(ax1, bx1))
    ih = max(0.0, min(ay1 + ah, by1 + bh) - max(ay1, by1))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    if kind == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.8, y * 0.8) for x, y in pts]
    elif kind == "triangle":
        pts = [(np.cos(a), np.sin(a)) for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)]
    else:  # cross: a plus sign of arm width 0.36 r
        w = 0.36
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1),
               (-w, w), (-1, w), (-1, -w), (-w, -w)]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw_image(rng: np.random.Generator, options: ShapesOptions):
    """One image and its objects.

    Parameters
    ----------
    rng:
        The generator (advanced in place: images are drawn in sequence).
    options:
        Image size and objects per image.

    Returns
    -------
    ``(PIL.Image RGB, [(category_id, [x, y, w, h]), ...])`` with boxes tight
    around the drawn pixels.
    """
    from PIL import Image, ImageDraw

    size = options.size
    canvas = Image.fromarray(_background(rng, size))
    objects: list[tuple[int, list[float]]] = []
    wanted = int(rng.integers(options.min_objects, options.max_objects + 1))
    for _ in range(wanted * 20):  # tries: a crowded image simply gets fewer objects
        if len(objects) == wanted:
            break
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        r = float(rng.uniform(0.06, 0.18) * size)
        cx, cy = rng.uniform(r, size - r, size=2)
        angle = float(rng.uniform(0, 2 * np.pi)) if cls != 0 else 0.0
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        # The mask gives the tight box whatever the rotation (and clips nothing: the
        # shape lies inside the image by construction of cx, cy).
        mask = Image.new("L", (size, size), 0)
        md = ImageDraw.Draw(mask)
        if SHAPE_CLASSES[cls] == "circle":
            md.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            md.polygon(_polygon(SHAPE_CLASSES[cls], cx, cy, r, angle), fill=255)
        bbox = mask.getbbox()
        if bbox is None:
            continue
        x0, y0, x1, y1 = bbox
        box = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        if any(_iou(box, b) > _MAX_IOU for _, b in objects):
            continue
        # Later shapes are drawn on top, so an earlier box may be partly covered;
        # the IoU cap keeps it mostly visible.
        canvas.paste(Image.new("RGB", (size, size), colour), (0, 0), mask)
        objects.append((cls + 1, box))
    return canvas, objects


def write_shapes(out: str | Path, options: ShapesOptions | None = None) -> Path:
    """Generate the dataset in COCO format.

    Parameters
    ----------
    out:
        Folder to write (created; ``images/`` and ``annotations.json`` inside;
        existing files of the same names are replaced).
    options:
        Count, size, seed, objects per image (default `ShapesOptions()`).

    Returns
    -------
    The folder.
    """
    options = options or ShapesOptions()
    out = Path(out)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HdapError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    rng = np.random.default_rng(options.seed)
    images, annotations = [], []
    for i in range(options.images):
        img, objects = draw_image(rng, options)
        name = f"images/{i:06d}.png"
        img.save(out / name, optimize=False)
        images.append({"id": i + 1, "file_name": name, "width": options.size,
                       "height": options.size})
        for cat, box in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": cat, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    doc = {"info": {"description": "HDAP Studio synthetic shapes", "seed": options.seed,
                    "images": options.images, "size": options.size},
           "images": images, "annotations": annotations,
           "categories": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)]}
    (out / "annotations.json").write_text(json.dumps(doc, indent=1) + "\n")
    return out
