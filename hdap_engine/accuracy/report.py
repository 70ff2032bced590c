"""The ``accuracy`` and ``preprocess`` blocks of ``report.json`` and of bench rows.

Accuracies are fractions 0..1 and ``null`` when not measured. ``metric`` says
what they are: ``top1`` for a classifier, ``map_50`` (mAP@.5) or ``map``
(mAP@[.5:.95]) for a detector, whose stage values are in the study's metric and
whose ``metrics`` holds both mAPs per stage (``{"map": {stage: v}, "map_50":
{stage: v}}``) with their bootstrap intervals in ``metrics_ci95`` where computed
(``ci95`` is the study metric's). ``unpruned``,
``pruned`` (right after pruning), ``finetuned`` and their ``ci95`` are on the
held-out set; ``calibrated`` is the candidate's top-1 after batch-norm
re-estimation, on the held-out set when it was evaluated there (the chosen
model is), otherwise on the calibration split, which ``calibrated_on`` says.
Without labelled data every accuracy is ``null`` and ``status`` says accuracy
is unknown, so nobody reads a missing number as a good one.

Public API
----------
``accuracy_block(data=None, *, unpruned=None, pruned=None, calibrated=None, finetuned=None,
n_calibration=None, calibrated_on="heldout", finetune=None, floor=None, surrogate=None,
metric="top1") -> dict``
    Each accuracy argument is an `Evaluation`, a `DetectionAccuracy`, a float, or ``None``.
``metric_label(block) -> str``: ``"top-1"``, ``"mAP@.5"`` or ``"mAP@[.5:.95]"``.
``with_stage(block, stage, x) -> dict``: a copy with one stage measured (value, interval,
a detector's both mAPs, status).
``stage_value(x, metric) -> float | None``: an `Evaluation`'s top-1 or a
`DetectionAccuracy`'s ``metric``.
``preprocess_block(data=None) -> dict | None``
``accuracy_summary(block) -> str``: one line for the CLI and the app.
``UNKNOWN``: the status line of a report without data.
"""

from __future__ import annotations

from hdap_engine.accuracy.detection import METRICS as DETECTION_METRICS
from hdap_engine.accuracy.detection import DetectionAccuracy
from hdap_engine.accuracy.evaluate import Evaluation

UNKNOWN = "unknown: no labelled data was given (--data), so accuracy was not measured"
STAGES = ("unpruned", "pruned", "calibrated", "finetuned")
# What a block's ``metric`` is called in tables and lines (one name per metric everywhere).
METRIC_LABELS = {"top1": "top-1", **DETECTION_METRICS}


def metric_label(block: dict | None) -> str:
    """How tables and lines name a block's metric: ``"top-1"`` (a classifier, or a block
    without a metric), ``"mAP@.5"`` (``map_50``) or ``"mAP@[.5:.95]"`` (``map``)."""
    return METRIC_LABELS.get((block or {}).get("metric") or "top1", "top-1")


def stage_value(x, metric: str = "top1") -> float | None:
    """A stage's value in ``metric``: an `Evaluation`'s top-1, a `DetectionAccuracy`'s
    mAP, a bare fraction as it is, None as None."""
    return _value(x, metric)


def _value(x, metric: str = "top1") -> float | None:
    if x is None:
        return None
    if isinstance(x, Evaluation):
        return float(x.top1)
    if isinstance(x, DetectionAccuracy):
        return x.metric(metric)
    return float(x)


def _ci(x, metric: str = "top1") -> list[float] | None:
    if isinstance(x, Evaluation):
        return [float(x.ci95[0]), float(x.ci95[1])]
    if isinstance(x, DetectionAccuracy):
        ci = x.map_50_interval if metric == "map_50" else x.map_interval
        return None if ci is None else [float(ci[0]), float(ci[1])]
    return None


