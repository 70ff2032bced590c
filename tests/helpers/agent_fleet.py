"""A small fleet of real device agents on loopback ports, which record what they measured.

Each agent is a real `AgentServer` (real HTTP, real onnxruntime timing) with a
fake probe suite, so that its telemetry row is known and the devices sort
into a known order around their cluster's centre. Every reply an agent sends
is kept, so a test can check that a report's latencies are the agents' own.
"""

from __future__ import annotations

import threading

from hdap_engine.agent.config import AgentConfig
from hdap_engine.agent.server import AgentServer
from tests.helpers.agents import TOKEN


class RecordingAgent(AgentServer):
    """An agent that keeps every measurement reply; it can stop itself after ``stop_after``."""

    def __init__(self, config: AgentConfig, probe_fn=None, stop_after: int | None = None):
        super().__init__(config, probe_fn=probe_fn)
        self.replies: list[dict] = []
        self.stop_after = stop_after
        self.stopped = threading.Event()

    def measure_locked(self, body, fmt, shape, warmup, repeats):
        reply = super().measure_locked(body, fmt, shape, warmup, repeats)
        self.replies.append(reply)
        if self.stop_after is not None and len(self.replies) == self.stop_after:
            # From another thread: `stop` waits for this very measurement to finish.
            threading.Thread(target=self._stop_now, daemon=True).start()
        return reply

    def _stop_now(self) -> None:
        self.stop()
        self.stopped.set()

    @property
    def medians(self) -> list[float]:
        return [r["median_ms"] for r in self.replies]


def probes_for(scale: float):
    """A probe suite with fixed numbers, ``scale`` times a base device."""

    def run(**kwargs) -> dict:
        return {"probe_conv3x3_ms": 1.5 * scale, "probe_memcopy_ms": 0.25 * scale ** 0.5}

    return run


def start_fleet(scales: dict[str, float], **overrides) -> dict[str, RecordingAgent]:
    """One started agent per device id (threads=1, CPU), with probes scaled per device."""
    agents = {}
    try:
        for device, scale in scales.items():
            options = {"token": TOKEN, "host": "127.0.0.1", "port": 0, "device_id": device,
                       "sku": "host", "accelerator": "cpu", "threads": 1}
            options.update(overrides)
            agents[device] = RecordingAgent(AgentConfig(**options),
                                            probe_fn=probes_for(scale)).start()
    except BaseException:
        stop_fleet(agents)
        raise
    return agents


def stop_fleet(agents: dict[str, RecordingAgent]) -> None:
    for agent in agents.values():
        agent.stop(grace_s=5)
