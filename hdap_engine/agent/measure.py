"""What the agent does with an uploaded model: refuse what is unsafe, load, time.

The body of ``POST /measure`` comes from the network, so it is checked before
any loader sees it:

- A Python pickle (first byte 0x80, what ``torch.save`` of old wrote and what
  ``pickle.dumps`` writes) is refused outright: the agent never unpickles.
- ``torchscript`` must be a zip archive with the TorchScript layout
  (``<name>/data.pkl`` plus ``<name>/constants.pkl`` or ``<name>/code/``), and
  its unpacked size is bounded (no zip bombs). Only then is it handed to
  ``torch.jit.load``, whose C++ unpickler resolves tensors and TorchScript
  classes only; it never imports a Python module or calls a Python function.
  A ``torch.save`` checkpoint is a zip too, but lacks that layout, and is
  refused.
- ``onnx`` is parsed by onnxruntime from bytes. A model that points at
  external data files (a path on this device) is refused first.

An ONNX model with one input of rank 3 (a detector exported whole, one image in,
boxes, scores and labels out) is fed one image when the shape asks for a batch of
one. Timing: warm-up runs, then timed runs of one forward pass each with
``time.perf_counter_ns``, under ``torch.inference_mode``; on CUDA each run is
synchronised. Runs on edge devices: standard library, torch, and
onnxruntime + numpy when present; Python 3.8 syntax.
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
import zipfile

MESSAGE_CHARS = 300
ACCELERATORS = ("auto", "cpu", "cuda")
ORT_MISSING = "onnxruntime not installed on this device; send format=torchscript"

_ORT_FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


class ModelRejected(Exception):
    """The body is not a usable model of the stated format, or fails on the shape (HTTP 400)."""


def one_line(message: object, limit: int = MESSAGE_CHARS) -> str:
    """Squeeze a runtime's (often multi-line) message into one line of at most `limit` chars.

    TorchScript errors start with an interpreter traceback and end with the
    actual error, so for those the last line is the one worth keeping.
    """
    text = str(message)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Traceback of TorchScript" in text and lines:
        text = lines[-1]
    else:
        text = " ".join(lines)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or "no message"


def check_not_pickle(body: bytes) -> None:
    """Refuse a raw Python pickle before anything could load it."""
    if body[:1] == b"\x80":
        raise ModelRejected(
            "body is a Python pickle; the agent never unpickles. Export the model with "
            "torch.jit.trace/torch.jit.script + torch.jit.save (format=torchscript) "
            "or torch.onnx.export (format=onnx)"
        )


def check_torchscript_archive(body: bytes, max_unpacked_bytes: int) -> None:
    """Refuse anything that is not a TorchScript zip archive of bounded unpacked size."""
    if not body.startswith(b"PK"):
        raise ModelRejected(
            "body is not a TorchScript archive (not a zip file); save the model with torch.jit.save"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelRejected(f"body is not a TorchScript archive: {one_line(exc)}") from None
    names = [info.filename for info in infos]
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise ModelRejected(
            "body is a zip file but not a TorchScript archive (expected one top folder); "
            "save the model with torch.jit.save"
        )
    root = roots.pop()
    has_data = f"{root}/data.pkl" in names
    has_constants = f"{root}/constants.pkl" in names
    has_code = any(name.startswith(f"{root}/code/") for name in names)
    if not (has_data and (has_constants or has_code)):
        raise ModelRejected(
            "body is a zip file but not a TorchScript archive (no code/ or constants.pkl; "
            "a torch.save checkpoint is not a model); save the model with torch.jit.save"
        )
    unpacked = sum(info.file_size for info in infos)
    if unpacked > max_unpacked_bytes:
        raise ModelRejected(
            f"TorchScript archive unpacks to {unpacked} bytes, over this agent's limit "
            f"of {max_unpacked_bytes}"
        )


# The key of an ONNX StringStringEntryProto ``{key: "location"}``, as protobuf
# encodes it (field 1, length 8): every external-data reference contains it.
_EXTERNAL_DATA_MARK = b"\x0a\x08location"


def check_onnx_self_contained(body: bytes) -> None:
    """Refuse an ONNX model whose tensors live in external files on this device.

    Recent onnxruntime refuses these itself when loading from bytes; older
    builds on edge devices may not, and would read a file the sender names.
    A cheap byte scan finds candidates; the ``onnx`` package, where present,
    confirms (an input that happens to be named "location" is not external data).
    """
    if _EXTERNAL_DATA_MARK not in body:
        return
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        uses = True
    else:
        try:
            model = onnx.load_model_from_string(body)  # a string never loads external files
        except Exception as exc:  # noqa: BLE001 - any parse failure is the sender's problem
            raise ModelRejected(f"body is not a valid ONNX model: {one_line(exc)}") from None
        nodes = [node for function in model.functions for node in function.node]
        uses = any(uses_external_data(t) for t in _onnx_tensors(model.graph, nodes))
    if uses:
        raise ModelRejected(
            "ONNX model references external data files; send a self-contained model "
            "(torch.onnx.export to one file, or onnx.save without save_as_external_data)"
        )


def _onnx_tensors(graph, extra_nodes=()):
    """Every tensor of an ONNX graph, its subgraphs (If/Loop bodies) and `extra_nodes`."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in [*graph.node, *extra_nodes]:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for sub in attr.graphs:
                yield from _onnx_tensors(sub)


