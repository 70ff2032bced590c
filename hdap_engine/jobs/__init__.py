"""Jobs: the app's runs as rows of the store, executed by worker processes.

- `table`   the job table in the workspace's SQLite store (`JobTable`, `Job`);
- `runner`  the dispatcher that starts queued jobs in spawned worker processes,
            at most N at once (`runner()`, `HDAP_JOB_WORKERS`);
- `worker`  what runs in a worker process: one job, progress written to the store;
- `execute` the one function from (kind, settings) to the engine, and the
            rebuilding of a finished study's context for the what-if page.

A page creates a job with ``runner().submit(kind, settings, owner=...)`` and
follows it with ``JobTable().get(id)``; everything it draws comes from the
store, so any tab, browser or teammate sees the same job.
"""

from hdap_engine.jobs.execute import KINDS, execute, rebuild_context, study_options
from hdap_engine.jobs.runner import Runner, default_workers, runner
from hdap_engine.jobs.table import ACTIVE, ENDED, STATES, Job, JobTable

__all__ = ["ACTIVE", "ENDED", "KINDS", "STATES", "Job", "JobTable", "Runner", "default_workers",
           "execute", "rebuild_context", "runner", "study_options"]
