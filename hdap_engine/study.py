"""One study end to end, as the CLI and the app call it.

fleet -> clustering -> pruning space -> measurements on representatives (via a
backend, cached in the store) -> surrogate -> search under the budget ->
candidate -> pruned model (Torch-Pruning) -> validation per cluster (and on
every device with the twin) -> export bundle + report.

The work is split so that what-if analysis is cheap: `prepare` does the
expensive part once (clustering, measuring, fitting) and returns a
`StudyContext`; `optimize` searches it for any budget, objective and cluster
weights in seconds; `validate` measures a candidate; `run_study` chains them
with pruning and export. Progress is reported as (stage, step, total).

Methods (all to the same budget, all validated the same way):

- ``hdap``           ours: one shared surrogate over every cluster's representatives,
                     the fleet objective with device-share (or user) weights, and the
                     best few search finalists re-measured before one is chosen;
- ``paper``          the HDAP paper's code: one surrogate per cluster, the plain
                     unweighted mean over clusters;
- ``single-device``  the same search aimed at one lab device (the representative of the
                     largest cluster): how latency-aware pruning is done today;
- ``uniform``        one keep ratio for every group;
- ``global``         Torch-Pruning's global magnitude ranking.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.export import export_bundle
from hdap_engine.latency.backends import Backend, HostBackend, Measurements, TwinBackend
from hdap_engine.latency.sampling import sample_candidates
from hdap_engine.latency.store import Store
from hdap_engine.latency.surrogate import Surrogate, SurrogateOptions
from hdap_engine.models.zoo import build_model, weights_label
from hdap_engine.options import (  # noqa: F401  (re-exported: callers import them from here)
    BACKENDS,
    BASELINE_METHODS,
    METHODS,
    SEARCH_METHODS,
    STAGES,
    StudyOptions,
)
from hdap_engine.pruning.apply import prune_to_widths
from hdap_engine.pruning.budget import format_macs, parse_budget
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.search.baselines import global_widths, uniform_widths
from hdap_engine.search.evolution import SearchOptions, diverse_best, evolve
from hdap_engine.search.objectives import Objective, cluster_dispersion

Progress = Callable[[str, int, int], None]  # (stage, step, total)


def _noop(stage: str, step: int, total: int) -> None:
    return None


@dataclass
class StudyContext:
    """Everything measured and learned for one fleet and model: reused by what-if runs."""

    options: StudyOptions
    fleet: object  # hdap_engine.fleet.telemetry.Fleet
    clustering: object  # hdap_engine.fleet.clustering.Clustering
    space: PruningSpace
    backend: Backend
    store: Store
    rep_devices: list[str]  # measured devices, cluster by cluster
    rep_clusters: np.ndarray  # cluster of each measured device
    rep_features: np.ndarray  # probe vector (ms) of each measured device
    dispersion: np.ndarray  # (k,) log spread of devices within each cluster
    samples: np.ndarray | None = None  # widths measured for the surrogate
    sample_ms: np.ndarray | None = None  # (samples, search devices) median latency
    measurements: Measurements | None = None  # the first, sampled measurements
    surrogate: Surrogate | None = None
    device_measurements: int = 0  # (device, candidate) pairs the method asked for
    batch_drift: float = 1.0  # largest speed ratio between measurement batches (real only)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.clustering.k_)


@dataclass
class Validation:
    """A candidate measured per cluster (representatives) and, with the twin, on every device."""

    widths: np.ndarray
    macs: float
    cluster_measured_ms: np.ndarray  # (k,) mean over the cluster's representatives
    cluster_spread_ms: np.ndarray  # (k,) mean interquartile range of their runs
    device_measured_ms: dict[str, float]  # representative -> median
    fleet_ms: np.ndarray | None = None  # (n_devices,) every device (twin only)
    notes: list[str] = field(default_factory=list)


@dataclass
class StudyResult:
    """The outcome of one study: candidate, predictions, measurements, report."""

    context: StudyContext
    method: str
    widths: np.ndarray
    target_macs: float
    predicted_cluster_ms: np.ndarray | None
    validation: Validation
    unpruned: Validation
    weights: np.ndarray
    objective: Objective
    search_seconds: float
    device_measurements: int
    search_history: list[float] = field(default_factory=list)
    model: nn.Module | None = None
    kept: dict[str, list[int]] | None = None
    bundle: Path | None = None
    report: dict = field(default_factory=dict)


# -- preparing: fleet, clusters, backend, measurements, surrogate ---------------------------

def load_study_fleet(telemetry, *, sku: str | None = None, name: str | None = None):
    """The validated fleet of a telemetry path, bytes, or an already loaded `Fleet`."""
    from hdap_engine.fleet.telemetry import Fleet, load_fleet

    if isinstance(telemetry, Fleet):
        return telemetry
    return load_fleet(telemetry, sku=sku, name=name)


def make_backend(options: StudyOptions, fleet, telemetry_path: str | os.PathLike | None,
                 clustering=None) -> tuple[Backend, list[str]]:
    """The backend of ``options`` for ``fleet``, and notes about how it was set up.

    ``clustering`` lets the agent backend replace a representative that cannot
    be measured by the next device of its cluster.
    """
    notes: list[str] = []
    if options.backend == "host":
        return HostBackend(threads=options.host_threads, seed=options.seed,
                           clock=options.host_clock, runtime=options.host_runtime), notes
    if options.backend == "agent":
        from hdap_engine.latency.agent_backend import AgentBackend

        return AgentBackend.from_fleet(fleet, token=options.agent_token,
                                       clustering=clustering), notes
    return _twin_backend(options, fleet, telemetry_path, notes), notes


def _twin_backend(options: StudyOptions, fleet, telemetry_path, notes: list[str]) -> TwinBackend:
    from hdap_engine.fleet.fit import fit_preset_from_probes, fit_states_from_probes
    from hdap_engine.fleet.probes import STANDARD_PROBES, probe_column
    from hdap_engine.fleet.telemetry import twin_sidecar_path
    from hdap_engine.fleet.twin import PRESETS, Twin, get_preset, load_twin_states

    sidecar = twin_sidecar_path(telemetry_path) if telemetry_path is not None else None
    if sidecar is not None and sidecar.is_file():
        states = load_twin_states(sidecar)
        known = set(states.device_id.tolist())
        missing = [d for d in fleet.device_ids if d not in known]
        if missing:
            raise HdapError(f"{sidecar.name}: has no twin state for {len(missing)} devices of "
                            f"{fleet.source} (e.g. {missing[0]}); regenerate it with hdap simulate")
        preset = get_preset(options.twin_preset or states.sku or fleet.sku or "")
        key = hashlib.blake2b(states.to_frame().to_csv(index=False).encode(),
                              digest_size=8).hexdigest()
        return TwinBackend(Twin(preset), states, fleet_key=f"twin-{key}", seed=options.seed)
    needed = [probe_column(p) for p in STANDARD_PROBES]
    absent = [c for c in needed if c not in fleet.probe_columns]
    if absent:
        raise HdapError(
            f"the twin backend cannot measure {fleet.source}: it has no .twin.parquet sidecar "
            f"and lacks the standard probe columns to fit one ({', '.join(absent[:3])}"
            f"{'...' if len(absent) > 3 else ''}); use --backend host or agent, or collect "
            "telemetry with `hdap probe` / the agent")
    sku = options.twin_preset or fleet.sku
    if sku not in PRESETS and sku != "host":
        raise HdapError(
            f"the twin backend has no preset for SKU {sku!r}; pass --twin-preset "
            f"({', '.join(PRESETS)}) or use --backend host or agent")
    if sku == "host":
        # Host telemetry (`hdap probe` rows): the typical device defines the preset,
        # each device's state is fitted relative to it.
        preset = fit_preset_from_probes(fleet.frame.median(numeric_only=True))
    else:
        preset = get_preset(sku)
    states, fit_error = fit_states_from_probes(fleet.frame[["device_id", *needed]], preset)
    notes.append(f"twin states fitted from the standard probes of {fleet.n_devices} devices "
                 f"(median fit error {np.median(list(fit_error.values())):.1%})")
    key = fleet.fingerprint()[:16]
    return TwinBackend(Twin(preset), states, fleet_key=f"twinfit-{key}", fit_error=fit_error,
                       seed=options.seed)


def prepare(options: StudyOptions, telemetry, *, store: Store | None = None,
            progress: Progress = _noop, fleet=None, clustering=None,
            telemetry_path: str | os.PathLike | None = None) -> StudyContext:
    """Load, cluster, measure and fit: the expensive, reusable part of a study.

    Parameters
    ----------
    options:
        The study's settings.
    telemetry:
        A telemetry path, bytes, or a loaded `Fleet`.
    store:
        The measurement store (default: the workspace's).
    progress:
        Called with (stage, step, total).
    clustering:
        An already fitted clustering of this fleet (the app passes the one on screen).
    telemetry_path:
        Where the telemetry lives, to find its twin sidecar when ``telemetry`` is a Fleet.
    """
    from hdap_engine.fleet.clustering import Clustering, ClusteringOptions

    store = store or Store()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    progress("fleet", 0, 1)
    fleet = fleet or load_study_fleet(telemetry, sku=options.sku)
    if telemetry_path is None and isinstance(telemetry, (str, os.PathLike)):
        telemetry_path = telemetry
    progress("fleet", 1, 1)
    timings["fleet"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress("cluster", 0, 1)
    notes: list[str] = []
    if options.backend == "host":
        # The host backend measures this machine only: the fleet *is* this machine.
        if fleet.n_devices > 1:
            notes.append(f"host backend: every device of {fleet.source} is measured as this "
                         "machine; the study treats the fleet as one cluster")
        clustering = Clustering(ClusteringOptions(k=1, representatives=1,
                                                  seed=options.seed)).fit(fleet)
    elif clustering is None:
        clustering = Clustering(ClusteringOptions(
            k=options.k, representatives=options.representatives, seed=options.seed)).fit(fleet)
    progress("cluster", 1, 1)
    timings["cluster"] = time.perf_counter() - t0

    # Settings that can be wrong are checked before anything is measured.
    clustering.normalise_weights(options.weights)
    space = PruningSpace.for_model(options.model, round_to=options.round_to,
                                   min_ratio=options.min_ratio)
    parse_budget(options.budget, space)
    backend, backend_notes = make_backend(options, fleet, telemetry_path, clustering)
    notes.extend(backend_notes)
    rep_devices, rep_clusters = [], []
    for c in range(clustering.k_):
        for dev in clustering.representatives_[c]:
            rep_devices.append(dev)
            rep_clusters.append(c)
    index = {d: i for i, d in enumerate(fleet.device_ids)}
    probes = fleet.probes()
    rep_features = probes[[index[d] for d in rep_devices]]
    ctx = StudyContext(
        options=options, fleet=fleet, clustering=clustering, space=space, backend=backend,
        store=store, rep_devices=rep_devices, rep_clusters=np.array(rep_clusters),
        rep_features=rep_features,
        dispersion=cluster_dispersion(probes, clustering.labels_, clustering.k_),
        notes=notes, timings=timings)
    if options.method in SEARCH_METHODS:
        measure_and_fit(ctx, progress=progress)
    return ctx


def _search_devices(ctx: StudyContext) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The devices a method measures: every representative, or the one lab device."""
    if ctx.options.method == "single-device":
        # The representative of the largest cluster, closest to its centroid first.
        return ctx.rep_devices[:1], ctx.rep_clusters[:1] * 0, ctx.rep_features[:1]
    return ctx.rep_devices, ctx.rep_clusters, ctx.rep_features


def measure_and_fit(ctx: StudyContext, *, progress: Progress = _noop) -> None:
    """Measure sampled candidates on the method's devices and train the surrogate."""
    opt = ctx.options
    t0 = time.perf_counter()
    samples = sample_candidates(ctx.space, opt.samples, seed=opt.seed,
                                focus_macs=parse_budget(opt.budget, ctx.space))
    devices, clusters, features = _search_devices(ctx)

    def tick(done, total):
        progress("measure", done, total)

    progress("measure", 0, len(samples))
    meas = ctx.backend.measure(ctx.space, samples, devices, repeats=opt.repeats,
                               warmup=opt.warmup, store=ctx.store, progress=tick)
    progress("measure", len(samples), len(samples))
    ctx.samples, ctx.sample_ms, ctx.measurements = samples, meas.median_ms, meas
    ctx.device_measurements += samples.shape[0] * len(devices)
    ctx.notes.extend(n for n in meas.notes if n not in ctx.notes)
    ctx.timings["measure"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress("fit", 0, 1)
    _fit_surrogate(ctx)
    progress("fit", 1, 1)
    ctx.timings["fit"] = time.perf_counter() - t0


def _fit_surrogate(ctx: StudyContext) -> None:
    """(Re)train the surrogate on everything measured so far for this context."""
    opt = ctx.options
    _, clusters, features = _search_devices(ctx)
    mode = "per-cluster" if opt.method == "paper" else opt.surrogate_mode
    # The paper fits gradient boosting alone; the linear base is ours.
    sopt = SurrogateOptions(mode=mode, seed=opt.seed, linear_base=opt.method != "paper")
    ctx.surrogate = _cached_surrogate(ctx, ctx.samples, ctx.sample_ms, features, clusters, sopt)


ANCHORS = 6  # training candidates re-timed with every later batch on real hardware
DRIFT_NOTE = "the devices' speed drifted between measurement batches"


def _measure_more(ctx: StudyContext, widths: np.ndarray) -> int:
    """Measure new candidates on the search devices and add them to the training set.

    On real hardware a later batch is not on the scale of the first: this
    machine timed the same ResNet-50s 15 % slower seven minutes later, more
    than the differences the search is after, and a surrogate trained on both
    batches as they are learns the drift as if it were the architecture's. So
    a few candidates already in the training set (those nearest in MACs) are
    timed again in the same interleaved batch, and the new times are divided
    by each device's median anchor ratio (now / then).
    """
    known = {w.tobytes() for w in ctx.samples}
    new = np.array([w for w in widths if w.tobytes() not in known])
    if len(new) == 0:
        return 0
    devices, _, _ = _search_devices(ctx)
    anchors = np.zeros(0, dtype=np.int64)
    if ctx.backend.real:
        gap = np.abs(ctx.space.macs(ctx.samples) - np.median(ctx.space.macs(new)))
        anchors = np.argsort(gap, kind="stable")[:ANCHORS]
    batch = np.vstack([ctx.samples[anchors], new])
    # The search's favourites are close to each other: on noisy real hardware, with the
    # sampling's runs, their noise is the size of their differences and the next search
    # chases whichever was timed lucky.
    meas = ctx.backend.measure(ctx.space, batch, devices, repeats=_close_call_repeats(ctx),
                               warmup=ctx.options.warmup, store=ctx.store,
                               fresh=ctx.backend.real)
    ms = meas.median_ms[len(anchors):]
    if len(anchors):
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = meas.median_ms[:len(anchors)] / ctx.sample_ms[anchors]
        ok = np.isfinite(ratio) & (ratio > 0)
        # A device that failed (agent) has no anchors: nothing to rescale there.
        drift = np.array([np.median(ratio[ok[:, j], j]) if ok[:, j].any() else 1.0
                          for j in range(ratio.shape[1])])
        ms = ms / drift
        worst = float(drift[np.argmax(np.abs(np.log(drift)))])
        if abs(np.log(worst)) > abs(np.log(ctx.batch_drift)):
            ctx.batch_drift = worst
        if abs(ctx.batch_drift - 1) > 0.03:
            note = (f"{DRIFT_NOTE} (up to {ctx.batch_drift - 1:+.0%}); later batches were "
                    f"rescaled by {len(anchors)} re-timed candidates")
            ctx.notes[:] = [n for n in ctx.notes if not n.startswith(DRIFT_NOTE)] + [note]
    ctx.samples = np.vstack([ctx.samples, new])
    ctx.sample_ms = np.vstack([ctx.sample_ms, ms])
    used = len(batch) * len(devices)  # anchors are timed again: they count
    ctx.device_measurements += used
    return used


def _cached_surrogate(ctx: StudyContext, widths, lat, features, clusters,
                      sopt: SurrogateOptions) -> Surrogate:
    """Train, or load the surrogate already trained on exactly these measurements."""
    key_src = (ctx.backend.name + ctx.space.model + str(ctx.space.round_to)
               + str(sorted(asdict(sopt).items()))).encode()
    h = hashlib.sha256(key_src + np.asarray(widths).tobytes() + np.nan_to_num(lat).tobytes()
                       + np.log(features).tobytes() + np.asarray(clusters).tobytes())
    key = f"{ctx.space.model}:{h.hexdigest()[:24]}"
    stored = ctx.store.get_surrogate(key)
    if stored is not None:
        return Surrogate.from_bytes(ctx.space, stored[1])
    sur = Surrogate(ctx.space, sopt).fit(widths, lat, features, clusters)
    ctx.store.put_surrogate(key, {"model": ctx.space.model, "report": sur.report_,
                                  "training_hash": sur.training_hash_}, sur.to_bytes())
    return sur


# -- optimising: search for a budget / objective / weights -------------------------------

def make_objective(ctx: StudyContext, objective: str | None = None,
                   weights: dict[int, float] | None = None,
                   slo_ms: float | None = None, *, method: str | None = None) -> Objective:
    """The fleet objective of a study (the paper's method ignores weights: plain mean)."""
    opt = ctx.options
    method = method or opt.method
    kind = objective or opt.objective
    if method == "paper":
        w = np.ones(ctx.k) / ctx.k
    elif method == "single-device":
        w = np.zeros(ctx.k)
        w[0] = 1.0
    else:
        w = ctx.clustering.normalise_weights(weights if weights is not None else opt.weights)
    return Objective(kind=kind, weights=w, dispersion=ctx.dispersion,
                     slo_ms=slo_ms if slo_ms is not None else opt.slo_ms)


def predict_clusters(ctx: StudyContext, widths) -> np.ndarray:
    """Surrogate latency (M, k) of candidates on every cluster."""
    devices, clusters, features = _search_devices(ctx)
    if ctx.options.method == "single-device":
        ms, _ = ctx.surrogate.predict(widths, features, clusters)
        return np.repeat(ms[:, :1], ctx.k, axis=1)
    ms, _ = ctx.surrogate.predict_clusters(widths, features, clusters, ctx.k)
    return ms


@dataclass
class Optimized:
    """A searched candidate and what the surrogate predicts for it."""

    widths: np.ndarray
    target_macs: float
    predicted_cluster_ms: np.ndarray | None
    objective: Objective
    seconds: float  # the whole optimisation, refinement measurements and refits included
    history: list[float] = field(default_factory=list)
    finalists_measured: int = 0  # device measurements made while optimising
    search_seconds: float | None = None  # the surrogate-driven search alone


def optimize(ctx: StudyContext, budget=None, *, objective: str | None = None,
             weights: dict[int, float] | None = None, slo_ms: float | None = None,
             method: str | None = None, progress: Progress = _noop,
             model: nn.Module | None = None, refine: int | None = None,
             finalists: int | None = None, restarts: int | None = None) -> Optimized:
    """The best candidate for a budget: searched on the surrogate (or a baseline rule).

    Changing the budget, objective or weights re-uses everything measured and
    learned in ``ctx``; only the search (and a few finalist measurements) run.
    ``refine`` rounds (default: the options' ``refine_rounds`` for ``hdap``)
    measure the search's favourites and refit before the final search; pass 0
    for the fastest what-if answer. ``finalists`` overrides the options'
    ``finalists``; with ``refine=0, finalists=0`` nothing is measured at all
    (what-if analysis in the app). ``restarts`` overrides the options' number
    of independent final searches (1: a third of the search time, for what-if).
    """
    opt = ctx.options
    method = method or opt.method
    finalists = opt.finalists if finalists is None else int(finalists)
    target = parse_budget(budget if budget is not None else opt.budget, ctx.space)
    obj = make_objective(ctx, objective, weights, slo_ms, method=method)
    t0 = time.perf_counter()
    if method == "uniform":
        widths = uniform_widths(ctx.space, target)
        return Optimized(widths, target, _maybe_predict(ctx, widths), obj,
                         time.perf_counter() - t0)
    if method == "global":
        model = model if model is not None else build_model(opt.model, opt.model_weights,
                                                            seed=opt.seed)
        widths = global_widths(model, ctx.space, target)
        return Optimized(widths, target, _maybe_predict(ctx, widths), obj,
                         time.perf_counter() - t0)
    if ctx.surrogate is None:
        raise HdapError(f"method {method} needs measurements; prepare the study with it")

    def fitness(w):
        return obj(predict_clusters(ctx, w))

    def tick(gen, total):
        progress("search", gen, total)

    sopt = SearchOptions(population=opt.population, generations=opt.generations, seed=opt.seed)
    seeds = np.stack([uniform_widths(ctx.space, target)])
    rounds = opt.refine_rounds if (refine is None and method == "hdap") else (refine or 0)
    measured = 0
    searching = 0.0  # time in the surrogate-driven search itself, without measuring/refitting
    # Refinement searches only need to find the region worth measuring: a third as long.
    quick = replace(sopt, generations=max(1, opt.generations // 3))
    for _ in range(rounds):
        # Active refinement: the search's favourites lie where the surrogate has seen
        # least; measure them, learn from them, search again from them.
        res = evolve(ctx.space, target, fitness, quick, seeds=seeds, progress=tick)
        searching += res.seconds
        favourites = diverse_best(ctx.space, res.final_population, opt.refine_batch)
        measured += _measure_more(ctx, favourites)
        _fit_surrogate(ctx)
        seeds = np.vstack([seeds[:1], favourites])
    # Independent restarts of the final search: near the optimum many candidates score
    # within the surrogate's error of each other, and one run of the search lands on
    # any of them (on ResNet-50 at 1.0 G, three seeds spread over 3 % of fleet latency).
    # Only the first starts from the refinement's favourites; the others start afresh,
    # so that they can find basins the refinement never looked at.
    runs = []
    for r in range(opt.restarts if restarts is None else max(1, int(restarts))):
        runs.append(evolve(ctx.space, target, fitness, replace(sopt, seed=opt.seed + 7919 * r),
                           seeds=seeds if r == 0 else seeds[:1], progress=tick))
        searching += runs[-1].seconds
    res = min(runs, key=lambda run: run.score)
    widths = res.widths
    if method in ("hdap", "single-device") and finalists > 1:
        per_run = max(1, finalists // len(runs))
        pool = np.vstack([diverse_best(ctx.space, run.final_population, per_run)
                          for run in runs]
                         + [_best_measured(ctx, target, obj, max(1, finalists // 2))])
        widths, used = _pick_finalist(ctx, np.unique(pool, axis=0), obj)
        if opt.polish_rounds:
            widths, more = _polish(ctx, widths, target, obj, fitness, opt.polish_rounds,
                                   opt.polish_batch)
            used += more
        ctx.device_measurements += used
        measured += used
    seconds = time.perf_counter() - t0
    return Optimized(widths, target, predict_clusters(ctx, widths[None])[0], obj, seconds,
                     res.history, measured, searching)


def _pick_finalist(ctx: StudyContext, finalists: np.ndarray, obj: Objective) -> \
        tuple[np.ndarray, int]:
    """Measure the search's best few candidates and keep the best measured one.

    The surrogate is accurate to a few per cent; near the optimum that is the
    size of the differences between candidates, so the last word goes to a
    measurement on the same devices the surrogate learned from.
    """
    scores = _head_to_head(ctx, finalists, obj)
    best = int(np.argmin(scores))
    return finalists[best], len(finalists) * len(_search_devices(ctx)[0])


def _head_to_head(ctx: StudyContext, widths: np.ndarray, obj: Objective) -> np.ndarray:
    """Measured objective of candidates that are compared with each other.

    On real hardware they are all timed now, in one interleaved batch, with
    three times the runs: their differences are small, and a value from the
    store was timed minutes earlier on a machine whose speed has drifted since
    (a winner picked across batches is often just the one timed in a quiet
    moment). The twin's noise does not drift, so its stored values stand.
    """
    devices, _, _ = _search_devices(ctx)
    meas = ctx.backend.measure(ctx.space, widths, devices, repeats=_close_call_repeats(ctx),
                               warmup=ctx.options.warmup, store=ctx.store,
                               fresh=ctx.backend.real)
    return obj(_measured_clusters(ctx, widths, meas.median_ms))


def _close_call_repeats(ctx: StudyContext) -> int:
    """Timed runs for candidates whose differences are small: three times the sampling's
    on real hardware, whose noise is as large as those differences; the sampling's on the twin."""
    return ctx.options.repeats * (3 if ctx.backend.real else 1)


def _polish(ctx: StudyContext, widths: np.ndarray, target: float, obj: Objective, fitness,
            rounds: int, batch: int) -> tuple[np.ndarray, int]:
    """Measured local search from the chosen candidate.

    Each round mutates the incumbent a few hundred ways (a few groups at a
    time, repaired to the budget), lets the surrogate pick the ``batch`` most
    promising, measures them, and moves only when a measurement beats the
    incumbent. On the representatives, the measured objective follows the
    whole fleet to 0.1 %, so this climbs the real objective rather than the
    surrogate's picture of it.
    """
    from hdap_engine.pruning.budget import repair

    n_devices = len(_search_devices(ctx)[0])
    rng = np.random.default_rng(ctx.options.seed + 104729)
    g = ctx.space.n_groups
    used = 0
    seen = {widths.tobytes()}
    for _ in range(rounds):
        base = ctx.space.ratios(widths)
        n = 20 * batch
        mutate = rng.uniform(size=(n, g)) < 0.15
        ratios = base * np.exp(np.where(mutate, rng.normal(0, 0.2, size=(n, g)), 0.0))
        trial = np.unique(repair(ctx.space, np.clip(ratios, 0.02, 1.0), target), axis=0)
        trial = np.array([w for w in trial if w.tobytes() not in seen])
        if len(trial) == 0:
            break
        trial = trial[np.argsort(fitness(trial), kind="stable")[:batch]]
        seen.update(w.tobytes() for w in trial)
        # The incumbent is timed again with the trials: a move must beat it in the
        # same batch, not a figure from an earlier one.
        batch_widths = np.vstack([widths[None], trial])
        scores = _head_to_head(ctx, batch_widths, obj)
        used += (len(batch_widths) if ctx.backend.real else len(trial)) * n_devices
        i = int(np.argmin(scores))
        widths = batch_widths[i]
    return widths, used


def _measured_clusters(ctx: StudyContext, widths: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """Per-cluster latency (M, k) from measurements (M, search devices)."""
    _, clusters, _ = _search_devices(ctx)
    per_cluster = np.zeros((len(widths), ctx.k))
    for c in range(ctx.k):
        m = clusters == c
        per_cluster[:, c] = _nanmean(ms[:, m], axis=1) if m.any() else ms[:, 0]
    lost = ~np.isfinite(per_cluster)
    if lost.any():
        # A cluster whose devices all failed: its surrogate prediction stands in.
        per_cluster[lost] = predict_clusters(ctx, widths)[lost]
    return per_cluster


def _best_measured(ctx: StudyContext, target: float, obj: Objective, n: int) -> np.ndarray:
    """The ``n`` best candidates already measured on this budget (samples, refinement).

    They go back into the final comparison so that what the surrogate
    forgets while it learns another region (it happened on the host: a 17 %
    better candidate predicted 28 % too slow after refinement) is not lost.
    """
    from hdap_engine.pruning.budget import meets_budget

    macs = ctx.space.macs(ctx.samples)
    on_budget = np.array([meets_budget(m, target) for m in macs])
    if not on_budget.any():
        return np.empty((0, ctx.space.n_groups), dtype=np.int64)
    widths = ctx.samples[on_budget]
    scores = obj(_measured_clusters(ctx, widths, ctx.sample_ms[on_budget]))
    scores = np.where(np.isfinite(scores), scores, np.inf)
    return widths[np.argsort(scores, kind="stable")[:n]]


def _nanmean(a: np.ndarray, axis: int | None = None):
    """Mean over the finite values; NaN (without a warning) where there are none."""
    a = np.asarray(a, dtype=np.float64)
    n = np.isfinite(a).sum(axis=axis)
    total = np.where(np.isfinite(a), a, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _maybe_predict(ctx: StudyContext, widths) -> np.ndarray | None:
    if ctx.surrogate is None:
        return None
    return predict_clusters(ctx, np.atleast_2d(widths))[0]


# -- validating -------------------------------------------------------------------------

def validate(ctx: StudyContext, widths, *, every_device: bool = True,
             progress: Progress = _noop) -> Validation:
    """Measure a candidate on every cluster's representatives, and with the twin on all devices."""
    widths = np.asarray(widths, dtype=np.int64)
    progress("validate", 0, 2)
    meas = ctx.backend.measure(ctx.space, widths[None], ctx.rep_devices,
                               repeats=ctx.options.repeats, warmup=ctx.options.warmup,
                               store=ctx.store)
    k = ctx.k
    cm = np.full(k, np.nan)
    cs = np.full(k, np.nan)
    for c in range(k):
        m = ctx.rep_clusters == c
        cm[c] = float(_nanmean(meas.median_ms[0, m]))
        cs[c] = float(_nanmean(meas.spread_ms[0, m]))
    devices = {d: float(meas.median_ms[0, j]) for j, d in enumerate(ctx.rep_devices)}
    progress("validate", 1, 2)
    fleet_ms = None
    if every_device and isinstance(ctx.backend, TwinBackend):
        fleet_ms = ctx.backend.measure_fleet(ctx.space, widths, list(ctx.fleet.device_ids),
                                             repeats=ctx.options.repeats)
    progress("validate", 2, 2)
    return Validation(widths=widths, macs=float(ctx.space.macs(widths)), cluster_measured_ms=cm,
                      cluster_spread_ms=cs, device_measured_ms=devices, fleet_ms=fleet_ms,
                      notes=list(meas.notes))


def fleet_metrics(ctx: StudyContext, val: Validation, weights: np.ndarray,
                  objective: Objective) -> dict:
    """Fleet mean, p95 and worst cluster from a validation.

    With the twin every device was measured, so the mean and p95 are over
    devices. Otherwise the mean is the share-weighted mean of the clusters'
    measurements and the p95 comes from each cluster's dispersion.
    """
    from hdap_engine.search.objectives import mixture_quantile

    shares = ctx.clustering.weights_
    if val.fleet_ms is not None:
        mean = float(np.mean(val.fleet_ms))
        p95 = float(np.quantile(val.fleet_ms, 0.95))
        basis = "every device of the fleet"
    else:
        ok = np.isfinite(val.cluster_measured_ms)
        basis = "cluster representatives, weighted by device share"
        if not ok.any():
            mean = p95 = float("nan")
            basis += " (no cluster was measured)"
        else:
            # A cluster with no measured device (agents that failed) is left out, not
            # counted as zero; the others are weighted by their shares among themselves.
            w = shares[ok] / shares[ok].sum()
            mean = float(np.sum(val.cluster_measured_ms[ok] * w))
            p95 = float(mixture_quantile(val.cluster_measured_ms[ok][None], w,
                                         ctx.dispersion[ok], 0.95)[0])
            if not ok.all():
                basis += (f"; clusters {', '.join(str(c) for c in np.flatnonzero(~ok))} "
                          f"({shares[~ok].sum():.0%} of devices) were not measured and "
                          "are left out")
    weighted = float(np.nansum(val.cluster_measured_ms * weights))
    return {"measured_mean_ms": mean, "measured_p95_ms": p95,
            "worst_cluster_ms": float(np.nanmax(val.cluster_measured_ms)),
            "weighted_mean_ms": weighted, "objective_value": float(
                objective(val.cluster_measured_ms[None])[0]), "basis": basis}


# -- the whole study ----------------------------------------------------------------------

def run_study(options: StudyOptions, telemetry, *, out_dir: str | os.PathLike | None = None,
              store: Store | None = None, progress: Progress = _noop,
              context: StudyContext | None = None, export: bool = True,
              record: bool = True) -> StudyResult:
    """Prepare (or reuse ``context``), optimise, prune, validate, export, record.

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
    """
    if context is None:
        context = prepare(options, telemetry, store=store, progress=progress)
    else:
        context.options = reuse_options(context.options, options)
    ctx = context
    model = build_model(options.model, options.model_weights, seed=options.seed)
    opt_res = optimize(ctx, options.budget, method=options.method, progress=progress,
                       model=model)
    progress("prune", 0, 1)
    kept = prune_to_widths(model, ctx.space, opt_res.widths)
    progress("prune", 1, 1)
    val = validate(ctx, opt_res.widths, progress=progress)
    unpruned = validate(ctx, ctx.space.base_widths, progress=progress)
    weights = opt_res.objective.weights
    result = StudyResult(
        context=ctx, method=options.method, widths=opt_res.widths,
        target_macs=opt_res.target_macs, predicted_cluster_ms=opt_res.predicted_cluster_ms,
        validation=val, unpruned=unpruned, weights=weights, objective=opt_res.objective,
        search_seconds=(opt_res.seconds if opt_res.search_seconds is None
                        else opt_res.search_seconds),
        device_measurements=(ctx.device_measurements if options.method in SEARCH_METHODS
                             else 0),
        search_history=opt_res.history, model=model, kept=kept)
    result.report = build_report(result)
    if export and out_dir is not None:
        progress("export", 0, 1)
        result.bundle = export_bundle(model, ctx.space, opt_res.widths, out_dir, result.report,
                                      kept=kept)
        progress("export", 1, 1)
    if record:
        ctx.store.add_run(f"{options.model} {options.method} {format_macs(result.target_macs)}",
                          options.settings(), _history_entry(result))
    return result


WHAT_IF_FIELDS = ("budget", "objective", "slo_ms", "weights", "finalists", "model_weights")


def reuse_options(prepared: StudyOptions, wanted: StudyOptions) -> StudyOptions:
    """Options for a what-if run on a prepared context; refuses what would need new measurements."""
    differ = [f for f in asdict(prepared) if f not in WHAT_IF_FIELDS + ("agent_token",)
              and getattr(prepared, f) != getattr(wanted, f)
              and not (f == "method" and wanted.method in BASELINE_METHODS)]
    if differ:
        raise HdapError(f"this study was prepared with other {', '.join(differ)}; "
                        "prepare it again for those settings")
    return replace(prepared, method=wanted.method,
                   **{f: getattr(wanted, f) for f in WHAT_IF_FIELDS})


def build_report(result: StudyResult) -> dict:
    """The report.json content of a study (plain data)."""
    ctx = result.context
    val, base = result.validation, result.unpruned
    fm = fleet_metrics(ctx, val, result.weights, result.objective)
    fb = fleet_metrics(ctx, base, result.weights, result.objective)
    clusters = []
    profiles = ctx.clustering.profiles_
    for c in range(ctx.k):
        reps = [d for d, cc in zip(ctx.rep_devices, ctx.rep_clusters, strict=True) if cc == c]
        clusters.append({
            "cluster": c,
            "devices": int(profiles.loc[profiles["cluster"] == c, "devices"].iloc[0]),
            "share": float(ctx.clustering.weights_[c]),
            "weight": float(result.weights[c]),
            "predicted_ms": None if result.predicted_cluster_ms is None
            else float(result.predicted_cluster_ms[c]),
            "measured_ms": float(val.cluster_measured_ms[c]),
            "measured_spread_ms": float(val.cluster_spread_ms[c]),
            "unpruned_ms": float(base.cluster_measured_ms[c]),
            "representatives": reps,
            # The devices whose numbers these are: a failed representative's replacement.
            "devices_measured": {(ctx.backend.measured_device(d) or d): val.device_measured_ms[d]
                                 for d in reps if np.isfinite(val.device_measured_ms[d])},
        })
    predicted_mean = None
    if result.predicted_cluster_ms is not None:
        predicted_mean = float(np.sum(result.predicted_cluster_ms * ctx.clustering.weights_))
    opt = ctx.options
    report = {
        "method": result.method,
        "budget": str(opt.budget),
        "budget_macs": result.target_macs,
        "objective": result.objective.kind,
        "objective_label": result.objective.label,
        "weights_source": "user" if opt.weights else "device shares",
        "backend": ctx.backend.name,
        "measured_source": ctx.backend.source,
        "fleet_source": ctx.fleet.source,
        "n_devices": int(ctx.fleet.n_devices),
        "k": ctx.k,
        "model_weights": weights_label(opt.model_weights),
        "seed": opt.seed,
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
        "search_seconds": result.search_seconds,
        "device_measurements": result.device_measurements,
        "surrogate": None if ctx.surrogate is None else ctx.surrogate.report_,
        "notes": list(dict.fromkeys(ctx.notes + val.notes)),
        "settings": opt.settings(),
    }
    details = ctx.backend.details()
    if details is not None:
        report[ctx.backend.name] = details
    return report


def _history_entry(result: StudyResult) -> dict:
    r = result.report
    return {k: r[k] for k in ("method", "budget", "budget_macs", "objective", "backend",
                              "measured_source", "fleet_source", "clusters", "fleet",
                              "search_seconds", "device_measurements", "notes")} | {
        "widths": result.context.space.widths_dict(result.widths),
        "macs": float(result.context.space.macs(result.widths)),
        "model": result.context.space.model,
        "bundle": str(result.bundle) if result.bundle else None,
    }


# -- baselines without a fleet (hdap prune) -------------------------------------------------

@dataclass
class PruneResult:
    """A pruned model and how it was obtained (no latency involved)."""

    model: nn.Module
    space: PruningSpace
    widths: np.ndarray
    kept: dict[str, list[int]]
    report: dict = field(default_factory=dict)


def prune_baseline(model_name: str, budget, method: str = "uniform", *, weights=None,
                   round_to: int = 8, min_ratio: float = 0.1, seed: int = 0) -> PruneResult:
    """Prune ``model_name`` to ``budget`` with a baseline method (no latency model)."""
    if method not in BASELINE_METHODS:
        raise HdapError(f"unknown method {method!r}; choose one of: {', '.join(BASELINE_METHODS)}")
    space = PruningSpace.for_model(model_name, round_to=round_to, min_ratio=min_ratio)
    target = parse_budget(budget, space)
    model = build_model(model_name, weights, seed=seed)
    if method == "uniform":
        widths = uniform_widths(space, target)
    else:
        widths = global_widths(model, space, target)
    kept = prune_to_widths(model, space, widths)
    report = {
        "method": method,
        "budget": str(budget),
        "budget_macs": target,
        "weights": weights_label(weights),
        "seed": seed,
        "round_to": round_to,
        "min_ratio": min_ratio,
    }
    return PruneResult(model=model, space=space, widths=widths, kept=kept, report=report)


def export_result(result: PruneResult, out_dir: str | os.PathLike) -> Path:
    """Write ``result`` as a bundle (folder + zip)."""
    return export_bundle(result.model, result.space, result.widths, out_dir, result.report,
                         kept=result.kept)
