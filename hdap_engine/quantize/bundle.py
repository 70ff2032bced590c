"""``model.int8.onnx`` in a bundle: the pruned model quantised, and scored as it ships.

`add_int8` reads the bundle's FP32 ``model.onnx``, calibrates and quantises it
(`ptq.quantize_onnx`), writes ``model.int8.onnx`` beside it, measures its
held-out top-1 in ONNX Runtime (the model that ships, not a fake-quantised
PyTorch model), and adds the ``quantization`` block and ``precision`` to
``report.json``:

``{precision, format, weights, activations, calibration, calibrate_on,
n_calibration, file, onnxruntime, provider, ops, top1, ci95, n_heldout,
fp32_onnx_top1, reference: {stage, top1}, drop_points, threshold_points,
suggest_qat, floor: {threshold, met} | null, round_to, warnings}``

The FP32 reference is the best the bundle's own model reached (fine-tuned when
it was, else calibrated); a drop beyond ``--ptq-threshold`` points is said in
the report's notes, with quantisation-aware fine-tuning suggested. With an
accuracy floor, the INT8 top-1 is what the floor judges. A fine-tuned bundle
is quantised again (`hdap_engine.finetune.run.finetune_bundle` calls this).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from hdap_engine.errors import HdapError
from hdap_engine.infra.jsonable import jsonable

INT8_FILE = "model.int8.onnx"


def add_int8(bundle: str | Path, plan, *, data=None, seed: int = 0) -> dict:
    """Quantise a bundle's model to INT8, score it, and record it in the bundle.

    Parameters
    ----------
    bundle:
        An export bundle folder (with ``model.onnx`` and ``report.json``).
    plan:
        The study's `QuantizePlan` (calibrator, source, image count, threshold).
    data:
        The study's `LabelledData` (calibration images from its training part, top-1
        on its held-out part); None only with ``calibrate_on="random"``.
    seed:
        Seed of the calibration images.

    Returns
    -------
    The report's ``quantization`` block.
    """
    import onnxruntime as ort

    from hdap_engine.accuracy.evaluate import evaluate
    from hdap_engine.quantize.images import RANDOM_WARNING, data_images, random_images
    from hdap_engine.quantize.ptq import int8_summary, quantize_onnx
    from hdap_engine.quantize.session import OrtClassifier

    folder = Path(bundle)
    if not (folder / "model.onnx").is_file():
        raise HdapError(f"{folder}: has no model.onnx to quantise; export the bundle with the "
                        "onnx format")
    report = json.loads((folder / "report.json").read_text())
    fp32 = (folder / "model.onnx").read_bytes()
    warnings: list[str] = []
    if plan.calibrate_on == "random":
        images = random_images(report.get("input_shape") or _input_shape(fp32),
                               plan.quant_images, seed=seed)
        warnings.append(RANDOM_WARNING)
    elif data is None:
        raise HdapError("--precision int8 calibrates on the --data images, and there are "
                        "none: give --data, or add --calibrate-on random")
    else:
        images = data_images(data, plan.quant_images, seed=seed)
    body = quantize_onnx(fp32, images, calibration=plan.calibration)
    (folder / INT8_FILE).write_bytes(body)
    block = {
        "precision": "int8", "format": "QDQ (ONNX Runtime quantize_static)",
        "weights": "INT8, symmetric, per channel", "activations": "INT8, symmetric",
        "calibration": plan.calibration, "calibrate_on": plan.calibrate_on,
        "n_calibration": int(len(images)), "file": INT8_FILE,
        "onnxruntime": ort.__version__, "provider": "CPUExecutionProvider",
        "ops": int8_summary(body), "top1": None, "ci95": None, "n_heldout": None,
        "fp32_onnx_top1": None, "reference": None, "drop_points": None,
        "threshold_points": float(plan.ptq_threshold), "suggest_qat": False, "floor": None,
        "round_to": report.get("round_to"), "warnings": warnings}
    notes = list(report.get("notes") or [])
    if data is not None and plan.calibrate_on == "data":
        int8 = OrtClassifier(body)
        got = evaluate(int8, data.heldout)
        block["provider"] = int8.provider
        block.update(top1=got.top1, ci95=list(got.ci95), n_heldout=got.n)
        block["fp32_onnx_top1"] = evaluate(OrtClassifier(fp32), data.heldout).top1
        acc = report.get("accuracy") or {}
        stage = "finetuned" if acc.get("finetuned") is not None else "calibrated"
        ref = acc.get(stage)
        if ref is None:
            stage, ref = "fp32 onnx", block["fp32_onnx_top1"]
        drop = 100.0 * (float(ref) - got.top1)
        block.update(reference={"stage": stage, "top1": float(ref)}, drop_points=drop,
                     suggest_qat=drop > plan.ptq_threshold)
        if block["suggest_qat"]:
            notes.append(f"INT8 loses {drop:.1f} top-1 points against the {stage} FP32 model "
                         f"(more than --ptq-threshold {plan.ptq_threshold:g}): try another "
                         "--calibration, more --quant-images, or quantisation-aware "
                         "fine-tuning")
        threshold = (acc.get("floor") or {}).get("threshold")
        if threshold is not None:
            block["floor"] = {"threshold": float(threshold), "met": got.top1 >= threshold}
            if got.top1 < threshold:
                notes.append(f"the INT8 model's top-1 {got.top1:.1%} is below the accuracy "
                             f"floor {threshold:.1%} (the floor judges the INT8 model)")
    notes.extend(w for w in warnings if w not in notes)
    report.update(precision="int8", quantization=block, notes=notes)
    files = list(report.get("files") or [])
    report["files"] = files + ([INT8_FILE] if INT8_FILE not in files else [])
    (folder / "report.json").write_text(json.dumps(jsonable(report), indent=2))
    _rezip(folder)
    return block


def _input_shape(model_bytes: bytes) -> list[int]:
    import onnx

    dims = onnx.load_model_from_string(model_bytes).graph.input[0].type.tensor_type.shape.dim
    return [int(d.dim_value) for d in dims[1:]]


def _rezip(folder: Path) -> None:
    """The bundle's zip again, with the INT8 model and the new report."""
    zip_path = folder.with_name(folder.name + ".zip")
    tmp = zip_path.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                zf.write(f, arcname=f"{folder.name}/{f.name}")
    tmp.replace(zip_path)


def quantization_line(block: dict | None) -> str:
    """The report's ``quantization`` block as one line for the terminal."""
    if not block:
        return "precision: fp32"
    head = (f"int8 ({block['calibration']} calibration on {block['n_calibration']} "
            f"{'random inputs' if block['calibrate_on'] == 'random' else 'images of --data'}, "
            f"{block['file']})")
    if block.get("top1") is None:
        return f"{head}: INT8 top-1 unknown"
    ref = block.get("reference") or {}
    text = (f"{head}: INT8 top-1 {100 * block['top1']:.1f}% by ONNX Runtime "
            f"({block['provider']}) on {block['n_heldout']} held-out images")
    if ref.get("top1") is not None:
        text += (f", {ref['stage']} FP32 {100 * ref['top1']:.1f}% "
                 f"({-block['drop_points']:+.1f} points)")
    return text
