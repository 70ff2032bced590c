"""Every method on the same fleet and budget, verified the same way: `hdap bench`.

Rows hold what a deployment engineer compares: MACs, fleet mean and p95
latency, the worst cluster, speedup over the unpruned model measured the same
way, search time, and how many (device, candidate) measurements the method
needed. Measurements are shared through the store, so the paper's method and
single-device reuse what ours measured and nothing is measured twice.

``oracle`` runs the same search directly on the twin's ground truth over
every device (slow, offline, twin only): it shows how much the surrogate and
the clustering cost. ``sweep`` runs ours and uniform over several budgets for
a Pareto curve.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.latency.backends import HostBackend, TwinBackend
from hdap_engine.latency.store import Store
from hdap_engine.options import StudyOptions
from hdap_engine.pruning.budget import parse_budget
from hdap_engine.search.baselines import uniform_widths
from hdap_engine.search.evolution import evolve
from hdap_engine.search.methods import check_methods, get_method, method_names
from hdap_engine.search.objectives import predicted_fleet_mean
from hdap_engine.study.prepare import StudyContext, prepare
from hdap_engine.study.run import optimize
from hdap_engine.study.verify import fleet_metrics, verify_candidate

ROW_KEYS = ("method", "macs", "fleet_mean_ms", "p95_ms", "worst_cluster_ms", "speedup",
            "search_s", "device_measurements", "device_s")


def _row(ctx: StudyContext, method: str, widths, search_s: float, measurements: int,
         unpruned_mean: float, device_s: float = 0.0) -> dict:
    val = verify_candidate(ctx, widths)
    obj = ctx.fleet_objective()
    fm = fleet_metrics(ctx, val, obj)
    return {
        "method": method,
        "macs": float(ctx.space.macs(widths)),
        "fleet_mean_ms": fm["measured_mean_ms"],
        "p95_ms": fm["measured_p95_ms"],
        "worst_cluster_ms": fm["worst_cluster_ms"],
        "speedup": unpruned_mean / fm["measured_mean_ms"],
        "search_s": search_s,
        "device_measurements": int(measurements),
        "device_s": float(device_s),
        "cluster_ms": [float(x) for x in val.cluster_measured_ms],
        "widths": [int(x) for x in widths],
        "accuracy": _accuracy(ctx, widths),
    }


def _accuracy(ctx: StudyContext, widths) -> dict:
    """The row's accuracy block: held-out top-1 pruned and calibrated (unknown without data)."""
    from hdap_engine.accuracy.study import candidate_block

    return candidate_block(ctx.accuracy, ctx.space, np.asarray(widths))


def _check_floor_finetuned(block: dict, min_accuracy, metric: str) -> None:
    """Every fine-tuned row against the study's floor, held out (`floor.finetuned_check`):
    what ships is the fine-tuned model, whichever method chose its widths."""
    from hdap_engine.accuracy.floor import finetuned_check, parse_floor

    floor = parse_floor(min_accuracy)
    if floor is None:
        return
    rule = floor.as_dict(metric)
    block["floor"] = {**(block.get("floor") or rule),
                      **finetuned_check(rule, block.get("unpruned"), block.get("finetuned"))}


def _unpruned_mean(ctx: StudyContext) -> float:
    unpruned = verify_candidate(ctx, ctx.space.base_widths)
    return fleet_metrics(ctx, unpruned, ctx.fleet_objective())["measured_mean_ms"]


