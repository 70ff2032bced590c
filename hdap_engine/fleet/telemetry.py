"""Fleet telemetry: a CSV, CSV.gz or Parquet file in, a validated `Fleet` out.

This is the boundary where user files enter the engine. `load_fleet` reads
the file (`hdap_engine.fleet.reading`: format sniffing, gzip, CSV / Parquet
parsing) and checks the telemetry contract once (`hdap_engine.fleet.contract`:
ids, probes, SKU selection, context columns), so that past it code may trust
a `Fleet`. Every problem is one `HdapError` line naming the file, the column,
the first offending rows and what to do; the CLI prints that line and the app
shows ``str(error)``: both use the same words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.fleet.contract import (
    ID_COLUMN,
    CheckedTelemetry,
    RowNumbers,
    check_telemetry,
    is_numeric_context,
)
from hdap_engine.fleet.reading import read_telemetry


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
        return tuple(c for c in self.context_columns if is_numeric_context(self.frame[c], c))

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


def _fleet(checked: CheckedTelemetry, source: str) -> Fleet:
    return Fleet(
        frame=checked.frame,
        probe_columns=checked.probe_columns,
        context_columns=checked.context_columns,
        sku=checked.sku,
        source=source,
        notes=checked.notes,
    )


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
        return _fleet(routed[1], routed[0])
    label, frame, rows, notes = read_telemetry(source, name)
    if longformat.is_long_format(frame.columns):
        # An upload of raw runs: aggregated in memory, same rules as a file.
        return _fleet(longformat.aggregate_frame(frame, sku=sku, source=label, notes=notes), label)
    return _fleet(check_telemetry(frame, rows=rows, sku=sku, source=label, notes=notes), label)


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
    rows = RowNumbers("data row", np.arange(len(frame)) + 1)
    return _fleet(check_telemetry(frame, rows=rows, sku=sku, source=source, notes=[]), source)


__all__ = ["Fleet", "fleet_from_frame", "load_fleet"]
