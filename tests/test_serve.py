"""The web service: health, page, predictions equal to the runtime's, error codes, concurrency."""

import base64
import copy
import hashlib
import io
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from padim.io.images import list_images
from padim.model.export import export_onnx
from padim.modelfile.info import file_sha256
from padim.report.heatmap import overlay_at_image_size
from padim.report.overlays import heatmap_range
from padim.runtime.opening import open_model
from padim.scoring.calibration import Calibration
from padim.scoring.regions import map_at_size, region_boxes, region_mask
from padim.serve.app import ENV_MAX_UPLOAD, ENV_MODEL, app_from_environment, create_app
from padim.serve.run import run

with warnings.catch_warnings():
    # Starlette's TestClient warns that it will move to httpx2; the tests use httpx as installed.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def files(tmp_path_factory, mvtec_tree, tiny_model):
    """The shared model, its threshold between the test scores, as ``m.padim`` and ``m.onnx``; test images."""
    paths = [p for sub in ("good", "scratch", "spot") for p in list_images(mvtec_tree / "test" / sub)]
    model = copy.copy(tiny_model)
    scores = np.sort(model.predict(paths).score)
    model.calibration_ = model.calibration_.with_threshold(float(scores[3:5].mean()))
    folder = tmp_path_factory.mktemp("serve")
    model.save(folder / "m.padim")
    export_onnx(model, folder / "m.onnx")
    return folder / "m.padim", folder / "m.onnx", paths


@pytest.fixture(scope="module")
def client(files):
    return TestClient(create_app(files[1], max_upload_mb=0.05))


def upload(path):
    return {"file": (path.name, path.read_bytes(), "image/png")}


def multipart(data, field="file"):
    head = (
        f'--XyZ\r\nContent-Disposition: form-data; name="{field}"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
    )
    return head.encode() + data + b"\r\n--XyZ--\r\n", {"content-type": "multipart/form-data; boundary=XyZ"}


def test_health_and_page(client, files):
    health = client.get("/health").json()
    calibration = open_model(files[1]).calibration
    assert health == {
        "status": "ok",
        "model": "m.onnx",
        "model_sha256": file_sha256(files[1]),
        "kind": open_model(files[1]).kind,  # auto: onnxruntime, or OpenVINO where measured faster
        "executor": open_model(files[1]).describe(),
        "image_size": [64, 64],
        "calibrated": True,
        "threshold": pytest.approx(calibration.threshold),
        "threshold_source": "set by hand",
        "pixel_threshold": pytest.approx(calibration.region_threshold),
        "max_upload_mb": 0.05,
        "verdict_log": None,
        "drift": health["drift"],
    }
    assert health["drift"]["warning"] is False and health["drift"]["window"] == 20
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and 'id="drop"' in page.text and 'id="verdict"' in page.text
    assert "multiple" in page.text and 'id="drift"' in page.text
    # No external assets: the page must work on a line PC without network.
    assert "http://" not in page.text and "https://" not in page.text and 'src="/' not in page.text


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "padim"])
def test_predict_answers_what_the_runtime_predicts(files, kind):
    model_file = files[1] if kind == "onnx" else files[0]
    client = TestClient(create_app(model_file))
    runtime = open_model(model_file)
    for path in files[2]:
        answer = client.post("/predict", files=upload(path))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {
            "file", "score", "normalized_score", "label", "verdict", "threshold",
            "image_size", "regions", "drift", "latency_ms", "alignment",
        }  # fmt: skip
        expected = runtime.predict(path)
        if expected.registration is None:
            assert body["alignment"] is None
        else:  # the pose in the upload's pixels (64 x 64, the working size here), as the CSV's columns
            dx, dy, angle = (float(v) for v in expected.registration.poses[0])
            assert (body["alignment"]["dx"], body["alignment"]["dy"], body["alignment"]["angle"]) == pytest.approx(
                (dx, dy, angle), abs=1e-6)  # fmt: skip
            assert body["alignment"]["aligned"] is bool(expected.registration.trusted[0])
        assert body["file"] == path.name and body["image_size"] == [64, 64]
        assert body["score"] == pytest.approx(float(expected.score[0]), rel=1e-6)
        assert body["normalized_score"] == pytest.approx(float(expected.normalized_score[0]), abs=1e-6)
        assert body["label"] is bool(expected.label[0])
        assert body["verdict"] == ("DEFECT" if body["label"] else "OK")
        assert body["latency_ms"] > 0
        # The boxes of the regions, in the image's pixels: a flagged image has one, an OK one none.
        boxes = [(b.x0, b.y0, b.x1, b.y1, b.area) for b in region_boxes(expected.region[0])]
        assert [(b["x0"], b["y0"], b["x1"], b["y1"], b["area"]) for b in body["regions"]] == boxes
        assert bool(boxes) == body["label"]