def run_bench(options: StudyOptions, telemetry, *, methods=None, oracle: bool = False,
              store: Store | None = None, progress: Progress = no_progress) -> dict:
    """Run ``methods`` (default: every registered one) and optionally the oracle on one fleet.

    Every method is searched in its own prepared study (methods of one family
    share it) and verified in the study of ``options.method``; the store
    shares measurements, so nothing is measured twice.

    Returns
    -------
    {model, budget, budget_macs, backend, measured_source, fleet, n_devices, k,
    unpruned_mean_ms, rows, surrogate}; one row per method (`ROW_KEYS` and more).
    """
    if options.query.latency_ms is not None:
        raise HdapError("hdap bench compares every method at one MACs budget; give --macs "
                        "(--latency-budget is for hdap optimize and the app's studies)")
    store = store or Store()
    methods = check_methods(method_names() if methods is None else methods)
    contexts: dict[tuple, StudyContext] = {}

    def context_for(name: str) -> StudyContext:
        spec = get_method(name)
        family = spec.context_family
        if family not in contexts:
            first = next(iter(contexts.values()), None)
            contexts[family] = prepare(options.updated(method=name), telemetry, store=store,
                                       progress=progress,
                                       fleet=first.fleet if first else None,
                                       clustering=first.clustering if first else None,
                                       telemetry_path=telemetry)
        return contexts[family]

    base_ctx = context_for(options.method)
    unpruned_mean = _unpruned_mean(base_ctx)
    target = parse_budget(options.query.budget, base_ctx.space)
    rows = []
    surrogate = base_ctx.surrogate
    for name in methods:
        spec = get_method(name)
        ctx = base_ctx if not spec.searches else context_for(name)
        res = optimize(ctx, method=name, progress=progress)
        row = _row(base_ctx, name, res.widths, res.search_s, res.device_measurements,
                   unpruned_mean, res.device_s)
        row["optimize_s"] = res.optimize_s  # refinement measurements and refits included
        row["measurement"] = res.measurement  # pairs, warm start, why it stopped
        row["search_accuracy"] = res.accuracy  # the floor and accuracy surrogate, if any
        if options.accuracy.finetune_epochs and base_ctx.accuracy is not None:
            from hdap_engine.finetune.run import finetune_candidate

            # Every method's model through the same recipe: accuracy after fine-tuning.
            row["accuracy"] = finetune_candidate(
                base_ctx.accuracy, base_ctx.space, res.widths, row["accuracy"],
                epochs=options.accuracy.finetune_epochs, seed=options.seed)
            _check_floor_finetuned(row["accuracy"], options.accuracy.min_accuracy,
                                   base_ctx.accuracy.metric)
        rows.append(row)
        if name == options.method and res.learned is not None:
            surrogate = res.learned.surrogate  # as the study's own search left it
    out = {"model": options.model, "budget": str(options.query.budget), "budget_macs": target,
           "backend": base_ctx.backend.name, "measured_source": base_ctx.backend.source,
           "fleet": base_ctx.fleet.source, "n_devices": int(base_ctx.fleet.n_devices),
           "k": base_ctx.k, "unpruned_mean_ms": unpruned_mean, "rows": rows,
           "surrogate": surrogate.report_ if surrogate is not None else None}
    if oracle:
        out["rows"].append(run_oracle(base_ctx, target, unpruned_mean, progress=progress))
    if isinstance(base_ctx.backend, HostBackend):
        _interleaved_host_verification(base_ctx, out, progress)
    return out


def _interleaved_host_verification(ctx: StudyContext, out: dict, progress: Progress,
                                 repeats: int = 30) -> None:
    """Time every method's model and the unpruned one together, interleaved, afresh.

    Verified one by one, methods would be timed minutes apart while the machine's
    speed drifts (timing drift); interleaving round by round makes their ratio fair.
    """
    widths = np.array([r["widths"] for r in out["rows"]] + [ctx.space.base_widths.tolist()])
    progress("verify", 0, 1)
    meas = ctx.backend.measure(ctx.space, widths, list(ctx.rep_devices[:1]), repeats=repeats,
                               warmup=3, store=None)
    progress("verify", 1, 1)
    unpruned = float(meas.median_ms[-1, 0])
    for i, row in enumerate(out["rows"]):
        ms = float(meas.median_ms[i, 0])
        row.update(fleet_mean_ms=ms, p95_ms=float(np.percentile(meas.times_ms[i][0], 95)),
                   worst_cluster_ms=ms, speedup=unpruned / ms,
                   spread_ms=float(meas.spread_ms[i, 0]))
    out["unpruned_mean_ms"] = unpruned
    out["verification"] = (f"all models timed together on this machine, interleaved, "
                           f"{repeats} rounds; p95 is over those runs")
    out["notes"] = meas.notes


def run_oracle(ctx: StudyContext, target: float, unpruned_mean: float, *,
               progress: Progress = no_progress) -> dict:
    """The search on the twin's noiseless ground truth, averaged over every device."""
    if not isinstance(ctx.backend, TwinBackend):
        raise HdapError("the oracle needs the twin backend: it reads every device's latent state")
    devices = list(ctx.fleet.device_ids)
    states = ctx.backend.states_for(devices)
    twin = ctx.backend.twin

    def fitness(widths):
        return twin.latency_ms(ctx.space.layer_table(widths), states, noise=False).mean(axis=1)

    def tick(gen, total):
        progress("oracle", gen, total)

    t0 = time.perf_counter()
    res = evolve(ctx.space, target, fitness, ctx.options.search,
                 seeds=uniform_widths(ctx.space, target)[None], progress=tick)
    row = _row(ctx, "oracle", res.widths, time.perf_counter() - t0,
               len(devices) * res.evaluations, unpruned_mean)
    # What timing every evaluation on every device would cost: each at the verified fleet
    # mean, with the study's repeats and warm-up (an estimate: no device timed anything).
    m = ctx.options.measurement
    row["device_s"] = (row["device_measurements"] * (m.repeats + m.warmup)
                       * row["fleet_mean_ms"] / 1e3)
    return row


