"""Sequential measurement: small batches chosen for what they teach the search, and when to stop.

Every device measurement costs real time on a real device (an exported model
is sent, loaded, warmed up and timed), so a method that measures sequentially
does not measure a fixed number of candidates. After a few samples per
representative it repeats:

1. a short search on the surrogate, started from the best measured candidates
   as well; its final population is the pool;
2. **the stopping rule** (`StoppingRule.decide`): the expected improvement of
   the fleet objective from measuring the next batch, over the best candidate
   measured so far, from the surrogate's ensemble spread and its held-out
   error (its error on the last batch, predicted before it was measured; the
   incumbent, the best measured candidate as the surrogate predicts it, is as
   uncertain), is compared with the measurement noise of a measured fleet
   objective at the precision adaptive repeats aim at; below it, another batch
   would teach less than its own noise, and the loop stops. A noisier fleet
   therefore measures more: its surrogate learns from noisier medians, its
   held-out error stays larger and so does the gain. It also stops when the
   measurement budget, less what the finalists and polish need, is spent. It
   never stops on the improvement before one batch has given the surrogate a
   held-out error on the region the search cares about. Where the devices'
   runs spread so much that the repeat limit keeps a measured objective far
   from the aimed precision (real devices sharing a busy machine), the
   surrogate's error is the held-out error less that noise, and a held-out
   error that has not improved for a few batches stops the loop: such
   measurements teach the surrogate nothing more;
3. **the batch**: half the search's diverse favourites (near the budget, near
   the current best), half the candidates with the lowest optimistic score
   (prediction less the uncertainty: ensemble spread, held-out error and the
   clusters' disagreement about the candidate);
4. measured on the devices of clusters that are not settled; a cluster whose
   latencies the surrogate predicted within the noise (it behaves like the
   clusters it shares the surrogate with) is settled: it gets no further
   measurements, and its surrogate prediction stands in for it;
5. the surrogate is refitted.

`repeats_for` is adaptive repeats: the timed runs of a device's measurement
follow its observed spread, so a stable device needs fewer.

The record of what was measured and why the loop stopped (`Learned.stop`)
goes into the study result, its report and the bench table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hdap_engine.pruning.budget import meets_budget
from hdap_engine.search.evolution import diverse_best, evolve

# Standard error of a median of n normal runs: sqrt(pi / 2) * sigma / sqrt(n).
MEDIAN_SE = math.sqrt(math.pi / 2)
# A measured fleet objective this many times less precise than adaptive repeats aim at is
# noise-limited: there a stalled held-out error stops the loop (`StoppingRule.patience`).
NOISE_LIMITED = 2.0


@dataclass(frozen=True)
class StoppingRule:
    """When the sequential measurement stops, and how it measures (plain data).

    Parameters
    ----------
    batch:
        Candidates per batch.
    max_measurements:
        (device, candidate) pairs the study may spend in all, samples,
        finalists and polish included.
    reserve:
        Pairs kept for the finalists and the polish.
    max_batches:
        A bound on the loop, should the improvement never fall below the noise.
    settle_factor:
        A cluster is settled when its held-out error is within this many times
        its measurement noise.
    min_repeats, max_repeats, repeat_precision:
        Adaptive repeats (`repeats_for`); ``repeat_precision`` is the relative
        standard error of a median they aim at. ``adaptive`` False keeps the
        study's fixed count.
    patience:
        On devices too noisy for the repeats to reach ``repeat_precision``, batches
        in a row whose held-out error is no better than an earlier batch's before
        the loop stops: the surrogate has learned what such measurements can teach.
    """

    batch: int = 8
    max_measurements: int = 1000
    reserve: int = 0
    max_batches: int = 20
    settle_factor: float = 1.5
    adaptive: bool = True
    min_repeats: int = 3
    max_repeats: int = 15
    repeat_precision: float = 0.015
    patience: int = 2

    def decide(self, *, batches: int, used: int, next_cost: int, gain: float, noise: float,
               held_out_error: float | None, stalled: bool = False) -> str | None:
        """Why the loop stops now, or None to measure another batch.

        ``used`` pairs spent so far, ``next_cost`` the pairs of the next batch;
        ``gain`` and ``noise`` are relative to the fleet objective; ``stalled``: the
        devices are too noisy for the repeats to reach their aim, and the held-out
        error has not improved for `patience` batches.
        """
        if next_cost == 0:
            return ("every cluster is settled or known: the surrogate predicts them within "
                    "the noise")
        if used + next_cost > self.max_measurements - self.reserve:
            return (f"measurement budget: another batch ({next_cost}) would leave less than "
                    f"the {self.reserve} kept for finalists and polish of "
                    f"{self.max_measurements}")
        if held_out_error is None or batches == 0:
            return None  # the held-out error on the search's region is not known yet
        if gain < noise:
            return (f"another batch is expected to improve the fleet objective by "
                    f"{gain:.2%}, less than the measurement noise ({noise:.2%})")
        if stalled:
            return (f"the surrogate's held-out error has not improved for {self.patience} "
                    f"batches, and the devices' run-to-run spread keeps measurements far from "
                    f"the {self.repeat_precision:.1%} that up to {self.max_repeats} repeats "
                    "aim at: measuring more does not teach it")
        if batches >= self.max_batches:
            return f"batch limit ({self.max_batches})"
        return None


def run_sigma(times_ms) -> float:
    """Robust relative spread of one device's runs, pooled over candidates (log MAD)."""
    spreads = []
    for t in times_ms:
        t = np.asarray(t, dtype=np.float64)
        t = t[np.isfinite(t) & (t > 0)]
        if t.size >= 2:
            logt = np.log(t)
            spreads.append(1.4826 * np.median(np.abs(logt - np.median(logt))))
    return float(np.median(spreads)) if spreads else float("nan")


