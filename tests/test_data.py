"""Labelled data: ImageFolder directories, their zips, digits, and every bad input."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from hdap_engine.data import DIGITS, check_classes, load_data, materialise, stratified_indices
from hdap_engine.data.safezip import ZipLimits, extract_zip
from hdap_engine.errors import HdapError
from hdap_engine.models.zoo import build_model, num_classes_of
from tests.helpers.images import make_folder, zip_folder


def test_image_folder_is_resized_normalised_and_split_stratified(tmp_path):
    data = load_data(make_folder(tmp_path / "ds"), model="resnet56", val_fraction=0.34)
    assert data.classes == ("cat", "dog", "owl")
    assert data.n_train + data.n_heldout == 18
    assert sorted(np.bincount(data.heldout_labels).tolist()) == [2, 2, 2]
    assert data.heldout_source == "split" and "no --val-data" in data.describe_heldout()
    x, y = materialise(data.train)
    assert x.shape == (data.n_train, 3, 32, 32) and x.dtype == torch.float32
    # 32x32 model: normalised with the data's own per-channel statistics.
    pre = data.preprocess.as_dict()
    assert pre["stats"] == "data" and pre["size"] == [32, 32] and pre["channels"] == 3
    assert abs(float(x.mean())) < 0.3
    assert y.tolist() == data.train_labels.tolist()


def test_224_models_default_to_imagenet_statistics_and_user_values_win(tmp_path):
    folder = make_folder(tmp_path / "ds")
    data = load_data(folder, model="resnet18")
    assert data.preprocess.mean == (0.485, 0.456, 0.406)
    assert materialise(data.heldout, [0])[0].shape == (1, 3, 224, 224)
    mine = load_data(folder, model="resnet56", mean="0.5", std="0.25,0.25,0.25")
    assert mine.preprocess.as_dict()["stats"] == "user" and mine.preprocess.mean == (0.5,) * 3


def test_zip_of_a_folder_reads_like_the_folder(tmp_path):
    folder = make_folder(tmp_path / "ds")
    plain = load_data(folder, model="resnet56")
    zipped = load_data(zip_folder(folder, tmp_path / "ds.zip", prefix="mydata/"),
                       model="resnet56")
    assert zipped.classes == plain.classes and zipped.n_train == plain.n_train
    assert torch.allclose(materialise(zipped.heldout)[0], materialise(plain.heldout)[0])


def test_val_data_is_the_heldout_set(tmp_path):
    train = make_folder(tmp_path / "train")
    val = make_folder(tmp_path / "val", per_class=3)
    data = load_data(train, model="resnet56", val_data=val)
    assert data.n_train == 18 and data.n_heldout == 9 and data.heldout_source == "val-data"
    other = make_folder(tmp_path / "other", classes=("cat", "dog"), per_class=3)
    with pytest.raises(HdapError, match=r"--val-data has 2 classes .* --data has 3"):
        load_data(train, model="resnet56", val_data=other)


def test_digits_builtin_has_1797_images_at_the_model_size():
    data = load_data(DIGITS, model="resnet56")
    assert data.num_classes == 10 and data.n_train + data.n_heldout == 1797
    assert materialise(data.heldout, [0, 1])[0].shape == (2, 3, 32, 32)
    again = load_data(DIGITS, model="resnet56")
    assert again.fingerprint == data.fingerprint
    assert load_data(DIGITS, model="resnet56", seed=1).fingerprint != data.fingerprint


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    folder = make_folder(tmp_path / "ds")
    (folder / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "dog" / "README.txt").write_text("not an image, ignored")
    data = load_data(folder, model="resnet56")
    assert data.skipped == 1 and data.n_train + data.n_heldout == 18
    assert len(data.notes) == 1 and "broken.png" in data.notes[0]


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("empty", "no class folders"),
    ("one_class", "only one class folder"),
    ("no_images", "no readable images"),
    ("empty_class", "class folder 'owl' has no readable images"),
    ("not_zip", "not a .zip"),
    ("single_image_class", "only 1 image"),
])
def test_bad_datasets_are_one_clear_error(tmp_path, case, message):
    root = tmp_path / "ds"
    if case == "empty":
        root.mkdir()
    elif case == "one_class":
        make_folder(root, classes=("cat",))
    elif case == "no_images":
        for c in ("a", "b"):
            (root / c).mkdir(parents=True)
            (root / c / "x.png").write_text("garbage")
    elif case == "empty_class":
        make_folder(root, classes=("cat", "dog"))
        (root / "owl").mkdir()
    elif case == "not_zip":
        root = tmp_path / "data.csv"
        root.write_text("a,b\n")
    elif case == "single_image_class":
        make_folder(root, classes=("cat", "dog"))
        (root / "owl").mkdir()
        Image.new("RGB", (8, 8)).save(root / "owl" / "0.png")
    with pytest.raises(HdapError, match=message):
        load_data(root, model="resnet56")


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png", "a/../../evil.png"])
def test_zip_with_paths_outside_is_refused_and_writes_nothing(tmp_path, member):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("cat/ok.png", b"x")
        zf.writestr(member, b"x")
    dest = tmp_path / "out"
    with pytest.raises(HdapError, match="nothing was extracted"):
        extract_zip(bad, dest)
    assert not dest.exists() and not (tmp_path / "evil.png").exists()


def test_zip_bomb_is_refused_before_extraction(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/zeros.bmp", b"\0" * (4 * 1024**2))
    limits = ZipLimits(ratio_floor_bytes=1024**2)
    with pytest.raises(HdapError, match="zip bomb"):
        extract_zip(bomb, tmp_path / "out", limits=limits)
    with pytest.raises(HdapError, match="allowed"):
        extract_zip(bomb, tmp_path / "out", limits=ZipLimits(max_total_bytes=1024**2))
    assert not (tmp_path / "out").exists()


def test_corrupt_zip_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(HdapError, match="bad.zip"):
        load_data(bad, model="resnet56")


def test_class_count_must_match_the_model(tmp_path):
    data = load_data(make_folder(tmp_path / "ds"), model="resnet56")
    model = build_model("resnet56")
    with pytest.raises(HdapError, match="has 3 classes but .* have 10 outputs"):
        check_classes(data, num_classes_of(model, "resnet56"))


def test_weights_decide_the_number_of_classes(tmp_path):
    five = build_model("resnet56", num_classes=5, seed=1)
    path = tmp_path / "five.pt"
    torch.save(five.state_dict(), path)
    model = build_model("resnet56", path)
    assert num_classes_of(model, "resnet56") == 5
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    assert torch.equal(model.fc.weight, five.fc.weight)


def test_corrupt_weights_are_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(HdapError, match="bad.pt: not a readable PyTorch weights file"):
        build_model("resnet56", bad)


def test_stratified_indices_keep_every_class():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    idx = stratified_indices(labels, 20, seed=0)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert set(labels[idx].tolist()) == {0, 1, 2, 3}