def test_heatmap_is_the_overlay_at_the_uploaded_size(client, files):
    path = files[2][-1]
    body = client.post("/predict?heatmap=1", files=upload(path)).json()
    runtime = open_model(files[1])
    prediction = runtime.predict(path)
    vmin, vmax = heatmap_range(runtime.calibration, prediction.anomaly_map[0])
    assert (vmin, vmax) == pytest.approx(
        (
            runtime.calibration.threshold - runtime.calibration.scale,
            runtime.calibration.threshold + runtime.calibration.scale,
        )
    )
    with Image.open(path) as image:
        expected = overlay_at_image_size(image, prediction.anomaly_map[0], runtime.calibration, vmin, vmax)
    with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))) as picture:
        assert picture.format == "PNG" and picture.size == (expected.shape[1], expected.shape[0])
        # Equal up to pixels whose colour sits at a rounding edge of the colour map.
        assert np.mean(np.asarray(picture.convert("RGB")) != expected) < 0.01


def test_heatmap_and_boxes_follow_a_larger_upload(files):
    """A 150 x 100 upload of a 64 px model: the heatmap is 150 wide, the boxes are in its pixels."""
    client = TestClient(create_app(files[1]))
    runtime = open_model(files[1])
    path = files[2][-1]
    with Image.open(path) as image:
        big = image.convert("RGB").resize((150, 100), Image.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    body = client.post("/predict?heatmap=1", files={"file": ("big.png", buffer.getvalue(), "image/png")}).json()
    assert body["image_size"] == [100, 150]
    with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))) as picture:
        assert picture.size[0] == 150 and picture.size[1] > 100  # the colour bar below the image
    prediction = runtime.predict([big])
    mask = region_mask(map_at_size(prediction.anomaly_map[0], (150, 100)), runtime.calibration, prediction.score[0])
    assert body["regions"] == [vars(b) for b in region_boxes(mask)]
    assert all(b["x1"] <= 150 and b["y1"] <= 100 for b in body["regions"])


def test_threshold_overrides_the_model(files):
    scores = open_model(files[1]).predict(files[2]).score
    client = TestClient(create_app(files[1], threshold=float(scores.max()) + 1.0))
    assert client.get("/health").json()["threshold_source"] == "set by hand"
    for path in files[2]:
        assert client.post("/predict", files=upload(path)).json()["verdict"] == "OK"


def test_every_verdict_is_logged(files, tmp_path):
    log = tmp_path / "logs" / "verdicts.jsonl"
    client = TestClient(create_app(files[1], verdict_log=log))
    assert client.get("/health").json()["verdict_log"] == str(log)
    answers = [client.post("/predict", files=upload(path)).json() for path in files[2][:3]]
    assert client.post("/predict", files={"file": ("bad.png", b"x" * 100, "image/png")}).status_code == 415
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 3  # a refused upload gets no verdict and no line
    model_sha = file_sha256(files[1])
    for record, answer, path in zip(records, answers, files[2]):
        assert set(record) == {
            "time",
            "file",
            "sha256",
            "score",
            "normalized_score",
            "verdict",
            "threshold",
            "model_sha256",
        }
        assert record["file"] == path.name and record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert record["score"] == answer["score"] and record["verdict"] == answer["verdict"]
        assert record["model_sha256"] == model_sha and record["time"].endswith("Z")