def device_sigmas(measurements) -> np.ndarray:
    """(D,) relative run-to-run spread of each device of a `Measurements`."""
    d = len(measurements.devices)
    return np.array([run_sigma([measurements.times_ms[i][j]
                                for i in range(len(measurements.times_ms))])
                     for j in range(d)])


def repeats_for(sigma: np.ndarray, rule: StoppingRule, default: int) -> tuple[int, ...]:
    """Adaptive repeats: the timed runs that give a median within ``repeat_precision``.

    A device whose spread is unknown keeps ``default``.
    """
    out = []
    for s in np.asarray(sigma, dtype=np.float64):
        if not np.isfinite(s):
            out.append(int(default))
            continue
        n = math.ceil((MEDIAN_SE * s / rule.repeat_precision) ** 2)
        out.append(int(min(rule.max_repeats, max(rule.min_repeats, n))))
    return tuple(out)


def model_error(held_out: float, noise: float) -> float:
    """The surrogate's own relative error: a held-out error against measurements whose
    relative noise is ``noise``, less that noise (in quadrature)."""
    return float(np.sqrt(max(held_out ** 2 - noise ** 2, 0.0)))


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """E[max(best - F, 0)] for F ~ N(mean, sd) (minimisation), element-wise."""
    from scipy.stats import norm

    sd = np.maximum(np.asarray(sd, dtype=np.float64), 1e-12)
    z = (best - np.asarray(mean, dtype=np.float64)) / sd
    return sd * (z * norm.cdf(z) + norm.pdf(z))


