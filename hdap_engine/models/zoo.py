"""Model zoo: every network the product can prune, built by name.

A new architecture is one decorated builder function (`register`), the way
timm does it. Each entry knows its input shape, its classifier (the layer
pruning never touches), and whether torchvision has pretrained weights for it.
Beyond the registered ones, `get_spec` resolves every naming form
(`hdap_engine.models.spec`): ``torchvision:NAME``, ``timm:NAME``
(`hdap_engine.models.library`) and the user's ``file.py:FUNCTION``
(`hdap_engine.models.userfile`), each with an optional ``@CxHxW``.
`resolve_model` is the edge's call: what the user typed -> a `ModelRef` whose
``key`` every room carries.

Weights: by default a model is randomly initialised (seeded). A user file is
loaded with ``torch.load(..., weights_only=True)`` (`hdap_engine.models.weights`),
so no pickled code from a user ever runs. ``pretrained`` uses torchvision's or
timm's published weights only when the file is already in the local cache
(torch hub, Hugging Face); nothing is downloaded at run time, and without the
file the model stays randomly initialised and a warning says so.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.models.mobilenet_v1 import MobileNetV1
from hdap_engine.models.resnet_cifar import resnet56 as _resnet56
from hdap_engine.models.spec import (
    LIBRARIES,
    ModelRef,
    ModelSpec,
    classify,
    split_shape,
    with_shape,
)
from hdap_engine.models.weights import _weights_name, load_weights, read_state_dict

__all__ = ["PRETRAINED", "RANDOM", "ModelRef", "ModelSpec", "build_model", "get_spec",
           "load_weights", "model_names", "read_state_dict", "resolve_model", "weights_label"]

RANDOM = "random"
PRETRAINED = "pretrained"


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, input_shape, num_classes: int, classifier: str, description: str,
             torchvision_weights: str | None = None, task: str = "classification"):
    """Decorator: register a builder under ``name``.

    The builder takes one optional keyword, ``num_classes`` (default: the
    registered count), so that weights with another classifier size build.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(
            name=name, input_shape=tuple(input_shape), num_classes=num_classes,
            classifier=classifier, description=description, builder=builder,
            torchvision_weights=torchvision_weights, task=task,
        )
        return builder

    return wrap


