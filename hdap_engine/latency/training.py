"""Fitting the latency surrogate on what was measured, once per training set.

`SurrogateTrainer` is what the search calls to (re)fit the surrogate after
it measured more candidates: the store keeps every surrogate under a hash of
exactly what it was trained on, so the same measurements never train twice
(a what-if run, a second study, or a teammate's run of the same fleet loads it).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from hdap_engine.latency.prior import TwinPrior
from hdap_engine.latency.store import Store
from hdap_engine.latency.surrogate import Surrogate
from hdap_engine.options import SurrogatePlan
from hdap_engine.pruning.space import PruningSpace


@dataclass(frozen=True)
class SurrogateTrainer:
    """Fits (or loads) the surrogate of one space and set of devices.

    Parameters
    ----------
    space:
        The pruning space.
    store:
        Where trained surrogates are kept.
    backend_name:
        The backend the latencies come from (part of the key).
    features:
        (D, p) probe vector of every measured device.
    clusters:
        (D,) cluster of every measured device.
    options:
        `SurrogatePlan`.
    twin_prior:
        The `TwinPrior` under the surrogate's linear base, or None.
    """

    space: PruningSpace
    store: Store
    backend_name: str
    features: np.ndarray
    clusters: np.ndarray
    options: SurrogatePlan
    twin_prior: TwinPrior | None = None

    def fit(self, widths: np.ndarray, latency_ms: np.ndarray, prior=None) -> Surrogate:
        """Train on (widths, latency_ms), or load the surrogate already trained on them.

        ``prior`` (`hdap_engine.search.learned.Prior`, a warm start) adds
        earlier studies' devices as more columns, their candidates as more rows
        (NaN where a device did not measure a candidate) and cluster -1: they
        teach the shared model, and the held-out report covers this study's
        clusters only.
        """
        features, clusters = self.features, np.asarray(self.clusters)
        widths = np.asarray(widths)
        latency_ms = np.asarray(latency_ms, dtype=np.float64)
        if prior is not None and prior.pairs:
            n, d = latency_ms.shape
            n0, d0 = prior.ms.shape
            block = np.full((n + n0, d + d0), np.nan)
            block[:n, :d] = latency_ms
            block[n:, d:] = prior.ms
            widths = np.vstack([widths, prior.widths])
            latency_ms = block
            features = np.vstack([features, prior.features])
            clusters = np.concatenate([clusters, np.full(d0, -1)])
        key_src = (self.backend_name + self.space.model + str(self.space.round_to)
                   + str(sorted(asdict(self.options).items()))
                   + str(self.twin_prior.to_dict() if self.twin_prior else "")
                   # Surrogates stored before the tree weight (`Surrogate.tree_weight_`)
                   # are fitted again.
                   + "tree-weight").encode()
        h = hashlib.sha256(key_src + np.asarray(widths).tobytes()
                           + np.nan_to_num(latency_ms).tobytes()
                           + np.log(features).tobytes()
                           + np.asarray(clusters).tobytes())
        key = f"{self.space.model}:{h.hexdigest()[:24]}"
        stored = self.store.get_surrogate(key)
        if stored is not None:
            return Surrogate.from_bytes(self.space, stored[1])
        sur = Surrogate(self.space, self.options, self.twin_prior).fit(widths, latency_ms, features, clusters)
        self.store.put_surrogate(key, {"model": self.space.model, "report": sur.report_,
                                       "training_hash": sur.training_hash_}, sur.to_bytes())
        return sur
