"""Raw timed runs (long format) aggregated to one row per device, out of core with DuckDB.

One row per timed run of one probe on one device (``device_id``, ``probe``,
``latency_ms``, optional ``timestamp`` and context) becomes one row per
device: the median of its runs per probe (``probe_<name>_ms``), ``runs``
(the fewest runs it has of any probe), ``spread`` (the largest
interquartile range / median over its probes), and each context column at
its latest value (by ``timestamp``, else the last row in file order).
Devices with too few runs or an unstable probe are left out, and a note
says how many, of which probe. Broken runs are refused with one line. The
result then passes the wide contract's own checks (`contract.check_telemetry`), so
the SKU rules are the same. See `hdap_engine.fleet.longformat` for how
files reach this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.fleet.contract import CheckedTelemetry, RowNumbers, check_telemetry
from hdap_engine.fleet.outofcore import (
    EXAMPLES,
    ID_COLUMN,
    LATENCY_COLUMN,
    LONG_COLUMNS,
    MAX_PROBES,
    PROBE_COLUMN,
    PROBE_NAME,
    SKU_COLUMN,
    TIMESTAMP_COLUMN,
    WIDE_PROBE,
    _connect,
    _duckdb_errors,
    _literal,
    _quote,
    _run,
    _source_sql,
)
from hdap_engine.infra.wording import plural
from hdap_engine.options import LongFormatOptions


def read_runs(
    files: Sequence[str], *, sku: str | None = None, name: str | None = None,
    options: LongFormatOptions | None = None, csv: bool = False,
) -> CheckedTelemetry:
    """Aggregate raw timed runs to one row per device and validate the result.

    Parameters
    ----------
    files:
        Parquet files (or one CSV file with ``csv=True``) of raw runs.
    sku:
        Keep only this SKU's devices (required when the runs hold several).
    name:
        Name shown in messages.
    options:
        `LongFormatOptions`; defaults when None.
    csv:
        The files are CSV.

    Returns
    -------
    The checked one-row-per-device table (`CheckedTelemetry`); its notes say how many runs were read and which
    devices were left out.
    """
    options = options or LongFormatOptions()
    label = name or Path(files[0]).name
    con = _connect(options)
    try:
        with _duckdb_errors(label):
            src = _source_sql(files, csv, row_numbers=False)
            schema = {r[0]: r[1] for r in _run(con, f"DESCRIBE SELECT * FROM {src}", label).fetchall()}
            return _aggregate(con, src, schema, files, csv, sku=sku, label=label, options=options)
    finally:
        con.close()


def aggregate_frame(
    frame: pd.DataFrame, *, sku: str | None = None, source: str = "<frame>",
    options: LongFormatOptions | None = None, notes: Sequence[str] = (),
) -> CheckedTelemetry:
    """Aggregate raw runs already in memory (an upload) like `read_runs`.

    Parameters
    ----------
    frame:
        Raw runs (``device_id``, ``probe``, ``latency_ms``, ...); not modified.
    sku:
        Keep only this SKU's devices.
    source:
        Name shown in messages.
    options:
        `LongFormatOptions`; defaults when None.
    notes:
        What the reader noted (delimiter, skipped lines), kept first.

    Returns
    -------
    The checked one-row-per-device table (`CheckedTelemetry`).
    """
    options = options or LongFormatOptions()
    frame = frame.copy(deep=False)
    frame.columns = [str(c).strip().lstrip("\ufeff").strip() for c in frame.columns]
    frame.insert(0, "__row", np.arange(len(frame), dtype=np.int64))
    con = _connect(options)
    try:
        con.register("runs_frame", frame)
        with _duckdb_errors(source):
            schema = {r[0]: r[1] for r in _run(con, "DESCRIBE SELECT * FROM runs_frame", source).fetchall()}
            return _aggregate(con, "runs_frame", schema, [], False, sku=sku, label=source,
                              options=options, reader_notes=notes)
    finally:
        con.close()


def _text_sql(column: str, schema: dict[str, str]) -> str:
    if schema[column].upper() == "VARCHAR":
        return _quote(column)
    return f"CAST({_quote(column)} AS VARCHAR)"


def _latency_sql(schema: dict[str, str]) -> str:
    t = schema[LATENCY_COLUMN].upper()
    if t == "DOUBLE":
        return _quote(LATENCY_COLUMN)
    if t in ("DOUBLE", "FLOAT", "REAL") or t.startswith(("DECIMAL", "INT", "BIGINT", "SMALLINT",
                                                          "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER")):
        return f"CAST({_quote(LATENCY_COLUMN)} AS DOUBLE)"
    # Text: decimal commas (semicolon files from European locales) are numbers too.
    return f"TRY_CAST(replace(trim(CAST({_quote(LATENCY_COLUMN)} AS VARCHAR)), ',', '.') AS DOUBLE)"


def _aggregate(
    con, src: str, schema: dict[str, str], files: Sequence[str], csv: bool, *,
    sku: str | None, label: str, options: LongFormatOptions, reader_notes: Sequence[str] = (),
) -> CheckedTelemetry:
    dup = [c for c in schema if c.startswith("__") and c != "__row"]
    if dup:
        raise HdapError(f"{label}: column {dup[0]} has a reserved name; rename it")
    lat = _latency_sql(schema)
    raw_lat = _quote(LATENCY_COLUMN)
    # Columns already of the right type are used as they are: a cast or trim
    # on 35 M rows costs more than the aggregation itself (measured 10x).
    dev = _text_sql(ID_COLUMN, schema)
    probe = _text_sql(PROBE_COLUMN, schema)

    # Pass 1, grouped by probe (a handful of groups): the probe names and
    # whether any latency breaks the rules. Cheap aggregates only; the
    # examples for a message are looked up when something is wrong.
    text = schema[LATENCY_COLUMN].upper() == "VARCHAR"
    non_numeric = (f"count(*) FILTER (WHERE {raw_lat} IS NOT NULL AND {lat} IS NULL)" if text else "0")
    checks = _run(con, f"""
        SELECT {probe} AS p, count(*) AS rows, count({lat}) AS runs, {non_numeric} AS non_numeric,
               min({lat}) AS lo, max({lat}) AS hi
        FROM {src} GROUP BY 1
    """, label).fetchall()
    total_rows = sum(r[1] for r in checks)
    if total_rows == 0:
        raise HdapError(f"{label}: has the columns of raw runs but no rows; export the runs again")
    bad_names = [(r[0], r[1]) for r in checks if r[0] is None or r[0] == "" or not _probe_name(r[0])]
    named = [r for r in checks if r[0] not in (None, "") and _probe_name(r[0])]
    if bad_names:
        with_runs = [(p, n) for p, n in bad_names if str(p or "").strip() != ""]
        if with_runs:
            shown = ", ".join(f"{p!r} ({plural(n, 'row')})" for p, n in with_runs[:EXAMPLES])
            raise HdapError(
                f"{label}: column probe has {plural(len(with_runs), 'value')} that "
                f"{'is not a probe name' if len(with_runs) == 1 else 'are not probe names'} ({shown}); "
                "a probe name is letters, digits and _ starting with a letter (conv3x3, copy_large): "
                "fix those rows or check the columns are not shifted"
            )
        # Empty probe names: a device listed with no runs, or runs without a probe.
        runs_without = sum(r[2] for r in checks if str(r[0] or "").strip() == "")
        if runs_without > 0:
            raise HdapError(
                f"{label}: column probe is empty in {plural(runs_without, 'run')} that have a latency; "
                "every run must name its probe: fill them in or remove those rows"
            )
    if len(named) > MAX_PROBES:
        raise HdapError(
            f"{label}: column probe holds {len(named):,} different names; a probe suite has a "
            f"few (at most {MAX_PROBES}): check that column probe holds the probe names"
        )
    for r in named:
        if r[3]:
            example = _run(con, f"""SELECT any_value({raw_lat}) FROM {src}
                                   WHERE {probe} = {_literal(r[0])} AND {raw_lat} IS NOT NULL AND {lat} IS NULL""",
                           label).fetchall()[0][0]
            raise HdapError(
                f"{label}: column latency_ms has {plural(r[3], 'non-numeric value')} (e.g. "
                f"{str(example)[:20]!r}, probe {r[0]}); latencies are numbers in ms: fix or remove those rows"
            )
    # NaN sorts above every number in DuckDB, so max() finds NaN and +inf.
    for r in named:
        if r[5] is not None and not np.isfinite(r[5]) or r[4] is not None and np.isinf(r[4]):
            n, device = _run(con, f"""SELECT count(*), any_value({dev}) FROM {src}
                                     WHERE {probe} = {_literal(r[0])} AND NOT isfinite({lat})""",
                             label).fetchall()[0]
            raise HdapError(
                f"{label}: column latency_ms has {plural(n, 'infinite or NaN value')} (e.g. device "
                f"{device!r}, probe {r[0]}); latencies must be finite numbers in ms: fix or remove those rows"
            )
    for r in named:
        if r[4] is not None and r[4] <= 0:
            n, device, value = _run(con, f"""SELECT count(*), arg_min({dev}, {lat}), min({lat}) FROM {src}
                                            WHERE {probe} = {_literal(r[0])} AND {lat} <= 0""",
                                    label).fetchall()[0]
            raise HdapError(
                f"{label}: column latency_ms has {plural(n, 'zero or negative value')} (e.g. device "
                f"{device!r}, probe {r[0]}: {value:g} ms); latencies must be > 0 ms: fix or remove those rows"
            )
    # Raw spellings -> probe name: "conv3x3" and "probe_conv3x3_ms" are one probe.
    spellings: dict[str, list[str]] = {}
    for r in named:
        spellings.setdefault(_probe_name(r[0]), []).append(r[0])
    names = sorted(spellings)
    if len(names) < 2:
        raise HdapError(
            f"{label}: the runs name {plural(len(names), 'probe')} ({', '.join(names) or 'none'}); "
            "clustering needs at least 2 probes: give the runs of the whole probe suite"
        )

    has_ts = TIMESTAMP_COLUMN in schema
    has_sku = SKU_COLUMN in schema
    context = [c for c in schema if c not in (*LONG_COLUMNS, TIMESTAMP_COLUMN, "__row")]
    if has_ts:
        ts_type = schema[TIMESTAMP_COLUMN].upper()
        ts = _quote(TIMESTAMP_COLUMN)
        if ts_type == "VARCHAR":
            ts = f"TRY_CAST({ts} AS TIMESTAMP)"
            bad = _run(con, f"""SELECT count(*), any_value({_quote(TIMESTAMP_COLUMN)}) FROM {src}
                               WHERE {_quote(TIMESTAMP_COLUMN)} IS NOT NULL AND trim({_quote(TIMESTAMP_COLUMN)}) <> ''
                                 AND {ts} IS NULL""", label).fetchall()[0]
            if bad[0]:
                raise HdapError(
                    f"{label}: column timestamp has {plural(bad[0], 'value')} that "
                    f"{'is' if bad[0] == 1 else 'are'} not a date and time (e.g. {str(bad[1])[:30]!r}); "
                    "use ISO 8601 (2026-11-01 13:45:00) or remove the column"
                )
        order = ts
    elif src == "runs_frame":
        order = "__row"
    else:
        order = None  # file order: set below
    if not has_ts and not csv and src != "runs_frame":
        src = _source_sql(files, csv, row_numbers=True)
        # The last row of the last file is the latest: files in name order.
        rank = " ".join(f"WHEN {_literal(f)} THEN {i}" for i, f in enumerate(files))
        order = (f"(CASE filename {rank} ELSE 0 END) * 4294967296 + file_row_number"
                 if len(files) > 1 else "file_row_number")
    if order is None:
        # A CSV without timestamps: file order, numbered as the rows stream in.
        src = f"(SELECT row_number() OVER () AS __row, * FROM {src})"
        order = "__row"

    parts = [f"{dev} AS {_quote(ID_COLUMN)}"]
    for n in names:
        spelled = ", ".join(_literal(s) for s in spellings[n])
        where = f"{probe} = {spelled}" if len(spellings[n]) == 1 else f"{probe} IN ({spelled})"
        # The runs as a list; quantiles are taken in numpy. DuckDB's
        # quantile_cont over a million groups is holistic and spills past the
        # memory limit (measured: 94 s of CPU against 9 s for list()).
        parts.append(f"list({lat}) FILTER (WHERE {where} AND {lat} IS NOT NULL) AS {_quote('q_' + n)}")
    parts.append(f"count({lat}) AS __runs")
    for c in context:
        if c == SKU_COLUMN:
            parts.append(f"min({_quote(c)}) AS {_quote(c)}")  # one per device, checked below
        else:
            parts.append(f"arg_max({_quote(c)}, {order}) AS {_quote(c)}")
    if has_sku:
        # min <> max, not count(DISTINCT): the same answer at a fraction of the cost.
        parts.append(f"min({_quote(SKU_COLUMN)}) <> max({_quote(SKU_COLUMN)}) AS __skus")
    if has_ts:
        parts.append(f"max({order}) AS {_quote(TIMESTAMP_COLUMN)}")
    table = _run(con, f"SELECT {', '.join(parts)} FROM {src} GROUP BY 1", label).to_arrow_table()

    runs_total = sum(r[2] for r in named)
    n_all = table.num_rows
    import pyarrow.compute as pc

    no_id = table.column(ID_COLUMN).is_null().to_numpy(zero_copy_only=False) | (
        pc.utf8_trim_whitespace(table.column(ID_COLUMN).fill_null("")).to_numpy(zero_copy_only=False) == "")
    if no_id.any():
        rows = _run(con, f"SELECT count(*) FROM {src} WHERE {dev} IS NULL OR trim({dev}) = ''", label).fetchall()[0][0]
        raise HdapError(
            f"{label}: column device_id is empty in {plural(rows, 'row')}; every run needs the "
            "id of the device it ran on: fill them in or remove those rows"
        )
    empty = np.asarray(table.column("__runs").to_numpy(zero_copy_only=False)) == 0
    ids_all = table.column(ID_COLUMN)
    if empty.any():
        where = np.flatnonzero(empty)
        shown = ", ".join(repr(str(ids_all[int(i)])) for i in where[:EXAMPLES])
        raise HdapError(
            f"{label}: {plural(len(where), 'device')} {'has' if len(where) == 1 else 'have'} no runs "
            f"({shown}{' ...' if len(where) > EXAMPLES else ''}): every listed device needs timed runs "
            "of every probe: measure them again or remove their rows"
        )
    if has_sku:
        skus = np.asarray(table.column("__skus").to_numpy(zero_copy_only=False))
        mixed = np.flatnonzero(skus.astype(bool))
        if len(mixed):
            shown = ", ".join(repr(str(ids_all[int(i)])) for i in mixed[:EXAMPLES])
            raise HdapError(
                f"{label}: {plural(len(mixed), 'device')} {'has' if len(mixed) == 1 else 'have'} runs "
                f"under more than one SKU ({shown}); a device is one SKU: fix the sku column of its runs"
            )

    # Per probe: median, spread = IQR / median, runs.
    medians, spreads, counts = [], [], []
    for n in names:
        q25, q50, q75, count = _list_quantiles(table.column("q_" + n))
        medians.append(q50)
        with np.errstate(invalid="ignore", divide="ignore"):
            spreads.append((q75 - q25) / q50)
        counts.append(count)
    runs = np.min(np.column_stack(counts), axis=1)
    spread_all = np.column_stack(spreads)
    spread = np.nanmax(np.where(np.isfinite(spread_all), spread_all, 0.0), axis=1)
    few = runs < options.min_runs
    unstable = ~few & (spread > options.max_spread)
    keep = ~few & ~unstable
    notes = [*reader_notes, f"raw runs: {runs_total:,} runs of {plural(len(names), 'probe')} on "
             f"{plural(n_all, 'device')}, aggregated to one row per device (median per probe)"]
    if few.any():
        by_probe = ", ".join(f"{n} {int((c < options.min_runs)[few].sum()):,}"
                             for n, c in zip(names, counts, strict=True)
                             if (c < options.min_runs)[few].any())
        notes.append(
            f"left out {plural(int(few.sum()), 'device')} with fewer than {options.min_runs} runs of a "
            f"probe ({by_probe}; e.g. {_examples(ids_all, few)})"
        )
    if unstable.any():
        by_probe = ", ".join(f"{n} {int((s > options.max_spread)[unstable].sum()):,}"
                             for n, s in zip(names, spreads, strict=True)
                             if (s > options.max_spread)[unstable].any())
        notes.append(
            f"left out {plural(int(unstable.sum()), 'device')} with an unstable probe (interquartile "
            f"range above {options.max_spread:.0%} of the median: {by_probe}; e.g. {_examples(ids_all, unstable)})"
        )
    if not keep.any():
        raise HdapError(
            f"{label}: no device has {options.min_runs} or more stable runs of every probe "
            f"({notes[-1].removeprefix('left out ')}); measure more runs per device"
        )

    index = np.flatnonzero(keep)
    out: dict[str, object] = {ID_COLUMN: _column(table, ID_COLUMN, index)}
    if has_sku:
        out[SKU_COLUMN] = _column(table, SKU_COLUMN, index)
    for n, m in zip(names, medians, strict=True):
        out[f"probe_{n}_ms"] = m[index]
    out["runs"] = runs[index].astype(np.int64)
    out["spread"] = np.round(spread[index], 6)
    for c in context:
        if c != SKU_COLUMN:
            out[c] = _column(table, c, index)
    if has_ts:
        out[TIMESTAMP_COLUMN] = _column(table, TIMESTAMP_COLUMN, index)
    del table
    frame = pd.DataFrame(out)
    # Devices in a stable order (DuckDB's groups come back in any order).
    frame = frame.sort_values(ID_COLUMN, kind="stable", ignore_index=True)
    return check_telemetry(frame, rows=RowNumbers("data row", np.arange(len(frame)) + 1), sku=sku,
                           source=label, notes=notes)


def _list_quantiles(column) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quartiles (linear interpolation, as numpy and DuckDB) and counts of each row's list of runs."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    filled = arr.fill_null(pa.scalar([], type=arr.type)) if arr.null_count else arr
    offsets = np.asarray(filled.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    values = np.asarray(filled.values.to_numpy(zero_copy_only=False), dtype=np.float64)[offsets[0]:]
    offsets = offsets - offsets[0]
    count = np.diff(offsets)
    out = [np.full(n, np.nan) for _ in range(3)]
    if len(values) == 0:
        return (*out, count)
    if (count == count[0]).all():
        # Every device has the same number of runs (the usual case): one sort.
        runs = np.sort(values.reshape(n, int(count[0])), axis=1)
        q = np.quantile(runs, [0.25, 0.5, 0.75], axis=1)
        return q[0], q[1], q[2], count
    owner = np.repeat(np.arange(n), count)
    ordered = values[np.lexsort((values, owner))]
    has = count > 0
    for j, p in enumerate((0.25, 0.5, 0.75)):
        pos = p * (count[has] - 1)
        lo = np.floor(pos).astype(np.int64)
        frac = pos - lo
        base = offsets[:-1][has]
        hi = np.minimum(lo + 1, count[has] - 1)
        out[j][has] = ordered[base + lo] * (1 - frac) + ordered[base + hi] * frac
    return (*out, count)


def _probe_name(raw: str) -> str | None:
    """The probe name of a raw value (``conv3x3`` or ``probe_conv3x3_ms``), or None if it is not one."""
    text = str(raw).strip()
    m = WIDE_PROBE.match(text)
    if m:
        text = m.group(1)
    return text if PROBE_NAME.match(text) else None


def _column(table, name: str, index: np.ndarray):
    import pyarrow as pa

    col = table.column(name).take(pa.array(index)).to_pandas()
    if pd.api.types.is_datetime64_any_dtype(col.dtype) and getattr(col.dtype, "tz", None) is None:
        # One resolution whatever the source (Parquet ms, pandas ns, DuckDB us).
        col = col.astype("datetime64[us]")
    return col


def _examples(ids, mask: np.ndarray) -> str:
    where = np.flatnonzero(mask)
    return ", ".join(str(ids[int(i)]) for i in where[:EXAMPLES]) + (" ..." if len(where) > EXAMPLES else "")


__all__ = ["aggregate_frame", "read_runs"]