def _tv(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return build


register("resnet50", input_shape=(3, 224, 224), num_classes=1000, classifier="fc",
         description="ResNet-50 (torchvision), ImageNet 224x224",
         torchvision_weights="ResNet50_Weights.IMAGENET1K_V1")(_tv("resnet50"))
register("resnet18", input_shape=(3, 224, 224), num_classes=1000, classifier="fc",
         description="ResNet-18 (torchvision), ImageNet 224x224",
         torchvision_weights="ResNet18_Weights.IMAGENET1K_V1")(_tv("resnet18"))
register("mobilenet_v2", input_shape=(3, 224, 224), num_classes=1000, classifier="classifier.1",
         description="MobileNetV2 (torchvision), ImageNet 224x224",
         torchvision_weights="MobileNet_V2_Weights.IMAGENET1K_V1")(_tv("mobilenet_v2"))
register("vgg16_bn", input_shape=(3, 224, 224), num_classes=1000, classifier="classifier.6",
         description="VGG-16 with batch norm (torchvision), ImageNet 224x224",
         torchvision_weights="VGG16_BN_Weights.IMAGENET1K_V1")(_tv("vgg16_bn"))


@register("mobilenet_v1", input_shape=(3, 224, 224), num_classes=1000, classifier="fc",
          description="MobileNetV1 (Howard et al. 2017), ImageNet 224x224")
def _mobilenet_v1(num_classes: int = 1000) -> nn.Module:
    return MobileNetV1(num_classes=num_classes)


@register("resnet56", input_shape=(3, 32, 32), num_classes=10, classifier="fc",
          description="ResNet-56 for CIFAR-10 (He et al. 2016), 32x32")
def _resnet56_builder(num_classes: int = 10) -> nn.Module:
    return _resnet56(num_classes=num_classes)


# SSDlite's predictors: the last convolution of each of its six feature maps' heads.
_SSDLITE_PREDICTORS = ",".join(f"head.{h}_head.module_list.{i}.1"
                               for h in ("classification", "regression") for i in range(6))


@register("detector_demo", input_shape=(3, 160, 160), num_classes=5,
          classifier=_SSDLITE_PREDICTORS, task="detection",
          description="SSDlite with a half-width MobileNetV3-Large (torchvision), 160x160, "
                      "39 M MACs: the synthetic-shapes detection demo")
def _detector_demo(num_classes: int = 5) -> nn.Module:
    """torchvision's SSDlite320 with ``width_mult=0.5`` at 160x160, cheap to train on a CPU;
    ``num_classes`` counts the background (torchvision's convention): 4 shapes + 1, the
    architecture of the shipped weights (`benchmarks.detector_demo`,
    sample_data/detector_demo_shapes.pt)."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from hdap_engine.models.detection import set_input_size

    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                          num_classes=num_classes, width_mult=0.5)
    return set_input_size(model, 160, 160)


def model_names() -> list[str]:
    """Registered model names, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of any model name: registered, ``torchvision:NAME``, ``timm:NAME``,
    ``file:<sha>:FUNCTION`` or ``PATH.py:FUNCTION``, each with an optional ``@CxHxW``.

    Cached per process; an unknown name is a user error naming the closest ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    if not isinstance(name, str) or not name.strip():
        raise HdapError(f"no model named; choose one of: {', '.join(_REGISTRY)} (or see "
                        "`hdap models`)")
    return _resolved_spec(name.strip())


@functools.lru_cache(maxsize=256)
def _resolved_spec(name: str) -> ModelSpec:
    base, shape = split_shape(name)
    source, rest = classify(base)
    if source in LIBRARIES:
        from hdap_engine.models.library import library_spec

        return library_spec(name)
    if source in ("file", "path"):
        from hdap_engine.models.userfile import file_spec

        return file_spec(name)
    if rest in _REGISTRY:
        spec = _REGISTRY[rest]
        if shape is None or tuple(shape) == spec.input_shape:
            return spec
        return replace(spec, name=with_shape(rest, shape), input_shape=tuple(shape))
    raise _unknown(rest)


def _unknown(name: str) -> HdapError:
    from hdap_engine.models.library import catalogue, closest

    hint = ""
    near = closest(name, _REGISTRY)
    libs = [f"{lib}:{name}" for lib in LIBRARIES if name in catalogue(lib)]
    if libs:
        hint = f"; did you mean {' or '.join(libs)}?"
    elif near:
        hint = f"; closest: {', '.join(near)}"
    else:
        near = [f"{lib}:{n}" for lib in LIBRARIES for n in closest(name, catalogue(lib), 2)]
        if near:
            hint = f"; closest: {', '.join(near)}"
    return HdapError(f"unknown model {name!r}{hint}; registered: {', '.join(_REGISTRY)}; "
                     "any torchvision:NAME, timm:NAME or PATH.py:FUNCTION (see `hdap models`)")


def resolve_model(text: str, input_shape=None, model_weights=None) -> ModelRef:
    """What the user named, resolved once at the edge into a `ModelRef`.

    Parameters
    ----------
    text:
        Any naming form (see `get_spec`); a ``PATH.py:FUNCTION`` file is copied into
        the workspace by content and named by its key from then on.
    input_shape:
        ``"C,H,W"`` (or three ints) where the model does not say, or to change it.
    model_weights:
        As `build_model` takes them; only described here (``ModelRef.model_weights``).

    Returns
    -------
    The `ModelRef`; its ``key`` is what options, jobs and bundles carry.
    """
    from hdap_engine.models.spec import parse_input_shape

    name = (text or "").strip()
    shape = None if input_shape in (None, "") else parse_input_shape(input_shape)
    if shape is not None:
        base, _ = split_shape(name)
        name = f"{base}@{'x'.join(map(str, shape))}"
    spec = get_spec(name)
    if spec.source in LIBRARIES:
        _check_memory(spec.name)  # a file model's was checked while resolving it
    return spec.ref(weights_label(model_weights, spec.name))


def model_key(text: str, input_shape=None) -> str:
    """The key of what the user named (`resolve_model(...).key`)."""
    return resolve_model(text, input_shape).key


def build_model(name: str, model_weights: str | os.PathLike | bytes | None = None, *,
                seed: int = 0, num_classes: int | None = None) -> nn.Module:
    """Build a model in eval mode.

    Parameters
    ----------
    name:
        Any model name `get_spec` resolves (a registered name, a library's, a file's key).
    model_weights:
        ``None`` or ``"random"``: random initialisation from ``seed``.
        ``"pretrained"``: the published weights when they are in the local cache
        (see module doc), else random with a warning.
        A path or raw bytes: a state dict saved with ``torch.save``; its
        classifier decides the number of classes (a state dict whose classifier
        has 5 outputs builds a 5-class model).
    seed:
        Seed of the random initialisation, so the same call builds the same model.
    num_classes:
        Classes of a randomly initialised model (default: the model's own count).
        Ignored when a state dict is given: the weights decide.

    Returns
    -------
    The model, on the CPU, in eval mode.
    """
    spec = get_spec(name)
    state = None
    if model_weights is not None and model_weights not in (RANDOM, PRETRAINED):
        state = read_state_dict(model_weights)
        num_classes = classes_in_state_dict(state, spec)
    classes = int(num_classes or spec.num_classes)
    if classes < 1:
        raise HdapError(f"{name}: the number of classes must be at least 1, got {classes}")
    if spec.source in LIBRARIES:
        _check_memory(spec.name)  # a file model was checked when it was resolved
    if model_weights == PRETRAINED and classes == spec.num_classes:
        model = _pretrained_model(spec)
        if model is not None:
            return model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.builder(num_classes=classes)
    if state is not None:
        load_weights(model, state, model_name=name, label=_weights_name(model_weights))
    return model.eval()


def _check_memory(name: str) -> None:
    from hdap_engine.models.footprint import check_fits

    spec = get_spec(name)
    need = _footprint(name)
    if need is not None:
        check_fits(split_shape(name)[0], spec.input_shape, need[0], need[1] or 0)


@functools.cache
def _footprint(name: str) -> tuple[int, int | None] | None:
    """(parameters, activation values) of a model at its input shape, once per process."""
    from hdap_engine.models.footprint import meta_footprint

    spec = get_spec(name)
    try:
        return meta_footprint(spec.builder, spec.input_shape)
    except Exception:  # cannot be built on shapes alone: the real build will tell
        return None


def classes_in_state_dict(state: dict, spec: ModelSpec) -> int:
    """How many classes a state dict's classifier has (its output rows).

    Falls back to the model's own count when the classifier's weight is not in
    the state dict (the strict load then names what is missing).
    """
    if spec.task == "detection":
        from hdap_engine.models.detection import classes_in_detector_state

        return classes_in_detector_state(state) or spec.num_classes
    weight = state.get(f"{spec.classifier}.weight")
    if isinstance(weight, torch.Tensor) and weight.ndim >= 1 and weight.shape[0] >= 1:
        return int(weight.shape[0])
    return spec.num_classes


def num_classes_of(model: nn.Module, name: str) -> int:
    """The number of classes of a built model (its classifier's outputs; a detector's
    classes, background included)."""
    if get_spec(name).task == "detection":
        from hdap_engine.models.detection import num_classes_of_detector

        return num_classes_of_detector(model)
    head = model.get_submodule(get_spec(name).classifier)
    return int(head.out_features if isinstance(head, nn.Linear) else head.out_channels)


def weights_label(model_weights, model: str | None = None) -> str:
    """Where the model weights come from, as the UI and reports say it.

    With ``model``, ``"pretrained"`` says whether the local cache has the file
    (and which), since without it the model is randomly initialised.
    """
    if model_weights is None or model_weights == RANDOM:
        return "random initialisation"
    if model_weights == PRETRAINED:
        if model is None:
            return "pretrained from the local cache (random if not there)"
        from hdap_engine.models.library import cached_weights, where_pretrained

        spec = get_spec(model)
        path = cached_weights(spec)
        if path is None:
            return f"random initialisation (no pretrained weights in {where_pretrained(spec)})"
        lib = "timm" if spec.source == "timm" else "torchvision"
        return f"{lib} pretrained ({path.name}, local cache)"
    if isinstance(model_weights, (bytes, bytearray)):
        return "user-supplied state dict"
    return f"user-supplied state dict ({Path(model_weights).name})"


def _pretrained_model(spec: ModelSpec) -> nn.Module | None:
    """``spec``'s model with its published weights from the local cache, or None (random)."""
    from hdap_engine.models.library import build_pretrained, cached_weights, where_pretrained

    if spec.torchvision_weights is None and spec.timm_hf_id is None:
        warnings.warn(
            f"{spec.name} has no published pretrained weights; using random initialisation "
            "(upload a state dict to use trained weights)", stacklevel=3)
        return None
    path = cached_weights(spec)
    if path is None:
        warnings.warn(
            f"pretrained weights for {spec.name} are not in {where_pretrained(spec)} and are "
            "never downloaded at run time; using random initialisation. Put the file there "
            "or pass a state dict with --model-weights", stacklevel=3)
        return None
    return build_pretrained(spec, path)
