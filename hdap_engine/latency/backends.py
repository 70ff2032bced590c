"""Latency backends: where every measured number comes from, behind one interface.

| backend | source                | what it does |
|---------|-----------------------|--------------|
| twin    | ``twin (simulated)``  | each device's digital twin computes the candidate's latency, with run-to-run noise |
| host    | ``host (real)``       | builds the pruned model and times it with PyTorch on this machine |
| agent   | ``agent (real)``      | sends the exported model to an HTTP agent on the device (see `hdap_engine.agent`) |

`Backend.measure` is the one entry point: it serves what the store already
holds and measures only the rest, then writes it back. Every result carries
the median, the spread (interquartile range) and the raw times of each
(candidate, device) pair, and names its source.
"""

from __future__ import annotations

import platform
import socket
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.latency.store import Store, widths_key
from hdap_engine.pruning.space import PruningSpace

Tick = Callable[[int, int], None]  # (done, total)


@dataclass
class Measurements:
    """Latencies of N candidates on D devices by one backend.

    ``median_ms`` and ``spread_ms`` are (N, D); ``times_ms[i][j]`` are the raw
    times of candidate i on device j. ``from_store`` marks pairs served from
    the store rather than measured now.
    """

    backend: str
    source: str
    model: str
    devices: tuple[str, ...]
    widths: np.ndarray
    median_ms: np.ndarray
    spread_ms: np.ndarray
    times_ms: list[list[list[float]]]
    from_store: np.ndarray
    notes: list[str] = field(default_factory=list)
    warmup: int = 0

    @property
    def device_s(self) -> float:
        """Seconds of timing on devices these measurements cost: every timed run and warm-up
        (pairs from the store count what they cost when they were measured)."""
        total = 0.0
        for i, row in enumerate(self.times_ms):
            for j, t in enumerate(row):
                if len(t) and np.isfinite(self.median_ms[i, j]):
                    total += float(np.sum(t)) + self.warmup * float(self.median_ms[i, j])
        return total / 1e3

    @property
    def n_measured(self) -> int:
        """Pairs measured now (not served from the store)."""
        return int((~self.from_store).sum())

    def device_index(self, device: str) -> int:
        return self.devices.index(device)


