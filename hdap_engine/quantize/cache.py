"""Candidates quantised for timing, kept in the workspace by architecture.

Every candidate the host or an agent times in INT8 is quantised first, and a
search asks for the same architecture many times (finalists, verification,
the next study on the same model). The INT8 model of one architecture is
written once under ``$HDAP_HOME/int8/`` and read back after. Timing does not
depend on the weights' values nor on the activation ranges (the kernels are
the same), so a timed candidate is pruned from the model's own initialisation
(as FP32 timing does) and calibrated on a few random inputs; the key is what
decides its kernels: model, input shape, widths, calibration settings and the
ONNX Runtime version.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from hdap_engine.infra.workspace import home


def _key(model: str, input_shape, widths, calibration: str, n_images: int) -> str:
    import onnxruntime as ort

    from hdap_engine.latency.store import shape_key, widths_key

    text = "|".join([model, shape_key(input_shape), widths_key(widths), calibration,
                     str(int(n_images)), ort.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_dir() -> Path:
    """``$HDAP_HOME/int8``: quantised candidates, one file per architecture."""
    return home() / "int8"


def int8_candidate(space, widths, *, calibration: str = "minmax", n_images: int = 8,
                   seed: int = 0) -> bytes:
    """The INT8 ONNX model (batch 1) of one candidate, from the workspace when it is there.

    Parameters
    ----------
    space:
        The model's `PruningSpace`.
    widths:
        The candidate.
    calibration:
        The calibrator (`ptq.CALIBRATORS`).
    n_images:
        Random calibration inputs (timing only: ranges do not change the kernels).
    seed:
        Seed of those inputs.

    Returns
    -------
    The serialised INT8 model.
    """
    widths = np.asarray(widths, dtype=np.int64)
    path = cache_dir() / f"{space.model}-{_key(space.model, space.input_shape, widths, calibration, n_images)}.onnx"
    if path.is_file():
        return path.read_bytes()
    from hdap_engine.models.zoo import build_model, get_spec
    from hdap_engine.pruning.apply import prune_to_widths
    from hdap_engine.quantize.images import random_images
    from hdap_engine.quantize.ptq import onnx_bytes, quantize_onnx

    model = build_model(space.model)
    # Which channels survive does not change the time; the shape does.
    prune_to_widths(model, space, widths, importance="first")
    model.eval()
    fp32 = onnx_bytes(model, get_spec(space.model).example_input())
    body = quantize_onnx(fp32, random_images(space.input_shape, n_images, seed=seed),
                         calibration=calibration)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed: two processes timing the same candidate never read half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    os.replace(tmp, path)
    return body
