"""One study end to end, as the CLI and the app call it: a short orchestration of named steps.

    prepare (fleet, clusters, backend, sampled measurements, surrogate)   prepare.py
    -> optimize (the method's rule, or its FleetSearch for the budget)   search/
    -> prune (Torch-Pruning)                                             pruning/apply.py
    -> verify (measured per cluster, every device with the twin)         verify.py
    -> report, export, record                                            report/, export/

`prepare` does the expensive part once and returns a read-only
`StudyContext`; `optimize` answers any query (budget, objective, cluster
weights) on it in seconds and returns what it measured and learned in its
result, never in the context; `run_study` chains the steps. Progress is
reported as (stage, step, total). The methods (`hdap`, `paper`,
`single-device`, `uniform`, `global`, and any registered later) are entries of
`hdap_engine.search.methods`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import nn

from hdap_engine.accuracy.guide import accuracy_guide
from hdap_engine.errors import HdapError
from hdap_engine.export.bundle import export_bundle
from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.latency.store import Store
from hdap_engine.models.zoo import build_model
from hdap_engine.options import WHAT_IF_SETTINGS, Query, SearchPlan, StudyOptions
from hdap_engine.pruning.apply import prune_to_widths
from hdap_engine.pruning.budget import format_macs, parse_budget
from hdap_engine.report.build import build_report, history_entry
from hdap_engine.search.learned import Learned
from hdap_engine.search.methods import get_method
from hdap_engine.search.objectives import Objective
from hdap_engine.study.latency_budget import CORRECTIONS, TOLERANCE, LatencyFit, fit_macs
from hdap_engine.study.prepare import StudyContext, prepare
from hdap_engine.study.verify import Verification, verify_candidate


@dataclass(frozen=True)
class Optimized:
    """A chosen candidate, what the surrogate predicts for it, and what it took."""

    method: str
    widths: np.ndarray
    target_macs: float
    predicted_cluster_ms: np.ndarray | None
    objective: Objective
    optimize_s: float  # the whole optimisation, refinement measurements and refits included
    search_s: float  # the surrogate-driven search alone (a baseline: its rule)
    device_measurements: int  # pairs measured for this answer, the sampling included
    learned: Learned | None = None  # what the method measured and learned, this run included
    device_s: float = 0.0  # seconds of timing on devices those measurements cost
    history: list[float] = field(default_factory=list)
    accuracy: dict | None = None  # the accuracy guide's summary (floor, surrogate) with --data
    latency_fit: LatencyFit | None = None  # the MACs found for a latency budget

    @property
    def measurement(self) -> dict | None:
        """Measurements used and why the sequential measurement stopped (None: fixed plan)."""
        return measurement_record(self.learned, self.device_measurements, self.device_s)


def measurement_record(learned: Learned | None, used: int, device_s: float) -> dict | None:
    """What the study measured: pairs, device seconds, warm start, and the stopping rule's
    record (`hdap_engine.search.sequential`); None for methods that measure nothing."""
    if learned is None:
        return None
    prior = learned.prior
    return {"device_measurements": int(used), "device_s": float(device_s),
            "warm_start_measurements": 0 if prior is None else prior.pairs,
            "settled_clusters": [int(c) for c in learned.settled],
            "known_clusters": [int(c) for c in learned.known],
            "repeats": None if learned.repeats is None else list(learned.repeats),
            "stop": learned.stop}


def optimize(ctx: StudyContext, query: Query | None = None, *, method: str | None = None,
             plan: SearchPlan | None = None, learned: Learned | None = None,
             model: nn.Module | None = None, progress: Progress = no_progress) -> Optimized:
    """The best candidate for a query: the method's rule, or its search on the surrogate.

    Parameters
    ----------
    ctx:
        A prepared study (not changed).
    query:
        Budget, objective, cluster weights, SLO (default: the study's).
    method:
        A registered method (default: the study's). A searching method must be
        of the family the context was prepared for (same devices, same surrogate).
    plan:
        The search plan (default: the study's); `SearchPlan.quick` gives the
        fastest what-if answer, measuring nothing.
    learned:
        What an earlier run on this context measured and learned, to start from
        (default: the context's sampled measurements).
    model:
        The model, for rules that read its weights (built when needed).
    progress:
        Called with (stage, step, total).
    """
    opt = ctx.options
    spec = get_method(method or opt.method)
    query = query or opt.query
    if query.latency_ms is not None:
        return _optimize_for_latency(ctx, query, spec, plan, learned, model, progress)
    target = parse_budget(query.budget, ctx.space)
    obj = ctx.objective(query, spec)
    learned = learned or ctx.learned
    t0 = time.perf_counter()
    if not spec.searches:
        if spec.needs_model and model is None:
            model = build_model(opt.model, opt.model_weights, seed=opt.seed)
        widths = np.asarray(spec.rule(ctx.space, target, model), dtype=np.int64)
        predicted = None
        if learned is not None:
            search = ctx.fleet_search(query, opt.method_spec)
            predicted = search.predict_clusters(learned.surrogate, widths[None])[0]
        seconds = time.perf_counter() - t0
        return Optimized(spec.name, widths, target, predicted, obj, seconds, seconds, 0,
                         learned)
    if learned is None or spec.context_family != opt.method_spec.context_family:
        raise HdapError(f"method {spec.name} needs its own measurements; prepare the study "
                        "with it")
    guide = accuracy_guide(ctx, target, query, progress=progress)
    out = ctx.fleet_search(query, spec, plan).run(target, learned, progress=progress,
                                                  accuracy=guide)
    return Optimized(spec.name, out.widths, target, out.predicted_cluster_ms, obj,
                     out.optimize_s, out.search_s, out.learned.device_measurements,
                     out.learned, out.learned.device_s, out.history,
                     accuracy=None if guide is None else
                     {**guide.summary(), "chosen_calibrated": float(guide.evaluate(out.widths)[0])})




def _optimize_for_latency(ctx: StudyContext, query: Query, spec, plan, learned, model,
                          progress: Progress) -> Optimized:
    """`optimize` for a latency budget: the MACs found on the surrogate, then the full answer
    there (`hdap_engine.study.latency_budget`)."""
    judge = ctx.fleet_objective(query)
    quick = (plan or ctx.options.search).quick()
    start = learned or ctx.learned
    if start is None:
        raise HdapError(f"a latency budget needs measured latencies and this study has none "
                        f"for {spec.name}; prepare it with a searching method")
    if spec.needs_model and model is None:
        model = build_model(ctx.options.model, ctx.options.model_weights, seed=ctx.options.seed)

    def objective_at(known):
        def at(macs: float) -> float:
            if spec.searches:  # the search alone: no accuracy floor, nothing measured
                ms = ctx.fleet_search(query, spec, quick).run(macs, known).predicted_cluster_ms
            else:
                q = replace(query, budget=repr(float(macs)), latency_ms=None)
                ms = optimize(ctx, q, method=spec.name, learned=known,
                              model=model).predicted_cluster_ms
            return float(judge(ms[None])[0])
        return at

    progress("latency budget", 0, 1)
    fit = fit_macs(ctx.space, query.latency_ms, query.objective, objective_at(start))
    chosen, asked = None, fit.surrogate_answers
    for _ in range(1 + CORRECTIONS):
        q = replace(query, budget=repr(float(fit.macs)), latency_ms=None)
        chosen = optimize(ctx, q, method=spec.name, plan=plan, learned=learned, model=model,
                          progress=progress)
        if chosen.predicted_cluster_ms is None or fit.unpruned_meets:
            break
        predicted = float(judge(chosen.predicted_cluster_ms[None])[0])
        if predicted <= query.latency_ms * (1 + TOLERANCE) or chosen.learned is None:
            break
        # The full search measured near these MACs and refined the surrogate, which now
        # predicts the answer over the budget: find the MACs again on what it learned.
        learned = chosen.learned
        fit = fit_macs(ctx.space, query.latency_ms, query.objective, objective_at(learned))
        asked += fit.surrogate_answers
    progress("latency budget", 1, 1)
    fit = replace(fit, surrogate_answers=asked,
                  predicted_ms=fit.predicted_ms if chosen.predicted_cluster_ms is None else
                  float(judge(chosen.predicted_cluster_ms[None])[0]))
    return replace(chosen, latency_fit=fit)


@dataclass
class StudyResult:
    """The outcome of one study: candidate, predictions, measurements, report."""

    context: StudyContext
    method: str
    widths: np.ndarray
    target_macs: float
    predicted_cluster_ms: np.ndarray | None
    verification: Verification
    unpruned: Verification
    objective: Objective
    search_s: float
    optimize_s: float
    device_measurements: int
    learned: Learned | None = None
    device_s: float = 0.0  # seconds of timing on devices the measurements cost
    measurement: dict | None = None  # what was measured and why it stopped (`measurement_record`)
    search_history: list[float] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)  # held-out Evaluations by stage, with --data
    search_accuracy: dict | None = None  # the search's floor and accuracy surrogate
    latency_fit: LatencyFit | None = None  # the MACs found for a latency budget
    model: nn.Module | None = None
    kept: dict[str, list[int]] | None = None
    bundle: Path | None = None
    report: dict = field(default_factory=dict)

    @property
    def cluster_weights(self) -> np.ndarray:
        """(k,) the cluster weights of the objective the candidate was chosen for."""
        return self.objective.cluster_weights

    @property
    def surrogate(self):
        """The surrogate as the run left it (refined, for methods that refine)."""
        return self.learned.surrogate if self.learned is not None else None


def run_study(options: StudyOptions, telemetry, *, out_dir: str | os.PathLike | None = None,
              store: Store | None = None, progress: Progress = no_progress,
              context: StudyContext | None = None, learned: Learned | None = None,
              export: bool = True, record: bool = True) -> StudyResult:
    """Prepare (or reuse ``context``), optimise, prune, verify, report, export, record.

    Parameters
    ----------
    options:
        The study's settings.
    telemetry:
        A telemetry path, bytes or `Fleet` (ignored when ``context`` is given).
    out_dir:
        Where the bundle is written (no export when None).
    context:
        A prepared context of the same fleet, model and backend (what-if runs).
    learned:
        What an earlier run on ``context`` measured and learned, to start from.
    """
    if context is None:
        context = prepare(options, telemetry, store=store, progress=progress)
    else:
        context = replace(context, options=reuse_options(context.options, options))
    ctx = context
    model = build_model(options.model, options.model_weights, seed=options.seed)
    chosen = optimize(ctx, method=options.method, learned=learned, progress=progress,
                      model=model)
    progress("prune", 0, 1)
    kept = prune_to_widths(model, ctx.space, chosen.widths)
    progress("prune", 1, 1)
    figures = {}
    if ctx.accuracy is not None:
        from hdap_engine.accuracy.study import heldout_figures

        # The pruned model's batch norms are re-estimated here: that is what is exported.
        figures = heldout_figures(ctx.accuracy, model, progress=progress)
    result = StudyResult(
        context=ctx, method=chosen.method, widths=chosen.widths, target_macs=chosen.target_macs,
        predicted_cluster_ms=chosen.predicted_cluster_ms,
        verification=verify_candidate(ctx, chosen.widths, progress=progress),
        unpruned=verify_candidate(ctx, ctx.space.base_widths, progress=progress),
        objective=chosen.objective, search_s=chosen.search_s, optimize_s=chosen.optimize_s,
        device_measurements=chosen.device_measurements, learned=chosen.learned,
        device_s=chosen.device_s, measurement=chosen.measurement,
        search_history=chosen.history, accuracy=figures, search_accuracy=chosen.accuracy,
        latency_fit=chosen.latency_fit,
        model=model, kept=kept)
    result.report = build_report(result)
    from hdap_engine.quantize.study import precision_report, ship_int8

    result.report.update(precision_report(ctx, chosen.widths, progress=progress))
    if export and out_dir is not None:
        progress("export", 0, 1)
        result.bundle = export_bundle(model, ctx.space, chosen.widths, out_dir, result.report,
                                      kept=kept)
        if options.measurement.precision == "int8":
            result.report["quantization"] = ship_int8(ctx, result.bundle)
            result.report["notes"] = read_report_notes(result.bundle)
        progress("export", 1, 1)
    if record:
        ctx.store.add_run(f"{options.model} {options.method} {format_macs(result.target_macs)}",
                          options.settings(), history_entry(result))
    return result


def read_report_notes(bundle) -> list[str]:
    """The notes of a bundle's report.json (INT8 adds its own after export)."""
    import json

    return list(json.loads((Path(bundle) / "report.json").read_text()).get("notes") or [])


def reuse_options(prepared: StudyOptions, wanted: StudyOptions) -> StudyOptions:
    """Options for a what-if run on a prepared context; refuses what would need new measurements.

    The query, the finalists, the model weights and a switch to a baseline
    method may change; anything else (fleet, clusters, backend, samples...)
    needs the study prepared again.
    """
    same = prepared.updated(**{name: wanted.flat(keep_token=True)[name]
                               for name in WHAT_IF_SETTINGS})
    if not wanted.method_spec.searches:
        same = replace(same, method=wanted.method)
    have, want = same.flat(), wanted.flat()
    differ = [k for k in have if have[k] != want[k]]
    if differ:
        raise HdapError(f"this study was prepared with other {', '.join(differ)}; "
                        "prepare it again for those settings")
    return same


# -- baselines without a fleet (hdap prune) -------------------------------------------------





