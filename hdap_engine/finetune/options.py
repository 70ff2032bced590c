"""The fine-tuning recipe as plain data: one frozen dataclass with sensible defaults.

The same options drive `hdap train` (from scratch, no teacher) and `hdap finetune`
(distillation from the unpruned model); the CLI's flag defaults are read from here.
Light on imports so that the command line can build its flags without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from hdap_engine.errors import HdapError

SCHEDULES = ("cosine", "onecycle")


@dataclass(frozen=True)
class FinetuneOptions:
    """How a model is trained: loss weights, optimiser, schedule, augmentation, seed.

    The loss is ``kd_weight * KL(teacher_T || student_T) * T**2 + ce_weight * CE``
    (Hinton et al. 2015: the T**2 keeps the soft term's gradients on the scale of the
    hard one's when T changes). ``kd_weight = 0`` trains on the labels alone.
    ``batch_size`` is the *global* batch: under torchrun every process takes
    ``batch_size / world_size`` of it, so the schedule and the result do not depend
    on the number of processes.
    """

    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    temperature: float = 4.0
    kd_weight: float = 0.9
    ce_weight: float = 0.1
    crop_padding: int | None = None  # None: an eighth of the input size (4 px at 32x32)
    hflip: bool | None = None  # None: not for digits (mirrored digits are other symbols), else yes
    # Training images on which batch-norm statistics are re-estimated before the first
    # epoch (adaptive BN): a freshly pruned model's statistics belong to the unpruned
    # one, and starting from them wastes the first epochs. 0: start from the bundle's.
    bn_images: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise HdapError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise HdapError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise HdapError(f"the learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise HdapError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise HdapError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise HdapError(f"unknown schedule {self.schedule!r}; choose one of: "
                            f"{', '.join(SCHEDULES)}")
        if not self.temperature > 0:
            raise HdapError(f"the distillation temperature must be > 0, got {self.temperature}")
        if self.kd_weight < 0 or self.ce_weight < 0 or self.kd_weight + self.ce_weight == 0:
            raise HdapError("kd_weight and ce_weight must be >= 0 and not both 0")
        if self.bn_images < 0:
            raise HdapError(f"bn_images must be >= 0, got {self.bn_images}")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise HdapError(f"crop padding must be >= 0, got {self.crop_padding}")

    @property
    def distills(self) -> bool:
        """Whether the recipe needs a teacher."""
        return self.kd_weight > 0

    def settings(self) -> dict:
        """JSON-ready settings (saved in checkpoints and reports)."""
        return asdict(self)

    def with_changes(self, **changes) -> FinetuneOptions:
        """A copy with some fields changed (None values are ignored: flag not given)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# Fine-tuning a pruned model by distillation (the defaults).
DISTILL = FinetuneOptions()
# Training from scratch: labels only, a larger learning rate.
SCRATCH = FinetuneOptions(epochs=30, lr=0.1, kd_weight=0.0, ce_weight=1.0)


def default(name: str):
    """The default of one `FinetuneOptions` field (the CLI's flag defaults come from here)."""
    return next(f.default for f in fields(FinetuneOptions) if f.name == name)
