"""Torch-Pruning's groups of a model, and pruning a model to given group widths.

A *group* is a set of channels that Torch-Pruning's dependency graph says must
be pruned together (a bottleneck's inner width, a residual stage's width, a
depthwise-separable block's width, the two halves of a concatenation's
consumer). Three things about a group come from the graph:

- its members, the conv / linear layers whose outputs it prunes;
- how many channels of every other layer's input or output it removes per
  channel (the coefficients of the layers' channel `Form`);
- its *channel groups*: a grouped convolution, a group norm or an attention's
  heads split the width into equal parts that must stay equal, so the width
  moves in steps of that count and a channel position is pruned in every part
  at once (Torch-Pruning's `BasePruner` does the same, averaging importance
  over the parts);
- its *heads*, when it is the qkv projection of an attention (timm's
  `Attention`, also DeiT's): the width moves one whole head at a time, a
  head's q, k and v channels go together with its columns of the output
  projection, and the attention's ``num_heads`` follows (Torch-Pruning's
  `prune_num_heads`, as its ViT examples use it). An `nn.MultiheadAttention`
  (torchvision's ViT) computes in its input's width, so its heads are the
  heads of the embedding (residual) width it sits on: that group moves one
  head at a time, removing the same head of every attention on it.

Some groups break the model when pruned (the qkv projection of an attention
class whose head layout is not known here, a width a module's forward code
spells as a constant). `unprunable_groups` finds them by pruning a copy and running
it, halving the set of suspects each time, so that they are kept at full
width and listed rather than failing the whole model.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.pruning import tp_fixes
from hdap_engine.pruning.record import Form

ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Group:
    """One prunable width: channels that are pruned together."""

    name: str  # the first member convolution / linear layer, in forward order
    base: int  # width of the unpruned model
    members: tuple[str, ...]  # conv / linear layers whose output channels this group sets
    channel_groups: int = 1  # equal parts the width is split into (grouped conv, norm)
    heads: int = 0  # an attention's heads: the width moves one head (base // heads) at a time

    @property
    def head_width(self) -> int:
        """Channels of one head (its q, k and v), or 0 when the group is not heads."""
        return self.base // self.heads if self.heads else 0

    @property
    def residual(self) -> bool:
        """True when several layers write this width (a residual stage)."""
        return len(self.members) > 1


@dataclass(frozen=True)
class Discovered:
    """The groups of a model and the channel coefficients they give its layers."""

    groups: tuple[Group, ...]
    # module name -> {"in"/"out": {group index: channels removed per width unit}}
    coefficients: dict[str, dict[str, dict[int, float]]]
    # A parameter Torch-Pruning prunes outside any layer (a ViT's class token and position
    # embedding): its name -> (the dim pruned, {group index: channels per width unit}).
    params: dict[str, tuple[int, dict[int, float]]] = field(default_factory=dict)


# Attention classes whose heads are pruned whole: a fused ``qkv`` linear whose output
# ``forward`` reshapes to (B, N, 3, num_heads, head_dim), and a ``proj`` linear reading
# num_heads x head_dim. Named by class, not by shape: an attention with another layout
# would run when pruned and mix its heads' channels silently.
HEAD_ATTENTIONS = ("timm.layers.attention.Attention",)
QKV_PARTS = 3  # q, k and v


def head_attention(model: nn.Module, qkv: str) -> nn.Module | None:
    """The attention whose fused qkv projection is the layer named ``qkv``, when its heads
    can be pruned whole (`HEAD_ATTENTIONS`), else None."""
    parent_name, _, leaf = qkv.rpartition(".")
    if leaf != "qkv":
        return None
    parent = model.get_submodule(parent_name) if parent_name else model
    kind = f"{type(parent).__module__}.{type(parent).__qualname__}"
    if kind not in HEAD_ATTENTIONS:
        return None
    heads, head_dim = getattr(parent, "num_heads", 0), getattr(parent, "head_dim", 0)
    if (not isinstance(parent.qkv, nn.Linear) or not isinstance(parent.proj, nn.Linear)
            or getattr(parent, "gate", None) is not None  # a gate reads the heads too
            or parent.qkv.out_features != QKV_PARTS * heads * head_dim
            or parent.proj.in_features != heads * head_dim):
        return None
    return parent


def set_heads(attention: nn.Module, heads: int, head_dim: int) -> None:
    """Tell a pruned attention how many heads it has left (its forward reads them)."""
    attention.num_heads = int(heads)
    attention.head_dim = int(head_dim)  # Torch-Pruning's MHA pruner divides by the old count
    if hasattr(attention, "attn_dim"):
        attention.attn_dim = int(heads) * int(head_dim)


def _mha_heads(model: nn.Module, names, base: int) -> int:
    """The heads of the `nn.MultiheadAttention`s among the layers ``names`` that compute
    in a width of ``base`` (0 when there are none, or their head counts differ)."""
    found = {int(m.num_heads) for n in names
             if isinstance(m := model.get_submodule(n), nn.MultiheadAttention)
             and m.embed_dim == base and m._qkv_same_embed_dim}
    return found.pop() if len(found) == 1 else 0


def follow_widths(model: nn.Module) -> None:
    """Widths a model's own forward reads from attributes, set from its pruned layers
    (torchvision's ViT reshapes its patches by ``hidden_dim``, as Torch-Pruning's
    torchvision example sets it)."""
    for m in model.modules():
        conv = getattr(m, "conv_proj", None)
        if (type(m).__name__ == "VisionTransformer" and isinstance(conv, nn.Conv2d)
                and isinstance(getattr(m, "hidden_dim", None), int)):
            m.hidden_dim = conv.out_channels


def torch_pruning():
    """Torch-Pruning, imported without timm unless this process already imported timm.

    Torch-Pruning imports timm whenever it is installed, only to count timm's
    attention blocks; that costs ~1.9 s in every process that prunes. A process
    that prunes a timm model has imported timm first (its builder does), so
    Torch-Pruning's counter and the space (`build._timm_attention_types`) both
    count timm's attention there, and neither does anywhere else.
    """
    if "torch_pruning" not in sys.modules and "timm" not in sys.modules:
        sys.modules["timm"] = None  # `import timm` raises ImportError while it loads
        try:
            import torch_pruning
        finally:
            del sys.modules["timm"]
    import torch_pruning

    tp_fixes.install()
    return torch_pruning


def dependency_graph(model: nn.Module, example: torch.Tensor):
    tp = torch_pruning()

    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                    verbose=False)
    except Exception as exc:
        raise HdapError(f"Torch-Pruning cannot build the dependency graph of this model "
                        f"({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def ignored_layers(model: nn.Module, classifier: str) -> list[nn.Module]:
    """The layers never pruned: the classifier, or a detector's predictor output layers
    (several names, comma-separated, `hdap_engine.models.detection.predictor_layers`)."""
    return [model.get_submodule(n) for n in classifier.split(",") if n]


def _tp_groups(dg, model: nn.Module, classifier: str):
    try:
        return list(dg.get_all_groups(ignored_layers=ignored_layers(model, classifier),
                                      root_module_types=ROOT_TYPES))
    except Exception as exc:
        raise HdapError(f"Torch-Pruning cannot group this model's channels "
                        f"({_first_line(exc)})") from None


def _channel_groups(dg, group) -> int:
    """Torch-Pruning's channel grouping of a group (BasePruner._get_channel_groups)."""
    found = [1]
    for dep, _ in group:
        mod = dep.target.module
        if isinstance(mod, nn.Conv2d) and mod.groups == mod.out_channels:
            continue  # depthwise: pruned channel by channel
        pruner = dg.get_pruner_of_module(mod)
        if pruner is None:
            continue
        try:
            n = (pruner.get_out_channel_groups(mod) if dg.is_out_channel_pruning_fn(dep.handler)
                 else pruner.get_in_channel_groups(mod))
        except Exception:
            continue
        found.append(int(n or 1))
    return max(found)