class Backend:
    """Base class: store lookups and bookkeeping; subclasses time candidates."""

    name = "backend"
    store_chunk: int | None = None  # candidates timed and stored at a time (None: all at once)
    source = "unknown"
    real = False
    # True where a representative that fails may be replaced by another device of its
    # cluster: reports then name the devices that were actually measured.
    replaces_devices = False
    # True where a candidate costs about as much on many devices as on one: the agent
    # backend exports it once and every device times it at the same time, so a
    # sequential study shares its starting samples across devices (`measure_samples`).
    exports_candidates = False

    def device_key(self, device: str) -> str:
        """The store's key for a device (unique across fleets and machines)."""
        return device

    def _measure(self, space: PruningSpace, widths: np.ndarray, devices: Sequence[str],
                 repeats: int, warmup: int, progress: Tick | None) -> np.ndarray:
        """Raw times (M, D, repeats) in ms of every candidate on every device."""
        raise NotImplementedError

    def measure(self, space: PruningSpace, widths, devices: Sequence[str], *,
                repeats: int | Sequence[int] = 10, warmup: int = 3,
                store: Store | None = None, progress: Tick | None = None,
                fresh: bool = False) -> Measurements:
        """Latency of every candidate on every device, from the store where possible.

        Parameters
        ----------
        space:
            The model's pruning space.
        widths:
            Candidates, (N, G) or (G,).
        devices:
            Device ids (as in the telemetry).
        repeats, warmup:
            Timed runs per pair (median and spread are over these): one number, or
            one per device (adaptive repeats); and untimed runs before them.
        store:
            Where earlier measurements are looked up and new ones written.
        progress:
            Called with (pairs done, pairs to measure).
        fresh:
            Measure every pair now, even those in the store (the new times replace
            the stored ones): for comparing candidates head to head on a real
            device, whose speed drifts between one batch and the next (timing drift).
        """
        widths = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        devices = tuple(devices)
        if not devices:
            raise HdapError(f"{self.name}: no devices to measure on")
        if not isinstance(repeats, (int, np.integer)):
            return self._measure_by_repeats(space, widths, devices, list(repeats),
                                            warmup=warmup, store=store, progress=progress,
                                            fresh=fresh)
        if repeats < 1 or warmup < 0:
            raise HdapError("repeats must be >= 1 and warmup >= 0")
        n, d = len(widths), len(devices)
        median = np.full((n, d), np.nan)
        spread = np.full((n, d), np.nan)
        times: list[list[list[float]]] = [[[] for _ in range(d)] for _ in range(n)]
        cached = np.zeros((n, d), dtype=bool)
        wkeys = [widths_key(w) for w in widths]
        dkeys = [self.device_key(dev) for dev in devices]
        if store is not None and not fresh:
            rows = store.get_measurements(self.name, space.model, space.input_shape, repeats,
                                          [(dk, wk) for dk in dkeys for wk in set(wkeys)])
            for i, wk in enumerate(wkeys):
                for j, dk in enumerate(dkeys):
                    row = rows.get((dk, wk))
                    if row is not None:
                        median[i, j], spread[i, j] = row["median_ms"], row["spread_ms"]
                        times[i][j] = row["times_ms"]
                        cached[i, j] = True
        todo_c = np.flatnonzero(~cached.all(axis=1))
        todo_d = np.flatnonzero(~cached.all(axis=0))
        if todo_c.size:
            # Unique candidates only: a population may hold duplicates.
            uniq, inverse = np.unique(widths[todo_c], axis=0, return_inverse=True)
            inverse = np.ravel(inverse)
            # Slow backends store every chunk as soon as it is timed: a run stopped in the
            # middle (a killed server, a cancelled job) keeps what it had measured.
            chunk = self.store_chunk or len(uniq)
            for lo in range(0, len(uniq), chunk):
                hi = min(len(uniq), lo + chunk)

                def tick(done, total, lo=lo, hi=hi):
                    # In candidates over all chunks (a backend may count in pairs).
                    progress(lo + round(done * (hi - lo) / max(total, 1)), len(uniq))

                one_go = chunk >= len(uniq)  # the backend's own progress, as it reports it
                raw = self._measure(space, uniq[lo:hi], [devices[j] for j in todo_d], repeats,
                                    warmup, progress if one_go or not progress else tick)
                # Keys again: a backend may have moved a device's column to another device
                # while measuring (the agent backend replaces failed devices).
                dkeys = [self.device_key(dev) for dev in devices]
                new_rows = []
                for a, i in enumerate(todo_c):
                    u = int(inverse[a])
                    if not lo <= u < hi:
                        continue
                    for b, j in enumerate(todo_d):
                        if cached[i, j]:
                            continue
                        t = raw[u - lo, b]
                        if not np.isfinite(t).all():
                            continue  # not measured (a device that failed): a later run retries
                        median[i, j] = float(np.median(t))
                        spread[i, j] = _iqr(t)
                        times[i][j] = [float(x) for x in t]
                        new_rows.append((dkeys[j], wkeys[i], median[i, j], spread[i, j],
                                         times[i][j]))
                if store is not None:
                    store.put_measurements(self.name, space.model, space.input_shape, repeats,
                                           new_rows)
        result = Measurements(
            backend=self.name, source=self.source, model=space.model, devices=devices,
            widths=widths, median_ms=median, spread_ms=spread, times_ms=times,
            from_store=cached, warmup=int(warmup))
        result.notes.extend(self.notes(result))
        return result

    def _measure_by_repeats(self, space: PruningSpace, widths: np.ndarray,
                            devices: tuple[str, ...], repeats: list[int], **kwargs
                            ) -> Measurements:
        """`measure` with one repeat count per device: devices grouped by their count."""
        if len(repeats) != len(devices):
            raise HdapError(f"{len(repeats)} repeat counts for {len(devices)} devices")
        n, d = len(widths), len(devices)
        out = Measurements(self.name, self.source, space.model, devices, widths,
                           np.full((n, d), np.nan), np.full((n, d), np.nan),
                           [[[] for _ in range(d)] for _ in range(n)],
                           np.zeros((n, d), dtype=bool), warmup=int(kwargs["warmup"]))
        for r in sorted(set(int(x) for x in repeats)):
            cols = [j for j in range(d) if int(repeats[j]) == r]
            part = self.measure(space, widths, [devices[j] for j in cols], repeats=r, **kwargs)
            out.median_ms[:, cols] = part.median_ms
            out.spread_ms[:, cols] = part.spread_ms
            out.from_store[:, cols] = part.from_store
            for i in range(n):
                for b, j in enumerate(cols):
                    out.times_ms[i][j] = part.times_ms[i][b]
            out.notes.extend(n for n in part.notes if n not in out.notes)
        return out

    def notes(self, result: Measurements) -> list[str]:
        """What a reader of these measurements should know (noise, fitting error)."""
        return []

    def measured_device(self, device: str) -> str | None:
        """The device that measures ``device``'s column (another one after a replacement)."""
        return device

    def details(self) -> dict | None:
        """Backend-specific facts for the study report (plain data), or None."""
        return None


