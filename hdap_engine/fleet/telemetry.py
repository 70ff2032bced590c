"""Fleet telemetry: read a CSV, CSV.gz or Parquet file into a validated `Fleet`.

This is the boundary where user files enter the engine, so it checks the whole
telemetry contract (DESIGN.md) once and says exactly what is wrong: the file,
the column, the first offending rows and what to do, as one `HdapError` line.
The CLI prints that line and the app shows ``str(error)``: both use the same
words. Past this module, code may trust a `Fleet`:

- ``device_id`` is a non-empty, unique string per row;
- two or more ``probe_<name>_ms`` columns, float64, finite and > 0;
- one SKU at most (``sku`` is None when the file has no ``sku`` column);
- every other column is context (numeric or categorical); ``agent_url`` is
  always categorical context and never a clustering feature.

The format is detected from the content, not the name (gzip, Parquet, zip /
Excel, HTML, UTF-16, binary), because uploads are often misnamed. CSV files
are parsed with pyarrow; the delimiter (comma, semicolon, tab) is detected
from the header, and a semicolon file may use decimal commas.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError

ID_COLUMN = "device_id"
SKU_COLUMN = "sku"
AGENT_URL_COLUMN = "agent_url"
PROBE_PATTERN = re.compile(r"^probe_(.+)_ms$")
MIN_PROBES = 2
# How many offending rows a message names: enough to find the pattern,
# short enough for one line.
ROWS_SHOWN = 5

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty one
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .xls (and .doc)
_UTF8_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------- Fleet


@dataclass(frozen=True, eq=False)
class Fleet:
    """A validated fleet: one row per device, probes, context and the SKU.

    Attributes
    ----------
    frame:
        The validated telemetry (``device_id`` as str, probe columns float64,
        a RangeIndex). Treat it as read-only.
    probe_columns:
        The ``probe_<name>_ms`` columns, in file order.
    context_columns:
        Every other column except ``device_id`` and ``sku``, in file order.
    sku:
        The fleet's SKU, or None when the file has no ``sku`` column.
    source:
        The file name shown in messages and the UI.
    notes:
        What the loader did that the user should know (rows dropped, delimiter).
    """

    frame: pd.DataFrame
    probe_columns: tuple[str, ...]
    context_columns: tuple[str, ...]
    sku: str | None
    source: str
    notes: tuple[str, ...] = field(default=())

    @property
    def n_devices(self) -> int:
        """Number of devices (rows)."""
        return len(self.frame)

    @property
    def device_ids(self) -> np.ndarray:
        """Device ids as a numpy array of str, in row order."""
        return self.frame[ID_COLUMN].to_numpy(dtype=str)

    def probes(self) -> np.ndarray:
        """Probe latencies in ms, float64 array of shape (n_devices, n_probes)."""
        return self.frame[list(self.probe_columns)].to_numpy(dtype=np.float64)

    @property
    def numeric_context_columns(self) -> tuple[str, ...]:
        """Context columns that hold numbers (candidates for clustering features)."""
        return tuple(c for c in self.context_columns if _is_numeric_context(self.frame[c], c))

    @property
    def categorical_context_columns(self) -> tuple[str, ...]:
        """Context columns that hold labels (used to colour plots and describe clusters)."""
        numeric = set(self.numeric_context_columns)
        return tuple(c for c in self.context_columns if c not in numeric)

    def subset(self, mask_or_index: np.ndarray | Sequence[int] | Sequence[bool]) -> Fleet:
        """The fleet restricted to some devices (boolean mask or integer positions).

        Parameters
        ----------
        mask_or_index:
            A boolean mask of length `n_devices` or integer row positions.

        Returns
        -------
        A new `Fleet` with a fresh RangeIndex and the same columns, SKU and source.
        """
        sel = np.asarray(mask_or_index)
        if sel.dtype == bool:
            if sel.shape != (self.n_devices,):
                raise ValueError(f"mask has shape {sel.shape}, expected ({self.n_devices},)")
            sel = np.flatnonzero(sel)
        frame = self.frame.iloc[sel.astype(np.int64)].reset_index(drop=True)
        return Fleet(frame, self.probe_columns, self.context_columns, self.sku, self.source, self.notes)

    def fingerprint(self) -> str:
        """A content hash of ids, probes and context (cache key for derived results)."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.probe_columns, self.context_columns, self.sku)).encode())
        hashed = pd.util.hash_pandas_object(self.frame, index=False).to_numpy()
        h.update(hashed.tobytes())
        return h.hexdigest()

    def summary(self) -> str:
        """A few lines for people: devices, probe and context columns, SKU, notes."""
        numeric = self.numeric_context_columns
        categorical = self.categorical_context_columns
        lines = [
            f"{self.source}: {self.n_devices:,} devices",
            f"probe columns ({len(self.probe_columns)}): {', '.join(self.probe_columns)}",
            "context columns ({}): {}".format(
                len(self.context_columns),
                "; ".join(
                    part
                    for part in (
                        f"numeric {', '.join(numeric)}" if numeric else "",
                        f"categorical {', '.join(categorical)}" if categorical else "",
                    )
                    if part
                )
                or "none",
            ),
            f"SKU: {self.sku if self.sku is not None else '(no sku column)'}",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _is_numeric_context(series: pd.Series, name: str) -> bool:
    if name == AGENT_URL_COLUMN:
        return False
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def twin_sidecar_path(path: str | Path) -> Path:
    """Where a fleet file's twin sidecar lives: ``X.csv[.gz]`` / ``X.parquet`` -> ``X.twin.parquet``.

    Parameters
    ----------
    path:
        The telemetry file.

    Returns
    -------
    The sidecar path next to it.
    """
    path = Path(path)
    name = path.name
    for suffix in (".csv.gz", ".csv", ".parquet", ".pq", ".gz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.twin.parquet")


# --------------------------------------------------------------------------- loading


def load_fleet(
    source: str | Path | bytes | bytearray | memoryview | BinaryIO,
    *,
    sku: str | None = None,
    name: str | None = None,
) -> Fleet:
    """Read and validate fleet telemetry from a file path, bytes or a file-like object.

    Parameters
    ----------
    source:
        A path to a CSV, CSV.gz or Parquet file (or a glob of Parquet files),
        or the file's content (bytes or a binary file-like object, e.g. an
        upload). The format is detected from the content; raw runs (columns
        ``device_id, probe, latency_ms``) are aggregated to one row per
        device (`hdap_engine.fleet.longformat`).
    sku:
        Keep only this SKU's devices (required when the file holds several).
    name:
        The file name to show in messages (defaults to the path's name).

    Returns
    -------
    The validated `Fleet`.

    Raises
    ------
    HdapError
        For anything wrong with the file, with one line naming the file, the
        column and rows, and what to do.
    """
    # Raw runs (long format), globs of Parquet files and wide Parquet files too
    # large for pandas are read out of core by DuckDB (fleet/longformat.py).
    from hdap_engine.fleet import longformat

    routed = longformat.route(source, sku=sku, name=name)
    if routed is not None:
        return routed
    label, data = _read_source(source, name)
    notes: list[str] = []
    data = _unwrap_gzip(data, label)
    kind = _sniff(data, label)
    if kind == "parquet":
        frame = _read_parquet(data, label)
        rows = _RowNumbers("data row", np.arange(len(frame)) + 1)
    else:
        frame, rows = _read_csv(data, label, notes)
    if longformat.is_long_format(frame.columns):
        # An upload of raw runs: aggregated in memory, same rules as a file.
        routed = longformat.aggregate_frame(frame, sku=sku, source=label)
        return replace(routed, notes=tuple(notes) + routed.notes)
    return _validate(frame, rows=rows, sku=sku, source=label, notes=notes)


def fleet_from_frame(frame: pd.DataFrame, *, sku: str | None = None, source: str = "<frame>") -> Fleet:
    """Validate an in-memory telemetry frame exactly like a loaded file.

    Parameters
    ----------
    frame:
        One row per device (not modified).
    sku:
        Keep only this SKU's devices (required when the frame holds several).
    source:
        Name shown in messages.

    Returns
    -------
    The validated `Fleet`.
    """
    if not isinstance(frame, pd.DataFrame):
        raise HdapError(f"{source}: expected a pandas DataFrame, got {type(frame).__name__}")
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    return _validate(frame, rows=_RowNumbers("data row", np.arange(len(frame)) + 1), sku=sku, source=source, notes=[])


def _read_source(source: object, name: str | None) -> tuple[str, bytes]:
    if isinstance(source, str | Path):
        path = Path(source)
        label = name or path.name or str(path)
        try:
            return label, path.read_bytes()
        except FileNotFoundError:
            raise HdapError(f"{path}: no such file; check the path") from None
        except IsADirectoryError:
            raise HdapError(f"{path}: is a folder, not a file; give the telemetry file inside it") from None
        except PermissionError:
            raise HdapError(f"{path}: cannot be read (permission denied); fix its permissions") from None
        except OSError as exc:
            raise HdapError(f"{path}: cannot be read ({exc.strerror or exc}); check the file") from None
    if isinstance(source, bytes | bytearray | memoryview):
        return name or "<upload>", bytes(source)
    read = getattr(source, "read", None)
    if callable(read):
        label = name or Path(str(getattr(source, "name", "") or "<upload>")).name
        content = read()
        if isinstance(content, str):
            content = content.encode("utf-8")
        return label, bytes(content)
    raise HdapError(f"cannot read telemetry from a {type(source).__name__}; give a file path or the file's bytes")


def _unwrap_gzip(data: bytes, label: str) -> bytes:
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except EOFError:
        raise HdapError(
            f"{label}: the gzip data is truncated (the file ends before the compressed stream does); "
            "copy or download the file again"
        ) from None
    except (OSError, zlib.error) as exc:
        raise HdapError(f"{label}: the gzip data is corrupt ({exc}); copy or download the file again") from None


def _sniff(data: bytes, label: str) -> str:
    """Return "parquet" or "csv", or raise a message naming what the file really is."""
    if not data[:65536].strip() and not data.strip():
        raise HdapError(
            f"{label}: the file is empty; export the telemetry again "
            "(a header line, then one row per device)"
        )
    if data.startswith(_PARQUET_MAGIC):
        return "parquet"
    if data.startswith(_ZIP_MAGIC):
        if b"xl/" in data[:65536] or b"[Content_Types].xml" in data[:65536]:
            raise HdapError(
                f"{label}: is an Excel workbook (.xlsx), not CSV; in Excel use "
                "File > Save As > 'CSV UTF-8 (comma delimited)' and load that file"
            )
        raise HdapError(f"{label}: is a zip archive, not CSV; unzip it and load the CSV inside")
    if data.startswith(_OLE_MAGIC):
        raise HdapError(
            f"{label}: is a legacy Excel workbook (.xls), not CSV; in Excel use "
            "File > Save As > 'CSV UTF-8 (comma delimited)' and load that file"
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise HdapError(
            f"{label}: is UTF-16 text (Excel's 'Unicode Text'), not UTF-8 CSV; "
            "save it as 'CSV UTF-8 (comma delimited)' instead"
        )
    head = data[:8192]
    if head.startswith(_UTF8_BOM):
        head = head[3:]
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        lowered.startswith(b"<") and re.search(rb"<(html|head|body|title)[\s>]", lowered[:2048])
    ):
        raise HdapError(
            f"{label}: is an HTML page (an error or login page saved instead of the data?), "
            "not CSV; download the raw telemetry file again"
        )
    if lowered.startswith(b"<?xml"):
        raise HdapError(f"{label}: is an XML document, not CSV or Parquet; export the telemetry as CSV")
    if lowered.startswith((b"{", b"[")):
        raise HdapError(f"{label}: looks like JSON, not CSV or Parquet; export the telemetry as CSV")
    control = sum(head.count(bytes([b])) for b in (*range(0, 9), *range(14, 32)))
    if b"\x00" in head or control > max(2, len(head) // 100):
        raise HdapError(
            f"{label}: is a binary file, not CSV or Parquet; load the telemetry as "
            "CSV (UTF-8), CSV.gz or Parquet"
        )
    return "csv"


def _read_parquet(data: bytes, label: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not data.endswith(_PARQUET_MAGIC):
        raise HdapError(
            f"{label}: the Parquet file is truncated (no footer); copy it again or write it again"
        )
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise HdapError(
            f"{label}: is not a readable Parquet file ({_first_line(exc)}); write it again "
            "(e.g. DataFrame.to_parquet) or export CSV"
        ) from None
    names = [str(c) for c in table.column_names]
    try:
        frame = table.to_pandas()
    except Exception as exc:  # e.g. extension types pandas cannot hold
        raise HdapError(
            f"{label}: Parquet columns cannot be read as a table ({_first_line(exc)}); "
            "use plain number and text columns"
        ) from None
    frame.columns = names
    return frame.reset_index(drop=True)


def _read_csv(data: bytes, label: str, notes: list[str]) -> tuple[pd.DataFrame, _RowNumbers]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    body = memoryview(data)[3:] if data.startswith(_UTF8_BOM) else memoryview(data)
    _check_utf8(body, label)
    body, skipped = _skip_preamble(body)
    if len(body) == 0:
        raise HdapError(
            f"{label}: holds only comment or blank lines, no header and no device rows; "
            "export the telemetry again"
        )
    if skipped:
        notes.append(f"skipped {plural(skipped, 'blank or # comment line')} before the header")
    header_text, has_rows = _header_line(body)
    delimiter = _sniff_delimiter(header_text)
    if delimiter == ";":
        notes.append("read as semicolon-separated")
    elif delimiter == "\t":
        notes.append("read as tab-separated")
    try:
        header = next(csv.reader([header_text], delimiter=delimiter))
    except (csv.Error, StopIteration):
        header = header_text.split(delimiter)
    stripped = [h.strip() for h in header]
    if not has_rows:
        raise HdapError(
            f"{label}: has a header line but no device rows; export the telemetry again "
            "with one row per device"
        )

    # Ids and SKUs stay text ("0042" is not 42); probes are parsed as numbers
    # directly (fast path); a probe column with text falls back to text so the
    # validator can name the offending rows.
    text_types = {raw: pa.string() for raw, s in zip(header, stripped, strict=True)
                  if s in (ID_COLUMN, SKU_COLUMN, AGENT_URL_COLUMN)}
    probe_raw = [raw for raw, s in zip(header, stripped, strict=True) if PROBE_PATTERN.match(s)]

    def parse(types: dict, *, threads: bool = True, handler=None) -> pa.Table:
        return pacsv.read_csv(
            pa.py_buffer(body),
            read_options=pacsv.ReadOptions(use_threads=threads, block_size=1 << 22),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, ignore_empty_lines=False, invalid_row_handler=handler
            ),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False),
        )

    try:
        try:
            table = parse({**text_types, **{raw: pa.float64() for raw in probe_raw}})
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc).lower():
                raise
            table = parse(text_types)
    except pa.ArrowInvalid as exc:
        raise _csv_parse_error(label, exc, parse, text_types) from None
    except Exception as exc:
        raise HdapError(f"{label}: cannot be read as CSV ({_first_line(exc)}); check the file") from None

    names = [str(c) for c in table.column_names]
    try:
        frame = table.to_pandas()
    except Exception as exc:
        raise HdapError(f"{label}: cannot be read as CSV ({_first_line(exc)}); check the file") from None
    frame.columns = names
    rows = _RowNumbers("line", np.arange(len(frame)) + 2 + skipped)

    # ignore_empty_lines=False keeps blank lines as rows, so that line numbers
    # in messages are the file's; drop them here.
    blank = _blank_rows(frame)
    if blank.any():
        frame = frame.loc[~blank].reset_index(drop=True)
        rows = rows.take(np.flatnonzero(~blank))
        notes.append(f"skipped {int(blank.sum())} blank line(s)")
    if delimiter == ";":
        _convert_decimal_commas(frame)
    return frame, rows


