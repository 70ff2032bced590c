"""Plain JSON for reports, the store and the CLI: strict JSON, whatever numpy hands us."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def jsonable(obj):
    """Plain JSON data: numpy values unwrapped, NaN and infinities as null (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
