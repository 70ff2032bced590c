"""The exported detector scores what the report says: mAP of `model.onnx` in ONNX Runtime,
computed here with pycocotools directly (not the engine's evaluation code path), against
the engine's mAP of the PyTorch model on the same held-out images."""

from __future__ import annotations

import numpy as np
import pytest

DEMO_WEIGHTS = "sample_data/detector_demo_shapes.pt"


def _coco_map(records, detections) -> tuple[float, float]:
    """(mAP@[.5:.95], mAP@.5) by COCO's own evaluation, from boxes in xyxy pixels."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    labels = sorted({int(x) for r in records for x in r.labels})
    images, annotations = [], []
    for i, rec in enumerate(records):
        images.append({"id": i, "width": rec.width, "height": rec.height})
        for box, label in zip(rec.boxes, rec.labels, strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i,
                                "category_id": int(label), "iscrowd": 0,
                                "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c} for c in labels]}
        gt.createIndex()
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.slow  # export and two evaluations of the demo detector (~30 s on 2 cores)
def test_the_exported_onnx_detector_scores_the_engines_map_within_one_point(tmp_path):
    import onnxruntime as ort
    from PIL import Image

    from hdap_engine.accuracy.detection import evaluate_detector
    from hdap_engine.data.coco import load_coco
    from hdap_engine.data.shapes import write_shapes
    from hdap_engine.export.detection import export_detector_onnx
    from hdap_engine.models.zoo import build_model
    from hdap_engine.options import ShapesOptions

    write_shapes(tmp_path / "shapes", ShapesOptions(images=60, size=160, seed=11))
    data = load_coco(tmp_path / "shapes", val_fraction=0.5, seed=0)
    model = build_model("detector_demo", DEMO_WEIGHTS).eval()
    engine = evaluate_detector(model, data.heldout, categories=data.categories)
    assert engine.map_50 > 0.5  # a detector that finds the shapes: the comparison means something

    path = tmp_path / "model.onnx"
    export_detector_onnx(model, (3, 160, 160), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    records = data.heldout.records
    detections = []
    for i, rec in enumerate(records):
        with Image.open(rec.path) as im:  # read and scaled here, not by the engine's Dataset
            image = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
        out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: image}),
                       strict=True))
        for box, score, label in zip(out["boxes"], out["scores"], out["labels"], strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            detections.append({"image_id": i, "category_id": int(label), "score": float(score),
                               "bbox": [x0, y0, x1 - x0, y1 - y0]})
    onnx_map, onnx_map_50 = _coco_map(records, detections)
    assert abs(onnx_map_50 - engine.map_50) <= 0.01, (onnx_map_50, engine.map_50)
    assert abs(onnx_map - engine.map) <= 0.01, (onnx_map, engine.map)
