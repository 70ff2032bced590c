"""Page 4b, Rollout: would a few model variants, one per cohort of clusters, beat one model?

Runs on the last run's fleet, model, budget and objective, re-using its
measurements and surrogate; every plan is measured on the run's backend.
The bundles of every variant come from `hdap rollout` (named on the page).
"""

import json

import streamlit as st

from hdap_engine.jobs import rollout_settings
from studio import state as S
from studio.jobs import finished_job, submit
from studio.results import run_with_surrogate, show_figure


def _start(run, variants: int) -> None:
    """Queue the planning job (or open the equal one already queued, running or done)."""
    job, created = submit("rollout", rollout_settings(run.job_id, variants))
    S.put(S.ROLLOUT_JOB, {"for": run.key, "job": job.id})
    if not created:
        st.toast(f"The same plan is already {job.state} as job {job.id}: showing it.",
                 icon=":material/info:")


def main() -> None:
    st.title("Rollout")
    run = run_with_surrogate("to plan a rollout")
    if run is None:
        return
    rep = run.report
    k = int(rep["k"])
    st.caption(f"{run.fleet_label}, {rep.get('model', '')} at {rep['budget']} MACs, objective "
               f"{rep['objective']}, {k} clusters, measured by {rep['measured_source']}. "
               "Clusters whose best candidates run alike on each other share a variant (a cohort); "
               "each cohort's model is searched with the same budget and objective, and a "
               "cohort keeps the one model when its variant measures no better.")
    if k < 2:
        st.info("This fleet has one cluster: one model is the only plan.")
        return
    if S.get(S.ROLLOUT_VARIANTS) is None:
        from hdap_engine.options import RolloutOptions

        S.put(S.ROLLOUT_VARIANTS, min(RolloutOptions().variants, k))
    st.number_input("Most variants", 1, k, step=1, key=S.ROLLOUT_VARIANTS)
    if st.button("Plan the rollout", type="primary", icon=":material/call_split:",
                 key="rollout_button"):
        _start(run, int(S.get(S.ROLLOUT_VARIANTS)))
    st.caption("Planning runs as a job on the server, re-using the run's measurements and "
               "surrogate; every plan's models are measured on the run's backend.")
    mine = S.get(S.ROLLOUT_JOB)
    if not mine or mine["for"] != run.key:
        return
    job = finished_job(mine["job"])
    if job is None:
        return
    from hdap_engine.lifecycle.rollout import rollout_rows
    from hdap_engine.report.charts import rollout_chart

    doc = job.result["rollout"]
    st.dataframe(rollout_rows(doc), hide_index=True, width="stretch")
    st.caption(f"Measurement noise {doc['noise']:.2%} (the backend's run-to-run spread); a gain "
               f"below it is marked within noise. Fleet figures: {doc['basis']}.")
    for p in doc["plans"]:
        for note in p["notes"]:
            st.caption(f"{p['variants']} variants: {note}")
    show_figure(rollout_chart(doc), key="fig_rollout")
    st.download_button("Download rollout.json", json.dumps(doc, indent=1),
                       file_name="rollout.json", mime="application/json",
                       icon=":material/download:")
    st.caption("For one bundle per variant and a device-id CSV per variant: `hdap rollout "
               f"--model {rep.get('model', 'MODEL')} --macs {rep['budget']} --telemetry FILE "
               f"--variants {len(doc['plans'])} --out DIR`.")


main()
