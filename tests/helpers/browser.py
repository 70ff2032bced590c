"""Driving the app in a real Chromium: start the server, wait for Streamlit, take screenshots.

Shared by the browser test and `benchmarks/app_timings.py`. Chromium is
Debian's (`/usr/bin/chromium`); Playwright never downloads a browser here.
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

from tests.helpers.paths import ROOT

ARTIFACTS = ROOT / "test-artifacts" / "browser"  # every browser test's screenshots
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
_SCRIPT_STATE = "document.querySelector('[data-testid=\"stApp\"]')" \
                "?.getAttribute('data-test-script-state')"


def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Return once the server answers its health check."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"the app did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def app_server(home: Path, env: dict | None = None, *, port: int | None = None,
               log: Path | None = None, host: str = "127.0.0.1"):
    """`python -m hdap_engine app --port P` in its own process group; yields (url, proc).

    ``log``: a file that gets the server's output (its log, tracebacks included).
    """
    port = port or free_port()
    full_env = {**os.environ, "HDAP_HOME": str(home), "PYTHONPATH": str(ROOT), **(env or {})}
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "hdap_engine", "app", "--port", str(port)],
                            cwd=ROOT, env=full_env, stdout=out,
                            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield f"http://{host}:{port}", proc
    finally:
        if log is not None:
            out.close()
        # The CLI starts Streamlit as a child: end the process group we created.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def kill_server(proc: subprocess.Popen) -> None:
    """SIGKILL the server's whole process group (server, Streamlit and job workers): a crash."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def settle(page, timeout: float = 180_000) -> None:
    """Wait until Streamlit has finished the script run that the last action started."""
    with contextlib.suppress(Exception):  # a quick run may be over before we look
        page.wait_for_function(f"{_SCRIPT_STATE} === 'running'", timeout=1500)
    page.wait_for_function(f"{_SCRIPT_STATE} !== 'running'", timeout=timeout)


def open_page(page, title: str) -> None:
    """Click a page in the sidebar (a new URL would start a new session) and wait for it."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    settle(page)


def screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, so the window is
    stretched to the content's height first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("document.querySelector('[data-testid=\"stMainBlockContainer\"]')"
                           ".scrollHeight")
    page.set_viewport_size({"width": size["width"],
                            "height": max(size["height"], int(height) + 150)})
    page.wait_for_timeout(700)  # charts re-layout to the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def small_sample_fleet(folder: Path) -> Path:
    """``folder`` holding one sample fleet for a browser test: 400 simulated Jetson devices
    (``jetson_small.csv`` and its twin sidecar); returns the folder (for HDAP_SAMPLE_DATA)."""
    from hdap_engine.twin.simulate import simulate_fleet, write_fleet

    telemetry, states = simulate_fleet("jetson-nano", 400, seed=3)
    write_fleet(folder / "jetson_small", telemetry, states)
    return folder


# A quick study: the browser tests are about pages, jobs and sign-in, not the search. One
# representative per cluster: the search measures every candidate on each one, so three
# tripled its measurements (10.9 -> 3.4 s of search on the quick effort).
QUICK = {"model": "resnet56", "samples": 40, "refine_rounds": 1, "representatives": 1,
         "compare_methods": [], "sweep_on": False, "search_effort": "quick"}



WAIT = 240_000  # ms: a quick study on a loaded 2-core machine



def results(page) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name="Results")).to_be_visible(timeout=WAIT)
    expect(page.get_by_text("Latency per cluster: predicted vs measured")).to_be_visible()
    expect(page.get_by_text("twin (simulated)").first).to_be_visible()

