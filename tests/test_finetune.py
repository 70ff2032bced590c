"""Fine-tuning: the distillation loss, seeded and resumable training, the bundle it writes.

Real training of a pruned ResNet-56 on real digit images, a few seconds each: a
small ImageFolder of scikit-learn digits (PNG files) and, as the teacher, the
shipped demo weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hdap_engine.errors import HdapError
from hdap_engine.finetune.trainer import distillation_loss, fit
from hdap_engine.options import FinetuneOptions
from tests.helpers.bundles import export_bundle_fast
from tests.helpers.images import write_digit_folder
from tests.helpers.paths import DEMO, ROOT


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits") / "train", 16)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """60 digit images (48 to train on): what determinism and resuming are tested on does not
    depend on the data's size, and every `fit` below runs on it (9 fits in this file)."""
    from hdap_engine.data import load_data

    folder = write_digit_folder(tmp_path_factory.mktemp("digits") / "small", 6)
    return load_data(folder, model="resnet56")


@pytest.fixture(scope="module")
def pruned_bundle(tmp_path_factory) -> Path:
    """The demo weights pruned uniformly to 25 % of their MACs, exported (ts only, fast)."""
    from hdap_engine.pruning.baseline import prune_baseline

    res = prune_baseline("resnet56", "0.25", "uniform", model_weights=str(DEMO))
    # What `hdap optimize` records; `hdap prune` bundles name only a label.
    res.report["settings"] = {"model": "resnet56", "model_weights": str(DEMO)}
    return export_bundle_fast(res, tmp_path_factory.mktemp("bundle") / "r56_u25")


def student_and_teacher():
    from hdap_engine.models.zoo import build_model
    from hdap_engine.pruning.apply import prune_to_widths
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.search.baselines import uniform_widths

    teacher = build_model("resnet56", str(DEMO))
    student = build_model("resnet56", str(DEMO))
    space = PruningSpace.for_model("resnet56")
    prune_to_widths(student, space, uniform_widths(space, 0.25 * space.base_macs))
    return student, teacher


QUICK = FinetuneOptions(epochs=2, batch_size=32, lr=0.02)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: on a shared 2-core machine, two threads per process are much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_distillation_loss_is_cross_entropy_alone_when_kd_weight_is_zero():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    opts = FinetuneOptions(kd_weight=0.0, ce_weight=1.0)
    assert torch.allclose(distillation_loss(s, None, y, opts),
                          torch.nn.functional.cross_entropy(s, y))


def test_distillation_term_vanishes_when_the_student_matches_the_teacher_and_scales_with_t2():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    y = torch.zeros(16, dtype=torch.long)
    only_kd = FinetuneOptions(kd_weight=1.0, ce_weight=0.0, temperature=4.0)
    assert float(distillation_loss(t, t, y, only_kd)) == pytest.approx(0.0, abs=1e-6)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 4, 1), torch.softmax(t / 4, 1),
                                    reduction="batchmean")
    assert float(distillation_loss(s, t, y, only_kd)) == pytest.approx(16 * float(kl), rel=1e-5)


def test_options_refuse_nonsense_with_a_message():
    with pytest.raises(HdapError, match="epochs"):
        FinetuneOptions(epochs=0)
    with pytest.raises(HdapError, match="schedule"):
        FinetuneOptions(schedule="step")
    with pytest.raises(HdapError, match="not both 0"):
        FinetuneOptions(kd_weight=0, ce_weight=0)


def test_the_same_seed_gives_the_same_weights(small_data):
    runs = []
    for _ in range(2):
        student, teacher = student_and_teacher()
        fit(student, small_data.train, QUICK, teacher=teacher)
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    student, teacher = student_and_teacher()
    fit(student, small_data.train, QUICK.with_changes(seed=1), teacher=teacher)
    assert not all(torch.equal(runs[0][k], v) for k, v in student.state_dict().items())


def test_an_interrupted_run_resumes_and_ends_with_the_uninterrupted_weights(small_data,
                                                                            tmp_path):
    student, teacher = student_and_teacher()
    whole = fit(student, small_data.train, QUICK, teacher=teacher, val_set=small_data.heldout)
    expected = student.state_dict()

    def stop_after_first(record):
        if record.epoch == 1:
            raise KeyboardInterrupt  # what Ctrl-C raises, between two epochs

    ckpt = tmp_path / "checkpoint.pt"
    student, teacher = student_and_teacher()
    with pytest.raises(KeyboardInterrupt):
        fit(student, small_data.train, QUICK, teacher=teacher, val_set=small_data.heldout,
            checkpoint=ckpt, on_epoch=stop_after_first)
    # A fresh process would start from a fresh model: the checkpoint carries everything.
    student, teacher = student_and_teacher()
    resumed = fit(student, small_data.train, QUICK, teacher=teacher, val_set=small_data.heldout,
                  checkpoint=ckpt, resume=True)
    got = student.state_dict()
    assert resumed.resumed_at == 1 and len(resumed.history) == 2
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [r.val_top1 for r in resumed.history] == [r.val_top1 for r in whole.history]


