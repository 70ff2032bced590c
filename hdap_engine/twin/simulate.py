"""Simulated fleets: telemetry rows from the twin, plus the latent state behind them.

`simulate_fleet` draws each device's drift mechanism and latent state
(`hdap_engine.twin.mechanisms`), "runs" the standard probe suite on it with
the twin (median of 20 noisy runs, like `hdap probe`), and adds context
columns correlated with the mechanism. The telemetry follows the telemetry
contract (``device_id``, ``sku``, ``probe_<name>_ms``, context; see
`hdap_engine.fleet.contract`); the latent state goes to a sidecar file
(`hdap_engine.twin.states.sidecar_path`) so the twin can later "measure" every
device of the fleet: the ground truth that cluster-based estimates are judged
against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.twin.mechanisms import draw_context, draw_states
from hdap_engine.twin.physics import Twin
from hdap_engine.twin.presets import get_preset
from hdap_engine.twin.states import save_twin_states

PROBE_RUNS = 20
"""Noisy runs per probe whose median becomes the telemetry value (as `hdap probe`)."""

def simulate_fleet(sku: str, devices: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Telemetry and latent states of a simulated fleet of one SKU.

    Parameters
    ----------
    sku:
        Preset name (``jetson-nano`` or ``rpi4``).
    devices:
        Number of devices.
    seed:
        Seed of every random draw (states, context, measurement noise).

    Returns
    -------
    (telemetry, states):
        ``telemetry``: one row per device with ``device_id``, ``sku``, the
        ``probe_<name>_ms`` columns and the context columns. ``states``: one row
        per device with ``device_id``, ``sku``, ``mechanism``, ``severity`` and
        the twin's latent fields (`DeviceStates.to_frame`).
    """
    preset = get_preset(sku)
    if int(devices) < 1:
        raise HdapError(f"a fleet needs at least one device (got --devices {devices})")
    # Independent streams: changing how context is drawn does not move states or noise.
    s_states, s_context, s_noise = np.random.SeedSequence(int(seed)).spawn(3)
    states = draw_states(sku, int(devices), np.random.default_rng(s_states))
    probes = Twin(preset).probe_ms(states, runs=PROBE_RUNS, rng=np.random.default_rng(s_noise))
    context = draw_context(states, np.random.default_rng(s_context))
    telemetry = pd.concat(
        [probes[["device_id"]], pd.DataFrame({"sku": [sku] * len(states)}),
         probes.drop(columns="device_id"), context],
        axis=1,
    )
    return telemetry, states.to_frame()


def write_fleet(prefix: str | Path, telemetry: pd.DataFrame, states: pd.DataFrame) -> tuple[Path, Path]:
    """Write ``PREFIX.csv`` and ``PREFIX.twin.parquet``; returns both paths.

    A ``prefix`` ending in ``.csv`` is accepted and not doubled.
    """
    prefix = Path(prefix)
    if prefix.name.lower().endswith(".csv"):
        prefix = prefix.with_name(prefix.name[:-4])
    if prefix.parent and not prefix.parent.exists():
        raise HdapError(f"output folder {prefix.parent} does not exist; create it or pick another --out")
    csv_path = prefix.with_name(prefix.name + ".csv")
    telemetry.to_csv(csv_path, index=False, float_format="%.6g")
    twin_path = save_twin_states(states, csv_path)
    return csv_path, twin_path
