"""Detectors: by name, their pruning space (the core), pruning, and ONNX with post-processing."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from hdap_engine.errors import HdapError
from hdap_engine.models.detection import (
    DetectorCore,
    classes_in_detector_state,
    core_input,
    estimate_batch_norm,
    is_detector,
    num_classes_of_detector,
    predictor_layers,
)
from hdap_engine.models.zoo import build_model, get_spec, resolve_model

DEMO = "detector_demo"


def test_torchvision_detectors_resolve_with_their_real_input_size():
    expected = {"ssdlite320_mobilenet_v3_large": (3, 320, 320), "ssd300_vgg16": (3, 300, 300),
                "fcos_resnet50_fpn": (3, 800, 800),
                "fasterrcnn_mobilenet_v3_large_320_fpn": (3, 320, 320)}
    for name, shape in expected.items():
        spec = get_spec(f"torchvision:{name}")
        assert spec.task == "detection" and spec.input_shape == shape
        assert spec.num_classes == 91  # COCO's ids, background included


def test_a_shape_in_the_key_sets_the_detectors_transform():
    ref = resolve_model("torchvision:fcos_resnet50_fpn", input_shape="3,128,160")
    assert ref.key == "torchvision:fcos_resnet50_fpn@3x128x160" and ref.task == "detection"
    model = build_model(ref.key, num_classes=3)
    assert tuple(core_input(model, (3, 128, 160)).shape) == (1, 3, 128, 160)


def test_the_predictors_output_layers_are_the_never_pruned_ones():
    spec = get_spec("torchvision:retinanet_resnet50_fpn_v2")
    assert spec.classifier.split(",") == ["head.classification_head.cls_logits",
                                          "head.regression_head.bbox_reg"]
    rcnn = get_spec("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn").classifier.split(",")
    assert set(rcnn) == {"rpn.head.cls_logits", "rpn.head.bbox_pred",
                         "roi_heads.box_predictor.cls_score",
                         "roi_heads.box_predictor.bbox_pred"}


def test_the_demo_registration_names_the_predictors_its_build_has():
    model = build_model(DEMO)
    assert get_spec(DEMO).classifier.split(",") == predictor_layers(model)


def test_classes_come_from_the_detectors_state_dict():
    state = build_model(DEMO, num_classes=3).state_dict()
    assert classes_in_detector_state(state) == 3
    torch.save(state, buf := __import__("io").BytesIO())
    model = build_model(DEMO, buf.getvalue())
    assert num_classes_of_detector(model) == 3


def test_a_user_file_following_torchvisions_interface_is_a_detector(tmp_path):
    src = tmp_path / "det.py"
    src.write_text(textwrap.dedent("""
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large

        def build(num_classes=5):
            return ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                 num_classes=num_classes, width_mult=0.25)
    """))
    ref = resolve_model(f"{src}:build", input_shape="3,96,96")
    assert ref.task == "detection" and ref.num_classes == 5 and ref.input_shape == (3, 96, 96)
    assert "head.regression_head.module_list.5.1" in ref.classifier.split(",")


def test_a_file_whose_output_is_neither_logits_nor_detections_is_one_line(tmp_path):
    src = tmp_path / "odd.py"
    src.write_text(textwrap.dedent("""
        import torch

        class Odd(torch.nn.Module):
            def forward(self, x):
                return [{"foo": x}]

        def build():
            return Odd()
    """))
    with pytest.raises(HdapError, match="neither logits nor detections"):
        resolve_model(f"{src}:build", input_shape="3,32,32")


def test_a_classifier_is_not_a_detector():
    model = build_model("resnet56")
    assert not is_detector(model, (3, 32, 32))


@pytest.fixture(scope="module")
def pruned_demo(tmp_path_factory):
    from hdap_engine.pruning.apply import count_macs_params, prune_to_widths
    from hdap_engine.pruning.cache import clear_memory
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.search.baselines import uniform_widths

    # A module fixture runs before the per-test workspace: give it its own.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HDAP_HOME", str(tmp_path_factory.mktemp("hdap_home")))
        clear_memory()
        space = PruningSpace.for_model(DEMO)
    model = build_model(DEMO)
    base_counter, _ = count_macs_params(model, space)
    widths = uniform_widths(space, 0.5 * space.base_macs)
    kept = prune_to_widths(model, space, widths)
    # A random detector scores every anchor alike (its deep activations vanish): with
    # batch-norm statistics estimated, the ONNX check compares ordered detections.
    estimate_batch_norm(model, (3, 160, 160))
    return space, model, widths, kept, base_counter


def test_the_demo_detectors_core_is_pruned_with_macs_equal_to_the_counter(pruned_demo):
    from hdap_engine.pruning.apply import count_macs_params

    space, model, widths, _, base_counter = pruned_demo
    assert space.base_macs == base_counter
    macs, _ = count_macs_params(model, space)
    assert macs == space.macs(widths)
    assert 0.45 <= macs / space.base_macs <= 0.51
    groups = {m for g in space.groups for m in g.members}
    assert any(m.startswith("backbone.features") for m in groups)
    assert any(m.startswith("backbone.extra") for m in groups)  # SSDlite's neck
    assert any(m.startswith("head.") for m in groups)
    assert not groups & set(space.layers.names) & set(get_spec(DEMO).classifier.split(","))
    with torch.no_grad():
        out = model([torch.rand(3, 160, 160)])
    assert out[0]["boxes"].shape[1] == 4


def test_the_bundle_of_a_detector_is_onnx_with_post_processing_that_matches(pruned_demo,
                                                                            tmp_path):
    import onnxruntime as ort

    from hdap_engine.export.bundle import export_bundle

    space, model, widths, kept, _ = pruned_demo
    out = export_bundle(model, space, widths, tmp_path / "b", {"method": "uniform"}, kept=kept)
    report = json.loads((out / "report.json").read_text())
    check = report["onnx_check"]
    assert check["ok"] and check["compared"] > 0.9 * check["detections"], check
    assert check["matched"] == check["compared"], check
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json", "weights.pt",
                                                     "widths.json"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.rand(3, 160, 160).astype(np.float32)
    boxes, scores, labels = session.run(["boxes", "scores", "labels"], {"image": image})
    assert boxes.shape[1] == 4 and len(scores) == len(labels) == len(boxes)


def test_the_core_of_a_two_stage_detector_prices_its_box_head_for_its_proposals():
    model = build_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn@3x64x64",
                        num_classes=3)
    core = DetectorCore(model, rois=7).eval()
    with torch.no_grad():
        out = core(core_input(model, (3, 64, 64)))
    assert out.ndim == 2 and out.shape[0] == 1
    # seven proposals: 3 scores and 3 x 4 box deltas each
    assert out.shape[1] >= 7 * (3 + 12)
