"""Page 4b, Rollout: would a few model variants, one per group of clusters, beat one model?

Runs on the last run's fleet, model, budget and objective, re-using its
measurements and surrogate; every plan is measured on the run's backend.
The bundles of every variant come from `hdap rollout` (named on the page).
"""

import json

import streamlit as st

from hdap_engine.errors import HdapError
from studio import cached, parts
from studio import state as S


def main() -> None:
    st.title("Rollout")
    run = S.get(S.RUN)
    if run is None:
        st.info("Run a study first: the rollout plans start from its measurements and surrogate.")
        st.page_link("views/run.py", label="Go to the Run page", icon=":material/play_circle:")
        return
    if not run.report.get("surrogate"):
        st.info(f"The last run used the {run.report['method']} method, which trains no "
                "surrogate. Run HDAP (or the paper's method) to plan a rollout.")
        return
    job = cached.jobs().get(run.job_id)
    try:
        with st.spinner("Loading the run's measurements and surrogate from the store..."):
            ctx, learned = cached.job_context(run.job_id, job.settings, job.result)
    except HdapError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    q = ctx.options.query
    st.caption(f"{run.fleet_label}, {ctx.space.model} at {q.budget} MACs, objective "
               f"{q.objective}, {ctx.k} clusters, measured by {ctx.backend.source}. Clusters "
               "whose best candidates run alike on each other share a variant; each group's "
               "model is searched with the same budget and objective, and a group keeps the one "
               "model when its variant measures no better.")
    if ctx.k < 2:
        st.info("This fleet has one cluster: one model is the only plan.")
        return
    if S.get(S.ROLLOUT_VARIANTS) is None:
        S.put(S.ROLLOUT_VARIANTS, min(3, ctx.k))
    st.number_input("Most variants", 1, ctx.k, step=1, key=S.ROLLOUT_VARIANTS)
    if st.button("Plan the rollout", type="primary", icon=":material/call_split:",
                 key="rollout_button"):
        from hdap_engine.rollout import plan_rollout

        with st.status("Planning the rollout...", expanded=True) as status:
            reporter = parts.StageReporter(status)
            try:
                plan = plan_rollout(ctx, int(S.get(S.ROLLOUT_VARIANTS)),
                                    learned=learned, progress=reporter)
                S.put(S.ROLLOUT, {"for": run.key, "doc": plan.as_dict()})
                status.update(label=f"Done in {reporter.finish():.0f} s", state="complete",
                              expanded=False)
            except HdapError as exc:
                status.update(label="Stopped", state="error")
                st.error(str(exc), icon=":material/error:")
    shown = S.get(S.ROLLOUT)
    if not shown or shown["for"] != run.key:
        return
    from hdap_engine.charts import rollout_chart
    from hdap_engine.rollout import rollout_rows

    doc = shown["doc"]
    st.dataframe(rollout_rows(doc), hide_index=True, width="stretch")
    st.caption(f"Measurement noise {doc['noise']:.2%} (the backend's run-to-run spread); a gain "
               f"below it is marked within noise. Fleet figures: {doc['basis']}.")
    for p in doc["plans"]:
        for note in p["notes"]:
            st.caption(f"{p['variants']} variants: {note}")
    parts.show_figure(rollout_chart(doc), key="fig_rollout")
    st.download_button("Download rollout.json", json.dumps(doc, indent=1),
                       file_name="rollout.json", mime="application/json",
                       icon=":material/download:")
    st.caption(f"For one bundle per variant and a device-id CSV per variant: `hdap rollout "
               f"--model {ctx.space.model} --macs {q.budget} --telemetry FILE --variants "
               f"{len(doc['plans'])} --out DIR`.")


main()
