"""Reading telemetry files: bytes in, a table out, whatever the file turns out to be.

The format is detected from the content, not the name (gzip, Parquet, zip /
Excel, HTML, UTF-16, binary), because uploads are often misnamed. CSV files
are parsed with pyarrow; the delimiter (comma, semicolon, tab) is detected
from the header, a semicolon file may use decimal commas, and text must be
UTF-8. A file that cannot be read is one `HdapError` line that says what the
file really is and what to do. Whether the table meets the telemetry contract
is `hdap_engine.fleet.contract`'s question.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.fleet.contract import (
    AGENT_URL_COLUMN,
    ID_COLUMN,
    PROBE_PATTERN,
    SKU_COLUMN,
    RowNumbers,
)
from hdap_engine.infra.wording import plural

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty one
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .xls (and .doc)
_UTF8_BOM = b"\xef\xbb\xbf"


def read_telemetry(
    source: str | Path | bytes | bytearray | memoryview | BinaryIO, name: str | None = None
) -> tuple[str, pd.DataFrame, RowNumbers, list[str]]:
    """Read a telemetry file into a table, without judging its contents.

    Parameters
    ----------
    source:
        A path, the file's bytes, or a binary file-like object (an upload).
    name:
        The file name to show in messages (defaults to the path's name).

    Returns
    -------
    (label, frame, rows, notes):
        The name used in messages, the table as read, where each row is in
        the file, and what the reader did that the user should know.

    Raises
    ------
    HdapError
        When the file cannot be read as CSV, CSV.gz or Parquet.
    """
    label, data = _read_source(source, name)
    notes: list[str] = []
    data = _unwrap_gzip(data, label)
    kind = _sniff(data, label)
    if kind == "parquet":
        frame = _read_parquet(data, label)
        rows = RowNumbers("data row", np.arange(len(frame)) + 1)
    else:
        frame, rows = _read_csv(data, label, notes)
    return label, frame, rows, notes


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


def _read_csv(data: bytes, label: str, notes: list[str]) -> tuple[pd.DataFrame, RowNumbers]:
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
    rows = RowNumbers("line", np.arange(len(frame)) + 2 + skipped)

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
