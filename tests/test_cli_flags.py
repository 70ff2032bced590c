"""Study flags are built from the options: defaults agree, old spellings still work and say so."""

from __future__ import annotations

import dataclasses

import pytest

from hdap_engine.cli import build_parser
from hdap_engine.cli.flags import study_options
from hdap_engine.options import StudyOptions, default


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_every_study_flag_default_is_the_options_default():
    args = _parse("optimize", "--model", "resnet56", "--telemetry", "f.csv", "--macs", "0.5",
                  "--out", "d")
    options = study_options(args)
    assert options == StudyOptions.of(model="resnet56", budget="0.5")
    assert args.samples == default("samples") and args.finalists == default("finalists")


@pytest.mark.parametrize("argv,setting,value", [
    (["optimize", "--model", "resnet56", "--telemetry", "f.csv", "--macs", "0.5", "--out", "d",
      "--weights", "0=2"], "cluster_weights", {0: 2.0}),
    (["prune", "--model", "resnet56", "--macs", "0.5", "--out", "d", "--weights", "w.pt"],
     "model_weights", "w.pt"),
])
def test_an_old_flag_spelling_works_and_says_what_it_is_now(capsys, argv, setting, value):
    args = _parse(*argv)
    assert getattr(args, setting) == value
    new = "--" + setting.replace("_", "-")
    assert f"--weights is now {new}" in capsys.readouterr().err


def test_the_new_spellings_say_nothing(capsys):
    args = _parse("optimize", "--model", "resnet56", "--telemetry", "f.csv", "--macs", "0.5",
                  "--out", "d", "--cluster-weights", "1=1", "--model-weights", "w.pt")
    assert args.cluster_weights == {1: 1.0} and args.model_weights == "w.pt"
    assert capsys.readouterr().err == ""


def test_every_search_effort_is_a_valid_plan_and_an_unknown_one_is_one_error():
    from hdap_engine.errors import HdapError
    from hdap_engine.options import SEARCH_EFFORTS, search_effort

    populations = [StudyOptions.of(**search_effort(name)).search.population
                   for name in ("quick", "standard", "thorough")]
    assert populations == sorted(populations) and len(set(populations)) == 3
    assert search_effort("standard") == {} and list(SEARCH_EFFORTS) == ["quick", "standard",
                                                                          "thorough"]
    with pytest.raises(HdapError, match="unknown search effort 'magic'; choose one of: quick"):
        search_effort("magic")


# -- every flag of every command against `hdap_engine.options` ---------------------------------

def _commands(parser, path=()):
    """(command path, parser) of every command and sub-action (``("agent", "serve")``)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def _options_classes() -> list[type]:
    import hdap_engine.options as options

    return [obj for name in options.__all__ if isinstance(obj := getattr(options, name), type)
            and dataclasses.is_dataclass(obj)]


def _family(cls) -> str:
    """A study's sections and `StudyOptions` are one family of flags; other classes their own."""
    sections = {f.default_factory for f in dataclasses.fields(StudyOptions)
                if f.default_factory is not dataclasses.MISSING}
    return "study" if cls is StudyOptions or cls in sections else cls.__name__


# The agent runs on devices as `python -m hdap_engine.agent`: its flags' defaults are the
# device protocol's (`hdap_engine.agent.protocol`), not a step of the engine.
NOT_OPTIONS = ("agent",)


