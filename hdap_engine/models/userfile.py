"""The user's own network from a Python file: ``path/to/file.py:FUNCTION``.

``FUNCTION`` builds an ``nn.Module`` (optionally taking ``num_classes``). The
file is copied into the workspace named by its sha256 (``models/<sha256>.py``)
and the model is named by its key ``file:<sha256[:16]>:FUNCTION[@CxHxW]``, so a
job's worker process, a later session and a bundle read the same code whatever
happens to the user's path. A file is code: importing it runs it (the app
offers it only where the server's operator allows, docs/models.md).

Resolving a file model builds it once on the meta device and runs one forward
pass there: it must return ``(1, classes)`` float logits, its classifier is the
last Linear (or convolution) that produced them, and its memory need at the
input shape must fit this machine (`hdap_engine.models.footprint`).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

from hdap_engine.errors import HdapError
from hdap_engine.infra.workspace import home, write_once
from hdap_engine.models.footprint import check_fits, probe_forward
from hdap_engine.models.spec import (
    ModelSpec,
    classify,
    file_key,
    parse_input_shape,
    path_parts,
    shape_text,
    split_shape,
    with_shape,
)

FOLDER = "models"


def install_source(data: bytes, file_name: str) -> str:
    """Keep a model file's source in the workspace by content; returns its sha256."""
    sha = hashlib.sha256(data).hexdigest()
    folder = home() / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    write_once(folder / f"{sha}.py", data)
    label = folder / f"{sha}.name"
    if not label.is_file():
        label.write_text(Path(file_name).name)
    return sha


def source_file(sha: str) -> Path:
    """The workspace copy of a model file by its sha256 (or its first 16 characters)."""
    found = sorted((home() / FOLDER).glob(f"{sha[:16]}*.py"))
    if not found:
        raise HdapError(f"the model file with sha256 {sha[:16]}... is not in this workspace "
                        f"({home()}); name the file again (PATH.py:FUNCTION) or open the "
                        "bundle that carries it")
    return found[0]


def resolve_path(text: str, input_shape=None) -> str:
    """``PATH.py:FUNCTION`` (+ an input shape) -> the model's key, the file kept in the
    workspace."""
    path_text, function = path_parts(text)
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise HdapError(f"{path_text}: no such model file; name it as PATH.py:FUNCTION with "
                        "a path that exists")
    sha = install_source(path.read_bytes(), path.name)
    key = file_key(sha, function)
    if input_shape is not None:
        key = f"{key}@{shape_text(parse_input_shape(input_shape))}"
    return file_spec(key).name


def resolve_source(data: bytes, file_name: str, function: str, input_shape=None) -> str:
    """An uploaded file's model (its bytes, the name it had, the builder function) -> its key."""
    if not function or not function.isidentifier():
        raise HdapError(f"{function!r} is not a Python function name; name the function in "
                        f"{file_name} that builds the model")
    sha = install_source(data, file_name)
    key = file_key(sha, function)
    if input_shape not in (None, ""):
        key = f"{key}@{shape_text(parse_input_shape(input_shape))}"
    return file_spec(key).name


@functools.lru_cache(maxsize=64)
def _module(sha16: str):
    path = source_file(sha16)
    label = _display(path)
    name = f"hdap_user_model_{sha16}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up here
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise HdapError(f"{label}: importing it raised {_exc(exc)}; fix the file") from None
    return module


def _display(path: Path) -> str:
    label = path.with_suffix(".name")
    return label.read_text().strip() if label.is_file() else path.name


def _exc(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _function(sha16: str, function: str):
    module = _module(sha16)
    label = _display(source_file(sha16))
    fn = getattr(module, function, None)
    if not callable(fn):
        defined = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                   and getattr(v, "__module__", None) == module.__name__]
        near = difflib.get_close_matches(function, defined, n=3, cutoff=0.5)
        hint = (f"; did you mean {', '.join(near)}?" if near else
                f"; it defines {', '.join(defined[:8])}" if defined else "")
        raise HdapError(f"{label} does not define a function {function!r}{hint}")
    return fn, label


def _builder(sha16: str, function: str, default_classes: int | None):
    """``build(num_classes=None)`` around the user's function, with one-line errors."""
    fn, label = _function(sha16, function)
    try:
        params = inspect.signature(fn).parameters
        takes = "num_classes" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes = False

    def build(num_classes: int | None = None):
        from torch import nn

        kwargs = {}
        if num_classes is not None and num_classes != default_classes:
            if not takes:
                raise HdapError(f"{label}:{function} takes no num_classes, so it cannot build "
                                f"{num_classes} classes (it builds {default_classes})")
            kwargs["num_classes"] = num_classes
        try:
            model = fn(**kwargs)
        except HdapError:
            raise
        except Exception as exc:
            raise HdapError(f"{label}:{function}() raised {_exc(exc)}") from None
        if not isinstance(model, nn.Module):
            raise HdapError(f"{label}:{function}() returned a {type(model).__name__}, not an "
                            "nn.Module")
        return model

    return build, label


