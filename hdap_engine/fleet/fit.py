"""Fitting the twin to measured probes: device states for uploaded telemetry, a preset for the host.

Two inverse problems, both answered with the same physics as the forward twin:

- `fit_states_from_probes`: telemetry that has the standard probe columns but
  no twin sidecar (a real fleet) gets, per device, the latent state whose
  predicted probes match the measured ones best (least squares on log times,
  Levenberg-Marquardt vectorised over devices). The per-device relative fit
  error says how well the twin's physics explains that device.
- `fit_preset_from_probes`: this machine's own `hdap probe` row becomes a
  CPU-class `SkuPreset` (throughput, per-op efficiencies, vector width, cache
  and DRAM bandwidths, cache sizes, per-kernel overheads), so the twin can
  predict what the host will measure for a candidate it has never run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.fleet.probes import STANDARD_PROBES, probe_column, probe_tables
from hdap_engine.fleet.twin import DeviceStates, SkuPreset, Twin, generic_cpu_preset

# Latent fields fitted per device (log scale) and their bounds. compute_share
# is not separable from clock_scale with probes alone, so it stays at 1 and
# clock_scale absorbs both; noise_scale is not a latency parameter.
FIT_FIELDS = ("clock_scale", "unit_fraction", "mem_bw_scale", "cache_scale", "overhead_scale")
_LOG_BOUNDS = {
    "clock_scale": (np.log(0.05), np.log(4.0)),
    "unit_fraction": (np.log(0.05), 0.0),
    "mem_bw_scale": (np.log(0.05), np.log(4.0)),
    "cache_scale": (np.log(0.05), np.log(4.0)),
    "overhead_scale": (np.log(0.1), np.log(30.0)),
}
_RIDGE = 0.02  # weak pull to nominal, so parameters no probe sees stay at 1


def _probe_matrix(twin: Twin, names: list[str], theta: np.ndarray, template: DeviceStates
                  ) -> np.ndarray:
    """(D, P) log predicted probe times for log-parameters ``theta`` (D, F)."""
    states = template.with_latent(**{f: np.exp(theta[:, i]) for i, f in enumerate(FIT_FIELDS)})
    tables = probe_tables()
    return np.stack([np.log(twin.expected_ms(tables[n], states)[0]) for n in names], axis=1)


def fit_states_from_probes(probes: pd.DataFrame, preset: SkuPreset, *, iterations: int = 40
                           ) -> tuple[DeviceStates, pd.Series]:
    """Latent device states that explain measured probe times under ``preset``.

    Parameters
    ----------
    probes:
        One row per device with ``device_id`` and standard ``probe_<name>_ms``
        columns (at least four of them; others are ignored).
    preset:
        The SKU's nominal parameters.
    iterations:
        Levenberg-Marquardt iterations.

    Returns
    -------
    (states, fit_error):
        ``states`` (mechanism ``"fitted"``, severity 0) and, per device, the RMS
        relative error of the fitted probes (0.05 = predicted probes are off by
        about 5 %), as a Series indexed by device id.
    """
    if "device_id" not in probes.columns:
        raise HdapError("probe table needs a 'device_id' column")
    names = [n for n in STANDARD_PROBES if probe_column(n) in probes.columns]
    if len(names) < 4:
        raise HdapError(
            "fitting device states needs at least 4 standard probe columns "
            f"(found {[probe_column(n) for n in names]}); expected names like "
            f"{probe_column(STANDARD_PROBES[0])}"
        )
    obs = probes[[probe_column(n) for n in names]].apply(pd.to_numeric, errors="coerce")
    bad = ~(np.isfinite(obs.to_numpy(float)) & (obs.to_numpy(float) > 0)).all(axis=1)
    if bad.any():
        rows = list(np.flatnonzero(bad)[:5] + 2)  # +2: header line and 1-based rows
        raise HdapError(f"probe values must be finite and > 0; see rows {rows}")
    y = np.log(obs.to_numpy(float))
    d, f = len(probes), len(FIT_FIELDS)
    twin = Twin(preset)
    template = DeviceStates.nominal(d, sku=preset.name)
    lo = np.array([_LOG_BOUNDS[k][0] for k in FIT_FIELDS])
    hi = np.array([_LOG_BOUNDS[k][1] for k in FIT_FIELDS])

    theta = np.zeros((d, f))
    lam = np.full(d, 1e-2)
    sw = np.sqrt(_RIDGE)

    def cost(th, pred):
        r = pred - y
        return (r ** 2).sum(axis=1) + _RIDGE * (th ** 2).sum(axis=1)

    pred = _probe_matrix(twin, names, theta, template)
    c = cost(theta, pred)
    eps = 1e-3
    for _ in range(iterations):
        jac = np.empty((d, len(names), f))
        for i in range(f):
            th = theta.copy()
            th[:, i] += eps
            jac[:, :, i] = (_probe_matrix(twin, names, th, template) - pred) / eps
        r = pred - y
        jtj = np.einsum("dpi,dpj->dij", jac, jac) + (sw ** 2) * np.eye(f)
        jtr = np.einsum("dpi,dp->di", jac, r) + _RIDGE * theta
        a = jtj + lam[:, None, None] * np.eye(f) * (1.0 + np.diagonal(jtj, axis1=1, axis2=2)
                                                    )[:, :, None]
        step = -np.linalg.solve(a, jtr[:, :, None])[:, :, 0]
        cand = np.clip(theta + step, lo, hi)
        pred_c = _probe_matrix(twin, names, cand, template)
        c_c = cost(cand, pred_c)
        better = c_c < c
        theta[better] = cand[better]
        pred[better] = pred_c[better]
        c[better] = c_c[better]
        lam = np.where(better, lam * 0.3, lam * 5.0).clip(1e-6, 1e6)

    rms = np.sqrt(((pred - y) ** 2).mean(axis=1))
    states = template.with_latent(**{k: np.exp(theta[:, i]) for i, k in enumerate(FIT_FIELDS)})
    states = replace(states, device_id=probes["device_id"].astype(str).to_numpy(object),
                     mechanism=np.array(["fitted"] * d, dtype=object))
    return states, pd.Series(np.expm1(rms), index=states.device_id, name="fit_error")


# --- the host's own preset ---------------------------------------------------

_TILES = (1, 4, 8, 16, 32, 64)


def _row_dict(row) -> dict:
    if isinstance(row, pd.DataFrame):
        if len(row) != 1:
            raise HdapError(f"a host preset is fitted from one probe row (got {len(row)})")
        row = row.iloc[0]
    if isinstance(row, pd.Series):
        row = row.to_dict()
    if not isinstance(row, Mapping):
        raise HdapError("a probe row must be a dict, a Series or a one-row DataFrame")
    return dict(row)


def fit_preset_from_probes(row, *, name: str = "host", iterations: int = 8) -> SkuPreset:
    """A CPU-class preset whose parameters come from one measured probe row.

    Every parameter is tied to the probe that isolates it: per-kernel overhead
    from ``tiny``; the extra fixed cost of a conv call from ``conv3x3_small``;
    DRAM, last-level-cache and near-cache bandwidths from the three copies;
    peak throughput from ``conv3x3``; the 1x1, depthwise and GEMV efficiencies
    from their probes; the vector / tile width from ``conv3x3_odd``. Cache
    sizes and the thread count come from the row's context columns (``l2_kb``,
    ``llc_kb``, ``threads``, as `hdap probe` writes them). The parameters are
    refined a few times through the forward twin so that the preset reproduces
    its own probe row.

    Parameters
    ----------
    row:
        A dict / Series / one-row DataFrame with all standard probe columns.
    name:
        Preset name.
    iterations:
        Refinement passes.

    Returns
    -------
    SkuPreset
    """
    r = _row_dict(row)
    missing = [probe_column(n) for n in STANDARD_PROBES if probe_column(n) not in r]
    if missing:
        raise HdapError(f"fitting a host preset needs every standard probe; missing {missing}")
    meas = {}
    for n in STANDARD_PROBES:
        try:
            v = float(r[probe_column(n)])
        except (TypeError, ValueError):
            v = float("nan")
        if not np.isfinite(v) or v <= 0:
            raise HdapError(f"{probe_column(n)} must be a finite time > 0 (got {r[probe_column(n)]!r})")
        meas[n] = v

    def ctx(key, default):
        try:
            v = float(r.get(key, default))
        except (TypeError, ValueError):
            return default
        return v if np.isfinite(v) and v > 0 else default

    threads = ctx("threads", 1.0)
    l2_kb = ctx("l2_kb", 1024.0)
    llc_kb = ctx("llc_kb", 0.0)
    preset = generic_cpu_preset(
        name=name, cores=threads, clock_ghz=1.0, flops_per_cycle=32.0, channel_tile=8,
        cache_kb=l2_kb, llc_kb=llc_kb if llc_kb > l2_kb else 0.0,
        llc_gbps=40.0 if llc_kb > l2_kb else 0.0,
        kernel_overhead_us=meas["tiny"] * 1e3,
        description=f"fitted from a probe row: {threads:g} threads",
    )
    tables = probe_tables()
    nominal = DeviceStates.nominal(1, sku=name)

    def predict(p: SkuPreset) -> dict[str, float]:
        tw = Twin(p)
        return {n: float(tw.expected_ms(tables[n], nominal)[0, 0]) for n in STANDARD_PROBES}

    def ratio(pred, n):  # > 1: the preset is too slow on probe n
        return pred[n] / meas[n]

    # Throughput-like parameters: time is inversely proportional to them while
    # their probe is bound by them, so one multiplicative step nearly converges.
    scaled = {
        "dram_gbps": "copy_large",
        "cache_gbps": "copy_small",
        "flops_per_cycle": "conv3x3",
        "eff_conv1x1": "conv1x1",
        "eff_dwconv": "dwconv3x3",
        "eff_linear": "linear",
    }
    if preset.llc_kb > 0:
        scaled["llc_gbps"] = "copy_medium"
    caps = {"eff_conv1x1": 1.0, "eff_dwconv": 1.0, "eff_linear": 1.0}
    for _ in range(iterations):
        pred = predict(preset)
        changes = {}
        for field_name, probe in scaled.items():
            v = getattr(preset, field_name) * ratio(pred, probe)
            changes[field_name] = min(v, caps.get(field_name, np.inf))
        # Overheads are additive: move them by the unexplained time.
        changes["kernel_overhead_us"] = max(
            0.1, preset.kernel_overhead_us + (meas["tiny"] - pred["tiny"]) * 1e3)
        changes["mac_overhead_us"] = max(
            0.0, preset.mac_overhead_us + (meas["conv3x3_small"] - pred["conv3x3_small"]) * 1e3)
        preset = replace(preset, **changes)
        # Vector / tile width: the candidate that best explains the odd-channel conv.
        errs = []
        for tile in _TILES:
            p = replace(preset, channel_tile=tile)
            tw = Twin(p)
            ratio_pred = (tw.expected_ms(tables["conv3x3_odd"], nominal)[0, 0]
                          / tw.expected_ms(tables["conv3x3"], nominal)[0, 0])
            errs.append(abs(np.log(ratio_pred) - np.log(meas["conv3x3_odd"] / meas["conv3x3"])))
        preset = replace(preset, channel_tile=_TILES[int(np.argmin(errs))])
    return preset


def preset_probe_error(preset: SkuPreset, row) -> dict[str, float]:
    """Relative error of the preset's predicted probes against a measured row (pred/meas - 1)."""
    r = _row_dict(row)
    tables = probe_tables()
    tw = Twin(preset)
    nominal = DeviceStates.nominal(1, sku=preset.name)
    return {n: float(tw.expected_ms(tables[n], nominal)[0, 0] / float(r[probe_column(n)]) - 1.0)
            for n in STANDARD_PROBES}
