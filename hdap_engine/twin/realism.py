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
    python -m hdap_engine.twin.realism --model torchvision:mobilenet_v3_large

``--blocks`` instead prices a few hand-built blocks that use the ops beyond
ResNets (a MobileNetV3 block with hardswish and a squeeze-excitation gate, an
EfficientNet MBConv with SiLU and a sigmoid gate, a ViT block with layer
norms, attention's matrix products, softmax and GELU, a grouped conv and a
concatenation) and times the same layers in PyTorch, layer by layer, to check
each op's cost for its order of magnitude (`block_check`).
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
        A model name as the zoo resolves it (``resnet18``,
        ``torchvision:mobilenet_v3_large``, ...).
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

    from hdap_engine.fleet.probes import HOST_PROBES, ProbeSession, host_context, timer
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
        session = ProbeSession(HOST_PROBES, clock=clock)
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


# --- hand-built blocks: every op's cost against PyTorch, layer by layer -------


def _se_block(c: int, e: int, hw: int, se: int, act: str, gate: str, k: int) -> list[dict]:
    """Inverted residual with a squeeze-excitation gate (MobileNetV3 / EfficientNet)."""
    px = dict(h_in=hw, w_in=hw)
    one = dict(h_in=1, w_in=1)
    return [
        dict(name="expand", op="conv", cin=c, cout=e, **px),
        dict(name="expand.bn", op="bn", cin=e, cout=e, **px),
        dict(name="expand.act", op="act", fn=act, cin=e, cout=e, **px),
        dict(name="dw", op="dwconv", cin=e, cout=e, kernel=k, **px),
        dict(name="dw.bn", op="bn", cin=e, cout=e, **px),
        dict(name="dw.act", op="act", fn=act, cin=e, cout=e, **px),
        dict(name="se.pool", op="pool", cin=e, cout=e, kernel=hw, h_out=1, w_out=1, **px),
        dict(name="se.fc1", op="conv", cin=e, cout=se, has_bias=True, **one),
        dict(name="se.act", op="act", fn="relu" if act == "hardswish" else act, cin=se,
             cout=se, **one),
        dict(name="se.fc2", op="conv", cin=se, cout=e, has_bias=True, **one),
        dict(name="se.gate", op="act", fn=gate, cin=e, cout=e, **one),
        dict(name="se.mul", op="mul", cin=e, cout=e, h_out=hw, w_out=hw, **one),
        dict(name="project", op="conv", cin=e, cout=c, **px),
        dict(name="project.bn", op="bn", cin=c, cout=c, **px),
        dict(name="add", op="add", cin=c, cout=c, **px),
    ]


def _vit_block(tokens: int = 197, dim: int = 192, heads: int = 3, mlp: int = 768) -> list[dict]:
    """A ViT-Tiny encoder block; attention's products are batched over heads."""
    dh = dim // heads
    rows = dict(h_in=tokens, w_in=1)
    att = dict(h_in=heads * tokens, w_in=1)
    return [
        dict(name="ln1", op="norm", cin=dim, cout=dim, **rows),
        dict(name="qkv", op="linear", cin=dim, cout=3 * dim, has_bias=True, **rows),
        dict(name="q@k", op="matmul", cin=dh, cout=tokens, **att),
        dict(name="softmax", op="softmax", cin=tokens, cout=tokens, **att),
        dict(name="attn@v", op="matmul", cin=tokens, cout=dh, **att),
        dict(name="proj", op="linear", cin=dim, cout=dim, has_bias=True, **rows),
        dict(name="add1", op="add", cin=dim, cout=dim, **rows),
        dict(name="ln2", op="norm", cin=dim, cout=dim, **rows),
        dict(name="fc1", op="linear", cin=dim, cout=mlp, has_bias=True, **rows),
        dict(name="gelu", op="act", fn="gelu", cin=mlp, cout=mlp, **rows),
        dict(name="fc2", op="linear", cin=mlp, cout=dim, has_bias=True, **rows),
        dict(name="add2", op="add", cin=dim, cout=dim, **rows),
    ]


def _grouped_block(c: int = 256, width: int = 128, hw: int = 28, groups: int = 8) -> list[dict]:
    """A ResNeXt-style grouped conv between 1x1 convs, and a dense-block concatenation."""
    px = dict(h_in=hw, w_in=hw)
    return [
        dict(name="reduce", op="conv", cin=c, cout=width, **px),
        dict(name="grouped", op="gconv", cin=width, cout=width, kernel=3, groups=groups, **px),
        dict(name="expand", op="conv", cin=width, cout=c, **px),
        dict(name="cat", op="cat", cin=2 * c, cout=2 * c, **px),
    ]


BLOCKS: dict[str, list[dict]] = {
    "mobilenetv3": _se_block(40, 120, 28, 32, "hardswish", "hardsigmoid", 5),
    "mbconv": _se_block(40, 240, 28, 10, "silu", "sigmoid", 5),
    "vit": _vit_block(),
    "grouped": _grouped_block(),
}
"""Layer rows of the hand-built blocks `block_check` prices and times."""


