"""Page 4c, Drift: has the fleet drifted since the model shipped, and is re-optimising worth it?

OLD is the fleet on the Fleet page (what the model was optimised for), NEW a
later snapshot: a shipped sample or an upload. Comparing them
(`hdap_engine.fleet.drift.compare`, a few seconds of clustering) runs in the
page; checking the last run's bundle against a model re-optimised for NEW
measures, so it runs as a job (kind ``reoptimise``), like the Run page's study.
"""

import json

import streamlit as st

from hdap_engine.errors import HdapError
from hdap_engine.jobs import reoptimise_settings
from studio import cached
from studio import state as S
from studio.fleet import (
    UPLOAD_PREFIX,
    FleetView,
    clustering_request,
    current_fleet,
    read_telemetry_upload,
    sample_view,
    upload_view,
)
from studio.jobs import finished_job, submit
from studio.results import show_figure

UPLOAD = "upload a snapshot"


def _snapshot_choices(old_choice: str) -> list[str]:
    """Sample fleets other than OLD, then the accepted upload, then the uploader."""
    choices = [n for n in cached.sample_fleets() if n != old_choice]
    up = S.get(S.DRIFT_UPLOADED)
    if up is not None:
        choices.append(UPLOAD_PREFIX + up["name"])
    return [*choices, UPLOAD]


def _new_snapshot(old_choice: str) -> FleetView | None:
    """The later snapshot chosen (or uploaded) on this page; OLD's own later sample first."""
    choices = _snapshot_choices(old_choice)
    up = S.get(S.DRIFT_UPLOADED)
    if up is not None and up.pop("select", False):
        # Chosen here, before the widget exists: Streamlit refuses a change after it.
        S.put(S.DRIFT_NEW_CHOICE, UPLOAD_PREFIX + up["name"])
    if S.get(S.DRIFT_NEW_CHOICE) not in choices:
        later = [c for c in choices if c == f"{old_choice}_later"]
        S.put(S.DRIFT_NEW_CHOICE, (later or choices)[0])
    st.selectbox("Later snapshot (NEW)", choices, key=S.DRIFT_NEW_CHOICE,
                 help="The same fleet probed again: devices are matched by device_id.")
    choice = S.get(S.DRIFT_NEW_CHOICE)
    if choice == UPLOAD:
        up = st.file_uploader("Telemetry of the later snapshot (same probe suite; one row per "
                              "device or raw runs)", type=["csv", "gz", "parquet"],
                              key=S.DRIFT_UPLOAD)
        if up is not None and S.get(S.DRIFT_UPLOAD_SEEN) != up.file_id:
            S.put(S.DRIFT_UPLOAD_SEEN, up.file_id)
            try:
                with st.spinner(f"Reading {up.name}..."):
                    fleet, saved = read_telemetry_upload(up.name, up.getvalue())
                S.put(S.DRIFT_UPLOADED, {"name": up.name, "fleet": fleet, "file": saved,
                                         "fingerprint": fleet.fingerprint(), "select": True})
                S.put(S.DRIFT_UPLOAD_ERROR, None)
                st.rerun()
            except HdapError as exc:
                S.put(S.DRIFT_UPLOAD_ERROR, str(exc))
        if S.get(S.DRIFT_UPLOAD_ERROR):
            st.error(S.get(S.DRIFT_UPLOAD_ERROR), icon=":material/error:")
        return None
    if choice.startswith(UPLOAD_PREFIX):
        return upload_view(S.get(S.DRIFT_UPLOADED))
    return sample_view(choice)


def _summary(d: dict, old: str, new: str) -> None:
    c = st.columns(4)
    c[0].metric("Devices in both", f"{d['devices_matched']:,}")
    c[1].metric("New devices", f"{d['devices_new']:,}", help=f"only in {new}")
    c[2].metric("Devices gone", f"{d['devices_gone']:,}", help=f"only in {old}")
    c[3].metric("Moved between clusters", f"{d['devices_moved']:,}",
                delta=f"{d['share_moved']:.1%} of those in both", delta_color="off")


def _clusters(d: dict) -> None:
    st.dataframe([{"cluster": c["cluster"], "share then": c["old_share"],
                   "share now": c["new_share"],
                   "probes shifted (median now / then)": ", ".join(
                       f"{p} {c['probes'][p]:+.1%}" for p in c["shifted_probes"]) or "–",
                   "shifted": "yes" if c["shifted"] else ""} for c in d["clusters"]],
                 hide_index=True, key="drift_clusters", column_config={
                     "share then": st.column_config.NumberColumn(format="percent"),
                     "share now": st.column_config.NumberColumn(format="percent")})
    for c in d["clusters_only_in_new"]:
        st.warning(f"{c['devices']:,} devices ({c['share']:.1%}) form a cluster only in NEW, "
                   f"{c['distance']:.1f} radii from cluster {c['nearest_old']}: the deployed "
                   "model was never optimised for them.", icon=":material/new_releases:")
    for note in d["notes"]:
        st.caption(f":material/info: {note}")