def discover(model: nn.Module, example: torch.Tensor, classifier: str) -> Discovered:
    """Torch-Pruning's prunable groups of ``model``, classifier outputs excluded."""
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    dg = dependency_graph(model, example)
    pnames = {id(p): n for n, p in model.named_parameters()}
    pdims = {id(u.parameters): int(u.pruning_dim) for u in dg.unwrapped_parameters}
    raw = []
    for group in _tp_groups(dg, model, classifier):
        root = group[0].dep.target.module
        if not isinstance(root, nn.Module) or root not in names:
            continue
        base = len(group[0].idxs)
        members, coef, pcoef = [], {}, {}
        for dep, idxs in group:
            mod = dep.target.module
            if isinstance(mod, nn.Parameter):
                if id(mod) in pnames and id(mod) in pdims:
                    pcoef[pnames[id(mod)]] = (pdims[id(mod)], len(idxs) / base)
                continue
            name = names.get(mod)
            if name is None:  # Torch-Pruning's stand-in for a functional op
                continue
            side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
            per = coef.setdefault(name, {})
            per[side] = max(per.get(side, 0.0), len(idxs) / base)
            if side == "out" and isinstance(mod, ROOT_TYPES) and name not in members:
                members.append(name)
        if not members:
            continue
        members.sort(key=order.__getitem__)
        attention = head_attention(model, members[0]) if len(members) == 1 else None
        heads = int(attention.num_heads) if attention is not None else 0
        if heads and base != attention.qkv.out_features:
            heads = 0
        if not heads:
            heads = _mha_heads(model, coef, base)
        raw.append((Group(name=members[0], base=base, members=tuple(members),
                          channel_groups=_channel_groups(dg, group), heads=heads),
                    coef, pcoef))
    raw.sort(key=lambda r: order[r[0].name])
    coefficients: dict[str, dict[str, dict[int, float]]] = {}
    params: dict[str, tuple[int, dict[int, float]]] = {}
    for i, (_, coef, pcoef) in enumerate(raw):
        for name, sides in coef.items():
            for side, c in sides.items():
                coefficients.setdefault(name, {}).setdefault(side, {})[i] = c
        for name, (dim, c) in pcoef.items():
            params.setdefault(name, (dim, {}))[1][i] = c
    return Discovered(groups=tuple(r[0] for r in raw), coefficients=coefficients,
                      params=params)