def _problems(parser) -> list[str]:
    """Every flag that does not agree with `hdap_engine.options`, or spells a default by hand."""
    import argparse

    from hdap_engine.cli.flags import PARSERS
    from hdap_engine.options import SCRATCH
    from hdap_engine.search.methods import method_names

    owner = {id(f): cls for cls in _options_classes() for f in dataclasses.fields(cls)}
    flags: dict[str, set[str]] = {}
    for cls in _options_classes():
        for f in dataclasses.fields(cls):
            if f.metadata.get("flag"):
                flags.setdefault(_family(cls), set()).add(f.metadata["flag"])
    problems = []
    for path, sub in _commands(parser):
        command = " ".join(path)
        actions = [a for a in sub._actions if a.option_strings
                   and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        derived = [a for a in actions if hasattr(a, "option_field")]
        families = {_family(owner[id(a.option_field)]) for a in derived}
        for a in derived:
            f, cls = a.option_field, owner[id(a.option_field)]
            meta = f.metadata
            want_default = getattr(SCRATCH, f.name) if path == ("train",) and \
                hasattr(SCRATCH, f.name) else f.default
            want_choices = meta["choices"]
            if want_choices == ("<registry>",):
                want_choices = tuple(method_names())
            if path == ("prune",) and f.name == "method":  # a baseline: the registry's first
                want_choices = tuple(method_names(searches=False))
                want_default = want_choices[0]
            if meta["flag"] not in a.option_strings:
                problems.append(f"{command} {a.option_strings}: not {cls.__name__}.{f.name}'s flag")
            if not a.required and a.default != want_default:
                problems.append(f"{command} {meta['flag']}: default {a.default!r}, but "
                                f"{cls.__name__}.{f.name} says {want_default!r}")
            if tuple(a.choices or ()) != tuple(want_choices or ()):
                problems.append(f"{command} {meta['flag']}: choices {a.choices!r}, but "
                                f"{cls.__name__}.{f.name} says {want_choices!r}")
            if a.type is not PARSERS[meta["parse"]]:
                problems.append(f"{command} {meta['flag']}: not parsed as {meta['parse']}")
        if path[0] in NOT_OPTIONS:
            continue
        for a in actions:
            if hasattr(a, "option_field"):
                continue
            if a.default not in (None, False, argparse.SUPPRESS):
                problems.append(f"{command} {a.option_strings[0]}: default {a.default!r} "
                                "written by hand (write it in hdap_engine.options)")
            taken = set(a.option_strings) & set().union(*(flags[f] for f in families))
            if taken:
                problems.append(f"{command} {sorted(taken)}: an option's flag added by hand "
                                "(build it from its field: hdap_engine.cli.flags)")
    return problems


def test_every_flag_of_every_command_is_built_from_its_option():
    assert _problems(build_parser()) == []


def test_every_option_with_a_flag_is_offered_by_a_command():
    offered = {id(a.option_field) for _, sub in _commands(build_parser()) for a in sub._actions
               if hasattr(a, "option_field")}
    missing = [f"{cls.__name__}.{f.name}" for cls in _options_classes()
               for f in dataclasses.fields(cls) if f.metadata.get("flag") and id(f) not in offered]
    assert missing == []


def test_a_default_written_by_hand_is_found():
    import argparse

    from hdap_engine.cli.flags import add_fields
    from hdap_engine.options import ClusteringPlan

    parser = argparse.ArgumentParser(prog="hdap")
    sub = parser.add_subparsers()
    cluster = sub.add_parser("cluster")
    add_fields(cluster, ClusteringPlan, "k")
    cluster.add_argument("--representatives", type=int, default=5)
    drift = sub.add_parser("drift")
    add_fields(drift, ClusteringPlan, "k")
    drift.set_defaults(k=4)  # a derived flag whose default is changed afterwards
    found = _problems(parser)
    assert any("cluster --representatives: default 5 written by hand" in p for p in found)
    assert any("cluster ['--representatives']: an option's flag added by hand" in p
               for p in found)
    assert any("drift --k: default 4, but ClusteringPlan.k says None" in p for p in found)


@pytest.mark.parametrize("path", [path for path, _ in _commands(build_parser())],
                         ids=" ".join)
def test_every_command_prints_its_help_with_the_options_defaults(path, capsys):
    sub = dict(_commands(build_parser()))[path]
    with pytest.raises(SystemExit) as done:
        _parse(*path, "--help")
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for a in sub._actions:
        if hasattr(a, "option_field"):
            assert a.option_field.metadata["flag"] in text
            if "%(default)s" in (a.option_field.metadata["help"] or "") and not a.required:
                assert f"default {a.default}" in text, (path, a.dest)
