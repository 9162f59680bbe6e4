"""Picture files: an (H, W[, C]) uint8 array encoded as PNG, JPEG or WebP, and written atomically.

One place for the formats and their settings, so that the batch job, the report and the web
service write pictures the same way (the settings were chosen by size against time in
``benchmarks/batch_job.py``).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image

from padim.io.files import write_bytes


def _checked_picture(array: Any) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"array must be uint8, got dtype {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"array must have shape (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    return array


def png_bytes(array: Any) -> bytes:
    """Encode an image as PNG (zlib level 1: 4x faster than Pillow's default 6, for 20% more bytes on overlays).

    Args:
        array: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, uint8.

    Returns:
        The PNG file's bytes.

    Raises:
        TypeError: if ``array`` is not uint8.
        ValueError: if its shape is none of the above.

    >>> png_bytes(np.zeros((2, 3, 3), dtype=np.uint8))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    return picture_bytes(array, "png")


def save_png(path: str | os.PathLike, array: Any) -> None:
    """Write an image to ``path`` as PNG, atomically (a temporary name, then a rename).

    Args:
        path: target file; its folder is created if missing.
        array: as :func:`png_bytes`.

    Raises:
        TypeError, ValueError: as :func:`png_bytes`; nothing is written then.
    """
    write_bytes(path, png_bytes(array))


#: Picture file formats: name -> (file suffix, Pillow save options). On a 900x900 overlay (one
#: thread, ``benchmarks/batch_job.py``): JPEG at quality 90 takes 3 ms and 80 kB, PNG at level 1
#: 60 ms and 670 kB (at Pillow's default level 6: 250 ms and 550 kB), WebP 23 ms and 50 kB.
PICTURE_FORMATS: dict[str, tuple[str, dict]] = {
    "jpeg": (".jpg", {"format": "JPEG", "quality": 90}),
    "png": (".png", {"format": "PNG", "compress_level": 1}),
    "webp": (".webp", {"format": "WEBP", "quality": 90, "method": 0}),
}


def picture_bytes(array: Any, kind: str = "jpeg") -> bytes:
    """Encode an image in one of :data:`PICTURE_FORMATS` (JPEG and WebP drop an alpha channel).

    Raises:
        TypeError: if ``array`` is not uint8.
        ValueError: for a shape other than (H, W), (H, W, 3), (H, W, 4), or an unknown ``kind``.

    >>> picture_bytes(np.zeros((2, 3, 3), dtype=np.uint8), "jpeg")[:3]
    b'\\xff\\xd8\\xff'
    """
    if kind not in PICTURE_FORMATS:
        raise ValueError(f"picture format must be one of {sorted(PICTURE_FORMATS)}, got {kind!r}")
    image = Image.fromarray(_checked_picture(array))
    options = PICTURE_FORMATS[kind][1]
    if options["format"] != "PNG" and image.mode == "RGBA":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()
