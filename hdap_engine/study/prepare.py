"""Preparing a study: fleet, clusters, backend, sampled measurements, surrogate.

`prepare` does the expensive, reusable part of a study once and returns a
read-only `StudyContext`: what-if queries (budget, objective, cluster
weights) then search it in seconds. What a search measures and learns later
is returned to its caller as a new `Learned`, never written into the context.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.latency.backends import Backend
from hdap_engine.latency.construct import make_backend
from hdap_engine.latency.prior import twin_prior_for
from hdap_engine.latency.sampling import sample_candidates
from hdap_engine.latency.store import Store
from hdap_engine.latency.training import SurrogateTrainer
from hdap_engine.options import ClusteringPlan, Query, SearchPlan, StudyOptions
from hdap_engine.pruning.budget import parse_budget
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.search.fleet_search import FleetSearch
from hdap_engine.search.learned import Learned, Prior, SearchDevices
from hdap_engine.search.methods import Method, get_method
from hdap_engine.search.objectives import Objective, cluster_dispersion, cluster_weights


@dataclass(frozen=True)
class StudyContext:
    """Everything measured and learned for one fleet and model: reused by what-if runs.

    Read-only: a search returns what it measured in a new `Learned` instead of
    adding it here, so a context answers the same query the same way however
    often it is asked.
    """

    options: StudyOptions
    fleet: object  # hdap_engine.fleet.telemetry.Fleet
    clustering: object  # hdap_engine.fleet.clustering.Clustering
    space: PruningSpace
    backend: Backend
    store: Store
    rep_devices: tuple[str, ...]  # every cluster's representatives, cluster by cluster
    rep_clusters: np.ndarray  # cluster of each representative
    rep_features: np.ndarray  # probe vector (ms) of each representative
    dispersion: np.ndarray  # (k,) log spread of devices within each cluster
    learned: Learned | None = None  # the sampled measurements and their surrogate
    accuracy: object | None = None  # hdap_engine.accuracy.study.AccuracyContext (with --data)
    notes: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.clustering.k_)

    @property
    def surrogate(self):
        """The surrogate fitted on the sampled measurements (None for baseline methods)."""
        return None if self.learned is None else self.learned.surrogate

    @property
    def device_measurements(self) -> int:
        """(device, candidate) pairs measured while preparing."""
        return 0 if self.learned is None else self.learned.device_measurements

    def search_devices(self, method: Method | None = None) -> SearchDevices:
        """The devices ``method`` measures: every representative, or the one lab device."""
        method = method or self.options.method_spec
        if method.devices == "lab-device":
            # The representative of the largest cluster, closest to its centroid first.
            return SearchDevices(tuple(self.rep_devices[:1]), self.rep_clusters[:1] * 0,
                                 self.rep_features[:1], self.k, lab_device=True)
        return SearchDevices(tuple(self.rep_devices), self.rep_clusters, self.rep_features,
                             self.k)

    def objective(self, query: Query | None = None, method: Method | None = None) -> Objective:
        """The fleet objective of ``query`` as ``method`` weighs clusters."""
        method = method or self.options.method_spec
        return self._objective(query or self.options.query, method.cluster_weighting)

    def fleet_objective(self, query: Query | None = None) -> Objective:
        """The objective every method is judged by: the query's own cluster weights."""
        return self._objective(query or self.options.query, "study")

    def _objective(self, q: Query, weighting: str) -> Objective:
        if weighting == "equal":
            w = np.ones(self.k) / self.k
        elif weighting == "lab-device":
            w = np.zeros(self.k)
            w[0] = 1.0
        else:
            w = cluster_weights(self.clustering.shares_, q.cluster_weights)
        return Objective(kind=q.objective, cluster_weights=w, dispersion=self.dispersion,
                         slo_ms=q.slo_ms)

    def trainer(self, method: Method | None = None) -> SurrogateTrainer:
        """How ``method``'s surrogate is fitted on its devices' measurements."""
        method = method or self.options.method_spec
        devices = self.search_devices(method)
        # The paper fits gradient boosting alone; the linear base is ours.
        plan = self.options.surrogate
        sopt = replace(plan, mode=method.surrogate_mode or plan.mode,
                       linear_base=plan.linear_base and method.linear_base)
        # The host backend times this machine, not a device of the fleet's SKU.
        twin_prior = twin_prior_for(self.fleet, self.options.measurement.twin_preset) \
            if sopt.twin_prior and self.backend.name != "host" else None
        return SurrogateTrainer(self.space, self.store, self.backend.name, devices.features,
                                devices.clusters, sopt, twin_prior)

    def fleet_search(self, query: Query | None = None, method: Method | None = None,
                     plan: SearchPlan | None = None) -> FleetSearch:
        """The `FleetSearch` of ``method`` for ``query`` on this context."""
        method = method or self.options.method_spec
        m = self.options.measurement
        return FleetSearch(self.space, self.search_devices(method), self.backend, self.store,
                           self.objective(query, method), method, plan or self.options.search,
                           self.trainer(method), seed=self.options.seed, repeats=m.repeats,
                           warmup=m.warmup, sequential=self.stopping_rule(method, plan))

    def stopping_rule(self, method: Method | None = None, plan: SearchPlan | None = None):
        """The `StoppingRule` of a method that measures sequentially (None for the others)."""
        from hdap_engine.search.sequential import StoppingRule

        method = method or self.options.method_spec
        if not method.measures_sequentially:
            return None
        m = self.options.measurement
        plan = plan or self.options.search
        warm = self.learned is not None and self.learned.prior is not None
        budget = m.warm_max_measurements if warm else m.max_measurements
        cost = len(self.search_devices(method)) - sum(
            int((self.rep_clusters == c).sum()) for c in
            (self.learned.known if self.learned is not None else ()))
        # Finalists (and the best measured so far) and the polish: what the loop leaves them.
        reserve = min(budget // 2, (plan.finalists + plan.finalists // 2
                                    + plan.polish_rounds * plan.polish_batch) * max(cost, 1))
        return StoppingRule(batch=m.batch, max_measurements=budget, reserve=reserve,
                            adaptive=m.adaptive_repeats, min_repeats=m.min_repeats,
                            max_repeats=m.max_repeats, repeat_precision=m.repeat_precision)


