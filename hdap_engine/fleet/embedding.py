"""A 2-D picture of the fleet for people: UMAP of the clustering's scaled features.

The embedding is never used for decisions (clusters come from
`hdap_engine.fleet.clustering`); it shows how the clusters sit relative to
each other. Large fleets are drawn from a sample stratified by cluster, so
that a cluster of 1 % of the devices still shows up; every cluster keeps at
least a few hundred points when it has them.

Speed: neighbours are found exactly with a k-d tree (the features are
low-dimensional) and handed to UMAP, which skips its approximate
neighbour search, and large samples get 100 optimisation epochs instead of
200 (the clusters are settled long before). The layout is seeded, so it is
deterministic (UMAP then runs single-threaded), and results are cached in
process by content. Numba compiles UMAP on first use (tens of seconds, then
cached on disk); `warm_up()` does that ahead of time.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from collections import OrderedDict

import numpy as np
import pandas as pd

from hdap_engine.fleet.clustering import Clustering
from hdap_engine.fleet.contract import ID_COLUMN
from hdap_engine.fleet.telemetry import Fleet
from hdap_engine.infra.locks import UMAP_LOCK, serialised

N_NEIGHBORS = 15
# Each cluster gets at least this many points in the sample (or all it has).
MIN_PER_CLUSTER = 200
_CACHE_SIZE = 8
_cache: OrderedDict[str, pd.DataFrame] = OrderedDict()
_cache_lock = threading.Lock()


def stratified_sample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Row positions of a sample of at most `max_points`, stratified by cluster.

    Each cluster gets points in proportion to its size, but at least
    ``min(size, MIN_PER_CLUSTER, max_points // k)``; positions are sorted.

    Parameters
    ----------
    labels:
        Cluster of every device.
    max_points:
        Largest sample size (>= 1).
    seed:
        Random seed.

    Returns
    -------
    Sorted int64 positions into `labels`.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    clusters, sizes = np.unique(labels, return_counts=True)
    floor = np.minimum(sizes, min(MIN_PER_CLUSTER, max_points // len(clusters)))
    quota = np.maximum(floor, np.floor(sizes / n * max_points).astype(np.int64))
    # Hand out what rounding left over, to the largest clusters first...
    for i in np.argsort(-sizes, kind="stable"):
        spare = max_points - int(quota.sum())
        if spare <= 0:
            break
        quota[i] += min(spare, int(sizes[i] - quota[i]))
    # ...or give back the excess from the clusters furthest above their floor.
    excess = int(quota.sum() - max_points)
    while excess > 0:
        i = int(np.argmax(quota - floor))
        take = min(excess, int(quota[i] - floor[i]))
        if take <= 0:
            break
        quota[i] -= take
        excess -= take
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
        for c, q in zip(clusters, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def embed(
    fleet: Fleet,
    clustering: Clustering,
    *,
    max_points: int = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """2-D UMAP embedding of (a stratified sample of) the fleet's devices.

    Parameters
    ----------
    fleet:
        The fleet that `clustering` was fitted on.
    clustering:
        A fitted `Clustering` (gives the scaled features and the clusters).
    max_points:
        Largest number of devices drawn.
    seed:
        Seed for the sample and the layout; same inputs give the same picture.

    Returns
    -------
    DataFrame with columns device_id, x, y, cluster and the fleet's context
    columns (for colouring), one row per sampled device in fleet order.
    ``attrs["method"]`` is "umap", or "pca" for fleets too small or too
    uniform for UMAP.
    """
    labels = np.asarray(clustering.labels_)
    if len(labels) != fleet.n_devices:
        raise ValueError("clustering was fitted on a different fleet (device counts differ)")
    key = _cache_key(fleet, clustering, max_points, seed)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _copy(_cache[key])

    rows = stratified_sample(labels, max_points, seed)
    sampled = fleet.subset(rows)
    features = clustering.transform(sampled)
    xy, method = _layout(features, seed)
    frame = sampled.frame
    out = pd.DataFrame(
        {
            ID_COLUMN: frame[ID_COLUMN].to_numpy(),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "cluster": labels[rows],
        }
    )
    for c in fleet.context_columns:
        out[c] = frame[c].to_numpy()
    out.attrs["method"] = method
    with _cache_lock:
        _cache[key] = out
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return _copy(out)


def warm_up() -> None:
    """Compile UMAP's numba kernels now (first use otherwise takes tens of seconds)."""
    rng = np.random.default_rng(0)
    _umap(rng.normal(size=(300, 4)), seed=0)


