"""Page 4d, Fine-tune: the last run's pruned model learns from the unpruned one, as a job.

Fine-tuning runs in a worker process (`hdap_engine.jobs`, kind ``finetune``:
`hdap_engine.finetune.run.finetune_bundle`, distillation from the unpruned
model on the labelled data). The worker writes every finished epoch into the
job's row (its partial result), so this page draws the loss and held-out
accuracy while it trains; the result is a new bundle, offered on the Download
page next to the pruned one.
"""

import streamlit as st

from studio import state as S
from studio.jobs import elapsed_text, finetune_job, finished_job, submit
from studio.options import data_choice, data_name
from studio.results import accuracy_line, show_figure


def _chart(history: list, epochs: int | None, key: str, start_value=None, metric=None) -> None:
    from hdap_engine.finetune.chart import finetune_chart

    show_figure(finetune_chart(history, epochs=epochs, start_value=start_value, metric=metric),
                key=key)


def _live(job) -> None:
    """The epochs a running fine-tune has written to its job's row so far."""
    live = job.partial or {}
    history = live.get("history") or []
    if history:
        last = history[-1]
        from hdap_engine.finetune.chart import epoch_metric

        key, metric = epoch_metric([last])  # a classifier's top-1, a detector's mAP@.5
        value = last.get(key)
        top = "" if value is None else f", held-out {metric} {100 * value:.1f}%"
        st.caption(f"Epoch {last['epoch']} of {last['epochs']}: loss {last['loss']:.3f}{top} "
                   f"({last['seconds']:.0f} s of training so far)")
    else:
        st.caption("Measuring the model before training and re-estimating its batch-norm "
                   "statistics; the chart starts after the first epoch.")
    _chart(history, live.get("epochs") or job.total or None, key="fig_finetune_live")


def _run_data(run) -> tuple[str | None, str]:
    """The labelled data to fine-tune on: the run's own, else the Model page's choice."""
    from hdap_engine.options import flatten_settings

    data = flatten_settings((run.settings or {}).get("options") or {}).get("data")
    if data:
        return data, f"the run's labelled data ({data_name(data)})"
    data, label = data_choice()
    return data, f"the Model page's labelled data ({label})"


def _start(run, data: str, epochs: int) -> None:
    from hdap_engine.jobs import finetune_settings

    job, created = submit("finetune", finetune_settings(run.settings, bundle=run.bundle,
                                                        data=data, epochs=epochs,
                                                        of_job=run.job_id),
                          agent_token=False)
    S.put(S.FINETUNE_JOB, {"for": run.key, "job": job.id})
    if not created:
        st.toast(f"The same fine-tune is already {job.state} as job {job.id}: showing it.",
                 icon=":material/info:")


def _done(job) -> None:
    from hdap_engine.accuracy.report import metric_label

    res = job.result
    acc = res["accuracy"]
    metric = metric_label(acc)
    ft = acc.get("finetune") or {}
    st.success(f"Fine-tuned {ft.get('epochs')} epochs by distillation in "
               f"{elapsed_text(ft.get('wall_seconds') or ft.get('seconds'))} "
               f"(job {job.id}): held-out {metric} **{100 * acc['finetuned']:.1f}%**.",
               icon=":material/model_training:")
    c = st.columns(4)
    for col, (label, stage) in zip(c, (("Unpruned", "unpruned"), ("Pruned", "pruned"),
                                       ("Batch-norm re-estimated", "calibrated"),
                                       ("Fine-tuned", "finetuned")), strict=True):
        value = acc.get(stage)
        col.metric(f"{label} {metric}", "–" if value is None else f"{100 * value:.1f}%",
                   help=f"on {acc.get('n_heldout')} held-out images")
    st.caption(f":material/target: {accuracy_line(acc)}")
    _chart(res.get("history") or [], ft.get("epochs"), key="fig_finetune_done",
           start_value=ft.get("bn_reestimated_top1"), metric=acc.get("metric"))
    st.caption(f"New bundle on the server: `{res['bundle']}`.")
    st.page_link("views/download.py", label="Download the fine-tuned model",
                 icon=":material/download:")


def main() -> None:
    st.title("Fine-tune")
    run = S.get(S.RUN)
    if run is None or run.bundle is None:
        st.info("Run a study first: its pruned model is what is fine-tuned here.")
        st.page_link("views/run.py", label="Go to the Run page", icon=":material/play_circle:")
        return
    rep = run.report
    macs = rep.get("macs", rep["budget_macs"])
    st.markdown(f"**{rep.get('model', '')}** pruned by **{rep['method']}** to "
                f"**{macs / 1e9:.3f} G MACs** (job {run.job_id}, {run.weights_label}).")
    if (rep.get("settings") or {}).get("model_weights") in (None, "random", "pretrained"):
        st.warning("This run pruned randomly initialised weights: there is no trained "
                   "unpruned model to distil from. Choose trained weights (the demo weights "
                   "or yours) on the Model page and run again.", icon=":material/casino:")
        return
    data, where = _run_data(run)
    if data is None:
        st.info("Fine-tuning needs labelled images: choose labelled data on the Model page.")
        st.page_link("views/model.py", label="Go to the Model page", icon=":material/tune:")
        return
    if (rep.get("model_ref") or {}).get("task") == "detection":
        st.caption(f"On {where}. The pruned detector (student) learns from the unpruned one "
                   "(teacher): batch-norm statistics re-estimated first, then the detector's "
                   "own loss plus distillation on the heads' class and box outputs "
                   "(`hdap_engine.finetune.detection`, as `hdap finetune`). Every mAP is "
                   "measured on the held-out images.")
    else:
        st.caption(f"On {where}. The pruned model (student) learns from the unpruned one "
                   "(teacher): batch-norm statistics re-estimated first, then 0.9 x "
                   "distillation + 0.1 x cross-entropy, SGD with a cosine schedule "
                   "(`hdap_engine.finetune`'s recipe, as `hdap finetune`). Every accuracy is "
                   "measured on the held-out images.")
    st.number_input("Epochs", min_value=1, max_value=200, step=1, key=S.FINETUNE_RUN_EPOCHS)
    if st.button("Fine-tune", type="primary", icon=":material/model_training:",
                 key="finetune_button"):
        _start(run, data, int(S.get(S.FINETUNE_RUN_EPOCHS)))
    st.caption("Fine-tuning runs as a job on the server: you can leave this page; the loss "
               "and accuracy of every epoch appear here while it trains.")
    job = finetune_job(run)
    if job is not None:
        job = finished_job(job.id, partial=_live)
    if job is not None:
        _done(job)


main()
