"""Model files for the agent backend: each candidate exported once, shared, and kept a while.

The agent backend (`hdap_engine.latency.agent_backend`) sends every candidate to
several devices at once. `Exports` exports each candidate once per call and
shares it between the devices' threads, a few candidates ahead of the slowest
device, while a thread of its own exports the next ones; `ByteCache` keeps
recent model files between calls, so a candidate timed again later (timing-drift
anchors, finalists) is not exported again. Torch's exporters are not
thread-safe, so every export holds one module-wide lock.

Public API
----------
``Exports(export, space, widths, columns, stop, *, window=EXPORT_WINDOW, fmt=None)``:
``.get(i, fmt, column) -> bytes | None``, ``.finish(column)``, ``.close()``
``ByteCache(limit)``: ``.get(key)``, ``.put(key, body)``
``EXPORT_WINDOW``, ``EXPORT_CACHE_BYTES``
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from hdap_engine.pruning.space import PruningSpace

# Candidates a fast device may run ahead of the slowest one still measuring:
# bounds the exported models held in memory (a ResNet-50 is about 100 MB).
EXPORT_WINDOW = 3
# Model files kept between calls (`AgentBackend._exported`), least recently used dropped first.
EXPORT_CACHE_BYTES = 1 << 30

_EXPORT_LOCK = threading.Lock()  # torch's exporters are not thread-safe


class ByteCache:
    """Model files by key, at most ``limit`` bytes, the least recently used dropped first."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key, body: bytes) -> None:
        with self._lock:
            if key in self._items or len(body) > self.limit:
                return
            self._items[key] = body
            self._bytes += len(body)
            while self._bytes > self.limit:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


class Exports:
    """Each candidate exported once and shared by every device's thread while it is needed.

    A device runs at most `EXPORT_WINDOW` candidates ahead of the slowest
    device still measuring, and a model file is dropped once every device is
    past it, so only a few exported models are in memory at a time. A thread
    of its own exports the next candidates in ``fmt`` while the devices measure
    the current ones (up to the same window ahead), so that devices wait for an
    export only when exporting is slower than measuring.
    """

    def __init__(self, export, space: PruningSpace, widths: np.ndarray, columns: int,
                 stop: threading.Event, window: int = EXPORT_WINDOW, fmt: str | None = None):
        self._export = export
        self._space = space
        self._widths = widths
        self._stop = stop
        self._window = window
        self._cond = threading.Condition()
        self._pos = [0] * columns
        self._active = [True] * columns
        self._cache: dict[tuple[int, str], bytes] = {}
        self._ahead = None
        if fmt is not None and len(widths) > 1:
            self._ahead = threading.Thread(target=self._export_ahead, args=(fmt,), daemon=True,
                                           name="hdap-agent-export")
            self._ahead.start()

    def _slowest(self) -> int:
        active = [p for p, a in zip(self._pos, self._active, strict=True) if a]
        return min(active) if active else len(self._widths)

    def _export_ahead(self, fmt: str) -> None:
        for i in range(len(self._widths)):
            with self._cond:
                while i - self._slowest() >= self._window and not self._stop.is_set():
                    self._cond.wait(0.5)
                if self._stop.is_set() or self._slowest() >= len(self._widths):
                    return
                if i < self._slowest():
                    continue  # every device is past it already
            try:
                self._body(i, fmt)
            except BaseException:  # noqa: BLE001 - the device's own call raises it again
                return

    def _body(self, i: int, fmt: str) -> bytes:
        with self._cond:
            data = self._cache.get((i, fmt))
        if data is not None:
            return data
        with _EXPORT_LOCK:
            with self._cond:
                data = self._cache.get((i, fmt))
            if data is None:
                data = self._export(self._space, self._widths[i], fmt)
                with self._cond:
                    if i >= self._slowest():
                        self._cache[(i, fmt)] = data
        return data

    def get(self, i: int, fmt: str, column: int) -> bytes | None:
        """Candidate ``i`` as ``fmt`` bytes for ``column``; None when the measurement stops."""
        with self._cond:
            self._pos[column] = i
            self._cond.notify_all()
            while i - self._slowest() >= self._window and not self._stop.is_set():
                self._cond.wait(0.5)
            if self._stop.is_set():
                return None
            slowest = self._slowest()
            for key in [k for k in self._cache if k[0] < slowest]:
                del self._cache[key]
        return self._body(i, fmt)

    def finish(self, column: int) -> None:
        with self._cond:
            self._active[column] = False
            self._cond.notify_all()

    def close(self) -> None:
        """Wait for the export-ahead thread (it stops once every device is done)."""
        if self._ahead is not None:
            with self._cond:
                self._cond.notify_all()
            self._ahead.join()
