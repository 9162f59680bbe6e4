"""One verdict as the machines around a line receive it: a small JSON object, the same for MQTT and webhooks.

:func:`verdict_message` turns a CSV :class:`padim.outputs.rows.Row` into the message ``padim watch``
sends for each judged image, and :func:`message_bytes` into the bytes on the wire (UTF-8 JSON, no
NaN: a score that is not a finite number is ``null`` and the label is ``error``, never ``normal``).
The message carries what a reject gate or a MES needs without reading the CSV: the image, the
verdict, the score against the threshold, the model that gave it, and when.

>>> from pathlib import Path
>>> from padim.outputs.rows import Row
>>> row = Row(Path("in/part-1.png"), 12.5, 0.75, "anomalous", "overlays/part-1.jpg", (640, 480), None)
>>> m = verdict_message(row, threshold=10.0, model="line.onnx", model_sha256="ab", time="T1", arrived="T0")
>>> m["label"], m["score"], m["threshold"], m["overlay"], m["region"]
('anomalous', 12.5, 10.0, 'overlays/part-1.jpg', None)
"""

from __future__ import annotations

import json
import math
import socket
from typing import Any

from padim.outputs.rows import Row

#: The keys of every message, in order (``seq`` is added by the spool: see :mod:`padim.outputs.spool`).
MESSAGE_KEYS = ("path", "label", "score", "normalized_score", "threshold", "overlay", "width", "height", "region",
                "alignment", "error", "model", "model_sha256", "time", "arrived", "host")  # fmt: skip


def verdict_message(
    row: Row,
    *,
    threshold: float | None,
    model: str,
    model_sha256: str | None,
    time: str,
    arrived: str | None,
    error: str | None = None,
) -> dict[str, Any]:
    """The message of one verdict.

    Args:
        row: the image's CSV row.
        threshold: the image threshold the label used (None: a model without one).
        model: the model file as given; model_sha256: its SHA-256.
        time: when the verdict was given (UTC, ISO 8601); arrived: when the image arrived.
        error: why there is no verdict (an image that could not be decoded), else None.

    Returns:
        a dict with :data:`MESSAGE_KEYS`: ``label`` is ``anomalous``, ``normal``, ``error`` or None (no
        threshold); ``score`` None when not a finite number; ``region`` ``{x0, y0, x1, y1, area}`` or None;
        ``alignment`` ``{dx, dy, angle, aligned}`` (how the part moved, :mod:`padim.align`; the service's
        answer names it alike) or None for a model that does not align parts.
    """
    box = row.region
    width, height = row.size
    return {
        "path": str(row.path),
        "label": row.label or None,
        "score": _finite(row.score),
        "normalized_score": _finite(row.normalized_score),
        "threshold": _finite(threshold),
        "overlay": row.overlay or None,
        "width": width if isinstance(width, int) else None,
        "height": height if isinstance(height, int) else None,
        "region": None if box is None else {"x0": box.x0, "y0": box.y0, "x1": box.x1, "y1": box.y1, "area": box.area},
        "alignment": None if row.pose is None else dict(zip(("dx", "dy", "angle"), row.pose), aligned=row.aligned),
        "error": error,
        "model": model,
        "model_sha256": model_sha256,
        "time": time,
        "arrived": arrived,
        "host": _HOST,
    }


def message_bytes(message: dict[str, Any]) -> bytes:
    """The message as compact UTF-8 JSON (``NaN`` is refused: :func:`verdict_message` never holds one)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


_HOST = socket.gethostname()
