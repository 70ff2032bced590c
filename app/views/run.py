"""Page 3, Run: one button starts the study as a job; the page follows it and shows its results.

The study runs in a worker process on the server (`hdap_engine.jobs`), not in
this page: the page polls the job's record in the store. Its link
(``?job=ID``) shows the same progress and results in any tab or browser, to
anyone on the team, and a closed tab loses nothing.
"""

import streamlit as st

from hdap_engine.errors import HdapError
from studio import state as S
from studio.fleet import need_fleet, user_weights
from studio.jobs import elapsed_text, finished_job, study_job_settings, submit
from studio.options import (
    budget_summary,
    data_check,
    data_choice,
    finetune_epochs,
    method_choices,
    method_text,
    min_accuracy,
    study_options,
    weights_badge,
    weights_choice,
)
from studio.results import (
    accuracy_line,
    detection_picture,
    fleet_headline,
    precision_section,
    run_view,
    show_figure,
)


def _job_id() -> int | None:
    """The job on screen: the link's ``?job=``, else this session's last one."""
    raw = st.query_params.get("job")
    if raw is not None:
        try:
            job_id = int(raw)
        except ValueError:
            st.error(f"The link names job {raw!r}, which is not a job number. Start a run "
                     "below, or open one from the History page.", icon=":material/error:")
            return S.get(S.JOB)
        S.put(S.JOB, job_id)
        return job_id
    job_id = S.get(S.JOB)
    if job_id is not None:
        st.query_params["job"] = str(job_id)  # the address bar is the shareable link
    return job_id


def _start(fv, cv) -> None:
    """Queue the study of the widgets (or open the equal one already queued or running)."""
    S.put(S.RUN_ERROR, None)
    try:
        options = study_options(fv, cv)
    except HdapError as exc:
        S.put(S.RUN_ERROR, str(exc))
        return
    if fv.file is None:
        S.put(S.RUN_ERROR, "this fleet has no file the server can read; upload it again on "
                           "the Fleet page")
        return
    _, problem = data_check()
    if problem:  # the worker would refuse it after the fleet work; say so now
        S.put(S.RUN_ERROR, f"{problem} (labelled data, Model page)")
        return
    job, created = submit("study", study_job_settings(fv, cv, options))
    S.put(S.JOB, job.id)
    st.query_params["job"] = str(job.id)
    if not created:
        st.toast(f"The same study is already {job.state} as job {job.id}: showing it.",
                 icon=":material/info:")


# The detection demo: the shipped detector with its trained weights on the synthetic shapes
# it was trained on, half its MACs, compared with uniform pruning at the same MACs.
DEMO_FLEET = "jetson_nano_fleet"
DETECTION_DEMO = {S.MODEL_SOURCE: "detector", S.MODEL: "detector_demo", S.WEIGHTS_MODE: "demo",
                  S.DATA_MODE: "shapes", S.FLOOR_MODE: "none", S.FINETUNE_EPOCHS: 0,
                  S.BUDGET_UNIT: "% of the model", S.BUDGET_FRACTION: 0.5,
                  S.PRECISION: "fp32", S.COMPARE_METHODS: ["uniform"], S.SWEEP_ON: False}


def _choose_detection_demo() -> None:
    """The demo button: its settings on the Model page's widgets (so they stay visible
    there), the Jetson sample fleet when it is shipped, and a study to start."""
    from studio import cached

    for key, value in DETECTION_DEMO.items():
        S.put(key, list(value) if isinstance(value, list) else value)
    if DEMO_FLEET in cached.sample_fleets():
        S.put(S.FLEET_CHOICE, DEMO_FLEET)
    S.put(S.DEMO_PENDING, True)


def _detection_demo() -> None:
    """One click: the detection demo as a study on the Jetson sample fleet."""
    from studio.options import demo_origin, shapes_label

    with st.expander("Detection demo: prune the shapes detector for the Jetson fleet",
                     icon=":material/center_focus_strong:"):
        st.markdown("**detector_demo** (SSDlite, half-width MobileNetV3, 160x160) with its "
                    "trained weights, pruned to **50 %** of its MACs for the Jetson Nano "
                    "sample fleet and compared with uniform pruning at the same MACs; mAP@.5 "
                    f"and mAP@[.5:.95] on the held-out part of the {shapes_label()}, and "
                    "both detectors' boxes on one held-out image.")
        st.caption(demo_origin("detector_demo"))
        st.button("Run the detection demo", icon=":material/play_arrow:",
                  key="det_demo_button", on_click=_choose_detection_demo,
                  help="Sets the Model page's choices (you can change them there) and "
                       "queues the study. The shapes are generated once per workspace "
                       "(about 15 s).")


def _pct(value) -> float | None:
    return None if value is None else 100 * float(value)


