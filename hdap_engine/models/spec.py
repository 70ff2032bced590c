"""What names a model: `ModelSpec` (how to build it here) and `ModelRef` (how to name it again).

A model is named in one of four forms (docs/models.md):

- a registered name (``resnet18``): the zoo (`hdap_engine.models.zoo`);
- ``torchvision:NAME``: any classifier of ``torchvision.models`` or detector of
  ``torchvision.models.detection`` (docs/detection.md);
- ``timm:NAME``: any timm classifier;
- ``path/to/file.py:FUNCTION``: the user's own builder, which the edge (CLI, app)
  copies into the workspace by content and names ``file:<sha256[:16]>:FUNCTION``.

Any form may end in ``@CxHxW`` to say the input shape (a file model must, unless
the built model says it). The resulting *key* is self-describing: every process
that shares the workspace rebuilds the same model from the key alone, so jobs,
widths.json and the store carry the key string, and `ModelRef` is its JSON form
with what was learned while resolving it (classes, classifier, where the
weights came from). This module is plain data: no torch import.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from hdap_engine.errors import HdapError

SOURCES = ("zoo", "torchvision", "timm", "file")
LIBRARIES = ("torchvision", "timm")
TASKS = ("classification", "detection")
_SHAPE_RE = re.compile(r"@(\d+)x(\d+)x(\d+)$")
_FILE_KEY_RE = re.compile(r"^file:([0-9a-f]{16}):([A-Za-z_]\w*)$")
_PATH_RE = re.compile(r"^(.+\.py):([A-Za-z_]\w*)$")
SHA_CHARS = 16  # of the sha256 in a file model's key: 64 bits, unique within a workspace


@dataclass(frozen=True)
class ModelSpec:
    """What the engine knows about a model before building it."""

    name: str  # the model's key (see the module doc); what every room carries
    input_shape: tuple[int, int, int]  # (channels, height, width) at batch 1
    num_classes: int
    classifier: str  # module name of the output layer; never pruned
    description: str
    builder: Callable[..., Any]  # builder(num_classes=...) -> nn.Module
    torchvision_weights: str | None = None  # e.g. "ResNet50_Weights.IMAGENET1K_V1"
    source: str = "zoo"  # one of SOURCES
    sha256: str | None = None  # of a file model's source
    file_name: str | None = None  # a file model's name as its user gave it (display only)
    timm_hf_id: str | None = None  # the Hugging Face repo of timm's default weights
    # "classification" or "detection" (TASKS). A detector's ``classifier`` names its box and
    # class predictors' output layers, comma-separated: all of them are never pruned.
    task: str = "classification"

    def example_input(self, batch: int = 1):
        """A deterministic input of the model's shape (for tracing and timing)."""
        import torch

        gen = torch.Generator().manual_seed(0)
        return torch.randn((batch, *self.input_shape), generator=gen)

    def ref(self, model_weights: str | None = None) -> ModelRef:
        """This model as a `ModelRef`; ``model_weights`` says where its weights come from."""
        return ModelRef(source=self.source, name=base_name(self.name), key=self.name,
                        input_shape=tuple(self.input_shape), num_classes=self.num_classes,
                        classifier=self.classifier, sha256=self.sha256,
                        file_name=self.file_name, model_weights=model_weights or "random",
                        task=self.task)


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name: enough to rebuild the model in another process (JSON-able).

    ``key`` is what jobs, widths.json, bundles, the store and reports carry;
    the other fields say what it is (``source`` and ``name``: the library and
    its name, or the builder function of a file model with the file's
    ``sha256``), what resolving it found (``input_shape``, ``num_classes``,
    ``classifier``) and where its weights come from (``model_weights``: a
    label, see `hdap_engine.models.zoo.weights_label`).
    """

    source: str
    name: str
    key: str
    input_shape: tuple[int, int, int]
    num_classes: int
    classifier: str
    sha256: str | None = None
    file_name: str | None = None
    model_weights: str = "random"
    task: str = "classification"  # or "detection"

    def to_json(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_json(cls, doc: dict) -> ModelRef:
        """A `ModelRef` from `to_json` output; a malformed one is a user error."""
        try:
            ref = cls(source=str(doc["source"]), name=str(doc["name"]), key=str(doc["key"]),
                      input_shape=parse_input_shape(doc["input_shape"]),
                      num_classes=int(doc["num_classes"]), classifier=str(doc["classifier"]),
                      sha256=doc.get("sha256"), file_name=doc.get("file_name"),
                      model_weights=str(doc.get("model_weights") or "random"),
                      task=str(doc.get("task") or "classification"))
        except (KeyError, TypeError, ValueError) as exc:
            raise HdapError(f"not a model reference ({type(exc).__name__}: {exc}); export "
                            "the bundle again") from None
        if ref.source not in SOURCES:
            raise HdapError(f"unknown model source {ref.source!r}; one of {', '.join(SOURCES)}")
        if ref.task not in TASKS:
            raise HdapError(f"unknown task {ref.task!r}; one of {', '.join(TASKS)}")
        return ref


def parse_input_shape(value) -> tuple[int, int, int]:
    """``"3,224,224"``, ``"3x224x224"`` or a sequence of three -> (C, H, W), each >= 1."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,x× ]+", value.strip()) if p]
    else:
        parts = list(value) if value is not None else []
    try:
        shape = tuple(int(p) for p in parts)
        ok = len(shape) == 3 and all(s >= 1 for s in shape) and \
            all(float(p) == int(p) for p in parts)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise HdapError(f"--input-shape must be three whole numbers C,H,W such as 3,224,224 "
                        f"(channels, height, width), got {value!r}")
    return shape  # type: ignore[return-value]


def shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def split_shape(key: str) -> tuple[str, tuple[int, int, int] | None]:
    """``"timm:x@3x160x160"`` -> (``"timm:x"``, (3, 160, 160)); no suffix -> (key, None)."""
    m = _SHAPE_RE.search(key)
    if not m:
        return key, None
    return key[:m.start()], parse_input_shape(m.groups())


def with_shape(base: str, shape, default=None) -> str:
    """The key of ``base`` at ``shape`` (no suffix when it is the model's own ``default``)."""
    if shape is None or (default is not None and tuple(shape) == tuple(default)):
        return base
    return f"{base}@{shape_text(shape)}"


def classify(text: str) -> tuple[str, str]:
    """(source, rest) of a model name without its shape suffix.

    ``rest`` is the library's name, ``"<sha16>:FUNC"`` for a file key, or
    ``"PATH.py:FUNC"`` for a path (source ``"path"``: not yet resolved).
    """
    if _FILE_KEY_RE.match(text):
        return "file", text[len("file:"):]
    if _PATH_RE.match(text):
        return "path", text
    for lib in LIBRARIES:
        if text.startswith(lib + ":"):
            return lib, text[len(lib) + 1:]
    return "zoo", text


def path_parts(text: str) -> tuple[str, str]:
    """``"nets/my.py:build"`` -> (``"nets/my.py"``, ``"build"``)."""
    m = _PATH_RE.match(text)
    if not m:
        raise HdapError(f"{text!r}: a model file is named PATH.py:FUNCTION, e.g. "
                        "nets/mine.py:build")
    return m.group(1), m.group(2)


def file_key(sha256: str, function: str) -> str:
    return f"file:{sha256[:SHA_CHARS]}:{function}"


def base_name(key: str) -> str:
    """The library's or the builder's own name in a key (``timm:x@3x9x9`` -> ``x``)."""
    base, _ = split_shape(key)
    source, rest = classify(base)
    return rest.split(":", 1)[1] if source == "file" else rest
