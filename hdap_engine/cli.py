"""The `hdap` command: a thin caller of the engine, like the app.

Every command parses its flags, calls into `hdap_engine`, and prints. A user
error (`HdapError`, a bad flag) prints one ``error: ...`` line to stderr and
exits 2; nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from hdap_engine.errors import HdapError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one `error:` line, exit 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        raise HdapError(f"{message} (see `{self.prog} --help`)")


def _print_table(rows: list[dict], columns: list[str]) -> None:
    """Plain fixed-width table on stdout."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c)
              for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _add_budget_flag(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--macs", "--flops", dest="macs", required=required, metavar="BUDGET",
        help="MACs budget: 1.0G, 500M, or a fraction of the model such as 0.25 or 25%%. "
             "--flops is the same flag: pruning papers (the HDAP paper included) write "
             "FLOPs for multiply-accumulates.")


# -- hdap models ------------------------------------------------------------------------

def _cmd_models(args: argparse.Namespace) -> int:
    from hdap_engine.models.zoo import get_spec, model_names
    from hdap_engine.pruning.budget import format_macs
    from hdap_engine.pruning.space import PruningSpace

    rows = []
    for name in model_names():
        spec = get_spec(name)
        space = PruningSpace.for_model(name)
        rows.append({
            "model": name,
            "input": "x".join(str(d) for d in spec.input_shape),
            "MACs": format_macs(space.base_macs),
            "params": f"{space.base_params / 1e6:.2f} M",
            "groups": space.n_groups,
            "description": spec.description,
        })
    _print_table(rows, ["model", "input", "MACs", "params", "groups", "description"])
    return 0


def _register_models(sub) -> None:
    p = sub.add_parser("models", help="list the models that can be pruned")
    p.set_defaults(func=_cmd_models)


# -- hdap prune -------------------------------------------------------------------------

def _cmd_prune(args: argparse.Namespace) -> int:
    from hdap_engine.pruning.budget import format_macs
    from hdap_engine.study import export_result, prune_baseline

    result = prune_baseline(args.model, args.macs, args.method, weights=args.weights,
                            round_to=args.round_to, min_ratio=args.min_ratio, seed=args.seed)
    out = export_result(result, args.out)
    macs = result.space.macs(result.widths)
    print(f"{args.model} pruned with {args.method} to {format_macs(macs)} MACs "
          f"(budget {format_macs(result.report['budget_macs'])}, "
          f"{macs / result.space.base_macs:.1%} of the model)")
    print(f"bundle: {out}  (zip: {out}.zip)")
    return 0


