"""Baselines that need no latency model: uniform and global magnitude pruning.

Both meet the same MACs budget as the fleet search, so that the comparison is
about *where* channels are removed, not how many.

- ``uniform``: one keep ratio for every group, found by bisection (then the
  rounding repair of `repair`).
- ``global``: Torch-Pruning's global magnitude ranking. Every group's channel
  importances (L2 magnitude, normalised by the group mean, as Torch-Pruning
  does for global pruning) are ranked together, and one threshold, found by
  bisection, decides the width of every group.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hdap_engine.models.zoo import get_spec
from hdap_engine.pruning.budget import repair
from hdap_engine.pruning.space import PruningSpace


def uniform_widths(space: PruningSpace, target_macs: float) -> np.ndarray:
    """The uniform-ratio candidate at the budget."""
    return repair(space, np.ones(space.n_groups), target_macs, step_up=True)


def group_importances(model: nn.Module, space: PruningSpace) -> list[np.ndarray]:
    """Per-channel importance of every group (space order), normalised by the group mean."""
    from hdap_engine.pruning.groups import dependency_graph, torch_pruning

    tp = torch_pruning()

    from hdap_engine.models.detection import pruning_view
    from hdap_engine.pruning.groups import ignored_layers

    spec = get_spec(space.model)
    model, example = pruning_view(model, spec)  # a detector: its core (docs/detection.md)
    names = {m: n for n, m in model.named_modules()}
    member_group = {m: i for i, g in enumerate(space.groups) for m in g.members}
    dg = dependency_graph(model, example)
    imp = tp.importance.MagnitudeImportance(p=2, normalizer="mean")
    scores: list[np.ndarray | None] = [None] * space.n_groups
    with torch.no_grad():
        for group in dg.get_all_groups(ignored_layers=ignored_layers(model, spec.classifier),
                                       root_module_types=(nn.Conv2d, nn.Linear)):
            for dep, _ in group:
                gi = member_group.get(names.get(dep.target.module))
                if gi is not None and dg.is_out_channel_pruning_fn(dep.handler):
                    scores[gi] = imp(group).detach().cpu().numpy().astype(np.float64)
                    break
    return [s if s is not None else np.ones(g.base) for s, g in zip(scores, space.groups,
                                                                        strict=True)]


def global_widths(model: nn.Module, space: PruningSpace, target_macs: float) -> np.ndarray:
    """The global-magnitude candidate at the budget (``model`` is not modified)."""
    scores = group_importances(model, space)
    flat = np.sort(np.concatenate(scores))

    def widths_at(threshold: float) -> np.ndarray:
        kept = np.array([(s >= threshold).sum() for s in scores], dtype=np.float64)
        return space.round_widths(kept)

    lo, hi = 0, len(flat) - 1  # index into sorted scores: higher index = fewer channels
    while lo < hi:
        mid = (lo + hi) // 2
        if space.macs(widths_at(flat[mid])) <= target_macs:
            hi = mid
        else:
            lo = mid + 1
    ratios = widths_at(flat[lo]) / space.base_widths
    # The rounding repair keeps the global ranking's direction and lands on the budget.
    return repair(space, ratios, target_macs, step_up=True)
