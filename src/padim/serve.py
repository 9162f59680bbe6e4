"""A web service for a trained model: a JSON API and a small page, with FastAPI and uvicorn.

Endpoints (:func:`create_app`):

- ``GET /``: a page (``padim/static/index.html``, no external assets) where one drops or
  chooses an image and sees the overlay, the verdict (OK / DEFECT) and the score.
- ``GET /health``: ``{status, model, kind, image_size, calibrated, threshold, max_upload_mb}``.
- ``POST /predict``: a ``multipart/form-data`` body with the image in the field ``file``.
  Answers ``{score, normalized_score, label, verdict, threshold, latency_ms}``; ``label`` is
  True for an anomalous image, ``verdict`` is ``"DEFECT"`` or ``"OK"`` (both None, like
  ``normalized_score``, for an uncalibrated model). With ``?heatmap=1`` the JSON also holds
  ``heatmap_png``: the overlay (anomaly map over the image, predicted region outlined) as a
  base64 PNG at the model's image size, coloured 0..1 in normalised score.
  ``latency_ms`` is the server's time from the request's arrival to the answer.

Errors are JSON ``{"detail": "<one line>"}``: 413 for an upload over ``max_upload_mb`` (MiB;
checked on the Content-Length header first and while reading, so a large body is never held
whole) or an image with more pixels than Pillow's decompression-bomb limit; 415 for a body
that is not multipart/form-data or a file that is not a decodable image; 422 for a malformed
multipart body or one without a ``file`` field.

The upload is parsed in memory and nothing is written to disk. Requests run in worker
threads: an onnxruntime session serves them concurrently; a ``.padim`` model takes them one
at a time (:class:`padim.runtime.TorchModel` holds a lock). The server binds to 127.0.0.1
unless told otherwise.
"""

from __future__ import annotations

import base64
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool

from padim import __version__
from padim.errors import ImageError, ModelFileError
from padim.images import load_image
from padim.runtime import open_model

PathLike = str | os.PathLike

MIB = 2**20
#: Room for the multipart boundaries and part headers on top of the file itself.
MULTIPART_SLACK = 64 * 1024
#: Environment variables through which :func:`run` hands its arguments to worker processes.
ENV_MODEL, ENV_MAX_UPLOAD = "PADIM_SERVE_MODEL", "PADIM_SERVE_MAX_UPLOAD_MB"


class UploadError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def multipart_field(content_type: str | None, body: bytes, field: str = "file") -> bytes:
    """The content of one field of a ``multipart/form-data`` body, parsed in memory.

    Args:
        content_type: the request's Content-Type header (with its boundary).
        body: the whole request body.
        field: the form field's name.

    Returns:
        The field's bytes (the uploaded file).

    Raises:
        UploadError: 415 if the body is not multipart/form-data; 422 if it is malformed or has
            no such field.

    >>> body = b'--b\\r\\nContent-Disposition: form-data; name="file"; filename="x"\\r\\n\\r\\nDATA\\r\\n--b--\\r\\n'
    >>> multipart_field("multipart/form-data; boundary=b", body)
    b'DATA'
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise UploadError(
            415,
            f"expected a multipart/form-data body with an image in the field '{field}', "
            f"got Content-Type {content_type or 'none'!r}",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(422, "multipart/form-data body without a boundary in its Content-Type")

    parts: list[dict[str, Any]] = []
    header = {"field": bytearray(), "value": bytearray()}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][bytes(header["field"]).lower()] = bytes(header["value"])
        header["field"], header["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    callbacks = dict(
        on_part_begin=on_part_begin,
        on_header_field=on_header_field,
        on_header_value=on_header_value,
        on_header_end=on_header_end,
        on_part_data=on_part_data,
    )
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as error:
        raise UploadError(422, f"malformed multipart/form-data body ({str(error).splitlines()[0]})") from None
    names = []
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name == field:
            return bytes(part["data"])
        names.append(name)
    raise UploadError(422, f"expected an image in the multipart form field '{field}', got fields {names}")


def predict_upload(model, data: bytes, heatmap: bool = False) -> dict[str, Any]:
    """Decode one uploaded image, predict, and build the JSON answer (without ``latency_ms``).

    Raises:
        UploadError: 415 for bytes that are not a decodable image, 413 for a decompression bomb.
    """
    try:
        image = load_image(data)
    except ImageError as error:
        raise UploadError(415, str(error).splitlines()[0]) from None
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"uploaded image: too many pixels ({str(error).splitlines()[0]})") from None
    prediction = model.predict([image])
    calibration = model.calibration
    label = None if prediction.label is None else bool(prediction.label[0])
    answer: dict[str, Any] = {
        "score": float(prediction.score[0]),
        "normalized_score": None if prediction.normalized_score is None else float(prediction.normalized_score[0]),
        "label": label,
        "verdict": None if label is None else ("DEFECT" if label else "OK"),
        "threshold": None if calibration is None else float(calibration.threshold),
    }
    if heatmap:
        from padim.visualize import heatmap_range, overlay, png_bytes

        anomaly_map = prediction.anomaly_map[0]
        vmin, vmax = heatmap_range(calibration, anomaly_map)
        region = None if prediction.region is None else prediction.region[0]
        picture = overlay(np.asarray(image), anomaly_map, vmin, vmax, region=region)
        answer["heatmap_png"] = base64.b64encode(png_bytes(picture)).decode("ascii")
    return answer


async def read_body(request: Request, limit: int, too_large: str) -> bytes:
    """The request body, refused with 413 (reason ``too_large``) once it passes ``limit`` bytes.

    A body over the limit is not kept: it is read on and dropped up to four times the limit,
    so that a client still sending gets the 413 answer rather than a reset connection; past
    that (or at once, for a Content-Length beyond it) the connection is closed after the answer.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > 4 * limit:
        raise UploadError(413, too_large)
    body, received = bytearray(), 0
    async for chunk in request.stream():
        received += len(chunk)
        if received <= limit:
            body += chunk
        elif received > 4 * limit:
            break
    if received > limit:
        raise UploadError(413, too_large)
    return bytes(body)


