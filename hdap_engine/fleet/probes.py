"""The standard probe suite: a few kernels whose latencies fingerprint a device's bottlenecks.

Each probe is defined once, as layer rows (`make_table`), so the twin computes
exactly the workload that `run_probe_suite` times on a real machine with
PyTorch (the host, or an edge device through the agent). Together they
separate the bottlenecks the drift mechanisms move:

=================  ==========================================================
probe              what it is bound by
=================  ==========================================================
conv3x3            dense compute, all units busy (clock x units x share)
conv1x1            dense compute with more memory per FLOP
dwconv3x3          depthwise: poor compute efficiency, activation traffic
linear             batch-1 GEMV: streaming weights from DRAM
copy_small         a copy that lives in the near cache (cache bandwidth / clock)
copy_medium        a copy beyond the near cache (last-level cache or DRAM)
copy_large         a copy far beyond every cache (DRAM bandwidth)
tiny               three almost empty kernels: bn, act, add (fixed per-kernel overhead)
conv3x3_odd        output channels off the vector / tile width (padding waste)
conv3x3_small      a conv with too few tiles to fill the device (one unit's speed)
conv3x3_thin       a conv with few input channels: a short GEMM K loop runs below peak
conv3x3_7x7        a late-network conv: small spatial size, padded pixel tiles
maxpool            a ResNet stem max-pool (window compares; slow in eager CPU kernels)
batchnorm          an unfused batch norm pass (eager frameworks)
=================  ==========================================================

Telemetry columns are ``probe_<name>_ms``.

On a glibc host, `ProbeSession` first keeps the allocator from handing freed
memory back to the operating system (`steady_allocator`). Otherwise a lone
probe whose transient buffers are large (the depthwise probe: oneDNN reorders
its 3 MB input and output) gets fresh pages from the kernel on every call and
times ~1,500 page faults (3.5 of its 4.1 ms on a 2-core AMD EPYC VM), which
no network pays in steady state: ResNet-18, MobileNetV2/V3 and EfficientNet-B0
forwards take 0 page faults each once warm.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.options import ProbeOptions
from hdap_engine.pruning.layers import LayerTable, make_table

_BURST_S = 5e-4  # a probe shorter than this is repeated back to back within one timing

PROBE_ROWS: dict[str, list[dict]] = {
    "conv3x3": [dict(name="conv3x3", op="conv", cin=64, cout=64, h_in=56, w_in=56, kernel=3)],
    "conv1x1": [dict(name="conv1x1", op="conv", cin=256, cout=256, h_in=28, w_in=28, kernel=1)],
    "dwconv3x3": [dict(name="dwconv3x3", op="dwconv", cin=256, cout=256, h_in=56, w_in=56,
                       kernel=3)],
    "linear": [dict(name="linear", op="linear", cin=1024, cout=4096, h_in=1, w_in=1,
                    has_bias=True)],
    "copy_small": [dict(name="copy_small", op="copy", cin=1024, cout=1024, h_in=8, w_in=8)],
    "copy_medium": [dict(name="copy_medium", op="copy", cin=256, cout=256, h_in=64, w_in=64)],
    "copy_large": [dict(name="copy_large", op="copy", cin=512, cout=512, h_in=128, w_in=128)],
    "tiny": [dict(name="tiny.bn", op="bn", cin=16, cout=16, h_in=1, w_in=1),
             dict(name="tiny.act", op="act", cin=16, cout=16, h_in=1, w_in=1),
             dict(name="tiny.add", op="add", cin=16, cout=16, h_in=1, w_in=1)],
    "conv3x3_odd": [dict(name="conv3x3_odd", op="conv", cin=68, cout=68, h_in=56, w_in=56,
                         kernel=3)],
    "conv3x3_small": [dict(name="conv3x3_small", op="conv", cin=8, cout=8, h_in=4, w_in=4,
                           kernel=3)],
    "conv3x3_thin": [dict(name="conv3x3_thin", op="conv", cin=16, cout=16, h_in=56, w_in=56,
                          kernel=3)],
    "conv3x3_7x7": [dict(name="conv3x3_7x7", op="conv", cin=256, cout=256, h_in=7, w_in=7,
                         kernel=3)],
    "maxpool": [dict(name="maxpool", op="pool", cin=64, cout=64, h_in=112, w_in=112, kernel=3,
                     stride=2)],
    "batchnorm": [dict(name="batchnorm", op="bn", cin=64, cout=64, h_in=56, w_in=56)],
}

STANDARD_PROBES: tuple[str, ...] = tuple(PROBE_ROWS)
"""Names of the standard probes, in column order."""

HOST_PROBE_ROWS: dict[str, list[dict]] = {
    # A depthwise call has a fixed cost of its own (oneDNN reorders the input
    # to its blocked layout and back): ~55 us even at 8 channels of 7x7 on a
    # 2-core AMD EPYC, where a 1x1 conv of the same size takes 8 us.
    "dwconv3x3_small": [dict(name="dwconv3x3_small", op="dwconv", cin=8, cout=8, h_in=7,
                             w_in=7, kernel=3)],
}
"""Probes the host's own preset uses beyond the standard suite (not fleet telemetry)."""

