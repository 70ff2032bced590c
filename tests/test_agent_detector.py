"""The device agent times a detector exported as bundles export it: the whole detector with
its post-processing as ONNX, one image in, boxes / scores / labels out."""

from __future__ import annotations

import pytest

from hdap_engine.agent.client import AgentClient, AgentRejected
from hdap_engine.export.detection import export_detector_onnx
from tests.helpers.agents import TOKEN, start_agent
from tests.helpers.detectors import tiny_ssd

IMAGE = (3, 64, 64)


@pytest.fixture(scope="module")
def detector_onnx(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("det") / "model.onnx"
    export_detector_onnx(tiny_ssd(size=IMAGE[1]), IMAGE, path)  # export_bundle's exporter
    return path.read_bytes()


@pytest.fixture
def agent():
    server = start_agent()
    yield server
    server.stop()


@pytest.mark.parametrize("shape", [(1, *IMAGE), IMAGE], ids=["a study's batch of one",
                                                             "the image itself"])
def test_the_agent_times_a_whole_detector_with_its_post_processing(agent, detector_onnx,
                                                                    shape):
    client = AgentClient(agent.url, TOKEN)
    result = client.measure(detector_onnx, "onnx", shape, warmup=1, repeats=3)
    assert result.runtime.startswith("onnxruntime") and len(result.latencies_ms) == 3
    assert all(t > 0 for t in result.latencies_ms)
    assert result.shape == shape  # the reply names what was asked


def test_a_detector_asked_for_two_images_or_another_size_is_one_line(agent, detector_onnx):
    client = AgentClient(agent.url, TOKEN)
    with pytest.raises(AgentRejected, match="has rank 3 .* shape 2,3,64,64 has rank 4"):
        client.measure(detector_onnx, "onnx", (2, *IMAGE), warmup=1, repeats=1)
    with pytest.raises(AgentRejected, match=r"1,3,32,32 \(a batch of one: the image 3,32,32\) differs at dimension 1"):
        client.measure(detector_onnx, "onnx", (1, 3, 32, 32), warmup=1, repeats=1)


def test_a_detector_candidate_is_exported_for_timing_whole_with_its_post_processing():
    """What the agent backend sends for a detector study's candidate: the detector as the
    bundle ships it (one image in, boxes out), not the bare core."""
    import io

    import onnx

    from hdap_engine.export.timing import export_for_timing
    from hdap_engine.pruning.space import PruningSpace

    space = PruningSpace.for_model("detector_demo")
    graph = onnx.load(io.BytesIO(export_for_timing(space, space.widths_from_ratios(0.5),
                                                   "onnx"))).graph
    assert [i.name for i in graph.input] == ["image"]
    assert len(graph.input[0].type.tensor_type.shape.dim) == 3
    assert {"boxes", "scores", "labels"} <= {o.name for o in graph.output}
