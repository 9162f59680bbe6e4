"""Predicted defect regions at an image's own resolution: the map resized, thresholded, boxed.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785) computes its map at the model's
working size. A user wants the region on the original picture: :func:`map_at_size` resizes a
map (bilinear, half-pixel centres, as the map itself was up-sampled), :func:`region_mask`
applies the calibration's pixel rule, and :func:`region_boxes` gives each connected region's
bounding box and area in pixels of the original image. NumPy and Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from padim.scoring import components
from padim.scoring import rules as scoring


def map_at_size(anomaly_map: Any, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) anomaly map to ``size`` = (width, height), PIL's order, bilinearly.

    >>> map_at_size(np.ones((4, 4), np.float32), (6, 2)).shape
    (2, 6)
    """
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    width, height = size
    if anomaly_map.shape == (height, width):
        return anomaly_map
    return np.asarray(Image.fromarray(anomaly_map, mode="F").resize((width, height), Image.BILINEAR))


def region_mask(anomaly_map: Any, calibration: Any, score: float | None = None) -> np.ndarray | None:
    """(H, W) bool: the pixels a calibration calls defective; None for an uncalibrated model.

    The pixel rule of :func:`padim.scoring.rules.region`: pixels at or above the calibration's pixel
    threshold (:attr:`padim.scoring.calibration.Calibration.region_threshold`), in an image whose score is
    at or above the image threshold; an image called normal has no region. NaN pixels of a
    flagged image count as defective.

    Args:
        anomaly_map: (H, W) map, at the working size or resized (:func:`map_at_size`).
        calibration: :class:`padim.scoring.calibration.Calibration` or None.
        score: the image's score (default: the map's maximum, NaN if it holds one).

    >>> from padim.scoring.calibration import Calibration
    >>> c = Calibration(threshold=2.0, center=1.0, pixel_threshold=1.5)
    >>> region_mask(np.array([[1.0, 1.6, 2.5]]), c).tolist(), region_mask(np.array([[1.0, 1.6]]), c).tolist()
    ([[False, True, True]], [[False, False]])
    """
    if calibration is None:
        return None
    anomaly_map = np.asarray(anomaly_map)
    score = np.max(anomaly_map) if score is None else score
    return scoring.region(anomaly_map, np.asarray(score), calibration.threshold, calibration.region_threshold)


