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

import hmac
import ipaddress
import json
import logging
import math
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from hdap_engine.agent import protocol
from hdap_engine.agent.measure import (
    ACCELERATORS,
    ModelRejected,
    measure_model,
    one_line,
    resolve_accelerator,
)
from hdap_engine.errors import HdapError

LOG = logging.getLogger("hdap_engine.agent")

PROBE_KEY = re.compile(r"^probe_[A-Za-z0-9_]+_ms$")
TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")
READ_CHUNK = 1 << 20
# A refused upload is drained (read and dropped) for at most this long, so
# that the client finishes sending and reads the refusal instead of a reset.
DRAIN_S = 5.0
STOP_GRACE_S = 10.0
DEVICE_TREE_MODEL = "/proc/device-tree/model"


@dataclass(frozen=True)
class AgentConfig:
    """Options of one agent; `validate` checks them all.

    Parameters
    ----------
    token : str
        Shared secret; clients send ``Authorization: Bearer <token>``.
    host, port : str, int
        Bind address; loopback by default; port 0 picks a free port.
    device_id : str, optional
        Name reported in every reply; default the hostname.
    sku : str, optional
        Hardware kind reported; default `detect_sku()`.
    max_body_mb : float
        Largest accepted upload (MiB).
    threads : int, optional
        Torch / onnxruntime intra-op threads; default the runtimes' own.
    accelerator : {"auto", "cpu", "cuda"}
        Where models run; ``auto`` is CUDA when torch sees a GPU.
    probe_ttl_s : float
        How long a probe row is served from cache (0: probe every time).
    probe_repeats, probe_warmup : int, optional
        Passed to the probe suite; default the suite's own.
    allow_short_token : bool
        Accept a token under `protocol.MIN_TOKEN_CHARS` characters.
    request_timeout_s : float
        Socket timeout while talking to one client.
    """

    token: str
    host: str = protocol.DEFAULT_HOST
    port: int = protocol.DEFAULT_PORT
    device_id: str | None = None
    sku: str | None = None
    max_body_mb: float = protocol.DEFAULT_MAX_BODY_MB
    threads: int | None = None
    accelerator: str = "auto"
    probe_ttl_s: float = 300.0
    probe_repeats: int | None = None
    probe_warmup: int | None = None
    allow_short_token: bool = False
    request_timeout_s: float = 60.0

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def validate(self) -> None:
        """Raise `HdapError` naming the first bad option and the fix."""
        if not self.token:
            raise HdapError(
                f"no token: pass --token or set {protocol.TOKEN_ENV} (generate one with "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
            )
        if not TOKEN_CHARS.match(self.token):
            raise HdapError("token must be printable ASCII without spaces")
        if len(self.token) < protocol.MIN_TOKEN_CHARS and not self.allow_short_token:
            raise HdapError(
                f"token has {len(self.token)} characters; use at least {protocol.MIN_TOKEN_CHARS} "
                "(or --insecure-short-token for a throwaway test)"
            )
        if not 0 <= int(self.port) <= 65535:
            raise HdapError(f"port {self.port} is out of range 0-65535")
        if not (math.isfinite(self.max_body_mb) and 0 < self.max_body_mb <= 16384):
            raise HdapError(f"max body {self.max_body_mb} MB is out of range; use 0 < MB <= 16384")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise HdapError(f"threads={self.threads} is out of range; use 1 to 1024")
        if self.accelerator not in ACCELERATORS:
            raise HdapError(
                f"accelerator {self.accelerator!r} is not one of {', '.join(ACCELERATORS)}"
            )
        if not (math.isfinite(self.probe_ttl_s) and self.probe_ttl_s >= 0):
            raise HdapError(f"probe TTL {self.probe_ttl_s} s must be a number >= 0")
        for name in ("device_id", "sku"):
            value = getattr(self, name)
            if value is not None and not (0 < len(value.strip()) <= 128 and value.isprintable()):
                raise HdapError(f"{name} {value!r} must be 1 to 128 printable characters")


def detect_sku(model_path: str = DEVICE_TREE_MODEL) -> str:
    """Name this machine's hardware kind from the device tree.

    Returns
    -------
    str
        ``"jetson-nano"`` (any Jetson: ``"jetson-<model>"``), ``"rpi4"``
        (``"rpi<N>"``, ``"rpi-cm<N>"``), or ``"host"`` when unknown.
    """
    try:
        with open(model_path, "rb") as handle:
            text = handle.read(256).decode("ascii", "replace").replace("\x00", "").strip()
    except OSError:
        return "host"
    return sku_from_model_string(text)


