"""The web app, page by page, driven by Streamlit's AppTest (no browser).

Small simulated sample fleets (with twin sidecars) stand in for the shipped
ones so that every test is quick; one test opens the shipped samples.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from hdap_engine.errors import HdapError
from tests.helpers.apptest import (
    TIMEOUT,
    charts,
    download_bytes,
    metric,
    ok,
    small_study,
    start,
    wait_for_job,
)
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.app


@pytest.fixture
def telemetry_csv() -> bytes:
    """A valid telemetry upload without a sidecar (the twin fits states from its probes)."""
    from hdap_engine.twin.simulate import simulate_fleet

    telemetry, _ = simulate_fleet("jetson-nano", 150, seed=11)
    return telemetry.to_csv(index=False).encode()


@pytest.fixture
def media(monkeypatch) -> list:
    """The files behind download buttons: every media store AppTest creates is recorded."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    stores: list = []

    class Recording(MemoryMediaFileStorage):
        def __init__(self, endpoint):
            super().__init__(endpoint)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    return stores


# -- page 1: fleet ------------------------------------------------------------------------

def test_first_visit_loads_the_first_sample_fleet_with_clusters_map_and_weights(samples):
    from hdap_engine.fleet.telemetry import load_fleet

    at = start()
    assert at.session_state["fleet_choice"] == "jetson_small"
    assert at.selectbox(key="fleet_choice").options == ["jetson_small (sample fleet)",
                                                        "rpi_small (sample fleet)"]
    assert metric(at, "Devices") == "400"
    k = int(metric(at, "Clusters"))
    assert 1 <= k <= 10
    profiles = at.dataframe[0].value
    assert list(profiles["cluster"]) == list(range(k))
    assert int(profiles["devices"].sum()) == load_fleet(samples / "jetson_small.csv").n_devices
    assert len([s for s in at.slider if s.key.startswith("weight_")]) == k
    fig = charts(at)[0].proto.spec
    assert "device_id" in fig and "cluster" in fig  # hover carries the device id


def test_choosing_the_other_sample_fleet_reclusters_it(samples):
    at = start()
    ok(at.selectbox(key="fleet_choice").set_value("rpi_small").run())
    assert metric(at, "Devices") == "200"
    assert any("SKU: **rpi4**" in c.value for c in at.caption)


def test_fixing_k_changes_the_clusters_profiles_and_weight_sliders(samples):
    at = start()
    ok(at.radio(key="k_mode").set_value("fixed").run())
    for k in (2, 3):
        ok(at.number_input(key="k_fixed").set_value(k).run())
        assert metric(at, "Clusters") == str(k)
        assert len(at.dataframe[0].value) == k
        assert len([s for s in at.slider if s.key.startswith("weight_")]) == k
        assert "fixed by the user" in " ".join(c.value for c in at.caption)


def test_colouring_the_map_by_a_context_column(samples):
    at = start()
    ok(at.selectbox(key="color_by").set_value("power_mode").run())
    assert "power_mode" in charts(at)[0].proto.spec


def test_bad_upload_shows_the_engine_message_and_keeps_the_fleet(samples):
    from hdap_engine.fleet.telemetry import load_fleet

    bad = b"hello,world\n1,2\n"
    with pytest.raises(HdapError) as expected:
        load_fleet(bad, name="bad.csv")
    at = start()
    before = metric(at, "Devices")
    ok(at.file_uploader(key="fleet_upload").set_value(("bad.csv", bad, "text/csv")).run())
    assert [e.value for e in at.error] == [str(expected.value)]
    assert at.session_state["fleet_choice"] == "jetson_small"
    assert metric(at, "Devices") == before
    assert charts(at), "the map of the old fleet stays on screen"


