"""The study end to end (`hdap_engine.study.prepare` and `run`): report, determinism, reuse, cluster weights, real-hardware drift."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from hdap_engine.latency.store import Store
from hdap_engine.options import Query
from hdap_engine.pruning.budget import meets_budget, parse_budget
from hdap_engine.study.prepare import prepare
from hdap_engine.study.run import optimize, run_study
from tests.helpers.studies import quick_options


@pytest.fixture(scope="module")
def study(small_fleet, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store") / "s.sqlite")
    out = tmp_path_factory.mktemp("out") / "bundle"
    return run_study(quick_options(), small_fleet, out_dir=out, store=store), store


def test_report_names_source_clusters_and_fleet(study):
    result, _ = study
    r = result.report
    assert r["measured_source"] == "twin (simulated)"
    assert len(r["clusters"]) == result.context.k
    for c in r["clusters"]:
        assert {"cluster", "devices", "weight", "predicted_ms", "measured_ms"} <= set(c)
        assert c["measured_ms"] > 0 and c["predicted_ms"] > 0
    f = r["fleet"]
    assert {"predicted_mean_ms", "measured_mean_ms", "measured_p95_ms", "unpruned_mean_ms",
            "speedup"} <= set(f)
    assert f["speedup"] > 1.2  # half the MACs must buy real latency on the twin
    assert abs(f["predicted_mean_ms"] / f["measured_mean_ms"] - 1) < 0.15
    on_disk = json.loads((result.bundle / "report.json").read_text())
    assert on_disk["fleet"] == pytest.approx(f)
    assert meets_budget(on_disk["macs"], result.target_macs)


def test_same_seed_and_inputs_give_the_same_widths(study, small_fleet, tmp_path):
    first, _ = study
    again = run_study(quick_options(), small_fleet, store=Store(tmp_path / "fresh.sqlite"),
                      export=False)
    assert np.array_equal(first.widths, again.widths)


def test_a_second_study_remeasures_nothing_it_already_has(study, small_fleet):
    _, store = study
    # Other objective and weights, same budget: every sample comes from the store.
    before = store.count_measurements()
    ctx = prepare(quick_options(objective="worst", cluster_weights={0: 1.0}), small_fleet,
                  store=store)
    assert store.count_measurements() == before
    # Another budget adds candidates at that budget and re-measures none of the others.
    other = prepare(quick_options(budget="0.3"), small_fleet, store=store)
    # (candidate, device) pairs: hdap measures some starting samples on one device only.
    known = {(w.tobytes(), j) for w, row in zip(ctx.learned.widths, ctx.learned.ms, strict=True)
             for j in np.flatnonzero(np.isfinite(row))}
    new = sum((w.tobytes(), j) not in known
              for w, row in zip(other.learned.widths, other.learned.ms, strict=True)
              for j in np.flatnonzero(np.isfinite(row)))
    assert 0 < new
    assert store.count_measurements() - before == new
    before = store.count_measurements()
    plan = replace(ctx.options.search, refine_rounds=0)
    res = optimize(ctx, Query(budget="0.3"), plan=plan)  # what-if: only finalists measured
    assert meets_budget(ctx.space.macs(res.widths), parse_budget("0.3", ctx.space))
    o = ctx.options.search
    allowed = (o.finalists + o.finalists // 2 + o.polish_rounds * o.polish_batch)
    assert store.count_measurements() - before <= allowed * len(ctx.rep_devices)


def test_a_prepared_study_answers_a_query_the_same_way_twice(study):
    result, _ = study
    ctx = result.context
    learned = ctx.learned
    first = optimize(ctx)
    second = optimize(ctx)
    # Nothing accumulates in the context: same candidate, same count, same surrogate.
    assert ctx.learned is learned
    assert np.array_equal(first.widths, second.widths)
    assert first.device_measurements == second.device_measurements
    assert len(first.learned.widths) > len(learned.widths)  # the run refined its own copy


def test_different_cluster_weights_choose_different_candidates(small_fleet, tmp_path):
    # One fleet, one budget: all weight on one cluster or on another must lead the search
    # to candidates that are each faster on the cluster they were weighted for.
    ctx = prepare(quick_options(model="mobilenet_v1", budget="0.3", k=2, samples=60),
                  small_fleet, store=Store(tmp_path / "w.sqlite"))
    assert ctx.k == 2
    plan = ctx.options.search.quick()
    picks = [optimize(ctx, Query(budget="0.3", cluster_weights={c: 1.0}), plan=plan)
             for c in (0, 1)]
    assert not np.array_equal(picks[0].widths, picks[1].widths)
    search = ctx.fleet_search()
    both = np.stack([p.widths for p in picks])
    predicted = search.predict_clusters(ctx.surrogate, both)
    assert predicted[0, 0] <= predicted[1, 0] and predicted[1, 1] <= predicted[0, 1]




def test_optimize_cli_writes_the_bundle_and_report(cli, small_fleet, tmp_path):
    out = tmp_path / "D"
    res = cli("optimize", "--model", "resnet56", "--telemetry", str(small_fleet), "--macs",
              "0.5", "--samples", "30", "--repeats", "2", "--population", "16",
              "--generations", "8", "--restarts", "1", "--polish-rounds", "1", "--out",
              str(out), "--quiet", "--cluster-weights", "0=2,1=1")
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["measured_source"] == "twin (simulated)"
    assert report["cluster_weights_source"] == "user"
    assert "speedup" in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--cluster-weights", "0=x"], "cluster weights look like"),
    (["--cluster-weights", "99=1"], "no cluster 99"),
    (["--macs", "9G"], "more than resnet56"),
    (["--objective", "slo"], "slo objective needs"),
])
def test_bad_study_flags_are_one_clear_error(small_fleet, tmp_path, capsys, args, message):
    from hdap_engine import cli

    base = ["optimize", "--model", "resnet56", "--telemetry", str(small_fleet), "--macs", "0.5",
            "--samples", "20", "--out", str(tmp_path / "x"), "--quiet"]
    assert cli.main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_representatives_estimate_the_fleet_mean_within_3_percent(small_fleet, tmp_path):
    from hdap_engine.study.compare import clustering_check

    out = clustering_check(quick_options(model="mobilenet_v1"), small_fleet, candidates=10,
                           store=Store(tmp_path / "c.sqlite"))
    assert out["devices_measured"] <= out["k"] * 3
    assert out["max_abs_error"] < 0.03, out["rows"]




def _drifting(backend, factor: float):
    """The same twin, presented as real hardware that now runs ``factor`` times slower."""

    class Drifting(type(backend)):
        real = True

        def _measure(self, *args):
            return super()._measure(*args) * factor

    drifting = Drifting.__new__(Drifting)
    drifting.__dict__.update(backend.__dict__)
    return drifting


def test_later_batches_on_drifting_real_hardware_are_rescaled(small_fleet, tmp_path):
    from hdap_engine.latency.sampling import sample_candidates

    ctx = prepare(quick_options(refine_rounds=0), small_fleet, store=Store(tmp_path / "s.sqlite"))
    twin = ctx.backend
    new = sample_candidates(ctx.space, 8, seed=99)
    truth = twin.measure(ctx.space, new, list(ctx.rep_devices), repeats=3, warmup=0).median_ms
    # The machine got 25 % slower since the samples were measured.
    drifting = replace(ctx, backend=_drifting(twin, 1.25))
    n_before = len(ctx.learned.widths)
    learned, used = drifting.fleet_search().measure_more(ctx.learned, new)
    # Each new candidate's row (a sample may be a starting sample already: not measured again).
    row = {w.tobytes(): i for i, w in enumerate(learned.widths)}
    added = learned.ms[[row[w.tobytes()] for w in new]]
    fresh = [row[w.tobytes()] >= n_before for w in new]
    added, truth = added[fresh], truth[fresh]
    assert len(added) and np.isfinite(added).all()  # measured on every search device
    # Without the anchors the new rows would read 1.25x: a drift the surrogate would
    # otherwise learn as if it were the architectures'.
    assert np.median(added / truth) == pytest.approx(1.0, abs=0.05)
    assert used > len(added) * len(ctx.rep_devices)  # the re-timed anchors count
    notes = [n for n in learned.notes if "drifted between measurement batches" in n]
    assert len(notes) == 1  # the report says so
    assert 20 <= int(re.search(r"up to \+(\d+)%", notes[0]).group(1)) <= 30
    assert len(ctx.learned.widths) == n_before  # the context's own samples are as they were


def test_finalists_on_real_hardware_are_timed_afresh_together(small_fleet, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    ctx = prepare(quick_options(refine_rounds=0), small_fleet, store=store)
    pair = ctx.learned.widths[:2]

    def head_to_head(c):
        return c.fleet_search().head_to_head(ctx.learned, pair)

    before = head_to_head(ctx)  # twin: stored times are as good as new
    assert np.array_equal(head_to_head(ctx), before)
    twin = ctx.backend
    assert np.allclose(head_to_head(replace(ctx, backend=_drifting(twin, 2.0))) / before, 2.0,
                       rtol=0.1)
    # Slower still: timed now, not read from the store.
    assert np.allclose(head_to_head(replace(ctx, backend=_drifting(twin, 3.0))) / before, 3.0,
                       rtol=0.1)


def test_a_looser_latency_budget_keeps_more_macs_and_each_answer_meets_it(study):
    # `hdap_engine.study.latency_budget`; a what-if answer on the surrogate (nothing measured).
    result, _ = study
    ctx = result.context
    judge = ctx.fleet_objective()
    at_half = float(judge(result.predicted_cluster_ms[None])[0])
    plan = replace(ctx.options.search, refine_rounds=0, finalists=0)
    answers = {}
    for scale in (0.85, 1.15):
        q = replace(ctx.options.query, latency_ms=at_half * scale)
        answers[scale] = optimize(ctx, q, plan=plan, learned=result.learned)
        got = float(judge(answers[scale].predicted_cluster_ms[None])[0])
        assert got <= at_half * scale * 1.02  # the search's own noise
        assert answers[scale].latency_fit.latency_ms == pytest.approx(at_half * scale)
    tight, loose = (ctx.space.macs(answers[s].widths) for s in (0.85, 1.15))
    assert tight < ctx.space.macs(result.widths) < loose
