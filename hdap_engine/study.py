"""One run end to end, as the CLI and the app call it.

This first slice prunes a model to a MACs budget with a latency-agnostic
baseline (uniform or global magnitude) and exports the bundle; the fleet
study (cluster, measure, fit, search, validate) builds on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.export import export_bundle
from hdap_engine.models.zoo import build_model, weights_label
from hdap_engine.pruning.apply import prune_to_widths
from hdap_engine.pruning.budget import parse_budget
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.search.baselines import global_widths, uniform_widths

BASELINE_METHODS = ("uniform", "global")


@dataclass
class PruneResult:
    """A pruned model and how it was obtained."""

    model: nn.Module
    space: PruningSpace
    widths: np.ndarray
    kept: dict[str, list[int]]
    report: dict = field(default_factory=dict)


def prune_baseline(model_name: str, budget, method: str = "uniform", *, weights=None,
                   round_to: int = 8, min_ratio: float = 0.1, seed: int = 0) -> PruneResult:
    """Prune ``model_name`` to ``budget`` with a baseline method (no latency model)."""
    if method not in BASELINE_METHODS:
        raise HdapError(f"unknown method {method!r}; choose one of: {', '.join(BASELINE_METHODS)}")
    space = PruningSpace.for_model(model_name, round_to=round_to, min_ratio=min_ratio)
    target = parse_budget(budget, space)
    model = build_model(model_name, weights, seed=seed)
    if method == "uniform":
        widths = uniform_widths(space, target)
    else:
        widths = global_widths(model, space, target)
    kept = prune_to_widths(model, space, widths)
    report = {
        "method": method,
        "budget": str(budget),
        "budget_macs": target,
        "weights": weights_label(weights),
        "seed": seed,
        "round_to": round_to,
        "min_ratio": min_ratio,
    }
    return PruneResult(model=model, space=space, widths=widths, kept=kept, report=report)


def export_result(result: PruneResult, out_dir: str | os.PathLike) -> Path:
    """Write ``result`` as a bundle (folder + zip)."""
    return export_bundle(result.model, result.space, result.widths, out_dir, result.report,
                         kept=result.kept)
