"""Pruning spaces are built once per model and kept: in memory, and on disk in the workspace.

Building a space runs Torch-Pruning's dependency graph a few times and records
two forward passes: a second for ResNet-18, a minute for a large ViT, and
Torch-Pruning's grouping can run for many minutes on some models (ReXNet). So
a space is built once per model, input shape and library versions, and saved
under ``$HDAP_HOME/spaces/``; every later process (a job's worker, the app,
the CLI) reads it in milliseconds.

The six models the product ships with are built in-process (seconds). Any
other model is built in a child process with a time limit, so that a model
Torch-Pruning cannot group in reasonable time, or that crashes the
interpreter, is one clear error instead of a hang.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
import threading
import types
from pathlib import Path

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.infra.locks import TRACE_LOCK

FORMAT = 8  # bump when the saved layout or the meaning of a field changes
BUILD_TIMEOUT_S = float(os.environ.get("HDAP_SPACE_TIMEOUT", "900"))

_MEMORY: dict[str, object] = {}
_KEY_LOCKS: dict[str, threading.Lock] = {}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"format": str(FORMAT)}
    for dist in ("torch", "torchvision", "torch-pruning", "timm"):
        try:  # read from the installed metadata: importing timm alone takes ~2 s
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def cache_key(name: str) -> str:
    """The model, its input shape, its source file's hash (for a file) and versions."""
    from hdap_engine.models.zoo import get_spec

    spec = get_spec(name)
    ident = {"model": name, "input_shape": list(spec.input_shape), **_versions()}
    if spec.sha256:  # a file model: its source, not its path, is the model
        ident["source"] = spec.sha256
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _cache_dir() -> Path:
    from hdap_engine.infra.workspace import home

    return home() / "spaces"


def cached_space(name: str, *, timeout_s: float | None = None):
    """What the pruning space of ``name`` is made of: from memory, the workspace, or
    built now (`PruningSpace.for_model` wraps it)."""
    got = _MEMORY.get(name)
    if got is not None:
        return got
    with TRACE_LOCK:
        lock = _KEY_LOCKS.setdefault(name, threading.Lock())
    with lock:  # one build per model at a time; other models go on
        got = _MEMORY.get(name)
        if got is not None:
            return got
        path = _cache_dir() / f"{cache_key(name)}.npz"
        space = _read(path) if path.is_file() else None
        if space is None:
            if _in_process(name):
                with TRACE_LOCK:  # Torch-Pruning's tracing is not thread-safe
                    space = build_now(name)
                _write(space, path)
            else:
                _build_in_child(name, path, BUILD_TIMEOUT_S if timeout_s is None else timeout_s)
                space = _read(path)
                if space is None:
                    raise HdapError(f"{name}: the pruning space was built but cannot be read "
                                    f"back from {path}")
        _MEMORY[name] = space
        return space


def clear_memory() -> None:
    """Forget the spaces held in this process (the disk cache stays)."""
    _MEMORY.clear()


def _in_process(name: str) -> bool:
    from hdap_engine.models.zoo import get_spec

    return get_spec(name).source == "zoo"


def build_now(name: str):
    """Build the `SpaceData` of ``name`` in this process (no cache)."""
    from hdap_engine.models.detection import pruning_view
    from hdap_engine.models.zoo import build_model, get_spec
    from hdap_engine.pruning.build import build_space

    spec = get_spec(name)
    # A detector's space is its core's (backbone, FPN, heads) on the transformed input.
    model, example = pruning_view(build_model(name), spec)
    return build_space(name, model, example, spec.classifier, spec.input_shape)


def _child(name: str, path: str, conn) -> None:
    try:
        _write(build_now(name), Path(path))
        conn.send(None)
    except HdapError as exc:
        conn.send(str(exc))
    except MemoryError:
        conn.send("ran out of memory while building its pruning space")
    except Exception as exc:  # a model's own code can raise anything
        text = str(exc).strip().splitlines()
        conn.send(f"{type(exc).__name__}: {text[0][:200] if text else ''}")


