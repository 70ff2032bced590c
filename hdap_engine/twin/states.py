"""Per-device latent state of the twin, and the sidecar file that stores it beside a fleet.

Each device has a latent state (`DeviceStates`): clock, share of the compute
engine, active units, DRAM bandwidth, cache capacity and per-kernel overhead
multipliers (`LATENT_FIELDS`; 1.0 = the preset's nominal device). Drift
mechanisms (`hdap_engine.twin.mechanisms`) move them; the physics
(`hdap_engine.twin.physics`) reads them.

A simulated fleet keeps its states in a sidecar next to the telemetry; one
rule names it (`sidecar_path`): the sidecar of ``X.csv``, ``X.csv.gz`` or
``X.parquet`` is ``X.twin.parquet``. `save_twin_states` and
`load_twin_states` are the only writer and reader.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError

# Latent per-device multipliers (1.0 = the preset's nominal device). Order is
# the column order of `DeviceStates.to_frame`.
LATENT_FIELDS = (
    "clock_scale",      # compute clock (GPU clock on a Jetson, CPU clock on a Pi); cache bandwidth follows it
    "compute_share",    # share of the compute engine this workload gets (time-slicing with other work)
    "unit_fraction",    # fraction of compute units available (cores online / all-core power cap)
    "mem_bw_scale",     # DRAM bandwidth (memory clock, contention)
    "cache_scale",      # effective cache capacity (other processes evict our lines)
    "overhead_scale",   # fixed per-kernel cost (launch path on a Jetson's CPU, op dispatch on a Pi)
    "noise_scale",      # run-to-run jitter relative to the preset's noise level
)

# --- per-device latent state -----------------------------------------------


@dataclass(frozen=True)
class DeviceStates:
    """Latent state of D devices of one SKU (plain arrays of shape (D,)).

    ``mechanism`` names the drift mechanism that produced each state and
    ``severity`` (0..1) how strongly it acts; both are labels for evaluation,
    the twin only reads the `LATENT_FIELDS`.
    """

    device_id: np.ndarray
    mechanism: np.ndarray
    severity: np.ndarray
    clock_scale: np.ndarray
    compute_share: np.ndarray
    unit_fraction: np.ndarray
    mem_bw_scale: np.ndarray
    cache_scale: np.ndarray
    overhead_scale: np.ndarray
    noise_scale: np.ndarray
    sku: str = ""

    def __post_init__(self):
        n = len(self.device_id)
        for f in fields(self):
            if f.name == "sku":
                continue
            arr = getattr(self, f.name)
            if len(arr) != n:
                raise ValueError(f"DeviceStates.{f.name} has {len(arr)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.device_id)

    @classmethod
    def nominal(cls, n: int = 1, *, sku: str = "", prefix: str = "dev") -> DeviceStates:
        """``n`` devices exactly at the preset's nominal state (no variation)."""
        ones = np.ones(n)
        return cls(
            device_id=np.array([f"{prefix}-{i:05d}" for i in range(n)], dtype=object),
            mechanism=np.array(["nominal"] * n, dtype=object),
            severity=np.zeros(n),
            **{name: ones.copy() for name in LATENT_FIELDS},
            sku=sku,
        )

    def select(self, index) -> DeviceStates:
        """The states of some devices (``index`` into the device axis)."""
        idx = np.atleast_1d(np.arange(len(self))[index])
        kw = {f.name: np.asarray(getattr(self, f.name))[idx] for f in fields(self) if f.name != "sku"}
        return DeviceStates(**kw, sku=self.sku)

    def with_latent(self, **changes: np.ndarray | float) -> DeviceStates:
        """A copy with some latent fields replaced (scalars broadcast)."""
        for k in changes:
            if k not in LATENT_FIELDS:
                raise ValueError(f"{k!r} is not a latent field; expected one of {LATENT_FIELDS}")
        return replace(self, **{k: np.broadcast_to(np.asarray(v, float), (len(self),)).copy()
                                for k, v in changes.items()})

    def to_frame(self) -> pd.DataFrame:
        """One row per device: device_id, sku, mechanism, severity, latent fields."""
        df = pd.DataFrame({
            "device_id": pd.Series(self.device_id, dtype=str),
            "sku": self.sku,
            "mechanism": pd.Series(self.mechanism, dtype=str),
            "severity": np.asarray(self.severity, float),
        })
        for name in LATENT_FIELDS:
            df[name] = np.asarray(getattr(self, name), float)
        return df

    @classmethod
    def from_frame(cls, df: pd.DataFrame, *, sku: str | None = None) -> DeviceStates:
        """Rebuild states from `to_frame` output; missing latent columns default to 1."""
        if "device_id" not in df.columns:
            raise HdapError("twin states need a 'device_id' column")
        n = len(df)
        if sku is None:
            sku = str(df["sku"].iloc[0]) if "sku" in df.columns and n else ""
        latent = {}
        for name in LATENT_FIELDS:
            if name in df.columns:
                col = pd.to_numeric(df[name], errors="coerce").to_numpy(float)
                if not np.all(np.isfinite(col)) or np.any(col <= 0):
                    raise HdapError(f"twin states column {name!r} must be finite and > 0")
                latent[name] = col
            else:
                latent[name] = np.ones(n)
        mech = df["mechanism"].astype(str).to_numpy(object) if "mechanism" in df.columns \
            else np.array(["unknown"] * n, dtype=object)
        sev = pd.to_numeric(df["severity"], errors="coerce").fillna(0.0).to_numpy(float) \
            if "severity" in df.columns else np.zeros(n)
        return cls(device_id=df["device_id"].astype(str).to_numpy(object), mechanism=mech,
                   severity=sev, **latent, sku=sku)


