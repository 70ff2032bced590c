"""Detection data: the synthetic shapes, COCO folders and zips, and every bad input."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from hdap_engine.data.coco import check_detector_classes, collate, load_coco
from hdap_engine.data.shapes import SHAPE_CLASSES, write_shapes
from hdap_engine.errors import HdapError
from hdap_engine.options import ShapesOptions


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"), ShapesOptions(images=12, size=64,
                                                                      seed=3))


def _copy(src: Path, dst: Path, edit=None) -> Path:
    """A copy of a COCO folder with its annotations edited by ``edit(doc)``."""
    import shutil

    shutil.copytree(src, dst)
    if edit is not None:
        doc = json.loads((dst / "annotations.json").read_text())
        edit(doc)
        (dst / "annotations.json").write_text(json.dumps(doc))
    return dst


def test_shapes_are_deterministic_from_the_seed(tmp_path, shapes):
    again = write_shapes(tmp_path / "again", ShapesOptions(images=12, size=64, seed=3))
    other = write_shapes(tmp_path / "other", ShapesOptions(images=12, size=64, seed=4))
    assert (again / "annotations.json").read_bytes() == (shapes / "annotations.json").read_bytes()
    assert (again / "images/000005.png").read_bytes() == (shapes / "images/000005.png").read_bytes()
    assert (other / "annotations.json").read_bytes() != (shapes / "annotations.json").read_bytes()


def test_shapes_hold_every_class_with_several_objects_and_tight_boxes(tmp_path):
    from PIL import Image

    out = write_shapes(tmp_path, ShapesOptions(images=30, size=96, seed=0))
    doc = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in doc["categories"]] == list(SHAPE_CLASSES)
    assert {a["category_id"] for a in doc["annotations"]} == {1, 2, 3, 4}
    per_image = [sum(a["image_id"] == im["id"] for a in doc["annotations"])
                 for im in doc["images"]]
    assert min(per_image) >= 1 and max(per_image) >= 3
    sides = [max(a["bbox"][2], a["bbox"][3]) for a in doc["annotations"]]
    assert max(sides) / min(sides) > 2  # varied sizes
    # Every box lies inside its image (shapes are placed whole).
    a = doc["annotations"][0]
    x, y, w, h = (int(v) for v in a["bbox"])
    assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
    assert Image.open(out / doc["images"][0]["file_name"]).size == (96, 96)


def test_coco_folder_reads_as_contiguous_labels_and_a_seeded_split(shapes):
    data = load_coco(shapes, val_fraction=0.25, seed=1)
    assert data.num_classes == 4 and data.categories == SHAPE_CLASSES
    assert data.n_train + data.n_heldout == 12 and data.n_heldout == 3
    image, target = data.train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64
    assert int(target["labels"].min()) >= 1 and int(target["labels"].max()) <= 4
    b = target["boxes"]
    assert bool((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all())  # xyxy
    again = load_coco(shapes, val_fraction=0.25, seed=1)
    other = load_coco(shapes, val_fraction=0.25, seed=2)
    names = [r.file_name for r in data.heldout.records]
    assert names == [r.file_name for r in again.heldout.records]
    assert data.fingerprint == again.fingerprint != other.fingerprint
    images, targets = collate([data.train[0], data.train[1]])
    assert len(images) == len(targets) == 2


def test_category_ids_need_not_be_contiguous(tmp_path, shapes):
    def renumber(doc):
        for c in doc["categories"]:
            c["id"] *= 10
        for a in doc["annotations"]:
            a["category_id"] *= 10

    data = load_coco(_copy(shapes, tmp_path / "c", renumber))
    assert data.category_ids == (10, 20, 30, 40)
    labels = torch.cat([data.train[i][1]["labels"] for i in range(len(data.train))])
    assert set(labels.tolist()) <= {1, 2, 3, 4}


def test_zip_reads_like_the_folder_and_val_data_is_the_heldout(tmp_path, shapes):
    z = tmp_path / "shapes.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(shapes.rglob("*")):
            if p.is_file():
                zf.write(p, "wrapper/" + p.relative_to(shapes).as_posix())
    zipped, plain = load_coco(z), load_coco(shapes)
    assert zipped.categories == plain.categories and zipped.n_heldout == plain.n_heldout
    assert torch.equal(zipped.heldout[0][0], plain.heldout[0][0])
    both = load_coco(shapes, val_data=z)
    assert both.heldout_source == "val-data" and both.n_train == both.n_heldout == 12


def _drop_file(doc):
    doc["images"][0]["file_name"] = "images/missing.png"


def _box_outside(doc):
    doc["annotations"][0]["bbox"] = [50.0, 10.0, 30.0, 12.0]


def _unknown_category(doc):
    doc["annotations"][1]["category_id"] = 99


@pytest.mark.parametrize("edit, message", [
    (_drop_file, r"image 'images/missing.png' is listed but has no file"),
    (_box_outside, r"annotation 1 has box \[x=50, y=10, w=30, h=12\] outside its image "
                   r"images/000000.png \(64x64 pixels\)"),
    (_unknown_category, r"annotation 2 has category id 99, which is not in 'categories'"),
    (lambda d: d.__setitem__("annotations", []), "has no annotations"),
    (lambda d: d.__setitem__("images", []), "lists no images"),
    (lambda d: d["annotations"][0].__setitem__("image_id", 777), "refers to image id 777"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 0, 5]), "an empty box"),
    (lambda d: d.pop("categories"), "no 'categories' list"),
])
def test_bad_coco_annotations_are_one_clear_line(tmp_path, shapes, edit, message):
    bad = _copy(shapes, tmp_path / "bad", edit)
    with pytest.raises(HdapError, match=message) as err:
        load_coco(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("", "annotations.json is empty"),
    ("{\"images\": [", "not valid JSON"),
    ("[1, 2]", "holds a JSON list"),
])
def test_empty_or_malformed_json_is_one_clear_line(tmp_path, shapes, text, message):
    bad = _copy(shapes, tmp_path / "bad")
    (bad / "annotations.json").write_text(text)
    with pytest.raises(HdapError, match=message):
        load_coco(bad)


def test_zip_with_a_path_that_escapes_is_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("annotations.json", "{}")
        zf.writestr("../evil.png", b"x")
    with pytest.raises(HdapError, match="points outside the archive"):
        load_coco(bad)
    assert not (tmp_path / "evil.png").exists()


def test_missing_folder_and_folder_without_annotations(tmp_path):
    with pytest.raises(HdapError, match="not found"):
        load_coco(tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(HdapError, match="no annotations.json"):
        load_coco(tmp_path / "empty")


def test_class_count_must_match_the_weights(shapes):
    data = load_coco(shapes)
    check_detector_classes(data, 5)  # 4 shapes + background
    with pytest.raises(HdapError, match=r"4 categories \(5 classes with the background\) but "
                                        r"the model's weights have 91 class outputs"):
        check_detector_classes(data, 91)


def test_crowd_annotations_are_dropped_and_counted(tmp_path, shapes):
    def crowd(doc):
        doc["annotations"][0]["iscrowd"] = 1

    data = load_coco(_copy(shapes, tmp_path / "c", crowd))
    assert any("dropped 1 crowd annotation" in n for n in data.notes)


def test_hdap_data_shapes_writes_a_readable_coco_folder(tmp_path, cli):
    r = cli("data", "shapes", "--out", str(tmp_path / "s"), "--images", "4", "--size", "48",
            "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert load_coco(tmp_path / "s").n_train == 3
    bad = cli("data", "shapes", "--out", str(tmp_path / "t"), "--size", "8")
    assert bad.returncode == 2 and "--size must be between 32 and 2048" in bad.stderr
