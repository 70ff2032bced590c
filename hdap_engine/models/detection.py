"""Object detectors: torchvision's by name, the user's own, and the *core* the pruning space sees.

A torchvision detector is three things in one module (docs/detection.md):

- a *transform* (resize to the detector's input size, normalise, pad into a batch);
- the *core*: backbone -> (FPN) -> heads, all convolutions and linear layers, the part
  that is pruned and that the twin prices from its layer rows;
- *post-processing*: anchors, box decoding and non-maximum suppression, whose cost
  depends on the number of anchors and is measured on the host (`postprocess_ms`).

`DetectorCore` wraps the core of a built detector as a module whose forward takes the
already-transformed image batch and returns the heads' outputs as one tensor. Its
sub-modules are the detector's own, under the same names (``backbone``, ``head``,
``rpn``, ``roi_heads``), so pruning the core prunes the detector in place and a group
named in the space is a module of the detector. The box and class predictors' output
layers (`predictor_layers`) are never pruned: they are Torch-Pruning's
``ignored_layers``, as in its own torchvision detection tests.

A detector follows torchvision's interface: in eval mode ``model(list_of_images)``
returns one ``{boxes, labels, scores}`` dict per image; in train mode
``model(images, targets)`` returns a dict of losses. `is_detector` checks the first.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import torch
from torch import nn

from hdap_engine.errors import HdapError

# torchvision's detectors whose core this module knows how to isolate; the others
# (keypoint and mask R-CNN) resolve too and are pruned through the same Faster R-CNN core.
SINGLE_STAGE = ("SSD", "RetinaNet", "FCOS")
TWO_STAGE = ("FasterRCNN", "MaskRCNN", "KeypointRCNN")
# Output layers of torchvision's heads, by the module names torchvision gives them.
_PREDICTOR_SUFFIXES = ("cls_logits", "bbox_reg", "bbox_ctrness", "bbox_pred", "cls_score",
                       "mask_fcn_logits", "kps_score_lowres")
ROIS = 1000  # proposals per image in eval when the RPN does not say (its post_nms_top_n)


def _kind(model: nn.Module) -> str:
    for cls in type(model).__mro__:
        if cls.__name__ in SINGLE_STAGE:
            return "single"
        if cls.__name__ in TWO_STAGE or cls.__name__ == "GeneralizedRCNN":
            return "two"
    if all(hasattr(model, a) for a in ("backbone", "head", "transform")):
        return "single"  # a user's detector built like torchvision's single-stage ones
    raise HdapError(f"{type(model).__name__}: the pruning space can follow torchvision's "
                    "detectors (SSD, RetinaNet, FCOS, Faster R-CNN) and detectors built like "
                    "them (backbone, head, transform); this one has none of those parts")


def predictor_layers(model: nn.Module) -> list[str]:
    """The box and class predictors' output layers: the layers never pruned.

    torchvision names them ``cls_logits``, ``bbox_reg``, ``bbox_ctrness`` (FCOS),
    ``bbox_pred`` and ``cls_score`` (Faster R-CNN); SSD's heads keep one output
    convolution per feature map in ``module_list`` (SSDlite: the last layer of each
    entry).
    """
    names = []
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and leaf in _PREDICTOR_SUFFIXES:
            names.append(name)
    for head in ("head.classification_head", "head.regression_head"):
        try:
            module_list = model.get_submodule(f"{head}.module_list")
        except AttributeError:
            continue
        for i, entry in enumerate(module_list):
            convs = [n for n, m in entry.named_modules() if isinstance(m, nn.Conv2d)]
            if convs:
                names.append(f"{head}.module_list.{i}" + (f".{convs[-1]}" if convs[-1] else ""))
    if not names:
        raise HdapError(f"{type(model).__name__}: no box or class predictor layer found (torch"
                        "vision names them cls_logits, bbox_reg, bbox_pred, cls_score)")
    return list(dict.fromkeys(names))


class DetectorCore(nn.Module):
    """backbone -> (FPN) -> heads of a detector, on an already-transformed image batch.

    Single-stage detectors (SSD, RetinaNet, FCOS): the head's outputs, flattened and
    concatenated. Faster R-CNN: the RPN head's outputs and the box head with its
    predictor on ``rois`` regions pooled from the finest feature map (an adaptive
    average pool stands in for RoIAlign, which Torch-Pruning's graph cannot follow; its
    cost is post-processing's), so the box head is priced for the proposals it sees in
    eval (`proposals`: the RPN's ``post_nms_top_n`` for testing, 1,000 or 150 for the
    320 px Faster R-CNN).
    """

    def __init__(self, detector: nn.Module, rois: int | None = None):
        super().__init__()
        self.kind = _kind(detector)
        self.backbone = detector.backbone
        self.rois = int(rois or proposals(detector))
        if self.kind == "single":
            self.head = detector.head
        else:
            self.rpn = detector.rpn
            self.roi_heads = detector.roi_heads

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        feats = list(features.values())
        if self.kind == "single":
            out = self.head(feats)
            return torch.cat([out[k].flatten(1) for k in sorted(out)], dim=1)
        objectness, deltas = self.rpn.head(feats)
        pool = self.roi_heads.box_roi_pool
        size = pool.output_size if hasattr(pool, "output_size") else (7, 7)
        pooled = nn.functional.adaptive_avg_pool2d(feats[0], size)
        pooled = pooled.expand(self.rois, -1, -1, -1)
        scores, boxes = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        parts = [t.flatten(1) for t in objectness + deltas]
        return torch.cat(parts + [scores.flatten().unsqueeze(0), boxes.flatten().unsqueeze(0)],
                         dim=1)


def proposals(model: nn.Module) -> int:
    """Proposals per image a two-stage detector's box head sees in eval (at most)."""
    rpn = getattr(model, "rpn", None)
    return int(getattr(rpn, "_post_nms_top_n", {}).get("testing", ROIS)) if rpn else ROIS


def core_input(model: nn.Module, image_shape) -> torch.Tensor:
    """The transformed batch (1, 3, H', W') the core sees for one image of ``image_shape``."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(tuple(image_shape), generator=gen)
    was = model.training
    model.eval()
    with torch.no_grad():
        batch, _ = model.transform([image])
    model.train(was)
    return batch.tensors


def set_input_size(model: nn.Module, height: int, width: int) -> nn.Module:
    """Make a torchvision detector's transform keep an image of ``height`` x ``width``.

    SSD resizes to a fixed size; the FPN detectors scale the short side to
    ``min_size`` (capped by ``max_size`` on the long side).
    """
    tr = model.transform
    if getattr(tr, "fixed_size", None):
        tr.fixed_size = (int(height), int(width))
    tr.min_size = (int(min(height, width)),)
    tr.max_size = int(max(height, width))
    return model


def own_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """The image size a torchvision detector is built for: SSD's fixed size, or a square
    of its ``min_size`` (the short side the FPN detectors resize to)."""
    tr = model.transform
    fixed = getattr(tr, "fixed_size", None)
    if fixed:
        return (3, int(fixed[0]), int(fixed[1]))
    side = int(tr.min_size[-1])
    return (3, side, side)


def pruning_view(model: nn.Module, spec) -> tuple[nn.Module, torch.Tensor]:
    """What the pruning room works on, and its example input: a classifier and its input,
    or a detector's `DetectorCore` and the transformed batch of one image."""
    if spec.task != "detection":
        return model, spec.example_input()
    return DetectorCore(model).eval(), core_input(model, spec.input_shape)


def estimate_batch_norm(model: nn.Module, image_shape, batches: int = 3) -> nn.Module:
    """Re-estimate a detector's batch-norm statistics on random images (its core in train
    mode, no gradient), in place.

    A randomly initialised detector's deep activations shrink to nearly nothing, so every
    anchor of a feature map gets the same scores (the predictors' biases) and NMS picks
    among ties: nothing an export check can compare. Statistics estimated on a few batches
    keep activations at unit scale (the classifier benchmark does the same).
    """
    core = DetectorCore(model)
    norms = [m for m in core.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    gen = torch.Generator().manual_seed(0)
    x = core_input(model, image_shape)
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches
        core.train()
        with torch.no_grad():
            for _ in range(batches):
                # Two images (a batch norm on a 1x1 map needs two values per channel);
                # one for a two-stage core, whose proposals are repeated from one image.
                batch = 1 if core.kind == "two" else 2
                core(torch.randn((batch, *x.shape[1:]), generator=gen))
    finally:
        for m, mom in zip(norms, saved, strict=True):
            m.momentum = mom
        model.eval()
    return model


# -- the interface ------------------------------------------------------------------------------

def is_detector(model: nn.Module, image_shape) -> bool:
    """True when ``model`` follows torchvision's detection interface: in eval mode,
    ``model([image])`` returns a list with one dict holding ``boxes``, ``labels``, ``scores``."""
    model.eval()
    image = torch.rand(tuple(image_shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model([image])
    except Exception:
        return False
    return (isinstance(out, (list, tuple)) and len(out) == 1 and isinstance(out[0], dict)
            and {"boxes", "labels", "scores"} <= set(out[0]))


def check_detections(out, what: str) -> None:
    """A detector's eval output must be a list of {boxes (N, 4), labels (N), scores (N)}."""
    if not isinstance(out, (list, tuple)) or not out or not isinstance(out[0], dict):
        raise HdapError(f"{what}: a detector must return one dict of boxes, labels and scores "
                        f"per image, got {type(out).__name__}")
    d = out[0]
    missing = {"boxes", "labels", "scores"} - set(d)
    if missing:
        raise HdapError(f"{what}: its detections lack {', '.join(sorted(missing))}")
    boxes = d["boxes"]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or d["scores"].shape[0] != boxes.shape[0]:
        raise HdapError(f"{what}: boxes of shape {tuple(boxes.shape)} and "
                        f"{tuple(d['scores'].shape)} scores are not (N, 4) boxes with N scores")


def num_classes_of_detector(model: nn.Module) -> int:
    """Classes (background included) of a torchvision detector, from its class predictor."""
    if hasattr(model, "roi_heads"):
        return int(model.roi_heads.box_predictor.cls_score.out_features)
    head = getattr(getattr(model, "head", None), "classification_head", None)
    if hasattr(head, "num_classes"):
        return int(head.num_classes)
    found = classes_in_detector_state(model.state_dict())
    if found:
        return found
    raise HdapError(f"{type(model).__name__}: cannot tell its number of classes")


def classes_in_detector_state(state: dict) -> int | None:
    """Classes of a detector's state dict (background included), or None when it does not say.

    Faster R-CNN: rows of ``cls_score``; RetinaNet/FCOS: ``cls_logits`` outputs over the
    anchors per location (the regression head's outputs / 4); SSD: the first
    classification conv's outputs over the first regression conv's / 4.
    """
    def rows(suffix):
        found = [v for k, v in state.items() if k.endswith(suffix)
                 and isinstance(v, torch.Tensor) and v.ndim >= 1]
        return int(found[0].shape[0]) if found else None

    direct = rows("box_predictor.cls_score.weight")
    if direct:
        return direct
    cls, reg = rows("classification_head.cls_logits.weight"), \
        rows("regression_head.bbox_reg.weight")
    if cls and reg and reg % 4 == 0:
        return cls // (reg // 4)
    conv_cls = sorted(k for k in state if k.startswith("head.classification_head.module_list.0")
                      and k.endswith("weight") and state[k].ndim == 4)
    conv_reg = sorted(k for k in state if k.startswith("head.regression_head.module_list.0")
                      and k.endswith("weight") and state[k].ndim == 4)
    if conv_cls and conv_reg:
        c, r = int(state[conv_cls[-1]].shape[0]), int(state[conv_reg[-1]].shape[0])
        if r % 4 == 0 and c % (r // 4) == 0:
            return c // (r // 4)
    return None


# -- post-processing: measured on this host ------------------------------------------------------

def postprocess_ms(model: nn.Module, image_shape, *, repeats: int = 10) -> tuple[float, int]:
    """(median ms, anchors) of a detector's post-processing on this host for one image.

    Times the detector end to end and its core alone on the same transformed input;
    the difference of the fastest runs (the least disturbed by other work on the host) is
    transform + anchors + decoding + NMS (+ RoIAlign for two-stage detectors): everything
    the core's layer rows do not price. ``anchors`` counts the
    anchors (single-stage) or proposals (two-stage) post-processing decodes.
    """
    model = model.eval()
    image = torch.rand(tuple(image_shape), generator=torch.Generator().manual_seed(0))
    core = DetectorCore(model).eval()
    x = core_input(model, image_shape)
    whole, only = [], []
    with torch.no_grad():
        model([image])
        core(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model([image])
            whole.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            core(x)
            only.append(time.perf_counter() - t0)
    ms = max(min(whole) - min(only), 0.0) * 1e3
    return ms, anchor_count(model, image_shape)


def anchor_count(model: nn.Module, image_shape) -> int:
    """Anchors a single-stage detector decodes for one image (two-stage: its proposals)."""
    core = DetectorCore(model)
    if core.kind == "two":
        return proposals(model)
    x = core_input(model, image_shape)
    with torch.no_grad():
        feats = model.backbone(x)
        feats = [feats] if isinstance(feats, torch.Tensor) else list(feats.values())
        out = model.head(feats)
    first = next(iter(out.values()))
    return int(first.shape[1])
