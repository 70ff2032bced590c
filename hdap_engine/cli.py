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


def _register_agent(sub: argparse._SubParsersAction) -> None:
    # The agent's flags live in its package so that a device can run
    # `python -m hdap_engine.agent` without this module's other commands.
    from hdap_engine.agent.commands import add_agent_parser

    add_agent_parser(sub)


# Each entry adds one subcommand and sets ``func``; commands live next to
# their flags so that a new command is one function here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []
COMMANDS.append(_register_agent)


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
