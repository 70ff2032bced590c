"""Device drift mechanisms: why same-model devices in a fleet stop performing alike.

*Device drift* is a device's hardware response moving away from its SKU's nominal
one (this module). Not fleet drift (devices moving between clusters from one
telemetry snapshot to the next: `hdap_engine.fleet.drift`) nor timing drift (a
real device's speed changing between measurement batches:
`hdap_engine.search.fleet_search`).

Every device gets silicon-bin variation (a few per cent of clock, memory and
overhead). On top of that each device is either healthy (``nominal``) or
affected by one named mechanism with a severity in [0, 1]. A mechanism moves
*specific* latent parameters of the twin (`hdap_engine.twin.states.LATENT_FIELDS`),
interpolated geometrically from its mild to its severe end, so that:

- different mechanisms bind different bottlenecks (compute clock, compute
  units, DRAM bandwidth, cache, per-kernel overhead), hence make different
  layers expensive and make clusters prefer different architectures;
- each leaves its own signature in the probe vector (which probes slow down,
  which do not), so clustering on probes recovers it.

The ranges start clearly away from nominal: a device that drifted by 1 % is a
nominal device, not a mild case. What each mechanism does physically, per SKU,
is written next to its numbers below and in ``sample_data/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.twin.states import LATENT_FIELDS, DeviceStates

MECHANISMS = ("nominal", "thermal_throttling", "power_saving", "background_load",
              "battery_ageing")
"""Names of the drift mechanisms (``nominal`` = healthy, silicon-bin variation only)."""


@dataclass(frozen=True)
class Mechanism:
    """One drift mechanism on one SKU.

    ``effects`` maps a latent field to its value at severity 0 and at severity
    1 (geometric interpolation in between). ``jitter`` is the log-normal sigma
    of extra per-device spread on the affected fields.
    """

    name: str
    share: float
    physics: str
    effects: dict[str, tuple[float, float]] = field(default_factory=dict)
    jitter: float = 0.03


# Silicon bin: applied to every device, including the nominal ones.
SILICON_SIGMA = {"clock_scale": 0.025, "mem_bw_scale": 0.02, "overhead_scale": 0.03,
                 "cache_scale": 0.0, "compute_share": 0.0, "unit_fraction": 0.0,
                 "noise_scale": 0.10}

JETSON_MECHANISMS = (
    Mechanism("nominal", 0.50, "healthy device; silicon-bin variation only"),
    Mechanism(
        "thermal_throttling", 0.14,
        "hot enclosure or a dusty / failing fan: the GPU clock drops (DVFS at the thermal "
        "limit) and the CPU cores throttle a little; memory clock is unaffected",
        {"clock_scale": (0.78, 0.55), "overhead_scale": (1.08, 1.25)},
    ),
    Mechanism(
        "power_saving", 0.12,
        "nvpmodel 5 W mode: GPU capped near 640 MHz, two A57 cores at 918 MHz (slower "
        "launch path), and the EMC governor keeps the memory clock lower",
        {"clock_scale": (0.74, 0.62), "mem_bw_scale": (0.80, 0.66),
         "overhead_scale": (1.6, 2.0)},
    ),
    Mechanism(
        "background_load", 0.14,
        "other processes (video decode, logging, a second model) take some GPU time, "
        "steal DRAM bandwidth and L2, and contend for the CPU that launches kernels",
        {"compute_share": (0.95, 0.85), "mem_bw_scale": (0.48, 0.34),
         "cache_scale": (0.50, 0.30), "overhead_scale": (1.6, 2.4), "noise_scale": (2.0, 3.0)},
    ),
    Mechanism(
        "battery_ageing", 0.10,
        "an aged battery sags under load: the power manager caps clocks, the CPU side much "
        "harder than the GPU, so the kernel-launch path slows most",
        {"clock_scale": (0.92, 0.78), "overhead_scale": (2.0, 3.3)},
    ),
)

RPI4_MECHANISMS = (
    Mechanism("nominal", 0.46, "healthy device; silicon-bin variation only"),
    Mechanism(
        "thermal_throttling", 0.15,
        "passively cooled Pi above 80 C: the firmware lowers the ARM clock; op dispatch "
        "(CPU work) slows with it; DRAM is unaffected",
        {"clock_scale": (0.82, 0.60), "overhead_scale": (1.2, 1.65)},
    ),
    Mechanism(
        "power_saving", 0.12,
        "powersave governor with two cores offlined and SDRAM at a lower clock",
        {"unit_fraction": (0.5, 0.5), "clock_scale": (0.93, 0.80),
         "mem_bw_scale": (0.75, 0.55), "overhead_scale": (1.07, 1.25)},
    ),
    Mechanism(
        "background_load", 0.15,
        "a co-running process takes CPU time on some cores, evicts the shared L2 and "
        "competes for DRAM; scheduling adds latency to every op",
        {"unit_fraction": (0.80, 0.60), "mem_bw_scale": (0.85, 0.68),
         "cache_scale": (0.50, 0.30), "overhead_scale": (1.7, 2.5), "noise_scale": (2.0, 3.0)},
    ),
    Mechanism(
        "battery_ageing", 0.12,
        "a worn battery / weak supply cannot deliver peak current: the all-core clock is "
        "capped (one busy core still runs at full speed), memory is unaffected",
        {"unit_fraction": (0.72, 0.50)},
    ),
)

SKU_MECHANISMS: dict[str, tuple[Mechanism, ...]] = {
    "jetson-nano": JETSON_MECHANISMS,
    "rpi4": RPI4_MECHANISMS,
}

ID_PREFIX = {"jetson-nano": "jn", "rpi4": "rpi"}


def mechanisms_for(sku: str) -> tuple[Mechanism, ...]:
    """The drift mechanisms defined for one SKU."""
    try:
        return SKU_MECHANISMS[sku]
    except KeyError:
        raise HdapError(
            f"no drift mechanisms are defined for SKU {sku!r}; choose one of "
            f"{', '.join(sorted(SKU_MECHANISMS))}"
        ) from None


def mechanism_counts(sku: str, devices: int) -> dict[str, int]:
    """Exact number of devices per mechanism (largest remainder on the shares)."""
    mechs = mechanisms_for(sku)
    raw = np.array([m.share for m in mechs]) * devices
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: devices - counts.sum()]:
        counts[i] += 1
    return {m.name: int(c) for m, c in zip(mechs, counts, strict=True)}


def draw_states(sku: str, devices: int, rng: np.random.Generator) -> DeviceStates:
    """Latent states of ``devices`` devices: silicon bin for all, one mechanism each.

    Parameters
    ----------
    sku:
        A SKU with mechanisms (`SKU_MECHANISMS`).
    devices:
        Number of devices.
    rng:
        Random generator (the only source of randomness).

    Returns
    -------
    DeviceStates
        Devices in shuffled mechanism order, ids ``<prefix>-00000`` onwards.
    """
    if devices < 1:
        raise HdapError(f"--devices must be at least 1 (got {devices})")
    mechs = {m.name: m for m in mechanisms_for(sku)}
    counts = mechanism_counts(sku, devices)
    labels = np.concatenate([[name] * c for name, c in counts.items()]).astype(object)
    labels = labels[rng.permutation(devices)]
    severity = np.where(labels == "nominal", 0.0, rng.uniform(0.0, 1.0, devices))

    latent = {name: np.ones(devices) for name in LATENT_FIELDS}
    for name, sigma in SILICON_SIGMA.items():
        if sigma > 0:
            latent[name] *= np.exp(rng.normal(0.0, sigma, devices))
    for mname, mech in mechs.items():
        idx = np.flatnonzero(labels == mname)
        if idx.size == 0:
            continue
        s = severity[idx]
        for fname, (lo, hi) in mech.effects.items():
            value = np.exp(np.log(lo) + s * (np.log(hi) - np.log(lo)))
            value *= np.exp(rng.normal(0.0, mech.jitter, idx.size))
            latent[fname][idx] *= value
    # A share or a fraction above 1 is not physical: silicon noise on top of
    # "everything available" stays at everything available.
    for fname in ("compute_share", "unit_fraction"):
        latent[fname] = np.minimum(latent[fname], 1.0)
    prefix = ID_PREFIX.get(sku, "dev")
    ids = np.array([f"{prefix}-{i:05d}" for i in range(devices)], dtype=object)
    return DeviceStates(device_id=ids, mechanism=labels, severity=severity, **latent, sku=sku)


# --- context columns ---------------------------------------------------------


def draw_context(states: DeviceStates, rng: np.random.Generator) -> pd.DataFrame:
    """Context columns correlated with each device's mechanism (what an operator sees).

    Columns: ``temperature_c``, ``fan_rpm``, ``power_mode``, ``firmware``,
    ``battery_health_pct``, ``uptime_h``, ``cpu_load_pct``, ``site``. They are
    plausible, not decisive: thermal devices run hot but so do some others,
    a few power-saving devices report a stale power mode, and so on.
    """
    n = len(states)
    mech = np.asarray(states.mechanism, dtype=object)
    sev = np.asarray(states.severity, float)
    is_ = {m: mech == m for m in MECHANISMS}
    jetson = states.sku == "jetson-nano"

    base_t = 46.0 if jetson else 55.0
    temp = rng.normal(base_t, 6.0, n)
    temp[is_["thermal_throttling"]] = rng.normal(80.0 if not jetson else 79.0, 3.0,
                                                 is_["thermal_throttling"].sum()) \
        + 5.0 * sev[is_["thermal_throttling"]]
    temp[is_["power_saving"]] -= 8.0
    temp[is_["background_load"]] += 10.0

    fan = rng.normal(3000.0, 250.0, n) if jetson else np.where(rng.random(n) < 0.35,
                                                               rng.normal(4500, 400, n), 0.0)
    th = is_["thermal_throttling"]
    fan[th] = np.where(rng.random(th.sum()) < 0.5, 0.0,
                       rng.uniform(300.0, 1500.0, th.sum()) * (1.2 - sev[th]))

    if jetson:
        power_mode = np.where(is_["power_saving"], "5W", "MAXN").astype(object)
        modes = ("MAXN", "5W")
    else:
        power_mode = np.where(is_["power_saving"], "powersave", "ondemand").astype(object)
        modes = ("ondemand", "powersave")
    stale = rng.random(n) < 0.04  # telemetry agent reported the mode before a change
    power_mode[stale] = np.where(power_mode[stale] == modes[0], modes[1], modes[0])

    fw_names = ("L4T 32.7.4", "L4T 32.7.3", "L4T 32.6.1") if jetson else \
        ("2024-11-19", "2024-03-15", "2023-05-03")
    fw_p = np.tile([0.55, 0.27, 0.18], (n, 1))
    fw_p[is_["background_load"]] = [0.30, 0.25, 0.45]  # the old image runs a chatty log daemon
    u = rng.random(n)
    firmware = np.array(fw_names, dtype=object)[
        (u[:, None] > np.cumsum(fw_p, axis=1)).sum(axis=1).clip(max=2)]

    battery = np.clip(rng.normal(93.0, 4.0, n), 70.0, 100.0)
    ba = is_["battery_ageing"]
    battery[ba] = np.clip(78.0 - 26.0 * sev[ba] + rng.normal(0.0, 3.0, ba.sum()), 35.0, 90.0)

    uptime = rng.exponential(300.0, n)
    bg = is_["background_load"]
    uptime[bg] = rng.uniform(700.0, 4000.0, bg.sum())

    load = rng.uniform(2.0, 15.0, n)
    load[bg] = np.clip(45.0 + 40.0 * sev[bg] + rng.normal(0.0, 6.0, bg.sum()), 20.0, 99.0)

    sites = np.array(["warehouse-a", "warehouse-b", "store-north", "store-south",
                      "outdoor-kiosk"], dtype=object)
    site_p = np.tile([0.28, 0.24, 0.2, 0.18, 0.10], (n, 1))
    site_p[th] = [0.12, 0.12, 0.1, 0.1, 0.56]
    u = rng.random(n)
    site = sites[(u[:, None] > np.cumsum(site_p, axis=1)).sum(axis=1).clip(max=4)]

    return pd.DataFrame({
        "temperature_c": np.round(temp, 1),
        "fan_rpm": np.round(np.maximum(fan, 0.0), -1),
        "power_mode": power_mode,
        "firmware": firmware,
        "battery_health_pct": np.round(battery, 1),
        "uptime_h": np.round(uptime, 1),
        "cpu_load_pct": np.round(load, 1),
        "site": site,
    })
