"""Several people on one server: N Chromium users run a study at the same moment.

For each N, a fresh `python -m hdap_engine app` (empty workspace) is started;
N browser contexts (N sessions) open the Run page, click "Run the study"
within the same second, and wait for the results. Printed per N: every
user's time from the click to the results on screen, whether all succeeded
(results drawn, no exception on the page, no traceback in the server log),
how many jobs ran, and the peak memory of the server's process tree
(server, Streamlit, job workers: RSS summed from /proc every 0.2 s).

``--same`` (default) gives every user the same settings: one job, shared by
all (a second Run for the same settings opens the running job). ``--distinct``
gives user i the seed i, so N different jobs queue behind the server's
worker limit (``--workers``, default one per two cores).

``--quick`` runs the test suite's quick study (ResNet-56, 40 candidates, one
refinement round, no comparison or sweep) instead of the app's defaults
(ResNet-50, 200 candidates, comparison with uniform and global, budget sweep).

    python -m benchmarks.load [--users 1 3 6] [--distinct] [--quick] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from tests.helpers.browser import CHROMIUM, LAUNCH_ARGS, app_server, settle, wait_healthy

QUICK = {"model": "resnet56", "samples": 40, "refine_rounds": 1, "compare_methods": [],
         "sweep_on": False}


def _tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        rss[int(entry)] = int(found.group(1)) * 1024 if found else 0
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


class PeakMemory:
    """Samples the process tree's memory in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(self.pid))
            time.sleep(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def one_load(n: int, *, distinct: bool, quick: bool, workers: int | None,
             timeout_s: float) -> dict:
    """A fresh server, ``n`` users at once; their times, success and the server's peak memory."""
    from playwright.sync_api import sync_playwright

    from hdap_engine.jobs import JobTable

    with tempfile.TemporaryDirectory(prefix="hdap-load-", ignore_cleanup_errors=True) as tmp:
        home, log = Path(tmp) / "home", Path(tmp) / "server.log"
        env = {"HDAP_APP_DEFAULTS": json.dumps(QUICK)} if quick else {}
        if workers:
            env["HDAP_JOB_WORKERS"] = str(workers)
        with app_server(home, env, log=log) as (url, proc), sync_playwright() as pw, \
                PeakMemory(proc.pid) as mem:
            wait_healthy(url, proc)
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            pages = []
            for i in range(n):
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(timeout_s * 1000)
                if distinct:
                    page.goto(f"{url}/model")
                    page.get_by_text("Advanced options").click()
                    box = page.get_by_role("spinbutton", name="Seed")
                    box.fill(str(i))
                    box.press("Enter")
                    settle(page)
                    page.locator('[data-testid="stSidebarNav"]').get_by_role(
                        "link", name="3 Run").click()
                else:
                    page.goto(f"{url}/run")
                page.get_by_role("button", name="Run the study").wait_for()
                settle(page)
                pages.append(page)
            clicked = []
            for page in pages:
                page.get_by_role("button", name="Run the study").click()
                clicked.append(time.perf_counter())
            # Every page is watched in turn, so each user's time is when *their* results
            # appeared, not when the benchmark got round to looking.
            times: list[float] = [float("nan")] * n
            ok = [False] * n
            pending = set(range(n))
            deadline = time.perf_counter() + timeout_s
            while pending and time.perf_counter() < deadline:
                for i in sorted(pending):
                    chart = pages[i].get_by_text("Latency per cluster: predicted vs measured")
                    if chart.count() and chart.first.is_visible():
                        times[i] = time.perf_counter() - clicked[i]
                        ok[i] = pages[i].locator('[data-testid="stException"]').count() == 0
                        pending.discard(i)
                time.sleep(0.2)
            browser.close()
        text = log.read_text(errors="replace")
        jobs = JobTable(home / "store.sqlite").list()
        return {"users": n, "seconds": [round(t, 1) for t in times],
                "all_succeeded": all(ok) and "Traceback" not in text,
                "jobs": len(jobs), "jobs_done": sum(j.state == "done" for j in jobs),
                "peak_memory_mb": round(mem.peak / 2**20)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, nargs="+", default=[1, 3, 6])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--same", action="store_true", help="same settings for all (default)")
    mode.add_argument("--distinct", action="store_true", help="user i uses seed i")
    p.add_argument("--quick", action="store_true", help="the tests' quick study")
    p.add_argument("--workers", type=int, default=None, help="HDAP_JOB_WORKERS for the server")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per user")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is not installed (apt-get install chromium)")
    print(f"cores {os.cpu_count()}, study {'quick' if args.quick else 'app defaults'}, "
          f"{'distinct seeds' if args.distinct else 'same settings'}, workers "
          f"{args.workers or 'default'}", flush=True)
    rows = []
    for n in args.users:
        row = one_load(n, distinct=args.distinct, quick=args.quick, workers=args.workers,
                       timeout_s=args.timeout)
        rows.append(row)
        print(f"N={n}: time to results per user (s) {row['seconds']}; all succeeded "
              f"{row['all_succeeded']}; jobs {row['jobs']} ({row['jobs_done']} done); "
              f"server peak memory {row['peak_memory_mb']} MB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
