"""Long-format telemetry at fleet scale: raw runs of 1M devices and a wide file of 10M, through `hdap cluster`.

Reproduces the figures in the README (section "Raw runs and ten million devices"):

    python benchmarks/longformat.py                       # 1M x 7 probes x 5 runs, and 10M wide
    python benchmarks/longformat.py --devices 100000 --wide-devices 1000000   # quicker

Steps:
1. write, unless they exist (``hdap_engine.fleet.bench_data``, no twin): the
   fleet of `--devices` devices with 7 probes as one row per device
   (Parquet), the same fleet as raw timed runs (5 runs of every probe per
   device, 2 % run-to-run noise, Parquet), and a wide Parquet file of
   `--wide-devices` devices;
2. time the whole process ``python -m hdap_engine cluster FILE --out ...``
   for each file with ``/usr/bin/time -v``: wall clock, CPU (user + system)
   and peak RSS;
3. compare the clusters of the raw runs with those of the one-row-per-device
   file (adjusted Rand index over device ids), and each with the simulated
   mechanisms.

The development machine is shared: the CPU seconds say how much work a run
was; wall time depends on what else ran (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _timed(cmd: list[str]) -> dict[str, float]:
    """Wall and CPU seconds and peak RSS (GB) of a whole process, from GNU time."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", proc.stderr).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", proc.stderr).group(1))
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    h, m, s = wall.groups()
    return {"wall_s": int(h or 0) * 3600 + int(m) * 60 + float(s), "cpu_s": user + system,
            "rss_gb": int(rss.group(1)) / 1024**2, "stdout": proc.stdout}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000, help="devices of the raw-runs fleet")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--wide-devices", type=int, default=10_000_000)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the files go")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    import numpy as np
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    from hdap_engine.fleet.bench_data import (
        LONG_PROBES_MS,
        MECHANISMS,
        synthetic_fleet,
        write_fleet,
        write_runs,
    )

    folder = Path(args.dir)
    wide = folder / f"hdap_wide7_{args.devices}.parquet"
    runs = folder / f"hdap_runs_{args.devices}x7x{args.runs}.parquet"
    labels = folder / f"hdap_wide7_{args.devices}.labels.parquet"
    big = folder / f"hdap_wide7_{args.wide_devices}.parquet"
    if not (wide.exists() and runs.exists() and labels.exists()):
        frame, mechanism = synthetic_fleet(args.devices, seed=0, nominal=LONG_PROBES_MS)
        write_fleet(frame, wide)
        write_runs(frame, runs, runs=args.runs, seed=0)
        names = np.array(list(MECHANISMS))
        write_fleet(pd.DataFrame({"device_id": frame["device_id"], "mechanism": names[mechanism]}), labels)
        del frame
    if not big.exists():
        frame, _ = synthetic_fleet(args.wide_devices, seed=1, nominal=LONG_PROBES_MS)
        write_fleet(frame, big)
        del frame
    n_rows = args.devices * 7 * args.runs
    print(f"raw runs: {runs} ({n_rows:,} rows, {runs.stat().st_size / 1e6:.0f} MB); "
          f"wide: {big} ({args.wide_devices:,} devices, {big.stat().st_size / 1e6:.0f} MB)")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    py = sys.executable
    results = {}
    for key, path in (("runs", runs), ("wide", wide), ("big", big)):
        out = folder / f"hdap_assign_{key}.csv"
        results[key] = _timed([py, "-m", "hdap_engine", "cluster", str(path), "--out", str(out)])
        results[key]["assign"] = out
        k = re.search(r"^k = (\d+)", results[key]["stdout"], re.M)
        results[key]["k"] = int(k.group(1)) if k else None

    a = pd.read_csv(results["runs"]["assign"]).set_index("device_id")["cluster"]
    b = pd.read_csv(results["wide"]["assign"]).set_index("device_id")["cluster"]
    truth = pd.read_parquet(labels).set_index("device_id")["mechanism"]
    ari_formats = adjusted_rand_score(b.loc[a.index], a)
    ari_truth = adjusted_rand_score(truth.loc[a.index], a)

    print()
    print("| file | hdap cluster wall s | CPU s | peak RSS GB | k | target |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("runs", f"raw runs, {args.devices:,} devices x 7 probes x {args.runs} runs ({n_rows:,} rows)",
         "< 60 s, < 4 GB"),
        ("wide", f"the same fleet, one row per device ({args.devices:,} rows)", ""),
        ("big", f"wide Parquet, {args.wide_devices:,} devices", "< 90 s, < 6 GB"),
    ]
    for key, what, target in rows:
        r = results[key]
        print(f"| {what} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rss_gb']:.2f} | {r['k']} | {target} |")
    print()
    print(f"ARI, clusters of the raw runs vs the one-row-per-device file: {ari_formats:.4f}")
    print(f"ARI, clusters of the raw runs vs the simulated mechanisms: {ari_truth:.4f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
