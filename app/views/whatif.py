"""Page 4, What-if: move the budget, the objective or a cluster weight; the surrogate answers.

Nothing is measured while you move the controls: the search runs on the
run's surrogate (a few seconds), rebuilt in the server from the store. "Prune,
measure and export" queues the what-if candidate as a job (a real run).
"""

import streamlit as st

from hdap_engine.errors import HdapError
from hdap_engine.jobs import what_if_settings
from studio import cached
from studio import state as S
from studio.fleet import chosen_weights, slider_value
from studio.jobs import submit
from studio.options import objective_choices, objective_text
from studio.results import run_with_surrogate, show_figure


def main() -> None:
    st.title("What-if")
    run = run_with_surrogate("to explore what-ifs")
    if run is None:
        return
    rep = run.report
    job = cached.jobs().get(run.job_id)
    try:
        with st.spinner("Loading the run's measurements and surrogate from the store..."):
            ctx, learned = cached.job_context(run.job_id, job.settings, job.result)
    except HdapError as exc:
        st.error(str(exc), icon=":material/error:")
        return

    from hdap_engine.search.methods import get_method

    # A baseline run is explored with the method its context was prepared for.
    method = rep["method"] if get_method(rep["method"]).searches else ctx.options.method
    shares = [float(s) for s in ctx.clustering.shares_]
    space = ctx.space
    min_pct = float(int(space.min_macs / space.base_macs * 1000 + 1)) / 10
    clusters = rep["clusters"]
    slo_ms = ctx.options.query.slo_ms
    run_macs = float(rep.get("macs") or space.macs(space.widths_from_dict(run.widths)))

    def _reset():
        S.put(S.WHATIF_BUDGET, round(rep["budget_macs"] / space.base_macs * 100, 1))
        S.put(S.WHATIF_OBJECTIVE, rep["objective"])
        for c in clusters:
            S.put(S.whatif_weight_key(c["cluster"]), slider_value(c["weight"]))
        S.put(S.WHATIF_FOR, run.key)


    if S.get(S.WHATIF_FOR) != run.key:
        _reset()

    st.caption(f"Starting point: the last run ({run.fleet_label}, {space.model}, method {method}). "
               "Moving a control re-runs the search on the cached surrogate; nothing is "
               "measured. At the run's own settings the what-if candidate can differ a little "
               "from the run's: the run also measured the search's best few before choosing.")
    c = st.columns([2, 1])
    c[0].slider("Budget (% of the unpruned model's MACs)", min_pct, 100.0, step=0.5,
                format="%.1f%%", key=S.WHATIF_BUDGET)
    c[1].selectbox("Objective", [o for o in objective_choices() if o != "slo"]
                   + (["slo"] if slo_ms else []),
                   key=S.WHATIF_OBJECTIVE, format_func=objective_text)
    st.markdown("**Cluster weights** (normalised before use)")
    wc = st.columns(min(ctx.k, 5))
    for i in range(ctx.k):
        wc[i % len(wc)].slider(f"cluster {i} ({shares[i]:.0%} of devices)", 0.0, 1.0, step=0.005,
                               key=S.whatif_weight_key(i))
    st.button("Back to the run's settings", on_click=_reset, icon=":material/restart_alt:")

    budget = f"{float(S.get(S.WHATIF_BUDGET)) / 100:.6f}"
    user = chosen_weights([S.get(S.whatif_weight_key(i)) for i in range(ctx.k)], shares)
    weights = None if user is None else tuple(user.values())  # hashable, for the cache
    objective = S.get(S.WHATIF_OBJECTIVE)
    try:
        with st.spinner("Searching on the surrogate..."):
            opt = cached.whatif(ctx, learned, run.key, budget, weights, objective, slo_ms,
                                method)
    except HdapError as exc:
        st.error(str(exc), icon=":material/error:")
        return

    from hdap_engine.report.charts import cluster_bars, widths_chart
    from hdap_engine.search.objectives import predicted_fleet_mean

    pred = [float(x) for x in opt.predicted_cluster_ms]
    study_pred = None if clusters[0].get("predicted_ms") is None else \
        [float(c["predicted_ms"]) for c in clusters]
    fleet_pred = predicted_fleet_mean(pred, shares)
    m = st.columns(4)
    m[0].metric("What-if MACs", f"{space.macs(opt.widths) / 1e9:.3f} G",
                delta=f"{(space.macs(opt.widths) - run_macs) / 1e9:+.3f} G vs run")
    m[1].metric("Predicted fleet mean", f"{fleet_pred:.2f} ms",
                delta=None if study_pred is None else
                f"{fleet_pred - predicted_fleet_mean(study_pred, shares):+.2f} "
                "ms vs run (predicted)", delta_color="inverse",
                help="surrogate prediction, weighted by device share")
    m[2].metric("Run's measured fleet mean", f"{run.report['fleet']['measured_mean_ms']:.2f} ms",
                help=f"measured: {run.report['measured_source']}")
    m[3].metric("Search time", f"{opt.search_s:.1f} s")

    show_figure(cluster_bars(shares, {
        f"run, measured ({run.report['measured_source']})":
            [float(c["measured_ms"]) for c in clusters],
        "run, predicted": study_pred or [None] * ctx.k,
        "what-if, predicted": pred,
    }, title="Latency per cluster: the run against the what-if candidate"), key="fig_whatif")
    show_figure(widths_chart({"unpruned": run.base_widths, "pruned": run.widths,
                                    "what-if": space.widths_dict(opt.widths)}),
                      key="fig_whatif_widths")

    st.subheader("Make it real")
    st.caption("Queues a job that prunes the what-if candidate's model, measures it per cluster "
               "on the run's backend and exports it; the Run page follows it.")
    if st.button("Prune, measure and export this candidate", type="primary",
                 icon=":material/build:", key="whatif_apply"):
        options = ctx.options.updated(budget=budget, objective=objective, cluster_weights=user,
                                      method=method)
        new, _ = submit("study", what_if_settings(job.settings, options))
        S.put(S.JOB, new.id)
        st.switch_page("views/run.py", query_params={"job": str(new.id)})


main()
