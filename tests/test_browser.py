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

from padim.export import export_onnx
from padim.images import list_images
from padim.runtime import open_model
from padim.serve import create_app

CHROMIUM = os.environ.get("PADIM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


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
    model.calibration_ = model.calibration_.with_threshold((float(scores.min()) + float(scores.max())) / 2)
    onnx_file = export_onnx(model, tmp_path_factory.mktemp("browser") / "m.onnx")
    ok, defect = images[int(np.argmin(scores))], images[int(np.argmax(scores))]
    with serving(create_app(onnx_file)) as url:
        yield f"{url}/", onnx_file, ok, defect


def test_page_shows_verdict_score_and_overlay(chromium, served):
    url, onnx_file, ok_image, defect_image = served
    runtime = open_model(onnx_file)
    page = chromium.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.includes('m.onnx')")

        # 1. Choose a file with the file input.
        page.set_input_files("#file", str(defect_image))
        page.wait_for_function("document.getElementById('verdict').textContent !== ''", timeout=30_000)
        assert page.text_content("#verdict") == "DEFECT"
        expected = float(runtime.predict(defect_image).score[0])
        assert float(page.text_content("#score")) == pytest.approx(expected, abs=1e-4)
        width = page.eval_on_selector("#overlay", "img => img.complete && img.naturalWidth")
        assert width == 64
        assert page.text_content("#status") == ""

        # 2. Drop a file on the drop zone.
        data = base64.b64encode(ok_image.read_bytes()).decode()
        transfer = page.evaluate_handle(
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
                return transfer;
            }""",
            data,
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
        page.wait_for_function("document.getElementById('filename').textContent === 'dropped.png'", timeout=30_000)
        assert page.text_content("#verdict") == "OK"
        expected = float(runtime.predict(ok_image).score[0])
        assert float(page.text_content("#score")) == pytest.approx(expected, abs=1e-4)

        # 3. A file that is not an image: the reason is shown, the page keeps working.
        transfer = page.evaluate_handle(
            """() => {
                const transfer = new DataTransfer();
                transfer.items.add(new File(["hello"], "notes.txt", { type: "text/plain" }));
                return transfer;
            }"""
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
        page.wait_for_function("document.getElementById('status').className === 'error'", timeout=30_000)
        assert "not an image" in page.text_content("#status") and "415" in page.text_content("#status")
        assert errors == []
    finally:
        page.close()