@functools.lru_cache(maxsize=64)
def file_spec(key: str) -> ModelSpec:
    """The spec of ``file:<sha16>:FUNCTION[@CxHxW]`` (built once on the meta device)."""
    import torch

    base, shape = split_shape(key)
    source, rest = classify(base)
    if source == "path":
        return file_spec(resolve_path(base, shape))
    sha16, function = rest.split(":", 1)
    build, label = _builder(sha16, function, None)
    what = f"{label}:{function}"
    try:
        with torch.device("meta"):
            model = build()
        device = "meta"
    except Exception:  # it cannot build on shapes alone, or raises: build it for real
        model, device = build(), "cpu"
    own = _says_shape(model)
    input_shape = shape or own
    if input_shape is None:
        raise HdapError(f"{what} does not say its input shape; give --input-shape C,H,W "
                        "(e.g. 3,224,224)")
    params = sum(int(p.numel()) for p in model.parameters())
    check_fits(what, input_shape, params, 0)
    try:
        probe = probe_forward(model.eval(), torch.zeros((1, *input_shape), device=device))
    except Exception as exc:
        if device == "cpu":
            raise HdapError(f"{what}: its forward pass on a 1x{shape_text(input_shape)} input "
                            f"raised {_exc(exc)}; check --input-shape") from None
        model, device = build(), "cpu"  # data-dependent code: run it for real
        try:
            probe = probe_forward(model.eval(), torch.zeros((1, *input_shape)))
        except Exception as exc2:
            raise HdapError(f"{what}: its forward pass on a 1x{shape_text(input_shape)} input "
                            f"raised {_exc(exc2)}; check --input-shape") from None
    check_fits(what, input_shape, params, probe.activations)
    if isinstance(probe.output, (list, tuple)) and probe.output and \
            isinstance(probe.output[0], dict):
        return _detector_file_spec(sha16, function, input_shape, own, what, label, params)
    classes = _logits_classes(probe.output, what, input_shape)
    classifier = _classifier(model, probe.executed, classes, what)
    build, _ = _builder(sha16, function, classes)
    sha = source_file(sha16).stem
    return ModelSpec(
        name=with_shape(file_key(sha, function), input_shape, own),
        input_shape=tuple(input_shape), num_classes=classes, classifier=classifier,
        builder=build, source="file", sha256=sha, file_name=label,
        description=f"{function} from {label} (sha256 {sha[:12]}), input "
                    f"{shape_text(input_shape)}, {params / 1e6:.2f} M parameters",
    )


def _says_shape(model) -> tuple[int, int, int] | None:
    """An input shape the model states itself (``input_shape``, or timm's config)."""
    transform = getattr(model, "transform", None)
    if transform is not None and hasattr(transform, "min_size"):  # torchvision's detectors
        from hdap_engine.models.detection import own_input_shape

        return own_input_shape(model)
    for value in (getattr(model, "input_shape", None),
                  (getattr(model, "pretrained_cfg", None) or {}).get("input_size"),
                  (getattr(model, "default_cfg", None) or {}).get("input_size")):
        if value is not None:
            try:
                return parse_input_shape(value)
            except HdapError:
                continue
    return None


def _logits_classes(out, what: str, input_shape) -> int:
    """The class count of a forward's output, which must be (1, classes) float logits."""
    import torch

    given = f"a 1x{shape_text(input_shape)} input"
    if not isinstance(out, torch.Tensor):
        raise HdapError(f"{what}: the output is not logits: its forward on {given} returns a "
                        f"{type(out).__name__}, not a (1, classes) tensor")
    if out.ndim != 2 or out.shape[0] != 1:
        raise HdapError(f"{what}: the output is not logits: its forward on {given} gives shape "
                        f"{tuple(out.shape)}, not (1, classes)")
    if not out.dtype.is_floating_point:
        raise HdapError(f"{what}: the output is not logits: its forward gives {out.dtype} "
                        "values, not floats")
    return int(out.shape[1])


def _classifier(model, executed, classes: int, what: str) -> str:
    from torch import nn

    modules = dict(model.named_modules())
    for name in reversed(executed):
        m = modules.get(name)
        if (isinstance(m, nn.Linear) and m.out_features == classes) or \
                (isinstance(m, nn.Conv2d) and m.out_channels == classes):
            return name
    raise HdapError(f"{what}: no Linear or convolution layer gives its {classes} outputs, so "
                    "its classifier (the layer pruning never touches) cannot be found")


def _detector_file_spec(sha16: str, function: str, input_shape, own, what: str, label: str,
                        params: int) -> ModelSpec:
    """A file model whose forward returns detections: it must follow torchvision's detection
    interface (`hdap_engine.models.detection.is_detector`), checked on a real build."""
    from hdap_engine.models.detection import (
        is_detector,
        num_classes_of_detector,
        predictor_layers,
    )

    build, _ = _builder(sha16, function, None)
    model = build()
    if not is_detector(model, input_shape):
        raise HdapError(f"{what}: its output is neither logits nor detections: a detector "
                        "must return one dict of boxes, labels and scores per image, as "
                        "torchvision's detectors do")
    classes = num_classes_of_detector(model)
    build, _ = _builder(sha16, function, classes)
    sha = source_file(sha16).stem
    return ModelSpec(
        name=with_shape(file_key(sha, function), input_shape, own),
        input_shape=tuple(input_shape), num_classes=classes,
        classifier=",".join(predictor_layers(model)), builder=build, source="file",
        sha256=sha, file_name=label, task="detection",
        description=f"{function} from {label} (sha256 {sha[:12]}, detector), input "
                    f"{shape_text(input_shape)}, {params / 1e6:.2f} M parameters",
    )
