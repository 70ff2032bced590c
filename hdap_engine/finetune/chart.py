"""The fine-tuning figure: training loss and held-out top-1 epoch by epoch.

Drawn from the trainer's `EpochRecord` rows (as dicts), live on the Fine-tune
page while a job trains and again once it is done. It sits beside the trainer
whose records it draws; it shares `hdap_engine.report.charts`' layout, so it looks like
every other figure of the app.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from hdap_engine.report.charts import _LAYOUT


def finetune_chart(history: Sequence[Mapping], *, epochs: int | None = None,
                   start_top1: float | None = None) -> go.Figure:
    """Training loss and held-out top-1 epoch by epoch (drawn live while a fine-tune runs).

    Parameters
    ----------
    history:
        `hdap_engine.finetune.trainer.EpochRecord` rows as dicts (``epoch``, ``loss``,
        ``val_top1``, ...).
    epochs:
        The planned number of epochs (fixes the x axis while training).
    start_top1:
        Held-out top-1 before the first epoch (drawn at epoch 0), if known.

    Returns
    -------
    A two-axis line figure: loss (left), held-out top-1 in % (right).
    """
    from plotly.subplots import make_subplots

    x = [int(r["epoch"]) for r in history]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(name="training loss", x=x, y=[r["loss"] for r in history],
                    mode="lines+markers", line_color="#636EFA", secondary_y=False)
    top = [(e, 100 * r["val_top1"]) for e, r in zip(x, history, strict=True)
           if r.get("val_top1") is not None]
    if start_top1 is not None:
        top = [(0, 100 * float(start_top1))] + top
    fig.add_scatter(name="held-out top-1", x=[e for e, _ in top], y=[v for _, v in top],
                    mode="lines+markers", line_color="#EF553B", secondary_y=True)
    last = max([epochs or 0, *x, 1])
    fig.update_layout(**_LAYOUT, height=380,
                      title="Fine-tuning: training loss and held-out top-1 per epoch")
    fig.update_xaxes(title_text="epoch", range=[-0.2, last + 0.2], dtick=1 if last <= 20 else None)
    fig.update_yaxes(title_text="loss (distillation + cross-entropy)", secondary_y=False)
    fig.update_yaxes(title_text="held-out top-1 (%)", range=[0, 100], secondary_y=True)
    return fig
