"""Reading a bundle back: the pruned model rebuilt from its widths and weights, its files, its report.

`load_bundle` accepts the folder or the zip and never unpickles anything:
the model is rebuilt from ``widths.json`` (the pruning history) and the
weights are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.export.bundle import WIDTHS_FORMAT, WIDTHS_FORMATS
from hdap_engine.models.zoo import build_model
from hdap_engine.pruning.apply import prune_to_widths
from hdap_engine.pruning.space import PruningSpace


def rebuild_model(widths_doc: dict, model_weights) -> tuple[nn.Module, PruningSpace, np.ndarray]:
    """A pruned model from its widths document and state dict (no unpickling)."""
    from hdap_engine.models.zoo import read_state_dict

    if widths_doc.get("format") not in WIDTHS_FORMATS:
        raise HdapError(f"widths.json: unknown format {widths_doc.get('format')!r}; "
                        f"expected {WIDTHS_FORMAT}")
    name = model_of(widths_doc)
    space = PruningSpace.for_model(name).with_options(round_to=widths_doc.get("round_to", 8))
    widths = space.widths_from_dict({g["name"]: g["width"] for g in widths_doc["groups"]})
    state = read_state_dict(model_weights, label="weights.pt")
    from hdap_engine.models.zoo import classes_in_state_dict, get_spec

    # The weights decide the classes (a detector fine-tuned on 4 classes of a user's data).
    model = build_model(name, num_classes=classes_in_state_dict(state, get_spec(name)))
    prune_to_widths(model, space, widths, importance="first")
    own = model.state_dict()
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        raise HdapError("weights.pt does not match widths.json; the bundle is inconsistent, "
                        "export it again")
    model.load_state_dict(state)
    return model.eval(), space, widths



def model_of(widths_doc: dict) -> str:
    """The model key of a widths document, its file model's source put in the workspace.

    Format 1 named a registered model by a bare string, which still reads as the
    zoo; format 2 adds the `ModelRef` and, for a file model, its source, checked
    against its sha256 before it is kept (content-addressed) and imported.
    """
    import hashlib

    from hdap_engine.models.spec import ModelRef

    name = widths_doc.get("model")
    if "model_ref" not in widths_doc:
        if not isinstance(name, str):
            raise HdapError("widths.json names no model; export the bundle again")
        return name
    ref = ModelRef.from_json(widths_doc["model_ref"])
    if ref.source == "file":
        from hdap_engine.models.userfile import install_source

        text = widths_doc.get("model_source")
        data = text.encode() if isinstance(text, str) else b""
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise HdapError("widths.json: the model's source does not match its sha256; the "
                            "bundle was changed or damaged, export it again")
        install_source(data, ref.file_name or "model_source.py")
    return ref.key


def read_bundle_files(path: str | os.PathLike) -> dict[str, bytes]:
    """The raw widths.json, weights.pt and report.json of a bundle folder or zip."""
    p = Path(path)
    if p.is_dir():
        read = {n: (p / n).read_bytes() for n in ("widths.json", "weights.pt", "report.json")
                if (p / n).is_file()}
    elif p.is_file() and zipfile.is_zipfile(p):
        read = {}
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                base = info.filename.rsplit("/", 1)[-1]
                if base in ("widths.json", "weights.pt", "report.json"):
                    read[base] = zf.read(info)
    else:
        raise HdapError(f"{p}: not a bundle folder or zip; pass the folder `hdap prune --out` "
                        "wrote, or its .zip")
    for needed in ("widths.json", "weights.pt"):
        if needed not in read:
            raise HdapError(f"{p}: the bundle has no {needed}; export it again")
    return read



def load_bundle(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild the pruned model of a bundle folder or zip; returns (model, report)."""
    p = Path(path)
    read = read_bundle_files(p)
    try:
        doc = json.loads(read["widths.json"])
    except ValueError as exc:
        raise HdapError(f"{p}: widths.json is not valid JSON ({exc})") from None
    model, _, _ = rebuild_model(doc, read["weights.pt"])
    report = json.loads(read["report.json"]) if "report.json" in read else {}
    return model, report



# What each downloadable file is: (button label, description).
DOWNLOADS = {
    "bundle": ("Bundle (.zip)", "everything: TorchScript, ONNX, torch.export program, weights, "
                                "widths.json (rebuilds the model without unpickling), report"),
    "model.ts": ("TorchScript (.ts)", "load with torch.jit.load; what many runtimes take"),
    "model.onnx": ("ONNX (.onnx)", "opset 17, checked with onnx.checker; for ONNX Runtime, "
                                   "TensorRT, OpenVINO"),
    "model.int8.onnx": ("INT8 ONNX (.int8.onnx)", "quantised by ONNX Runtime (QDQ, per-channel "
                                                  "weights); the model to ship in INT8"),
    "report.json": ("Report (.json)", "settings, per-cluster predicted and measured latency, "
                                      "fleet metrics, notes"),
    "report.html": ("Report (.html)", "one self-contained page with the charts, for sharing"),
}



def bundle_files(bundle: str | os.PathLike) -> dict[str, Path]:
    """The downloadable files of an exported bundle folder that exist, by `DOWNLOADS` key."""
    folder = Path(bundle)
    out: dict[str, Path] = {}
    zipped = folder.with_name(folder.name + ".zip")
    if zipped.is_file():
        out["bundle"] = zipped
    for name in ("model.ts", "model.onnx", "model.int8.onnx", "report.json"):
        if (folder / name).is_file():
            out[name] = folder / name
    return out



def read_bundle_report(bundle: str | os.PathLike) -> dict:
    """The report.json of a bundle folder (MACs, parameters and widths added at export)."""
    path = Path(bundle) / "report.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HdapError(f"{path}: the bundle has no report.json; export it again") from None
    except ValueError as exc:
        raise HdapError(f"{path}: not valid JSON ({exc}); export it again") from None

