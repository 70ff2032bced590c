"""Candidates exported for timing (`hdap_engine.export.timing`): one ONNX template per space.

A derived file must run in ONNX Runtime as the pruned PyTorch model does and
optimise to the same graph as a candidate traced afresh, so that what a device
times is what the slow export would have sent.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hdap_engine.export import timing
from hdap_engine.latency.sampling import sample_candidates
from hdap_engine.pruning.space import PruningSpace


@pytest.fixture(scope="module")
def space():
    return PruningSpace.for_model("resnet56")


def _optimised_ops(body: bytes, tmp_path, name: str) -> collections.Counter:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / name)
    options.log_severity_level = 3
    ort.InferenceSession(body, sess_options=options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(tmp_path / name).graph.node)


def test_a_derived_candidate_computes_what_pytorch_does_and_optimises_like_a_traced_one(
        space, tmp_path):
    assert timing.template_status(space)
    widths = sample_candidates(space, 2, seed=7)[1]
    body = timing.onnx_for_timing(space, widths)
    model = timing.pruned_for_timing(space, widths)
    x = np.random.default_rng(1).standard_normal((1, *space.input_shape)).astype(np.float32)
    got = ort.InferenceSession(body, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    # The template's weights were replaced: a derived file is the candidate's size.
    traced = timing.export_for_timing(space, widths, "onnx")
    assert abs(len(body) - len(traced)) < 0.2 * len(traced)
    assert _optimised_ops(body, tmp_path, "derived.onnx") == \
        _optimised_ops(traced, tmp_path, "traced.onnx")


def test_a_template_that_disagrees_with_pytorch_is_not_used(space, monkeypatch):
    monkeypatch.setattr(timing._Template, "agrees", lambda self, model, body: False)
    monkeypatch.setattr(timing, "_templates", {})
    traced = []
    monkeypatch.setattr(timing, "export_for_timing",
                        lambda space, widths, fmt: traced.append(fmt) or b"traced")
    assert not timing.template_status(space)
    assert timing.onnx_for_timing(space, sample_candidates(space, 2, seed=3)[0]) == b"traced"
    assert traced == ["onnx"]
