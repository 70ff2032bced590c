"""The device agent: a small HTTP server that times uploaded models on an edge device.

Runs on a Jetson or a Raspberry Pi next to nothing but Python, torch and
(optionally) onnxruntime, so this module imports only the standard library at
import time (torch is imported when the agent starts), and keeps to Python 3.8
syntax. Protocol (JSON replies, errors as ``{"error": "..."}``):

- ``GET /health`` -> ``{"status": "ok", "device_id", "sku"}``; no token.
- ``GET /probe`` -> one telemetry row: ``device_id``, ``sku``,
  ``probe_<name>_ms``... from the standard probe suite, cached for a while.
- ``POST /measure?format=onnx|torchscript&shape=1,3,224,224&warmup=3&repeats=10``
  with the model file as the body -> ``device_id``, ``sku``, ``latencies_ms``,
  ``median_ms``, ``format``, ``shape``, ``runtime``, ``accelerator``, ...

Security: every endpoint but ``/health`` needs ``Authorization: Bearer TOKEN``
(constant-time compare); the body size is checked from ``Content-Length``
before a byte is read; nothing is ever unpickled (see `measure`); one
measurement or probe runs at a time, a second one gets 409. Refused requests
are answered without reading their body, which is then discarded for a
bounded time so that the sender still sees the answer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from hdap_engine.agent import protocol
from hdap_engine.agent.config import AgentConfig, detect_sku, is_loopback
from hdap_engine.agent.handler import HttpError, _AgentHTTPServer, _AgentHTTPServer6, _Handler
from hdap_engine.agent.measure import (
    ModelRejected,
    measure_model,
    one_line,
    resolve_accelerator,
)
from hdap_engine.errors import HdapError

LOG = logging.getLogger("hdap_engine.agent")

PROBE_KEY = re.compile(r"^probe_[A-Za-z0-9_]+_ms$")
STOP_GRACE_S = 10.0


class AgentServer:
    """The agent: endpoints, the measurement lock and the probe cache, on a background thread.

    Parameters
    ----------
    config : AgentConfig
    probe_fn : callable, optional
        ``probe_fn(**kwargs) -> {"probe_<name>_ms": float}``; default
        `hdap_engine.fleet.probes.run_probe_suite`, imported on first use.

    Examples
    --------
    >>> with AgentServer(AgentConfig(token="x" * 32, port=0)) as agent:  # doctest: +SKIP
    ...     print(agent.url)
    """

    def __init__(self, config: AgentConfig, probe_fn=None):
        config.validate()
        self.config = config
        self.device_id = (config.device_id or socket.gethostname() or "device").strip()
        self.sku = (config.sku or detect_sku()).strip()
        self.accelerator: str | None = None
        self._probe_fn = probe_fn
        self._busy = threading.Lock()
        self._runner: ThreadPoolExecutor | None = None
        self._probe_cache: tuple[float, dict] | None = None
        self._httpd: _AgentHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> AgentServer:
        """Bind, prepare the runtime, and serve on a daemon thread; returns self."""
        if self._httpd is not None:
            raise HdapError("agent is already running")
        try:
            import torch
        except ImportError:
            raise HdapError(
                "torch is not installed: the agent needs torch (see docs/agent.md for "
                "Jetson and Raspberry Pi wheels)"
            ) from None
        try:
            self.accelerator = resolve_accelerator(self.config.accelerator)
        except ValueError as exc:
            raise HdapError(str(exc)) from None
        # All model and probe runs happen on this one long-lived thread:
        # torch's OpenMP pool belongs to the thread that calls it, so one
        # thread means one warm pool and the same thread settings for every
        # measurement (a thread per request would build a new pool each time).
        threads = self.config.threads
        self._runner = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hdap-agent-runner",
            initializer=(lambda: torch.set_num_threads(threads)) if threads else None,
        )
        server_cls = _AgentHTTPServer6 if ":" in self.config.host else _AgentHTTPServer
        try:
            httpd = server_cls((self.config.host, self.config.port), _Handler)
        except OSError as exc:
            self._runner.shutdown(wait=False)
            self._runner = None
            raise HdapError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}; "
                "pick another --port or --host"
            ) from None
        httpd.agent = self
        self._httpd = httpd
        self._bound_port = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"hdap-agent-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop accepting, let a running measurement finish (up to `grace_s`), close."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        if self._busy.acquire(timeout=grace_s):
            self._busy.release()
        httpd.server_close()
        if self._runner is not None:
            self._runner.shutdown(wait=False)
            self._runner = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AgentServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one when the config asked for port 0; kept after `stop`)."""
        if self._bound_port is None:
            raise HdapError("agent is not running; call start() first")
        return self._bound_port

    @property
    def url(self) -> str:
        """Base URL to reach this agent (loopback when bound to every interface)."""
        host = self.config.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # -- the measurement lock --------------------------------------------
    @contextlib.contextmanager
    def busy(self):
        """Hold the measurement lock for one measurement or probe run, or answer 409.

        One run at a time, never queued: a second request while one runs is
        refused with `protocol.BUSY_MESSAGE` (the backend retries elsewhere or later).
        """
        if not self._busy.acquire(blocking=False):
            raise HttpError(409, protocol.BUSY_MESSAGE)
        try:
            yield
        finally:
            self._busy.release()

    # -- endpoints ---------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "device_id": self.device_id, "sku": self.sku}

    def probe_row(self) -> dict:
        """One telemetry row, from cache when younger than ``probe_ttl_s``."""
        row = self._cached_probe()
        if row is not None:
            return row
        with self.busy():
            row = self._cached_probe()
            if row is None:
                probes = self._on_runner(self._run_probes)
                row = {"device_id": self.device_id, "sku": self.sku, **probes}
                self._probe_cache = (time.monotonic(), row)
            return row

    def measure_locked(self, body: bytes, fmt: str, shape, warmup: int, repeats: int) -> dict:
        """Time a model; the caller holds the measurement lock (`busy`)."""
        try:
            result = self._on_runner(
                measure_model, body, fmt, tuple(shape), warmup, repeats,
                threads=self.config.threads, accelerator=self.accelerator or "cpu",
                max_unpacked_bytes=2 * self.config.max_body_bytes,
            )
        except ModelRejected as exc:
            raise HttpError(400, str(exc)) from None
        return {"device_id": self.device_id, "sku": self.sku, **result}

    def _on_runner(self, fn, *args, **kwargs):
        """Run `fn` on the runner thread and wait; exceptions travel back to the caller."""
        runner = self._runner
        if runner is None:
            raise HttpError(503, "agent is stopping; retry on another device or later")
        try:
            future = runner.submit(fn, *args, **kwargs)
        except RuntimeError:  # shut down between the check and the submit
            raise HttpError(503, "agent is stopping; retry on another device or later") from None
        return future.result()

    def _cached_probe(self) -> dict | None:
        cached = self._probe_cache
        if cached is None or self.config.probe_ttl_s <= 0:
            return None
        taken, row = cached
        return row if time.monotonic() - taken < self.config.probe_ttl_s else None

    def _run_probes(self) -> dict:
        probe_fn = self._probe_fn
        if probe_fn is None:
            try:
                from hdap_engine.fleet.probes import run_probe_suite
            except ImportError as exc:
                raise HttpError(
                    501,
                    f"probe suite not available on this agent ({one_line(exc)}); "
                    "install a newer hdap_engine on the device",
                ) from None
            probe_fn = run_probe_suite
        kwargs = {}
        if self.config.probe_repeats is not None:
            kwargs["repeats"] = self.config.probe_repeats
        if self.config.probe_warmup is not None:
            kwargs["warmup"] = self.config.probe_warmup
        try:
            result = probe_fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, logged in full here
            LOG.exception("probe suite failed")
            raise HttpError(500, f"probe suite failed: {one_line(exc)}") from None
        if not isinstance(result, dict) or not result:
            raise HttpError(500, "probe suite returned no probes")
        probes = {}
        for key, value in result.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if not (isinstance(key, str) and PROBE_KEY.match(key)) or not (
                math.isfinite(number) and number > 0
            ):
                raise HttpError(500, f"probe suite returned a bad entry {key!r}: {value!r}")
            probes[key] = number
        return probes


def serve(config: AgentConfig, probe_fn=None) -> int:
    """Run an agent in the foreground until SIGTERM or Ctrl-C.

    Parameters
    ----------
    config : AgentConfig
    probe_fn : callable, optional
        See `AgentServer`.

    Returns
    -------
    int
        0 after a clean stop.
    """
    agent = AgentServer(config, probe_fn=probe_fn)
    if not is_loopback(config.host):
        print(
            f"warning: agent listens on {config.host or 'every interface'}: any machine that "
            "reaches this port can try the token; keep it on a trusted LAN or VPN",
            file=sys.stderr, flush=True,
        )
    agent.start()
    print(
        f"hdap agent {agent.device_id} (sku {agent.sku}, {agent.accelerator}) listening on "
        f"{config.host}:{agent.port}",
        flush=True,
    )
    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        agent.stop()
        print("hdap agent stopped", flush=True)
    return 0
