"""Page 6, History: earlier runs of this workspace; open one, or compare two side by side."""

from datetime import datetime
from pathlib import Path

import streamlit as st

from hdap_engine.errors import HdapError
from studio import cached
from studio import state as S
from studio.jobs import owner
from studio.options import data_name
from studio.results import accuracy_line, fleet_headline, show_figure


def _label(runs: dict, run_id: int) -> str:
    r = runs[run_id]
    when = datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M")
    return f"#{run_id} {r['name']} ({when})"


def _accuracy(accuracy: dict | None) -> float | None:
    """Held-out accuracy of the exported model in % (top-1, or a detector's mAP: the
    "metric" column says which): fine-tuned when it was, else calibrated; None when
    accuracy is unknown (no labelled data)."""
    from hdap_engine.accuracy.report import exported_top1

    value = exported_top1(accuracy)
    return None if value is None else 100 * float(value)


def _table(runs: dict, owners: dict) -> None:
    from hdap_engine.accuracy.report import metric_label

    rows = []
    for run_id, r in runs.items():
        res, s = r["result"], r["settings"]
        fleet = res.get("fleet") or {}
        data = (s.get("accuracy") or {}).get("data")
        rows.append({"run": run_id, "when": datetime.fromtimestamp(r["created_at"]),
                     "by": owners.get(run_id) or "–",
                     "model": s.get("model"), "method": res.get("method"),
                     "G MACs": res.get("macs", 0) / 1e9, "fleet": res.get("fleet_source"),
                     "measured on": res.get("measured_source"),
                     "fleet mean ms": fleet.get("measured_mean_ms"),
                     "p95 ms": fleet.get("measured_p95_ms"), "speedup": fleet.get("speedup"),
                     "accuracy": _accuracy(res.get("accuracy")),
                     "metric": (metric_label(res.get("accuracy"))
                                if _accuracy(res.get("accuracy")) is not None else None),
                     "labelled data": data_name(data),
                     "objective": res.get("objective"),
                     "weights": "user-supplied" if s.get("model_weights") else "random"})
    st.dataframe(rows, hide_index=True, key="history_table", column_config={
        "G MACs": st.column_config.NumberColumn(format="%.3f"),
        "fleet mean ms": st.column_config.NumberColumn(format="%.2f"),
        "p95 ms": st.column_config.NumberColumn(format="%.2f"),
        "speedup": st.column_config.NumberColumn(format="%.2fx"),
        "accuracy": st.column_config.NumberColumn(
            format="%.1f%%", help="held-out accuracy of the exported model in its metric "
                                  "(top-1, or a detector's mAP; fine-tuned when it was, else "
                                  "after batch-norm re-estimation); empty: unknown, no "
                                  "labelled data")})


def _report_of(r: dict) -> dict:
    """The run's full report: the bundle's report.json when it is still there."""
    from hdap_engine.export.reading import read_bundle_report
    from hdap_engine.models.zoo import weights_label

    res, settings = r["result"], r["settings"]
    bundle = res.get("bundle")
    if bundle and (Path(bundle) / "report.json").is_file():
        try:
            return read_bundle_report(bundle)
        except HdapError:
            pass
    return {**res, "settings": settings, "model": settings.get("model"),
            "model_weights": weights_label(settings.get("model_weights"))}


def _details(runs: dict, run_id: int, key: str, owners: dict) -> None:
    """One recorded run: who ran it, its numbers, charts, settings and files."""
    from hdap_engine.report.charts import study_figures

    r = runs[run_id]
    res, settings = r["result"], r["settings"]
    report = _report_of(r)
    if owners.get(run_id):
        st.caption(f":material/person: Run #{run_id} by {owners[run_id]}")
    fleet_headline(res)
    st.caption(f":material/target: {accuracy_line(report.get('accuracy'))}")
    try:
        space = cached.space(res["model"], int(settings.get("round_to", 8)))
        base = space.widths_dict(space.base_widths)
    except HdapError as exc:
        st.caption(f"widths chart unavailable: {exc}")
        base = dict(res["widths"])
    figs = study_figures(report, widths=res["widths"], base_widths=base)
    show_figure(figs["clusters"], key=f"{key}_clusters")
    show_figure(figs["widths"], key=f"{key}_widths")
    with st.expander("Settings"):
        st.json(settings)

    from hdap_engine.export.reading import DOWNLOADS, bundle_files

    bundle = res.get("bundle")
    files = {k: p.read_bytes() for k, p in bundle_files(bundle).items()} \
        if bundle and Path(bundle).is_dir() else {}
    files["report.html"] = cached.report_page(figs, report, f"history-{key}-{run_id}").encode()
    cols = st.columns(len(files))
    for col, (kind, data) in zip(cols, files.items(), strict=True):
        suffix = {"bundle": "bundle.zip", "report.html": "report.html"}.get(kind, kind)
        col.download_button(DOWNLOADS[kind][0], data=data, file_name=f"run{run_id}-{suffix}",
                            key=f"{key}_dl_{kind}", on_click="ignore",
                            icon=":material/download:")
    if bundle and not Path(bundle).is_dir():
        st.caption(f"The bundle {bundle} is no longer on the server; the report is rebuilt "
                   "from the run's record.")


def main() -> None:
    st.title("History")
    from hdap_engine.infra.workspace import home

    store = cached.store(str(home()))
    listed = store.list_runs()
    if not listed:
        st.info("No runs recorded in this workspace yet.")
        return
    owners = cached.jobs().owners_of_runs()
    me = owner()
    if me is not None and st.toggle("Only my runs", key=S.HISTORY_MINE):
        listed = [r for r in listed if owners.get(r["id"]) == me]
        if not listed:
            st.info(f"No runs by {me} yet.")
            return
    runs = {r["id"]: store.get_run(r["id"]) for r in listed}
    _table(runs, owners)
    ids = list(runs)
    open_tab, compare_tab = st.tabs(["Open one", "Compare two"])
    with open_tab:
        if S.get(S.HISTORY_OPEN) not in ids:
            S.put(S.HISTORY_OPEN, ids[0])
        st.selectbox("Run", ids, key=S.HISTORY_OPEN, format_func=lambda i: _label(runs, i))
        _details(runs, S.get(S.HISTORY_OPEN), "open", owners)

    with compare_tab:
        S.put(S.HISTORY_COMPARE, [i for i in (S.get(S.HISTORY_COMPARE) or []) if i in ids][:2])
        st.multiselect("Two runs", ids, key=S.HISTORY_COMPARE,
                       format_func=lambda i: _label(runs, i), max_selections=2)
        chosen = S.get(S.HISTORY_COMPARE) or []
        if len(chosen) != 2:
            st.caption("Pick two runs.")
            return
        from hdap_engine.report.charts import runs_comparison

        show_figure(runs_comparison([(f"#{i}", runs[i]["result"]) for i in chosen]),
                          key="compare_fleet")
        from hdap_engine.options import flatten_settings

        # By flat name: the nested sections would only say "query" differs.
        a, b = (flatten_settings(runs[i]["settings"]) for i in chosen)
        diff = [{"setting": k, f"#{chosen[0]}": str(a.get(k)), f"#{chosen[1]}": str(b.get(k))}
                for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        st.markdown("**Settings that differ**")
        st.dataframe(diff or [{"setting": "(none)"}], hide_index=True)
        cols = st.columns(2)
        for col, run_id in zip(cols, chosen, strict=True):
            with col:
                st.subheader(_label(runs, run_id))
                _details(runs, run_id, f"cmp{run_id}", owners)


main()
