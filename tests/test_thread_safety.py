"""Engine entry points the app's server calls from several sessions' threads at once.

Streamlit runs every session's script in a thread of one process. Tracing a
model (torch.fx, Torch-Pruning's hooks) is not safe in several threads at
once: without the lock in `hdap_engine.pruning.space` these calls fail with
Torch-Pruning's "module is not installed as a submodule" or shape errors.
"""

from __future__ import annotations

import threading

import numpy as np

from hdap_engine.pruning import cache
from hdap_engine.pruning.space import PruningSpace


def _at_once(n: int, work) -> tuple[list, list]:
    """Run ``work(i)`` in ``n`` threads released together; (results, exceptions)."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001  (collected and asserted on below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_pruning_spaces_traced_from_several_threads_at_once_are_one_correct_trace():
    cache.clear_memory()
    models = ["resnet18", "resnet56", "resnet18", "resnet56", "resnet18", "resnet56"]
    rounds = [8, 8, 16, 4, 8, 1]
    results, errors = _at_once(len(models), lambda i: PruningSpace.for_model(
        models[i], round_to=rounds[i], min_ratio=0.1 + 0.05 * i))
    assert not errors, [repr(e) for e in errors]
    traced = {m: PruningSpace.from_data(cache.build_now(m)) for m in set(models)}
    for i, sp in enumerate(results):
        assert sp.model == models[i]
        assert sp.round_to == rounds[i] and abs(sp.min_ratio - (0.1 + 0.05 * i)) < 1e-12
        alone = traced[models[i]]
        assert sp.group_names == alone.group_names
        assert np.array_equal(sp.base_widths, alone.base_widths)
        assert sp.macs(sp.base_widths) == alone.macs(alone.base_widths)
    # Built once per model: the shared spaces are the same object underneath.
    for m in set(models):
        same = [sp for sp, name in zip(results, models, strict=True) if name == m]
        assert all(sp.layers is same[0].layers for sp in same)
