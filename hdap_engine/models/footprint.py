"""How much memory a model needs at its input shape, and whether this machine has it.

A model is built and run once on the meta device (shapes only, no memory):
the parameters and every layer's output are counted, and the need is
estimated as 4 bytes x (3 x parameters + 2 x activations): the model, a
pruned copy and a state dict, plus a forward pass's outputs kept by the
shape-propagating trace and the one being computed. It is compared with the
memory the kernel says is available (``MemAvailable`` of /proc/meminfo), so a
model that would be killed by the kernel half-way through a study is refused
first, with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hdap_engine.errors import HdapError
from hdap_engine.models.spec import shape_text

BYTES = 4  # float32
PARAM_COPIES = 3
ACTIVATION_COPIES = 2


@dataclass(frozen=True)
class Probe:
    """One forward pass, observed: its output and what ran."""

    output: object
    activations: int  # elements of every leaf module's output, summed
    executed: tuple[str, ...]  # leaf modules in the order they ran


def probe_forward(model, example) -> Probe:
    """Run ``model`` once on ``example`` (any device, meta included) and observe it."""
    import torch

    executed: list[str] = []
    total = [0]

    def hook(name):
        def record(_module, _inputs, output):
            executed.append(name)
            outs = output if isinstance(output, (tuple, list)) else (output,)
            total[0] += sum(int(o.numel()) for o in outs if isinstance(o, torch.Tensor))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if n and not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    return Probe(output=out, activations=total[0], executed=tuple(executed))


def available_bytes() -> int | None:
    """Memory available to a new allocation (MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def need_bytes(params: int, activations: int) -> int:
    return BYTES * (PARAM_COPIES * int(params) + ACTIVATION_COPIES * int(activations))


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n < 1e12 else f"{n / 1e12:.1f} TB"


def check_fits(label: str, input_shape, params: int, activations: int,
               available: int | None = None) -> None:
    """Refuse a model whose estimated need exceeds the available memory (one line)."""
    have = available if available is not None else available_bytes()
    need = need_bytes(params, activations)
    if have is not None and need > have:
        raise HdapError(
            f"{label} at input {shape_text(input_shape)} needs about {_gb(need)} of memory "
            f"({params / 1e6:.1f} M parameters, {activations / 1e6:.0f} M activation values) "
            f"and this machine has {_gb(have)} available; give a smaller --input-shape or "
            "run on a larger machine")


def meta_footprint(builder, input_shape) -> tuple[int, int | None]:
    """(parameters, activation values) of ``builder()`` at ``input_shape``, from a build and a
    forward on the meta device; activations are None when the model cannot run there."""
    import torch

    with torch.device("meta"):
        model = builder()
    params = sum(int(p.numel()) for p in model.parameters())
    try:
        probe = probe_forward(model.eval(), torch.empty((1, *input_shape), device="meta"))
    except Exception:  # data-dependent code cannot run on shapes alone
        return params, None
    return params, probe.activations