@contextlib.contextmanager
def _main_of_this_process_only():
    """While a spawned child starts: hide a ``__main__`` that a framework swapped in.

    A spawned child re-runs its parent's ``__main__`` (so that a user's script that
    registers a model at its top level has it registered in the child too). Under
    Streamlit, ``__main__`` is the page script the server last ran, not the program
    this process started with: the child re-ran ``app/Home.py`` (importing Streamlit
    and running the page's top-level code) and, where the app's folder was not on its
    path (a test process after Streamlit's `AppTest`), died before building anything.
    Such a ``__main__`` (its file is not this process's ``sys.argv[0]``, and it was not
    run as a module) is replaced by a bare one until the child has started.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    by_name = getattr(getattr(main, "__spec__", None), "name", None)
    started_as = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if not path or by_name or os.path.abspath(path) == started_as:
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _build_in_child(name: str, path: Path, timeout_s: float) -> None:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, str(path), child), daemon=True)
    with _main_of_this_process_only():
        proc.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            raise HdapError(
                f"{name}: building its pruning space took longer than {timeout_s:.0f} s "
                "(Torch-Pruning's grouping of this model); set HDAP_SPACE_TIMEOUT to wait "
                "longer, or pick another model")
        try:
            error = parent.recv()
        except EOFError:
            proc.join(5)
            error = _died(proc.exitcode)
        if error:
            raise HdapError(f"{name}: cannot be pruned: {error}")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)


def _died(code: int | None) -> str:
    """Why the child building a space ended without an answer, as far as its exit says."""
    if code is not None and code < 0:  # killed by a signal: the kernel's OOM killer sends 9
        return (f"the process building its pruning space was killed (signal {-code}); the "
                "model may be too large for this machine's memory at this input shape")
    # A spawned child that fails while starting re-imports the caller's main module; a
    # script that builds a space at import time (no `__main__` guard) ends it this way.
    return (f"the process building its pruning space exited (code {code}) before answering; "
            "if this runs from your own script, put the script's code under "
            "`if __name__ == \"__main__\":` (the space is built in a spawned process)")


_STR_FIELDS = ("names", "op", "counted", "fn")


def _write(space, path: Path) -> None:
    lay = space.layers
    meta = {
        "model": space.model, "input_shape": list(space.input_shape),
        "groups": [[g.name, g.base, list(g.members), g.channel_groups, g.heads]
                   for g in space.groups],
        "kept": [list(k) for k in space.kept], "uncounted": list(space.uncounted),
        "model_params": int(space.model_params), "format": FORMAT,
    }
    arrays = {f: np.asarray(getattr(lay, f), dtype=str) for f in _STR_FIELDS}
    for f in _ARRAY_FIELDS:
        arrays[f] = np.asarray(getattr(lay, f))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)  # readers never see half a file


_ARRAY_FIELDS = ("kernel_h", "kernel_w", "stride", "h_in", "w_in", "h_out", "w_out",
                 "has_bias", "groups", "heads", "cin_fixed", "cin_coef", "cout_fixed",
                 "cout_coef")


def _read(path: Path):
    from hdap_engine.pruning.groups import Group
    from hdap_engine.pruning.rows import LayerRows, SpaceData

    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT:
                return None
            fields = {f: np.array(data[f].tolist(), dtype=object) for f in _STR_FIELDS}
            fields["names"] = tuple(data["names"].tolist())
            for f in _ARRAY_FIELDS:
                fields[f] = data[f].copy()
    except Exception:  # a stale or damaged cache file is rebuilt, not reported
        return None
    groups = tuple(Group(name=n, base=int(b), members=tuple(m), channel_groups=int(c),
                         heads=int(h)) for n, b, m, c, h in meta["groups"])
    return SpaceData(model=meta["model"], input_shape=tuple(meta["input_shape"]),
                     groups=groups, layers=LayerRows(**fields),
                     kept=tuple(tuple(k) for k in meta["kept"]),
                     uncounted=tuple(meta["uncounted"]), model_params=int(meta["model_params"]))
