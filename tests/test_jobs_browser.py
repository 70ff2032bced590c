"""A team server in a real Chromium: runs are jobs that many people share and that outlive tabs.

Each test starts `python -m hdap_engine app` on a fresh workspace with a
small simulated sample fleet and a quick default study
(``HDAP_APP_DEFAULTS``), and drives Debian's Chromium through Playwright.

- three sessions click Run at the same moment: all see results, none sees an
  exception, the server log has no traceback; one of them closes its tab at once,
  and the job's link opened in another browser shows the progress, then the results;
- the server killed (SIGKILL of its process group) mid-job and started again:
  the job shows as interrupted, one click re-queues it, it completes and
  re-uses the measurements made before the kill.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.helpers.browser import (
    ARTIFACTS,
    CHROMIUM,
    LAUNCH_ARGS,
    QUICK,
    WAIT,
    app_server,
    kill_server,
    results,
    screenshot,
    settle,
    small_sample_fleet,
    wait_healthy,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]



@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return small_sample_fleet(tmp_path_factory.mktemp("samples"))


def _env(samples: Path, defaults: dict | None = None, **extra) -> dict:
    return {"HDAP_SAMPLE_DATA": str(samples),
            "HDAP_APP_DEFAULTS": json.dumps({**QUICK, **(defaults or {})}), **extra}


def _chromium(pw):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)


def _page(browser):
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(WAIT)
    expect.set_options(timeout=WAIT)
    return page


def _job_of(page) -> int:
    found = re.search(r"[?&]job=(\d+)", page.url)
    assert found, f"no job in the page's link: {page.url}"
    return int(found.group(1))


def _no_exception(page) -> None:
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stException"]')).to_have_count(0)




def test_three_people_run_at_once_all_get_results_and_a_closed_tab_loses_nothing(samples,
                                                                                 tmp_path):
    """Three sessions click Run together; one closes its tab at once, and the job's link
    opened in another browser shows the progress, then the same results."""
    from playwright.sync_api import expect, sync_playwright

    from hdap_engine.jobs import JobTable

    log = tmp_path / "server.log"
    home = tmp_path / "home"
    with app_server(home, _env(samples), log=log) as (url, proc), sync_playwright() as pw:
        wait_healthy(url, proc)
        browser = _chromium(pw)
        pages = [_page(browser) for _ in range(3)]
        for page in pages:  # a fresh server: the three first page views overlap too
            page.goto(f"{url}/run")
        for page in pages:
            page.get_by_role("button", name="Run the study").wait_for()
            settle(page)
        for page in pages:  # a click returns at once: the three runs start together
            page.get_by_role("button", name="Run the study").click()
        leaver = pages.pop(0)
        expect(leaver.get_by_text(re.compile(r"Job \d+ is (running|queued)"))).to_be_visible()
        job_id = _job_of(leaver)
        leaver.context.close()  # the tab is gone; the job is not

        other = _chromium(pw)
        late = _page(other)
        late.goto(f"{url}/run?job={job_id}")
        expect(late.get_by_text(f"Job {job_id} is running")).to_be_visible()
        expect(late.get_by_role("progressbar")).to_be_visible()
        screenshot(late, ARTIFACTS / "jobs-link-progress.png")
        for i, page in enumerate([*pages, late]):
            results(page)
            _no_exception(page)
            screenshot(page, ARTIFACTS / f"jobs-results-{i}.png")
        jobs = {_job_of(page) for page in [*pages, late]}
        other.close()
        browser.close()
    # The same settings while one is queued or running: one job, shared.
    assert jobs == {job_id}, jobs
    job = JobTable(home / "store.sqlite").get(job_id)
    assert job.state == "done", (job.state, job.error)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Exception" not in text, text[-3000:]


def test_a_killed_server_shows_the_job_interrupted_and_a_requeue_reuses_its_measurements(
        samples, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from hdap_engine.jobs import JobTable
    from hdap_engine.latency.store import Store

    home = tmp_path / "home"
    table = JobTable(home / "store.sqlite")
    # The kill comes right after the measuring; the rest is not the point.
    env = _env(samples)
    with sync_playwright() as pw:
        browser = _chromium(pw)
        with app_server(home, env) as (url, proc):
            wait_healthy(url, proc)
            page = _page(browser)
            page.goto(f"{url}/run")
            page.get_by_role("button", name="Run the study").click()
            expect(page.get_by_text(re.compile(r"Job \d+ is (running|queued)"))).to_be_visible()
            job_id = _job_of(page)
            # Kill once the sampled measurements are in the store, before the job ends.
            t0 = time.perf_counter()
            while True:
                job = table.get(job_id)
                assert job.active, (job.state, job.error)
                if job.stage in ("fit", "search", "prune", "validate", "export"):
                    break
                assert time.perf_counter() - t0 < WAIT / 1000, "the job never got past measuring"
                time.sleep(0.2)
            kill_server(proc)
        before = Store(home / "store.sqlite").count_measurements()
        assert before > 0
        assert table.get(job_id).state == "running"  # nobody was left to say otherwise

        with app_server(home, env) as (url, proc):
            wait_healthy(url, proc)
            page = _page(browser)
            page.goto(f"{url}/run?job={job_id}")
            expect(page.get_by_text(f"Job {job_id} was interrupted")).to_be_visible()
            screenshot(page, ARTIFACTS / "jobs-interrupted.png")
            page.get_by_role("button", name="Re-queue this job").click()
            results(page)
            expect(page.get_by_text("sampled measurements came from the store")).to_be_visible()
            _no_exception(page)
        browser.close()
    job = table.get(job_id)
    assert job.state == "done" and job.attempts == 2
    sampled = job.result["measurements"]
    assert sampled["measured"] == 0 and sampled["from_store"] > 0, sampled
    assert sampled["from_store"] <= before
