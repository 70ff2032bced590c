"""What a search measures for and has learned: its devices, earlier studies' measurements
(a warm start) and the record of what was measured (`Learned`), never changed in place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SearchDevices:
    """The devices a method measures, and how their latency stands for each cluster.

    ``lab_device``: one device (the representative of the largest cluster)
    stands for every cluster, as when a model is tuned on one lab device.
    """

    ids: tuple[str, ...]
    clusters: np.ndarray  # (D,) cluster of each device
    features: np.ndarray  # (D, p) probe vector (ms) of each device
    k: int  # clusters of the fleet
    lab_device: bool = False

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Prior:
    """Earlier studies' measurements (warm start): other devices of the same model and SKU.

    They train the surrogate next to the study's own, each device entering
    through its probe vector; they are never counted as this study's measurements.
    """

    widths: np.ndarray  # (N0, G)
    ms: np.ndarray  # (N0, D0) median latency, NaN where a device did not measure a candidate
    features: np.ndarray  # (D0, p) probe vector (ms) of each earlier device
    studies_devices: int = 0  # devices they came from

    @property
    def pairs(self) -> int:
        return int(np.isfinite(self.ms).sum())


@dataclass(frozen=True)
class Learned:
    """What has been measured and learned: training candidates, latencies, surrogate, counts.

    ``device_measurements`` counts the (device, candidate) pairs asked for so
    far, the sampling included, and ``device_s`` the seconds of timing they
    cost on the devices; ``timing_drift`` is the largest speed ratio between
    measurement batches (real hardware only). ``settled`` clusters get no
    further learning batches: their latencies are predicted within the noise;
    ``known`` clusters (a warm start found their devices in earlier studies)
    are not measured at all; ``repeats`` are the timed
    runs per measurement of each search device (adaptive repeats; None: the
    study's fixed count); ``stop`` is the sequential measurement's record.
    """

    widths: np.ndarray  # (N, G)
    ms: np.ndarray  # (N, D) median latency on the search devices
    surrogate: object  # hdap_engine.latency.surrogate.Surrogate
    device_measurements: int
    timing_drift: float = 1.0
    notes: tuple[str, ...] = ()
    device_s: float = 0.0
    settled: tuple[int, ...] = ()
    known: tuple[int, ...] = ()  # clusters a warm start matched to earlier devices: never measured
    repeats: tuple[int, ...] | None = None
    run_sigma: tuple[float, ...] | None = None  # each search device's relative run spread
    prior: Prior | None = None
    stop: dict | None = None
    # (device, candidate) pairs measured on each search device, samples to polish: what
    # shows that re-optimising after fleet drift measured only the clusters that moved.
    device_pairs: tuple[int, ...] | None = None

    def cluster_pairs(self, clusters: np.ndarray, k: int) -> dict[int, int]:
        """Pairs measured on each cluster's devices (``clusters``: each search device's)."""
        pairs = np.zeros(len(clusters), dtype=np.int64) if self.device_pairs is None \
            else np.asarray(self.device_pairs, dtype=np.int64)
        return {c: int(pairs[np.asarray(clusters) == c].sum()) for c in range(k)}