def run_sweep(options: StudyOptions, telemetry, budgets: list[str], *,
              store: Store | None = None, progress: Progress = no_progress) -> dict:
    """Ours and uniform over several budgets (a Pareto curve of MACs vs fleet latency)."""
    ours = options.method if options.method_spec.searches else method_names(searches=True)[0]
    ctx = prepare(options.updated(method=ours), telemetry, store=store, progress=progress)
    return sweep_context(ctx, budgets, progress=progress)


def sweep_budgets(space, n: int = 5, *, low: float = 0.15, high: float = 0.8) -> list[str]:
    """``n`` budgets spread geometrically from ``low`` to ``high`` of the model's MACs.

    The low end is raised to 1.2x the smallest candidate the space allows, so
    every budget can be met.

    Parameters
    ----------
    space:
        The pruning space.
    n:
        Number of budgets (>= 2).
    low, high:
        Fractions of the unpruned model's MACs at the ends.

    Returns
    -------
    Budgets as fractions of the model (``"0.15"`` ...), ascending.
    """
    if n < 2 or not 0 < low < high <= 1:
        raise HdapError(f"a sweep needs n >= 2 and 0 < low < high <= 1, got n={n}, "
                        f"low={low}, high={high}")
    floor = 1.2 * space.min_macs / space.base_macs
    low = min(max(low, floor), high * 0.9)
    fractions = np.geomspace(low, high, n)
    return [f"{f:.4f}" for f in fractions]


def sweep_context(ctx: StudyContext, budgets: list[str], *, methods=None, plan=None,
                  learned=None, progress: Progress = no_progress) -> dict:
    """Several budgets searched and verified on a prepared context (nothing re-learned).

    Parameters
    ----------
    ctx:
        A context prepared for a search method (its surrogate is reused).
    budgets:
        Budgets as `parse_budget` reads them.
    methods:
        Methods run at each budget (default: the context's method and uniform).
    plan:
        The search plan (default: the context's). With ``refine_rounds=0`` the
        surrogate stays as it is and only each budget's finalists are measured.
    learned:
        What a run on this context already measured and learned (default: the
        context's samples). Each budget's search starts from what the previous
        one learned.
    progress:
        Called with ("sweep", done, total).

    Returns
    -------
    {model, measured_source, unpruned_mean_ms, points: [row + budget]}; rows as `run_bench`'s.
    """
    methods = check_methods(dict.fromkeys(methods or (ctx.options.method, "uniform")))
    unpruned_mean = _unpruned_mean(ctx)
    learned = learned or ctx.learned
    points = []
    total = len(budgets) * len(methods)
    progress("sweep", 0, total)
    for budget in budgets:
        query = replace(ctx.options.query, budget=budget)
        for name in methods:
            res = optimize(ctx, query, method=name, plan=plan, learned=learned)
            if get_method(name).searches:
                learned = res.learned
            row = _row(ctx, name, res.widths, res.search_s, 0, unpruned_mean)
            row["optimize_s"] = res.optimize_s
            row["search_accuracy"] = res.accuracy
            row["budget"] = budget
            row["budget_macs"] = float(res.target_macs)
            if res.predicted_cluster_ms is not None:
                row["predicted_mean_ms"] = predicted_fleet_mean(res.predicted_cluster_ms,
                                                                ctx.clustering.shares_)
            points.append(row)
            progress("sweep", len(points), total)
    return {"model": ctx.space.model, "measured_source": ctx.backend.source,
            "unpruned_mean_ms": unpruned_mean, "points": points}


