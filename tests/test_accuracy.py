"""Accuracy: evaluation with its interval, adaptive BN, the cache, floors, the surrogate, the
report block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hdap_engine.accuracy import (
    AccuracySurrogate,
    CalibratedEvaluator,
    accuracy_block,
    calibration_set,
    check_reachable,
    evaluate,
    parse_floor,
    prune_candidate,
    recalibrate_bn,
    wilson_interval,
)
from hdap_engine.accuracy.cache import AccuracyCache
from hdap_engine.data import DIGITS, load_data
from hdap_engine.errors import HdapError
from hdap_engine.models.zoo import build_model
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.search.baselines import uniform_widths
from tests.helpers.paths import DEMO


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One PyTorch thread: on the shared 2-core machine two threads were 10x slower."""
    from hdap_engine.accuracy.calibrate import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def digits():
    return load_data(DIGITS, model="resnet56")


@pytest.fixture(scope="module")
def space():
    return PruningSpace.for_model("resnet56")


class _Fixed(nn.Module):
    """Predicts class ``i % classes`` for the i-th image of a batch; known accuracy."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        idx = torch.arange(len(x)) % self.classes
        return torch.nn.functional.one_hot(idx, self.classes).float() + 0 * self.dummy


def test_wilson_interval_matches_the_formula_and_stays_in_range():
    lo, hi = wilson_interval(90, 100)
    assert lo == pytest.approx(0.8256, abs=1e-3) and hi == pytest.approx(0.9448, abs=1e-3)
    assert wilson_interval(100, 100)[1] == 1.0 and wilson_interval(100, 100)[0] < 1.0
    assert wilson_interval(0, 50)[0] == 0.0
    with pytest.raises(HdapError):
        wilson_interval(0, 0)


def test_evaluation_is_batched_reports_progress_and_an_interval():
    labels = torch.tensor([0, 1, 2, 0, 0, 0, 0, 0, 0, 0])  # 3 of 10 match i % 3... computed below
    images = torch.zeros(10, 3, 4, 4)
    seen = []
    ev = evaluate(_Fixed(3), (images, labels), batch_size=3, progress=lambda d, t: seen.append(d))
    expected = sum(int(lbl == (i % 3) % 3) for i, lbl in
                   zip([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], labels.tolist(), strict=True))
    # Batches of 3 restart the index, so the predictions are 0,1,2,0,1,2,0,1,2,0.
    assert ev.correct == expected and ev.top1 == pytest.approx(expected / 10)
    assert seen == [3, 6, 9, 10]
    assert ev.ci95[0] < ev.top1 < ev.ci95[1]
    assert ev.top5 is None  # 3 classes: no top-5


def test_top5_is_reported_past_ten_classes():
    labels = torch.arange(12)
    ev = evaluate(_Fixed(12), (torch.zeros(12, 1), (labels + 2) % 12), batch_size=12)
    assert ev.top1 == 0.0 and ev.top5 is not None and 0.0 <= ev.top5 <= 1.0


def test_labels_outside_the_model_are_one_clear_error():
    with pytest.raises(HdapError, match="outside the model's 3 classes"):
        evaluate(_Fixed(3), (torch.zeros(2, 1), torch.tensor([0, 7])))


@pytest.fixture(scope="module")
def probed(digits):
    """An untrained ResNet-56 with batch-norm statistics of digits, and a small calibration
    set (mechanics only; the demo weights show the accuracy)."""
    calib = calibration_set(digits, n_bn=64, n_eval=96)
    model = recalibrate_bn(build_model("resnet56", seed=3), calib.bn_images)
    return model, calib


def test_recalibrated_bn_holds_the_statistics_of_the_calibration_images(probed, space):
    model, calib = probed
    before = model.bn1.running_mean.clone()
    pruned = prune_candidate(model, space, uniform_widths(space, 0.5 * space.base_macs))
    recalibrate_bn(pruned, calib.bn_images, batch_size=16)
    # The first BN sees the first conv's output: its running mean is that output's mean.
    with torch.no_grad():
        act = pruned.conv1(calib.bn_images)
    assert torch.allclose(pruned.bn1.running_mean, act.mean(dim=(0, 2, 3)), atol=1e-4)
    assert all(not m.training for m in pruned.modules())
    # The unpruned model was not touched.
    assert model.conv1.out_channels == 16 and torch.equal(model.bn1.running_mean, before)


def test_adaptive_bn_changes_what_a_pruned_model_predicts(probed, space):
    model, calib = probed
    widths = uniform_widths(space, 0.5 * space.base_macs)
    plain = prune_candidate(model, space, widths)
    adapted = recalibrate_bn(prune_candidate(model, space, widths), calib.bn_images)
    with torch.no_grad():
        a, b = plain(calib.eval_images), adapted(calib.eval_images)
    assert not torch.allclose(a, b, atol=1e-3)
    # Stale statistics: the plain pruned model's last BN input no longer has their scale.
    assert not torch.allclose(plain.layer3[8].bn2.running_var,
                              adapted.layer3[8].bn2.running_var, rtol=0.05)


def test_calibrated_accuracies_are_cached_and_never_evaluated_twice(probed, space):
    model, calib = probed
    cands = [uniform_widths(space, f * space.base_macs) for f in (0.3, 0.6)]
    first = CalibratedEvaluator(model, space, calib)
    accs = first.many(cands + [cands[0]])
    assert first.evaluated == 2 and accs[0] == accs[2]
    second = CalibratedEvaluator(model, space, calib)  # a fresh run, same workspace
    assert np.array_equal(second.many(cands), accs[:2]) and second.evaluated == 0
    assert AccuracyCache().count() == 2
    other = build_model("resnet56", seed=1)  # other weights: another key
    assert CalibratedEvaluator(other, space, calib).model_key != first.model_key


@pytest.mark.parametrize("text, kind, value", [
    ("0.9", "fraction", 0.9), ("1", "fraction", 1.0), ("95%", "fraction", 0.95),
    ("-2pt", "points", 0.02), ("-0.5 pt", "points", 0.005), ("uniform", "uniform", None),
    (0.8, "fraction", 0.8),
])
def test_floor_forms_parse(text, kind, value):
    floor = parse_floor(text)
    assert floor.kind == kind
    assert (floor.value is None and value is None) or floor.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "1.5", "-0.1", "120%", "abc", "2pt", "-0pt", "nan",
                                  "-200pt"])
def test_bad_floors_are_one_clear_error(text):
    with pytest.raises(HdapError, match="--min-accuracy"):
        parse_floor(text)


def test_no_floor_means_none():
    assert parse_floor(None) is None and parse_floor("") is None and parse_floor("none") is None


def test_floor_thresholds_are_relative_to_the_unpruned_model():
    assert parse_floor("0.9").threshold(0.8) == pytest.approx(0.72)
    assert parse_floor("95%").threshold(1.0) == pytest.approx(0.95)
    assert parse_floor("-2pt").threshold(0.9) == pytest.approx(0.88)
    assert parse_floor("uniform").threshold(0.9, uniform=0.6) == 0.6


def test_an_unreachable_floor_says_which_floor_the_budget_allows():
    floor = parse_floor("0.9")
    with pytest.raises(HdapError, match=r"best sampled calibrates to 65.6% \(0.66 of the "
                                        r"unpruned 99.2%\): use --min-accuracy 0.66"):
        check_reachable(floor, floor.threshold(0.992), 0.656, 0.992, "25% MACs")
    check_reachable(floor, 0.5, 0.6, 0.99, "50%")  # reachable: no error
    pts = parse_floor("-2pt")
    with pytest.raises(HdapError, match=r"--min-accuracy -10.5pt"):
        check_reachable(pts, pts.threshold(0.99), 0.885, 0.99, "25%")


def test_surrogate_learns_accuracy_and_reports_held_out_rank_and_error(space):
    rng = np.random.default_rng(0)
    widths = space.random_widths(40, rng)
    ratios = widths / space.base_widths
    # A synthetic accuracy: limited by the thinnest group, saturating near full width.
    acc = 0.1 + 0.85 * (1 - np.exp(-4 * ratios.min(axis=1))) * ratios.mean(axis=1) ** 0.3
    sur = AccuracySurrogate(seed=0).fit(space, widths, acc)
    rep = sur.report
    assert set(rep) >= {"n", "folds", "spearman", "mae", "max_error"}
    assert rep["n"] == 40 and rep["folds"] == 5
    assert rep["spearman"] > 0.6 and rep["mae"] < 0.1
    pred = sur.predict(np.vstack([space.min_widths, space.base_widths]))
    assert pred[0] <= pred[1] and np.all((0 <= pred) & (pred <= 1))


def test_surrogate_needs_a_few_candidates(space):
    with pytest.raises(HdapError, match="at least 4"):
        AccuracySurrogate().fit(space, space.random_widths(3, np.random.default_rng(0)),
                                [0.1, 0.2, 0.3])


def test_report_block_without_data_says_accuracy_is_unknown():
    block = accuracy_block(None)
    assert block["unpruned"] is None and block["finetuned"] is None
    assert block["status"].startswith("unknown")
    assert block["finetune"] == {"epochs": None, "seconds": None, "teacher": None}


def test_report_block_carries_fractions_intervals_and_the_split(digits):
    ev = evaluate(_Fixed(10), digits.heldout)
    block = accuracy_block(digits, unpruned=ev, calibrated=0.5, n_calibration=768,
                           calibrated_on="calibration",
                           finetune={"epochs": 3, "seconds": 12.5, "teacher": "unpruned"})
    assert block["dataset"] == "digits" and block["classes"] == 10
    assert block["n_heldout"] == digits.n_heldout and block["n_calibration"] == 768
    assert block["unpruned"] == ev.top1 and block["pruned"] is None
    assert block["ci95"]["unpruned"] == list(ev.ci95) and block["ci95"]["calibrated"] is None
    assert block["finetune"]["epochs"] == 3 and block["metric"] == "top1"
    assert all(v is None or 0 <= v <= 1 for v in
               (block[k] for k in ("unpruned", "pruned", "calibrated", "finetuned")))
    assert not math.isnan(block["unpruned"])


def test_guide_samples_at_the_budget_fits_the_surrogate_and_penalises_below_the_floor(
        probed, space):
    from hdap_engine.accuracy.guide import AccuracyGuide

    model, calib = probed
    target = 0.4 * space.base_macs
    guide = AccuracyGuide.prepare(model, space, calib, target, parse_floor("uniform"),
                                  samples=8, seed=0)
    assert guide.threshold == guide.uniform
    assert len(guide.widths) >= 8 and guide.surrogate.report["n"] == len(guide.widths)
    assert all(space.macs(w) <= target * 1.0001 for w in guide.widths)
    pred = guide.predict(guide.widths)
    scores = guide.penalise(np.ones(len(pred)), guide.widths)
    assert np.all(scores[pred >= guide.threshold] == 1.0)
    assert np.all(scores[pred < guide.threshold] > 1.0)
    # Finalists are judged for real; the fallback always meets the floor.
    assert guide.meets(guide.uniform_widths[None])[0]
    best = guide.fallback(lambda w: -space.ratios(w)[:, 0])
    assert guide.meets(best[None])[0]
    summary = guide.summary()
    assert summary["floor"]["kind"] == "uniform" and summary["surrogate"]["folds"] >= 2
    # The same budget again evaluates nothing: every candidate is in the cache.
    again = AccuracyGuide.prepare(model, space, calib, target, None, samples=8, seed=0)
    assert again.evaluator.evaluated == 0 and again.threshold is None


def test_guide_refuses_a_floor_no_sampled_candidate_meets(probed, space):
    from hdap_engine.accuracy.guide import AccuracyGuide

    _, calib = probed
    demo = build_model("resnet56", DEMO)
    # The trained demo cannot keep 0.95 of its calibrated accuracy at 15 % of its MACs.
    with pytest.raises(HdapError, match=r"no candidate at 15% MACs reaches the floor 0\.95 .* "
                                        r"the best sampled calibrates to .* use --min-accuracy "
                                        r"0\.\d\d, 'uniform', or a larger budget"):
        AccuracyGuide.prepare(demo, space, calib, 0.15 * space.base_macs, parse_floor("0.95"),
                              samples=6, seed=0, budget_label="15% MACs")


def test_prepared_accuracy_checks_the_floor_first_and_the_classes_against_the_weights(
        tmp_path):
    from hdap_engine.accuracy.study import prepare_accuracy
    from tests.helpers.images import make_folder

    with pytest.raises(HdapError, match="--min-accuracy '2' is outside"):
        prepare_accuracy("resnet56", None, DIGITS, min_accuracy="2")
    five = tmp_path / "five.pt"
    torch.save(build_model("resnet56", num_classes=5).state_dict(), five)
    with pytest.raises(HdapError,
                       match=r"has 3 classes but the weights in five.pt have 5 outputs"):
        prepare_accuracy("resnet56", str(five), make_folder(tmp_path / "ds"))


def test_heldout_figures_of_the_demo_weights_pruned_then_calibrated(space):
    from hdap_engine.accuracy.study import heldout_figures, prepare_accuracy

    ctx = prepare_accuracy("resnet56", str(DEMO),
                           DIGITS, n_bn=128, n_eval=64)
    pruned = prune_candidate(ctx.model, space, uniform_widths(space, 0.5 * space.base_macs))
    figures = heldout_figures(ctx, pruned)
    assert figures["unpruned"].top1 >= 0.98 and figures["unpruned"].n == ctx.data.n_heldout
    # Re-estimating batch norm recovers much of what plain pruning loses.
    assert figures["calibrated"].top1 > figures["pruned"].top1 + 0.05
    block = accuracy_block(ctx.data, **figures, n_calibration=ctx.calib.n_bn)
    assert block["calibrated"] == figures["calibrated"].top1


def test_candidate_block_without_data_is_unknown_and_columns_show_dashes(space):
    from hdap_engine.accuracy.study import accuracy_columns, candidate_block

    block = candidate_block(None, space, space.base_widths)
    assert block["status"].startswith("unknown")
    assert accuracy_columns(block) == {"pruned top-1": "-", "calibrated top-1": "-",
                                       "fine-tuned top-1": "-"}
    assert accuracy_columns({"calibrated": 0.9123})["calibrated top-1"] == "91.2%"
