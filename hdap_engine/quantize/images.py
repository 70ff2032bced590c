"""Calibration images of an INT8 model: the user's labelled data, or random inputs on request.

Calibration sets the activation ranges every INT8 layer clips to, so it must see
what the model will see: the images of ``--data``, preprocessed exactly as
evaluation preprocesses them (they come from `LabelledData.train`, never from
the held-out set the INT8 accuracy is measured on). Random inputs only fix the
ranges of a model whose data the engine never saw: good enough to time it (the
kernels, and so the latency, do not depend on the ranges), not to ship it.
"""

from __future__ import annotations

import numpy as np

from hdap_engine.errors import HdapError

RANDOM_WARNING = ("INT8 calibrated on random inputs (--calibrate-on random), not on images "
                  "of the task: its activation ranges are guesses and its accuracy is "
                  "unknown; calibrate on --data before shipping it")


def data_images(data, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` calibration images from ``data.train`` (stratified by class, seeded).

    Parameters
    ----------
    data:
        The study's `LabelledData`.
    n:
        Images wanted (all of ``data.train`` when it has fewer).
    seed:
        Seed of the choice.

    Returns
    -------
    (n, C, H, W) float32 images, preprocessed as for evaluation.
    """
    from hdap_engine.data.datasets import materialise, stratified_indices

    total = int(data.n_train)
    if total < 2:
        raise HdapError(f"{data.name}: INT8 calibration needs at least 2 images, the data has "
                        f"{total}; give more labelled images")
    idx = stratified_indices(np.asarray(data.train_labels), min(int(n), total), seed)
    images, _ = materialise(data.train, idx)
    return images.numpy().astype(np.float32, copy=False)


def random_images(input_shape, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` standard-normal inputs of ``input_shape`` (what normalised images look like).

    Parameters
    ----------
    input_shape:
        (C, H, W).
    n:
        How many (at least 2).
    seed:
        Seed of the draw.

    Returns
    -------
    (n, C, H, W) float32.
    """
    if n < 2:
        raise HdapError(f"INT8 calibration needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((int(n), *map(int, input_shape)), dtype=np.float32)
