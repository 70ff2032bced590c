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


def _cmd_placeholder(args: argparse.Namespace) -> int:
    raise HdapError(f"`{args.command}` is not available yet")


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


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
        "",
        "context (most distinctive first):",
    ]
    lines += [f"  {row.cluster}: {row.context or '-'}" for row in profiles.itertuples()]
    return "\n".join(lines)


# Each entry adds one subcommand and sets ``func``; commands live next to
# their flags so that a new command is one function here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_validate,
    _register_cluster,
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
    except BrokenPipeError:
        # `hdap ... | head`: the reader left; say nothing more (Python docs' recipe).
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
