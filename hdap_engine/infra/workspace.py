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


def save_upload(data: bytes, name: str, kind: str) -> Path:
    """Keep an uploaded file in the workspace, named by its content, and return its path.

    Runs record the path in their settings (plain JSON), and the same upload
    twice is one file.

    Parameters
    ----------
    data:
        The file's bytes.
    name:
        The name the user gave it (kept at the end of the stored name).
    kind:
        Sub-folder, e.g. ``"weights"``.

    Returns
    -------
    The stored file's path; `upload_label` gives back the name its user knows.
    """
    import hashlib
    import re

    digest = hashlib.sha256(data).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "upload"
    folder = home() / kind
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}-{safe}"
    write_once(path, data)
    return path


def write_once(path: Path, data: bytes) -> None:
    """Write content-addressed ``data`` to ``path`` unless it is there; readers never see
    half a file (written beside it, then renamed)."""
    if not path.is_file():
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)


def upload_label(path: str | Path | None) -> str:
    """A file as people know it: a `save_upload` copy (``<digest>-<name>``) by the name it
    was uploaded with, any other path as it is, nothing as ``"none"``."""
    import re

    if not path:
        return "none"
    match = re.fullmatch(r"[0-9a-f]{12}-(.+)", Path(str(path)).name)
    return match.group(1) if match else str(path)


def new_bundle_dir(label: str) -> Path:
    """A fresh folder path under ``$HDAP_HOME/bundles/`` for one run's export bundle."""
    import re
    import time
    import uuid

    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return home() / "bundles" / f"{stamp}-{safe}-{uuid.uuid4().hex[:6]}"
