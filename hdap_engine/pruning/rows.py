"""The plain data a pruning space is made of: its layer rows and what its build found.

`hdap_engine.pruning.build` produces a `SpaceData`, `hdap_engine.pruning.cache`
keeps it (memory and disk), and `PruningSpace` wraps it with widths and costs.
Nothing here computes; it is the one shape these three modules share.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from hdap_engine.pruning.groups import Group


@dataclass(frozen=True)
class LayerRows:
    """Static per-layer arrays of a recorded model (L layers, G groups).

    A layer's input channels are ``cin_fixed + widths @ cin_coef.T``, its
    outputs likewise. Rows with an empty ``op`` are counted for MACs only
    (an attention block Torch-Pruning's counter counts on top of its layers).
    """

    names: tuple[str, ...]
    op: np.ndarray  # twin op names (see layers.OPS), "" for a counted-only row
    counted: np.ndarray  # how TP's counter counts it (see _layer_costs), "" when it does not
    fn: np.ndarray
    kernel_h: np.ndarray
    kernel_w: np.ndarray
    stride: np.ndarray
    h_in: np.ndarray
    w_in: np.ndarray
    h_out: np.ndarray
    w_out: np.ndarray
    has_bias: np.ndarray
    groups: np.ndarray
    heads: np.ndarray
    cin_fixed: np.ndarray  # (L,)
    cin_coef: np.ndarray  # (L, G)
    cout_fixed: np.ndarray
    cout_coef: np.ndarray

    @functools.cached_property
    def twin(self) -> np.ndarray:
        return self.op != ""


@dataclass(frozen=True)
class SpaceData:
    """Everything a build of one model's space found (see `hdap_engine.pruning.build`)."""

    model: str
    input_shape: tuple[int, ...]
    groups: tuple[Group, ...]
    layers: LayerRows
    kept: tuple[tuple[str, str], ...]  # (layer, why) of groups kept at full width
    uncounted: tuple[str, ...]  # op kinds present that Torch-Pruning's counter skips
    model_params: int  # every parameter of the unpruned model
