"""Sequential measurement (`hdap_engine.search.sequential`): the stopping rule, adaptive repeats,
representatives by spread, warm starts from the store, and re-optimising after fleet drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hdap_engine.latency.store import Store
from hdap_engine.search.sequential import StoppingRule, expected_improvement, repeats_for
from hdap_engine.study.prepare import prepare, representatives_by_spread
from hdap_engine.study.run import optimize
from tests.helpers.studies import quick_options


def test_the_rule_never_stops_on_the_gain_before_a_held_out_error_is_known():
    rule = StoppingRule(batch=4, max_measurements=1000, reserve=100)
    # A gain below the noise, but no batch measured yet: keep measuring.
    assert rule.decide(batches=0, used=100, next_cost=20, gain=0.001, noise=0.01,
                       held_out_error=None) is None
    assert rule.decide(batches=0, used=100, next_cost=20, gain=0.001, noise=0.01,
                       held_out_error=0.02) is None
    stop = rule.decide(batches=1, used=100, next_cost=20, gain=0.001, noise=0.01,
                       held_out_error=0.02)
    assert stop is not None and "below" not in stop and "0.10%" in stop and "1.00%" in stop
    assert rule.decide(batches=1, used=100, next_cost=20, gain=0.05, noise=0.01,
                       held_out_error=0.02) is None
    # The budget stops the loop whatever the gain, keeping what the finalists need.
    assert "budget" in rule.decide(batches=3, used=890, next_cost=20, gain=0.5, noise=0.01,
                                   held_out_error=0.02)


def test_on_devices_too_noisy_for_their_repeats_a_stalled_surrogate_stops_the_loop():
    rule = StoppingRule(batch=4, max_measurements=1000, reserve=100, patience=2)
    # The gain stays far above the noise (noisy medians, a surrogate that stays wrong), but
    # the held-out error has stopped falling: measuring more does not teach it.
    stop = rule.decide(batches=4, used=300, next_cost=12, gain=1.5, noise=0.12,
                       held_out_error=0.4, stalled=True)
    assert stop is not None and "has not improved for 2 batches" in stop
    assert rule.decide(batches=4, used=300, next_cost=12, gain=1.5, noise=0.12,
                       held_out_error=0.4, stalled=False) is None


def test_a_stable_device_gets_fewer_repeats_than_a_noisy_one():
    rule = StoppingRule(min_repeats=3, max_repeats=15, repeat_precision=0.015)
    stable, noisy, wild, unknown = repeats_for(np.array([0.01, 0.04, 0.5, np.nan]), rule, 5)
    assert stable == 3 and noisy > stable and wild == 15 and unknown == 5


def test_expected_improvement_grows_with_uncertainty_and_with_the_predicted_gain():
    ei = expected_improvement(np.array([10.0, 10.0, 9.0]), np.array([0.1, 1.0, 0.1]), 10.0)
    assert ei[1] > ei[0] and ei[2] > ei[0]
    assert ei[2] == pytest.approx(1.0, rel=1e-3)


def test_a_tight_cluster_gets_one_representative_and_a_wide_one_more():
    reps = ["a", "b", "c"]
    assert representatives_by_spread(reps, 0.01, 0.06) == ["a"]
    assert representatives_by_spread(reps, 0.10, 0.06) == ["a", "b"]
    assert representatives_by_spread(reps, 0.50, 0.06) == reps
    assert representatives_by_spread(reps, 0.50, None) == reps


def _study(fleet, store, **changes):
    ctx = prepare(quick_options(**changes), fleet, store=store)
    return ctx, optimize(ctx)


@pytest.fixture(scope="module")
def cold(small_fleet, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("seq") / "s.sqlite")
    return (store, *_study(small_fleet, store))


def test_the_study_reports_measurements_used_and_why_it_stopped(cold):
    _, ctx, res = cold
    record = res.measurement
    stop = record["stop"]
    assert record["device_measurements"] == res.device_measurements > 0
    assert record["device_s"] == pytest.approx(res.device_s) and res.device_s > 0
    assert stop["reason"]
    # It never stops on the gain before the surrogate's held-out error is known.
    if "expected to improve" in stop["reason"]:
        assert stop["batches"] >= 1 and stop["held_out_error"] is not None
    assert stop["surrogate_fit_error"] is not None
    assert res.device_measurements <= ctx.options.measurement.max_measurements
    assert len(record["repeats"]) == len(ctx.rep_devices)


def _noisier(fleet_csv, tmp_path, factor: float):
    """The same fleet with every device's run-to-run noise ``factor`` times larger."""
    sidecar = fleet_csv.with_suffix(".twin.parquet")
    states = pd.read_parquet(sidecar)
    states["noise_scale"] = states["noise_scale"] * factor
    out = tmp_path / "noisy.csv"
    out.write_bytes(fleet_csv.read_bytes())
    states.to_parquet(out.with_suffix(".twin.parquet"))
    return out