def test_upload_handler_refuses_bad_bytes_and_keeps_state(samples):
    """The handler the page calls, driven directly with bytes."""
    script = """
import streamlit as st
from studio import fleet
st.session_state["msg"] = fleet.accept_upload("broken.parquet", b"PAR1 not really parquet")
"""
    probe = AppTest.from_string(script, default_timeout=TIMEOUT)
    probe.session_state["fleet_choice"] = "jetson_small"
    import sys

    sys.path.insert(0, str(ROOT / "app"))
    try:
        ok(probe.run())
    finally:
        sys.path.remove(str(ROOT / "app"))
    msg = probe.session_state["msg"]
    assert msg and msg.startswith("broken.parquet")
    assert probe.session_state["upload_error"] == msg
    assert probe.session_state["fleet_choice"] == "jetson_small"
    assert "uploaded_fleet" not in probe.session_state


def test_good_upload_becomes_the_fleet_on_screen(samples, telemetry_csv):
    at = start()
    ok(at.file_uploader(key="fleet_upload").set_value(("mine.csv", telemetry_csv,
                                                       "text/csv")).run())
    assert not at.error
    assert at.session_state["fleet_choice"] == "uploaded: mine.csv"
    assert metric(at, "Devices") == "150"
    assert "uploaded: mine.csv" in at.selectbox(key="fleet_choice").options
    # Back to a sample fleet, and the upload stays available in the selector.
    ok(at.selectbox(key="fleet_choice").set_value("rpi_small").run())
    assert metric(at, "Devices") == "200"
    assert "uploaded: mine.csv" in at.selectbox(key="fleet_choice").options


def test_weight_sliders_are_normalised_and_reset_to_device_shares(samples):
    at = start()
    ok(at.radio(key="k_mode").set_value("fixed").run())
    ok(at.number_input(key="k_fixed").set_value(2).run())
    ok(at.slider(key="weight_0").set_value(0.9).run())
    ok(at.slider(key="weight_1").set_value(0.3).run())
    text = " ".join(c.value for c in at.caption)
    assert "cluster 0: 75.0%, cluster 1: 25.0% (yours)" in text
    reset = [b for b in at.button if b.label.startswith("Reset")][0]
    ok(reset.click().run())
    assert "(device shares)" in " ".join(c.value for c in at.caption)


def test_no_sample_fleet_says_so_instead_of_failing(tmp_path, monkeypatch):
    monkeypatch.setenv("HDAP_SAMPLE_DATA", str(tmp_path / "empty"))
    at = start()
    assert any("no sample fleet" in e.value for e in at.error)


# -- page 2: model and budget -------------------------------------------------------------

def test_budget_in_g_macs_and_percent_describe_the_same_budget(samples):
    at = start()
    ok(at.switch_page("views/model.py").run())
    ok(at.selectbox(key="model").set_value("resnet56").run())
    assert "FLOPs" in at.slider(key="budget_g").label
    ok(at.slider(key="budget_g").set_value(0.0637).run())
    frac = at.session_state["budget_fraction"]
    from hdap_engine.pruning.space import PruningSpace

    base = PruningSpace.for_model("resnet56").base_macs
    assert frac == pytest.approx(0.0637e9 / base)
    ok(at.radio(key="budget_unit").set_value("% of the model").run())
    assert at.slider(key="budget_pct").value == pytest.approx(round(frac * 100, 1))
    ok(at.slider(key="budget_pct").set_value(40.0).run())
    assert at.session_state["budget_fraction"] == pytest.approx(0.40)


def test_weights_are_random_until_a_fitting_state_dict_is_uploaded(samples, tmp_path):
    import torch

    from hdap_engine.models.zoo import build_model

    at = start()
    ok(at.switch_page("views/model.py").run())
    ok(at.selectbox(key="model").set_value("resnet56").run())
    assert any("random initialisation" in w.value for w in at.warning)
    ok(at.radio(key="weights_mode").set_value("upload").run())
    wrong = io.BytesIO()
    torch.save(build_model("mobilenet_v1").state_dict(), wrong)
    ok(at.file_uploader(key="weights_upload").set_value(("wrong.pt", wrong.getvalue(),
                                                         "application/octet-stream")).run())
    assert any("do not fit resnet56" in e.value for e in at.error)
    assert any("random initialisation" in w.value for w in at.warning)
    good = io.BytesIO()
    torch.save(build_model("resnet56", seed=5).state_dict(), good)
    ok(at.file_uploader(key="weights_upload").set_value(("trained.pt", good.getvalue(),
                                                         "application/octet-stream")).run())
    assert not at.error
    assert any("user-supplied state dict (trained.pt)" in s.value for s in at.success)


