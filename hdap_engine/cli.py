"""The `hdap` command: a thin caller of the engine, like the app.

Every command parses its flags, calls into `hdap_engine`, and prints. A user
error (`HdapError`, a bad flag) prints one ``error: ...`` line to stderr and
exits 2; nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

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
    from hdap_engine.study import BASELINE_METHODS

    p = sub.add_parser("prune", help="prune a model to a MACs budget with a baseline method")
    p.add_argument("--model", required=True, help="model name (see `hdap models`)")
    _add_budget_flag(p)
    p.add_argument("--method", choices=BASELINE_METHODS, default="uniform")
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


# Each entry adds one subcommand and sets ``func``; commands live next to
# their flags so that a new command is one function here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_models,
    _register_prune,
    _register_bench_macs,
    _register_app,
]


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


if __name__ == "__main__":
    raise SystemExit(main())
