"""Driving the app with Streamlit's AppTest (no browser): start it, check a run, wait for a job."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.helpers.paths import ROOT

HOME = str(ROOT / "app" / "Home.py")


TIMEOUT = 300


def download_bytes(media: list, button) -> bytes:
    name = button.proto.url.rsplit("/", 1)[-1]
    for store in reversed(media):
        try:
            return store.get_file(name).content
        except Exception:
            continue
    raise AssertionError(f"no media file behind {button.label!r} ({button.proto.url})")


def ok(at: AppTest) -> AppTest:
    """Assert a run raised nothing; return the app for chaining."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r}: {[m.label for m in at.metric]}")


def charts(at: AppTest) -> list:
    return list(at.get("plotly_chart"))


def start(**state) -> AppTest:
    at = AppTest.from_file(HOME, default_timeout=TIMEOUT)
    for k, v in state.items():
        at.session_state[k] = v
    return ok(at.run())


def small_study(at: AppTest, *, compare=("uniform",), sweep=True) -> AppTest:
    ok(at.switch_page("views/model.py").run())
    ok(at.selectbox(key="model").set_value("resnet56").run())
    ok(at.number_input(key="samples").set_value(40).run())
    ok(at.number_input(key="refine_rounds").set_value(1).run())
    ok(at.selectbox(key="search_effort").set_value("quick").run())
    ok(at.switch_page("views/run.py").run())
    ok(at.multiselect(key="compare_methods").set_value(list(compare)).run())
    if not sweep:
        ok(at.checkbox(key="sweep_on").uncheck().run())
    ok(at.button(key="run_button").click().run())
    return wait_for_job(at)


def wait_for_job(at: AppTest, timeout: float = TIMEOUT, job_id: int | None = None) -> AppTest:
    """The study (or ``job_id``) runs as a job in a worker process: wait for it to end, then
    redraw the page."""
    import time

    from hdap_engine.jobs import JobTable

    job_id = at.session_state["job"] if job_id is None else job_id
    t0 = time.perf_counter()
    while JobTable().get(job_id).active:
        assert time.perf_counter() - t0 < timeout, f"job {job_id} did not end"
        time.sleep(0.3)
    return ok(at.run())