def _register_prune(sub) -> None:
    from hdap_engine.options import BASELINE_METHODS

    p = sub.add_parser("prune", help="prune a model to a MACs budget with a baseline method")
    p.add_argument("--model", required=True, help="model name (see `hdap models`)")
    _add_budget_flag(p)
    p.add_argument("--method", choices=BASELINE_METHODS, default="uniform", metavar="METHOD",
                   help="baseline method: %(choices)s (default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    p.add_argument("--weights", default=None, metavar="FILE|pretrained",
                   help="state dict to load (weights_only), or 'pretrained'; default: random "
                        "initialisation")
    p.add_argument("--round-to", type=_positive_int, default=8,
                   help="widths are multiples of this (default 8)")
    p.add_argument("--min-ratio", type=_ratio, default=0.1,
                   help="keep at least this fraction of every group (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_prune)


# -- fleet studies: shared flags --------------------------------------------------------

class _Bar:
    """A progress bar on stderr: one line per stage, redrawn in place."""

    def __init__(self, enabled: bool = True):
        self.quiet = not enabled
        self.enabled = enabled and sys.stderr.isatty()
        self.stage = None

    def __call__(self, stage: str, step: int, total: int) -> None:
        if self.quiet:
            return
        if not self.enabled:  # not a terminal: one line per stage, no redrawing
            if stage != self.stage:
                print(f"[{stage}]", file=sys.stderr, flush=True)
                self.stage = stage
            return
        if stage != self.stage and self.stage is not None:
            print(file=sys.stderr)
        self.stage = stage
        total = max(total, 1)
        done = int(30 * min(step, total) / total)
        print(f"\r{stage:<9} [{'#' * done}{'.' * (30 - done)}] {step}/{total}", end="",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.stage is not None:
            print(file=sys.stderr)


def _weights_flag(text: str) -> dict[int, float]:
    """``0=2,3=1`` -> {0: 2.0, 3: 1.0}."""
    out: dict[int, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise argparse.ArgumentTypeError(
                f"cluster weights look like 0=2,3=1 (cluster=weight), got {part!r}")
        c, w = part.split("=", 1)
        try:
            out[int(c)] = float(w)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"cluster weights look like 0=2,3=1 (cluster=weight), got {part!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("no cluster weights given")
    return out


def _k_flag(text: str) -> int | None:
    if text == "auto":
        return None
    value = _positive_int(text)
    return value


def _add_study_flags(p: argparse.ArgumentParser) -> None:
    # Every default comes from StudyOptions, so the CLI, the app and the API agree.
    from hdap_engine.options import BACKENDS
    from hdap_engine.options import default as d

    p.add_argument("--model", required=True, help="model name (see `hdap models`)")
    p.add_argument("--telemetry", required=True, metavar="FILE",
                   help="fleet telemetry (CSV, CSV.gz or Parquet)")
    p.add_argument("--backend", choices=BACKENDS, default=d("backend"),
                   help="where latency is measured: twin (simulated), host (this machine), "
                        "agent (devices running `hdap agent serve`)")
    p.add_argument("--samples", type=_positive_int, default=d("samples"),
                   help="candidates measured on every representative (default %(default)s)")
    p.add_argument("--repeats", type=_positive_int, default=d("repeats"),
                   help="timed runs per measurement (default %(default)s)")
    p.add_argument("--k", type=_k_flag, default=d("k"), metavar="auto|N",
                   help="number of clusters (default auto)")
    p.add_argument("--representatives", type=_positive_int, default=d("representatives"),
                   help="devices measured per cluster (default %(default)s)")
    p.add_argument("--sku", default=d("sku"), help="the SKU to keep when the file has several")
    p.add_argument("--seed", type=int, default=d("seed"))
    p.add_argument("--round-to", type=_positive_int, default=d("round_to"),
                   help="widths are multiples of this (default %(default)s)")
    p.add_argument("--min-ratio", type=_ratio, default=d("min_ratio"),
                   help="keep at least this fraction of every group (default %(default)s)")
    p.add_argument("--threads", type=_positive_int, default=d("host_threads"),
                   help="PyTorch threads for the host backend (default %(default)s)")
    p.add_argument("--clock", choices=("auto", "wall", "thread"), default=d("host_clock"),
                   help="host backend timer: wall time, or the timing thread's CPU time (robust "
                        "to other jobs on a shared machine; one thread only); auto = thread "
                        "with --threads 1")
    p.add_argument("--runtime", choices=("torch", "torchscript", "onnxruntime"),
                   default=d("host_runtime"),
                   help="host backend: what runs the model (default %(default)s; onnxruntime "
                        "as the device agent runs it)")
    p.add_argument("--twin-preset", default=d("twin_preset"),
                   help="twin physics for telemetry without a .twin.parquet sidecar "
                        "(jetson-nano, rpi4)")
    p.add_argument("--agent-token", default=None,
                   help="bearer token of the agents (default: $HDAP_AGENT_TOKEN)")
    p.add_argument("--population", type=_positive_int, default=d("population"),
                   help="search population (default %(default)s; at least 8)")
    p.add_argument("--generations", type=_positive_int, default=d("generations"),
                   help="search generations (default %(default)s)")
    p.add_argument("--refine-rounds", type=int, default=d("refine_rounds"), metavar="N",
                   help="hdap: rounds of measuring the search's favourites and refitting "
                        "(default %(default)s; 0 for none)")
    p.add_argument("--finalists", type=_positive_int, default=d("finalists"),
                   help="search finalists measured before one is chosen (default %(default)s; "
                        "1 for none)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _study_options(args: argparse.Namespace, **extra):
    import os

    from hdap_engine.options import StudyOptions

    return StudyOptions(
        model=args.model, backend=args.backend, samples=args.samples, repeats=args.repeats,
        k=args.k, representatives=args.representatives, sku=args.sku, seed=args.seed,
        round_to=args.round_to, min_ratio=args.min_ratio, host_threads=args.threads,
        host_clock=args.clock, host_runtime=args.runtime,
        twin_preset=args.twin_preset, population=args.population,
        generations=args.generations, refine_rounds=args.refine_rounds,
        finalists=args.finalists,
        agent_token=args.agent_token or os.environ.get("HDAP_AGENT_TOKEN"), **extra)


# -- hdap surrogate ---------------------------------------------------------------------

def _cmd_surrogate(args: argparse.Namespace) -> int:
    import json

    from hdap_engine.fleet.telemetry import plural
    from hdap_engine.study import prepare

    options = _study_options(args, surrogate_mode=args.mode,
                             method="paper" if args.mode == "per-cluster" else "hdap")
    bar = _Bar(not args.quiet and not args.json)
    try:
        ctx = prepare(options, args.telemetry, progress=bar)
    finally:
        bar.close()
    report = ctx.surrogate.report_
    if args.json:
        from hdap_engine.jsonable import jsonable

        print(json.dumps(jsonable({"model": args.model, "backend": ctx.backend.name,
                          "measured_source": ctx.backend.source, "mode": report["mode"],
                          "k": ctx.k, "devices_measured": len(ctx.rep_devices),
                          "overall": report["overall"], "per_cluster": report["per_cluster"],
                          "notes": ctx.notes})))
        return 0
    o = report["overall"]
    print(f"surrogate ({report['mode']}) for {args.model} on {ctx.fleet.source}, "
          f"{ctx.backend.source}: {plural(ctx.k, 'cluster')}, "
          f"{plural(len(ctx.rep_devices), 'device')} measured")
    rows = [{"cluster": "all", "MAPE": f"{o['mape']:.2%}", "within 5%": f"{o['within_5pct']:.1%}",
             "within 10%": f"{o['within_10pct']:.1%}", "train": o["n_train"], "test": o["n_test"]}]
    for c in report["per_cluster"]:
        rows.append({"cluster": c["cluster"], "MAPE": f"{c['mape']:.2%}",
                     "within 5%": f"{c['within_5pct']:.1%}",
                     "within 10%": f"{c['within_10pct']:.1%}", "train": c["n_train"],
                     "test": c["n_test"]})
    _print_table(rows, ["cluster", "MAPE", "within 5%", "within 10%", "train", "test"])
    for note in ctx.notes:
        print(f"note: {note}")
    return 0


def _register_surrogate(sub) -> None:
    p = sub.add_parser("surrogate", help="measure candidates, train the latency surrogate, "
                                         "report its held-out accuracy")
    _add_study_flags(p)
    p.add_argument("--mode", choices=("shared", "per-cluster"), default="shared",
                   help="one model across clusters, or one per cluster as in the paper")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_surrogate)


# -- hdap optimize ----------------------------------------------------------------------

def _cmd_optimize(args: argparse.Namespace) -> int:
    from hdap_engine.pruning.budget import format_macs
    from hdap_engine.study import run_study

    options = _study_options(args, budget=args.macs, objective=args.objective,
                             slo_ms=args.slo_ms, weights=args.weights, method=args.method,
                             model_weights=args.model_weights)
    bar = _Bar(not args.quiet)
    try:
        result = run_study(options, args.telemetry, out_dir=args.out, progress=bar)
    finally:
        bar.close()
    r = result.report
    f = r["fleet"]
    print(f"{args.model} pruned with {args.method} to "
          f"{format_macs(result.context.space.macs(result.widths))} MACs "
          f"(budget {format_macs(result.target_macs)}); measured by {r['measured_source']}")
    rows = [{"cluster": c["cluster"], "devices": c["devices"], "weight": f"{c['weight']:.3f}",
             "predicted ms": "-" if c["predicted_ms"] is None else f"{c['predicted_ms']:.2f}",
             "measured ms": f"{c['measured_ms']:.2f}",
             "unpruned ms": f"{c['unpruned_ms']:.2f}"} for c in r["clusters"]]
    _print_table(rows, ["cluster", "devices", "weight", "predicted ms", "measured ms",
                        "unpruned ms"])
    if r["backend"] == "agent":
        for c in r["clusters"]:
            print(f"cluster {c['cluster']} measured on: "
                  f"{', '.join(c['devices_measured']) or 'no device'}")
    pred = "-" if f["predicted_mean_ms"] is None else f"{f['predicted_mean_ms']:.2f}"
    print(f"fleet: predicted mean {pred} ms, measured mean {f['measured_mean_ms']:.2f} ms, "
          f"p95 {f['measured_p95_ms']:.2f} ms, unpruned {f['unpruned_mean_ms']:.2f} ms, "
          f"speedup {f['speedup']:.2f}x ({f['basis']})")
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"bundle: {result.bundle}  (zip: {result.bundle}.zip)")
    return 0


def _register_optimize(sub) -> None:
    from hdap_engine.options import METHODS
    from hdap_engine.search.objectives import OBJECTIVES

    p = sub.add_parser("optimize", help="prune a model for a fleet: cluster, measure, fit, "
                                        "search, prune, validate, export")
    _add_study_flags(p)
    _add_budget_flag(p)
    p.add_argument("--objective", choices=OBJECTIVES, default="mean",
                   help="fleet objective: weighted mean, p95 over devices, worst cluster, or "
                        "share of devices over --slo-ms")
    p.add_argument("--slo-ms", type=float, default=None, help="latency target for --objective slo")
    p.add_argument("--weights", type=_weights_flag, default=None, metavar="0=2,3=1",
                   help="cluster weights (normalised; clusters not named get 0); "
                        "default: device shares")
    p.add_argument("--method", choices=METHODS, default="hdap", metavar="METHOD",
                   help="%(choices)s (default %(default)s)")
    p.add_argument("--model-weights", default=None, metavar="FILE|pretrained",
                   help="state dict of the model to prune (default: random initialisation)")
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    p.set_defaults(func=_cmd_optimize)


# -- hdap bench -------------------------------------------------------------------------

def _cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from hdap_engine.benchmark import format_rows, run_bench, run_sweep
    from hdap_engine.fleet.telemetry import plural
    from hdap_engine.jsonable import jsonable

    options = _study_options(args, budget=args.macs)
    bar = _Bar(not args.quiet)
    if args.clustering_check:
        from hdap_engine.benchmark import clustering_check

        try:
            result = clustering_check(options, args.telemetry, progress=bar)
        finally:
            bar.close()
        rows = [{"candidate": r["candidate"], "MACs": f"{r['macs'] / 1e9:.3f} G",
                 "representatives ms": f"{r['estimate_ms']:.3f}",
                 "all devices ms": f"{r['fleet_mean_ms']:.3f}", "error": f"{r['error']:+.2%}"}
                for r in result["rows"]]
        _print_table(rows, ["candidate", "MACs", "representatives ms", "all devices ms", "error"])
        print(f"{result['devices_measured']} devices measured ({result['k']} clusters) instead of "
              f"{result['n_devices']:,}: {result['reduction']:.0f}x fewer; largest error "
              f"{result['max_abs_error']:.2%}, mean {result['mean_abs_error']:.2%}")
        if args.json:
            Path(args.json).write_text(json.dumps(jsonable(result), indent=1))
        return 0
    try:
        if args.sweep:
            result = run_sweep(options, args.telemetry, [b.strip() for b in args.sweep.split(",")
                                                         if b.strip()], progress=bar)
        else:
            result = run_bench(options, args.telemetry, methods=args.methods, oracle=args.oracle,
                               progress=bar)
    finally:
        bar.close()
    if args.sweep:
        rows = format_rows(result["points"])
        for r, p in zip(rows, result["points"], strict=True):
            r["budget"] = p["budget"]
        _print_table(rows, ["budget", "method", "MACs", "fleet mean ms", "p95 ms", "speedup"])
    else:
        print(f"{args.model} at {args.macs} MACs on {result['fleet']} "
              f"({plural(result['n_devices'], 'device')}, {plural(result['k'], 'cluster')}), "
              f"measured by {result['measured_source']}; "
              f"unpruned fleet mean {result['unpruned_mean_ms']:.2f} ms")
        _print_table(format_rows(result["rows"]),
                     ["method", "MACs", "fleet mean ms", "p95 ms", "worst cluster ms", "speedup",
                      "search s", "device measurements"])
        if result.get("validation"):
            print(f"validation: {result['validation']}")
        for note in result.get("notes", []):
            print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(result), indent=1))
        print(f"json: {args.json}")
    return 0