def test_agent_backend_is_offered_only_when_the_fleet_has_agent_urls(samples, telemetry_csv):
    import pandas as pd

    at = start()
    ok(at.switch_page("views/model.py").run())
    assert [o.split(":")[0] for o in at.radio(key="backend").options] == ["twin", "host"]
    frame = pd.read_csv(io.BytesIO(telemetry_csv))
    frame["agent_url"] = [f"http://10.0.0.{i % 250}:8765" for i in range(len(frame))]
    ok(at.switch_page("views/fleet.py").run())
    ok(at.file_uploader(key="fleet_upload").set_value(
        ("agents.csv", frame.to_csv(index=False).encode(), "text/csv")).run())
    ok(at.switch_page("views/model.py").run())
    offered = [o.split(":")[0] for o in at.radio(key="backend").options]
    assert offered == ["twin", "host", "agent"]
    ok(at.radio(key="backend").set_value("agent").run())
    assert at.text_input(key="agent_token") is not None


# -- pages 3 to 6: run, what-if, download, history ----------------------------------------


def test_search_effort_sets_the_search_plan_of_the_job(samples):
    from hdap_engine.jobs import JobTable
    from hdap_engine.options import SEARCH_EFFORTS, STUDY_WIDE, SearchPlan

    at = start()
    ok(at.switch_page("views/model.py").run())
    assert at.selectbox(key="search_effort").value == "standard"
    ok(at.selectbox(key="search_effort").set_value("thorough").run())
    ok(at.switch_page("views/run.py").run())
    assert any("**thorough** search" in m.value for m in at.markdown)
    ok(at.button(key="run_button").click().run())
    table = JobTable()
    job_id = at.session_state["job"]
    try:
        search = table.get(job_id).settings["options"]["search"]
    finally:  # the settings are what this test is about, not the study
        table.request_cancel(job_id)
        wait_for_job(at)
    plan = {k: v for k, v in vars(SearchPlan()).items() if k not in STUDY_WIDE}  # saved once
    assert search == {**plan, "refine_rounds": search["refine_rounds"],
                      **SEARCH_EFFORTS["thorough"]}
    assert search["population"] > SearchPlan().population