def module_forms(model: nn.Module, found: Discovered,
                 keep: Sequence[int]) -> dict[nn.Module, tuple[Form, Form]]:
    """(input, output) channel form of every layer the kept groups touch.

    ``keep`` lists the groups of the space (their index in ``found.groups``);
    a group left out stays at full width, so its channels join the fixed part.
    """
    index = {g: i for i, g in enumerate(keep)}
    base = {i: found.groups[i].base for i in range(len(found.groups))}
    out = {}
    for name, sides in found.coefficients.items():
        mod = model.get_submodule(name)
        total_in, total_out = _channels(mod)
        forms = []
        for side, total in (("in", total_in), ("out", total_out)):
            coef = sides.get(side, {})
            terms = tuple(sorted((index[g], c) for g, c in coef.items() if g in index))
            varying = sum(c * base[g] for g, c in coef.items() if g in index)
            forms.append((float(total) - varying, terms))
        out[mod] = (forms[0], forms[1])
    return out


def param_forms(model: nn.Module, found: Discovered,
                keep: Sequence[int]) -> dict[str, tuple[Form, ...]]:
    """The form of every dim of each parameter Torch-Pruning prunes outside a layer
    (`Discovered.params`), for the recording to start from (`record.record`)."""
    index = {g: i for i, g in enumerate(keep)}
    params = dict(model.named_parameters())
    out = {}
    for name, (dim, coef) in found.params.items():
        p = params[name]
        dim = dim % p.dim()
        terms = tuple(sorted((index[g], c) for g, c in coef.items() if g in index))
        varying = sum(c * found.groups[g].base for g, c in coef.items() if g in index)
        out[name] = tuple((float(s) - varying, terms) if d == dim else (float(s), ())
                          for d, s in enumerate(p.shape))
    return out


