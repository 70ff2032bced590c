"""The device twin: simulated edge devices whose latency drifts for physical reasons.

One module per job, imported in this order (no module imports a later one):

- `presets`: `SkuPreset`, the nominal physics of a device model, and the
  shipped presets with their calibration sources;
- `states`: `DeviceStates`, each device's latent state, and its sidecar file
  (`sidecar_path`, `save_twin_states`, `load_twin_states`);
- `physics`: `Twin`, latency of candidate networks from layer shapes, a
  preset and device states;
- `mechanisms`: the drift mechanisms that draw latent states (and context);
- `simulate`: `simulate_fleet` / `write_fleet`, telemetry plus sidecar;
- `fit`: states for real telemetry, and a preset for the host, fitted to probes;
- `calibration` and `realism`: reference tables and checks, run as
  ``python -m hdap_engine.twin.calibration`` / ``python -m hdap_engine.twin.realism``
  (not imported here, so that ``-m`` runs them cleanly).

The names below are the package's public API.
"""

from hdap_engine.twin.fit import fit_preset_from_probes, fit_states_from_probes, preset_probe_error
from hdap_engine.twin.mechanisms import MECHANISMS, Mechanism, mechanism_counts, mechanisms_for
from hdap_engine.twin.physics import Twin
from hdap_engine.twin.presets import (
    JETSON_NANO,
    PRESETS,
    RPI4,
    SkuPreset,
    generic_cpu_preset,
    get_preset,
)
from hdap_engine.twin.simulate import simulate_fleet, write_fleet
from hdap_engine.twin.states import (
    LATENT_FIELDS,
    DeviceStates,
    load_twin_states,
    save_twin_states,
    select_states,
    sidecar_path,
)

__all__ = [
    "JETSON_NANO",
    "RPI4",
    "LATENT_FIELDS",
    "MECHANISMS",
    "PRESETS",
    "DeviceStates",
    "Mechanism",
    "SkuPreset",
    "Twin",
    "fit_preset_from_probes",
    "fit_states_from_probes",
    "generic_cpu_preset",
    "get_preset",
    "load_twin_states",
    "mechanism_counts",
    "mechanisms_for",
    "preset_probe_error",
    "save_twin_states",
    "select_states",
    "sidecar_path",
    "simulate_fleet",
    "write_fleet",
]
