"""The host backend measures in the runtime that ships: torch, TorchScript or ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdap_engine.errors import HdapError
from hdap_engine.latency.backends import HostBackend
from hdap_engine.latency.runtimes import RUNTIMES, prepare
from hdap_engine.latency.store import Store, runtime_of
from hdap_engine.models.zoo import build_model, get_spec
from hdap_engine.options import StudyOptions
from hdap_engine.pruning.space import PruningSpace


def test_every_runtime_computes_what_torch_computes():
    model = build_model("resnet56").eval()
    x = get_spec("resnet56").example_input()
    with torch.inference_mode():
        expected = model(x).numpy()
    for runtime in RUNTIMES:
        (run,) = prepare([model], x, runtime)
        with torch.inference_mode():
            out = run(x)
        out = out[0] if isinstance(out, list) else out.numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-4, err_msg=runtime)


def test_the_runtime_is_part_of_the_measurement_key_and_named_in_the_source(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    space = PruningSpace.for_model("resnet56")
    widths = space.widths_from_ratios(np.full(space.n_groups, 0.5))[None]
    torch_backend, ort_backend = HostBackend(), HostBackend(runtime="onnxruntime")
    assert "onnxruntime" in ort_backend.source and "torch" in torch_backend.source
    # Eager torch keeps the key it had before runtimes existed: old rows stay valid.
    assert ":runtime=" not in torch_backend.device_key("d") and runtime_of(torch_backend.device_key("d")) == "torch"
    assert runtime_of(ort_backend.device_key("d")) == "onnxruntime"
    a = ort_backend.measure(space, widths, ["d"], repeats=3, warmup=1, store=store)
    assert a.n_measured == 1 and a.source == ort_backend.source and np.isfinite(a.median_ms).all()
    # Served from the store in the same runtime, measured anew in another.
    assert ort_backend.measure(space, widths, ["d"], repeats=3, warmup=1, store=store).n_measured == 0
    assert torch_backend.measure(space, widths, ["d"], repeats=3, warmup=1, store=store).n_measured == 1


def test_an_unknown_runtime_is_one_clear_line():
    with pytest.raises(HdapError, match="unknown runtime 'tflite'; choose one of: torch, torchscript, onnxruntime"):
        HostBackend(runtime="tflite")
    with pytest.raises(HdapError, match="unknown runtime"):
        StudyOptions.of(host_runtime="tflite")


def test_the_runtime_flag_reaches_the_study_options():
    from hdap_engine.cli import build_parser
    from hdap_engine.cli.flags import study_options

    args = build_parser().parse_args(["bench", "--model", "resnet56", "--macs", "0.5", "--telemetry", "x.csv",
                                      "--backend", "host", "--runtime", "onnxruntime"])
    assert study_options(args).measurement.host_runtime == "onnxruntime"
