"""One upload's answer: the image decoded in bounded memory, the model's verdict, its regions and heatmap.

:func:`predict_upload` is what ``POST /predict`` does with the bytes of one image, independent of
HTTP: decoding errors become :class:`padim.serve.uploads.UploadError` with the status the service
answers (415 not an image, 413 over the pixel cap), and a score that is not a finite number is
500, "no verdict": the service never guesses.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from padim.errors import ImageError, ImageTooLargeError
from padim.io.decoders import load_image
from padim.io.decoding import PixelBudget
from padim.io.images import header_pixels, max_pixels
from padim.io.pictures import picture_bytes
from padim.report.heatmap import overlay_at_image_size
from padim.report.overlays import heatmap_range
from padim.scoring.regions import boxes_at_size
from padim.serve.uploads import UploadError

#: The heatmap PNG's longest side at most: larger uploads are drawn scaled down (boxes are not).
HEATMAP_MAX_SIDE = 2048


def predict_upload(model, data: bytes, heatmap: bool = False, budget: PixelBudget | None = None) -> dict[str, Any]:
    """Decode one uploaded image, predict, and build the JSON answer (without ``file``, ``drift``, ``latency_ms``).

    Raises:
        UploadError: 415 for bytes that are not a decodable image, 413 for an image over the pixel
            cap (a decompression bomb), 500 when the score is not a finite number (no verdict).
    """
    if budget is None:
        return _predict_upload(model, data, heatmap)
    with budget.hold(min(header_pixels(data), max_pixels())):  # over the cap: refused at once, inside
        return _predict_upload(model, data, heatmap)


def _predict_upload(model, data: bytes, heatmap: bool) -> dict[str, Any]:

    try:
        image = load_image(data)
    except ImageTooLargeError as error:
        raise UploadError(413, str(error).splitlines()[0]) from None
    except ImageError as error:
        raise UploadError(415, str(error).splitlines()[0]) from None
    prediction = model.predict([image])
    calibration = model.calibration
    label = None if prediction.label is None else bool(prediction.label[0])
    score, anomaly_map = float(prediction.score[0]), prediction.anomaly_map[0]
    if not math.isfinite(score):  # fail closed: no verdict at all rather than a guess
        raise UploadError(500, "no verdict: the model gave a score that is not a finite number")
    boxes = boxes_at_size(anomaly_map, image.size, calibration, score)
    answer: dict[str, Any] = {
        "score": score,
        "normalized_score": None if prediction.normalized_score is None else float(prediction.normalized_score[0]),
        "label": label,
        "verdict": None if label is None else ("DEFECT" if label else "OK"),
        "threshold": None if calibration is None else float(calibration.threshold),
        "image_size": [image.height, image.width],
        "regions": [] if boxes is None else [vars(box) for box in boxes],
        "alignment": _alignment(prediction, image.size),
    }
    if heatmap:
        vmin, vmax = heatmap_range(calibration, anomaly_map)
        picture = overlay_at_image_size(image, anomaly_map, calibration, vmin, vmax, HEATMAP_MAX_SIDE, score=score)
        answer["heatmap_png"] = base64.b64encode(picture_bytes(picture, "png")).decode("ascii")
    return answer


def _alignment(prediction: Any, size: tuple[int, int]) -> dict[str, Any] | None:
    """``{dx, dy, angle, confidence, aligned}`` of the upload (dx, dy in its pixels), or None for a model that does not align."""
    found = prediction.registration
    if found is None:
        return None
    height, width = prediction.anomaly_map.shape[1:]
    dx, dy, angle = (float(v) for v in found.poses[0])
    return dict(dx=dx * size[0] / width, dy=dy * size[1] / height, angle=angle,
                confidence=float(found.confidence[0]), aligned=bool(found.trusted[0]))  # fmt: skip
