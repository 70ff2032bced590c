"""Runtimes the host backend measures in: the one a device will run, not only eager PyTorch.

A pruned model is as fast as the runtime that executes it: eager PyTorch
dispatches every op from Python, TorchScript runs a traced graph, and ONNX
Runtime fuses and plans the graph ahead (the device agent already runs ONNX).
A candidate that wins in one runtime can lose in another, so the runtime is
chosen per study (``--runtime``), is part of every host measurement's key in
the store, and is named in every source string.

`prepare` turns built PyTorch models into callables that take the example
input, so that `backends.time_models` times all runtimes alike. In INT8
(``--precision int8``) a candidate is not a PyTorch model at all but the
quantised ONNX model that ships (`hdap_engine.quantize`); `prepare_int8`
gives the same callables for those.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence

from hdap_engine.errors import HdapError

RUNTIMES = ("torch", "torchscript", "onnxruntime")
DEFAULT_RUNTIME = "torch"


def check_runtime(runtime: str) -> str:
    """The runtime name, or one `HdapError` line listing the choices.

    Parameters
    ----------
    runtime:
        ``torch``, ``torchscript`` or ``onnxruntime``.

    Returns
    -------
    The name.
    """
    if runtime not in RUNTIMES:
        raise HdapError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    return runtime


def prepare(models: Sequence, example, runtime: str, *, threads: int = 1) -> list[Callable]:
    """Callables ``f(example)`` that run each model in `runtime`.

    Parameters
    ----------
    models:
        Built PyTorch models in eval mode.
    example:
        The example input (a torch tensor at batch 1).
    runtime:
        One of `RUNTIMES`.
    threads:
        Intra-op threads of the runtime (ONNX Runtime's own pool; PyTorch's
        is set by the caller).

    Returns
    -------
    One callable per model.
    """
    check_runtime(runtime)
    if runtime == "torch":
        return list(models)
    if runtime == "torchscript":
        return [_torchscript(m, example) for m in models]
    return [_OrtModel(m, example, threads) for m in models]


def _torchscript(model, example):
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # Traced and frozen, as a deployment would ship it (export.py traces too).
        return torch.jit.freeze(torch.jit.trace(model, example, check_trace=False).eval())


def prepare_int8(bodies: Sequence[bytes], example, *, threads: int = 1) -> list[Callable]:
    """Callables ``f(example)`` that run INT8 ONNX models (`hdap_engine.quantize.cache`).

    Parameters
    ----------
    bodies:
        Serialised INT8 (QDQ) models at batch 1.
    example:
        The example input (a torch tensor at batch 1).
    threads:
        Intra-op threads of ONNX Runtime.

    Returns
    -------
    One callable per model; each has ``.provider``, the execution provider that runs it.
    """
    return [_OrtModel(None, example, threads, body=body) for body in bodies]


class _OrtModel:
    """One model exported to ONNX (in memory) and run by an ONNX Runtime session on the CPU."""

    def __init__(self, model, example, threads: int, *, body: bytes | None = None):
        import onnxruntime as ort
        import torch

        buf = io.BytesIO()
        if body is not None:
            buf.write(body)  # already ONNX (an INT8 model)
        else:
            # The exporter export.py ships with (TorchScript-based, opset 17).
            with warnings.catch_warnings(), torch.no_grad(), \
                    contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=17,
                                  input_names=["input"], output_names=["logits"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads must not spin: with one thread the work runs on the
        # caller's thread, which the thread clock then sees whole.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self._feed = {self.session.get_inputs()[0].name: example.detach().cpu().numpy()}

    def __call__(self, x):
        return self.session.run(None, self._feed)


__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "check_runtime", "prepare", "prepare_int8"]
