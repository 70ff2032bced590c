"""A budget in measured latency (`hdap_engine.study.latency_budget`): the most MACs whose
fleet objective meets it, found on the surrogate and checked by measurement."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hdap_engine.errors import HdapError
from hdap_engine.options import Query
from hdap_engine.study.latency_budget import fit_macs

SPACE = SimpleNamespace(min_macs=1e8, base_macs=1e9)


def _latency(macs: float) -> float:  # a fleet that pays 1 ms plus 4 ms per G MACs
    return 1.0 + 4.0 * macs / 1e9


def test_the_bisection_finds_the_most_macs_within_the_budget():
    fit = fit_macs(SPACE, 3.0, "mean", _latency)
    assert _latency(fit.macs) <= 3.0 * 1.005
    assert fit.macs == pytest.approx(0.5e9, rel=0.02)  # 1 + 4 * 0.5 = 3 ms
    assert not fit.unpruned_meets and fit.surrogate_answers <= 12
    assert fit.record(2.9)["met"] and not fit.record(3.2)["met"]


def test_an_unpruned_model_within_the_budget_is_kept_whole_and_an_impossible_one_refused():
    assert fit_macs(SPACE, 9.0, "mean", _latency).unpruned_meets
    with pytest.raises(HdapError, match="below what the smallest candidate"):
        fit_macs(SPACE, 1.2, "mean", _latency)


def test_a_latency_budget_needs_a_latency_objective():
    with pytest.raises(HdapError, match="share of devices"):
        Query(latency_ms=5.0, objective="slo", slo_ms=5.0)
    with pytest.raises(HdapError, match="positive"):
        Query(latency_ms=0.0)


def test_the_cli_asks_for_one_budget_and_bench_refuses_a_latency(cli, small_fleet):
    out = cli("optimize", "--model", "resnet56", "--telemetry", str(small_fleet),
              "--out", "unused")
    assert out.returncode == 2 and "--latency-budget is required" in out.stderr and "Traceback" not in out.stderr
    out = cli("bench", "--model", "resnet56", "--telemetry", str(small_fleet),
              "--latency-budget", "5")
    assert out.returncode == 2 and "one MACs budget" in out.stderr
    assert "Traceback" not in out.stderr
