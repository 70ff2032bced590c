"""The runner: starts queued jobs in worker processes, at most N at once, in order.

One runner per server process and workspace (`runner()`). A small dispatcher
thread (bookkeeping only; the work is never in a thread) wakes every fraction
of a second or when asked, and

- starts the oldest queued jobs while fewer than ``max_workers`` run, each in
  its own fresh interpreter (``python -m hdap_engine.jobs.worker``, started
  with the standard library's `subprocess`);
- stops the worker of a job whose cancel was requested (SIGTERM, then SIGKILL);
- notices a worker that ended without writing its outcome and fails its job.

Why one fresh process per job, from the standard library: tracing models
(torch.fx, Torch-Pruning's hooks) and numba are not safe in several threads
of one process; a process can be stopped (cancel) without leaving the server
in an unknown state; and nothing beyond the standard library and the SQLite
store we already keep is needed (no broker, no second service to run). Not
`multiprocessing`'s spawn context or `ProcessPoolExecutor`: both re-run the
parent's ``__main__`` in the child, and under Streamlit ``__main__`` is the
page script (tried: the child re-ran ``app/Home.py`` and failed). A pool that
reuses processes would also save PyTorch's import per job (about 2 s) but
cannot stop one task without stopping the pool.

At start the runner marks jobs left ``running`` by a server that is no longer
alive as ``interrupted``; queued jobs simply start.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from hdap_engine.jobs.table import Job, JobTable

ENV_WORKERS = "HDAP_JOB_WORKERS"
TOKEN_ENV = "HDAP_WORKER_AGENT_TOKEN"
_log = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    return max(1, available_cores() // 2)


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


def worker_threads(workers: int) -> int:
    """PyTorch threads for each of ``workers`` job workers: the cores shared out, capped by
    ``OMP_NUM_THREADS`` when set.

    A server started with ``OMP_NUM_THREADS=1`` (a shared host, or a test run with several
    servers at once) asked for one thread per process; its workers must not take more.
    """
    threads = max(1, available_cores() // max(1, workers))
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        cap = 0
    return min(threads, cap) if cap > 0 else threads


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
        self._procs: dict[int, subprocess.Popen] = {}
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
                _log.exception("job runner: a dispatch round failed; retrying in 1 s")
                time.sleep(1.0)
            self._wake.wait(self.poll)
            self._wake.clear()

    def dispatch(self) -> None:
        """One round: reap finished workers, stop cancelled ones, start queued jobs."""
        with self._lock:
            for job_id, proc in list(self._procs.items()):
                if proc.poll() is None:
                    continue
                del self._procs[job_id]
                self._tokens.pop(job_id, None)
                job = self.table.get(job_id)
                if job is not None and job.state == "running":
                    if job.cancel_requested:
                        self.table.mark_cancelled(job_id)
                    else:
                        self.table.fail(job_id, f"the worker process ended unexpectedly "
                                                f"(exit code {proc.returncode})")
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
        threads = worker_threads(self.max_workers)
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                             if p)}
        token = self._tokens.get(job.id)
        if token:
            env[TOKEN_ENV] = token  # the environment, not the command line (ps shows that)
        # Same process group as the server: stopping the server's group stops its workers.
        proc = subprocess.Popen(
            [sys.executable, "-m", "hdap_engine.jobs.worker", str(job.id), str(self.table.path),
             "--parent", str(os.getpid()), "--threads", str(threads)],
            env=env, stdin=subprocess.DEVNULL)
        self._procs[job.id] = proc
        self.table.set_worker(job.id, proc.pid)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(Exception):
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=3)


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
