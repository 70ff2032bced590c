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

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.twin.mechanisms import draw_context, draw_states, mechanisms_for
from hdap_engine.twin.physics import Twin
from hdap_engine.twin.presets import get_preset
from hdap_engine.twin.states import LATENT_FIELDS, DeviceStates, save_twin_states

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


def later_snapshot(states: pd.DataFrame, changed: float, mechanism: str, seed: int = 1,
                   ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The same fleet probed again later, after a share of its nominal devices drifted.

    Parameters
    ----------
    states:
        The earlier snapshot's latent states (`simulate_fleet`'s second result,
        or a twin sidecar read with `load_twin_states(...).to_frame()`).
    changed:
        Share of ALL devices (0..1) that change, drawn from the nominal ones.
    mechanism:
        The mechanism they take on (its latent state is copied from devices of a
        fresh draw with that mechanism at severity above 0.3, so the change is
        clearly visible in the probes).
    seed:
        Seed of the choice of devices, their new state, the context and the
        probes' noise (a later snapshot is probed afresh: every device's numbers
        move a little, only the changed ones move a lot).

    Returns
    -------
    (telemetry, states, changed_ids): the new snapshot as `simulate_fleet`
    returns one, and the ids of the devices that changed (the ground truth).
    """
    old = DeviceStates.from_frame(states)
    sku = old.sku or str(states["sku"].iloc[0])
    names = [m.name for m in mechanisms_for(sku)]
    if mechanism not in names:
        raise HdapError(f"--mechanism {mechanism!r} is not a drift mechanism of {sku}; choose one "
                        f"of {', '.join(n for n in names if n != 'nominal')}")
    if not 0.0 <= float(changed) < 1.0:
        raise HdapError(f"--changed must be a share in [0, 1), got {changed}")
    s_pick, s_donor, s_context, s_noise = np.random.SeedSequence(int(seed)).spawn(4)
    nominal = np.flatnonzero(old.mechanism == "nominal")
    n = int(round(float(changed) * len(old.device_id)))
    if n > len(nominal):
        raise HdapError(f"--changed {changed} asks for {n:,} devices but the fleet has only "
                        f"{len(nominal):,} nominal ones; ask for at most "
                        f"{len(nominal) / len(old.device_id):.2f}")
    picked = np.random.default_rng(s_pick).choice(nominal, n, replace=False)
    latent = {f: np.asarray(getattr(old, f), dtype=np.float64).copy() for f in LATENT_FIELDS}
    mech, severity = old.mechanism.copy(), np.asarray(old.severity, dtype=np.float64).copy()
    if n:
        donors = draw_states(sku, max(4 * n, 2000), np.random.default_rng(s_donor))
        pool = np.flatnonzero((donors.mechanism == mechanism) & (donors.severity > 0.3))
        while len(pool) < n:  # rare mechanisms: draw more donors
            donors = draw_states(sku, 4 * len(donors.device_id), np.random.default_rng(s_donor))
            pool = np.flatnonzero((donors.mechanism == mechanism) & (donors.severity > 0.3))
        pool = pool[:n]
        for f in LATENT_FIELDS:
            latent[f][picked] = np.asarray(getattr(donors, f))[pool]
        mech[picked], severity[picked] = mechanism, np.asarray(donors.severity)[pool]
    new = replace(old, mechanism=mech, severity=severity, **latent)
    probes = Twin(get_preset(sku)).probe_ms(new, runs=PROBE_RUNS,
                                            rng=np.random.default_rng(s_noise))
    context = draw_context(new, np.random.default_rng(s_context))
    telemetry = pd.concat(
        [probes[["device_id"]], pd.DataFrame({"sku": [sku] * len(new.device_id)}),
         probes.drop(columns="device_id"), context],
        axis=1,
    )
    return telemetry, new.to_frame(), [str(d) for d in old.device_id[picked]]


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
