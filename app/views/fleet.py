"""Page 1, Fleet: load telemetry, see the devices clustered by hardware response, set weights."""

import streamlit as st

from hdap_engine.errors import HdapError
from hdap_engine.search.objectives import cluster_weights
from studio import cached
from studio import state as S
from studio.fleet import (
    UPLOAD_PREFIX,
    accept_upload,
    current_clustering,
    current_fleet,
    fleet_choices,
    sync_weight_sliders,
    user_weights,
)
from studio.results import show_figure


def main() -> None:
    st.title("Fleet")
    st.caption("One row per device: its hardware response (latencies of a fixed suite of probe "
               "kernels, `probe_<name>_ms`) and context. Devices are clustered on their hardware "
               "response; a few representatives per cluster are measured instead of every device.")

    # The uploader is handled before the fleet selector is drawn, so an accepted
    # upload can become the selected fleet in the same run.
    pick, upload = st.columns([1, 1])
    with upload:
        up = st.file_uploader("Upload telemetry (CSV, CSV.gz or Parquet, up to 1 GB)",
                              type=["csv", "gz", "parquet", "pq"], key=S.FLEET_UPLOAD,
                              help="Columns: device_id, two or more probe_<name>_ms, optional sku "
                                   "and context columns (temperature, power mode, firmware, ...).")
        if up is not None and S.get(S.UPLOAD_SEEN) != up.file_id:
            S.put(S.UPLOAD_SEEN, up.file_id)
            with st.spinner(f"Reading {up.name}..."):
                accept_upload(up.name, up.getvalue())
        elif up is None:
            S.put(S.UPLOAD_SEEN, None)
            S.put(S.UPLOAD_ERROR, None)
        if S.get(S.UPLOAD_ERROR):
            st.error(S.get(S.UPLOAD_ERROR), icon=":material/error:")
            st.caption("The fleet that was loaded before stays on screen.")

    fv = current_fleet()
    with pick:
        st.selectbox("Fleet on screen", fleet_choices(), key=S.FLEET_CHOICE,
                     format_func=lambda c: c if c.startswith(UPLOAD_PREFIX)
                     else f"{c} (sample fleet)")
        if fv is not None and fv.path is not None:
            st.caption("Sample fleets ship with a twin sidecar: the twin backend can 'measure' "
                       "every device, so fleet numbers are over all devices.")
        elif fv is not None:
            st.caption("Uploaded telemetry has no twin sidecar: the twin backend fits each "
                       "device's state from the standard probe columns when you run.")
    if fv is None:
        st.error("No fleet to show: sample_data/ holds no sample fleet. Upload telemetry above.")
        return
    fleet = fv.fleet

    # -- summary ------------------------------------------------------------------------------
    m = st.columns(4)
    m[0].metric("Devices", f"{fleet.n_devices:,}")
    m[1].metric("Probe columns", len(fleet.probe_columns))
    m[2].metric("Context columns", len(fleet.context_columns))
    st.caption(f"SKU: **{fleet.sku or '(no sku column)'}** · probes: "
               + ", ".join(c.removeprefix("probe_").removesuffix("_ms")
                           for c in fleet.probe_columns))
    for note in fleet.notes:
        st.caption(f":material/info: {note}")

    # -- clustering ---------------------------------------------------------------------------
    with st.expander("Clustering", expanded=True):
        c = st.columns([1, 1, 1, 2])
        c[0].radio("Number of clusters k", ["automatic", "fixed"], key=S.K_MODE, horizontal=True,
                   help="Automatic: the smallest k whose fit is within a tolerance of the best "
                        "(BIC of a Gaussian mixture). Fewer clusters mean fewer measurements.")
        c[1].number_input("k", min_value=1, max_value=20, step=1, key=S.K_FIXED,
                          disabled=S.get(S.K_MODE) != "fixed")
        c[2].number_input("Representatives per cluster", min_value=1, max_value=10, step=1,
                          key=S.REPRESENTATIVES,
                          help="Devices closest to each cluster's centre; they are measured.")
        numeric = [col for col in fleet.numeric_context_columns]
        S.put(S.CONTEXT_FEATURES, [f for f in (S.get(S.CONTEXT_FEATURES) or []) if f in numeric])
        c[3].multiselect("Also cluster on (numeric context)", numeric, key=S.CONTEXT_FEATURES,
                         help="By default only the hardware response is used.")

    try:
        with st.spinner(f"Clustering {fleet.n_devices:,} devices..."):
            cv = current_clustering(fv)
    except HdapError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    cl = cv.clustering
    m[3].metric("Clusters", cl.k_)
    st.caption(cl.describe() + "".join(f" · {n}" for n in cl.notes_))

    # -- the map ------------------------------------------------------------------------------
    st.subheader("Devices by hardware response")
    context = [col for col in fleet.context_columns if col != "agent_url"]
    color_options = ["cluster", *context]
    if S.get(S.COLOR_BY) not in color_options:
        S.put(S.COLOR_BY, "cluster")
    st.selectbox("Colour by", color_options, key=S.COLOR_BY)
    # The map is the slow part of the page (UMAP): it is drawn last, into this slot,
    # so the profiles and weights below are usable while it is computed.
    map_slot = st.container()

    # -- profiles -----------------------------------------------------------------------------
    st.subheader("Cluster profiles")
    st.caption("rel_<probe>: the cluster's median probe latency relative to the fleet median "
               "(1.30 = 30 % slower). Context: what sets the cluster apart.")
    profiles = cl.profiles_
    st.dataframe(profiles, hide_index=True, key="profiles", column_config={
        "share": st.column_config.NumberColumn("share", format="percent"),
        **{col: st.column_config.NumberColumn(col, format="%.2f")
           for col in profiles.columns if col.startswith("rel_")}})

    # -- weights ------------------------------------------------------------------------------
    st.subheader("Cluster weights")
    st.caption("How much each cluster counts in the fleet objective. The default is each "
               "cluster's share of devices; weights are normalised to sum to 1.")
    sync_weight_sliders(cv)
    cols = st.columns(min(cl.k_, 5))
    for c_id in range(cl.k_):
        cols[c_id % len(cols)].slider(f"cluster {c_id} ({cl.shares_[c_id]:.0%} of devices)",
                                      0.0, 1.0, step=0.005, key=S.weight_key(c_id))
    st.button("Reset to device shares", on_click=sync_weight_sliders, args=(cv,),
              kwargs={"reset": True}, icon=":material/restart_alt:")
    try:
        normalised = cluster_weights(cl.shares_, user_weights(cv))
        st.caption("Normalised weights: " + ", ".join(f"cluster {i}: {w:.1%}"
                                                       for i, w in enumerate(normalised))
                   + (" (device shares)" if user_weights(cv) is None else " (yours)"))
    except HdapError as exc:
        st.error(str(exc), icon=":material/error:")

    st.page_link("views/model.py", label="Next: model and budget", icon=":material/arrow_forward:")

    with map_slot:
        with st.spinner("Drawing the fleet map (UMAP; the first one in a new server takes a "
                        "few seconds more)..."):
            emb = cached.embedding(fleet, cl, cv.key)
        from hdap_engine.report.charts import fleet_map

        show_figure(fleet_map(emb, color=S.get(S.COLOR_BY), hover=context[:6]),
                          key="fleet_map")
        st.caption("The map is for people: clusters are computed on the full hardware "
                   "response, never on these two axes."
                   + (f" Showing a stratified sample of {len(emb):,} devices."
                      if len(emb) < fleet.n_devices else ""))
    cached.warm_up_engine()


main()
