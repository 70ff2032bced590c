"""Jobs: the table in the store, the runner's worker processes, the one entry point.

Real SQLite, real worker processes (``python -m hdap_engine.jobs.worker``),
real studies on a small simulated fleet.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from hdap_engine.jobs import JobTable, Runner, default_workers, execute, rebuild_context
from tests.helpers.studies import quick_options


def _settings(csv, **options) -> dict:
    return {"options": quick_options(**options).settings(), "telemetry": str(csv),
            "compare": [], "sweep": False}


def _wait(table: JobTable, job_id: int, timeout: float = 240.0, until=None):
    until = until or (lambda j: not j.active)
    t0 = time.perf_counter()
    while True:
        job = table.get(job_id)
        if until(job):
            return job
        assert time.perf_counter() - t0 < timeout, (job.state, job.stage, job.error)
        time.sleep(0.1)


def test_the_same_settings_clicked_at_once_in_several_sessions_make_one_job(tmp_path):
    table = JobTable(tmp_path / "store.sqlite")
    settings = {"options": {"model": "resnet56", "budget": "0.5"}, "telemetry": "x.csv"}
    barrier = threading.Barrier(6)
    got = []

    def click() -> None:
        barrier.wait()
        got.append(table.submit("study", dict(reversed(list(settings.items()))),
                                owner="ana"))

    threads = [threading.Thread(target=click) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job.id for job, _ in got}) == 1
    assert sum(created for _, created in got) == 1
    other, created = table.submit("study", {**settings, "telemetry": "y.csv"})
    assert created and other.id != got[0][0].id
    # Once a job has ended, the same settings start a new one.
    table.claim(other.id, "me")
    table.fail(other.id, "boom")
    again, created = table.submit("study", {**settings, "telemetry": "y.csv"})
    assert created and again.id != other.id


def test_jobs_a_dead_server_left_running_become_interrupted_and_requeue_under_the_same_id(
        tmp_path):
    table = JobTable(tmp_path / "store.sqlite")
    lost, _ = table.submit("study", {"n": 1})
    alive, _ = table.submit("study", {"n": 2})
    assert table.claim(lost.id, "gone-host:1:x")  # another machine: cannot be asked, so lost
    assert table.claim(alive.id, f"{socket.gethostname()}:{os.getppid()}:y")  # a live server
    runner = Runner(table, max_workers=1)
    assert runner.recover() == [lost.id]
    job = table.get(lost.id)
    assert job.state == "interrupted" and "re-queue" in job.error
    assert table.get(alive.id).state == "running"
    job = table.requeue(lost.id)
    assert job.id == lost.id and job.state == "queued" and job.error is None


def test_default_workers_are_one_per_two_cores_unless_configured(monkeypatch):
    monkeypatch.delenv("HDAP_JOB_WORKERS", raising=False)
    assert default_workers() == max(1, (os.cpu_count() or 2) // 2)
    monkeypatch.setenv("HDAP_JOB_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("HDAP_JOB_WORKERS", "none")
    assert default_workers() == max(1, (os.cpu_count() or 2) // 2)


@pytest.mark.slow
def test_queued_jobs_start_in_order_and_no_more_than_the_limit_run_at_once(tmp_path):
    table = JobTable(tmp_path / "store.sqlite")
    runner = Runner(table, max_workers=1, poll=0.05).start()
    try:
        # Telemetry that does not exist: each worker starts, fails with the engine's
        # message and ends; what is checked is when they ran.
        ids = [runner.submit("study", {"options": {}, "telemetry": str(tmp_path / f"{i}.csv")})[0].id
               for i in range(3)]
        jobs = [_wait(table, i) for i in ids]
    finally:
        runner.shutdown()
    for job in jobs:
        assert job.state == "failed" and job.error, (job.state, job.error)
    for a, b in zip(jobs, jobs[1:], strict=False):
        assert a.started_at < b.started_at and a.ended_at <= b.started_at + 0.05


@pytest.mark.slow
def test_cancel_stops_the_worker_process(small_fleet, tmp_path):
    table = JobTable(tmp_path / "store.sqlite")
    runner = Runner(table, max_workers=1, poll=0.05).start()
    try:
        job, _ = runner.submit("study", _settings(small_fleet))
        job = _wait(table, job.id, until=lambda j: j.worker_pid is not None)
        runner.cancel(job.id)
        job = _wait(table, job.id)
    finally:
        runner.shutdown()
    assert job.state == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(job.worker_pid, 0)


@pytest.mark.slow
def test_a_study_job_result_rebuilds_its_context_for_what_if_without_measuring(small_fleet,
                                                                             tmp_path):
    from hdap_engine.latency.store import Store
    from hdap_engine.options import Query
    from hdap_engine.study.run import optimize

    store = Store(tmp_path / "store.sqlite")
    settings = _settings(small_fleet)
    ticks = []
    result = execute("study", settings, job_id=7, store=store,
                     progress=lambda *a: ticks.append(a))
    assert {s for s, _, _ in ticks} >= {"measure", "fit", "search", "prune", "verify",
                                        "export"}
    assert result["report"]["fleet"]["speedup"] > 1.0
    assert result["run_id"] == store.list_runs()[0]["id"]
    assert result["measurements"]["measured"] > 0
    measured = store.count_measurements()
    ctx, learned = rebuild_context(settings, result, store=store)
    assert store.count_measurements() == measured
    assert learned.surrogate is not None and len(learned.widths) == len(result["samples"])
    what_if = optimize(ctx, Query(budget="0.4"), plan=ctx.options.search.quick(),
                       learned=learned)
    assert ctx.space.macs(what_if.widths) <= 0.4 * ctx.space.base_macs * 1.01
    assert store.count_measurements() == measured
    # The same study again: every sampled measurement comes from the store.
    again = execute("study", settings, job_id=8, store=store)
    assert again["measurements"]["measured"] == 0


def test_a_slow_backend_stores_each_chunk_as_soon_as_it_is_timed(tmp_path):
    """A stopped run keeps what it measured: the host backend writes the store chunk by chunk."""
    from hdap_engine.latency.backends import HostBackend
    from hdap_engine.latency.sampling import sample_candidates
    from hdap_engine.latency.store import Store
    from hdap_engine.pruning.space import PruningSpace

    space = PruningSpace.for_model("resnet56")
    store = Store(tmp_path / "store.sqlite")
    backend = HostBackend(batch_models=1, seed=0)
    assert backend.store_chunk == 4
    widths = sample_candidates(space, 10, seed=0)
    seen = []

    def stop_after_first_chunk(done, total):
        seen.append((done, total, store.count_measurements()))
        if done == 5:
            raise KeyboardInterrupt  # the run is stopped while the second chunk is timed

    with pytest.raises(KeyboardInterrupt):
        backend.measure(space, widths, ["this-host"], repeats=1, warmup=0, store=store,
                        progress=stop_after_first_chunk)
    assert store.count_measurements() == 4  # the first chunk survived the stop
    assert [s[:2] for s in seen] == [(1, 10), (2, 10), (3, 10), (4, 10), (5, 10)]
    again = backend.measure(space, widths, ["this-host"], repeats=1, warmup=0, store=store)
    assert int(again.from_store.sum()) == 4 and store.count_measurements() == 10


def test_job_workers_take_no_more_threads_than_omp_num_threads_allows(monkeypatch):
    import os

    from hdap_engine.jobs.runner import available_cores, worker_threads

    cores = len(os.sched_getaffinity(0))
    assert available_cores() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert worker_threads(1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 8))
    assert worker_threads(1) == cores
    for unset in ("", "many", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert worker_threads(1) == cores
        assert worker_threads(cores + 1) == 1


def test_a_new_job_kind_is_one_registered_entry(tmp_path):
    from hdap_engine.errors import HdapError
    from hdap_engine.jobs.kinds import JobKind, get_kind, register_kind, unregister_kind

    seen = []

    def run(settings, job):
        job.progress("toy", 1, 1)
        return {"echo": settings["x"], "job": job.job_id}

    register_kind(JobKind("toy", "a toy kind", run, ("echo", "job")))
    try:
        assert execute("toy", {"x": 3}, job_id=5,
                       progress=lambda *a: seen.append(a)) == {"echo": 3, "job": 5}
        assert seen == [("toy", 1, 1)]
        assert get_kind("toy").description == "a toy kind"
    finally:
        unregister_kind("toy")
    with pytest.raises(HdapError, match="unknown job kind 'toy'"):
        execute("toy", {})


def test_every_stored_kind_name_is_registered_and_every_engine_stage_has_its_wording():
    """Kind names are stored in the job table: the names of earlier jobs stay registered.
    Every stage the engine reports has its words in `infra.progress.STAGES`."""
    import re
    from pathlib import Path

    from hdap_engine.infra.progress import STAGES
    from hdap_engine.jobs import kind_names

    assert {"study", "comparison", "sweep", "rollout", "reoptimise", "finetune"} <= \
        set(kind_names())
    root = Path(__file__).resolve().parents[1] / "hdap_engine"
    emitted = {m for p in root.rglob("*.py")
               for m in re.findall(r"\bprogress\(\"([a-z]+)\"", p.read_text())}
    assert emitted and emitted <= set(STAGES), emitted - set(STAGES)


def test_find_gives_the_newest_job_of_a_kind_whose_settings_match(tmp_path):
    table = JobTable(tmp_path / "store.sqlite")
    first, _ = table.submit("finetune", {"finetune": {"of_job": 1, "epochs": 2}})
    table.submit("rollout", {"rollout": {"job": 1}})
    second, _ = table.submit("finetune", {"finetune": {"of_job": 1, "epochs": 3}})
    table.submit("finetune", {"finetune": {"of_job": 2, "epochs": 3}})
    assert [j.id for j in table.find("finetune", of_job=1)] == [second.id, first.id]
    assert table.latest("finetune", of_job=1).id == second.id
    assert table.latest("finetune", of_job=9) is None
    assert table.queued_ahead(second.id) == 2