def clear_cache() -> None:
    """Forget cached embeddings."""
    with _cache_lock:
        _cache.clear()


def _copy(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.attrs = dict(frame.attrs)
    return out


def _cache_key(fleet: Fleet, clustering: Clustering, max_points: int, seed: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(fleet.fingerprint().encode())
    h.update(np.ascontiguousarray(clustering.labels_).tobytes())
    h.update(np.ascontiguousarray(clustering.centroids_).tobytes())
    h.update(repr((clustering.feature_names_, max_points, seed)).encode())
    return h.hexdigest()


def _layout(features: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    n = len(features)
    distinct = len(np.unique(np.round(features, 12), axis=0)) if n <= 50_000 else n
    if n < 4 * N_NEIGHBORS or distinct < 4:
        # UMAP needs neighbourhoods; a handful of devices is drawn by PCA.
        return _pca(features), "pca"
    return _umap(features, seed), "umap"


_numba_cache_lock = threading.Lock()
_numba_cache_on = False


def _enable_numba_cache() -> None:
    """Keep UMAP's compiled kernels on disk, so only the first process ever compiles them.

    umap-learn declares some 250 numba functions without ``cache=True``: every
    new process spent 7-12 s compiling them before its first layout (measured
    on the 2-core build machine). With caching switched on, later processes load
    them in about 0.3 s. Numba writes the cache next to the sources, or under
    ``NUMBA_CACHE_DIR`` / the user's cache folder when those are read-only; a
    function that cannot be cached is compiled as before.
    """
    global _numba_cache_on
    with _numba_cache_lock:
        if _numba_cache_on:
            return
        import sys

        from numba.core.caching import NullCache
        from numba.core.registry import CPUDispatcher

        for name, module in list(sys.modules.items()):
            if module is None or name.split(".")[0] not in ("umap", "pynndescent"):
                continue
            for obj in list(vars(module).values()):
                if isinstance(obj, CPUDispatcher) and isinstance(obj._cache, NullCache):
                    with contextlib.suppress(Exception):
                        obj.enable_caching()
        _numba_cache_on = True


@serialised(UMAP_LOCK)  # sessions of the app call it from their threads at once
def _umap(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors
    from umap import UMAP

    _enable_numba_cache()
    n = len(features)
    k = min(N_NEIGHBORS, n - 1)
    dist, idx = NearestNeighbors(n_neighbors=k).fit(features).kneighbors(features)
    with warnings.catch_warnings():
        # "n_jobs overridden by random_state" and numba chatter: expected.
        warnings.simplefilter("ignore")
        model = UMAP(
            n_components=2,
            n_neighbors=k,
            random_state=seed,
            n_epochs=100 if n > 10_000 else 200,
            # PCA start: deterministic, and faster than the spectral one when
            # clusters are far apart (disconnected neighbour graph).
            init="pca",
            precomputed_knn=(idx, dist, None),
        )
        xy = model.fit_transform(features)
    return np.asarray(xy, dtype=np.float64)


def _pca(features: np.ndarray) -> np.ndarray:
    centred = features - features.mean(axis=0)
    out = np.zeros((len(features), 2))
    if len(features) < 2 or not np.any(centred):
        return out
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:2].T
    out[:, : proj.shape[1]] = proj
    # Fix the sign of each axis so that the picture does not flip between runs.
    signs = np.sign(out[np.argmax(np.abs(out), axis=0), [0, 1]])
    signs[signs == 0] = 1
    return out * signs


__all__ = ["clear_cache", "embed", "stratified_sample", "warm_up"]