def select_states(states: DeviceStates, devices) -> DeviceStates:
    """The states of the listed device ids, in that order.

    Parameters
    ----------
    states:
        States of a fleet.
    devices:
        Device ids to pick.

    Returns
    -------
    DeviceStates
    """
    index = {str(d): i for i, d in enumerate(states.device_id)}
    devices = [str(d) for d in devices]
    missing = [d for d in devices if d not in index]
    if missing:
        raise HdapError(f"no twin state for device {missing[0]!r} "
                        f"({len(missing)} device(s) missing from the twin states)")
    return states.select(np.array([index[d] for d in devices], dtype=np.int64))


# --- the sidecar -------------------------------------------------------------

SIDECAR_SUFFIX = ".twin.parquet"


def sidecar_path(path: str | Path) -> Path:
    """Where a fleet file's twin sidecar lives: ``X.csv[.gz]`` / ``X.parquet`` -> ``X.twin.parquet``.

    Parameters
    ----------
    path:
        The telemetry file; a sidecar path is returned as is.

    Returns
    -------
    The sidecar path next to it.
    """
    path = Path(path)
    name = path.name
    if name.endswith(SIDECAR_SUFFIX):
        return path
    for suffix in (".csv.gz", ".csv", ".parquet", ".pq", ".gz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}{SIDECAR_SUFFIX}")


def save_twin_states(states: pd.DataFrame, path: str | Path) -> Path:
    """Write device states (`DeviceStates.to_frame`) as the sidecar of ``path``.

    Parameters
    ----------
    states:
        One row per device, as `DeviceStates.to_frame` gives.
    path:
        The telemetry file the states belong to (or the sidecar path itself).

    Returns
    -------
    The sidecar path written.
    """
    side = sidecar_path(path)
    states.to_parquet(side, index=False)
    return side


def load_twin_states(path: str | Path) -> DeviceStates:
    """Latent device states from a sidecar (or from the telemetry file it belongs to).

    Parameters
    ----------
    path:
        ``X.twin.parquet`` itself, or the telemetry file ``X.csv`` /
        ``X.csv.gz`` / ``X.parquet`` whose sidecar should be read.

    Returns
    -------
    DeviceStates
    """
    side = sidecar_path(path)
    if not side.exists():
        raise HdapError(
            f"no twin sidecar for {path}: expected {side}. Only simulated fleets carry one; "
            "for uploaded telemetry fit states from the probes instead"
        )
    try:
        df = pd.read_parquet(side)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise HdapError(f"cannot read twin sidecar {side}: {exc}") from None
    if df["device_id"].duplicated().any() if "device_id" in df.columns else False:
        dup = df.loc[df["device_id"].duplicated(), "device_id"].head(3).tolist()
        raise HdapError(f"twin sidecar {side} repeats device ids, e.g. {dup}")
    return DeviceStates.from_frame(df)
