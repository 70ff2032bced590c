"""Page 3, Run: one button runs the study; the results compare prediction with measurement.

The study's own results are drawn as soon as it is done; the optional
comparison with other methods and the budget sweep follow below them.
"""

import uuid

import streamlit as st

from hdap_engine.errors import HdapError
from studio import cached, parts
from studio import state as S


def _context_for(options, clustering_key: str):
    """The prepared context to reuse for these options, or None to prepare a new one."""
    from hdap_engine.study import reuse_options

    ctx = S.get(S.CONTEXT)
    if ctx is None or S.get(S.CONTEXT_KEY, {}).get("clustering") != clustering_key:
        return None
    try:
        reuse_options(ctx.options, options)
    except HdapError:
        return None
    return ctx


def _run(fv, cv, weights_label: str) -> None:
    """Prepare (or reuse), optimise, prune, validate and export; the result goes to state."""
    from hdap_engine.prepare import prepare
    from hdap_engine.pruning.budget import format_macs
    from hdap_engine.study import run_study
    from hdap_engine.workspace import home, new_bundle_dir

    S.put(S.RUN_ERROR, None)
    with st.status("Running the study...", expanded=True) as status:
        reporter = parts.StageReporter(status)
        try:
            options = parts.study_options(fv, cv)
            store = cached.store(str(home()))
            ctx = _context_for(options, cv.key)
            if ctx is None:
                m = options.measurement
                status.write(f"Preparing: {cv.clustering.k_ * options.clustering.representatives} "
                             f"representative devices x {m.samples} candidates on the "
                             f"{m.backend} backend (measurements already in the store "
                             "are reused).")
                ctx = prepare(options, fv.fleet, store=store, progress=reporter,
                              fleet=fv.fleet, clustering=cv.clustering, telemetry_path=fv.path)
                S.put(S.CONTEXT, ctx)
                S.put(S.CONTEXT_KEY, {"clustering": cv.key, "id": uuid.uuid4().hex})
            else:
                status.write("Reusing this fleet's measurements and surrogate: only the "
                             "search, pruning and validation run.")
            result = run_study(options, None, context=ctx, store=store, progress=reporter,
                               out_dir=new_bundle_dir(f"{options.model}-{options.method}"))
            seconds = reporter.finish()
            S.put(S.RUN, parts.run_view(result, fleet_label=fv.label,
                                        weights_label=weights_label, seconds=seconds))
            status.update(label=f"Done in {seconds:.0f} s: {options.model} at "
                                f"{format_macs(result.verification.macs)} MACs",
                          state="complete", expanded=False)
        except HdapError as exc:
            S.put(S.RUN_ERROR, str(exc))
            status.update(label="The study stopped", state="error", expanded=True)


def _extras(run, fv) -> None:
    """The comparison with other methods and the budget sweep, on the run's context."""
    from hdap_engine.benchmark import compare_context, sweep_budgets, sweep_context

    ctx = run.result.context
    methods = S.get(S.COMPARE_METHODS) or []
    sweep = bool(S.get(S.SWEEP_ON)) and run.result.surrogate is not None
    if not methods and not sweep:
        return
    what = " and ".join(x for x in ("comparing methods" if methods else "",
                                    "budget sweep" if sweep else "") if x)
    with st.status(what.capitalize() + "...", expanded=True) as status:
        reporter = parts.StageReporter(status)
        try:
            if methods:
                run.comparison = compare_context(
                    ctx, run.report["budget"], methods, widths=run.result.widths,
                    device_measurements=run.result.device_measurements,
                    telemetry_path=fv.path, progress=reporter)
            if sweep:
                from dataclasses import replace

                # No refinement: the sweep reuses the surrogate as the run left it (each
                # budget's finalists are still measured), so five budgets take seconds.
                run.sweep = sweep_context(
                    ctx, sweep_budgets(ctx.space),
                    plan=replace(ctx.options.search, refine_rounds=0),
                    learned=run.result.learned, progress=reporter)
            seconds = reporter.finish()
            run.seconds += seconds
            status.update(label=f"{what.capitalize()}: done in {seconds:.0f} s",
                          state="complete", expanded=False)
        except HdapError as exc:
            status.update(label=f"{what.capitalize()} stopped", state="error")
            st.error(str(exc), icon=":material/error:")


