"""Training and fine-tuning a detector: its own loss plus distillation from the unpruned one.

A detector here follows torchvision's interface (train forward
``model(images, targets) -> dict of losses``). The loss of one batch is

    ce_weight * (sum of the detector's own losses)
    + kd_weight * (KL on the heads' class logits at temperature T, times T**2
                   + smooth-L1 between the heads' box regressions)

A pruned detector has other channel widths inside, but its heads answer the
same question for the same anchors, so their outputs have the same shapes as the
unpruned detector's: distillation compares those (Chen et al., NeurIPS 2017
"Learning efficient object detection models with knowledge distillation" uses
the same two terms). Which outputs, per family:

- SSD / SSDlite (softmax over classes with a background class): ``head`` ->
  ``cls_logits`` (N, A, C) by KL of the softmaxes; ``bbox_regression`` (N, A, 4)
  by smooth-L1 weighted by the teacher's foreground probability, so the
  thousands of background anchors do not drown the few that hold objects;
- RetinaNet and FCOS (one sigmoid per class): binary KL per class on
  ``cls_logits``, the same weighted smooth-L1 on ``bbox_regression`` (FCOS's
  centre-ness too);
- Faster R-CNN: the RPN head's objectness (binary KL) and box deltas
  (smooth-L1); its second stage samples proposals at random, so it has no
  outputs that line up between two models.

The student's head outputs are caught by a forward hook during its own train
forward (no second pass); the teacher runs transform -> backbone -> head in eval
mode on the same images, which the transform resizes identically.

One process or torchrun (the `hdap_engine.finetune.distributed` calls, a
`DistributedSampler`, DDP), a checkpoint after every epoch in the format of
`hdap_engine.finetune.checkpoint`, and ``resume=True`` continues it: the order
and the flips of an epoch are seeded from (seed, epoch, rank), so a resumed run
ends with the weights an uninterrupted one would have had.

Public API
----------
``fit_detector(model, train_set, options, *, teacher=None, val_set=None,
categories=None, optimizer="sgd", hflip=True, checkpoint=None, resume=False,
identity=None, on_epoch=None, world=None) -> DetectionFitResult``
``head_outputs(model, images) -> dict`` (the teacher's side),
``distillation_terms(student, teacher, family, temperature) -> dict``,
``family_of(model) -> str`` (``ssd``, ``retinanet``, ``fcos``, ``fasterrcnn``).
``DETECTION_DISTILL``: the default recipe's loss weights; ``DETECTION_RECIPE``: the whole
default recipe of a detector (AdamW, lr 2e-3, cosine, 12 epochs, global batch 32: what
brought the pruned demo back, docs/detection.md); ``detection_recipe(options)``: a
classifier-default recipe (`hdap_engine.options.DISTILL`, what ``hdap finetune`` and a
study's ``--finetune-epochs`` start from) with every field still at DISTILL's value
replaced by the detector's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hdap_engine.errors import HdapError
from hdap_engine.finetune import checkpoint as ckpt
from hdap_engine.finetune.distributed import (
    World,
    barrier,
    broadcast_buffers,
    setup,
    sum_over_ranks,
)
from hdap_engine.finetune.trainer import check_fit, resume_run
from hdap_engine.options import FinetuneOptions

# The detector's own loss and the distillation term weigh the same by default: the
# own loss keeps the boxes honest where the teacher is wrong, the distillation
# term carries the teacher's soft scores on every anchor.
DETECTION_DISTILL = {"kd_weight": 1.0, "ce_weight": 1.0, "temperature": 2.0}
OPTIMIZERS = ("sgd", "adamw")
# A detector's recipe (benchmarks/detector_prune_finetune.py measured it on the demo);
# AdamW is `DETECTION_OPTIMIZER`, since FinetuneOptions has no optimiser field.
DETECTION_RECIPE = FinetuneOptions(epochs=12, batch_size=32, lr=2e-3, weight_decay=1e-4,
                                   schedule="cosine", bn_images=256, **DETECTION_DISTILL)
DETECTION_OPTIMIZER = "adamw"


def detection_recipe(options: FinetuneOptions) -> FinetuneOptions:
    """``options`` for a detector: every field left at the classifier recipe's default
    (`hdap_engine.options.DISTILL`: SGD lr 0.01, kd 0.9 / ce 0.1, T 4, ...) takes
    `DETECTION_RECIPE`'s; a field the caller changed stays. The CLI fills unchanged flags
    with DISTILL's values, so an explicit ``--lr 0.01`` reads as the default (documented)."""
    from hdap_engine.options import DISTILL

    same = {f.name: getattr(DETECTION_RECIPE, f.name) for f in fields(FinetuneOptions)
            if getattr(options, f.name) == getattr(DISTILL, f.name)}
    return replace(options, **same)


