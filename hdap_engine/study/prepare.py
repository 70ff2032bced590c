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

from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.latency.backends import Backend
from hdap_engine.latency.construct import make_backend
from hdap_engine.latency.sampling import sample_candidates
from hdap_engine.latency.store import Store
from hdap_engine.latency.training import SurrogateTrainer
from hdap_engine.options import ClusteringPlan, Query, SearchPlan, StudyOptions
from hdap_engine.pruning.budget import parse_budget
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.search.fleet_search import FleetSearch, Learned, SearchDevices
from hdap_engine.search.methods import Method
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
        return SurrogateTrainer(self.space, self.store, self.backend.name, devices.features,
                                devices.clusters, sopt)

    def fleet_search(self, query: Query | None = None, method: Method | None = None,
                     plan: SearchPlan | None = None) -> FleetSearch:
        """The `FleetSearch` of ``method`` for ``query`` on this context."""
        method = method or self.options.method_spec
        m = self.options.measurement
        return FleetSearch(self.space, self.search_devices(method), self.backend, self.store,
                           self.objective(query, method), method, plan or self.options.search,
                           self.trainer(method), seed=self.options.seed, repeats=m.repeats,
                           warmup=m.warmup)


def load_study_fleet(telemetry, *, sku: str | None = None, name: str | None = None):
    """The validated fleet of a telemetry path, bytes, or an already loaded `Fleet`."""
    from hdap_engine.fleet.telemetry import Fleet, load_fleet

    if isinstance(telemetry, Fleet):
        return telemetry
    return load_fleet(telemetry, sku=sku, name=name)


def prepare(options: StudyOptions, telemetry, *, store: Store | None = None,
            progress: Progress = no_progress, fleet=None, clustering=None,
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
    fleet:
        The already loaded fleet (the app passes the one on screen).
    clustering:
        An already fitted clustering of this fleet (the app passes the one on screen).
    telemetry_path:
        Where the telemetry lives, to find its twin sidecar when ``telemetry`` is a Fleet.

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
    rep_devices, rep_clusters = [], []
    for c in range(clustering.k_):
        for dev in clustering.representatives_[c]:
            rep_devices.append(dev)
            rep_clusters.append(c)
    index = {d: i for i, d in enumerate(fleet.device_ids)}
    probes = fleet.probes()
    ctx = StudyContext(
        options=options, fleet=fleet, clustering=clustering, space=space, backend=backend,
        store=store, rep_devices=tuple(rep_devices), rep_clusters=np.array(rep_clusters),
        rep_features=probes[[index[d] for d in rep_devices]],
        dispersion=cluster_dispersion(probes, clustering.labels_, clustering.k_),
        notes=tuple(notes), timings=timings)
    if options.accuracy.data:
        ctx = replace(ctx, accuracy=prepare_study_accuracy(options, progress=progress))
    if options.method_spec.searches:
        learned = measure_samples(ctx, progress=progress)
        ctx = replace(ctx, learned=learned)
    return ctx


def prepare_study_accuracy(options: StudyOptions, *, progress: Progress = no_progress):
    """The study's labelled data, calibration set and floor (`prepare_accuracy`)."""
    from hdap_engine.accuracy.study import prepare_accuracy

    acc = options.accuracy
    progress("data", 0, 1)
    out = prepare_accuracy(options.model, options.model_weights, acc.data,
                           val_data=acc.val_data, mean=acc.mean, std=acc.std,
                           min_accuracy=acc.min_accuracy, seed=options.seed,
                           n_bn=acc.calibration_images, n_eval=acc.calibration_eval,
                           samples=acc.accuracy_samples)
    progress("data", 1, 1)
    return out


def measure_samples(ctx: StudyContext, *, progress: Progress = no_progress) -> Learned:
    """Measure sampled candidates on the method's devices and fit the surrogate on them."""
    opt = ctx.options
    m = opt.measurement
    t0 = time.perf_counter()
    samples = sample_candidates(ctx.space, m.samples, seed=opt.seed,
                                focus_macs=parse_budget(opt.query.budget, ctx.space))
    devices = ctx.search_devices()

    def tick(done, total):
        progress("measure", done, total)

    progress("measure", 0, len(samples))
    meas = ctx.backend.measure(ctx.space, samples, list(devices.ids), repeats=m.repeats,
                               warmup=m.warmup, store=ctx.store, progress=tick)
    progress("measure", len(samples), len(samples))
    ctx.timings["measure"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress("fit", 0, 1)
    surrogate = ctx.trainer().fit(samples, meas.median_ms)
    progress("fit", 1, 1)
    ctx.timings["fit"] = time.perf_counter() - t0
    return Learned(widths=samples, ms=meas.median_ms, surrogate=surrogate,
                   device_measurements=samples.shape[0] * len(devices),
                   notes=tuple(dict.fromkeys(meas.notes)))
