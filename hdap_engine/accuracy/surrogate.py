"""The accuracy surrogate: candidate widths -> calibrated accuracy.

The search scores thousands of candidates; adaptive-BN calibration costs about
a second each, so a model learns it from a few dozen sampled candidates. The
model is a Gaussian process (scikit-learn; a constant times an RBF kernel on
standardised features, plus a white-noise kernel for the calibration's own
noise), fitted by maximum likelihood. Measured on 64 candidates of the digits
ResNet-56 at 25 % MACs (K-fold, 5 folds; 24-candidate subsets averaged over 5
draws), Spearman / MAE: Gaussian process 0.72 / 3.8 points at 24 candidates
and 0.76 / 3.7 at 64; ridge 0.71 / 3.9 and 0.64 / 4.5; XGBoost 0.57 / 4.6 and
0.85 / 3.2; XGBoost with monotone constraints 0.48 / 4.7 and 0.74 / 3.6.
At a fixed budget more width in one place means less elsewhere, so
"wider is never worse" does not hold feature by feature; at the few dozen
samples a budget gets, the smooth model wins.
(``python -m benchmarks.accuracy_surrogate``.)

Features: each group's keep ratio, the smallest keep ratio of each resolution
stage (the bottleneck a stage cannot recover from) and the candidate's MACs
share.

The held-out report is K-fold cross-validation over candidates (every
candidate predicted by a model that never saw it; with a few dozen samples a
single 80/20 split gives 5-10 test points, too few for a rank correlation):
Spearman rank correlation (what the search needs: ordering) and mean absolute
error in accuracy (fractions).

Public API
----------
``AccuracySurrogate(seed=0, folds=5)``: ``.fit(space, widths, accuracy) -> self``,
``.predict(widths) -> np.ndarray``, ``.predict_std(widths)``, ``.report -> dict``
(``n``, ``folds``, ``spearman``, ``mae``, ``max_error``, ``method``).
``surrogate_features(space, widths) -> np.ndarray``; ``group_stages(space)``.
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
    """Gaussian-process regression of calibrated accuracy on a candidate's widths.

    Parameters
    ----------
    seed:
        Seed of the optimiser restarts and of the cross-validation folds.
    folds:
        Folds of the held-out report (fewer when there are few candidates).
    """

    def __init__(self, *, seed: int = 0, folds: int = 5):
        self.seed = seed
        self.folds = folds
        self.model = None
        self.space: PruningSpace | None = None
        self.report: dict = {}

    def _new(self):
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        kernel = ConstantKernel() * RBF(length_scale=5.0) + WhiteKernel(noise_level=0.1)
        return make_pipeline(StandardScaler(), GaussianProcessRegressor(
            kernel, normalize_y=True, random_state=self.seed))

    def _fit(self, x, y):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            # A length scale at its bound is a fine answer here (features that do not matter).
            warnings.simplefilter("ignore", ConvergenceWarning)
            return self._new().fit(x, y)

    def fit(self, space: PruningSpace, widths, accuracy) -> AccuracySurrogate:
        """Fit on evaluated candidates and compute the held-out report.

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
            pred[test] = self._fit(x[train], y[train]).predict(x[test])
        pred = np.clip(pred, 0.0, 1.0)
        err = np.abs(pred - y)
        rho = spearmanr(pred, y).statistic if np.ptp(y) > 0 and np.ptp(pred) > 0 else float("nan")
        self.report = {"n": int(len(y)), "folds": k, "spearman": float(rho),
                       "mae": float(err.mean()), "max_error": float(err.max()),
                       "method": "Gaussian process, K-fold held-out candidates"}
        self.model = self._fit(x, y)
        return self

    def predict(self, widths) -> np.ndarray:
        """Predicted calibrated accuracy of each candidate, clipped to [0, 1]."""
        if self.model is None:
            raise RuntimeError("fit the accuracy surrogate first")
        return np.clip(self.model.predict(surrogate_features(self.space, widths)), 0.0, 1.0)

    def predict_std(self, widths) -> np.ndarray:
        """The Gaussian process's standard deviation of each prediction."""
        if self.model is None:
            raise RuntimeError("fit the accuracy surrogate first")
        _, std = self.model.predict(surrogate_features(self.space, widths), return_std=True)
        return np.asarray(std)