def _deployed(run, old: FleetView, new: FleetView) -> None:
    """The last run's bundle on NEW against a model re-optimised for NEW (a job)."""
    from hdap_engine.options import ReoptimiseOptions

    st.subheader("The deployed model on the later snapshot")
    if run is None or not run.bundle:
        st.info("Run a study on the Run page first: its bundle is the deployed model checked "
                "here (`hdap drift OLD NEW --bundle DIR` checks any bundle).")
        return
    if run.settings.get("telemetry") != old.file:
        st.info(f"The last run was optimised for {run.fleet_label}, not for {old.label}; pick "
                "that fleet on the Fleet page to check its model here.")
        return
    if new.file is None:
        st.info("This snapshot has no file the server can read; upload it again.")
        return
    if S.get(S.DRIFT_THRESHOLD) is None:
        S.put(S.DRIFT_THRESHOLD, 100 * ReoptimiseOptions().threshold)
    st.number_input("Re-optimise when the deployed model is this much slower (%)", 0.0, 99.0,
                    step=0.5, key=S.DRIFT_THRESHOLD)
    st.caption(f"Job {run.job_id}'s model ({run.report.get('model', '')}, "
               f"{run.report['budget']} MACs, objective {run.report['objective']}) against a "
               f"model searched again for {new.label} with the same settings; both measured on "
               f"{new.label}'s cluster representatives.")
    settings = reoptimise_settings(run.bundle, new.file, float(S.get(S.DRIFT_THRESHOLD)) / 100)
    if st.button("Check the deployed model", icon=":material/compare_arrows:",
                 key="drift_check_button"):
        job, created = submit("reoptimise", settings)
        S.put(S.DRIFT_JOB, {"for": [run.bundle, new.file], "job": job.id})
        if not created:
            st.toast(f"The same check is already {job.state} as job {job.id}: showing it.",
                     icon=":material/info:")
    mine = S.get(S.DRIFT_JOB)
    if not mine or mine["for"] != [run.bundle, new.file]:
        return
    job = finished_job(mine["job"])
    if job is None:
        return
    r = job.result["reoptimise"]
    c = st.columns(3)
    c[0].metric("Deployed model", f"{r['deployed_objective_ms']:.2f} ms",
                help=f"{r['objective']}, measured: {r['measured_source']}")
    c[1].metric("Re-optimised for NEW", f"{r['reoptimised_objective_ms']:.2f} ms",
                delta=f"{-r['gap']:+.1%}", delta_color="inverse")
    c[2].metric("Threshold", f"{r['threshold']:.1%}")
    if r["recommend_reoptimise"]:
        st.warning(f"Re-optimise: a model searched for the later snapshot is {r['gap']:.1%} "
                   f"faster ({r['objective']}), more than the {r['threshold']:.1%} threshold.",
                   icon=":material/autorenew:")
    else:
        st.success(f"Keep the deployed model: re-optimising gains {max(r['gap'], 0):.1%}, not "
                   f"more than the {r['threshold']:.1%} threshold.", icon=":material/check:")


def main() -> None:
    st.title("Drift")
    old = current_fleet()
    if old is None:
        st.info("Choose a fleet on the Fleet page first: it is the snapshot the model was "
                "optimised for.")
        return
    st.caption(f"OLD: **{old.label}** ({old.fleet.n_devices:,} devices), the fleet on the Fleet "
               "page. Devices are matched by device_id; NEW's devices are put in OLD's "
               "clusters with OLD's fitted clustering, and NEW is also clustered afresh.")
    new = _new_snapshot(S.get(S.FLEET_CHOICE))
    if new is None:
        return
    k, _, _, seed = clustering_request()
    try:
        with st.spinner(f"Comparing {old.label} with {new.label}..."):
            report = cached.drift(old.fleet, new.fleet, f"{old.fingerprint}|{new.fingerprint}",
                                  k, seed)
    except HdapError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    d = report.to_dict()
    _summary(d, old.label, new.label)
    from hdap_engine.report.charts import drift_sankey

    show_figure(drift_sankey(report.flows, report.old_clustering.k_,
                                   old_label=old.label, new_label=new.label), key="fig_drift")
    _clusters(d)
    st.download_button("Download drift.json", json.dumps(d, indent=1), file_name="drift.json",
                       mime="application/json", icon=":material/download:",
                       key="drift_download", on_click="ignore")
    _deployed(S.get(S.RUN), old, new)


main()
