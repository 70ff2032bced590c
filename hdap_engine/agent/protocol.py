"""The agent's wire protocol: paths, query parameters, limits, shared by server and client.

Both ends check a request against the same rules, so a bad shape is caught
on the engine host before a model is uploaded, and the agent refuses it
again (it trusts nobody). Kept to the standard library and Python 3.8
syntax: this module runs on edge devices.
"""

from __future__ import annotations

import math

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_ENV = "HDAP_AGENT_TOKEN"
MIN_TOKEN_CHARS = 16
DEFAULT_MAX_BODY_MB = 256.0

FORMATS = ("onnx", "torchscript")
MAX_RANK = 6
MAX_ELEMENTS = 64 * 1024 * 1024
WARMUP_RANGE = (0, 100)
REPEATS_RANGE = (1, 1000)
DEFAULT_WARMUP = 3
DEFAULT_REPEATS = 10

MEASURE_PARAMS = ("format", "shape", "warmup", "repeats")

BUSY_MESSAGE = "busy: another measurement is running; retry later"


class ProtocolError(ValueError):
    """A request that breaks the protocol's rules (HTTP 400 on the agent)."""


def parse_shape(value: object) -> tuple[int, ...]:
    """Parse and check an input shape.

    Parameters
    ----------
    value : str or sequence of int
        ``"1,3,224,224"`` or ``(1, 3, 224, 224)``.

    Returns
    -------
    tuple of int
        1 to `MAX_RANK` positive sizes whose product is at most `MAX_ELEMENTS`.
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise ProtocolError(
                f"shape {value!r} is not a comma-separated list of integers; "
                "use e.g. shape=1,3,224,224"
            ) from None
    else:
        try:
            dims = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            raise ProtocolError(f"shape {value!r} is not a sequence of integers") from None
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            raise ProtocolError(f"shape {value!r} must contain integers only")
    if not 1 <= len(dims) <= MAX_RANK:
        raise ProtocolError(f"shape {_fmt(dims)} has {len(dims)} dimensions; allowed 1 to {MAX_RANK}")
    if any(d < 1 for d in dims):
        raise ProtocolError(f"shape {_fmt(dims)} has a size below 1; every size must be positive")
    if math.prod(dims) > MAX_ELEMENTS:
        raise ProtocolError(
            f"shape {_fmt(dims)} has {math.prod(dims)} elements; the limit is {MAX_ELEMENTS}"
        )
    return dims


def check_format(value: object) -> str:
    """Return `value` if it is one of `FORMATS`, else raise `ProtocolError`."""
    if value not in FORMATS:
        raise ProtocolError(f"format {value!r} is not supported; use one of {', '.join(FORMATS)}")
    return str(value)


def check_count(name: str, value: object, bounds: tuple[int, int]) -> int:
    """Parse ``warmup`` or ``repeats`` and check it lies in `bounds` (inclusive)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value) if isinstance(value, (int, str)) else None
        if number is None or (isinstance(value, str) and value.strip() != str(number)):
            raise ValueError
    except ValueError:
        raise ProtocolError(f"{name} {value!r} is not an integer") from None
    low, high = bounds
    if not low <= number <= high:
        raise ProtocolError(f"{name}={number} is out of range; allowed {low} to {high}")
    return number


def format_shape(dims: tuple[int, ...]) -> str:
    """``(1, 3, 224, 224)`` -> ``"1,3,224,224"`` (the query-string form)."""
    return ",".join(str(d) for d in dims)


def _fmt(dims: tuple[int, ...]) -> str:
    return format_shape(dims)
