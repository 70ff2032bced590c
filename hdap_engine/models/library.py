"""Models by name from the libraries users already use: ``torchvision:NAME`` and ``timm:NAME``.

A spec is derived without downloading anything and without a full build:
torchvision's input shape is its default weights' crop size
(``get_model_weights(name).DEFAULT.transforms``) and its classifier the last
``nn.Linear`` (SqueezeNet: its final convolution) of a build on the meta
device; timm's both come from its pretrained config (``input_size``,
``classifier``). Models are built randomly initialised (``pretrained=False``);
pretrained weights are used only when the file is already in torchvision's
hub cache or timm's Hugging Face cache (`cached_weights`): nothing is
downloaded at run time.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

from hdap_engine.errors import HdapError
from hdap_engine.models.spec import ModelSpec, shape_text, split_shape, with_shape

DEFAULT_SHAPE = (3, 224, 224)


@functools.cache
def catalogue(source: str) -> tuple[str, ...]:
    """Every classifier name of a library (``"torchvision"`` or ``"timm"``), sorted."""
    if source == "torchvision":
        import torchvision

        return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))
    if source == "torchvision-detection":
        import torchvision

        return tuple(sorted(torchvision.models.list_models(
            module=torchvision.models.detection)))
    if source == "timm":
        import timm

        return tuple(sorted(timm.list_models()))
    raise ValueError(source)


def closest(name: str, names, n: int = 3) -> list[str]:
    """The names nearest to ``name`` (difflib), best first."""
    return difflib.get_close_matches(name, list(names), n=n, cutoff=0.6)


def unknown(source: str, name: str) -> HdapError:
    near = closest(name, catalogue(source))
    hint = (f"; closest: {', '.join(f'{source}:{n}' for n in near)}" if near
            else f"; `hdap models` says how to list {source}'s {len(catalogue(source))} names")
    return HdapError(f"unknown model {source}:{name}: {source} has no classifier of that "
                     f"name{hint}")


@functools.lru_cache(maxsize=256)
def library_spec(key: str) -> ModelSpec:
    """The spec of ``torchvision:NAME[@CxHxW]`` or ``timm:NAME[@CxHxW]`` (cached per process)."""
    base, shape = split_shape(key)
    source, name = base.split(":", 1)
    if source == "torchvision" and name in catalogue("torchvision-detection"):
        return _detector_spec(name, shape)
    if name not in catalogue(source) and not (source == "timm" and _timm_known(name)):
        raise unknown(source, name)
    return (_torchvision_spec if source == "torchvision" else _timm_spec)(name, shape)


def _timm_known(name: str) -> bool:
    import timm

    return timm.is_model(name)  # a tagged name such as resnet18.a1_in1k


# -- torchvision -----------------------------------------------------------------------------

def _tv_weights(name: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def _torchvision_spec(name: str, shape) -> ModelSpec:
    import torchvision

    entry = _tv_weights(name)
    crop = (entry.transforms.keywords or {}).get("crop_size") if entry is not None else None
    if isinstance(crop, (list, tuple)):
        crop = crop[0]
    own = (3, int(crop), int(crop)) if crop else DEFAULT_SHAPE
    classes = len(entry.meta.get("categories") or []) if entry is not None else 0
    classes = classes or 1000

    def build(num_classes: int = classes):
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    model = _meta_build(build)
    classifier = _last_head(model, classes, f"torchvision:{name}")
    fixed = getattr(model, "image_size", None)
    if isinstance(fixed, int) and crop and int(crop) != fixed:
        # A ViT's size is set by the weights it is built with (ViT-H/14's default weights
        # are at 518); built without them it takes the builder's 224, and only that.
        own = (3, fixed, fixed)
    input_shape = tuple(shape or own)
    params = entry.meta.get("num_params") if entry is not None else None
    size = f", {params / 1e6:.1f} M parameters" if params else ""
    return ModelSpec(
        name=with_shape(f"torchvision:{name}", input_shape, own), input_shape=input_shape,
        num_classes=classes, classifier=classifier, builder=build, source="torchvision",
        description=f"{name} (torchvision), input {shape_text(input_shape)}{size}",
        torchvision_weights=(f"{type(entry).__name__}.{entry.name}" if entry is not None
                             else None),
    )


def _meta_build(build):
    """The model built on the meta device (no memory, no initialisation); a builder that
    cannot build there is built for real."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torchvision's notes on init defaults
        try:
            with torch.device("meta"):
                return build()
        except Exception:
            return build()


def _last_head(model, classes: int, label: str) -> str:
    """The classifier: the last Linear (or, with none, the last convolution) giving
    ``classes`` outputs, in module order."""
    from torch import nn

    linear = [n for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and m.out_features == classes]
    if linear:
        return linear[-1]
    conv = [n for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.out_channels == classes]
    if conv:
        return conv[-1]
    raise HdapError(f"{label}: no Linear or convolution layer gives its {classes} class "
                    "outputs, so its classifier cannot be found")


