"""What every command shares: the parser that turns a bad flag into one error line,
number parsers, the progress bar and plain tables."""

from __future__ import annotations

import argparse
import sys

from hdap_engine.errors import HdapError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one `error:` line, exit 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        raise HdapError(f"{message} (see `{self.prog} --help`)")


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Plain fixed-width table on stdout."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c)
              for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def write_json(path, doc) -> None:
    """Write ``doc`` to ``path`` as strict JSON (numpy values made plain), what every
    ``--json OUT`` flag writes."""
    import json
    from pathlib import Path

    from hdap_engine.infra.jsonable import jsonable

    Path(path).write_text(json.dumps(jsonable(doc), indent=1))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


class Bar:
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
