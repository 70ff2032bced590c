"""Process-wide locks for work that is not safe in several threads at once.

The app's server runs every browser session's script in a thread of one
process. Tracing a model (torch.fx symbolic tracing, Torch-Pruning's forward
hooks and dependency graph) patches module-level state, so two sessions
tracing at once corrupt each other's graphs ("module is not installed as a
submodule", "expected 4D input"); numba (UMAP) and scikit-learn's clustering
with its thread pools are also better run one at a time in one process.
Heavy runs go to worker processes (`hdap_engine.jobs`); what stays in the
server takes these locks.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

# Re-entrant: a traced space is built inside functions that already hold the lock.
TRACE_LOCK = threading.RLock()  # torch.fx / Torch-Pruning tracing of a model
CLUSTER_LOCK = threading.RLock()  # clustering (threadpoolctl's limits are process-global)
UMAP_LOCK = threading.RLock()  # UMAP layouts (numba's threading layer, its compile cache)


def serialised(lock: threading.RLock) -> Callable[[F], F]:
    """Decorate a function so that only one thread of the process runs it (or its kin) at once."""
    def wrap(func: F) -> F:
        @functools.wraps(func)
        def inner(*args, **kwargs):
            with lock:
                return func(*args, **kwargs)
        return inner  # type: ignore[return-value]
    return wrap
