"""The whole search for one budget: surrogate search, refinement, restarts, finalists, polish.

`FleetSearch` is built from the pruning space, the devices a method searches
for, the backend that measures them, the fleet objective, the method and the
search plan. `FleetSearch.run(target_macs, learned)` then

1. **refines** (methods that refine): a short search on the surrogate, its
   diverse favourites measured and added to the training set, the surrogate
   refitted; `SearchPlan.refine_rounds` times, or, for methods that measure
   sequentially, in small batches until the stopping rule says another batch
   is not worth its noise (`hdap_engine.search.sequential`);
2. **restarts**: `SearchPlan.restarts` independent final searches, the first
   from the refinement's favourites, the others afresh; for methods with
   cluster seeds, one more from every cluster's own optimum on the surrogate;
3. **measures finalists** (methods that do): the best few of every run and
   the best candidates already measured on this budget, measured head to head;
4. **polishes**: a measured local search from the chosen candidate.

What is measured and learned (`Learned`) is never changed in place: `run`
returns a new one, so a prepared study answers every query the same way and
counts what each run measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from hdap_engine.infra.progress import Progress
from hdap_engine.latency.backends import Backend, nanmean
from hdap_engine.latency.store import Store
from hdap_engine.pruning.budget import meets_budget
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.search.baselines import uniform_widths
from hdap_engine.search.evolution import diverse_best, evolve, mutate
from hdap_engine.search.learned import Learned, SearchDevices
from hdap_engine.search.methods import Method
from hdap_engine.search.objectives import Objective

TIMING_DRIFT_ANCHORS = 6  # training candidates re-timed with every later batch (real hardware)
# Timing drift: a real device's speed changes between measurement batches (not device
# drift, a device's hardware changing; not fleet drift, devices moving between snapshots).
TIMING_DRIFT_NOTE = "the devices' speed drifted between measurement batches"


@dataclass(frozen=True)
class SearchOutcome:
    """The chosen candidate and how the search got there."""

    widths: np.ndarray
    predicted_cluster_ms: np.ndarray  # (k,) the final surrogate's prediction
    learned: Learned  # everything measured and learned, this run included
    device_measurements: int  # (device, candidate) pairs measured by this run alone
    device_s: float  # seconds of timing on devices this run alone cost
    optimize_s: float  # the whole run: measurements and refits included
    search_s: float  # the surrogate-driven search alone
    history: list[float] = field(default_factory=list)  # best score per generation


class FleetSearch:
    """The search of one method for one fleet (see the module docstring).

    Parameters
    ----------
    space:
        The pruning space.
    devices:
        The devices the method measures.
    backend, store:
        Where measurements come from and are kept.
    objective:
        The fleet objective to minimise.
    method:
        The registered method (whether it refines, measures finalists).
    plan:
        `hdap_engine.options.SearchPlan`.
    trainer:
        Refits the surrogate: ``trainer.fit(widths, ms) -> Surrogate``.
    seed, repeats, warmup:
        The study's seed and timed runs per measurement.
    sequential:
        The stopping rule of methods that measure sequentially
        (`hdap_engine.search.sequential.StoppingRule`); None: fixed refinement rounds.
    """

    def __init__(self, space: PruningSpace, devices: SearchDevices, backend: Backend,
                 store: Store, objective: Objective, method: Method, plan, trainer, *,
                 seed: int = 0, repeats: int = 5, warmup: int = 2, sequential=None):
        self.space = space
        self.devices = devices
        self.backend = backend
        self.store = store
        self.objective = objective
        self.method = method
        self.plan = plan
        self.trainer = trainer
        self.seed = int(seed)
        self.repeats = int(repeats)
        self.warmup = int(warmup)
        self.sequential = sequential

    # -- predictions ------------------------------------------------------------------

    def predict_clusters(self, surrogate, widths) -> np.ndarray:
        """Surrogate latency (M, k) of candidates on every cluster."""
        d = self.devices
        if d.lab_device:
            ms, _ = surrogate.predict(widths, d.features, d.clusters)
            return np.repeat(ms[:, :1], d.k, axis=1)
        ms, _ = surrogate.predict_clusters(widths, d.features, d.clusters, d.k)
        return ms

    # -- the run ----------------------------------------------------------------------

    def run(self, target_macs: float, learned: Learned, *,
            progress: Progress | None = None, accuracy=None) -> SearchOutcome:
        """The best candidate for ``target_macs``, starting from what ``learned`` holds.

        ``accuracy`` (an `hdap_engine.accuracy.guide.AccuracyGuide`) keeps the
        search above its accuracy floor: the surrogate's scores of candidates
        predicted below it are penalised, and the candidate chosen (finalist,
        polish move, or the search's best) is the best one whose calibrated
        accuracy, evaluated for real, meets the floor.
        """
        t0 = time.perf_counter()
        plan = self.plan
        state = _State(learned)

        def fitness(w):
            scores = self.objective(self.predict_clusters(state.surrogate, w))
            return scores if accuracy is None else accuracy.penalise(scores, w)

        def tick(gen, total):
            if progress is not None:
                progress("search", gen, total)

        sopt = replace(plan, seed=self.seed)
        seeds = np.stack([uniform_widths(self.space, target_macs)])
        searching = 0.0
        measured = 0
        device_s0 = state.device_s
        # Refinement searches only need to find the region worth measuring: a third as long.
        quick = replace(sopt, generations=max(1, plan.generations // 3))
        # Sequential measurement replaces the refinement rounds; a plan without refinement
        # (a what-if answer, `SearchPlan.quick`) measures nothing here either.
        sequential = bool(self.method.refines and self.method.measures_sequentially
                          and self.sequential and plan.refine_rounds > 0)
        if sequential:
            from hdap_engine.search.sequential import SequentialMeasurement

            loop = SequentialMeasurement(self, self.sequential, quick)
            seeds, used, seconds = loop.run(state, target_macs, fitness, seeds, progress=tick)
            measured += used
            searching += seconds
        for _ in range(plan.refine_rounds if self.method.refines and not sequential else 0):
            # Active refinement: the search's favourites lie where the surrogate has seen
            # least; measure them, learn from them, search again from them.
            res = evolve(self.space, target_macs, fitness, quick, seeds=seeds, progress=tick)
            searching += res.seconds
            favourites = diverse_best(self.space, res.final_population, plan.refine_batch)
            measured += self._measure_more(state, favourites)
            state.surrogate = self.trainer.fit(state.widths, state.ms, prior=state.prior)
            seeds = np.vstack([seeds[:1], favourites])
        # Independent restarts of the final search: near the optimum many candidates score
        # within the surrogate's error of each other, and one run of the search lands on
        # any of them (on ResNet-50 at 1.0 G, three seeds spread over 3 % of fleet latency).
        # Only the first starts from the refinement's favourites; the others start afresh,
        # so that they can find basins the refinement never looked at.
        runs = []
        for r in range(plan.restarts):
            runs.append(evolve(self.space, target_macs, fitness,
                               replace(sopt, seed=self.seed + 7919 * r),
                               seeds=seeds if r == 0 else seeds[:1], progress=tick))
            searching += runs[-1].seconds
        if self.method.cluster_seeds and not self.devices.lab_device and self.devices.k > 1:
            optima, seconds = self.cluster_optima(state.surrogate, target_macs, quick)
            runs.append(evolve(self.space, target_macs, fitness,
                               replace(sopt, seed=self.seed + 7919 * len(runs)),
                               seeds=np.vstack([seeds[:1], optima]), progress=tick))
            searching += runs[-1].seconds + seconds
        best_run = min(runs, key=lambda run: run.score)
        widths = best_run.widths
        if self.method.measures_finalists and plan.finalists > 1:
            per_run = max(1, plan.finalists // len(runs))
            pool = np.vstack([diverse_best(self.space, run.final_population, per_run)
                              for run in runs]
                             + [self._best_measured(state, target_macs,
                                                    max(1, plan.finalists // 2))])
            pool = np.unique(pool, axis=0)
            left = self._budget_left(state)
            if left is not None:
                # A measurement budget (sequential methods): the finalists get at most half of
                # what is left, the polish the rest; the search's own order decides who goes.
                cost = max(1, int(self.active_devices(state).sum()))
                keep = max(2, min(len(pool), left // (2 * cost)))
                pool = pool[np.argsort(fitness(pool), kind="stable")[:keep]]
            widths, used = self._pick_finalist(state, pool, accuracy, fitness)
            if plan.polish_rounds:
                widths, more = self._polish(state, widths, target_macs, fitness, accuracy,
                                            spent=used)
                used += more
            state.device_measurements += used
            measured += used
            if state.stop is not None:
                state.stop = {**state.stop, "finalists_and_polish": int(used)}
        elif accuracy is not None:
            # No finalists measured: the search's own ranking, checked for real.
            widths = accuracy.choose(best_run.final_population, fitness, limit=plan.finalists
                                     or 6)
        return SearchOutcome(
            widths=widths,
            predicted_cluster_ms=self.predict_clusters(state.surrogate, widths[None])[0],
            learned=state.freeze(), device_measurements=measured,
            device_s=state.device_s - device_s0, optimize_s=time.perf_counter() - t0, search_s=searching,
            history=best_run.history)

    def cluster_optima(self, surrogate, target_macs: float, plan) -> tuple[np.ndarray, float]:
        """Each cluster's best candidate on the surrogate (k, G), from a short search per
        cluster, and the seconds those searches took.

        The fleet objective weighs clusters whose best widths differ (a throttled
        cluster pays for memory traffic, a healthy one for compute); a search of the
        weighted mean started from one point settles in the basin nearest to it. Started
        from every cluster's own optimum, it can mix them.
        """
        start = uniform_widths(self.space, target_macs)[None]
        optima, seconds = [], 0.0
        for c in range(self.devices.k):
            if not (self.devices.clusters == c).any():
                continue

            def own(w, c=c):
                return self.predict_clusters(surrogate, w)[:, c]

            res = evolve(self.space, target_macs, own, replace(plan, seed=self.seed + 101 * c),
                         seeds=start)
            optima.append(res.widths)
            seconds += res.seconds
        return np.stack(optima), seconds

    # -- measuring ----------------------------------------------------------------------

    def measure_more(self, learned: Learned, widths: np.ndarray) -> tuple[Learned, int]:
        """``learned`` with new candidates measured and added (see `_measure_more`).

        Returns the new `Learned` (the surrogate not yet refitted) and the
        (device, candidate) pairs measured, re-timed anchors included.
        """
        state = _State(learned)
        used = self._measure_more(state, np.asarray(widths))
        return state.freeze(), used

    def head_to_head(self, learned: Learned, widths: np.ndarray) -> np.ndarray:
        """Measured objective (M,) of candidates compared with each other (see `_head_to_head`)."""
        return self._head_to_head(_State(learned), np.asarray(widths))

    def _close_call_repeats(self, state: _State | None = None, active=None):
        """Timed runs for candidates whose differences are small: three times the sampling's
        on real hardware, whose noise is as large as those differences; the sampling's on the
        twin. With adaptive repeats, each active device's own count (three times it on real
        hardware)."""
        factor = 3 if self.backend.real else 1
        if state is None or state.repeats is None:
            return self.repeats * factor
        return [int(state.repeats[j]) * factor for j in np.flatnonzero(active)]

    def active_devices(self, state: _State, *, learning: bool = False) -> np.ndarray:
        """(D,) True for the search devices still measured.

        Clusters known from earlier studies (warm start) are never measured;
        clusters settled by the sequential measurement get no further learning
        batches (``learning``) but are measured with the finalists and the polish,
        whose comparison decides what ships.
        """
        off = list(state.known) + (list(state.settled) if learning else [])
        return ~np.isin(self.devices.clusters, off)

    def _timed(self, state: _State, widths: np.ndarray, *, learning: bool = False
               ) -> tuple[np.ndarray, int]:
        """Measure ``widths`` afresh-or-stored on the active devices: medians (M, D), NaN on
        the other devices, and the pairs asked for."""
        active = self.active_devices(state, learning=learning)
        ms = np.full((len(widths), len(self.devices)), np.nan)
        if not active.any():
            return ms, 0
        ids = [d for d, a in zip(self.devices.ids, active, strict=True) if a]
        meas = self.backend.measure(self.space, widths, ids,
                                    repeats=self._close_call_repeats(state, active),
                                    warmup=self.warmup, store=self.store,
                                    fresh=self.backend.real)
        ms[:, active] = meas.median_ms
        if state.device_pairs is None or len(state.device_pairs) != len(self.devices):
            state.device_pairs = np.zeros(len(self.devices), dtype=np.int64)
        state.device_pairs[active] += len(widths)
        state.device_s += meas.device_s
        state.spread.append(meas)
        return ms, len(widths) * len(ids)

    def _measure_more(self, state: _State, widths: np.ndarray) -> int:
        """Measure new candidates on the search devices and add them to the training set.

        On real hardware a later batch is not on the scale of the first: this
        machine timed the same ResNet-50s 15 % slower seven minutes later, more
        than the differences the search is after, and a surrogate trained on both
        batches as they are learns the timing drift as if it were the architecture's. So
        a few candidates already in the training set (those nearest in MACs) are
        timed again in the same interleaved batch, and the new times are divided
        by each device's median anchor ratio (now / then).
        """
        known = {w.tobytes() for w in state.widths}
        new = np.array([w for w in widths if w.tobytes() not in known])
        if len(new) == 0:
            return 0
        anchors = np.zeros(0, dtype=np.int64)
        if self.backend.real:
            gap = np.abs(self.space.macs(state.widths) - np.median(self.space.macs(new)))
            # Anchors need a time of their own on every device timed now: the starting samples
            # that differ per device (sequential methods) have one on a single device only.
            active = self.active_devices(state, learning=True)
            complete = np.isfinite(state.ms[:, active]).all(axis=1)
            gap = np.where(complete if complete.any() else True, gap, np.inf)
            anchors = np.argsort(gap, kind="stable")[:TIMING_DRIFT_ANCHORS]
        batch = np.vstack([state.widths[anchors], new])
        # The search's favourites are close to each other: on noisy real hardware, with the
        # sampling's runs, their noise is the size of their differences and the next search
        # chases whichever was timed lucky.
        timed, used = self._timed(state, batch, learning=True)
        ms = timed[len(anchors):]
        if len(anchors):
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = timed[:len(anchors)] / state.ms[anchors]
            ok = np.isfinite(ratio) & (ratio > 0)
            # A device that failed (agent) has no anchors: nothing to rescale there.
            timing_drift = np.array([np.median(ratio[ok[:, j], j]) if ok[:, j].any() else 1.0
                                     for j in range(ratio.shape[1])])
            ms = ms / timing_drift
            worst = float(timing_drift[np.argmax(np.abs(np.log(timing_drift)))])
            if abs(np.log(worst)) > abs(np.log(state.timing_drift)):
                state.timing_drift = worst
            if abs(state.timing_drift - 1) > 0.03:
                note = (f"{TIMING_DRIFT_NOTE} (up to {state.timing_drift - 1:+.0%}); later "
                        f"batches were rescaled by {len(anchors)} re-timed candidates")
                state.notes = ([n for n in state.notes if not n.startswith(TIMING_DRIFT_NOTE)]
                               + [note])
        state.widths = np.vstack([state.widths, new])
        state.ms = np.vstack([state.ms, ms])
        # anchors are timed again: they count
        state.device_measurements += used
        return used

    def _head_to_head(self, state: _State, widths: np.ndarray) -> np.ndarray:
        """Measured objective of candidates that are compared with each other (combined
        with the surrogate's prediction where both noises are known: `_combined`).

        On real hardware they are all timed now, in one interleaved batch, with
        three times the runs: their differences are small, and a value from the
        store was timed minutes earlier on a machine whose speed has drifted since
        (timing drift: a winner picked across batches is often just the one timed in
        a quiet moment). The twin's noise has no timing drift, so its stored values stand.
        """
        ms, _ = self._timed(state, widths)
        measured = self.objective(self.measured_clusters(state.surrogate, widths, ms))
        return self._combined(state, widths, measured)

    def _combined(self, state: _State, widths: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """The measured objectives of compared candidates, combined with the surrogate's.

        Near the optimum candidates differ by less than a measured objective's noise, and
        the lowest of a few noisy measurements is low by luck: on the Raspberry Pi 4 twin
        fleet, ResNet-50 at 1.0 G, the finalists' measured objectives did not correlate
        with their true fleet latency at all (-0.01), the surrogate's did (+1.00). Each is
        an estimate of the same objective, so they are weighed by the inverse of their
        variances: the measurement's from the devices' run-to-run spread and repeats, the
        surrogate's its held-out error less that noise (`sequential.model_error`), at
        least half the noise (a few held-out candidates cannot tell a smaller error).
        Where either is unknown (methods that do not measure sequentially), the
        measurement decides alone.
        """
        stop = state.stop or {}
        held_out = stop.get("held_out_error")
        if held_out is None or state.run_sigma is None or self.sequential is None \
                or not np.isfinite(held_out):
            return measured
        from hdap_engine.search.sequential import SequentialMeasurement, model_error

        loop = SequentialMeasurement(self, self.sequential, self.plan)
        noise = loop.objective_noise(state, self.active_devices(state), reached=True)
        if not np.isfinite(noise) or noise <= 0:
            return measured
        model = max(model_error(held_out, noise), 0.5 * noise)
        predicted = self.objective(self.predict_clusters(state.surrogate, widths))
        w = model ** 2 / (model ** 2 + noise ** 2)  # the measurement's weight
        out = np.where(np.isfinite(predicted), w * measured + (1 - w) * predicted, measured)
        return np.where(np.isfinite(measured), out, predicted)

    def _pick_finalist(self, state: _State, finalists: np.ndarray, accuracy=None,
                       fitness=None) -> tuple[np.ndarray, int]:
        """Measure the search's best few candidates and keep the best measured one.

        The surrogate is accurate to a few per cent; near the optimum that is the
        size of the differences between candidates, so the last word goes to a
        measurement on the same devices the surrogate learned from. With an
        accuracy floor, the fastest measured finalist that keeps it.
        """
        scores = self._head_to_head(state, finalists)
        used = len(finalists) * int(self.active_devices(state).sum())
        if accuracy is not None:
            ranked = finalists[np.argsort(scores, kind="stable")]
            return accuracy.choose(ranked, fitness), used
        best = int(np.argmin(scores))
        return finalists[best], used

    def _budget_left(self, state: _State) -> int | None:
        """Pairs a sequential method may still measure (None: no budget)."""
        if self.sequential is None or not self.method.measures_sequentially:
            return None
        return max(0, self.sequential.max_measurements - state.device_measurements)

    def _polish(self, state: _State, widths: np.ndarray, target: float,
                fitness, accuracy=None, spent: int = 0) -> tuple[np.ndarray, int]:
        """Measured local search from the chosen candidate.

        Each round mutates the incumbent a few hundred ways (a few groups at a
        time, repaired to the budget), lets the surrogate pick the
        `SearchPlan.polish_batch` most promising, measures them, and moves only
        when a measurement beats the incumbent. On the representatives, the
        measured objective follows the whole fleet to 0.1 %, so this climbs the
        real objective rather than the surrogate's picture of it.
        """
        batch = self.plan.polish_batch
        rng = np.random.default_rng(self.seed + 104729)
        g = self.space.n_groups
        used = 0
        seen = {widths.tobytes()}
        left = self._budget_left(state)
        cost = max(1, int(self.active_devices(state).sum()))
        for _ in range(self.plan.polish_rounds):
            if left is not None:
                # Within the measurement budget: a smaller batch, or no round at all.
                batch = min(self.plan.polish_batch, (left - spent - used) // cost
                            - (1 if self.backend.real else 0))
                if batch < 2:
                    break
            n = 20 * batch
            ratios = np.broadcast_to(self.space.ratios(widths), (n, g))
            trial = np.unique(mutate(self.space, ratios, target, rng, rate=0.15, scale=0.2),
                              axis=0)
            trial = np.array([w for w in trial if w.tobytes() not in seen])
            if len(trial) == 0:
                break
            trial = trial[np.argsort(fitness(trial), kind="stable")[:batch]]
            seen.update(w.tobytes() for w in trial)
            # The incumbent is timed again with the trials: a move must beat it in the
            # same batch, not a figure from an earlier one.
            batch_widths = np.vstack([widths[None], trial])
            scores = self._head_to_head(state, batch_widths)
            used += ((len(batch_widths) if self.backend.real else len(trial))
                     * int(self.active_devices(state).sum()))
            if accuracy is None:
                widths = batch_widths[int(np.argmin(scores))]
            else:
                # Move to the fastest measured trial that keeps the floor (the incumbent,
                # first when it is fastest, already does).
                widths = accuracy.choose(batch_widths[np.argsort(scores, kind="stable")],
                                         fitness)
        return widths, used

    def measured_clusters(self, surrogate, widths: np.ndarray, ms: np.ndarray) -> np.ndarray:
        """Per-cluster latency (M, k) from measurements (M, search devices)."""
        d = self.devices
        per_cluster = np.zeros((len(widths), d.k))
        for c in range(d.k):
            m = d.clusters == c
            per_cluster[:, c] = nanmean(ms[:, m], axis=1) if m.any() else ms[:, 0]
        lost = ~np.isfinite(per_cluster)
        if lost.any():
            # A cluster whose devices all failed: its surrogate prediction stands in.
            per_cluster[lost] = self.predict_clusters(surrogate, widths)[lost]
        return per_cluster

    def _best_measured(self, state: _State, target: float, n: int) -> np.ndarray:
        """The ``n`` best candidates already measured on this budget (samples, refinement).

        They go back into the final comparison so that what the surrogate
        forgets while it learns another region (it happened on the host: a 17 %
        better candidate predicted 28 % too slow after refinement) is not lost.
        """
        macs = self.space.macs(state.widths)
        on_budget = np.array([meets_budget(m, target) for m in macs])
        if not on_budget.any():
            return np.empty((0, self.space.n_groups), dtype=np.int64)
        widths = state.widths[on_budget]
        scores = self.objective(self.measured_clusters(state.surrogate, widths,
                                                       state.ms[on_budget]))
        scores = np.where(np.isfinite(scores), scores, np.inf)
        return widths[np.argsort(scores, kind="stable")[:n]]


class _State:
    """The working copy of `Learned` during one run (the caller's is never touched)."""

    def __init__(self, learned: Learned):
        self.widths = learned.widths
        self.ms = learned.ms
        self.surrogate = learned.surrogate
        self.device_measurements = learned.device_measurements
        self.timing_drift = learned.timing_drift
        self.notes = list(learned.notes)
        self.device_s = learned.device_s
        self.settled = tuple(learned.settled)
        self.known = tuple(learned.known)
        self.repeats = learned.repeats
        self.run_sigma = learned.run_sigma
        self.prior = learned.prior
        self.stop = learned.stop
        # None until the first measurement for a `Learned` without counts (a saved job's).
        self.device_pairs = None if learned.device_pairs is None \
            else np.array(learned.device_pairs, dtype=np.int64)
        self.spread: list = []  # this run's `Measurements` (their runs tell the noise)

    def freeze(self) -> Learned:
        return Learned(widths=self.widths, ms=self.ms, surrogate=self.surrogate,
                       device_measurements=self.device_measurements,
                       timing_drift=self.timing_drift, notes=tuple(self.notes),
                       device_s=self.device_s, settled=self.settled, known=self.known,
                       repeats=self.repeats,
                       run_sigma=self.run_sigma, prior=self.prior, stop=self.stop,
                       device_pairs=None if self.device_pairs is None
                       else tuple(int(x) for x in self.device_pairs))
