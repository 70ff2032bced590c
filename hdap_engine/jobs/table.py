"""The job table: every run of the app as one row of the workspace's SQLite store.

A job is plain data (`Job`): who started it, what kind of work, its settings
as JSON, its state, its progress (stage, step, total, finished stages), its
timings, what it has produced so far (``partial``: JSON a page can draw while
the job runs, e.g. a fine-tune's loss and accuracy epoch by epoch), and once it
ends its result (JSON: the report, the bundle path, what the charts need) or its
error message. The page that follows a job only
reads this table, so a reload, another tab or another teammate sees the same
thing, and nothing about a job lives only in a process that may die.

States::

    queued -> running -> done | failed | cancelled
                      -> interrupted   (the server died while it ran; re-queue to resume)

The table lives in ``store.sqlite`` next to the measurements (WAL mode:
readers never block the writer). Writes are single short transactions;
``SQLITE_BUSY`` past the busy timeout is retried with a growing pause, since
workers in several processes write progress at once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hdap_engine.infra import database
from hdap_engine.infra.jsonable import jsonable
from hdap_engine.infra.workspace import home

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
ENDED = ("done", "failed", "cancelled", "interrupted")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT,
    kind TEXT NOT NULL,
    settings TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    stages TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    runner TEXT,
    worker_pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    partial TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_dedupe ON jobs (dedupe_key, state);
"""

T = TypeVar("T")


@dataclass
class Job:
    """One job as stored (plain data; `JobTable.get` reads it fresh every time)."""

    id: int
    owner: str | None
    kind: str
    settings: dict
    state: str
    stage: str | None = None
    step: int = 0
    total: int = 0
    stages: list[dict] = field(default_factory=list)  # finished stages: {stage, seconds}
    cancel_requested: bool = False
    runner: str | None = None
    worker_pid: int | None = None
    attempts: int = 0
    result: dict | None = None
    partial: dict | None = None  # what it has produced so far (`JobTable.partial`)
    error: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    updated_at: float = 0.0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def seconds(self) -> float | None:
        """Running time so far (or in all, once ended); None while queued."""
        if self.started_at is None:
            return None
        return (self.ended_at or time.time()) - self.started_at

    @property
    def fraction(self) -> float:
        """How far the stage under way is, from 0 to 1 (0 before the first step)."""
        return min(max(self.step / self.total, 0.0), 1.0) if self.total else 0.0