def create_app(model_path: PathLike, *, max_upload_mb: float = 20) -> FastAPI:
    """The web application for one model (loaded now, once).

    Args:
        model_path: a ``.padim`` or ``.onnx`` model file.
        max_upload_mb: largest accepted image file, in MiB (> 0).

    Returns:
        A FastAPI application; serve it with uvicorn, or test it with ``fastapi.testclient.TestClient``.

    Raises:
        padim.model_file.ModelFileError: for a missing or unreadable model file.
        ValueError: for ``max_upload_mb`` <= 0.
    """
    if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, (int, float)) or not max_upload_mb > 0:
        raise ValueError(f"max_upload_mb must be a number > 0 (MiB), got {max_upload_mb!r}")
    model = open_model(model_path)
    limit = int(max_upload_mb * MIB)
    page = resources.files("padim").joinpath("static/index.html").read_text(encoding="utf-8")
    app = FastAPI(
        title="padim",
        version=__version__,
        description="PaDiM anomaly detection. POST an image (multipart field 'file') to /predict.",
    )
    app.state.model = model

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict[str, Any]:
        calibration = model.calibration
        return {
            "status": "ok",
            "model": Path(model_path).name,
            "kind": model.kind,
            "image_size": list(model.image_size),
            "calibrated": calibration is not None,
            "threshold": None if calibration is None else float(calibration.threshold),
            "max_upload_mb": max_upload_mb,
        }

    upload_schema = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    }

    @app.post("/predict", openapi_extra=upload_schema)
    async def predict(request: Request, heatmap: bool = False) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            too_large = f"upload too large: the limit is {max_upload_mb:g} MiB"
            body = await read_body(request, limit + MULTIPART_SLACK, too_large)
            data = multipart_field(request.headers.get("content-type"), body)
            del body
            if len(data) > limit:
                raise UploadError(
                    413, f"upload too large: {len(data) / MIB:.1f} MiB, the limit is {max_upload_mb:g} MiB"
                )
            # Decoding and inference block: run them in the thread pool, not on the event loop.
            answer = await run_in_threadpool(predict_upload, model, data, heatmap)
        except UploadError as error:
            raise HTTPException(status_code=error.status, detail=error.reason) from None
        answer["latency_ms"] = (time.perf_counter() - start) * 1000.0
        return answer

    return app


def app_from_environment() -> FastAPI:
    """:func:`create_app` from the environment variables that :func:`run` sets (for uvicorn's workers)."""
    model = os.environ.get(ENV_MODEL)
    if not model:
        raise ValueError(f"set {ENV_MODEL} to a .padim or .onnx model file")
    return create_app(model, max_upload_mb=float(os.environ.get(ENV_MAX_UPLOAD, "20")))


def run(
    model_path: PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_upload_mb: float = 20,
    *,
    access_log: bool = True,
) -> None:
    """Serve a model with uvicorn until interrupted.

    Args:
        model_path: a ``.padim`` or ``.onnx`` model file.
        host: address to bind; 127.0.0.1 (this machine only) unless told otherwise.
        port: TCP port, 0..65535 (0: any free one).
        workers: server processes (each loads its own copy of the model).
        max_upload_mb: largest accepted image file, in MiB.
        access_log: log one line per request.

    Raises:
        padim.model_file.ModelFileError: for a missing or unreadable model file.
        ValueError: for a bad port, worker count or upload limit.
    """
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if workers == 1:
        # Load in this process, so a bad model file fails before the port is bound.
        app = create_app(model_path, max_upload_mb=max_upload_mb)
        uvicorn.run(app, host=host, port=port, access_log=access_log)
        return
    if not Path(model_path).is_file():
        raise ModelFileError(f"{model_path}: model file not found")
    if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, (int, float)) or not max_upload_mb > 0:
        raise ValueError(f"max_upload_mb must be a number > 0 (MiB), got {max_upload_mb!r}")
    # Worker processes import the application by name, so the arguments travel by environment.
    os.environ[ENV_MODEL] = str(Path(model_path).resolve())
    os.environ[ENV_MAX_UPLOAD] = repr(float(max_upload_mb))
    uvicorn.run(
        "padim.serve:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
    )
