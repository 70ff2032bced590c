"""Fleet: telemetry loading and validation, the device twin, simulation, probes, clustering."""