def test_a_verdict_that_cannot_be_logged_is_not_given(files, tmp_path):
    log = tmp_path / "verdicts.jsonl"
    client = TestClient(create_app(files[1], verdict_log=log))
    log.unlink()
    log.mkdir()  # the log's name is now a folder: appending fails
    answer = client.post("/predict", files=upload(files[2][0]))
    assert answer.status_code == 500 and "verdict not given" in answer.json()["detail"]


@pytest.mark.slow
def test_drift_warning_when_far_more_images_are_flagged_than_calibrated(files, tiny_model, tmp_path):
    """Every test image scores above a threshold that flagged none of 20 good images: a shifted camera's picture."""
    scores = open_model(files[1]).predict(files[2]).score
    low = float(scores.min())
    model = copy.copy(tiny_model)
    model.calibration_ = Calibration(threshold=low - 1.0, center=low - 3.0, quantile=0.99, good_scores=[low - 2.0] * 20)
    model.save(tmp_path / "m.padim")
    client = TestClient(create_app(tmp_path / "m.padim", drift_window=5, drift_factor=3))
    assert client.get("/health").json()["drift"]["limit"] == pytest.approx(0.03)  # 3 x the 1 % floor
    for k in range(5):
        body = client.post("/predict", files=upload(files[2][k % len(files[2])])).json()
        assert body["verdict"] == "DEFECT"
        assert body["drift"]["warning"] is (k == 4)  # only once the window of 5 is full
    drift = client.get("/health").json()["drift"]
    assert drift["warning"] and drift["flagged"] == 5 and "5 of the last 5 images" in drift["message"]


@pytest.fixture
def live_server(files, serving):
    """The ONNX app served by uvicorn on a free loopback port, in a thread."""
    with serving(create_app(files[1])) as url:
        yield url


def test_concurrent_requests_are_served_without_errors(live_server, files):
    paths = files[2]
    expected = {str(p): float(s) for p, s in zip(paths, open_model(files[1]).predict(paths).score)}

    def client_session(index):
        results = []
        with httpx.Client(base_url=live_server, timeout=60) as session:
            for k in range(4):
                path = paths[(index + k) % len(paths)]
                answer = session.post("/predict", params={"heatmap": k % 2}, files=upload(path))
                results.append((str(path), answer.status_code, answer.json()))
        return results

    with ThreadPoolExecutor(8) as pool:
        results = [r for batch in pool.map(client_session, range(8)) for r in batch]
    assert len(results) == 32
    for name, status, body in results:
        assert status == 200, body
        assert body["score"] == pytest.approx(expected[name], rel=1e-5)


@pytest.mark.slow
def test_run_binds_to_loopback_by_default(files, monkeypatch):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    run(files[1], port=8123)
    app, kwargs = calls[-1]
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8123
    assert app.state.model.kind == "onnxruntime"
    # Several workers import the app by name; the model travels in the environment.
    monkeypatch.setenv(ENV_MODEL, "unset")
    run(files[0], workers=2, max_upload_mb=3)
    app, kwargs = calls[-1]
    assert app == "padim.serve.app:app_from_environment" and kwargs["factory"] and kwargs["workers"] == 2
    assert os.environ[ENV_MODEL] == str(files[0].resolve()) and float(os.environ[ENV_MAX_UPLOAD]) == 3
    assert app_from_environment().state.model.config == open_model(files[0]).config
    # The other options travel too: a threshold and the drift settings.
    run(files[0], workers=2, threshold=1.5, drift_window=7)
    app = app_from_environment()
    assert app.state.model.calibration.threshold == 1.5 and app.state.drift.window == 7


def test_bad_arguments(files, tmp_path):
    with pytest.raises(ValueError, match=r"port must be an integer in 1\.\.65535, got 70000"):
        run(files[1], port=70000)
    with pytest.raises(ValueError, match=r"port must be an integer in 1\.\.65535, got 0"):
        run(files[1], port=0)
    with pytest.raises(ValueError, match=r"workers must be an integer in 1\.\.256, got 0"):
        run(files[1], workers=0)
    with pytest.raises(ValueError, match=r"max_upload_mb must be a number in \(0, 10240\]"):
        create_app(files[1], max_upload_mb=0)
    with pytest.raises(ValueError, match="missing.onnx: model file not found"):
        create_app(tmp_path / "missing.onnx")
