"""The pruning space of a model: its prunable groups, their widths, and analytic costs.

A *group* is a set of channels that Torch-Pruning's dependency graph says must
be pruned together (a bottleneck's inner width, a residual stage's width, a
depthwise-separable block's width). A *candidate* is the kept width of every
group: an int array of shape (G,), each a multiple of ``round_to`` between the
group's minimum and its base width.

The space is derived from the model itself, not written per model: the
groups come from Torch-Pruning (`DependencyGraph.get_all_groups`, classifier
ignored) and the layer geometry from a `torch.fx` trace with shape
propagation. Every layer's input and output channel count is then a symbol
``(group, fixed, multiplier)``, which makes MACs, parameters and the layer
table of N candidates a few vectorised numpy operations.

MACs follow Torch-Pruning's counter (`tp.utils.count_ops_and_params`), which
is the reference: convolutions and linear layers (with bias), batch norm
(2 per element), activation modules (1 per element) and pooling modules (1
per input element); functional ops count 0. A test holds the two equal after
physical pruning.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.infra.locks import TRACE_LOCK
from hdap_engine.models.zoo import get_spec
from hdap_engine.pruning.layers import LayerTable

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU)  # what TP's counter counts
_OTHER_ACT_MODULES = (nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh)
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_MODULES = (nn.Dropout, nn.Identity, nn.Flatten)
_ACT_FUNCTIONS = {"relu", "relu6", "hardswish", "silu", "gelu", "sigmoid", "tanh", "relu_"}
_POOL_FUNCTIONS = {"adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "adaptive_max_pool2d"}
_PASS_FUNCTIONS = {"dropout", "flatten", "contiguous", "getattr", "size", "view", "reshape"}


@dataclass(frozen=True)
class Group:
    """One prunable width: channels that are pruned together."""

    name: str  # the first member convolution / linear layer, in forward order
    base: int  # width of the unpruned model
    members: tuple[str, ...]  # conv / linear layers whose output channels this group sets

    @property
    def residual(self) -> bool:
        """True when several layers write this width (a residual stage)."""
        return len(self.members) > 1


@dataclass(frozen=True)
class _Layers:
    """Static per-layer arrays of a traced model (L layers)."""

    names: tuple[str, ...]
    op: np.ndarray  # twin op names (see layers.OPS)
    counted: np.ndarray  # how TP's counter counts it: conv dwconv linear bn bn1 act pool ""
    kernel_h: np.ndarray
    kernel_w: np.ndarray
    stride: np.ndarray
    h_in: np.ndarray
    w_in: np.ndarray
    h_out: np.ndarray
    w_out: np.ndarray
    has_bias: np.ndarray
    cin_group: np.ndarray
    cin_fixed: np.ndarray
    cin_mult: np.ndarray
    cout_group: np.ndarray
    cout_fixed: np.ndarray
    cout_mult: np.ndarray


@dataclass(frozen=True)
class PruningSpace:
    """The candidates of one model and their analytic costs.

    Build with `PruningSpace.for_model(name)`; change ``round_to`` or
    ``min_ratio`` with `with_options`.
    """

    model: str
    input_shape: tuple[int, int, int]
    groups: tuple[Group, ...]
    round_to: int = 8
    min_ratio: float = 0.1
    layers: _Layers = field(repr=False, default=None)
    extra_params: int = field(repr=False, default=0)  # parameters outside counted layers

    # -- construction -------------------------------------------------------------------
    @classmethod
    def for_model(cls, name: str, *, round_to: int = 8, min_ratio: float = 0.1) -> PruningSpace:
        """The space of a registered model (traced once per process, one thread at a time)."""
        with TRACE_LOCK:  # tracing is not thread-safe; the cache look-up is cheap
            traced = _traced_space(name)
        return traced.with_options(round_to=round_to, min_ratio=min_ratio)

    def with_options(self, *, round_to: int | None = None,
                     min_ratio: float | None = None) -> PruningSpace:
        """The same space with another rounding step or minimum kept ratio."""
        round_to = self.round_to if round_to is None else int(round_to)
        min_ratio = self.min_ratio if min_ratio is None else float(min_ratio)
        if round_to < 1:
            raise HdapError(f"round_to must be a positive integer, got {round_to}")
        if not 0.0 < min_ratio <= 1.0:
            raise HdapError(f"min_ratio must be in (0, 1], got {min_ratio}")
        return replace(self, round_to=round_to, min_ratio=min_ratio)

    # -- widths --------------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    @functools.cached_property
    def base_widths(self) -> np.ndarray:
        return np.array([g.base for g in self.groups], dtype=np.int64)

    @functools.cached_property
    def min_widths(self) -> np.ndarray:
        """Smallest width per group: ``min_ratio`` of the base, rounded up, at least one step."""
        b = self.base_widths
        low = np.ceil(b * self.min_ratio / self.round_to) * self.round_to
        return np.minimum(np.maximum(low, self.round_to), b).astype(np.int64)

    def round_widths(self, widths) -> np.ndarray:
        """Nearest valid candidate(s): multiples of ``round_to`` within [min, base]."""
        w = np.asarray(widths, dtype=np.float64)
        r = np.round(w / self.round_to) * self.round_to
        return np.clip(r, self.min_widths, self.base_widths).astype(np.int64)

    def widths_from_ratios(self, ratios) -> np.ndarray:
        """Candidate(s) keeping ``ratios`` (scalar, (G,) or (N, G)) of each group."""
        return self.round_widths(np.asarray(ratios, dtype=np.float64) * self.base_widths)

    def ratios(self, widths) -> np.ndarray:
        """Kept fraction of each group."""
        return np.asarray(widths, dtype=np.float64) / self.base_widths

    def check_widths(self, widths) -> np.ndarray:
        """Validate a user-given candidate; returns it as an int array."""
        w = np.asarray(widths)
        if w.shape != (self.n_groups,):
            raise HdapError(
                f"{self.model}: a candidate has {self.n_groups} widths (one per group), "
                f"got shape {w.shape}")
        w = w.astype(np.int64)
        bad = np.flatnonzero((w < 1) | (w > self.base_widths))
        if bad.size:
            i = int(bad[0])
            raise HdapError(
                f"{self.model}: width {int(w[i])} of group {self.groups[i].name} is outside "
                f"1..{self.groups[i].base}")
        return w

    def random_widths(self, n: int, rng: np.random.Generator, low: float = 0.15,
                      high: float = 1.0) -> np.ndarray:
        """``n`` random candidates: a random overall ratio, then per-group jitter."""
        overall = rng.uniform(low, high, size=(n, 1))
        jitter = rng.uniform(0.6, 1.4, size=(n, self.n_groups))
        return self.widths_from_ratios(np.clip(overall * jitter, 0.0, 1.0))

    # -- costs ---------------------------------------------------------------------------
    def _channels(self, widths) -> tuple[np.ndarray, np.ndarray]:
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        if w.shape[1] != self.n_groups:
            raise HdapError(f"{self.model}: expected {self.n_groups} widths per candidate, "
                            f"got {w.shape[1]}")
        ext = np.concatenate([w, np.zeros((w.shape[0], 1))], axis=1)
        lay = self.layers
        g_in = np.where(lay.cin_group >= 0, lay.cin_group, self.n_groups)
        g_out = np.where(lay.cout_group >= 0, lay.cout_group, self.n_groups)
        cin = (ext[:, g_in] + lay.cin_fixed) * lay.cin_mult
        cout = (ext[:, g_out] + lay.cout_fixed) * lay.cout_mult
        return cin, cout

    def _layer_costs(self, widths) -> tuple[np.ndarray, np.ndarray]:
        """(N, L) MACs and parameters of every layer, by Torch-Pruning's counting rules."""
        cin, cout = self._channels(widths)
        lay = self.layers
        k = (lay.kernel_h * lay.kernel_w).astype(np.float64)
        hw_out = (lay.h_out * lay.w_out).astype(np.float64)
        hw_in = (lay.h_in * lay.w_in).astype(np.float64)
        bias = lay.has_bias.astype(np.float64)
        c = lay.counted
        macs = np.zeros_like(cin)
        params = np.zeros_like(cin)
        m = c == "conv"
        macs[:, m] = (k * hw_out)[m] * cin[:, m] * cout[:, m] + (bias * hw_out)[m] * cout[:, m]
        params[:, m] = k[m] * cin[:, m] * cout[:, m] + bias[m] * cout[:, m]
        m = c == "dwconv"
        macs[:, m] = (k * hw_out + bias * hw_out)[m] * cout[:, m]
        params[:, m] = (k + bias)[m] * cout[:, m]
        m = c == "linear"
        macs[:, m] = cin[:, m] * cout[:, m] + bias[m] * cout[:, m]
        params[:, m] = cin[:, m] * cout[:, m] + bias[m] * cout[:, m]
        m = c == "bn"  # affine batch norm
        macs[:, m] = 2.0 * hw_out[m] * cout[:, m]
        params[:, m] = 2.0 * cout[:, m]
        m = c == "bn1"  # batch norm without affine parameters
        macs[:, m] = hw_out[m] * cout[:, m]
        m = c == "act"
        macs[:, m] = hw_out[m] * cout[:, m]
        m = c == "pool"
        macs[:, m] = hw_in[m] * cin[:, m]
        return macs, params

    def macs(self, widths) -> np.ndarray | float:
        """Analytic MACs of candidate(s): a float for one (G,), an (N,) array for (N, G)."""
        macs, _ = self._layer_costs(widths)
        out = macs.sum(axis=1)
        return float(out[0]) if np.ndim(widths) == 1 else out

    def params(self, widths) -> np.ndarray | float:
        """Analytic parameter count of candidate(s)."""
        _, params = self._layer_costs(widths)
        out = params.sum(axis=1) + self.extra_params
        return float(out[0]) if np.ndim(widths) == 1 else out

    @functools.cached_property
    def base_macs(self) -> float:
        return self.macs(self.base_widths)

    @functools.cached_property
    def base_params(self) -> float:
        return self.params(self.base_widths)

    @functools.cached_property
    def min_macs(self) -> float:
        """MACs of the smallest candidate this space allows."""
        return self.macs(self.min_widths)

    @functools.cached_property
    def stages(self) -> np.ndarray:
        """(L,) stage index of each layer: layers are staged by output resolution."""
        sizes = self.layers.h_out * self.layers.w_out
        distinct = sorted(set(sizes.tolist()), reverse=True)
        return np.array([distinct.index(s) for s in sizes], dtype=np.int64)

    def stage_costs(self, widths) -> tuple[np.ndarray, np.ndarray]:
        """(N, S) MACs and parameters per stage (layers grouped by output resolution)."""
        macs, params = self._layer_costs(widths)
        s = self.stages
        n_st = int(s.max()) + 1
        onehot = np.zeros((s.size, n_st))
        onehot[np.arange(s.size), s] = 1.0
        return macs @ onehot, params @ onehot

    def layer_table(self, widths) -> LayerTable:
        """Layer shapes of candidate(s) for the latency models."""
        cin, cout = self._channels(widths)
        lay = self.layers
        return LayerTable(
            names=lay.names, op=lay.op, kernel_h=lay.kernel_h, kernel_w=lay.kernel_w,
            stride=lay.stride, h_in=lay.h_in, w_in=lay.w_in, h_out=lay.h_out, w_out=lay.w_out,
            has_bias=lay.has_bias, cin=cin, cout=cout,
        )

    def widths_dict(self, widths) -> dict[str, int]:
        """A candidate as {group name: width} (reports, JSON)."""
        w = self.check_widths(widths)
        return {g.name: int(x) for g, x in zip(self.groups, w, strict=True)}

    def widths_from_dict(self, mapping: dict[str, int]) -> np.ndarray:
        """Inverse of `widths_dict`; every group must be present."""
        names = self.group_names
        missing = [n for n in names if n not in mapping]
        extra = [n for n in mapping if n not in names]
        if missing or extra:
            raise HdapError(
                f"{self.model}: widths do not match this model's groups "
                f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} unknown, e.g. {extra[:1]})")
        return self.check_widths([int(mapping[n]) for n in names])

    def summary(self) -> dict:
        """Plain-data description (CLI `hdap models`, the app)."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "groups": self.n_groups,
            "base_macs": self.base_macs,
            "base_params": self.base_params,
            "min_macs": self.min_macs,
            "round_to": self.round_to,
            "min_ratio": self.min_ratio,
        }


# -- tracing -----------------------------------------------------------------------------

def discover_groups(model: nn.Module, example: torch.Tensor, classifier: str):
    """Torch-Pruning's prunable groups of ``model``: [(root module name, width, members)].

    Each group is listed once with the conv/linear layers whose *output*
    channels it prunes. The classifier is ignored, so its outputs stay.
    """
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    ignored = [model.get_submodule(classifier)]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    out = []
    for group in dg.get_all_groups(ignored_layers=ignored,
                                   root_module_types=(nn.Conv2d, nn.Linear)):
        root = group[0].dep.target.module
        members = []
        for dep, _ in group:
            mod = dep.target.module
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and dg.is_out_channel_pruning_fn(dep.handler):
                if names[mod] not in members:
                    members.append(names[mod])
        width = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        out.append((names[root], int(width), members))
    return out


def _fx_layers(model: nn.Module, example: torch.Tensor, out_group: dict[str, int],
               base: np.ndarray) -> _Layers:
    """Trace ``model`` and give every layer symbolic channels."""
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = symbolic_trace(model)
    except Exception as exc:  # pragma: no cover - depends on the model
        raise HdapError(f"cannot trace the model for its pruning space: {exc}") from None
    ShapeProp(gm).propagate(example)

    sym: dict[str, tuple[int, int, int]] = {}  # node -> (group, fixed, multiplier)
    rows: list[dict] = []

    def shape(node):
        return tuple(node.meta["tensor_meta"].shape)

    def hw(shp):
        return (shp[2], shp[3]) if len(shp) == 4 else (1, 1)

    def row(name, op, counted, node, src, cin_s, cout_s, kernel=(1, 1), stride=1, bias=False):
        shp_in = shape(src) if src is not None else shape(node)
        shp_out = shape(node)
        (hi, wi), (ho, wo) = hw(shp_in), hw(shp_out)
        rows.append(dict(name=name, op=op, counted=counted, kh=kernel[0], kw=kernel[1],
                         stride=stride, h_in=hi, w_in=wi, h_out=ho, w_out=wo, bias=bias,
                         cin=cin_s, cout=cout_s,
                         traced=(shp_in[1 if len(shp_in) == 4 else -1],
                                 shp_out[1 if len(shp_out) == 4 else -1])))

    def fixed(n):
        return (-1, int(n), 1)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            sym[node.name] = fixed(shape(node)[1])
            continue
        if node.op == "output":
            continue
        args = [a for a in node.args if hasattr(a, "name") and a.name in sym]
        src = args[0] if args else None
        s_in = sym[src.name] if src is not None else None
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            name = str(node.target)
            if isinstance(mod, nn.Conv2d):
                g = out_group.get(name)
                s_out = (g, 0, 1) if g is not None else fixed(mod.out_channels)
                if mod.groups == 1:
                    op = "conv"
                elif mod.groups == mod.in_channels == mod.out_channels:
                    op = "dwconv"
                    s_out = s_in  # TP couples a depthwise conv's outputs to its inputs
                else:
                    raise HdapError(f"layer {name}: grouped convolutions other than depthwise "
                                    "are not supported by the pruning space")
                row(name, op, op, node, src, s_in, s_out, tuple(mod.kernel_size),
                    int(mod.stride[0]), mod.bias is not None)
                sym[node.name] = s_out
            elif isinstance(mod, nn.Linear):
                g = out_group.get(name)
                s_out = (g, 0, 1) if g is not None else fixed(mod.out_features)
                row(name, "linear", "linear", node, src, s_in, s_out, bias=mod.bias is not None)
                sym[node.name] = s_out
            elif isinstance(mod, nn.BatchNorm2d):
                row(name, "bn", "bn" if mod.affine else "bn1", node, src, s_in, s_in)
                sym[node.name] = s_in
            elif isinstance(mod, _ACT_MODULES + _OTHER_ACT_MODULES):
                counted = "act" if isinstance(mod, _ACT_MODULES) else ""
                row(name, "act", counted, node, src, s_in, s_in)
                sym[node.name] = s_in
            elif isinstance(mod, _POOL_MODULES):
                k = getattr(mod, "kernel_size", None)
                shp_in, shp_out = shape(src), shape(node)
                if k is None:  # adaptive: the window covers input / output
                    k = (max(1, shp_in[2] // shp_out[2]), max(1, shp_in[3] // shp_out[3]))
                k = (k, k) if isinstance(k, int) else tuple(k)
                st = getattr(mod, "stride", None) or k[0]
                st = st if isinstance(st, int) else st[0]
                row(name, "pool", "pool", node, src, s_in, s_in, k, st)
                sym[node.name] = s_in
            elif isinstance(mod, _PASS_MODULES):
                sym[node.name] = _flatten_sym(s_in, src, node, shape)
            else:
                raise HdapError(f"layer {name}: {type(mod).__name__} is not supported by the "
                                "pruning space")
        elif node.op in ("call_function", "call_method"):
            fname = getattr(node.target, "__name__", str(node.target))
            if fname in ("add", "iadd", "add_"):
                if len(args) == 2:
                    a, b = sym[args[0].name], sym[args[1].name]
                    if a != b and not (a[0] < 0 and b[0] < 0 and a[1] * a[2] == b[1] * b[2]):
                        raise HdapError(f"{node.name}: adds tensors of different channel "
                                        "groups; the pruning space cannot follow it")
                    row(node.name, "add", "", node, args[0], a, a)
                sym[node.name] = s_in
            elif fname in _ACT_FUNCTIONS:
                row(node.name, "act", "", node, src, s_in, s_in)
                sym[node.name] = s_in
            elif fname in _POOL_FUNCTIONS or fname == "mean":
                shp_in, shp_out = shape(src), shape(node)
                ho, wo = hw(shp_out)
                k = (max(1, shp_in[2] // max(ho, 1)), max(1, shp_in[3] // max(wo, 1)))
                row(node.name, "pool", "", node, src, s_in, s_in, k, k[0])
                sym[node.name] = s_in
            elif fname in _PASS_FUNCTIONS:
                if src is not None:
                    sym[node.name] = _flatten_sym(s_in, src, node, shape)
            else:
                raise HdapError(f"{node.name}: operation {fname} is not supported by the "
                                "pruning space")
        elif node.op == "get_attr":
            continue

    # The symbols must reproduce the traced shapes at base widths, or the space is wrong.
    def value(s):
        g, f, m = s
        return (base[g] if g >= 0 else f) * m

    for r in rows:
        if (value(r["cin"]), value(r["cout"])) != tuple(r["traced"]):
            raise HdapError(f"internal: the pruning space of layer {r['name']} gives "
                            f"{value(r['cin'])}->{value(r['cout'])} channels, the trace "
                            f"{r['traced'][0]}->{r['traced'][1]}")

    def arr(key, dtype=np.int64):
        return np.array([r[key] for r in rows], dtype=dtype)

    return _Layers(
        names=tuple(r["name"] for r in rows),
        op=np.array([r["op"] for r in rows], dtype=object),
        counted=np.array([r["counted"] for r in rows], dtype=object),
        kernel_h=arr("kh"), kernel_w=arr("kw"), stride=arr("stride"),
        h_in=arr("h_in"), w_in=arr("w_in"), h_out=arr("h_out"), w_out=arr("w_out"),
        has_bias=arr("bias", bool),
        cin_group=np.array([r["cin"][0] for r in rows], dtype=np.int64),
        cin_fixed=np.array([r["cin"][1] for r in rows], dtype=np.float64),
        cin_mult=np.array([r["cin"][2] for r in rows], dtype=np.float64),
        cout_group=np.array([r["cout"][0] for r in rows], dtype=np.int64),
        cout_fixed=np.array([r["cout"][1] for r in rows], dtype=np.float64),
        cout_mult=np.array([r["cout"][2] for r in rows], dtype=np.float64),
    )


def _flatten_sym(s_in, src, node, shape):
    """Channel symbol after a reshape: flattening (C, H, W) multiplies C by H*W."""
    shp_in, shp_out = shape(src), shape(node)
    if len(shp_in) == 4 and len(shp_out) == 2:
        g, f, m = s_in
        return (g, f, m * shp_in[2] * shp_in[3])
    return s_in


@functools.lru_cache(maxsize=16)
def _traced_space(name: str) -> PruningSpace:
    spec = get_spec(name)
    # Only shapes matter here: build on the meta device (no weight initialisation,
    # which is most of the cost for VGG-16) and give it uninitialised CPU storage.
    with torch.device("meta"):
        model = spec.builder()
    model = model.to_empty(device="cpu").eval()
    example = spec.example_input()
    groups_raw = discover_groups(model, example, spec.classifier)
    # Order groups by where their first member runs in the forward pass.
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    groups = []
    for root, width, members in groups_raw:
        members = sorted(members, key=order.__getitem__)
        groups.append(Group(name=members[0] if members else root, base=width,
                            members=tuple(members)))
    groups.sort(key=lambda g: order[g.name])
    out_group = {m: i for i, g in enumerate(groups) for m in g.members}
    base = np.array([g.base for g in groups], dtype=np.int64)
    layers = _fx_layers(model, example, out_group, base)
    space = PruningSpace(model=name, input_shape=spec.input_shape, groups=tuple(groups),
                         layers=layers)
    counted = sum(p.numel() for p in model.parameters())
    extra = counted - int(round(space.params(base)))
    if extra < 0 or math.isnan(extra):
        raise HdapError(f"internal: parameter count of {name} is inconsistent ({extra})")
    return replace(space, extra_params=extra)
