"""The method registry (`hdap_engine.search.methods`): a registered method reaches the CLI, the
bench and the charts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hdap_engine.errors import HdapError
from hdap_engine.latency.store import Store
from hdap_engine.pruning.budget import meets_budget, repair
from hdap_engine.search.methods import (
    Method,
    get_method,
    method_names,
    register_method,
    style,
    unregister_method,
)
from hdap_engine.study.compare import format_rows, run_bench
from tests.helpers.paths import ROOT
from tests.helpers.studies import quick_options


def _deep_first(space, target_macs, model=None):
    """A toy rule: keep more of the late groups than of the early ones."""
    ratios = np.linspace(0.4, 1.0, space.n_groups)
    return repair(space, ratios, target_macs)


@pytest.fixture
def toy():
    method = register_method(Method("toy-deep", "toy (deep first)", "toy: deep layers first",
                                    "#123456", rule=_deep_first))
    yield method
    unregister_method(method.name)


def test_a_registered_method_is_a_choice_of_every_command(toy):
    from hdap_engine.cli import build_parser

    parser = build_parser()
    for argv in (["optimize", "--model", "resnet56", "--telemetry", "f.csv", "--macs", "0.5",
                  "--out", "d", "--method", "toy-deep"],
                 ["prune", "--model", "resnet56", "--macs", "0.5", "--out", "d",
                  "--method", "toy-deep"],
                 ["bench", "--model", "resnet56", "--telemetry", "f.csv", "--macs", "0.5",
                  "--methods", "uniform,toy-deep"]):
        args = parser.parse_args(argv)
        assert "toy-deep" in (getattr(args, "method", None), *(getattr(args, "methods", None)
                                                              or ()))
    assert "toy-deep" in method_names(searches=False)
    assert style("toy-deep") == ("toy (deep first)", "#123456")


def test_a_registered_method_gets_a_row_in_the_bench_table(toy, small_fleet, tmp_path):
    out = run_bench(quick_options(method="uniform"), small_fleet, methods=["uniform", "toy-deep"],
                    store=Store(tmp_path / "s.sqlite"))
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"uniform", "toy-deep"}
    assert meets_budget(rows["toy-deep"]["macs"], out["budget_macs"])
    assert rows["toy-deep"]["widths"] != rows["uniform"]["widths"]
    assert [r["method"] for r in format_rows(out["rows"])] == ["uniform", "toy-deep"]


def test_a_toy_method_is_drawn_with_its_own_label_and_colour(toy):
    from hdap_engine.report.charts import method_comparison

    rows = [{"method": m, "fleet_mean_ms": 2.0, "p95_ms": 3.0, "speedup": 1.5, "macs": 1e8}
            for m in ("uniform", "toy-deep")]
    fig = method_comparison({"rows": rows, "measured_source": "twin (simulated)"})
    assert "toy (deep first)" in str(fig.to_dict()["data"])
    assert "#123456" in str(fig.to_dict()["data"])


def test_an_unknown_method_is_one_clear_error():
    with pytest.raises(HdapError, match="unknown method 'magic'; choose one of: hdap"):
        get_method("magic")
    with pytest.raises(HdapError, match="unknown method"):
        quick_options(method="magic")


def test_no_code_outside_the_registry_compares_method_names():
    pattern = re.compile(r"""method\w*\s*(==|!=)\s*["']|method\w* (not )?in \(["']""")
    offenders = []
    for folder in ("hdap_engine", "app"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "methods.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


