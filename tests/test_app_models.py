"""The Model page's catalogues (Streamlit's AppTest, no browser): a torchvision classifier
picked by name, and a model from a Python file only where the operator allows it."""

from __future__ import annotations

import pytest

from tests.helpers.apptest import ok, start
from tests.test_naming import PLAIN

pytestmark = pytest.mark.app


def test_a_torchvision_classifier_is_picked_from_its_catalogue(samples, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty local cache
    at = start()
    ok(at.switch_page("views/model.py").run())
    assert "file" not in at.radio(key="model_source").options
    ok(at.radio(key="model_source").set_value("torchvision").run())
    picker = at.selectbox(key="model_pick_torchvision")
    assert len(picker.options) == 80 and "resnet18" in picker.options
    ok(picker.set_value("resnet18").run())
    assert at.session_state["model"] == "torchvision:resnet18"
    assert not at.error
    assert any("12 prunable groups, input 3x224x224" in c.value for c in at.caption)
    assert "published weights (local cache only)" in at.radio(key="weights_mode").options
    ok(at.radio(key="weights_mode").set_value("pretrained").run())
    # Nothing is downloaded: without the file in the cache the badge says random, and why.
    assert any("no pretrained weights in torchvision's hub cache" in w.value
               for w in at.warning)


def test_a_model_file_is_offered_only_when_the_operator_allows_it(samples, monkeypatch):
    monkeypatch.delenv("HDAP_ALLOW_MODEL_FILES", raising=False)
    at = start()
    ok(at.switch_page("views/model.py").run())
    assert at.radio(key="model_source").options == ["registered", "torchvision", "timm",
                                                      "detector (boxes, mAP)"]
    assert not at.get("file_uploader") or all(u.key != "model_file"
                                               for u in at.get("file_uploader"))
    monkeypatch.setenv("HDAP_ALLOW_MODEL_FILES", "1")
    at = start()
    ok(at.switch_page("views/model.py").run())
    ok(at.radio(key="model_source").set_value("file").run())
    ok(at.text_input(key="model_function").set_value("plain").run())
    ok(at.text_input(key="model_input_shape").set_value("3,16,16").run())
    ok(at.file_uploader(key="model_file").set_value(("plain.py", PLAIN.encode(),
                                                     "text/x-python")).run())
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["model"].startswith("file:")
    assert any("plain from plain.py" in c.value for c in at.caption)
