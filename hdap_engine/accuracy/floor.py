"""Accuracy floors: how much calibrated accuracy a candidate must keep.

Accepted forms of ``--min-accuracy`` (all relative to the *unpruned* model's
calibrated accuracy, measured the same way, so the comparison is like with like):

- ``0.9``: a fraction in (0, 1] of the unpruned accuracy (the HDAP paper's rule);
- ``95%``: the same as a percentage (0.95);
- ``-2pt``: at most 2 percentage points below the unpruned accuracy;
- ``uniform``: at least the calibrated accuracy of the uniform architecture at
  the same budget (never less accurate than the baseline everyone uses).

The floor is metric-agnostic: ``unpruned`` and ``uniform`` are fractions of
whatever the study measures, top-1 for a classifier or mAP for a detector
(``metric``, default top-1's wording; ``METRIC_NAMES`` holds the detection ones),
so ``95%`` of a detector is 95 % of the unpruned detector's calibrated mAP and
``-2pt`` is two mAP points. Only the wording of messages names the metric.

Anything else, or a fraction outside (0, 1], is one `HdapError`. When no
sampled candidate meets the floor at the budget, `check_reachable` says which
floor the budget allows (the best sampled candidate's) instead of running an
empty search.

Public API
----------
``parse_floor(text) -> AccuracyFloor | None`` (``None`` / ``""`` / ``"none"``: no floor)
``AccuracyFloor(kind, value, text)``: ``.threshold(unpruned, uniform=None) -> float``,
``.describe(metric=...) -> str``, ``.as_dict(metric=...)``
``check_reachable(floor, threshold, best, unpruned, budget_label, *, metric=...) -> None``
``finetuned_check(floor, unpruned, finetuned) -> dict``: a report's floor checked on the
fine-tuned model (held-out), ``{finetuned_threshold, finetuned_met}``.
``METRIC_NAMES``: how messages name each metric (``top1``, ``map``, ``map_50``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hdap_engine.errors import HdapError

KINDS = ("fraction", "points", "uniform")
# The metric a floor is measured on -> how messages name it (calibrated, like the floor).
METRIC_NAMES = {"top1": "calibrated accuracy", "map": "calibrated mAP@[.5:.95]",
                "map_50": "calibrated mAP@.5"}
_FORMS = ("use a fraction of the unpruned model's accuracy in (0, 1] (e.g. 0.9), a "
          "percentage (95%), a drop in points (-2pt) or 'uniform'")


@dataclass(frozen=True)
class AccuracyFloor:
    """A parsed floor.

    ``kind`` is ``"fraction"`` (``value`` in (0, 1]), ``"points"`` (``value``: the
    allowed drop as a fraction, 0.02 for ``-2pt``) or ``"uniform"`` (``value`` None).
    """

    kind: str
    value: float | None
    text: str

    def threshold(self, unpruned: float, uniform: float | None = None) -> float:
        """The calibrated accuracy a candidate needs.

        Parameters
        ----------
        unpruned:
            Calibrated top-1 of the unpruned model.
        uniform:
            Calibrated top-1 of the uniform architecture at the budget (needed
            for ``uniform``).

        Returns
        -------
        A fraction.
        """
        if self.kind == "fraction":
            return float(self.value) * float(unpruned)
        if self.kind == "points":
            return float(unpruned) - float(self.value)
        if uniform is None:
            raise ValueError("the 'uniform' floor needs the uniform architecture's accuracy")
        return float(uniform)

    def describe(self, metric: str = "top1") -> str:
        """The rule in words, naming ``metric`` (a key of ``METRIC_NAMES``)."""
        name = _metric_name(metric)
        if self.kind == "fraction":
            return f"{self.value:g} of the unpruned model's {name}"
        if self.kind == "points":
            return f"at most {100 * self.value:g} points below the unpruned model's"
        return f"at least the uniform architecture's {name} at the budget"

    def as_dict(self, metric: str = "top1") -> dict:
        out = {"text": self.text, "kind": self.kind, "value": self.value,
               "rule": self.describe(metric)}
        if metric != "top1":
            out["metric"] = metric
        return out


def _metric_name(metric: str) -> str:
    if metric not in METRIC_NAMES:
        raise HdapError(f"an accuracy floor is measured on one of {', '.join(METRIC_NAMES)}, "
                        f"not {metric!r}")
    return METRIC_NAMES[metric]


def parse_floor(text) -> AccuracyFloor | None:
    """Parse ``--min-accuracy``.

    Parameters
    ----------
    text:
        ``"0.9"``, ``"95%"``, ``"-2pt"``, ``"uniform"``, a float, or ``None`` /
        ``""`` / ``"none"`` for no floor.

    Returns
    -------
    `AccuracyFloor`, or ``None`` for no floor.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        raw = repr(float(text))
    else:
        raw = str(text).strip()
    s = raw.lower().replace(" ", "")
    if s in ("", "none", "off"):
        return None
    if s == "uniform":
        return AccuracyFloor("uniform", None, raw)
    m = re.fullmatch(r"-(\d+(?:\.\d+)?)(?:pt|pts|point|points|pp)", s)
    if m:
        drop = float(m.group(1))
        if not 0 < drop <= 100:
            raise HdapError(f"--min-accuracy {raw!r}: a drop must be more than 0 and at most "
                            f"100 points; {_FORMS}")
        return AccuracyFloor("points", drop / 100.0, raw)
    m = re.fullmatch(r"(\d+(?:\.\d+)?|\.\d+)%", s)
    if m:
        value = float(m.group(1)) / 100.0
    else:
        try:
            value = float(s)
        except ValueError:
            raise HdapError(f"--min-accuracy {raw!r} is not an accepted floor; {_FORMS}") from None
    if not math.isfinite(value) or not 0 < value <= 1:
        raise HdapError(f"--min-accuracy {raw!r} is outside (0, 1]; {_FORMS}")
    return AccuracyFloor("fraction", value, raw)


