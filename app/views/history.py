"""Page 6, History: earlier runs of this workspace; open one, or compare two side by side."""

from datetime import datetime
from pathlib import Path

import streamlit as st

from studio import cached, parts
from studio import state as S


def main() -> None:
    st.title("History")
    from hdap_engine.workspace import home

    store = cached.store(str(home()))
    listed = store.list_runs()
    if not listed:
        st.info("No runs recorded in this workspace yet.")
        return
    runs = {r["id"]: store.get_run(r["id"]) for r in listed}


    def _label(run_id: int) -> str:
        r = runs[run_id]
        when = datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M")
        return f"#{run_id} {r['name']} ({when})"


    rows = []
    for run_id, r in runs.items():
        res, s = r["result"], r["settings"]
        fleet = res.get("fleet") or {}
        rows.append({"run": run_id, "when": datetime.fromtimestamp(r["created_at"]),
                     "model": s.get("model"), "method": res.get("method"),
                     "G MACs": res.get("macs", 0) / 1e9, "fleet": res.get("fleet_source"),
                     "backend": res.get("measured_source"),
                     "fleet mean ms": fleet.get("measured_mean_ms"),
                     "p95 ms": fleet.get("measured_p95_ms"), "speedup": fleet.get("speedup"),
                     "objective": res.get("objective"),
                     "weights": s.get("model_weights") or "random"})
    st.dataframe(rows, hide_index=True, key="history_table", column_config={
        "G MACs": st.column_config.NumberColumn(format="%.3f"),
        "fleet mean ms": st.column_config.NumberColumn(format="%.2f"),
        "p95 ms": st.column_config.NumberColumn(format="%.2f"),
        "speedup": st.column_config.NumberColumn(format="%.2fx")})

    ids = list(runs)
    open_tab, compare_tab = st.tabs(["Open one", "Compare two"])


    def _details(run_id: int, key: str) -> None:
        """One recorded run: its numbers, charts, settings and files."""
        from hdap_engine.charts import cluster_latency, widths_chart
        from hdap_engine.errors import HdapError

        r = runs[run_id]
        res, settings = r["result"], r["settings"]
        parts.fleet_metrics(res)
        parts.show_figure(cluster_latency(res["clusters"], res["measured_source"]),
                          key=f"{key}_clusters")
        try:
            space = cached.space(res["model"], int(settings.get("round_to", 8)))
            parts.show_figure(widths_chart({"unpruned": space.widths_dict(space.base_widths),
                                            "pruned": res["widths"]}), key=f"{key}_widths")
        except HdapError as exc:
            st.caption(f"widths chart unavailable: {exc}")
        with st.expander("Settings"):
            st.json(settings)
        bundle = res.get("bundle")
        if bundle and Path(bundle).is_dir():
            from hdap_engine.report import DOWNLOADS, bundle_files

            files = bundle_files(bundle)
            cols = st.columns(len(files) or 1)
            for i, (kind, path) in enumerate(files.items()):
                cols[i].download_button(DOWNLOADS[kind][0], data=path.read_bytes(),
                                        file_name=f"run{run_id}-{path.name}",
                                        key=f"{key}_dl_{kind}",
                                        on_click="ignore", icon=":material/download:")
        elif bundle:
            st.caption(f"The bundle {bundle} is no longer on the server.")


    with open_tab:
        if S.get(S.HISTORY_OPEN) not in ids:
            S.put(S.HISTORY_OPEN, ids[0])
        st.selectbox("Run", ids, key=S.HISTORY_OPEN, format_func=_label)
        _details(S.get(S.HISTORY_OPEN), "open")

    with compare_tab:
        S.put(S.HISTORY_COMPARE, [i for i in (S.get(S.HISTORY_COMPARE) or []) if i in ids][:2])
        st.multiselect("Two runs", ids, key=S.HISTORY_COMPARE, format_func=_label,
                       max_selections=2)
        chosen = S.get(S.HISTORY_COMPARE) or []
        if len(chosen) == 2:
            from hdap_engine.charts import runs_comparison

            parts.show_figure(runs_comparison([(f"#{i}", runs[i]["result"]) for i in chosen]),
                              key="compare_fleet")
            a, b = (runs[i]["settings"] for i in chosen)
            diff = [{"setting": k, f"#{chosen[0]}": str(a.get(k)), f"#{chosen[1]}": str(b.get(k))}
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            st.markdown("**Settings that differ**")
            st.dataframe(diff or [{"setting": "(none)"}], hide_index=True)
            cols = st.columns(2)
            for col, run_id in zip(cols, chosen, strict=True):
                with col:
                    st.subheader(_label(run_id))
                    _details(run_id, f"cmp{run_id}")
        else:
            st.caption("Pick two runs.")


main()