@pytest.mark.slow
def test_small_run_what_if_download_and_history(samples, media):
    import onnx
    import torch

    from hdap_engine.latency.store import Store
    from hdap_engine.models.zoo import get_spec

    at = start()
    small_study(at)
    assert not at.error, [e.value for e in at.error]
    assert float(metric(at, "Speedup").rstrip("x")) > 1.0
    assert metric(at, "Fleet mean latency").endswith(" ms")
    specs = [c.proto.spec for c in charts(at)]
    titles = " ".join(specs)
    for expected in ("predicted vs measured", "twin (simulated)", "Methods at the same budget",
                     "Channels kept", "Surrogate on held-out", "Budget sweep"):
        assert expected in titles, expected
    run = at.session_state["run"]
    assert run.report["measured_source"] == "twin (simulated)"
    assert len(Store().list_runs()) == 1

    # What-if: a new budget is searched on the surrogate; nothing is measured.
    measured = Store().count_measurements()
    ok(at.switch_page("views/whatif.py").run())
    macs_before = metric(at, "What-if MACs")
    ok(at.slider(key="whatif_budget").set_value(45.0).run())
    assert metric(at, "What-if MACs") != macs_before
    ok(at.slider(key="whatif_weight_0").set_value(1.0).run())
    assert Store().count_measurements() == measured
    assert len(charts(at)) == 2

    # Download: every button carries a valid file.
    ok(at.switch_page("views/download.py").run())
    buttons = {b.key: b for b in at.get("download_button")}
    assert set(buttons) == {"dl_bundle", "dl_model.ts", "dl_model.onnx", "dl_report.json",
                            "dl_report.html"}
    x = get_spec("resnet56").example_input()
    ts = torch.jit.load(io.BytesIO(download_bytes(media, buttons["dl_model.ts"])))
    assert ts(x).shape == (1, 10)
    onnx.checker.check_model(onnx.load_from_string(download_bytes(media,
                                                                  buttons["dl_model.onnx"])))
    report = json.loads(download_bytes(media, buttons["dl_report.json"]))
    assert report["fleet"]["measured_mean_ms"] == run.report["fleet"]["measured_mean_ms"]
    with zipfile.ZipFile(io.BytesIO(download_bytes(media, buttons["dl_bundle"]))) as zf:
        names = {n.rsplit("/", 1)[-1] for n in zf.namelist()}
    assert {"model.ts", "model.onnx", "model.pt2", "weights.pt", "widths.json",
            "report.json"} <= names
    page = download_bytes(media, buttons["dl_report.html"]).decode()
    assert page.startswith("<!DOCTYPE html>") and page.count("plotly-graph-div") >= 4
    assert "twin (simulated)" in page and "random initialisation" in page

    # The what-if candidate made real: a second recorded run.
    ok(at.switch_page("views/whatif.py").run())
    ok(at.button(key="whatif_apply").click().run())
    wait_for_job(at.switch_page("views/run.py"))
    assert len(Store().list_runs()) == 2
    assert at.session_state["run"].report["budget"] == "0.450000"

    # History: both runs, one opened, two compared.
    ok(at.switch_page("views/history.py").run())
    assert len(at.dataframe[0].value) == 2
    opened = {b.key: b for b in at.get("download_button")}
    assert {"open_dl_bundle", "open_dl_model.ts", "open_dl_report.html"} <= set(opened)
    assert b"plotly-graph-div" in download_bytes(media, opened["open_dl_report.html"])
    ids = [r["id"] for r in Store().list_runs()]
    ok(at.multiselect(key="history_compare").set_value(ids).run())
    differ = at.dataframe[1].value
    assert "budget" in list(differ["setting"])
    assert any("Runs side by side" in c.proto.spec for c in charts(at))


@pytest.mark.slow
def test_run_on_an_uploaded_fleet_without_sidecar_fits_the_twin(samples, telemetry_csv):
    at = start()
    ok(at.file_uploader(key="fleet_upload").set_value(("mine.csv", telemetry_csv,
                                                       "text/csv")).run())
    small_study(at, compare=(), sweep=False)
    assert not at.error, [e.value for e in at.error]
    assert any("fitted" in c.value for c in at.caption)
    assert at.session_state["run"].report["fleet_source"] == "mine.csv"


def test_run_that_the_engine_refuses_shows_its_message_and_keeps_the_app(samples):
    # Two probe columns only: the twin can neither find a sidecar nor fit states.
    rng = np.random.default_rng(0)
    rows = ["device_id,probe_a_ms,probe_b_ms"] + [
        f"d{i},{1 + rng.random():.4f},{2 + rng.random():.4f}" for i in range(60)]
    at = start()
    ok(at.file_uploader(key="fleet_upload").set_value(("two.csv", "\n".join(rows).encode(),
                                                       "text/csv")).run())
    ok(at.switch_page("views/run.py").run())
    ok(at.button(key="run_button").click().run())
    wait_for_job(at)
    assert any("twin backend cannot measure two.csv" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert "run" not in at.session_state
    # The page and the fleet are still there: a second try is one click away.
    assert at.button(key="run_button") is not None


def test_result_pages_point_to_the_run_page_before_any_run(samples):
    at = start()
    for page in ("views/whatif.py", "views/download.py"):
        ok(at.switch_page(page).run())
        assert any("Run a study first" in i.value for i in at.info)
    ok(at.switch_page("views/history.py").run())
    assert any("No runs recorded" in i.value for i in at.info)


@pytest.mark.slow
def test_shipped_sample_fleets_open(monkeypatch):
    monkeypatch.delenv("HDAP_SAMPLE_DATA", raising=False)
    at = start()
    assert {"jetson_nano_fleet (sample fleet)", "rpi4_fleet (sample fleet)"} <= \
        set(at.selectbox(key="fleet_choice").options)
    assert metric(at, "Devices") == "5,000"
    assert charts(at)
