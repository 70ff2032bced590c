"""The ``agent`` latency backend: candidates timed on real devices through their HTTP agents.

A telemetry file collected with ``hdap agent probe-fleet`` has an
``agent_url`` for each device. The study clusters the fleet and asks this
backend to measure candidates on every cluster's representatives. The backend
builds and exports each candidate once (ONNX by default) and sends it to all
representatives' agents at the same time. Each agent gets one request at a
time, because an agent runs one measurement at a time and refuses a second.

Devices come and go on a real fleet, so one device that cannot be measured
does not stop a study:

- A representative without an ``agent_url`` is replaced by the next device of
  its cluster (closest to the cluster's centre first) that has one.
- A device whose agent stays unavailable through the client's retries, or
  refuses the token or the model, is marked failed for the rest of the study.
  Its column moves to the next-closest device of the same cluster that has a
  working agent. That device measures the call's candidates again, from the
  first, so that within one call a column is one device.
- When no such device is left, the column stays empty (NaN) and the cluster
  goes on with its other representatives. A cluster with no device left is
  named in the notes.

What happened is written as notes (`Backend.notes`) and in `details()`, which
the study report carries as ``report["agent"]``. Store rows are keyed by the
device that was actually measured, its agent's address and the format. Empty
columns are never stored, so a later run tries the failed devices again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from urllib.parse import urlsplit

import numpy as np

from hdap_engine.agent.client import (
    AgentBusy,
    AgentClient,
    AgentError,
    AgentMeasurement,
    AgentRejected,
)
from hdap_engine.agent.protocol import FORMATS, TOKEN_ENV
from hdap_engine.errors import HdapError
from hdap_engine.latency.agent_exports import (  # noqa: F401 - EXPORT_WINDOW is public here too
    EXPORT_CACHE_BYTES,
    EXPORT_WINDOW,
    ByteCache,
    Exports,
)
from hdap_engine.latency.backends import Backend, Measurements, Tick
from hdap_engine.pruning.space import PruningSpace

# How a missing URL looks once a CSV or Parquet cell went through pandas as text.
MISSING_URL = frozenset({"", "nan", "none", "null", "<na>", "nat"})
# The agent's 400 answer to ONNX without onnxruntime (hdap_engine.agent.measure.ORT_MISSING).
ORT_MISSING = "onnxruntime not installed"
PROGRESS_EVERY_S = 0.2
BUSY_POLL_S = 1.0  # between attempts on a busy agent (after the client's own retries)


class AgentBackend(Backend):
    """Measures candidates on real devices through their agents (``hdap agent serve``).

    Parameters
    ----------
    urls:
        device_id -> agent URL, for the devices that have an agent.
    token:
        The agents' bearer token.
    clustering:
        The study's fitted clustering (or call `bind` later): where replacements
        for failed representatives come from. Without it a failed device's
        column stays empty.
    timeout:
        Seconds to wait for a connection (and for short replies).
    measure_timeout:
        Seconds to wait for one measurement's reply.
    retries, backoff:
        The client's extra attempts after a connection error, a 5xx or a busy
        reply, and its first wait in seconds (doubling each time).
    busy_wait_s:
        How long a device that stays busy (another user's measurement) is
        waited for before it counts as failed.
    format:
        ``"onnx"`` or ``"torchscript"``. A device without onnxruntime is switched
        to TorchScript when it says so.
    max_replacements:
        Devices tried in turn for one representative before its column is given
        up (a fleet whose agents all went away fails in bounded time).
    client_factory:
        Builds the client of one agent (tests pass fakes).
    """

    name = "agent"
    source = "agent (real)"
    real = True

    replaces_devices = True
    exports_candidates = True

    def __init__(self, urls: Mapping[str, str], token: str | None, *, clustering=None,
                 timeout: float = 30.0, measure_timeout: float = 300.0, retries: int = 2,
                 backoff: float = 0.5, busy_wait_s: float = 60.0, format: str = "onnx",
                 max_replacements: int = 10, precision: str = "fp32",
                 client_factory: Callable[..., AgentClient] = AgentClient):
        if not token:
            raise HdapError(f"the agent backend needs the agents' token: set {TOKEN_ENV} "
                            "or pass --agent-token")
        if format not in FORMATS:
            raise HdapError(f"unknown agent format {format!r}; use {' or '.join(FORMATS)}")
        if not urls:
            raise HdapError("the agent backend has no device with an agent_url")
        if busy_wait_s < 0 or measure_timeout <= 0:
            raise HdapError("the agent backend needs busy_wait_s >= 0 and measure_timeout > 0")
        if precision not in ("fp32", "int8"):
            raise HdapError(f"unknown precision {precision!r}; choose fp32 or int8")
        if precision == "int8" and format != "onnx":
            raise HdapError("--precision int8 sends the INT8 ONNX model; the agent format "
                            "must be onnx")
        self.precision = precision
        if precision == "int8":
            self.source = "agent (real, int8 ONNX)"
        self.format = format
        self.busy_wait_s = float(busy_wait_s)
        self.max_replacements = int(max_replacements)
        self._clients: dict[str, AgentClient] = {}
        for device, url in urls.items():
            try:
                self._clients[str(device)] = client_factory(
                    url, token, timeout=timeout, retries=retries, backoff=backoff,
                    measure_timeout=measure_timeout)
            except HdapError as exc:
                raise HdapError(f"agent_url of device {device}: {exc}") from None
        self.urls = {d: c.url for d, c in self._clients.items()}
        seen: dict[str, str] = {}
        for device, url in self.urls.items():
            if url in seen:
                raise HdapError(f"agent_url {url} is listed for devices {seen[url]} and {device}; "
                                "each device needs its own agent")
            seen[url] = device
        self.clustering = None
        self.assigned: dict[str, str | None] = {}  # representative -> device measured instead
        self.failed: dict[str, str] = {}  # device -> why it failed
        self.events: list[str] = []  # what happened, in order, for people
        self.formats: dict[str, str] = {}  # devices switched away from self.format
        self.runtimes: dict[str, str] = {}  # device -> runtime it reported
        self.measured: Counter[str] = Counter()  # device -> candidates measured by this backend
        self._cluster_of: dict[str, int] = {}
        self._requested: list[str] = []  # every representative, in cluster order
        self._asked: set[str] = set()  # the representatives measure() was asked for
        self._replacements: Counter[str] = Counter()  # representative -> devices tried
        self._lock = threading.RLock()
        self._cache = ByteCache(EXPORT_CACHE_BYTES)
        if clustering is not None:
            self.bind(clustering)

    @classmethod
    def from_fleet(cls, fleet, token: str | None, *, clustering=None,
                   **options) -> AgentBackend:
        """The backend for a fleet whose telemetry has an ``agent_url`` column.

        Parameters
        ----------
        fleet:
            A validated `Fleet`.
        token:
            The agents' token (``HDAP_AGENT_TOKEN`` or ``--agent-token``).
        clustering:
            The fleet's clustering (see `bind`).
        options:
            Passed to `AgentBackend` (timeout, retries, backoff, format, ...).
        """
        from hdap_engine.fleet.contract import AGENT_URL_COLUMN, ID_COLUMN

        frame = fleet.frame
        if AGENT_URL_COLUMN not in frame.columns:
            raise HdapError(
                f"{fleet.source}: has no {AGENT_URL_COLUMN} column, so the agent backend has no "
                "device to measure on; collect the telemetry with `hdap agent probe-fleet` (it "
                "writes the column), add each device's agent URL, or use --backend twin or host")
        raw = frame[AGENT_URL_COLUMN].fillna("").astype(str).str.strip()
        has = ~raw.str.lower().isin(MISSING_URL)
        if not has.any():
            raise HdapError(
                f"{fleet.source}: column {AGENT_URL_COLUMN} is empty for all {len(frame):,} "
                "devices; fill in the URL of each device's agent (e.g. http://10.0.0.17:8765) "
                "or use --backend twin or host")
        urls = dict(zip(frame.loc[has, ID_COLUMN].tolist(), raw[has].tolist(), strict=True))
        return cls(urls, token, clustering=clustering, **options)

    # -- which device measures what -------------------------------------------------------
    def bind(self, clustering) -> AgentBackend:
        """Give the backend the study's clusters, and replace representatives without an agent.

        Parameters
        ----------
        clustering:
            A fitted `Clustering` of the same fleet; its ``representatives_`` are
            the devices the study will ask for, its `ranked_devices` the
            replacements, closest to the centre first.
        """
        with self._lock:
            self.clustering = clustering
            self._cluster_of = {}
            self._requested = []
            for c in range(int(clustering.k_)):
                for device in clustering.representatives_[c]:
                    self._cluster_of[device] = c
                    self._requested.append(device)
            for device in self._requested:
                if device not in self._clients and device not in self.assigned:
                    self._replace(device, device, "has no agent_url")
        return self

    def measured_device(self, device: str) -> str | None:
        """The device that measures ``device``'s column now (None: no device left)."""
        with self._lock:
            if device in self.assigned:
                return self.assigned[device]
            return device if device in self._clients else None

    def device_key(self, device: str) -> str:
        # The device actually measured, its agent and the format: a replacement's
        # numbers are stored as its own, never as the representative's.
        used = self.measured_device(device) or device
        url = self.urls.get(used)
        where = urlsplit(url).netloc if url else "no-agent"
        key = f"agent:{used}@{where}/{self.formats.get(used, self.format)}"
        # FP32 keeps the key it had before precisions existed (`store.precision_of`).
        return key if self.precision == "fp32" else f"{key}/{self.precision}"

    def _cluster(self, device: str) -> int | None:
        if device in self._cluster_of:
            return self._cluster_of[device]
        if self.clustering is None:
            return None
        ids = self.clustering.assignments()
        hit = ids.loc[ids["device_id"] == device, "cluster"]
        return int(hit.iloc[0]) if len(hit) else None

    def _replace(self, requested: str, lost: str, reason: str) -> str | None:
        """Move ``requested``'s column off ``lost``; the replacement, or None. Holds the lock."""
        c = self._cluster(requested)
        if lost == requested:
            who = f"representative {lost}" + (f" of cluster {c}" if c is not None else "")
        else:
            who = f"{lost} (measuring for representative {requested}" + (
                f" of cluster {c})" if c is not None else ")")
        if c is None:
            self.assigned[requested] = None
            self.events.append(f"agent: {who} {reason}; without the study's clusters there is "
                               "no replacement, so its measurements are missing")
            return None
        in_use = {self.measured_device(r) for r in self._requested}
        in_use |= set(self.assigned.values())
        tries = self._replacements[requested]
        for device in self.clustering.ranked_devices(c) if tries < self.max_replacements else ():
            if (device in self._clients and device not in self.failed and device not in in_use
                    and device != lost):
                self._replacements[requested] += 1
                self.assigned[requested] = device
                self.events.append(
                    f"agent: {who} {reason}; measured on {device} instead, the next closest "
                    f"device of cluster {c} with an agent")
                return device
        self.assigned[requested] = None
        others = [self.measured_device(r) for r in self._requested
                  if self._cluster_of.get(r) == c and r != requested]
        others = [d for d in others if d is not None]
        if others:
            rest = (f"cluster {c} continues with its other representatives "
                    f"({', '.join(others)})")
        else:
            rest = (f"cluster {c} has no device left to measure on: its latency is missing "
                    "from the measurements that follow")
        if tries >= self.max_replacements:
            why = f"{tries} replacements failed too"
        else:
            why = f"no other device of cluster {c} has a working agent"
        self.events.append(f"agent: {who} {reason}; {why}, so {rest}")
        return None

    # -- measuring ---------------------------------------------------------------------------
    def measure(self, space: PruningSpace, widths, devices: Sequence[str], **kwargs) -> \
            Measurements:
        """`Backend.measure`, remembering which representatives were asked for."""
        with self._lock:
            for device in devices:
                self._asked.add(device)
                if device not in self._requested:
                    self._requested.append(device)
        return super().measure(space, widths, devices, **kwargs)

    def _measure(self, space: PruningSpace, widths: np.ndarray, devices: Sequence[str],
                 repeats: int, warmup: int, progress: Tick | None) -> np.ndarray:
        m, d = len(widths), len(devices)
        out = np.full((m, d, repeats), np.nan)
        shape = (1, *space.input_shape)
        stop = threading.Event()
        exports = Exports(self._exported, space, widths, d, stop, fmt=self.format)
        done = np.zeros(d, dtype=np.int64)

        def column(j: int) -> None:
            requested = devices[j]
            with self._lock:
                device = self.measured_device(requested)
                if device is None and requested not in self.assigned:
                    device = self._replace(requested, requested, "has no agent_url")
            i = 0
            kept = 0  # this call's measurements on `device` so far
            try:
                while device is not None and i < m and not stop.is_set():
                    fmt = self.formats.get(device, self.format)
                    body = exports.get(i, fmt, j)
                    if body is None:  # stopped while waiting
                        return
                    try:
                        meas = self._measure_one(device, body, fmt, shape, warmup, repeats)
                    except AgentError as exc:
                        if (isinstance(exc, AgentRejected) and exc.status == 400
                                and ORT_MISSING not in str(exc)):
                            # The model or the request is wrong, not the device: every
                            # device would refuse it the same way.
                            raise HdapError(f"agent backend: {exc}") from None
                        with self._lock:
                            if (isinstance(exc, AgentRejected) and exc.status == 401
                                    and not self.runtimes):
                                # No agent has taken this token yet: it is the token that
                                # is wrong, not this device.
                                raise HdapError(f"agent backend: {exc}") from None
                            # Within one call a column is one device and one format:
                            # what this device measured in the call is dropped.
                            self.measured[device] -= kept
                            if (fmt == "onnx" and isinstance(exc, AgentRejected)
                                    and ORT_MISSING in str(exc)):
                                self.formats[device] = "torchscript"
                                self.events.append(f"agent: {device} has no onnxruntime; "
                                                   "measured with TorchScript instead")
                            else:
                                self.failed[device] = str(exc)
                                device = self._replace(requested, device, f"failed: {exc}")
                        out[:, j] = np.nan
                        i = kept = 0
                        done[j] = 0
                        continue
                    out[i, j] = meas.latencies_ms
                    with self._lock:
                        self.measured[device] += 1
                        self.runtimes[device] = f"{meas.runtime} on {meas.accelerator}"
                    kept += 1
                    i += 1
                    done[j] = i
            finally:
                exports.finish(j)

        reported = 0
        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=d, thread_name_prefix="hdap-agent-backend") as pool:
            pending = {pool.submit(column, j) for j in range(d)}
            try:
                while pending:
                    finished, pending = wait(pending, timeout=PROGRESS_EVERY_S,
                                             return_when=FIRST_COMPLETED)
                    for future in finished:
                        if future.exception() is not None:
                            errors.append(future.exception())
                            stop.set()
                    now = int(done.sum())
                    # Progress is reported from the caller's thread (Streamlit needs that).
                    if progress and now > reported:
                        reported = now
                        progress(reported, m * d)
            except BaseException:
                stop.set()  # Ctrl-C or a failing progress callback: no new requests
                raise
            finally:
                exports.close()
        if errors:
            raise errors[0]
        with self._lock:
            # Columns may stay empty while other representatives go on; only a study
            # with no device left at all cannot.
            hopeless = all(self.measured_device(r) is None for r in self._requested)
            why = "; ".join(f"{dev}: {reason}" for dev, reason in self.failed.items())
        if hopeless:
            raise HdapError(
                "agent backend: no device could be measured"
                + (f" ({why})" if why else " (no representative has an agent)")
                + "; check that the agents run (`hdap agent serve`), are reachable from here "
                "and use this token")
        return out

    def _measure_one(self, device: str, body: bytes, fmt: str, shape: tuple[int, ...],
                     warmup: int, repeats: int) -> AgentMeasurement:
        client = self._clients[device]
        deadline = time.monotonic() + self.busy_wait_s
        while True:
            try:
                meas = client.measure(body, fmt, shape, warmup=warmup, repeats=repeats)
                break
            except AgentBusy:
                # Someone else is measuring there; worth waiting for before giving up.
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(BUSY_POLL_S, left))
        times = np.asarray(meas.latencies_ms, dtype=np.float64)
        if times.shape != (repeats,) or not (np.isfinite(times).all() and (times > 0).all()):
            raise AgentError(f"agent {client.url} sent {times.size} timings for {repeats} "
                             "repeats, or timings that are not positive numbers", url=client.url)
        return meas

    def _export(self, space: PruningSpace, widths: np.ndarray, fmt: str) -> bytes:
        """The candidate as a model file (ONNX or TorchScript, or INT8 ONNX) in memory."""
        from hdap_engine.export.timing import export_for_timing, onnx_for_timing

        if self.precision == "int8":
            # The INT8 model the device would ship, quantised once per architecture.
            from hdap_engine.quantize.cache import int8_candidate

            return int8_candidate(space, widths)
        if fmt == "onnx":
            return onnx_for_timing(space, widths)  # from the space's ONNX template
        return export_for_timing(space, widths, fmt)

    def _exported(self, space: PruningSpace, widths: np.ndarray, fmt: str) -> bytes:
        """`_export`, through the backend's cache of recent model files.

        A sequential study times some candidates again in later calls (timing-drift
        anchors, finalists, the polish's incumbent): they are not exported again.
        """
        key = (space.model, tuple(space.input_shape), np.asarray(widths).tobytes(), fmt)
        body = self._cache.get(key)
        if body is None:
            body = self._export(space, widths, fmt)
            self._cache.put(key, body)
        return body

    # -- what happened --------------------------------------------------------------------------
    def notes(self, result: Measurements) -> list[str]:
        with self._lock:
            return list(self.events)

    def details(self) -> dict:
        """Which devices measured, which replaced which, which failed and why (plain data)."""
        with self._lock:
            measured_on = {r: self.measured_device(r) for r in self._requested}
            # Devices whose numbers the study holds: measured now, or served from the store.
            used = {measured_on[r] for r in self._asked if measured_on[r] is not None}
            used |= {d for d, n in self.measured.items() if n}
            clusters_lost = sorted({self._cluster_of[r] for r in self._requested
                                    if r in self._cluster_of}
                                   - {self._cluster_of[r] for r, d in measured_on.items()
                                      if d is not None and r in self._cluster_of})
            return {
                "format": self.format,
                "precision": self.precision,
                "measured_on": measured_on,
                "substituted": {r: d for r, d in measured_on.items()
                                if d is not None and d != r},
                "failed": dict(self.failed),
                "used": sorted(used),
                "clusters_without_device": clusters_lost,
                "measurements": {d: int(n) for d, n in sorted(self.measured.items()) if n},
                "runtime": {d: self.runtimes[d] for d in sorted(used) if d in self.runtimes},
                "formats": {d: self.formats.get(d, self.format) for d in sorted(used)},
                "agent_urls": {d: self.urls[d] for d in sorted(used) if d in self.urls},
            }
