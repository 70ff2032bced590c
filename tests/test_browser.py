"""The app in a real Chromium: upload telemetry, see the map, run, download the TorchScript file.

Starts `python -m hdap_engine app` on a free localhost port with its own
workspace and small simulated sample fleets, and drives Debian's Chromium
through Playwright (never `playwright install`). A screenshot of every page
lands in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> float:
    """Seconds until the server answers its health check."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return time.perf_counter() - t0
        time.sleep(0.2)
    raise TimeoutError(f"the app did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def app_server(home: Path, env: dict | None = None):
    """`python -m hdap_engine app --port P` in its own process group; yields (url, proc)."""
    port = free_port()
    full_env = {**os.environ, "HDAP_HOME": str(home), "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "hdap_engine", "app", "--port", str(port)],
                            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        # The CLI starts Streamlit as a child: end the whole group we created.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


_SCRIPT_STATE = "document.querySelector('[data-testid=\"stApp\"]')" \
                ".getAttribute('data-test-script-state')"


def settle(page, timeout: float = 180_000) -> None:
    """Wait until Streamlit has finished the script run that the last action started."""
    with contextlib.suppress(Exception):  # a quick run may be over before we look
        page.wait_for_function(f"{_SCRIPT_STATE} === 'running'", timeout=1500)
    page.wait_for_function(f"{_SCRIPT_STATE} !== 'running'", timeout=timeout)


def open_page(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    settle(page)


def shot(page, name: str) -> None:
    """A screenshot of the whole page (Streamlit scrolls inside its main block, so the
    window is stretched to the content's height first)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("document.querySelector('[data-testid=\"stMainBlockContainer\"]')"
                           ".scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"],
                                                                  int(height) + 150)})
    page.wait_for_timeout(700)  # charts re-layout to the new size
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(size)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    from hdap_engine.fleet.simulate import simulate_fleet, write_fleet

    folder = tmp_path_factory.mktemp("samples")
    telemetry, states = simulate_fleet("jetson-nano", 400, seed=3)
    write_fleet(folder / "jetson_small", telemetry, states)
    return folder


def test_upload_map_run_and_download_torchscript_in_chromium(samples, tmp_path):
    import torch
    from playwright.sync_api import expect, sync_playwright

    from hdap_engine.fleet.simulate import simulate_fleet
    from hdap_engine.models.zoo import get_spec

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    upload = tmp_path / "my_fleet.csv"
    simulate_fleet("jetson-nano", 200, seed=8)[0].to_csv(upload, index=False)
    started = time.perf_counter()
    with app_server(tmp_path / "home", {"HDAP_SAMPLE_DATA": str(samples)}) as (url, proc), \
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
    elapsed = time.perf_counter() - started
    assert saved.suffix == ".ts"
    model = torch.jit.load(str(saved))
    with torch.no_grad():
        out = model(get_spec("resnet56").example_input())
    assert tuple(out.shape) == (1, 10)
    assert elapsed < 180, f"the browser test took {elapsed:.0f} s"
