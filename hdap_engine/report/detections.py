"""The detection picture: what the unpruned and the pruned detector find on one held-out image.

A detector's mAP says how much was lost; a picture says what: boxes that moved,
objects missed, classes confused. This module draws the predicted boxes of two
detectors side by side on the same held-out image, each labelled with its class
name and score, above a score threshold. It is a PNG (Pillow, no plotting
library): the app shows it on the Run page and a bundle's folder can keep it.

The image is chosen deterministically: the held-out image with the most labelled
objects (the first of them on a tie), so a picture shows as many chances to
differ as the set has, and the same study always shows the same image.

Public API
----------
``choose_image(dataset) -> int``: the held-out image a picture shows.
``detections_picture(unpruned, pruned, dataset, *, categories, score_threshold=0.5,
index=None, titles=("unpruned", "pruned")) -> DetectionPicture``
``study_detectors(bundle, model, model_weights, data, *, val_data=None, seed=0)
-> StudyDetectors``: a finished study's two detectors, from its bundle (the pruned
detector) and its settings (the unpruned detector, the data); ``.picture(threshold)``.
``study_picture(...) -> DetectionPicture`` and ``write_study_picture(...) -> Path`` (the
PNG in the bundle folder) do both steps.
``DetectionPicture``: ``.image`` (PIL), ``.png()``, ``.save(path)``, ``.caption()``.
``PICTURE_FILE``: its name in a bundle folder.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hdap_engine.errors import HdapError

PICTURE_FILE = "detections.png"
SCORE_THRESHOLD = 0.5  # torchvision's detectors keep far lower scores; these are the sure ones
_SCALE_TO = 320  # panels are drawn at least this many pixels wide (small images upscaled)
_TITLE_H = 26
_GAP = 8
# One colour per class (Plotly's qualitative set, as the charts use), the label's text on it.
_COLORS = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692",
           "#B6E880", "#FF97FF", "#FECB52")


@dataclass(frozen=True)
class Panel:
    """One detector's boxes on the picture's image (kept above the threshold)."""

    title: str
    boxes: tuple[tuple[float, float, float, float], ...]  # xyxy, pixels of the image
    labels: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class DetectionPicture:
    """The picture, and what it shows (for captions and tests)."""

    image: object  # PIL.Image.Image, the two panels side by side
    index: int  # the held-out image shown (position in the held-out set)
    file_name: str  # that image's file in the dataset
    n_objects: int  # its labelled objects
    score_threshold: float
    panels: tuple[Panel, Panel]

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.png())
        return path

    def caption(self) -> str:
        """One line for people: the image, the threshold, the boxes each detector kept."""
        kept = ", ".join(f"{p.title} {len(p.boxes)}" for p in self.panels)
        return (f"held-out image {self.file_name} ({self.n_objects} labelled objects); boxes "
                f"scoring at least {self.score_threshold:g}: {kept}")


def choose_image(dataset) -> int:
    """The held-out image a picture shows: the most labelled objects, the first on a tie.

    Reads the dataset's records (`hdap_engine.data.coco.CocoImages`) when it has them,
    so no image is decoded to choose.
    """
    records = getattr(dataset, "records", None)
    counts = ([len(r.labels) for r in records] if records is not None
              else [len(dataset[i][1]["labels"]) for i in range(len(dataset))])
    if not counts:
        raise HdapError("the held-out set is empty; the detection picture needs an image")
    return max(range(len(counts)), key=lambda i: (counts[i], -i))


@torch.no_grad()
def _panel(model: nn.Module, image: torch.Tensor, title: str, categories: Sequence[str],
           threshold: float) -> Panel:
    was = model.training
    model.eval()
    try:
        out = model([image])[0]
    finally:
        model.train(was)
    keep = out["scores"] >= threshold
    names = [categories[int(c) - 1] if 1 <= int(c) <= len(categories) else f"class {int(c)}"
             for c in out["labels"][keep].tolist()]
    return Panel(title=title,
                 boxes=tuple(tuple(float(v) for v in b) for b in out["boxes"][keep].tolist()),
                 labels=tuple(names), scores=tuple(float(s) for s in out["scores"][keep]))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _draw(image: torch.Tensor, panels: Sequence[Panel], categories: Sequence[str]):
    from PIL import Image, ImageDraw

    h, w = int(image.shape[1]), int(image.shape[2])
    scale = max(1, -(-_SCALE_TO // w))  # whole multiples keep pixels square and sharp
    pix = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    base = Image.fromarray(pix, "RGB").resize((w * scale, h * scale), Image.NEAREST)
    pw, ph = base.width, base.height
    canvas = Image.new("RGB", (len(panels) * pw + (len(panels) - 1) * _GAP, ph + _TITLE_H),
                       "white")
    draw = ImageDraw.Draw(canvas)
    title_font, label_font = _font(15), _font(12)
    colour = {name: _COLORS[i % len(_COLORS)] for i, name in enumerate(categories)}
    for k, panel in enumerate(panels):
        x0 = k * (pw + _GAP)
        canvas.paste(base, (x0, _TITLE_H))
        draw.text((x0 + 4, 5), f"{panel.title}: {len(panel.boxes)} boxes", fill="black",
                  font=title_font)
        # Lowest score first, so the surest box and its label end on top.
        for box, name, score in sorted(zip(panel.boxes, panel.labels, panel.scores,
                                           strict=True), key=lambda t: t[2]):
            c = colour.get(name, "#FFFFFF")
            bx = [x0 + box[0] * scale, _TITLE_H + box[1] * scale,
                  x0 + box[2] * scale, _TITLE_H + box[3] * scale]
            draw.rectangle(bx, outline=c, width=2)
            text = f"{name} {score:.2f}"
            tl, tt, tr, tb = draw.textbbox((0, 0), text, font=label_font)
            ty = max(_TITLE_H, bx[1] - (tb - tt) - 4)
            tx = min(bx[0], x0 + pw - (tr - tl) - 4)
            draw.rectangle([tx, ty, tx + (tr - tl) + 4, ty + (tb - tt) + 4], fill=c)
            draw.text((tx + 2 - tl, ty + 2 - tt), text, fill="white", font=label_font)
    return canvas


def detections_picture(unpruned: nn.Module, pruned: nn.Module, dataset, *,
                       categories: Sequence[str], score_threshold: float = SCORE_THRESHOLD,
                       index: int | None = None,
                       titles: tuple[str, str] = ("unpruned", "pruned")) -> DetectionPicture:
    """Both detectors' boxes on one held-out image, side by side.

    Parameters
    ----------
    unpruned, pruned:
        Detectors with torchvision's interface (in eval they map a list of images to
        ``{boxes, labels, scores}``); their training mode is restored after.
    dataset:
        The held-out ``(image, target)`` pairs (`DetectionData.heldout`).
    categories:
        Names of labels 1..K.
    score_threshold:
        Boxes scoring below it are not drawn (in [0, 1]).
    index:
        The image to show (default `choose_image`).
    titles:
        The panels' titles.

    Returns
    -------
    `DetectionPicture`.
    """
    if not 0.0 <= float(score_threshold) <= 1.0:
        raise HdapError(f"the picture's score threshold must be in [0, 1], got "
                        f"{score_threshold}")
    index = choose_image(dataset) if index is None else int(index)
    if not 0 <= index < len(dataset):
        raise HdapError(f"the held-out set has {len(dataset)} images; there is no image "
                        f"{index} to draw")
    image, target = dataset[index]
    panels = tuple(_panel(m, image, t, categories, float(score_threshold))
                   for m, t in zip((unpruned, pruned), titles, strict=True))
    records = getattr(dataset, "records", None)
    file_name = records[index].file_name if records is not None else f"#{index}"
    return DetectionPicture(image=_draw(image, panels, categories), index=index,
                            file_name=file_name, n_objects=len(target["labels"]),
                            score_threshold=float(score_threshold), panels=panels)


@dataclass(frozen=True)
class StudyDetectors:
    """A finished study's two detectors and its held-out images, read once; pictures at
    any threshold are then cheap (`picture`)."""

    unpruned: nn.Module
    pruned: nn.Module
    heldout: object  # the study's held-out split (`DetectionData.heldout`)
    categories: tuple[str, ...]
    titles: tuple[str, str]

    def picture(self, score_threshold: float = SCORE_THRESHOLD,
                index: int | None = None) -> DetectionPicture:
        return detections_picture(self.unpruned, self.pruned, self.heldout,
                                  categories=self.categories,
                                  score_threshold=score_threshold, index=index,
                                  titles=self.titles)


def study_detectors(bundle: str | Path, model: str, model_weights, data, *, val_data=None,
                    seed: int = 0) -> StudyDetectors:
    """A finished study's detectors: its bundle (the pruned detector as shipped) and the
    unpruned one, with the study's held-out split.

    Parameters
    ----------
    bundle:
        The study's exported bundle (folder or zip).
    model, model_weights:
        The study's model key and weights: the unpruned detector.
    data, val_data, seed:
        The study's ``--data``, ``--val-data`` and seed: the same held-out split.

    Returns
    -------
    `StudyDetectors`, the pruned panel titled with its MACs.
    """
    from hdap_engine.data.coco import load_coco
    from hdap_engine.export.reading import load_bundle
    from hdap_engine.models.zoo import build_model

    pruned, report = load_bundle(bundle)
    unpruned = build_model(model, model_weights, seed=seed)
    detection = load_coco(data, val_data=val_data, seed=seed)
    macs, base = report.get("macs"), report.get("base_macs")
    unpruned_title = "unpruned" if base is None else f"unpruned ({base / 1e6:.1f} M MACs)"
    pruned_title = "pruned" if macs is None else f"pruned ({macs / 1e6:.1f} M MACs)"
    return StudyDetectors(unpruned=unpruned, pruned=pruned, heldout=detection.heldout,
                          categories=tuple(detection.categories),
                          titles=(unpruned_title, pruned_title))


def study_picture(bundle: str | Path, model: str, model_weights, data, *, val_data=None,
                  seed: int = 0, score_threshold: float = SCORE_THRESHOLD) -> DetectionPicture:
    """The detection picture of a finished study (`study_detectors`, then `picture`)."""
    return study_detectors(bundle, model, model_weights, data, val_data=val_data,
                           seed=seed).picture(score_threshold)


def write_study_picture(bundle: str | Path, model: str, model_weights, data, *,
                        val_data=None, seed: int = 0,
                        score_threshold: float = SCORE_THRESHOLD) -> Path:
    """The picture of a study written into its bundle folder as `PICTURE_FILE`, and into
    the bundle's zip beside it (``hdap optimize --out DIR`` calls this after the export)."""
    import zipfile

    bundle = Path(bundle)
    pic = study_picture(bundle, model, model_weights, data, val_data=val_data, seed=seed,
                        score_threshold=score_threshold)
    path = pic.save(bundle / PICTURE_FILE)
    archive = bundle.with_name(bundle.name + ".zip")
    if archive.is_file():
        with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            if f"{bundle.name}/{PICTURE_FILE}" not in zf.namelist():
                zf.write(path, arcname=f"{bundle.name}/{PICTURE_FILE}")
    return path
