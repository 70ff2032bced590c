"""How fast the analytic MACs formula scores candidates (`hdap bench-macs`)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from hdap_engine.options import MacsBenchOptions
from hdap_engine.pruning.space import PruningSpace


@dataclass(frozen=True)
class MacsTiming:
    """Median time of `PruningSpace.macs` over ``repeats`` runs on ``candidates`` random candidates."""

    model: str
    n_groups: int
    n_layers: int
    candidates: int
    repeats: int
    median_s: float

    @property
    def candidates_per_s(self) -> float:
        """Candidates scored per second (median run)."""
        return self.candidates / self.median_s


def time_analytic_macs(model: str, candidates: int = MacsBenchOptions().candidates,
                       repeats: int = MacsBenchOptions().repeats) -> MacsTiming:
    """Time the analytic MACs of ``candidates`` random candidates of ``model``.

    Parameters
    ----------
    model:
        A model name (see `hdap_engine.models.zoo.model_names`).
    candidates:
        Random candidates per run (seed 0).
    repeats:
        Timed runs; the median is reported.

    Returns
    -------
    MacsTiming
    """
    space = PruningSpace.for_model(model)
    widths = space.random_widths(candidates, np.random.default_rng(0))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        space.macs(widths)
        times.append(time.perf_counter() - t0)
    return MacsTiming(model=model, n_groups=space.n_groups, n_layers=len(space.layers.names),
                      candidates=candidates, repeats=repeats, median_s=statistics.median(times))
