"""The Drift page: a later snapshot against the fleet on screen, and the deployed model's check."""

from __future__ import annotations

import pytest

from tests.helpers.apptest import ok, start

pytestmark = pytest.mark.app


@pytest.fixture(scope="module")
def drift_samples(tmp_path_factory):
    """A 400-device Jetson fleet and its later snapshot (60 devices now throttling)."""
    from hdap_engine.twin.simulate import later_snapshot, simulate_fleet, write_fleet

    folder = tmp_path_factory.mktemp("drift_samples")
    telemetry, states = simulate_fleet("jetson-nano", 400, seed=3)
    write_fleet(folder / "jetson_small", telemetry, states)
    later, later_states, changed = later_snapshot(states, 0.15, "thermal_throttling", seed=4)
    write_fleet(folder / "jetson_small_later", later, later_states)
    return folder, later, changed


def test_the_later_sample_is_compared_with_the_fleet_on_screen(drift_samples, monkeypatch):
    folder, _, changed = drift_samples
    monkeypatch.setenv("HDAP_SAMPLE_DATA", str(folder))
    at = ok(start().switch_page("views/drift.py").run())
    assert at.selectbox(key="drift_new_choice").value == "jetson_small_later"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Devices in both"] == "400" and metrics["New devices"] == "0"
    moved = int(metrics["Moved between clusters"].replace(",", ""))
    assert abs(moved - len(changed)) <= 0.1 * len(changed)  # the twin's truth: 60 devices
    assert at.get("plotly_chart")  # the Sankey of the moves
    assert any("Run a study on the Run page first" in i.value for i in at.info)


def test_a_bad_snapshot_upload_is_one_message_and_keeps_the_fleet(drift_samples, monkeypatch):
    folder, _, _ = drift_samples
    monkeypatch.setenv("HDAP_SAMPLE_DATA", str(folder))
    at = ok(start().switch_page("views/drift.py").run())
    ok(at.selectbox(key="drift_new_choice").set_value("upload a snapshot").run())
    ok(at.file_uploader(key="drift_upload").set_value(
        ("later.csv", b"device_id,sku\nd1,jetson-nano\n", "text/csv")).run())
    assert len(at.error) == 1 and "probe" in at.error[0].value
    assert at.session_state["fleet_choice"] == "jetson_small"  # OLD is untouched
