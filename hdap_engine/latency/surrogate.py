"""The latency surrogate: XGBoost models of latency(candidate, device).

The search never calls hardware; it calls this. Two modes:

- ``shared`` (default): one model over every measured device, its features
  the candidate's and the device's probe vector, so clusters share what they
  have in common (a wider layer costs more everywhere) and differ where their
  hardware differs.
- ``per-cluster``: one model per cluster on the candidate's features alone,
  as in the HDAP paper's code.

Targets are log latencies (errors are relative, and latency spans a 5-10x
range over a MACs sweep). With ``linear_base`` (ours; the paper's mode has
none), each device first gets a non-negative linear model of latency in the
candidate's work per resolution stage (MACs of dense and depthwise layers,
activations, weights) plus a constant, fitted by NNLS: the shape of a
roofline, which extrapolates sensibly. The trees then learn only the
log-ratio of the measurement to that base (tile quantisation, cache effects).
Trees alone cannot extrapolate: the search's best candidates lie at the edge
of what was sampled, where a tree model predicts the edge's average, and on
ResNet-50 at 1.0 G that made the search's winners look 15 % slower than they
were. With a twin prior (`hdap_engine.latency.prior`: the SKU's twin at each
device's probe-fitted state), the base is a constant plus a scale of the
prior's latency instead: where the twin is right in shape, regions never
measured are predicted from physics rather than from the nearest measured
region, and the trees learn what the twin gets wrong. Each mode trains a small bootstrap ensemble; its
spread is the uncertainty estimate reported to users. Accuracy is judged on held-out *candidates* (never seen in training)
at the level the search uses: the mean latency of a cluster's representatives.
The model used afterwards is refit on all candidates.

Models are saved in XGBoost's own JSON format (no pickles) with the hash of
their training set.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.latency.backends import nanmean
from hdap_engine.latency.prior import TwinPrior
from hdap_engine.options import SurrogatePlan
from hdap_engine.pruning.space import PruningSpace

# With a twin prior the trees only correct the twin, so a leaf needs this many training rows
# ((candidate, device) pairs): no leaf can hold one candidate's measurements alone. With one
# row a leaf, the trees memorised a lucky measurement (on a 4x noisier fleet, 15 % below the
# candidate's true latency), the sequential measurement took it for its incumbent, no new
# candidate looked better, and the loop stopped after 6 batches where the quiet fleet went
# on for 13 (`tests/test_sequential.py::test_a_noisier_fleet_makes_it_measure_more`).
TWIN_PRIOR_LEAF_ROWS = 24.0
# The shares of the trees' correction a surrogate with a twin prior may keep
# (`Surrogate._choose_tree_weight`).
TREE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def candidate_features(space: PruningSpace, widths) -> tuple[np.ndarray, list[str]]:
    """Features of candidates (N, F): keep ratios, MACs / params / activations per stage.

    Everything is relative to the unpruned model, so models of different size
    get features on one scale.
    """
    w = np.atleast_2d(widths)
    ratios = space.ratios(w)
    s_macs, s_params = space.stage_costs(w)
    b_macs, b_params = space.stage_costs(space.base_widths)
    table = space.layer_table(w)
    acts = table.output_elems()
    # The table holds the layers the twin prices; a row only counted (a block's MACs formula)
    # is not one, but its stage still counts.
    stages = space.stages[space.layers.twin]
    n_st = int(space.stages.max()) + 1
    onehot = np.zeros((stages.size, n_st))
    onehot[np.arange(stages.size), stages] = 1.0
    s_acts = acts @ onehot
    b_acts = space.layer_table(space.base_widths).output_elems() @ onehot
    macs = space.macs(w) / space.base_macs
    params = space.params(w) / space.base_params
    safe = np.maximum
    feats = np.column_stack([
        ratios, macs, params,
        s_macs / safe(b_macs, 1.0), s_params / safe(b_params, 1.0), s_acts / safe(b_acts, 1.0),
    ])
    names = ([f"ratio[{g.name}]" for g in space.groups] + ["macs", "params"]
             + [f"stage{s}_macs" for s in range(n_st)] + [f"stage{s}_params" for s in range(n_st)]
             + [f"stage{s}_acts" for s in range(n_st)])
    return feats, names


def physical_features(space: PruningSpace, widths) -> np.ndarray:
    """(N, F) non-negative work terms per resolution stage, plus a constant.

    Per stage: MACs of dense layers (conv, linear), MACs of depthwise layers,
    activation elements written, weight elements read; scaled to O(1).
    """
    table = space.layer_table(np.atleast_2d(widths))
    macs = table.macs()
    dense = table.is_op("conv", "linear")
    depthwise = table.is_op("dwconv")
    acts = table.output_elems()
    weights = table.weight_elems()
    stages = space.stages[space.layers.twin]  # the table's rows (see candidate_features)
    n_st = int(space.stages.max()) + 1
    onehot = np.zeros((stages.size, n_st))
    onehot[np.arange(stages.size), stages] = 1.0
    cols = [np.ones((len(macs), 1)),
            (macs * dense) @ onehot / 1e9, (macs * depthwise) @ onehot / 1e9,
            acts @ onehot / 1e7, weights @ onehot / 1e7]
    return np.concatenate(cols, axis=1)


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares in relative error (rows weighted by 1/y)."""
    from scipy.optimize import nnls

    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 3:
        return np.zeros(a.shape[1])
    w = 1.0 / y[ok]
    coef, _ = nnls(a[ok] * w[:, None], y[ok] * w, maxiter=50 * a.shape[1])
    return coef


