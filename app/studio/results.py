"""A finished study on screen: its record as the pages draw it, headline numbers, figures.

Everything comes from the job's record in the store; the figures are the
engine's (`hdap_engine.report.charts`), the accuracy wording too.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from studio import cached
from studio import state as S
from studio.options import data_name


@dataclass
class RunView:
    """A finished study job on screen: everything comes from the job's record in the store."""

    job_id: int
    report: dict  # report.json of the bundle (MACs, widths added at export)
    widths: dict
    base_widths: dict
    test_points: object  # {column: values} or None
    settings: dict
    fleet_label: str
    weights_label: str
    seconds: float
    bundle: str | None = None
    comparison: dict | None = None
    sweep: dict | None = None
    owner: str | None = None
    measurements: dict | None = None

    @property
    def key(self) -> str:
        return f"job{self.job_id}"

    def figures(self) -> dict:
        from hdap_engine.report.charts import study_figures

        return study_figures(self.report, widths=self.widths, base_widths=self.base_widths,
                             test_points=self.test_points, sweep=self.sweep,
                             comparison=self.comparison)


def run_view(job) -> RunView:
    """The results of a finished study job (`hdap_engine.jobs.Job`), as the pages draw them."""
    res = job.result or {}
    report = res["report"]
    return RunView(job_id=job.id, report=report, widths=res["widths"],
                   base_widths=res["base_widths"], test_points=res.get("test_points"),
                   settings=job.settings,
                   fleet_label=job.settings.get("fleet_label") or report.get("fleet_source", ""),
                   weights_label=report.get("model_weights", ""), seconds=job.seconds or 0.0,
                   bundle=res.get("bundle"), comparison=res.get("comparison"),
                   sweep=res.get("sweep"), owner=job.owner,
                   measurements=res.get("measurements"))


def run_with_surrogate(purpose: str):
    """The last run when it trained a surrogate; otherwise says why and where to go (None).

    ``purpose`` ends the sentences, e.g. "to plan a rollout".
    """
    run = S.get(S.RUN)
    if run is None:
        st.info(f"Run a study first {purpose}: this page starts from its measurements and "
                "surrogate.")
        st.page_link("views/run.py", label="Go to the Run page", icon=":material/play_circle:")
        return None
    if not run.report.get("surrogate"):
        st.info(f"The last run used the {run.report['method']} method, which trains no "
                f"surrogate. Run a method that searches (HDAP, for one) {purpose}.")
        return None
    return run


def accuracy_line(block: dict | None) -> str:
    """The engine's one-line accuracy summary, naming an upload as its user knows it."""
    from hdap_engine.accuracy.report import accuracy_summary

    line = accuracy_summary(block)
    data = (block or {}).get("dataset")
    return line.replace(data, data_name(data)) if data else line


def detection_picture(run: RunView) -> None:
    """A detector study's picture: the unpruned and the pruned detector's boxes side by
    side on one held-out image (`hdap_engine.report.detections`); nothing for a
    classifier, or without labelled data."""
    from hdap_engine.errors import HdapError
    from hdap_engine.options import flatten_settings

    if (run.report.get("model_ref") or {}).get("task") != "detection" or not run.bundle:
        return
    opt = flatten_settings((run.settings or {}).get("options") or {})
    if not opt.get("data"):
        st.caption(":material/image: No detection picture: it draws held-out images, and "
                   "no labelled data was given.")
        return
    from hdap_engine.report.detections import SCORE_THRESHOLD

    st.subheader("What the detectors see")
    threshold = st.slider("Boxes scoring at least", 0.05, 0.95, SCORE_THRESHOLD, step=0.05,
                          key=f"picture_threshold_{run.job_id}",
                          help="The detectors keep lower-scored boxes too (mAP counts "
                               "them); the picture draws the sure ones.")
    try:
        with st.spinner("Drawing the unpruned and the pruned detector's boxes..."):
            png, caption = cached.study_picture(run.bundle, opt["model"],
                                                opt.get("model_weights"), opt["data"],
                                                opt.get("val_data"), int(opt.get("seed", 0)),
                                                float(threshold))
    except HdapError as exc:
        st.warning(f"No detection picture: {exc}", icon=":material/image:")
        return
    st.image(png, caption=f"Predicted boxes of the unpruned (left) and the pruned (right) "
                          f"detector as exported, on the "
                          f"{caption.replace(opt['data'], data_name(opt['data']))}.")


