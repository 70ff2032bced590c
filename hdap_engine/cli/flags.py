"""Command-line flags built from `hdap_engine.options`: one flag per option field.

Each field of `StudyOptions`'s sections carries its flag, help, parser and old
spellings in its metadata; `add_study_flags` turns them into argparse flags and
`study_options` turns the parsed flags back into `StudyOptions`, so the CLI,
the app and the API share one set of defaults.
"""

from __future__ import annotations

import argparse
import sys

from hdap_engine.cli.common import positive_int, ratio
from hdap_engine.errors import HdapError


def cluster_weights_flag(text: str) -> dict[int, float]:
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


def k_flag(text: str) -> int | None:
    """``auto`` -> None (choose k), else a whole number >= 1 (used by the study flags too)."""
    if text.strip().lower() == "auto":
        return None
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k must be auto or a whole number, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"--k must be auto or >= 1, got {k}")
    return k


def float_flag(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


# How each `parse` name of an option's metadata reads the text of its flag.
PARSERS = {"positive_int": positive_int, "ratio": ratio, "int": int, "float": float_flag,
            "k": k_flag, "cluster_weights": cluster_weights_flag, "str": str, None: None}


class OldSpelling(argparse.Action):
    """Stores the value; an earlier spelling of the flag also prints a note saying so."""

    def __init__(self, *args, old: tuple[str, ...] = (), **kwargs):
        self.old = old
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old:
            print(f"note: {option_string} is now {self.option_strings[0]}; the old spelling "
                  "still works", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_option_flags(p: argparse.ArgumentParser, option_fields: list,
                      required: tuple[str, ...] = ()) -> None:
    """One flag per option field, with its default, help and parser from the field itself."""
    from dataclasses import MISSING

    from hdap_engine.search.methods import method_names

    # An old spelling two fields once shared ("--weights") goes to the later field:
    # query fields come last, and `optimize --weights 0=2` meant cluster weights.
    claimed: dict[str, str] = {}
    for f in reversed(option_fields):
        for old in f.metadata.get("old") or ():
            claimed.setdefault(old, f.name)
    for f in option_fields:
        meta = f.metadata
        default = None if f.default is MISSING else f.default
        choices = meta.get("choices")
        if choices == ("<registry>",):
            choices = method_names()
        old = tuple(o for o in meta.get("old") or () if claimed.get(o) == f.name)
        names = [meta["flag"], *(meta.get("aliases") or ()), *old]
        kwargs = {"dest": f.name, "help": meta.get("help") or None,
                  "metavar": meta.get("metavar")}
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if choices:
            kwargs["choices"] = choices
        if PARSERS[meta.get("parse")] is not None:
            kwargs["type"] = PARSERS[meta["parse"]]
        if old:
            kwargs.update(action=OldSpelling, old=old)
            kwargs["help"] = (kwargs["help"] or "") + f" ({', '.join(old)}: old spelling)"
        p.add_argument(*names, **kwargs)


def add_study_flags(p: argparse.ArgumentParser, *, query: bool = False,
                     also: tuple[str, ...] = ()) -> None:
    """The flags of a fleet study; every default comes from `StudyOptions`.

    ``also`` adds the settings ``method`` and ``model_weights``, which only
    some commands take.
    """
    from hdap_engine.options import cli_fields

    top = [f for f in cli_fields("") if f.name not in ("method", "model_weights")
           or f.name in also]
    fields = top + cli_fields("clustering", "measurement", "search")
    if query:
        fields += cli_fields("query", "accuracy")
    add_option_flags(p, fields, required=("model", "budget"))
    p.add_argument("--telemetry", required=True, metavar="FILE",
                   help="fleet telemetry (CSV, CSV.gz or Parquet)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def study_options(args: argparse.Namespace, **extra):
    """`StudyOptions` from the parsed flags (each flag's dest is its setting's name)."""
    import os

    from hdap_engine.options import StudyOptions, cli_fields

    names = {f.name for f in cli_fields("", "clustering", "measurement", "search", "query",
                                        "accuracy")}
    settings = {n: getattr(args, n) for n in names if hasattr(args, n)}
    settings["agent_token"] = settings.get("agent_token") or os.environ.get("HDAP_AGENT_TOKEN")
    return StudyOptions.of(**settings, **extra)


def methods_flag(text: str) -> list[str]:
    from hdap_engine.search.methods import get_method

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no method given")
    for name in names:
        try:
            get_method(name)
        except HdapError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names
