"""Rollout plans: would a few model variants, one per cohort of clusters, beat one model?

A *cohort* is a set of clusters that share one rollout variant (not a pruning
group, which is a set of channels removed together).

After the one model for the fleet is chosen, a deployment engineer asks whether
shipping K' variants (each device gets the model of its cohort) pays
for the extra rollout work. `plan_rollout` answers it on a prepared study:

1. the one-model answer: the study's search for the whole fleet, verified;
2. the clusters' preferences: each cluster's best candidate on the surrogate
   (a quick search with all the weight on that cluster), and a k x k matrix
   of predicted cross-latency: how each cluster's best runs on every other;
3. cohorts: a cluster's *regret* on another's best is how much slower it runs
   than on its own; the symmetric mean regret is a distance, and average-linkage
   agglomerative clustering on it gives nested cohorts for K' = 1..K;
4. one search per cohort, with the study's objective, budget and search plan,
   the query's cluster weights set to the cohort's device shares;
5. verification: every variant measured on every cluster's representatives
   (with the twin, on every device); each cohort keeps whichever measures best
   on its own clusters of the one model, the models of the larger cohorts it
   split from, and its own variant (a finer one only when strictly better), and
   a plan that still measures worse on the fleet than the plan with one variant
   fewer keeps that plan's models. So a plan is never worse than one model, and
   more variants are never worse than fewer.

The measurement noise the gains are compared with is the backend's own
run-to-run spread (interquartile range over median) measured on the one model,
weighted by device share: a gain below it is reported as within the noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.options import Query, RolloutOptions, SearchPlan
from hdap_engine.search.learned import Learned
from hdap_engine.study.prepare import StudyContext
from hdap_engine.study.verify import Verification, fleet_metrics, verify_candidate

ONE_MODEL = "one-model"


@dataclass(frozen=True)
class RolloutModel:
    """One searched candidate of a rollout: the one model or a cohort's variant."""

    name: str  # "one-model" or "clusters-0-2"
    clusters: tuple[int, ...]  # the clusters it was searched for
    widths: np.ndarray
    macs: float
    predicted_cluster_ms: np.ndarray | None  # (k,) surrogate, every cluster
    measured_cluster_ms: np.ndarray  # (k,) verification, every cluster
    optimize_s: float


@dataclass(frozen=True)
class RolloutOutcome:
    """The outcome of shipping K' variants: which model every cluster gets, and what the
    fleet then measures (a result; what a rollout plans is `RolloutOptions`).

    ``assignment`` maps every cluster to a variant index; ``variant_models``
    names the model of each variant (``"one-model"`` when a cohort kept it).
    ``models`` may be fewer than ``variants`` when cohorts kept a coarser cohort's model
    (the one model, or the model of the cohort they split from).
    """

    variants: int  # K' asked for
    cohorts: tuple[tuple[int, ...], ...]  # the clusters of each cohort
    assignment: dict[int, int]  # cluster -> variant index
    variant_models: tuple[str, ...]  # variant index -> model name
    fleet_mean_ms: float
    p95_ms: float
    worst_cluster_ms: float
    objective_value: float  # the objective measured on the fleet (every device with the twin)
    gain_vs_one_model: float  # fraction of the one model's fleet mean saved (0.03 = 3 %)
    within_noise: bool  # the gain is below the measurement noise
    kept_coarser: tuple[tuple[int, ...], ...] = ()  # cohorts that kept a coarser cohort's model
    notes: tuple[str, ...] = ()

    @property
    def models(self) -> int:
        """Distinct models shipped by this plan."""
        return len(self.variant_models)

    def devices_by_variant(self, ctx: StudyContext) -> dict[int, list[str]]:
        """Variant index -> the device ids that get it (every device exactly once)."""
        labels = np.asarray(ctx.clustering.labels_)
        ids = np.asarray(ctx.fleet.device_ids, dtype=object)
        out: dict[int, list[str]] = {v: [] for v in range(self.models)}
        for c, v in self.assignment.items():
            out[v].extend(str(d) for d in ids[labels == c])
        return out


