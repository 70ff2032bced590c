"""The agent's HTTP side: routing, authentication, body limits, JSON replies, one log line.

Standard library only, Python 3.8 syntax (see `hdap_engine.agent.server` for the protocol).
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import socketserver
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from hdap_engine.agent import protocol

if TYPE_CHECKING:  # the server module imports this one
    from hdap_engine.agent.server import AgentServer

LOG = logging.getLogger("hdap_engine.agent")

READ_CHUNK = 1 << 20
# A refused upload is drained (read and dropped) for at most this long, so
# that the client finishes sending and reads the refusal instead of a reset.
DRAIN_S = 5.0


class HttpError(Exception):
    """A refusal with its HTTP status; becomes ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


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
                raise HttpError(
                    404, f"no endpoint {path!r}; endpoints are /health, /probe, /measure"
                )
            allowed, name, needs_token = route
            if method != allowed:
                raise HttpError(
                    405, f"{method} is not allowed on {path}; use {allowed}", {"Allow": allowed}
                )
            if needs_token:
                self._check_token()
            status, payload = getattr(self, name)()
            self._send_json(status, payload)
        except HttpError as exc:
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
        # The body is read under the lock: one upload in memory at a time,
        # which matters on a 4 GB board.
        with agent.busy():
            body = self._read_body(length)
            return 200, agent.measure_locked(body, fmt, shape, warmup, repeats)

    # -- request checks ----------------------------------------------------
    def _check_token(self) -> None:
        challenge = {"WWW-Authenticate": 'Bearer realm="hdap-agent"'}
        scheme, _, value = self.headers.get("Authorization", "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise HttpError(401, "missing token: send 'Authorization: Bearer <token>'", challenge)
        expected = self.server.agent.config.token.encode("utf-8")
        if not hmac.compare_digest(value.encode("utf-8", "surrogateescape"), expected):
            raise HttpError(401, "wrong token", challenge)

    def _declared_length(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length", "0")))
        except ValueError:
            return 0

    def _checked_length(self, limit: int) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "chunked bodies are not accepted; send a Content-Length header")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise HttpError(411, "Content-Length header is required")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            raise HttpError(400, f"Content-Length {raw!r} is not a non-negative integer") from None
        if length > limit:
            raise HttpError(
                413,
                f"body of {length} bytes is over this agent's limit of {limit} bytes "
                f"({limit / 2**20:g} MB); send a smaller model or restart the agent "
                "with a larger --max-body-mb",
            )
        if length == 0:
            raise HttpError(400, "empty body; send the model file as the request body")
        return length

    def _measure_params(self):
        query = urlsplit(self.path).query
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise HttpError(400, f"query string {query[:100]!r} is malformed") from None
        unknown = sorted(set(params) - set(protocol.MEASURE_PARAMS))
        if unknown:
            raise HttpError(
                400,
                f"unknown parameter {unknown[0]!r}; allowed: {', '.join(protocol.MEASURE_PARAMS)}",
            )
        repeated = sorted(name for name, values in params.items() if len(values) > 1)
        if repeated:
            raise HttpError(400, f"parameter {repeated[0]!r} is given more than once")
        values = {name: vals[0] for name, vals in params.items()}
        for required in ("format", "shape"):
            if required not in values:
                raise HttpError(
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
            raise HttpError(400, str(exc)) from None
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
            raise HttpError(
                408, f"timed out reading the body after {len(body)} of {length} bytes"
            ) from None
        if len(body) < length:
            raise HttpError(400, f"body ended after {len(body)} of {length} bytes")
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
