"""Layer shapes of candidate networks: the one description every latency model reads.

A `LayerTable` lists, for N candidates of one model, every layer that costs
time at inference (convolutions, depthwise and grouped convolutions, linear
layers and matrix products, batch and layer norms, activations, softmax,
pooling, residual adds, gates, concatenations, memory copies) with its
static geometry (kernel, stride, spatial size) shared by all candidates and
its channel counts per candidate. The pruning space produces tables from
widths; the device twin and the probe suite consume them. Nothing here knows
about PyTorch modules.

Conventions
-----------
- ``op`` is one of `OPS`. ``dwconv`` is a depthwise convolution: groups equal
  to channels, so ``cin == cout``. ``gconv`` is a grouped convolution with
  ``groups`` fixed groups (each output channel reads ``cin / groups`` inputs).
  Element-wise ops (``bn``, ``norm``, ``act``, ``softmax``, ``add``, ``mul``,
  ``copy``) and ``pool`` have ``cin == cout``.
- ``kernel_h``/``kernel_w`` is the window for conv and pool, 1 otherwise.
- ``h_in, w_in, h_out, w_out`` are spatial sizes at batch 1. A linear layer
  or a matrix product acts on rows: ``h_out * w_out`` is its number of rows
  (1 for a classifier, the token count in a transformer, heads x tokens for
  attention's products), ``cin`` its inner dimension and ``cout`` its outputs.
- ``add`` reads two tensors of shape (cout, h_out, w_out) and writes one.
  ``mul`` reads one of shape (cout, h_out, w_out) and a second of shape
  (cout, h_in, w_in): ``h_in * w_in == 1`` is a per-channel gate
  (squeeze-excitation), otherwise a full element-wise product. ``cat``
  writes (cout, h_out, w_out) from its inputs (a copy). ``norm`` is a layer or group norm (a reduction and an
  affine per element); ``softmax`` is exponentials and a reduction.
- ``fn`` names the function of an ``act`` layer (``relu``, ``gelu``,
  ``silu``, ``hardswish``, ``sigmoid``, ...), so that a cost model can price
  transcendental activations above ReLU; "" for other ops. ``other`` is an
  op the space met but has no class for; its ``fn`` names it and the twin
  prices it by a stated fallback (its memory traffic).
- ``has_bias`` is true for a conv or linear with a bias vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPS = ("conv", "dwconv", "linear", "bn", "act", "pool", "add", "copy",
       "gconv", "matmul", "norm", "softmax", "mul", "cat", "other")
"""Layer kinds, in the order of their integer codes in `LayerTable.op_code`."""

OP_CODE = {name: i for i, name in enumerate(OPS)}


@dataclass(frozen=True)
class LayerTable:
    """Per-layer shapes of N candidates of one network (L layers).

    Static arrays have shape (L,); ``cin`` and ``cout`` have shape (N, L).
    """

    names: tuple[str, ...]
    op: np.ndarray  # (L,) object array of op names from OPS
    kernel_h: np.ndarray
    kernel_w: np.ndarray
    stride: np.ndarray
    h_in: np.ndarray
    w_in: np.ndarray
    h_out: np.ndarray
    w_out: np.ndarray
    has_bias: np.ndarray  # (L,) bool
    cin: np.ndarray  # (N, L) float64
    cout: np.ndarray  # (N, L) float64
    groups: np.ndarray | None = None  # (L,) int: a gconv's groups, 1 elsewhere
    fn: np.ndarray | None = None  # (L,) object: an act's (or other op's) function name

    def __post_init__(self):
        n = len(self.names)
        if self.groups is None:
            object.__setattr__(self, "groups", np.ones(n, dtype=np.int64))
        if self.fn is None:
            object.__setattr__(self, "fn", np.array([""] * n, dtype=object))

    @property
    def n_candidates(self) -> int:
        return int(self.cin.shape[0])

    @property
    def n_layers(self) -> int:
        return len(self.names)

    @property
    def op_code(self) -> np.ndarray:
        """(L,) integer code of each layer's op (index into `OPS`)."""
        return np.array([OP_CODE[o] for o in self.op], dtype=np.int64)

    def is_op(self, *ops: str) -> np.ndarray:
        """(L,) mask of layers whose op is one of ``ops``."""
        return np.isin(self.op, ops)

    def macs(self) -> np.ndarray:
        """(N, L) multiply-accumulates of the arithmetic layers (conv, dwconv,
        gconv, linear, matmul).

        Element-wise layers, pooling and copies are 0 here: they cost memory
        traffic, not multiply-accumulates.
        """
        k = (self.kernel_h * self.kernel_w).astype(np.float64)
        hw_out = (self.h_out * self.w_out).astype(np.float64)
        per_conv = k * hw_out * self.cin * self.cout
        per_dw = k * hw_out * self.cout
        per_rows = hw_out * self.cin * self.cout
        out = np.where(self.is_op("conv"), per_conv, 0.0)
        out = out + np.where(self.is_op("gconv"), per_conv / self.groups, 0.0)
        out = out + np.where(self.is_op("dwconv"), per_dw, 0.0)
        out = out + np.where(self.is_op("linear", "matmul"), per_rows, 0.0)
        return out

    def weight_elems(self) -> np.ndarray:
        """(N, L) number of weight (and bias / affine) elements each layer reads."""
        k = (self.kernel_h * self.kernel_w).astype(np.float64)
        bias = np.where(self.has_bias, self.cout, 0.0)
        w = np.where(self.is_op("conv"), k * self.cin * self.cout + bias, 0.0)
        w = w + np.where(self.is_op("dwconv"), k * self.cout + bias, 0.0)
        w = w + np.where(self.is_op("gconv"), k * self.cin * self.cout / self.groups + bias, 0.0)
        w = w + np.where(self.is_op("linear"), self.cin * self.cout + bias, 0.0)
        w = w + np.where(self.is_op("bn", "norm"), 2.0 * self.cout, 0.0)
        return w

    def input_elems(self) -> np.ndarray:
        """(N, L) activation elements read (both operands for ``add`` and ``mul``;
        a matmul's second operand is ``cin * cout`` per row block)."""
        n = self.cin * (self.h_in * self.w_in)
        two = np.where(self.is_op("add"), 2.0 * n, n)
        gate = self.cout * (self.h_out * self.w_out) + self.cout * (self.h_in * self.w_in)
        two = np.where(self.is_op("mul"), gate, two)
        return np.where(self.is_op("matmul"), n + self.cin * self.cout, two)

    def output_elems(self) -> np.ndarray:
        """(N, L) activation elements written."""
        return self.cout * (self.h_out * self.w_out)

    def select(self, index) -> LayerTable:
        """The table restricted to some candidates (``index`` into axis 0)."""
        cin = np.atleast_2d(self.cin[index])
        cout = np.atleast_2d(self.cout[index])
        return LayerTable(
            names=self.names, op=self.op, kernel_h=self.kernel_h, kernel_w=self.kernel_w,
            stride=self.stride, h_in=self.h_in, w_in=self.w_in, h_out=self.h_out,
            w_out=self.w_out, has_bias=self.has_bias, cin=cin, cout=cout,
            groups=self.groups, fn=self.fn,
        )

    def rows(self, candidate: int = 0) -> list[dict]:
        """Human-readable layer list of one candidate (for reports and debugging)."""
        out = []
        for i, name in enumerate(self.names):
            out.append({
                "name": name,
                "op": str(self.op[i]),
                "in_channels": int(self.cin[candidate, i]),
                "out_channels": int(self.cout[candidate, i]),
                "kernel": (int(self.kernel_h[i]), int(self.kernel_w[i])),
                "stride": int(self.stride[i]),
                "groups": (int(self.cout[candidate, i]) if self.op[i] == "dwconv"
                           else int(self.groups[i])),
                "fn": str(self.fn[i]),
                "input_hw": (int(self.h_in[i]), int(self.w_in[i])),
                "output_hw": (int(self.h_out[i]), int(self.w_out[i])),
            })
        return out


