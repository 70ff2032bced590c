"""Checkpoints of a training run: everything needed to continue it exactly.

One file, rewritten after every epoch: the model, the optimiser (momentum buffers),
the schedule, the random states, the epochs done, the history so far and what run
it belongs to. It is written to a temporary file and renamed, so a process killed
while saving leaves the previous epoch's checkpoint intact. It is read back with
``weights_only=True``: plain tensors and numbers, no pickled code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from hdap_engine.errors import HdapError

FORMAT = "hdap-train-checkpoint/1"


def rng_states() -> dict:
    """The random states of torch, NumPy and Python (tensors and plain lists only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "python": [version, list(state), gauss],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` saved."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(path: Path, payload: dict) -> None:
    """Write ``payload`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    """Read a checkpoint; a foreign or damaged file is a user error."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise HdapError(f"{path}: not a readable checkpoint ({type(exc).__name__}); "
                        "start over without --resume") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise HdapError(f"{path}: not an HDAP training checkpoint; start over without --resume")
    return obj
