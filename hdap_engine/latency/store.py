"""The measurement store: SQLite under the workspace, so nothing is measured twice.

One file, ``$HDAP_HOME/store.sqlite``, holds

- ``measurements``: one row per (backend, device, model, widths, input shape,
  repeats) with the median, the spread and the raw times. The device key
  carries how it was measured; for the host that includes the runtime
  (``...:runtime=onnxruntime``), and a key without one is eager ``torch``, so
  rows stored before runtimes existed stay valid (`runtime_of`); the precision
  is part of it the same way (`precision_of`: a key without one is FP32);
- ``surrogates``: trained latency models (XGBoost's own JSON format, never a
  pickle) keyed by what they were trained on;
- ``runs``: the history of studies with their settings and results;
- ``devices``: the probe vector of every device a study measured on, with its
  scope (SKU; a later precision key joins it there), so that a later study of
  the same model and SKU can start from those measurements (warm start:
  `warm_start_rows`), its own devices entering the surrogate through their
  probes.

Several app users and CLI runs may share a workspace: the database runs in WAL
mode (readers never block the writer), every write is one short transaction
behind a process-wide lock, and other processes wait on SQLite's busy timeout.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from hdap_engine.infra import database
from hdap_engine.infra.jsonable import jsonable
from hdap_engine.infra.workspace import home

SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    backend TEXT NOT NULL,
    device TEXT NOT NULL,
    model TEXT NOT NULL,
    widths TEXT NOT NULL,
    input_shape TEXT NOT NULL,
    repeats INTEGER NOT NULL,
    median_ms REAL NOT NULL,
    spread_ms REAL NOT NULL,
    times_ms TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (backend, device, model, widths, input_shape, repeats)
);
CREATE TABLE IF NOT EXISTS surrogates (
    key TEXT PRIMARY KEY,
    meta TEXT NOT NULL,
    blob BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    backend TEXT NOT NULL,
    device TEXT NOT NULL,
    scope TEXT NOT NULL,
    probes TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (backend, device)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    name TEXT NOT NULL,
    settings TEXT NOT NULL,
    result TEXT NOT NULL
);
"""


def widths_key(widths: Iterable[int]) -> str:
    """The text form of a candidate used as a key: ``64,64,256,...``."""
    return ",".join(str(int(w)) for w in widths)


def runtime_of(device_key: str) -> str:
    """The runtime a stored measurement ran in: ``...:runtime=NAME``, else ``torch``.

    Parameters
    ----------
    device_key:
        A measurement's device key.

    Returns
    -------
    The runtime name.
    """
    marker = ":runtime="
    return device_key.rsplit(marker, 1)[1] if marker in device_key else "torch"


def precision_of(device_key: str) -> str:
    """The precision a stored measurement ran in: ``...:precision=int8`` (host) or
    ``.../int8`` (agent) or ``...:int8:`` (twin fleet key), else ``fp32``.

    Parameters
    ----------
    device_key:
        A measurement's device key.

    Returns
    -------
    ``fp32`` or ``int8``.
    """
    int8 = (":precision=int8" in device_key or device_key.endswith("/int8")
            or ":int8:" in device_key)
    return "int8" if int8 else "fp32"


