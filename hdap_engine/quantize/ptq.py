"""Post-training static INT8 quantisation with ONNX Runtime's quantiser.

The recipe is fixed where it matters for deployment and written once here:
QDQ format (QuantizeLinear / DequantizeLinear pairs around each op, which
ONNX Runtime, TensorRT and most NPU compilers fuse into INT8 kernels),
per-channel symmetric INT8 weights, symmetric INT8 activations (zero point 0,
what integer accelerators expect) and the activation ranges from one of
ONNX Runtime's calibrators (MinMax, Entropy, Percentile).

An op that carries weights but that the quantiser has no INT8 form for
(a recurrent cell, an Einsum...) would quietly stay FP32 inside an "INT8"
model; it is refused by name instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from hdap_engine.errors import HdapError

CALIBRATORS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Ops that only move or reshape data: they need no INT8 form of their own.
_DATA_OPS = {"Shape", "Gather", "Constant", "Identity", "Cast", "Reshape", "Flatten",
             "Squeeze", "Unsqueeze", "Concat", "Transpose"}


def onnx_bytes(model, example, *, dynamic_batch: bool = False) -> bytes:
    """A PyTorch model as ONNX in memory (the exporter `export.bundle` ships with, opset 17).

    Parameters
    ----------
    model:
        The model in eval mode.
    example:
        The example input at batch 1.
    dynamic_batch:
        Leave the batch dimension free (bundles do; timing fixes it at 1).

    Returns
    -------
    The serialised ONNX model.
    """
    import torch

    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes=axes)
    return buf.getvalue()


def unquantisable_ops(model_bytes: bytes) -> list[str]:
    """Ops with weights that ONNX Runtime's QDQ quantiser cannot quantise, as ``Op (node)``.

    Parameters
    ----------
    model_bytes:
        A serialised FP32 ONNX model.

    Returns
    -------
    One entry per offending node (empty when every weighted op has an INT8 form).
    """
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry

    model = onnx.load_model_from_string(model_bytes)
    weights = {t.name for t in model.graph.initializer if len(t.dims) >= 2}
    out = []
    for node in model.graph.node:
        if node.op_type in QDQRegistry or node.op_type in _DATA_OPS:
            continue
        if any(name in weights for name in node.input):
            out.append(f"{node.op_type} ({node.name or 'unnamed'})")
    return out


class _Reader:
    """ONNX Runtime's `CalibrationDataReader` over an array of images, in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int):
        self.images = images
        self.input_name = input_name
        self.batch = batch
        self.start = 0

    def get_next(self):
        if self.start >= len(self.images):
            return None
        chunk = self.images[self.start:self.start + self.batch]
        self.start += self.batch
        return {self.input_name: chunk}

    def rewind(self):
        self.start = 0


def quantize_onnx(model_bytes: bytes, images: np.ndarray, *, calibration: str = "minmax"
                  ) -> bytes:
    """The INT8 (QDQ) form of an FP32 ONNX classifier, calibrated on ``images``.

    Parameters
    ----------
    model_bytes:
        The FP32 model (one float input).
    images:
        (N, C, H, W) float32 calibration images, preprocessed as the model expects; N >= 2.
    calibration:
        ``minmax``, ``entropy`` or ``percentile``.

    Returns
    -------
    The serialised INT8 model.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration not in CALIBRATORS:
        raise HdapError(f"unknown calibration {calibration!r}; choose one of: "
                        f"{', '.join(CALIBRATORS)}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim < 2 or len(images) < 2:
        raise HdapError(f"INT8 calibration needs at least 2 images, got {len(images)}: "
                        "activation ranges from one image clip every other input; give more "
                        "images (--quant-images, or a larger --data)")
    bad = unquantisable_ops(model_bytes)
    if bad:
        raise HdapError(f"ONNX Runtime's quantiser cannot quantise {bad[0]}"
                        f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}: its "
                        "weights would stay FP32 inside the INT8 model; replace that op or "
                        "use --precision fp32")
    model = onnx.load_model_from_string(model_bytes)
    graph_input = model.graph.input[0]
    name = graph_input.name
    first = graph_input.type.tensor_type.shape.dim[0]
    batch = 1 if first.HasField("dim_value") and first.dim_value == 1 else 32
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(images, name, batch)
    method = getattr(CalibrationMethod, CALIBRATORS[calibration])
    with tempfile.TemporaryDirectory(prefix="hdap-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs advice per node
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                quantize_static(
                    str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
                    calibration_providers=["CPUExecutionProvider"])
        except HdapError:
            raise
        except Exception as exc:  # noqa: BLE001 - the quantiser's own message, on one line
            text = " ".join(str(exc).split())[:300]
            raise HdapError(f"ONNX Runtime's quantiser failed: {text}; use --precision fp32 "
                            "or report the model") from None
        finally:
            logging.getLogger().setLevel(quiet)
        return dst.read_bytes()


def int8_summary(model_bytes: bytes) -> dict:
    """What the quantiser made: op counts of the INT8 model (QDQ pairs, INT8 weights)."""
    import onnx

    model = onnx.load_model_from_string(model_bytes)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    int8_weights = sum(1 for t in model.graph.initializer
                       if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2)
    return {"quantize_linear": ops.get("QuantizeLinear", 0),
            "dequantize_linear": ops.get("DequantizeLinear", 0),
            "int8_weight_tensors": int8_weights, "bytes": len(model_bytes)}
