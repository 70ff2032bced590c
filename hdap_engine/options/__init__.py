"""Every option of every step: frozen dataclasses, the one place a default is written.

The study's steps (`hdap_engine.options.study`): `ClusteringPlan`,
`MeasurementPlan`, `SurrogatePlan`, `SearchPlan`, `Query`, `AccuracyPlan` and
`QuantizePlan`,
held by `StudyOptions` with the model, the method and the seed. The steps
beside and after a study (`hdap_engine.options.steps`): `DriftOptions`,
`ReoptimiseOptions`, `RolloutOptions`, `LongFormatOptions`, `FinetuneOptions`
(with the recipes `DISTILL` and `SCRATCH`), `SimulationOptions`,
`ProbeOptions`, `AppOptions`, `MacsBenchOptions` and `ModelCheckOptions`.

A field that a command-line flag sets carries the flag, its help and how its
text is parsed (`option`): the CLI builds every such flag from here
(`hdap_engine.cli.flags`, `cli_fields`) and the app reads its widget defaults
from here (`default`), so the three never disagree. Plain data with no heavy
imports, so that the command line builds its parser without loading torch.
"""

from __future__ import annotations

from dataclasses import fields

from hdap_engine.options.base import option
from hdap_engine.options.quantize import CALIBRATION_METHODS, CALIBRATION_SOURCES
from hdap_engine.options.steps import (
    DISTILL,
    SCHEDULES,
    SCRATCH,
    AppOptions,
    DriftOptions,
    FinetuneOptions,
    LongFormatOptions,
    MacsBenchOptions,
    ModelCheckOptions,
    ProbeOptions,
    ReoptimiseOptions,
    RolloutOptions,
    ShapesOptions,
    SimulationOptions,
)
from hdap_engine.options.study import (
    BACKEND_DESCRIPTIONS,
    BACKENDS,
    CRITERIA,
    HOST_CLOCKS,
    HOST_RUNTIMES,
    PRECISIONS,
    ROUND_TO_BY_PRECISION,
    SEARCH_EFFORTS,
    STUDY_WIDE,
    SURROGATE_MODES,
    WHAT_IF_SETTINGS,
    AccuracyPlan,
    ClusteringPlan,
    MeasurementPlan,
    QuantizePlan,
    Query,
    SearchPlan,
    StudyOptions,
    SurrogatePlan,
    flatten_settings,
    search_effort,
    study_default,
)


def cli_fields(*sections) -> list:
    """The fields (dataclass `Field`) of ``sections`` that have a command-line flag.

    A section is an options class, ``""`` for `StudyOptions`'s own fields, or
    the name of one of its sections (``"clustering"``, ``"measurement"``,
    ``"search"``, ``"query"``...).
    """
    out = []
    for section in sections:
        if isinstance(section, str):
            section = StudyOptions if section == "" else \
                {f.name: f for f in fields(StudyOptions)}[section].default_factory
        out.extend(f for f in fields(section) if f.metadata.get("flag"))
    return out


def default(name: str, of: type | None = None):
    """The default of one setting (the app's widget defaults come from here).

    Without ``of``, ``name`` is a study setting's flat name (``samples``,
    ``budget``); with it, a field of that options class (``default("epochs",
    FinetuneOptions)``).
    """
    if of is None:
        return study_default(name)
    return getattr(of(), name)


__all__ = [
    "BACKEND_DESCRIPTIONS", "BACKENDS", "CALIBRATION_METHODS", "CALIBRATION_SOURCES",
    "CRITERIA", "DISTILL", "HOST_CLOCKS", "HOST_RUNTIMES", "SCHEDULES", "SCRATCH",
    "SEARCH_EFFORTS", "STUDY_WIDE", "SURROGATE_MODES", "WHAT_IF_SETTINGS", "AccuracyPlan",
    "AppOptions", "ClusteringPlan", "DriftOptions", "FinetuneOptions", "LongFormatOptions",
    "MacsBenchOptions", "MeasurementPlan", "ModelCheckOptions", "PRECISIONS", "ProbeOptions",
    "QuantizePlan", "Query", "ROUND_TO_BY_PRECISION", "ReoptimiseOptions",
    "RolloutOptions", "SearchPlan", "ShapesOptions", "SimulationOptions", "StudyOptions",
    "SurrogatePlan",
    "cli_fields", "default", "flatten_settings", "option", "search_effort",
]
