"""The runner: starts queued jobs in worker processes, at most N at once, in order.

One runner per server process and workspace (`runner()`). A small dispatcher
thread (bookkeeping only; the work is never in a thread) wakes every fraction
of a second or when asked, and

- starts the oldest queued jobs while fewer than ``max_workers`` run, each in
  its own process from multiprocessing's *spawn* context;
- stops the worker of a job whose cancel was requested (SIGTERM, then SIGKILL);
- notices a worker that ended without writing its outcome and fails its job.

Why processes from the standard library, one per job: tracing models
(torch.fx, Torch-Pruning's hooks) and numba are not safe in several threads
of one process; a process can be stopped (cancel) without leaving the server
in an unknown state; and nothing beyond the standard library and the SQLite
store we already keep is needed. A pool that reuses processes would save the
import of PyTorch per job (about 2 s) but cannot stop one task without
stopping the pool.

At start the runner marks jobs left ``running`` by a server that is no longer
alive as ``interrupted``; queued jobs simply start.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

from hdap_engine.jobs.table import Job, JobTable

ENV_WORKERS = "HDAP_JOB_WORKERS"


def default_workers() -> int:
    """``$HDAP_JOB_WORKERS``, else one per two cores (at least one)."""
    value = os.environ.get(ENV_WORKERS, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n >= 1:
            return n
    return max(1, (os.cpu_count() or 2) // 2)


def _alive(runner: str | None) -> bool:
    """Whether the server process named by a runner id (host:pid:tag) still runs."""
    if not runner:
        return False
    host, _, rest = runner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's server: we cannot tell; treat its jobs as ours to fix
    if int(pid) == os.getpid():
        return False  # this process has just started: any runner id with our pid is stale
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runner:
    """Starts and watches the workers of one workspace's jobs.

    Parameters
    ----------
    table:
        The job table.
    max_workers:
        Jobs run at once (default `default_workers`).
    poll:
        Seconds between the dispatcher's rounds.
    """

    def __init__(self, table: JobTable, *, max_workers: int | None = None, poll: float = 0.25):
        self.table = table
        self.max_workers = max_workers or default_workers()
        self.poll = poll
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self._tokens: dict[int, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> Runner:
        """Recover what a dead server left, then dispatch in the background."""
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="hdap-job-runner", daemon=True)
        self._thread.start()
        atexit.register(self.shutdown)
        return self

    def recover(self) -> list[int]:
        """Mark jobs left running by a server that is gone as interrupted; returns their ids."""
        lost = []
        for job in self.table.list(states=("running",), limit=10_000):
            if job.runner != self.id and not _alive(job.runner) and \
                    self.table.mark_interrupted(job.id, "the server stopped while this job "
                                                "ran; re-queue it to run it again (finished "
                                                "measurements are reused)"):
                lost.append(job.id)
        return lost

    def shutdown(self) -> None:
        """Stop the workers and mark their jobs interrupted (the server is stopping)."""
        self._stop.set()
        with self._lock:
            procs = dict(self._procs)
        for job_id, proc in procs.items():
            self._kill(proc)
            self.table.mark_interrupted(job_id, "the server was stopped while this job ran; "
                                        "re-queue it to run it again")
        with self._lock:
            self._procs.clear()

    # -- the page's calls ------------------------------------------------------------------
    def submit(self, kind: str, settings: dict, *, owner: str | None = None,
               agent_token: str | None = None) -> tuple[Job, bool]:
        """Queue a job (or find the equal one queued or running); returns (job, created)."""
        job, created = self.table.submit(kind, settings, owner=owner)
        if agent_token and job.active:
            self._tokens[job.id] = agent_token
        self._wake.set()
        return job, created

    def cancel(self, job_id: int) -> Job | None:
        job = self.table.request_cancel(job_id)
        self._wake.set()
        return job

    def requeue(self, job_id: int) -> Job | None:
        job = self.table.requeue(job_id)
        self._wake.set()
        return job

    def running(self) -> list[int]:
        with self._lock:
            return list(self._procs)

    # -- dispatching -----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch()
            except Exception:  # noqa: BLE001  (a locked database must not end the runner)
                time.sleep(1.0)
            self._wake.wait(self.poll)
            self._wake.clear()

    def dispatch(self) -> None:
        """One round: reap finished workers, stop cancelled ones, start queued jobs."""
        with self._lock:
            for job_id, proc in list(self._procs.items()):
                if proc.is_alive():
                    continue
                proc.join(timeout=0)
                del self._procs[job_id]
                self._tokens.pop(job_id, None)
                job = self.table.get(job_id)
                if job is not None and job.state == "running":
                    if job.cancel_requested:
                        self.table.mark_cancelled(job_id)
                    else:
                        self.table.fail(job_id, f"the worker process ended unexpectedly "
                                                f"(exit code {proc.exitcode})")
            for job_id, proc in list(self._procs.items()):
                job = self.table.get(job_id)
                if job is not None and job.cancel_requested:
                    self._kill(proc)
                    self.table.mark_cancelled(job_id)
                    del self._procs[job_id]
                    self._tokens.pop(job_id, None)
            free = self.max_workers - len(self._procs)
            if free <= 0 or self._stop.is_set():
                return
            for job in self.table.queued()[:free]:
                if self.table.claim(job.id, self.id):
                    self._spawn(job)

    def _spawn(self, job: Job) -> None:
        threads = max(1, (os.cpu_count() or 1) // self.max_workers)
        proc = self._ctx.Process(
            target=_worker_entry, name=f"hdap-job-{job.id}",
            args=(job.id, str(self.table.path), self._tokens.get(job.id), os.getpid(), threads))
        proc.start()
        self._procs[job.id] = proc
        self.table.set_worker(job.id, proc.pid)

    @staticmethod
    def _kill(proc) -> None:
        with contextlib.suppress(Exception):
            proc.terminate()
            proc.join(timeout=3)
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(timeout=3)


def _worker_entry(job_id: int, db_path: str, token: str | None, parent: int,
                  threads: int) -> None:
    # Module-level so that the spawn start method can import it by name.
    from hdap_engine.jobs.worker import run_job

    run_job(job_id, db_path, token, parent, threads)


_RUNNERS: dict[str, Runner] = {}
_RUNNERS_LOCK = threading.Lock()


def runner(path: str | Path | None = None, *, max_workers: int | None = None) -> Runner:
    """The started runner of this process for a workspace's store (created on first call)."""
    table = JobTable(path)
    key = str(table.path.resolve())
    with _RUNNERS_LOCK:
        if key not in _RUNNERS:
            _RUNNERS[key] = Runner(table, max_workers=max_workers).start()
        return _RUNNERS[key]
