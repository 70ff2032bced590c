"""The training loop: distillation or labels, SGD with a cosine or one-cycle schedule.

`fit` trains a model in place on a labelled dataset and is the same code for one
process and for many: under torchrun the model is wrapped in
`DistributedDataParallel`, the data split with a `DistributedSampler`, and every
reported number (loss, held-out accuracy) summed over the processes, so every rank
sees the same figures. Rank 0 writes the checkpoint after every epoch; `resume=True`
continues from it and ends with the weights an uninterrupted run would have had,
because everything random in an epoch (order, augmentation) is seeded from
(seed, epoch, rank) and the optimiser and schedule states are restored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from hdap_engine.errors import HdapError
from hdap_engine.finetune import checkpoint as ckpt
from hdap_engine.finetune.distributed import (
    World,
    barrier,
    broadcast_buffers,
    setup,
    sum_over_ranks,
)
from hdap_engine.options import FinetuneOptions


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did (the progress callback's argument, one row of the history)."""

    epoch: int  # 1-based
    epochs: int
    loss: float  # mean training loss over the epoch (all processes)
    train_top1: float  # on the augmented training batches, in train mode
    val_top1: float | None  # held-out top-1 after the epoch; None without held-out data
    lr: float  # learning rate at the end of the epoch
    seconds: float  # training time so far, resumed runs included


@dataclass
class FitResult:
    """The outcome of `fit` (the model itself was trained in place)."""

    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    resumed_at: int = 0  # epochs that were already done when the run resumed
    world_size: int = 1
    hflip: bool = False
    crop_padding: int = 0

    def summary(self) -> dict:
        """JSON-ready record for reports."""
        return {"epochs": len(self.history), "seconds": self.seconds,
                "resumed_at_epoch": self.resumed_at, "processes": self.world_size,
                "hflip": self.hflip, "crop_padding": self.crop_padding,
                "history": [asdict(r) for r in self.history]}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor | None,
                      labels: torch.Tensor, options: FinetuneOptions) -> torch.Tensor:
    """``kd_weight * KL(softmax(t/T) || softmax(s/T)) * T**2 + ce_weight * CE(s, y)``.

    Parameters
    ----------
    student, teacher:
        Logits, shape (N, classes); ``teacher`` may be None when ``kd_weight`` is 0.
    labels:
        Class indices, shape (N,).
    options:
        Temperature and the two weights.

    Returns
    -------
    The scalar loss (batch mean).
    """
    loss = student.new_zeros(())
    if options.ce_weight > 0:
        loss = loss + options.ce_weight * F.cross_entropy(student, labels)
    if options.kd_weight > 0:
        if teacher is None:
            raise HdapError("distillation needs the teacher's logits")
        t = options.temperature
        kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                      reduction="batchmean", log_target=True)
        loss = loss + options.kd_weight * kl * (t * t)
    return loss


def augmentation(size: int, options: FinetuneOptions, *, hflip: bool):
    """Light augmentation on preprocessed image tensors: a padded random crop, maybe a flip.

    Edge padding repeats the border (background for digits) instead of inventing a
    frame of another colour in normalised space.
    """
    from torchvision.transforms import v2

    pad = options.crop_padding if options.crop_padding is not None else max(1, size // 8)
    steps = []
    if pad > 0:
        steps.append(v2.RandomCrop(size, padding=pad, padding_mode="edge"))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps) if steps else None, pad


