"""A study's report.json: what was pruned, how, to which budget, and everything measured.

Plain data built from a `StudyResult` (`hdap_engine.study.run`): the
per-cluster predicted and measured latency, fleet metrics, accuracy, notes
and the settings that reproduce the run; `history_entry` is its one-line
summary for the store's run history. The HTML page is `report.page`.
"""

from __future__ import annotations

# -- report.json of a study -----------------------------------------------------------------

def build_report(result) -> dict:
    """The report.json content of a study (plain data).

    Parameters
    ----------
    result:
        A `hdap_engine.study.StudyResult`.
    """
    import numpy as np

    from hdap_engine.models.zoo import resolve_model, weights_label
    from hdap_engine.search.objectives import predicted_fleet_mean
    from hdap_engine.study.verify import fleet_metrics

    ctx = result.context
    val, base = result.verification, result.unpruned
    fm = fleet_metrics(ctx, val, result.objective)
    fb = fleet_metrics(ctx, base, result.objective)
    clusters = []
    profiles = ctx.clustering.profiles_
    for c in range(ctx.k):
        reps = [d for d, cc in zip(ctx.rep_devices, ctx.rep_clusters, strict=True) if cc == c]
        clusters.append({
            "cluster": c,
            "devices": int(profiles.loc[profiles["cluster"] == c, "devices"].iloc[0]),
            "share": float(ctx.clustering.shares_[c]),
            "weight": float(result.cluster_weights[c]),
            "predicted_ms": None if result.predicted_cluster_ms is None
            else float(result.predicted_cluster_ms[c]),
            "measured_ms": float(val.cluster_measured_ms[c]),
            "measured_spread_ms": float(val.cluster_spread_ms[c]),
            "unpruned_ms": float(base.cluster_measured_ms[c]),
            "representatives": reps,
            # The devices whose numbers these are: a failed representative's replacement.
            "measured_devices_ms": {(ctx.backend.measured_device(d) or d):
                                    val.device_measured_ms[d]
                                    for d in reps if np.isfinite(val.device_measured_ms[d])},
        })
    predicted_mean = None
    if result.predicted_cluster_ms is not None:
        predicted_mean = predicted_fleet_mean(result.predicted_cluster_ms,
                                              ctx.clustering.shares_)
    opt = ctx.options
    surrogate = result.surrogate
    notes = (list(ctx.notes) + ctx.space.notes()
             + list(result.learned.notes if result.learned else ()) + val.notes
             + list((getattr(result, "search_accuracy", None) or {}).get("notes") or ()))
    fit = getattr(result, "latency_fit", None)
    report = {
        "method": result.method,
        # The MACs budget searched at (a latency budget's is the one found for it), so that
        # comparisons, rollouts and drift checks of this run read it as any other.
        "budget": str(opt.query.budget) if fit is None else f"{fit.macs:.0f}",
        # A latency budget: what was asked, the MACs found, and the measured objective.
        "latency_budget": None if fit is None else fit.record(_measured_objective(
            ctx, opt.query, val, fm)),
        "budget_macs": result.target_macs,
        "objective": result.objective.kind,
        "objective_label": result.objective.label,
        "cluster_weights_source": "user" if opt.query.cluster_weights else "device shares",
        "backend": ctx.backend.name,
        "measured_source": ctx.backend.source,
        "fleet_source": ctx.fleet.source,
        "n_devices": int(ctx.fleet.n_devices),
        "k": ctx.k,
        "model_weights": weights_label(opt.model_weights, opt.model),
        "model_ref": resolve_model(opt.model, model_weights=opt.model_weights).to_json(),
        "seed": opt.seed,
        "pruning_space": ctx.space.report(),
        "clusters": clusters,
        "fleet": {
            "predicted_mean_ms": predicted_mean,
            "measured_mean_ms": fm["measured_mean_ms"],
            "measured_p95_ms": fm["measured_p95_ms"],
            "worst_cluster_ms": fm["worst_cluster_ms"],
            "unpruned_mean_ms": fb["measured_mean_ms"],
            "unpruned_p95_ms": fb["measured_p95_ms"],
            "speedup": fb["measured_mean_ms"] / fm["measured_mean_ms"],
            "basis": fm["basis"],
        },
        "search_s": result.search_s,
        "optimize_s": result.optimize_s,
        "device_measurements": result.device_measurements,
        # Seconds of timing on devices, and how the sequential measurement stopped.
        "device_s": getattr(result, "device_s", 0.0),
        "measurement": getattr(result, "measurement", None),
        "surrogate": None if surrogate is None else surrogate.report_,
        "notes": list(dict.fromkeys(notes)),
        "settings": opt.settings(),
    }
    twin = getattr(ctx.backend, "twin", None)
    if twin is not None:  # which figures rest on the twin's stated fallback, not its physics
        report["pruning_space"]["twin_fallback_layers"] = twin.fallback_layers(
            ctx.space.layer_table(result.widths))
    report.update(accuracy_report(result))
    details = ctx.backend.details()
    if details is not None:
        report[ctx.backend.name] = details
    return report


def _measured_objective(ctx, query, val, fm) -> float:
    """The query's fleet objective, measured: p95 over the devices measured (every device
    with the twin), not the model of it the search used; the others from the clusters."""
    if query.objective == "p95":
        return float(fm["measured_p95_ms"])
    return float(ctx.fleet_objective(query)(val.cluster_measured_ms[None])[0])


def accuracy_report(result) -> dict:
    """``{"accuracy": ..., "preprocess": ...}`` of a study (accuracy unknown without --data).

    Held-out figures come from ``result.accuracy`` (stage -> `Evaluation`); the
    search's floor, threshold and accuracy surrogate from ``result.search_accuracy``.
    """
    from hdap_engine.accuracy.report import accuracy_block, preprocess_block

    acc = result.context.accuracy
    if acc is None:
        return {"accuracy": accuracy_block(None), "preprocess": None}
    search = result.search_accuracy or {}
    floor = None
    if search.get("floor"):
        floor = {**search["floor"], "threshold": search.get("threshold"),
                 "requested_threshold": search.get("requested_threshold"),
                 "checked_on": search.get("checked_on", "calibrated"),
                 "unpruned_calibrated": search.get("unpruned_calibrated"),
                 "uniform_calibrated": search.get("uniform_calibrated"),
                 "evaluated": search.get("evaluated"),
                 "chosen_calibrated": search.get("chosen_calibrated"),
                 "on": f"{acc.calib.n_eval} calibration images of --data"}
    block = accuracy_block(acc.data, **dict(result.accuracy), n_calibration=acc.calib.n_bn,
                           floor=floor, surrogate=search.get("surrogate"), metric=acc.metric)
    return {"accuracy": block, "preprocess": preprocess_block(acc.data)}


def history_entry(result) -> dict:
    """What the run history keeps of a study (the store's runs table)."""
    r = result.report
    space = result.context.space
    return {k: r[k] for k in ("method", "budget", "budget_macs", "objective", "backend",
                              "measured_source", "fleet_source", "clusters", "fleet",
                              "search_s", "device_measurements", "notes", "accuracy")} | {
        "widths": space.widths_dict(result.widths),
        "macs": float(space.macs(result.widths)),
        "model": space.model,
        "bundle": str(result.bundle) if result.bundle else None,
    }
