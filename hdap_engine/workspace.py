"""The workspace folder: where the store, caches and run history live.

``HDAP_HOME`` names it; by default it is ``.hdap/`` in the working directory,
so a team sharing a folder shares measurements and history.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The workspace folder, created on first use."""
    path = Path(os.environ.get("HDAP_HOME") or ".hdap").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