def compare_context(ctx: StudyContext, budget, methods=("uniform", "global"), *,
                    widths=None, device_measurements: int = 0, telemetry_path=None,
                    progress: Progress = no_progress) -> dict:
    """Other methods at the same budget, verified like ours, on a prepared context.

    Methods of the context's family (and the baselines) reuse ``ctx``; other
    searching methods (the paper's, single-device) train their own surrogates
    on measurements the store mostly holds already.

    Parameters
    ----------
    ctx:
        The prepared context of our study.
    budget:
        The budget all methods meet.
    methods:
        Methods to compare (registered names); ours (the context's) is added first.
    widths, device_measurements:
        Our candidate when it is already chosen, and what it took to choose it
        (else it is searched again).
    telemetry_path:
        The telemetry file, for methods that prepare their own context (twin sidecar).
    progress:
        Called with ("compare", done, total).

    Returns
    -------
    {budget_macs, measured_source, unpruned_mean_ms, rows}; rows as `run_bench`'s.
    """
    ours = ctx.options.method
    wanted = check_methods([ours] + [m for m in methods if m != ours])
    unpruned_mean = _unpruned_mean(ctx)
    query = replace(ctx.options.query, budget=str(budget))
    rows = []
    progress("compare", 0, len(wanted))
    for i, name in enumerate(wanted):
        spec = get_method(name)
        if name == ours and widths is not None:
            rows.append(_row(ctx, name, np.asarray(widths), 0.0, device_measurements,
                             unpruned_mean))
        else:
            own = ctx
            if spec.searches and spec.context_family != ctx.options.method_spec.context_family:
                own = prepare(ctx.options.updated(method=name), None, store=ctx.store,
                              fleet=ctx.fleet, clustering=ctx.clustering,
                              telemetry_path=telemetry_path)
            res = optimize(own, query, method=name)
            rows.append(_row(ctx, name, res.widths, res.search_s, res.device_measurements,
                             unpruned_mean, res.device_s))
        progress("compare", i + 1, len(wanted))
    return {"budget_macs": float(parse_budget(budget, ctx.space)),
            "measured_source": ctx.backend.source, "unpruned_mean_ms": unpruned_mean,
            "rows": rows}


def clustering_check(options: StudyOptions, telemetry, *, candidates: int = 10,
                     store: Store | None = None, progress: Progress = no_progress) -> dict:
    """What clustering buys: representatives' estimate vs every device's ground truth.

    For random candidates, the device-share-weighted mean of each cluster's
    measured representatives is compared with the twin's mean over every
    device of the fleet (twin only: only a simulation can measure them all).
    """
    from hdap_engine.latency.sampling import sample_candidates

    ctx = prepare(options.updated(method="uniform"), telemetry, store=store, progress=progress)
    if not isinstance(ctx.backend, TwinBackend):
        raise HdapError("the clustering check needs the twin backend (ground truth on every "
                        "device)")
    widths = sample_candidates(ctx.space, candidates, seed=options.seed + 1)
    repeats = options.measurement.repeats
    meas = ctx.backend.measure(ctx.space, widths, list(ctx.rep_devices), repeats=repeats,
                               store=ctx.store)
    shares = ctx.clustering.shares_
    rows = []
    devices = list(ctx.fleet.device_ids)
    for i, w in enumerate(widths):
        per_cluster = [meas.median_ms[i, ctx.rep_clusters == c].mean() for c in range(ctx.k)]
        estimate = float(sum(s * m for s, m in zip(shares, per_cluster, strict=True)))
        truth = float(ctx.backend.measure_fleet(ctx.space, w, devices,
                                                repeats=repeats).mean())
        rows.append({"candidate": i, "macs": float(ctx.space.macs(w)), "estimate_ms": estimate,
                     "fleet_mean_ms": truth, "error": estimate / truth - 1})
    errors = np.abs([r["error"] for r in rows])
    return {"model": options.model, "fleet": ctx.fleet.source, "n_devices": ctx.fleet.n_devices,
            "k": ctx.k, "devices_measured": len(ctx.rep_devices),
            "reduction": ctx.fleet.n_devices / len(ctx.rep_devices),
            "max_abs_error": float(errors.max()), "mean_abs_error": float(errors.mean()),
            "rows": rows}


def format_rows(rows: list[dict]) -> list[dict]:
    """Rows as short strings for a terminal table."""
    from hdap_engine.accuracy.study import accuracy_columns

    out = []
    for r in rows:
        out.append({
            "method": r["method"],
            "MACs": f"{r['macs'] / 1e9:.3f} G",
            "fleet mean ms": f"{r['fleet_mean_ms']:.2f}",
            "p95 ms": f"{r['p95_ms']:.2f}",
            "worst cluster ms": f"{r['worst_cluster_ms']:.2f}",
            "speedup": f"{r['speedup']:.2f}x",
            "search s": f"{r['search_s']:.1f}",
            "device measurements": f"{r['device_measurements']:,}",
            "device s": f"{r.get('device_s', 0.0):,.1f}",
            **accuracy_columns(r.get("accuracy")),
        })
    return out




