"""Record a model's forward pass as layers whose channel counts are linear in the widths.

The pruning space needs, for every layer that costs time, its geometry and
how its channel counts follow the candidate's widths. A layer's channel count
is *linear* in the widths of the groups: a convolution after a concatenation
reads the sum of its inputs' groups, a classifier after a flatten reads a
group times H*W, a layer no group touches has a fixed count. Such a `Form` is
a fixed part plus a coefficient per group.

The forward pass is run eagerly (no symbolic tracing, so ``x.shape``, data-
dependent branches and timm's asserts all just run), with forward hooks on the
leaf modules and a `TorchFunctionMode` that sees every function and tensor
method called outside them. Each recorded operation gets a form for every
dimension of its output, propagated from its inputs by small rules (an
element-wise op keeps its operand's forms, a concatenation sums them, a
reshape scales them, a permute moves them) and, for the layers Torch-Pruning
prunes, from Torch-Pruning's own groups. The pruning space then checks every
form against a second recording of a really pruned copy, so a rule that does
not hold for some architecture is found at build time, not in a report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hdap_engine.errors import HdapError
from hdap_engine.pruning.shuffle import SHUFFLE_FN, ShuffleTracker

# A form: (fixed, ((group, coefficient), ...)) with groups sorted.
Form = tuple


def fixed(n) -> Form:
    return (float(n), ())


def add_forms(*forms: Form) -> Form:
    total, coef = 0.0, {}
    for f, terms in forms:
        total += f
        for g, m in terms:
            coef[g] = coef.get(g, 0.0) + m
    return (total, tuple(sorted((g, m) for g, m in coef.items() if m != 0.0)))


def scale_form(form: Form, k: float) -> Form:
    f, terms = form
    return (f * k, tuple((g, m * k) for g, m in terms))


def is_fixed(form: Form) -> bool:
    return not form[1]


def form_value(form: Form, widths) -> float:
    f, terms = form
    return f + sum(m * float(widths[g]) for g, m in terms)


# Module classes recorded as one unit (their insides are not looked at).
_CONV = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)
_NORM_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)
_NORM_LN = (nn.LayerNorm, nn.GroupNorm)
_POOL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
         nn.AdaptiveAvgPool1d, nn.AvgPool1d, nn.MaxPool1d)
_PASS = (nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten, nn.Unflatten)
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus,
                nn.SELU, nn.CELU)
UNIT_TYPES = (_CONV + (nn.Linear, nn.Embedding, nn.MultiheadAttention, nn.Upsample,
                       nn.Softmax, nn.LogSoftmax) + _NORM_BN + _NORM_LN + _POOL + _PASS
              + _ACT_MODULES + (nn.InstanceNorm1d, nn.BatchNorm3d))
ACT_FN = {
    "relu": "relu", "relu_": "relu", "relu6": "relu6", "hardtanh": "relu6",
    "leaky_relu": "relu", "prelu": "relu", "elu": "elu", "selu": "elu", "celu": "elu",
    "gelu": "gelu", "silu": "silu", "mish": "silu", "hardswish": "hardswish",
    "hardsigmoid": "hardsigmoid", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
    "tanh": "tanh", "softplus": "silu", "clamp": "relu6", "clamp_": "relu6",
    "clip": "relu6", "exp": "sigmoid", "erf": "gelu",
}
ADD_FN = {"add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__",
           "__rsub__", "__isub__"}
MUL_FN = {"mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_", "__truediv__",
           "__itruediv__", "__rtruediv__", "where", "addcmul"}
CAT_FN = {"cat", "concat", "concatenate"}
MATMUL_FN = {"matmul", "__matmul__", "bmm", "baddbmm", "einsum"}
POOL_FN = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "max_pool2d",
            "mean", "amax", "max", "sum", "adaptive_avg_pool1d", "avg_pool1d"}
NORM_FN = {"layer_norm": "norm", "group_norm": "norm", "batch_norm": "bn",
            "instance_norm": "bn", "rms_norm": "norm", "normalize": "norm"}
SOFTMAX_FN = {"softmax", "log_softmax", "_softmax"}
COPY_FN = {"roll", "pad", "interpolate", "upsample", "clone", "flip",
            "repeat", "tile", "pixel_shuffle", "channel_shuffle", "native_channel_shuffle"}
# Functions that only describe or re-view a tensor: they get forms, not a layer.
VIEW_FN = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "swapaxes",
            "movedim", "squeeze", "unsqueeze", "expand", "expand_as", "__getitem__",
            "chunk", "split", "unbind", "narrow", "t", "dropout", "to", "type_as", "float",
            "detach", "view_as", "reshape_as", "contiguous_", "stochastic_depth", "mT",
            "masked_fill", "dropout2d", "alpha_dropout", "feature_alpha_dropout"}


@dataclass
class Op:
    """One recorded operation: a leaf module call or a function outside modules."""

    name: str  # module name, or "<enclosing module>:<function>#k"
    kind: str  # "module" or "function"
    target: str  # module class name or function name
    module: nn.Module | None
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]
    in_forms: list[tuple[Form, ...]]
    out_forms: tuple[Form, ...] = ()
    extra: dict = field(default_factory=dict)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def fname_of(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # a property such as Tensor.mT
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class Recorder(TorchFunctionMode):
    """Records the operations of one forward pass (see the module docstring).

    ``module_forms`` maps a leaf module to the (input, output) channel forms
    Torch-Pruning's groups give it; everything else is propagated.
    """

    def __init__(self, model: nn.Module, module_forms: dict[nn.Module, tuple[Form, Form]],
                 counted_types: tuple = (), heads: dict[int, int] | None = None):
        super().__init__()
        self.heads = heads or {}  # group -> its heads, for a group that is an attention's
        self.counted_types = counted_types  # non-leaf modules Torch-Pruning counts whole
        self.in_counted = 0  # depth inside such a module
        self.last_out: dict[nn.Module, tuple[Form, ...]] = {}
        self.model = model
        self.module_forms = module_forms
        self.names = {m: n for n, m in model.named_modules()}
        self.ops: list[Op] = []
        self.forms: dict[int, tuple[Form, ...]] = {}  # id(tensor) -> forms per dim
        self.keep: list[torch.Tensor] = []  # keeps ids unique while recording
        self.stack: list[str] = []  # enclosing module names
        self.unit_depth = 0
        self.counter: dict[str, int] = {}
        self.handles = []
        self.shuffles = ShuffleTracker()

    # -- tensors -------------------------------------------------------------------------
    def forms_of(self, t: torch.Tensor) -> tuple[Form, ...]:
        got = self.forms.get(id(t))
        if got is not None and len(got) == t.dim():
            return got
        return tuple(fixed(s) for s in t.shape)

    def set_forms(self, t: torch.Tensor, forms) -> None:
        self.keep.append(t)
        self.forms[id(t)] = tuple(forms)

    # -- hooks ---------------------------------------------------------------------------
    def is_unit(self, m: nn.Module) -> bool:
        """Known layer classes are one operation; any other module (a torchvision
        ``Permute``, a custom block) is looked into, function by function."""
        if isinstance(m, nn.MultiheadAttention):
            return True
        # A subclass with children of its own (timm's BatchNormAct2d holds its
        # activation) is looked into, so that its children are seen.
        return isinstance(m, UNIT_TYPES) and next(m.children(), None) is None

    def attach(self) -> None:
        for name, m in self.model.named_modules():
            unit = self.is_unit(m)
            self.handles.append(m.register_forward_pre_hook(self._pre(name, unit)))
            self.handles.append(m.register_forward_hook(self._post(name, unit)))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _pre(self, name, unit):
        def hook(module, args):
            self.stack.append(name)
            if type(module) in self.counted_types:
                self.in_counted += 1
            if unit:
                self.unit_depth += 1
        return hook

    def _post(self, name, unit):
        def hook(module, args, output):
            self.stack.pop()
            if type(module) in self.counted_types:
                self.in_counted -= 1
                if self.unit_depth == 0:
                    self._record_attention(name, module, args)
            if unit:
                self.unit_depth -= 1
                if self.unit_depth == 0:
                    self._record_module(name, module, args, output)
        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.unit_depth == 0:
            outs = _tensors(out)
            if outs:
                self._record_function(func, args, kwargs, out, outs)
        return out

    # -- recording -----------------------------------------------------------------------
    def _record_module(self, name, module, args, output):
        ins = _tensors(args)
        outs = _tensors(output)
        if not outs:
            return
        in_forms = [self.forms_of(t) for t in ins]
        out = outs[0]
        op = Op(name=name, kind="module", target=type(module).__name__, module=module,
                in_shapes=[tuple(t.shape) for t in ins], out_shape=tuple(out.shape),
                in_forms=in_forms)
        op.extra["in_counted"] = self.in_counted > 0  # part of a block counted whole
        op.out_forms = _module_forms(module, ins, out, in_forms, self.module_forms.get(module))
        self.set_forms(out, op.out_forms)
        self.last_out[module] = op.out_forms
        for extra in outs[1:]:
            self.set_forms(extra, [fixed(s) for s in extra.shape])
        self.ops.append(op)

    def _record_attention(self, name, module, args):
        """A timm attention block: Torch-Pruning counts its formula on top of its layers."""
        x = _tensors(args)[0]
        qkv = getattr(module, "qkv", None)
        q_forms = self.last_out.get(qkv)
        qdim = (scale_form(q_forms[-1], 1.0 / 3.0) if q_forms
                else fixed(qkv.out_features // 3 if qkv is not None else x.shape[-1]))
        self.ops.append(Op(
            name=name, kind="count", target=type(module).__name__, module=module,
            in_shapes=[tuple(x.shape)], out_shape=tuple(x.shape),
            in_forms=[self.forms_of(x)], out_forms=self.forms_of(x),
            extra=dict(cin=self.forms_of(x)[-1], qdim=qdim, tokens=int(x.shape[1]),
                       batch=int(x.shape[0]), heads=int(module.num_heads),
                       bias=qkv is not None and qkv.bias is not None)))

    def _record_function(self, func, args, kwargs, out, outs):
        fname = fname_of(func).lstrip("_") if fname_of(func) not in ADD_FN | MUL_FN | {
            "__getitem__", "__matmul__"} else fname_of(func)
        ins = _tensors(args) + _tensors(kwargs)
        in_forms = [self.forms_of(t) for t in ins]
        where = self.stack[-1] if self.stack else "model"
        key = f"{where}:{fname}"
        self.counter[key] = self.counter.get(key, 0) + 1
        op = Op(name=f"{key}#{self.counter[key]}", kind="function", target=fname, module=None,
                in_shapes=[tuple(t.shape) for t in ins], out_shape=tuple(outs[0].shape),
                in_forms=in_forms)
        op.extra["in_counted"] = self.in_counted > 0  # part of a block counted whole
        if fname in ("contiguous", "reshape", "flatten") and ins:
            op.extra["copies"] = not ins[0].is_contiguous()  # a real copy, not a view
        results = _function_forms(fname, args, kwargs, ins, in_forms, outs, self.heads)
        for t, forms in zip(outs, results, strict=True):
            self.set_forms(t, forms)
        op.out_forms = results[0]
        self.ops.append(op)
        shuffled = ins[0] if fname in SHUFFLE_FN and ins else self.shuffles.step(
            fname, args, outs[0])
        if shuffled is not None and shuffled.dim() > 1 and not is_fixed(
                self.forms_of(shuffled)[1]):
            raise HdapError(f"the channel shuffle at {op.name} reorders a pruned width's "
                            f"channels, which Torch-Pruning's groups cannot follow")


def record(model: nn.Module, example: torch.Tensor,
           module_forms: dict[nn.Module, tuple[Form, Form]] | None = None,
           counted_types: tuple = (), param_forms: dict[str, tuple[Form, ...]] | None = None,
           heads: dict[int, int] | None = None) -> list[Op]:
    """Run ``model`` on ``example`` once and return its recorded operations.

    ``param_forms`` gives the forms of parameters used outside any layer (a class
    token that is expanded and concatenated), by parameter name. ``heads`` gives the
    heads of each group that is an attention's (`groups.Group.heads`), so that the
    reshape splitting its qkv output puts the pruning on the heads' dim.
    """
    rec = Recorder(model, module_forms or {}, counted_types, heads)
    rec.attach()
    try:
        with torch.no_grad(), rec:
            x = example
            rec.set_forms(x, [fixed(s) for s in x.shape])
            for name, p in model.named_parameters():
                if param_forms and name in param_forms:
                    rec.set_forms(p, param_forms[name])
            model(x)
    finally:
        rec.detach()
    return rec.ops


# -- propagation rules ----------------------------------------------------------------------

def _same(shapes, in_forms, out_shape) -> tuple[Form, ...]:
    """Element-wise: each output dim takes the form of an operand dim of the same size
    (aligned from the right, as broadcasting aligns), preferring one that varies."""
    nd = len(out_shape)
    result = []
    for d in range(nd):
        size = out_shape[d]
        best = fixed(size)
        for shape, forms in zip(shapes, in_forms, strict=True):
            j = d - (nd - len(forms))
            if j >= 0 and shape[j] == size and not is_fixed(forms[j]):
                best = forms[j]
                break
        result.append(best)
    return tuple(result)


def _reshape_forms(in_shape, in_forms, out_shape, heads=None) -> tuple[Form, ...]:
    """Match input and output dims in segments of equal products (row-major order).

    A varying dim split into several goes to the largest of them, unless it is the
    width of an attention's heads (``heads``: group -> heads) split into (q, k, v),
    heads and head_dim: then to the heads' dim, the one the pruning removes.
    """
    out = [None] * len(out_shape)
    i = j = 0
    n_in, n_out = len(in_shape), len(out_shape)
    while i < n_in or j < n_out:
        si, sj = [], []
        pi = pj = 1
        if i < n_in:
            si.append(i)
            pi = in_shape[i]
            i += 1
        if j < n_out:
            sj.append(j)
            pj = out_shape[j]
            j += 1
        while pi != pj:
            if pi < pj and i < n_in:
                si.append(i)
                pi *= in_shape[i]
                i += 1
            elif j < n_out:
                sj.append(j)
                pj *= out_shape[j]
                j += 1
            elif i < n_in:
                si.append(i)
                pi *= in_shape[i]
                i += 1
            else:
                break
        # Size-1 dims on either side ride along with the segment.
        varying = [k for k in si if not is_fixed(in_forms[k])]
        if not varying:
            for k in sj:
                out[k] = fixed(out_shape[k])
        elif len(varying) == 1:
            k0 = varying[0]
            others = math.prod(in_shape[k] for k in si if k != k0)
            whole = scale_form(in_forms[k0], others)  # the segment's total, linear
            # The varying output dim is the one carrying most of the segment.
            target = max(sj, key=lambda k: (out_shape[k], -k)) if sj else None
            terms = in_forms[k0][1]
            n_heads = (heads or {}).get(terms[0][0]) if len(terms) == 1 else None
            split = [k for k in sj[:-1] if out_shape[k] == n_heads]
            if n_heads and split:  # the last such dim: q, k and v come first
                target = split[-1]
            rest = math.prod(out_shape[k] for k in sj if k != target)
            for k in sj:
                out[k] = scale_form(whole, 1.0 / rest) if k == target else fixed(out_shape[k])
        else:  # two varying dims merged: not linear; left fixed, the check will say so
            for k in sj:
                out[k] = fixed(out_shape[k])
    return tuple(f if f is not None else fixed(s) for f, s in zip(out, out_shape, strict=True))


def _dim_arg(args, kwargs, pos, default=0):
    d = kwargs.get("dim", args[pos] if len(args) > pos else default)
    return d


def _function_forms(fname, args, kwargs, ins, in_forms, outs,
                    heads=None) -> list[tuple[Form, ...]]:
    out = outs[0]
    first = in_forms[0] if in_forms else ()
    if fname in CAT_FN:
        d = _dim_arg(args, kwargs, 1, 0) % out.dim()
        parts = [f for f in in_forms if len(f) == out.dim()]
        cat = add_forms(*[f[d] for f in parts])
        base = list(parts[0])
        base[d] = cat
        return [tuple(base)]
    if fname in ("permute",):
        dims = args[1:] if len(args) > 2 else (args[1] if len(args) > 1 else kwargs["dims"])
        dims = [int(d) % len(first) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        return [tuple(first[d] for d in dims)]
    if fname in ("transpose", "swapaxes"):
        a, b = (int(args[1]) % len(first), int(args[2]) % len(first))
        f = list(first)
        f[a], f[b] = f[b], f[a]
        return [tuple(f)]
    if fname in ("t", "mT"):
        f = list(first)
        f[-1], f[-2] = f[-2], f[-1]
        return [tuple(f)]
    if fname == "movedim":
        src, dst = int(args[1]) % len(first), int(args[2]) % len(first)
        f = list(first)
        f.insert(dst, f.pop(src))
        return [tuple(f)]
    if fname in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze",
                 "view_as", "reshape_as") and ins:
        if math.prod(ins[0].shape) == math.prod(out.shape):
            return [_reshape_forms(tuple(ins[0].shape), first, tuple(out.shape), heads)]
    if fname in ("chunk", "split", "unbind", "__getitem__", "narrow") and ins:
        results = []
        for t in outs:
            if t.dim() == len(first):
                f = []
                for d in range(t.dim()):
                    if t.shape[d] == ins[0].shape[d]:
                        f.append(first[d])
                    elif is_fixed(first[d]):
                        f.append(fixed(t.shape[d]))
                    else:  # a slice of a varying dim: its share of it
                        f.append(scale_form(first[d], t.shape[d] / ins[0].shape[d]))
                results.append(tuple(f))
            elif fname == "unbind" or t.dim() < len(first):
                # one dim indexed away: match the rest in order by size
                results.append(_drop_dims(ins[0], first, t))
            else:
                results.append(tuple(fixed(s) for s in t.shape))
        return results
    if fname in MATMUL_FN and fname != "einsum" and len(ins) >= 2 and out.dim() >= 2:
        a, b = in_forms[-2], in_forms[-1]
        sa = tuple(ins[-2].shape)
        batch = _same([sa[:-2]], [a[:-2]], tuple(out.shape[:-2]))
        return [tuple(batch) + (a[-2] if len(a) >= 2 else fixed(out.shape[-2]), b[-1])]
    if fname == "scaled_dot_product_attention":
        return [tuple(first[:-1]) + (in_forms[2][-1],)]
    results = []
    for t in outs:
        if ins and t.dim() == ins[0].dim() and all(
                s == ins[0].shape[d] or s == 1 or ins[0].shape[d] == 1
                for d, s in enumerate(t.shape)):
            results.append(_same([tuple(x.shape) for x in ins], in_forms, tuple(t.shape)))
        elif ins and t.dim() <= ins[0].dim():
            results.append(_drop_dims(ins[0], first, t))
        else:
            results.append(_same([tuple(x.shape) for x in ins], in_forms, tuple(t.shape)))
    return results


def _drop_dims(src: torch.Tensor, forms, t: torch.Tensor) -> tuple[Form, ...]:
    """A reduction or an index: match output dims to input dims in order, by size."""
    out = []
    k = 0
    for d in range(t.dim()):
        while k < src.dim() and src.shape[k] != t.shape[d]:
            k += 1
        if k < src.dim():
            out.append(forms[k])
            k += 1
        else:
            out.append(fixed(t.shape[d]))
    return tuple(out)


def _module_forms(module, ins, out, in_forms, tp_forms) -> tuple[Form, ...]:
    """Output forms of a leaf module: Torch-Pruning's for the layers it prunes."""
    first = in_forms[0] if in_forms else tuple(fixed(s) for s in out.shape)
    if isinstance(module, _CONV) and out.dim() >= 3:
        cout = tp_forms[1] if tp_forms else fixed(out.shape[1])
        return (fixed(out.shape[0]), cout) + tuple(fixed(s) for s in out.shape[2:])
    if isinstance(module, nn.Linear):
        cout = tp_forms[1] if tp_forms else fixed(out.shape[-1])
        lead = (_same([tuple(ins[0].shape[:-1])], [first[:-1]], tuple(out.shape[:-1]))
                if out.dim() > 1 and ins else ())
        return tuple(lead) + (cout,)
    if isinstance(module, (nn.Flatten, nn.Unflatten)) and ins:
        return _reshape_forms(tuple(ins[0].shape), first, tuple(out.shape))
    if isinstance(module, nn.MultiheadAttention):
        return first
    if isinstance(module, nn.Embedding):
        cout = tp_forms[1] if tp_forms else fixed(out.shape[-1])
        return tuple(fixed(s) for s in out.shape[:-1]) + (cout,)
    if ins and out.dim() == ins[0].dim():
        return _same([tuple(ins[0].shape)], in_forms[:1], tuple(out.shape))
    if ins:
        return _drop_dims(ins[0], first, out)
    return tuple(fixed(s) for s in out.shape)
