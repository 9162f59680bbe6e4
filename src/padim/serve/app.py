"""A web service for a trained model: a JSON API and a page for the line, with FastAPI and uvicorn.

Endpoints (:func:`create_app`):

- ``GET /``: a page (``padim/serve/static/index.html``, no external assets) where an operator drops
  or chooses one image or several and sees, for each, the verdict (OK / DEFECT), the score
  against the threshold and the heatmap; a drift warning shows at the top when one is raised.
- ``GET /health``: ``{status, model, model_sha256, kind, image_size, calibrated, threshold,
  threshold_source, pixel_threshold, max_upload_mb, verdict_log, drift}``.
- ``POST /predict``: a ``multipart/form-data`` body with the image in the field ``file``.
  Answers ``{file, score, normalized_score, label, verdict, threshold, image_size, regions,
  drift, latency_ms}``; ``label`` is True for an anomalous image, ``verdict`` is ``"DEFECT"``
  or ``"OK"`` (both None, like ``normalized_score``, for an uncalibrated model); ``regions``
  lists each predicted defect region's box ``{x0, y0, x1, y1, area}`` in pixels of the uploaded
  image (x1, y1 exclusive; :func:`padim.scoring.regions.boxes_at_size`: found on a reduced map above 16
  megapixels), ``image_size`` is its
  ``[height, width]``. With ``?heatmap=1`` the JSON also holds ``heatmap_png``: the overlay at
  the uploaded image's size (longest side at most :data:`padim.serve.answer.HEATMAP_MAX_SIDE`), regions outlined,
  with a colour bar under it (:func:`padim.report.heatmap.overlay_at_image_size`), base64 PNG.
  ``latency_ms`` is the server's time from the request's arrival to the answer.

Every verdict is appended to the verdict log, when one is set (:mod:`padim.outputs.verdict_log`: time,
file name, SHA-256 of the upload, score, verdict, threshold, model SHA-256), before the answer
is sent: a verdict that cannot be recorded is not given (500). ``drift`` is the
:class:`padim.outputs.drift.DriftMonitor` status over the last ``drift_window`` verdicts of this
server process.

Errors are JSON ``{"detail": "<one line>"}``: 408 for an upload that stalls (no data for
:data:`padim.serve.uploads.BODY_TIMEOUT_S` seconds); 413 for an upload over ``max_upload_mb`` (MiB;
checked on the Content-Length header first and while reading, so a large body is never held
whole) or an image over the pixel cap (:func:`padim.io.images.max_pixels`, from its header, before
decoding); 500 with no verdict when the score is not a finite number; 415 for a body
that is not multipart/form-data or a file that is not a decodable image; 422 for a malformed
multipart body or one without a ``file`` field; 500 if the verdict log cannot be written.

Decoding is bounded: the uploads being decoded and predicted hold at most
:data:`padim.io.decoding.DECODE_BUDGET_PIXELS` pixels at once (one larger image alone), so concurrent
large uploads wait their turn instead of each taking its own hundreds of MB.

The upload is parsed in memory; nothing but the verdict log is written to disk. Requests run
in worker threads: an onnxruntime session serves them concurrently; a ``.padim`` model run by
torch takes them one at a time. The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from padim.errors import OutputError
from padim.io.decoding import DECODE_BUDGET_PIXELS, PixelBudget
from padim.modelfile.info import file_sha256
from padim.options import check
from padim.outputs.drift import DriftMonitor
from padim.outputs.verdict_log import VerdictLog, utc_now
from padim.runtime.opening import open_model
from padim.serve.answer import predict_upload
from padim.serve.uploads import UploadError, multipart_file, read_body
from padim.version import __version__

PathLike = str | os.PathLike

MIB = 2**20
#: Room for the multipart boundaries and part headers on top of the file itself.
MULTIPART_SLACK = 64 * 1024
#: Environment variables through which :func:`run` hands its arguments to worker processes.
ENV_MODEL, ENV_MAX_UPLOAD, ENV_OPTIONS = "PADIM_SERVE_MODEL", "PADIM_SERVE_MAX_UPLOAD_MB", "PADIM_SERVE_OPTIONS"


def create_app(
    model_path: PathLike,
    *,
    max_upload_mb: float = 20,
    threshold: float | None = None,
    verdict_log: PathLike | None = None,
    log_max_mb: float = 10,
    log_keep: int = 5,
    drift_window: int = 20,
    drift_factor: float = 5.0,
    executor: str = "auto",
) -> FastAPI:
    """The web application for one model (loaded now, once).

    Args:
        model_path: a ``.padim`` or ``.onnx`` model file.
        max_upload_mb: largest accepted image file, in MiB (> 0).
        threshold: overrides the model's threshold (the file is not changed).
        verdict_log: the JSON-lines file every verdict is appended to; None: no log.
        log_max_mb, log_keep: the log's size cap in MiB and the rotated files kept.
        drift_window, drift_factor: warn when more than ``drift_factor`` times the calibrated
            false-alarm rate of the last ``drift_window`` images are flagged (:mod:`padim.outputs.drift`).
        executor: who runs the model (:mod:`padim.runtime.executors`).

    Returns:
        A FastAPI application; serve it with uvicorn, or test it with ``fastapi.testclient.TestClient``.

    Raises:
        padim.errors.ModelFileError: for a missing or unreadable model file.
        padim.errors.OutputError: if the verdict log cannot be written.
        ValueError: for a bad number.
    """
    for name, value in (
        ("max_upload_mb", max_upload_mb),
        ("threshold", threshold),
        ("log_max_mb", log_max_mb),
        ("log_keep", log_keep),
        ("drift_window", drift_window),
        ("drift_factor", drift_factor),
        ("executor", executor),
    ):
        check(name, value)
    model = open_model(model_path, executor=executor)
    if threshold is not None:
        model = model.with_threshold(threshold)
    calibration = model.calibration
    drift = DriftMonitor(None if calibration is None else calibration.false_alarm_rate, drift_window, drift_factor)
    log = None if verdict_log is None else VerdictLog(verdict_log, int(log_max_mb * MIB), log_keep)
    model_sha256 = file_sha256(model_path)
    limit = int(max_upload_mb * MIB)
    budget = PixelBudget(DECODE_BUDGET_PIXELS)  # shared by the request threads: bounded decoding memory
    page = resources.files("padim.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    app = FastAPI(
        title="padim",
        version=__version__,
        description="PaDiM anomaly detection. POST an image (multipart field 'file') to /predict.",
    )
    app.state.model, app.state.drift, app.state.verdict_log = model, drift, log

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": Path(model_path).name,
            "model_sha256": model_sha256,
            "kind": model.kind,
            "executor": model.describe(),
            "image_size": list(model.image_size),
            "calibrated": calibration is not None,
            "threshold": None if calibration is None else float(calibration.threshold),
            "threshold_source": None if calibration is None else calibration.describe(),
            "pixel_threshold": None if calibration is None else float(calibration.region_threshold),
            "max_upload_mb": max_upload_mb,
            "verdict_log": None if log is None else str(log.path),
            "drift": drift.status(),
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

    def record(name: str, data: bytes, answer: dict[str, Any]) -> None:
        """Log the verdict (before it is given) and count it for the drift warning."""
        if log is not None:
            entry = {"time": utc_now(), "file": name, "sha256": hashlib.sha256(data).hexdigest()}
            entry.update({k: answer[k] for k in ("score", "normalized_score", "verdict", "threshold")})
            log.write({**entry, "model_sha256": model_sha256})
        if answer["label"] is not None:
            drift.add(answer["label"])

    @app.post("/predict", openapi_extra=upload_schema)
    async def predict(request: Request, heatmap: bool = False) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            too_large = f"upload too large: the limit is {max_upload_mb:g} MiB"
            body = await read_body(request, limit + MULTIPART_SLACK, too_large)
            name, data = multipart_file(request.headers.get("content-type"), body)
            del body
            if len(data) > limit:
                raise UploadError(
                    413, f"upload too large: {len(data) / MIB:.1f} MiB, the limit is {max_upload_mb:g} MiB"
                )
            # Decoding, inference and logging block: run them in the thread pool, not on the event loop.
            answer = await run_in_threadpool(predict_upload, model, data, heatmap, budget)
            await run_in_threadpool(record, name, data, answer)
        except UploadError as error:
            raise HTTPException(status_code=error.status, detail=error.reason) from None
        except OutputError as error:
            raise HTTPException(status_code=500, detail=f"verdict not given: {error}") from None
        answer.update(file=name, drift=drift.status(), latency_ms=(time.perf_counter() - start) * 1000.0)
        return answer

    return app


def app_from_environment() -> FastAPI:
    """:func:`create_app` from the environment variables that :func:`run` sets (for uvicorn's workers)."""
    model = os.environ.get(ENV_MODEL)
    if not model:
        raise ValueError(f"set {ENV_MODEL} to a .padim or .onnx model file")
    options = json.loads(os.environ.get(ENV_OPTIONS, "{}"))
    return create_app(model, max_upload_mb=float(os.environ.get(ENV_MAX_UPLOAD, "20")), **options)
