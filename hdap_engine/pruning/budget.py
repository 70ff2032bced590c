"""MACs budgets: parsing what users type, and repairing candidates to meet one.

A budget is written as absolute multiply-accumulates (``1.0G``, ``500M``,
``250k``, ``1200000000``) or as a fraction of the unpruned model (``0.25``,
``25%``). Pruning papers, the one we follow included, write "FLOPs" for
multiply-accumulates; so do we in the UI, and the numbers are the same.

`repair` turns any direction (per-group keep ratios) into a candidate whose
analytic MACs lie within ``tol`` below the budget: a vectorised bisection on
one scale factor, then single rounding steps back up on the groups that
rounding cut most, while they fit.
"""

from __future__ import annotations

import re

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.pruning.space import PruningSpace

BUDGET_TOLERANCE = 0.01  # a candidate "meets" a budget within 1 % below it

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_PATTERN = re.compile(
    r"^\s*(?P<num>[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?)\s*"
    r"(?P<unit>%|[kKmMgGtT])?\s*(macs?|flops?)?\s*$", re.IGNORECASE)


def format_macs(macs: float) -> str:
    """``4.12 G``-style text for MACs."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(macs) >= scale:
            return f"{macs / scale:.3g} {unit}"
    return f"{macs:.0f}"


def parse_budget(text, space: PruningSpace) -> float:
    """The budget in MACs for ``space``'s model.

    Parameters
    ----------
    text:
        ``"1.0G"``, ``"500M"``, ``"0.25"`` (fraction), ``"25%"``, or a number.
    space:
        The pruning space (for the model's MACs and the smallest allowed candidate).

    Returns
    -------
    MACs, strictly positive, at most the model's, at least the smallest candidate's.
    """
    raw = str(text).strip()
    m = _PATTERN.match(raw)
    if not raw or m is None:
        raise HdapError(
            f"budget {raw!r} is not understood; write MACs like 1.0G or 500M, "
            "or a fraction of the model like 0.25 or 25%")
    value = float(m.group("num"))
    unit = (m.group("unit") or "").lower()
    base = space.base_macs
    if unit == "%":
        macs = value / 100.0 * base
    elif unit:
        macs = value * _SUFFIX[unit]
    elif 0 < value <= 1.0:
        macs = value * base
    else:
        macs = value
    if not np.isfinite(macs) or macs <= 0:
        raise HdapError(f"budget {raw!r} must be positive; e.g. 1.0G or 0.25 of the model")
    if macs > base * (1 + 1e-9):
        raise HdapError(
            f"budget {raw!r} ({format_macs(macs)} MACs) is more than {space.model} itself "
            f"({format_macs(base)} MACs); choose a budget at or below it")
    if macs < space.min_macs:
        raise HdapError(
            f"budget {raw!r} ({format_macs(macs)} MACs) is below the smallest {space.model} "
            f"this space allows ({format_macs(space.min_macs)} MACs, every group kept at "
            f"{space.min_ratio:.0%} or more); raise the budget or lower the minimum ratio")
    return float(macs)


def repair(space: PruningSpace, ratios, target_macs: float, *,
           tol: float = BUDGET_TOLERANCE, step_up: bool = False) -> np.ndarray:
    """Candidates following ``ratios``' direction with MACs in [target*(1-tol), target].

    Parameters
    ----------
    space:
        The pruning space.
    ratios:
        Keep ratio per group, (G,) or (N, G); only its direction matters.
    target_macs:
        The budget in MACs.
    tol:
        How far below the budget a result may stay when rounding allows no closer.
    step_up:
        A candidate still short of the budget tries each coarse group (one step costs
        more than ``tol``: an embedding that moves a whole head at a time) one step up,
        the others narrower. For a baseline's single candidate (uniform, global), which
        must spend its budget to be a fair comparison; the search's candidates are left
        as they are (a search simply prefers the ones that spend it).

    Returns
    -------
    int widths of the same leading shape as ``ratios``.
    """
    r = np.asarray(ratios, dtype=np.float64)
    single = r.ndim == 1
    r = np.clip(np.atleast_2d(r), 1e-3, None)
    n = r.shape[0]
    if target_macs < space.min_macs:
        raise HdapError(f"budget {format_macs(target_macs)} MACs is below the smallest "
                        f"candidate ({format_macs(space.min_macs)} MACs)")
    base = space.base_widths.astype(np.float64)
    lo = np.zeros(n)
    hi = np.full(n, 1.0 / r.min(axis=1))  # at hi every group is at full width
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        ok = space.macs(space.widths_from_ratios(r * mid[:, None])) <= target_macs
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    widths = space.widths_from_ratios(r * lo[:, None])
    widths = _fill(space, widths, r * lo[:, None] * base, target_macs, tol)
    if step_up:  # the baselines' one candidate: it must use its budget (`_coarse_step_up`)
        widths = _coarse_step_up(space, widths, r, target_macs, tol)
    return widths[0] if single else widths


def _coarse_step_up(space: PruningSpace, widths: np.ndarray, r: np.ndarray, target: float,
                    tol: float) -> np.ndarray:
    """Candidates still short of the budget: one step more of each coarse group, the
    others scaled down to make room; kept where that comes closer to the budget.

    A group whose one step costs more than the budget's tolerance (the embedding of an
    attention that moves one whole head at a time: a twelfth of ViT-B's width) can
    leave the ray of ``r`` only under the budget or over it, and filling the fine groups
    back may not reach it.
    """
    macs = space.macs(widths)
    short = np.flatnonzero(macs < target * (1.0 - tol))
    if short.size == 0:
        return widths
    out = widths.copy()
    base = space.base_widths.astype(np.float64)
    up = np.minimum(widths[short] + space.steps, space.base_widths)
    for c in range(space.n_groups):
        grown = widths[short].copy()
        grown[:, c] = up[:, c]
        coarse = (space.macs(grown) - macs[short]) > tol * target
        rows = short[coarse & (grown[:, c] > widths[short, c])]
        if rows.size == 0:
            continue
        fixed = up[np.searchsorted(short, rows), c].astype(np.float64)
        rr = r[rows]
        lo, hi = np.zeros(rows.size), 1.0 / rr.min(axis=1)

        def at(scale, rr=rr, c=c, kept=fixed / base[c]):
            ratios = rr * scale[:, None]
            ratios[:, c] = kept
            return space.widths_from_ratios(ratios)

        for _ in range(30):
            mid = 0.5 * (lo + hi)
            ok = space.macs(at(mid)) <= target
            lo = np.where(ok, mid, lo)
            hi = np.where(ok, hi, mid)
        trial = at(lo)
        trial = _fill(space, trial, rr * lo[:, None] * base, target, tol)
        tm = space.macs(trial)
        better = (tm <= target) & (tm > space.macs(out[rows]))
        out[rows[better]] = trial[better]
    return out


def _fill(space: PruningSpace, widths: np.ndarray, wanted: np.ndarray, target: float,
          tol: float) -> np.ndarray:
    """Add rounding steps back, most-cut group first, while the budget allows."""
    widths = widths.copy()
    step = space.steps  # per group: a grouped convolution moves in larger steps
    g = space.n_groups
    stuck = np.zeros(len(widths), dtype=bool)  # no single step fits any more
    for _ in range(4 * g):
        macs = space.macs(widths)
        todo = np.flatnonzero((macs < target * (1.0 - tol / 2)) & ~stuck)
        if todo.size == 0:
            break
        w = widths[todo]
        trial = np.repeat(w[:, None, :], g, axis=1)  # (n, G, G): one step up per group
        idx = np.arange(g)
        trial[:, idx, idx] = np.minimum(trial[:, idx, idx] + step, space.base_widths)
        trial_macs = space.macs(trial.reshape(-1, g)).reshape(len(todo), g)
        grows = trial[:, idx, idx] > w
        feasible = grows & (trial_macs <= target)
        stuck[todo[~feasible.any(axis=1)]] = True
        if not feasible.any():
            break
        deficit = np.where(feasible, wanted[todo] - w, -np.inf)
        best = deficit.argmax(axis=1)
        can = feasible[np.arange(len(todo)), best]
        rows = todo[can]
        widths[rows, best[can]] = trial[can, best[can], best[can]]
    return widths


def meets_budget(macs: float, target: float, tol: float = BUDGET_TOLERANCE) -> bool:
    """True when ``macs`` is at most the budget and within ``tol`` of it."""
    return target * (1.0 - tol) <= macs <= target * (1.0 + 1e-9)
