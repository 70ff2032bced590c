"""Safe extraction of a dataset zip.

A zip from a user is untrusted: a member named ``../../x`` or ``/etc/x`` would
write outside the target folder ("zip slip"), a symbolic link would point
anywhere, and a few kilobytes can expand to terabytes (a zip bomb). Every
member is checked *before* anything is written, so a refused archive leaves
nothing behind, and extraction streams member by member while counting the
bytes actually written (the sizes in the central directory are the sender's
claim, not a fact).

Public API
----------
``extract_zip(path, dest=None, *, limits=ZipLimits()) -> Path``
    Extract into ``dest`` (default ``$HDAP_HOME/datasets/<sha256[:16]>/``) and
    return that folder; an archive already extracted there is reused.
``ZipLimits(max_total_bytes, max_members, max_ratio, ratio_floor_bytes)``
    What counts as absurd.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hdap_engine.errors import HdapError
from hdap_engine.infra.workspace import home

_DONE = ".hdap-extracted"


@dataclass(frozen=True)
class ZipLimits:
    """Limits on what a dataset zip may expand to.

    A compression ratio above ``max_ratio`` is refused only once the archive
    expands past ``ratio_floor_bytes``: small, highly compressible files (flat
    BMPs) are harmless; a bomb needs both a high ratio and a large size.
    """

    max_total_bytes: int = 16 * 1024**3
    max_members: int = 2_000_000
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 64 * 1024**2


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_members(zf: zipfile.ZipFile, label: str, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    """The members to extract, after refusing unsafe names, links and bombs."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise HdapError(f"{label}: {len(infos):,} members is more than the "
                        f"{limits.max_members:,} a dataset zip may hold; split the dataset")
    total = compressed = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (parts and ":" in parts[0]):
            raise HdapError(f"{label}: member {name!r} has an absolute path; nothing was "
                            "extracted. Zip the dataset folder with relative paths")
        if ".." in parts:
            raise HdapError(f"{label}: member {name!r} points outside the archive ('..'); "
                            "nothing was extracted. Zip the dataset folder with relative paths")
        mode = (info.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            raise HdapError(f"{label}: member {name!r} is a symbolic link; nothing was "
                            "extracted. Zip the image files themselves")
        total += info.file_size
        compressed += info.compress_size
    if total > limits.max_total_bytes:
        raise HdapError(f"{label}: the archive expands to {total / 1024**3:.1f} GiB, more than "
                        f"the {limits.max_total_bytes / 1024**3:.0f} GiB allowed; nothing was "
                        "extracted")
    if total > limits.ratio_floor_bytes and total > limits.max_ratio * max(compressed, 1):
        raise HdapError(f"{label}: the archive expands {total / max(compressed, 1):,.0f}x "
                        f"({compressed:,} bytes to {total:,}), which no image dataset does; "
                        "nothing was extracted (zip bomb?)")
    return infos


def extract_zip(path: str | Path, dest: str | Path | None = None, *,
                limits: ZipLimits = ZipLimits()) -> Path:
    """Extract a dataset zip safely.

    Parameters
    ----------
    path:
        The ``.zip`` file.
    dest:
        Target folder; default ``$HDAP_HOME/datasets/<sha256[:16]>/`` so that the
        same archive twice is extracted once.
    limits:
        What counts as an absurd archive.

    Returns
    -------
    The folder the archive was extracted into.
    """
    path = Path(path)
    label = path.name
    if not path.is_file():
        raise HdapError(f"{label}: dataset zip not found at {path}")
    if not zipfile.is_zipfile(path):
        raise HdapError(f"{label}: not a zip archive; give an ImageFolder directory, a .zip "
                        "of one, or 'digits'")
    if dest is None:
        dest = home() / "datasets" / file_sha256(path)[:16]
    dest = Path(dest)
    if (dest / _DONE).is_file():
        return dest
    try:
        with zipfile.ZipFile(path) as zf:
            infos = check_members(zf, label, limits)
            tmp = dest.with_name(dest.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            root = tmp.resolve()
            written = 0
            for info in infos:
                target = (tmp / info.filename).resolve()
                if root not in target.parents and target != root:
                    raise HdapError(f"{label}: member {info.filename!r} resolves outside the "
                                    "target folder; nothing was extracted")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        written += len(chunk)
                        if written > limits.max_total_bytes:
                            raise HdapError(f"{label}: the archive expands past the "
                                            f"{limits.max_total_bytes / 1024**3:.0f} GiB "
                                            "allowed; nothing was kept")
                        out.write(chunk)
    except HdapError:
        shutil.rmtree(dest.with_name(dest.name + ".part"), ignore_errors=True)
        raise
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        shutil.rmtree(dest.with_name(dest.name + ".part"), ignore_errors=True)
        raise HdapError(f"{label}: the zip could not be read ({exc}); re-create it") from None
    (tmp / _DONE).write_text("ok\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest
