"""The Model page's precision and budget choices (INT8, a latency budget) reach the study's settings.

AppTest (no browser). The study itself is cancelled: its settings are what is tested here;
the INT8 engine is tests/test_quantize.py's.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.apptest import ok, start

pytestmark = [pytest.mark.app, pytest.mark.usefixtures("samples")]


@pytest.mark.slow  # 30 s: the app, a job submitted and cancelled
def test_int8_and_a_latency_budget_on_the_model_page_reach_the_job():
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
    # A budget in fleet latency instead of MACs (`hdap_engine.study.latency_budget`).
    ok(at.radio(key="budget_unit").set_value("fleet latency (ms)").run())
    ok(at.number_input(key="latency_budget").set_value(7.5).run())
    assert not at.slider  # no MACs slider while the budget is a latency

    ok(at.switch_page("views/run.py").run())
    assert any("a fleet latency of **7.5 ms**" in m.value for m in at.markdown)
    ok(at.button(key="run_button").click().run())
    table = JobTable()
    job_id = at.session_state["job"]
    try:
        options = table.get(job_id).settings["options"]
        assert options["measurement"]["precision"] == "int8"
        assert options["quantize"]["calibrate_on"] == "random"
        assert options["round_to"] == 16
        assert options["query"]["latency_ms"] == 7.5
    finally:
        table.request_cancel(job_id)
        t0 = time.perf_counter()
        while table.get(job_id).active and time.perf_counter() - t0 < 60:
            time.sleep(0.2)
