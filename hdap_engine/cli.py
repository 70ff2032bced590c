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


# Each entry adds one subcommand and sets ``func``; commands live next to
# their flags so that a new command is one function here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


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


if __name__ == "__main__":
    raise SystemExit(main())