def _methods_flag(text: str) -> tuple[str, ...]:
    from hdap_engine.options import METHODS

    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}" if unknown
            else "no methods given")
    return names


def _register_bench(sub) -> None:
    from hdap_engine.options import METHODS

    p = sub.add_parser("bench", help="every method on the same fleet and budget, one table")
    _add_study_flags(p)
    _add_budget_flag(p)
    p.add_argument("--oracle", action="store_true",
                   help="also search on the twin's ground truth over every device (slow)")
    p.add_argument("--methods", type=_methods_flag, default=METHODS, metavar="M1,M2,...",
                   help=f"methods to compare (default all: {','.join(METHODS)})")
    p.add_argument("--sweep", default=None, metavar="B1,B2,...",
                   help="budget sweep (ours and uniform) for a Pareto curve instead of the table")
    p.add_argument("--clustering-check", action="store_true",
                   help="instead: compare the representatives' estimate of the fleet mean with "
                        "every device's ground truth for random candidates (twin only)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the result as JSON")
    p.set_defaults(func=_cmd_bench)


# -- hdap app --------------------------------------------------------------------------

def _cmd_app(args: argparse.Namespace) -> int:
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    home = root / "app" / "Home.py"
    if not home.is_file():
        raise HdapError(f"the app is not installed next to the engine ({home} is missing)")
    cmd = [sys.executable, "-m", "streamlit", "run", str(home),
           "--server.headless", "true", "--server.port", str(args.port),
           "--server.address", args.address, "--browser.gatherUsageStats", "false"]
    print(f"HDAP Studio on http://{args.address}:{args.port}", flush=True)
    # Run from the project root so that .streamlit/config.toml (upload limit) applies.
    return subprocess.call(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})


