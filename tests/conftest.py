"""Shared fixtures: an isolated workspace per test session, and the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m hdap_engine ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hdap_engine", *args], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


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


def quick_options(**changes):
    """Study options small enough for a unit test (ResNet-56, few samples, short search)."""
    from hdap_engine.options import StudyOptions

    base = dict(model="resnet56", budget="0.5", samples=40, repeats=3, warmup=0,
                population=16, generations=8, refine_rounds=1, refine_batch=6, finalists=4,
                restarts=2, polish_rounds=1, polish_batch=4)
    base.update(changes)
    return StudyOptions.of(**base)


def pytest_collection_modifyitems(config, items):
    """Files with slow or browser tests first (stable otherwise).

    `make test` hands whole files to three workers in collection order; a long file that
    starts last leaves two workers idle while it runs, so the long ones start first and the
    quick files fill the gaps at the end.
    """
    heavy = {item.path for item in items
             if item.get_closest_marker("slow") or item.get_closest_marker("browser")}
    items.sort(key=lambda item: item.path not in heavy)
