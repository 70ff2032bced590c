"""Synthetic fleet telemetry for benchmarks and tests, without the device twin.

The twin (``hdap_engine.twin``) simulates devices from physics; this
module is deliberately simpler and independent of it: devices are log-normal
blobs around a nominal probe profile, one blob per drift mechanism, each
mechanism scaling a *different* subset of probes (some only one or two). It
is what the telemetry and clustering benchmarks load, and what the
clustering tests recover (the true mechanism of every device is returned).

Command line (writes CSV, CSV.gz or Parquet by the file name)::

    python -m hdap_engine.fleet.bench_data --devices 1000000 --out /tmp/big.csv
    # raw timed runs (long format): 1M devices x 7 probes x 5 runs
    python -m hdap_engine.fleet.bench_data --devices 1000000 --probes 7 --runs 5 --out /tmp/runs.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# Nominal probe latencies (ms) of a mid-range edge device; only their
# relative sizes matter here.
NOMINAL_PROBES_MS: dict[str, float] = {
    "probe_conv3x3_ms": 4.0,
    "probe_conv1x1_ms": 2.0,
    "probe_depthwise_ms": 1.5,
    "probe_linear_ms": 0.8,
    "probe_memcopy_ms": 3.0,
    "probe_launch_ms": 0.05,
}

# Drift mechanism -> multiplicative slow-down per probe (missing probe = 1.0).
# Thermal and memory ageing touch only one or two probes: the clusters a
# clustering must separate by a single feature.
MECHANISMS: dict[str, dict[str, float]] = {
    "nominal": {},
    "power_saving": {
        "probe_conv3x3_ms": 1.6,
        "probe_conv1x1_ms": 1.6,
        "probe_depthwise_ms": 1.5,
        "probe_linear_ms": 1.5,
        "probe_memcopy_ms": 1.3,
        "probe_launch_ms": 1.2,
        "probe_maxpool_ms": 1.4,
    },
    "thermal_throttling": {"probe_conv3x3_ms": 1.3, "probe_conv1x1_ms": 1.25},
    "background_load": {"probe_launch_ms": 1.8, "probe_memcopy_ms": 1.2},
    "memory_ageing": {"probe_memcopy_ms": 1.3},
}

DEFAULT_SHARES: tuple[float, ...] = (0.55, 0.15, 0.12, 0.10, 0.08)

# A seventh probe for the long-format benchmark (1M devices x 7 probes x 5
# runs): pooling, slowed by power saving only.
LONG_PROBES_MS: dict[str, float] = {**NOMINAL_PROBES_MS, "probe_maxpool_ms": 0.6}


def synthetic_fleet(
    n_devices: int,
    *,
    seed: int = 0,
    shares: tuple[float, ...] = DEFAULT_SHARES,
    spread: float = 0.03,
    severity: tuple[float, float] | None = None,
    sku: str | None = "edge-a",
    nominal: dict[str, float] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Make a synthetic fleet: one log-normal blob of devices per drift mechanism.

    Parameters
    ----------
    n_devices:
        Number of devices (rows).
    seed:
        Random seed; the same arguments give the same frame.
    shares:
        Share of devices per mechanism, in the order of `MECHANISMS`
        (normalised; fewer shares than mechanisms uses the first ones).
    spread:
        Within-mechanism log-normal sigma of every probe (0.03 = about 3 %).
    severity:
        None: every affected device is slowed by the full factor (compact
        blobs). (lo, hi): each device's slow-down is factor ** s with s
        uniform in [lo, hi], so a mechanism is an elongated streak, as
        drift of varying severity is.
    sku:
        Value of the ``sku`` column, or None for no ``sku`` column.
    nominal:
        Probe column -> nominal latency (ms); default `NOMINAL_PROBES_MS`.
        Probes a mechanism does not name are not slowed by it.

    Returns
    -------
    (frame, mechanism):
        The telemetry frame (``device_id``, probes, context) and the integer
        mechanism index of every device (ground truth for clustering tests).
    """
    if n_devices < 1:
        raise ValueError("n_devices must be >= 1")
    names = list(MECHANISMS)[: len(shares)]
    p = np.asarray(shares, dtype=float)
    p = p / p.sum()
    rng = np.random.default_rng(seed)
    # Exact counts (largest remainder), then shuffled: shares are what they say.
    counts = np.floor(p * n_devices).astype(int)
    counts[np.argsort(-(p * n_devices - counts))[: n_devices - counts.sum()]] += 1
    mechanism = rng.permutation(np.repeat(np.arange(len(names)), counts))

    nominal_ms = NOMINAL_PROBES_MS if nominal is None else nominal
    probe_names = list(nominal_ms)
    factors = np.array(
        [[MECHANISMS[m].get(c, 1.0) for c in probe_names] for m in names], dtype=float
    )
    base = np.array([nominal_ms[c] for c in probe_names])
    noise = rng.normal(0.0, spread, size=(n_devices, len(probe_names)))
    power = np.ones((n_devices, 1))
    if severity is not None:
        power = rng.uniform(severity[0], severity[1], size=(n_devices, 1))
    probes = base * factors[mechanism] ** power * np.exp(noise)

    frame = pd.DataFrame({"device_id": _device_ids(n_devices)})
    if sku is not None:
        frame["sku"] = sku
    for j, c in enumerate(probe_names):
        frame[c] = np.round(probes[:, j], 5)
    # Context that correlates with the mechanisms, as real telemetry would.
    is_power = np.array([n == "power_saving" for n in names])[mechanism]
    is_thermal = np.array([n == "thermal_throttling" for n in names])[mechanism]
    power_mode = np.where(rng.random(n_devices) < np.where(is_power, 0.8, 0.05), "power_saving", "performance")
    frame["power_mode"] = power_mode
    frame["ambient_c"] = np.round(rng.normal(24.0, 4.0, n_devices) + 14.0 * is_thermal, 1)
    frame["firmware"] = rng.choice(np.array(["1.4.2", "1.5.0", "1.5.1"]), size=n_devices, p=[0.2, 0.5, 0.3])
    frame["battery_health"] = np.round(np.clip(rng.normal(0.9, 0.06, n_devices), 0.4, 1.0), 3)
    return frame, mechanism


