"""What a job does: ONE entry point from (kind, settings) to the engine, and back.

`execute` looks the job's kind up in the registry (`hdap_engine.jobs.kinds`)
and runs it; the kind's own module says what its settings and its result are:

- `study_jobs`      ``study``, ``comparison``, ``sweep`` (and `rebuild_context`,
                    a finished study's context for the what-if page);
- `lifecycle_jobs`  ``rollout``, ``reoptimise``;
- `finetune_jobs`   ``finetune``.

When the engine changes shape, these functions change and nothing else in the
job machinery does. A job's result is plain JSON.
"""

from __future__ import annotations

from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.jobs.kinds import JobRun, Partial, get_kind, kind_names, no_partial
from hdap_engine.jobs.study_jobs import rebuild_context, study_options, surrogate_key

__all__ = ["KINDS", "execute", "rebuild_context", "study_options", "surrogate_key"]

KINDS = kind_names()  # the kinds registered by the engine itself


def execute(kind: str, settings: dict, *, job_id: int = 0, store=None,
            progress: Progress | None = None, agent_token: str | None = None,
            partial: Partial | None = None) -> dict:
    """Run one job's work with the engine and return its result (plain JSON data).

    Parameters
    ----------
    kind:
        A registered job kind (`hdap_engine.jobs.kinds`).
    settings:
        As the kind's module describes them.
    job_id:
        The job's id (names its surrogate in the store).
    store:
        The measurement store (default: the workspace's).
    progress:
        Called with (stage, step, total).
    agent_token:
        The device agents' token; never stored with the job.
    partial:
        Called with what the job has produced so far (a fine-tune's epochs), for pages
        that draw it while the job runs.

    Returns
    -------
    The kind's result: a dict with the keys its `JobKind.result` names.
    """
    job_kind = get_kind(kind)
    run = JobRun(job_id=job_id, store=store, progress=progress or no_progress,
                 agent_token=agent_token, partial=partial or no_partial)
    return job_kind.run(settings, run)