@dataclass(frozen=True)
class Box:
    """One connected region: bounding box ``x0, y0, x1, y1`` (x1, y1 exclusive) and its area in pixels."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: int


def region_boxes(mask: Any) -> list[Box]:
    """Bounding boxes of the 8-connected regions of an (H, W) bool mask: largest first, then top to bottom.

    >>> m = np.zeros((4, 6), bool); m[1:3, 1:2] = True; m[0, 4:6] = True
    >>> [(b.x0, b.y0, b.x1, b.y1, b.area) for b in region_boxes(m)]
    [(4, 0, 6, 1, 2), (1, 1, 2, 3, 2)]
    """
    labels, count = components.label(mask)
    if count == 0:
        return []
    corners, areas = components.boxes(labels, count)
    found = [Box(*(int(v) for v in corner), int(area)) for corner, area in zip(corners, areas)]
    return sorted(found, key=lambda b: (-b.area, b.y0, b.x0))


#: Regions of a larger image are found on its map reduced to about this many pixels, then scaled
#: back: a 100-megapixel upload costs tens of MB, not 2 GB (labelling at full size).
REGION_PIXELS = 16_000_000


def boxes_at_size(
    anomaly_map: Any, size: tuple[int, int], calibration: Any, score: float, max_pixels: int = REGION_PIXELS
) -> list[Box] | None:
    """:func:`region_boxes` in pixels of an image of ``size`` (width, height), in bounded memory.

    Up to ``max_pixels`` the map is resized to the image's size; above, to a reduced size of the
    same aspect ratio, and the boxes and areas are scaled back (to within a pixel of the reduced
    grid). None for an uncalibrated model.

    >>> m = np.zeros((4, 4), np.float32); m[1:3, 1:3] = 9.0
    >>> from padim.scoring.calibration import Calibration
    >>> cal = Calibration(threshold=1.0, center=0.0)
    >>> boxes_at_size(m, (400, 400), cal, 9.0), boxes_at_size(m, (400, 400), cal, 9.0, max_pixels=1600)
    ([Box(x0=61, y0=61, x1=339, y1=339, area=71404)], [Box(x0=60, y0=60, x1=340, y1=340, area=72800)])
    """
    width, height = size
    scale = min(1.0, (max_pixels / (width * height)) ** 0.5)
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    mask = region_mask(map_at_size(anomaly_map, small), calibration, score)
    if mask is None:
        return None
    boxes = region_boxes(mask)
    if small == (width, height):
        return boxes
    sx, sy = width / small[0], height / small[1]
    return [
        Box(round(b.x0 * sx), round(b.y0 * sy), round(b.x1 * sx), round(b.y1 * sy), round(b.area * sx * sy))
        for b in boxes
    ]


def union_box(boxes: list[Box]) -> Box | None:
    """The box around all regions, with their total area; None when there is none.

    >>> union_box([Box(1, 1, 2, 3, 2), Box(4, 0, 6, 1, 2)])
    Box(x0=1, y0=0, x1=6, y1=3, area=4)
    """
    if not boxes:
        return None
    return Box(
        min(b.x0 for b in boxes),
        min(b.y0 for b in boxes),
        max(b.x1 for b in boxes),
        max(b.y1 for b in boxes),
        sum(b.area for b in boxes),
    )


#: Map pixels resized at once when finding the region of a large image (4 MB as float32).
STRIP_PIXELS = 1_000_000


def _mask_box(mask: np.ndarray) -> Box | None:
    """The box around the True pixels of an (H, W) mask and their count (``union_box`` of its regions)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return Box(int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1, int(np.count_nonzero(mask)))


def region_extent(anomaly_map: Any, size: tuple[int, int], calibration: Any, score: float | None = None) -> Box | None:
    """The predicted region at the image's own size: the box around all of it and its area in pixels.

    Equals ``union_box(region_boxes(region_mask(map_at_size(anomaly_map, size), calibration, score)))``
    of :mod:`padim.scoring.regions`, without labelling each region (the job needs only their union),
    and for an image over :data:`STRIP_PIXELS` pixels in strips of rows, so that an 8000x8000
    image needs a few MB, not 256 MB, of map at a time.

    Args:
        anomaly_map: (H, W) map at the model's working size.
        size: the image's (width, height).
        calibration: :class:`padim.scoring.calibration.Calibration`, or None (no region).
        score: the image's score (default: the map's maximum); a region needs it at or above the threshold.

    Returns:
        a :class:`padim.scoring.regions.Box` in pixels of the image (x1, y1 exclusive), or None.
    """
    if calibration is None:
        return None
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    # The pixel rule flags a value at or above a threshold (or NaN). Bilinear resizing only
    # averages neighbours with weights >= 0 that sum to 1: a map with no flagged pixel at the
    # working size has none at any size, and most images (the normal ones) stop here.
    if not region_mask(anomaly_map, calibration, score).any():
        return None
    width, height = size
    rows = max(1, STRIP_PIXELS // width)
    if rows >= height:
        return _mask_box(region_mask(map_at_size(anomaly_map, size), calibration, score))
    # Each strip is judged by the whole image's score, not by its own maximum.
    score = float(np.max(anomaly_map)) if score is None else score
    source, (map_height, map_width) = Image.fromarray(anomaly_map), anomaly_map.shape
    boxes = []
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        # The same sampling as one resize of the whole map: output row y reads the map at
        # (y + 0.5) * map_height / height - 0.5 whichever strip it is in.
        area = (0, top * map_height / height, map_width, bottom * map_height / height)
        strip = np.asarray(source.resize((width, bottom - top), Image.BILINEAR, box=area))
        box = _mask_box(region_mask(strip, calibration, score))
        if box is not None:
            boxes.append(replace(box, y0=box.y0 + top, y1=box.y1 + top))
    return union_box(boxes)
