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
from hdap_engine.fleet.probes import (
    HOST_PROBE_ROWS,
    PROBE_ROWS,
    STANDARD_PROBES,
    probe_column,
    probe_tables,
)
from hdap_engine.twin.physics import Twin
from hdap_engine.twin.presets import SkuPreset, generic_cpu_preset, get_preset
from hdap_engine.twin.states import DeviceStates

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


class _ProbeModel:
    """Log predicted probe times as a function of log latent parameters (D, F) -> (D, P)."""

    def __init__(self, twin: Twin, names: list[str]):
        tables = probe_tables()
        self.twin = twin
        self.preps = [twin._prepare(tables[n]) for n in names]  # shapes are fixed: prepare once

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        states = DeviceStates.nominal(len(theta), sku=self.twin.preset.name).with_latent(
            **{f: np.exp(theta[:, i]) for i, f in enumerate(FIT_FIELDS)})
        dev = self.twin._device_terms(states)
        return np.log(np.stack([self.twin._expected_seconds(p, dev)[0] for p in self.preps],
                               axis=1) * 1e3)


# Restarts for devices the nominal start explains poorly (clock, units, DRAM,
# cache, overhead multipliers): memory / cache / overhead stolen, clock
# dropped, half the units.
_STARTS = ((1.0, 1.0, 0.5, 0.4, 2.0), (0.65, 1.0, 1.0, 1.0, 1.3), (1.0, 0.5, 0.8, 1.0, 1.0))
_REFIT_ABOVE = 0.02