@dataclass(frozen=True)
class Rollout:
    """Every plan for K' = 1..K, the models behind them and their cohorts."""

    plans: tuple[RolloutOutcome, ...]
    models: dict[str, RolloutModel]
    cross_ms: np.ndarray  # (k, k) predicted latency of cluster i's best on cluster j
    regret: np.ndarray  # (k, k) cross_ms[i, j] / cross_ms[j, j] - 1, floored at 0
    noise: float  # relative run-to-run spread of one measurement (0.02 = 2 %)
    measured_source: str
    basis: str  # what the fleet figures are over
    shares: np.ndarray  # (k,) device share of every cluster
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    learned: Learned | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """The JSON form: ``{"plans": [...], ...}`` (plain numbers and lists)."""
        return {
            "plans": [{
                "variants": p.variants, "models": p.models,
                "fleet_mean_ms": p.fleet_mean_ms, "p95_ms": p.p95_ms,
                "worst_cluster_ms": p.worst_cluster_ms, "objective_value": p.objective_value,
                "gain_vs_one_model": p.gain_vs_one_model, "within_noise": p.within_noise,
                "assignment": {str(c): v for c, v in sorted(p.assignment.items())},
                "variant_models": list(p.variant_models),
                "cohorts": [list(g) for g in p.cohorts],
                "kept_coarser": [list(g) for g in p.kept_coarser],
                "notes": list(p.notes)} for p in self.plans],
            "models": {name: {"clusters": list(m.clusters), "macs": m.macs,
                              "widths": [int(x) for x in m.widths],
                              "measured_cluster_ms": [float(x) for x in m.measured_cluster_ms],
                              "optimize_s": m.optimize_s}
                       for name, m in self.models.items()},
            "cross_ms": self.cross_ms.tolist(), "regret": self.regret.tolist(),
            "noise": self.noise, "measured_source": self.measured_source, "basis": self.basis,
            "shares": [float(s) for s in self.shares], "notes": list(self.notes),
            "seconds": self.seconds,
        }