def _channels(mod: nn.Module) -> tuple[int, int]:
    for a, b in (("in_channels", "out_channels"), ("in_features", "out_features"),
                 ("num_features", "num_features"), ("num_channels", "num_channels"),
                 ("embed_dim", "embed_dim"), ("embedding_dim", "embedding_dim")):
        if hasattr(mod, a) and hasattr(mod, b):
            return int(getattr(mod, a)), int(getattr(mod, b))
    shape = getattr(mod, "normalized_shape", None)
    if shape:
        return int(shape[-1]), int(shape[-1])
    weight = getattr(mod, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim >= 1:
        return int(weight.shape[-1]), int(weight.shape[0])
    return 0, 0


def _output_magnitude(layer: nn.Module, base: int) -> torch.Tensor | None:
    """L2 magnitude of each output channel of a conv / linear layer (None otherwise)."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape[0] != base:
        return None
    return weight.detach().flatten(1).pow(2).sum(1)


def prune_groups(model: nn.Module, example: torch.Tensor, classifier: str,
                 groups: Sequence[Group], widths: Sequence[int], *,
                 importance: str = "l2") -> dict[str, list[int]]:
    """Prune ``model`` in place so that each of ``groups`` keeps its width.

    Groups of the model not in ``groups`` are left alone. Returns the kept
    channel indices of each group (in the unpruned numbering).
    """
    tp = torch_pruning()

    names = {m: n for n, m in model.named_modules()}
    member_group = {m: i for i, g in enumerate(groups) for m in g.members}
    dg = dependency_graph(model, example)
    imp = tp.importance.MagnitudeImportance(p=2)
    kept: dict[str, list[int]] = {}
    with torch.no_grad():
        for group in _tp_groups(dg, model, classifier):
            gi = None
            for dep, _ in group:
                mod = dep.target.module
                if isinstance(mod, ROOT_TYPES) and dg.is_out_channel_pruning_fn(dep.handler):
                    gi = member_group.get(names.get(mod))
                    if gi is not None:
                        break
            if gi is None or groups[gi].name in kept:
                continue
            g = groups[gi]
            if g.heads:
                kept[g.name] = _prune_heads(model, dg, group, g, int(widths[gi]), imp,
                                            importance)
                continue
            parts = max(1, g.channel_groups)
            size = g.base // parts
            keep = int(widths[gi]) // parts
            if importance == "l2":
                try:
                    scores = imp(group)
                except IndexError:
                    # Listed before earlier groups were pruned, the group's indices into a
                    # concatenation can be stale (DenseNet); ask for it again, now.
                    root = group[0].dep
                    try:
                        scores = imp(dg.get_pruning_group(root.target.module, root.handler,
                                                          list(range(g.base))))
                    except IndexError:
                        # Torch-Pruning's importance indexes a depthwise convolution with
                        # a channel multiplier (FastViT) past its weight's input dim: the
                        # magnitude of the root layer's own output channels instead.
                        scores = _output_magnitude(root.target.module, g.base)
                if scores is None:
                    scores = torch.arange(g.base, 0, -1, dtype=torch.float32)
                scores = scores.float().view(parts, size).mean(dim=0)
                order = torch.argsort(scores, descending=True, stable=True).tolist()
            else:
                order = list(range(size))
            keep_pos = sorted(order[:keep])
            kept[g.name] = [p + k * size for k in range(parts) for p in keep_pos]
            if keep < size:
                drop = [p + k * size for k in range(parts) for p in sorted(order[keep:])]
                root = group[0].dep
                dg.get_pruning_group(root.target.module, root.handler, drop).prune()
    follow_widths(model)
    missing = [g.name for g in groups if g.name not in kept]
    if missing:
        raise HdapError(f"internal: Torch-Pruning did not offer groups {missing[:3]}")
    # Torch-Pruning's traced forward filled any eval cache with tensors of the unpruned
    # widths that carry autograd history (a copy or a counter's deepcopy would fail).
    training = model.training
    clear_eval_caches(model).train(training)
    return kept


def _prune_heads(model: nn.Module, dg, group, g: Group, width: int, imp,
                 importance: str) -> list[int]:
    """Prune whole heads of the attention(s) of ``group``; returns its kept channels.

    A timm attention's group is its qkv output, (q, k, v) x heads x head_dim: a
    head's importance is the mean over its q, k and v channels (Torch-Pruning's
    `prune_num_heads` ranks heads the same way), and removing its qkv channels
    removes its columns of the output projection with them (Torch-Pruning's graph
    maps them through the unbind). An `nn.MultiheadAttention`'s group is the width
    it computes in, heads x head_dim: a head goes from every attention on it.
    """
    timm_attention = head_attention(model, g.name)
    attentions = [timm_attention] if timm_attention is not None else [
        dep.target.module for dep, _ in group
        if isinstance(dep.target.module, nn.MultiheadAttention)]
    if not attentions:
        raise HdapError(f"internal: the group of {g.name} has no attention left")
    head_dim = int(attentions[0].head_dim)
    parts = g.head_width // head_dim  # q, k and v of a fused qkv; 1 for a width of heads
    keep = width // g.head_width
    if importance == "l2":
        scores = imp(group)
        if scores is None:
            scores = torch.arange(g.base, 0, -1, dtype=torch.float32)
        scores = scores.float().view(parts, g.heads, head_dim).mean(dim=(0, 2))
        order = torch.argsort(scores, descending=True, stable=True).tolist()
    else:
        order = list(range(g.heads))
    part = g.heads * head_dim

    def channels(heads: list[int]) -> list[int]:
        return sorted(s * part + h * head_dim + d for s in range(parts)
                      for h in heads for d in range(head_dim))

    if keep < g.heads:
        root = group[0].dep
        dg.get_pruning_group(root.target.module, root.handler,
                             channels(order[keep:])).prune()
        for attention in attentions:
            set_heads(attention, keep, head_dim)
    return channels(order[:keep])


def clear_eval_caches(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with what it caches in eval mode cleared.

    Some models cache tensors computed from their parameters during an eval forward
    (timm's LeViT and EfficientFormer keep attention biases). After Torch-Pruning's
    traced forward those tensors carry autograd history and cannot be deep-copied,
    and a forward that fills the cache runs more operations than one that reads it.
    Such models clear the cache when switched to training, hence the switch.
    """
    model.train()
    return model.eval()


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, its eval caches cleared."""
    return copy.deepcopy(clear_eval_caches(model))


def try_prune(model: nn.Module, example: torch.Tensor, classifier: str,
              groups: Sequence[Group], widths: Sequence[int], expected: tuple[int, ...]):
    """A copy of ``model`` with ``groups`` pruned to ``widths`` (first channels kept),
    and None; or None and why pruning them breaks the model."""
    trial = copy_model(model)
    try:
        prune_groups(trial, example, classifier, groups, widths, importance="first")
        with torch.no_grad():
            out = trial(example)
    except Exception as exc:
        return None, _first_line(exc)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(expected):
        return None, "the pruned model's output changes shape"
    return trial, None


def unprunable_groups(model: nn.Module, example: torch.Tensor, classifier: str,
                      groups: Sequence[Group], widths: Sequence[int],
                      expected: tuple[int, ...]) -> dict[int, str]:
    """Groups that break the model when pruned: {index: the error it gives}.

    Called when pruning all groups at once fails: the suspects are halved each
    time, so a few bad groups among many cost a few dozen trial prunings.
    """
    bad: dict[int, str] = {}

    def search(idx: list[int]) -> None:
        trial, why = try_prune(model, example, classifier, [groups[i] for i in idx],
                               [widths[i] for i in idx], expected)
        del trial
        if why is None:
            return
        if len(idx) == 1:
            bad[idx[0]] = why
            return
        mid = len(idx) // 2
        search(idx[:mid])
        search(idx[mid:])

    search(list(range(len(groups))))
    return bad
