"""What-if speed: a new validated result from a trained surrogate, per budget or weights change.

Prepares a study once (cluster, measure, fit: the part a user waits for once),
then times what the app's What-if page does when a slider moves: search the
cached surrogate for the new budget or cluster weights (one search run, no
refinement, no finalist measurements) and validate the candidate with the backend (every
device with the twin). Prints each change and the median.

    python -m benchmarks.whatif [--model resnet50] [--telemetry sample_data/jetson_nano_fleet.csv]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from hdap_engine.options import Query, StudyOptions
from hdap_engine.study.prepare import prepare
from hdap_engine.study.run import optimize
from hdap_engine.study.verify import fleet_metrics, verify_candidate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--telemetry", default="sample_data/jetson_nano_fleet.csv")
    p.add_argument("--budget", default="1.0G")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    ctx = prepare(StudyOptions.of(model=args.model, budget=args.budget), args.telemetry)
    print(f"prepared {args.model} on {ctx.fleet.source} ({ctx.k} clusters) in "
          f"{time.perf_counter() - t0:.1f} s (cached measurements and surrogate are reused)")
    k = ctx.k
    changes = [("budget 0.8G", {"budget": "0.8G"}), ("budget 1.2G", {"budget": "1.2G"}),
               ("budget 1.5G", {"budget": "1.5G"}),
               ("weights: slowest cluster x4",
                {"cluster_weights": {c: (4.0 if c == k - 1 else 1.0) for c in range(k)}}),
               ("weights: cluster 0 only", {"cluster_weights": {0: 1.0}})]
    times = []
    for label, change in changes:
        t = time.perf_counter()
        query = Query(budget=change.get("budget", args.budget),
                      cluster_weights=change.get("cluster_weights"))
        res = optimize(ctx, query, plan=ctx.options.search.quick())
        fm = fleet_metrics(ctx, verify_candidate(ctx, res.widths), res.objective)
        dt = time.perf_counter() - t
        times.append(dt)
        print(f"{label:30s} {dt:5.1f} s   fleet mean {fm['measured_mean_ms']:.2f} ms "
              f"({ctx.backend.source}, {fm['basis']})")
    print(f"median {statistics.median(times):.1f} s, max {np.max(times):.1f} s per change")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
