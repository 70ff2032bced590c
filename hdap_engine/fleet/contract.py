"""The telemetry contract: what a fleet table must hold, checked once with messages that say what to fix.

Past these checks, code may trust a table:

- ``device_id`` is a non-empty, unique string per row;
- two or more ``probe_<name>_ms`` columns, float64, finite and > 0;
- one SKU at most (``sku`` is None when the file has no ``sku`` column);
- every other column is context (numeric or categorical); ``agent_url`` is
  always categorical context and never a clustering feature.

Every problem is one `HdapError` line naming the file, the column, the first
offending rows (`RowNumbers`: the user's line numbers) and what to do. How
the bytes became a table is `hdap_engine.fleet.reading`'s job;
`hdap_engine.fleet.telemetry.load_fleet` puts the two together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hdap_engine.errors import HdapError
from hdap_engine.infra.wording import plural

ID_COLUMN = "device_id"
SKU_COLUMN = "sku"
AGENT_URL_COLUMN = "agent_url"
PROBE_PATTERN = re.compile(r"^probe_(.+)_ms$")
MIN_PROBES = 2
# How many offending rows a message names: enough to find the pattern,
# short enough for one line.
ROWS_SHOWN = 5


@dataclass(frozen=True)
class RowNumbers:
    """Where each frame row is in the user's file.

    CSV: "line N", the physical line (the header is line 1; blank lines
    count). Parquet and frames: "data row N", 1-based, header not counted.
    """

    unit: str
    numbers: np.ndarray

    def take(self, positions: np.ndarray) -> RowNumbers:
        """The row numbers of some rows (positions into this table)."""
        return RowNumbers(self.unit, self.numbers[positions])

    def describe(self, positions: np.ndarray) -> str:
        """E.g. ``lines 5, 17, 230`` or ``data rows 3, 9 and 40 more``."""
        positions = np.asarray(positions)
        shown = ", ".join(str(int(n)) for n in self.numbers[positions[:ROWS_SHOWN]])
        more = f" and {len(positions) - ROWS_SHOWN} more" if len(positions) > ROWS_SHOWN else ""
        unit = self.unit if len(positions) == 1 else self.unit + "s"
        return f"{unit} {shown}{more}"

    def one(self, position: int) -> str:
        """E.g. ``line 7``."""
        return f"{self.unit} {int(self.numbers[position])}"


@dataclass(frozen=True, eq=False)
class CheckedTelemetry:
    """A table that meets the contract, and what the checks found in it.

    ``frame`` has ``device_id`` as str, probe columns as float64 and a
    RangeIndex; ``notes`` holds the reader's notes and the checks' own.
    """

    frame: pd.DataFrame
    probe_columns: tuple[str, ...]
    context_columns: tuple[str, ...]
    sku: str | None
    notes: tuple[str, ...]


def is_numeric_context(series: pd.Series, name: str) -> bool:
    """Whether a context column holds numbers (``agent_url`` never does)."""
    if name == AGENT_URL_COLUMN:
        return False
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def check_telemetry(
    frame: pd.DataFrame, *, rows: RowNumbers, sku: str | None, source: str, notes: list[str]
) -> CheckedTelemetry:
    """Check a telemetry table against the contract; the checked table and what it holds.

    Parameters
    ----------
    frame:
        The table as read (any dtypes; not modified).
    rows:
        Where each row is in the user's file, for messages.
    sku:
        Keep only this SKU's devices (required when the table holds several).
    source:
        The file name shown in messages.
    notes:
        What the reader noted so far; the checks append to it.

    Returns
    -------
    CheckedTelemetry

    Raises
    ------
    HdapError
        One line naming the file, the column, the first offending rows and what to do.
    """
    label = source
    frame = _clean_columns(frame, label, notes)

    if len(frame) == 0:
        raise HdapError(
            f"{label}: has columns but no device rows; export the telemetry again with one row per device"
        )
    columns = list(frame.columns)
    if ID_COLUMN not in columns:
        raise HdapError(_missing_id_message(label, columns))

    probe_columns = [c for c in columns if PROBE_PATTERN.match(c)]
    if len(probe_columns) < MIN_PROBES:
        raise HdapError(_too_few_probes_message(label, columns, probe_columns))

    frame, rows, chosen_sku = _select_sku(frame, rows, sku, label, notes)

    ids = _check_ids(frame, rows, label)
    probes = {c: _check_probe(frame[c], c, rows, label) for c in probe_columns}

    out = {}
    for c in frame.columns:
        if c == ID_COLUMN:
            out[c] = ids
        elif c in probes:
            out[c] = probes[c]
        elif c == SKU_COLUMN:
            out[c] = frame[c].astype(str).str.strip()
        elif c == AGENT_URL_COLUMN:
            out[c] = frame[c].astype("str").str.strip()
        else:
            out[c] = frame[c]
    # copy=False: no second, consolidated copy of the numeric columns (the
    # arrays are fresh or read-only under copy-on-write).
    result = pd.DataFrame(out, columns=list(frame.columns), copy=False)
    result.index = pd.RangeIndex(len(result))
    context = tuple(c for c in frame.columns if c not in (ID_COLUMN, SKU_COLUMN) and c not in probes)

    if len(result) == 1:
        notes.append("the fleet has a single device: clustering will give one cluster")
    else:
        if all((probes[c] == probes[c][0]).all() for c in probe_columns):
            notes.append(
                f"all {len(result):,} devices have identical probe values: clustering will give one cluster"
            )
    return CheckedTelemetry(
        frame=result,
        probe_columns=tuple(probe_columns),
        context_columns=context,
        sku=chosen_sku,
        notes=tuple(notes),
    )


def _clean_columns(frame: pd.DataFrame, label: str, notes: list[str]) -> pd.DataFrame:
    names = [str(c).strip().lstrip("\ufeff").strip() for c in frame.columns]
    frame = frame.copy(deep=False)
    frame.columns = names
    unnamed = [i for i, n in enumerate(names) if n == ""]
    drop = []
    for i in unnamed:
        col = frame.iloc[:, i]
        empty = col.isna() | (col.astype("string").fillna("").str.strip() == "")
        if not empty.all():
            raise HdapError(
                f"{label}: column {i + 1} has no name in the header but holds values; "
                "name it or delete it"
            )
        drop.append(i)
    if drop:
        # A trailing delimiter on every line makes an empty, unnamed column.
        frame = frame.iloc[:, [i for i in range(len(names)) if i not in drop]]
        notes.append(f"ignored {plural(len(drop), 'empty unnamed column')}")
        names = list(frame.columns)
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    dups = [n for n, k in seen.items() if k > 1]
    if dups:
        raise HdapError(
            f"{label}: column {dups[0]} appears {seen[dups[0]]} times in the header; "
            "column names must be unique: rename or delete the copies"
        )
    return frame


def _missing_id_message(label: str, columns: list[str]) -> str:
    def norm(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())

    near = [c for c in columns if norm(c) in ("deviceid", "device", "id", "devid", "serial", "serialnumber")]
    shown = ", ".join(columns[:8]) + (f" and {len(columns) - 8} more" if len(columns) > 8 else "")
    if near:
        return (
            f"{label}: no device_id column (found {near[0]!r}); rename that column to device_id "
            "(one unique id per device)"
        )
    numeric_names = sum(_is_number(c) for c in columns)
    if numeric_names >= max(2, len(columns) // 2):
        return (
            f"{label}: no device_id column, and the first line looks like data, not a header "
            f"({', '.join(columns[:4])}, ...); add the header line (device_id, probe_<name>_ms, ...)"
        )
    if len(columns) == 1 and any(d in columns[0] for d in (";", "\t", "|")):
        return (
            f"{label}: no device_id column and only one column ({columns[0][:60]!r}); "
            "use comma-, semicolon- or tab-separated values"
        )
    return (
        f"{label}: no device_id column (columns: {shown}); add a device_id column "
        "with one unique id per device"
    )


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "."))
    except ValueError:
        return False
    return True


def _too_few_probes_message(label: str, columns: list[str], probes: list[str]) -> str:
    lookalike = [
        c
        for c in columns
        if c not in probes and (c.lower().startswith("probe") or c.lower().endswith("_ms"))
    ]
    found = f"found {len(probes)} ({', '.join(probes)})" if probes else "found none"
    hint = (
        f"; these columns look like probes but are not named so: {', '.join(lookalike[:5])}"
        if lookalike
        else ""
    )
    return (
        f"{label}: needs at least {MIN_PROBES} probe columns named probe_<name>_ms "
        f"(latencies in ms), {found}{hint}; rename or add probe columns "
        "(`hdap probe` measures them)"
    )


def _select_sku(
    frame: pd.DataFrame, rows: RowNumbers, sku: str | None, label: str, notes: list[str]
) -> tuple[pd.DataFrame, RowNumbers, str | None]:
    has_column = SKU_COLUMN in frame.columns
    if not has_column:
        if sku is not None:
            raise HdapError(
                f"{label}: SKU {sku!r} was asked for but the file has no sku column; "
                "do not pick a SKU for this file"
            )
        return frame, rows, None
    values = frame[SKU_COLUMN].astype("string").fillna("").str.strip()
    counts = values.value_counts(sort=True)
    listed = ", ".join(
        f"{name or '(empty)'}: {plural(int(n), 'device')}" for name, n in counts.iloc[:6].items()
    ) + (f" and {len(counts) - 6} more" if len(counts) > 6 else "")
    if sku is None:
        empty = np.flatnonzero((values == "").to_numpy())
        if len(empty):
            raise HdapError(
                f"{label}: column sku is empty at {rows.describe(empty)}; give every device "
                "its SKU or remove the sku column"
            )
        if len(counts) > 1:
            raise HdapError(
                f"{label}: holds {len(counts)} SKUs ({listed}) but a fleet must be one SKU; "
                "pick one (--sku NAME, or the SKU choice in the app)"
            )
        return frame, rows, str(counts.index[0])
    sku = str(sku).strip()
    keep = (values == sku).to_numpy()
    if not keep.any():
        raise HdapError(f"{label}: SKU {sku!r} is not in the file (SKUs: {listed}); pick one of those")
    dropped = int((~keep).sum())
    if dropped:
        others = ", ".join(f"{n or '(empty)'}: {int(k):,}" for n, k in counts.items() if n != sku)
        notes.append(f"kept SKU {sku}: dropped {plural(dropped, 'row')} of other SKUs ({others})")
        positions = np.flatnonzero(keep)
        frame = frame.iloc[positions].reset_index(drop=True)
        rows = rows.take(positions)
    return frame, rows, sku


def _check_ids(frame: pd.DataFrame, rows: RowNumbers, label: str) -> pd.Series:
    raw = frame[ID_COLUMN]
    if pd.api.types.is_float_dtype(raw.dtype):
        # Parquet/frames with float ids: 12.0 -> "12" rather than "12.0".
        as_int = raw.dropna()
        if (as_int == np.floor(as_int)).all():
            raw = raw.astype("Int64")
    missing = raw.isna().to_numpy()
    ids = (raw if raw.dtype == "str" else raw.astype("str")).fillna("").str.strip()
    empty = np.flatnonzero(missing | (ids == "").to_numpy())
    if len(empty):
        raise HdapError(
            f"{label}: column device_id is empty at {rows.describe(empty)}; every device needs "
            "a unique id: fill them in or remove those rows"
        )
    if _has_duplicates(ids):
        positions = np.flatnonzero(ids.duplicated(keep=False).to_numpy())
        dup_ids = ids.iloc[positions]
        n_ids = dup_ids.nunique()
        first = str(dup_ids.iloc[0])
        where = np.flatnonzero((ids == first).to_numpy())
        raise HdapError(
            f"{label}: column device_id has {plural(n_ids, 'duplicated id')} "
            f"({first!r} at {rows.describe(where)}; {len(positions):,} rows in all); "
            "ids must be unique: remove or rename the duplicates"
        )
    return ids


def _has_duplicates(ids: pd.Series) -> bool:
    """Whether any id occurs twice, by sorting rather than hashing.

    pandas' ``duplicated`` hashes every id; on 10,000,000 ids that took 1.4 GB
    and 4.5 s, the sort 0.45 GB and 1.8 s (the message's details are then
    found with ``duplicated``, only when there are duplicates).
    """
    if len(ids) < 2:
        return False
    values = pa.array(ids)  # pandas' str columns are Arrow arrays already: no copy
    ordered = values.take(pc.sort_indices(values))
    return bool(pc.any(pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))).as_py())


def _check_probe(col: pd.Series, name: str, rows: RowNumbers, label: str) -> np.ndarray:
    what = "probe latencies must be positive numbers in ms"
    if pd.api.types.is_bool_dtype(col.dtype):
        raise HdapError(
            f"{label}: column {name} holds true/false values; {what}: fix the column"
        )
    if pd.api.types.is_numeric_dtype(col.dtype):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = col.astype("string")
        values = pd.to_numeric(text.str.strip(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        blank = (text.isna() | (text.str.strip() == "")).to_numpy()
        bad = np.flatnonzero(np.isnan(values) & ~blank & ~text.str.strip().str.lower().isin(
            ["nan", "na", "n/a", "null", "none", "-nan"]).to_numpy())
        if len(bad):
            examples = ", ".join(
                f"{str(text.iloc[i])[:20]!r} at {rows.one(i)}" for i in bad[:3]
            )
            raise HdapError(
                f"{label}: column {name} has {plural(len(bad), 'non-numeric value')} ({examples}"
                f"{' ...' if len(bad) > 3 else ''}); {what}: fix or remove those rows"
            )
    nan = np.flatnonzero(np.isnan(values))
    if len(nan):
        raise HdapError(
            f"{label}: column {name} has {plural(len(nan), 'missing or NaN value')} at "
            f"{rows.describe(nan)}; every device needs every probe: re-measure or remove those rows"
        )
    inf = np.flatnonzero(np.isinf(values))
    if len(inf):
        raise HdapError(
            f"{label}: column {name} has {plural(len(inf), 'infinite value')} at "
            f"{rows.describe(inf)}; {what}: fix or remove those rows"
        )
    nonpos = np.flatnonzero(values <= 0)
    if len(nonpos):
        raise HdapError(
            f"{label}: column {name} has {plural(len(nonpos), 'non-positive value')} at "
            f"{rows.describe(nonpos)}; probe latencies must be > 0 ms: fix or remove those rows"
        )
    return values
