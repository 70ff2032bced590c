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
tiny               an almost empty kernel (fixed per-kernel overhead)
conv3x3_odd        output channels off the vector / tile width (padding waste)
conv3x3_small      a conv with too few tiles to fill the device (one unit's speed)
=================  ==========================================================

Telemetry columns are ``probe_<name>_ms``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from hdap_engine.pruning.layers import LayerTable, make_table

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
    "tiny": [dict(name="tiny", op="add", cin=16, cout=16, h_in=1, w_in=1)],
    "conv3x3_odd": [dict(name="conv3x3_odd", op="conv", cin=64, cout=68, h_in=56, w_in=56,
                         kernel=3)],
    "conv3x3_small": [dict(name="conv3x3_small", op="conv", cin=16, cout=16, h_in=7, w_in=7,
                           kernel=3)],
}

STANDARD_PROBES: tuple[str, ...] = tuple(PROBE_ROWS)
"""Names of the standard probes, in column order."""


def probe_column(name: str) -> str:
    """Telemetry column of a probe: ``probe_<name>_ms``."""
    return f"probe_{name}_ms"


PROBE_COLUMNS: tuple[str, ...] = tuple(probe_column(n) for n in STANDARD_PROBES)


def probe_tables() -> dict[str, LayerTable]:
    """One single-candidate `LayerTable` per standard probe, keyed by probe name."""
    return {name: make_table(rows) for name, rows in PROBE_ROWS.items()}


# --- running the probes for real ---------------------------------------------


def _build_op(rows: list[dict]) -> Callable[[], object]:
    """A zero-argument callable that runs the probe's layers once with torch."""
    import torch
    import torch.nn.functional as F

    if len(rows) != 1:
        raise ValueError("host probes are single layers")
    r = rows[0]
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
        return lambda: m(x)
    if op == "linear":
        m = torch.nn.Linear(cin, cout, bias=bias).eval()
        v = torch.randn(1, cin, generator=g)
        return lambda: m(v)
    if op == "copy":
        dst = torch.empty_like(x)
        return lambda: dst.copy_(x)
    if op == "add":
        y = torch.randn(1, cin, h, w, generator=g)
        return lambda: x + y
    if op == "act":
        return lambda: F.relu(x)
    if op == "bn":
        m = torch.nn.BatchNorm2d(cin).eval()
        return lambda: m(x)
    if op == "pool":
        return lambda: F.max_pool2d(x, k, stride=stride, padding=k // 2)
    raise ValueError(f"no host implementation for op {op!r}")


def run_probe_suite(*, repeats: int = 20, warmup: int = 3, threads: int | None = None,
                    probes: tuple[str, ...] = STANDARD_PROBES) -> dict[str, float]:
    """Time the standard probes on this machine with PyTorch (batch 1, inference mode).

    Probes are interleaved (one run of each per round) so that a slow spell of a
    shared machine hits all of them alike; each value is the median over
    ``repeats`` rounds after ``warmup`` rounds.

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

    Returns
    -------
    dict[str, float]
        ``probe_<name>_ms`` -> median milliseconds, in suite order.
    """
    import torch

    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    unknown = [p for p in probes if p not in PROBE_ROWS]
    if unknown:
        raise ValueError(f"unknown probes {unknown}; expected names from {STANDARD_PROBES}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        ops = {name: _build_op(PROBE_ROWS[name]) for name in probes}
        times: dict[str, list[float]] = {name: [] for name in probes}
        with torch.inference_mode():
            for i in range(warmup + repeats):
                for name, fn in ops.items():
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                    if i >= warmup:
                        times[name].append(dt * 1e3)
    finally:
        torch.set_num_threads(old_threads)
    return {probe_column(name): float(statistics.median(v)) for name, v in times.items()}


def host_context(threads: int | None = None) -> dict[str, object]:
    """Context columns describing this machine: threads, CPU model, caches, torch version."""
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
    return ctx


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
