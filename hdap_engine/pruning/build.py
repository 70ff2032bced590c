"""Build the pruning space of a model: groups from Torch-Pruning, layers from a recording.

1. The model is built on the CPU and Torch-Pruning's groups are found
   (`groups.discover`); groups whose pruning breaks the model are kept at full
   width and listed (`groups.unprunable_groups`).
2. One forward pass is recorded (`record.record`) and every operation that
   costs time becomes a layer row: its twin op, how Torch-Pruning's counter
   counts it, its geometry and its channel forms.
3. A copy pruned to distinct widths per group is recorded too, and every
   operation's output shape must equal its forms at those widths: a group whose
   pruning the rules do not follow is kept at full width and listed with the
   operation that disagrees (`_followed_groups`), never priced wrong.

MACs follow Torch-Pruning's counter (`tp.utils.count_ops_and_params`), which
counts modules by their exact class: convolutions and linear layers (with
bias), batch / instance / group norms (2 per element with affine, else 1),
layer norms likewise, ReLU-family and GELU modules (1 per element), pooling
modules (1 per input element), upsampling (1 per output element), and
`nn.MultiheadAttention` and timm's attention modules by its attention formula;
every functional op counts 0. ``uncounted`` lists the op kinds the space
meets that the counter does not count.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.pruning import groups as G
from hdap_engine.pruning import record as R
from hdap_engine.pruning.rows import LayerRows, SpaceData

_COUNTED_ACT = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU)
_COUNTED_POOL = (nn.MaxPool1d, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool2d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d,
                 nn.AdaptiveAvgPool2d)
_COUNTED_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d, nn.InstanceNorm2d,
               nn.GroupNorm)


def _timm_attention_types() -> tuple:
    """timm's attention classes when Torch-Pruning's counter counts them (it does only
    when it was imported with timm: `groups.torch_pruning`), else none."""
    from torch_pruning.utils import op_counter

    G.torch_pruning()
    if not getattr(op_counter, "has_timm", False):
        return ()
    import timm.models.swin_transformer as swin
    import timm.models.vision_transformer as vit

    return (vit.Attention, swin.WindowAttention)


def _fn_of(module: nn.Module) -> str:
    name = type(module).__name__.lower()
    for key, fn in (("hardswish", "hardswish"), ("hardsigmoid", "hardsigmoid"),
                    ("gelu", "gelu"), ("silu", "silu"), ("swish", "silu"),
                    ("mish", "silu"), ("sigmoid", "sigmoid"), ("tanh", "tanh"),
                    ("relu6", "relu6"), ("relu", "relu"), ("elu", "elu"),
                    ("hardtanh", "relu6"), ("softplus", "silu")):
        if key in name:
            return fn
    return ""


def _channel_dim(forms, shape) -> int:
    nd = len(shape)
    if nd <= 1:
        return 0
    varying = [d for d in range(1, nd) if not R.is_fixed(forms[d])]
    if varying:
        return 1 if 1 in varying else varying[-1]
    return 1 if nd == 4 else nd - 1


def _geometry(shape, forms):
    """(channel form, h, w) of a tensor: channels by `_channel_dim`, the rest as h x w."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        return R.fixed(1), 1, 1
    d = _channel_dim(forms, shape)
    if len(shape) == 4 and d == 1:
        return forms[1], shape[2], shape[3]
    rest = math.prod(shape) // max(shape[d], 1)
    return forms[d], rest, 1