def check_reachable(floor: AccuracyFloor, threshold: float, best: float, unpruned: float,
                    budget_label: str, *, metric: str = "top1") -> None:
    """Refuse a floor that no sampled candidate meets, naming the floor the budget allows.

    Parameters
    ----------
    floor:
        The parsed floor.
    threshold:
        Its calibrated accuracy (`AccuracyFloor.threshold`).
    best:
        The best calibrated accuracy among the candidates sampled at the budget.
    unpruned:
        The unpruned model's calibrated accuracy.
    budget_label:
        The budget as the user wrote it (for the message).
    metric:
        What the accuracies are (``top1``, ``map``, ``map_50``; messages only).
    """
    name = _metric_name(metric)
    if best >= threshold:
        return
    frac = best / unpruned if unpruned > 0 else 0.0
    if floor.kind == "points":
        drop = math.ceil(100 * (unpruned - best) * 10) / 10
        allowed = f"--min-accuracy -{drop:g}pt"
    else:
        allowed = f"--min-accuracy {math.floor(frac * 100) / 100:.2f}"
    raise HdapError(
        f"no candidate at {budget_label} reaches the floor {floor.text} "
        f"({100 * threshold:.1f}% {_short(name)}; {floor.describe(metric)}); the best sampled "
        f"calibrates to {100 * best:.1f}% ({frac:.2f} of the unpruned {100 * unpruned:.1f}%): use "
        f"{allowed}, 'uniform', or a larger budget")


def finetuned_check(floor: dict, unpruned: float | None, finetuned: float | None) -> dict:
    """A report's floor (``accuracy.floor``) checked on the fine-tuned model, held out.

    The search checks a floor on calibrated accuracy; what ships after fine-tuning is the
    fine-tuned model, so a fraction or points floor is checked on it too, against the
    unpruned model's held-out accuracy (the same rule, like with like). A ``uniform``
    floor has no held-out threshold without fine-tuning the uniform candidate too, so it
    is not checked here (``finetuned_met`` None).
    """
    if not floor or finetuned is None or unpruned is None or floor.get("kind") == "uniform":
        return {"finetuned_threshold": None, "finetuned_met": None}
    parsed = parse_floor(floor.get("text"))
    threshold = parsed.threshold(float(unpruned))
    return {"finetuned_threshold": threshold,
            "finetuned_met": bool(float(finetuned) >= threshold - 1e-12)}


def _short(name: str) -> str:
    # "calibrated accuracy" -> "calibrated" (the wording classifiers always had).
    return "calibrated" if name == METRIC_NAMES["top1"] else name