def _device_ids(n: int) -> np.ndarray:
    width = max(6, len(str(n - 1)))
    return np.char.add("dev-", np.char.zfill(np.arange(n).astype(str), width)).astype(object)


def write_fleet(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write a telemetry frame as CSV, CSV.gz or Parquet, chosen by the file name.

    Parameters
    ----------
    frame:
        The telemetry frame.
    out:
        Target path ending in ``.csv``, ``.csv.gz`` or ``.parquet``.

    Returns
    -------
    The path written.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    name = out.name.lower()
    if name.endswith(".parquet"):
        pq.write_table(table, out)
    elif name.endswith(".csv.gz"):
        with pa.CompressedOutputStream(str(out), "gzip") as sink:
            pacsv.write_csv(table, sink, pacsv.WriteOptions(quoting_style="none"))
    elif name.endswith(".csv"):
        pacsv.write_csv(table, out, pacsv.WriteOptions(quoting_style="none"))
    else:
        raise ValueError(f"{out}: unknown extension; use .csv, .csv.gz or .parquet")
    return out


def write_runs(
    frame: pd.DataFrame,
    out: str | Path,
    *,
    runs: int = 5,
    run_noise: float = 0.02,
    seed: int = 0,
    chunk_devices: int = 100_000,
    parts: int = 1,
) -> Path:
    """Write a fleet as raw timed runs (long format): one row per device, probe and run.

    Every run of a device times each probe at the device's latency (the
    frame's ``probe_<name>_ms``) times log-normal run-to-run noise, so the
    per-device median of the runs estimates the frame's row. Context is what
    a fleet's telemetry pipeline logs with each run: ``timestamp`` (one per
    run of the suite), ``sku``, ``firmware`` (the last run of 10 % of the
    devices already has the next version: "latest" must pick it) and
    ``ambient_c`` (varies per run).

    Parameters
    ----------
    frame:
        One row per device, as from `synthetic_fleet`.
    out:
        ``.parquet`` or ``.csv`` file, or a folder (then `parts` Parquet
        files ``part-NNN.parquet`` in it, for a glob).
    runs:
        Timed runs of the whole probe suite per device.
    run_noise:
        Log-normal sigma of one run (0.02 = about 2 %).
    seed:
        Random seed.
    chunk_devices:
        Devices generated at a time (bounds the memory used).
    parts:
        Number of files when `out` is a folder.

    Returns
    -------
    The file or folder written.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(out)
    probe_cols = [c for c in frame.columns if c.startswith("probe_") and c.endswith("_ms")]
    names = np.array([c[len("probe_") : -len("_ms")] for c in probe_cols])
    rng = np.random.default_rng([seed, 7])
    n = len(frame)
    folder = not out.name.lower().endswith((".parquet", ".csv"))
    if folder:
        out.mkdir(parents=True, exist_ok=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    start = np.datetime64("2026-11-01T00:00:00", "s")
    writer = None
    part_bounds = np.linspace(0, n, max(1, parts) + 1).astype(int) if folder else np.array([0, n])
    try:
        for p in range(len(part_bounds) - 1):
            target = out / f"part-{p:03d}.parquet" if folder else out
            for lo in range(part_bounds[p], part_bounds[p + 1], chunk_devices):
                hi = min(lo + chunk_devices, part_bounds[p + 1])
                chunk = frame.iloc[lo:hi]
                m = hi - lo
                probes = chunk[probe_cols].to_numpy(dtype=np.float64)  # (m, P)
                # Rows ordered as a pipeline logs them: run by run, device, probe.
                noise = np.exp(rng.normal(0.0, run_noise, size=(runs, m, len(probe_cols))))
                latency = (probes[None, :, :] * noise).reshape(-1)
                ids = np.asarray(chunk["device_id"], dtype=object)
                run_of_row = np.repeat(np.arange(runs), m * len(probe_cols))
                device_of_row = np.tile(np.repeat(np.arange(m), len(probe_cols)), runs)
                # One timestamp per run of the suite: run r about r hours after the first.
                t0 = rng.integers(0, 3600, size=m)
                stamp = start + (t0[device_of_row] + 3600 * run_of_row).astype("timedelta64[s]")
                firmware = np.asarray(chunk["firmware"], dtype=object)
                upgraded = rng.random(m) < 0.10
                fw_row = np.where(
                    (run_of_row == runs - 1) & upgraded[device_of_row], "1.6.0", firmware[device_of_row]
                )
                ambient = chunk["ambient_c"].to_numpy(dtype=np.float64)
                # Ambient temperature is logged once per run of the suite.
                amb_run = ambient[None, :] + rng.normal(0.0, 1.0, size=(runs, m))
                amb_row = np.round(amb_run[run_of_row, device_of_row], 1)
                columns = {
                    "device_id": pa.array(ids[device_of_row], pa.string()),
                    "probe": pa.DictionaryArray.from_arrays(
                        pa.array(np.tile(np.arange(len(names)), m * runs), pa.int32()), pa.array(names)
                    ),
                    "latency_ms": pa.array(np.round(latency, 5)),
                    "timestamp": pa.array(stamp),
                }
                if "sku" in chunk.columns:
                    columns["sku"] = pa.DictionaryArray.from_arrays(
                        pa.array(np.zeros(len(latency), dtype=np.int32)),
                        pa.array([str(chunk["sku"].iloc[0])]),
                    )
                columns["firmware"] = pa.array(fw_row, pa.string())
                columns["ambient_c"] = pa.array(amb_row)
                table = pa.table(columns)
                if target.name.lower().endswith(".csv"):
                    table = table.cast(
                        pa.schema([pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type)
                                   for f in table.schema])
                    )
                    options = pacsv.WriteOptions(quoting_style="none", include_header=writer is None)
                    if writer is None:
                        writer = open(target, "wb")
                    pacsv.write_csv(table, writer, options)
                else:
                    if writer is None:
                        writer = pq.ParquetWriter(target, table.schema)
                    writer.write_table(table)
            if folder and writer is not None:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: write a synthetic fleet file (and optionally its true mechanisms)."""
    parser = argparse.ArgumentParser(
        prog="python -m hdap_engine.fleet.bench_data",
        description="Write a synthetic fleet telemetry file (no twin needed).",
    )
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--out", required=True, help="file.csv, file.csv.gz or file.parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread", type=float, default=0.03)
    parser.add_argument("--labels", help="also write device_id,mechanism to this CSV")
    parser.add_argument("--probes", type=int, choices=(6, 7), default=6,
                        help="probe columns: 6 (default) or 7 (adds probe_maxpool_ms)")
    parser.add_argument("--runs", type=int, default=0,
                        help="write raw timed runs (long format), this many per device and probe")
    parser.add_argument("--parts", type=int, default=1,
                        help="with --runs and a folder as --out: number of Parquet files")
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("--devices must be >= 1")
    nominal = LONG_PROBES_MS if args.probes == 7 else NOMINAL_PROBES_MS
    frame, mechanism = synthetic_fleet(args.devices, seed=args.seed, spread=args.spread, nominal=nominal)
    try:
        if args.runs > 0:
            path = write_runs(frame, args.out, runs=args.runs, seed=args.seed, parts=args.parts)
        else:
            path = write_fleet(frame, args.out)
    except ValueError as exc:
        parser.error(str(exc))
    if args.labels:
        names = np.array(list(MECHANISMS))
        labels = pd.DataFrame({"device_id": frame["device_id"], "mechanism": names[mechanism]})
        write_fleet(labels, args.labels)
    size = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
    print(f"wrote {path} ({len(frame):,} devices, {size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