def family_of(model: nn.Module) -> str:
    """Which head outputs a detector has (the torchvision class it is or derives from)."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    for cls, name in ((SSD, "ssd"), (RetinaNet, "retinanet"), (FCOS, "fcos"),
                      (FasterRCNN, "fasterrcnn")):
        if isinstance(model, cls):
            return name
    raise HdapError(f"{type(model).__name__} is not one of torchvision's detector families "
                    "(SSD, RetinaNet, FCOS, Faster R-CNN); distillation needs their head "
                    "outputs; fine-tune it with kd_weight 0")


def _head_module(model: nn.Module, family: str) -> nn.Module:
    return model.rpn.head if family == "fasterrcnn" else model.head


def _as_outputs(raw, family: str) -> dict:
    """Head output -> {"cls": (N, A, C) logits, "box": (N, A, k)} (plus "ctr" for FCOS)."""
    if family == "fasterrcnn":
        objectness, deltas = raw
        n = objectness[0].shape[0]
        obj = torch.cat([o.permute(0, 2, 3, 1).reshape(n, -1, 1) for o in objectness], 1)
        box = torch.cat([d.permute(0, 2, 3, 1).reshape(n, -1, 4) for d in deltas], 1)
        return {"cls": obj, "box": box}
    out = {"cls": raw["cls_logits"], "box": raw["bbox_regression"]}
    if "bbox_ctrness" in raw:
        out["ctr"] = raw["bbox_ctrness"]
    return out


@torch.no_grad()
def head_outputs(model: nn.Module, images: list[torch.Tensor]) -> dict:
    """The heads' outputs of a detector on images (eval mode, no post-processing).

    Parameters
    ----------
    model:
        A torchvision detector (the teacher).
    images:
        (3, H, W) float images in [0, 1].

    Returns
    -------
    ``{"cls": (N, A, C), "box": (N, A, k)}`` (and ``"ctr"`` for FCOS).
    """
    family = family_of(model)
    batch, _ = model.transform(images)
    feats = model.backbone(batch.tensors)
    if isinstance(feats, torch.Tensor):
        feats = {"0": feats}
    feats = list(feats.values())
    return _as_outputs(_head_module(model, family)(feats), family)


def _binary_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL between Bernoulli(sigmoid(t/T)) and Bernoulli(sigmoid(s/T)), per element."""
    p = torch.sigmoid(t / temperature)
    log_q1, log_q0 = F.logsigmoid(s / temperature), F.logsigmoid(-s / temperature)
    log_p1, log_p0 = F.logsigmoid(t / temperature), F.logsigmoid(-t / temperature)
    return p * (log_p1 - log_q1) + (1 - p) * (log_p0 - log_q0)