def _register_app(sub) -> None:
    p = sub.add_parser("app", help="start the web app (headless Streamlit server)")
    p.add_argument("--port", type=_positive_int, default=8501)
    p.add_argument("--address", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; 0.0.0.0 to serve the network)")
    p.set_defaults(func=_cmd_app)


# -- hdap bench-macs --------------------------------------------------------------------

def _cmd_bench_macs(args: argparse.Namespace) -> int:
    import statistics
    import time

    import numpy as np

    from hdap_engine.pruning.space import PruningSpace

    space = PruningSpace.for_model(args.model)
    widths = space.random_widths(args.candidates, np.random.default_rng(0))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        space.macs(widths)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"analytic MACs, {args.model} ({space.n_groups} groups, {len(space.layers.names)} "
          f"layers): {args.candidates / med:,.0f} candidates/s "
          f"(median of {args.repeats} runs of {args.candidates:,} candidates, {med * 1e3:.1f} ms)")
    return 0


def _register_bench_macs(sub) -> None:
    p = sub.add_parser("bench-macs", help="benchmark the analytic MACs formula")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--candidates", type=_positive_int, default=100_000)
    p.add_argument("--repeats", type=_positive_int, default=7)
    p.set_defaults(func=_cmd_bench_macs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hdap",
        description="HDAP Studio: prune one network for a whole fleet of drifted edge devices.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return parser


def _register_agent(sub: argparse._SubParsersAction) -> None:
    # The agent's flags live in its package so that a device can run
    # `python -m hdap_engine.agent` without this module's other commands.
    from hdap_engine.agent.commands import add_agent_parser

    add_agent_parser(sub)


# --------------------------------------------------------------------------- fleet


def _register_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check a fleet telemetry file (CSV, CSV.gz, Parquet) and summarise it",
        description="Check a fleet telemetry file against the telemetry contract.",
    )
    p.add_argument("file", help="telemetry: CSV, CSV.gz or Parquet, one row per device")
    p.add_argument("--sku", help="keep only this SKU (required when the file holds several)")
    p.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    from hdap_engine.fleet.telemetry import load_fleet

    print(load_fleet(args.file, sku=args.sku).summary())
    return 0


