"""The accuracy surrogate: candidate widths -> calibrated accuracy.

The search scores thousands of candidates; adaptive-BN calibration costs about
a second each, so a model learns it from a few dozen sampled candidates. The
model is XGBoost (as for latency) with *monotone* constraints: every feature
is a keep ratio or a MACs share, and keeping more channels never makes a
pruned network less accurate after calibration (to within noise), so the
trees are told so. With a few dozen samples that prior is worth more than
depth; it also keeps the model from rewarding a thinner layer by accident.

Features: each group's keep ratio, the smallest keep ratio of each resolution
stage (the bottleneck a stage cannot recover from) and the candidate's MACs
share.

The held-out report is K-fold cross-validation over candidates (every
candidate predicted by a model that never saw it; with a few dozen samples a
single 80/20 split gives 5-10 test points, too few for a rank correlation):
Spearman rank correlation (what the search needs: ordering) and mean absolute
error in accuracy points.

Public API
----------
``AccuracySurrogate(seed=0, folds=5)``: ``.fit(space, widths, accuracy) -> self``,
``.predict(widths) -> np.ndarray``, ``.report -> dict`` (``n``, ``folds``,
``spearman``, ``mae``, ``max_error``, ``n_train``).
``surrogate_features(space, widths) -> np.ndarray``
"""

from __future__ import annotations

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.pruning.space import PruningSpace


def surrogate_features(space: PruningSpace, widths) -> np.ndarray:
    """Features (N, G + S + 1): keep ratios, per-stage minimum keep ratio, MACs share."""
    w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
    ratios = w / space.base_widths[None, :]
    stages = group_stages(space)
    stage_min = [ratios[:, stages == s].min(axis=1) for s in np.unique(stages)]
    macs = np.atleast_1d(space.macs(w.astype(np.int64))) / space.base_macs
    return np.column_stack([ratios, *stage_min, macs])


def group_stages(space: PruningSpace) -> np.ndarray:
    """(G,) resolution stage of each group (that of its first member layer)."""
    index = {n: i for i, n in enumerate(space.layers.names)}
    return np.array([space.stages[index[g.members[0]]] if g.members[0] in index else 0
                     for g in space.groups], dtype=np.int64)


class AccuracySurrogate:
    """Monotone XGBoost regression of calibrated accuracy on a candidate's widths.

    Parameters
    ----------
    seed:
        Seed of the trees and of the cross-validation folds.
    folds:
        Folds of the held-out report (fewer when there are few candidates).
    """

    def __init__(self, *, seed: int = 0, folds: int = 5, n_estimators: int = 300,
                 max_depth: int = 3, learning_rate: float = 0.05):
        self.seed = seed
        self.folds = folds
        self.params = dict(n_estimators=n_estimators, max_depth=max_depth,
                           learning_rate=learning_rate, subsample=0.9, min_child_weight=1.0,
                           reg_lambda=1.0, n_jobs=1, random_state=seed)
        self.model = None
        self.space: PruningSpace | None = None
        self.report: dict = {}

    def _new(self, n_features: int):
        from xgboost import XGBRegressor

        constraints = "(" + ",".join(["1"] * n_features) + ")"
        return XGBRegressor(monotone_constraints=constraints, **self.params)

    def fit(self, space: PruningSpace, widths, accuracy) -> AccuracySurrogate:
        """Fit on sampled candidates and compute the held-out report.

        Parameters
        ----------
        space:
            The pruning space of the candidates.
        widths:
            (N, G) candidates.
        accuracy:
            (N,) their calibrated accuracies (fractions).

        Returns
        -------
        ``self``.
        """
        from scipy.stats import spearmanr

        x = surrogate_features(space, widths)
        y = np.asarray(accuracy, dtype=np.float64)
        if len(y) != len(x):
            raise ValueError("widths and accuracy differ in length")
        if len(y) < 4:
            raise HdapError(f"the accuracy surrogate needs at least 4 evaluated candidates, "
                            f"got {len(y)}")
        self.space = space
        k = int(min(self.folds, len(y)))
        order = np.random.default_rng(self.seed).permutation(len(y))
        pred = np.empty(len(y))
        for f in range(k):
            test = order[f::k]
            train = np.setdiff1d(order, test)
            model = self._new(x.shape[1]).fit(x[train], y[train])
            pred[test] = model.predict(x[test])
        pred = np.clip(pred, 0.0, 1.0)
        err = np.abs(pred - y)
        rho = spearmanr(pred, y).statistic if np.ptp(y) > 0 and np.ptp(pred) > 0 else float("nan")
        self.report = {"n": int(len(y)), "folds": k, "spearman": float(rho),
                       "mae": float(err.mean()), "max_error": float(err.max()),
                       "method": "monotone XGBoost, K-fold held-out candidates"}
        self.model = self._new(x.shape[1]).fit(x, y)
        return self

    def predict(self, widths) -> np.ndarray:
        """Predicted calibrated accuracy of each candidate, clipped to [0, 1]."""
        if self.model is None:
            raise RuntimeError("fit the accuracy surrogate first")
        return np.clip(self.model.predict(surrogate_features(self.space, widths)), 0.0, 1.0)
