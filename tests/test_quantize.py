"""INT8 after pruning: quantisation round trip, refusals, the store key, the INT8 accuracy path.

Tiny models and few images: every test here takes seconds.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from hdap_engine.errors import HdapError
from hdap_engine.options import QuantizePlan, StudyOptions
from hdap_engine.quantize.images import data_images, random_images
from hdap_engine.quantize.ptq import int8_summary, onnx_bytes, quantize_onnx
from hdap_engine.quantize.session import OrtClassifier


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def tiny_fp32() -> bytes:
    return onnx_bytes(_tiny(), torch.zeros(1, 3, 16, 16), dynamic_batch=True)


def test_int8_outputs_stay_close_to_fp32_on_the_calibration_images(tiny_fp32):
    images = random_images((3, 16, 16), 64, seed=1)
    int8 = quantize_onnx(tiny_fp32, images, calibration="minmax")
    summary = int8_summary(int8)
    assert summary["int8_weight_tensors"] >= 3 and summary["quantize_linear"] > 0
    x = torch.from_numpy(images)
    ref = OrtClassifier(tiny_fp32)(x).numpy()
    got = OrtClassifier(int8)(x).numpy()
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < 0.1, rel
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    # and INT8 really is different arithmetic, not the FP32 model passed through
    assert not np.allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("calibration", ["entropy", "percentile"])
def test_every_calibrator_gives_a_working_model(tiny_fp32, calibration):
    images = random_images((3, 16, 16), 16, seed=2)
    int8 = quantize_onnx(tiny_fp32, images, calibration=calibration)
    assert OrtClassifier(int8)(torch.from_numpy(images)).shape == (16, 10)


def test_one_calibration_image_is_one_clear_error(tiny_fp32):
    with pytest.raises(HdapError, match="at least 2 images, got 1"):
        quantize_onnx(tiny_fp32, random_images((3, 16, 16), 2)[:1])
    with pytest.raises(HdapError, match="at least 2 images"):
        QuantizePlan(quant_images=1)


def test_an_op_the_quantiser_cannot_quantise_is_named():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    node = helper.make_node("Einsum", ["x", "W"], ["y"], equation="ij,jk->ik", name="mix")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              [w])
    body = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(HdapError, match=r"cannot quantise Einsum \(mix\)"):
        quantize_onnx(body.SerializeToString(), np.ones((4, 2, 4), np.float32))
    assert onnx.checker.check_model(body) is None


def test_int8_options_refuse_what_cannot_work_and_round_to_follows_the_precision():
    with pytest.raises(HdapError, match="--precision int8 calibrates on the --data images"):
        StudyOptions.of(precision="int8")
    with pytest.raises(HdapError, match="add --runtime onnxruntime"):
        StudyOptions.of(precision="int8", backend="host", calibrate_on="random")
    fp32 = StudyOptions.of()
    int8 = fp32.updated(precision="int8", calibrate_on="random")
    assert (fp32.round_to, int8.round_to) == (8, 16)
    assert int8.updated(precision="fp32").round_to == 8
    assert StudyOptions.of(precision="int8", data="digits", round_to=4).round_to == 4
    assert StudyOptions.from_settings(int8.settings()) == int8


def test_precision_is_part_of_the_store_key(small_fleet):
    from hdap_engine.fleet.telemetry import load_fleet
    from hdap_engine.latency.backends import HostBackend
    from hdap_engine.latency.construct import make_backend
    from hdap_engine.latency.store import Store, precision_of
    from hdap_engine.pruning.space import PruningSpace

    host32 = HostBackend(runtime="onnxruntime")
    host8 = HostBackend(runtime="onnxruntime", precision="int8")
    assert host8.device_key("d") == host32.device_key("d") + ":precision=int8"
    assert (precision_of(host32.device_key("d")), precision_of(host8.device_key("d"))) == \
        ("fp32", "int8")
    assert "int8" in host8.source and "CPUExecutionProvider" in host8.source

    fleet = load_fleet(small_fleet)
    opts = StudyOptions.of(model="resnet56", precision="int8", calibrate_on="random")
    twin8, _ = make_backend(opts.measurement, fleet, small_fleet)
    twin32, _ = make_backend(StudyOptions.of(model="resnet56").measurement, fleet, small_fleet)
    dev = fleet.device_ids[0]
    assert precision_of(twin8.device_key(dev)) == "int8"
    assert precision_of(twin32.device_key(dev)) == "fp32"
    assert twin8.source == "twin (simulated, int8)"
    space = PruningSpace.for_model("resnet56")
    store = Store()
    w = space.base_widths[None]
    m8 = twin8.measure(space, w, [dev], repeats=3, store=store)
    m32 = twin32.measure(space, w, [dev], repeats=3, store=store)
    assert m8.n_measured == 1 and m32.n_measured == 1  # FP32 is not served INT8 rows
    assert m8.median_ms[0, 0] != m32.median_ms[0, 0]
    assert twin8.measure(space, w, [dev], repeats=3, store=store).n_measured == 0


def test_the_int8_twin_changes_throughput_channel_multiples_bytes_and_edges():
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.twin import Twin, get_preset
    from hdap_engine.twin.int8 import Int8Twin, int8_preset
    from hdap_engine.twin.states import DeviceStates

    rpi = get_preset("rpi4")
    q = int8_preset(rpi)
    assert q.bytes_per_elem == 1 and q.channel_tile == 16 and q.eff_conv == 2 * rpi.eff_conv
    space = PruningSpace.for_model("resnet50")
    table = space.layer_table(space.base_widths[None])
    states = DeviceStates.nominal(1, sku="rpi4")
    fp32 = Twin(rpi).expected_ms(table, states)[0, 0]
    int8_twin = Int8Twin(rpi)
    int8 = int8_twin.expected_ms(table, states)[0, 0]
    assert int8 < 0.8 * fp32  # twice the conv throughput, a quarter of the bytes
    assert int8_twin.edge_ms(table, states)[0, 0] > 0
    # a width off the INT8 multiple of 16 but on FP32's 8 wastes INT8 lanes
    w = space.base_widths.copy()
    w[0] = 72  # the stem: 64 -> 72 adds channels that fill one more 16-lane tile, 5/8 empty
    t2 = space.layer_table(w[None])
    assert int8_twin.expected_ms(t2, states)[0, 0] > int8


@pytest.mark.slow  # 37 s on the loaded 2-core machine: export, calibrate, two evaluations
def test_int8_accuracy_is_measured_by_onnx_runtime_on_the_bundle(tmp_path):
    from hdap_engine.data import load_data
    from hdap_engine.export.bundle import export_bundle
    from hdap_engine.models.zoo import build_model
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.quantize.bundle import add_int8
    from tests.helpers.paths import DEMO

    space = PruningSpace.for_model("resnet56")
    model = build_model("resnet56", str(DEMO))
    data = load_data("digits", model="resnet56", seed=0)
    out = export_bundle(model, space, space.base_widths, tmp_path / "b",
                        {"method": "none", "accuracy": {"calibrated": 0.9889}},
                        formats=("onnx",))
    block = add_int8(out, QuantizePlan(quant_images=64), data=data)
    assert (out / "model.int8.onnx").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["precision"] == "int8" and report["quantization"] == block
    assert "model.int8.onnx" in report["files"]
    with zipfile.ZipFile(f"{out}.zip") as zf:
        assert "b/model.int8.onnx" in zf.namelist()
    assert block["n_calibration"] == 64 and block["calibration"] == "minmax"
    assert block["n_heldout"] == data.n_heldout
    assert abs(block["fp32_onnx_top1"] - 0.9889) < 0.006  # ORT FP32 = PyTorch FP32
    assert block["top1"] > 0.95 and block["drop_points"] < 3
    assert block["suggest_qat"] == (block["drop_points"] > 1.0)
    assert block["provider"] == "CPUExecutionProvider"


def test_random_calibration_is_refused_without_the_flag_and_warns_with_it(tmp_path):
    from hdap_engine.export.bundle import export_bundle
    from hdap_engine.models.zoo import build_model
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.quantize.bundle import add_int8

    space = PruningSpace.for_model("resnet56")
    out = export_bundle(build_model("resnet56"), space, space.base_widths, tmp_path / "r",
                        {"method": "none"}, formats=("onnx",))
    with pytest.raises(HdapError, match="add --calibrate-on random"):
        add_int8(out, QuantizePlan(), data=None)
    block = add_int8(out, QuantizePlan(calibrate_on="random", quant_images=4))
    report = json.loads((out / "report.json").read_text())
    assert block["top1"] is None and "random inputs" in block["warnings"][0]
    assert any("random inputs" in n for n in report["notes"])


def test_data_images_come_from_the_training_part_preprocessed():
    from hdap_engine.data import load_data

    data = load_data("digits", model="resnet56", seed=0)
    images = data_images(data, 20, seed=0)
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.float32
    assert abs(float(images.mean())) < 1.0  # normalised, not raw pixels


def test_int8_without_data_is_one_line_from_the_cli(cli, small_fleet):
    done = cli("optimize", "--model", "resnet56", "--telemetry", str(small_fleet), "--macs",
               "0.5", "--precision", "int8", "--out", "x")
    assert done.returncode == 2
    assert "--calibrate-on random" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_agent_receives_the_int8_model_and_names_its_provider():
    from hdap_engine.latency.agent_backend import AgentBackend
    from hdap_engine.latency.store import precision_of
    from hdap_engine.pruning.space import PruningSpace
    from tests.helpers.agents import TOKEN, start_agent

    agent = start_agent()
    try:
        space = PruningSpace.for_model("resnet56")
        backend = AgentBackend({"dev-a": agent.url}, TOKEN, precision="int8")
        got = backend.measure(space, space.base_widths[None], ["dev-a"], repeats=2, warmup=0)
        assert np.isfinite(got.median_ms).all()
        assert precision_of(backend.device_key("dev-a")) == "int8"
        assert backend.source == "agent (real, int8 ONNX)"
        details = backend.details()
        assert details["precision"] == "int8"
        assert details["runtime"]["dev-a"].startswith("onnxruntime ")
        assert "(CPUExecutionProvider)" in details["runtime"]["dev-a"]
    finally:
        agent.stop()
    with pytest.raises(HdapError, match="format must be onnx"):
        AgentBackend({"d": "http://127.0.0.1:1"}, TOKEN, precision="int8", format="torchscript")