def _metrics(pred: np.ndarray, true: np.ndarray) -> dict:
    rel = np.abs(pred - true) / true
    return {
        "mape": float(rel.mean()) if rel.size else float("nan"),
        "within_5pct": float((rel <= 0.05).mean()) if rel.size else float("nan"),
        "within_10pct": float((rel <= 0.10).mean()) if rel.size else float("nan"),
        "n_test": int(rel.size),
    }


class Surrogate:
    """latency(candidate, device) learned from measurements.

    Parameters
    ----------
    space:
        The model's pruning space.
    options:
        `SurrogatePlan`.
    twin_prior:
        A `TwinPrior` whose latency joins the linear base (shared mode with the
        linear base only); None: the base is the roofline terms alone.
    """

    def __init__(self, space: PruningSpace, options: SurrogatePlan | None = None,
                 twin_prior: TwinPrior | None = None):
        self.space = space
        self.options = options or SurrogatePlan()
        self.twin_prior = twin_prior \
            if self.options.mode == "shared" and self.options.linear_base else None
        self.boosters_: dict[int, list] = {}  # model key (-1 shared, else cluster) -> ensemble
        # Linear base: one coefficient row per device (shared) or cluster (per-cluster);
        # devices are recognised by their log probe vector.
        self.base_keys_: np.ndarray | None = None
        self.base_coef_: np.ndarray | None = None
        self.report_: dict = {}
        self.test_points_: pd.DataFrame | None = None
        self.training_hash_: str | None = None
        self.tree_weight_ = 1.0  # the share of the trees' correction kept (twin prior only)

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, widths, latency_ms, device_features, device_cluster) -> Surrogate:
        """Train on measurements of N candidates on D devices.

        Parameters
        ----------
        widths:
            (N, G) candidates.
        latency_ms:
            (N, D) median latency per candidate and device (NaN where missing).
        device_features:
            (D, F) probe vector of each device, in ms.
        device_cluster:
            (D,) cluster of each device.
        """
        widths = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        lat = np.asarray(latency_ms, dtype=np.float64)
        dfeat = np.log(np.asarray(device_features, dtype=np.float64))
        clusters = np.asarray(device_cluster, dtype=np.int64)
        n = len(widths)
        if lat.shape != (n, len(clusters)):
            raise HdapError(f"latency has shape {lat.shape}, expected ({n}, {len(clusters)})")
        if n < 10:
            raise HdapError(f"the surrogate needs at least 10 measured candidates, got {n}; "
                            "measure more samples")
        self.training_hash_ = hashlib.sha256(
            widths.tobytes() + np.nan_to_num(lat).tobytes() + dfeat.tobytes()
            + clusters.tobytes() + json.dumps(asdict(self.options)).encode()
            + json.dumps(self.twin_prior.to_dict() if self.twin_prior else None).encode()).hexdigest()[:16]
        rng = np.random.default_rng(self.options.seed)
        order = rng.permutation(n)
        n_test = max(2, int(round(n * self.options.test_fraction)))
        test, train = np.sort(order[:n_test]), np.sort(order[n_test:])

        twin_check = self._check_twin_prior(widths, lat, dfeat, train, test)
        # Held-out accuracy is measured on one member trained without the test
        # candidates; the ensemble kept is then trained on every candidate.
        self.tree_weight_ = 1.0
        self._train(widths[train], lat[train], dfeat, clusters, members=1)
        weights = self._choose_tree_weight(widths[test], lat[test], dfeat, clusters)
        self._evaluate(widths[test], lat[test], dfeat, clusters, n_train=len(train))
        if twin_check is not None:
            self.report_["twin_prior"] = twin_check
        if weights is not None:
            self.report_["tree_weight"] = weights
        self._train(widths, lat, dfeat, clusters)
        return self

    def _check_twin_prior(self, widths, lat, dfeat, train, test) -> dict | None:
        """Keep the twin prior only where it explains held-out candidates as well as the
        roofline base does (each device's base alone, fitted on the training candidates).

        A twin wrong in shape (another SKU's preset: on MobileNetV1, 7.3 % off in a region
        it was not trained on, against 1.3 % without it) is worse than no prior at all.
        """
        if self.twin_prior is None:
            return None
        phys = physical_features(self.space, widths)
        twin = self._prior_ms(widths, dfeat)
        errors = {}
        for name, terms in (("twin_prior", twin), ("roofline", None)):
            logs = []
            for j in range(lat.shape[1]):
                tr, te = train[np.isfinite(lat[train, j])], test[np.isfinite(lat[test, j])]
                if len(tr) < 3 or not len(te):
                    continue
                coef = _nnls(_base_terms(phys[tr], None if terms is None else terms[tr], j),
                             lat[tr, j])
                pred = _base_terms(phys[te], None if terms is None else terms[te], j) @ coef
                logs.append(np.log(np.maximum(pred, 1e-9) / lat[te, j]))
            errors[name] = float(np.sqrt(np.mean(np.concatenate(logs) ** 2))) if logs \
                else float("nan")
        used = bool(errors["twin_prior"] <= errors["roofline"])
        check = {**self.twin_prior.to_dict(), "used": used,
                 "base_error": errors["twin_prior"], "roofline_error": errors["roofline"]}
        if not used:
            self.twin_prior = None
        return check

    def _choose_tree_weight(self, widths, lat, dfeat, clusters) -> dict | None:
        """With a twin prior, how much of the trees' correction to keep (`tree_weight_`).

        The trees learn what the twin gets wrong; where it gets little wrong, what
        they learn is the measurements' noise, and near the optimum, where candidates
        differ by 1 %, that noise decides the ranking: on the Raspberry Pi 4 twin fleet
        (ResNet-50 at 1.0 G) the surrogate with its trees ranked the search's finalists
        against their true fleet latency (correlation -0.78), while the prior alone
        ranked them right (+1.00), and its held-out error was the same (1.95 % against
        1.94 %: the noise). So the weight is chosen on the held-out candidates, by
        the one-standard-error rule: the smallest weight of `TREE_WEIGHTS` whose
        held-out error is within one standard error of the best weight's. A twin
        wrong in shape gives the trees a clear held-out gain, and they keep it.
        """
        if self.twin_prior is None or self.base_coef_ is None or len(widths) < 2:
            return None
        mean, _ = self._predict_log(widths, dfeat, clusters)
        base = np.log(self._base(widths, dfeat, clusters))
        judged = clusters >= 0
        errors = []
        for a in TREE_WEIGHTS:
            ms = np.exp(base + a * (mean - base))
            rows = [np.log(ms[:, clusters == c].mean(axis=1)
                           / nanmean(lat[:, clusters == c], axis=1))
                    for c in np.unique(clusters[judged])]
            e = np.concatenate(rows) if rows else np.zeros(0)
            errors.append(e)
        ok = np.all([np.isfinite(e) for e in errors], axis=0)
        if ok.sum() < 2:
            return None
        sq = np.stack([e[ok] ** 2 for e in errors])  # (weights, held-out points)
        best = int(np.argmin(sq.mean(axis=1)))
        chosen = best
        for i in range(best):
            diff = sq[i] - sq[best]
            if diff.mean() <= diff.std(ddof=1) / np.sqrt(diff.size):
                chosen = i
                break
        self.tree_weight_ = float(TREE_WEIGHTS[chosen])
        return {"weight": self.tree_weight_,
                "held_out_rms": {str(a): float(np.sqrt(v)) for a, v in
                                 zip(TREE_WEIGHTS, sq.mean(axis=1), strict=True)}}

    def _train(self, widths, lat, dfeat, clusters, members: int | None = None) -> None:
        import xgboost as xgb

        cfeat, _ = candidate_features(self.space, widths)
        self.boosters_ = {}
        jobs = []
        if self.options.mode == "shared":
            if self.options.linear_base:
                phys = physical_features(self.space, widths)
                twin = self._prior_ms(widths, dfeat)
                coef = np.stack([_nnls(_base_terms(phys, twin, j), lat[:, j])
                                 for j in range(lat.shape[1])])
                # A device with (almost) no measurements (its agent failed) has no base
                # of its own; `_base` then lends it the nearest measured device's.
                fitted = (np.isfinite(lat) & (lat > 0)).sum(axis=0) >= 3
                if not fitted.any():
                    raise HdapError("the surrogate needs a device with at least 3 measured "
                                    "candidates; every device's measurements are missing")
                self.base_keys_ = dfeat[fitted].copy()
                self.base_coef_ = coef[fitted]
                if not fitted.all():
                    near = ((dfeat[:, None, :] - self.base_keys_[None]) ** 2).sum(2).argmin(1)
                    coef = self.base_coef_[near]
                lat = lat / _base_ms(phys, twin, coef)
            x, y = _rows(cfeat, lat, dfeat)
            jobs.append((-1, x, y))
        else:
            uniq = np.unique(clusters)
            mean_lat = np.stack([np.nanmean(lat[:, clusters == c], axis=1) for c in uniq], 1)
            if self.options.linear_base:
                phys = physical_features(self.space, widths)
                self.base_keys_ = uniq.astype(np.float64)[:, None]
                self.base_coef_ = np.stack([_nnls(phys, mean_lat[:, i])
                                            for i in range(len(uniq))])
                mean_lat = mean_lat / np.maximum(phys @ self.base_coef_.T, 1e-9)
            for i, c in enumerate(uniq):
                with np.errstate(divide="ignore", invalid="ignore"):
                    y = np.log(mean_lat[:, i])
                ok = np.isfinite(y)
                jobs.append((int(c), cfeat[ok], y[ok]))
        for key, x, y in jobs:
            if len(y) < 5:
                raise HdapError(f"cluster {key} has only {len(y)} measured candidates; "
                                "the surrogate needs more measurements")
            ens = []
            for e in range(members or self.options.ensemble):
                rs = np.random.default_rng(self.options.seed * 1000 + e + 17 * (key + 1))
                # Bootstrap rows (except the first member, trained on all of them).
                idx = np.arange(len(y)) if e == 0 else rs.integers(0, len(y), len(y))
                dm = xgb.DMatrix(x[idx], label=y[idx])
                params = {
                    "objective": "reg:squarederror", "max_depth": self.options.max_depth,
                    "eta": self.options.learning_rate, "subsample": self.options.subsample,
                    "colsample_bytree": self.options.colsample, "tree_method": "hist",
                    "nthread": self.options.threads, "seed": int(rs.integers(0, 2**31 - 1)),
                    "min_child_weight": 1.0 if self.twin_prior is None else TWIN_PRIOR_LEAF_ROWS,
                    "lambda": 1.0, "verbosity": 0,
                }
                ens.append(xgb.train(params, dm, num_boost_round=self.options.n_estimators))
            self.boosters_[key] = ens

    def _evaluate(self, widths, lat, dfeat, clusters, n_train: int) -> None:
        mean, _ = self._predict_log(widths, dfeat, clusters)
        rows = []
        # Cluster -1: earlier studies' devices (a warm start); they train, they are not judged.
        for c in np.unique(clusters[clusters >= 0]):
            m = clusters == c
            # Mean over the measured devices; NaN where none was (agents that failed).
            true_c = nanmean(lat[:, m], axis=1)
            pred_c = np.exp(mean[:, m]).mean(axis=1)
            for i in range(len(widths)):
                if np.isfinite(true_c[i]):
                    rows.append({"cluster": int(c), "candidate": i,
                                 "macs": float(self.space.macs(widths[i])),
                                 "measured_ms": float(true_c[i]), "predicted_ms": float(pred_c[i])})
        df = pd.DataFrame(rows, columns=["cluster", "candidate", "macs", "measured_ms",
                                         "predicted_ms"])
        self.test_points_ = df
        overall = _metrics(df["predicted_ms"].to_numpy(), df["measured_ms"].to_numpy())
        overall["n_train"] = int(n_train)
        per_cluster = []
        for c, sub in df.groupby("cluster"):
            m = _metrics(sub["predicted_ms"].to_numpy(), sub["measured_ms"].to_numpy())
            per_cluster.append({"cluster": int(c), **m, "n_train": int(n_train)})
        self.report_ = {"mode": self.options.mode, "overall": overall,
                        "per_cluster": per_cluster, "n_candidates": int(n_train + len(widths)),
                        "held_out": "candidates not seen in training; final model refit on all"}

    # -- prediction ------------------------------------------------------------------------
    def _predict_log(self, widths, dfeat, clusters) -> tuple[np.ndarray, np.ndarray]:

        if not self.boosters_:
            raise HdapError("the surrogate is not trained yet")
        cfeat, _ = candidate_features(self.space, widths)
        n, d = len(cfeat), len(clusters)
        if self.options.mode == "shared":
            x = _design(cfeat, dfeat)
            preds = np.stack([b.inplace_predict(x) for b in self.boosters_[-1]])  # (E, n*d)
            preds = preds.reshape(len(preds), n, d)
        else:
            members = len(next(iter(self.boosters_.values())))
            preds = np.zeros((members, n, d))
            for c in np.unique(clusters):
                if int(c) not in self.boosters_:
                    raise HdapError(f"the surrogate has no model for cluster {int(c)}")
                p = np.stack([b.inplace_predict(cfeat) for b in self.boosters_[int(c)]])
                preds[:, :, clusters == c] = p[:, :, None]
        mean, std = preds.mean(axis=0), preds.std(axis=0)
        if self.base_coef_ is not None:
            # The trees correct the base by their weight (`_choose_tree_weight`).
            mean, std = self.tree_weight_ * mean, self.tree_weight_ * std
            mean = mean + np.log(self._base(widths, dfeat, clusters))
        return mean, std

    def _base(self, widths, dfeat, clusters) -> np.ndarray:
        """(M, D) linear base latency of every candidate on every device."""
        if self.options.mode == "shared":
            keys = dfeat
        else:
            keys = np.asarray(clusters, dtype=np.float64)[:, None]
        # The nearest trained device (in log probe space): itself when it was measured.
        dist = ((keys[:, None, :] - self.base_keys_[None, :, :]) ** 2).sum(axis=2)
        coef = self.base_coef_[dist.argmin(axis=1)]  # (D, F)
        # A device lends its coefficients only: the prior term is each device's own twin.
        return _base_ms(physical_features(self.space, widths),
                        self._prior_ms(widths, dfeat), coef)

    def _prior_ms(self, widths, dfeat) -> np.ndarray | None:
        """(N, D) the twin prior's latency, or None without a prior."""
        if self.twin_prior is None:
            return None
        return self.twin_prior.ms(self.space, widths, np.exp(dfeat))

    def predict(self, widths, device_features, device_cluster) -> tuple[np.ndarray, np.ndarray]:
        """Latency (M, D) in ms and its relative uncertainty (M, D)."""
        mean, std = self._predict_log(np.atleast_2d(widths),
                                      np.log(np.asarray(device_features, dtype=np.float64)),
                                      np.asarray(device_cluster, dtype=np.int64))
        return np.exp(mean), std

    def predict_clusters(self, widths, device_features, device_cluster,
                         k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Latency (M, k): each cluster's mean over its measured devices; and uncertainty."""
        clusters = np.asarray(device_cluster, dtype=np.int64)
        ms, std = self.predict(widths, device_features, clusters)
        k = int(clusters.max()) + 1 if k is None else k
        out = np.full((ms.shape[0], k), np.nan)
        unc = np.full((ms.shape[0], k), np.nan)
        for c in range(k):
            m = clusters == c
            if m.any():
                out[:, c] = ms[:, m].mean(axis=1)
                unc[:, c] = std[:, m].mean(axis=1)
        return out, unc

    # -- persistence -----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """JSON bytes: options, report, and each booster in XGBoost's JSON format."""
        doc = {
            "format": "hdap-surrogate/1",
            "model": self.space.model,
            "options": asdict(self.options),
            "report": self.report_,
            "training_hash": self.training_hash_,
            "test_points": None if self.test_points_ is None
            else self.test_points_.to_dict(orient="list"),
            "twin_prior": None if self.twin_prior is None else self.twin_prior.to_dict(),
            "base_keys": None if self.base_keys_ is None else self.base_keys_.tolist(),
            "base_coef": None if self.base_coef_ is None else self.base_coef_.tolist(),
            "tree_weight": self.tree_weight_,
            "boosters": {str(k): [base64.b64encode(bytes(b.save_raw("json"))).decode()
                                  for b in ens] for k, ens in self.boosters_.items()},
        }
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, space: PruningSpace, data: bytes) -> Surrogate:
        import xgboost as xgb

        doc = json.loads(data)
        if doc.get("format") != "hdap-surrogate/1" or doc.get("model") != space.model:
            raise HdapError("stored surrogate does not belong to this model; train it again")
        self = cls(space, SurrogatePlan(**doc["options"]), TwinPrior.from_dict(doc.get("twin_prior")))
        self.report_ = doc["report"]
        self.training_hash_ = doc["training_hash"]
        self.tree_weight_ = float(doc.get("tree_weight", 1.0))
        if doc.get("test_points") is not None:
            self.test_points_ = pd.DataFrame(doc["test_points"])
        if doc.get("base_coef") is not None:
            self.base_keys_ = np.array(doc["base_keys"], dtype=np.float64)
            self.base_coef_ = np.array(doc["base_coef"], dtype=np.float64)
        for k, ens in doc["boosters"].items():
            boosters = []
            for raw in ens:
                b = xgb.Booster()
                b.load_model(bytearray(base64.b64decode(raw)))
                b.set_param({"nthread": self.options.threads})
                boosters.append(b)
            self.boosters_[int(k)] = boosters
        return self


