"""Apply a candidate to a real model with Torch-Pruning.

Torch-Pruning's dependency graph prunes each group with all its coupled
layers (batch norms, residual partners, the next layers' inputs); which
channels go is decided by L2 magnitude importance over the whole group, so the
channels that carry the least weight are removed (averaged over the equal
parts of a grouped convolution, so the parts stay equal). The classifier's
outputs and the groups the space keeps at full width are never touched. After
pruning, every group has exactly the candidate's width.

``importance="first"`` keeps the first channels of each group instead; it is
used to rebuild the *structure* of a pruned model before loading its saved
weights, where which channels survive does not matter.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.models.detection import pruning_view
from hdap_engine.models.zoo import get_spec
from hdap_engine.pruning.groups import prune_groups, torch_pruning
from hdap_engine.pruning.space import PruningSpace


def prune_to_widths(model: nn.Module, space: PruningSpace, widths, *,
                    importance: str = "l2") -> dict[str, list[int]]:
    """Prune ``model`` in place so that every group has the candidate's width.

    Parameters
    ----------
    model:
        An unpruned model of ``space.model`` (as built by `build_model`).
    space:
        Its pruning space.
    widths:
        The candidate: kept width per group, shape (G,).
    importance:
        ``"l2"`` (group L2 magnitude, Torch-Pruning's `MagnitudeImportance`)
        or ``"first"`` (keep the first channels; for rebuilding a structure).

    Returns
    -------
    The kept channel indices of each group (in the unpruned model's numbering),
    which is the pruning history saved with exported weights.
    """
    widths = space.check_widths(widths)
    if importance not in ("l2", "first"):
        raise HdapError(f"unknown importance {importance!r}; use 'l2' or 'first'")
    spec = get_spec(space.model)
    view, example = pruning_view(model, spec)  # a detector: its core, pruned in place
    return prune_groups(view, example, spec.classifier, space.groups, widths,
                        importance=importance)


def widths_of(model: nn.Module, space: PruningSpace) -> np.ndarray:
    """The widths a (pruned) model actually has, read from its layers (shape (G,))."""
    out = []
    for g in space.groups:
        mod = model.get_submodule(g.members[0])
        out.append(mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features)
    return np.array(out, dtype=np.int64)


def count_macs_params(model: nn.Module, space: PruningSpace) -> tuple[float, float]:
    """MACs and parameters by Torch-Pruning's counter (the reference); a detector's are its
    core's (backbone, FPN, heads), which is what its space counts."""
    tp = torch_pruning()

    view, example = pruning_view(model, get_spec(space.model))
    macs, params = tp.utils.count_ops_and_params(view, example)
    return float(macs), float(params)