def load_study_fleet(telemetry, *, sku: str | None = None, name: str | None = None):
    """The validated fleet of a telemetry path, bytes, or an already loaded `Fleet`."""
    from hdap_engine.fleet.telemetry import Fleet, load_fleet

    if isinstance(telemetry, Fleet):
        return telemetry
    return load_fleet(telemetry, sku=sku, name=name)


def prepare(options: StudyOptions, telemetry, *, store: Store | None = None,
            progress: Progress = no_progress, fleet=None, clustering=None,
            telemetry_path: str | os.PathLike | None = None,
            devices_of: str | None = None) -> StudyContext:
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
    fleet:
        The already loaded fleet (the app passes the one on screen).
    clustering:
        An already fitted clustering of this fleet (the app passes the one on screen).
    telemetry_path:
        Where the telemetry lives, to find its twin sidecar when ``telemetry`` is a Fleet.
    devices_of:
        The method whose representatives to choose (default: the options' method);
        a context rebuilt around a finished study's measurements must have its devices.

    Returns
    -------
    A read-only `StudyContext`; for search methods its ``learned`` holds the
    sampled measurements and the surrogate fitted on them.
    """
    from hdap_engine.fleet.clustering import Clustering

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
    plan = options.clustering
    if options.measurement.backend == "host":
        # The host backend measures this machine only: the fleet *is* this machine.
        if fleet.n_devices > 1:
            notes.append(f"host backend: every device of {fleet.source} is measured as this "
                         "machine; the study treats the fleet as one cluster")
        clustering = Clustering(ClusteringPlan(k=1, representatives=1,
                                               seed=options.seed)).fit(fleet)
    elif clustering is None:
        clustering = Clustering(plan).fit(fleet)
    progress("cluster", 1, 1)
    timings["cluster"] = time.perf_counter() - t0

    # Settings that can be wrong are checked before anything is measured.
    cluster_weights(clustering.shares_, options.query.cluster_weights)
    space = PruningSpace.for_model(options.model, round_to=options.round_to,
                                   min_ratio=options.min_ratio)
    parse_budget(options.query.budget, space)
    backend, backend_notes = make_backend(options.measurement, fleet, telemetry_path,
                                          clustering, seed=options.seed)
    notes.extend(backend_notes)
    index = {d: i for i, d in enumerate(fleet.device_ids)}
    probes = fleet.probes()
    dispersion = cluster_dispersion(probes, clustering.labels_, clustering.k_)
    chooser = get_method(devices_of) if devices_of else options.method_spec
    spread = (options.measurement.representative_spread
              if chooser.measures_sequentially else None)
    rep_devices, rep_clusters = [], []
    for c in range(clustering.k_):
        for dev in representatives_by_spread(clustering.representatives_[c], dispersion[c],
                                             spread):
            rep_devices.append(dev)
            rep_clusters.append(c)
    ctx = StudyContext(
        options=options, fleet=fleet, clustering=clustering, space=space, backend=backend,
        store=store, rep_devices=tuple(rep_devices), rep_clusters=np.array(rep_clusters),
        rep_features=probes[[index[d] for d in rep_devices]],
        dispersion=dispersion, notes=tuple(notes), timings=timings)
    if options.accuracy.data:
        ctx = replace(ctx, accuracy=prepare_study_accuracy(options, progress=progress))
    if options.method_spec.searches:
        learned = measure_samples(ctx, progress=progress)
        ctx = replace(ctx, learned=learned)
    return ctx


def representatives_by_spread(representatives: list[str], dispersion: float,
                              spread: float | None) -> list[str]:
    """A cluster's representatives, one per ``spread`` of its devices' log spread.

    A tight cluster is one device; a wide one gets more, up to every
    representative the clustering chose. ``spread`` None keeps them all.
    """
    if spread is None:
        return list(representatives)
    n = int(np.ceil(max(float(dispersion), 1e-12) / spread))
    return list(representatives[:max(1, min(len(representatives), n))])


def prepare_study_accuracy(options: StudyOptions, *, progress: Progress = no_progress):
    """The study's labelled data, calibration set and floor (`prepare_accuracy`)."""
    from hdap_engine.accuracy.study import prepare_accuracy

    acc = options.accuracy
    progress("data", 0, 1)
    out = prepare_accuracy(options.model, options.model_weights, acc.data,
                           val_data=acc.val_data, mean=acc.mean, std=acc.std,
                           min_accuracy=acc.min_accuracy, seed=options.seed,
                           n_bn=acc.calibration_images, n_eval=acc.calibration_eval,
                           samples=acc.accuracy_samples, metric=acc.accuracy_metric)
    progress("data", 1, 1)
    return out


def measure_samples(ctx: StudyContext, *, progress: Progress = no_progress) -> Learned:
    """Measure sampled candidates on the method's devices and fit the surrogate on them.

    A method that measures sequentially samples `MeasurementPlan.initial_samples`
    instead of ``samples``, starts from the store's measurements of earlier
    studies of the same model and SKU (warm start; not with ``warm_start``
    off), measures nothing on clusters whose every representative has a
    device in those studies within the probes' noise, and sets each device's
    adaptive repeats from the spread of its samples.
    """
    opt = ctx.options
    m = opt.measurement
    spec = opt.method_spec
    t0 = time.perf_counter()
    devices = ctx.search_devices()
    sequential = spec.measures_sequentially
    _remember_devices(ctx, devices)
    prior = warm_start_prior(ctx, devices) if sequential and m.warm_start else None
    settled: tuple[int, ...] = ()
    if prior is not None:
        settled = known_clusters(devices, prior)  # known: never measured
    # A study that asks for fewer samples than the sequential start gets what it asked for.
    n = max(10, min(m.initial_samples, m.samples)) if sequential else m.samples
    if prior is not None:
        # Earlier studies taught the shared model; the new devices only need to be placed.
        n = max(10, n // 3)
    active = ~np.isin(devices.clusters, list(settled))
    ids = [d for d, a in zip(devices.ids, active, strict=True) if a]
    # Sequential methods: a third of the samples on every device (what tells the devices
    # apart), the rest different on each device. The surrogate is shared: each device's
    # own candidates teach it how candidates differ everywhere, so seven devices with 20
    # candidates of their own show it 140 architectures for the price of 20 each.
    # A backend that exports each candidate (agents) pays per candidate, not per device:
    # there every device measures the same samples, and the shared surrogate learns from
    # the devices' differences on them.
    shared = not sequential or ctx.backend.exports_candidates
    core_n = n if shared else max(10, n // 3)
    own_n = (n - core_n) if len(ids) > 1 else 0
    samples = sample_candidates(ctx.space, core_n + own_n * len(ids), seed=opt.seed,
                                # A latency budget's MACs are found later: no focus.
                                focus_macs=None if opt.query.latency_ms is not None
                                else parse_budget(opt.query.budget, ctx.space),
                                allow_fewer=own_n > 0)
    if own_n and len(samples) < core_n + own_n * len(ids):
        # A small space has fewer distinct candidates than every device's own share.
        if len(samples) < core_n:
            raise HdapError(f"{ctx.space.model}: only {len(samples)} distinct candidates "
                            f"exist in this MACs range; ask for fewer samples")
        own_n = (len(samples) - core_n) // len(ids)
        samples = samples[:core_n + own_n * len(ids)]
    if own_n:
        samples = samples[np.random.default_rng(opt.seed).permutation(len(samples))]

    def tick(done, total):
        progress("measure", done, total)

    progress("measure", 0, len(samples))
    ms = np.full((len(samples), len(devices)), np.nan)
    meas = None
    device_s = 0.0
    used = 0
    sigma = np.full(len(devices), np.nan)
    pairs = np.zeros(len(devices), dtype=np.int64)
    if ids:
        meas = ctx.backend.measure(ctx.space, samples[:core_n], ids, repeats=m.repeats,
                                   warmup=m.warmup, store=ctx.store, progress=tick)
        ms[:core_n, active] = meas.median_ms
        device_s, used = meas.device_s, core_n * len(ids)
        pairs[active] += core_n
        if sequential:
            from hdap_engine.search.sequential import device_sigmas

            sigma[active] = device_sigmas(meas)
        cols = np.flatnonzero(active)
        for b, j in enumerate(cols[:len(cols) if own_n else 0]):
            rows = slice(core_n + b * own_n, core_n + (b + 1) * own_n)
            own = ctx.backend.measure(ctx.space, samples[rows], [devices.ids[j]],
                                      repeats=m.repeats, warmup=m.warmup, store=ctx.store)
            ms[rows, j] = own.median_ms[:, 0]
            device_s += own.device_s
            used += own_n
            pairs[j] += own_n
    progress("measure", len(samples), len(samples))
    ctx.timings["measure"] = time.perf_counter() - t0
    repeats = None
    if sequential and m.adaptive_repeats:
        from hdap_engine.search.sequential import repeats_for

        repeats = repeats_for(sigma, ctx.stopping_rule(spec), m.repeats)

    t0 = time.perf_counter()
    progress("fit", 0, 1)
    surrogate = ctx.trainer().fit(samples, ms, prior=prior)
    progress("fit", 1, 1)
    ctx.timings["fit"] = time.perf_counter() - t0
    notes = [] if meas is None else list(dict.fromkeys(meas.notes))
    if prior is not None:
        notes.append(f"warm start: {prior.pairs:,} measurements of earlier studies on "
                     f"{prior.studies_devices} devices of this model and SKU"
                     + (f"; clusters {', '.join(map(str, settled))} match devices measured "
                        "before and are not measured again" if settled else ""))
    return Learned(widths=samples, ms=ms, surrogate=surrogate,
                   device_measurements=used, notes=tuple(notes), device_s=device_s,
                   known=settled,
                   repeats=repeats,
                   run_sigma=tuple(float(x) for x in sigma) if sequential else None,
                   prior=prior, device_pairs=tuple(int(x) for x in pairs))


# Two devices whose log probe vectors differ by less than this (root mean square over the
# probes) are the same hardware for the surrogate: a few per cent is the probes' own noise.
SAME_DEVICE_PROBES = 0.03


def _scope(ctx: StudyContext) -> dict:
    """What a device's measurements are valid for besides the model: its SKU and probes."""
    return {"sku": ctx.fleet.sku or "", "probes": list(ctx.fleet.probe_columns)}


def _remember_devices(ctx: StudyContext, devices: SearchDevices) -> None:
    """Record the search devices' probe vectors in the store, for later warm starts."""
    names = list(ctx.fleet.probe_columns)
    ctx.store.put_devices(ctx.backend.name, _scope(ctx), [
        (ctx.backend.device_key(d), dict(zip(names, map(float, f), strict=True)))
        for d, f in zip(devices.ids, devices.features, strict=True)])


def warm_start_prior(ctx: StudyContext, devices: SearchDevices) -> Prior | None:
    """Earlier studies' measurements of this model on devices of this SKU (None: none)."""

    names = list(ctx.fleet.probe_columns)
    own = {ctx.backend.device_key(d) for d in ctx.fleet.device_ids}
    probes, rows = ctx.store.warm_start_rows(ctx.backend.name, ctx.space.model,
                                             ctx.space.input_shape, _scope(ctx), exclude=own)
    if not rows:
        return None
    dev_index = {d: i for i, d in enumerate(probes)}
    cand: dict[str, int] = {}
    for _, wk, _ in rows:
        cand.setdefault(wk, len(cand))
    widths = np.array([[int(x) for x in wk.split(",")] for wk in cand], dtype=np.int64)
    if widths.shape[1] != ctx.space.n_groups:
        return None
    ms = np.full((len(cand), len(dev_index)), np.nan)
    for d, wk, median in rows:
        ms[cand[wk], dev_index[d]] = median
    features = np.array([[probes[d][n] for n in names] for d in dev_index], dtype=np.float64)
    return Prior(widths=widths, ms=ms, features=features, studies_devices=len(dev_index))


def known_clusters(devices: SearchDevices, prior: Prior) -> tuple[int, ...]:
    """Clusters whose every representative has an earlier device within the probes' noise."""
    mine = np.log(devices.features)
    theirs = np.log(prior.features)
    dist = np.sqrt(((mine[:, None, :] - theirs[None, :, :]) ** 2).mean(axis=2)).min(axis=1)
    return tuple(int(c) for c in range(devices.k)
                 if (devices.clusters == c).any()
                 and (dist[devices.clusters == c] < SAME_DEVICE_PROBES).all())