class SequentialMeasurement:
    """The loop of the module docstring for one `FleetSearch` run.

    Parameters
    ----------
    search:
        The `FleetSearch` (its devices, backend, objective, trainer).
    rule:
        The `StoppingRule`.
    plan:
        The search plan of the loop's short searches.
    """

    def __init__(self, search, rule: StoppingRule, plan):
        self.search = search
        self.rule = rule
        self.plan = plan

    def objective_noise(self, state, active: np.ndarray, *, reached: bool = False) -> float:
        """Relative standard error of a measured fleet objective (mean over clusters).

        With adaptive repeats, at the precision they aim at; ``reached`` gives what
        the devices' spread and repeats reach, aim or not.
        """
        d = self.search.devices
        sigma = np.asarray(state.run_sigma if state.run_sigma is not None
                           else np.full(len(d), np.nan), dtype=np.float64)
        repeats = np.asarray(state.repeats if state.repeats is not None
                             else np.full(len(d), self.search.repeats), dtype=np.float64)
        # Batches and finalists are timed with the close-call repeats (three times as many
        # on real hardware, `FleetSearch._close_call_repeats`).
        repeats = repeats * (3 if self.search.backend.real else 1)
        se = MEDIAN_SE * np.nan_to_num(sigma, nan=0.02) / np.sqrt(repeats)
        if self.rule.adaptive and not reached:
            # The precision adaptive repeats aim at, whatever the devices' own spread: the
            # threshold is what a measured objective can resolve at that precision. A noisier
            # fleet does not raise it; its noise enters the gain instead (the surrogate learns
            # from noisier medians, its held-out error is larger, a batch may find more), so a
            # noisier fleet measures more candidates, not fewer. (Raising it to what the
            # repeats reach where their limit stops them short of the aim cost MobileNetV1
            # on the Jetson twin 0.6 % of fleet latency: it stopped after 4 batches.)
            se = np.full(len(d), self.rule.repeat_precision)
        w = self.search.objective.cluster_weights / np.sum(self.search.objective.cluster_weights)
        var = 0.0
        for c in range(d.k):
            m = (d.clusters == c) & active
            if m.any():
                var += w[c] ** 2 * float(np.sum(se[m] ** 2)) / m.sum() ** 2
        return float(np.sqrt(var))

    def noise_limited(self, state, active: np.ndarray) -> bool:
        """Whether a measured fleet objective stays far less precise than adaptive repeats
        aim at (`NOISE_LIMITED` times): the devices' runs spread too much for the repeat
        limit, as on real devices sharing a busy machine."""
        if state.run_sigma is None:
            return False
        return self.objective_noise(state, active, reached=True) > \
            NOISE_LIMITED * self.objective_noise(state, active)

    def _cluster_noise(self, state, c: int, active: np.ndarray) -> float:
        d = self.search.devices
        m = (d.clusters == c) & active
        if not m.any():
            return 0.0
        sigma = np.nan_to_num(np.asarray(state.run_sigma, dtype=np.float64)[m], nan=0.02) \
            if state.run_sigma is not None else np.full(m.sum(), 0.02)
        repeats = np.asarray(state.repeats, dtype=np.float64)[m] if state.repeats is not None \
            else np.full(m.sum(), float(self.search.repeats))
        return float(np.sqrt(np.sum((MEDIAN_SE * sigma) ** 2 / repeats)) / m.sum())

    def _predict(self, state, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.search.devices
        return state.surrogate.predict_clusters(widths, d.features, d.clusters, d.k)

    def _best_measured(self, state, target: float) -> float | None:
        """The incumbent: the best fleet objective on the budget among this study's measured
        candidates, as the surrogate predicts it.

        Not their measured objective: the lowest of many noisy measurements is low by luck
        (more so on a noisier fleet), and an improvement over a lucky figure looks smaller
        than it is. The surrogate's prediction at a measured candidate averages that luck
        with what it learned from the candidate's neighbours (noisy expected improvement).
        """
        best = self._incumbents(state, target, 1)
        if not len(best):
            return None
        return float(self.search.objective(self._predict(state, best)[0])[0])

    def _incumbents(self, state, target: float, n: int) -> np.ndarray:
        """The ``n`` measured candidates on the budget the surrogate ranks best (see
        `_best_measured`); the next search starts from them, so that its pool lies near the
        current best and not only where the short search happens to go."""
        s = self.search
        on_budget = np.array([meets_budget(m, target) for m in s.space.macs(state.widths)])
        if not on_budget.any():
            return state.widths[:0]
        widths = state.widths[on_budget]
        scores = s.objective(self._predict(state, widths)[0])
        ok = np.isfinite(scores)
        return widths[ok][np.argsort(scores[ok], kind="stable")[:n]]

    def run(self, state, target: float, fitness, seeds: np.ndarray, *, progress=None
            ) -> tuple[np.ndarray, int, float]:
        """Measure batches until the rule stops; returns (seeds, pairs measured, search s)."""
        s, rule = self.search, self.rule
        w = s.objective.cluster_weights / np.sum(s.objective.cluster_weights)
        held_out = None
        surrogate_report = getattr(state.surrogate, "report_", {}) or {}
        fit_error = (surrogate_report.get("overall") or {}).get("mape")
        used = 0
        searching = 0.0
        batches = []
        errors: list[np.ndarray] = []  # each batch's relative error per cluster
        start = state.device_measurements
        reason = None
        gain = noise = measured_noise = float("nan")
        while True:
            start_from = np.vstack([seeds, self._incumbents(state, target, 2)])
            res = evolve(s.space, target, fitness,
                         replace(self.plan, seed=s.seed + 31 * len(batches)),
                         seeds=np.unique(start_from, axis=0), progress=progress)
            searching += res.seconds
            pool = np.unique(res.final_population, axis=0)
            known = {x.tobytes() for x in state.widths}
            pool = pool[[x.tobytes() not in known for x in pool]] if len(pool) else pool
            active = s.active_devices(state, learning=True)
            # The noise of a measured fleet objective: every device a finalist is measured on.
            noise = self.objective_noise(state, s.active_devices(state))
            cost = rule.batch * int(active.sum())
            if len(pool) == 0:
                reason = "the search found no candidate it has not measured"
                break
            mu_c, sd_c = self._predict(state, pool)
            mu = s.objective(mu_c)
            sd_obj = np.sqrt(np.nansum((w[None, :] * sd_c) ** 2, axis=1))
            # The held-out error is against measured objectives, whose own noise is in it:
            # where that noise is large (noise-limited devices), what the surrogate does not
            # know is the rest. (Counted on quiet devices too, it cost MobileNetV1 on the
            # Jetson twin 0.6 % of fleet latency: it stopped after 4 batches.)
            measured_noise = self.objective_noise(state, active, reached=True)
            limited = self.noise_limited(state, active)
            error = (1.25 * fit_error if fit_error is not None else 0.05) if held_out is None \
                else model_error(held_out, measured_noise) if limited else held_out
            sd = np.sqrt(sd_obj ** 2 + error ** 2)
            # The clusters' disagreement: a candidate good for some clusters and poor for
            # others teaches the cluster-specific part of the surrogate.
            lead = mu_c[int(np.argmin(mu))]
            disagree = np.nanstd(np.log(mu_c / lead[None, :]), axis=1)
            best = self._best_measured(state, target)
            best = float(np.min(mu)) if best is None else best
            order = np.argsort(mu, kind="stable")
            half = max(1, rule.batch // 2)
            exploit = diverse_best(s.space, pool[order], half)
            taken = {x.tobytes() for x in exploit}
            optimistic = mu * (1 - sd - 0.5 * disagree)
            rest = np.array([i for i in np.argsort(optimistic, kind="stable")
                             if pool[i].tobytes() not in taken], dtype=np.int64)
            explore = diverse_best(s.space, pool[rest], rule.batch - len(exploit)) \
                if len(rest) and rule.batch > len(exploit) else pool[:0]
            batch = np.vstack([exploit, explore])
            rows = np.array([i for i in range(len(pool))
                             if pool[i].tobytes() in {x.tobytes() for x in batch}])
            # The batch's expected improvement: its candidates' summed (they are diverse,
            # so nearly independent chances; the sum bounds the expected best of them).
            # The incumbent's own estimate is as uncertain as the surrogate's held-out error
            # (noisier medians, larger error): what matters is the difference of the two.
            sd_diff = np.sqrt((sd[rows] * mu[rows]) ** 2 + (error * best) ** 2)
            gain = float(np.sum(expected_improvement(mu[rows], sd_diff, best)) / best)
            # Learning has stalled when the last `patience` batches' held-out errors are no
            # better than the best before them; only where noise keeps the measurements far
            # from the aimed precision (elsewhere the gain decides).
            past = [b["held_out_error"] for b in batches]
            stalled = (len(past) > rule.patience and limited
                       and min(past[-rule.patience:]) >= min(past[:-rule.patience]))
            reason = rule.decide(batches=len(batches), used=state.device_measurements,
                                 next_cost=cost, gain=gain, noise=noise,
                                 held_out_error=held_out, stalled=stalled)
            if reason is not None:
                break
            predicted = mu_c[rows]
            before = len(state.widths)
            measured = s._measure_more(state, batch)
            used += measured
            new_ms = state.ms[before:]
            new_w = state.widths[before:]
            got = s.measured_clusters(state.surrogate, new_w, new_ms)
            # Held-out error: the surrogate's, on candidates it had not seen, where the
            # search looks; per cluster it decides which clusters are settled.
            pred_new = self._predict(state, new_w)[0] if len(new_w) != len(predicted) \
                else predicted
            rel = pred_new / got - 1
            errors.append(rel)
            obj_err = s.objective(pred_new) / s.objective(got) - 1
            held_out = float(np.sqrt(np.nanmean(obj_err ** 2)))
            settled = list(state.settled)
            per_cluster = {}
            for c in range(s.devices.k):
                m = (s.devices.clusters == c) & active
                if not m.any():
                    continue
                # Over the last two batches: one batch of a few candidates is a noisy judge.
                recent = np.concatenate([e[:, c] for e in errors[-2:]])
                err_c = float(np.sqrt(np.nanmean(recent ** 2)))
                per_cluster[c] = err_c
                if len(errors) >= 2 and c not in settled and \
                        err_c <= rule.settle_factor * self._cluster_noise(state, c, active):
                    settled.append(c)
            state.settled = tuple(sorted(settled))
            state.surrogate = s.trainer.fit(state.widths, state.ms, prior=state.prior)
            batches.append({"pairs": int(measured), "held_out_error": held_out,
                            "gain": gain, "noise": noise, "model_error": error,
                            "cluster_errors": {str(c): e for c, e in per_cluster.items()}})
            seeds = np.vstack([seeds[:1], exploit])
        state.stop = {
            "reason": reason, "batches": len(batches),
            "sequential_measurements": int(state.device_measurements - start),
            "initial_measurements": int(start),
            "expected_gain": gain, "noise": noise,
            "held_out_error": held_out,
            "measurement_noise": measured_noise,
            "surrogate_fit_error": fit_error,
            "settled_clusters": [int(c) for c in state.settled],
            "repeats": None if state.repeats is None else [int(r) for r in state.repeats],
            "history": batches,
        }
        return seeds, used, searching

