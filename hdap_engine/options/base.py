"""How an option is written: a dataclass field that carries its command-line flag."""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any

from hdap_engine.errors import HdapError


def option(default: Any = MISSING, *, flag: str | None = None, help: str = "",
           parse: str | None = None, choices: tuple | None = None, metavar: str | None = None,
           default_factory: Any = MISSING, aliases: tuple[str, ...] = (),
           old: tuple[str, ...] = ()) -> Any:
    """A dataclass field with its command-line flag.

    ``parse`` names how the CLI reads the text (``positive_int``, ``ratio``,
    ``int``, ``float``, ``k``, ``cluster_weights``, ``columns``, ``share``,
    ``str``; `hdap_engine.cli.flags.PARSERS`; ``off`` for a setting that is on by default
    and whose flag turns it off); ``choices`` are offered as they
    are (or, for ``method``, read from the registry when the parser is built).
    ``aliases`` are other spellings of the same flag; ``old`` are earlier
    spellings the CLI still accepts, with a note saying so.
    """
    meta = {"flag": flag, "help": help, "parse": parse, "choices": choices,
            "metavar": metavar, "aliases": aliases, "old": old}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def one_of(name: str, value, allowed) -> None:
    """Refuse ``value`` unless it is in ``allowed``, naming the choices."""
    if value not in allowed:
        raise HdapError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
