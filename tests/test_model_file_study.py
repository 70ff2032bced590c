"""A user's own network from a file goes through prune, optimize (twin) and finetune.

The file (written here) has a dense block (concatenation), a grouped
convolution, a squeeze-excitation gate and a residual: the shapes of network
the pruning space once refused. Every step runs as a user runs it (the CLI
in a subprocess), and the exported ONNX model gives the pruned PyTorch
model's outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers.images import write_digit_folder
from tests.test_naming import RICH

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rich_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "rich.py"
    path.write_text(RICH)
    return path


def _onnx_matches(bundle) -> None:
    import onnxruntime as ort

    from hdap_engine.export.reading import load_bundle

    model, _ = load_bundle(bundle)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x).numpy()
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-4


def test_a_file_model_is_optimised_on_the_twin_and_exported(rich_file, small_fleet, tmp_path,
                                                            cli):
    out = tmp_path / "opt"
    res = cli("optimize", "--model", f"{rich_file}:build", "--input-shape", "3,32,32",
              "--telemetry", str(small_fleet), "--macs", "50%", "--round-to", "4",
              "--samples", "30", "--repeats", "2", "--population", "16", "--generations", "6",
              "--restarts", "1", "--polish-rounds", "1", "--refine-rounds", "1",
              # One representative per cluster, one refinement: what is pinned is a file
              # model through the whole study to its exports, not how well it is searched.
              "--representatives", "1", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model_ref"]["source"] == "file"
    assert report["macs"] <= 0.5 * report["base_macs"] * 1.0001
    _onnx_matches(out)


def test_a_file_model_is_pruned_and_fine_tuned_on_tiny_data(rich_file, tmp_path, cli):
    from hdap_engine.models.zoo import build_model, resolve_model

    digits = write_digit_folder(tmp_path / "digits", 6)
    # The user's "trained" weights (the teacher of the distillation): a saved state dict.
    weights = tmp_path / "rich.pt"
    torch.save(build_model(resolve_model(f"{rich_file}:build", "3,32,32").key, seed=3)
               .state_dict(), weights)
    pruned = tmp_path / "pruned"
    res = cli("prune", "--model", f"{rich_file}:build", "--input-shape", "3,32,32",
              "--model-weights", str(weights), "--macs", "50%", "--round-to", "4",
              "--method", "uniform", "--out", str(pruned))
    assert res.returncode == 0, res.stderr
    _onnx_matches(pruned)
    tuned = tmp_path / "tuned"
    res = cli("finetune", str(pruned), "--data", str(digits), "--epochs", "1",
              "--model-weights", str(weights), "--batch-size", "16", "--out", str(tuned),
              "--quiet")
    assert res.returncode == 0, res.stderr
    report = json.loads((tuned / "report.json").read_text())
    assert report["accuracy"]["finetune"]["epochs"] == 1
    _onnx_matches(tuned)
