"""Calibrated accuracies kept in the workspace's SQLite store, so nothing is evaluated twice.

One table, ``calibrated_accuracy``, in ``$HDAP_HOME/store.sqlite`` (the file
the measurement store uses, so one workspace is one file to share), keyed by
the model (name and weights digest), the calibration set's fingerprint (the
dataset, its preprocessing and the split) and the candidate's widths. Opened
and written like every table of that file (`hdap_engine.infra.database`).

Public API
----------
``AccuracyCache(path=None)``: ``.get(model_key, data_key, widths_keys) -> {widths_key: top1}``,
``.put(model_key, data_key, {widths_key: top1}, n_eval=0)``, ``.count()``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from hdap_engine.infra import database
from hdap_engine.infra.workspace import home

SCHEMA = """
CREATE TABLE IF NOT EXISTS calibrated_accuracy (
    model TEXT NOT NULL,
    data TEXT NOT NULL,
    widths TEXT NOT NULL,
    top1 REAL NOT NULL,
    n_eval INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (model, data, widths)
);
"""


class AccuracyCache:
    """Calibrated top-1 per (model, calibration data, widths).

    Parameters
    ----------
    path:
        The database file; default ``$HDAP_HOME/store.sqlite``.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = database.initialise(
            Path(path) if path is not None else home() / "store.sqlite", SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return database.connect(self.path)

    def get(self, model_key: str, data_key: str, widths_keys: Iterable[str]) -> dict[str, float]:
        """Stored accuracies of the given candidates; missing ones are absent."""
        wanted = list(dict.fromkeys(widths_keys))
        if not wanted:
            return {}
        with closing(self._connect()) as con:
            con.execute("CREATE TEMP TABLE wanted (widths TEXT)")
            con.executemany("INSERT INTO wanted VALUES (?)", [(w,) for w in wanted])
            rows = con.execute(
                """SELECT a.widths, a.top1 FROM calibrated_accuracy a JOIN wanted w
                   ON a.widths = w.widths WHERE a.model = ? AND a.data = ?""",
                (model_key, data_key)).fetchall()
        return {w: float(t) for w, t in rows}

    def put(self, model_key: str, data_key: str, values: dict[str, float], *,
            n_eval: int = 0) -> int:
        """Insert or replace accuracies; returns how many rows were written."""
        now = time.time()
        data = [(model_key, data_key, w, float(t), int(n_eval), now) for w, t in values.items()]
        if not data:
            return 0
        database.write(self.path, lambda con: con.executemany(
            "INSERT OR REPLACE INTO calibrated_accuracy VALUES (?,?,?,?,?,?)", data))
        return len(data)

    def count(self) -> int:
        with closing(self._connect()) as con:
            return con.execute("SELECT COUNT(*) FROM calibrated_accuracy").fetchone()[0]