class _Augmented(Dataset):
    """A dataset whose images go through ``transform`` (labels untouched)."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (self.transform(x) if self.transform is not None else x), y


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Distinct, reproducible streams per (run, epoch, process); a resumed epoch
    # draws exactly what it would have drawn in an uninterrupted run.
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63 - 1)


@torch.no_grad()
def count_correct(model: nn.Module, data: Dataset, world: World, *,
                  batch_size: int = 256) -> tuple[int, int]:
    """Top-1 hits and total on ``data``, split over the processes and summed.

    Each rank takes every ``world.size``-th image (no padding, so nothing is counted
    twice) and the counts are summed, so every rank returns the same numbers.
    """
    was_training = model.training
    model.eval()
    part = Subset(data, range(world.rank, len(data), world.size))
    hits = total = 0
    for x, y in DataLoader(part, batch_size=batch_size):
        pred = model(x.to(world.device)).argmax(1).cpu()
        hits += int((pred == torch.as_tensor(y)).sum())
        total += len(pred)
    model.train(was_training)
    h, t = sum_over_ranks(world, [hits, total])
    return int(h), int(t)



def check_fit(options: FinetuneOptions, world, teacher, train_set) -> None:
    """What every fit (classifier or detector) refuses before training, one line each."""
    if options.distills and teacher is None:
        raise HdapError("this recipe distils (kd_weight > 0) but no teacher was given")
    if options.batch_size % world.size:
        raise HdapError(f"the batch size {options.batch_size} does not split over "
                        f"{world.size} processes; pick a multiple of {world.size}")
    if len(train_set) == 0:
        raise HdapError("the training set is empty")

def fit(model: nn.Module, train_set: Dataset, options: FinetuneOptions, *,
        val_set: Dataset | None = None, teacher: nn.Module | None = None,
        hflip: bool = False, checkpoint: str | Path | None = None, resume: bool = False,
        identity: dict | None = None, on_epoch: Callable[[EpochRecord], None] | None = None,
        world: World | None = None) -> FitResult:
    """Train ``model`` in place.

    Parameters
    ----------
    model:
        The student (or the model trained from scratch), on the CPU.
    train_set:
        Preprocessed ``(image tensor C x H x W, label)`` pairs.
    options:
        The recipe.
    val_set:
        Held-out pairs; its top-1 is measured after every epoch.
    teacher:
        The unpruned model, needed when ``options.kd_weight > 0``; never updated.
    hflip:
        Whether random horizontal flips make sense for these images.
    checkpoint:
        File rewritten after every epoch (rank 0); None: no checkpoints.
    resume:
        Continue from ``checkpoint``; refused when it belongs to another run.
    identity:
        What makes two runs the same run (bundle, data, sizes); saved in the checkpoint
        and compared on resume together with ``options``.
    on_epoch:
        Called after every epoch with its `EpochRecord` (on every rank).
    world:
        The process layout (`distributed.setup`); default: set up from the environment.

    Returns
    -------
    The `FitResult`: per-epoch history, training seconds, processes.
    """
    world = world or setup()
    check_fit(options, world, teacher, train_set)
    x0, _ = train_set[0]
    transform, pad = augmentation(int(x0.shape[-1]), options, hflip=hflip)
    path = Path(checkpoint) if checkpoint is not None else None
    identity = {**(identity or {}), "train_size": len(train_set),
                "val_size": None if val_set is None else len(val_set)}

    device = torch.device(world.device)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    sampler = DistributedSampler(_Augmented(train_set, transform), num_replicas=world.size,
                                 rank=world.rank, shuffle=True, seed=options.seed)
    loader = DataLoader(sampler.dataset, batch_size=options.batch_size // world.size,
                        sampler=sampler)
    steps = len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=options.lr, momentum=options.momentum,
                          weight_decay=options.weight_decay, nesterov=options.momentum > 0)
    if options.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=options.lr,
                                                    total_steps=options.epochs * steps)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=options.epochs * steps)

    result = FitResult(world_size=world.size, hflip=hflip, crop_padding=pad)
    start = (resume_run(path, model, opt, sched, options, identity, result, EpochRecord)
             if resume else 0)

    trained = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=[world.local_rank] if device.type == "cuda" else None)
    loop = _Loop(trained, model, teacher, loader, sampler, opt, sched, options, world,
                 val_set, result, path, identity)
    # The per-epoch seeding must not leak into the caller's random state.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        for epoch in range(start, options.epochs):
            record = loop.epoch(epoch)
            if on_epoch is not None:
                on_epoch(record)
    model.eval()
    return result


@dataclass
class _Loop:
    """One training run's moving parts, so that an epoch is one method."""

    trained: nn.Module  # what the forward pass goes through (DDP wrapper or the model)
    model: nn.Module  # the model itself (saved, evaluated)
    teacher: nn.Module | None
    loader: DataLoader
    sampler: DistributedSampler
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    options: FinetuneOptions
    world: World
    val_set: Dataset | None
    result: FitResult
    path: Path | None
    identity: dict

    def epoch(self, epoch: int) -> EpochRecord:
        """Train one epoch (0-based), measure, checkpoint; returns its record."""
        o, world = self.options, self.world
        device = torch.device(world.device)
        t0 = time.perf_counter()
        self.sampler.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(o.seed, epoch, world.rank))
        self.trained.train()
        loss_sum = hits = seen = 0.0
        for x, y in self.loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = self.trained(x)
            with torch.no_grad():
                t_logits = self.teacher(x) if o.distills else None
            loss = distillation_loss(logits, t_logits, y, o)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            loss_sum += float(loss.detach()) * len(y)
            hits += float((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        broadcast_buffers(world, self.model)
        loss_sum, hits, seen = sum_over_ranks(world, [loss_sum, hits, seen])
        val = None
        if self.val_set is not None and len(self.val_set):
            h, n = count_correct(self.model, self.val_set, world)
            val = h / n
        self.result.seconds += time.perf_counter() - t0
        record = EpochRecord(epoch=epoch + 1, epochs=o.epochs, loss=loss_sum / seen,
                             train_top1=hits / seen, val_top1=val,
                             lr=float(self.opt.param_groups[0]["lr"]),
                             seconds=self.result.seconds)
        self.result.history.append(record)
        if self.path is not None and world.is_main:
            ckpt.save(self.path, {
                "epoch": epoch + 1, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng": ckpt.rng_states(), "history": [asdict(r) for r in self.result.history],
                "seconds": self.result.seconds, "options": o.settings(),
                "identity": self.identity})
        barrier(world)
        return record


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (same weights, same digest, any rank)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def resume_run(path: Path | None, model: nn.Module, opt, sched, options: FinetuneOptions,
               identity: dict, result, record: type) -> int:
    """Model, optimiser, scheduler, random states and ``result``'s history (records of
    ``record``) from the checkpoint at ``path``; the epoch to go on from. Refuses a
    missing checkpoint, another run's, or a run that already finished."""
    if path is None or not path.is_file():
        raise HdapError(f"nothing to resume: no checkpoint at {path}; start without --resume")
    state = ckpt.load(path)
    _check_same_run(state, options, identity, path)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    ckpt.set_rng_states(state["rng"])
    start = int(state["epoch"])
    result.history = [record(**r) for r in state["history"]]
    result.seconds = float(state["seconds"])
    result.resumed_at = start
    if start >= options.epochs:
        raise HdapError(f"{path}: this run already finished its {options.epochs} epochs")
    return start


def _check_same_run(state: dict, options: FinetuneOptions, identity: dict, path: Path) -> None:
    saved_opt, saved_id = state.get("options", {}), state.get("identity", {})
    differ = [k for k, v in options.settings().items() if saved_opt.get(k) != v]
    differ += [k for k, v in identity.items() if saved_id.get(k) != v]
    if differ:
        shown = ", ".join(f"{k} {saved_opt.get(k, saved_id.get(k))!r} -> "
                          f"{options.settings().get(k, identity.get(k))!r}" for k in differ[:4])
        raise HdapError(f"{path} belongs to another run ({shown}); resume with the same "
                        "settings, or start over without --resume")