def accuracy_block(data=None, *, unpruned=None, pruned=None, calibrated=None, finetuned=None,
                   n_calibration: int | None = None, calibrated_on: str = "heldout",
                   finetune: dict | None = None, floor: dict | None = None,
                   surrogate: dict | None = None, metric: str = "top1") -> dict:
    """The report's ``accuracy`` block.

    Parameters
    ----------
    data:
        The `LabelledData` used, or ``None`` (accuracy unknown).
    unpruned, pruned, calibrated, finetuned:
        `Evaluation` (value and interval), `DetectionAccuracy` (both mAPs and their
        intervals), a bare fraction (in ``metric``), or ``None``.
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
    metric:
        ``top1`` (a classifier), ``map_50`` or ``map`` (a detector): what the stage
        values are.

    Returns
    -------
    ``{dataset, classes, n_calibration, n_heldout, heldout, metric, unpruned, pruned,
    calibrated, finetuned, ci95: {stage: [low, high] | null}, top5, finetune: {epochs,
    seconds, teacher}, status, ...}``; a detector's also ``metrics: {map: {stage: v},
    map_50: {stage: v}}`` and ``metrics_ci95`` (same shape, intervals or null).
    """
    if metric not in METRIC_LABELS:
        raise ValueError(f"unknown accuracy metric {metric!r}")
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
        "metric": metric,
        **{s: _value(v, metric) for s, v in values.items()},
        "ci95": {s: _ci(v, metric) for s, v in values.items()},
        "top5": top5,
        "calibrated_on": calibrated_on if calibrated is not None else None,
        "finetune": ft,
        "status": ("measured: " + ", ".join(measured)) if measured else "not measured",
    }
    if metric in DETECTION_METRICS:
        # Both mAPs per stage: a bare fraction is only known in the study's metric.
        block["metrics"] = {m: {s: (_value(v, m) if isinstance(v, DetectionAccuracy)
                                    else (_value(v) if m == metric else None))
                                for s, v in values.items()} for m in DETECTION_METRICS}
        block["metrics_ci95"] = {m: {s: _ci(v, m) for s, v in values.items()}
                                 for m in DETECTION_METRICS}
    if getattr(data, "skipped", 0):
        block["skipped_images"] = int(data.skipped)
    if floor is not None:
        block["floor"] = floor
    if surrogate is not None:
        block["surrogate"] = surrogate
    return block


def with_stage(block: dict, stage: str, x) -> dict:
    """A copy of ``block`` with ``stage`` measured as ``x`` (an `Evaluation`, a
    `DetectionAccuracy`, or a fraction in the block's metric): its value, interval, a
    detector's both mAPs and the status line."""
    metric = block.get("metric") or "top1"
    out = dict(block)
    out[stage] = _value(x, metric)
    out["ci95"] = {**(block.get("ci95") or {}), stage: _ci(x, metric)}
    if block.get("metrics") is not None:
        out["metrics"] = {m: {**v, stage: (_value(x, m) if isinstance(x, DetectionAccuracy)
                                           else (out[stage] if m == metric else None))}
                          for m, v in block["metrics"].items()}
        out["metrics_ci95"] = {m: {**v, stage: _ci(x, m)}
                               for m, v in (block.get("metrics_ci95") or {}).items()}
    measured = [s for s in STAGES if out.get(s) is not None]
    out["status"] = ("measured: " + ", ".join(measured)) if measured else "not measured"
    return out


def preprocess_block(data=None) -> dict | None:
    """The report's ``preprocess`` block (``None`` without data, or for detection data,
    which the detector's own transform resizes and normalises)."""
    preprocess = getattr(data, "preprocess", None)
    return None if preprocess is None else preprocess.as_dict()


def exported_top1(block: dict | None) -> float | None:
    """Held-out accuracy of the exported model in the block's metric (`metric_label`):
    fine-tuned when it was, else after batch-norm re-estimation; None when accuracy is
    unknown (no labelled data)."""
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
    line = f"accuracy ({metric_label(block)}, {block.get('heldout')}): " + ", ".join(parts)
    other = _other_metric(block)
    if other:
        line += f"; {other}"
    floor = block.get("floor")
    if floor and floor.get("threshold") is not None:
        on_metric = "" if block.get("metric") in (None, "top1") else f" {metric_label(block)}"
        searched = "searched at uniform's " if floor.get("checked_on") == "finetuned" else ""
        line += (f"; floor {floor['text']} {searched}= {100 * floor['threshold']:.1f}% "
                 f"calibrated{on_metric} on {floor.get('on', 'the calibration split')}")
    if floor and floor.get("finetuned_met") is not None:
        line += (f"; fine-tuned {'meets' if floor['finetuned_met'] else 'does NOT meet'} "
                 f"the floor ({100 * floor['finetuned_threshold']:.1f}% held out)")
    return line


def _other_metric(block: dict) -> str | None:
    """A detector's second mAP per stage, e.g. ``mAP@[.5:.95] unpruned 70.2%, ...``."""
    metric = block.get("metric")
    metrics = block.get("metrics") or {}
    others = [m for m in metrics if m != metric]
    if not others:
        return None
    values = metrics[others[0]]
    parts = [f"{s} {100 * values[s]:.1f}%" for s in STAGES if values.get(s) is not None]
    return f"{METRIC_LABELS[others[0]]} " + ", ".join(parts) if parts else None
