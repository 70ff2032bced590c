"""A budget in measured latency: the most MACs whose answer meets a fleet latency.

``--latency-budget 5`` asks for the least-pruned model (the one with the most
MACs, so the least accuracy lost) whose fleet objective (the query's: weighted
mean, p95 over devices or the worst cluster, in ms) is at most 5 ms. A MACs budget
says how much compute to keep; a latency budget is what a deployment engineer
is usually handed.

The fleet objective of a method's answer falls as its MACs fall, so the MACs are
found by bisection on log-MACs, each step one what-if answer on the surrogate
(`SearchPlan.quick`: nothing measured). The answer is then searched for in full at
those MACs (which measures, for methods that do), and when the surrogate that
search refined predicts the answer over the budget, the bisection runs again on
it (`CORRECTIONS` times at most). What the user finally reads is measured: the
verification of the chosen candidate reports its measured objective against the
budget (`record`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.pruning.budget import format_macs
from hdap_engine.pruning.space import PruningSpace

STEPS = 9  # bisection steps on log-MACs: the MACs range to ~1 % of itself
CORRECTIONS = 2  # bisections again on the refined surrogate, at most
TOLERANCE = 0.005  # a prediction within 0.5 % over the budget meets it (search noise)


@dataclass(frozen=True)
class LatencyFit:
    """The MACs found for a latency budget and what the surrogate predicted there."""

    latency_ms: float
    objective: str
    macs: float
    predicted_ms: float  # the surrogate's fleet objective of the answer at `macs`
    surrogate_answers: int  # what-if answers the bisection asked for
    unpruned_meets: bool  # the unpruned model is predicted within the budget

    def record(self, measured_ms: float | None = None) -> dict:
        """The report's ``latency_budget`` block; ``measured_ms`` from the verification."""
        out = {**asdict(self), "macs_label": format_macs(self.macs)}
        if measured_ms is not None:
            out["measured_ms"] = float(measured_ms)
            out["met"] = bool(measured_ms <= self.latency_ms * (1 + TOLERANCE))
        return out


def fit_macs(space: PruningSpace, latency_ms: float, objective: str,
             predicted_objective: Callable[[float], float]) -> LatencyFit:
    """The most MACs whose answer ``predicted_objective(macs)`` is within ``latency_ms``.

    Parameters
    ----------
    space:
        The pruning space (its smallest and full MACs bound the bisection).
    predicted_objective:
        The fleet objective (ms) the surrogate predicts for the method's answer at a
        MACs budget.
    """
    lo, hi = space.min_macs * 1.02, float(space.base_macs)
    asked = 0

    def f(macs: float) -> float:
        nonlocal asked
        asked += 1
        return float(predicted_objective(macs))

    at_hi = f(hi)
    if at_hi <= latency_ms * (1 + TOLERANCE):
        return LatencyFit(latency_ms, objective, hi, at_hi, asked, True)
    at_lo = f(lo)
    if at_lo > latency_ms * (1 + TOLERANCE):
        raise HdapError(
            f"a latency budget of {latency_ms:g} ms is below what the smallest candidate "
            f"({format_macs(lo)} MACs) is predicted to reach on this fleet "
            f"({objective} {at_lo:.3g} ms); raise the budget, or prune a smaller model")
    best, best_ms = lo, at_lo
    a, b = np.log(lo), np.log(hi)
    for _ in range(STEPS):
        mid = float(np.exp((a + b) / 2))
        ms = f(mid)
        if ms <= latency_ms * (1 + TOLERANCE):
            best, best_ms, a = mid, ms, np.log(mid)
        else:
            b = np.log(mid)
    return LatencyFit(latency_ms, objective, best, best_ms, asked, False)
