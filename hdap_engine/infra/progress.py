"""Progress of long work, one shape everywhere: a callable taking (stage, step, total).

The CLI prints it, the app's jobs write it to the job table, tests ignore it.
`stage` is a short word naming the step of the method at work ("measure",
"search", "verify", ...); `step` of `total` says how far that stage is.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def no_progress(stage: str, step: int, total: int) -> None:
    """The default `Progress`: report nothing."""


# Every stage the engine reports, with what it is doing in the user's words (the app's
# progress display reads these). A new stage is one entry here.
STAGES: dict[str, str] = {
    "fleet": "reading the fleet",
    "cluster": "clustering devices",
    "measure": "measuring candidates on cluster representatives",
    "fit": "training the latency surrogate",
    "search": "searching widths on the surrogate (generations)",
    "latency budget": "finding the MACs that meet the latency budget (on the surrogate)",
    "prune": "pruning the model with Torch-Pruning",
    "verify": "measuring the pruned and the unpruned model per cluster",
    "export": "exporting TorchScript, ONNX and torch.export",
    "compare": "pruning and measuring the other methods",
    "sweep": "budget sweep (searches and measurements)",
    "oracle": "searching on the twin's noiseless ground truth (the oracle)",
    "data": "reading the labelled data",
    "accuracy": "measuring accuracy (batch-norm re-estimation, held-out images)",
    "finetune": "fine-tuning by distillation from the unpruned model (epochs)",
}


def stage_text(stage: str) -> str:
    """What ``stage`` is doing in the user's words (its own name when not registered)."""
    return STAGES.get(stage, stage)
