"""Which accuracy surrogate ranks candidates best: held-out rank correlation and error.

Evaluates candidates at one budget by adaptive BN (the product's
`AccuracyGuide.prepare`, cached in the workspace, so a second run is quick),
three seeds of 24 candidates each, then compares regressors on them with
5-fold cross-validation: on random 24-candidate subsets (what one budget of
a study gets; mean over 5 draws) and on all of them.

    python -m benchmarks.accuracy_surrogate [--budget 0.25] [--seeds 3]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np


def main() -> None:
    import torch
    from scipy.stats import spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBRegressor

    from hdap_engine.accuracy import calibration_set
    from hdap_engine.accuracy.guide import AccuracyGuide
    from hdap_engine.accuracy.surrogate import AccuracySurrogate, surrogate_features
    from hdap_engine.data import DIGITS, load_data
    from hdap_engine.models.zoo import build_model
    from hdap_engine.pruning.space import PruningSpace

    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--weights", default="sample_data/resnet56_digits.pt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_data(DIGITS, model="resnet56")
    model = build_model("resnet56", args.weights)
    space = PruningSpace.for_model("resnet56")
    calib = calibration_set(data)
    widths, acc = [], []
    for seed in range(args.seeds):
        g = AccuracyGuide.prepare(model, space, calib, args.budget * space.base_macs, None,
                                  samples=24, seed=seed)
        widths.append(g.widths)
        acc.append(g.accuracy)
        print(f"seed {seed}: uniform {g.uniform:.3f}, best sampled {g.accuracy.max():.3f}, "
              f"unpruned {g.unpruned:.3f}", flush=True)
    w, idx = np.unique(np.vstack(widths), axis=0, return_index=True)
    y = np.concatenate(acc)[idx]
    x = surrogate_features(space, w)
    n_feat = x.shape[1]

    def xgb(mono):
        extra = {"monotone_constraints": "(" + ",".join(["1"] * n_feat) + ")"} if mono else {}
        return XGBRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.9,
                            n_jobs=1, **extra)

    models = {
        "gaussian process (product)": lambda: AccuracySurrogate()._new(),
        "ridge": lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
        "xgboost": lambda: xgb(False),
        "xgboost monotone": lambda: xgb(True),
    }
    print(f"{len(y)} distinct candidates at {args.budget:g} of the MACs; calibrated accuracy "
          f"{y.min():.3f}..{y.max():.3f}")
    for name, make in models.items():
        for n in (24, len(y)):
            rhos, maes = [], []
            for rep in range(5 if n < len(y) else 1):
                sub = np.random.default_rng(rep).permutation(len(y))[:n]
                xs, ys = x[sub], y[sub]
                pred = np.empty(n)
                for tr, te in KFold(5, shuffle=True, random_state=0).split(xs):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        pred[te] = make().fit(xs[tr], ys[tr]).predict(xs[te])
                rhos.append(spearmanr(pred, ys).statistic)
                maes.append(np.abs(pred - ys).mean())
            print(f"{name:28s} n={n:3d}  spearman {np.mean(rhos):.2f}  "
                  f"MAE {100 * np.mean(maes):.1f} points")


if __name__ == "__main__":
    main()
