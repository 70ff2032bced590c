"""A study through 24 device agents with hidden physics: the fixed plan against sequential measurement.

Starts ``--devices`` real agents (`AgentServer`: real HTTP, real uploads of
exported ONNX models) on loopback ports. Each stands for one device of a
simulated fleet (`hdap_engine.twin.simulate_fleet`): its probe row is the
device's telemetry and it answers every measurement with the device twin's
latency for the model it received, sleeping for the runs it reports, so that
wall time includes the device time. The physics is hidden from the study: it
sees agents, probe rows and timings only (``--backend agent``), never the latent
states. The agent recognises the uploaded model by the bytes the study
exported for a candidate (it cannot parse widths out of an ONNX file cheaply);
nothing else passes between the two.

Two plans, each in a fresh store:

- ``fixed``: today's method with the old fixed measurement plan
  (`--samples` candidates on every representative, 3 refinement rounds of 8,
  12 finalists and 3 polish rounds of 12): the method ``hdap-fixed``,
  registered here as ``hdap`` without sequential measurement;
- ``sequential``: ``hdap`` as it ships (a few samples, batches until another
  is not worth its noise, representatives by spread, adaptive repeats).

For each: agent replies (device measurements), the study's wall time, and the
hidden fleet mean (the twin's noiseless latency over every device) of the
chosen model against ``uniform``'s.

    python -m benchmarks.agent_fleet [--devices 24] [--model resnet18] [--macs 0.5]
                                     [--plans fixed,sequential] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from hdap_engine.agent.config import AgentConfig
from hdap_engine.agent.server import AgentServer
from hdap_engine.latency.agent_backend import AgentBackend
from hdap_engine.latency.store import Store
from hdap_engine.options import StudyOptions
from hdap_engine.pruning.budget import parse_budget
from hdap_engine.search.baselines import uniform_widths
from hdap_engine.search.methods import Method, register_method
from hdap_engine.study.prepare import prepare
from hdap_engine.study.run import optimize
from hdap_engine.twin import DeviceStates, Twin, get_preset, simulate_fleet

TOKEN = "benchmark-token-0123456789abcdef"
SKU = "jetson-nano"

register_method(Method(
    "hdap-fixed", "HDAP (fixed plan)", "HDAP with the fixed measurement plan of before",
    "#B6E880", refines=True, measures_finalists=True, measures_sequentially=False))

# What the study exported for each candidate: the agents' way to recognise a model.
_EXPORTED: dict[str, tuple] = {}  # sha256 of the body -> (pruning space, widths)
_EXPORTED_LOCK = threading.Lock()
_export = AgentBackend._export
# Where the wall time goes: model files exported (not served from the backend's cache) and
# the seconds they took, reset for each plan.
PROFILE = {"exports": 0, "export_s": 0.0}


def _recording_export(self, space, widths, fmt):
    t0 = time.perf_counter()
    body = _export(self, space, widths, fmt)
    with _EXPORTED_LOCK:
        PROFILE["exports"] += 1
        PROFILE["export_s"] += time.perf_counter() - t0
        _EXPORTED[hashlib.sha256(body).hexdigest()] = (space, np.asarray(widths).copy())
    return body


AgentBackend._export = _recording_export


class HiddenTwinAgent(AgentServer):
    """An agent whose device is a twin device the study cannot see."""

    def __init__(self, config: AgentConfig, probes: dict, twin: Twin, state: DeviceStates,
                 seed: int):
        super().__init__(config, probe_fn=lambda **_: dict(probes))
        self.twin, self.state = twin, state
        self.rng = np.random.default_rng(seed)
        self.replies = 0
        self.busy_s = 0.0  # seconds inside measurements: device time and the twin's own work

    def measure_locked(self, body, fmt, shape, warmup, repeats):
        t0 = time.perf_counter()
        try:
            return self._measure_twin(body, fmt, shape, warmup, repeats)
        finally:
            self.busy_s += time.perf_counter() - t0

    def _measure_twin(self, body, fmt, shape, warmup, repeats):
        with _EXPORTED_LOCK:
            space, widths = _EXPORTED[hashlib.sha256(body).hexdigest()]
        table = space.layer_table(widths[None])
        runs = self.twin.raw_latency_ms(table, self.state, runs=warmup + repeats,
                                        rng=self.rng)[0, 0]
        time.sleep(float(np.sum(runs)) / 1e3)  # the device is busy for what it reports
        latencies = [float(x) for x in runs[warmup:]]
        self.replies += 1
        return {"device_id": self.device_id, "sku": self.sku, "format": fmt,
                "shape": list(shape), "runtime": "twin (hidden)", "accelerator": "cpu",
                "threads": 1, "warmup": warmup, "repeats": repeats,
                "latencies_ms": latencies, "median_ms": float(np.median(latencies))}


def run(devices: int, model: str, macs: str, plans: list[str], seed: int) -> dict:
    telemetry, frame = simulate_fleet(SKU, devices, seed=seed)
    states = DeviceStates.from_frame(frame, sku=SKU)
    twin = Twin(get_preset(SKU))
    agents = []
    try:
        for i, row in telemetry.iterrows():
            probes = {c: float(row[c]) for c in telemetry.columns if c.startswith("probe_")}
            agents.append(HiddenTwinAgent(
                AgentConfig(token=TOKEN, host="127.0.0.1", port=0, device_id=row.device_id,
                            sku=SKU, accelerator="cpu", threads=1),
                probes, twin, states.select([i]), seed + i).start())
        tmp = Path(tempfile.mkdtemp(prefix="hdap-agent-fleet-"))
        path = tmp / "agents.csv"
        telemetry.assign(agent_url=[a.url for a in agents]).to_csv(path, index=False)
        out = {"devices": devices, "model": model, "macs": macs, "sku": SKU, "seed": seed,
               "plans": {}}
        for plan in plans:
            method = "hdap" if plan == "sequential" else "hdap-fixed"
            options = StudyOptions.of(model=model, budget=macs, method=method, backend="agent",
                                      agent_token=TOKEN, seed=seed)
            store = Store(tmp / f"store-{plan}.sqlite")
            for a in agents:
                a.replies, a.busy_s = 0, 0.0
            PROFILE.update(exports=0, export_s=0.0)
            t0 = time.perf_counter()
            ctx = prepare(options, str(path), store=store)
            prepared = time.perf_counter() - t0
            res = optimize(ctx)
            wall = time.perf_counter() - t0
            target = parse_budget(options.query.budget, ctx.space)
            chosen = np.vstack([res.widths, uniform_widths(ctx.space, target)])
            truth = twin.latency_ms(ctx.space.layer_table(chosen), states, noise=False)
            hidden, uniform = truth.mean(axis=1)
            record = res.measurement or {}
            out["plans"][plan] = {
                "method": method, "wall_s": wall,
                "agent_replies": int(sum(a.replies for a in agents)),
                "device_measurements": int(res.device_measurements),
                "device_s": float(res.device_s),
                "agents_measured": int(sum(a.replies > 0 for a in agents)),
                "prepare_s": prepared, "exports": PROFILE["exports"],
                "export_s": PROFILE["export_s"], "search_s": float(res.search_s),
                "agents_busy_s": float(sum(a.busy_s for a in agents)),
                "slowest_agent_busy_s": float(max(a.busy_s for a in agents)),
                "k": ctx.k, "hidden_fleet_mean_ms": float(hidden),
                "uniform_hidden_fleet_mean_ms": float(uniform),
                "margin_over_uniform": float(uniform / hidden - 1),
                "stop": (record.get("stop") or {}).get("reason"),
                "widths": [int(x) for x in res.widths]}
            print(json.dumps({plan: out["plans"][plan]}, default=str), flush=True)
    finally:
        for a in agents:
            a.stop(grace_s=5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=24)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--macs", default="0.5")
    parser.add_argument("--plans", default="fixed,sequential")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = run(args.devices, args.model, args.macs, args.plans.split(","), args.seed)
    plans = out["plans"]
    print(f"{'plan':12} {'replies':>8} {'wall s':>8} {'device s':>9} {'exports':>8} "
          f"{'export s':>9} {'search s':>9} {'hidden ms':>10} {'uniform ms':>10} {'margin':>7}")
    for name, p in plans.items():
        print(f"{name:12} {p['agent_replies']:>8,} {p['wall_s']:>8.1f} {p['device_s']:>9.1f} "
              f"{p['exports']:>8,} {p['export_s']:>9.1f} {p['search_s']:>9.1f} "
              f"{p['hidden_fleet_mean_ms']:>10.3f} {p['uniform_hidden_fleet_mean_ms']:>10.3f} "
              f"{p['margin_over_uniform']:>+7.1%}")
    if {"fixed", "sequential"} <= set(plans):
        f, s = plans["fixed"], plans["sequential"]
        print(f"sequential / fixed: replies {s['agent_replies'] / f['agent_replies']:.2f}, "
              f"wall time {s['wall_s'] / f['wall_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
