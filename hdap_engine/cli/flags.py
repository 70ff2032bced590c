"""Command-line flags built from `hdap_engine.options`: one flag per option field.

Each option field carries its flag, help, parser and old spellings in its
metadata; `add_option_flags` turns fields into argparse flags (their defaults
read from the field, or from a named recipe such as `SCRATCH`), `add_study_flags`
adds a study's, and `study_options` turns the parsed flags back into
`StudyOptions`, so the CLI, the app and the API share one set of defaults.
Every flag made here remembers its field (``action.option_field``): the test of
the flags finds a flag whose default was written by hand.
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


def columns_flag(text: str) -> tuple[str, ...]:
    """``a, b,`` -> ("a", "b")."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


def share_flag(text: str) -> float:
    """``0.03`` or ``3%`` -> 0.03, a share in [0, 1)."""
    try:
        value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.03 or 3%, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {text!r}")
    return value


def input_shape_flag(text: str) -> tuple[int, int, int]:
    """``3,224,224`` (or ``3x224x224``) -> (3, 224, 224)."""
    from hdap_engine.models.spec import parse_input_shape

    try:
        return parse_input_shape(text)
    except HdapError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--input-shape ")) from None


def resolve_model_arg(args: argparse.Namespace) -> str:
    """``args.model`` (with ``args.input_shape``) resolved at the edge into the model's key,
    which replaces it: a file is kept in the workspace, so later processes need no path."""
    from hdap_engine.models.zoo import model_key

    args.model = model_key(args.model, getattr(args, "input_shape", None))
    if hasattr(args, "input_shape"):
        args.input_shape = None
    return args.model


# How each `parse` name of an option's metadata reads the text of its flag.
PARSERS = {"positive_int": positive_int, "ratio": ratio, "int": int, "float": float_flag,
            "k": k_flag, "cluster_weights": cluster_weights_flag, "columns": columns_flag,
            "share": share_flag, "str": str, "input_shape": input_shape_flag, None: None,
            "off": None}


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
                     required: tuple[str, ...] = (), base=None, choices: dict | None = None,
                     ) -> None:
    """One flag per option field, with its default, help and parser from the field itself.

    ``base`` is an options object whose values are the defaults instead of the
    fields' own (`SCRATCH` for `hdap train`); ``choices`` narrows a field's
    choices by name (`hdap prune` offers the baseline methods), its first
    choice then being the default.
    """
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
        default = getattr(base, f.name) if base is not None else \
            None if f.default is MISSING else f.default
        allowed = meta.get("choices")
        if allowed == ("<registry>",):
            allowed = method_names()
        if choices and f.name in choices:
            allowed = tuple(choices[f.name])
            default = allowed[0]
        old = tuple(o for o in meta.get("old") or () if claimed.get(o) == f.name)
        names = [meta["flag"], *(meta.get("aliases") or ()), *old]
        kwargs = {"dest": f.name, "help": meta.get("help") or None,
                  "metavar": meta.get("metavar")}
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if allowed:
            kwargs["choices"] = allowed
        if meta.get("parse") == "off":
            # A setting that is on by default: its flag turns it off (`--no-warm-start`).
            kwargs.pop("metavar", None)
            action = p.add_argument(*names, action="store_false", **kwargs)
            action.option_field = f
            continue
        if PARSERS[meta.get("parse")] is not None:
            kwargs["type"] = PARSERS[meta["parse"]]
        if old:
            kwargs.update(action=OldSpelling, old=old)
            kwargs["help"] = (kwargs["help"] or "") + f" ({', '.join(old)}: old spelling)"
        action = p.add_argument(*names, **kwargs)
        action.option_field = f


def add_fields(p: argparse.ArgumentParser, options_class, *names: str, **kwargs) -> None:
    """The flags of some fields of ``options_class`` (all that have one when no name is given),
    in the order named."""
    from hdap_engine.options import cli_fields

    have = {f.name: f for f in cli_fields(options_class)}
    add_option_flags(p, [have[n] for n in names] if names else list(have.values()), **kwargs)


def add_study_flags(p: argparse.ArgumentParser, *, query: bool = False,
                     also: tuple[str, ...] = ()) -> None:
    """The flags of a fleet study; every default comes from `StudyOptions`.

    ``also`` adds the settings ``method`` and ``model_weights``, which only
    some commands take.
    """
    from hdap_engine.options import cli_fields

    top = [f for f in cli_fields("") if f.name not in ("method", "model_weights")
           or f.name in also]
    fields = top + cli_fields("clustering", "measurement", "quantize", "search") + [
        f for f in cli_fields("surrogate") if f.name == "twin_prior"]  # --mode: hdap surrogate
    if query:
        fields += cli_fields("query", "accuracy")
    if query:  # a budget in MACs or in latency: one of the two, and only one
        budgets = [f for f in fields if f.name in ("budget", "latency_ms")]
        add_option_flags(p, [f for f in fields if f not in budgets], required=("model",))
        add_option_flags(p.add_mutually_exclusive_group(required=True), budgets)
    else:
        add_option_flags(p, fields, required=("model", "budget"))
    p.add_argument("--telemetry", required=True, metavar="FILE",
                   help="fleet telemetry (CSV, CSV.gz or Parquet)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def study_options(args: argparse.Namespace, **extra):
    """`StudyOptions` from the parsed flags (each flag's dest is its setting's name)."""
    import os

    from hdap_engine.options import StudyOptions, cli_fields

    resolve_model_arg(args)
    names = {f.name for f in cli_fields("", "clustering", "measurement", "surrogate", "search",
                                        "query", "accuracy", "quantize")}
    settings = {n: getattr(args, n) for n in names if hasattr(args, n)}
    settings["agent_token"] = settings.get("agent_token") or os.environ.get("HDAP_AGENT_TOKEN")
    return StudyOptions.of(**{**settings, **extra})


def methods_flag(text: str) -> list[str]:
    from hdap_engine.search.methods import get_method

    names = list(columns_flag(text))
    if not names:
        raise argparse.ArgumentTypeError("no method given")
    for name in names:
        try:
            get_method(name)
        except HdapError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return names
