"""Model zoo: the six classifiers and the detection demo, their shapes, and safe loading of user weights."""

from __future__ import annotations

import pickle

import pytest
import torch

from hdap_engine.errors import HdapError
from hdap_engine.models.zoo import build_model, get_spec, model_names, weights_label
from hdap_engine.pruning.space import PruningSpace

EXPECTED = {
    "resnet50": (3, 224, 224), "resnet18": (3, 224, 224), "mobilenet_v1": (3, 224, 224),
    "mobilenet_v2": (3, 224, 224), "vgg16_bn": (3, 224, 224), "resnet56": (3, 32, 32),
    "detector_demo": (3, 160, 160),
}


def test_zoo_has_the_six_classifiers_and_the_detector_demo_with_their_input_shapes():
    assert set(model_names()) == set(EXPECTED)
    for name, shape in EXPECTED.items():
        assert get_spec(name).input_shape == shape


def test_resnet50_has_4_12_g_macs_and_mobilenet_v1_about_0_57_g():
    assert round(PruningSpace.for_model("resnet50").base_macs / 1e9, 2) == 4.12
    # 0.569 G in its convolutions, plus batch norm and ReLU as the counter counts them
    assert 0.56e9 < PruningSpace.for_model("mobilenet_v1").base_macs < 0.60e9


def test_unknown_model_names_the_choices():
    with pytest.raises(HdapError, match="unknown model 'resnet51'.*resnet50"):
        get_spec("resnet51")


def test_same_seed_builds_the_same_weights():
    a = build_model("resnet56", seed=3).state_dict()
    b = build_model("resnet56", seed=3).state_dict()
    c = build_model("resnet56", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_user_state_dict_is_loaded(tmp_path):
    src = build_model("resnet56", seed=7)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": src.state_dict()}, path)  # checkpoint-style wrapping
    model = build_model("resnet56", path)
    assert torch.equal(model.conv1.weight, src.conv1.weight)


def test_weights_of_another_model_are_refused_with_the_mismatch(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(build_model("resnet18").state_dict(), path)
    with pytest.raises(HdapError, match="do not fit resnet56.*missing"):
        build_model("resnet56", path)


def test_corrupt_weights_file_gets_a_clear_message(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(HdapError, match="broken.pt: not a readable PyTorch weights file"):
        build_model("resnet56", path)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Evil()}, path)
    with pytest.raises(HdapError, match="never unpickles"):
        build_model("resnet56", path)
    assert "pwned" not in capsys.readouterr().out
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(HdapError):
        build_model("resnet56", raw)


def test_pretrained_weights_are_never_downloaded_and_fall_back_to_random(monkeypatch, tmp_path):
    import torchvision.models._api as api

    tried = []
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: tried.append(a))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="never downloaded.*random initialisation"):
        model = build_model("resnet18", "pretrained")
    assert isinstance(model, torch.nn.Module) and not tried
    assert weights_label("pretrained", "resnet18").startswith("random initialisation (no "
                                                              "pretrained weights in")
    with pytest.warns(UserWarning, match="no published pretrained weights"):
        build_model("resnet56", "pretrained")


def test_pretrained_weights_come_from_the_local_cache_when_the_file_is_there(monkeypatch,
                                                                            tmp_path):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "checkpoints").mkdir()
    cached = build_model("resnet18", seed=11)
    torch.save(cached.state_dict(), tmp_path / "checkpoints" / url.rsplit("/", 1)[-1])
    loaded = build_model("torchvision:resnet18", "pretrained")
    assert torch.equal(loaded.conv1.weight, cached.conv1.weight)
    assert weights_label("pretrained", "torchvision:resnet18") == \
        f"torchvision pretrained ({url.rsplit('/', 1)[-1]}, local cache)"
