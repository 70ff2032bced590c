"""Jobs: the app's runs as rows of the store, executed by worker processes.

- `table`    the job table in the workspace's SQLite store (`JobTable`, `Job`);
- `runner`   the dispatcher that starts queued jobs in spawned worker processes,
             at most N at once (`runner()`, `HDAP_JOB_WORKERS`);
- `worker`   what runs in a worker process: one job, progress written to the store;
- `kinds`    the job-kind registry (`JobKind`: name, description, what runs it, what
             its result holds); a new kind is one `register_kind` call;
- `execute`  the one function from (kind, settings) to the engine;
- `study_jobs`, `lifecycle_jobs`, `finetune_jobs`  what each kind runs, its settings
             (``study_settings``, ``rollout_settings``...) and its result; and the
             rebuilding of a finished study's context for the what-if page.

A page creates a job with ``runner().submit(kind, settings, owner=...)`` and
follows it with ``JobTable().get(id)``; everything it draws comes from the
store, so any tab, browser or teammate sees the same job.
"""

from hdap_engine.jobs.execute import KINDS, execute
from hdap_engine.jobs.finetune_jobs import finetune_settings
from hdap_engine.jobs.kinds import JobKind, get_kind, kind_names, register_kind
from hdap_engine.jobs.lifecycle_jobs import reoptimise_settings, rollout_settings
from hdap_engine.jobs.runner import Runner, default_workers, runner
from hdap_engine.jobs.study_jobs import (
    rebuild_context,
    study_options,
    study_settings,
    what_if_settings,
)
from hdap_engine.jobs.table import ACTIVE, ENDED, STATES, Job, JobTable

__all__ = ["ACTIVE", "ENDED", "KINDS", "STATES", "Job", "JobKind", "JobTable", "Runner",
           "default_workers", "execute", "finetune_settings", "get_kind", "kind_names",
           "rebuild_context", "register_kind", "reoptimise_settings", "rollout_settings",
           "runner", "study_options", "study_settings", "what_if_settings"]