def fleet_headline(report: dict) -> None:
    """The fleet's headline numbers, each naming where it comes from."""
    fleet = report["fleet"]
    source = report["measured_source"]
    c = st.columns(4)
    c[0].metric("Fleet mean latency", f"{fleet['measured_mean_ms']:.2f} ms",
                delta=f"{fleet['measured_mean_ms'] - fleet['unpruned_mean_ms']:+.2f} ms vs "
                      "unpruned", delta_color="inverse", help=f"measured: {source}")
    c[1].metric("Fleet p95 latency", f"{fleet['measured_p95_ms']:.2f} ms",
                delta=f"{fleet['measured_p95_ms'] - fleet['unpruned_p95_ms']:+.2f} ms vs "
                      "unpruned", delta_color="inverse", help=f"measured: {source}")
    c[2].metric("Speedup", f"{fleet['speedup']:.2f}x",
                help="unpruned fleet mean / pruned fleet mean, both measured the same way")
    pred = fleet.get("predicted_mean_ms")
    c[3].metric("Predicted fleet mean", "–" if pred is None else f"{pred:.2f} ms",
                help="the surrogate's prediction, weighted by device share")
    st.caption(f"Measured: **{source}**, over {fleet['basis']}. Unpruned fleet mean "
               f"{fleet['unpruned_mean_ms']:.2f} ms, p95 {fleet['unpruned_p95_ms']:.2f} ms.")


def show_figure(fig, key: str) -> None:
    st.plotly_chart(fig, key=key, config={"displaylogo": False})


def int8_accuracy_line(block: dict | None) -> str:
    """The INT8 model's held-out top-1 beside its FP32 reference, as the engine measured it."""
    if not block or block.get("top1") is None:
        why = "; ".join((block or {}).get("warnings") or []) or "no labelled data"
        return f"INT8 accuracy unknown ({why})"
    ref = block.get("reference") or {}
    low, high = block.get("ci95") or (None, None)
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None else ""
    text = (f"INT8 top-1 **{100 * block['top1']:.1f}%**{interval} on {block['n_heldout']} "
            f"held-out images, by ONNX Runtime on model.int8.onnx ({block['calibration']} "
            f"calibration, {block['n_calibration']} images)")
    if ref.get("top1") is not None:
        text += (f"; {ref['stage']} FP32 {100 * ref['top1']:.1f}% "
                 f"({block['drop_points']:+.1f} points lost)")
    if block.get("suggest_qat"):
        text += "; more than the threshold: try quantisation-aware fine-tuning"
    return text


def precision_section(report: dict) -> None:
    """FP32 and INT8 latency per cluster side by side, and the INT8 model's accuracy."""
    st.subheader("INT8 and FP32")
    side = report.get("fp32_side_by_side")
    if side:
        st.dataframe([{"cluster": r["cluster"], "INT8 ms": round(r["int8_ms"], 3),
                       "FP32 ms": round(r["fp32_ms"], 3),
                       "INT8 speedup": round(r["fp32_ms"] / r["int8_ms"], 3),
                       "unpruned FP32 ms": round(r["unpruned_fp32_ms"], 3)}
                      for r in side["clusters"]], hide_index=True, key="precision_table")
        st.caption(f"The chosen widths measured on each cluster's representatives in INT8 "
                   f"({report['measured_source']}) and in FP32 ({side['source']}). Fleet "
                   f"mean: INT8 {side['int8_mean_ms']:.2f} ms, FP32 "
                   f"{side['fp32_mean_ms']:.2f} ms.")
    else:
        st.caption("No FP32 side-by-side for this backend (agents time the INT8 model only).")
    rounding = report.get("round_to") or {}
    if rounding:
        st.caption(f"Widths are multiples of {rounding.get('value')} "
                   f"({rounding.get('source')}).")
    st.caption(f":material/memory: {int8_accuracy_line(report.get('quantization'))}")