def _check_utf8(body: memoryview, label: str) -> None:
    try:
        # Decoding 100 MB of ASCII takes ~50 ms; the message it allows is worth it.
        str(body, "utf-8")
    except UnicodeDecodeError as exc:
        line = bytes(body[: exc.start]).count(b"\n") + 1
        bad = bytes(body[exc.start : exc.start + 1]).hex().upper()
        raise HdapError(
            f"{label}: is not UTF-8 text (byte 0x{bad} on line {line}); save it as "
            "'CSV UTF-8' (Excel) or convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def _skip_preamble(body: memoryview) -> tuple[memoryview, int]:
    """Drop blank and ``#`` comment lines before the header (some exporters write them)."""
    offset = skipped = 0
    while offset < len(body) and skipped < 1000:
        end = bytes(body[offset : offset + 65536]).find(b"\n")
        line = bytes(body[offset : offset + end if end >= 0 else len(body)])
        if line.strip() and not line.lstrip().startswith(b"#"):
            break
        if end < 0:
            return body[len(body) :], skipped + 1
        offset += end + 1
        skipped += 1
    return body[offset:], skipped


def _header_line(body: memoryview) -> tuple[str, bool]:
    """The first line as text and whether anything but blank lines follows it."""
    head = bytes(body[:65536])
    cut = min((i for i in (head.find(b"\n"), head.find(b"\r")) if i >= 0), default=-1)
    if cut < 0:
        return head.decode("utf-8", errors="replace").strip("\r\n"), bool(
            len(body) > len(head) and bytes(body[len(head):]).strip()
        )
    rest = body[cut + 1 :]
    has_rows = any(bytes(rest[i : i + 65536]).strip() for i in range(0, len(rest), 65536))
    return head[:cut].decode("utf-8", errors="replace"), has_rows


def _sniff_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] > 0 else ","


