"""The shipped demo weights: a ResNet-56 trained on digits by `hdap train`, >= 98 % held out."""

from __future__ import annotations

import json

import torch

from hdap_engine.accuracy.evaluate import evaluate
from hdap_engine.data import load_data
from hdap_engine.models.zoo import build_model
from tests.helpers.paths import DEMO


def test_demo_weights_are_a_small_plain_state_dict():
    assert DEMO.stat().st_size < 5 * 1024**2
    state = torch.load(DEMO, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_demo_weights_score_at_least_98_percent_on_the_held_out_split_they_never_saw():
    record = json.loads(DEMO.with_name(DEMO.name + ".json").read_text())
    data = load_data("digits", model="resnet56")
    # The same split as in training: held-out images were not trained on.
    assert record["data_fingerprint"] == data.fingerprint
    assert record["n_heldout"] == data.n_heldout == 359
    ev = evaluate(build_model("resnet56", str(DEMO)), data.heldout)
    assert ev.top1 >= 0.98
    assert abs(ev.top1 - record["accuracy"]["top1"]) < 1e-9