def distillation_terms(student: dict, teacher: dict, family: str,
                       temperature: float) -> dict[str, torch.Tensor]:
    """``{"kd_cls": ..., "kd_box": ...}``: the distillation losses of one batch.

    Parameters
    ----------
    student, teacher:
        `head_outputs`-shaped dicts; the same anchors, so the same shapes.
    family:
        `family_of` the detectors.
    temperature:
        Softening of the class scores (T**2 keeps the gradient scale).

    Returns
    -------
    Scalar tensors.
    """
    s_cls, t_cls = student["cls"], teacher["cls"].detach()
    if s_cls.shape != t_cls.shape:
        raise HdapError(f"the student's class outputs {tuple(s_cls.shape)} differ from the "
                        f"teacher's {tuple(t_cls.shape)}; distillation needs the same heads "
                        "(same anchors and classes) in both detectors")
    t2 = temperature * temperature
    if family == "ssd":
        kl = F.kl_div(F.log_softmax(s_cls / temperature, -1),
                      F.log_softmax(t_cls / temperature, -1),
                      reduction="none", log_target=True).sum(-1)
        fg = 1.0 - torch.softmax(t_cls, -1)[..., 0]
    else:
        kl = _binary_kl(s_cls, t_cls, temperature).sum(-1)
        fg = torch.sigmoid(t_cls).amax(-1)
    kd_cls = kl.mean() * t2
    # Box terms only where the teacher sees an object: elsewhere its boxes mean nothing.
    box = F.smooth_l1_loss(student["box"], teacher["box"].detach(), reduction="none").sum(-1)
    if "ctr" in student:
        box = box + F.binary_cross_entropy_with_logits(
            student["ctr"], torch.sigmoid(teacher["ctr"].detach()), reduction="none"
        ).reshape(box.shape)
    kd_box = (fg * box).sum() / fg.sum().clamp_min(1.0)
    return {"kd_cls": kd_cls, "kd_box": kd_box}


@dataclass(frozen=True)
class DetectionEpoch:
    """What one epoch did (one row of the history, the progress callback's argument)."""

    epoch: int  # 1-based
    epochs: int
    loss: float  # mean total loss over the epoch's batches (all processes)
    detector_loss: float  # the detector's own losses, summed
    kd_loss: float  # the distillation terms (0 without a teacher)
    val_map: float | None  # held-out mAP@[.5:.95] after the epoch
    val_map_50: float | None
    lr: float
    seconds: float  # training time so far, resumed runs included


@dataclass
class DetectionFitResult:
    """The outcome of `fit_detector` (the model itself was trained in place)."""

    history: list[DetectionEpoch] = field(default_factory=list)
    seconds: float = 0.0
    resumed_at: int = 0
    world_size: int = 1

    def summary(self) -> dict:
        return {"epochs": len(self.history), "seconds": self.seconds,
                "resumed_at_epoch": self.resumed_at, "processes": self.world_size,
                "history": [asdict(r) for r in self.history]}