def make_table(rows: list[dict], n_candidates: int = 1) -> LayerTable:
    """Build a table from explicit layer dicts (used for probes and tests).

    Each row has ``name``, ``op``, ``cin``, ``cout``, ``h_in``, ``w_in`` and
    optionally ``kernel`` (int or (kh, kw)), ``stride``, ``h_out``, ``w_out``
    (default: ``h_in // stride``), ``has_bias``, ``groups``, ``fn``. The same channels are used for
    all ``n_candidates`` rows.
    """
    if not rows:
        raise ValueError("a layer table needs at least one layer")
    for r in rows:
        if r["op"] not in OPS:
            raise ValueError(f"unknown op {r['op']!r}; expected one of {OPS}")

    def kern(r, i):
        k = r.get("kernel", 1)
        return k if isinstance(k, int) else k[i]

    stride = np.array([r.get("stride", 1) for r in rows], dtype=np.int64)
    h_in = np.array([r["h_in"] for r in rows], dtype=np.int64)
    w_in = np.array([r["w_in"] for r in rows], dtype=np.int64)
    h_out = np.array([r.get("h_out", max(1, r["h_in"] // r.get("stride", 1))) for r in rows])
    w_out = np.array([r.get("w_out", max(1, r["w_in"] // r.get("stride", 1))) for r in rows])
    cin = np.array([float(r["cin"]) for r in rows])
    cout = np.array([float(r["cout"]) for r in rows])
    return LayerTable(
        names=tuple(r["name"] for r in rows),
        op=np.array([r["op"] for r in rows], dtype=object),
        kernel_h=np.array([kern(r, 0) for r in rows], dtype=np.int64),
        kernel_w=np.array([kern(r, 1) for r in rows], dtype=np.int64),
        stride=stride, h_in=h_in, w_in=w_in,
        h_out=h_out.astype(np.int64), w_out=w_out.astype(np.int64),
        has_bias=np.array([bool(r.get("has_bias", False)) for r in rows]),
        cin=np.tile(cin, (n_candidates, 1)),
        cout=np.tile(cout, (n_candidates, 1)),
        groups=np.array([int(r.get("groups", 1)) for r in rows], dtype=np.int64),
        fn=np.array([str(r.get("fn", "")) for r in rows], dtype=object),
    )