def _torch_layer(r: dict):
    """One block layer as a torch callable and its input (the shapes the row gives)."""
    import torch
    import torch.nn.functional as F

    acts = {"relu": F.relu, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
            "silu": F.silu, "sigmoid": torch.sigmoid, "gelu": F.gelu}
    g = torch.Generator().manual_seed(0)
    op, ci, co = r["op"], int(r["cin"]), int(r["cout"])
    h, w = int(r["h_in"]), int(r["w_in"])
    rows = h * w
    if op in ("conv", "dwconv", "gconv"):
        k = int(r.get("kernel", 1))
        groups = ci if op == "dwconv" else int(r.get("groups", 1))
        m = torch.nn.Conv2d(ci, co, k, padding=k // 2, groups=groups,
                            bias=bool(r.get("has_bias", False))).eval()
        return m, torch.randn(1, ci, h, w, generator=g)
    if op == "bn":
        return torch.nn.BatchNorm2d(ci).eval(), torch.randn(1, ci, h, w, generator=g)
    if op == "act":
        x = torch.randn(rows, ci, generator=g) if w == 1 and h > 1 else \
            torch.randn(1, ci, h, w, generator=g)
        return acts[r["fn"]], x
    if op == "pool":
        return (lambda t: F.adaptive_avg_pool2d(t, 1)), torch.randn(1, ci, h, w, generator=g)
    if op == "mul":
        y = torch.randn(1, co, int(r["h_out"]), int(r["w_out"]), generator=g)
        return (lambda t: y * t), torch.randn(1, co, h, w, generator=g)
    if op == "add":
        y = torch.randn(rows, ci, generator=g)
        return (lambda t: t + y), torch.randn(rows, ci, generator=g)
    if op == "linear":
        return (torch.nn.Linear(ci, co, bias=bool(r.get("has_bias", False))).eval(),
                torch.randn(rows, ci, generator=g))
    if op == "matmul":
        heads = 3  # the ViT block's
        b = torch.randn(heads, ci, co, generator=g)
        return (lambda t: torch.matmul(t, b)), torch.randn(heads, rows // heads, ci, generator=g)
    if op == "norm":
        return torch.nn.LayerNorm(ci).eval(), torch.randn(rows, ci, generator=g)
    if op == "softmax":
        return (lambda t: torch.softmax(t, -1)), torch.randn(rows, co, generator=g)
    if op == "cat":
        y = torch.randn(1, ci // 2, h, w, generator=g)
        return (lambda t: torch.cat([t, y], 1)), torch.randn(1, ci // 2, h, w, generator=g)
    raise ValueError(f"no torch layer for op {op!r}")


def block_check(*, repeats: int = 30, probe_repeats: int = 10) -> dict[str, list[dict]]:
    """Price the hand-built `BLOCKS` with the twin fitted to this machine, and time them.

    Every layer runs in block order, each timed on this thread's CPU clock
    (one torch thread), ``repeats`` times; the median is reported next to the
    twin's `Twin.layer_ms` for the same row.

    Returns
    -------
    dict
        Block name -> one ``{"name", "op", "fn", "twin_us", "torch_us"}`` per layer.
    """
    import torch

    from hdap_engine.fleet.probes import HOST_PROBES, ProbeSession, host_context
    from hdap_engine.pruning.layers import make_table
    from hdap_engine.twin.fit import fit_preset_from_probes
    from hdap_engine.twin.physics import Twin
    from hdap_engine.twin.states import DeviceStates

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        session = ProbeSession(HOST_PROBES, clock="thread")
        for _ in range(2):
            session.round(record=False)
        for _ in range(probe_repeats):
            session.round()
        preset = fit_preset_from_probes({**session.medians(), **host_context(1)})
        twin = Twin(preset)
        nominal = DeviceStates.nominal(1, sku=preset.name)
        out = {}
        for block, rows in BLOCKS.items():
            predicted = twin.layer_ms(make_table(rows), nominal)[0, :, 0] * 1e3
            layers = [_torch_layer(r) for r in rows]
            times = np.zeros((repeats, len(rows)))
            with torch.inference_mode():
                for _ in range(3):
                    for fn, x in layers:
                        fn(x)
                for i in range(repeats):
                    for j, (fn, x) in enumerate(layers):
                        t0 = time.thread_time()
                        fn(x)
                        times[i, j] = (time.thread_time() - t0) * 1e6
            measured = np.median(times, axis=0)
            out[block] = [{"name": r["name"], "op": r["op"], "fn": r.get("fn", ""),
                           "twin_us": float(p), "torch_us": float(m)}
                          for r, p, m in zip(rows, predicted, measured, strict=True)]
    finally:
        torch.set_num_threads(old)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hdap_engine.twin.realism",
                                 description="Twin fitted to this machine's probes vs real timings.")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--candidates", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print every candidate")
    ap.add_argument("--blocks", action="store_true",
                    help="price and time the hand-built blocks layer by layer instead")
    args = ap.parse_args(argv)
    if args.blocks:
        for block, layers in block_check().items():
            twin = sum(r["twin_us"] for r in layers)
            torch_us = sum(r["torch_us"] for r in layers)
            print(f"{block}: twin {twin:.0f} us, PyTorch {torch_us:.0f} us "
                  f"({twin / torch_us - 1:+.0%})")
            for r in layers:
                print(f"  {r['name']:11s} {r['op']:7s} {r['fn']:11s} twin {r['twin_us']:8.1f} us"
                      f"  PyTorch {r['torch_us']:8.1f} us")
        return 0
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