def _k_flag(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be auto or a whole number, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"--k must be auto or >= 1, got {k}")
    return k


def _register_cluster(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cluster",
        help="cluster a fleet's devices and print the cluster profiles",
        description="Cluster devices by their probe latencies (k chosen automatically unless --k).",
    )
    p.add_argument("file", help="telemetry: CSV, CSV.gz or Parquet, one row per device")
    p.add_argument("--k", type=_k_flag, default=None, metavar="auto|N", help="number of clusters (default: auto)")
    p.add_argument("--sku", help="keep only this SKU (required when the file holds several)")
    p.add_argument("--representatives", type=_positive_int, default=3, metavar="R",
                   help="devices per cluster closest to its centroid (default 3)")
    p.add_argument("--context", default="", metavar="COL,...",
                   help="numeric context columns to use as features too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="assignments.csv", help="write device_id,cluster to this CSV")
    p.set_defaults(func=_cmd_cluster)


def _cmd_cluster(args: argparse.Namespace) -> int:
    from hdap_engine.fleet.clustering import Clustering, ClusteringOptions, write_assignments
    from hdap_engine.fleet.telemetry import load_fleet

    if args.out:
        # Fail before the work, not after it.
        folder = Path(args.out).resolve().parent
        if not folder.is_dir():
            raise HdapError(f"{args.out}: folder {folder} does not exist; create it or choose another --out")
    fleet = load_fleet(args.file, sku=args.sku)
    options = ClusteringOptions(
        k=args.k,
        representatives=args.representatives,
        context_features=tuple(c.strip() for c in args.context.split(",") if c.strip()),
        seed=args.seed,
    )
    clustering = Clustering(options).fit(fleet)
    # Written before printing, so that a closed pipe (| head) cannot lose it.
    path = write_assignments(clustering, args.out) if args.out else None
    sku = f", SKU {fleet.sku}" if fleet.sku is not None else ""
    print(f"{fleet.source}: {fleet.n_devices:,} devices, {len(fleet.probe_columns)} probe columns{sku}")
    print(clustering.describe())
    for note in (*fleet.notes, *clustering.notes_):
        print(f"note: {note}")
    print()
    print(_profile_table(clustering.profiles_))
    if path is not None:
        print(f"\nwrote {path} ({fleet.n_devices:,} rows: device_id,cluster)")
    return 0


def _profile_table(profiles) -> str:
    """Cluster profiles as aligned text: probes as x fleet median, context below."""
    table = profiles.drop(columns=["context"]).copy()
    table["devices"] = table["devices"].map("{:,}".format)
    table["share"] = table["share"].map("{:.1%}".format)
    rel = [c for c in table.columns if c.startswith("rel_")]
    for c in rel:
        table[c] = table[c].map("{:.2f}x".format)
    table = table.rename(columns={c: c[4:] for c in rel})
    lines = [
        "probe columns: median latency of the cluster / median of the fleet",
        table.to_string(index=False),
    ]
    if profiles["context"].astype(bool).any():
        lines += ["", "context (most distinctive first):"]
        lines += [f"  {row.cluster}: {row.context or '-'}" for row in profiles.itertuples()]
    return "\n".join(lines)


def _register_drift(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "drift",
        help="compare two telemetry snapshots: devices new, gone and moved between clusters",
        description="Match devices by device_id, assign NEW's devices to OLD's clusters, cluster NEW "
                    "afresh, and report moves, shifted clusters and clusters only in NEW.",
    )
    p.add_argument("old", help="the snapshot the deployed model was optimised for")
    p.add_argument("new", help="the latest snapshot (same probe suite)")
    p.add_argument("--k", type=_k_flag, default=None, metavar="auto|N", help="clusters (default: auto)")
    p.add_argument("--sku", help="keep only this SKU in both snapshots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--html", metavar="OUT", help="write the Sankey of the moves as HTML")
    p.set_defaults(func=_cmd_drift)


def _cmd_drift(args: argparse.Namespace) -> int:
    import json

    from hdap_engine.fleet.clustering import ClusteringOptions
    from hdap_engine.fleet.drift import DriftOptions, compare
    from hdap_engine.fleet.telemetry import load_fleet, plural
    from hdap_engine.jsonable import jsonable

    old = load_fleet(args.old, sku=args.sku)
    new = load_fleet(args.new, sku=args.sku)
    report = compare(old, new, DriftOptions(clustering=ClusteringOptions(k=args.k, seed=args.seed)))
    d = report.to_dict()
    print(f"{old.source} -> {new.source}: {d['devices_matched']:,} devices in both, "
          f"{plural(d['devices_new'], 'new device')}, {plural(d['devices_gone'], 'device')} gone, "
          f"{plural(d['devices_moved'], 'device')} moved ({d['share_moved']:.1%} of those in both)")
    print(f"clusters of {old.source}: {report.old_clustering.describe()}")
    if d["moves"]:
        _print_table([{"from": m["from"], "to": m["to"], "devices": f"{m['devices']:,}"}
                      for m in d["moves"][:12]], ["from", "to", "devices"])
    rows = [{"cluster": c["cluster"], "share then": f"{c['old_share']:.1%}",
             "share now": f"{c['new_share']:.1%}",
             "probes shifted (median now / then)": ", ".join(
                 f"{p} {c['probes'][p]:+.1%}" for p in c["shifted_probes"]) or "-",
             "shifted": "yes" if c["shifted"] else ""} for c in d["clusters"]]
    print()
    _print_table(rows, ["cluster", "share then", "share now", "probes shifted (median now / then)",
                        "shifted"])
    for c in d["clusters_only_in_new"]:
        print(f"only in {new.source}: {c['devices']:,} devices ({c['share']:.1%}), "
              f"{c['distance']:.1f} radii from cluster {c['nearest_old']}")
    for note in (*old.notes, *new.notes, *d["notes"]):
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(jsonable(d), indent=1))
        print(f"json: {args.json}")
    if args.html:
        from hdap_engine.charts import drift_sankey

        drift_sankey(report.flows, report.old_clustering.k_, old_label=old.source,
                     new_label=new.source).write_html(args.html, include_plotlyjs=True)
        print(f"sankey: {args.html}")
    return 0


