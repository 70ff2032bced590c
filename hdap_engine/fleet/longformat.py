"""Raw timed runs ("long format") and very large telemetry files, read out of core with DuckDB.

Fleets log what they measure: one row per timed run of one probe on one
device (``device_id``, ``probe``, ``latency_ms``, optionally ``timestamp``
and context such as ``firmware`` or ``ambient_c``), many runs per device,
millions of devices, in CSV, Parquet or a folder of Parquet files. This
module routes such data to `hdap_engine.fleet.runs`, which turns it into the
one-row-per-device `Fleet` the rest of the engine uses without loading the
runs into pandas (DuckDB plumbing: `hdap_engine.fleet.outofcore`): DuckDB streams the files
under a memory limit, spilling to a temporary folder, and returns one row
per device:

- ``probe_<name>_ms``: the median of the device's runs of that probe;
- ``runs``: the fewest runs the device has of any probe;
- ``spread``: the largest interquartile range / median over its probes (how
  stable the device's timings are);
- every context column at its latest value (by ``timestamp`` when there is
  one, else the last row in file order), and ``timestamp`` as the latest run.

Devices with fewer than `LongFormatOptions.min_runs` runs of a probe, or
whose spread exceeds `LongFormatOptions.max_spread`, are left out and a note
says how many (and of which probes). Broken input is refused with one line:
a probe name that is not one, latencies that are not positive finite
numbers, a device listed with no runs, a device whose runs name two SKUs.
The aggregated frame then passes the same contract checks as a wide file
(`contract.check_telemetry`), so the SKU rules are the same.

Wide (one-row-per-device) Parquet files with more rows than
`LongFormatOptions.wide_rows_via_duckdb` (or a glob of wide files) are
read through DuckDB too: the rows stream into Arrow a batch at a time and
then into pandas, never the file's bytes plus a copy; the contract's checks are the usual ones.

`route` is what `load_fleet` calls first: it looks at a path's columns (a
Parquet footer, a CSV header) and returns the checked table when this module should
read it, or None to leave the file to the pandas reader.
"""

from __future__ import annotations

import glob as globlib
import gzip
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from hdap_engine.errors import HdapError
from hdap_engine.fleet.contract import CheckedTelemetry, RowNumbers, check_telemetry
from hdap_engine.fleet.outofcore import (
    LATENCY_COLUMN,
    LONG_COLUMNS,
    PROBE_COLUMN,
    TIMESTAMP_COLUMN,
    _connect,
    _duckdb_errors,
    _first_line,
    _run,
    _source_sql,
    is_long_format,
)
from hdap_engine.fleet.runs import aggregate_frame, read_runs
from hdap_engine.options import LongFormatOptions

_PARQUET_MAGIC = b"PAR1"
_GLOB_CHARS = re.compile(r"[*?\[]")

# --------------------------------------------------------------------------- routing


def route(
    source: object, *, sku: str | None = None, name: str | None = None,
    options: LongFormatOptions | None = None,
) -> tuple[str, CheckedTelemetry] | None:
    """Read `source` here when it is raw runs, a glob, or a large wide Parquet file.

    Parameters
    ----------
    source:
        What `load_fleet` was given; only paths (str or Path) are routed.
    sku:
        Keep only this SKU's devices.
    name:
        The file name to show in messages.
    options:
        `LongFormatOptions`; defaults when None.

    Returns
    -------
    (label, the checked one-row-per-device table), or None when the pandas
    reader should read the file; `load_fleet` makes the `Fleet`.
    """
    if not isinstance(source, str | Path):
        return None
    options = options or LongFormatOptions()
    text = str(source)
    path = Path(source)
    if not path.exists() and _GLOB_CHARS.search(text):
        files = sorted(globlib.glob(text, recursive=True))
        files = [f for f in files if Path(f).is_file()]
        if not files:
            raise HdapError(f"{text}: no file matches this pattern; check the folder and the pattern")
        for f in files:
            with open(f, "rb") as fh:
                if fh.read(4) != _PARQUET_MAGIC:
                    raise HdapError(
                        f"{text}: {Path(f).name} is not a Parquet file; a pattern may only match "
                        "Parquet files (give a CSV file on its own)"
                    )
        label = name or text
        columns = _parquet_columns(files[0], label)
        if is_long_format(columns):
            return label, read_runs(files, sku=sku, name=label, options=options)
        return label, read_wide_parquet(files, sku=sku, name=label, options=options)
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if parts:
            return route(str(path / "*.parquet"), sku=sku, name=name or path.name, options=options)
        return None
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return None  # the pandas reader words the error
    label = name or path.name
    if head.startswith(_PARQUET_MAGIC):
        try:
            import pyarrow.parquet as pq

            meta = pq.read_metadata(path)
            columns = meta.schema.names
        except Exception:  # corrupt: the pandas reader names the problem
            return None
        if is_long_format(columns):
            return label, read_runs([str(path)], sku=sku, name=label, options=options)
        if meta.num_rows > options.wide_rows_via_duckdb:
            return label, read_wide_parquet([str(path)], sku=sku, name=label, options=options)
        return None
    header = _csv_header(path, head)
    if header is not None and is_long_format(header):
        return label, read_runs([str(path)], sku=sku, name=label, options=options, csv=True)
    return None


