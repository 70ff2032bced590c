"""The study's options: one frozen section per step, and `StudyOptions` that holds them.

- `ClusteringPlan`   how devices are grouped (k, representatives, context features, k-means);
- `MeasurementPlan`  where and how latency is measured (backend, samples, runs);
- `SurrogatePlan`    how the latency surrogate is fitted (mode, gradient boosting);
- `SearchPlan`       how hard the search works (population, refinement, finalists, polish)
                     and its evolutionary operators;
- `Query`            what is asked of a prepared study (budget, objective, cluster
                     weights, SLO): changing only the query re-uses every measurement;
- `AccuracyPlan`     labelled data and the accuracy floor;
- `QuantizePlan`     how an INT8 model is calibrated (`hdap_engine.quantize`).

`StudyOptions` adds what is pruned (model, model weights, pruning
granularity), the method and the seed. Every setting has one flat name
(`StudyOptions.of`, `default`); a section's ``seed`` is not one of them: it
always follows the study's.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass, replace
from numbers import Integral
from typing import Any

from hdap_engine.errors import HdapError
from hdap_engine.models.spec import parse_input_shape, shape_text, split_shape
from hdap_engine.options.accuracy import AccuracyPlan
from hdap_engine.options.base import one_of, option
from hdap_engine.options.quantize import QuantizePlan
from hdap_engine.search.methods import get_method, method_names
from hdap_engine.search.objectives import OBJECTIVES

# Every backend with its one-line description (the app's backend picker reads these).
BACKEND_DESCRIPTIONS = {
    "twin": "a simulated twin of every device (simulated, labelled so)",
    "host": "this machine, real PyTorch timings (the fleet becomes one cluster)",
    "agent": "real devices running the HDAP agent (uses the agent_url column)",
}
BACKENDS = tuple(BACKEND_DESCRIPTIONS)
HOST_CLOCKS = ("auto", "wall", "thread")
# What runs the model on the host (hdap_engine/latency/runtimes.py, kept import-free here).
HOST_RUNTIMES = ("torch", "torchscript", "onnxruntime")
SURROGATE_MODES = ("shared", "per-cluster")
# The precision a model ships in: searched, measured and evaluated in it (docs/int8.md).
PRECISIONS = ("fp32", "int8")
# `--round-to` follows the precision unless given: INT8 kernels fill 16 lanes of a 128-bit
# register (NEON, SSE) where FP32 fills 4, and vendors ask for multiples of 16 or 32.
ROUND_TO_BY_PRECISION = {"fp32": 8, "int8": 16}
CRITERIA = ("bic", "silhouette")
# Section fields that follow `StudyOptions`'s own field of the same name.
STUDY_WIDE = ("seed",)


@dataclass(frozen=True)
class ClusteringPlan:
    """How devices are grouped by hardware response (`hdap_engine.fleet.clustering`).

    ``criterion`` chooses an automatic k: "bic" fits a full-covariance Gaussian
    mixture (in the scaled log space) from each k-means solution and takes the
    smallest k whose mean log-likelihood per device is within ``bic_tolerance``
    nats of the best-BIC k, then merges overlapping components (under 200
    sampled devices the mixture is diagonal; under 30 it falls back to the
    silhouette); "silhouette" takes the smallest k whose score is within
    ``silhouette_tolerance`` of the best (it prefers the first, coarsest split).
    """

    k: int | None = option(None, flag="--k", parse="k", metavar="auto|N",
                           help="number of clusters (default auto)")
    representatives: int = option(3, flag="--representatives", parse="positive_int", metavar="N",
                                  help="devices measured per cluster, closest to its centroid "
                                       "(default %(default)s)")
    context_features: tuple[str, ...] = option(
        (), flag="--context", parse="columns", metavar="COL,...",
        help="numeric context columns to cluster on besides the probes (default none)")
    seed: int = 0  # the study's seed (`StudyOptions.seed`)
    k_min: int = 2  # the range of an automatic k
    k_max: int = 10
    criterion: str = "bic"
    auto_sample: int = 20_000  # devices sampled to choose k (the whole fleet when smaller)
    silhouette_sample: int = 2_000  # devices (of that sample) each k's silhouette is scored on
    bic_tolerance: float = 0.02
    silhouette_tolerance: float = 0.01
    minibatch_above: int = 50_000  # larger fleets: mini-batch k-means for the final fit
    # Larger fleets (ten million devices, say) refine the centres with k-means on a seeded
    # sample of `fit_sample` devices, then assign every device to its nearest centre.
    sample_fit_above: int = 2_000_000
    fit_sample: int = 200_000

    def __post_init__(self) -> None:
        if self.k is not None and (not isinstance(self.k, Integral) or self.k < 1):
            raise HdapError(f"k must be a whole number >= 1 or auto, got {self.k!r}")
        if not (isinstance(self.k_min, Integral) and isinstance(self.k_max, Integral)):
            raise HdapError("k_min and k_max must be whole numbers")
        if self.k_min < 2 or self.k_max < self.k_min:
            raise HdapError(f"automatic k needs 2 <= k_min <= k_max, got k_min={self.k_min}, "
                            f"k_max={self.k_max}")
        if self.criterion not in CRITERIA:
            raise HdapError(f"criterion must be 'bic' or 'silhouette', got {self.criterion!r}")
        if self.representatives < 1:
            raise HdapError(f"representatives must be at least 1, got {self.representatives}")
        if self.auto_sample < 100 or self.silhouette_sample < 100:
            raise HdapError("auto_sample and silhouette_sample must be >= 100")
        if self.fit_sample < 100:
            raise HdapError(f"fit_sample must be >= 100, got {self.fit_sample}")
        features = self.context_features
        # Saved settings give a list; a single name is one feature, not its letters.
        object.__setattr__(self, "context_features",
                           (features,) if isinstance(features, str) else tuple(features))


@dataclass(frozen=True)
class MeasurementPlan:
    """Where latency comes from and how each measurement is taken."""

    backend: str = option("twin", flag="--backend", choices=BACKENDS,
                          help="where latency is measured: twin (simulated), host (this "
                               "machine), agent (devices running `hdap agent serve`)")
    samples: int = option(200, flag="--samples", parse="positive_int",
                          help="candidates measured on every representative (default "
                               "%(default)s)")
    repeats: int = option(5, flag="--repeats", parse="positive_int",
                          help="timed runs per measurement (default %(default)s)")
    warmup: int = 2
    # Sequential measurement (methods that measure sequentially, `hdap_engine.search.sequential`):
    # a few samples first, then small batches until another batch is not worth its noise.
    initial_samples: int = option(30, flag="--initial-samples", parse="positive_int",
                                  help="candidates measured on every representative before the "
                                       "sequential batches, for methods that measure "
                                       "sequentially (default %(default)s)")
    batch: int = 8  # candidates per sequential batch
    max_measurements: int = option(1000, flag="--max-measurements", parse="positive_int",
                                   help="most (device, candidate) measurements a sequential "
                                        "study spends, finalists and polish included (default "
                                        "%(default)s)")
    warm_max_measurements: int = 200  # the same, when earlier studies warm-start this one
    warm_start: bool = option(True, flag="--no-warm-start", parse="off",
                              help="do not start from the store's measurements of earlier "
                                   "studies of this model and SKU")
    # Adaptive repeats: timed runs per measurement follow each device's observed spread, so
    # that a median is known to `repeat_precision` (relative standard error).
    adaptive_repeats: bool = True
    min_repeats: int = 3
    max_repeats: int = 15
    repeat_precision: float = 0.015
    # A cluster gets one representative per this much log spread of its devices (at least
    # one, at most `ClusteringPlan.representatives`): a tight cluster is one device.
    representative_spread: float = 0.06
    host_threads: int = option(1, flag="--threads", parse="positive_int",
                               help="PyTorch threads for the host backend (default "
                                    "%(default)s)")
    host_clock: str = option("auto", flag="--clock", choices=HOST_CLOCKS,
                             help="host backend timer: wall time, or the timing thread's CPU "
                                  "time (robust to other jobs on a shared machine; one thread "
                                  "only); auto = thread with --threads 1")
    host_runtime: str = option("torch", flag="--runtime", choices=HOST_RUNTIMES,
                               help="host backend: what runs the model (default %(default)s; "
                                    "onnxruntime as the device agent runs it)")
    precision: str = option("fp32", flag="--precision", choices=PRECISIONS,
                            help="the precision the model ships in: every candidate is "
                                 "measured in it (int8: quantised by ONNX Runtime first; the "
                                 "host needs --runtime onnxruntime) (default %(default)s)")
    twin_preset: str | None = option(None, flag="--twin-preset",
                                     help="twin physics for telemetry without a .twin.parquet "
                                          "sidecar (jetson-nano, rpi4)")
    # Never saved with a run (see `StudyOptions.settings`); the CLI falls back to
    # $HDAP_AGENT_TOKEN.
    agent_token: str | None = option(None, flag="--agent-token",
                                     help="bearer token of the agents (default: "
                                          "$HDAP_AGENT_TOKEN)")

    def __post_init__(self):
        one_of("backend", self.backend, BACKENDS)
        if self.samples < 20:
            raise HdapError(f"samples must be at least 20 to train a surrogate, got "
                            f"{self.samples}")
        if self.repeats < 1 or self.warmup < 0:
            raise HdapError("repeats must be >= 1 and warmup >= 0")
        if self.initial_samples < 10 or self.batch < 1:
            raise HdapError(f"initial_samples must be at least 10 (the surrogate needs them) "
                            f"and batch at least 1, got {self.initial_samples} and "
                            f"{self.batch}")
        if self.max_measurements < 1 or self.warm_max_measurements < 1:
            raise HdapError("max_measurements and warm_max_measurements must be at least 1")
        if not 1 <= self.min_repeats <= self.max_repeats:
            raise HdapError(f"repeats need 1 <= min_repeats <= max_repeats, got "
                            f"{self.min_repeats} and {self.max_repeats}")
        if not self.repeat_precision > 0 or not self.representative_spread > 0:
            raise HdapError("repeat_precision and representative_spread must be > 0")
        one_of("runtime", self.host_runtime, HOST_RUNTIMES)
        one_of("host clock", self.host_clock, HOST_CLOCKS)
        one_of("precision", self.precision, PRECISIONS)
        if self.precision == "int8" and self.backend == "host" and \
                self.host_runtime != "onnxruntime":
            raise HdapError(f"--precision int8 runs in ONNX Runtime on the host; add --runtime "
                            f"onnxruntime (got --runtime {self.host_runtime})")


@dataclass(frozen=True)
class SurrogatePlan:
    """How the latency surrogate is fitted (`hdap_engine.latency.surrogate`).

    A method may override the mode (`Method.surrogate_mode`) and turn the
    linear base off (`Method.linear_base`: the paper fits gradient boosting alone).
    """

    mode: str = option("shared", flag="--mode", choices=SURROGATE_MODES,
                       help="one model across clusters, or one per cluster as in the paper "
                            "(default %(default)s)")
    ensemble: int = 3  # bootstrap models; their spread is the uncertainty
    n_estimators: int = 400
    max_depth: int = 6
    learning_rate: float = 0.08
    subsample: float = 0.8
    colsample: float = 0.8
    test_fraction: float = 0.2  # held-out candidates the accuracy is judged on
    linear_base: bool = True  # a non-negative roofline per device under the trees
    # The SKU's twin at each device's probe-fitted state as one more term of the linear base
    # (`hdap_engine.latency.prior`), for fleets of a SKU the twin has a preset for.
    twin_prior: bool = option(True, flag="--no-twin-prior", parse="off",
                              help="do not put the SKU's device twin (at each device's "
                                   "probe-fitted state) under the latency surrogate")
    seed: int = 0  # the study's seed (`StudyOptions.seed`)
    # One thread: XGBoost's OpenMP threads spin-wait, and on a busy 2-core machine two
    # threads were 10x slower than one.
    threads: int = 1

    def __post_init__(self):
        one_of("surrogate mode", self.mode, SURROGATE_MODES)
        if self.ensemble < 1:
            raise HdapError("the surrogate ensemble needs at least one model")
        if not 0 < self.test_fraction < 0.9:
            raise HdapError(f"test_fraction must be in (0, 0.9), got {self.test_fraction}")


@dataclass(frozen=True)
class SearchPlan:
    """How hard the search works, and its evolutionary operators (`hdap_engine.search`).

    Which steps run (refinement, finalists, polish) is the method's business.
    The population is at least 8: the six elite survive every generation
    unchanged, and the rest are the children.
    """

    population: int = option(64, flag="--population", parse="positive_int",
                             help="search population (default %(default)s; at least 8)")
    generations: int = option(60, flag="--generations", parse="positive_int",
                              help="search generations (default %(default)s)")
    # search, measure the best candidates, refit: how many times (methods that refine)
    refine_rounds: int = option(3, flag="--refine-rounds", parse="int", metavar="N",
                                help="rounds of measuring the search's favourites and "
                                     "refitting, for methods that refine (default "
                                     "%(default)s; 0 for none)")
    refine_batch: int = 24  # candidates measured per refinement round
    # independent final searches; finalists are drawn from all of them
    restarts: int = option(3, flag="--restarts", parse="positive_int", metavar="N",
                           help="independent final searches the finalists are drawn from "
                                "(default %(default)s)")
    # search finalists re-measured before choosing (methods that measure finalists)
    finalists: int = option(12, flag="--finalists", parse="positive_int",
                            help="search finalists measured before one is chosen (default "
                                 "%(default)s; 1 for none)")
    polish_rounds: int = option(3, flag="--polish-rounds", parse="int", metavar="N",
                                help="rounds of measured local search from the chosen "
                                     "candidate, for methods that measure finalists (default "
                                     "%(default)s; 0 for none)")
    polish_batch: int = 12  # candidates measured per polish round
    # The evolutionary loop (`hdap_engine.search.evolution.evolve`).
    elite: int = 6  # best candidates kept unchanged every generation
    tournament: int = 3
    crossover: float = 0.5
    mutation_rate: float = 0.15  # share of groups mutated in a child
    mutation_scale: float = 0.25  # log-normal sigma of a mutation
    patience: int = 20  # stop after this many generations without improvement
    seed: int = 0  # the study's seed (`StudyOptions.seed`)

    def __post_init__(self):
        if self.population < 8 or self.generations < 1:
            raise HdapError(f"the search needs a population of at least 8 and at least one "
                            f"generation, got {self.population} and {self.generations}")
        if not 0 <= self.elite < self.population:
            raise HdapError("elite must be smaller than the population")
        if self.polish_rounds < 0 or self.polish_batch < 1:
            raise HdapError("polish_rounds must be >= 0 and polish_batch >= 1")
        if self.restarts < 1:
            raise HdapError(f"restarts must be at least 1, got {self.restarts}")
        if self.refine_rounds < 0 or self.finalists < 0 or self.refine_batch < 1:
            raise HdapError("refine_rounds must be >= 0, finalists >= 0 and refine_batch >= 1")

    def quick(self) -> SearchPlan:
        """The plan of a what-if answer: one search on the surrogate, nothing measured."""
        return replace(self, refine_rounds=0, finalists=0, restarts=1)


# How hard the search works, by name: the app's "Search effort" choice. `standard` is the
# defaults above; `quick` is a demo's or a test's study (seconds on the twin instead of
# half a minute); `thorough` searches longer for a model that ships. The refinement rounds
# are their own setting and not part of an effort.
SEARCH_EFFORTS: dict[str, dict[str, int]] = {
    "quick": {"population": 16, "generations": 10, "refine_batch": 8, "restarts": 1,
              "finalists": 4, "polish_rounds": 1, "polish_batch": 4},
    "standard": {},
    "thorough": {"population": 96, "generations": 90, "restarts": 4, "finalists": 16,
                 "polish_rounds": 4},
}


def search_effort(name: str) -> dict[str, int]:
    """The `SearchPlan` settings of a named effort (`SEARCH_EFFORTS`)."""
    try:
        return dict(SEARCH_EFFORTS[name])
    except KeyError:
        raise HdapError(f"unknown search effort {name!r}; choose one of: "
                        f"{', '.join(SEARCH_EFFORTS)}") from None


@dataclass(frozen=True)
class Query:
    """What is asked of a prepared study: any change here re-uses every measurement."""

    budget: str = option("0.25", flag="--macs", parse="str", metavar="BUDGET",
                         aliases=("--flops",),
                         help="MACs budget: 1.0G, 500M, or a fraction of the model such as "
                              "0.25 or 25%%. --flops is the same flag: pruning papers (the "
                              "HDAP paper included) write FLOPs for multiply-accumulates.")
    objective: str = option("mean", flag="--objective", choices=OBJECTIVES,
                            help="fleet objective: weighted mean, p95 over devices, worst "
                                 "cluster, or share of devices over --slo-ms")
    slo_ms: float | None = option(None, flag="--slo-ms", parse="float",
                                  help="latency target for --objective slo")
    # cluster -> weight; None = device shares
    cluster_weights: dict[int, float] | None = option(
        None, flag="--cluster-weights", parse="cluster_weights", metavar="0=2,3=1",
        old=("--weights",),
        help="cluster weights (normalised; clusters not named get 0); default: device shares")

    # A budget in measured latency instead of MACs (`hdap_engine.study.latency_budget`).
    latency_ms: float | None = option(
        None, flag="--latency-budget", parse="float", metavar="MS",
        help="a budget in measured latency instead of MACs: the least-pruned model whose "
             "fleet objective (mean, p95 or worst, in ms) is at most MS; --macs is then "
             "ignored")

    def __post_init__(self):
        one_of("objective", self.objective, OBJECTIVES)
        if self.objective == "slo" and not (self.slo_ms and self.slo_ms > 0):
            raise HdapError("the slo objective needs a latency target in ms (--slo-ms 25)")
        if self.latency_ms is not None:
            if not self.latency_ms > 0:
                raise HdapError(f"latency budget {self.latency_ms} ms must be positive "
                                "(--latency-budget 5 for 5 ms)")
            if self.objective == "slo":
                raise HdapError("a latency budget bounds a latency; the slo objective is a "
                                "share of devices: use --objective mean, p95 or worst")


@dataclass(frozen=True)
class StudyOptions:
    """Everything that defines a study (plain data: saved with the run)."""

    model: str = option("resnet50", flag="--model", parse="str", metavar="MODEL",
                        help="a registered name, torchvision:NAME, timm:NAME or "
                             "PATH.py:FUNCTION (see `hdap models`)")
    # Folded into the model's key (`name@CxHxW`) as soon as the options are made, so the
    # key alone names the model everywhere (jobs, bundles, the store).
    input_shape: tuple[int, int, int] | None = option(
        None, flag="--input-shape", parse="input_shape", metavar="C,H,W",
        help="the model's input shape, e.g. 3,224,224 (default: what the model says; a "
             "file model that does not say needs it)")
    # None/random, "pretrained", or a state-dict path
    model_weights: str | None = option(None, flag="--model-weights", metavar="FILE|pretrained",
                                       old=("--weights",),
                                       help="state dict of the model to prune (default: "
                                            "random initialisation)")
    method: str = option("hdap", flag="--method", choices=("<registry>",), metavar="METHOD",
                         help="%(choices)s (default %(default)s)")
    # None follows the precision (`ROUND_TO_BY_PRECISION`): resolved in __post_init__.
    round_to: int | None = option(None, flag="--round-to", parse="positive_int",
                                  help="widths are multiples of this (default 8 for fp32, "
                                       "16 for int8)")
    min_ratio: float = option(0.1, flag="--min-ratio", parse="ratio",
                              help="keep at least this fraction of every group (default "
                                   "%(default)s)")
    seed: int = option(0, flag="--seed", parse="int",
                       help="seed of every random draw (default %(default)s)")
    sku: str | None = option(None, flag="--sku",
                             help="keep only this SKU (required when the file holds several)")
    clustering: ClusteringPlan = option(default_factory=ClusteringPlan)
    measurement: MeasurementPlan = option(default_factory=MeasurementPlan)
    surrogate: SurrogatePlan = option(default_factory=SurrogatePlan)
    search: SearchPlan = option(default_factory=SearchPlan)
    query: Query = option(default_factory=Query)
    accuracy: AccuracyPlan = option(default_factory=AccuracyPlan)
    quantize: QuantizePlan = option(default_factory=QuantizePlan)

    def __post_init__(self):
        one_of("method", self.method, method_names())
        if self.input_shape is not None:
            base, _ = split_shape(str(self.model))
            shape = shape_text(parse_input_shape(self.input_shape))
            object.__setattr__(self, "model", f"{base}@{shape}")
            object.__setattr__(self, "input_shape", None)
        if self.round_to is None:
            object.__setattr__(self, "round_to",
                               ROUND_TO_BY_PRECISION[self.measurement.precision])
        if self.measurement.precision == "int8" and self.quantize.calibrate_on == "data" \
                and not self.accuracy.data:
            raise HdapError("--precision int8 calibrates on the --data images, and there are "
                            "none: give --data (labelled images, or 'digits'), or add "
                            "--calibrate-on random to calibrate on random inputs (the INT8 "
                            "accuracy is then unknown)")
        # A section's seed is the study's: one seed, however the options were made.
        for name in _SECTIONS:
            section = getattr(self, name)
            changes = {w: getattr(self, w) for w in STUDY_WIDE
                       if hasattr(section, w) and getattr(section, w) != getattr(self, w)}
            if changes:
                object.__setattr__(self, name, replace(section, **changes))

    @property
    def method_spec(self):
        """The registered `Method` of ``method``."""
        return get_method(self.method)

    # -- flat access: one name per setting across the sections ---------------------------

    @classmethod
    def of(cls, **settings) -> StudyOptions:
        """Options from flat names (``samples=40, budget="0.5"``), each found in its section."""
        return cls().updated(**settings)

    def updated(self, **changes) -> StudyOptions:
        """A copy with flat-named settings changed (sections are found by field name)."""
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            section = _SECTION_OF.get(name)
            if section is None:
                raise HdapError(f"unknown study setting {name!r}")
            if section == "":
                top[name] = value
            else:
                sections.setdefault(section, {})[name] = value
        for section, values in sections.items():
            top[section] = replace(getattr(self, section), **values)
        if "precision" in changes and "round_to" not in changes and \
                self.round_to == ROUND_TO_BY_PRECISION[self.measurement.precision]:
            top["round_to"] = None  # the default follows the new precision
        return replace(self, **top)

    def flat(self, *, keep_token: bool = False) -> dict:
        """Every setting by its flat name (without the agent token unless asked)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if is_dataclass(value):
                out.update({g.name: getattr(value, g.name) for g in fields(value)
                            if g.name not in STUDY_WIDE})
            else:
                out[f.name] = value
        if not keep_token:
            out.pop("agent_token", None)
        return out

    def settings(self) -> dict:
        """JSON-ready settings, nested by section (the agent token never leaves the process)."""
        d = asdict(self)
        d["measurement"].pop("agent_token", None)
        for name in _SECTIONS:
            for wide in STUDY_WIDE:
                d[name].pop(wide, None)
        return d

    @classmethod
    def from_settings(cls, settings: dict) -> StudyOptions:
        """Options from `settings` output, or the flat settings earlier runs were saved with."""
        flat: dict[str, Any] = {}
        for key, value in settings.items():
            if key in _SECTIONS and isinstance(value, dict):
                flat.update({k: v for k, v in value.items() if k not in STUDY_WIDE})
            else:
                flat[_LEGACY.get(key, key)] = value
        if isinstance(flat.get("cluster_weights"), dict):
            flat["cluster_weights"] = {int(c): float(w)
                                       for c, w in flat["cluster_weights"].items()}
        known = {k: v for k, v in flat.items() if k in _SECTION_OF}
        return cls.of(**known)


