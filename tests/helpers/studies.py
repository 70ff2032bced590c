"""Study options small enough for a unit test."""

from __future__ import annotations


def quick_options(**changes):
    """Study options small enough for a unit test (ResNet-56, few samples, short search)."""
    from hdap_engine.options import StudyOptions

    base = dict(model="resnet56", budget="0.5", samples=40, repeats=3, warmup=0,
                population=16, generations=8, refine_rounds=1, refine_batch=6, finalists=4,
                restarts=2, polish_rounds=1, polish_batch=4)
    base.update(changes)
    return StudyOptions.of(**base)