def _detector_spec(name: str, shape) -> ModelSpec:
    """A torchvision detector: built with ``weights=None, weights_backbone=None`` (nothing is
    downloaded); its input is SSD's fixed size or a square of the FPN detectors' ``min_size``
    (`hdap_engine.models.detection`), and a shape in the key sets the transform to keep it."""
    import torchvision

    from hdap_engine.models.detection import own_input_shape, predictor_layers, set_input_size

    entry = _tv_weights(name)
    classes = len(entry.meta.get("categories") or []) if entry is not None else 0
    classes = classes or 91  # COCO's 91 ids, background included

    def plain(num_classes: int = classes):
        return torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                            num_classes=num_classes)

    model = _meta_build(plain)
    own = own_input_shape(model)
    input_shape = tuple(int(s) for s in (shape or own))

    def build(num_classes: int = classes):
        model = plain(num_classes)
        if input_shape != own:
            set_input_size(model, input_shape[1], input_shape[2])
        return model

    params = entry.meta.get("num_params") if entry is not None else None
    size = f", {params / 1e6:.1f} M parameters" if params else ""
    return ModelSpec(
        name=with_shape(f"torchvision:{name}", input_shape, own), input_shape=input_shape,
        num_classes=classes, classifier=",".join(predictor_layers(model)), builder=build,
        source="torchvision", task="detection",
        description=f"{name} (torchvision detector), input {shape_text(input_shape)}{size}",
        torchvision_weights=(f"{type(entry).__name__}.{entry.name}" if entry is not None
                             else None),
    )


# -- timm --------------------------------------------------------------------------------------

def _timm_spec(name: str, shape) -> ModelSpec:
    import timm

    cfg = timm.models.get_pretrained_cfg(name) or \
        timm.models.get_pretrained_cfg(name.split(".")[0])
    classes = int(getattr(cfg, "num_classes", 0) or 1000)

    def build(num_classes: int = classes):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    own = tuple(getattr(cfg, "input_size", None) or DEFAULT_SHAPE)
    classifier = getattr(cfg, "classifier", None)
    if isinstance(classifier, (list, tuple)):
        classifier = classifier[0]  # distilled models: the first head is the classifier
    if not classifier:
        classifier = _last_head(_meta_build(build), classes, f"timm:{name}")
    input_shape = tuple(int(s) for s in (shape or own))
    return ModelSpec(
        name=with_shape(f"timm:{name}", input_shape, own), input_shape=input_shape,
        num_classes=classes, classifier=classifier, builder=build, source="timm",
        description=f"{name} (timm), input {shape_text(input_shape)}",
        timm_hf_id=getattr(cfg, "hf_hub_id", None),
    )


# -- pretrained weights from a local cache only -------------------------------------------------

def cached_weights(spec: ModelSpec) -> Path | None:
    """The pretrained weights file of ``spec`` in the local cache, or None (never downloads)."""
    if spec.torchvision_weights:
        import torch
        import torchvision

        enum_name, member = spec.torchvision_weights.split(".")
        entry = getattr(getattr(torchvision.models, enum_name), member)
        path = Path(torch.hub.get_dir()) / "checkpoints" / entry.url.rsplit("/", 1)[-1]
        return path if path.is_file() else None
    if spec.timm_hf_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(spec.timm_hf_id, filename)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    return None


def where_pretrained(spec: ModelSpec) -> str:
    """Where pretrained weights would be looked for (for messages)."""
    if spec.torchvision_weights:
        import torch

        return f"torchvision's hub cache ({Path(torch.hub.get_dir()) / 'checkpoints'})"
    if spec.timm_hf_id:
        return f"the Hugging Face cache (repo {spec.timm_hf_id})"
    return "nowhere (no published weights)"


def build_pretrained(spec: ModelSpec, path: Path):
    """``spec``'s model with the cached pretrained weights at ``path`` (read without code)."""
    if spec.source == "timm":
        import timm

        _, name = split_shape(spec.name)[0].split(":", 1)
        # timm reads a local file through its own loader (safetensors, or a weights-only load),
        # which also remaps old key names; the hub is never asked.
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    from hdap_engine.models.weights import load_weights, read_state_dict

    model = spec.builder()
    load_weights(model, _tv_remap(read_state_dict(path)), model_name=spec.name, label=path.name)
    return model


def _tv_remap(state: dict) -> dict:
    """DenseNet's published file uses old key names (``norm.1``); torchvision maps them
    when it loads the file itself, and so do we."""
    import re

    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|"
                         r"running_mean|running_var))$")
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out