_SECTIONS = tuple(f.name for f in fields(StudyOptions) if f.default_factory is not MISSING)
_SECTION_OF: dict[str, str] = {f.name: "" for f in fields(StudyOptions)
                               if f.name not in _SECTIONS}
for _section in _SECTIONS:
    _cls = {f.name: f for f in fields(StudyOptions)}[_section].default_factory
    for _f in fields(_cls):
        if _f.name in STUDY_WIDE:
            continue
        assert _f.name not in _SECTION_OF, f"setting {_f.name} is in two sections"
        _SECTION_OF[_f.name] = _section
# Names that settings saved by earlier versions used.
_LEGACY = {"weights": "cluster_weights", "surrogate_mode": "mode"}

# What a what-if run may change on a prepared study without measuring anew.
WHAT_IF_SETTINGS = ("budget", "latency_ms", "objective", "slo_ms", "cluster_weights", "finalists",
                    "model_weights", "min_accuracy")


def flatten_settings(settings: dict) -> dict:
    """Saved settings (nested, or the flat form of earlier runs) by flat name."""
    try:
        return StudyOptions.from_settings(settings).flat()
    except HdapError:
        return dict(settings)


def study_default(name: str):
    """The default of one study setting, by its flat name."""
    section = _SECTION_OF.get(name)
    if section is None:
        raise KeyError(name)
    base = StudyOptions()
    obj = base if section == "" else getattr(base, section)
    value = getattr(obj, name)
    return value if not is_dataclass(value) else asdict(value)
