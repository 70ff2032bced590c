"""The ``finetune`` job kind: an export bundle fine-tuned by distillation into a new one.

Settings (`finetune_settings` builds them from the study job the bundle came from)::

    {"finetune": {"bundle": "path/to/bundle",   # the pruned model (a study's bundle)
                  "data": "digits" | "x.zip",   # training images (AccuracyPlan.data)
                  "val_data": None,             # held-out images (default: the split)
                  "epochs": 5,                  # FinetuneOptions.epochs
                  "seed": 0,
                  "of_job": STUDY_JOB_ID}}      # where the bundle came from (for pages)

Its result is ``{"bundle", "report", "accuracy", "history", "of_job"}``: the new
bundle, its report.json, the report's accuracy block and one row per epoch.

While a job trains, ``partial`` gets ``{"history": [...], "epochs": N}`` after
every epoch, so a page draws the loss and held-out accuracy live; the progress
callback gets ``("finetune", epoch, epochs)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hdap_engine.errors import HdapError
from hdap_engine.infra.progress import Progress

if TYPE_CHECKING:
    from hdap_engine.jobs.kinds import JobRun, Partial

FINETUNE_RESULT = ("bundle", "report", "accuracy", "history", "of_job")


def finetune_settings(study_settings: dict, *, bundle: str, data: str, epochs: int,
                      of_job: int) -> dict:
    """The settings of a ``finetune`` job on a study job's bundle: its held-out data and
    seed come from the study's options."""
    from hdap_engine.options import flatten_settings

    opts = flatten_settings((study_settings or {}).get("options") or {})
    return {"finetune": {"bundle": bundle, "data": data, "val_data": opts.get("val_data"),
                         "epochs": int(epochs), "seed": int(opts.get("seed") or 0),
                         "of_job": of_job}}


def tune_bundle(bundle, out, data, val_data, epochs: int, seed: int, progress: Progress,
                partial: Partial, *, model_weights=None):
    """`finetune_bundle` with the job's progress: ("finetune", epoch, epochs), and the
    epochs so far as the job's partial result after each one."""
    from dataclasses import asdict

    from hdap_engine.finetune.run import finetune_bundle
    from hdap_engine.options import DISTILL

    recipe = DISTILL.with_changes(epochs=int(epochs), seed=int(seed))
    history: list[dict] = []

    def on_epoch(record) -> None:
        history.append(asdict(record))
        partial({"history": list(history), "epochs": recipe.epochs})
        progress("finetune", record.epoch, record.epochs)

    # Stage "finetune" from the start: the held-out figures and batch-norm
    # re-estimation before the first epoch belong to it.
    progress("finetune", 0, recipe.epochs)
    return finetune_bundle(bundle, data, out, options=recipe, val_data=val_data,
                           model_weights=model_weights, on_epoch=on_epoch)


def run_finetune(settings: dict, run: JobRun) -> dict:
    """Fine-tune a bundle into a new one: ``{"bundle", "report", "accuracy", "history",
    "of_job"}``."""
    from hdap_engine.export.reading import read_bundle_report
    from hdap_engine.infra.jsonable import jsonable
    from hdap_engine.infra.workspace import new_bundle_dir

    spec = settings.get("finetune") or {}
    bundle, data = spec.get("bundle"), spec.get("data")
    if not bundle or not data:
        raise HdapError("this fine-tune job names no bundle or no labelled data; start it "
                        "again from the Fine-tune page")
    try:
        epochs, seed = int(spec.get("epochs", 1)), int(spec.get("seed", 0))
    except (TypeError, ValueError):
        raise HdapError(f"this fine-tune job's epochs ({spec.get('epochs')!r}) are not a "
                        "whole number; start it again from the Fine-tune page") from None
    model = read_bundle_report(bundle).get("model") or "model"
    done = tune_bundle(bundle, new_bundle_dir(f"{model}-finetuned"), data, spec.get("val_data"),
                       epochs, seed, run.progress, run.partial,
                       model_weights=spec.get("model_weights"))
    report = read_bundle_report(done.bundle)
    return jsonable({"bundle": str(done.bundle), "report": report,
                     "accuracy": done.accuracy,
                     "history": done.accuracy.get("finetune", {}).get("history") or [],
                     "of_job": spec.get("of_job")})
