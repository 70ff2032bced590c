"""Bundles (`hdap_engine.export`): every format loads, runs and agrees with the pruned model; a bundle's files and report read back."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hdap_engine.errors import HdapError
from hdap_engine.export.reading import bundle_files, load_bundle, read_bundle_report
from hdap_engine.models.zoo import get_spec
from hdap_engine.pruning.baseline import export_result, prune_baseline

REPORT_KEYS = {"model", "method", "budget", "macs", "params", "base_macs", "base_params",
               "widths", "created_at", "versions"}


def _agree(bundle, model_name, atol=1e-4):
    x = get_spec(model_name).example_input()
    rebuilt, report = load_bundle(bundle)
    with torch.no_grad():
        ref = rebuilt(x).numpy()
        ts = torch.jit.load(str(bundle / "model.ts"))(x).numpy()
        prog = torch.export.load(str(bundle / "model.pt2")).module()(x).numpy()
    onnx.checker.check_model(str(bundle / "model.onnx"))
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    onx = sess.run(None, {"input": x.numpy()})[0]
    for other in (ts, prog, onx):
        assert np.abs(other - ref).max() < atol
    return report


def test_bundle_round_trip_resnet56(tmp_path):
    result = prune_baseline("resnet56", "0.5", "global", seed=1)
    bundle = export_result(result, tmp_path / "b")
    report = _agree(bundle, "resnet56")
    assert REPORT_KEYS <= set(report)
    assert report["method"] == "global"
    assert abs(report["macs"] / result.report["budget_macs"] - 1) < 0.01
    widths = json.loads((bundle / "widths.json").read_text())
    assert [g["width"] for g in widths["groups"]] == result.widths.tolist()
    assert all(len(g["kept"]) == g["width"] for g in widths["groups"])
    # the zip holds the same bundle and rebuilds the same model
    zipped = tmp_path / "b.zip"
    assert zipfile.is_zipfile(zipped)
    model, _ = load_bundle(zipped)
    x = get_spec("resnet56").example_input()
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-5)


def test_a_failed_export_keeps_the_earlier_bundle(tmp_path, monkeypatch):
    import hdap_engine.export.bundle as export

    good = export_result(prune_baseline("resnet56", "0.5", "uniform"), tmp_path / "b")
    before = (good / "report.json").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "export_onnx", broken)
    with pytest.raises(RuntimeError):
        export_result(prune_baseline("resnet56", "0.3", "uniform"), tmp_path / "b")
    assert (good / "report.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]


def test_a_model_that_is_not_the_candidate_is_not_exported(tmp_path):
    from hdap_engine.export.bundle import export_bundle

    result = prune_baseline("resnet56", "0.5", "uniform")
    other = result.space.base_widths  # the unpruned candidate, not the model's
    with pytest.raises(HdapError, match="does not have the candidate's widths"):
        export_bundle(result.model, result.space, other, tmp_path / "b", result.report)
    assert not (tmp_path / "b").exists()


def test_a_folder_that_is_not_a_bundle_is_refused(tmp_path):
    with pytest.raises(HdapError, match="not a bundle"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "widths.json").write_text("{}")
    with pytest.raises(HdapError, match="no weights.pt"):
        load_bundle(tmp_path / "half")


@pytest.mark.slow
def test_cli_prunes_resnet50_to_1g_and_every_format_agrees(cli, tmp_path):
    out = tmp_path / "D"
    res = cli("prune", "--model", "resnet50", "--macs", "1.0G", "--method", "uniform",
              "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert abs(report["macs"] / 1.0e9 - 1) < 0.01
    _agree(out, "resnet50")


def test_models_command_lists_the_six_models_and_how_to_name_the_rest(cli):
    res = cli("models")
    assert res.returncode == 0, res.stderr
    table, naming = res.stdout.strip().split("\n\n", 1)
    lines = table.splitlines()
    assert len(lines) == 8  # a header, the six classifiers and the detection demo
    for form in ("torchvision:NAME", "timm:NAME", "PATH.py:FUNCTION", "--check"):
        assert form in naming
    assert re.search(r"\b80 torchvision classifiers", naming)
    assert re.search(r"\b\d{3,} timm models", naming)
    r50 = next(line for line in lines if line.startswith("resnet50 "))
    assert "4.12 G" in r50 and "3x224x224" in r50


def test_flops_is_an_alias_of_macs(cli):
    res = cli("prune", "--help")
    assert "--flops" in res.stdout and "multiply-accumulates" in res.stdout


def test_a_wrong_flag_is_one_error_line(cli):
    res = cli("prune", "--model", "resnet50", "--bogus")
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_bundle_files_and_report_of_a_bundle(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "model.ts").write_bytes(b"ts")
    (bundle / "report.json").write_text(json.dumps({"model": "resnet56"}))
    (tmp_path / "b.zip").write_bytes(b"zip")
    assert set(bundle_files(bundle)) == {"bundle", "model.ts", "report.json"}
    assert read_bundle_report(bundle) == {"model": "resnet56"}
    (bundle / "report.json").write_text("{not json")
    with pytest.raises(HdapError, match="not valid JSON"):
        read_bundle_report(bundle)
    with pytest.raises(HdapError, match="no report.json"):
        read_bundle_report(tmp_path / "missing")