def _csv_parse_error(label: str, exc: Exception, parse, text_types: dict) -> HdapError:
    import pyarrow as pa

    message = str(exc)
    if "expected" in message.lower() and "columns" in message.lower():
        # Re-parse single-threaded to learn the physical line number.
        seen: list = []

        def handler(row):
            seen.append(row)
            return "error"

        try:
            parse(text_types, threads=False, handler=handler)
        except pa.ArrowInvalid:
            pass
        if seen:
            row = seen[0]
            where = f"line {row.number}" if row.number is not None else "a line"
            text = row.text if len(row.text) <= 60 else row.text[:57] + "..."
            return HdapError(
                f"{label}: {where} has {row.actual_columns} fields but the header has "
                f"{row.expected_columns} ({text!r}); fix that line (a stray delimiter or quote?)"
            )
    return HdapError(f"{label}: cannot be parsed as CSV ({_first_line(exc)}); check the file")


def _blank_rows(frame: pd.DataFrame) -> np.ndarray:
    blank = np.ones(len(frame), dtype=bool)
    for c in frame.columns:
        col = frame[c]
        if pd.api.types.is_string_dtype(col.dtype) or col.dtype == object:
            blank &= (col.isna() | (col.astype("string").fillna("") == "")).to_numpy()
        else:
            blank &= col.isna().to_numpy()
        if not blank.any():
            break
    return blank