# Each entry adds one subcommand and sets ``func``; commands live next to
# their flags so that a new command is one function here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_models,
    _register_prune,
    _register_bench_macs,
    _register_app,
    _register_surrogate,
    _register_optimize,
    _register_bench,
    _register_agent,
    _register_validate,
    _register_cluster,
    _register_drift,
]


def _register_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate a drifted fleet with the device twin",
                       description="Write PREFIX.csv (telemetry) and PREFIX.twin.parquet "
                                   "(each device's latent state and drift mechanism).")
    p.add_argument("--sku", default="jetson-nano", help="device preset (jetson-nano, rpi4)")
    p.add_argument("--devices", type=int, default=5000, help="number of devices")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--out", required=True, help="output prefix, e.g. sample_data/jetson_nano_fleet")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from hdap_engine.fleet.simulate import simulate_fleet, write_fleet

    telemetry, states = simulate_fleet(args.sku, args.devices, seed=args.seed)
    csv_path, twin_path = write_fleet(args.out, telemetry, states)
    counts = states["mechanism"].value_counts()
    print(f"wrote {csv_path} ({len(telemetry)} devices, sku {args.sku}, seed {args.seed})")
    print(f"wrote {twin_path} (latent state per device)")
    for name, c in counts.items():
        print(f"  {name:20s} {c:6d}  ({c / len(states):.0%})")
    return 0


