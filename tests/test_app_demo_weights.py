"""The Model page offers the shipped trained demo weights, with their held-out accuracy."""

from __future__ import annotations

import pytest

from tests.helpers.apptest import ok, start

pytestmark = pytest.mark.app


def test_model_page_offers_trained_demo_weights_for_resnet56_and_says_how_accurate():
    at = start()
    ok(at.switch_page("views/model.py").run())
    ok(at.selectbox(key="model").set_value("resnet56").run())
    ok(at.radio(key="weights_mode").set_value("demo").run())
    assert any("trained demo weights (digits): 98.9% top-1 on 359 held-out images" in s.value
               for s in at.success)
    assert not any("random initialisation" in w.value for w in at.warning)


def test_demo_weights_for_a_model_without_them_stay_random_and_say_so():
    at = start()
    ok(at.switch_page("views/model.py").run())
    ok(at.radio(key="weights_mode").set_value("demo").run())
    ok(at.selectbox(key="model").set_value("resnet18").run())
    assert any("shipped for resnet56" in i.value for i in at.info)
    assert any("random initialisation" in w.value for w in at.warning)