HOST_PROBES: tuple[str, ...] = STANDARD_PROBES + tuple(HOST_PROBE_ROWS)
"""The standard probes and the host-only ones: what the realism check times."""

_ALL_ROWS = {**PROBE_ROWS, **HOST_PROBE_ROWS}
_HOST_MIN_BURST = 20


def probe_column(name: str) -> str:
    """Telemetry column of a probe: ``probe_<name>_ms``."""
    return f"probe_{name}_ms"


PROBE_COLUMNS: tuple[str, ...] = tuple(probe_column(n) for n in STANDARD_PROBES)


def probe_tables(*, host: bool = False) -> dict[str, LayerTable]:
    """One single-candidate `LayerTable` per standard probe (``host``: and per host probe)."""
    rows = _ALL_ROWS if host else PROBE_ROWS
    return {name: make_table(r) for name, r in rows.items()}


# --- running the probes for real ---------------------------------------------


def build_layer(r: dict) -> tuple[object, object]:
    """One layer of a probe as a torch callable of its input, and that input."""
    import torch
    import torch.nn.functional as F

    op, cin, cout = r["op"], int(r["cin"]), int(r["cout"])
    h, w = int(r["h_in"]), int(r["w_in"])
    k = r.get("kernel", 1)
    k = k if isinstance(k, int) else int(k[0])
    stride = int(r.get("stride", 1))
    bias = bool(r.get("has_bias", False))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cin, h, w, generator=g)
    if op in ("conv", "dwconv"):
        groups = cin if op == "dwconv" else 1
        m = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups,
                            bias=bias).eval()
        return m, x
    if op == "linear":
        return torch.nn.Linear(cin, cout, bias=bias).eval(), torch.randn(1, cin, generator=g)
    if op == "copy":
        dst = torch.empty_like(x)
        return dst.copy_, x
    if op == "add":
        y = torch.randn(1, cin, h, w, generator=g)
        return (lambda t: t + y), x
    if op == "act":
        return torch.nn.ReLU().eval(), x
    if op == "bn":
        return torch.nn.BatchNorm2d(cin).eval(), x
    if op == "pool":
        return (lambda t: F.max_pool2d(t, k, stride=stride, padding=k // 2)), x
    raise ValueError(f"no host implementation for op {op!r}")


def _build_op(rows: list[dict]) -> Callable[[], object]:
    """A zero-argument callable that runs the probe's layers once, in order, with torch.

    Each layer gets its own input of the shape its row gives, so a probe is
    exactly the sum of its rows, as the twin computes it.
    """
    layers = [build_layer(r) for r in rows]
    if len(layers) == 1:
        fn, x = layers[0]
        return lambda: fn(x)

    def run():
        for fn, x in layers:
            fn(x)

    return run


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def steady_allocator() -> bool:
    """Keep glibc's allocator from returning freed memory to the OS (probe processes only).

    Sets the mmap threshold to 32 MB (its maximum; this also stops glibc
    from adapting it) and the heap trim threshold to 256 MB, so that buffers a
    kernel allocates and frees on every call are reused instead of being
    faulted in again: the steady state a network runs in. A process keeps up
    to 256 MB of freed heap mapped as a result. Does nothing (returns False)
    where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def timer(clock: str = "wall") -> Callable[[], float]:
    """A seconds counter: ``"wall"`` (perf_counter) or ``"thread"`` (this thread's CPU time)."""
    if clock == "wall":
        return time.perf_counter
    if clock == "thread":
        return time.thread_time
    raise ValueError(f"clock must be 'wall' or 'thread', got {clock!r}")


class ProbeSession:
    """The probe ops built once, timed round by round.

    `run_probe_suite` is warm-up rounds then timed rounds of one session. A
    caller that times other work (the realism check times real networks) can
    interleave `round` calls with it, so both see the same state of a shared
    machine. Torch threads and inference mode are the caller's business.

    Parameters
    ----------
    probes:
        Probe names (default: all standard probes).
    clock:
        ``"wall"`` (elapsed time) or ``"thread"`` (CPU time of the calling
        thread: with one torch thread, the inference's own time, without the
        slices a shared machine gives to other processes).
    """

    def __init__(self, probes: tuple[str, ...] = STANDARD_PROBES, *, clock: str = "wall"):
        import torch

        unknown = [p for p in probes if p not in _ALL_ROWS]
        if unknown:
            raise ValueError(f"unknown probes {unknown}; expected names from {HOST_PROBES}")
        steady_allocator()  # time the kernels, not the page faults of their buffers
        self.timer = timer(clock)
        self.ops = {name: _build_op(_ALL_ROWS[name]) for name in probes}
        self.times: dict[str, list[float]] = {name: [] for name in probes}
        self.burst = dict.fromkeys(probes, 1)
        with torch.inference_mode():
            for name, fn in self.ops.items():  # size the bursts once
                fn()
                t0 = time.perf_counter()
                fn()
                single = max(time.perf_counter() - t0, 1e-7)
                self.burst[name] = int(min(5000, max(1, np.ceil(_BURST_S / single))))
                if name in HOST_PROBE_ROWS:
                    # a fixed-cost probe of ~50 us: 20 calls, so that the first
                    # (cold) call of a burst does not read as its fixed cost
                    self.burst[name] = max(self.burst[name], _HOST_MIN_BURST)

    def round(self, *, record: bool = True) -> None:
        """Time one burst of every probe (``record=False``: warm-up)."""
        import torch

        with torch.inference_mode():
            for name, fn in self.ops.items():
                n = self.burst[name]
                t0 = self.timer()
                for _ in range(n):
                    fn()
                dt = (self.timer() - t0) / n
                if record:
                    self.times[name].append(dt * 1e3)

    def medians(self) -> dict[str, float]:
        """``probe_<name>_ms`` -> median over the recorded rounds."""
        if not all(self.times.values()):
            raise ValueError("no probe round has been recorded yet")
        return {probe_column(n): float(statistics.median(v)) for n, v in self.times.items()}


def run_probe_suite(*, repeats: int = ProbeOptions().repeats,
                    warmup: int = ProbeOptions().warmup, threads: int | None = None,
                    probes: tuple[str, ...] = STANDARD_PROBES, clock: str = "wall"
                    ) -> dict[str, float]:
    """Time the standard probes on this machine with PyTorch (batch 1, inference mode).

    Probes are interleaved (one burst of each per round) so that a slow spell
    of a shared machine hits all of them alike; each value is the median over
    ``repeats`` rounds after ``warmup`` rounds. A burst runs a short probe
    back to back until about half a millisecond has passed and reports the time
    per call: inside a network, kernels follow each other hot, so that is the
    fixed cost the probe is meant to measure (a lone call after a 64 MB copy
    would also time cold caches and the timer).

    Parameters
    ----------
    repeats:
        Timed rounds (median reported).
    warmup:
        Untimed rounds first (allocator, caches, lazy initialisation).
    threads:
        Torch intra-op threads for the duration of the call (None: leave as is).
    probes:
        Which probes to run (default: all standard probes).
    clock:
        ``"wall"`` or ``"thread"`` (see `ProbeSession`).

    Returns
    -------
    dict[str, float]
        ``probe_<name>_ms`` -> median milliseconds, in suite order.
    """
    import torch

    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        session = ProbeSession(probes, clock=clock)
        for _ in range(warmup):
            session.round(record=False)
        for _ in range(repeats):
            session.round()
    finally:
        torch.set_num_threads(old_threads)
    return session.medians()


def host_context(threads: int | None = None) -> dict[str, object]:
    """Context columns describing this machine: threads, CPU model, caches, vector width, torch version."""
    import os
    import platform

    import torch

    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":")[0].strip().lower()
                if key in ("model name", "hardware", "cpu model"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ctx: dict[str, object] = {
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "cpu_count": os.cpu_count() or 1,
        "cpu_model": cpu_model,
        "torch_version": torch.__version__,
    }
    ctx.update(_cache_sizes_kb())
    lanes = _simd_lanes()
    if lanes:
        ctx["simd_lanes"] = lanes
    return ctx


def _simd_lanes() -> int | None:
    """FP32 lanes of the widest vector unit this CPU advertises (Linux), else None."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("flags", "features"):
            flags.update(line.split(":", 1)[1].split())
            break
    if "avx512f" in flags:
        return 16
    if "avx2" in flags or "avx" in flags:
        return 8
    if flags & {"asimd", "neon", "sse2"}:
        return 4
    return None


def _cache_sizes_kb() -> dict[str, float]:
    """L2 and last-level data cache sizes (KB) from Linux sysfs; empty elsewhere."""
    import glob

    sizes: dict[int, float] = {}
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            level = int(open(f"{d}/level").read().strip())
            kind = open(f"{d}/type").read().strip()
            size = open(f"{d}/size").read().strip().upper()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        mult = 1024.0 if size.endswith("M") else 1.0
        try:
            sizes[level] = float(size.rstrip("KM")) * mult
        except ValueError:
            continue
    out: dict[str, float] = {}
    if 2 in sizes:
        out["l2_kb"] = sizes[2]
    if sizes:
        top = max(sizes)
        if top > 2:
            out["llc_kb"] = sizes[top]
    return out


def host_probe_row(*, device_id: str | None = None, repeats: int = ProbeOptions().repeats,
                   warmup: int = ProbeOptions().warmup, threads: int | None = None) -> dict[str, object]:
    """One telemetry row for this machine (sku ``host``): the probe suite and the host's context.

    Parameters
    ----------
    device_id:
        The row's device id (None: this machine's hostname).
    repeats, warmup, threads:
        As in `run_probe_suite`.

    Returns
    -------
    dict
        ``device_id``, ``sku``, the ``probe_<name>_ms`` columns and `host_context`'s columns.
    """
    import socket

    probes = run_probe_suite(repeats=repeats, warmup=warmup, threads=threads)
    return {"device_id": device_id or socket.gethostname(), "sku": "host", **probes,
            **host_context(threads)}


def write_probe_row(row: dict[str, object], path: str | Path, *, append: bool = False) -> None:
    """Write a telemetry row as CSV, or add it to the rows already in ``path``.

    Parameters
    ----------
    row:
        One device's telemetry (e.g. `host_probe_row`).
    path:
        The CSV file.
    append:
        Keep the rows already in ``path`` (when it exists) and add this one;
        a device id that is already there is refused.

    Raises
    ------
    HdapError
        When the file cannot be read or written, or already has the device id.
    """
    import pandas as pd

    out = Path(path)
    df = pd.DataFrame([row])
    if append and out.exists():
        try:
            old = pd.read_csv(out)
        except Exception as exc:
            raise HdapError(f"cannot append to {out}: {exc}") from None
        if row["device_id"] in set(old.get("device_id", pd.Series(dtype=str)).astype(str)):
            raise HdapError(f"{out} already has device_id {row['device_id']!r}; "
                            "pass another --device-id")
        df = pd.concat([old, df], ignore_index=True)
    try:
        df.to_csv(out, index=False, float_format="%.6g")
    except OSError as exc:
        raise HdapError(f"cannot write {out}: {exc}") from None
