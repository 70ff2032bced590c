"""What defines a study: methods, backends, stages and `StudyOptions`.

Plain data with no heavy imports, so that the command line can build its
flags (and their defaults) from here without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from hdap_engine.errors import HdapError
from hdap_engine.search.objectives import OBJECTIVES

BASELINE_METHODS = ("uniform", "global")
SEARCH_METHODS = ("hdap", "paper", "single-device")
METHODS = SEARCH_METHODS + BASELINE_METHODS
BACKENDS = ("twin", "host", "agent")
STAGES = ("fleet", "cluster", "measure", "fit", "search", "prune", "validate", "export")

@dataclass(frozen=True)
class StudyOptions:
    """Everything that defines a study (plain data: saved with the run)."""

    model: str = "resnet50"
    budget: str = "0.25"
    objective: str = "mean"
    slo_ms: float | None = None
    weights: dict[int, float] | None = None  # cluster -> weight; None = device shares
    backend: str = "twin"
    method: str = "hdap"
    samples: int = 200  # candidates measured on every representative
    repeats: int = 5
    warmup: int = 2
    representatives: int = 3
    k: int | None = None  # None: chosen automatically
    surrogate_mode: str = "shared"
    round_to: int = 8
    min_ratio: float = 0.1
    finalists: int = 12  # search finalists re-measured before choosing (hdap, single-device)
    refine_rounds: int = 3  # search, measure the best candidates, refit: how many times (hdap)
    refine_batch: int = 24  # candidates measured per refinement round
    seed: int = 0
    sku: str | None = None
    model_weights: str | None = None  # None/random, "pretrained", or a state-dict path
    host_threads: int = 1
    host_clock: str = "auto"  # wall, thread (CPU time of the timing thread), auto
    host_runtime: str = "torch"  # torch, torchscript, onnxruntime (latency/runtimes.py)
    twin_preset: str | None = None  # for uploaded telemetry without a sidecar
    agent_token: str | None = None
    population: int = 64
    generations: int = 60
    restarts: int = 3  # independent final searches; finalists are drawn from all of them
    polish_rounds: int = 3  # measured local search from the chosen candidate (hdap, single-device)
    polish_batch: int = 12  # candidates measured per polish round

    def __post_init__(self):
        if self.method not in METHODS:
            raise HdapError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if self.backend not in BACKENDS:
            raise HdapError(f"unknown backend {self.backend!r}; choose one of: "
                            f"{', '.join(BACKENDS)}")
        if self.host_runtime not in ("torch", "torchscript", "onnxruntime"):
            raise HdapError(f"unknown runtime {self.host_runtime!r}; choose one of: "
                            "torch, torchscript, onnxruntime")
        if self.samples < 20:
            raise HdapError(f"samples must be at least 20 to train a surrogate, got {self.samples}")
        if self.repeats < 1 or self.warmup < 0:
            raise HdapError("repeats must be >= 1 and warmup >= 0")
        if self.population < 8 or self.generations < 1:
            raise HdapError(f"the search needs a population of at least 8 and at least one "
                            f"generation, got {self.population} and {self.generations}")
        if self.polish_rounds < 0 or self.polish_batch < 1:
            raise HdapError("polish_rounds must be >= 0 and polish_batch >= 1")
        if self.restarts < 1:
            raise HdapError(f"restarts must be at least 1, got {self.restarts}")
        if self.refine_rounds < 0 or self.finalists < 1 or self.refine_batch < 1:
            raise HdapError("refine_rounds must be >= 0, finalists and refine_batch >= 1")
        if self.objective not in OBJECTIVES:
            raise HdapError(f"unknown objective {self.objective!r}; choose one of: "
                            f"{', '.join(OBJECTIVES)}")
        if self.objective == "slo" and not (self.slo_ms and self.slo_ms > 0):
            raise HdapError("the slo objective needs a latency target in ms (--slo-ms 25)")

    def settings(self) -> dict:
        """JSON-ready settings (the agent token never leaves the process)."""
        d = asdict(self)
        d.pop("agent_token", None)
        return d


def default(name: str):
    """The default of one `StudyOptions` field (the CLI's flag defaults come from here)."""
    return next(f.default for f in fields(StudyOptions) if f.name == name)
