"""Page 5, Download: the pruned model (bundle, TorchScript, ONNX) and the report (JSON, HTML)."""

import streamlit as st

from studio import cached
from studio import state as S

MIMES = {"bundle": "application/zip", "model.ts": "application/octet-stream",
         "model.onnx": "application/octet-stream", "report.json": "application/json",
         "report.html": "text/html"}


def main() -> None:
    st.title("Download")
    run = S.get(S.RUN)
    if run is None or run.bundle is None:
        st.info("Run a study first; its pruned model and report appear here. Bundles of "
                "earlier runs are on the History page.")
        st.page_link("views/run.py", label="Go to the Run page", icon=":material/play_circle:")
        return

    from hdap_engine.report import DOWNLOADS, bundle_files

    rep = run.report
    model = rep.get("model", "model")
    macs = rep.get("macs", rep["budget_macs"])
    stem = f"{model}-{rep['method']}-{macs / 1e9:.3f}G"
    st.markdown(f"**{model}** pruned by **{rep['method']}** to **{macs / 1e9:.3f} G MACs** "
                f"for {run.fleet_label}; fleet mean {rep['fleet']['measured_mean_ms']:.2f} ms "
                f"measured on {rep['measured_source']}, {rep['fleet']['speedup']:.2f}x faster "
                "than unpruned.")
    if run.weights_label.startswith("random"):
        st.warning("Weights: **random initialisation**. The files hold the pruned architecture "
                   "with untrained weights; fine-tune it, or upload trained weights on the "
                   "Model page and run again.", icon=":material/casino:")
    else:
        st.success(f"Weights: **{run.weights_label}**, pruned with magnitude importance "
                   "(fine-tune before deployment).", icon=":material/upload_file:")

    files = {kind: path.read_bytes() for kind, path in bundle_files(run.bundle).items()}
    files["report.html"] = cached.report_page(run.figures(), rep, run.key).encode()
    names = {"bundle": f"{stem}-bundle.zip", "model.ts": f"{stem}.ts",
             "model.onnx": f"{stem}.onnx", "report.json": f"{stem}-report.json",
             "report.html": f"{stem}-report.html"}
    for kind, data in files.items():
        label, description = DOWNLOADS[kind]
        left, right = st.columns([1, 3], vertical_alignment="center")
        left.download_button(label, data=data, file_name=names[kind], mime=MIMES[kind],
                             key=f"dl_{kind}", on_click="ignore", icon=":material/download:",
                             width="stretch")
        right.markdown(f"{description} · {len(data) / 1e6:.2f} MB")
    st.caption(f"Bundle folder on the server: `{run.bundle}`. "
               "`hdap_engine.export.load_bundle` rebuilds the pruned model from the zip.")


main()
