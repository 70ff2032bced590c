"""Accuracy in the search: sampled calibrated accuracies, the surrogate, the floor.

`AccuracyGuide.prepare` does the accuracy side of one budget once:

1. the unpruned model's calibrated accuracy (batch norm re-estimated on the
   same images, so that every comparison is like with like) and the uniform
   architecture's at the budget;
   (the accuracy is the calibration set's metric: top-1, or a detector's mAP@.5 or
   mAP@[.5:.95]);
2. ``samples`` candidates *at the budget* (every candidate the search scores
   meets the budget, so that is where the surrogate must be right): half
   random directions, half perturbations of the uniform architecture, which
   is where the ``uniform`` floor's boundary lies; each evaluated by adaptive
   BN (cached);
3. the accuracy surrogate fitted on them, with its held-out report;
4. the floor's threshold, refused with the floor the budget allows when no
   sampled candidate meets it.

The search then calls `AccuracyGuide.penalise` on its latency scores: a
candidate the surrogate predicts below the floor has its score multiplied by
``1 + penalty * deficit`` (deficit in accuracy points / 100), which excludes it
in practice while still telling the evolution which way is back. Finalists
are evaluated for real (`AccuracyGuide.evaluate`, `AccuracyGuide.meets`); when
none meets the floor, `AccuracyGuide.fallback` is the fastest evaluated
candidate that does (one always exists: the check in step 4).

Public API
----------
``AccuracyGuide.prepare(model, space, calib, target_macs, floor, *, samples=24, seed=0,
progress=None, cache=None) -> AccuracyGuide``
``guide.penalise(scores, widths) -> np.ndarray``; ``guide.predict(widths)``;
``guide.evaluate(widths) -> np.ndarray`` (real, cached; added to ``guide.evaluated``);
``guide.meets(widths) -> np.ndarray[bool]``; ``guide.first_feasible(ranked, limit=None)``;
``guide.choose(ranked, score_fn, limit=None) -> widths`` (first feasible, else `fallback`);
``guide.fallback(score_fn) -> widths``;
``guide.summary() -> dict`` (for the report: unpruned, uniform, threshold, floor, surrogate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hdap_engine.accuracy.calibrate import CalibratedEvaluator, CalibrationSet
from hdap_engine.accuracy.floor import AccuracyFloor, check_reachable
from hdap_engine.accuracy.surrogate import AccuracySurrogate
from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.pruning.budget import format_macs, repair
from hdap_engine.pruning.space import PruningSpace

if TYPE_CHECKING:  # the study's types, without importing the study
    from hdap_engine.options import Query
    from hdap_engine.study.prepare import StudyContext

PENALTY = 50.0  # 1 point below the floor weighs like 50 % more latency


def budget_candidates(space: PruningSpace, target_macs: float, n: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``n`` candidates at the budget: half random directions, half near the uniform one."""
    g = space.n_groups
    n_local = n // 2
    n_rand = n - n_local
    spread = rng.uniform(0.05, 0.6, size=(n_rand, 1))
    rand = np.exp(np.log(rng.uniform(0.3, 1.0, size=(n_rand, 1)))
                  + spread * rng.normal(size=(n_rand, g)))
    scale = rng.uniform(0.05, 0.3, size=(n_local, 1))
    local = np.exp(scale * rng.normal(size=(n_local, g)))
    ratios = np.clip(np.vstack([rand, local]), 0.02, 1.0)
    return np.unique(repair(space, ratios, target_macs), axis=0)