_DECIMAL_COMMA = re.compile(r"^\s*[-+]?(\d+(,\d*)?|,\d+)([eE][-+]?\d+)?\s*$")


def _convert_decimal_commas(frame: pd.DataFrame) -> None:
    """Turn text columns like ``"12,5"`` (semicolon files from European locales) into numbers."""
    for c in frame.columns:
        if c in (ID_COLUMN, SKU_COLUMN, AGENT_URL_COLUMN):
            continue
        col = frame[c]
        if not (pd.api.types.is_string_dtype(col.dtype) or col.dtype == object):
            continue
        text = col.astype("string")
        filled = text.dropna()
        filled = filled[filled.str.strip() != ""]
        if len(filled) == 0 or not filled.str.match(_DECIMAL_COMMA).all():
            continue
        numbers = pd.to_numeric(text.str.strip().str.replace(",", ".", regex=False), errors="coerce")
        frame[c] = numbers.to_numpy(dtype=np.float64, na_value=np.nan)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _RowNumbers:
    """Where each frame row is in the user's file.

    CSV: "line N", the physical line (the header is line 1; blank lines
    count). Parquet and frames: "data row N", 1-based, header not counted.
    """

    unit: str
    numbers: np.ndarray

    def take(self, positions: np.ndarray) -> _RowNumbers:
        return _RowNumbers(self.unit, self.numbers[positions])

    def describe(self, positions: np.ndarray) -> str:
        """E.g. ``lines 5, 17, 230`` or ``data rows 3, 9 and 40 more``."""
        positions = np.asarray(positions)
        shown = ", ".join(str(int(n)) for n in self.numbers[positions[:ROWS_SHOWN]])
        more = f" and {len(positions) - ROWS_SHOWN} more" if len(positions) > ROWS_SHOWN else ""
        unit = self.unit if len(positions) == 1 else self.unit + "s"
        return f"{unit} {shown}{more}"

    def one(self, position: int) -> str:
        return f"{self.unit} {int(self.numbers[position])}"