def _base_terms(phys: np.ndarray, twin: np.ndarray | None, j: int) -> np.ndarray:
    """Device ``j``'s linear base terms: the roofline terms; with a twin prior, the constant
    and the prior alone.

    The roofline's per-stage terms next to the prior fit the measurement noise of the
    region that was measured and carry it elsewhere: on MobileNetV1 candidates trained
    below half the model's MACs and judged above 0.6 of it, the base was 0.48 % off the
    twin's noiseless latency with them and 0.20 % without.
    """
    return phys if twin is None else np.column_stack([phys[:, :1], twin[:, j]])


def _base_ms(phys: np.ndarray, twin: np.ndarray | None, coef: np.ndarray) -> np.ndarray:
    """(N, D) linear base latency from each device's coefficient row (see `_base_terms`)."""
    if twin is None:
        base = phys @ coef.T
    else:
        base = phys[:, :1] @ coef[:, :1].T + twin * coef[:, 1][None, :]
    return np.maximum(base, 1e-9)


def _design(cfeat: np.ndarray, dfeat: np.ndarray) -> np.ndarray:
    """(candidate, device) rows, candidate-major: candidate features next to device features."""
    n, d = len(cfeat), len(dfeat)
    return np.concatenate([np.repeat(cfeat, d, axis=0), np.tile(dfeat, (n, 1))], axis=1)


def _rows(cfeat: np.ndarray, lat: np.ndarray, dfeat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training rows and log targets of every measured (candidate, device) pair."""
    x = _design(cfeat, dfeat)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(lat.reshape(-1))
    ok = np.isfinite(y)
    return x[ok], y[ok]