def _levenberg_marquardt(model: _ProbeModel, y: np.ndarray, theta: np.ndarray,
                         iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Damped Gauss-Newton on log probe times, every device at once; returns (theta, pred)."""
    d, f = theta.shape
    lo = np.array([_LOG_BOUNDS[k][0] for k in FIT_FIELDS])
    hi = np.array([_LOG_BOUNDS[k][1] for k in FIT_FIELDS])
    theta = theta.copy()
    lam = np.full(d, 1e-2)

    def cost(th, pred):
        return ((pred - y) ** 2).sum(axis=1) + _RIDGE * (th ** 2).sum(axis=1)

    pred = model(theta)
    c = cost(theta, pred)
    eps = 1e-3
    eye = np.eye(f)
    for _ in range(iterations):
        jac = np.empty((d, y.shape[1], f))
        for i in range(f):
            th = theta.copy()
            th[:, i] += eps
            jac[:, :, i] = (model(th) - pred) / eps
        jtj = np.einsum("dpi,dpj->dij", jac, jac) + _RIDGE * eye
        jtr = np.einsum("dpi,dp->di", jac, pred - y) + _RIDGE * theta
        damp = lam[:, None, None] * eye * (1.0 + np.diagonal(jtj, axis1=1, axis2=2))[:, :, None]
        step = -np.linalg.solve(jtj + damp, jtr[:, :, None])[:, :, 0]
        cand = np.clip(theta + step, lo, hi)
        pred_c = model(cand)
        c_c = cost(cand, pred_c)
        better = c_c < c
        theta[better] = cand[better]
        pred[better] = pred_c[better]
        c[better] = c_c[better]
        lam = np.where(better, lam * 0.3, lam * 5.0).clip(1e-6, 1e6)
    return theta, pred


def fit_states_from_probes(probes: pd.DataFrame, preset: SkuPreset | str, *,
                           iterations: int = 40) -> tuple[DeviceStates, dict[str, float]]:
    """Latent device states that explain measured probe times under ``preset``.

    Parameters
    ----------
    probes:
        One row per device with ``device_id`` and standard ``probe_<name>_ms``
        columns (at least four of them; others are ignored).
    preset:
        The SKU's nominal parameters, or a preset name (`PRESETS`).
    iterations:
        Levenberg-Marquardt iterations.

    Returns
    -------
    (states, fit_error):
        ``states`` (mechanism ``"fitted"``, severity 0) and, per device id, the
        RMS relative error of the fitted probes (0.05 = the predicted probes are
        off by about 5 %).
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
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
        rows = [int(i) + 2 for i in np.flatnonzero(bad)[:5]]  # +2: header line, 1-based
        raise HdapError(f"probe values must be finite and > 0; see rows {rows} "
                        "(counting the header as row 1); fix or drop those devices")
    y = np.log(obs.to_numpy(float))
    d, f = len(probes), len(FIT_FIELDS)
    model = _ProbeModel(Twin(preset), names)
    theta, pred = _levenberg_marquardt(model, y, np.zeros((d, f)), iterations)
    # The physics has kinks (roofline max, cache fits or not, units cap), so a
    # device far from nominal can stop in a local minimum: refit the poorly
    # explained ones from starting points typical of each kind of drift.
    for start in _STARTS:
        err = np.sqrt(((pred - y) ** 2).mean(axis=1))
        redo = np.flatnonzero(err > _REFIT_ABOVE)
        if redo.size == 0:
            break
        th0 = np.tile(np.log(np.array(start)), (redo.size, 1))
        th_r, pred_r = _levenberg_marquardt(model, y[redo], th0, iterations)
        better = np.sqrt(((pred_r - y[redo]) ** 2).mean(axis=1)) < err[redo]
        theta[redo[better]] = th_r[better]
        pred[redo[better]] = pred_r[better]

    template = DeviceStates.nominal(d, sku=preset.name)
    rms = np.sqrt(((pred - y) ** 2).mean(axis=1))
    states = template.with_latent(**{k: np.exp(theta[:, i]) for i, k in enumerate(FIT_FIELDS)})
    states = replace(states, device_id=probes["device_id"].astype(str).to_numpy(object),
                     mechanism=np.array(["fitted"] * d, dtype=object))
    return states, {str(d): float(e) for d, e in zip(states.device_id, np.expm1(rms), strict=True)}


# --- the host's own preset ---------------------------------------------------

_TILES = (1, 4, 8, 16, 32, 64)
_WORK_HALF = tuple(np.round(np.geomspace(256, 262144, 31), 0)) + (0.0,)


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


def _positive(v) -> bool:
    try:
        return bool(np.isfinite(float(v)) and float(v) > 0)
    except (TypeError, ValueError):
        return False


def fit_preset_from_probes(row, *, name: str = "host", iterations: int = 8) -> SkuPreset:
    """A CPU-class preset whose parameters come from one measured probe row.

    Every parameter is tied to the probe that isolates it: per-kernel overhead
    from ``tiny``; the extra fixed cost of a conv call from ``conv3x3_small``;
    DRAM, last-level-cache and near-cache bandwidths from the three copies;
    peak throughput from ``conv3x3``; the 1x1, depthwise, GEMV, pooling and
    batch-norm efficiencies from their probes; the output-channel tile from
    the vector width (``simd_lanes``; input channels pad to at most 8) and the
    extra cost of channels off a multiple of 8 from
    ``conv3x3_odd``; the pixel tile from ``conv3x3_7x7``; the saturation of
    the small-tile law (MACs per output pixel) from ``conv3x3_thin``. Cache
    sizes, the thread count and the vector width come from the row's context
    columns (``l2_kb``, ``llc_kb``, ``threads``, ``simd_lanes``, as `hdap
    probe` writes them). When the row has the host-only
    ``probe_dwconv3x3_small_ms`` (`HOST_PROBES`, as the realism check times
    them), the fixed cost of a depthwise call comes from it. The parameters are
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
    lanes = ctx("simd_lanes", None)
    lanes = int(lanes) if lanes else None
    l2_kb = ctx("l2_kb", 1024.0)
    llc_kb = ctx("llc_kb", 0.0)
    preset = generic_cpu_preset(
        name=name, cores=threads, clock_ghz=1.0, flops_per_cycle=32.0,
        # Output channels fill the vector (8 channels use half of an AVX-512
        # register: a 3x3 conv 8 -> 8 runs at 76 ps per MAC, 64 -> 64 at 21),
        # but input channels pad to 8 at most: oneDNN blocks them by 8 on a
        # 16-lane CPU too (104 channels run at the speed of 112, not of 128).
        # Only counts off a multiple of 8 take the slower generic kernel.
        channel_tile=lanes or 8, cin_tile=min(8, lanes or 8),
        misaligned_tile=min(8, lanes or 8),
        cache_kb=l2_kb, llc_kb=llc_kb if llc_kb > l2_kb else 0.0,
        llc_gbps=40.0 if llc_kb > l2_kb else 0.0,
        kernel_overhead_us=meas["tiny"] * 1e3 / len(PROBE_ROWS["tiny"]),
        description=f"fitted from a probe row: {threads:g} threads",
    )
    tables = probe_tables(host=True)
    nominal = DeviceStates.nominal(1, sku=name)
    # host-only probes the row has (the realism check times them)
    host_extra = [n for n in HOST_PROBE_ROWS if _positive(r.get(probe_column(n)))]
    meas.update({n: float(r[probe_column(n)]) for n in host_extra})

    def predict(p: SkuPreset) -> dict[str, float]:
        tw = Twin(p)
        return {n: float(tw.expected_ms(tables[n], nominal)[0, 0])
                for n in STANDARD_PROBES + tuple(host_extra)}

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
        "eff_pool": "maxpool",
        "eff_bn": "batchnorm",
    }
    if preset.llc_kb > 0:
        scaled["llc_gbps"] = "copy_medium"
    n_tiny = float(Twin(preset).kept_layers(tables["tiny"]).sum())
    caps = {"eff_conv1x1": 1.0, "eff_dwconv": 1.0, "eff_linear": 1.0, "eff_pool": 1.0,
            "eff_bn": 1.0}
    for _ in range(iterations):
        pred = predict(preset)
        changes = {}
        for field_name, probe in scaled.items():
            v = getattr(preset, field_name) * ratio(pred, probe)
            changes[field_name] = min(v, caps.get(field_name, np.inf))
        # Overheads are additive: share the unexplained time among the probe's kernels.
        changes["kernel_overhead_us"] = max(
            0.1, preset.kernel_overhead_us + (meas["tiny"] - pred["tiny"]) * 1e3 / n_tiny)
        changes["mac_overhead_us"] = max(
            0.0, preset.mac_overhead_us + (meas["conv3x3_small"] - pred["conv3x3_small"]) * 1e3)
        if "dwconv3x3_small" in host_extra:
            changes["dw_overhead_us"] = max(0.0, preset.dw_overhead_us + (
                meas["dwconv3x3_small"] - pred["dwconv3x3_small"]) * 1e3)
        preset = replace(preset, **changes)
        # Tile widths: the channel tile is the CPU's vector width when the row
        # says it (``simd_lanes``), and whatever slowdown of the odd-channel conv
        # padding does not explain is the generic-kernel penalty; without it, the
        # tile that best explains that conv. The pixel tile best explains the 7x7
        # conv (both against conv3x3).
        searched = (("pixel_tile", "conv3x3_7x7"),)
        if lanes is None:
            searched = (("channel_tile", "conv3x3_odd"),) + searched
        else:
            tw = Twin(replace(preset, misaligned_eff=1.0))
            ratio_pred = (tw.expected_ms(tables["conv3x3_odd"], nominal)[0, 0]
                          / tw.expected_ms(tables["conv3x3"], nominal)[0, 0])
            ratio_meas = meas["conv3x3_odd"] / meas["conv3x3"]
            preset = replace(preset, misaligned_eff=float(min(1.0, ratio_pred / ratio_meas)))
        for field_name, probe in searched:
            errs = []
            for tile in _TILES:
                extra = {"cin_tile": tile} if field_name == "channel_tile" else {}
                tw = Twin(replace(preset, **{field_name: tile}, **extra))
                ratio_pred = (tw.expected_ms(tables[probe], nominal)[0, 0]
                              / tw.expected_ms(tables["conv3x3"], nominal)[0, 0])
                errs.append(abs(np.log(ratio_pred) - np.log(meas[probe] / meas["conv3x3"])))
            best = _TILES[int(np.argmin(errs))]
            extra = {"cin_tile": best} if field_name == "channel_tile" else {}
            preset = replace(preset, **{field_name: best}, **extra)
        # Saturation of the small-tile law: the value that best explains
        # the thin conv (16 channels in and out). Its slowness is a small tile
        # (short K and narrow N together), not a short K alone: a 1x1 conv with
        # 48 inputs and 128 outputs runs near peak, which a K-only rule misses.
        errs = []
        for half in _WORK_HALF:
            tw = Twin(replace(preset, small_tile_macs=half))
            ratio_pred = (tw.expected_ms(tables["conv3x3_thin"], nominal)[0, 0]
                          / tw.expected_ms(tables["conv3x3"], nominal)[0, 0])
            errs.append(abs(np.log(ratio_pred) - np.log(meas["conv3x3_thin"] / meas["conv3x3"])))
        preset = replace(preset, small_tile_macs=float(_WORK_HALF[int(np.argmin(errs))]))
    return preset


def preset_probe_error(preset: SkuPreset, row) -> dict[str, float]:
    """Relative error of the preset's predicted probes against a measured row (pred/meas - 1)."""
    r = _row_dict(row)
    tables = probe_tables()
    tw = Twin(preset)
    nominal = DeviceStates.nominal(1, sku=preset.name)
    return {n: float(tw.expected_ms(tables[n], nominal)[0, 0] / float(r[probe_column(n)]) - 1.0)
            for n in STANDARD_PROBES}
