"""Page 3, Run: one button runs the study; the results compare prediction with measurement."""

import uuid

import streamlit as st

from hdap_engine.errors import HdapError
from studio import parts
from studio import state as S


def main() -> None:
    st.title("Run")
    got = parts.need_fleet()
    if got is None:
        return
    fv, cv = got
    cl = cv.clustering
    _, weights_label = parts.weights_choice()

    st.markdown(
        f"**{S.get(S.MODEL)}** ({weights_label}) pruned to "
        f"**{float(S.get(S.BUDGET_FRACTION)):.1%}** "
        f"of its MACs for **{fv.label}** ({fv.fleet.n_devices:,} devices, {cl.k_} clusters), "
        f"objective **{S.get(S.OBJECTIVE)}**, weights "
        f"**{'yours' if parts.user_weights(cv) else 'device shares'}**, backend "
        f"**{S.get(S.BACKEND)}**, method **{S.get(S.METHOD)}**, {S.get(S.SAMPLES)} candidates "
        f"measured per representative.")
    parts.weights_badge()

    c = st.columns([2, 1])
    c[0].multiselect("Also compare with (same budget, measured the same way)",
                     [m for m in parts.METHOD_TEXT if m != "hdap"], key=S.COMPARE_METHODS,
                     format_func=lambda m: parts.METHOD_TEXT[m])
    c[1].checkbox("Budget sweep for a Pareto chart", key=S.SWEEP_ON,
                  help="Searches and measures five more budgets on the same surrogate.")
    go = st.button("Run the study", type="primary", icon=":material/play_arrow:", key="run_button")


    def _context_for(options):
        """The prepared context to reuse for these options, or None to prepare a new one."""
        from hdap_engine.study import reuse_options

        ctx = S.get(S.CONTEXT)
        if ctx is None or S.get(S.CONTEXT_KEY, {}).get("clustering") != cv.key:
            return None
        try:
            reuse_options(ctx.options, options)
        except HdapError:
            return None
        return ctx


    if go:
        from hdap_engine.benchmark import compare_context, sweep_budgets, sweep_context
        from hdap_engine.pruning.budget import format_macs
        from hdap_engine.study import SEARCH_METHODS, prepare, run_study
        from hdap_engine.workspace import home, new_bundle_dir
        from studio import cached

        S.put(S.RUN_ERROR, None)
        with st.status("Running the study...", expanded=True) as status:
            report = parts.StageReporter(status)
            try:
                options = parts.study_options(fv, cv)
                store = cached.store(str(home()))
                ctx = _context_for(options)
                if ctx is None:
                    status.write(f"Preparing: {len(cl.representatives_) * options.representatives} "
                                 f"representative devices x {options.samples} candidates on the "
                                 f"{options.backend} backend (measurements already in the store "
                                 "are reused).")
                    ctx = prepare(options, fv.fleet, store=store, progress=report, fleet=fv.fleet,
                                  clustering=cl, telemetry_path=fv.path)
                    S.put(S.CONTEXT, ctx)
                    S.put(S.CONTEXT_KEY, {"clustering": cv.key, "id": uuid.uuid4().hex})
                else:
                    status.write("Reusing this fleet's measurements and surrogate: only the "
                                 "search, pruning and validation run.")
                out = new_bundle_dir(f"{options.model}-{options.method}")
                result = run_study(options, None, context=ctx, out_dir=out, store=store,
                                   progress=report)
                comparison = sweep = None
                if S.get(S.COMPARE_METHODS):
                    comparison = compare_context(ctx, options.budget, S.get(S.COMPARE_METHODS),
                                                 widths=result.widths, telemetry_path=fv.path,
                                                 progress=report)
                if S.get(S.SWEEP_ON) and ctx.surrogate is not None:
                    sweep = sweep_context(ctx, sweep_budgets(ctx.space),
                                          methods=(options.method if options.method in
                                                   SEARCH_METHODS else "hdap", "uniform"),
                                          progress=report)
                seconds = report.finish()
                S.put(S.RUN, parts.run_view(result, fleet_label=fv.label,
                                            weights_label=weights_label, seconds=seconds,
                                            comparison=comparison, sweep=sweep))
                status.update(label=f"Done in {seconds:.0f} s: {options.model} at "
                                    f"{format_macs(result.validation.macs)} MACs",
                              state="complete", expanded=False)
            except HdapError as exc:
                S.put(S.RUN_ERROR, str(exc))
                status.update(label="The study stopped", state="error", expanded=True)

    if S.get(S.RUN_ERROR):
        st.error(S.get(S.RUN_ERROR), icon=":material/error:")

    run = S.get(S.RUN)
    if run is None:
        st.info("No run yet in this session. Past runs are on the History page.")
        return

    # -- results ------------------------------------------------------------------------------
    rep = run.report
    st.header("Results")
    st.caption(f"{rep['model'] if 'model' in rep else ''} · {run.fleet_label} · method "
               f"{rep['method']} · budget {rep['budget_macs'] / 1e9:.3f} G MACs, pruned model "
               f"{rep.get('macs', rep['budget_macs']) / 1e9:.3f} G · {run.weights_label} · "
               f"{run.seconds:.0f} s")
    parts.fleet_metrics(rep)
    figs = run.figures()
    parts.show_figure(figs["clusters"], key="fig_clusters")
    if "comparison" in figs:
        parts.show_figure(figs["comparison"], key="fig_comparison")
        st.dataframe([{k: r[k] for k in ("method", "macs", "fleet_mean_ms", "p95_ms",
                                         "worst_cluster_ms", "speedup", "device_measurements")}
                      for r in run.comparison["rows"]], hide_index=True)
    left, right = st.columns(2)
    with left:
        parts.show_figure(figs["widths"], key="fig_widths")
    with right:
        if "surrogate" in figs:
            parts.show_figure(figs["surrogate"], key="fig_surrogate")
        else:
            st.info("This method trains no surrogate.")
    if "pareto" in figs:
        parts.show_figure(figs["pareto"], key="fig_pareto")
    for note in rep.get("notes") or []:
        st.caption(f":material/info: {note}")
    st.page_link("views/whatif.py", label="Next: what-if (move the budget or the weights)",
                 icon=":material/arrow_forward:")
    st.page_link("views/download.py", label="Download the model and the report",
                 icon=":material/download:")


main()
