"""Page 4, What-if: move the budget, the objective or a cluster weight; the surrogate answers.

Nothing is measured while you move the controls: the search runs on the
run's surrogate (a few seconds). "Prune, measure and export" turns the
what-if candidate into a real run.
"""

import streamlit as st

from hdap_engine.errors import HdapError
from studio import cached, parts
from studio import state as S


def main() -> None:
    st.title("What-if")
    run = S.get(S.RUN)
    if run is None:
        st.info("Run a study first: the what-if search reuses its measurements and surrogate.")
        st.page_link("views/run.py", label="Go to the Run page", icon=":material/play_circle:")
        return
    result = run.result
    ctx = result.context
    if ctx.surrogate is None:
        st.info(f"The last run used the {result.method} method, which trains no surrogate. Run "
                "HDAP (or the paper's method, or single-device) to explore what-ifs.")
        return

    from hdap_engine.search.methods import get_method

    # A baseline run is explored with the method its context was prepared for.
    method = result.method if get_method(result.method).searches else ctx.options.method
    shares = [float(s) for s in ctx.clustering.weights_]
    space = ctx.space
    min_pct = float(int(space.min_macs / space.base_macs * 1000 + 1)) / 10


    def _reset():
        S.put(S.WHATIF_BUDGET, round(result.target_macs / space.base_macs * 100, 1))
        S.put(S.WHATIF_OBJECTIVE, result.objective.kind)
        for c, w in enumerate(result.cluster_weights):
            S.put(S.whatif_weight_key(c), round(float(w), 3))
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
    c[1].selectbox("Objective", [o for o in parts.OBJECTIVE_TEXT if o != "slo"]
                   + (["slo"] if result.objective.slo_ms else []),
                   key=S.WHATIF_OBJECTIVE, format_func=lambda k: f"{k}: {parts.OBJECTIVE_TEXT[k]}")
    st.markdown("**Cluster weights** (normalised before use)")
    wc = st.columns(min(ctx.k, 5))
    for i in range(ctx.k):
        wc[i % len(wc)].slider(f"cluster {i} ({shares[i]:.0%} of devices)", 0.0, 1.0, step=0.005,
                               key=S.whatif_weight_key(i))
    st.button("Back to the run's settings", on_click=_reset, icon=":material/restart_alt:")

    budget = f"{float(S.get(S.WHATIF_BUDGET)) / 100:.6f}"
    weights = tuple(float(S.get(S.whatif_weight_key(i))) for i in range(ctx.k))
    if all(abs(w - round(s, 3)) < 1e-9 for w, s in zip(weights, shares, strict=True)):
        weights = None  # the device shares: the default, recorded as such
    objective = S.get(S.WHATIF_OBJECTIVE)
    try:
        with st.spinner("Searching on the surrogate..."):
            opt = cached.whatif(ctx, result.learned, run.key, budget, weights, objective,
                                result.objective.slo_ms, method)
    except HdapError as exc:
        st.error(str(exc), icon=":material/error:")
        return

    from hdap_engine.charts import cluster_bars, widths_chart

    pred = [float(x) for x in opt.predicted_cluster_ms]
    study_pred = None if result.predicted_cluster_ms is None else \
        [float(x) for x in result.predicted_cluster_ms]
    fleet_pred = sum(p * s for p, s in zip(pred, shares, strict=True))
    m = st.columns(4)
    m[0].metric("What-if MACs", f"{space.macs(opt.widths) / 1e9:.3f} G",
                delta=f"{(space.macs(opt.widths) - result.verification.macs) / 1e9:+.3f} G vs run")
    m[1].metric("Predicted fleet mean", f"{fleet_pred:.2f} ms",
                delta=None if study_pred is None else
                f"{fleet_pred - sum(p * s for p, s in zip(study_pred, shares, strict=True)):+.2f} "
                "ms vs run (predicted)", delta_color="inverse",
                help="surrogate prediction, weighted by device share")
    m[2].metric("Run's measured fleet mean", f"{run.report['fleet']['measured_mean_ms']:.2f} ms",
                help=f"measured: {run.report['measured_source']}")
    m[3].metric("Search time", f"{opt.search_s:.1f} s")

    parts.show_figure(cluster_bars(shares, {
        f"run, measured ({run.report['measured_source']})":
            [float(x) for x in result.verification.cluster_measured_ms],
        "run, predicted": study_pred or [None] * ctx.k,
        "what-if, predicted": pred,
    }, title="Latency per cluster: the run against the what-if candidate"), key="fig_whatif")
    parts.show_figure(widths_chart({"unpruned": run.base_widths, "pruned": run.widths,
                                    "what-if": space.widths_dict(opt.widths)}),
                      key="fig_whatif_widths")

    st.subheader("Make it real")
    st.caption("Prunes the what-if candidate's model, measures it per cluster on the run's backend "
               "and exports it; it becomes the run on the Run and Download pages.")
    if st.button("Prune, measure and export this candidate", type="primary",
                 icon=":material/build:", key="whatif_apply"):
        from hdap_engine.study import run_study
        from hdap_engine.workspace import home, new_bundle_dir

        user = None if weights is None else dict(enumerate(weights))
        with st.status("Pruning, measuring and exporting...", expanded=True) as status:
            reporter = parts.StageReporter(status)
            try:
                options = ctx.options.updated(budget=budget, objective=objective,
                                              cluster_weights=user, method=method)
                new = run_study(options, None, context=ctx, learned=result.learned,
                                store=cached.store(str(home())),
                                out_dir=new_bundle_dir(f"{space.model}-whatif"), progress=reporter)
                seconds = reporter.finish()
                S.put(S.RUN, parts.run_view(new, fleet_label=run.fleet_label,
                                            weights_label=run.weights_label, seconds=seconds))
                status.update(label=f"Done in {seconds:.0f} s", state="complete", expanded=False)
                st.rerun()
            except HdapError as exc:
                status.update(label="Stopped", state="error")
                st.error(str(exc), icon=":material/error:")


main()
