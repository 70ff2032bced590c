"""Study flags are built from the options: defaults agree, old spellings still work and say so."""

from __future__ import annotations

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
