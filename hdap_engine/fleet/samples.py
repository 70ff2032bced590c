"""The sample fleets shipped in ``sample_data/``: what the app opens on first visit.

A sample fleet is a telemetry file (``NAME.csv``) with its twin sidecar
(``NAME.twin.parquet``) beside it, so the twin backend can "measure" every
device. ``HDAP_SAMPLE_DATA`` points elsewhere (a container may mount its own).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TELEMETRY_SUFFIXES = (".csv", ".csv.gz", ".parquet")


@dataclass(frozen=True)
class SampleFleet:
    """One shipped fleet: its name (file stem), telemetry path and sidecar path."""

    name: str
    path: Path
    sidecar: Path


def sample_dir() -> Path:
    """Where the sample fleets live: ``$HDAP_SAMPLE_DATA`` or ``sample_data/`` of the project."""
    env = os.environ.get("HDAP_SAMPLE_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "sample_data"


def sample_fleets(folder: str | os.PathLike | None = None) -> list[SampleFleet]:
    """The telemetry files of ``folder`` (default `sample_dir()`) that have a twin sidecar.

    Parameters
    ----------
    folder:
        The folder to list; default `sample_dir()`.

    Returns
    -------
    Sample fleets sorted by name (empty when the folder is missing).
    """
    from hdap_engine.twin.states import sidecar_path

    root = Path(folder) if folder is not None else sample_dir()
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        name = path.name
        if name.endswith(".twin.parquet") or not name.lower().endswith(_TELEMETRY_SUFFIXES):
            continue
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            stem = name
            for suffix in _TELEMETRY_SUFFIXES:
                if stem.lower().endswith(suffix):
                    stem = stem[: -len(suffix)]
                    break
            out.append(SampleFleet(name=stem, path=path, sidecar=sidecar))
    return out

