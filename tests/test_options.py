"""`hdap_engine.options`: one frozen class per step, one seed per study, context features
saved with the study (and read from jobs of earlier versions)."""

from __future__ import annotations

import dataclasses

import pytest

from hdap_engine.errors import HdapError
from hdap_engine.options import (
    ClusteringPlan,
    SearchPlan,
    StudyOptions,
    SurrogatePlan,
    default,
)


def test_every_options_class_is_frozen_and_one_per_step():
    import hdap_engine.fleet.clustering as clustering
    import hdap_engine.latency.surrogate as surrogate
    import hdap_engine.options as options
    import hdap_engine.search.evolution as evolution

    classes = [obj for name in options.__all__ if isinstance(obj := getattr(options, name), type)]
    assert len(classes) >= 15
    for cls in classes:
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
    # The engine's steps take the options' classes; the duplicates are gone.
    assert not hasattr(clustering, "ClusteringOptions")
    assert not hasattr(evolution, "SearchOptions")
    assert not hasattr(surrogate, "SurrogateOptions")
    assert default("representatives") == ClusteringPlan().representatives == 3
    assert default("population") == SearchPlan().population == 64


def test_a_sections_seed_is_the_studys():
    options = StudyOptions.of(seed=7)
    assert options.clustering.seed == options.search.seed == options.surrogate.seed == 7
    # A section's own seed gives way to the study's, however the options were made.
    assert StudyOptions(clustering=ClusteringPlan(seed=3)).clustering.seed == 0
    saved = options.settings()
    assert all("seed" not in saved[s] for s in ("clustering", "search", "surrogate"))
    assert StudyOptions.from_settings(saved) == options
    assert default("seed") == 0 and "seed" in options.flat()


def test_the_search_needs_a_population_above_its_elite():
    assert SearchPlan(population=8, generations=1).population == 8
    with pytest.raises(HdapError, match="population of at least 8"):
        SearchPlan(population=7)
    with pytest.raises(HdapError, match="elite must be smaller"):
        SearchPlan(population=8, elite=8)
    with pytest.raises(HdapError, match="unknown surrogate mode 'forest'"):
        SurrogatePlan(mode="forest")


def test_context_features_are_a_study_option_saved_with_the_run():
    import json

    from hdap_engine.cli import build_parser
    from hdap_engine.cli.flags import study_options

    options = StudyOptions.of(context_features=["ambient_c"])
    assert options.clustering.context_features == ("ambient_c",)
    saved = json.loads(json.dumps(options.settings()))
    assert saved["clustering"]["context_features"] == ["ambient_c"]
    assert StudyOptions.from_settings(saved) == options
    args = build_parser().parse_args(["optimize", "--model", "resnet56", "--telemetry", "f.csv",
                                      "--macs", "0.5", "--out", "d", "--context", "ambient_c,"])
    assert study_options(args).clustering == options.clustering
    assert dataclasses.replace(ClusteringPlan(), context_features="a").context_features == ("a",)


@pytest.mark.parametrize("saved", ["options", "job"])
def test_a_jobs_clustering_uses_its_context_features(tmp_path, saved):
    from hdap_engine.fleet.bench_data import synthetic_fleet, write_fleet
    from hdap_engine.jobs.study_jobs import _fleet_and_clustering

    frame, _ = synthetic_fleet(600, seed=3)
    path = write_fleet(frame, tmp_path / "fleet.csv")
    options = StudyOptions.of(k=2, context_features=("ambient_c",) if saved == "options" else ())
    settings = {"options": options.settings(), "telemetry": str(path)}
    if saved == "job":  # how earlier versions kept them: beside the options
        settings["context_features"] = ["ambient_c", "not_a_column"]
    _, clustering, _ = _fleet_and_clustering(settings, options)
    assert clustering.feature_names_[-1] == "ambient_c"
