"""Fine-tuning detectors: own loss, distillation on the heads' outputs, resume exactly."""

from __future__ import annotations

import pytest
import torch

from hdap_engine.data.coco import load_coco
from hdap_engine.data.shapes import write_shapes
from hdap_engine.errors import HdapError
from hdap_engine.finetune.detection import (
    distillation_terms,
    family_of,
    fit_detector,
    head_outputs,
)
from hdap_engine.finetune.trainer import state_digest
from hdap_engine.options import FinetuneOptions, ShapesOptions
from tests.helpers.detectors import tiny_fasterrcnn, tiny_ssd


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = write_shapes(tmp_path_factory.mktemp("shapes"),
                       ShapesOptions(images=10, size=64, seed=7))
    return load_coco(out, val_fraction=0.2, seed=0)


def _options(**kw):
    base = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "kd_weight": 0.0, "ce_weight": 1.0,
            "weight_decay": 0.0, "seed": 3}
    return FinetuneOptions(**{**base, **kw})


def test_training_from_scratch_lowers_the_detectors_own_loss(shapes):
    model = tiny_ssd(shapes.num_classes + 1)
    fit = fit_detector(model, shapes.train, _options(epochs=3), optimizer="adamw",
                       val_set=shapes.heldout)
    losses = [r.detector_loss for r in fit.history]
    assert len(fit.history) == 3 and losses[-1] < losses[0]
    assert all(r.kd_loss == 0.0 for r in fit.history)
    assert fit.history[-1].val_map_50 is not None and not model.training


def test_distillation_from_a_wider_teacher_pulls_the_heads_together(shapes):
    # Different widths inside, the same anchors and classes out: what a pruned student is.
    teacher = tiny_ssd(shapes.num_classes + 1, width_mult=0.5, seed=1)
    student = tiny_ssd(shapes.num_classes + 1, width_mult=0.25, seed=2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit = fit_detector(student, shapes.train, _options(epochs=3, kd_weight=1.0, ce_weight=0.0,
                                                       lr=3e-3),
                       teacher=teacher, optimizer="adamw", hflip=False)
    kd = [r.kd_loss for r in fit.history]
    assert kd[-1] < kd[0]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, shapes):
    teacher = tiny_ssd(shapes.num_classes + 1, width_mult=0.5, seed=1)
    options = _options(kd_weight=0.5, ce_weight=1.0)
    whole = tiny_ssd(shapes.num_classes + 1, seed=4)
    fit_detector(whole, shapes.train, options, teacher=teacher,
                 checkpoint=tmp_path / "whole.pt")

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    cut = tiny_ssd(shapes.num_classes + 1, seed=4)
    with pytest.raises(Stop):
        fit_detector(cut, shapes.train, options, teacher=teacher,
                     checkpoint=tmp_path / "cut.pt", on_epoch=stop)
    again = tiny_ssd(shapes.num_classes + 1, seed=9)  # the checkpoint brings the weights
    fit = fit_detector(again, shapes.train, options, teacher=teacher,
                       checkpoint=tmp_path / "cut.pt", resume=True)
    assert fit.resumed_at == 1 and len(fit.history) == 2
    assert state_digest(again) == state_digest(whole)
    with pytest.raises(HdapError, match="belongs to another run"):
        fit_detector(tiny_ssd(shapes.num_classes + 1), shapes.train, _options(lr=0.5),
                     teacher=teacher, checkpoint=tmp_path / "cut.pt", resume=True)


def test_faster_rcnn_distils_on_its_rpn_outputs():
    model = tiny_fasterrcnn(4)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    out = head_outputs(model, images)
    assert out["cls"].shape[:2] == out["box"].shape[:2] and out["box"].shape[-1] == 4
    terms = distillation_terms(out, out, "fasterrcnn", 2.0)
    assert float(terms["kd_box"]) == 0.0 and abs(float(terms["kd_cls"])) < 1e-6


def test_mismatched_heads_and_foreign_models_are_one_clear_error():
    a = head_outputs(tiny_ssd(5), [torch.rand(3, 64, 64)])
    b = head_outputs(tiny_ssd(3), [torch.rand(3, 64, 64)])
    with pytest.raises(HdapError, match="differ from the teacher's"):
        distillation_terms(a, b, "ssd", 2.0)
    with pytest.raises(HdapError, match="not one of torchvision's detector families"):
        family_of(torch.nn.Linear(2, 2))
    with pytest.raises(HdapError, match="no teacher"):
        fit_detector(tiny_ssd(5), [], _options(kd_weight=1.0))


@pytest.mark.slow
def test_torchrun_with_two_processes_ends_with_identical_weights(tmp_path):
    import os
    import re
    import subprocess
    import sys

    from tests.helpers.paths import ROOT

    write_shapes(tmp_path / "s", ShapesOptions(images=10, size=64, seed=7))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tests.helpers.detector_ddp", str(tmp_path / "s")],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    found = re.findall(r"rank (\d)/2: weights sha256 ([0-9a-f]{16}) kd ([0-9.]+)", run.stdout)
    assert {r for r, _, _ in found} == {"0", "1"}, run.stdout
    assert len({d for _, d, _ in found}) == 1 and len({k for _, _, k in found}) == 1
