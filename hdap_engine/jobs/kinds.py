"""The job-kind registry: every kind of work a job can do, as one registered entry.

As `hdap_engine.search.methods` registers methods, a job kind is one `JobKind`
registered by name: what it is (a line for people), the function that runs it
and what its result holds. `execute` looks the kind up here and nothing else
compares kind names; adding a kind is one `register_kind(JobKind(...))` call.

Kind names are stored as strings in the job table, so a name, once used, stays.
The functions that run a kind live by room: `study_jobs` (study, comparison,
sweep), `lifecycle_jobs` (rollout, reoptimise), `finetune_jobs` (finetune).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial as bind

from hdap_engine.errors import HdapError
from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.jobs.finetune_jobs import FINETUNE_RESULT, run_finetune
from hdap_engine.jobs.lifecycle_jobs import run_reoptimise, run_rollout
from hdap_engine.jobs.study_jobs import STUDY_RESULT, run_prepared

Partial = Callable[[dict], None]


def no_partial(data: dict) -> None:
    """The default ``partial``: keep nothing of what a job produced so far."""


@dataclass(frozen=True)
class JobRun:
    """What a running job is given besides its settings.

    ``job_id`` names its surrogate in the store; ``store`` is the measurement
    store (None: the workspace's); ``progress`` gets (stage, step, total);
    ``agent_token`` is the device agents' token, never stored with the job;
    ``partial`` gets what the job has produced so far (a fine-tune's epochs).
    """

    job_id: int = 0
    store: object = None
    progress: Progress = no_progress
    agent_token: str | None = None
    partial: Partial = no_partial

    def measurement_store(self):
        """The store this job measures into (the workspace's unless one was given)."""
        if self.store is not None:
            return self.store
        from hdap_engine.latency.store import Store

        return Store()


@dataclass(frozen=True)
class JobKind:
    """One registered kind of job (plain data; see the module docstring)."""

    name: str  # stored in the job table: never rename one that was used
    description: str  # one line, for people
    run: Callable[[dict, JobRun], dict]  # (settings, the job's run) -> result (plain JSON)
    result: tuple[str, ...]  # the keys of its result


_REGISTRY: dict[str, JobKind] = {}


def register_kind(kind: JobKind) -> JobKind:
    """Add ``kind`` to the registry (a name registered twice is replaced)."""
    _REGISTRY[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Remove a kind (tests that register a toy kind clean up with this)."""
    _REGISTRY.pop(name, None)


def get_kind(name: str) -> JobKind:
    """The registered kind ``name``; an unknown name is one clear error."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise HdapError(f"unknown job kind {name!r}; choose one of: "
                        f"{', '.join(kind_names())}") from None


def kind_names() -> tuple[str, ...]:
    """Registered kind names, in registration order."""
    return tuple(_REGISTRY)


register_kind(JobKind(
    "study", "a study: prepare, search, prune, verify, export and record; then the "
    "comparison and the budget sweep its settings ask for",
    bind(run_prepared, study=True, compare=True, sweep=True), STUDY_RESULT))
register_kind(JobKind(
    "comparison", "other methods at the study's budget, measured the same way",
    bind(run_prepared, compare=True), STUDY_RESULT))
register_kind(JobKind(
    "sweep", "the budget sweep (a Pareto chart) on a prepared study",
    bind(run_prepared, sweep=True), STUDY_RESULT))
register_kind(JobKind(
    "rollout", "a rollout planned on a finished study: model variants for cohorts of clusters",
    run_rollout, ("rollout", "of_job")))
register_kind(JobKind(
    "reoptimise", "a deployed bundle against a model re-optimised for a later snapshot",
    run_reoptimise, ("reoptimise",)))
register_kind(JobKind(
    "finetune", "a bundle fine-tuned by distillation from the unpruned model into a new one",
    run_finetune, FINETUNE_RESULT))
