"""The device agent's settings and what it finds out about the device it runs on.

Standard library only, Python 3.8 syntax (see `hdap_engine.agent.server`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

from hdap_engine.agent import protocol
from hdap_engine.agent.measure import (
    ACCELERATORS,
)
from hdap_engine.errors import HdapError

TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")
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
