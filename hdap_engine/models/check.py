"""Can this model be pruned? One line, from a child process with a time limit (`hdap models --check`).

The check does what a study would: build the model, build its
`PruningSpace`, prune the uniform candidate at 50 % of the MACs with
`prune_to_widths`, and run one forward pass of the pruned model. It runs in a
child process (``python -m hdap_engine.models.check KEY``) because
Torch-Pruning can take minutes, or hang, on some graphs (timm's ReXNet spends
over 600 s in ``get_all_groups``): the child is killed at the time limit and
the answer is one line naming the model, the stage it reached and the reason.
The child reports each stage as it starts, so a time-out still says where.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from hdap_engine.errors import HdapError

DEFAULT_TIMEOUT_S = 300.0
STAGES = {"build": "building the model", "space": "building the pruning space",
          "prune": "pruning the uniform 50 % candidate",
          "forward": "running the pruned model"}
_STAGE = "stage:"
_RESULT = "result:"


@dataclass(frozen=True)
class CheckResult:
    """The answer of `check_model`: whether the model can be pruned, and the line that says so."""

    model: str
    ok: bool
    line: str
    stage: str  # the last stage reached (a key of STAGES)
    seconds: float


def check_model(name: str, *, input_shape=None, timeout_s: float = DEFAULT_TIMEOUT_S,
                round_to: int = 8) -> CheckResult:
    """Whether ``name`` can be pruned, checked in a child process killed after ``timeout_s``.

    The name is resolved here first (`resolve_model`), so an unknown name, a
    missing file or a bad input shape is an `HdapError` at once.
    """
    from hdap_engine.models.zoo import resolve_model

    if not timeout_s or timeout_s <= 0:
        raise HdapError(f"--timeout must be a positive number of seconds, got {timeout_s}")
    key = resolve_model(name, input_shape).key
    cmd = [sys.executable, "-m", "hdap_engine.models.check", key, "--round-to", str(round_to)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (_root(), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        out, err, timed_out = proc.stdout, proc.stderr, False
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, timed_out = "", True
    seconds = time.perf_counter() - t0
    stage = "build"
    for line in out.splitlines():
        if line.startswith(_STAGE):
            stage = line[len(_STAGE):].strip()
        elif line.startswith(_RESULT):
            doc = json.loads(line[len(_RESULT):])
            return CheckResult(key, bool(doc["ok"]), doc["line"], stage, seconds)
    if timed_out:
        reason = f"no answer within {timeout_s:g} s while {STAGES.get(stage, stage)}"
    else:
        tail = [x for x in err.strip().splitlines() if x.strip()]
        reason = (f"the check process stopped while {STAGES.get(stage, stage)} "
                  f"({tail[-1][:200] if tail else f'exit code {proc.returncode}'})")
    return CheckResult(key, False, f"{key}: cannot be pruned: {reason}", stage, seconds)


def _root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])


def _exc(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else ""
    where = type(exc).__module__.split(".")[0]
    if isinstance(exc, HdapError):
        return text.split(": cannot be pruned: ", 1)[-1]  # already says what and where
    kind = type(exc).__name__ if where == "builtins" else f"{type(exc).__name__} in {where}"
    return f"{kind}: {text}" if text else kind


def _tp_frame(exc: BaseException) -> bool:
    """True when the exception was raised inside Torch-Pruning."""
    tb = exc.__traceback__
    found = False
    while tb is not None:
        found = found or "torch_pruning" in tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return found


def cannot_prune(key: str, exc: BaseException, stage: str) -> str:
    """The one line for a model that failed at ``stage`` (a key of STAGES) with ``exc``:
    the model, the reason (the layer, where the message names it) and the stage."""
    lib = " (Torch-Pruning)" if _tp_frame(exc) else ""
    return f"{key}: cannot be pruned: {_exc(exc)}{lib} while {STAGES.get(stage, stage)}"


def run_check(key: str, round_to: int = 8) -> tuple[bool, str]:
    """The check itself, in this process: (ok, the one line). Prints each stage as it starts."""
    import torch

    from hdap_engine.models.zoo import build_model, get_spec
    from hdap_engine.pruning.apply import prune_to_widths
    from hdap_engine.pruning.budget import format_macs
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.search.baselines import uniform_widths

    def stage(name: str) -> None:
        print(f"{_STAGE} {name}", flush=True)

    current = "build"
    t0 = time.perf_counter()
    try:
        stage(current)
        spec = get_spec(key)
        model = build_model(key)
        current = "space"
        stage(current)
        space = PruningSpace.for_model(key, round_to=round_to)
        current = "prune"
        stage(current)
        widths = uniform_widths(space, 0.5 * space.base_macs)
        prune_to_widths(model, space, widths)
        current = "forward"
        stage(current)
        with torch.no_grad():
            out = model.eval()(spec.example_input())
        if spec.task == "detection":
            from hdap_engine.models.detection import check_detections

            check_detections(out, "the pruned detector")
        elif not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, spec.num_classes):
            raise HdapError(f"the pruned model gives {getattr(out, 'shape', type(out))}, not "
                            f"(1, {spec.num_classes})")
    except Exception as exc:
        return False, cannot_prune(key, exc, current)
    macs = space.macs(widths)
    what = " (detector core: backbone, FPN, heads)" if spec.task == "detection" else ""
    boxes = " and gives boxes" if what else ""
    return True, (f"{key}: can be pruned{what}: {space.n_groups} groups, "
                  f"{format_macs(space.base_macs)} -> {format_macs(macs)} MACs at the uniform "
                  f"50 % candidate, the pruned model runs{boxes} "
                  f"({time.perf_counter() - t0:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import warnings

    p = argparse.ArgumentParser(prog="python -m hdap_engine.models.check")
    p.add_argument("key")
    p.add_argument("--round-to", type=int, default=8)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")  # the answer is one line; library notes are noise here
    ok, line = run_check(args.key, args.round_to)
    print(_RESULT + json.dumps({"ok": ok, "line": line}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
