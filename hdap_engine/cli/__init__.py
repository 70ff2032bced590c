"""The `hdap` command: a thin caller of the engine, like the app.

Every command parses its flags, calls into `hdap_engine`, and prints. A user
error (`HdapError`, a bad flag) prints one ``error: ...`` line to stderr and
exits 2; nothing a user types produces a traceback. Commands live by topic in
this package (`study`, `fleet`, `tools`); each registers one subcommand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from hdap_engine.cli import data, fleet, lifecycle, rollout, study, tools
from hdap_engine.cli.common import Parser
from hdap_engine.errors import HdapError

EXIT_USAGE = 2

# Each entry adds one subcommand and sets ``func``; a new command is one function
# in the module of its topic and one entry here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    tools.register_models,
    study.register_prune,
    tools.register_bench_macs,
    tools.register_app,
    study.register_surrogate,
    study.register_optimize,
    study.register_bench,
    rollout.register_rollout,
    tools.register_agent,
    fleet.register_validate,
    fleet.register_cluster,
    fleet.register_simulate,
    fleet.register_probe,
    lifecycle.register_drift,
    tools.register_training,
    data.register_data,
]


def build_parser() -> argparse.ArgumentParser:
    """The `hdap` parser with every registered command."""
    parser = Parser(
        prog="hdap",
        description="HDAP Studio: prune one network for a whole fleet of drifted edge devices.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return parser


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