def _csv_header(path: Path, head: bytes) -> list[str] | None:
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(65536)
        except Exception:  # truncated or corrupt: the pandas reader names the problem
            return None
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    text = head.decode("utf-8", errors="replace")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            counts = {d: line.count(d) for d in (",", ";", "\t")}
            delim = max(counts, key=lambda d: (counts[d], d == ","))
            return [c.strip().strip('"').strip() for c in line.split(delim)]
    return None


def _parquet_columns(path: str, label: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except Exception as exc:
        raise HdapError(f"{label}: {Path(path).name} is not a readable Parquet file ({_first_line(exc)}); "
                        "write it again") from None


# --------------------------------------------------------------------------- wide, large


def read_wide_parquet(
    files: Sequence[str], *, sku: str | None = None, name: str | None = None,
    options: LongFormatOptions | None = None,
) -> CheckedTelemetry:
    """Read one-row-per-device Parquet too large for the in-memory reader.

    DuckDB streams the files in file order, a batch of rows at a time; each
    batch is copied into Arrow's memory as it comes (`_stream_to_pandas`) and
    the table is handed to pandas column by column (freeing each as it goes):
    no copy of the file's bytes, no second table. The contract's checks are the in-memory
    reader's own, so every message is the one a small file gets (rows are
    "data rows" counted across the files in name order).

    Parameters
    ----------
    files:
        Parquet files, one row per device.
    sku:
        Keep only this SKU's devices.
    name:
        Name shown in messages.
    options:
        `LongFormatOptions`; defaults when None.

    Returns
    -------
    The checked table (`CheckedTelemetry`).
    """
    options = options or LongFormatOptions()
    label = name or Path(files[0]).name
    con = _connect(options)
    try:
        # Row order matters here: messages name data rows.
        con.execute("SET preserve_insertion_order = true")
        with _duckdb_errors(label):
            relation = _run(con, f"SELECT * FROM {_source_sql(files, False, row_numbers=False)}", label)
            frame = _stream_to_pandas(relation.to_arrow_reader(_BATCH_ROWS))
    finally:
        con.close()
    frame.columns = [str(c) for c in frame.columns]
    checked = check_telemetry(frame, rows=RowNumbers("data row", np.arange(len(frame)) + 1),
                              sku=sku, source=label, notes=[])
    del frame
    # What the conversion and the checks freed (stripped and sorted ids) stays
    # in Arrow's allocator, where numpy cannot reuse it: hand it back before
    # the clustering allocates (without it, 3.48-3.92 GB against 3.42-3.44 GB
    # for the ten-million-device benchmark).
    pa.default_memory_pool().release_unused()
    return checked


# Rows per batch fetched from DuckDB: large enough that the per-batch work is
# negligible, small enough that one batch in flight is ~100 MB (13 columns).
_BATCH_ROWS = 1_000_000


def _stream_to_pandas(reader) -> pd.DataFrame:
    """DuckDB's result as one pandas frame, fetched a batch at a time.

    Every column of a batch is copied into Arrow's own memory before the next
    batch comes: an Arrow array that still points into a DuckDB batch keeps
    the whole batch alive, every column of it, so a frame built from DuckDB's
    arrays directly cost almost twice its size (measured, 10,000,000 devices:
    2.5 GB resident for a 1.4 GB frame; 1.75 GB with the copies).
    """
    names = reader.schema.names
    types = [pa.large_string() if pa.types.is_string(f.type) else f.type for f in reader.schema]
    parts: dict[str, list] = {n: [] for n in names}
    for batch in reader:
        index = pa.array(np.arange(batch.num_rows))
        for n, column in zip(names, batch.columns, strict=True):
            if pa.types.is_string(column.type):
                column = column.cast(pa.large_string())  # pandas' str type; saves a copy later
            parts[n].append(column.take(index))
    table = pa.table({n: pa.chunked_array(parts[n], type=t) for n, t in zip(names, types, strict=True)})
    del parts
    return table.to_pandas(self_destruct=True, split_blocks=True)


__all__ = [
    "LATENCY_COLUMN",
    "LONG_COLUMNS",
    "PROBE_COLUMN",
    "TIMESTAMP_COLUMN",
    "aggregate_frame",
    "is_long_format",
    "read_runs",
    "read_wide_parquet",
    "route",
]
