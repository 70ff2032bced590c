"""The job kinds of life after shipping: ``rollout`` and ``reoptimise``.

A ``rollout`` job plans variants on a finished study job, re-using what it
measured: its settings are ``{"rollout": {"job": STUDY_JOB_ID, "variants": K}}``
(`rollout_settings`); its result ``{"rollout": Rollout.as_dict(), "of_job": ID}``.

A ``reoptimise`` job checks a deployed bundle against a later snapshot:
``{"reoptimise": {"bundle": DIR, "telemetry": NEW, "threshold": 0.03}}``
(`reoptimise_settings`); its result ``{"reoptimise": reoptimise_check's result}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hdap_engine.errors import HdapError

if TYPE_CHECKING:
    from hdap_engine.jobs.kinds import JobRun


def rollout_settings(study_job: int, variants: int) -> dict:
    """The settings of a ``rollout`` job planning up to ``variants`` on a study job."""
    return {"rollout": {"job": int(study_job), "variants": int(variants)}}


def reoptimise_settings(bundle: str, telemetry: str, threshold: float) -> dict:
    """The settings of a ``reoptimise`` job: ``bundle`` against the snapshot ``telemetry``,
    re-optimising above ``threshold`` (a fraction)."""
    return {"reoptimise": {"bundle": bundle, "telemetry": telemetry,
                           "threshold": float(threshold)}}


def run_rollout(settings: dict, run: JobRun) -> dict:
    """Plan a rollout on a finished study job: ``{"rollout": Rollout.as_dict(), "of_job": ID}``."""
    from hdap_engine.infra.jsonable import jsonable
    from hdap_engine.jobs.study_jobs import rebuild_context
    from hdap_engine.jobs.table import JobTable
    from hdap_engine.lifecycle.rollout import plan_rollout
    from hdap_engine.options import RolloutOptions

    store = run.measurement_store()
    spec = settings.get("rollout") or {}
    try:
        source_id = int(spec["job"])
        variants = int(spec.get("variants", RolloutOptions().variants))
    except (KeyError, TypeError, ValueError):
        raise HdapError("this rollout job names no study job to plan on; start it again from "
                        "the Rollout page") from None
    source = JobTable(store.path).get(source_id)
    if source is None or source.state != "done" or source.kind != "study":
        raise HdapError(f"job {source_id} is not a finished study, so there is nothing to plan "
                        "a rollout on; run the study again from the Run page")
    ctx, learned = rebuild_context(source.settings, source.result, store=store,
                                   agent_token=run.agent_token)
    query = None
    if ctx.options.query.latency_ms is not None:
        # A study for a latency budget: its variants are planned at the MACs found for it.
        from dataclasses import replace

        query = replace(ctx.options.query, latency_ms=None,
                        budget=str(((source.result or {}).get("report") or {})["budget"]))
    rollout = plan_rollout(ctx, variants, query=query, learned=learned, progress=run.progress)
    return jsonable({"rollout": rollout.as_dict(), "of_job": source_id})


def run_reoptimise(settings: dict, run: JobRun) -> dict:
    """`reoptimise_check` of a bundle on a snapshot: ``{"reoptimise": its result}``."""
    from hdap_engine.infra.jsonable import jsonable
    from hdap_engine.lifecycle.reoptimise import read_deployed, reoptimise_check
    from hdap_engine.options import ReoptimiseOptions

    spec = settings.get("reoptimise") or {}
    bundle, telemetry = spec.get("bundle"), spec.get("telemetry")
    if not bundle or not telemetry:
        raise HdapError("this check names no bundle or no snapshot; start it again from the "
                        "Drift page")
    options = read_deployed(bundle)[0]
    if run.agent_token:
        options = options.updated(agent_token=run.agent_token)
    result = reoptimise_check(bundle, telemetry, options=options,
                              store=run.measurement_store(), progress=run.progress,
                              threshold=float(spec.get("threshold",
                                                       ReoptimiseOptions().threshold)))
    return jsonable({"reoptimise": result})
