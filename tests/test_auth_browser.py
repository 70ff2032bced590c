"""Sign-in on a team server, in a real Chromium, against a local OpenID Connect provider.

`oidc-provider-mock` runs in this process as the team's identity provider;
the app gets an ``[auth]`` secrets section pointing at it. Without signing in
no page is drawn (so no download button exists); after signing in, a run
records its owner and the History page names them.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers.browser import (
    ARTIFACTS,
    CHROMIUM,
    LAUNCH_ARGS,
    QUICK,
    WAIT,
    app_server,
    free_port,
    results,
    screenshot,
    settle,
    small_sample_fleet,
    wait_healthy,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ALICE = "alice@example.com"


def _secrets(path: Path, app_port: int, provider: str) -> Path:
    path.write_text(
        "[auth]\n"
        f'redirect_uri = "http://localhost:{app_port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(16)}"\n'
        'client_id = "hdap-studio"\n'
        'client_secret = "test-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n')
    return path


def test_pages_need_sign_in_and_history_names_who_ran_what(tmp_path):
    import httpx
    import oidc_provider_mock
    from playwright.sync_api import expect, sync_playwright

    from hdap_engine.jobs import JobTable

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    samples = tmp_path / "samples"
    samples.mkdir()
    small_sample_fleet(samples)
    home = tmp_path / "home"
    port = free_port()
    with oidc_provider_mock.run_server_in_thread() as idp:
        provider = f"http://localhost:{idp.server_port}"
        assert httpx.put(f"{provider}/users/{quote(ALICE)}",
                         json={"email": ALICE, "name": "Alice"}).status_code == 204
        env = {"HDAP_SAMPLE_DATA": str(samples),
               "HDAP_APP_DEFAULTS": json.dumps(QUICK),
               "STREAMLIT_SECRETS_FILES": str(_secrets(tmp_path / "secrets.toml", port,
                                                       provider))}
        with app_server(home, env, port=port, host="localhost") as (url, proc), \
                sync_playwright() as pw:
            wait_healthy(url, proc)
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(WAIT)
            expect.set_options(timeout=60_000)

            # Signed out: every page, downloads included, is the sign-in screen.
            for path in ("", "/fleet", "/run", "/download", "/history"):
                page.goto(f"{url}{path}")
                expect(page.get_by_role("button", name="Sign in")).to_be_visible()
                settle(page)
                expect(page.locator('[data-testid="stSidebarNav"]')).to_have_count(0)
                expect(page.locator('[data-testid="stDownloadButton"]')).to_have_count(0)
                expect(page.get_by_role("heading", name="Fleet")).to_have_count(0)
            screenshot(page, ARTIFACTS / "auth-sign-in.png")

            # Sign in with the provider's form.
            page.get_by_role("button", name="Sign in").click()
            page.get_by_placeholder("sub").first.fill(ALICE)
            page.get_by_role("button", name="Authorize").click()
            expect(page.get_by_text(f"Signed in: {ALICE}")).to_be_visible()
            expect(page.get_by_role("heading", name="Fleet")).to_be_visible()

            # A run records its owner; History names them.
            page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="3 Run").click()
            page.get_by_role("button", name="Run the study").click()
            results(page)
            expect(page.get_by_text(f"run by {ALICE}")).to_be_visible()
            page.locator('[data-testid="stSidebarNav"]').get_by_role(
                "link", name="6 History").click()
            expect(page.get_by_text(f"Run #1 by {ALICE}")).to_be_visible()
            page.get_by_text("Only my runs").click()
            settle(page)
            expect(page.get_by_text(f"Run #1 by {ALICE}")).to_be_visible()
            screenshot(page, ARTIFACTS / "auth-history.png")
            browser.close()
    (job,) = JobTable(home / "store.sqlite").list()
    assert job.owner == ALICE and job.state == "done"
