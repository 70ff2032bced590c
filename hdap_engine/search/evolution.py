"""Evolutionary search over candidates under a MACs budget.

The genome is the keep ratio of every group. Each generation: tournament
selection, uniform crossover, multiplicative (log-normal) mutation of a few
groups, then the budget repair of `hdap_engine.pruning.budget.repair`, so
every candidate ever scored meets the budget within 1 %. The best candidates
survive unchanged (elitism). Scores come from a callable, normally the
surrogate and a fleet objective, never the hardware.

Everything random comes from one seeded generator: the same seed, space,
budget and fitness give the same candidate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hdap_engine.options import SearchPlan
from hdap_engine.pruning.budget import repair
from hdap_engine.pruning.space import PruningSpace

Fitness = Callable[[np.ndarray], np.ndarray]  # (P, G) widths -> (P,) scores to minimise
GenerationTick = Callable[[int, int], None]  # (generation, generations)


@dataclass
class SearchResult:
    """The best candidate, its score, and how the search got there."""

    widths: np.ndarray
    score: float
    history: list[float] = field(default_factory=list)  # best score per generation
    evaluations: int = 0
    seconds: float = 0.0
    final_population: np.ndarray | None = None  # distinct candidates, best first
    final_scores: np.ndarray | None = None


def mutate(space: PruningSpace, ratios: np.ndarray, target_macs: float,
           rng: np.random.Generator, *, rate: float, scale: float) -> np.ndarray:
    """The search's one mutation operator: keep ratios (P, G) -> widths meeting the budget.

    Each group is mutated with probability ``rate`` by a log-normal factor of
    sigma ``scale``; the result is clipped to (0.02, 1] and repaired to the
    budget. The evolutionary loop and the measured polish both use it.
    """
    n, g = ratios.shape
    hit = rng.uniform(size=(n, g)) < rate
    ratios = ratios * np.exp(np.where(hit, rng.normal(0, scale, size=(n, g)), 0.0))
    return repair(space, np.clip(ratios, 0.02, 1.0), target_macs)


def evolve(space: PruningSpace, target_macs: float, fitness: Fitness,
           options: SearchPlan | None = None, *, seeds: np.ndarray | None = None,
           progress: GenerationTick | None = None) -> SearchResult:
    """Minimise ``fitness`` over candidates that meet ``target_macs``.

    Parameters
    ----------
    space:
        The pruning space.
    target_macs:
        The budget in MACs.
    fitness:
        Scores (P,) to minimise for widths (P, G).
    options:
        `SearchPlan`.
    seeds:
        Candidates to start from (e.g. the uniform one), added to the random start.
    progress:
        Called with (generation, generations).
    """
    opt = options or SearchPlan()
    rng = np.random.default_rng(opt.seed)
    t0 = time.perf_counter()
    g = space.n_groups
    base = space.base_widths.astype(np.float64)

    start = [np.ones(g)]  # the uniform direction is always in the first population
    if seeds is not None:
        # Seeds beyond the population would leave no room: keep the first ones (best first).
        start.extend((np.atleast_2d(seeds) / base)[:opt.population - 1])
    n_rand = opt.population - len(start)
    rand = np.exp(np.log(rng.uniform(0.3, 1.0, size=(n_rand, 1)))
                  + rng.uniform(0.05, 0.6, size=(n_rand, 1)) * rng.normal(size=(n_rand, g)))
    pop = repair(space, np.clip(np.vstack([np.array(start), rand]), 0.02, 1.0), target_macs)
    scores = np.asarray(fitness(pop), dtype=np.float64)
    evaluations = len(pop)
    history = [float(scores.min())]
    best, stale = float(scores.min()), 0
    for gen in range(1, opt.generations + 1):
        order = np.argsort(scores, kind="stable")
        elite = pop[order[:opt.elite]]
        n_child = opt.population - opt.elite
        # tournament selection of two parents per child
        cand = rng.integers(0, len(pop), size=(n_child, 2, opt.tournament))
        winners = cand[np.arange(n_child)[:, None], np.arange(2)[None, :],
                       np.argmin(scores[cand], axis=2)]
        pa = pop[winners[:, 0]] / base
        pb = pop[winners[:, 1]] / base
        mask = rng.uniform(size=(n_child, g)) < opt.crossover
        child = np.where(mask, pb, pa)
        child = mutate(space, child, target_macs, rng, rate=opt.mutation_rate,
                       scale=opt.mutation_scale)
        child_scores = np.asarray(fitness(child), dtype=np.float64)
        evaluations += len(child)
        pop = np.vstack([elite, child])
        scores = np.concatenate([scores[order[:opt.elite]], child_scores])
        history.append(float(scores.min()))
        if progress:
            progress(gen, opt.generations)
        if scores.min() < best - 1e-9 * abs(best):
            best, stale = float(scores.min()), 0
        else:
            stale += 1
            if stale >= opt.patience:
                break
    uniq, idx = np.unique(pop, axis=0, return_index=True)
    order = np.argsort(scores[idx], kind="stable")
    final, final_scores = uniq[order], scores[idx][order]
    return SearchResult(widths=final[0], score=float(final_scores[0]), history=history,
                        evaluations=evaluations, seconds=time.perf_counter() - t0,
                        final_population=final, final_scores=final_scores)


def diverse_best(space: PruningSpace, ranked: np.ndarray, k: int,
                 min_distance: float = 0.03) -> np.ndarray:
    """Up to ``k`` of ``ranked`` (best first), skipping near-copies of ones already taken.

    A converged population is mostly one candidate and its neighbours; measuring
    ten neighbours teaches a surrogate less than ten different good candidates.
    Distance is the mean absolute difference of keep ratios.
    """
    ratios = space.ratios(ranked)
    picked: list[int] = []
    for i in range(len(ranked)):
        if len(picked) == k:
            break
        if all(np.abs(ratios[i] - ratios[j]).mean() >= min_distance for j in picked):
            picked.append(i)
    for i in range(len(ranked)):  # too few distinct ones: fill with the next best
        if len(picked) == k:
            break
        if i not in picked:
            picked.append(i)
    return ranked[sorted(picked)]
