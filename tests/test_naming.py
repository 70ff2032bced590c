"""Naming any classifier (`hdap_engine.models`): torchvision:/timm: names, the user's file,
`ModelRef`, bundles and jobs of a file model, and one line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hdap_engine.errors import HdapError
from hdap_engine.models.spec import ModelRef
from hdap_engine.models.zoo import build_model, get_spec, resolve_model
from tests.helpers.paths import ROOT

# A small network a test writes to a file: a dense block (cat), a grouped convolution, a
# squeeze-excitation gate and a residual, the way users' networks are built.
RICH = textwrap.dedent('''
    import torch
    from torch import nn


    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.reduce = nn.Conv2d(c, c // 4, 1)
            self.expand = nn.Conv2d(c // 4, c, 1)

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


    def cbr(cin, cout, k=3, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())


    class Rich(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = cbr(3, 16)
            self.dense1, self.dense2 = cbr(16, 8), cbr(24, 8)
            self.transition = cbr(32, 32, k=1)
            self.grouped = cbr(32, 32, groups=4)
            self.se = SE(32)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, num_classes)

        def forward(self, x):
            x = self.stem(x)
            x = torch.cat([x, self.dense1(x)], 1)
            x = torch.cat([x, self.dense2(x)], 1)
            x = self.transition(x)
            x = x + self.se(self.grouped(x))
            return self.fc(torch.flatten(self.pool(x), 1))


    def build(num_classes=10):
        return Rich(num_classes)


    def raises():
        raise RuntimeError("no GPU on this machine")


    def feature_map():
        return nn.Conv2d(3, 4, 3)


    def integer():
        return 42
''')

# What today's pruning space already takes: convolutions, batch norm and a residual.
PLAIN = textwrap.dedent('''
    import torch
    from torch import nn


    class Plain(nn.Module):
        def __init__(self, num_classes=4):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(32)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(x + self.bn2(self.conv2(x)))
            x = torch.relu(self.bn3(self.conv3(x)))
            return self.fc(torch.flatten(self.pool(x), 1))


    def plain(num_classes=4):
        return Plain(num_classes)
''')


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _forget_resolved() -> None:
    """What a fresh process knows: nothing resolved yet."""
    from hdap_engine.models import userfile, zoo

    zoo._resolved_spec.cache_clear()
    userfile.file_spec.cache_clear()
    userfile._module.cache_clear()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- naming forms ----------------------------------------------------------------------------

def test_a_torchvision_name_resolves_to_its_crop_size_and_last_linear():
    spec = get_spec("torchvision:resnet18")
    assert (spec.input_shape, spec.classifier, spec.num_classes) == ((3, 224, 224), "fc", 1000)
    assert get_spec("torchvision:inception_v3").input_shape == (3, 299, 299)
    # ViT-H/14's default weights are at 518, but built without them it takes 224 only
    assert get_spec("torchvision:vit_h_14").input_shape == (3, 224, 224)
    assert get_spec("torchvision:squeezenet1_0").classifier == "classifier.1"  # a conv head


def test_a_timm_name_resolves_and_builds_without_a_download(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    spec = get_spec("timm:mobilenetv3_small_050")
    assert (spec.input_shape, spec.classifier, spec.num_classes) == \
        ((3, 224, 224), "classifier", 1000)
    model = build_model("timm:mobilenetv3_small_050@3x64x64", num_classes=3)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_a_file_model_is_kept_in_the_workspace_and_rebuilds_without_the_users_file(tmp_path):
    import os

    path = _write(tmp_path, "rich.py", RICH)
    ref = resolve_model(f"{path}:build", "3,32,32")
    assert (ref.source, ref.name, ref.classifier, ref.num_classes) == ("file", "build", "fc", 10)
    assert ref.key == f"file:{ref.sha256[:16]}:build@3x32x32" and ref.file_name == "rich.py"
    kept = Path(os.environ["HDAP_HOME"]) / "models" / f"{ref.sha256}.py"
    assert kept.read_text() == RICH
    path.unlink()
    _forget_resolved()
    model = build_model(ref.key, num_classes=5, seed=1)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    assert get_spec(ref.key).description.startswith("build from rich.py")


def test_a_file_model_with_a_dense_block_grouped_conv_se_gate_and_residual_prunes(tmp_path):
    from hdap_engine.pruning.apply import count_macs_params, prune_to_widths
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.search.baselines import uniform_widths

    key = resolve_model(f"{_write(tmp_path, 'rich.py', RICH)}:build", "3,32,32").key
    space = PruningSpace.for_model(key, round_to=4)
    model = build_model(key)
    widths = uniform_widths(space, 0.5 * space.base_macs)
    prune_to_widths(model, space, widths)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert space.macs(widths) <= 0.5 * space.base_macs * 1.01
    # The space's MACs are Torch-Pruning's count of the really pruned model, exactly.
    assert space.macs(widths) == count_macs_params(model, space)[0]
    assert {"cat", "mul", "gconv"} <= set(space.layer_table(widths).op)


def test_model_refs_of_every_form_survive_json(tmp_path):
    path = _write(tmp_path, "plain.py", PLAIN)
    for name, shape in (("resnet56", None), ("torchvision:resnet18", "3,160,160"),
                        ("timm:mobilenetv3_small_050", None), (f"{path}:plain", "3,16,16")):
        ref = resolve_model(name, shape, model_weights="pretrained" if "timm" in name else None)
        back = ModelRef.from_json(json.loads(json.dumps(ref.to_json())))
        assert back == ref
        assert get_spec(back.key).input_shape == back.input_shape
    assert resolve_model("torchvision:resnet18", "3,160,160").key == \
        "torchvision:resnet18@3x160x160"
    assert resolve_model("torchvision:resnet18", "3,224,224").key == "torchvision:resnet18"


def test_study_options_fold_the_input_shape_into_the_models_key():
    from hdap_engine.options import StudyOptions

    opt = StudyOptions.of(model="timm:mobilenetv3_small_050", input_shape=(3, 96, 96))
    assert opt.model == "timm:mobilenetv3_small_050@3x96x96" and opt.input_shape is None
    assert StudyOptions.from_settings(json.loads(json.dumps(opt.settings()))) == opt


# -- a file model through a bundle and a job --------------------------------------------------

def test_a_file_models_bundle_rebuilds_in_a_workspace_that_never_saw_the_file(tmp_path,
                                                                              monkeypatch):
    from hdap_engine.export.reading import load_bundle
    from hdap_engine.pruning.baseline import prune_baseline
    from tests.helpers.bundles import export_bundle_fast

    key = resolve_model(f"{_write(tmp_path, 'plain.py', PLAIN)}:plain", "3,16,16").key
    result = prune_baseline(key, "0.5", "uniform")
    out = export_bundle_fast(result, tmp_path / "bundle")
    doc = json.loads((out / "widths.json").read_text())
    assert doc["format"] == "hdap-widths/2" and doc["model"] == key
    assert doc["model_ref"]["source"] == "file" and (out / "model_source.py").read_text() == PLAIN
    monkeypatch.setenv("HDAP_HOME", str(tmp_path / "elsewhere"))
    (tmp_path / "plain.py").unlink()
    _forget_resolved()
    model, report = load_bundle(out.with_name(out.name + ".zip"))
    x = get_spec(key).example_input()
    assert torch.allclose(model(x), result.model(x), atol=1e-6)
    assert report["model"] == key and report["model_ref"] == doc["model_ref"]
    assert (tmp_path / "elsewhere" / "models" / f"{doc['model_ref']['sha256']}.py").is_file()


def test_a_bundle_whose_model_source_was_changed_is_refused(tmp_path):
    from hdap_engine.export.bundle import widths_document
    from hdap_engine.export.reading import rebuild_model
    from hdap_engine.pruning.baseline import prune_baseline

    key = resolve_model(f"{_write(tmp_path, 'plain.py', PLAIN)}:plain", "3,16,16").key
    result = prune_baseline(key, "0.5", "uniform")
    doc = widths_document(result.space, result.widths, result.kept)
    doc["model_source"] += "\nimport os  # added later\n"
    with pytest.raises(HdapError, match="does not match its sha256") as exc:
        rebuild_model(doc, b"")
    _one_line(exc)


def test_a_format_1_widths_document_still_reads_as_the_zoo(tmp_path):
    import io

    from hdap_engine.export.bundle import widths_document
    from hdap_engine.export.reading import rebuild_model
    from hdap_engine.pruning.baseline import prune_baseline

    result = prune_baseline("resnet56", "0.5", "uniform")
    doc = widths_document(result.space, result.widths, result.kept)
    old = {k: v for k, v in doc.items() if k != "model_ref"} | {"format": "hdap-widths/1"}
    buf = io.BytesIO()
    torch.save(result.model.state_dict(), buf)
    model, space, widths = rebuild_model(old, buf.getvalue())
    assert space.model == "resnet56" and (widths == result.widths).all()


@pytest.mark.slow
def test_a_study_job_on_a_file_model_runs_in_a_fresh_worker(small_fleet, tmp_path):
    from hdap_engine.jobs import JobTable, Runner
    from tests.helpers.studies import quick_options

    key = resolve_model(f"{_write(tmp_path, 'plain.py', PLAIN)}:plain", "3,16,16").key
    (tmp_path / "plain.py").unlink()  # the worker must not need the user's path
    options = quick_options(model=key, round_to=2, samples=24, population=8, generations=4,
                            restarts=1, finalists=2, refine_rounds=0, polish_rounds=0)
    table = JobTable(tmp_path / "store.sqlite")
    runner = Runner(table, max_workers=1, poll=0.05).start()
    try:
        job, _ = runner.submit("study", {"options": options.settings(),
                                         "telemetry": str(small_fleet), "compare": [],
                                         "sweep": False})
        import time

        t0 = time.perf_counter()
        while table.get(job.id).active:
            assert time.perf_counter() - t0 < 240, table.get(job.id).stage
            time.sleep(0.2)
    finally:
        runner.shutdown()
    job = table.get(job.id)
    assert job.state == "done", job.error
    assert job.result["report"]["model"] == key


# -- bad input: one line each ----------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("resnet19", r"unknown model 'resnet19'; closest: resnet18"),
    ("efficientnet_b0", r"did you mean torchvision:efficientnet_b0 or timm:efficientnet_b0"),
    ("torchvision:resnet19", r"torchvision has no classifier of that name; closest: "
                             r"torchvision:resnet18"),
    ("timm:mobilenetv3_smal_050", r"closest: timm:mobilenetv3_small_050"),
])
def test_an_unknown_name_says_the_closest_names_of_its_catalogue(name, expected):
    with pytest.raises(HdapError, match=expected) as exc:
        get_spec(name)
    _one_line(exc)


@pytest.mark.parametrize("function, shape, expected", [
    ("biuld", "3,32,32", r"rich.py does not define a function 'biuld'; did you mean build\?"),
    ("raises", "3,32,32", r"rich.py:raises\(\) raised RuntimeError: no GPU on this machine"),
    ("feature_map", "3,32,32", r"the output is not logits: .* gives shape \(1, 4, 30, 30\)"),
    ("integer", "3,32,32", r"returned a int, not an nn.Module"),
    ("build", None, r"does not say its input shape; give --input-shape"),
    ("build", "3,32", r"--input-shape must be three whole numbers C,H,W"),
    ("build", "3,20000,20000", r"needs about .* GB of memory .* available; give a smaller "
                               r"--input-shape"),
])
def test_a_bad_model_file_is_one_line(tmp_path, function, shape, expected):
    path = _write(tmp_path, "rich.py", RICH)
    with pytest.raises(HdapError, match=expected) as exc:
        resolve_model(f"{path}:{function}", shape)
    _one_line(exc)


def test_a_missing_file_and_a_model_too_large_for_this_machine_are_one_line(tmp_path,
                                                                            monkeypatch):
    from hdap_engine.models import footprint

    with pytest.raises(HdapError, match="no such model file") as exc:
        resolve_model(f"{tmp_path / 'nowhere.py'}:build", "3,32,32")
    _one_line(exc)
    monkeypatch.setattr(footprint, "available_bytes", lambda: 50_000_000)  # 50 MB
    with pytest.raises(HdapError, match=r"torchvision:resnet18 at input 3x224x224 needs about "
                                        r".* and this machine has 0.1 GB") as exc:
        build_model("torchvision:resnet18")
    _one_line(exc)
    with pytest.raises(HdapError, match="needs about"):
        resolve_model("torchvision:resnet18")


def test_weights_that_do_not_fit_a_file_model_are_one_line(tmp_path):
    key = resolve_model(f"{_write(tmp_path, 'plain.py', PLAIN)}:plain", "3,16,16").key
    wrong = tmp_path / "resnet56.pt"
    torch.save(build_model("resnet56").state_dict(), wrong)
    with pytest.raises(HdapError, match=r"resnet56.pt: these weights do not fit file:") as exc:
        build_model(key, str(wrong))
    _one_line(exc)
    good = tmp_path / "plain.pt"
    torch.save(build_model(key, num_classes=7, seed=3).state_dict(), good)
    assert build_model(key, str(good))(torch.zeros(1, 3, 16, 16)).shape == (1, 7)


def test_a_malformed_input_shape_on_the_command_line_is_one_line(cli):
    res = cli("prune", "--model", "resnet18", "--input-shape", "3,224", "--budget", "0.5",
              "--out", "x")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert "C,H,W" in lines[-1] and "Traceback" not in res.stderr


# -- the command line ------------------------------------------------------------------------

def test_building_the_parser_imports_no_torch():
    code = ("import sys; from hdap_engine.cli import build_parser; build_parser(); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_models_check_that_runs_out_of_time_is_one_line(cli):
    res = cli("models", "--check", "resnet56", "--timeout", "0.5")
    assert res.returncode == 1
    assert res.stdout.strip() == ("resnet56: cannot be pruned: no answer within 0.5 s while "
                                  "building the model")


@pytest.mark.slow
def test_models_check_says_resnet18_can_be_pruned(cli):
    res = cli("models", "--check", "resnet18")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert "\n" not in line
    assert line.startswith("resnet18: can be pruned: 12 groups, 1.82 G -> ")
    assert "the pruned model runs" in line
