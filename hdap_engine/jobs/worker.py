"""The worker process: runs one job and writes its progress and outcome to the store.

A worker is a fresh interpreter (``python -m hdap_engine.jobs.worker ID DB``),
so nothing of the server's threads, locks or half-imported modules is inherited;
PyTorch, Torch-Pruning and numba run single-threaded in the sense that
matters: one study per process. The worker ends by itself when the server
that started it is gone (its parent changes), so a killed server leaves no
orphan computing a result nobody will read.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

from hdap_engine.errors import HdapError


class StoreProgress:
    """The engine's progress callback, written to the job's row.

    Every stage change is written at once; steps within a stage at most every
    ``interval`` seconds, so thousands of measurement ticks cost a handful of
    writes.
    """

    def __init__(self, table, job_id: int, interval: float = 0.5):
        self.table, self.job_id, self.interval = table, job_id, interval
        self.stages: list[dict] = []
        self._stage: str | None = None
        self._started = self._last = 0.0

    def __call__(self, stage: str, step: int, total: int) -> None:
        now = time.perf_counter()
        if stage != self._stage:
            self.close(now)
            self._stage, self._started = stage, now
            self.table.progress(self.job_id, stage, step, total, self.stages)
            self._last = now
            return
        if now - self._last < self.interval and step < total:
            return
        self._last = now
        self.table.progress(self.job_id, stage, step, total)

    def close(self, now: float | None = None) -> list[dict]:
        """Record the stage under way as finished; returns the finished stages."""
        now = time.perf_counter() if now is None else now
        if self._stage is not None:
            self.stages.append({"stage": self._stage, "seconds": round(now - self._started, 2)})
            self._stage = None
        return self.stages


def _exit_with_parent(parent: int) -> None:
    """End this process when the server that started it has died (we get re-parented)."""
    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, name="hdap-worker-parent-watch", daemon=True).start()


def run_job(job_id: int, db_path: str, agent_token: str | None = None,
            parent: int | None = None, threads: int | None = None) -> None:
    """Run one job (the worker process's whole life).

    Parameters
    ----------
    job_id:
        The job to run; the runner has already marked it running.
    db_path:
        The workspace's ``store.sqlite``.
    agent_token:
        Passed to the engine only, never written anywhere.
    parent:
        The server's process id (the worker exits when it is gone).
    threads:
        PyTorch threads for this worker (the server's cores shared by its workers).
    """
    if parent is not None:
        _exit_with_parent(parent)
    from hdap_engine.jobs.execute import execute
    from hdap_engine.jobs.table import JobTable
    from hdap_engine.latency.store import Store

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    table = JobTable(db_path)
    job = table.get(job_id)
    if job is None or job.state != "running":
        return
    progress = StoreProgress(table, job_id)
    try:
        result = execute(job.kind, job.settings, job_id=job_id, store=Store(db_path),
                         progress=progress, agent_token=agent_token)
    except HdapError as exc:
        table.fail(job_id, str(exc), progress.close())
        return
    except Exception as exc:  # noqa: BLE001  (the page must show why, not hang)
        traceback.print_exc(file=sys.stderr)
        table.fail(job_id, f"internal error: {type(exc).__name__}: {exc}", progress.close())
        return
    table.finish(job_id, result, progress.close())


def main(argv: list[str] | None = None) -> int:
    """``python -m hdap_engine.jobs.worker JOB_ID DB_PATH [--parent PID] [--threads N]``."""
    import argparse

    from hdap_engine.jobs.runner import TOKEN_ENV

    p = argparse.ArgumentParser(prog="hdap_engine.jobs.worker")
    p.add_argument("job_id", type=int)
    p.add_argument("db_path")
    p.add_argument("--parent", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    run_job(args.job_id, args.db_path, os.environ.get(TOKEN_ENV) or None, args.parent,
            args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