def plural(n: int, word: str) -> str:
    """``1 device``, ``2 devices``, ``5,000 devices``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _validate(
    frame: pd.DataFrame, *, rows: _RowNumbers, sku: str | None, source: str, notes: list[str]
) -> Fleet:
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
    result = pd.DataFrame(out, columns=list(frame.columns))
    result.index = pd.RangeIndex(len(result))
    context = tuple(c for c in frame.columns if c not in (ID_COLUMN, SKU_COLUMN) and c not in probes)

    if len(result) == 1:
        notes.append("the fleet has a single device: clustering will give one cluster")
    else:
        values = np.column_stack([probes[c] for c in probe_columns])
        if (values == values[0]).all():
            notes.append(
                f"all {len(result):,} devices have identical probe values: clustering will give one cluster"
            )
    return Fleet(
        frame=result,
        probe_columns=tuple(probe_columns),
        context_columns=context,
        sku=chosen_sku,
        source=source,
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
    frame: pd.DataFrame, rows: _RowNumbers, sku: str | None, label: str, notes: list[str]
) -> tuple[pd.DataFrame, _RowNumbers, str | None]:
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


def _check_ids(frame: pd.DataFrame, rows: _RowNumbers, label: str) -> pd.Series:
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
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        positions = np.flatnonzero(dup)
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


def _check_probe(col: pd.Series, name: str, rows: _RowNumbers, label: str) -> np.ndarray:
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


__all__ = [
    "AGENT_URL_COLUMN",
    "Fleet",
    "ID_COLUMN",
    "PROBE_PATTERN",
    "SKU_COLUMN",
    "fleet_from_frame",
    "load_fleet",
    "twin_sidecar_path",
]