def _results(run) -> None:
    """The study's numbers and charts."""
    from hdap_engine.accuracy.report import metric_label

    rep = run.report
    st.header("Results")
    who = f" · run by {run.owner}" if run.owner else ""
    st.caption(f"Job {run.job_id}{who} · {rep.get('model', '')} · {run.fleet_label} · method "
               f"{rep['method']} · budget {rep['budget_macs'] / 1e9:.3f} G MACs, pruned model "
               f"{rep.get('macs', rep['budget_macs']) / 1e9:.3f} G · {run.weights_label} · "
               f"{elapsed_text(run.seconds)}")
    fleet_headline(rep)
    lb = rep.get("latency_budget")
    if lb:
        st.caption(f":material/timer: latency budget **{lb['latency_ms']:g} ms** "
                   f"({lb['objective']}): the most MACs found for it, {lb['macs_label']}, "
                   f"measured **{lb['measured_ms']:.2f} ms**: "
                   f"{'met' if lb['met'] else 'not met (the surrogate was optimistic: lower the budget a little, or measure more)'}")
    st.caption(f":material/target: {accuracy_line(rep.get('accuracy'))}")
    detection_picture(run)
    if rep.get("precision") == "int8":
        precision_section(rep)
    if (rep.get("accuracy") or {}).get("unpruned") is None:
        st.caption("Choose labelled data on the Model page to measure accuracy: until it is "
                   "known, nothing says the pruned model is usable.")
    figs = run.figures()
    show_figure(figs["clusters"], key="fig_clusters")
    left, right = st.columns(2)
    with left:
        show_figure(figs["widths"], key="fig_widths")
    with right:
        if "surrogate" in figs:
            show_figure(figs["surrogate"], key="fig_surrogate")
        else:
            st.info("This method trains no surrogate.")
    m = run.measurements
    if m and m.get("from_store"):
        st.caption(f":material/database: {m['from_store']:,} of {m['from_store'] + m['measured']:,}"
                   " sampled measurements came from the store (measured before).")
    for note in rep.get("notes") or []:
        st.caption(f":material/info: {note}")
    if "comparison" in figs:
        show_figure(figs["comparison"], key="fig_comparison")
        rows = run.comparison["rows"]
        # Accuracy columns only when some row measured one (with labelled data).
        stages = [s for s in ("pruned", "calibrated", "finetuned")
                  if any((r.get("accuracy") or {}).get(s) is not None for r in rows)]
        metric = metric_label(rep.get("accuracy"))
        acc_cols = {s: f"{'fine-tuned' if s == 'finetuned' else s} {metric}" for s in stages}
        st.dataframe([{"method": method_text(r["method"]),
                       "G MACs": r["macs"] / 1e9, "fleet mean ms": r["fleet_mean_ms"],
                       "p95 ms": r["p95_ms"], "worst cluster ms": r["worst_cluster_ms"],
                       "speedup": r["speedup"],
                       **{col: _pct((r.get("accuracy") or {}).get(s))
                          for s, col in acc_cols.items()},
                       "device measurements": r["device_measurements"]}
                      for r in rows], hide_index=True, key="comparison_table", column_config={
            "G MACs": st.column_config.NumberColumn(format="%.3f"),
            **{c: st.column_config.NumberColumn(format="%.2f")
               for c in ("fleet mean ms", "p95 ms", "worst cluster ms")},
            "speedup": st.column_config.NumberColumn(format="%.2fx"),
            **{col: st.column_config.NumberColumn(format="%.1f%%", help=f"held-out {metric}")
               for col in acc_cols.values()}})
    if "pareto" in figs:
        show_figure(figs["pareto"], key="fig_pareto")
    if "accuracy_pareto" in figs:
        show_figure(figs["accuracy_pareto"], key="fig_accuracy_pareto")
    st.page_link("views/whatif.py", label="Next: what-if (move the budget or the weights)",
                 icon=":material/arrow_forward:")
    st.page_link("views/finetune.py", label="Fine-tune the pruned model (distillation)",
                 icon=":material/model_training:")
    st.page_link("views/download.py", label="Download the model and the report",
                 icon=":material/download:")


def _show(job_id: int) -> None:
    job = finished_job(job_id)
    if job is None:
        return
    run = S.get(S.RUN)
    if run is None or run.job_id != job.id:
        run = run_view(job)
        S.put(S.RUN, run)
    _results(run)


def main() -> None:
    st.title("Run")
    job_id = _job_id()
    got = need_fleet()
    if got is not None:
        fv, cv = got
        cl = cv.clustering
        _, weights_label = weights_choice()
        st.markdown(
            f"**{S.get(S.MODEL)}** ({weights_label}) pruned to "
            f"{budget_summary()} for **{fv.label}** "
            f"({fv.fleet.n_devices:,} devices, {cl.k_} clusters), objective "
            f"**{S.get(S.OBJECTIVE)}**, weights "
            f"**{'yours' if user_weights(cv) else 'device shares'}**, backend "
            f"**{S.get(S.BACKEND)}**, method **{S.get(S.METHOD)}**, {S.get(S.SAMPLES)} "
            f"candidates measured per representative, **{S.get(S.SEARCH_EFFORT)}** search; "
            "labelled data "
            f"**{data_choice()[1]}**"
            + (f", accuracy floor **{min_accuracy()}**" if min_accuracy() else "")
            + (f", then **{finetune_epochs()}** fine-tune epochs"
               if finetune_epochs() else "") + ".")
        weights_badge()
        _detection_demo()
        if S.get(S.DEMO_PENDING):
            S.put(S.DEMO_PENDING, False)
            with st.spinner("Preparing the shapes data (generated once per workspace)..."):
                _start(fv, cv)
            job_id = S.get(S.JOB)
        c = st.columns([2, 1])
        c[0].multiselect("Also compare with (same budget, measured the same way)",
                         [m for m in method_choices() if m != S.get(S.METHOD)],
                         key=S.COMPARE_METHODS, format_func=method_text)
        c[1].checkbox("Budget sweep for a Pareto chart", key=S.SWEEP_ON,
                      help="Searches and measures five more budgets on the same surrogate.")
        if st.button("Run the study", type="primary", icon=":material/play_arrow:",
                     key="run_button"):
            _start(fv, cv)
            job_id = S.get(S.JOB)
        st.caption("The study runs as a job on the server: you can close this tab, and the "
                   "page's link shows its progress and results to anyone on the team.")
    if S.get(S.RUN_ERROR):
        st.error(S.get(S.RUN_ERROR), icon=":material/error:")
    if job_id is None:
        st.info("No run yet in this session. Past runs are on the History page.")
        return
    _show(job_id)


main()