@dataclass
class AccuracyGuide:
    """The accuracy side of one budget (see the module docstring)."""

    space: PruningSpace
    evaluator: CalibratedEvaluator
    floor: AccuracyFloor | None
    target_macs: float
    unpruned: float
    uniform: float
    uniform_widths: np.ndarray
    threshold: float | None
    surrogate: AccuracySurrogate
    widths: np.ndarray  # (N, G) every candidate evaluated for real
    accuracy: np.ndarray  # (N,)
    notes: list[str] = field(default_factory=list)
    # The floor's own threshold when the search keeps a lower one until fine-tuning
    # (`prepare`'s ``finetune``), else None: then ``threshold`` is the floor's.
    requested_threshold: float | None = None

    @classmethod
    def prepare(cls, model, space: PruningSpace, calib: CalibrationSet, target_macs: float,
                floor: AccuracyFloor | None, *, samples: int = 24, seed: int = 0,
                progress: Progress | None = None, cache=None,
                budget_label: str | None = None, finetune: bool = False) -> AccuracyGuide:
        """Evaluate the unpruned, the uniform and ``samples`` candidates; fit the surrogate.

        Parameters
        ----------
        model:
            The unpruned model with the user's weights (not modified).
        space:
            Its pruning space.
        calib:
            The calibration set (`calibration_set`).
        target_macs:
            The budget in MACs.
        floor:
            The parsed ``--min-accuracy`` (or None: accuracy is reported, not enforced).
        samples:
            Candidates evaluated at the budget to train the surrogate.
        seed:
            Seed of the sampled candidates.
        progress:
            Called with ("accuracy", done, total).
        cache:
            An `AccuracyCache` (default: the workspace's).
        budget_label:
            The budget as the user wrote it, for messages.
        finetune:
            The study fine-tunes the chosen model. A fraction or points floor that no
            candidate meets before training (a detector at half its MACs keeps about half
            its mAP after adaptive BN alone) is then not refused: the search keeps at least
            the uniform candidate's calibrated accuracy, the best evidence before training
            that a candidate trains back as well as the baseline, and the floor itself is
            checked on the fine-tuned model (`floor.finetuned_check`). Without fine-tuning
            such a floor is refused (`check_reachable`).

        Returns
        -------
        `AccuracyGuide`.
        """
        from hdap_engine.search.baselines import uniform_widths

        evaluator = CalibratedEvaluator(model, space, calib, cache=cache)
        rng = np.random.default_rng(seed + 15485863)
        uni = uniform_widths(space, target_macs)
        cands = budget_candidates(space, target_macs, samples, rng)
        todo = np.vstack([space.base_widths[None], uni[None], cands])

        def tick(done, total):
            if progress is not None:
                progress("accuracy", done, total)

        acc = evaluator.many(todo, progress=tick)
        unpruned, uniform = float(acc[0]), float(acc[1])
        widths, accuracy = todo[1:], acc[1:]
        surrogate = AccuracySurrogate(seed=seed).fit(space, widths, accuracy)
        threshold = requested = None
        notes = []
        if floor is not None:
            threshold = floor.threshold(unpruned, uniform)
            label = budget_label or f"{format_macs(target_macs)} MACs"
            best = float(accuracy.max())
            if finetune and floor.kind != "uniform" and best < threshold:
                requested, threshold = threshold, uniform
                notes.append(
                    f"no candidate at {label} meets the floor {floor.text} before training "
                    f"({100 * requested:.1f}%: {floor.describe(calib.metric)}; the best "
                    f"sampled calibrates to {100 * best:.1f}%): the search kept at least the "
                    f"uniform candidate's {100 * uniform:.1f}% and the floor is checked on "
                    "the fine-tuned model")
            else:
                check_reachable(floor, threshold, best, unpruned, label, metric=calib.metric)
        return cls(space=space, evaluator=evaluator, floor=floor, target_macs=target_macs,
                   unpruned=unpruned, uniform=uniform, uniform_widths=uni,
                   threshold=threshold, surrogate=surrogate, widths=widths,
                   accuracy=accuracy, notes=notes, requested_threshold=requested)

    # -- during the search ----------------------------------------------------------------
    def predict(self, widths) -> np.ndarray:
        """Surrogate calibrated accuracy (N,)."""
        return self.surrogate.predict(widths)

    def penalise(self, scores: np.ndarray, widths) -> np.ndarray:
        """Latency scores (to minimise) with candidates predicted below the floor penalised."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.threshold is None:
            return scores
        deficit = np.clip(self.threshold - self.predict(widths), 0.0, None)
        return scores * (1.0 + PENALTY * deficit)

    # -- for real ---------------------------------------------------------------------------
    def evaluate(self, widths) -> np.ndarray:
        """Calibrated accuracy (N,) by adaptive BN (cached), remembered for `fallback`."""
        widths = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        acc = self.evaluator.many(widths)
        known = {w.tobytes() for w in self.widths}
        new = [i for i, w in enumerate(widths) if w.tobytes() not in known]
        if new:
            self.widths = np.vstack([self.widths, widths[new]])
            self.accuracy = np.concatenate([self.accuracy, acc[new]])
        return acc

    def meets(self, widths) -> np.ndarray:
        """Whether each candidate's real calibrated accuracy meets the floor."""
        acc = self.evaluate(widths)
        if self.threshold is None:
            return np.ones(len(acc), dtype=bool)
        return acc >= self.threshold - 1e-12

    def first_feasible(self, ranked, limit: int | None = None) -> np.ndarray | None:
        """The first of ``ranked`` (best first) whose real calibrated accuracy meets the floor.

        Candidates are evaluated one at a time, so a good first choice costs one
        evaluation; ``limit`` caps how many are tried. None when none does.
        """
        ranked = np.atleast_2d(np.asarray(ranked, dtype=np.int64))
        for w in ranked[:limit]:
            if self.meets(w[None])[0]:
                return w
        return None

    def choose(self, ranked, score: Callable[[np.ndarray], np.ndarray],
               limit: int | None = None) -> np.ndarray:
        """`first_feasible` of ``ranked``, else the best-scoring evaluated candidate that
        meets the floor (`fallback`): the search never answers below its floor."""
        chosen = self.first_feasible(ranked, limit)
        return chosen if chosen is not None else self.fallback(score)

    def fallback(self, score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The best-scoring candidate (lowest ``score``) among those evaluated that meet the floor."""
        ok = self.widths if self.threshold is None else \
            self.widths[self.accuracy >= self.threshold - 1e-12]
        scores = np.asarray(score(ok), dtype=np.float64)
        return ok[int(np.argmin(scores))]

    def summary(self) -> dict:
        """Plain data for the report's accuracy block and bench rows."""
        return {
            "unpruned_calibrated": self.unpruned,
            "uniform_calibrated": self.uniform,
            "threshold": self.threshold,
            "requested_threshold": self.requested_threshold,
            "checked_on": "calibrated" if self.requested_threshold is None else "finetuned",
            "notes": list(self.notes),
            "floor": None if self.floor is None else self.floor.as_dict(
                self.evaluator.calib.metric),
            "metric": self.evaluator.calib.metric,
            "evaluated": int(len(self.widths)),
            "best_sampled": float(self.accuracy.max()),
            "n_bn": self.evaluator.calib.n_bn,
            "n_eval": self.evaluator.calib.n_eval,
            "surrogate": self.surrogate.report,
        }


def accuracy_guide(ctx: StudyContext, target: float, query: Query, *,
                   progress: Progress = no_progress):
    """The accuracy floor's guide for a searching method at ``target`` (None without a floor).

    The floor is read from the options (a what-if run may change it); its
    calibrated accuracies are cached, so the same budget again evaluates nothing.
    """
    if ctx.accuracy is None or not ctx.options.accuracy.min_accuracy:
        return None
    from hdap_engine.accuracy.floor import parse_floor

    return ctx.accuracy.guide(ctx.space, target, floor=parse_floor(
        ctx.options.accuracy.min_accuracy), progress=progress,
        budget_label=f"{query.budget} MACs",
        finetune=bool(ctx.options.accuracy.finetune_epochs))