def sku_from_model_string(text: str) -> str:
    """``"NVIDIA Jetson Nano Developer Kit"`` -> ``"jetson-nano"``; see `detect_sku`."""
    low = text.lower()
    if "jetson" in low:
        rest = low.split("jetson", 1)[1].replace("developer kit", "")
        slug = re.sub(r"[^a-z0-9]+", "-", rest).strip("-")
        return f"jetson-{slug}" if slug else "jetson"
    if "raspberry pi" in low:
        module = re.search(r"compute module (\d+)", low)
        if module:
            return f"rpi-cm{module.group(1)}"
        number = re.search(r"raspberry pi (\d+)", low)
        return f"rpi{number.group(1)}" if number else "rpi"
    return "host"


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _HttpError(Exception):
    """A refusal with its HTTP status; becomes ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


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

    # -- endpoints ---------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "device_id": self.device_id, "sku": self.sku}

    def probe_row(self) -> dict:
        """One telemetry row, from cache when younger than ``probe_ttl_s``."""
        row = self._cached_probe()
        if row is not None:
            return row
        if not self._busy.acquire(blocking=False):
            raise _HttpError(409, protocol.BUSY_MESSAGE)
        try:
            row = self._cached_probe()
            if row is None:
                probes = self._on_runner(self._run_probes)
                row = {"device_id": self.device_id, "sku": self.sku, **probes}
                self._probe_cache = (time.monotonic(), row)
            return row
        finally:
            self._busy.release()

    def measure_locked(self, body: bytes, fmt: str, shape, warmup: int, repeats: int) -> dict:
        """Time a model; the caller holds the measurement lock."""
        try:
            result = self._on_runner(
                measure_model, body, fmt, tuple(shape), warmup, repeats,
                threads=self.config.threads, accelerator=self.accelerator or "cpu",
                max_unpacked_bytes=2 * self.config.max_body_bytes,
            )
        except ModelRejected as exc:
            raise _HttpError(400, str(exc)) from None
        return {"device_id": self.device_id, "sku": self.sku, **result}

    def _on_runner(self, fn, *args, **kwargs):
        """Run `fn` on the runner thread and wait; exceptions travel back to the caller."""
        runner = self._runner
        if runner is None:
            raise _HttpError(503, "agent is stopping; retry on another device or later")
        try:
            future = runner.submit(fn, *args, **kwargs)
        except RuntimeError:  # shut down between the check and the submit
            raise _HttpError(503, "agent is stopping; retry on another device or later") from None
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
                raise _HttpError(
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
            raise _HttpError(500, f"probe suite failed: {one_line(exc)}") from None
        if not isinstance(result, dict) or not result:
            raise _HttpError(500, "probe suite returned no probes")
        probes = {}
        for key, value in result.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            if not (isinstance(key, str) and PROBE_KEY.match(key)) or not (
                math.isfinite(number) and number > 0
            ):
                raise _HttpError(500, f"probe suite returned a bad entry {key!r}: {value!r}")
            probes[key] = number
        return probes


class _AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    agent: AgentServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS query that can
        # hang on an offline device); the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _AgentHTTPServer6(_AgentHTTPServer):
    address_family = socket.AF_INET6


# path -> (method, handler method name, needs token)
_ROUTES = {
    "/health": ("GET", "_health", False),
    "/probe": ("GET", "_probe", True),
    "/measure": ("POST", "_measure", True),
}


class _Handler(BaseHTTPRequestHandler):
    """One request: route, authenticate, answer JSON, log one line."""

    server: _AgentHTTPServer
    server_version = "hdap-agent"
    sys_version = ""
    # HTTP/1.1 so that `Expect: 100-continue` clients (curl) are told to send
    # the body only after the request passed every check; every reply still
    # closes the connection.
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.agent.config.request_timeout_s
        self._status = 0
        self._unread = 0
        self._started = time.perf_counter()
        super().setup()

    # Every method goes through `_dispatch`, which answers 404/405 as JSON.
    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def handle_expect_100(self) -> bool:
        # Defer "100 Continue" until the request passed auth and size checks.
        return True

    def _dispatch(self) -> None:
        method = self.command
        self._started = time.perf_counter()
        self._unread = self._declared_length()
        path = urlsplit(self.path).path
        try:
            route = _ROUTES.get(path)
            if route is None:
                raise _HttpError(
                    404, f"no endpoint {path!r}; endpoints are /health, /probe, /measure"
                )
            allowed, name, needs_token = route
            if method != allowed:
                raise _HttpError(
                    405, f"{method} is not allowed on {path}; use {allowed}", {"Allow": allowed}
                )
            if needs_token:
                self._check_token()
            status, payload = getattr(self, name)()
            self._send_json(status, payload)
        except _HttpError as exc:
            self._send_json(exc.status, {"error": exc.message}, exc.headers)
        except Exception:  # noqa: BLE001 - a bug must not kill the agent
            LOG.exception("internal error on %s %s", method, path)
            self._send_json(500, {"error": "internal error in the agent; see its log"})
        finally:
            self._discard_unread_body()
            self._log()

    # -- endpoints ---------------------------------------------------------
    def _health(self):
        return 200, self.server.agent.health()

    def _probe(self):
        return 200, self.server.agent.probe_row()

    def _measure(self):
        agent = self.server.agent
        length = self._checked_length(agent.config.max_body_bytes)
        fmt, shape, warmup, repeats = self._measure_params()
        if not agent._busy.acquire(blocking=False):
            raise _HttpError(409, protocol.BUSY_MESSAGE)
        # The body is read under the lock: one upload in memory at a time,
        # which matters on a 4 GB board.
        try:
            body = self._read_body(length)
            return 200, agent.measure_locked(body, fmt, shape, warmup, repeats)
        finally:
            agent._busy.release()

    # -- request checks ----------------------------------------------------
    def _check_token(self) -> None:
        challenge = {"WWW-Authenticate": 'Bearer realm="hdap-agent"'}
        scheme, _, value = self.headers.get("Authorization", "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise _HttpError(401, "missing token: send 'Authorization: Bearer <token>'", challenge)
        expected = self.server.agent.config.token.encode("utf-8")
        if not hmac.compare_digest(value.encode("utf-8", "surrogateescape"), expected):
            raise _HttpError(401, "wrong token", challenge)

    def _declared_length(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length", "0")))
        except ValueError:
            return 0

    def _checked_length(self, limit: int) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise _HttpError(411, "chunked bodies are not accepted; send a Content-Length header")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _HttpError(411, "Content-Length header is required")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            raise _HttpError(400, f"Content-Length {raw!r} is not a non-negative integer") from None
        if length > limit:
            raise _HttpError(
                413,
                f"body of {length} bytes is over this agent's limit of {limit} bytes "
                f"({limit / 2**20:g} MB); send a smaller model or restart the agent "
                "with a larger --max-body-mb",
            )
        if length == 0:
            raise _HttpError(400, "empty body; send the model file as the request body")
        return length

    def _measure_params(self):
        query = urlsplit(self.path).query
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise _HttpError(400, f"query string {query[:100]!r} is malformed") from None
        unknown = sorted(set(params) - set(protocol.MEASURE_PARAMS))
        if unknown:
            raise _HttpError(
                400,
                f"unknown parameter {unknown[0]!r}; allowed: {', '.join(protocol.MEASURE_PARAMS)}",
            )
        repeated = sorted(name for name, values in params.items() if len(values) > 1)
        if repeated:
            raise _HttpError(400, f"parameter {repeated[0]!r} is given more than once")
        values = {name: vals[0] for name, vals in params.items()}
        for required in ("format", "shape"):
            if required not in values:
                raise _HttpError(
                    400, f"parameter {required!r} is required, e.g. format=onnx&shape=1,3,224,224"
                )
        try:
            fmt = protocol.check_format(values["format"])
            shape = protocol.parse_shape(values["shape"])
            warmup = protocol.check_count(
                "warmup", values.get("warmup", protocol.DEFAULT_WARMUP), protocol.WARMUP_RANGE
            )
            repeats = protocol.check_count(
                "repeats", values.get("repeats", protocol.DEFAULT_REPEATS), protocol.REPEATS_RANGE
            )
        except protocol.ProtocolError as exc:
            raise _HttpError(400, str(exc)) from None
        return fmt, shape, warmup, repeats

    def _read_body(self, length: int) -> bytes:
        if self.headers.get("Expect", "").lower() == "100-continue" and (
            self.request_version >= "HTTP/1.1"
        ):
            self.send_response_only(100)
            self.end_headers()
            self.wfile.flush()
        body = bytearray()
        try:
            while len(body) < length:
                chunk = self.rfile.read(min(READ_CHUNK, length - len(body)))
                if not chunk:
                    break
                body += chunk
                self._unread = length - len(body)
        except socket.timeout:  # noqa: UP041 - not TimeoutError on Python < 3.10
            raise _HttpError(
                408, f"timed out reading the body after {len(body)} of {length} bytes"
            ) from None
        if len(body) < length:
            raise _HttpError(400, f"body ended after {len(body)} of {length} bytes")
        return bytes(body)

    # -- replies -----------------------------------------------------------
    def _send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._status = status
        data = json.dumps(payload).encode("utf-8")
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # http.server omits the status line for HTTP/0.9 (also its guess
            # for a garbled request line); every reply here has one.
            self.request_version = "HTTP/1.0"
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:
            LOG.info("client went away before the reply: %s", exc)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (malformed request line, unknown method,
        # URI too long) as JSON like everything else.
        self._unread = 0
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})
        self._log()

    def _discard_unread_body(self) -> None:
        remaining = self._unread
        if remaining <= 0:
            return
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            deadline = time.monotonic() + DRAIN_S
            while remaining > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(READ_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass
        self._unread = remaining

    def log_request(self, code="-", size="-") -> None:
        pass  # `_log` writes the one line per request

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's name
        LOG.debug("%s " + format, self.address_string(), *args)

    def _log(self) -> None:
        # Method, path, status, time; never headers (the token lives there).
        elapsed_ms = (time.perf_counter() - self._started) * 1000
        LOG.info(
            "%s %s %s %.1f ms from %s",
            getattr(self, "command", None) or "-", (getattr(self, "path", None) or "-")[:200],
            self._status, elapsed_ms,
            self.client_address[0],
        )


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
