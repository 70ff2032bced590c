"""Shared pieces of the agent tests: tiny exported models, agents on loopback, raw HTTP."""

from __future__ import annotations

import functools
import http.client
import io
import json
import socket
import threading
import warnings
from urllib.parse import urlsplit

import torch

from hdap_engine.agent.config import AgentConfig
from hdap_engine.agent.server import AgentServer

TOKEN = "test-token-0123456789abcdef"
SHAPE = (1, 3, 16, 16)


def fake_probes(**kwargs) -> dict:
    """A stand-in for the probe suite: fixed, plausible numbers."""
    return {"probe_conv3x3_ms": 1.5, "probe_memcopy_ms": 0.25}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()


@functools.lru_cache(maxsize=1)
def torchscript_bytes() -> bytes:
    model = tiny_model()
    with warnings.catch_warnings():
        # torch >= 2.9 deprecates torch.jit; edge runtimes still load it.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, torch.randn(SHAPE))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def onnx_bytes() -> bytes:
    model = tiny_model()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # dynamo=False: the TorchScript-based exporter (onnxscript is not installed);
        # it warns that it is deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            model, (torch.randn(SHAPE),), buffer, dynamo=False,
            input_names=["x"], output_names=["y"],
        )
    return buffer.getvalue()


def start_agent(**overrides) -> AgentServer:
    """An agent on a free loopback port with the fake probe suite (override anything)."""
    probe_fn = overrides.pop("probe_fn", fake_probes)
    options = {"token": TOKEN, "host": "127.0.0.1", "port": 0, "device_id": "dev-a",
               "sku": "host", "accelerator": "cpu"}
    options.update(overrides)
    return AgentServer(AgentConfig(**options), probe_fn=probe_fn).start()


def request(url: str, method: str, path: str, body: bytes | None = None,
            token: str | None = TOKEN, headers: dict | None = None,
            timeout: float = 30.0) -> tuple[int, dict]:
    """One raw HTTP request; returns (status, decoded JSON)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        assert response.getheader("Content-Type") == "application/json", data[:200]
        return response.status, json.loads(data)
    finally:
        conn.close()


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    """A raw TCP connection to the agent at `url`."""
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def raw_exchange(url: str, head: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send raw bytes (request head, then body) and return everything the agent answers."""
    with connect(url, timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def split_reply(raw: bytes) -> tuple[int, dict]:
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload)


class BlockingProbe:
    """A probe suite that holds the agent's measurement lock until released."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, **kwargs) -> dict:
        self.entered.set()
        assert self.release.wait(30), "test never released the probe"
        return fake_probes()


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
