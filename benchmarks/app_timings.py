"""How fast the web app answers, measured in a real Chromium against `hdap app`.

Each repeat starts a fresh server (`python -m hdap_engine app`, empty
workspace: no measurement, surrogate or Streamlit cache) and measures

- ``health_s``         process start -> the server answers /_stcore/health;
- ``first_page_s``     process start -> the Fleet page's title is on screen;
- ``fleet_cold_s``     process start -> the shipped sample fleet's UMAP map is drawn
                       (load, cluster, embed, first visit);
- ``fleet_cold_nav_s`` the same, from the browser's navigation instead of process start;
- ``fleet_warm_s``     back to the Fleet page from another page of the same session ->
                       map drawn (everything cached in the server, Plotly loaded);
- ``fleet_new_tab_s``  a new browser tab (new session) opens the app -> map drawn (the
                       browser loads Streamlit's and Plotly's JavaScript again);
- ``run_results_s``    Run page, "Run the study" with the defaults (ResNet-50, 25 % of
                       its MACs, twin backend, 200 candidates per representative) ->
                       the study's results drawn (predicted vs measured per cluster);
- ``run_cold_s``       the same click -> everything the button does by default drawn:
                       also the comparison with uniform and global and the budget sweep.

``--numba-cold`` also empties numba's on-disk cache (a fresh machine's first
start: UMAP is compiled). Prints a table and the medians; ``--json`` saves them.

    python -m benchmarks.app_timings [--repeats 3] [--numba-cold] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.helpers.browser import CHROMIUM, LAUNCH_ARGS, app_server, open_page, settle, wait_healthy

KEYS = ("health_s", "first_page_s", "fleet_cold_s", "fleet_cold_nav_s", "fleet_warm_s",
        "fleet_new_tab_s", "run_results_s", "run_cold_s")
POINTS = ".js-plotly-plot .scatterlayer .point"


def one_repeat(*, numba_cold: bool, run: bool, model: str | None) -> dict:
    """Fresh server and workspace; the timings of one user's first visit and run."""
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory(prefix="hdap-timing-") as tmp:
        env = {"NUMBA_CACHE_DIR": str(Path(tmp) / "numba")} if numba_cold else {}
        out: dict = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(300_000)
            expect.set_options(timeout=300_000)
            t0 = time.perf_counter()
            with app_server(Path(tmp) / "home", env) as (url, proc):
                wait_healthy(url, proc)
                out["health_s"] = time.perf_counter() - t0
                nav = time.perf_counter()
                page.goto(url)
                expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
                out["first_page_s"] = time.perf_counter() - t0
                page.locator(POINTS).first.wait_for(state="attached")
                out["fleet_cold_s"] = time.perf_counter() - t0
                out["fleet_cold_nav_s"] = time.perf_counter() - nav
                settle(page)

                open_page(page, "6 History")
                t1 = time.perf_counter()
                page.locator('[data-testid="stSidebarNav"]').get_by_role(
                    "link", name="1 Fleet").click()
                page.locator(POINTS).first.wait_for(state="attached")
                out["fleet_warm_s"] = time.perf_counter() - t1
                settle(page)

                second = browser.new_page(viewport={"width": 1400, "height": 1000})
                t1 = time.perf_counter()
                second.goto(url)
                second.locator(POINTS).first.wait_for(state="attached")
                out["fleet_new_tab_s"] = time.perf_counter() - t1
                second.close()

                if run:
                    if model:
                        open_page(page, "2 Model and budget")
                        page.locator('[data-testid="stSelectbox"]').filter(
                            has_text="Model").first.click()
                        page.get_by_role("option", name=model).first.click()
                        settle(page)
                    open_page(page, "3 Run")
                    t2 = time.perf_counter()
                    page.get_by_role("button", name="Run the study").click()
                    expect(page.get_by_text("Latency per cluster: predicted vs measured")) \
                        .to_be_visible()
                    out["run_results_s"] = time.perf_counter() - t2
                    settle(page, timeout=600_000)
                    expect(page.get_by_text("Budget sweep: MACs vs fleet latency")).to_be_visible()
                    out["run_cold_s"] = time.perf_counter() - t2
                    out["run_label"] = page.locator('[data-testid="stExpander"]').filter(
                        has_text="Done in").first.inner_text().strip().splitlines()[-1]
            browser.close()
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--numba-cold", action="store_true",
                   help="empty numba's disk cache too (UMAP is compiled on first use)")
    p.add_argument("--no-run", action="store_true", help="skip the ResNet-50 run")
    p.add_argument("--model", default=None, help="run another model than the default")
    p.add_argument("--json", default=None, help="write the timings here")
    args = p.parse_args(argv)
    rows = []
    for i in range(args.repeats):
        row = one_repeat(numba_cold=args.numba_cold, run=not args.no_run, model=args.model)
        rows.append(row)
        print(f"repeat {i + 1}: " + "  ".join(f"{k} {row[k]:.1f}" for k in KEYS if k in row)
              + (f"  ({row['run_label']})" if "run_label" in row else ""), flush=True)
    medians = {k: statistics.median(r[k] for r in rows) for k in KEYS if k in rows[0]}
    print("median:   " + "  ".join(f"{k} {v:.1f}" for k, v in medians.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"repeats": rows, "median": medians,
                                               "numba_cold": args.numba_cold}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
