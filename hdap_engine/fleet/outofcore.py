"""DuckDB plumbing for telemetry too large for pandas: options, connections, SQL helpers.

Shared by the raw-runs aggregation (`hdap_engine.fleet.runs`) and the
routing of large files (`hdap_engine.fleet.longformat`). A connection runs
under a memory limit and spills to a temporary folder, so a file larger
than memory streams through.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence

from hdap_engine.errors import HdapError
from hdap_engine.options import LongFormatOptions

ID_COLUMN = "device_id"
SKU_COLUMN = "sku"
# The wide contract's probe columns (as in telemetry.PROBE_PATTERN).
WIDE_PROBE = re.compile(r"^probe_(.+)_ms$")
PROBE_COLUMN = "probe"
LATENCY_COLUMN = "latency_ms"
TIMESTAMP_COLUMN = "timestamp"
LONG_COLUMNS = (ID_COLUMN, PROBE_COLUMN, LATENCY_COLUMN)
# A probe name becomes a column ``probe_<name>_ms``: letters, digits and _,
# starting with a letter. Anything else is a shifted column or a typo.
PROBE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# More distinct probe names than this: the probe column holds something else.
MAX_PROBES = 64
EXAMPLES = 3


def is_long_format(columns: Iterable[str]) -> bool:
    """Whether a telemetry header is raw runs: ``device_id, probe, latency_ms`` and no ``probe_*_ms``.

    Parameters
    ----------
    columns:
        The column names.

    Returns
    -------
    True for long format.
    """
    names = [str(c).strip().lstrip("\ufeff").strip() for c in columns]
    return all(c in names for c in LONG_COLUMNS) and not any(WIDE_PROBE.match(c) for c in names)


# --------------------------------------------------------------------------- DuckDB


def _connect(options: LongFormatOptions):
    import duckdb

    temp = options.temp_dir or os.path.join(tempfile.gettempdir(), "hdap_duckdb")
    os.makedirs(temp, exist_ok=True)
    config = {
        "memory_limit": options.memory_limit,
        "temp_directory": temp,
        # File order only matters where we ask for it (file_row_number).
        "preserve_insertion_order": False,
    }
    if options.threads:
        config["threads"] = int(options.threads)
    con = duckdb.connect(config=config)
    con.execute("SET enable_progress_bar = false")
    return con


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _source_sql(files: Sequence[str], csv: bool, *, row_numbers: bool) -> str:
    listed = "[" + ", ".join(_literal(f) for f in files) + "]"
    if csv:
        return f"read_csv({listed}, header = true, sample_size = 20480)"
    extra = ", filename = true, file_row_number = true" if row_numbers else ""
    return f"read_parquet({listed}{extra})"


@contextlib.contextmanager
def _duckdb_errors(label: str) -> Iterator[None]:
    """DuckDB's errors as one line naming the file.

    Around the whole read, not just the SQL: a relation runs when its rows are
    fetched, so that is where a file that cannot be read or the memory limit
    shows up.
    """
    import duckdb

    try:
        yield
    except duckdb.OutOfMemoryException:
        raise HdapError(
            f"{label}: DuckDB ran out of its memory limit reading the file; raise the limit "
            "(LongFormatOptions.memory_limit) or give fewer files at a time"
        ) from None
    except duckdb.Error as exc:
        raise HdapError(f"{label}: cannot be read ({_first_line(exc)}); check the file") from None


def _run(con, sql: str, label: str):
    with _duckdb_errors(label):
        return con.sql(sql)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__



__all__ = [
    "LATENCY_COLUMN",
    "LONG_COLUMNS",
    "PROBE_COLUMN",
    "TIMESTAMP_COLUMN",
    "is_long_format",
]
