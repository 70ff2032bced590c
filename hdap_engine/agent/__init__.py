"""Device agent: an HTTP server on a real edge device that times exported models, and its client.

- `server`: `AgentServer`, `AgentConfig`, `serve` (runs on the device; standard
  library + torch + optional onnxruntime).
- `measure`: the safety checks on an uploaded model, loading and timing.
- `client`: `AgentClient` and the typed errors a latency backend catches.
- `probe_fleet`: ``/probe`` of many agents into one telemetry file.
- `commands`: ``hdap agent serve | probe-fleet | measure``, also runnable as
  ``python -m hdap_engine.agent`` on a device.

Nothing is imported here, so that ``import hdap_engine.agent.server`` on a
device pulls in no more than the server needs.
"""