class _Flipped(Dataset):
    """Random horizontal flips of images and their boxes, seeded per (seed, epoch, item)."""

    def __init__(self, base: Dataset, seed: int, hflip: bool):
        self.base, self.seed, self.hflip, self.epoch = base, seed, hflip, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, target = self.base[i]
        if not self.hflip:
            return image, target
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch * 1_009 + i)
                                          % (2**63 - 1))
        if torch.rand((), generator=g) < 0.5:
            width = image.shape[-1]
            image = image.flip(-1)
            b = target["boxes"].clone()
            b[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target = {**target, "boxes": b}
        return image, target


def _collate(batch):
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def fit_detector(model: nn.Module, train_set: Dataset, options: FinetuneOptions, *,
                 teacher: nn.Module | None = None, val_set: Dataset | None = None,
                 categories: Sequence[str] | None = None, optimizer: str = "sgd",
                 hflip: bool = True, val_images: int | None = None,
                 checkpoint: str | Path | None = None, resume: bool = False,
                 identity: dict | None = None,
                 on_epoch: Callable[[DetectionEpoch], None] | None = None,
                 world: World | None = None) -> DetectionFitResult:
    """Train a detector in place: its own loss, plus distillation when a teacher is given.

    Parameters
    ----------
    model:
        The student (a pruned detector) or a detector trained from scratch.
    train_set:
        ``(image (3, H, W) in [0, 1], {"boxes" xyxy, "labels"})`` pairs
        (`hdap_engine.data.coco.DetectionData.train`).
    options:
        Epochs, global batch size, learning rate, schedule, weight decay, seed;
        ``ce_weight`` weighs the detector's own loss, ``kd_weight`` and
        ``temperature`` the distillation (see ``DETECTION_DISTILL``).
    teacher:
        The unpruned detector (needed when ``options.kd_weight > 0``); never updated.
    val_set:
        Held-out pairs; mAP after every epoch.
    categories:
        Category names (per-class AP in the records' evaluation).
    optimizer:
        ``sgd`` (momentum, Nesterov) or ``adamw`` (trains a detector from scratch in
        far fewer steps).
    hflip:
        Random horizontal flips (boxes flipped with the image).
    val_images:
        Evaluate on a seeded subset of this many held-out images (None: all).
    checkpoint, resume, identity, on_epoch, world:
        As `hdap_engine.finetune.trainer.fit`.

    Returns
    -------
    `DetectionFitResult`.
    """
    from hdap_engine.accuracy.detection import evaluate_detector

    world = world or setup()
    if optimizer not in OPTIMIZERS:
        raise HdapError(f"optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    check_fit(options, world, teacher, train_set)
    family = family_of(model) if options.distills else None
    path = Path(checkpoint) if checkpoint is not None else None
    identity = {**(identity or {}), "train_size": len(train_set), "optimizer": optimizer,
                "hflip": bool(hflip), "val_size": None if val_set is None else len(val_set)}
    device = torch.device(world.device)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    data = _Flipped(train_set, options.seed, hflip)
    sampler = DistributedSampler(data, num_replicas=world.size, rank=world.rank,
                                 shuffle=True, seed=options.seed)
    # drop_last: batch norm in train mode refuses a lone image on 1x1 feature maps.
    loader = DataLoader(data, batch_size=options.batch_size // world.size, sampler=sampler,
                        collate_fn=_collate, drop_last=len(data) > options.batch_size)
    steps = max(1, len(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=options.lr, momentum=options.momentum,
                              weight_decay=options.weight_decay, nesterov=options.momentum > 0)
    if options.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=options.lr,
                                                    total_steps=options.epochs * steps)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=options.epochs * steps)
    result = DetectionFitResult(world_size=world.size)
    start = 0
    if resume:
        start = resume_run(path, model, opt, sched, options, identity, result,
                           DetectionEpoch)
    trained = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=[world.local_rank] if device.type == "cuda" else None)
    caught: dict = {}
    hook = None
    if family is not None:
        hook = _head_module(model, family).register_forward_hook(
            lambda _m, _i, out: caught.__setitem__("raw", out))
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            for epoch in range(start, options.epochs):
                t0 = time.perf_counter()
                sampler.set_epoch(epoch)
                data.epoch = epoch
                torch.manual_seed((options.seed * 1_000_003 + epoch * 1_009 + world.rank)
                                  % (2**63 - 1))
                trained.train()
                sums = [0.0, 0.0, 0.0, 0.0]  # total, own, kd, batches
                for images, targets in loader:
                    images = [im.to(device) for im in images]
                    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                    losses = trained(images, targets)
                    own = sum(losses.values())
                    loss = options.ce_weight * own
                    kd = own.new_zeros(())
                    if family is not None:
                        t_out = head_outputs(teacher, images)
                        terms = distillation_terms(_as_outputs(caught.pop("raw"), family),
                                                   t_out, family, options.temperature)
                        kd = terms["kd_cls"] + terms["kd_box"]
                        loss = loss + options.kd_weight * kd
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    for j, v in enumerate((loss, own, kd)):
                        sums[j] += float(v.detach())
                    sums[3] += 1
                broadcast_buffers(world, model)
                total, own_s, kd_s, n = sum_over_ranks(world, sums)
                val = None
                if val_set is not None and len(val_set):
                    val = evaluate_detector(model, val_set, categories=categories,
                                            max_images=val_images, seed=options.seed)
                result.seconds += time.perf_counter() - t0
                n = max(n, 1.0)
                record = DetectionEpoch(
                    epoch=epoch + 1, epochs=options.epochs, loss=total / n,
                    detector_loss=own_s / n, kd_loss=kd_s / n,
                    val_map=None if val is None else val.map,
                    val_map_50=None if val is None else val.map_50,
                    lr=float(opt.param_groups[0]["lr"]), seconds=result.seconds)
                result.history.append(record)
                if path is not None and world.is_main:
                    ckpt.save(path, {
                        "epoch": epoch + 1, "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": ckpt.rng_states(),
                        "history": [asdict(r) for r in result.history],
                        "seconds": result.seconds, "options": options.settings(),
                        "identity": identity})
                barrier(world)
                if on_epoch is not None:
                    on_epoch(record)
    finally:
        if hook is not None:
            hook.remove()
    model.eval()
    return result
