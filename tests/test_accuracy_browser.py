"""Accuracy in the app, in a real Chromium: labelled data in, accuracy out, a fine-tuned download.

One journey on a fresh server (`python -m hdap_engine app`, a small simulated
fleet, the smallest study the engine allows through ``HDAP_APP_DEFAULTS``):
the shipped demo weights (ResNet-56 trained on digits, 10 classes), an
ImageFolder zip of real digit images made here (10 classes, so it fits those
weights) uploaded on the Model page, a study whose results show held-out
accuracy, a 2-epoch fine-tune on the Fine-tune page whose epochs appear while
it trains, and the fine-tuned bundle downloaded from the Download page.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from tests.helpers.browser import (
    ARTIFACTS,
    CHROMIUM,
    LAUNCH_ARGS,
    app_server,
    open_page,
    screenshot,
    settle,
    small_sample_fleet,
    wait_healthy,
)
from tests.helpers.images import write_digit_folder

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SMALL = {"model": "resnet56", "samples": 20, "refine_rounds": 1, "representatives": 1,
         "compare_methods": ["uniform"], "sweep_on": False,
         "search_effort": "quick"}
WAIT = 240_000  # ms: a small study on a loaded 2-core machine


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    return small_sample_fleet(tmp_path_factory.mktemp("samples"))


def _digits_zip(tmp_path: Path) -> Path:
    """An ImageFolder zip of real digit images: 10 class folders, 8 PNGs each."""
    folder = write_digit_folder(tmp_path / "digits10", 8)
    out = tmp_path / "digits10.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(folder.rglob("*.png")):
            zf.write(path, path.relative_to(folder).as_posix())
    return out


def test_upload_labelled_digits_see_accuracy_fine_tune_live_and_download_the_result(
        samples, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    data = _digits_zip(tmp_path)
    log = tmp_path / "server.log"
    env = {"HDAP_SAMPLE_DATA": str(samples), "HDAP_APP_DEFAULTS": json.dumps(SMALL),
           "OMP_NUM_THREADS": "1"}
    with app_server(tmp_path / "home", env, log=log) as (url, proc), sync_playwright() as pw:
        wait_healthy(url, proc)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT)
        expect.set_options(timeout=WAIT)

        # 2 Model: demo weights bring digits as the data; then our own zip replaces it.
        page.goto(f"{url}/model")
        expect(page.get_by_role("heading", name="Labelled data and accuracy")).to_be_visible()
        settle(page)
        page.get_by_text("trained demo weights (digits)", exact=True).click()
        settle(page)
        expect(page.get_by_text("10 classes, 1,438 images to calibrate")).to_be_visible()
        page.get_by_text("my labelled images (a .zip of an ImageFolder)").click()
        settle(page)
        page.locator('[data-testid="stFileUploader"] input[type="file"]').first \
            .set_input_files(str(data))
        settle(page)
        expect(page.get_by_text("uploaded digits10.zip: 10 classes, 64 images")).to_be_visible()
        screenshot(page, ARTIFACTS / "accuracy-1-model-data.png")

        # 3 Run: accuracy next to latency, in the caption and in the comparison table.
        open_page(page, "3 Run")
        expect(page.get_by_text("labelled data uploaded digits10.zip")).to_be_visible()
        page.get_by_role("button", name="Run the study").click()
        expect(page.get_by_role("heading", name="Results")).to_be_visible()
        caption = page.get_by_text(re.compile(r"accuracy \(top-1, 16 images held out of "
                                              r"digits10\.zip"))
        expect(caption).to_be_visible()
        assert re.search(r"unpruned \d+\.\d%.*calibrated \d+\.\d%", caption.inner_text())
        expect(page.get_by_text("Latency per cluster: predicted vs measured")).to_be_visible()
        screenshot(page, ARTIFACTS / "accuracy-2-results.png")

        # 4c Fine-tune: progress per epoch and the epochs drawn while the job trains.
        open_page(page, "4d Fine-tune")
        # The Model page's choices outlive the Run page's job (they once came back as
        # defaults after a job's fragment reruns): the sidebar still names them.
        sidebar = page.locator('[data-testid="stSidebarUserContent"]')
        expect(sidebar).to_contain_text("Weights: trained demo weights (digits)")
        expect(sidebar).to_contain_text("Labelled data: uploaded digits10.zip")
        epochs = page.get_by_label("Epochs")
        epochs.fill("2")
        epochs.press("Enter")
        settle(page)
        page.get_by_role("button", name="Fine-tune", exact=True).click()
        expect(page.get_by_text(re.compile(r"Epoch 1 of 2: loss \d"))).to_be_visible()
        expect(page.get_by_role("progressbar")).to_be_visible()
        screenshot(page, ARTIFACTS / "accuracy-3-finetune-live.png")
        expect(page.get_by_text(re.compile(r"Fine-tuned 2 epochs by distillation"))) \
            .to_be_visible()
        expect(page.get_by_text("Fine-tuned top-1")).to_be_visible()
        screenshot(page, ARTIFACTS / "accuracy-4-finetune-done.png")

        # 5 Download: the fine-tuned bundle, labelled with its accuracy.
        open_page(page, "5 Download")
        expect(page.get_by_role("heading", name="Fine-tuned model")).to_be_visible()
        expect(page.get_by_text(re.compile(r"Fine-tuned 2 epochs by distillation \(job \d+\): "
                                           r"held-out top-1 \d+\.\d% on 16 images"))) \
            .to_be_visible()
        with page.expect_download() as info:
            page.locator(".st-key-dl_ft_bundle button").click()
        saved = tmp_path / info.value.suggested_filename
        info.value.save_as(saved)
        screenshot(page, ARTIFACTS / "accuracy-5-download.png")
        expect(page.locator('[data-testid="stException"]')).to_have_count(0)
        browser.close()

    assert saved.name.endswith("-finetuned-bundle.zip"), saved.name
    with zipfile.ZipFile(saved) as zf:
        names = {Path(n).name for n in zf.namelist()}
        report = json.loads(zf.read(next(n for n in zf.namelist()
                                         if n.endswith("report.json"))))
    assert {"model.ts", "model.onnx", "weights.pt", "widths.json"} <= names
    acc = report["accuracy"]
    assert acc["finetune"]["epochs"] == 2 and acc["classes"] == 10 and acc["n_heldout"] == 16
    assert 0 <= acc["finetuned"] <= 1 and acc["unpruned"] is not None
    from hdap_engine.export.reading import load_bundle

    model, _ = load_bundle(saved)  # the download rebuilds the fine-tuned model
    assert sum(p.numel() for p in model.parameters()) == report["params"]
    from hdap_engine.jobs import JobTable

    # The comparison table's top-1 columns come from these rows (the grid is a canvas).
    study = next(j for j in JobTable(tmp_path / "home" / "store.sqlite").list()
                 if j.kind == "study")
    rows = study.result["comparison"]["rows"]
    assert [r["method"] for r in rows] == ["hdap", "uniform"]
    assert all(0 <= r["accuracy"]["calibrated"] <= 1 for r in rows)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