def _results(run) -> None:
    """The study's numbers and charts."""
    rep = run.report
    st.header("Results")
    st.caption(f"{rep.get('model', '')} · {run.fleet_label} · method {rep['method']} · budget "
               f"{rep['budget_macs'] / 1e9:.3f} G MACs, pruned model "
               f"{rep.get('macs', rep['budget_macs']) / 1e9:.3f} G · {run.weights_label}")
    parts.fleet_headline(rep)
    figs = run.figures()
    parts.show_figure(figs["clusters"], key="fig_clusters")
    left, right = st.columns(2)
    with left:
        parts.show_figure(figs["widths"], key="fig_widths")
    with right:
        if "surrogate" in figs:
            parts.show_figure(figs["surrogate"], key="fig_surrogate")
        else:
            st.info("This method trains no surrogate.")
    for note in rep.get("notes") or []:
        st.caption(f":material/info: {note}")


def _extra_results(run) -> None:
    figs = run.figures()
    if "comparison" in figs:
        parts.show_figure(figs["comparison"], key="fig_comparison")
        st.dataframe([{"method": parts.method_text(r["method"]),
                       "G MACs": r["macs"] / 1e9, "fleet mean ms": r["fleet_mean_ms"],
                       "p95 ms": r["p95_ms"], "worst cluster ms": r["worst_cluster_ms"],
                       "speedup": r["speedup"], "device measurements": r["device_measurements"]}
                      for r in run.comparison["rows"]], hide_index=True, column_config={
            "G MACs": st.column_config.NumberColumn(format="%.3f"),
            **{c: st.column_config.NumberColumn(format="%.2f")
               for c in ("fleet mean ms", "p95 ms", "worst cluster ms")},
            "speedup": st.column_config.NumberColumn(format="%.2fx")})
    if "pareto" in figs:
        parts.show_figure(figs["pareto"], key="fig_pareto")


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
        f"**{float(S.get(S.BUDGET_FRACTION)):.1%}** of its MACs for **{fv.label}** "
        f"({fv.fleet.n_devices:,} devices, {cl.k_} clusters), objective "
        f"**{S.get(S.OBJECTIVE)}**, weights "
        f"**{'yours' if parts.user_weights(cv) else 'device shares'}**, backend "
        f"**{S.get(S.BACKEND)}**, method **{S.get(S.METHOD)}**, {S.get(S.SAMPLES)} candidates "
        "measured per representative.")
    parts.weights_badge()
    c = st.columns([2, 1])
    c[0].multiselect("Also compare with (same budget, measured the same way)",
                     [m for m in parts.method_choices() if m != S.get(S.METHOD)],
                     key=S.COMPARE_METHODS, format_func=parts.method_text)
    c[1].checkbox("Budget sweep for a Pareto chart", key=S.SWEEP_ON,
                  help="Searches and measures five more budgets on the same surrogate.")
    go = st.button("Run the study", type="primary", icon=":material/play_arrow:",
                   key="run_button")
    if go:
        _run(fv, cv, weights_label)
    if S.get(S.RUN_ERROR):
        st.error(S.get(S.RUN_ERROR), icon=":material/error:")
    run = S.get(S.RUN)
    if run is None:
        st.info("No run yet in this session. Past runs are on the History page.")
        return
    _results(run)
    if go and not S.get(S.RUN_ERROR):
        _extras(run, fv)
    _extra_results(run)
    st.page_link("views/whatif.py", label="Next: what-if (move the budget or the weights)",
                 icon=":material/arrow_forward:")
    st.page_link("views/download.py", label="Download the model and the report",
                 icon=":material/download:")


main()
