"""The fine-tuning figure: training loss and held-out accuracy epoch by epoch.

Drawn from the trainer's `EpochRecord` rows (as dicts), live on the Fine-tune
page while a job trains and again once it is done. It sits beside the trainer
whose records it draws; it shares `hdap_engine.report.charts`' layout, so it looks like
every other figure of the app.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from hdap_engine.report.charts import _LAYOUT

# The held-out figure an epoch row carries -> its label: a classifier's top-1, a
# detector's mAP@.5 and mAP@[.5:.95] (`finetune.detection.DetectionEpoch`).
EPOCH_METRICS = (("val_top1", "top-1"), ("val_map_50", "mAP@.5"), ("val_map", "mAP@[.5:.95]"))


def epoch_metric(history: Sequence[Mapping], metric: str | None = None) -> tuple[str, str]:
    """(row key, label) of the held-out figure to draw: the accuracy block's ``metric``
    (``top1``, ``map_50``, ``map``) when given, else the first the rows carry (top-1 when
    none does yet)."""
    if metric is not None:
        return next((k, label) for k, label in EPOCH_METRICS if k == f"val_{metric}")
    return next(((k, label) for k, label in EPOCH_METRICS
                 if any(r.get(k) is not None for r in history)), EPOCH_METRICS[0])


def finetune_chart(history: Sequence[Mapping], *, epochs: int | None = None,
                   start_value: float | None = None, metric: str | None = None) -> go.Figure:
    """Training loss and held-out accuracy epoch by epoch (drawn live while a fine-tune runs).

    Parameters
    ----------
    history:
        `hdap_engine.finetune.trainer.EpochRecord` rows as dicts (``epoch``, ``loss``,
        ``val_top1``, ...) or a detector's `DetectionEpoch` rows (``val_map_50``, ...):
        the figure draws the held-out metric the rows carry (`epoch_metric`).
    epochs:
        The planned number of epochs (fixes the x axis while training).
    start_value:
        That metric before the first epoch (drawn at epoch 0), if known.
    metric:
        The accuracy block's metric (``top1``, ``map_50``, ``map``), which ``start_value``
        is in; by default the first the rows carry.

    Returns
    -------
    A two-axis line figure: loss (left), the held-out metric in % (right).
    """
    from plotly.subplots import make_subplots

    x = [int(r["epoch"]) for r in history]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(name="training loss", x=x, y=[r["loss"] for r in history],
                    mode="lines+markers", line_color="#636EFA", secondary_y=False)
    key, label = epoch_metric(history, metric)
    top = [(e, 100 * r[key]) for e, r in zip(x, history, strict=True) if r.get(key) is not None]
    if start_value is not None:
        top = [(0, 100 * float(start_value))] + top
    fig.add_scatter(name=f"held-out {label}", x=[e for e, _ in top], y=[v for _, v in top],
                    mode="lines+markers", line_color="#EF553B", secondary_y=True)
    last = max([epochs or 0, *x, 1])
    fig.update_layout(**_LAYOUT, height=380,
                      title=f"Fine-tuning: training loss and held-out {label} per epoch")
    fig.update_xaxes(title_text="epoch", range=[-0.2, last + 0.2], dtick=1 if last <= 20 else None)
    loss = ("loss (detector's own + distillation)" if key != "val_top1"
            else "loss (distillation + cross-entropy)")
    fig.update_yaxes(title_text=loss, secondary_y=False)
    fig.update_yaxes(title_text=f"held-out {label} (%)", range=[0, 100], secondary_y=True)
    return fig
