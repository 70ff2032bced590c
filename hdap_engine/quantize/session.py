"""ONNX Runtime sessions: the providers a machine has, and an ONNX model as a classifier.

`OrtClassifier` wraps a session in a parameter-free `torch.nn.Module`, so that
`hdap_engine.accuracy.evaluate` scores the INT8 model that ships exactly as it
scores a PyTorch model: same batches, same metrics, same interval.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# Preferred first; each is used only where this build of ONNX Runtime has it.
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def providers(accelerator: str = "cpu") -> list[str]:
    """The execution providers to ask for: the CPU's, or the GPU's first where present."""
    import onnxruntime as ort

    if accelerator == "cpu":
        return ["CPUExecutionProvider"]
    have = set(ort.get_available_providers())
    return [p for p in PROVIDER_ORDER if p in have]


def session(model_bytes: bytes, *, threads: int = 1, accelerator: str = "cpu"):
    """An inference session for timing or evaluation (sequential, all graph optimisations).

    Parameters
    ----------
    model_bytes:
        The serialised ONNX model.
    threads:
        Intra-op threads (0: ONNX Runtime's default, every core).
    accelerator:
        ``cpu``, or ``gpu`` for TensorRT / CUDA where this ONNX Runtime has them.

    Returns
    -------
    ``onnxruntime.InferenceSession``; its first provider (``get_providers()[0]``) is the
    one named in measurements.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Idle pool threads must not spin: with one thread the work runs on the caller's
    # thread, which the thread clock then sees whole.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, so, providers=providers(accelerator))


class OrtClassifier(nn.Module):
    """An ONNX classifier as a module: ``forward(images) -> logits`` through ONNX Runtime.

    Parameters
    ----------
    model_bytes:
        The serialised ONNX model (one input, logits as its first output).
    threads:
        Intra-op threads (0: every core).
    """

    def __init__(self, model_bytes: bytes, *, threads: int = 0):
        super().__init__()
        self.session = session(model_bytes, threads=threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        first = inp.shape[0] if inp.shape else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().cpu().numpy().astype(np.float32, copy=False)
        if self.fixed_batch == 1 and len(x) > 1:
            out = [self.session.run(None, {self.input_name: x[i:i + 1]})[0]
                   for i in range(len(x))]
            return torch.from_numpy(np.concatenate(out))
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])
