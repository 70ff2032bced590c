"""The options of the steps beside and after a study: drift, re-optimising, rollout, raw
runs, the training recipe, the twin's simulation, the host probe, the app and the MACs
benchmark. Each is frozen; each flag of `hdap` that sets one is built from its field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from hdap_engine.errors import HdapError
from hdap_engine.options.base import one_of, option
from hdap_engine.options.study import ClusteringPlan

SCHEDULES = ("cosine", "onecycle")


# -- life after shipping -----------------------------------------------------------------------

@dataclass(frozen=True)
class DriftOptions:
    """How two snapshots are compared (`hdap_engine.fleet.drift.compare`).

    ``shift_threshold``: a probe's median in a cluster that changed by more than this
    (relative, 0.05 = 5 %) marks the cluster as shifted; ``share_threshold``: so does a
    share of devices that changed by more than this (absolute, 0.05 = 5 points).
    ``new_cluster_distance``: a fresh NEW cluster whose centre lies further than this
    many RMS radii of the nearest OLD cluster from its centre is "only in NEW". Measured
    on the twin: fresh clusters that are OLD's clusters again sit 0.01-0.02 radii from
    them; 150 devices with a mechanism OLD never had (DRAM at 35 %, cache at 30 %) form
    a cluster 2.6-2.8 radii away.
    """

    clustering: ClusteringPlan = option(default_factory=ClusteringPlan)  # OLD, and NEW afresh
    shift_threshold: float = 0.05
    share_threshold: float = 0.05
    new_cluster_distance: float = 1.5


@dataclass(frozen=True)
class ReoptimiseOptions:
    """When re-optimising for the latest snapshot is recommended (`hdap_engine.lifecycle`)."""

    threshold: float = option(0.03, flag="--threshold", parse="share", metavar="SHARE",
                              help="recommend re-optimising when the deployed model is this "
                                   "much worse (default %(default)s = 3%%)")

    def __post_init__(self):
        if not 0 <= self.threshold < 1:
            raise HdapError(f"--threshold must be a share between 0 and 1 (0.03 = 3 %), got "
                            f"{self.threshold}")


@dataclass(frozen=True)
class RolloutOptions:
    """What a rollout plans (`hdap_engine.lifecycle.rollout.plan_rollout`)."""

    variants: int = option(3, flag="--variants", parse="positive_int", metavar="K",
                           help="plans for 1..K variants (default %(default)s; capped at the "
                                "clusters)")

    def __post_init__(self):
        if int(self.variants) < 1:
            raise HdapError(f"--variants must be at least 1, got {self.variants}")


# -- telemetry ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LongFormatOptions:
    """How raw runs are aggregated and how much memory DuckDB may use (`hdap_engine.fleet`).

    A device needs at least ``min_runs`` runs of every probe (the median of one or two
    runs is one outlier away from wrong); one whose interquartile range / median exceeds
    ``max_spread`` on any probe is left out as unstable. DuckDB runs under
    ``memory_limit`` and spills to ``temp_dir`` (default a ``hdap_duckdb`` folder in the
    system temporary folder) with ``threads`` (None: DuckDB's default, all cores). Wide
    Parquet files with more rows than ``wide_rows_via_duckdb`` are read through DuckDB.
    """

    min_runs: int = 3
    max_spread: float = 0.25
    memory_limit: str = "2GB"
    temp_dir: str | None = None
    threads: int | None = None
    wide_rows_via_duckdb: int = 2_000_000

    def __post_init__(self) -> None:
        if self.min_runs < 1:
            raise HdapError(f"min_runs must be >= 1, got {self.min_runs}")
        if not self.max_spread > 0:
            raise HdapError(f"max_spread must be > 0, got {self.max_spread}")


@dataclass(frozen=True)
class SimulationOptions:
    """A fleet simulated with the device twin (`hdap simulate`)."""

    sku: str = option("jetson-nano", flag="--sku",
                      help="device preset (jetson-nano, rpi4; default %(default)s)")
    devices: int = option(5000, flag="--devices", parse="int",
                          help="number of devices (default %(default)s)")
    seed: int = option(0, flag="--seed", parse="int",
                       help="seed of every random draw (default %(default)s)")
    changed: float = option(0.15, flag="--changed", parse="float", metavar="SHARE",
                            help="with --later-of: share of all devices that drift (default "
                                 "%(default)s)")
    mechanism: str = option("thermal_throttling", flag="--mechanism",
                            help="with --later-of: the mechanism they take on (default "
                                 "%(default)s)")


@dataclass(frozen=True)
class ProbeOptions:
    """The standard probe suite timed on this machine (`hdap probe`)."""

    repeats: int = option(20, flag="--repeats", parse="int",
                          help="timed repeats per probe, the median is kept (default "
                               "%(default)s)")
    warmup: int = option(3, flag="--warmup", parse="int",
                         help="untimed warm-up rounds (default %(default)s)")
    threads: int | None = option(None, flag="--threads", parse="int",
                                 help="torch threads (default: torch's own choice)")



@dataclass(frozen=True)
class ShapesOptions:
    """The synthetic shapes detection dataset (`hdap data shapes`, `hdap_engine.data.shapes`)."""

    images: int = option(200, flag="--images", parse="positive_int",
                         help="number of images (default %(default)s)")
    size: int = option(160, flag="--size", parse="positive_int", metavar="PX",
                       help="side of the square images in pixels (default %(default)s)")
    seed: int = option(0, flag="--seed", parse="int",
                       help="seed of everything drawn (default %(default)s)")
    min_objects: int = option(1, flag="--min-objects", parse="positive_int",
                              help="fewest objects per image (default %(default)s)")
    max_objects: int = option(5, flag="--max-objects", parse="positive_int",
                              help="most objects per image (default %(default)s)")

    def __post_init__(self):
        if self.images < 1:
            raise HdapError(f"--images must be at least 1, got {self.images}")
        if not 32 <= self.size <= 2048:
            raise HdapError(f"--size must be between 32 and 2048 pixels, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects <= 50:
            raise HdapError("objects per image must satisfy 1 <= --min-objects <= "
                            f"--max-objects <= 50, got {self.min_objects}..{self.max_objects}")

# -- training ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FinetuneOptions:
    """How a model is trained: loss weights, optimiser, schedule, augmentation, seed.

    The loss is ``kd_weight * KL(teacher_T || student_T) * T**2 + ce_weight * CE``
    (Hinton et al. 2015: the T**2 keeps the soft term's gradients on the scale of the
    hard one's when T changes). ``kd_weight = 0`` trains on the labels alone.
    ``batch_size`` is the *global* batch: under torchrun every process takes
    ``batch_size / world_size`` of it, so the schedule and the result do not depend
    on the number of processes. `hdap train` starts from `SCRATCH`, `hdap finetune`
    from `DISTILL` (the defaults).
    """

    epochs: int = option(15, flag="--epochs", parse="positive_int",
                         help="epochs (default %(default)s)")
    batch_size: int = option(64, flag="--batch-size", parse="positive_int",
                             help="global batch size, split over torchrun processes (default "
                                  "%(default)s)")
    lr: float = option(0.01, flag="--lr", parse="float",
                       help="peak learning rate of SGD with momentum (default %(default)s)")
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = option("cosine", flag="--schedule", choices=SCHEDULES,
                           help="learning-rate schedule (default %(default)s)")
    temperature: float = option(4.0, flag="--temperature", parse="float",
                                help="distillation temperature (default %(default)s)")
    kd_weight: float = option(0.9, flag="--kd-weight", parse="float",
                              help="weight of the distillation term; 0 = labels only "
                                   "(default %(default)s)")
    ce_weight: float = option(0.1, flag="--ce-weight", parse="float",
                              help="weight of the cross-entropy term (default %(default)s)")
    crop_padding: int | None = None  # None: an eighth of the input size (4 px at 32x32)
    hflip: bool | None = None  # None: not for digits (mirrored digits are other symbols), else yes
    # Training images on which batch-norm statistics are re-estimated before the first
    # epoch (adaptive BN): a freshly pruned model's statistics belong to the unpruned
    # one, and starting from them wastes the first epochs. 0: start from the bundle's.
    bn_images: int = 512
    seed: int = option(0, flag="--seed", parse="int",
                       help="seed of order, augmentation and initialisation (default "
                            "%(default)s)")

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
        one_of("schedule", self.schedule, SCHEDULES)
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


# -- tools -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppOptions:
    """Where `hdap app` serves the web app."""

    port: int = option(8501, flag="--port", parse="positive_int",
                       help="port (default %(default)s)")
    address: str = option("127.0.0.1", flag="--address",
                          help="bind address (default %(default)s; 0.0.0.0 to serve the "
                               "network)")


@dataclass(frozen=True)
class MacsBenchOptions:
    """How `hdap bench-macs` times the analytic MACs formula."""

    model: str = option("resnet50", flag="--model", metavar="MODEL",
                        help="any model name (see `hdap models`; default %(default)s)")
    input_shape: tuple[int, int, int] | None = option(
        None, flag="--input-shape", parse="input_shape", metavar="C,H,W",
        help="the model's input shape (default: what the model says)")
    candidates: int = option(100_000, flag="--candidates", parse="positive_int",
                             help="candidates per run (default %(default)s)")
    repeats: int = option(7, flag="--repeats", parse="positive_int",
                          help="runs; the median is reported (default %(default)s)")


@dataclass(frozen=True)
class ModelCheckOptions:
    """How `hdap models --check` tries a model (`hdap_engine.models.check`)."""

    check: str | None = option(None, flag="--check", metavar="MODEL",
                               help="say in one line whether MODEL can be pruned, and if not "
                                    "why (any naming form)")
    input_shape: tuple[int, int, int] | None = option(
        None, flag="--input-shape", parse="input_shape", metavar="C,H,W",
        help="the checked model's input shape (default: what the model says)")
    timeout_s: float = option(300.0, flag="--timeout", parse="float", metavar="S",
                              help="give up on the check after this many seconds (default "
                                   "%(default)s)")
