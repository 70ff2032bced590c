"""Two jobs built on the trainer: train a zoo model from scratch, fine-tune a bundle.

`train_model` is how the shipped demo weights were made (`hdap train`): labels
only, on the training part of a dataset, measured on its held-out part.

`finetune_bundle` is `hdap finetune`: the pruned model of an export bundle learns
from the unpruned model it was pruned from (the teacher: the bundle's model with
the weights its report names, or ``model_weights``), on ``--data``, measured on
``--val-data`` (or the held-out split); the result is a complete bundle again,
whose report carries the accuracies before and after.

Both work in one process and under torchrun (see `hdap_engine.finetune.distributed`):
every rank trains, rank 0 writes checkpoints, weights and bundles.

A detector's bundle (its model's spec has ``task == "detection"``) is fine-tuned by
the same functions: COCO data (`hdap_engine.data.coco.load_coco`), adaptive BN with
`recalibrate_detector_bn`, `hdap_engine.finetune.detection.fit_detector` (its own loss
plus distillation on the heads' outputs, the recipe made a detector's by
`detection_recipe`), mAP on the held-out set; the report's accuracy block is in the
study's metric (mAP@.5 unless the bundle's block says mAP@[.5:.95]) with both mAPs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hdap_engine.errors import HdapError
from hdap_engine.finetune.distributed import World, barrier, setup
from hdap_engine.finetune.trainer import EpochRecord, FitResult, fit
from hdap_engine.options import DISTILL, SCRATCH, FinetuneOptions

CHECKPOINT = "checkpoint.pt"


def resolve_hflip(options: FinetuneOptions, data: str | os.PathLike) -> bool:
    """Whether to flip: as asked, else never for digits (a mirrored 2 is no digit)."""
    from hdap_engine.data import DIGITS

    return options.hflip if options.hflip is not None else str(data) != DIGITS


def _load(data, model_name: str, val_data, mean=None, std=None, seed: int = 0):
    from hdap_engine.data import load_data
    from hdap_engine.models.zoo import get_spec

    if get_spec(model_name).task == "detection":
        from hdap_engine.data.coco import load_coco

        return load_coco(data, val_data=val_data, seed=seed)
    return load_data(data, model=model_name, val_data=val_data, mean=mean, std=std, seed=seed)


def _is_detection(ld) -> bool:
    from hdap_engine.data.coco import DetectionData

    return isinstance(ld, DetectionData)


def _check_classes(ld, num_classes: int, weights_name: str) -> None:
    """The data's classes against a model's outputs (a detector's count the background)."""
    if _is_detection(ld):
        from hdap_engine.data.coco import check_detector_classes

        check_detector_classes(ld, num_classes, weights_name=weights_name)
    else:
        from hdap_engine.data import check_classes

        check_classes(ld, num_classes, weights_name=weights_name)


def _evaluate(model, ld):
    """Held-out accuracy: top-1 (`Evaluation`), or a detector's mAPs (`DetectionAccuracy`)."""
    if _is_detection(ld):
        from hdap_engine.accuracy.detection import evaluate_detector

        return evaluate_detector(model, ld.heldout, categories=ld.categories)
    from hdap_engine.accuracy.evaluate import evaluate

    return evaluate(model, ld.heldout)


def _recalibrate(model, ld, n: int, seed: int) -> None:
    """Adaptive BN on ``n`` seeded training images (every rank picks the same ones)."""
    if _is_detection(ld):
        import numpy as np

        from hdap_engine.accuracy.detection import recalibrate_detector_bn

        idx = np.random.default_rng(seed).permutation(ld.n_train)[:n]
        recalibrate_detector_bn(model, [ld.train[int(i)][0] for i in np.sort(idx)])
        return
    from hdap_engine.accuracy.calibrate import recalibrate_bn
    from hdap_engine.data import materialise, stratified_indices

    images, _ = materialise(ld.train, stratified_indices(ld.train_labels, n, seed))
    recalibrate_bn(model, images)


# -- from scratch ---------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What `train_model` produced."""

    model_weights_path: Path | None  # the state dict written (rank 0), None on other ranks
    record: dict  # what the sidecar JSON holds
    fit: FitResult = field(repr=False, default_factory=FitResult)


def train_model(model_name: str, data: str | os.PathLike, out: str | os.PathLike, *,
                options: FinetuneOptions = SCRATCH, val_data=None, resume: bool = False,
                on_epoch: Callable[[EpochRecord], None] | None = None,
                world: World | None = None) -> TrainResult:
    """Train ``model_name`` from a seeded random initialisation on labelled data.

    Parameters
    ----------
    model_name:
        A zoo model; its classifier gets as many outputs as ``data`` has classes.
    data, val_data:
        As `hdap_engine.data.load_data` reads them.
    out:
        The state dict to write (``.pt``); beside it ``<out>.json`` says how it was
        made and how accurate it is, and ``<out>.checkpoint`` holds the last epoch
        while the run is going.
    options:
        The recipe (`SCRATCH` by default: labels only).
    resume:
        Continue an interrupted run from ``<out>.checkpoint``.

    Returns
    -------
    `TrainResult`.
    """
    from hdap_engine.accuracy.evaluate import evaluate
    from hdap_engine.models.zoo import build_model

    world = world or setup()
    out = Path(out)
    ckpt_path = out.with_name(out.name + ".checkpoint")
    if options.distills:
        raise HdapError("training from scratch has no teacher; use kd_weight 0")
    if not resume and ckpt_path.exists():
        raise HdapError(f"{ckpt_path} holds an interrupted run; add --resume to continue it, "
                        "or delete it to start over")
    ld = _load(data, model_name, val_data)
    model = build_model(model_name, seed=options.seed, num_classes=ld.num_classes)
    hflip = resolve_hflip(options, data)
    result = fit(model, ld.train, options, val_set=ld.heldout, hflip=hflip,
                 checkpoint=ckpt_path, resume=resume, on_epoch=on_epoch, world=world,
                 identity={"model": model_name, "data": ld.fingerprint})
    record = {}
    path = None
    ev = evaluate(model, ld.heldout)  # on every rank: see finetune_model
    if world.is_main:
        record = {
            "model": model_name, "data": str(data), "classes": list(ld.classes),
            "n_train": ld.n_train, "n_heldout": ld.n_heldout,
            "heldout": ld.describe_heldout(), "data_fingerprint": ld.fingerprint,
            "preprocess": ld.preprocess.as_dict(), "accuracy": ev.as_dict(),
            "training": {"options": options.settings(), **result.summary()},
        }
        tmp = out.with_name(f".{out.name}.tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, out)
        out.with_name(out.name + ".json").write_text(json.dumps(record, indent=1) + "\n")
        ckpt_path.unlink(missing_ok=True)
        path = out
    barrier(world)
    return TrainResult(model_weights_path=path, record=record, fit=result)


# -- fine-tuning a bundle ------------------------------------------------------------------

@dataclass
class FinetuneResult:
    """What `finetune_bundle` produced."""

    bundle: Path | None  # the new bundle folder (rank 0), None on other ranks
    accuracy: dict  # the report's accuracy block
    fit: FitResult = field(repr=False, default_factory=FitResult)
    model: torch.nn.Module | None = field(repr=False, default=None)


def read_bundle(path: str | os.PathLike) -> tuple[dict, bytes, dict]:
    """The widths document, the weights bytes and the report of a bundle folder or zip."""
    from hdap_engine.export.reading import read_bundle_files

    files = read_bundle_files(path)
    try:
        doc = json.loads(files["widths.json"])
        report = json.loads(files.get("report.json", b"{}"))
    except ValueError as exc:
        raise HdapError(f"{path}: the bundle's JSON is damaged ({exc}); export it again") from None
    return doc, files["weights.pt"], report


def teacher_weights(report: dict, bundle: str | os.PathLike,
                    model_weights: str | os.PathLike | None = None) -> str:
    """The unpruned model's weights: as given, else the file the bundle's report names.

    A relative path in the report is tried from the current folder, then from the
    bundle's folder. A bundle pruned from random weights has no teacher worth
    learning from; that is a user error that says what to pass.
    """
    if model_weights is not None:
        return str(model_weights)
    named = (report.get("settings") or {}).get("model_weights")
    if named in (None, "random", "pretrained"):
        raise HdapError(
            f"{bundle}: its report names no trained weights of the unpruned model "
            f"({'random initialisation' if named in (None, 'random') else named}); pass "
            "--model-weights FILE (the state dict it was pruned from) to distil from, or "
            "--kd-weight 0 to train on the labels alone")
    p = Path(named)
    for cand in (p, Path(bundle).resolve().parent / p):
        if cand.is_file():
            return str(cand)
    raise HdapError(f"{bundle}: the unpruned model's weights {named} (from its report) are "
                    "not there; pass --model-weights FILE")


@dataclass
class Tuned:
    """What `finetune_model` measured (held-out `Evaluation`s, the same on every rank)."""

    fit: FitResult
    before: object | None  # the student as given
    calibrated: object | None  # after batch-norm re-estimation (None when not done)
    after: object | None  # after fine-tuning
    unpruned: object | None  # the teacher
    wall_seconds: float


def finetune_model(student: torch.nn.Module, ld, options: FinetuneOptions = DISTILL, *,
                   teacher: torch.nn.Module | None = None, checkpoint=None,
                   resume: bool = False, identity: dict | None = None,
                   on_epoch: Callable[[EpochRecord], None] | None = None,
                   world: World | None = None) -> Tuned:
    """Fine-tune a pruned model in memory and measure it before and after.

    What `finetune_bundle` does between reading and writing a bundle, for callers
    that hold the models already (a study's chosen model, every row of a bench):
    batch-norm re-estimation on ``options.bn_images`` training images (not on
    resume: the checkpoint has the statistics), `fit`, and held-out evaluations.

    Parameters
    ----------
    student:
        The pruned model, trained in place.
    ld:
        `hdap_engine.data.LabelledData`: ``train`` for training, ``heldout`` for every
        figure; a detector's `hdap_engine.data.coco.DetectionData` (`fit_detector`,
        mAP).
    options:
        The recipe (a detector's: `detection_recipe` of it).
    teacher:
        The unpruned model (needed when the recipe distils).

    Returns
    -------
    `Tuned`.
    """
    world = world or setup()
    detection = _is_detection(ld)
    if detection:
        from hdap_engine.finetune.detection import detection_recipe

        options = detection_recipe(options)
    # Every rank evaluates (the same model on the same images, so the same figures):
    # torchmetrics synchronises its counts over the process group when there is one,
    # and a collective that only rank 0 entered would wait for ever.
    before = _evaluate(student, ld)
    unpruned = _evaluate(teacher, ld) if teacher is not None else None
    calibrated = None
    if options.bn_images and not resume:
        # Every rank re-estimates on the same images, so they start identical.
        _recalibrate(student, ld, options.bn_images, options.seed)
        calibrated = _evaluate(student, ld)
    started = time.perf_counter()
    identity = {**(identity or {}), "data": ld.fingerprint}
    if detection:
        from hdap_engine.finetune.detection import DETECTION_OPTIMIZER, fit_detector

        result = fit_detector(student, ld.train, options, teacher=teacher,
                              val_set=ld.heldout, categories=ld.categories,
                              optimizer=DETECTION_OPTIMIZER,
                              hflip=options.hflip if options.hflip is not None else True,
                              checkpoint=checkpoint, resume=resume, identity=identity,
                              on_epoch=on_epoch, world=world)
    else:
        result = fit(student, ld.train, options, val_set=ld.heldout, teacher=teacher,
                     hflip=resolve_hflip(options, ld.name), checkpoint=checkpoint,
                     resume=resume, on_epoch=on_epoch, world=world, identity=identity)
    wall = time.perf_counter() - started
    after = _evaluate(student, ld)
    return Tuned(fit=result, before=before, calibrated=calibrated, after=after,
                 unpruned=unpruned, wall_seconds=wall)


def finetune_bundle(bundle: str | os.PathLike, data: str | os.PathLike,
                    out: str | os.PathLike, *, options: FinetuneOptions = DISTILL,
                    val_data=None, model_weights=None, resume: bool = False,
                    on_epoch: Callable[[EpochRecord], None] | None = None,
                    world: World | None = None, export: bool = True) -> FinetuneResult:
    """Fine-tune a bundle's pruned model by distillation and export the result.

    Parameters
    ----------
    bundle:
        An export bundle folder or zip (weights.pt + widths.json + report.json).
    data, val_data:
        Training data and held-out data (`hdap_engine.data.load_data`).
    out:
        The new bundle folder (and ``out.zip``). While training, ``out/checkpoint.pt``
        holds the last epoch; the finished bundle replaces the folder.
    options:
        The recipe.
    model_weights:
        The unpruned model's state dict (default: the one the bundle's report names).
    resume:
        Continue an interrupted run from ``out/checkpoint.pt``.
    export:
        Write the bundle (False: train and measure only).

    Returns
    -------
    `FinetuneResult`.
    """
    from hdap_engine.accuracy.report import preprocess_block
    from hdap_engine.export.bundle import export_bundle
    from hdap_engine.export.reading import rebuild_model
    from hdap_engine.models.zoo import build_model, num_classes_of

    world = world or setup()
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    if not resume and ckpt_path.exists():
        raise HdapError(f"{ckpt_path} holds an interrupted fine-tune; add --resume to continue "
                        "it, or choose another --out")
    doc, student_weights, report = read_bundle(bundle)
    student, space, widths = rebuild_model(doc, student_weights)
    name = space.model
    kept = {g["name"]: g["kept"] for g in doc["groups"] if "kept" in g} or None
    teacher, teacher_file = None, None
    if options.distills:
        teacher_file = teacher_weights(report, bundle, model_weights)
        teacher = build_model(name, teacher_file)
    pre = report.get("preprocess") or {}
    # The held-out split of the study that made the bundle (its seed), so that the
    # figures before and after are on the same images and none of them is trained on.
    split_seed = (report.get("settings") or {}).get("seed", report.get("seed", 0)) or 0
    ld = _load(data, name, val_data, pre.get("mean"), pre.get("std"), seed=int(split_seed))
    if _is_detection(ld):  # the recipe the report records is the one that ran
        from hdap_engine.finetune.detection import detection_recipe

        options = detection_recipe(options)
    _check_classes(ld, num_classes_of(student, name), weights_name="the bundle's weights")
    if teacher is not None:
        _check_classes(ld, num_classes_of(teacher, name), weights_name=Path(teacher_file).name)

    tuned = finetune_model(student, ld, options, teacher=teacher, checkpoint=ckpt_path,
                           resume=resume, on_epoch=on_epoch, world=world,
                           identity={"bundle_widths": space.widths_dict(widths),
                                     "teacher": None if teacher_file is None
                                     else Path(teacher_file).name})
    before, calibrated, unpruned = tuned.before, tuned.calibrated, tuned.unpruned
    result, wall = tuned.fit, tuned.wall_seconds
    accuracy: dict = {}
    path = None
    if world.is_main:
        after = tuned.after
        accuracy = finetuned_accuracy(report.get("accuracy"), ld, unpruned=unpruned,
                                      before=before, calibrated=calibrated, after=after,
                                      fit_result=result,
                                      options=options, teacher=teacher_file, wall_seconds=wall)
        if export:
            new_report = {k: v for k, v in report.items()
                          if k not in ("files", "created_at", "versions")}
            new_report["accuracy"] = accuracy
            new_report["preprocess"] = preprocess_block(ld)
            new_report["finetuned_from"] = str(bundle)
            path = export_bundle(student.cpu(), space, widths, out, new_report, kept=kept)
            if report.get("precision") == "int8":
                # The INT8 model that ships is the fine-tuned one, calibrated again.
                from hdap_engine.options import QuantizePlan
                from hdap_engine.quantize.bundle import add_int8

                plan = QuantizePlan(**((report.get("settings") or {}).get("quantize") or {}))
                accuracy["int8"] = add_int8(path, plan, data=ld, seed=int(split_seed))
    barrier(world)
    return FinetuneResult(bundle=path, accuracy=accuracy, fit=result, model=student)


def finetuned_accuracy(existing: dict | None, ld, *, unpruned, before, after, calibrated=None,
                       fit_result: FitResult, options: FinetuneOptions, teacher: str | None,
                       wall_seconds: float) -> dict:
    """The report's ``accuracy`` block after fine-tuning (`hdap_engine.accuracy.report`).

    What the study measured before (right after pruning, calibrated, the floor, the
    surrogate) is kept when the held-out set is the same; the bundle's own model,
    measured here before training (as it came, and after batch-norm re-estimation),
    fills ``pruned`` and ``calibrated`` when the study did not.
    ``finetune`` gains how the model was trained, epoch by epoch.
    """
    from hdap_engine.accuracy.report import accuracy_block, stage_value

    old = dict(existing or {})
    same = old.get("dataset") == ld.name and old.get("n_heldout") == ld.n_heldout
    if not same:
        old = {}
    # A detector's block is in the study's metric (mAP@.5 unless it said otherwise).
    metric = (old.get("metric") or "map_50") if _is_detection(ld) else "top1"
    block = accuracy_block(
        ld, unpruned=unpruned, pruned=before if old.get("pruned") is None else old["pruned"],
        calibrated=calibrated if old.get("calibrated") is None else old["calibrated"],
        finetuned=after,
        n_calibration=old.get("n_calibration") or (
            min(options.bn_images, ld.n_train) if calibrated is not None else None),
        calibrated_on=old.get("calibrated_on") or
        "heldout", floor=old.get("floor"), surrogate=old.get("surrogate"),
        finetune={"epochs": len(fit_result.history), "seconds": fit_result.seconds,
                  "teacher": None if teacher is None else Path(teacher).name},
        metric=metric)
    for stage in ("pruned", "calibrated"):  # the study's intervals, not re-measured here
        if old.get(stage) is not None and (old.get("ci95") or {}).get(stage):
            block["ci95"][stage] = old["ci95"][stage]
        if old.get(stage) is not None and old.get("metrics") and "metrics" in block:
            for m, values in old["metrics"].items():  # both mAPs, as the study measured them
                block["metrics"].setdefault(m, {})[stage] = values.get(stage)
    if block.get("floor"):
        from hdap_engine.accuracy.floor import finetuned_check

        block["floor"] = {**block["floor"],
                          **finetuned_check(block["floor"], block["unpruned"], block["finetuned"])}
    block["finetune"].update({
        "start_top1": stage_value(before, metric),
        "bn_reestimated_top1": stage_value(calibrated, metric),
        "wall_seconds": wall_seconds,
        "processes": fit_result.world_size, "n_train": ld.n_train,
        "options": options.settings(), "hflip": getattr(fit_result, "hflip", options.hflip is not False),
        "crop_padding": getattr(fit_result, "crop_padding", None),
        "resumed_at_epoch": fit_result.resumed_at,
        "history": [r.__dict__ for r in fit_result.history]})
    if _is_detection(ld):
        from hdap_engine.finetune.detection import DETECTION_OPTIMIZER

        block["finetune"]["optimizer"] = DETECTION_OPTIMIZER
    return block


def finetune_candidate(actx, space, widths, block: dict, *, epochs: int,
                       seed: int = 0) -> dict:
    """A bench row's accuracy block with its candidate fine-tuned (the same recipe for all).

    Parameters
    ----------
    actx:
        The study's `hdap_engine.accuracy.study.AccuracyContext` (data, unpruned model).
    space, widths:
        The pruning space and the row's candidate.
    block:
        The row's accuracy block so far (pruned, calibrated); not modified.
    epochs:
        Epochs of distillation.
    seed:
        The recipe's seed.

    Returns
    -------
    A copy of ``block`` with ``finetuned``, its interval and ``finetune``.
    """
    import copy

    from hdap_engine.accuracy.calibrate import prune_candidate
    from hdap_engine.accuracy.report import with_stage

    student = prune_candidate(actx.model, space, widths)
    # fit() freezes its teacher; the context's model stays as the next row needs it.
    teacher = copy.deepcopy(actx.model)
    tuned = finetune_model(student, actx.data, DISTILL.with_changes(epochs=epochs, seed=seed),
                           teacher=teacher)
    out = with_stage(block, "finetuned", tuned.after)
    out["finetune"] = {"epochs": epochs, "seconds": tuned.fit.seconds,
                       "teacher": getattr(actx, "weights_label", None),
                       "history": [r.__dict__ for r in tuned.fit.history]}
    return out
