"""Twin realism check: does the twin, fitted to this machine's probes, predict this machine?

The only inputs of the prediction are the host's own probe row (the standard
probe suite, as `hdap probe` runs it) and the layer shapes of each candidate:
`fit_preset_from_probes` turns the row into a CPU-class preset, and the twin
predicts every candidate with it, never fitted per candidate. The candidates
are really pruned and timed with PyTorch here (batch 1, inference mode, fixed
threads, warm-up, interleaved repeats, median), with probe rounds alternating
with timing rounds so both see the same machine. The check passes when the
ranks agree (Spearman >= 0.8) and the times do too (MAPE < 15 %).

    python -m hdap_engine.twin.realism --model resnet18 --candidates 30
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from hdap_engine.errors import HdapError

SPEARMAN_MIN = 0.8
MAPE_MAX = 0.15


@dataclass(frozen=True)
class RealismResult:
    """Predicted and measured latency of the candidates, and the agreement figures."""

    model: str
    threads: int
    widths: np.ndarray  # (N, G)
    macs: np.ndarray  # (N,)
    predicted_ms: np.ndarray  # (N,)
    measured_ms: np.ndarray  # (N,)
    spearman: float
    mape: float
    probe_row: dict
    seconds: float
    clock: str = "wall"

    @property
    def passed(self) -> bool:
        return self.spearman >= SPEARMAN_MIN and self.mape < MAPE_MAX


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _time_round(models, x, *, warmup: int, rng: np.random.Generator,
                clock=time.perf_counter) -> np.ndarray:
    """One timed run of every model, in random order, each right after its own untimed run.

    Interleaving spreads a shared machine's drift over all candidates; the
    untimed run just before makes every timed run a steady-state inference (a
    deployed device runs one network over and over, and so does the twin),
    not the first run after 29 other networks went through the caches.
    """
    import torch

    out = np.zeros(len(models))
    with torch.inference_mode():
        for i in rng.permutation(len(models)):
            for _ in range(max(1, warmup)):
                models[i](x)
            t0 = clock()
            models[i](x)
            out[i] = (clock() - t0) * 1e3
    return out


def run_realism(model: str = "resnet18", candidates: int = 30, *, threads: int = 1,
                repeats: int = 15, warmup: int = 2, probe_repeats: int = 20, seed: int = 0,
                progress=None) -> RealismResult:
    """Fit the twin to this machine's probes, then compare its predictions with real timings.

    Parameters
    ----------
    model:
        A registered model (``resnet18``, ``mobilenet_v1``, ...).
    candidates:
        Random candidates of its pruning space (`PruningSpace.random_widths`).
    threads:
        PyTorch threads for the probes and the timings alike.
    repeats, warmup:
        Timed and untimed runs of every candidate (interleaved rounds, median).
    probe_repeats:
        Rounds of the probe suite (alternating with the timing rounds).
    seed:
        Seed of the candidates and of the interleaving order.
    progress:
        Optional callable(stage: str, done: int, total: int).

    Returns
    -------
    RealismResult
    """
    import torch

    from hdap_engine.fleet.probes import ProbeSession, host_context, timer
    from hdap_engine.models.zoo import build_model, get_spec
    from hdap_engine.pruning.apply import prune_to_widths
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.twin.fit import fit_preset_from_probes
    from hdap_engine.twin.physics import Twin
    from hdap_engine.twin.states import DeviceStates

    if candidates < 3:
        raise HdapError("the realism check needs at least 3 candidates")
    t_start = time.perf_counter()
    tick = progress or (lambda *a: None)
    space = PruningSpace.for_model(model)
    rng = np.random.default_rng(seed)
    widths = space.random_widths(candidates, rng)

    models = []
    for i, w in enumerate(widths):
        m = build_model(model)
        prune_to_widths(m, space, w, importance="first")
        models.append(m.eval())
        tick("prune", i + 1, len(widths))
    x = get_spec(model).example_input()
    order = np.random.default_rng(seed)
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    # Probe rounds alternate with timing rounds, so the probe row describes the
    # machine in the state the networks were timed in (a shared machine's load
    # drifts); the row is still the only input of the prediction. With one
    # thread, both are timed in this thread's CPU time: other processes'
    # time slices on a shared machine then stretch neither.
    clock = "thread" if int(threads) == 1 else "wall"
    tick_clock = timer(clock)
    try:
        session = ProbeSession(clock=clock)
        for _ in range(3):
            session.round(record=False)
        times = np.zeros((len(models), 0))
        for r in range(max(repeats, probe_repeats)):
            session.round()
            if r < repeats:
                chunk = _time_round(models, x, warmup=warmup if r == 0 else 1, rng=order,
                                    clock=tick_clock)
                times = np.concatenate([times, chunk[:, None]], axis=1)
            tick("time", r + 1, max(repeats, probe_repeats))
    finally:
        torch.set_num_threads(old)
    measured = np.median(times, axis=1)
    row = {**session.medians(), **host_context(threads)}
    preset = fit_preset_from_probes(row)
    predicted = Twin(preset).latency_ms(space.layer_table(widths),
                                        DeviceStates.nominal(1, sku=preset.name),
                                        noise=False)[:, 0]
    return RealismResult(
        model=model, threads=int(threads), widths=widths, macs=np.asarray(space.macs(widths)),
        predicted_ms=predicted, measured_ms=measured,
        spearman=_spearman(predicted, measured),
        mape=float(np.mean(np.abs(predicted - measured) / measured)),
        probe_row=row, seconds=time.perf_counter() - t_start, clock=clock,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hdap_engine.twin.realism",
                                 description="Twin fitted to this machine's probes vs real timings.")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print every candidate")
    args = ap.parse_args(argv)
    try:
        r = run_realism(args.model, args.candidates, threads=args.threads, repeats=args.repeats,
                        seed=args.seed)
    except HdapError as exc:
        print(f"error: {exc}")
        return 2
    if args.verbose:
        print(f"{'MMACs':>8s} {'twin ms':>9s} {'host ms':>9s} {'error':>7s}")
        for macs, p, m in sorted(zip(r.macs, r.predicted_ms, r.measured_ms, strict=True)):
            print(f"{macs / 1e6:8.1f} {p:9.2f} {m:9.2f} {p / m - 1:+7.1%}")
    print(f"model {r.model}, {len(r.macs)} candidates, {r.threads} thread(s), "
          f"{r.clock} clock, {r.seconds:.0f} s")
    print(f"Spearman {r.spearman:.3f} (needs >= {SPEARMAN_MIN})   "
          f"MAPE {r.mape:.1%} (needs < {MAPE_MAX:.0%})   "
          f"{'PASS' if r.passed else 'FAIL'}")
    return 0 if r.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
