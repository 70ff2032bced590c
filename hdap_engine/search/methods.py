"""The method registry: every way of choosing a candidate, as one registered entry.

As timm registers models, a method is one `Method` registered by name; the
CLI's choices, `hdap bench`, the charts and the app read this registry and
nothing else compares method names. A method says

- which devices it searches for (every cluster's representatives, or one lab
  device: the representative of the largest cluster),
- how its surrogate is fitted (the study's mode, or per cluster as in the
  paper; with or without our per-device linear base),
- how clusters are weighted in its objective (the study's cluster weights, equal
  weights, or the lab device's cluster alone),
- whether it refines (measure the search's favourites and refit), whether it
  does so sequentially with a stopping rule, and whether it measures
  finalists and polishes the chosen candidate,
- or, for a baseline, the rule that gives its candidate without any
  measurement (uniform keep ratio, global magnitude ranking),
- its label and its colour in every table and chart.

Registering a new method is one `register_method(Method(...))` call.
This module is light (no torch): the CLI imports it to build its flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hdap_engine.errors import HdapError

# (space, target_macs, model or None) -> widths; the model is built only for rules that need it.
Rule = Callable[..., object]

SEARCH_DEVICES = ("representatives", "lab-device")
CLUSTER_WEIGHTING = ("study", "equal", "lab-device")


@dataclass(frozen=True)
class Method:
    """One registered method (plain data; see the module docstring)."""

    name: str
    label: str  # short, for tables and chart legends
    description: str  # one line, for the app's method picker
    color: str  # the method's colour in every chart
    rule: Rule | None = None  # baselines: the candidate without measurements
    needs_model: bool = False  # the rule reads the model's weights
    devices: str = "representatives"  # what the search measures: SEARCH_DEVICES
    surrogate_mode: str | None = None  # None: the study's SurrogatePlan.mode
    linear_base: bool = True  # our per-device linear base under the boosted trees
    cluster_weighting: str = "study"  # CLUSTER_WEIGHTING
    refines: bool = False  # search, measure favourites, refit (SearchPlan.refine_rounds)
    measures_finalists: bool = False  # measure finalists, polish the chosen one
    # Measure in small batches until another is not worth its noise, instead of a fixed
    # number of samples and refinement rounds (`hdap_engine.search.sequential`); its
    # clusters get representatives by their spread and it warm-starts from the store.
    measures_sequentially: bool = False
    # One more final search, started from each cluster's own optimum on the surrogate: the
    # fleet's optimum lies between them, in basins a search from the uniform candidate or
    # from the measured favourites may never reach (`FleetSearch.cluster_optima`).
    cluster_seeds: bool = False

    def __post_init__(self):
        if self.devices not in SEARCH_DEVICES:
            raise HdapError(f"method {self.name}: devices must be one of {SEARCH_DEVICES}")
        if self.cluster_weighting not in CLUSTER_WEIGHTING:
            raise HdapError(f"method {self.name}: cluster_weighting must be one of "
                            f"{CLUSTER_WEIGHTING}")

    @property
    def searches(self) -> bool:
        """True for methods that measure candidates and search a surrogate."""
        return self.rule is None

    @property
    def context_family(self) -> tuple:
        """Methods with the same family can share one prepared study (same measurements)."""
        if not self.searches:
            return ("baseline",)
        return (self.devices, self.surrogate_mode, self.linear_base, self.measures_sequentially)


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (a name registered twice is replaced)."""
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is one clear error."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise HdapError(f"unknown method {name!r}; choose one of: "
                        f"{', '.join(method_names())}") from None


def method_names(*, searches: bool | None = None) -> tuple[str, ...]:
    """Registered method names in registration order (only searching or baseline ones)."""
    return tuple(m.name for m in _REGISTRY.values()
                 if searches is None or m.searches == searches)


def methods() -> tuple[Method, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY.values())


def check_methods(names) -> list[str]:
    """``names`` as a list, each checked against the registry."""
    names = list(names)
    for name in names:
        get_method(name)
    return names


# Rows of a benchmark that are not methods a user can choose: name -> (label, colour).
REFERENCE_ROWS = {"oracle": ("oracle", "#00CC96")}


def style(name: str) -> tuple[str, str]:
    """(label, colour) of a method or reference row; unknown names get a grey default."""
    if name in _REGISTRY:
        return _REGISTRY[name].label, _REGISTRY[name].color
    return REFERENCE_ROWS.get(name, (name, "#888888"))


def _uniform(space, target_macs, model=None):
    from hdap_engine.search.baselines import uniform_widths

    return uniform_widths(space, target_macs)


def _global(space, target_macs, model):
    from hdap_engine.search.baselines import global_widths

    return global_widths(model, space, target_macs)


register_method(Method(
    "hdap", "HDAP (ours)", "HDAP (ours): shared surrogate, weighted fleet objective", "#EF553B",
    refines=True, measures_finalists=True, measures_sequentially=True, cluster_seeds=True))
register_method(Method(
    "paper", "HDAP paper", "HDAP paper: one surrogate per cluster, plain mean", "#AB63FA",
    surrogate_mode="per-cluster", linear_base=False, cluster_weighting="equal"))
register_method(Method(
    "single-device", "single device", "single device: tuned for one lab device", "#FFA15A",
    devices="lab-device", cluster_weighting="lab-device", measures_finalists=True))
register_method(Method(
    "uniform", "uniform", "uniform: the same keep ratio everywhere", "#636EFA",
    rule=_uniform))
register_method(Method(
    "global", "global magnitude", "global magnitude ranking (Torch-Pruning)", "#19D3F3",
    rule=_global, needs_model=True))
