"""The app's labelled data: the Model page's choice, an uploaded dataset zip and its check.

AppTest (no browser). Uploaded zips are made here from real scikit-learn digit
images; every refusal is the engine's own reader's (`check_data`).
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest

from tests.helpers.apptest import ok, start
from tests.helpers.images import write_digit_folder

# Small simulated sample fleets (test_app's fixtures) stand in for the shipped ones.
pytestmark = [pytest.mark.app, pytest.mark.usefixtures("samples")]


def zip_folder(folder: Path, *, extra: dict[str, bytes] | None = None) -> bytes:
    """The bytes of a zip holding ``folder``'s class folders (and ``extra`` members)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def digits_zip(tmp_path_factory) -> bytes:
    """A 10-class ImageFolder zip: 4 real digit images per class."""
    return zip_folder(write_digit_folder(tmp_path_factory.mktemp("d10") / "digits", 4))


@pytest.fixture(scope="module")
def three_class_zip(tmp_path_factory) -> bytes:
    folder = write_digit_folder(tmp_path_factory.mktemp("d3") / "digits", 4)
    for c in range(3, 10):
        for f in (folder / str(c)).iterdir():
            f.unlink()
        (folder / str(c)).rmdir()
    return zip_folder(folder)


def _model_page(**state):
    at = start(**state)
    ok(at.switch_page("views/model.py").run())
    ok(at.selectbox(key="model").set_value("resnet56").run())
    return at


def _upload(at, name: str, data: bytes):
    return ok(at.file_uploader(key="data_upload").set_value((name, data,
                                                             "application/zip")).run())


def _captions(at) -> str:
    return " ".join(c.value for c in at.caption)


def test_demo_weights_default_the_data_to_digits_and_the_run_carries_data_floor_and_epochs():
    from hdap_engine.jobs import JobTable

    at = _model_page()
    assert at.session_state["data_mode"] == "none"
    assert "Accuracy is unknown without labelled data" in _captions(at)
    assert not [r for r in at.radio if r.key == "floor_mode"]  # no floor without data
    ok(at.radio(key="weights_mode").set_value("demo").run())
    assert at.session_state["data_mode"] == "digits"
    assert "10 classes, 1,438 images to calibrate and fine-tune on" in _captions(at)
    assert "359 images held out of digits" in _captions(at)
    ok(at.radio(key="floor_mode").set_value("fraction").run())
    ok(at.number_input(key="floor_fraction").set_value(0.85).run())
    ok(at.number_input(key="finetune_epochs").set_value(2).run())
    assert not at.error

    ok(at.switch_page("views/run.py").run())
    assert any("labelled data **digits" in m.value and "accuracy floor **0.85**" in m.value
               and "**2** fine-tune epochs" in m.value for m in at.markdown)
    ok(at.button(key="run_button").click().run())
    table = JobTable()
    job_id = at.session_state["job"]
    try:
        acc = table.get(job_id).settings["options"]["accuracy"]
        assert (acc["data"], acc["min_accuracy"], acc["finetune_epochs"]) == ("digits", "0.85",
                                                                              2)
    finally:  # the settings are what this test is about, not the study
        table.request_cancel(job_id)
        t0 = time.perf_counter()
        while table.get(job_id).active and time.perf_counter() - t0 < 60:
            time.sleep(0.2)


def test_random_weights_offer_accuracy_but_no_fine_tuning():
    at = _model_page()
    ok(at.radio(key="data_mode").set_value("digits").run())
    assert not at.error
    assert [r for r in at.radio if r.key == "floor_mode"]
    assert not [n for n in at.number_input if n.key == "finetune_epochs"]
    assert "Fine-tuning distils from the unpruned model" in _captions(at)
    assert any("random initialisation" in w.value for w in at.warning)  # the yellow banner


def test_a_bad_dataset_zip_is_one_error_line_and_the_accepted_data_stays(
        digits_zip, three_class_zip):
    at = _model_page()
    ok(at.radio(key="data_mode").set_value("upload").run())
    assert any("No dataset accepted yet" in i.value for i in at.info)

    evil = zip_folder(Path("/nonexistent"), extra={"../evil.png": b"x", "a/1.png": b"y"})
    _upload(at, "evil.zip", evil)
    assert len(at.error) == 1
    assert at.error[0].value.startswith("evil.zip: member '../evil.png' points outside")
    assert "data_file" not in at.session_state

    _upload(at, "mine.zip", digits_zip)
    assert not at.error
    assert at.session_state["data_file"]["name"] == "mine.zip"
    assert "uploaded mine.zip: 10 classes, 30 images to calibrate" in _captions(at)
    assert "10 images held out of mine.zip" in _captions(at)  # not the stored copy's path

    for name, data, why in (
            ("broken.zip", b"PK\x03\x04 not really a zip", "broken.zip: not a zip archive"),
            ("three.zip", three_class_zip, "three.zip has 3 classes but the model (random "
                                           "initialisation) have 10 outputs"),
            ("flat.zip", zip_folder(Path("/nonexistent"), extra={"1.png": digits_zip[:10]}),
             "no class folders")):
        _upload(at, name, data)
        assert len(at.error) == 1, [e.value for e in at.error]
        assert why in at.error[0].value, at.error[0].value
        # Nothing lost: the accepted zip is still the data, and it still checks out.
        assert at.session_state["data_file"]["name"] == "mine.zip"
        assert "uploaded mine.zip: 10 classes" in _captions(at)


def test_the_fine_tune_page_points_to_the_run_page_before_any_run():
    at = start()
    ok(at.switch_page("views/finetune.py").run())
    assert any("Run a study first" in i.value for i in at.info)
