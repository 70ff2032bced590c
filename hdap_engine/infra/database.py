"""The workspace's SQLite file: one way to open it and one way to write to it.

The measurement store (`latency.store`), the job table (`jobs.table`) and the
accuracy cache (`accuracy.cache`) share ``$HDAP_HOME/store.sqlite``, so a
workspace is one file to copy or share. All three follow the same rules, kept
here once:

- WAL journal: readers never wait for the writer, and a worker process that
  records a measurement does not stall a page that reads the job table;
- a connection per call: `sqlite3` connections must not cross threads, and
  Streamlit serves every session on its own thread (connections are cheap next
  to the work they record);
- one writer per process at a time (a lock), each write one short transaction;
- a write that still finds the database busy after SQLite's own wait (another
  process holding the write lock, or a WAL snapshot that went stale) is tried
  again with a growing pause instead of failing the job.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0
"""How long SQLite itself waits for another writer before it says busy."""
RETRIES = 8
"""Further tries of a write that found the database busy (pauses 0.05 s doubling to 2 s)."""

_WRITE_LOCK = threading.Lock()


def connect(path: str | Path) -> sqlite3.Connection:
    """A fresh connection to ``path`` that waits for other writers (close it after use)."""
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    return con


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _transaction(con: sqlite3.Connection, work: Callable[[sqlite3.Connection], T],
                 immediate: bool) -> T:
    if not immediate:
        with con:  # commits, or rolls back on an exception
            return work(con)
    con.isolation_level = None  # the transaction by hand: BEGIN IMMEDIATE takes the lock now
    try:
        con.execute("BEGIN IMMEDIATE")
        out = work(con)
        con.execute("COMMIT")
        return out
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


def write(path: str | Path, work: Callable[[sqlite3.Connection], T], *,
          retries: int = RETRIES, immediate: bool = False) -> T:
    """Run ``work(connection)`` in one transaction; retry while the database is busy.

    Parameters
    ----------
    path:
        The database file.
    work:
        Does the writes; its return value is returned. It may run more than once
        (after a busy error rolled its transaction back), so it must not have
        effects outside the database.
    retries:
        How many times a busy write is tried again before the error is raised.
    immediate:
        Take the write lock before ``work`` reads anything (``BEGIN IMMEDIATE``),
        so that a look-up and the insert it decides on are one decision even
        across processes.
    """
    pause = 0.05
    for attempt in range(retries + 1):
        try:
            with _WRITE_LOCK, closing(connect(path)) as con:
                return _transaction(con, work, immediate)
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or attempt == retries:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 2.0)
    raise AssertionError("unreachable")


def read(path: str | Path, sql: str, args: tuple = ()) -> list:
    """All rows of one query."""
    with closing(connect(path)) as con:
        return con.execute(sql, args).fetchall()


def initialise(path: str | Path, schema: str) -> Path:
    """Create the folder, switch the file to WAL and create ``schema``'s tables; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, lambda con: (con.execute("PRAGMA journal_mode=WAL"), con.executescript(schema)))
    return path
