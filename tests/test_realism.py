"""Twin realism: fitted to this machine's probe row, the twin predicts this machine."""

from __future__ import annotations

import pytest

from hdap_engine.twin.realism import MAPE_MAX, SPEARMAN_MIN, run_realism


@pytest.mark.slow
def test_twin_fitted_to_host_probes_predicts_host_latency_of_resnet18_candidates():
    # A shared machine can be hijacked for a whole run by another job; one
    # retry keeps that from failing the suite, a wrong twin still fails twice.
    results = []
    for seed in (0, 1):
        r = run_realism("resnet18", 30, threads=1, seed=seed)
        results.append((round(r.spearman, 3), round(r.mape, 3)))
        if r.passed:
            break
    assert r.spearman >= SPEARMAN_MIN and r.mape < MAPE_MAX, results