def test_resume_refuses_a_checkpoint_of_other_settings(small_data, tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    student, teacher = student_and_teacher()
    fit(student, small_data.train, QUICK.with_changes(epochs=1), teacher=teacher,
        checkpoint=ckpt)
    student, teacher = student_and_teacher()
    with pytest.raises(HdapError, match="another run.*epochs"):
        fit(student, small_data.train, QUICK.with_changes(epochs=3), teacher=teacher,
            checkpoint=ckpt, resume=True)
    with pytest.raises(HdapError, match="nothing to resume"):
        fit(student, small_data.train, QUICK, teacher=teacher,
            checkpoint=tmp_path / "none.pt", resume=True)


def test_digits_are_not_flipped_and_user_images_are():
    from hdap_engine.finetune.run import resolve_hflip

    assert resolve_hflip(FinetuneOptions(), "digits") is False
    assert resolve_hflip(FinetuneOptions(), "/data/cats_and_dogs") is True
    assert resolve_hflip(FinetuneOptions(hflip=False), "/data/cats_and_dogs") is False


@pytest.mark.slow
def test_finetune_writes_a_complete_bundle_with_accuracy_before_and_after(
        pruned_bundle, digit_folder, tmp_path, cli):
    out = tmp_path / "tuned"
    res = cli("finetune", str(pruned_bundle) + ".zip", "--data", str(digit_folder),
              "--epochs", "2", "--batch-size", "32", "--out", str(out), env=ONE_THREAD)
    assert res.returncode == 0, res.stderr
    assert "fine-tuned 2 epochs" in res.stdout and "epoch 2/2" in res.stdout
    from hdap_engine.export.bundle import BUNDLE_FILES, SOURCE_FILE
    from hdap_engine.export.reading import load_bundle

    # No checkpoint left; a registered model has no source file of its own to ship.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f for f in BUNDLE_FILES if f != SOURCE_FILE)
    assert (tmp_path / "tuned.zip").is_file()
    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["dataset"] == str(digit_folder) and acc["classes"] == 10
    assert acc["n_heldout"] == 32 and acc["metric"] == "top1"
    for key in ("unpruned", "pruned", "finetuned"):
        assert 0 <= acc[key] <= 1 and acc["ci95"][key][0] <= acc[key] <= acc["ci95"][key][1]
    assert acc["unpruned"] > 0.9  # the demo teacher is trained
    ft = acc["finetune"]
    assert ft["epochs"] == 2 and ft["teacher"] == DEMO.name and ft["seconds"] > 0
    assert report["preprocess"]["size"] == [32, 32]
    model, _ = load_bundle(out)
    assert report["widths"] == json.loads((pruned_bundle / "report.json").read_text())["widths"]
    assert sum(p.numel() for p in model.parameters()) == report["params"]


@pytest.mark.slow
def test_finetune_cli_says_what_to_pass_when_the_bundle_names_no_teacher(tmp_path, cli,
                                                                         digit_folder):
    from hdap_engine.pruning.baseline import prune_baseline

    bundle = tmp_path / "random"
    export_bundle_fast(prune_baseline("resnet56", "0.5", "uniform"), bundle)
    res = cli("finetune", str(bundle), "--data", str(digit_folder), "--epochs", "1",
              "--out", str(tmp_path / "o"), env=ONE_THREAD)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "--model-weights" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_finetune_refuses_to_overwrite_an_interrupted_run_without_resume(
        pruned_bundle, digit_folder, tmp_path, cli):
    out = tmp_path / "o"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not yet")
    res = cli("finetune", str(pruned_bundle), "--data", str(digit_folder), "--out", str(out),
              env=ONE_THREAD)
    assert res.returncode == 2 and "--resume" in res.stderr
    assert (out / "checkpoint.pt").read_bytes() == b"not yet"  # nothing lost
    res = cli("finetune", str(pruned_bundle), "--data", str(digit_folder), "--out", str(out),
              "--resume", env=ONE_THREAD)
    assert res.returncode == 2 and "not a readable checkpoint" in res.stderr


@pytest.mark.slow
def test_torchrun_with_two_processes_ends_with_identical_weights_and_one_process_accuracy(
        pruned_bundle, tmp_path, cli):
    import os
    import re
    import subprocess
    import sys

    from hdap_engine.export.reading import load_bundle
    from hdap_engine.finetune.trainer import state_digest

    data = write_digit_folder(tmp_path / "digits", 30)
    common = [str(pruned_bundle), "--data", str(data), "--epochs", "2", "--batch-size", "32"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "hdap_engine.finetune", *common, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    digests = dict(re.findall(r"rank (\d)/2: weights sha256 ([0-9a-f]{16})", two.stdout))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], two.stdout
    tops = set(re.findall(r"rank \d/2: .*held-out top-1 ([0-9.]+)", two.stdout))
    assert len(tops) == 1  # both ranks measured the same held-out accuracy
    model, report_two = load_bundle(tmp_path / "two")
    assert state_digest(model)[:16] == digests["0"]  # rank 0 exported what both hold
    assert report_two["accuracy"]["finetune"]["processes"] == 2

    one = cli("finetune", *common, "--out", str(tmp_path / "one"), env=ONE_THREAD)
    assert one.returncode == 0, one.stderr
    report_one = json.loads((tmp_path / "one" / "report.json").read_text())
    a1, a2 = report_one["accuracy"]["finetuned"], report_two["accuracy"]["finetuned"]
    n = report_one["accuracy"]["n_heldout"]
    # Same global batch and schedule; the two runs differ in batch-norm batches and
    # sample order only, so their accuracies agree within binomial noise.
    noise = 2 * 1.96 * np.sqrt(max(a1 * (1 - a1), 1 / n) / n)
    assert abs(a1 - a2) <= noise + 1 / n, (a1, a2, noise)
    assert a2 > report_two["accuracy"]["pruned"] - noise  # it learnt, not broke


def test_finetune_epochs_of_a_study_need_labelled_data():
    from hdap_engine.options import AccuracyPlan

    with pytest.raises(HdapError, match="--finetune-epochs needs labelled data"):
        AccuracyPlan(finetune_epochs=3)
    with pytest.raises(HdapError, match=">= 0"):
        AccuracyPlan(data="digits", finetune_epochs=-1)
    assert AccuracyPlan(data="digits", finetune_epochs=3).finetune_epochs == 3


@pytest.mark.slow
def test_a_bench_row_is_fine_tuned_without_touching_the_studys_unpruned_model(digit_folder):
    from hdap_engine.accuracy.calibrate import weights_digest
    from hdap_engine.accuracy.study import candidate_block, prepare_accuracy
    from hdap_engine.finetune.run import finetune_candidate
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.search.baselines import uniform_widths

    actx = prepare_accuracy("resnet56", str(DEMO), str(digit_folder))
    space = PruningSpace.for_model("resnet56")
    widths = uniform_widths(space, 0.5 * space.base_macs)
    block = candidate_block(actx, space, widths)
    digest = weights_digest(actx.model)
    tuned = finetune_candidate(actx, space, widths, block, epochs=1)
    assert block.get("finetuned") is None  # the row's block is copied, not changed
    assert 0 <= tuned["finetuned"] <= 1 and tuned["finetune"]["epochs"] == 1
    assert tuned["ci95"]["finetuned"][0] <= tuned["finetuned"] <= tuned["ci95"]["finetuned"][1]
    assert weights_digest(actx.model) == digest
    assert all(p.requires_grad for p in actx.model.parameters())  # the next row can prune it


def test_the_finetune_chart_draws_a_detectors_map_not_top1():
    from hdap_engine.finetune.chart import finetune_chart

    rows = [dict(epoch=e, epochs=2, loss=1.0 / e, val_map_50=0.4 + e / 10, val_map=0.2 + e / 10)
            for e in (1, 2)]
    fig = finetune_chart(rows, epochs=2, start_value=0.3, metric="map_50")
    assert "mAP@.5" in fig.layout.title.text and "top-1" not in fig.layout.title.text
    assert np.allclose(fig.data[1].y, [30.0, 50.0, 60.0])
    fig = finetune_chart(rows, metric="map")
    assert np.allclose(fig.data[1].y, [30.0, 40.0])
    classifier = finetune_chart([dict(epoch=1, epochs=1, loss=0.5, val_top1=0.9)])
    assert "top-1" in classifier.layout.title.text
