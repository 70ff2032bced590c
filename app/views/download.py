"""Page 5, Download: the pruned model (bundle, TorchScript, ONNX) and the report (JSON, HTML)."""

import streamlit as st

from studio import cached
from studio import state as S

st.title("Download")
run = S.get(S.RUN)
if run is None or run.result.bundle is None:
    st.info("Run a study first; its pruned model and report appear here. Bundles of earlier "
            "runs are on the History page.")
    st.page_link("views/run.py", label="Go to the Run page", icon=":material/play_circle:")
    st.stop()

from hdap_engine.report import DOWNLOADS, bundle_files  # noqa: E402

rep = run.report
model = rep.get("model", "model")
stem = f"{model}-{rep['method']}-{rep.get('macs', rep['budget_macs']) / 1e9:.3f}G"
st.markdown(f"**{model}** pruned by **{rep['method']}** to "
            f"**{rep.get('macs', rep['budget_macs']) / 1e9:.3f} G MACs** for {run.fleet_label}; "
            f"fleet mean {rep['fleet']['measured_mean_ms']:.2f} ms measured on "
            f"{rep['measured_source']}, {rep['fleet']['speedup']:.2f}x faster than unpruned.")
if run.weights_label.startswith("random"):
    st.warning("Weights: **random initialisation**. The files hold the pruned architecture "
               "with untrained weights; fine-tune it, or upload trained weights on the Model "
               "page and run again.", icon=":material/casino:")
else:
    st.success(f"Weights: **{run.weights_label}**, pruned with magnitude importance "
               "(fine-tune before deployment).", icon=":material/upload_file:")

files = bundle_files(run.result.bundle)
names = {"bundle": f"{stem}-bundle.zip", "model.ts": f"{stem}.ts",
         "model.onnx": f"{stem}.onnx", "report.json": f"{stem}-report.json"}
mimes = {"bundle": "application/zip", "model.ts": "application/octet-stream",
         "model.onnx": "application/octet-stream", "report.json": "application/json"}
cols = st.columns(5)
for i, (kind, path) in enumerate(files.items()):
    size = path.stat().st_size / 1e6
    cols[i].download_button(f"{DOWNLOADS[kind]}", data=path.read_bytes(), file_name=names[kind],
                            mime=mimes[kind], key=f"dl_{kind}", on_click="ignore",
                            icon=":material/download:", help=f"{size:.1f} MB")
html = cached.report_page(run.figures(), rep, run.key)
cols[len(files)].download_button("report (HTML page with the charts)", data=html,
                                 file_name=f"{stem}-report.html", mime="text/html",
                                 key="dl_report.html", on_click="ignore",
                                 icon=":material/download:",
                                 help="One self-contained page; opens offline.")
st.caption(f"Bundle folder on the server: `{run.result.bundle}`. The zip also holds "
           "model.pt2 (torch.export), weights.pt and widths.json (rebuild the pruned model "
           "without unpickling: `hdap_engine.export.load_bundle`).")
