"""ONNX export of a whole detector (transform, core and post-processing), checked against PyTorch.

torchvision's detectors export with the TorchScript-based exporter (``dynamo=False``,
still available in PyTorch 2.14) at opset 17 (torchvision's own ONNX tests need >= 11):
the graph takes one image ``(3, H, W)`` with values in [0, 1] and returns
``boxes`` (N, 4), ``scores`` (N) and ``labels`` (N), named so (their order is the
model's dict's: Faster R-CNN puts labels before scores), anchors, box decoding and NMS
included.

The check (`check_detector_onnx`) runs both on the same images and matches each
PyTorch detection to the ONNX detection of the same label with the nearest box.
Detections tied with the lowest returned score are left out when a detector returns
its maximum count: which of several equal scores NMS and top-k keep is an order both
runtimes are free to choose (a randomly initialised SSD scores every anchor 1/classes).
Tolerances: boxes ``BOX_TOL`` pixels, scores ``SCORE_TOL``; both are float32 rounding
through different convolution kernels, amplified by the box decoding's ``exp``. NMS is
not continuous: a pair of boxes whose IoU sits within rounding of the threshold is
suppressed by one runtime and kept by the other, and that changes which lower-scored
boxes survive. A randomly initialised detector predicts many heavily overlapping
boxes, so the check passes when ``MATCHED_SHARE`` of the compared detections match.
A random detector's activations vanish and all its anchors score alike: estimate its
batch-norm statistics first (`hdap_engine.models.detection.estimate_batch_norm`) for a
check that compares ordered detections (figures in docs/detection.md).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

BOX_TOL = 1e-2  # pixels
SCORE_TOL = 1e-4
OUTPUTS = ("boxes", "scores", "labels")
MATCHED_SHARE = 0.9


def export_detector_onnx(model: nn.Module, image_shape, path: Path) -> None:
    """The whole detector as ONNX: one image in, boxes / scores / labels out."""
    import onnx

    image = torch.rand(tuple(image_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # The outputs in the order of the model's dict: SSD, RetinaNet and FCOS give
        # boxes, scores, labels; Faster R-CNN boxes, labels, scores.
        names = [k for k in model.eval()([image])[0] if k in OUTPUTS]
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), ([image],), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=names)
    onnx.checker.check_model(str(path))


def check_images(image_shape, n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """Deterministic test images: smooth gradients with bright rectangles (objects, edges)."""
    gen = torch.Generator().manual_seed(seed)
    c, h, w = (int(s) for s in image_shape)
    out = []
    for _ in range(n):
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        img = (0.3 * yy + 0.3 * xx).expand(c, h, w).clone()
        for _ in range(4):
            y0, x0 = (int(torch.randint(0, max(h // 2, 1), (1,), generator=gen)),
                      int(torch.randint(0, max(w // 2, 1), (1,), generator=gen)))
            img[:, y0:y0 + h // 4, x0:x0 + w // 4] = torch.rand((c, 1, 1), generator=gen)
        out.append(img.clamp(0, 1))
    return out


def _compare(pt: dict, ox: list[np.ndarray], cap: int | None) -> tuple[int, int, float, float]:
    """(compared, matched, max box diff, max score diff) of one image's detections."""
    pb, ps, pl = (pt[k].numpy() for k in OUTPUTS)
    ob, os_, ol = ox
    keep = np.ones(len(ps), dtype=bool)
    if cap is not None and len(ps) >= cap and len(ps):
        keep = ps > ps.min() + SCORE_TOL  # ties at the cut: either runtime may keep any
    compared = matched = 0
    box_diff = score_diff = 0.0
    for b, s, lab in zip(pb[keep], ps[keep], pl[keep], strict=True):
        compared += 1
        same = np.flatnonzero(ol == lab)
        if not same.size:
            continue
        # Nearest in box and score together: a random detector gives many near-equal boxes.
        d = np.abs(ob[same] - b).max(axis=1)
        e = np.abs(os_[same] - s)
        k = int(np.maximum(d / BOX_TOL, e / SCORE_TOL).argmin())
        if d[k] <= BOX_TOL and e[k] <= SCORE_TOL:
            matched += 1
        box_diff, score_diff = max(box_diff, float(d[k])), max(score_diff, float(e[k]))
    return compared, matched, box_diff, score_diff


def check_detector_onnx(model: nn.Module, path: Path, images: list[torch.Tensor]) -> dict:
    """Run the ONNX detector and the PyTorch one on ``images``; how well they agree.

    Returns ``detections`` (PyTorch's, all images), ``compared`` (those not tied at the
    cut; none for a random detector whose scores all tie), ``matched`` (within the
    tolerances), ``max_box_diff``, ``max_score_diff``, ``max_sorted_score_diff`` (the
    two score lists sorted, compared element by element) and ``ok``: the counts agree,
    the sorted scores agree within ``SCORE_TOL`` and at least ``MATCHED_SHARE`` of the
    compared detections match.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cap = getattr(model, "detections_per_img", None) or \
        getattr(getattr(model, "roi_heads", None), "detections_per_img", None)
    total = compared = matched = 0
    box_diff = score_diff = 0.0
    counts_agree = True
    sorted_diff = 0.0
    model = model.eval()
    for image in images:
        with torch.no_grad():
            pt = model([image])[0]
        ox = session.run(list(OUTPUTS), {"image": image.numpy()})
        total += len(pt["scores"])
        counts_agree &= len(pt["scores"]) == len(ox[1])
        if len(pt["scores"]) == len(ox[1]) and len(ox[1]):
            # Order-free: the kept scores agree even where ties make the boxes ambiguous.
            sorted_diff = max(sorted_diff, float(np.abs(np.sort(pt["scores"].numpy())
                                                        - np.sort(ox[1])).max()))
        c, m, b, s = _compare(pt, ox, cap)
        compared, matched = compared + c, matched + m
        box_diff, score_diff = max(box_diff, b), max(score_diff, s)
    return {"images": len(images), "detections": total, "compared": compared,
            "matched": matched, "max_box_diff": box_diff, "max_score_diff": score_diff,
            "max_sorted_score_diff": sorted_diff, "box_tol": BOX_TOL, "score_tol": SCORE_TOL,
            "ok": bool(counts_agree and sorted_diff <= SCORE_TOL
                       and matched >= MATCHED_SHARE * compared)}