class _Rows:
    """Layer rows under construction (see `hdap_engine.pruning.rows.LayerRows`)."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, name, op, counted, cin, cout, hw_in, hw_out, *, kernel=(1, 1), stride=1,
            bias=False, groups=1, fn="", heads=0):
        self.rows.append(dict(name=name, op=op, counted=counted, kh=int(kernel[0]),
                              kw=int(kernel[1]), stride=int(stride), h_in=int(hw_in[0]),
                              w_in=int(hw_in[1]), h_out=int(hw_out[0]), w_out=int(hw_out[1]),
                              bias=bool(bias), groups=int(groups), fn=fn, heads=int(heads),
                              cin=cin, cout=cout))


def _module_rows(rows: _Rows, op: R.Op, tp_forms, heads: dict[int, int]) -> None:
    m = op.module
    if not op.in_shapes:
        return
    cin, hi, wi = _geometry(op.in_shapes[0], op.in_forms[0])
    cout, ho, wo = _geometry(op.out_shape, op.out_forms)
    exact = type(m)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        cin_f = tp_forms[0] if tp_forms else cin
        k = tuple(m.kernel_size) + (1,) * (2 - len(m.kernel_size))
        stride = m.stride[0]
        counted = "conv" if exact in (nn.Conv1d, nn.Conv2d) else ""
        if m.groups == 1:
            kind = "conv"
        elif m.groups == m.in_channels == m.out_channels:
            kind = "dwconv"
            counted = "dwconv" if counted else ""
            cin_f = cout  # Torch-Pruning prunes a depthwise conv's inputs with its outputs
        else:
            kind = "gconv"
        rows.add(op.name, kind, counted, cin_f, cout, (hi, wi), (ho, wo), kernel=k,
                 stride=stride, bias=m.bias is not None,
                 groups=m.groups if kind == "gconv" else 1)
    elif isinstance(m, nn.Linear):
        cin_f = tp_forms[0] if tp_forms else cin
        rows.add(op.name, "linear", "linear" if exact is nn.Linear else "", cin_f, cout,
                 (hi, wi), (ho, wo), bias=m.bias is not None)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm,
                        nn.LayerNorm)):
        affine = getattr(m, "affine", getattr(m, "elementwise_affine", False))
        counted = ("bn" if affine else "bn1") if exact in _COUNTED_BN + (nn.LayerNorm,) else ""
        twin = "bn" if isinstance(m, nn.BatchNorm2d) else "norm"
        rows.add(op.name, twin, counted, cout, cout, (ho, wo), (ho, wo))
    elif isinstance(m, (nn.MaxPool1d, nn.AvgPool1d, nn.MaxPool2d, nn.AvgPool2d,
                        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                        nn.AdaptiveMaxPool2d)):
        k = getattr(m, "kernel_size", None)
        if k is None or isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            k = (max(1, hi // max(ho, 1)), max(1, wi // max(wo, 1)))
        k = (k, k) if isinstance(k, int) else tuple(k) + (1,) * (2 - len(tuple(k)))
        st = getattr(m, "stride", None) or k[0]
        st = st if isinstance(st, int) else st[0]
        rows.add(op.name, "pool", "pool" if exact in _COUNTED_POOL else "", cin, cin,
                 (hi, wi), (ho, wo), kernel=k, stride=st)
    elif isinstance(m, nn.Upsample):
        rows.add(op.name, "copy", "upsample" if exact is nn.Upsample else "", cout, cout,
                 (ho, wo), (ho, wo), fn="upsample")
    elif isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        rows.add(op.name, "softmax", "", cout, cout, (ho, wo), (ho, wo), fn="softmax")
    elif isinstance(m, nn.MultiheadAttention):
        whole = any(g in heads for g, _ in cin[1])
        _attention_rows(rows, op.name, cin, cin, ho * wo, m.num_heads,
                        m.in_proj_bias is not None, counted="mha",
                        whole_heads=m.embed_dim // m.num_heads if whole else 0)
    elif isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten, nn.Unflatten)):
        return
    else:
        fn = _fn_of(m)
        if fn:
            rows.add(op.name, "act", "act" if exact in _COUNTED_ACT else "", cout, cout,
                     (ho, wo), (ho, wo), fn=fn)
        elif "norm" in type(m).__name__.lower():
            rows.add(op.name, "norm", "", cout, cout, (ho, wo), (ho, wo))
        elif sum(p.numel() for p in m.parameters(recurse=False)) or math.prod(op.out_shape):
            rows.add(op.name, "other", "", cin, cout, (hi, wi), (ho, wo),
                     fn=type(m).__name__)


def _attention_rows(rows: _Rows, name, cin, qdim, tokens, heads, bias, counted, batch=1,
                    whole_heads: int = 0):
    """The products and softmax of one attention (twin rows) plus its counted row.

    On a width of whole heads (``whole_heads``: the width of one head) each head keeps
    its width and the heads kept multiply the products' outputs (`_batched`);
    otherwise the heads stay and each narrows.
    """
    n = int(tokens)
    head = R.scale_form(qdim, 1.0 / heads)
    if counted == "mha":  # its projections are inside the unit: give the twin them too
        rows.add(f"{name}.in_proj", "linear", UNIT, cin, R.scale_form(qdim, 3.0), (n, 1),
                 (n, 1), bias=bias)
        if whole_heads:  # batched over the heads kept, as `_batched` lays it out
            lead = ((heads, n), (R.scale_form(qdim, 1.0 / whole_heads), R.fixed(n)))
            hd, tok = R.fixed(whole_heads), R.fixed(n)
            _, qk_in, qk = _batched(*lead, hd, tok)
            _, _, scores = _batched(*lead, tok, tok)
            _, av_in, av = _batched(*lead, tok, hd)
            rows.add(f"{name}.qk", "matmul", UNIT, qk_in, qk, (n, 1), (n, 1))
            rows.add(f"{name}.softmax", "softmax", UNIT, scores, scores, (n, 1), (n, 1),
                     fn="softmax")
            rows.add(f"{name}.av", "matmul", UNIT, av_in, av, (n, 1), (n, 1))
        else:
            rows.add(f"{name}.qk", "matmul", UNIT, head, R.fixed(n), (heads * n, 1),
                     (heads * n, 1))
            rows.add(f"{name}.softmax", "softmax", UNIT, R.fixed(n), R.fixed(n),
                     (heads * n, 1), (heads * n, 1), fn="softmax")
            rows.add(f"{name}.av", "matmul", UNIT, R.fixed(n), head, (heads * n, 1),
                     (heads * n, 1))
        rows.add(f"{name}.out_proj", "linear", UNIT, qdim, qdim, (n, 1), (n, 1), bias=True)
    rows.add(f"{name}.count", "", counted, cin, qdim, (n, batch), (n, batch), bias=bias,
             heads=heads)


UNIT = "unit"  # counted by the row of the block it belongs to
# A linear layer inside such a block (timm's qkv and proj): its MACs are in the block's
# formula, its parameters are its own (the counter sums every parameter of the model).
UNIT_LINEAR = "unit-linear"


def _function_rows(rows: _Rows, op: R.Op) -> None:
    n0 = len(rows.rows)
    _function_rows_of(rows, op)
    if op.extra.get("in_counted"):
        for r in rows.rows[n0:]:
            r["counted"] = UNIT


def _function_rows_of(rows: _Rows, op: R.Op) -> None:
    f = op.target
    if not op.in_shapes or math.prod(op.out_shape) == 0:
        return
    cin, hi, wi = _geometry(op.in_shapes[0], op.in_forms[0])
    cout, ho, wo = _geometry(op.out_shape, op.out_forms)
    if f in ("contiguous", "reshape", "flatten"):
        if op.extra.get("copies"):  # channel shuffle, a transposed view made dense
            rows.add(op.name, "copy", "", cout, cout, (ho, wo), (ho, wo), fn=f)
        return
    if f in R.VIEW_FN:
        return
    tensors = len(op.in_shapes)
    if f in R.ADD_FN | R.MUL_FN:
        if tensors < 2:  # arithmetic with a constant: one cheap element-wise pass
            rows.add(op.name, "act", "", cout, cout, (ho, wo), (ho, wo), fn="arith")
            return
        kind = "add" if f in R.ADD_FN else "mul"
        other = min(op.in_shapes, key=math.prod)
        if kind == "mul" or math.prod(other) != math.prod(op.out_shape):
            # A smaller second operand is a per-channel gate (squeeze-excitation).
            g_hw = (1, 1) if math.prod(other) < math.prod(op.out_shape) else (ho, wo)
            rows.add(op.name, "mul", "", cout, cout, g_hw, (ho, wo))
        else:
            rows.add(op.name, "add", "", cout, cout, (ho, wo), (ho, wo))
    elif f in R.ACT_FN:
        rows.add(op.name, "act", "", cout, cout, (ho, wo), (ho, wo), fn=R.ACT_FN[f])
    elif f in R.SOFTMAX_FN:
        rows.add(op.name, "softmax", "", cout, cout, (ho, wo), (ho, wo), fn="softmax")
    elif f in R.NORM_FN:
        rows.add(op.name, R.NORM_FN[f], "", cout, cout, (ho, wo), (ho, wo))
    elif f in R.POOL_FN:
        k = (max(1, hi // max(ho, 1)), max(1, wi // max(wo, 1)))
        rows.add(op.name, "pool", "", cin, cin, (hi, wi), (ho, wo), kernel=k, stride=k[0])
    elif f in R.CAT_FN:
        rows.add(op.name, "cat", "", cout, cout, (ho, wo), (ho, wo))
    elif f in R.MATMUL_FN and tensors >= 2 and len(op.in_shapes[0]) >= 2:
        rows_n, inner, outs = _batched(op.out_shape[:-1], op.out_forms[:-1],
                                       op.in_forms[0][-1], op.out_forms[-1])
        rows.add(op.name, "matmul", "", inner, outs, (rows_n, 1), (rows_n, 1))
    elif f == "scaled_dot_product_attention" and tensors >= 3:
        q, v = op.in_shapes[0], op.in_shapes[2]
        kv = v[-2]
        lead, qk_in, qk = _batched(q[:-1], op.in_forms[0][:-1], op.in_forms[0][-1],
                                   R.fixed(kv))
        _, _, scores = _batched(q[:-1], op.in_forms[0][:-1], R.fixed(kv), R.fixed(kv))
        _, av_in, av = _batched(q[:-1], op.in_forms[0][:-1], R.fixed(kv),
                                op.in_forms[2][-1])
        rows.add(f"{op.name}.qk", "matmul", "", qk_in, qk, (lead, 1), (lead, 1))
        rows.add(f"{op.name}.softmax", "softmax", "", scores, scores, (lead, 1),
                 (lead, 1), fn="softmax")
        rows.add(f"{op.name}.av", "matmul", "", av_in, av, (lead, 1), (lead, 1))
    elif f in R.COPY_FN:
        rows.add(op.name, "copy", "", cout, cout, (ho, wo), (ho, wo), fn=f)
    else:
        rows.add(op.name, "other", "", cin, cout, (hi, wi), (ho, wo), fn=f)


def _batched(lead_shape, lead_forms, inner: R.Form,
             out: R.Form) -> tuple[int, R.Form, R.Form]:
    """(rows, input channels, output channels) of a product batched over ``lead_shape``.

    The batch dims are the rows, unless one varies with the widths (an attention's
    heads, pruned whole): a row count is a number and a form is linear in the widths,
    so the heads kept then multiply the input channels or the output channels, so that
    MACs follow them, and with them the larger of the first operand and the output
    (the twin counts a product's first operand as rows x input channels, its second as
    input x output channels, its output as rows x output channels): for q @ k^T the
    scores (tokens per head), for the scores @ v the scores read.
    """
    varying = [d for d, f in enumerate(lead_forms) if not R.is_fixed(f)]
    if len(varying) != 1 or not R.is_fixed(out) or not R.is_fixed(inner):
        return math.prod(lead_shape), inner, out
    d = varying[0]
    rest = math.prod(s for k, s in enumerate(lead_shape) if k != d)
    if inner[0] > out[0]:
        return rest, R.scale_form(lead_forms[d], inner[0]), out
    return rest, inner, R.scale_form(lead_forms[d], out[0])


def layer_rows(ops: list[R.Op], tp_forms: dict,
               heads: dict[int, int] | None = None) -> list[dict]:
    """Layer rows of a recording (twin rows and counted rows); ``heads`` gives the heads
    of each group that is a width of whole heads."""
    rows = _Rows()
    for op in ops:
        if op.kind == "module":
            n0 = len(rows.rows)
            _module_rows(rows, op, tp_forms.get(op.module), heads or {})
            if op.extra.get("in_counted"):
                # A layer inside a block the counter counts whole (timm's attention: its
                # qkv and proj are in the block's formula): priced, not counted again.
                for r in rows.rows[n0:]:
                    r["counted"] = UNIT_LINEAR if r["counted"] == "linear" else UNIT
        elif op.kind == "count":
            _attention_rows(rows, op.name, op.extra["cin"], op.extra["qdim"],
                            op.extra["tokens"], op.extra["heads"], op.extra["bias"],
                            counted="attention", batch=op.extra["batch"])
        else:
            _function_rows(rows, op)
    return rows.rows


def check_forms(ops: list[R.Op], pruned: list[R.Op], widths: np.ndarray) -> None:
    """Every recorded output shape must equal its forms at the pruned widths."""
    if len(ops) != len(pruned):
        raise HdapError(f"the pruned model runs {len(pruned)} operations where the unpruned "
                        f"one runs {len(ops)}; the pruning space cannot follow it")
    for a, b in zip(ops, pruned, strict=True):
        want = tuple(int(round(R.form_value(f, widths))) for f in a.out_forms)
        if want != tuple(b.out_shape):
            raise HdapError(f"operation {a.name} ({a.target}) gives {tuple(b.out_shape)} "
                            f"channels when pruned, where the pruning space expects {want}")


def probe_widths(groups) -> np.ndarray:
    """Distinct widths per group for the check: about 5/8 or 3/4 of each, on its step."""
    out = []
    for i, g in enumerate(groups):
        parts = g.head_width or max(1, g.channel_groups)  # whole heads, equal parts
        frac = (0.625, 0.75, 0.5)[i % 3]
        w = max(parts, int(g.base * frac) // parts * parts)
        out.append(min(w, g.base))
    return np.array(out, dtype=np.int64)



def _arrays(rows: list[dict], n_groups: int):
    def arr(key, dtype=np.int64):
        return np.array([r[key] for r in rows], dtype=dtype)

    def coef(key):
        out = np.zeros((len(rows), n_groups))
        for i, r in enumerate(rows):
            for g, m in r[key][1]:
                out[i, g] += m
        return out

    return LayerRows(
        names=tuple(r["name"] for r in rows), op=arr("op", object),
        counted=arr("counted", object), fn=arr("fn", object),
        kernel_h=arr("kh"), kernel_w=arr("kw"), stride=arr("stride"),
        h_in=arr("h_in"), w_in=arr("w_in"), h_out=arr("h_out"), w_out=arr("w_out"),
        has_bias=arr("bias", bool), groups=arr("groups"), heads=arr("heads"),
        cin_fixed=np.array([r["cin"][0] for r in rows], dtype=np.float64),
        cin_coef=coef("cin"),
        cout_fixed=np.array([r["cout"][0] for r in rows], dtype=np.float64),
        cout_coef=coef("cout"),
    )


def _checked_recording(model: nn.Module, example: torch.Tensor, classifier: str,
                       found: G.Discovered, keep: list[int], widths: np.ndarray,
                       expected: tuple[int, ...], counted_types: tuple):
    """((ops, module forms), None) when the groups ``keep`` pruned to ``widths`` run and
    every recorded shape follows its forms; (None, why) otherwise."""
    pruned, why = G.try_prune(model, example, classifier, [found.groups[i] for i in keep],
                              widths, expected)
    if why is not None:
        return None, why
    tp_forms = G.module_forms(model, found, keep)
    heads = {i: found.groups[g].heads for i, g in enumerate(keep) if found.groups[g].heads}
    try:
        ops = R.record(G.clear_eval_caches(model), example, tp_forms, counted_types,
                       param_forms=G.param_forms(model, found, keep), heads=heads)
        check_forms(ops, R.record(G.clear_eval_caches(pruned), example, {}, counted_types),
                    widths)
    except HdapError as exc:
        return None, str(exc)
    return (ops, tp_forms), None


def _followed_groups(model: nn.Module, example: torch.Tensor, classifier: str,
                     found: G.Discovered, candidates: list[int], all_widths: np.ndarray,
                     expected: tuple[int, ...], counted_types: tuple):
    """The candidate groups whose pruning the recording follows, those it does not (with
    the check's error), and the recording of the first.

    A group the recording cannot follow (a parameter reshaped in ``forward`` that
    Torch-Pruning prunes, two groups slicing the same channels, an unfold into patches)
    is kept at full width like a group that breaks the model, and the rest is pruned.
    Groups are accepted greedily in halving chunks: with every group fine (the usual
    case) that is one check, and a group that only fails together with an accepted one
    is caught too, which plain halving would miss.
    """
    accepted: list[int] = []
    bad: dict[int, str] = {}
    last: list = [None]

    def add(chunk: list[int]) -> None:
        trial = sorted(accepted + chunk)
        done, why = _checked_recording(model, example, classifier, found, trial,
                                       all_widths[trial], expected, counted_types)
        if why is None:
            accepted[:] = trial
            last[0] = done
        elif len(chunk) == 1:
            bad[chunk[0]] = why
        else:
            mid = len(chunk) // 2
            add(chunk[:mid])
            add(chunk[mid:])

    if candidates:
        add(list(candidates))
    if last[0] is None:
        done, why = _checked_recording(model, example, classifier, found, [],
                                       all_widths[:0], expected, counted_types)
        if why is not None:
            raise HdapError(f"the pruning space cannot follow this model even unpruned ({why})")
        last[0] = done
    return accepted, bad, last[0]


def build_space(name: str, model: nn.Module, example: torch.Tensor, classifier: str,
                input_shape: tuple[int, ...]):
    """What the pruning space of ``model`` is made of (see the module docstring)."""
    model = model.eval()
    found = G.discover(model, example, classifier)
    with torch.no_grad():
        expected = tuple(model(example).shape)
    # Prune a copy to distinct widths per group: it must run (else the groups that break
    # it are found first, by cheap trial prunings), and every recorded shape of it must
    # equal the forms at those widths (else the groups the recording cannot follow).
    all_widths = probe_widths(found.groups)
    pruned, why = G.try_prune(model, example, classifier, found.groups, all_widths, expected)
    del pruned
    bad: dict[int, str] = {}
    if why is not None:
        bad = G.unprunable_groups(model, example, classifier, found.groups, all_widths,
                                  expected)
    counted_types = _timm_attention_types()
    candidates = [i for i in range(len(found.groups)) if i not in bad]
    keep, unfollowed, (ops, tp_forms) = _followed_groups(model, example, classifier, found,
                                                         candidates, all_widths, expected,
                                                         counted_types)
    bad.update(unfollowed)
    groups = tuple(found.groups[i] for i in keep)
    rows = layer_rows(ops, tp_forms, {i: g.heads for i, g in enumerate(groups) if g.heads})
    if not rows:
        raise HdapError("the model has no layer the pruning space can follow")
    layers = _arrays(rows, len(groups))
    kept = tuple((found.groups[i].name, why) for i, why in sorted(bad.items()))
    uncounted = sorted({str(o) for o, c in zip(layers.op, layers.counted, strict=True)
                        if o and not c and o not in ("add", "mul", "cat", "copy")} |
                       {f"{o}:{f}" for o, f, c in zip(layers.op, layers.fn, layers.counted,
                                                      strict=True) if o == "other"})
    return SpaceData(model=name, input_shape=tuple(input_shape), groups=groups, layers=layers,
                     kept=kept, uncounted=tuple(uncounted),
                     model_params=sum(p.numel() for p in model.parameters()))
