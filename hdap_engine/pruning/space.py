"""The pruning space of a model: its prunable groups, their widths, and analytic costs.

A *group* is a set of channels that Torch-Pruning's dependency graph says must
be pruned together (`hdap_engine.pruning.groups`). A *candidate* is the kept
width of every group: an int array of shape (G,), each a multiple of the
group's step (``round_to``, or a multiple of a grouped convolution's groups)
between the group's minimum and its base width.

The space is derived from the model itself, not written per model
(`hdap_engine.pruning.build`): the groups come from Torch-Pruning, the layer
geometry from one recorded forward pass. Every layer's input and output
channel count is a linear `Form` of the widths, which makes MACs, parameters
and the layer table of N candidates a few vectorised numpy operations.

MACs follow Torch-Pruning's counter (`tp.utils.count_ops_and_params`), which
is the reference (see `hdap_engine.pruning.build` for what it counts); a test
holds the two equal after physical pruning. ``uncounted`` names the op kinds
the model has that the counter does not count; ``kept`` names the groups kept
at full width because pruning them breaks the model, with the reason.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.pruning.groups import Group
from hdap_engine.pruning.layers import LayerTable
from hdap_engine.pruning.rows import LayerRows, SpaceData

__all__ = ["Group", "PruningSpace"]


@dataclass(frozen=True)
class PruningSpace:
    """The candidates of one model and their analytic costs.

    Build with `PruningSpace.for_model(name)`; change ``round_to`` or
    ``min_ratio`` with `with_options`.
    """

    model: str
    input_shape: tuple[int, ...]
    groups: tuple[Group, ...]
    round_to: int = 8
    min_ratio: float = 0.1
    layers: LayerRows = field(repr=False, default=None)
    extra_params: int = field(repr=False, default=0)  # parameters outside counted layers
    kept: tuple[tuple[str, str], ...] = ()  # (layer, why) of groups kept at full width
    uncounted: tuple[str, ...] = ()  # op kinds present that Torch-Pruning's counter skips

    # -- construction -------------------------------------------------------------------
    @classmethod
    def for_model(cls, name: str, *, round_to: int = 8, min_ratio: float = 0.1) -> PruningSpace:
        """The space of a model (built once per model, then read from the cache)."""
        from hdap_engine.pruning.cache import cached_space

        return cls.from_data(cached_space(name)).with_options(round_to=round_to,
                                                              min_ratio=min_ratio)

    @classmethod
    def from_data(cls, data: SpaceData) -> PruningSpace:
        """The space of a build's findings (`hdap_engine.pruning.build.build_space`)."""
        space = cls(model=data.model, input_shape=tuple(data.input_shape), groups=data.groups,
                    layers=data.layers, kept=data.kept, uncounted=data.uncounted)
        # Parameters outside the counted layers (position embeddings, class tokens,
        # layer scales) are counted whole, so that base parameters match the model.
        extra = data.model_params - int(round(space.params(space.base_widths)))
        return replace(space, extra_params=max(extra, 0))

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
    def steps(self) -> np.ndarray:
        """Width step per group: ``round_to``, or its least common multiple with the
        group's channel groups (a grouped convolution keeps its groups equal).

        Where that multiple leaves fewer than four widths (RegNet's 13, 26 or 55 groups
        of 8 channels with ``round_to`` 8: a step of 104 or 440 is the whole width, so
        every method kept RegNet's grouped convolutions whole), the step is the channel
        groups alone: one channel per group, the width searched and priced as it is.

        An attention's heads move one whole head at a time (its q, k and v channels),
        whatever ``round_to`` says: a head is the unit the attention computes in, and
        its channels are already a multiple of the head size.
        """
        out = []
        for g in self.groups:
            if g.heads:
                out.append(g.head_width)
                continue
            parts = max(1, g.channel_groups)
            step = math.lcm(self.round_to, parts)
            out.append(parts if parts > 1 and 4 * step > g.base else step)
        return np.array(out, dtype=np.int64)

    @functools.cached_property
    def min_widths(self) -> np.ndarray:
        """Smallest width per group: ``min_ratio`` of the base, rounded up, at least one step."""
        b, st = self.base_widths, self.steps
        low = np.ceil(b * self.min_ratio / st) * st
        return np.minimum(np.maximum(low, st), b).astype(np.int64)

    def round_widths(self, widths) -> np.ndarray:
        """Nearest valid candidate(s): multiples of the step within [min, base]."""
        w = np.asarray(widths, dtype=np.float64)
        r = np.round(w / self.steps) * self.steps
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
        parts = np.array([g.head_width or max(1, g.channel_groups) for g in self.groups])
        bad = np.flatnonzero(w % parts)
        if bad.size:
            i = int(bad[0])
            g = self.groups[i]
            why = (f"whole heads of an attention: 1 to {g.heads} heads of {g.head_width} "
                   "channels" if g.heads else "its grouped convolution's groups")
            raise HdapError(
                f"{self.model}: width {int(w[i])} of group {g.name} must be a "
                f"multiple of {int(parts[i])} ({why})")
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
        lay = self.layers
        cin = lay.cin_fixed + w @ lay.cin_coef.T
        cout = lay.cout_fixed + w @ lay.cout_coef.T
        return cin, cout

    @functools.cached_property
    def _base_cout(self) -> np.ndarray:
        """(L,) output channels of every layer at the base widths."""
        return self.layers.cout_fixed + self.layers.cout_coef @ self.base_widths

    @functools.cached_property
    def _whole_heads(self) -> np.ndarray:
        """(L,) True for a row whose output width is a group of whole heads."""
        heads = np.array([g.heads > 0 for g in self.groups], dtype=bool)
        return (self.layers.cout_coef[:, heads] != 0).any(axis=1)

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
        m = c == "conv"  # dense or grouped: each output reads cin / groups inputs
        per_in = cin[:, m] / lay.groups[m]
        macs[:, m] = (k * hw_out)[m] * per_in * cout[:, m] + (bias * hw_out)[m] * cout[:, m]
        params[:, m] = k[m] * per_in * cout[:, m] + bias[m] * cout[:, m]
        m = c == "dwconv"
        macs[:, m] = (k * hw_out + bias * hw_out)[m] * cout[:, m]
        params[:, m] = (k + bias)[m] * cout[:, m]
        m = c == "linear"  # rows x in x out; the counter adds the bias once per output
        macs[:, m] = hw_out[m] * cin[:, m] * cout[:, m] + bias[m] * cout[:, m]
        params[:, m] = cin[:, m] * cout[:, m] + bias[m] * cout[:, m]
        m = c == "unit-linear"  # MACs in its attention's formula, parameters its own
        params[:, m] = cin[:, m] * cout[:, m] + bias[m] * cout[:, m]
        m = c == "bn"  # affine norm: 2 per element
        macs[:, m] = 2.0 * hw_out[m] * cout[:, m]
        params[:, m] = 2.0 * cout[:, m]
        m = c == "bn1"  # a norm without affine parameters
        macs[:, m] = hw_out[m] * cout[:, m]
        m = (c == "act") | (c == "upsample")
        macs[:, m] = hw_out[m] * cout[:, m]
        m = c == "pool"
        macs[:, m] = hw_in[m] * cin[:, m]
        m = (c == "attention") | (c == "mha")  # the counter's attention formula
        n, batch = lay.h_out[m].astype(np.float64), lay.w_out[m].astype(np.float64)
        q, d = cout[:, m], cin[:, m]
        # An attention on a group of whole heads keeps its width per head, so it has
        # q / (q unpruned) of its heads (``heads`` of the row: the unpruned count).
        heads = lay.heads[m] * np.where(self._whole_heads[m],
                                        q / np.maximum(self._base_cout[m], 1.0), 1.0)
        macs[:, m] = batch * (n * q * (2.0 + 3.0 * d + 3.0 * bias[m] + 2.0 * n + q)
                              + heads * n * n)
        m = c == "mha"  # its projections are its own parameters
        params[:, m] = 4.0 * cin[:, m] * cin[:, m] + (3.0 * bias[m] + 1.0) * cin[:, m]
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
        index = {s: i for i, s in enumerate(distinct)}
        return np.array([index[s] for s in sizes.tolist()], dtype=np.int64)

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
        t = lay.twin
        return LayerTable(
            names=tuple(n for n, keep in zip(lay.names, t, strict=True) if keep), op=lay.op[t],
            kernel_h=lay.kernel_h[t], kernel_w=lay.kernel_w[t], stride=lay.stride[t],
            h_in=lay.h_in[t], w_in=lay.w_in[t], h_out=lay.h_out[t], w_out=lay.w_out[t],
            has_bias=lay.has_bias[t], cin=cin[:, t], cout=cout[:, t], groups=lay.groups[t],
            fn=lay.fn[t],
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

    def report(self) -> dict:
        """What a report says about the space: groups, what stays whole, what is not counted."""
        return {
            "groups": self.n_groups,
            "kept_at_full_width": [{"layer": n, "why": why} for n, why in self.kept],
            "uncounted_ops": list(self.uncounted),
        }

    def notes(self) -> list[str]:
        """One line per thing a user should know about this model's space."""
        from hdap_engine.models.zoo import get_spec

        out = []
        if get_spec(self.model).task == "detection":
            from hdap_engine.models.postprocess import postprocess_note

            out.append(postprocess_note(self.model))
        if not self.kept:
            return out
        names = ", ".join(n for n, _ in self.kept[:4]) + (" ..." if len(self.kept) > 4 else "")
        return out + [f"{len(self.kept)} group(s) kept at full width because pruning them "
                      f"breaks the model ({names}: {self.kept[0][1]})"]

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
            "kept_at_full_width": [{"layer": n, "why": why} for n, why in self.kept],
            "uncounted_ops": list(self.uncounted),
        }