def dedupe_key(kind: str, settings: dict) -> str:
    """The same kind and settings give the same key (key order does not matter)."""
    text = json.dumps({"kind": kind, "settings": jsonable(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_COLUMNS = ("id", "owner", "kind", "settings", "state", "stage", "step", "total", "stages",
            "cancel_requested", "runner", "worker_pid", "attempts", "result", "partial",
            "error",
            "created_at", "started_at", "ended_at", "updated_at")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"


def _job(row) -> Job:
    d = dict(zip(_COLUMNS, row, strict=True))
    d["settings"] = json.loads(d["settings"])
    d["stages"] = json.loads(d["stages"])
    d["result"] = None if d["result"] is None else json.loads(d["result"])
    d["partial"] = None if d["partial"] is None else json.loads(d["partial"])
    d["cancel_requested"] = bool(d["cancel_requested"])
    return Job(**d)


class JobTable:
    """The jobs of one workspace.

    Parameters
    ----------
    path:
        The SQLite file; default ``$HDAP_HOME/store.sqlite`` (shared with the
        measurement store).
    retries:
        How many times a write that found the database busy is tried again.
    """

    def __init__(self, path: str | Path | None = None, *, retries: int = database.RETRIES):
        self.retries = retries
        self.path = Path(path) if path is not None else home() / "store.sqlite"
        database.initialise(self.path, SCHEMA)
        self._write(_add_partial_column)

    # -- plumbing (`hdap_engine.infra.database`: WAL, one writer, retries while busy) ---------------
    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return database.write(self.path, work, retries=self.retries)

    def _read(self, sql: str, args: tuple = ()) -> list:
        return database.read(self.path, sql, args)

    # -- creating and reading --------------------------------------------------------------
    def submit(self, kind: str, settings: dict, *, owner: str | None = None) -> tuple[Job, bool]:
        """Queue a job, or return the queued or running job with the same kind and settings.

        Returns
        -------
        (job, created): ``created`` is False when an existing job was returned.
        """
        settings = jsonable(settings)
        key = dedupe_key(kind, settings)
        now = time.time()

        def work(con):
            row = con.execute("SELECT id FROM jobs WHERE dedupe_key = ? AND state IN "
                              "('queued', 'running') ORDER BY id LIMIT 1", (key,)).fetchone()
            if row is not None:
                return int(row[0]), False
            cur = con.execute(
                "INSERT INTO jobs (owner, kind, settings, dedupe_key, state, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (owner, kind, json.dumps(settings), key, now, now))
            return int(cur.lastrowid), True

        # Immediate: the look-up and the insert are one decision, so two sessions (or two
        # servers on one workspace) clicking at the same moment cannot both insert.
        job_id, created = database.write(self.path, work, retries=self.retries,
                                         immediate=True)
        return self.get(job_id), created

    def get(self, job_id: int) -> Job | None:
        rows = self._read(f"{_SELECT} WHERE id = ?", (int(job_id),))
        return _job(rows[0]) if rows else None

    def list(self, *, states: tuple[str, ...] | None = None, owner: str | None = None,
             limit: int = 200) -> list[Job]:
        """Newest first, optionally only some states or one owner's."""
        where, args = [], []
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + \
            " ORDER BY id DESC LIMIT ?"
        return [_job(r) for r in self._read(sql, (*args, int(limit)))]

    def queued(self) -> list[Job]:
        """Queued jobs, oldest first: the order they start in."""
        return [_job(r) for r in self._read(f"{_SELECT} WHERE state = 'queued' ORDER BY id")]

    def queued_ahead(self, job_id: int) -> int:
        """How many queued jobs start before job ``job_id``."""
        return sum(1 for job in self.queued() if job.id < int(job_id))

    def find(self, kind: str, *, limit: int = 200, **spec) -> list[Job]:
        """Jobs of ``kind`` whose settings section of that kind holds ``spec``, newest first.

        E.g. ``find("finetune", of_job=12)``: the fine-tunes of study job 12 (settings
        ``{"finetune": {..., "of_job": 12}}``). ``limit`` bounds the jobs of ``kind`` read.
        """
        rows = self._read(f"{_SELECT} WHERE kind = ? ORDER BY id DESC LIMIT ?",
                          (kind, int(limit)))
        jobs = [_job(r) for r in rows]
        return [job for job in jobs
                if all(((job.settings or {}).get(kind) or {}).get(k) == v for k, v in spec.items())]

    def latest(self, kind: str, **spec) -> Job | None:
        """The newest job `find` gives, or None."""
        found = self.find(kind, **spec)
        return found[0] if found else None

    def owners_of_runs(self) -> dict[int, str | None]:
        """History run id -> the owner of the job that recorded it."""
        out = {}
        for owner, result in self._read("SELECT owner, result FROM jobs WHERE state = 'done'"):
            run_id = (json.loads(result) or {}).get("run_id") if result else None
            if run_id is not None:
                out[int(run_id)] = owner
        return out

    # -- state changes ---------------------------------------------------------------------
    def _update(self, job_id: int, where: str = "", **values) -> bool:
        values["updated_at"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in values)
        args = tuple(json.dumps(jsonable(v)) if k in ("result", "stages", "partial") else v
                     for k, v in values.items())
        sql = f"UPDATE jobs SET {cols} WHERE id = ?" + (f" AND {where}" if where else "")
        return self._write(lambda con: con.execute(sql, (*args, int(job_id))).rowcount) > 0

    def claim(self, job_id: int, runner: str) -> bool:
        """Queued -> running for ``runner``; False when someone else took it or it was cancelled."""
        return self._update(job_id, "state = 'queued'", state="running", runner=runner,
                            started_at=time.time(), ended_at=None, stage=None, step=0,
                            total=0, stages=[], error=None, partial=None)

    def set_worker(self, job_id: int, pid: int) -> None:
        self._write(lambda con: con.execute(
            "UPDATE jobs SET worker_pid = ?, attempts = attempts + 1 WHERE id = ?",
            (int(pid), int(job_id))))

    def progress(self, job_id: int, stage: str, step: int, total: int,
                 stages: list[dict] | None = None) -> None:
        values = {"stage": stage, "step": int(step), "total": int(total)}
        if stages is not None:
            values["stages"] = stages
        self._update(job_id, "state = 'running'", **values)

    def partial(self, job_id: int, data: dict) -> None:
        """What a running job has produced so far (replaces the last; a page draws it live)."""
        self._update(job_id, "state = 'running'", partial=data)

    def finish(self, job_id: int, result: dict, stages: list[dict] | None = None) -> bool:
        values = {"state": "done", "result": result, "ended_at": time.time()}
        if stages is not None:
            values["stages"] = stages
        return self._update(job_id, "state = 'running'", **values)

    def fail(self, job_id: int, error: str, stages: list[dict] | None = None) -> bool:
        values = {"state": "failed", "error": error, "ended_at": time.time()}
        if stages is not None:
            values["stages"] = stages
        return self._update(job_id, "state = 'running'", **values)

    def request_cancel(self, job_id: int) -> Job | None:
        """Cancel a queued job at once; ask the runner to stop a running one."""
        now = time.time()
        self._update(job_id, "state = 'queued'", state="cancelled", ended_at=now,
                     cancel_requested=1, error="cancelled before it started")
        self._update(job_id, "state = 'running'", cancel_requested=1)
        return self.get(job_id)

    def mark_cancelled(self, job_id: int) -> bool:
        return self._update(job_id, "state = 'running'", state="cancelled",
                            ended_at=time.time(), error="cancelled while running")

    def mark_interrupted(self, job_id: int, why: str) -> bool:
        return self._update(job_id, "state = 'running'", state="interrupted",
                            ended_at=time.time(), error=why)

    def requeue(self, job_id: int) -> Job | None:
        """An interrupted, failed or cancelled job back in the queue (same id, same link).

        When an equal job is already queued or running, that one is returned instead.
        """
        job = self.get(job_id)
        if job is None or job.active:
            return job
        twin = self._read("SELECT id FROM jobs WHERE dedupe_key = ? AND state IN "
                          "('queued', 'running') ORDER BY id LIMIT 1",
                          (dedupe_key(job.kind, job.settings),))
        if twin:
            return self.get(twin[0][0])
        self._update(job_id, f"state IN ({', '.join(repr(s) for s in ENDED)})",
                     state="queued", cancel_requested=0, error=None, result=None, partial=None,
                     ended_at=None, worker_pid=None, runner=None)
        return self.get(job_id)


def _add_partial_column(con: sqlite3.Connection) -> None:
    """Stores made before jobs had ``partial`` get the column (nothing else changes)."""
    have = {row[1] for row in con.execute("PRAGMA table_info(jobs)")}
    if "partial" not in have:
        try:
            con.execute("ALTER TABLE jobs ADD COLUMN partial TEXT")
        except sqlite3.OperationalError as exc:  # another process added it a moment ago
            if "duplicate column" not in str(exc):
                raise
