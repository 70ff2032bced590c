"""The ``accuracy`` and ``preprocess`` blocks of ``report.json`` and of bench rows.

Accuracies are fractions 0..1 and ``null`` when not measured. ``unpruned``,
``pruned`` (right after pruning), ``finetuned`` and their ``ci95`` are on the
held-out set; ``calibrated`` is the candidate's top-1 after batch-norm
re-estimation, on the held-out set when it was evaluated there (the chosen
model is), otherwise on the calibration split, which ``calibrated_on`` says.
Without labelled data every accuracy is ``null`` and ``status`` says accuracy
is unknown, so nobody reads a missing number as a good one.

Public API
----------
``accuracy_block(data=None, *, unpruned=None, pruned=None, calibrated=None, finetuned=None,
n_calibration=None, calibrated_on="heldout", finetune=None, floor=None, surrogate=None)
-> dict``
    Each accuracy argument is an `Evaluation`, a float, or ``None``.
``preprocess_block(data=None) -> dict | None``
``accuracy_summary(block) -> str``: one line for the CLI and the app.
``UNKNOWN``: the status line of a report without data.
"""

from __future__ import annotations

from hdap_engine.accuracy.evaluate import Evaluation

UNKNOWN = "unknown: no labelled data was given (--data), so accuracy was not measured"
STAGES = ("unpruned", "pruned", "calibrated", "finetuned")


def _value(x) -> float | None:
    if x is None:
        return None
    if isinstance(x, Evaluation):
        return float(x.top1)
    return float(x)


def _ci(x) -> list[float] | None:
    return [float(x.ci95[0]), float(x.ci95[1])] if isinstance(x, Evaluation) else None


def accuracy_block(data=None, *, unpruned=None, pruned=None, calibrated=None, finetuned=None,
                   n_calibration: int | None = None, calibrated_on: str = "heldout",
                   finetune: dict | None = None, floor: dict | None = None,
                   surrogate: dict | None = None) -> dict:
    """The report's ``accuracy`` block.

    Parameters
    ----------
    data:
        The `LabelledData` used, or ``None`` (accuracy unknown).
    unpruned, pruned, calibrated, finetuned:
        `Evaluation` (value and interval), a bare fraction, or ``None``.
    n_calibration:
        Images used for batch-norm re-estimation and calibrated scoring.
    calibrated_on:
        ``"heldout"`` or ``"calibration"``: where ``calibrated`` was measured.
    finetune:
        ``{epochs, seconds, teacher}`` of the fine-tuning, or ``None``.
    floor:
        The search's accuracy floor (``AccuracyFloor.as_dict()`` plus its threshold).
    surrogate:
        The accuracy surrogate's held-out report.

    Returns
    -------
    ``{dataset, classes, n_calibration, n_heldout, heldout, metric, unpruned, pruned,
    calibrated, finetuned, ci95: {stage: [low, high] | null}, top5, finetune: {epochs,
    seconds, teacher}, status, ...}``.
    """
    values = dict(zip(STAGES, (unpruned, pruned, calibrated, finetuned), strict=True))
    ft = {"epochs": None, "seconds": None, "teacher": None}
    if finetune:
        ft.update({k: finetune.get(k) for k in ft})
    if data is None:
        block = {"dataset": None, "classes": None, "n_calibration": None, "n_heldout": None,
                 "heldout": None, "metric": None, **{s: None for s in STAGES},
                 "ci95": {s: None for s in STAGES}, "top5": None, "finetune": ft,
                 "status": UNKNOWN}
        return block
    top5 = {s: float(v.top5) for s, v in values.items()
            if isinstance(v, Evaluation) and v.top5 is not None} or None
    measured = [s for s in STAGES if values[s] is not None]
    block = {
        "dataset": data.name,
        "classes": data.num_classes,
        "n_calibration": None if n_calibration is None else int(n_calibration),
        "n_heldout": data.n_heldout,
        "heldout": data.describe_heldout(),
        "metric": "top1",
        **{s: _value(v) for s, v in values.items()},
        "ci95": {s: _ci(v) for s, v in values.items()},
        "top5": top5,
        "calibrated_on": calibrated_on if calibrated is not None else None,
        "finetune": ft,
        "status": ("measured: " + ", ".join(measured)) if measured else "not measured",
    }
    if data.skipped:
        block["skipped_images"] = int(data.skipped)
    if floor is not None:
        block["floor"] = floor
    if surrogate is not None:
        block["surrogate"] = surrogate
    return block


def preprocess_block(data=None) -> dict | None:
    """The report's ``preprocess`` block (``None`` without data)."""
    return None if data is None else data.preprocess.as_dict()


def exported_top1(block: dict | None) -> float | None:
    """Held-out top-1 of the exported model: fine-tuned when it was, else after batch-norm
    re-estimation; None when accuracy is unknown (no labelled data)."""
    acc = block or {}
    return acc.get("finetuned") if acc.get("finetuned") is not None else acc.get("calibrated")


def accuracy_summary(block: dict | None) -> str:
    """One line: the held-out accuracies of a report's accuracy block, or that it is unknown."""
    if not block or block.get("unpruned") is None:
        return "accuracy: " + ((block or {}).get("status") or "unknown")

    def pct(stage):
        v = block.get(stage)
        ci = (block.get("ci95") or {}).get(stage)
        if v is None:
            return None
        return f"{stage} {100 * v:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
                                            if ci else "")

    parts = [p for p in (pct(s) for s in ("unpruned", "pruned", "calibrated", "finetuned")) if p]
    line = f"accuracy (top-1, {block.get('heldout')}): " + ", ".join(parts)
    floor = block.get("floor")
    if floor and floor.get("threshold") is not None:
        line += (f"; floor {floor['text']} = {100 * floor['threshold']:.1f}% calibrated on "
                 f"{floor.get('on', 'the calibration split')}")
    return line
