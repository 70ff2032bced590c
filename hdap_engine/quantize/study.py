"""INT8 in a study: FP32 beside INT8 per cluster, and the bundle's INT8 model.

With ``--precision int8`` the study searches, measures and verifies in INT8
(the backend quantises every candidate). `precision_report` adds what a
deployment engineer compares: the chosen candidate's FP32 latency per
cluster measured by the same backend in FP32, next to the INT8 one, and the
``round_to`` the widths were rounded to and why. `ship_int8` adds
``model.int8.onnx`` to the bundle (`bundle.add_int8`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hdap_engine.options import ROUND_TO_BY_PRECISION


def fp32_sibling(backend):
    """The same backend measuring in FP32 (None where it cannot: an agent fleet)."""
    from hdap_engine.latency.backends import HostBackend, TwinBackend

    if isinstance(backend, TwinBackend) and hasattr(backend.twin, "base_preset"):
        from hdap_engine.twin.int8 import fp32_backend

        return fp32_backend(backend)
    if isinstance(backend, HostBackend):
        return HostBackend(threads=backend.threads, batch_models=backend.batch_models,
                           seed=backend.seed, clock=backend.clock, runtime=backend.runtime,
                           precision="fp32")
    return None


def precision_report(ctx, widths, *, progress=None) -> dict:
    """The report's ``precision``, ``round_to`` and (in INT8) ``fp32_side_by_side`` keys.

    Parameters
    ----------
    ctx:
        The prepared `StudyContext`.
    widths:
        The chosen candidate.
    progress:
        The study's progress callback.

    Returns
    -------
    ``{precision, round_to: {value, source}, fp32_side_by_side: {source, clusters:
    [{cluster, int8_ms, fp32_ms, unpruned_fp32_ms}], int8_mean_ms, fp32_mean_ms} | None}``
    """
    from hdap_engine.study.verify import verify_candidate

    opt = ctx.options
    precision = opt.measurement.precision
    default = ROUND_TO_BY_PRECISION[precision]
    out = {"precision": precision,
           "round_to": {"value": int(opt.round_to),
                        "source": f"default for {precision}" if opt.round_to == default
                        else "--round-to"},
           "fp32_side_by_side": None}
    if precision != "int8":
        return out
    sibling = fp32_sibling(ctx.backend)
    if sibling is None:
        return out
    kwargs = {"progress": progress} if progress is not None else {}
    fp32_ctx = replace(ctx, backend=sibling)
    int8 = verify_candidate(ctx, widths, every_device=False, **kwargs)
    fp32 = verify_candidate(fp32_ctx, widths, every_device=False, **kwargs)
    base = verify_candidate(fp32_ctx, ctx.space.base_widths, every_device=False, **kwargs)
    shares = np.asarray(ctx.clustering.shares_, float)
    rows = [{"cluster": c, "int8_ms": float(int8.cluster_measured_ms[c]),
             "fp32_ms": float(fp32.cluster_measured_ms[c]),
             "unpruned_fp32_ms": float(base.cluster_measured_ms[c])} for c in range(ctx.k)]
    out["fp32_side_by_side"] = {
        "source": sibling.source, "clusters": rows,
        "int8_mean_ms": float(np.dot(shares, int8.cluster_measured_ms)),
        "fp32_mean_ms": float(np.dot(shares, fp32.cluster_measured_ms)),
        "unpruned_fp32_mean_ms": float(np.dot(shares, base.cluster_measured_ms))}
    return out


def ship_int8(ctx, bundle) -> dict:
    """``model.int8.onnx`` in the study's bundle, calibrated and scored on the study's data."""
    from hdap_engine.quantize.bundle import add_int8

    data = ctx.accuracy.data if ctx.accuracy is not None else None
    return add_int8(bundle, ctx.options.quantize, data=data, seed=ctx.options.seed)
