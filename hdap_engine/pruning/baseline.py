"""A baseline prune without a fleet (`hdap prune`): uniform or global-magnitude widths to a budget.

No latency is involved: the method's rule picks the widths, Torch-Pruning
applies them, and the result can be exported as a bundle like any study's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.export.bundle import export_bundle
from hdap_engine.models.zoo import build_model, resolve_model, weights_label
from hdap_engine.pruning.apply import prune_to_widths
from hdap_engine.pruning.budget import parse_budget
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.search.methods import get_method, method_names


@dataclass
class PruneResult:
    """A pruned model and how it was obtained (no latency involved)."""

    model: nn.Module
    space: PruningSpace
    widths: np.ndarray
    kept: dict[str, list[int]]
    report: dict = field(default_factory=dict)



def prune_baseline(model_name: str, budget, method: str = "uniform", *, model_weights=None,
                   round_to: int = 8, min_ratio: float = 0.1, seed: int = 0) -> PruneResult:
    """Prune ``model_name`` to ``budget`` with a baseline method (no latency model)."""
    spec = get_method(method)
    if spec.searches:
        raise HdapError(f"method {method!r} needs a fleet (hdap optimize); without one, "
                        f"choose one of: {', '.join(method_names(searches=False))}")
    space = PruningSpace.for_model(model_name, round_to=round_to, min_ratio=min_ratio)
    target = parse_budget(budget, space)
    model = build_model(model_name, model_weights, seed=seed)
    widths = np.asarray(spec.rule(space, target, model), dtype=np.int64)
    kept = prune_to_widths(model, space, widths)
    report = {
        "method": method,
        "budget": str(budget),
        "budget_macs": target,
        "model_weights": weights_label(model_weights, model_name),
        "model_ref": resolve_model(model_name, model_weights=model_weights).to_json(),
        "seed": seed,
        "round_to": round_to,
        "min_ratio": min_ratio,
        "pruning_space": space.report(),
        "notes": space.notes(),
    }
    return PruneResult(model=model, space=space, widths=widths, kept=kept, report=report)



def export_result(result: PruneResult, out_dir: str | os.PathLike) -> Path:
    """Write ``result`` as a bundle (folder + zip)."""
    return export_bundle(result.model, result.space, result.widths, out_dir, result.report,
                         kept=result.kept)

