"""Fleet benchmark: load + validate + cluster a 1M-device file, and the UMAP of 20,000 devices.

Reproduces the figures quoted in the README (section "1,000,000 devices" under "Results"):

    python benchmarks/fleet.py                # 1,000,000 devices, 3 repeats
    python benchmarks/fleet.py --devices 200000 --repeats 1

Steps:
1. write a synthetic fleet (``hdap_engine.fleet.bench_data``, no twin needed)
   as CSV and Parquet, unless they exist;
2. time the whole process ``python -m hdap_engine cluster FILE --out ...``
   with ``/usr/bin/time -v`` (wall clock and peak RSS), next to the plain
   pandas + MiniBatchKMeans script ``benchmarks/fleet_baseline.py``;
3. time ``load_fleet`` alone (in process);
4. time ``embed`` on 20,000 devices after ``warm_up()`` (numba compiled).

Timings on a shared machine are noisy: the medians of the repeats are shown.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of a whole process, from GNU time."""
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    h, m, s = wall.groups()
    seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    return seconds, int(rss.group(1)) / 1024**2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the fleet files go")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from hdap_engine.fleet.bench_data import synthetic_fleet, write_fleet

    folder = Path(args.dir)
    csv = folder / f"hdap_fleet_{args.devices}.csv"
    parquet = csv.with_suffix(".parquet")
    if not (csv.exists() and parquet.exists()):
        frame, _ = synthetic_fleet(args.devices, seed=0)
        write_fleet(frame, csv)
        write_fleet(frame, parquet)
        del frame
    print(f"fleet: {args.devices:,} devices, {csv} ({csv.stat().st_size / 1e6:.0f} MB)")

    py = sys.executable
    runs = {
        "hdap cluster (CSV)": [py, "-m", "hdap_engine", "cluster", str(csv), "--out", str(folder / "hdap_assign.csv")],
        "hdap cluster (Parquet)": [py, "-m", "hdap_engine", "cluster", str(parquet), "--out", str(folder / "hdap_assign.csv")],
        "plain pandas + MiniBatchKMeans (CSV)": [py, "benchmarks/fleet_baseline.py", str(csv), str(folder / "baseline_assign.csv")],
    }
    print(f"\nwhole process, median of {args.repeats} (wall s, peak RSS GB):")
    for name, cmd in runs.items():
        results = [_timed(cmd) for _ in range(args.repeats)]
        wall = statistics.median(r[0] for r in results)
        rss = statistics.median(r[1] for r in results)
        print(f"  {name:40s} {wall:6.2f} s  {rss:5.2f} GB")

    from hdap_engine.fleet import embedding
    from hdap_engine.fleet.clustering import Clustering
    from hdap_engine.fleet.telemetry import load_fleet

    loads = []
    for path in (csv, parquet):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fleet = load_fleet(path)
            times.append(time.perf_counter() - start)
        loads.append(statistics.median(times))
    print(f"\nload_fleet + validation: CSV {loads[0]:.2f} s, Parquet {loads[1]:.2f} s")

    clustering = Clustering().fit(fleet)
    start = time.perf_counter()
    embedding.warm_up()
    print(f"UMAP warm-up (numba): {time.perf_counter() - start:.1f} s")
    times = []
    for _ in range(args.repeats):
        embedding.clear_cache()
        start = time.perf_counter()
        out = embedding.embed(fleet, clustering, max_points=20_000, seed=0)
        times.append(time.perf_counter() - start)
    print(f"UMAP of {len(out):,} devices once warm: {statistics.median(times):.2f} s (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
