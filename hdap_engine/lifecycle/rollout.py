"""A rollout plan with model variants: would a few models, one per group of clusters, pay off?

`plan_rollout` prepares the study once (clusters, representatives, sampled
measurements, surrogate) and then, for K' = 1..K variants:

1. each cluster's own best model (a search with all the weight on that
   cluster, on the surrogate, nothing measured) is predicted on every other
   cluster: ``regret[a, b]`` = how much slower cluster b runs a's best model
   than its own;
2. clusters are grouped by that regret (average-linkage agglomerative
   clustering on the symmetrised regret, weighted by nothing but the
   latencies): clusters that prefer alike architectures share a variant;
3. one model per group is searched with the study's objective and budget,
   the group's clusters weighted by their device shares;
4. every variant is measured on its clusters' representatives, and the plan's
   fleet mean, p95 (mixture of the clusters' dispersions) and worst cluster
   come from those measurements.

The one-model plan (K' = 1) is always measured too, and a plan whose measured
fleet mean is not better than it is replaced by it (``fell_back``), so no plan
is ever worse than one model. A gain smaller than the measurement noise (the
typical spread of one candidate's runs relative to its latency) is flagged
``within_noise``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.options import StudyOptions
from hdap_engine.prepare import Progress, StudyContext, no_progress, prepare
from hdap_engine.search.objectives import mixture_quantile


def _group(regret: np.ndarray, n_groups: int) -> list[list[int]]:
    """Average-linkage grouping of clusters on a symmetric regret matrix."""
    k = len(regret)
    d = 0.5 * (regret + regret.T)
    groups = [[c] for c in range(k)]
    while len(groups) > n_groups:
        best, pair = np.inf, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                v = float(np.mean([d[a, b] for a in groups[i] for b in groups[j]]))
                if v < best:
                    best, pair = v, (i, j)
        i, j = pair
        groups[i] = sorted(groups[i] + groups[j])
        del groups[j]
    return sorted(groups, key=lambda g: g[0])


def plan_rollout(options: StudyOptions, telemetry, *, variants: int = 3, store=None,
                 progress: Progress = no_progress, context: StudyContext | None = None) -> dict:
    """Plans with 1..`variants` model variants for one fleet, each measured.

    Parameters
    ----------
    options:
        The study (model, budget, objective, backend, search effort).
    telemetry:
        A telemetry path or `Fleet`.
    variants:
        The most variants to consider (capped at the number of clusters).
    store:
        The measurement store (default: the workspace's).
    progress:
        Called with (stage, step, total).
    context:
        An already prepared study of this fleet, to reuse.

    Returns
    -------
    ``{"plans": [...], "k", "measured_source", "one_model_mean_ms", "noise", "regret"}``;
    each plan has ``variants``, ``fleet_mean_ms``, ``p95_ms``, ``worst_cluster_ms``,
    ``gain_vs_one_model``, ``within_noise``, ``fell_back``, ``assignment``
    ({cluster: variant}), ``widths`` (one list per variant) and
    ``cluster_ms`` (each cluster on its variant, measured).
    """
    from hdap_engine.options import Query
    from hdap_engine.study import optimize
    from hdap_engine.verify import verify_candidate

    if variants < 1:
        raise HdapError(f"--variants must be at least 1, got {variants}")
    ctx = context or prepare(options, telemetry, store=store, progress=progress)
    k = ctx.k
    shares = np.asarray(ctx.clustering.weights_, dtype=np.float64)
    query = ctx.options.query
    search = ctx.fleet_search()
    quick = ctx.options.search.quick()

    # 1. Every cluster's own best model, predicted everywhere.
    own = []
    for c in range(k):
        q = Query(budget=query.budget, objective="mean", cluster_weights={c: 1.0})
        own.append(optimize(ctx, q, plan=quick).widths)
    pred = search.predict_clusters(ctx.surrogate, np.stack(own))  # (k models, k clusters)
    diag = np.diag(pred)
    regret = pred / diag[None, :] - 1.0

    measured: dict[tuple[int, ...], np.ndarray] = {}
    spreads: list[float] = []

    def variant_for(group: list[int]):
        key = tuple(group)
        if key not in measured:
            w = {c: float(shares[c]) for c in group}
            q = Query(budget=query.budget, objective=query.objective, slo_ms=query.slo_ms,
                      cluster_weights=w)
            chosen = optimize(ctx, q if len(group) < k else None, progress=progress)
            v = verify_candidate(ctx, chosen.widths, every_device=False, progress=progress)
            spreads.extend((v.cluster_spread_ms / v.cluster_measured_ms)[list(group)].tolist())
            measured[key] = (chosen.widths, v.cluster_measured_ms)
        return measured[key]

    def summary(groups: list[list[int]]) -> dict:
        cluster_ms = np.full(k, np.nan)
        widths, assignment = [], {}
        for i, g in enumerate(groups):
            w, cms = variant_for(g)
            widths.append([int(x) for x in w])
            for c in g:
                cluster_ms[c] = cms[c]
                assignment[c] = i
        mean = float(np.sum(cluster_ms * shares))
        p95 = float(mixture_quantile(cluster_ms[None], shares, ctx.dispersion, 0.95)[0])
        return {"variants": len(groups), "groups": groups, "assignment": assignment,
                "widths": widths, "cluster_ms": [float(x) for x in cluster_ms],
                "fleet_mean_ms": mean, "p95_ms": p95, "worst_cluster_ms": float(np.max(cluster_ms))}

    one = summary([list(range(k))])
    plans = [dict(one, gain_vs_one_model=0.0, within_noise=False, fell_back=False)]
    for n in range(2, min(variants, k) + 1):
        plan = summary(_group(regret, n))
        gain = (one["fleet_mean_ms"] - plan["fleet_mean_ms"]) / one["fleet_mean_ms"]
        fell_back = gain <= 0
        if fell_back:
            # Never worse than one model: the one-model plan stands in for it.
            plan = dict(one, variants=n, groups=plan["groups"])
            gain = 0.0
        plans.append(dict(plan, gain_vs_one_model=gain, fell_back=fell_back))
    noise = float(np.nanmedian(spreads)) if spreads else 0.0
    for p in plans[1:]:
        p["within_noise"] = bool(p["gain_vs_one_model"] <= noise)
    return {"plans": plans, "k": k, "measured_source": ctx.backend.source,
            "one_model_mean_ms": one["fleet_mean_ms"], "noise": noise,
            "regret": [[float(x) for x in row] for row in regret],
            "shares": [float(s) for s in shares], "context": ctx}




def recommended(result: dict) -> dict:
    """The plan to roll out: the most variants whose gain is real (beyond noise), else one model."""
    good = [p for p in result["plans"] if p["variants"] == 1 or
            (not p["fell_back"] and not p["within_noise"])]
    return max(good, key=lambda p: (p["gain_vs_one_model"], -p["variants"]))


def write_rollout(result: dict, out_dir, *, bundles: bool = True) -> Path:
    """Write ``rollout.json``, one device CSV per plan, and a bundle per variant of the recommended plan.

    Parameters
    ----------
    result:
        What `plan_rollout` returned.
    out_dir:
        The folder to write (created).
    bundles:
        Also prune and export one bundle per variant of the recommended plan.

    Returns
    -------
    The folder.
    """
    import json

    import pandas as pd

    from hdap_engine.export import export_bundle
    from hdap_engine.jsonable import jsonable
    from hdap_engine.models.zoo import build_model
    from hdap_engine.pruning.apply import prune_to_widths

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = result["context"]
    labels = ctx.clustering.labels_
    ids = ctx.fleet.device_ids
    best = recommended(result)
    plans = []
    for p in result["plans"]:
        variant = np.array([p["assignment"][c] for c in range(ctx.k)])[labels]
        name = f"devices_{p['variants']}_variants.csv"
        pd.DataFrame({"device_id": ids, "cluster": labels, "variant": variant}).to_csv(
            out / name, index=False)
        plans.append({k: v for k, v in p.items()} | {
            "devices_csv": name,
            "devices_per_variant": {int(v): int((variant == v).sum()) for v in np.unique(variant)},
            "assignment": {str(c): int(v) for c, v in p["assignment"].items()}})
    doc = {"plans": plans, "recommended_variants": best["variants"], "k": result["k"],
           "measured_source": result["measured_source"], "noise": result["noise"],
           "model": ctx.options.model, "budget": ctx.options.query.budget,
           "objective": ctx.options.query.objective}
    if bundles:
        doc["bundles"] = []
        for i, w in enumerate(best["widths"]):
            model = build_model(ctx.options.model, ctx.options.model_weights, seed=ctx.options.seed)
            kept = prune_to_widths(model, ctx.space, np.asarray(w))
            clusters = [c for c, v in best["assignment"].items() if v == i]
            report = {"settings": ctx.options.settings(), "variant": i, "clusters": clusters,
                      "measured_source": result["measured_source"]}
            path = export_bundle(model, ctx.space, np.asarray(w), out / f"variant_{i}", report,
                                 kept=kept)
            doc["bundles"].append({"variant": i, "clusters": clusters, "bundle": path.name})
    (out / "rollout.json").write_text(json.dumps(jsonable(doc), indent=1))
    return out


__all__ = ["plan_rollout", "recommended", "write_rollout"]
