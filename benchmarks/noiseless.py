"""Every row of an `hdap bench --json` file priced on the twin's noiseless latency.

`hdap bench` verifies each method's model with one noisy pass over every device of the
fleet (the twin's run-to-run noise at the study's repeats), so two candidates closer than
that noise may swap places in its fleet mean or p95. This reads the widths of every row
and prices them again on the twin's noiseless latency over all devices (docs/results.md,
fifth pass: MobileNetV1 at seed 0).

    python -m benchmarks.noiseless --json mnv1.json --model mobilenet_v1 --macs 0.3G \
        --telemetry sample_data/jetson_nano_fleet.csv
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from hdap_engine.latency.backends import TwinBackend
from hdap_engine.latency.store import Store
from hdap_engine.options import StudyOptions
from hdap_engine.study.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="the output of hdap bench --json")
    parser.add_argument("--model", required=True)
    parser.add_argument("--macs", required=True)
    parser.add_argument("--telemetry", required=True, help="the fleet the bench ran on")
    args = parser.parse_args()
    rows = json.loads(Path(args.json).read_text())["rows"]
    # A context for the fleet's devices and the model's space only: nothing is searched.
    ctx = prepare(StudyOptions.of(model=args.model, budget=args.macs, samples=20,
                                  method="uniform"),
                  args.telemetry, store=Store(Path(tempfile.mkdtemp()) / "s.sqlite"))
    if not isinstance(ctx.backend, TwinBackend):
        raise SystemExit("the fleet has no twin sidecar: there is no noiseless latency")
    states = ctx.backend.states_for(list(ctx.fleet.device_ids))
    print(f"{'method':14s} {'bench mean (p95)':>22s} {'noiseless mean (p95)':>24s}")
    for r in rows:
        widths = np.asarray(r["widths"], dtype=np.int64)[None]
        ms = ctx.backend.twin.latency_ms(ctx.space.layer_table(widths), states, noise=False)[0]
        print(f"{r['method']:14s} {r['fleet_mean_ms']:10.4f} ({r['p95_ms']:9.4f}) "
              f"{ms.mean():12.4f} ({np.quantile(ms, 0.95):9.4f})")


if __name__ == "__main__":
    main()