@pytest.mark.slow
def test_a_noisier_fleet_makes_it_measure_more(small_fleet, tmp_path):
    # Without the twin prior: on the twin backend the prior is the devices' own physics, so
    # with it there is nothing left for either fleet to learn, and both stop once the prior
    # is confirmed (the surrogate then keeps none of its trees' correction, and the noisy
    # fleet's clusters settle at their own larger noise: quiet 512 sequential pairs in 12
    # batches, noisy 367 in 20). What is checked here is how the rule answers noise
    # when the surrogate has to learn from the measurements, as on devices the twin does
    # not describe exactly.
    _, quiet = _study(small_fleet, Store(tmp_path / "quiet.sqlite"), twin_prior=False)
    noisy_csv = _noisier(small_fleet, tmp_path, 4.0)
    _, noisy = _study(noisy_csv, Store(tmp_path / "noisy.sqlite"), twin_prior=False)
    # More candidates measured: the surrogate learns from noisier medians, its held-out
    # error stays larger, and so does the expected improvement of another batch.
    assert noisy.device_measurements > quiet.device_measurements
    # In its sequential batches, not only in the samples, finalists and polish. Counted in
    # pairs, not batches: a batch costs 8 pairs on every device of a cluster not yet settled,
    # and the quiet fleet settles clusters sooner (288 pairs in 6 batches against the noisy
    # fleet's 360 in 8).
    assert noisy.measurement["stop"]["sequential_measurements"] > \
        quiet.measurement["stop"]["sequential_measurements"]
    # And more timed runs per measurement (adaptive repeats) on every device.
    noisy_r, quiet_r = noisy.measurement["repeats"], quiet.measurement["repeats"]
    assert sum(noisy_r) > sum(quiet_r)
    assert all(n >= q for n, q in zip(noisy_r, quiet_r, strict=True))


@pytest.mark.slow
def test_a_warm_start_on_a_fresh_snapshot_measures_little_and_no_warm_start_turns_it_off(
        cold, tmp_path):
    from hdap_engine.study.verify import fleet_metrics, verify_candidate
    from hdap_engine.twin.simulate import simulate_fleet, write_fleet

    store, _, _ = cold
    telemetry, states = simulate_fleet("jetson-nano", 400, seed=11)
    fresh, _ = write_fleet(tmp_path / "fresh", telemetry, states)
    ctx, warm = _study(fresh, store)
    assert warm.measurement["warm_start_measurements"] > 0
    assert warm.device_measurements <= 200
    cold_ctx, cold_res = _study(fresh, Store(tmp_path / "cold.sqlite"))
    assert cold_res.measurement["warm_start_measurements"] == 0
    assert warm.device_measurements < cold_res.device_measurements
    off_ctx, off = _study(fresh, store, warm_start=False)
    assert off.measurement["warm_start_measurements"] == 0

    def fleet_mean(c, widths):
        return fleet_metrics(c, verify_candidate(c, widths), c.fleet_objective())[
            "measured_mean_ms"]

    assert fleet_mean(ctx, warm.widths) <= 1.02 * fleet_mean(cold_ctx, cold_res.widths)


@pytest.mark.slow
def test_re_optimising_after_fleet_drift_measures_only_the_clusters_that_moved(
        cold, small_fleet, tmp_path):
    from hdap_engine.twin.simulate import later_snapshot, write_fleet

    store, _, first = cold
    states = pd.read_parquet(small_fleet.with_suffix(".twin.parquet"))
    telemetry, new_states, _ = later_snapshot(states, 0.12, "thermal_throttling", seed=1)
    later, _ = write_fleet(tmp_path / "later", telemetry, new_states)
    ctx, res = _study(later, store)
    known = res.measurement["known_clusters"]
    assert known, "no cluster of the later snapshot matched a device measured before"
    assert len(known) < ctx.k, "a cluster moved, so something must be measured"
    # Every pair measured was on a device of a cluster that moved; none on the others.
    on_known = np.isin(ctx.search_devices().clusters, known)
    assert np.isnan(res.learned.ms[:, on_known]).all()
    moved_devices = int((~on_known).sum())
    measured = int(np.isfinite(res.learned.ms).sum())
    assert 0 < measured <= res.device_measurements <= 200
    assert res.device_measurements < first.device_measurements
    assert moved_devices < len(ctx.rep_devices)
    # Counted per cluster, finalists and polish included: nothing on a known cluster.
    per_cluster = res.learned.cluster_pairs(ctx.search_devices().clusters, ctx.k)
    assert all(per_cluster[c] == 0 for c in known)
    assert sum(per_cluster.values()) >= res.device_measurements > 0


def test_every_cluster_gets_its_own_optimum_as_a_seed_of_the_fleet_search():
    from hdap_engine.options import SearchPlan
    from hdap_engine.pruning.budget import meets_budget, parse_budget
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.search.fleet_search import FleetSearch
    from hdap_engine.search.learned import SearchDevices
    from hdap_engine.search.methods import get_method

    space = PruningSpace.for_model("resnet50")
    target = parse_budget("1.0G", space)

    class TwoKinds:
        """Cluster 0 pays for high-resolution layers, cluster 1 for low-resolution ones."""

        def predict_clusters(self, widths, features, clusters, k):
            table = space.layer_table(widths)
            early = (table.macs() * (table.h_out >= 28)).sum(axis=1)
            late = (table.macs() * (table.h_out < 28)).sum(axis=1)
            return np.stack([3 * early + late, early + 3 * late], axis=1), None

    devices = SearchDevices(("a", "b"), np.array([0, 1]), np.ones((2, 3)), 2)
    search = FleetSearch(space, devices, None, None, None, get_method("hdap"),
                         SearchPlan(population=16, generations=10), None)
    optima, seconds = search.cluster_optima(TwoKinds(), target,
                                            SearchPlan(population=16, generations=10))
    assert optima.shape == (2, space.n_groups) and seconds > 0
    assert all(meets_budget(m, target) for m in space.macs(optima))
    own = TwoKinds().predict_clusters(optima, None, None, 2)[0]
    # Each optimum is the better of the two for its own cluster: they lie in different basins.
    assert own[0, 0] < own[1, 0] and own[1, 1] < own[0, 1]
