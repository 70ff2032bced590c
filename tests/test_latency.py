"""Latency: the store serves repeats, the twin backend, sampling and the surrogate."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hdap_engine.errors import HdapError
from hdap_engine.latency.sampling import sample_candidates
from hdap_engine.latency.store import Store
from hdap_engine.latency.surrogate import Surrogate
from hdap_engine.options import SurrogatePlan
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.study.run import prepare
from tests.helpers.studies import quick_options


@pytest.fixture(scope="module")
def mbv1():
    return PruningSpace.for_model("mobilenet_v1")


def test_a_second_identical_request_is_served_from_the_store(small_fleet, tmp_path, mbv1):
    store = Store(tmp_path / "s.sqlite")
    ctx = prepare(quick_options(method="uniform"), small_fleet, store=store)
    backend = ctx.backend
    calls = []
    real = backend._measure

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    backend._measure = counting
    widths = sample_candidates(mbv1, 12, seed=1)
    first = backend.measure(mbv1, widths, ctx.rep_devices[:4], repeats=3, store=store)
    second = backend.measure(mbv1, widths, ctx.rep_devices[:4], repeats=3, store=store)
    assert calls == [12]  # measured once
    assert first.n_measured == 48 and second.n_measured == 0
    assert second.from_store.all()
    np.testing.assert_allclose(first.median_ms, second.median_ms)
    # another repeat count is another measurement
    backend.measure(mbv1, widths[:2], ctx.rep_devices[:1], repeats=4, store=store)
    assert calls == [12, 2]


def test_store_takes_concurrent_writers(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    errors = []

    def write(i):
        try:
            rows = [(f"dev{i}", f"{j}", 1.0 + j, 0.1, [1.0, 1.1]) for j in range(50)]
            store.put_measurements("twin", "m", (3, 32, 32), 2, rows)
            store.add_run(f"run {i}", {"i": i}, {"ok": True})
        except Exception as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count_measurements() == 400
    assert len(store.list_runs()) == 8


def test_twin_measurements_do_not_depend_on_what_is_measured_with_them(small_fleet, mbv1,
                                                                        tmp_path):
    ctx = prepare(quick_options(method="uniform"), small_fleet, store=Store(tmp_path / "s"))
    widths = sample_candidates(mbv1, 6, seed=2)
    devs = ctx.rep_devices[:3]
    together = ctx.backend.measure(mbv1, widths, devs, repeats=3)
    alone = ctx.backend.measure(mbv1, widths[2:3], devs[1:2], repeats=3)
    assert together.median_ms[2, 1] == alone.median_ms[0, 0]
    assert together.source == "twin (simulated)"


def test_samples_spread_over_the_macs_range(mbv1):
    widths = sample_candidates(mbv1, 60, seed=0)
    frac = mbv1.macs(widths) / mbv1.base_macs
    assert len(np.unique(widths, axis=0)) == 60
    assert frac.min() < 0.25 and frac.max() > 0.9
    # roughly even: every fifth of the range holds candidates
    counts, _ = np.histogram(frac, bins=5, range=(0.15, 1.0))
    assert counts.min() >= 5


@pytest.mark.parametrize("mode", ["shared", "per-cluster"])
def test_surrogate_predicts_held_out_twin_candidates_within_10_percent(small_fleet, mbv1, mode,
                                                                       tmp_path):
    ctx = prepare(quick_options(model="mobilenet_v1", method="uniform"), small_fleet,
                  store=Store(tmp_path / "s"))
    widths = sample_candidates(mbv1, 120, seed=0)
    meas = ctx.backend.measure(mbv1, widths, ctx.rep_devices, repeats=3)
    sur = Surrogate(mbv1, SurrogatePlan(mode=mode, ensemble=2, n_estimators=200)).fit(
        widths, meas.median_ms, ctx.rep_features, ctx.rep_clusters)
    rep = sur.report_
    assert rep["overall"]["within_10pct"] >= 0.9, rep["overall"]
    assert {c["cluster"] for c in rep["per_cluster"]} == set(range(ctx.k))
    pred, unc = sur.predict_clusters(widths[:5], ctx.rep_features, ctx.rep_clusters, ctx.k)
    assert pred.shape == (5, ctx.k) and np.all(unc >= 0)
    again = Surrogate.from_bytes(mbv1, sur.to_bytes())
    np.testing.assert_allclose(again.predict_clusters(widths[:5], ctx.rep_features,
                                                      ctx.rep_clusters, ctx.k)[0], pred)


def test_surrogate_refuses_too_few_measurements(mbv1):
    widths = sample_candidates(mbv1, 5, seed=0)
    with pytest.raises(HdapError, match="at least 10"):
        Surrogate(mbv1).fit(widths, np.ones((5, 1)), np.ones((1, 3)), np.zeros(1))