def _register_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="run the standard probe suite on this machine",
                       description="Time the standard probes with PyTorch here and write one "
                                   "telemetry row (sku 'host').")
    p.add_argument("--out", help="CSV file to write (default: print only)")
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    p.add_argument("--device-id", help="device id (default: this machine's hostname)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per probe (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up rounds")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    import socket
    from pathlib import Path

    import pandas as pd

    from hdap_engine.fleet.probes import host_context, run_probe_suite

    if args.repeats < 1 or args.warmup < 0:
        raise HdapError("--repeats must be at least 1 and --warmup at least 0")
    if args.threads is not None and args.threads < 1:
        raise HdapError("--threads must be at least 1")
    probes = run_probe_suite(repeats=args.repeats, warmup=args.warmup, threads=args.threads)
    row = {"device_id": args.device_id or socket.gethostname(), "sku": "host", **probes,
           **host_context(args.threads)}
    df = pd.DataFrame([row])
    if args.out:
        out = Path(args.out)
        if args.append and out.exists():
            try:
                old = pd.read_csv(out)
            except Exception as exc:
                raise HdapError(f"cannot append to {out}: {exc}") from None
            if row["device_id"] in set(old.get("device_id", pd.Series(dtype=str)).astype(str)):
                raise HdapError(f"{out} already has device_id {row['device_id']!r}; "
                                "pass another --device-id")
            df = pd.concat([old, df], ignore_index=True)
        try:
            df.to_csv(out, index=False, float_format="%.6g")
        except OSError as exc:
            raise HdapError(f"cannot write {out}: {exc}") from None
    for k, v in row.items():
        print(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


COMMANDS += [_register_simulate, _register_probe]


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except HdapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `hdap ... | head`: the reader left; say nothing more (Python docs' recipe).
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
