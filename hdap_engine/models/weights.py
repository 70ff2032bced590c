"""Model weights from a user: a state dict read without running any code, loaded strictly.

A file is read with ``torch.load(..., weights_only=True)``, so no pickled code
from a user ever runs; a load that does not fit the architecture names what is
missing, unexpected or of another shape.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

from hdap_engine.errors import HdapError


def _weights_name(source) -> str:
    return ("uploaded weights" if isinstance(source, (bytes, bytearray))
            else Path(source).name)


def read_state_dict(source: str | os.PathLike | bytes, *, label: str | None = None) -> dict:
    """Load a state dict without executing any pickled code.

    Accepts a plain state dict or a checkpoint holding one under
    ``state_dict`` / ``model`` / ``model_state_dict``; strips a DataParallel
    ``module.`` prefix.
    """
    label = label or ("uploaded weights" if isinstance(source, (bytes, bytearray))
                      else Path(source).name)
    try:
        if isinstance(source, (bytes, bytearray)):
            obj = torch.load(io.BytesIO(source), map_location="cpu", weights_only=True)
        else:
            path = Path(source)
            if not path.is_file():
                raise HdapError(f"{label}: weights file not found at {path}")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except HdapError:
        raise
    except Exception as exc:  # torch raises many types for bad files
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        # Only "Unsupported global" means pickled Python objects; a corrupt or foreign
        # file also fails the weights-only unpickler ("Unsupported operand").
        if "Unsupported global" in str(exc):
            raise HdapError(
                f"{label}: the file contains Python objects other than tensors, and "
                "HDAP never unpickles code from a file; save a plain state dict with "
                "torch.save(model.state_dict(), path)"
            ) from None
        if "Unsupported operand" in str(exc) or "Weights only load failed" in first:
            first = "corrupt or not a PyTorch file"
        raise HdapError(
            f"{label}: not a readable PyTorch weights file ({first}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        raise HdapError(
            f"{label}: expected a state dict (names to tensors), got {type(obj).__name__}; "
            "save one with torch.save(model.state_dict(), path)"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, source, *, model_name: str = "model",
                 label: str | None = None) -> None:
    """Load a user state dict (a file, bytes, or an already-read dict) into ``model``
    strictly, with a clear message on mismatch."""
    if isinstance(source, dict):
        state, label = source, label or "weights"
    else:
        state = read_state_dict(source, label=label)
        label = label or _weights_name(source)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: file "
                         f"{tuple(state[k].shape)}, model {tuple(own[k].shape)})")
        raise HdapError(
            f"{label}: these weights do not fit {model_name}: {'; '.join(parts)}; "
            f"pick the model they were trained for"
        )
    model.load_state_dict(state)