def nanmean(a: np.ndarray, axis: int | None = None):
    """Mean over the finite values; NaN (without a warning) where there are none (a device
    that failed, or a candidate not measured on it)."""
    a = np.asarray(a, dtype=np.float64)
    n = np.isfinite(a).sum(axis=axis)
    total = np.where(np.isfinite(a), a, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _iqr(t) -> float:
    q75, q25 = np.percentile(np.asarray(t, dtype=np.float64), [75, 25])
    return float(q75 - q25)


# -- host ---------------------------------------------------------------------------------

def host_device_id() -> str:
    """This machine as a device: hostname and processor."""
    cpu = platform.processor() or platform.machine()
    return f"host:{socket.gethostname()}:{cpu}"


class HostBackend(Backend):
    """Real timing with PyTorch on the machine that runs the engine, at batch 1.

    Candidates are interleaved: every round times each candidate once, in a
    fresh random order, so a slow timing drift of the machine's speed (another
    job, thermal state) spreads over all candidates instead of biasing the ones
    measured last. Models are built in small batches to bound memory.

    Parameters
    ----------
    threads:
        PyTorch intra-op threads while timing (1 is the least noisy on a
        shared machine).
    batch_models:
        How many pruned models are interleaved at once.
    seed:
        Seed of the interleaving order.
    clock:
        ``"wall"`` times elapsed time. ``"thread"`` times the CPU time of the
        timing thread, which with one PyTorch thread is the time the model
        computed: on a shared machine, time slices given to other jobs stretch
        wall time (here runs of one model spread by 12 ms around 30 ms) but
        not thread time. ``"auto"`` (default) is thread with one thread, wall
        otherwise (other threads' work is invisible to a thread clock).
    runtime:
        What runs the model: ``torch`` (eager, default), ``torchscript``
        (traced and frozen) or ``onnxruntime`` (exported to ONNX, ONNX
        Runtime on the CPU); see `hdap_engine.latency.runtimes`.
    precision:
        ``fp32``, or ``int8``: every candidate is quantised by ONNX Runtime
        first (`hdap_engine.quantize.cache`, once per architecture) and timed
        in ONNX Runtime; part of the store key.
    calibration:
        The INT8 calibrator of the timed candidates.
    """

    name = "host"
    source = "host (real)"
    real = True

    def __init__(self, threads: int = 1, batch_models: int = 12, seed: int = 0,
                 clock: str = "auto", runtime: str = "torch", precision: str = "fp32",
                 calibration: str = "minmax"):
        from hdap_engine.latency.runtimes import check_runtime

        self.runtime = check_runtime(runtime)
        if precision not in ("fp32", "int8"):
            raise HdapError(f"unknown precision {precision!r}; choose fp32 or int8")
        if precision == "int8" and self.runtime != "onnxruntime":
            raise HdapError("--precision int8 runs in ONNX Runtime on the host; add --runtime "
                            "onnxruntime")
        self.precision = precision
        self.calibration = calibration
        if threads < 1:
            raise HdapError(f"threads must be >= 1, got {threads}")
        if clock not in ("auto", "wall", "thread"):
            raise HdapError(f"clock must be auto, wall or thread, got {clock!r}")
        if clock == "thread" and threads != 1:
            raise HdapError("the thread clock only sees one thread's work; use --threads 1 or "
                            "--clock wall")
        self.threads = int(threads)
        self.batch_models = int(batch_models)
        self.store_chunk = 4 * self.batch_models
        self.seed = int(seed)
        self.clock = ("thread" if threads == 1 else "wall") if clock == "auto" else clock
        self.provider = "CPUExecutionProvider" if self.runtime == "onnxruntime" else None
        what = self.runtime if self.precision == "fp32" else f"{self.runtime} int8"
        if self.provider:
            what += f" {self.provider}"
        self.source = (f"host (real, {what}, "
                       f"{'thread CPU' if self.clock == 'thread' else 'wall'} time)")

    def device_key(self, device: str) -> str:
        # Every device of a host run *is* this machine; the key says which and how.
        # The runtime is part of it; eager torch keeps the key it had before
        # runtimes existed, so earlier measurements stay valid as torch.
        key = f"{host_device_id()}:threads={self.threads}:clock={self.clock}"
        key = key if self.runtime == "torch" else f"{key}:runtime={self.runtime}"
        # FP32 keeps the key it had before precisions existed (`store.precision_of`).
        return key if self.precision == "fp32" else f"{key}:precision={self.precision}"

    def _measure(self, space, widths, devices, repeats, warmup, progress):
        import torch

        from hdap_engine.latency.runtimes import prepare
        from hdap_engine.models.zoo import build_model, get_spec
        from hdap_engine.pruning.apply import prune_to_widths

        x = get_spec(space.model).example_input()
        m = len(widths)
        out = np.zeros((m, 1, repeats))
        rng = np.random.default_rng(self.seed)
        old_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        done = 0
        try:
            for start in range(0, m, self.batch_models):
                idx = list(range(start, min(m, start + self.batch_models)))
                if self.precision == "int8":
                    runnables = self._int8_runnables(space, widths[idx], x)
                    out[idx, 0, :] = time_models(runnables, x, repeats=repeats, warmup=warmup,
                                                 rng=rng, clock=self.clock)
                    done += len(idx)
                    if progress:
                        progress(done, m)
                    continue
                models = []
                for i in idx:
                    model = build_model(space.model)
                    # Which channels survive does not change the time; the shape does.
                    prune_to_widths(model, space, widths[i], importance="first")
                    models.append(model.eval())
                runnables = prepare(models, x, self.runtime, threads=self.threads)
                out[idx, 0, :] = time_models(runnables, x, repeats=repeats, warmup=warmup, rng=rng,
                                             clock=self.clock)
                done += len(idx)
                if progress:
                    progress(done, m)
        finally:
            torch.set_num_threads(old_threads)
        # Every device of a host study is this machine: the same times for each.
        return np.repeat(out, len(devices), axis=1)

    def _int8_runnables(self, space, widths, x):
        from hdap_engine.latency.runtimes import prepare_int8
        from hdap_engine.quantize.cache import int8_candidate

        bodies = [int8_candidate(space, w, calibration=self.calibration, seed=self.seed)
                  for w in widths]
        runnables = prepare_int8(bodies, x, threads=self.threads)
        self.provider = runnables[0].provider if runnables else self.provider
        return runnables

    def notes(self, result: Measurements) -> list[str]:
        return host_noise_notes(result.median_ms[:, 0], result.spread_ms[:, 0],
                                result.times_ms)


def time_models(models: Sequence, x, *, repeats: int, warmup: int,
                rng: np.random.Generator, clock: str = "wall") -> np.ndarray:
    """Interleaved times (len(models), repeats) in ms at batch 1 (wall or thread clock)."""
    import torch

    from hdap_engine.fleet.probes import timer

    now = timer(clock)

    out = np.zeros((len(models), repeats))
    with torch.inference_mode():
        for model in models:
            for _ in range(warmup):
                model(x)
        for r in range(repeats):
            for i in rng.permutation(len(models)):
                t0 = now()
                models[i](x)
                out[i, r] = (now() - t0) * 1e3
    return out


COMPARISON_SIZE = 24  # up to this many candidates, a measurement is read as a comparison


def host_noise_notes(median: np.ndarray, spread: np.ndarray, times) -> list[str]:
    """Outliers and whether the machine's noise hides the differences measured."""
    notes = []
    all_t = [np.asarray(times[i][0]) for i in range(len(median)) if len(times[i][0])]
    outliers = total = 0
    for t in all_t:
        med = np.median(t)
        mad = np.median(np.abs(t - med)) or 1e-9
        outliers += int((t > med + 5 * 1.4826 * mad).sum())
        total += t.size
    if total and outliers:
        notes.append(f"{outliers} of {total} timed runs were outliers (more than 5 robust "
                     "standard deviations slower than their median); medians ignore them")
    finite = median[np.isfinite(median)]
    typical_spread = float(np.nanmedian(spread)) if finite.size else 0.0
    if 2 <= finite.size <= COMPARISON_SIZE:
        # A comparison (finalists, verification, a benchmark): can it tell them apart?
        gaps = np.diff(np.sort(finite))
        typical_gap = float(np.median(gaps))
        if typical_spread > typical_gap:
            notes.append(
                f"this machine is too noisy to rank these candidates: the typical spread of "
                f"one candidate's runs ({typical_spread:.2f} ms) is wider than the typical gap "
                f"between them ({typical_gap:.2f} ms); differences smaller than "
                f"{typical_spread:.2f} ms are not resolved")
    elif finite.size > COMPARISON_SIZE and typical_spread > 0.05 * float(np.median(finite)):
        # Samples for the surrogate are meant to be dense; only their own noise matters.
        notes.append(f"runs of one candidate spread by {typical_spread:.2f} ms "
                     f"({typical_spread / np.median(finite):.0%} of the median latency): "
                     "expect the surrogate to be no more accurate than that")
    return notes


# -- twin ---------------------------------------------------------------------------------

class TwinBackend(Backend):
    """Simulated measurements on each device's digital twin.

    The latent state of a device comes from the fleet's ``.twin.parquet``
    sidecar (simulated fleets), or is fitted by least squares to the device's
    standard probe columns (uploaded telemetry without a sidecar); the fit
    error is reported. Run-to-run noise is drawn from a generator seeded by
    the (device, candidate) pair, so a measurement does not depend on what
    else was measured with it.
    """

    name = "twin"
    source = "twin (simulated)"
    real = False

    def __init__(self, twin, states, *, fleet_key: str, fit_error: dict[str, float] | None = None,
                 seed: int = 0):
        self.twin = twin
        self.states = states
        self.fleet_key = fleet_key
        self.fit_error = fit_error
        self.seed = int(seed)

    def device_key(self, device: str) -> str:
        return f"{self.fleet_key}:{device}"

    def states_for(self, devices: Sequence[str]):
        """The twin states of ``devices`` (in that order)."""
        from hdap_engine.twin import select_states

        return select_states(self.states, devices)

    def expected_ms(self, space: PruningSpace, widths, devices: Sequence[str]) -> np.ndarray:
        """Noiseless latency (N, D): the twin's ground truth."""
        table = space.layer_table(np.atleast_2d(widths))
        return self.twin.latency_ms(table, self.states_for(devices), noise=False)

    def _measure(self, space, widths, devices, repeats, warmup, progress):
        states = self.states_for(devices)
        expected = self.expected_ms(space, widths, devices)  # (M, D)
        sigma = self.twin.noise_sigma(states)[None, :, None]  # (1, D, 1)
        z = np.empty((*expected.shape, repeats))
        for i, w in enumerate(widths):
            wk = widths_key(w)
            for j, dev in enumerate(devices):
                seed = zlib.crc32(f"{self.seed}|{self.device_key(dev)}|{space.model}|{wk}".encode())
                z[i, j] = np.random.default_rng(seed).standard_normal(repeats)
        if progress:
            progress(len(widths), len(widths))
        return expected[:, :, None] * np.exp(sigma * z)

    def measure_fleet(self, space: PruningSpace, widths, devices: Sequence[str], *,
                      repeats: int = 5) -> np.ndarray:
        """Median latency (D,) of one candidate on every listed device: the fleet's ground truth.

        Not stored: thousands of devices are simulated in milliseconds.
        """
        widths = np.asarray(widths, dtype=np.int64)
        states = self.states_for(devices)
        expected = self.expected_ms(space, widths[None], devices)[0]
        seed = zlib.crc32(f"{self.seed}|{self.fleet_key}|{space.model}|{widths_key(widths)}"
                          .encode())
        z = np.random.default_rng(seed).standard_normal((len(devices), repeats))
        noise = np.exp(self.twin.noise_sigma(states)[:, None] * z)
        return expected * np.median(noise, axis=1)

    def notes(self, result: Measurements) -> list[str]:
        if not self.fit_error:
            return []
        errs = [self.fit_error[d] for d in result.devices if d in self.fit_error]
        if not errs:
            return []
        return [f"twin states fitted from probe columns (no .twin.parquet sidecar): median "
                f"probe fit error {np.median(errs):.1%}, worst {np.max(errs):.1%}"]