def cluster_cohorts(regret: np.ndarray, n_cohorts: int) -> tuple[tuple[int, ...], ...]:
    """Clusters in ``n_cohorts`` cohorts of alike preference (average-linkage agglomeration).

    Parameters
    ----------
    regret:
        (k, k) how much slower cluster j runs on cluster i's best than on its own.
    n_cohorts:
        Cohorts wanted (1..k).

    Returns
    -------
    Cohorts of cluster ids, each sorted, ordered by their smallest cluster. Cuts
    of one linkage are nested: K'+1 cohorts split one of the K' cohorts.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    k = regret.shape[0]
    if not 1 <= n_cohorts <= k:
        raise HdapError(f"variants must be between 1 and the number of clusters ({k}), "
                        f"got {n_cohorts}")
    if n_cohorts == 1 or k == 1:
        return (tuple(range(k)),)
    if n_cohorts == k:
        return tuple((c,) for c in range(k))
    dist = 0.5 * (regret + regret.T)
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(np.maximum(dist, 0.0), checks=False), method="average")
    labels = fcluster(tree, t=n_cohorts, criterion="maxclust")
    cohorts: dict[int, list[int]] = {}
    for c, g in enumerate(labels):
        cohorts.setdefault(int(g), []).append(c)
    return tuple(sorted((tuple(g) for g in cohorts.values()), key=lambda g: g[0]))


def _model_name(cohort: tuple[int, ...], k: int) -> str:
    return ONE_MODEL if len(cohort) == k else "clusters-" + "-".join(str(c) for c in cohort)


def check_rollout_method(spec) -> None:
    """Refuse a method that cannot search for a cohort of clusters (before anything is measured).

    Parameters
    ----------
    spec:
        A registered `hdap_engine.search.methods.Method`.
    """
    if not spec.searches:
        raise HdapError(f"method {spec.name} does not search; a rollout plan searches per "
                        "cohort of clusters: plan it with --method hdap")
    if spec.cluster_weighting != "study":
        # Its searches ignore the cohort's cluster weights: every cohort would get one model.
        raise HdapError(f"method {spec.name} weighs clusters its own way "
                        f"({spec.cluster_weighting}), so it cannot search for a cohort of "
                        "clusters; plan the rollout with --method hdap")


def plan_rollout(ctx: StudyContext, variants: int = RolloutOptions().variants, *, query: Query | None = None,
                 plan: SearchPlan | None = None, learned: Learned | None = None,
                 progress: Progress = no_progress) -> Rollout:
    """Rollout plans for K' = 1..``variants`` on a prepared study.

    Parameters
    ----------
    ctx:
        A prepared study of a searching method (not changed).
    variants:
        The most variants to consider; more than the fleet's clusters is capped
        at their number, with a note.
    query:
        Budget, objective, SLO (default: the study's). Its cluster weights are
        replaced by each cohort's device shares.
    plan:
        The search plan of every search (default: the study's).
    learned:
        What an earlier run on ``ctx`` measured (default: the context's samples).
    progress:
        Called with (stage, step, total).

    Returns
    -------
    A `Rollout`: one `RolloutOutcome` per K', the one with K' = 1 being the one model.
    """
    from hdap_engine.study.run import optimize

    RolloutOptions(variants=variants)  # refuses fewer than one
    check_rollout_method(ctx.options.method_spec)
    t_start = time.perf_counter()
    k = ctx.k
    notes: list[str] = []
    if variants > k:
        notes.append(f"{variants} variants asked for but the fleet has {k} "
                     f"cluster{'s' if k != 1 else ''}: capped at {k}")
        variants = k
    query = query or ctx.options.query
    if query.latency_ms is not None:
        raise HdapError("a rollout compares variants with one model at one MACs budget; give "
                        "--macs (--latency-budget is for hdap optimize)")
    if query.cluster_weights is not None:
        notes.append("the query's cluster weights are replaced by each cohort's device shares")
    query = replace(query, cluster_weights=None)
    plan = plan or ctx.options.search
    shares = np.asarray(ctx.clustering.shares_, dtype=np.float64)

    # 1. The one model, as the study would answer.
    one = optimize(ctx, query, plan=plan, learned=learned, progress=progress)
    learned = one.learned
    models: dict[str, RolloutModel] = {}
    verified: dict[str, Verification] = {}

    def verify(name, cohort, opt) -> None:
        val = verify_candidate(ctx, opt.widths, progress=progress)
        verified[name] = val
        models[name] = RolloutModel(name, tuple(cohort), np.asarray(opt.widths), val.macs,
                                    opt.predicted_cluster_ms, val.cluster_measured_ms,
                                    opt.optimize_s)

    verify(ONE_MODEL, tuple(range(k)), one)
    search = ctx.fleet_search(query, ctx.options.method_spec)

    # 2. Every cluster's best candidate on the surrogate, and how it runs on the others.
    if k > 1 and variants > 1:
        best = []
        for c in range(k):
            progress("search", c, k)
            q = replace(query, cluster_weights={c: 1.0})
            best.append(optimize(ctx, q, plan=plan.quick(), learned=learned).widths)
        cross = search.predict_clusters(learned.surrogate, np.stack(best))
    else:
        cross = search.predict_clusters(learned.surrogate, one.widths[None]).repeat(k, axis=0)
    own = np.diag(cross)
    regret = np.maximum(cross / own[None, :] - 1.0, 0.0)

    # 3-4. Nested cohorts, one search per cohort (a cohort seen at a smaller K' is reused).
    plans_cohorts = [cluster_cohorts(regret, n) for n in range(1, variants + 1)]
    for cohorts in plans_cohorts[1:]:
        for g in cohorts:
            name = _model_name(g, k)
            if name in models:
                continue
            q = replace(query, cluster_weights={c: float(shares[c]) for c in g})
            opt = optimize(ctx, q, plan=plan, learned=learned, progress=progress)
            learned = opt.learned
            verify(name, g, opt)

    # 5. Each cohort keeps the better measured of its variant and the one model.
    obj = ctx.fleet_objective(query)
    one_val = verified[ONE_MODEL]
    one_fm = fleet_metrics(ctx, one_val, obj)
    noise = _relative_spread(one_val, shares)
    plans = []
    for n, cohorts in enumerate(plans_cohorts, start=1):
        plans.append(_plan(ctx, n, cohorts, verified, obj, one_fm, noise, plans))
    notes.extend(dict.fromkeys(list(one_val.notes)))
    return Rollout(plans=tuple(plans), models=models, cross_ms=cross, regret=regret,
                   noise=noise, measured_source=ctx.backend.source, basis=one_fm["basis"],
                   shares=shares, notes=tuple(notes),
                   seconds=time.perf_counter() - t_start, learned=learned)


def _relative_spread(val: Verification, shares: np.ndarray) -> float:
    """Share-weighted run-to-run spread (IQR / median) of one measurement."""
    rel = val.cluster_spread_ms / val.cluster_measured_ms
    ok = np.isfinite(rel)
    if not ok.any():
        return float("nan")
    return float(np.sum(rel[ok] * shares[ok]) / shares[ok].sum())


def _cohort_score(ctx: StudyContext, val: Verification, cohort, obj) -> float:
    """The objective measured on ``cohort``'s clusters alone (every device with the twin)."""
    labels = np.asarray(ctx.clustering.labels_)
    mask = np.isin(labels, list(cohort))
    kind = obj.kind
    if val.fleet_ms is not None and kind in ("mean", "p95", "slo"):
        ms = val.fleet_ms[mask]
        if kind == "mean":
            return float(np.mean(ms))
        if kind == "p95":
            return float(np.quantile(ms, 0.95))
        return -float(np.mean(ms <= obj.slo_ms))
    w = np.zeros(ctx.k)
    w[list(cohort)] = obj.cluster_weights[list(cohort)]
    if not w.sum() > 0:
        w[list(cohort)] = 1.0
    return float(replace(obj, cluster_weights=w)(val.cluster_measured_ms[None])[0])


def _combined(val_of_cluster: list[Verification], ctx: StudyContext) -> Verification:
    """The verification of a plan: every cluster (and device) measured with its own model."""
    k = ctx.k
    labels = np.asarray(ctx.clustering.labels_)
    cm = np.array([val_of_cluster[c].cluster_measured_ms[c] for c in range(k)])
    cs = np.array([val_of_cluster[c].cluster_spread_ms[c] for c in range(k)])
    fleet_ms = None
    if all(v.fleet_ms is not None for v in val_of_cluster):
        fleet_ms = np.empty(len(labels))
        for c in range(k):
            fleet_ms[labels == c] = val_of_cluster[c].fleet_ms[labels == c]
    devices = {}
    for c in range(k):
        for j, d in enumerate(ctx.rep_devices):
            if ctx.rep_clusters[j] == c:
                devices[d] = val_of_cluster[c].device_measured_ms[d]
    first = val_of_cluster[0]
    return Verification(widths=first.widths, macs=first.macs, cluster_measured_ms=cm,
                        cluster_spread_ms=cs, device_measured_ms=devices, fleet_ms=fleet_ms)


def _plan(ctx, n, cohorts, verified, obj, one_fm, noise, earlier) -> RolloutOutcome:
    """The plan of ``cohorts``; ``earlier`` holds the plans with fewer variants, in order."""
    k = ctx.k
    coarser = [g for p in earlier for g in p.cohorts]
    chosen: list[str] = []
    kept = []
    for g in cohorts:
        # Candidates from the coarsest (the one model) to the cohort's own variant: a finer
        # model is taken only when it measures strictly better on the cohort's clusters, so
        # a plan is never worse than one model nor than the plan with fewer variants.
        names = [ONE_MODEL] + [_model_name(a, k) for a in coarser if set(g) <= set(a)]
        names = list(dict.fromkeys(names + [_model_name(g, k)]))
        scores = [_cohort_score(ctx, verified[m], g, obj) for m in names]
        best = names[int(np.argmin(scores))]
        if best != names[-1]:
            kept.append(g)
        chosen.append(best)
    plan_notes = []
    if len(cohorts) < n:
        plan_notes.append(f"the clusters' preferences split into {len(cohorts)} cohorts only")
    everyone = tuple(range(k))
    per_cluster = [chosen[_cohort_of(cohorts, c)] for c in range(k)]
    combined = _combined([verified[m] for m in per_cluster], ctx)
    fm = fleet_metrics(ctx, combined, obj)
    score = _cohort_score(ctx, combined, everyone, obj)
    if earlier:
        prev = earlier[-1]
        prev_cluster = [prev.variant_models[prev.assignment[c]] for c in range(k)]
        if score > prev.objective_value:
            # Cohorts each better on their own clusters can still lose on a fleet-wide
            # objective (a p95 over the mixture); then the plan with fewer variants stands.
            plan_notes.append(f"these variants together measured worse on the fleet than the "
                              f"plan with {prev.variants}; its models are kept")
            per_cluster = prev_cluster
            combined = _combined([verified[m] for m in per_cluster], ctx)
            fm = fleet_metrics(ctx, combined, obj)
            score = _cohort_score(ctx, combined, everyone, obj)
            kept = list(cohorts)
    # Variants in order of first appearance; cohorts that kept a coarser model share it.
    variant_models = list(dict.fromkeys(per_cluster))
    assignment = {c: variant_models.index(per_cluster[c]) for c in range(k)}
    gain = 1.0 - fm["measured_mean_ms"] / one_fm["measured_mean_ms"]
    within = bool(len(variant_models) > 1 and gain < noise)
    if n > 1 and kept:
        plan_notes.append(f"{len(kept)} of {len(cohorts)} cohorts keep a coarser cohort's model "
                          "(their own variant measured no better on their clusters)")
    if within:
        plan_notes.append(f"gain {gain:.2%} is below the measurement noise ({noise:.2%}): "
                          "not worth a separate rollout")
    return RolloutOutcome(variants=n, cohorts=tuple(cohorts), assignment=assignment,
                       variant_models=tuple(variant_models),
                       fleet_mean_ms=fm["measured_mean_ms"], p95_ms=fm["measured_p95_ms"],
                       worst_cluster_ms=fm["worst_cluster_ms"],
                       objective_value=score, gain_vs_one_model=gain,
                       within_noise=within, kept_coarser=tuple(kept), notes=tuple(plan_notes))


def _cohort_of(cohorts, cluster: int) -> int:
    return next(i for i, g in enumerate(cohorts) if cluster in g)


# -- writing a rollout ----------------------------------------------------------------------

def write_rollout(ctx: StudyContext, rollout: Rollout, out_dir, *,
                  formats: tuple[str, ...] = ("pt2", "ts", "onnx"),
                  progress: Progress = no_progress) -> dict:
    """One bundle per model the plans ship, a device-id CSV per variant, and ``rollout.json``.

    Parameters
    ----------
    ctx:
        The prepared study the rollout was planned on.
    rollout:
        What `plan_rollout` returned.
    out_dir:
        The folder to write: ``models/<model>/`` (bundle + zip),
        ``k<K'>/variant<v>_devices.csv`` and ``rollout.json``.
    formats:
        Export formats of every bundle.

    Returns
    -------
    The JSON document written to ``rollout.json``.
    """
    import json
    from pathlib import Path

    from hdap_engine.export.bundle import export_bundle
    from hdap_engine.infra.jsonable import jsonable
    from hdap_engine.models.zoo import build_model
    from hdap_engine.pruning.apply import prune_to_widths
    from hdap_engine.pruning.budget import format_macs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opt = ctx.options
    shipped = list(dict.fromkeys(m for p in rollout.plans for m in p.variant_models))
    bundles = {}
    for i, name in enumerate(shipped):
        progress("export", i, len(shipped))
        m = rollout.models[name]
        model = build_model(opt.model, opt.model_weights, seed=opt.seed)
        kept = prune_to_widths(model, ctx.space, m.widths)
        report = {"method": opt.method, "budget": str(opt.query.budget),
                  "objective": opt.query.objective, "measured_source": rollout.measured_source,
                  "rollout_model": name, "searched_for_clusters": list(m.clusters),
                  "measured_cluster_ms": [float(x) for x in m.measured_cluster_ms],
                  "macs_label": format_macs(m.macs)}
        bundles[name] = export_bundle(model, ctx.space, m.widths, out / "models" / name, report,
                                      kept=kept, formats=formats)
    progress("export", len(shipped), len(shipped))
    doc = rollout.as_dict()
    doc.update(model=opt.model, budget=str(opt.query.budget), objective=opt.query.objective,
               fleet=ctx.fleet.source, n_devices=int(ctx.fleet.n_devices), k=ctx.k)
    for p, pd_ in zip(rollout.plans, doc["plans"], strict=True):
        folder = out / f"k{p.variants}"
        folder.mkdir(exist_ok=True)
        rows = []
        for v, ids in p.devices_by_variant(ctx).items():
            csv = folder / f"variant{v}_devices.csv"
            csv.write_text("device_id\n" + "".join(f"{d}\n" for d in ids))
            name = p.variant_models[v]
            rows.append({"variant": v, "model": name,
                         "clusters": sorted(c for c, x in p.assignment.items() if x == v),
                         "devices": len(ids), "devices_csv": str(csv.relative_to(out)),
                         "bundle": str(bundles[name].relative_to(out))})
        pd_["variant_list"] = rows
    (out / "rollout.json").write_text(json.dumps(jsonable(doc), indent=1))
    return doc


# -- the table every caller shows -----------------------------------------------------------

ROLLOUT_COLUMNS = ["variants", "models", "cohorts", "fleet mean ms", "p95 ms",
                   "worst cluster ms", "gain", "verdict"]


def rollout_rows(doc: dict) -> list[dict]:
    """The table of a rollout document (`Rollout.as_dict`): one row of text per K'.

    Parameters
    ----------
    doc:
        ``{"plans": [...]}`` as `Rollout.as_dict` or `write_rollout` returns it.

    Returns
    -------
    Rows keyed by `ROLLOUT_COLUMNS`; the verdict says "one model" when the plan
    ships one model, "within noise" when its gain is below the measurement noise.
    """
    rows = []
    for p in doc["plans"]:
        verdict = ("one model" if p["models"] == 1 else
                   "within noise" if p["within_noise"] else "gain")
        # "groups": the key's name in rollout documents saved before it was renamed.
        cohorts = " | ".join(",".join(str(c) for c in g)
                             for g in p.get("cohorts", p.get("groups", [])))
        rows.append({"variants": p["variants"], "models": p["models"], "cohorts": cohorts,
                     "fleet mean ms": f"{p['fleet_mean_ms']:.3f}",
                     "p95 ms": f"{p['p95_ms']:.3f}",
                     "worst cluster ms": f"{p['worst_cluster_ms']:.3f}",
                     "gain": f"{p['gain_vs_one_model']:+.2%}", "verdict": verdict})
    return rows
