"""Latency: measurement backends (twin, host, agent), the measurement store, sampling, surrogate."""