def shape_key(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


class Store:
    """Measurements, surrogates and run history in one SQLite file.

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

    # -- measurements ----------------------------------------------------------------------
    def get_measurements(self, backend: str, model: str, input_shape, repeats: int,
                         pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Stored rows for (device, widths key) pairs; missing pairs are absent."""
        pairs = list(pairs)
        if not pairs:
            return {}
        shape = shape_key(input_shape)
        out: dict[tuple[str, str], dict] = {}
        with closing(self._connect()) as con:
            con.execute("CREATE TEMP TABLE wanted (device TEXT, widths TEXT)")
            con.executemany("INSERT INTO wanted VALUES (?, ?)", pairs)
            rows = con.execute(
                """SELECT m.device, m.widths, m.median_ms, m.spread_ms, m.times_ms
                   FROM measurements m JOIN wanted w
                     ON m.device = w.device AND m.widths = w.widths
                   WHERE m.backend = ? AND m.model = ? AND m.input_shape = ? AND m.repeats = ?""",
                (backend, model, shape, int(repeats))).fetchall()
        for device, widths, median, spread, times in rows:
            out[(device, widths)] = {"median_ms": median, "spread_ms": spread,
                                     "times_ms": json.loads(times)}
        return out

    def put_measurements(self, backend: str, model: str, input_shape, repeats: int,
                         rows: Iterable[tuple[str, str, float, float, list[float]]]) -> int:
        """Insert or replace (device, widths key, median, spread, times) rows."""
        shape = shape_key(input_shape)
        now = time.time()
        data = [(backend, d, model, w, shape, int(repeats), float(med), float(spr),
                 json.dumps([round(float(t), 6) for t in times]), now)
                for d, w, med, spr, times in rows]
        if not data:
            return 0
        database.write(self.path, lambda con: con.executemany(
            "INSERT OR REPLACE INTO measurements VALUES (?,?,?,?,?,?,?,?,?,?)", data))
        return len(data)

    def count_measurements(self, backend: str | None = None) -> int:
        with closing(self._connect()) as con:
            if backend is None:
                return con.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
            return con.execute("SELECT COUNT(*) FROM measurements WHERE backend = ?",
                               (backend,)).fetchone()[0]

    # -- devices (warm starts) -------------------------------------------------------------
    def put_devices(self, backend: str, scope: dict,
                    rows: Iterable[tuple[str, dict[str, float]]]) -> int:
        """Record (device key, {probe column: ms}) of devices measured within ``scope``.

        ``scope`` says which devices' measurements may stand in for each other's:
        ``{"sku": ...}`` today; a precision key is one more entry.
        """
        now = time.time()
        text = json.dumps(scope, sort_keys=True)
        data = [(backend, d, text, json.dumps(probes, sort_keys=True), now)
                for d, probes in rows]
        if not data:
            return 0
        database.write(self.path, lambda con: con.executemany(
            "INSERT OR REPLACE INTO devices VALUES (?,?,?,?,?)", data))
        return len(data)

    def warm_start_rows(self, backend: str, model: str, input_shape, scope: dict,
                        exclude: Iterable[str] = (), limit: int = 20_000
                        ) -> tuple[dict[str, dict[str, float]], list[tuple[str, str, float]]]:
        """Earlier studies' measurements of ``model`` on devices of the same ``scope``.

        Returns ({device key: probes}, [(device key, widths key, median ms)]),
        newest first, at most ``limit`` rows; devices in ``exclude`` (the
        current fleet's) are left out, so a study never warm-starts from itself.
        Where a pair was timed with several repeat counts, the most repeats win.
        """
        skip = set(exclude)
        text = json.dumps(scope, sort_keys=True)
        with closing(self._connect()) as con:
            devs = {d: json.loads(p) for d, p in con.execute(
                "SELECT device, probes FROM devices WHERE backend = ? AND scope = ?",
                (backend, text)) if d not in skip}
            if not devs:
                return {}, []
            con.execute("CREATE TEMP TABLE warm (device TEXT PRIMARY KEY)")
            con.executemany("INSERT INTO warm VALUES (?)", [(d,) for d in devs])
            rows = con.execute(
                """SELECT m.device, m.widths, m.median_ms FROM measurements m
                   JOIN warm w ON m.device = w.device
                   WHERE m.backend = ? AND m.model = ? AND m.input_shape = ?
                   ORDER BY m.created_at DESC, m.repeats DESC LIMIT ?""",
                (backend, model, shape_key(input_shape), int(limit))).fetchall()
        seen: set[tuple[str, str]] = set()
        out = []
        for device, widths, median in rows:
            if (device, widths) not in seen:
                seen.add((device, widths))
                out.append((device, widths, float(median)))
        used = {d for d, _, _ in out}
        return {d: p for d, p in devs.items() if d in used}, out

    # -- surrogates ------------------------------------------------------------------------
    def put_surrogate(self, key: str, meta: dict, blob: bytes) -> None:
        row = (key, json.dumps(meta), sqlite3.Binary(blob), time.time())
        database.write(self.path, lambda con: con.execute(
            "INSERT OR REPLACE INTO surrogates VALUES (?,?,?,?)", row))

    def get_surrogate(self, key: str) -> tuple[dict, bytes] | None:
        with closing(self._connect()) as con:
            row = con.execute("SELECT meta, blob FROM surrogates WHERE key = ?",
                              (key,)).fetchone()
        return None if row is None else (json.loads(row[0]), bytes(row[1]))

    # -- runs ------------------------------------------------------------------------------
    def add_run(self, name: str, settings: dict, result: dict) -> int:
        row = (time.time(), name, json.dumps(jsonable(settings)), json.dumps(jsonable(result)))
        return database.write(self.path, lambda con: int(con.execute(
            "INSERT INTO runs (created_at, name, settings, result) VALUES (?,?,?,?)",
            row).lastrowid))

    def list_runs(self, limit: int = 200) -> list[dict]:
        """Newest first: id, created_at, name, settings (results are fetched with get_run)."""
        with closing(self._connect()) as con:
            rows = con.execute(
                "SELECT id, created_at, name, settings FROM runs ORDER BY id DESC LIMIT ?",
                (int(limit),)).fetchall()
        return [{"id": i, "created_at": t, "name": n, "settings": json.loads(s)}
                for i, t, n, s in rows]

    def get_run(self, run_id: int) -> dict | None:
        with closing(self._connect()) as con:
            row = con.execute("SELECT id, created_at, name, settings, result FROM runs "
                              "WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            return None
        i, t, n, s, r = row
        return {"id": i, "created_at": t, "name": n, "settings": json.loads(s),
                "result": json.loads(r)}
