"""The search (`hdap_engine.search`): fleet objectives and the evolutionary loop with its budget repair."""

from __future__ import annotations

import numpy as np
import pytest

from hdap_engine.errors import HdapError
from hdap_engine.options import SearchPlan
from hdap_engine.pruning.budget import meets_budget, parse_budget
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.search.evolution import evolve
from hdap_engine.search.objectives import Objective, mixture_quantile


def test_objectives_rank_clusters_as_users_expect():
    lat = np.array([[10.0, 20.0], [14.0, 14.0]])
    w = np.array([0.8, 0.2])
    sigma = np.array([0.05, 0.05])
    mean = Objective("mean", w, sigma)(lat)
    worst = Objective("worst", w, sigma)(lat)
    assert mean[0] < mean[1]  # the big cluster is fast
    assert worst[0] > worst[1]  # but its small cluster is slow
    slo = Objective("slo", w, sigma, slo_ms=17.0)(lat)
    assert slo[0] == pytest.approx(-0.8, abs=0.01) and slo[1] == pytest.approx(-1.0, abs=0.01)
    p95 = mixture_quantile(lat, w, sigma, 0.95)
    assert 19 < p95[0] < 22 and 14 < p95[1] < 16
    with pytest.raises(HdapError, match="slo objective needs"):
        Objective("slo", w, sigma)



def test_search_meets_the_budget_and_is_deterministic():
    space = PruningSpace.for_model("resnet50")
    target = parse_budget("1.0G", space)

    def fitness(widths):  # early, high-resolution layers are expensive here
        table = space.layer_table(widths)
        return (table.macs() * np.where(table.h_out >= 56, 3.0, 1.0)).sum(axis=1)

    opts = SearchPlan(population=24, generations=15, seed=5)
    a = evolve(space, target, fitness, opts)
    b = evolve(space, target, fitness, opts)
    assert np.array_equal(a.widths, b.widths)
    assert meets_budget(space.macs(a.widths), target)
    uniform = fitness(space.widths_from_ratios(np.ones(space.n_groups) * 0.49)[None])[0]
    assert a.score < uniform



def test_more_seeds_than_the_population_still_search():
    space = PruningSpace.for_model("resnet56")
    target = parse_budget("0.5", space)
    seeds = space.random_widths(40, np.random.default_rng(0))
    res = evolve(space, target, lambda w: space.macs(w) * 0 + w.sum(axis=1),
                 SearchPlan(population=8, generations=2), seeds=seeds)
    assert meets_budget(space.macs(res.widths), target)

