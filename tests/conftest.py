"""Shared fixtures: an isolated workspace per test, the CLI runner, small simulated fleets.

Helpers that are not fixtures (paths, quick options, drivers) are in `tests/helpers/`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli

# `make test` runs three pytest workers on two cores, and each starts servers, agents and
# job workers of its own. With PyTorch's default of one OpenMP thread per core, every
# parallel region waits at a barrier for a thread that another process has descheduled
# (measured on a 2-core AMD EPYC: the whole suite took 1859 s with PyTorch's default
# threads and 1369 s with one). One thread per process, inherited by every subprocess,
# lets the processes share the cores instead.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path_factory, monkeypatch):
    """Every test gets its own HDAP_HOME, so no test sees another's store."""
    monkeypatch.setenv("HDAP_HOME", str(tmp_path_factory.mktemp("hdap_home")))


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def small_fleet(tmp_path_factory) -> Path:
    """A simulated 400-device Jetson Nano fleet (telemetry + twin sidecar); returns the CSV."""
    from hdap_engine.twin.simulate import simulate_fleet, write_fleet

    telemetry, states = simulate_fleet("jetson-nano", 400, seed=3)
    csv_path, _ = write_fleet(tmp_path_factory.mktemp("fleet") / "small", telemetry, states)
    return csv_path


def pytest_collection_modifyitems(config, items):
    """The heaviest files first (stable otherwise).

    A long file that starts last leaves the other workers idle while it runs, so the long
    ones come first and the quick files fill the gaps at the end: files by their number of
    browser tests (a server, job workers and Chromium each: they take the longest), then
    files with slow tests. This is the order of a run in one process. `make test`'s
    `--dist loadfile` hands whole files to three workers and, by pytest-xdist's default,
    reorders them by their number of tests; with `--no-loadscope-reorder` it keeps this
    order. Both took the same wall time on the 2-core AMD EPYC (703 s each, docs/tests.md),
    so the default stays.
    """
    browser: dict = {}
    slow: set = set()
    for item in items:
        browser[item.path] = browser.get(item.path, 0) + bool(item.get_closest_marker("browser"))
        if item.get_closest_marker("slow"):
            slow.add(item.path)
    items.sort(key=lambda item: (-browser[item.path], item.path not in slow))


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory) -> Path:
    """Two small simulated sample fleets with their twin sidecars."""
    from hdap_engine.twin.simulate import simulate_fleet, write_fleet

    folder = tmp_path_factory.mktemp("samples")
    for sku, n, name in (("jetson-nano", 400, "jetson_small"), ("rpi4", 200, "rpi_small")):
        telemetry, states = simulate_fleet(sku, n, seed=3)
        write_fleet(folder / name, telemetry, states)
    return folder


@pytest.fixture
def samples(sample_folder, monkeypatch) -> Path:
    """The small sample fleets, as the app's sample folder (HDAP_SAMPLE_DATA)."""
    monkeypatch.setenv("HDAP_SAMPLE_DATA", str(sample_folder))
    return sample_folder

