"""End to end: the service's page in headless Chromium: upload an image, see the verdict and the overlay.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the Python package ``playwright`` (its
driver only; no browser download). Without them the test skips and says why; CI sets
``PADIM_REQUIRE_BROWSER=1`` so that a missing browser fails instead.
"""

import base64
import copy
import os
import shutil

import numpy as np
import pytest

from padim.io.images import list_images
from padim.model.export import export_onnx
from padim.runtime.opening import open_model
from padim.scoring.calibration import Calibration
from padim.serve.app import create_app

CHROMIUM = os.environ.get("PADIM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.slow  # a Ray cluster or a browser starts for these


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; or set PADIM_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install playwright; no browser download needed)"
    return None


@pytest.fixture(scope="module")
def chromium():
    reason = browser_missing()
    if reason:
        if os.environ.get("PADIM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PADIM_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, mvtec_tree, serving, tiny_model):
    """A calibrated ONNX model served on a free loopback port; yields (url, model file, an OK image, a DEFECT image)."""
    images = [p for sub in ("good", "scratch", "spot") for p in list_images(mvtec_tree / "test" / sub)]
    model = copy.copy(tiny_model)
    scores = model.predict(images).score
    # The threshold halfway between the lowest and the highest score: each verdict can be shown.
    # Calibrated on 20 good images below it, so a third of the images flagged is drift (window 3).
    threshold = (float(scores.min()) + float(scores.max())) / 2
    model.calibration_ = Calibration(threshold=threshold, center=float(scores.min()), quantile=0.99,
                                     good_scores=[float(scores.min())] * 20)  # fmt: skip
    onnx_file = export_onnx(model, tmp_path_factory.mktemp("browser") / "m.onnx")
    ok, defect = images[int(np.argmin(scores))], images[int(np.argmax(scores))]
    with serving(create_app(onnx_file, drift_window=3)) as url:
        yield f"{url}/", onnx_file, ok, defect


def _drop(page, files):
    """Drop files on the drop zone: [(name, bytes or text, MIME type)]."""
    payload = [(name, base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode(), kind)
               for name, data, kind in files]  # fmt: skip
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, b64, kind] of files) {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], name, { type: kind }));
            }
            return transfer;
        }""",
        payload,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


@pytest.mark.slow
def test_page_shows_verdict_score_and_overlay(chromium, served):
    url, onnx_file, ok_image, defect_image = served
    runtime = open_model(onnx_file)
    page = chromium.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.includes('m.onnx')")
        model_line = page.text_content("#model")
        assert (
            "torch" not in model_line and "onnxruntime" not in model_line and "DEFECT when its score is" in model_line
        )
        assert "64 × 64 px" in model_line and "quantile 0.99 of 20 good images" in model_line
        assert page.is_hidden("#drift")

        # 1. Choose a file with the file input.
        page.set_input_files("#file", str(defect_image))
        page.wait_for_function("document.getElementById('verdict').textContent !== ''", timeout=30_000)
        assert page.text_content("#verdict") == "DEFECT"
        expected = float(runtime.predict(defect_image).score[0])
        assert float(page.text_content("#score")) == pytest.approx(expected, abs=1e-4)
        width = page.eval_on_selector("#overlay", "img => img.complete && img.naturalWidth")
        assert width == 64  # the uploaded image's width; the colour bar is under it
        assert page.text_content("#status") == "" and "outlined" in page.text_content("#explain")

        # 2. Drop a file on the drop zone.
        _drop(page, [("dropped.png", ok_image.read_bytes(), "image/png")])
        page.wait_for_function("document.getElementById('filename').textContent === 'dropped.png'", timeout=30_000)
        assert page.text_content("#verdict") == "OK"
        expected = float(runtime.predict(ok_image).score[0])
        assert float(page.text_content("#score")) == pytest.approx(expected, abs=1e-4)

        # 3. A file that is not an image: the reason is shown and the previous result is gone.
        _drop(page, [("notes.txt", "hello", "text/plain")])
        page.wait_for_function("document.getElementById('status').className === 'error'", timeout=30_000)
        assert "not an image" in page.text_content("#status") and "415" in page.text_content("#status")
        assert page.is_hidden("#result") and page.text_content("#verdict") == ""

        # 4. Several files at once: a row each, the first shown, a summary; the error is gone.
        _drop(page, [("a.png", defect_image.read_bytes(), "image/png"), ("b.png", ok_image.read_bytes(), "image/png")])
        page.wait_for_function("document.getElementById('status').textContent.startsWith('2 images')", timeout=30_000)
        assert page.text_content("#status").startswith("2 images: 1 OK, 1 DEFECT")
        assert page.get_attribute("#status", "class") == ""
        rows = page.locator("#rows tr")
        assert rows.count() == 2 and page.text_content("#filename") == "a.png"
        rows.nth(1).click()
        assert page.text_content("#filename") == "b.png" and page.text_content("#verdict") == "OK"

        # 5. Two DEFECTs among the last three images, against 0 of 20 good ones when calibrated: drift.
        assert page.is_visible("#drift") and "check the setup" in page.text_content("#drift")
        assert errors == []
    finally:
        page.close()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory, mvtec_tree, tiny_model):
    """A report of the tiny model at a threshold that misses the lowest-scored defective image."""
    from padim.eval.evaluation import evaluate_model
    from padim.report.evaluation_report import write_evaluation_report

    model = copy.copy(tiny_model)
    predictor = model.predictor()
    first = evaluate_model(predictor, mvtec_tree, workers=0)
    defective = np.sort(first.scores[first.labels])
    model.calibration_ = model.calibration_.with_threshold(float(defective[:2].mean()))
    evaluation = evaluate_model(model.predictor(), mvtec_tree, workers=0)
    folder = tmp_path_factory.mktemp("report")
    index = write_evaluation_report(evaluation, model.calibration_, folder, config=model.config())
    wrong = int((evaluation.labels != (evaluation.scores >= model.calibration_.threshold)).sum())
    return index, wrong, len(evaluation.scores)


def test_report_in_chromium(chromium, report_page):
    index, wrong, n_images = report_page
    assert wrong >= 1
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(index.as_uri())
        # Every picture loads: three per mistake.
        loaded = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        assert loaded == [True] * (3 * wrong)
        assert page.locator(".mistake").count() == wrong
        assert page.locator("table.images tr").count() == 1 + n_images
        assert page.locator("table.images tr.wrong-row").count() == wrong
        assert page.locator("svg").count() == 4  # image ROC, pixel ROC, PRO, histogram
        # "false alarm" and "miss" labels are never split inside a word (the old CSS broke them).
        lines = page.eval_on_selector_all(
            ".wrong", "spans => spans.map(s => new Set([...s.getClientRects()].map(r => Math.round(r.top))).size)"
        )
        assert lines and all(n == 1 for n in lines)
        cell = page.text_content("table.confusion")
        assert "false alarm" in cell and "miss" in cell
        assert errors == []
    finally:
        page.close()
