"""Detectors in the app: the Model page offers them, their COCO data is checked as a study
would, the shapes demo comes with its weights' origin, an upload reaches the job.

AppTest (no browser). The detection demo's data is the weights' record's (1,000
synthetic 160x160 images, 15 s to draw); here a session asks for 50 of them (the
``shapes_images`` setting a demo server may set too), which the app generates in the
test's workspace as it would the 1,000.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from hdap_engine.data.shapes import write_shapes
from hdap_engine.options import ShapesOptions
from tests.helpers.apptest import ok, start, wait_for_job

pytestmark = [pytest.mark.app, pytest.mark.usefixtures("samples")]



def _coco_zip(folder: Path, *, edit=None) -> bytes:
    """A zip of a COCO folder, its annotations changed by ``edit(doc)`` first."""
    doc = json.loads((folder / "annotations.json").read_text())
    if edit is not None:
        edit(doc)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("annotations.json", json.dumps(doc))
        for path in sorted((folder / "images").iterdir()):
            zf.write(path, f"images/{path.name}")
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_coco(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("coco") / "mine",
                        ShapesOptions(images=6, size=160, seed=9))


def _captions(at) -> str:
    return " ".join(c.value for c in at.caption)


def _detector_page(at, name="detector_demo"):
    ok(at.switch_page("views/model.py").run())
    ok(at.radio(key="model_source").set_value("detector").run())
    ok(at.selectbox(key="model_pick_detector").set_value(name).run())
    return at


def test_model_page_offers_detectors_marked_as_detectors():
    at = _detector_page(start())
    picker = at.selectbox(key="model_pick_detector")
    assert len(picker.options) == 7  # the demo and torchvision's six edge detectors
    assert all(o.startswith("[detector] ") for o in picker.options)
    assert "torchvision:ssdlite320_mobilenet_v3_large" in " ".join(picker.options)
    assert at.session_state["model"] == "detector_demo"
    assert "A detector" in _captions(at) and "mAP@.5" in _captions(at)
    # Labelled data for a detector: the synthetic shapes or a COCO zip, never digits.
    assert at.radio(key="data_mode").options[1].startswith("shapes")
    ok(at.radio(key="model_source").set_value("registered").run())
    marked = [o for o in at.selectbox(key="model").options if o.startswith("[detector] ")]
    assert marked and all("detector_demo" in o for o in marked)


def test_detector_demo_weights_bring_their_shapes_and_say_where_they_came_from():
    at = _detector_page(start(shapes_images=50))
    ok(at.radio(key="weights_mode").set_value("demo").run())
    assert at.session_state["data_mode"] == "shapes"
    assert not at.error, [e.value for e in at.error]
    assert any("mAP@.5 90.7%, mAP@[.5:.95] 70.2% on 200 held-out images" in s.value
               for s in at.success)
    captions = _captions(at)
    assert "sample_data/detector_demo_shapes.pt" in captions
    assert "4 categories (boxes; mAP@.5 and mAP@[.5:.95]), 40 images" in captions
    assert "10 images held out of" in captions
    assert "fewer than the 1,000 its weights were trained and measured on" in captions
    assert (Path(os.environ["HDAP_HOME"]) / "demo-data" / "shapes-160px-50-seed0"
            / "annotations.json").is_file()


@pytest.mark.parametrize(("edit", "words"), [
    (lambda d: d["annotations"][0].update(bbox=[150, 150, 40, 40]), "outside its image"),
    (lambda d: d["annotations"][0].update(category_id=99), "category id 99"),
    (lambda d: d.update(categories=d["categories"][:2],
                        annotations=[a for a in d["annotations"] if a["category_id"] <= 2]),
     "2 categories (3 classes with the background) but the weights in "
     "detector_demo_shapes.pt have 5 class outputs"),
])
def test_a_bad_coco_zip_is_one_line_and_names_the_users_file(small_coco, edit, words):
    at = _detector_page(start(data_mode="upload"))
    ok(at.radio(key="weights_mode").set_value("demo").run())
    ok(at.file_uploader(key="data_upload").set_value(
        ("mine.zip", _coco_zip(small_coco, edit=edit), "application/zip")).run())
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0], errors
    assert os.environ["HDAP_HOME"] not in errors[0]  # the stored copy is not the user's name


def test_an_uploaded_coco_zip_is_checked_and_reaches_the_job(small_coco):
    from hdap_engine.jobs import JobTable

    at = _detector_page(start(data_mode="upload"))
    ok(at.radio(key="weights_mode").set_value("demo").run())
    ok(at.file_uploader(key="data_upload").set_value(
        ("mine.zip", _coco_zip(small_coco), "application/zip")).run())
    assert not at.error, [e.value for e in at.error]
    assert "uploaded mine.zip: 4 categories" in _captions(at)
    ok(at.switch_page("views/run.py").run())
    ok(at.button(key="run_button").click().run())
    table = JobTable()
    job_id = at.session_state["job"]
    try:
        options = table.get(job_id).settings["options"]
        assert options["model"] == "detector_demo"
        assert Path(options["accuracy"]["data"]).name.endswith("mine.zip")
        assert Path(options["accuracy"]["data"]).is_file()
    finally:  # the settings are what this test is about, not the study
        table.request_cancel(job_id)
        t0 = time.perf_counter()
        while table.get(job_id).active and time.perf_counter() - t0 < 60:
            time.sleep(0.2)


@pytest.mark.slow
def test_the_detection_demo_runs_in_one_click_with_map_and_the_picture():
    at = start(shapes_images=50, samples=20, refine_rounds=0, search_effort="quick")
    ok(at.switch_page("views/run.py").run())
    ok(at.button(key="det_demo_button").click().run())
    assert at.session_state["model"] == "detector_demo"
    at = wait_for_job(at)
    assert not at.error, [e.value for e in at.error]
    captions = _captions(at)
    assert ("accuracy (mAP@.5, 10 images held out of the synthetic shapes-160px-50-seed0 "
            in captions)
    assert "mAP@[.5:.95] unpruned" in captions and "top-1" not in captions
    table = at.dataframe[0].value  # the comparison with uniform
    assert "calibrated mAP@.5" in table.columns and "calibrated top-1" not in table.columns
    assert [h.value for h in at.subheader] == ["What the detectors see"]
    assert len(at.get("image")) == 1, "the detection picture is on the Run page"
    assert "Predicted boxes of the unpruned (left) and the pruned (right)" in str(
        at.get("image")[0].proto)
    assert "mAP@.5 held out" in " ".join(m.value for m in at.markdown)  # the sidebar
    # The pages after a run name the detector's metric too, and never top-1.
    for page in ("views/whatif.py", "views/finetune.py", "views/download.py",
                 "views/history.py"):
        ok(at.switch_page(page).run())
        assert not at.error, (page, [e.value for e in at.error])
        words = " ".join([c.value for c in at.caption] + [m.value for m in at.markdown]
                         + [s.value for s in at.success])
        assert "top-1" not in words, (page, words)
    assert "mAP@.5" in " ".join(c.value for c in at.caption) or \
        "mAP@.5" in at.dataframe[0].value.to_string()  # the History table's metric
