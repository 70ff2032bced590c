"""Apply a candidate to a real model with Torch-Pruning.

Torch-Pruning's dependency graph prunes each group with all its coupled
layers (batch norms, residual partners, the next layers' inputs); which
channels go is decided by L2 magnitude importance over the whole group, so the
channels that carry the least weight are removed. The classifier's outputs
are never touched. After pruning, every group has exactly the candidate's
width.

``importance="first"`` keeps the first channels of each group instead; it is
used to rebuild the *structure* of a pruned model before loading its saved
weights, where which channels survive does not matter.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.models.zoo import get_spec
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
    import torch_pruning as tp

    widths = space.check_widths(widths)
    if importance not in ("l2", "first"):
        raise HdapError(f"unknown importance {importance!r}; use 'l2' or 'first'")
    spec = get_spec(space.model)
    example = spec.example_input()
    names = {m: n for n, m in model.named_modules()}
    member_group = {m: i for i, g in enumerate(space.groups) for m in g.members}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    imp = tp.importance.MagnitudeImportance(p=2)
    kept: dict[str, list[int]] = {}
    seen = set()
    with torch.no_grad():
        for group in dg.get_all_groups(ignored_layers=[model.get_submodule(spec.classifier)],
                                       root_module_types=(nn.Conv2d, nn.Linear)):
            gi = _group_index(group, dg, names, member_group)
            if gi is None:
                continue
            seen.add(gi)
            base = space.groups[gi].base
            keep = int(widths[gi])
            if importance == "l2":
                scores = imp(group)
                if scores is None:  # nothing measurable (should not happen for conv groups)
                    scores = torch.arange(base, 0, -1, dtype=torch.float32)
                order = torch.argsort(scores.float(), descending=True, stable=True).tolist()
            else:
                order = list(range(base))
            keep_idx = sorted(order[:keep])
            kept[space.groups[gi].name] = keep_idx
            if keep < base:
                drop = sorted(order[keep:])
                root = group[0].dep
                pg = dg.get_pruning_group(root.target.module, root.handler, drop)
                pg.prune()
    if len(seen) != space.n_groups:
        missing = [space.groups[i].name for i in range(space.n_groups) if i not in seen]
        raise HdapError(f"internal: Torch-Pruning did not offer groups {missing[:3]} of "
                        f"{space.model}")
    return kept


def _group_index(group, dg, names, member_group):
    for dep, _ in group:
        mod = dep.target.module
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and dg.is_out_channel_pruning_fn(dep.handler):
            gi = member_group.get(names.get(mod))
            if gi is not None:
                return gi
    return None


def widths_of(model: nn.Module, space: PruningSpace) -> np.ndarray:
    """The widths a (pruned) model actually has, read from its layers (shape (G,))."""
    out = []
    for g in space.groups:
        mod = model.get_submodule(g.members[0])
        out.append(mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features)
    return np.array(out, dtype=np.int64)


def count_macs_params(model: nn.Module, space: PruningSpace) -> tuple[float, float]:
    """MACs and parameters by Torch-Pruning's counter (the reference)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, get_spec(space.model).example_input())
    return float(macs), float(params)
