"""Page 5, Download: the pruned model (bundle, TorchScript, ONNX, INT8 ONNX) and the report.

When the Fine-tune page's job for the run is done, its fine-tuned bundle is
offered too, in the same formats, labelled with its held-out accuracy.
"""

import streamlit as st

from studio import cached
from studio import state as S
from studio.jobs import finetune_job
from studio.results import accuracy_line, int8_accuracy_line

MIMES = {"bundle": "application/zip", "model.ts": "application/octet-stream",
         "model.onnx": "application/octet-stream", "model.int8.onnx": "application/octet-stream", "report.json": "application/json",
         "report.html": "text/html"}


def _buttons(bundle: str, report: dict, figures: dict, key: str, stem: str, prefix: str) -> None:
    """One download button per file of ``bundle``, and the report as one HTML page."""
    from hdap_engine.export.reading import DOWNLOADS, bundle_files

    files = {kind: path.read_bytes() for kind, path in bundle_files(bundle).items()}
    files["report.html"] = cached.report_page(figures, report, key).encode()
    names = {"bundle": f"{stem}-bundle.zip", "model.ts": f"{stem}.ts",
             "model.onnx": f"{stem}.onnx", "model.int8.onnx": f"{stem}.int8.onnx",
             "report.json": f"{stem}-report.json",
             "report.html": f"{stem}-report.html"}
    for kind, data in files.items():
        label, description = DOWNLOADS[kind]
        left, right = st.columns([1, 3], vertical_alignment="center")
        left.download_button(label, data=data, file_name=names[kind], mime=MIMES[kind],
                             key=f"{prefix}{kind}", on_click="ignore",
                             icon=":material/download:", width="stretch")
        right.markdown(f"{description} · {len(data) / 1e6:.2f} MB")
    st.caption(f"Bundle folder on the server: `{bundle}`. "
               "`hdap_engine.export.reading.load_bundle` rebuilds the model from the zip.")


def _finetuned(run, stem: str) -> None:
    """The fine-tuned bundle of the run, when its fine-tune job is done."""
    job = finetune_job(run)
    st.subheader("Fine-tuned model")
    if job is None or job.state != "done":
        state = "" if job is None else f" (job {job.id} is {job.state})"
        st.caption(f"Not fine-tuned yet{state}: the Fine-tune page trains the pruned model "
                   "by distillation from the unpruned one.")
        st.page_link("views/finetune.py", label="Go to the Fine-tune page",
                     icon=":material/model_training:")
        return
    res = job.result
    acc = res["accuracy"]
    epochs = (acc.get("finetune") or {}).get("epochs")
    from hdap_engine.accuracy.report import metric_label

    st.success(f"**Fine-tuned** {epochs} epochs by distillation (job {job.id}): held-out "
               f"{metric_label(acc)} **{100 * acc['finetuned']:.1f}%** on "
               f"{acc.get('n_heldout')} images.",
               icon=":material/model_training:")
    st.caption(f":material/target: {accuracy_line(acc)}")
    _buttons(res["bundle"], res["report"], run.figures(), f"{run.key}-ft{job.id}",
             f"{stem}-finetuned", "dl_ft_")


def main() -> None:
    st.title("Download")
    run = S.get(S.RUN)
    if run is None or run.bundle is None:
        st.info("Run a study first; its pruned model and report appear here. Bundles of "
                "earlier runs are on the History page.")
        st.page_link("views/run.py", label="Go to the Run page", icon=":material/play_circle:")
        return

    rep = run.report
    model = rep.get("model", "model")
    macs = rep.get("macs", rep["budget_macs"])
    stem = f"{model}-{rep['method']}-{macs / 1e9:.3f}G"
    st.subheader("Pruned model")
    st.markdown(f"**{model}** pruned by **{rep['method']}** to **{macs / 1e9:.3f} G MACs** "
                f"for {run.fleet_label}; fleet mean {rep['fleet']['measured_mean_ms']:.2f} ms "
                f"measured on {rep['measured_source']}, {rep['fleet']['speedup']:.2f}x faster "
                "than unpruned.")
    st.caption(f":material/target: {accuracy_line(rep.get('accuracy'))}")
    if rep.get("precision") == "int8":
        st.caption(f":material/memory: {int8_accuracy_line(rep.get('quantization'))}")
    if run.weights_label.startswith("random"):
        st.warning("Weights: **random initialisation**. The files hold the pruned architecture "
                   "with untrained weights; fine-tune it, or upload trained weights on the "
                   "Model page and run again.", icon=":material/casino:")
    elif (rep.get("accuracy") or {}).get("finetuned") is not None:
        st.success(f"Weights: **{run.weights_label}**, pruned with magnitude importance and "
                   "fine-tuned in the study.", icon=":material/upload_file:")
    else:
        st.success(f"Weights: **{run.weights_label}**, pruned with magnitude importance "
                   "(fine-tune before deployment).", icon=":material/upload_file:")
    _buttons(run.bundle, rep, run.figures(), run.key, stem, "dl_")
    if not run.weights_label.startswith("random"):
        _finetuned(run, stem)


main()
