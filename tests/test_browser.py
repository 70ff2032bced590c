"""The app in a real Chromium: upload telemetry, see the map, run, download the TorchScript file.

Starts `python -m hdap_engine app` on a free localhost port with its own
workspace and small simulated sample fleets, and drives Debian's Chromium
through Playwright (never `playwright install`). A screenshot of every page
lands in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.browser import (
    ARTIFACTS,
    CHROMIUM,
    LAUNCH_ARGS,
    app_server,
    open_page,
    screenshot,
    settle,
    small_sample_fleet,
    wait_healthy,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]



def shot(page, name: str) -> None:
    screenshot(page, ARTIFACTS / f"{name}.png")


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return small_sample_fleet(tmp_path_factory.mktemp("samples"))


def test_upload_map_run_and_download_torchscript_in_chromium(samples, tmp_path):
    import torch
    from playwright.sync_api import expect, sync_playwright

    from hdap_engine.models.zoo import get_spec
    from hdap_engine.twin.simulate import simulate_fleet

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    upload = tmp_path / "my_fleet.csv"
    simulate_fleet("jetson-nano", 200, seed=8)[0].to_csv(upload, index=False)
    # No comparison or sweep: this test is about the pages, other tests run those parts.
    quick = json.dumps({"compare_methods": [], "sweep_on": False, "search_effort": "quick",
                        "representatives": 1})
    with app_server(tmp_path / "home", {"HDAP_SAMPLE_DATA": str(samples),
                                        "HDAP_APP_DEFAULTS": quick}) as (url, proc), \
            sync_playwright() as pw:
        wait_healthy(url, proc)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)
        page.goto(url)

        # 1 Fleet: the sample fleet's map, then an upload replaces it.
        expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        settle(page)
        page.locator('[data-testid="stFileUploader"] input[type="file"]').first \
            .set_input_files(str(upload))
        settle(page)
        expect(page.get_by_text("Uploaded telemetry has no twin sidecar")).to_be_visible()
        expect(page.get_by_role("combobox", name="Fleet on screen")).to_have_value(
            "uploaded: my_fleet.csv")
        expect(page.locator('[data-testid="stMetricValue"]').first).to_have_text("200")
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_contain_text("200 devices")
        shot(page, "1-fleet")

        # 2 Model and budget: a fast model, few samples.
        open_page(page, "2 Model and budget")
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Model").first.click()
        page.get_by_role("option", name="resnet56").first.click()
        settle(page)
        page.get_by_text("Advanced options").click()
        samples_box = page.get_by_role("spinbutton", name="Candidates measured (samples)")
        samples_box.fill("40")
        samples_box.press("Enter")
        settle(page)
        rounds_box = page.get_by_role("spinbutton", name="Refinement rounds")
        rounds_box.fill("1")
        rounds_box.press("Enter")
        settle(page)
        expect(page.get_by_text("random initialisation").first).to_be_visible()
        shot(page, "2-model")

        # 3 Run: one button; the predicted-vs-measured chart appears.
        open_page(page, "3 Run")
        page.get_by_role("button", name="Run the study").click()
        settle(page, timeout=170_000)
        expect(page.get_by_text("Latency per cluster: predicted vs measured")).to_be_visible()
        expect(page.get_by_text("twin (simulated)").first).to_be_visible()
        shot(page, "3-run")

        # 4 What-if.
        open_page(page, "4 What-if")
        expect(page.get_by_text("the run against the what-if candidate")).to_be_visible()
        shot(page, "4-whatif")

        # 5 Download: the TorchScript file loads and runs.
        open_page(page, "5 Download")
        shot(page, "5-download")
        with page.expect_download() as info:
            page.get_by_role("button", name="TorchScript (.ts)").click()
        saved = tmp_path / info.value.suggested_filename
        info.value.save_as(saved)

        # 6 History.
        open_page(page, "6 History")
        expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
        shot(page, "6-history")
        browser.close()
    assert saved.suffix == ".ts"
    model = torch.jit.load(str(saved))
    with torch.no_grad():
        out = model(get_spec("resnet56").example_input())
    assert tuple(out.shape) == (1, 10)
