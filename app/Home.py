"""HDAP Studio web app: the entry file (`hdap app` runs it).

The pages follow the user's journey: fleet -> model and budget -> run ->
what-if (rollout, drift) -> fine-tune -> download -> history. This file sets the
session defaults, the navigation and the sidebar; it imports nothing heavy so
that the first page is served at once.
"""

import streamlit as st

from studio import auth, cached
from studio import state as S
from studio.fleet import UPLOAD_PREFIX
from studio.options import data_choice, weights_choice


def sidebar() -> None:
    """Where the user stands: fleet, model, weights, last run."""
    with st.container():
        st.caption("HDAP Studio prunes one network for a whole fleet of drifted devices.")
        choice = S.get(S.FLEET_CHOICE)
        if choice:
            st.markdown(f"**Fleet:** {choice.removeprefix(UPLOAD_PREFIX)}")
        _, label = weights_choice()
        _, data_label = data_choice()
        st.markdown(f"**Model:** {S.get(S.MODEL)}  \n**Weights:** {label}  \n"
                    f"**Labelled data:** {data_label.partition(' (')[0]}  \n"
                    f"**Budget:** {float(S.get(S.BUDGET_FRACTION)):.0%} of the model's MACs  \n"
                    f"**Backend:** {S.get(S.BACKEND)}")
        run = S.get(S.RUN)
        if run is not None:
            f = run.report["fleet"]
            from hdap_engine.accuracy.report import exported_top1, metric_label

            acc = run.report.get("accuracy")
            value = exported_top1(acc)
            st.markdown(f"**Last run:** {f['measured_mean_ms']:.2f} ms fleet mean, "
                        f"{f['speedup']:.2f}x ({run.report['measured_source']}); "
                        + ("accuracy unknown" if value is None
                           else f"{100 * value:.1f}% {metric_label(acc)} held out"))


st.set_page_config(page_title="HDAP Studio", page_icon=":material/memory:", layout="wide")
auth.require()  # a team server's sign-in (off unless secrets configure it)
S.init()
cached.job_runner(cached.workspace())  # runs start in worker processes, queued in the store
cached.warm_up_map()

pages = [
    st.Page("views/fleet.py", title="1 Fleet", icon=":material/hub:", default=True,
            url_path="fleet"),
    st.Page("views/model.py", title="2 Model and budget", icon=":material/tune:",
            url_path="model"),
    st.Page("views/run.py", title="3 Run", icon=":material/play_circle:", url_path="run"),
    st.Page("views/whatif.py", title="4 What-if", icon=":material/science:", url_path="whatif"),
    st.Page("views/rollout.py", title="4b Rollout", icon=":material/call_split:",
            url_path="rollout"),
    st.Page("views/drift.py", title="4c Drift", icon=":material/trending_up:",
            url_path="drift"),
    st.Page("views/finetune.py", title="4d Fine-tune", icon=":material/model_training:",
            url_path="finetune"),
    st.Page("views/download.py", title="5 Download", icon=":material/download:",
            url_path="download"),
    st.Page("views/history.py", title="6 History", icon=":material/history:",
            url_path="history"),
]
page = st.navigation(pages)
status = st.sidebar.container()
try:
    page.run()
finally:
    # Drawn after the page, so it shows what the page just changed (even after st.stop()).
    with status:
        sidebar()
        auth.sidebar()
