"""INT8 against FP32: widths chosen on the twin, and real INT8 / FP32 timings on this host.

``twin``: one study per precision on the Jetson twin fleet (ResNet-50 at 1.0 G
by default): FP32 (``--round-to 8``), INT8 with its default ``--round-to 16``, and
INT8 with ``--round-to 8`` (the same rounding as FP32, so that only the physics
differs). Every chosen candidate is then measured on every device of the fleet
by both twins, FP32 and INT8: the table says how many widths differ and whether
FP32-chosen widths, quantised afterwards, are slower in INT8 than the INT8-chosen ones.

``host``: given a ``hdap bench --json`` of an INT8 host run, times every row's model
in INT8 and in FP32 (ONNX Runtime, one thread, thread CPU time), all of them
interleaved in one run: each INT8 model against its FP32 self.

    python -m benchmarks.int8 twin [--model resnet50] [--budget 1.0G] [--effort quick]
    python -m benchmarks.int8 host --bench bench.json [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hdap_engine.options import StudyOptions, search_effort


def _twin(args) -> int:
    from hdap_engine.study.prepare import prepare
    from hdap_engine.study.run import optimize
    from hdap_engine.twin.int8 import fp32_backend

    runs = [("fp32, round to 8", {"precision": "fp32", "round_to": 8}),
            ("int8, round to 16 (default)", {"precision": "int8"}),
            ("int8, round to 8", {"precision": "int8", "round_to": 8})]
    chosen, ctxs = {}, {}
    for label, extra in runs:
        t0 = time.perf_counter()
        options = StudyOptions.of(model=args.model, budget=args.budget, method="hdap",
                                  calibrate_on="random", seed=args.seed,
                                  **search_effort(args.effort), **extra)
        ctx = prepare(options, args.telemetry)
        chosen[label] = optimize(ctx).widths
        ctxs[label] = ctx
        print(f"{label}: searched in {time.perf_counter() - t0:.0f} s "
              f"({ctx.backend.source})", flush=True)
    int8_ctx = ctxs["int8, round to 8"]
    twin8 = int8_ctx.backend
    twin32 = fp32_backend(twin8)
    devices = list(int8_ctx.fleet.device_ids)
    space = int8_ctx.space
    rows = []
    base = chosen["fp32, round to 8"]
    for label, widths in chosen.items():
        fp32 = float(np.mean(twin32.measure_fleet(space, widths, devices)))
        int8 = float(np.mean(twin8.measure_fleet(space, widths, devices)))
        rows.append({"widths chosen by": label, "MACs G": round(space.macs(widths) / 1e9, 3),
                     "groups differing from FP32's": int((widths != base).sum()),
                     "FP32 twin mean ms": round(fp32, 3), "INT8 twin mean ms": round(int8, 3),
                     "widths": [int(w) for w in widths]})
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "widths"}))
    print(f"groups: {space.n_groups}; every device of {int8_ctx.fleet.source} "
          f"({len(devices)} devices), noiseless twin medians of 5 runs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def _host(args) -> int:
    import torch

    from hdap_engine.latency.backends import time_models
    from hdap_engine.latency.runtimes import prepare as prepare_runtime
    from hdap_engine.latency.runtimes import prepare_int8
    from hdap_engine.models.zoo import build_model, get_spec
    from hdap_engine.pruning.apply import prune_to_widths
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.quantize.cache import int8_candidate

    bench = json.loads(open(args.bench).read())
    model = bench.get("model") or args.model
    space = PruningSpace.for_model(model, round_to=args.round_to)
    x = get_spec(model).example_input()
    labels, runnables = [], []
    torch.set_num_threads(1)
    for row in bench["rows"]:
        widths = np.asarray(row["widths"], dtype=np.int64)
        m = build_model(model)
        prune_to_widths(m, space, widths, importance="first")
        runnables += prepare_int8([int8_candidate(space, widths)], x, threads=1)
        runnables += prepare_runtime([m.eval()], x, "onnxruntime", threads=1)
        labels += [f"{row['method']} int8", f"{row['method']} fp32"]
    t0 = time.perf_counter()
    times = time_models(runnables, x, repeats=args.rounds, warmup=3,
                        rng=np.random.default_rng(0), clock="thread")
    print(f"{len(runnables)} models, {args.rounds} interleaved rounds, one thread, thread CPU "
          f"time, ONNX Runtime {runnables[0].session.get_providers()[0]} "
          f"({time.perf_counter() - t0:.0f} s)")
    med = np.median(times, axis=1)
    q75, q25 = np.percentile(times, [75, 25], axis=1)
    for i, label in enumerate(labels):
        pair = med[i + 1] if i % 2 == 0 else med[i - 1]
        ratio = f"  INT8 speedup over its FP32 self {pair / med[i]:.2f}x" if i % 2 == 0 else ""
        print(f"{label:16s} median {med[i]:7.2f} ms  IQR {q75[i] - q25[i]:5.2f} ms{ratio}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("twin")
    t.add_argument("--model", default="resnet50")
    t.add_argument("--budget", default="1.0G")
    t.add_argument("--telemetry", default="sample_data/jetson_nano_fleet.csv")
    t.add_argument("--effort", default="quick")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", default=None)
    h = sub.add_parser("host")
    h.add_argument("--bench", required=True)
    h.add_argument("--model", default="resnet50")
    h.add_argument("--rounds", type=int, default=30)
    h.add_argument("--round-to", type=int, default=16, help="the bench's --round-to")
    args = p.parse_args(argv)
    return _twin(args) if args.what == "twin" else _host(args)


if __name__ == "__main__":
    raise SystemExit(main())
