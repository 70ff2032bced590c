"""Model zoo: every network the product can prune, built by name from a registry.

A new architecture is one decorated builder function (`register`), the way
timm does it. Each entry knows its input shape, its classifier (the layer
pruning never touches), and whether torchvision has pretrained weights for it.

Weights: by default a model is randomly initialised (seeded). A user file is
loaded with ``torch.load(..., weights_only=True)``, so no pickled code from a
user ever runs. Asking for torchvision's pretrained weights uses the local
torch hub cache when the file is there and otherwise tries the download; when
that fails (no internet, as on our build machines) the model stays randomly
initialised and a warning says so.
"""

from __future__ import annotations

import io
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.models.mobilenet_v1 import MobileNetV1
from hdap_engine.models.resnet_cifar import resnet56 as _resnet56

RANDOM = "random"
PRETRAINED = "pretrained"


@dataclass(frozen=True)
class ModelSpec:
    """What the engine knows about a model before building it."""

    name: str
    input_shape: tuple[int, int, int]  # (channels, height, width) at batch 1
    num_classes: int
    classifier: str  # module name of the output layer; never pruned
    description: str
    builder: Callable[..., nn.Module]  # builder(num_classes=...) -> model
    torchvision_weights: str | None = None  # e.g. "ResNet50_Weights.IMAGENET1K_V1"

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic input of the model's shape (for tracing and timing)."""
        gen = torch.Generator().manual_seed(0)
        return torch.randn((batch, *self.input_shape), generator=gen)


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, input_shape, num_classes: int, classifier: str, description: str,
             torchvision_weights: str | None = None):
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
            torchvision_weights=torchvision_weights,
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


def model_names() -> list[str]:
    """Registered model names, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; an unknown name is a user error."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise HdapError(
            f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}"
        ) from None


def build_model(name: str, model_weights: str | os.PathLike | bytes | None = None, *,
                seed: int = 0, num_classes: int | None = None) -> nn.Module:
    """Build a model in eval mode.

    Parameters
    ----------
    name:
        A registered model name (`model_names()`).
    model_weights:
        ``None`` or ``"random"``: random initialisation from ``seed``.
        ``"pretrained"``: torchvision's weights when available (see module doc).
        A path or raw bytes: a state dict saved with ``torch.save``; its
        classifier decides the number of classes (a state dict whose classifier
        has 5 outputs builds a 5-class model).
    seed:
        Seed of the random initialisation, so the same call builds the same model.
    num_classes:
        Classes of a randomly initialised model (default: the registered count).
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.builder(num_classes=classes)
    if state is not None:
        load_weights(model, state, model_name=name, label=_weights_name(model_weights))
    elif model_weights == PRETRAINED:
        state = _pretrained_state_dict(spec)
        if state is not None:
            model.load_state_dict(state)
    return model.eval()


def classes_in_state_dict(state: dict, spec: ModelSpec) -> int:
    """How many classes a state dict's classifier has (its output rows).

    Falls back to the registered count when the classifier's weight is not in
    the state dict (the strict load then names what is missing).
    """
    weight = state.get(f"{spec.classifier}.weight")
    if isinstance(weight, torch.Tensor) and weight.ndim >= 1 and weight.shape[0] >= 1:
        return int(weight.shape[0])
    return spec.num_classes


def num_classes_of(model: nn.Module, name: str) -> int:
    """The number of classes of a built model (its classifier's outputs)."""
    head = model.get_submodule(get_spec(name).classifier)
    return int(head.out_features if isinstance(head, nn.Linear) else head.out_channels)


def _weights_name(source) -> str:
    return ("uploaded weights" if isinstance(source, (bytes, bytearray))
            else Path(source).name)


def weights_label(model_weights) -> str:
    """How the model weights are described in the UI and in reports."""
    if model_weights is None or model_weights == RANDOM:
        return "random initialisation"
    if model_weights == PRETRAINED:
        return "torchvision pretrained (random if unavailable)"
    if isinstance(model_weights, (bytes, bytearray)):
        return "user-supplied state dict"
    return f"user-supplied state dict ({Path(model_weights).name})"


def read_state_dict(source: str | os.PathLike | bytes, *, label: str | None = None) -> dict:
    """Load a state dict without executing any pickled code.

    Accepts a plain state dict or a checkpoint holding one under
    ``state_dict`` / ``model`` / ``model_state_dict``; strips a DataParallel
    ``module.`` prefix.
    """
    label = label or ("uploaded weights" if isinstance(source, (bytes, bytearray))
                      else Path(source).name)
    try:
        if isinstance(source, (bytes, bytearray)):
            obj = torch.load(io.BytesIO(source), map_location="cpu", weights_only=True)
        else:
            path = Path(source)
            if not path.is_file():
                raise HdapError(f"{label}: weights file not found at {path}")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except HdapError:
        raise
    except Exception as exc:  # torch raises many types for bad files
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        # Only "Unsupported global" means pickled Python objects; a corrupt or foreign
        # file also fails the weights-only unpickler ("Unsupported operand").
        if "Unsupported global" in str(exc):
            raise HdapError(
                f"{label}: the file contains Python objects other than tensors, and "
                "HDAP never unpickles code from a file; save a plain state dict with "
                "torch.save(model.state_dict(), path)"
            ) from None
        if "Unsupported operand" in str(exc) or "Weights only load failed" in first:
            first = "corrupt or not a PyTorch file"
        raise HdapError(
            f"{label}: not a readable PyTorch weights file ({first}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        raise HdapError(
            f"{label}: expected a state dict (names to tensors), got {type(obj).__name__}; "
            "save one with torch.save(model.state_dict(), path)"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, source, *, model_name: str = "model",
                 label: str | None = None) -> None:
    """Load a user state dict (a file, bytes, or an already-read dict) into ``model``
    strictly, with a clear message on mismatch."""
    if isinstance(source, dict):
        state, label = source, label or "weights"
    else:
        state = read_state_dict(source, label=label)
        label = label or _weights_name(source)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: file "
                         f"{tuple(state[k].shape)}, model {tuple(own[k].shape)})")
        raise HdapError(
            f"{label}: these weights do not fit {model_name}: {'; '.join(parts)}; "
            f"pick the model they were trained for"
        )
    model.load_state_dict(state)


def _pretrained_state_dict(spec: ModelSpec) -> dict | None:
    if spec.torchvision_weights is None:
        warnings.warn(
            f"{spec.name} has no published pretrained weights; using random initialisation "
            "(upload a state dict to use trained weights)", stacklevel=3)
        return None
    import torchvision

    enum_name, member = spec.torchvision_weights.split(".")
    entry = getattr(getattr(torchvision.models, enum_name), member)
    filename = entry.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return read_state_dict(cached)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        return entry.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        warnings.warn(
            f"pretrained weights for {spec.name} could not be downloaded ({type(exc).__name__}); "
            f"using random initialisation. To use them offline, put {filename} in "
            f"{cached.parent} or upload a state dict", stacklevel=3)
        return None
    finally:
        socket.setdefaulttimeout(old)
