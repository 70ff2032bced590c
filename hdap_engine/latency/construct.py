"""Building the latency backend a study asks for: twin, host or agent.

The twin needs each device's latent state: from the fleet's sidecar file when
there is one (sample and simulated fleets), else fitted from the standard
probe columns of the telemetry (with the fit error reported).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.latency.backends import Backend, HostBackend, TwinBackend
from hdap_engine.options import MeasurementPlan


def make_backend(plan: MeasurementPlan, fleet, telemetry_path: str | os.PathLike | None,
                 clustering=None, *, seed: int = 0) -> tuple[Backend, list[str]]:
    """The backend of ``plan`` for ``fleet``, and notes about how it was set up.

    Parameters
    ----------
    plan:
        The study's measurement plan (backend name and its settings).
    fleet:
        The validated `Fleet`.
    telemetry_path:
        Where the telemetry lives: the twin looks for its sidecar beside it.
    clustering:
        Lets the agent backend replace a representative that cannot be
        measured by the next device of its cluster.
    seed:
        The study's seed (the twin's run-to-run noise, the host's run order).

    Returns
    -------
    (backend, notes)
    """
    notes: list[str] = []
    if plan.backend == "host":
        return HostBackend(threads=plan.host_threads, seed=seed, clock=plan.host_clock,
                           runtime=plan.host_runtime,
                           precision=plan.precision), notes
    if plan.backend == "agent":
        from hdap_engine.latency.agent_backend import AgentBackend

        return AgentBackend.from_fleet(fleet, token=plan.agent_token, clustering=clustering,
                                       precision=plan.precision), notes
    twin = _twin_backend(plan, fleet, telemetry_path, notes, seed)
    if plan.precision == "int8":
        from hdap_engine.twin.int8 import int8_backend

        return int8_backend(twin), notes
    return twin, notes


def _twin_backend(plan: MeasurementPlan, fleet, telemetry_path, notes: list[str],
                  seed: int) -> TwinBackend:
    from hdap_engine.fleet.probes import STANDARD_PROBES, probe_column
    from hdap_engine.twin import PRESETS, Twin, get_preset, load_twin_states
    from hdap_engine.twin.fit import fit_preset_from_probes, fit_states_from_probes
    from hdap_engine.twin.states import sidecar_path

    sidecar = sidecar_path(telemetry_path) if telemetry_path is not None else None
    if sidecar is not None and sidecar.is_file():
        states = load_twin_states(sidecar)
        known = set(states.device_id.tolist())
        missing = [d for d in fleet.device_ids if d not in known]
        if missing:
            raise HdapError(f"{sidecar.name}: has no twin state for {len(missing)} devices of "
                            f"{fleet.source} (e.g. {missing[0]}); regenerate it with hdap simulate")
        preset = get_preset(plan.twin_preset or states.sku or fleet.sku or "")
        key = hashlib.blake2b(states.to_frame().to_csv(index=False).encode(),
                              digest_size=8).hexdigest()
        return TwinBackend(Twin(preset), states, fleet_key=f"twin-{key}", seed=seed)
    needed = [probe_column(p) for p in STANDARD_PROBES]
    absent = [c for c in needed if c not in fleet.probe_columns]
    if absent:
        raise HdapError(
            f"the twin backend cannot measure {fleet.source}: it has no .twin.parquet sidecar "
            f"and lacks the standard probe columns to fit one ({', '.join(absent[:3])}"
            f"{'...' if len(absent) > 3 else ''}); use --backend host or agent, or collect "
            "telemetry with `hdap probe` / the agent")
    sku = plan.twin_preset or fleet.sku
    if sku not in PRESETS and sku != "host":
        raise HdapError(
            f"the twin backend has no preset for SKU {sku!r}; pass --twin-preset "
            f"({', '.join(PRESETS)}) or use --backend host or agent")
    if sku == "host":
        # Host telemetry (`hdap probe` rows): the typical device defines the preset,
        # each device's state is fitted relative to it.
        preset = fit_preset_from_probes(fleet.frame.median(numeric_only=True))
    else:
        preset = get_preset(sku)
    states, fit_error = fit_states_from_probes(fleet.frame[["device_id", *needed]], preset)
    notes.append(f"twin states fitted from the standard probes of {fleet.n_devices} devices "
                 f"(median fit error {np.median(list(fit_error.values())):.1%})")
    key = fleet.fingerprint()[:16]
    return TwinBackend(Twin(preset), states, fleet_key=f"twinfit-{key}", fit_error=fit_error,
                       seed=seed)
