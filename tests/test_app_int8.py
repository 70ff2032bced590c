"""The app's precision option: the Model page's INT8 choice reaches the study's settings.

AppTest (no browser). The study itself is cancelled: its settings are what is tested here;
the INT8 engine is tests/test_quantize.py's.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.apptest import ok, start

pytestmark = [pytest.mark.app, pytest.mark.usefixtures("samples")]


@pytest.mark.slow  # 30 s: the app, a job submitted and cancelled
def test_int8_on_the_model_page_rounds_to_16_asks_for_calibration_and_reaches_the_job():
    from hdap_engine.jobs import JobTable

    at = start()
    ok(at.switch_page("views/model.py").run())
    ok(at.selectbox(key="model").set_value("resnet56").run())
    assert at.session_state["precision"] == "fp32" and at.session_state["round_to"] == 8
    ok(at.radio(key="precision").set_value("int8").run())
    assert at.session_state["round_to"] == 16  # the rounding follows the precision
    assert any("INT8 calibrates on the labelled data" in w.value for w in at.warning)
    ok(at.checkbox(key="calibrate_random").check().run())
    assert not any("INT8 calibrates on the labelled data" in w.value for w in at.warning)
    ok(at.radio(key="precision").set_value("fp32").run())
    assert at.session_state["round_to"] == 8
    ok(at.radio(key="precision").set_value("int8").run())

    ok(at.switch_page("views/run.py").run())
    ok(at.button(key="run_button").click().run())
    table = JobTable()
    job_id = at.session_state["job"]
    try:
        options = table.get(job_id).settings["options"]
        assert options["measurement"]["precision"] == "int8"
        assert options["quantize"]["calibrate_on"] == "random"
        assert options["round_to"] == 16
    finally:
        table.request_cancel(job_id)
        t0 = time.perf_counter()
        while table.get(job_id).active and time.perf_counter() - t0 < 60:
            time.sleep(0.2)
