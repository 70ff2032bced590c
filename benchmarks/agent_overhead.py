"""Does measuring through the agent change the numbers? What does a request cost?

Starts an agent on loopback, exports torchvision models (random weights, no
download) to TorchScript and ONNX, and times each model two ways, interleaved
over several rounds to spread machine noise evenly:

- ``agent``: `AgentClient.measure` (upload, load, warm-up, timed runs, JSON);
- ``direct``: the same `measure_model` call in this process, no HTTP.

It prints the median latency of both paths, their ratio (about 1.0 when the
agent adds no bias), and the wall time of one agent request beyond the timed
runs (upload + load + warm-up + reply).

    python -m benchmarks.agent_overhead [--models resnet18 mobilenet_v2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import torch
import torchvision

from hdap_engine.agent.client import AgentClient
from hdap_engine.agent.config import AgentConfig
from hdap_engine.agent.measure import measure_model
from hdap_engine.agent.server import AgentServer

TOKEN = "benchmark-token-0123456789"


def export(name: str, shape: tuple[int, ...]) -> dict[str, bytes]:
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit and the legacy ONNX exporter are deprecated
        ts = io.BytesIO()
        torch.jit.save(torch.jit.trace(model, x), ts)
        ox = io.BytesIO()
        torch.onnx.export(model, (x,), ox, dynamo=False, input_names=["x"])
    return {"torchscript": ts.getvalue(), "onnx": ox.getvalue()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shape = (1, 3, 224, 224)
    agent = AgentServer(AgentConfig(token=TOKEN, port=0, accelerator="cpu")).start()
    client = AgentClient(agent.url, TOKEN)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; agent at {agent.url}")
    print(f"{'model':14} {'format':12} {'MB':>6} {'agent ms':>9} {'direct ms':>9} "
          f"{'ratio':>6} {'request overhead ms':>20}")
    try:
        for name in args.models:
            for fmt, body in export(name, shape).items():
                via_agent, direct, overhead = [], [], []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    m = client.measure(body, fmt, shape, args.warmup, args.repeats)
                    wall_ms = (time.perf_counter() - started) * 1000
                    via_agent.append(m.median_ms)
                    overhead.append(wall_ms - sum(m.latencies_ms))
                    d = measure_model(body, fmt, shape, args.warmup, args.repeats,
                                      accelerator="cpu")
                    direct.append(d["median_ms"])
                a, b = statistics.median(via_agent), statistics.median(direct)
                print(f"{name:14} {fmt:12} {len(body) / 2**20:6.1f} {a:9.2f} {b:9.2f} "
                      f"{a / b:6.2f} {statistics.median(overhead):20.0f}")
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
