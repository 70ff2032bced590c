"""Talking to device agents from the engine host: `AgentClient` and its typed errors.

A study measures on a handful of real devices for minutes; a device that
reboots, drops off the VPN or is busy must not become a traceback. So every
failure is an `AgentError` (an `HdapError`) that names the agent's URL, typed
by what the caller can do about it:

- `AgentUnavailable`: could not reach it, it went away mid-request, or it kept
  failing (5xx) through every retry; replace the device or try later.
- `AgentBusy` (a kind of `AgentUnavailable`): it stayed busy (409) through
  every retry.
- `AgentRejected`: it refused the request (4xx: token, size, not a model,
  wrong shape); retrying cannot help, so it is never retried.

Connection errors, 5xx and 409 are retried with exponential backoff
(``backoff * 2**attempt`` seconds). Standard library only.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from hdap_engine.agent import protocol
from hdap_engine.errors import HdapError


class AgentError(HdapError):
    """Something went wrong with one agent; `url` names it, `status` is the HTTP status if any."""

    def __init__(self, message: str, *, url: str, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class AgentUnavailable(AgentError):
    """The agent could not be reached or kept failing through every retry."""


class AgentBusy(AgentUnavailable):
    """The agent stayed busy (409) through every retry."""


class AgentRejected(AgentError):
    """The agent refused the request (4xx); retrying would not help."""


@dataclass(frozen=True)
class AgentMeasurement:
    """Timings of one model on one device, as the agent reported them."""

    agent_url: str
    device_id: str
    sku: str
    format: str
    shape: tuple[int, ...]
    runtime: str
    accelerator: str
    warmup: int
    repeats: int
    latencies_ms: tuple[float, ...]
    median_ms: float


_RETRY_STATUSES = frozenset({409, 500, 502, 503, 504})
EXPECT_WAIT_S = 1.0


class AgentClient:
    """Client of one device agent.

    Parameters
    ----------
    url : str
        Base URL, e.g. ``http://10.0.0.17:8765`` (a path prefix is kept, for
        agents behind a reverse proxy).
    token : str, optional
        The agent's token; needed for everything but `health`.
    timeout : float
        Seconds to wait for a connection or a reply (health, probe).
    retries : int
        Extra attempts after a connection error, a 5xx or a 409.
    backoff : float
        First wait between attempts in seconds; doubles each time.
    measure_timeout : float, optional
        Seconds to wait for a measurement's reply; default ``max(timeout, 600)``.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        measure_timeout: float | None = None,
    ):
        parts = urlsplit(str(url).strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HdapError(
                f"agent URL {url!r} is not an http(s) URL with a host; use e.g. http://10.0.0.17:8765"
            )
        try:
            port = parts.port
        except ValueError:
            raise HdapError(f"agent URL {url!r} has a bad port") from None
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise HdapError("agent client needs timeout > 0, retries >= 0 and backoff >= 0")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.token = token
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.measure_timeout = float(measure_timeout or max(self.timeout, 600.0))
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._prefix = parts.path.rstrip("/")
        self.expect_wait_s = EXPECT_WAIT_S

    def __repr__(self) -> str:
        return f"AgentClient({self.url!r})"  # never the token

    # -- endpoints ---------------------------------------------------------
    def health(self) -> dict:
        """``GET /health``: ``{"status": "ok", "device_id", "sku"}``; no token needed."""
        reply = self._request("GET", "/health", auth=False)
        if reply.get("status") != "ok":
            raise AgentError(f"agent {self.url} is not healthy: {reply}", url=self.url)
        return reply

    def probe(self) -> dict:
        """``GET /probe``: one telemetry row (``device_id``, ``sku``, ``probe_<name>_ms``...)."""
        reply = self._request("GET", "/probe")
        probes = [key for key in reply if key.startswith("probe_") and key.endswith("_ms")]
        if not isinstance(reply.get("device_id"), str) or not probes:
            raise AgentError(
                f"agent {self.url} sent a probe reply without device_id or probe_*_ms values",
                url=self.url,
            )
        return reply

    def measure(
        self,
        model: bytes | str | os.PathLike,
        fmt: str,
        shape,
        warmup: int = protocol.DEFAULT_WARMUP,
        repeats: int = protocol.DEFAULT_REPEATS,
    ) -> AgentMeasurement:
        """``POST /measure``: time a model on the device.

        Parameters
        ----------
        model : bytes or path
            An ONNX file or a TorchScript archive (its bytes, or a path to it).
        fmt : {"onnx", "torchscript"}
        shape : str or sequence of int
            Input shape, e.g. ``(1, 3, 224, 224)``.
        warmup, repeats : int
            Untimed and timed forward passes (0-100, 1-1000).

        Returns
        -------
        AgentMeasurement
        """
        try:
            fmt = protocol.check_format(fmt)
            dims = protocol.parse_shape(shape)
            warmup = protocol.check_count("warmup", warmup, protocol.WARMUP_RANGE)
            repeats = protocol.check_count("repeats", repeats, protocol.REPEATS_RANGE)
        except protocol.ProtocolError as exc:
            raise HdapError(f"measure on agent {self.url}: {exc}") from None
        body = _model_bytes(model)
        query = urlencode(
            {"format": fmt, "shape": protocol.format_shape(dims), "warmup": warmup, "repeats": repeats}
        )
        reply = self._request(
            "POST", f"/measure?{query}", body=body, timeout=self.measure_timeout
        )
        try:
            return AgentMeasurement(
                agent_url=self.url,
                device_id=str(reply["device_id"]),
                sku=str(reply.get("sku", "")),
                format=str(reply.get("format", fmt)),
                shape=tuple(int(d) for d in reply.get("shape", dims)),
                runtime=str(reply.get("runtime", "")),
                accelerator=str(reply.get("accelerator", "")),
                warmup=int(reply.get("warmup", warmup)),
                repeats=int(reply.get("repeats", repeats)),
                latencies_ms=tuple(float(v) for v in reply["latencies_ms"]),
                median_ms=float(reply["median_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AgentError(
                f"agent {self.url} sent an unexpected measurement reply ({exc!r})", url=self.url
            ) from None

    # -- transport ---------------------------------------------------------
    def _request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        auth: bool = True,
        timeout: float | None = None,
    ) -> dict:
        headers = {"Accept": "application/json", "Connection": "close"}
        if auth:
            if not self.token:
                raise HdapError(
                    f"no token for agent {self.url}: pass --token or set {protocol.TOKEN_ENV}"
                )
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(len(body))
        path = target.split("?", 1)[0]
        attempts = self.retries + 1
        last = ""
        last_status: int | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, data = self._once(method, self._prefix + target, body, headers,
                                          timeout or self.timeout)
            except (OSError, http.client.HTTPException) as exc:
                last, last_status = _describe_failure(exc, timeout or self.timeout), None
                continue
            payload = _json_or_none(data)
            if 200 <= status < 300 and isinstance(payload, dict):
                return payload
            message = _error_text(payload, data)
            if status in _RETRY_STATUSES:
                last, last_status = f"HTTP {status}: {message}", status
                continue
            if status == 401:
                raise AgentRejected(
                    f"agent {self.url} refused the token on {path} (401: {message}); pass the "
                    f"agent's token with --token or {protocol.TOKEN_ENV}",
                    url=self.url, status=status,
                )
            if 400 <= status < 600:
                raise AgentRejected(
                    f"agent {self.url} refused {method} {path} ({status}): {message}",
                    url=self.url, status=status,
                )
            raise AgentError(
                f"agent {self.url} answered {method} {path} with HTTP {status} and no JSON; "
                "is this an HDAP agent?",
                url=self.url, status=status,
            )
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        if last_status == 409:
            raise AgentBusy(
                f"agent {self.url} stayed busy through {tries} ({last}); another measurement "
                "or probe is running there",
                url=self.url, status=409,
            )
        raise AgentUnavailable(
            f"agent {self.url} is unavailable ({method} {path}, {tries}): {last}",
            url=self.url, status=last_status,
        )

    def _once(self, method, target, body, headers, timeout) -> tuple[int, bytes]:
        conn_cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=timeout)
        try:
            if body is not None and not self._https:
                self._send_with_expect(conn, method, target, body, headers)
            else:
                try:
                    conn.request(method, target, body=body, headers=headers)
                except (BrokenPipeError, ConnectionResetError) as send_error:
                    # The agent may have refused early and closed before reading
                    # the whole body: its answer is still worth reading.
                    try:
                        response = conn.getresponse()
                        return response.status, response.read()
                    except (OSError, http.client.HTTPException):
                        raise send_error from None
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _send_with_expect(self, conn, method, target, body, headers) -> None:
        """Send the head with ``Expect: 100-continue``; send the body only when asked.

        The agent answers a refusal (401, 409 busy, 413) before "100 Continue",
        so a model is not uploaded to an agent that will not take it, and a busy
        agent costs a round trip per retry, not an upload. An agent or proxy
        that ignores Expect gets the body after `EXPECT_WAIT_S`, as curl does.
        """
        conn.putrequest(method, target, skip_accept_encoding=True)
        for key, value in {**headers, "Expect": "100-continue"}.items():
            conn.putheader(key, value)
        conn.endheaders()
        readable, _, _ = select.select([conn.sock], [], [], self.expect_wait_s)
        if readable:
            head = b""
            for _ in range(200):  # a status line can arrive in pieces; wait for 12 bytes
                head = conn.sock.recv(16, socket.MSG_PEEK)
                if len(head) >= 12 or not head:
                    break
                time.sleep(0.005)
            if not head.startswith((b"HTTP/1.1 100", b"HTTP/1.0 100")):
                return  # a final answer came first: do not upload; getresponse reads it
        # http.client's getresponse skips the interim "100 Continue".
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-upload; the answer (if any) is read next


def _model_bytes(model) -> bytes:
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    else:
        path = Path(model)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise HdapError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if not data:
        raise HdapError("model is empty; pass an ONNX file or a TorchScript archive")
    return data


def _json_or_none(data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _error_text(payload, data: bytes) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return payload["error"]
    text = data.decode("utf-8", "replace").strip()
    return " ".join(text.split())[:200] or "empty reply"


def _describe_failure(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no reply within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the agent running?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc})"
    if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
        return f"connection dropped ({exc.__class__.__name__})"
    return f"{exc.__class__.__name__}: {exc}"
