"""Export a pruned model as a bundle that every runtime and every teammate can open.

A bundle is a folder, and the same files as a zip beside it:

- ``model.pt2``    `torch.export` program (what PyTorch now recommends)
- ``model.ts``     TorchScript (deprecated in PyTorch 2.14, still what many runtimes load)
- ``model.onnx``   ONNX, checked with ``onnx.checker``
- ``weights.pt``   the state dict, loadable with ``weights_only=True``
- ``widths.json``  the candidate and the kept channels of every group (the pruning
                   history) and the model's `ModelRef` (a file model's source
                   included), from which `load_bundle` rebuilds the model without
                   unpickling anything
- ``model_source.py``  a file model's source, for people to read (only for one)
- ``report.json``  what was pruned, how, to which budget, and everything measured
- ``model.int8.onnx``  with ``--precision int8``: the INT8 (QDQ) model, added after export
                   by `hdap_engine.quantize.bundle.add_int8`

`load_bundle` accepts the folder or the zip.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import tempfile
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from hdap_engine import __version__
from hdap_engine.errors import HdapError
from hdap_engine.infra.jsonable import jsonable
from hdap_engine.models.zoo import get_spec
from hdap_engine.pruning.space import PruningSpace

# 2: the model is a `ModelRef` ("model_ref") beside its key ("model"), with a file
# model's source ("model_source"); format 1 named a registered model only.
WIDTHS_FORMAT = "hdap-widths/2"
WIDTHS_FORMATS = ("hdap-widths/1", WIDTHS_FORMAT)
BUNDLE_FILES = ("model.pt2", "model.ts", "model.onnx", "weights.pt", "widths.json",
                "report.json", "model_source.py")
SOURCE_FILE = "model_source.py"


def versions() -> dict[str, str]:
    """Versions of what produced a bundle (reproducibility)."""
    import torchvision

    from hdap_engine.pruning.groups import torch_pruning

    torch_pruning = torch_pruning()

    return {
        "hdap": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_pruning": getattr(torch_pruning, "__version__", "unknown"),
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def _quiet():
    """Exporters warn about their own deprecations; users cannot act on those."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet(), torch.no_grad():
        torch.jit.trace(model, example, check_trace=False).save(str(path))


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The TorchScript-based exporter: the dynamo one needs onnxscript and brings
    # nothing a fixed-shape CNN needs.
    # nn.MultiheadAttention's inference fast path is one fused op ONNX has no
    # symbol for; the plain path exports as the matmuls it is.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with _quiet(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    import onnx

    onnx.checker.check_model(str(path))


def export_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet():
        program = torch.export.export(model, (example,))
        torch.export.save(program, str(path))


def widths_document(space: PruningSpace, widths, kept: dict[str, list[int]] | None,
                    model_weights: str | None = None) -> dict:
    """The JSON that rebuilds a pruned model: model (key, `ModelRef`, a file's source),
    groups, widths, kept channels. ``model_weights`` says where the weights came from."""
    w = space.check_widths(widths)
    spec = get_spec(space.model)
    source = {}
    if spec.source == "file":
        from hdap_engine.models.userfile import source_file

        source = {"model_source": source_file(spec.sha256).read_text()}
    return {
        "format": WIDTHS_FORMAT,
        "model": space.model,
        "model_ref": spec.ref(model_weights).to_json(),
        **source,
        "input_shape": list(space.input_shape),
        "round_to": space.round_to,
        "groups": [
            {"name": g.name, "base": g.base, "width": int(x), "members": list(g.members),
             **({"kept": kept[g.name]} if kept and g.name in kept else {})}
            for g, x in zip(space.groups, w, strict=True)
        ],
    }


def export_bundle(model: nn.Module, space: PruningSpace, widths, out_dir: str | os.PathLike,
                  report: dict, *, kept: dict[str, list[int]] | None = None,
                  formats: tuple[str, ...] = ("pt2", "ts", "onnx")) -> Path:
    """Write the bundle folder ``out_dir`` and ``out_dir.zip``; return the folder.

    ``report`` must already hold the method, budget and measurements; MACs,
    parameters, widths, time and versions are added here. The folder is
    written to a temporary sibling first and moved into place, so a failed
    export never leaves half a bundle over a good one.
    """
    from hdap_engine.pruning.apply import count_macs_params, widths_of

    # widths.json must describe the weights written beside it, or the bundle
    # cannot be rebuilt (`rebuild_model`): refuse a model of another candidate.
    widths = space.check_widths(widths)
    if (widths_of(model, space) != widths).any():
        raise HdapError("internal: the model to export does not have the candidate's widths; "
                        "the bundle would be inconsistent")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    spec = get_spec(space.model)
    example = spec.example_input()
    if spec.task == "detection":
        # A detector ships as ONNX with its post-processing; tracing or torch.export of its
        # data-dependent post-processing does not give a program that runs on other images.
        formats = tuple(f for f in formats if f == "onnx")
    macs, params = count_macs_params(model, space)
    full = {
        "model": space.model,
        **report,
        "macs": macs,
        "params": params,
        "base_macs": space.base_macs,
        "base_params": space.base_params,
        "input_shape": list(space.input_shape),
        "widths": space.widths_dict(widths),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "files": [f for f in BUNDLE_FILES if _wanted(f, formats)
                  and (f != SOURCE_FILE or get_spec(space.model).source == "file")],
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        torch.save(model.state_dict(), tmp / "weights.pt")
        doc = widths_document(space, widths, kept, report.get("model_weights"))
        (tmp / "widths.json").write_text(json.dumps(doc, indent=1))
        if "model_source" in doc:
            (tmp / SOURCE_FILE).write_text(doc["model_source"])
        if "ts" in formats:
            export_torchscript(model, example, tmp / "model.ts")
        if "onnx" in formats and spec.task == "detection":
            from hdap_engine.export.detection import (
                check_detector_onnx,
                check_images,
                export_detector_onnx,
            )

            export_detector_onnx(model, space.input_shape, tmp / "model.onnx")
            full["onnx_check"] = check_detector_onnx(model, tmp / "model.onnx",
                                                     check_images(space.input_shape))
        elif "onnx" in formats:
            export_onnx(model, example, tmp / "model.onnx")
        if "pt2" in formats:
            export_program(model, example, tmp / "model.pt2")
        (tmp / "report.json").write_text(json.dumps(jsonable(full), indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    zip_path = out.with_name(out.name + ".zip")
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(out.iterdir()):
            zf.write(f, arcname=f"{out.name}/{f.name}")
    return out


def _wanted(name: str, formats) -> bool:
    kind = {"model.pt2": "pt2", "model.ts": "ts", "model.onnx": "onnx"}.get(name)
    return kind is None or kind in formats