def resolve_accelerator(requested: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if requested not in ACCELERATORS:
        raise ValueError(f"accelerator {requested!r} is not one of {', '.join(ACCELERATORS)}")
    has_cuda = bool(torch.cuda.is_available())
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    if requested == "cuda" and not has_cuda:
        raise ValueError("accelerator 'cuda' requested but torch sees no CUDA device")
    return requested


def measure_model(
    body: bytes,
    fmt: str,
    shape: tuple[int, ...],
    warmup: int,
    repeats: int,
    *,
    threads: int | None = None,
    accelerator: str = "cpu",
    max_unpacked_bytes: int = 1 << 30,
) -> dict:
    """Load a model from `body` and time `repeats` forward passes on a random input.

    Parameters
    ----------
    body : bytes
        The uploaded file: an ONNX model or a TorchScript archive.
    fmt : {"onnx", "torchscript"}
    shape : tuple of int
        Input shape (already checked by `protocol.parse_shape`).
    warmup, repeats : int
        Untimed and timed forward passes.
    threads : int, optional
        Intra-op threads for onnxruntime (torch threads are set by the server).
    accelerator : {"cpu", "cuda"}
        Where to run (already resolved).
    max_unpacked_bytes : int
        Bound on a TorchScript archive's unpacked size.

    Returns
    -------
    dict
        ``format``, ``shape``, ``runtime``, ``accelerator``, ``threads``,
        ``warmup``, ``repeats``, ``latencies_ms``, ``median_ms``.

    Raises
    ------
    ModelRejected
        The body is unsafe, not a model of `fmt`, or the model fails on `shape`.
    """
    check_not_pickle(body)
    if fmt == "torchscript":
        runtime, run_once, used_threads = _prepare_torchscript(
            body, shape, accelerator, max_unpacked_bytes
        )
    elif fmt == "onnx":
        runtime, run_once, used_threads = _prepare_onnx(body, shape, accelerator, threads)
    else:
        raise ModelRejected(f"format {fmt!r} is not supported")

    try:
        latencies = _time(run_once, warmup, repeats, accelerator, fmt)
    except ModelRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - the runtime's error is the sender's answer
        raise ModelRejected(
            f"model fails on shape {','.join(map(str, shape))}: {one_line(exc)}"
        ) from None
    return {
        "format": fmt,
        "shape": list(shape),
        "runtime": runtime,
        "accelerator": accelerator,
        "threads": used_threads,
        "warmup": warmup,
        "repeats": repeats,
        "latencies_ms": latencies,
        "median_ms": statistics.median(latencies),
    }


def _time(run_once, warmup: int, repeats: int, accelerator: str, fmt: str) -> list[float]:
    import torch

    sync = torch.cuda.synchronize if (accelerator == "cuda" and fmt == "torchscript") else None
    mode = getattr(torch, "inference_mode", torch.no_grad)
    latencies = []
    with mode():
        for _ in range(warmup):
            run_once()
        if sync is not None:
            sync()
        for _ in range(repeats):
            start = time.perf_counter_ns()
            run_once()
            if sync is not None:
                sync()
            latencies.append((time.perf_counter_ns() - start) / 1e6)
    return latencies


def _prepare_torchscript(body: bytes, shape, accelerator: str, max_unpacked_bytes: int):
    import torch

    check_torchscript_archive(body, max_unpacked_bytes)
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 marks torch.jit as deprecated; the format is still what edge stacks load.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(io.BytesIO(body), map_location=accelerator)
    except Exception as exc:  # noqa: BLE001 - any load failure means a bad body
        raise ModelRejected(f"body is not a valid TorchScript model: {one_line(exc)}") from None
    model.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(accelerator)

    def run_once():
        return model(x)

    return f"torch {torch.__version__}", run_once, int(torch.get_num_threads())


def _prepare_onnx(body: bytes, shape, accelerator: str, threads: int | None):
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        raise ModelRejected(ORT_MISSING) from None

    check_onnx_self_contained(body)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or 0)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: warnings would flood the agent's log
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if accelerator == "cuda":
        # TensorRT first where this ONNX Runtime has it: it fuses an INT8 (QDQ) model's
        # quantise / dequantise pairs into INT8 kernels; CUDA otherwise.
        providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
                     if p in available] + providers
    try:
        session = ort.InferenceSession(body, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad body
        raise ModelRejected(f"body is not a valid ONNX model: {one_line(exc)}") from None

    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelRejected(
            f"ONNX model has {len(inputs)} inputs ({names}); the agent feeds exactly one"
        )
    spec = inputs[0]
    dtype = _ORT_FLOAT_TYPES.get(spec.type)
    if dtype is None:
        raise ModelRejected(
            f"ONNX input {spec.name!r} has type {spec.type}; the agent feeds float tensors only"
        )
    declared = list(spec.shape or [])
    given = ",".join(map(str, shape))
    if declared and len(declared) == len(shape) - 1 and shape[0] == 1:
        # A detector's ONNX (torchvision's interface, post-processing inside) takes one
        # image (C, H, W) where a classifier's takes a batch (N, C, H, W): a batch of one
        # is fed to it as its one image, so a study's (1, C, H, W) times both alike.
        shape = tuple(shape[1:])
        given = f"{given} (a batch of one: the image {','.join(map(str, shape))})"
    if declared and len(declared) != len(shape):
        raise ModelRejected(
            f"ONNX input {spec.name!r} has rank {len(declared)} {declared}; shape {given} has rank {len(shape)}"
        )
    for axis, (want, got) in enumerate(zip(declared, shape)):  # noqa: B905 - 3.8 has no strict=
        if isinstance(want, int) and want > 0 and want != got:
            raise ModelRejected(
                f"ONNX input {spec.name!r} has shape {declared}; shape {given} differs at dimension {axis}"
            )
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    feed = {spec.name: x}

    def run_once():
        return session.run(None, feed)

    provider = session.get_providers()[0] if session.get_providers() else "CPUExecutionProvider"
    # The provider is named in every measurement: an INT8 model is fast or slow by it.
    runtime = f"onnxruntime {ort.__version__} ({provider})"
    return runtime, run_once, int(threads) if threads else None
