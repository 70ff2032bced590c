"""Jobs on screen: starting one, following its progress, and why one ended.

A job's settings, its lookup in the job table and what its stages mean are the
engine's (`hdap_engine.jobs`, `hdap_engine.infra.progress.STAGES`); this module
draws them and turns buttons into calls.
"""

from __future__ import annotations

import streamlit as st

from studio import cached
from studio import state as S
from studio.fleet import ClusterView, FleetView

POLL_SECONDS = 1.0  # how often a page re-reads a running job's record


def owner() -> str | None:
    """Who is signed in (None when the server asks nobody to sign in)."""
    from studio import auth

    return auth.user_name()


def elapsed_text(seconds: float | None) -> str:
    if seconds is None:
        return "waiting"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def submit(kind: str, settings: dict, *, agent_token: bool = True):
    """Queue a job as the signed-in user (or find the equal one queued or running):
    (job, created). ``agent_token``: pass the agents' token typed on the Model page."""
    return cached.job_runner(cached.workspace()).submit(
        kind, settings, owner=owner(),
        agent_token=(S.get(S.AGENT_TOKEN) or None) if agent_token else None)


def study_job_settings(fv: FleetView, cv: ClusterView, options, *, compare=None,
                       sweep: bool | None = None) -> dict:
    """The job settings (`hdap_engine.jobs.study_settings`) of the study on screen."""
    from hdap_engine.jobs import study_settings

    return study_settings(
        options, telemetry=fv.file, fleet_label=fv.label, upload=fv.path is None,
        compare=list(S.get(S.COMPARE_METHODS) or []) if compare is None else compare,
        sweep=bool(S.get(S.SWEEP_ON)) if sweep is None else sweep)


def job_progress(job) -> None:
    """A running or queued job: stage, counts, finished stages, Cancel."""
    from hdap_engine.infra.progress import stage_text

    runner = cached.job_runner(cached.workspace())
    who = f" · started by {job.owner}" if job.owner else ""
    if job.state == "queued":
        ahead = cached.jobs().queued_ahead(job.id)
        st.info(f"Job {job.id} is queued{who}: {ahead} job(s) ahead of it, "
                f"{runner.max_workers} run at once on this server.",
                icon=":material/hourglass_top:")
    else:
        st.markdown(f"**Job {job.id} is running**{who} · {elapsed_text(job.seconds)}")
        text = "starting a worker process" if job.stage is None else \
            f"{stage_text(job.stage)}: {job.step:,} / {job.total:,}"
        st.progress(job.fraction, text=text)
    for s in job.stages:
        st.caption(f":material/check: {stage_text(s['stage'])} ({s['seconds']:.1f} s)")
    if job.cancel_requested:
        st.caption("Cancelling...")
    elif st.button("Cancel", icon=":material/stop_circle:", key="cancel_job"):
        runner.cancel(job.id)


@st.fragment(run_every=POLL_SECONDS)
def follow_job(job_id: int, partial=None) -> None:
    """Polls the store while the job is queued or running; the whole page redraws when it ends.

    ``partial(job)``, when given, draws what the job has produced so far under its
    progress (the Fine-tune page's live chart).
    """
    job = cached.jobs().get(job_id)
    if job is None or not job.active:
        st.rerun(scope="app")
    job_progress(job)
    if partial is not None:
        partial(job)


def finished_job(job_id: int, partial=None):
    """The job once it is done; until then its live progress, or why it ended (returns None).

    ``partial``: as `follow_job` takes it.
    """
    job = cached.jobs().get(job_id)
    if job is None:
        st.error(f"There is no job {job_id} in this workspace.", icon=":material/error:")
        return None
    if job.active:
        follow_job(job_id, partial)
        return None
    if job.state != "done":
        job_ended(job)
        return None
    return job


def job_ended(job) -> None:
    """A job that did not finish: why, and what to do."""
    runner = cached.job_runner(cached.workspace())
    if job.state == "failed":
        st.error(f"Job {job.id} stopped: {job.error}", icon=":material/error:")
    elif job.state == "cancelled":
        st.warning(f"Job {job.id} was cancelled ({job.error}).", icon=":material/stop_circle:")
    elif job.state == "interrupted":
        st.warning(f"Job {job.id} was interrupted: {job.error}.", icon=":material/restart_alt:")
    if job.state in ("interrupted", "cancelled", "failed") and st.button(
            "Re-queue this job", icon=":material/replay:", key="requeue_job"):
        runner.requeue(job.id)
        st.rerun()


def finetune_job(run):
    """The fine-tune job of a finished run: this session's, else the newest in the table
    (so another tab or a reload finds it), else None."""
    table = cached.jobs()
    mine = S.get(S.FINETUNE_JOB)
    if mine and mine["for"] == run.key:
        job = table.get(mine["job"])
        if job is not None:
            return job
    return table.latest("finetune", of_job=run.job_id)
