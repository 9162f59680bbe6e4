"""The web service: health, page, predictions equal to the runtime's, error codes, concurrency."""

import base64
import copy
import io
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from padim.export import export_onnx
from padim.images import list_images
from padim.runtime import open_model
from padim.serve import ENV_MAX_UPLOAD, ENV_MODEL, app_from_environment, create_app, run
from padim.visualize import heatmap_range, overlay

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


def test_health_and_page(client):
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "model": "m.onnx",
        "kind": "onnxruntime",
        "image_size": [64, 64],
        "calibrated": True,
        "threshold": pytest.approx(health["threshold"]),
        "max_upload_mb": 0.05,
    }
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and 'id="drop"' in page.text and 'id="verdict"' in page.text
    # No external assets: the page must work on a line PC without network.
    assert "http://" not in page.text and "https://" not in page.text and 'src="/' not in page.text


@pytest.mark.parametrize("kind", ["onnx", "padim"])
def test_predict_answers_what_the_runtime_predicts(files, kind):
    model_file = files[1] if kind == "onnx" else files[0]
    client = TestClient(create_app(model_file))
    runtime = open_model(model_file)
    for path in files[2]:
        answer = client.post("/predict", files=upload(path))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"score", "normalized_score", "label", "verdict", "threshold", "latency_ms"}
        expected = runtime.predict(path)
        assert body["score"] == pytest.approx(float(expected.score[0]), rel=1e-6)
        assert body["normalized_score"] == pytest.approx(float(expected.normalized_score[0]), abs=1e-6)
        assert body["label"] is bool(expected.label[0])
        assert body["verdict"] == ("DEFECT" if body["label"] else "OK")
        assert body["latency_ms"] > 0


def test_heatmap_is_the_overlay_png(client, files):
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
        expected = overlay(
            np.asarray(image.convert("RGB")), prediction.anomaly_map[0], vmin, vmax, region=prediction.region[0]
        )
    with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))) as picture:
        assert picture.format == "PNG" and picture.size == (64, 64)
        # Equal up to pixels whose colour sits at a rounding edge of the colour map.
        assert np.mean(np.asarray(picture.convert("RGB")) != expected) < 0.01


def test_refusals_have_a_status_and_a_one_line_reason(client, files):
    image = files[2][0].read_bytes()
    cases = [
        # over the 0.05 MiB limit, with a Content-Length ...
        (dict(files={"file": ("big.png", b"x" * 60_000, "image/png")}), 413, "upload too large"),
        # ... and streamed in chunks without one (past the limit plus the multipart allowance)
        (dict(content=iter([b"x" * 40_000] * 5), headers=multipart(b"")[1]), 413, "upload too large"),
        (dict(files={"file": ("a.png", b"not an image at all", "image/png")}), 415, "not an image"),
        (dict(files={"file": ("a.png", image[: len(image) // 2], "image/png")}), 415, "corrupt or truncated"),
        (dict(files={"file": ("empty.png", b"", "image/png")}), 415, "not an image"),
        (dict(content=image, headers={"content-type": "image/png"}), 415, "expected a multipart/form-data body"),
        (dict(files={"picture": ("a.png", image, "image/png")}), 422, "field 'file', got fields ['picture']"),
        (
            dict(content=b"--XyZ\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=XyZ"}),
            422,
            "multipart",
        ),
    ]
    for kwargs, status, reason in cases:
        answer = client.post("/predict", **kwargs)
        assert answer.status_code == status, (reason, answer.text)
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and reason in detail and "\n" not in detail
    assert client.post("/predict", files=upload(files[2][0])).status_code == 200  # still serving


def test_decompression_bomb_is_refused(client, files, monkeypatch):
    # Pillow refuses images of more than twice MAX_IMAGE_PIXELS; a small limit makes the
    # 64 x 64 test image stand in for a bomb.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    answer = client.post("/predict", files=upload(files[2][0]))
    assert answer.status_code == 413 and "too many pixels" in answer.json()["detail"]


def test_nothing_is_written_to_disk(files, tmp_path, monkeypatch):
    workdir, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
    workdir.mkdir()
    tmpdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    client = TestClient(create_app(files[1], max_upload_mb=2))
    big = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)  # > 1 MB as PNG
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    assert buffer.tell() > 2**20
    assert (
        client.post("/predict?heatmap=1", files={"file": ("big.png", buffer.getvalue(), "image/png")}).status_code
        == 200
    )
    assert client.post("/predict", files={"file": ("bad.png", b"x" * 100, "image/png")}).status_code == 415
    assert os.listdir(workdir) == [] and os.listdir(tmpdir) == []


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
    assert app == "padim.serve:app_from_environment" and kwargs["factory"] and kwargs["workers"] == 2
    assert os.environ[ENV_MODEL] == str(files[0].resolve()) and float(os.environ[ENV_MAX_UPLOAD]) == 3
    assert app_from_environment().state.model.config == open_model(files[0]).config


def test_bad_arguments(files, tmp_path):
    with pytest.raises(ValueError, match="port must be an int in 0..65535, got 70000"):
        run(files[1], port=70000)
    with pytest.raises(ValueError, match="workers must be an int >= 1, got 0"):
        run(files[1], workers=0)
    with pytest.raises(ValueError, match="max_upload_mb must be a number > 0"):
        create_app(files[1], max_upload_mb=0)
    with pytest.raises(ValueError, match="missing.onnx: model file not found"):
        create_app(tmp_path / "missing.onnx")
