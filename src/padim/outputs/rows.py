"""One image's result as the batch job reports it: the CSV row, the verdict line, the region's extent, picture names.

:class:`Row` is a line of ``predictions.csv`` (:data:`CSV_COLUMNS`) and the one-line verdict
``padim predict`` prints for a single image. :func:`region_extent` gives the box around the
predicted region and its area in pixels of the original image, by the rule of
:mod:`padim.scoring.regions`, in bounded memory. :func:`overlay_names` names the pictures so that they
mirror the images' folders. NumPy and Pillow only.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim.scoring.regions import Box, map_at_size, region_mask, union_box

CSV_COLUMNS = (
    "path",
    "score",
    "normalized_score",
    "label",
    "overlay",
    "width",
    "height",
    "region_x0",
    "region_y0",
    "region_x1",
    "region_y1",
    "region_area",
)
#: Map pixels resized at once when finding the region of a large image (4 MB as float32).
STRIP_PIXELS = 1_000_000


@dataclass(frozen=True)
class Row:
    """One image's result, as written to ``predictions.csv``.

    Attributes:
        path: the image file as given.
        score: the image score (the map's maximum); may be NaN or infinite (then ``label`` is ``error``).
        normalized_score: in [0, 1], 0.5 at the threshold; None without a threshold or a finite score.
        label: ``anomalous``, ``normal``, ``error`` (the score is not a finite number) or ``""``
            (a model without a threshold).
        overlay: the picture's path relative to the output folder, or ``""``.
        size: the image's own (width, height).
        region: the box around the predicted region in pixels of the image (x1, y1 exclusive)
            with its area in pixels, or None (no region, no threshold, or an error).
    """

    path: Path
    score: float
    normalized_score: float | None
    label: str
    overlay: str
    size: tuple[int, int]
    region: Box | None

    def csv_line(self) -> str:
        """The row as one CSV line (the order of :data:`CSV_COLUMNS`), newline included."""
        box = self.region
        regions = ["", "", "", "", ""] if box is None else [box.x0, box.y0, box.x1, box.y1, box.area]
        normalized = "" if self.normalized_score is None else f"{self.normalized_score:.6f}"
        cells = [str(self.path), f"{self.score:.6f}", normalized, self.label, self.overlay, *self.size, *regions]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        return buffer.getvalue()

    def verdict(self) -> str:
        """One line for a person: ``PATH: anomalous  score 61.2345  normalized 0.846  region ...``."""
        if self.label == "error":
            return f"{self.path}: error  score {self.score} (not a finite number)"
        if not self.label:
            return f"{self.path}: score {self.score:.4f} (the model has no threshold: no verdict)"
        line = f"{self.path}: {self.label}  score {self.score:.4f}  normalized {self.normalized_score:.3f}"
        if self.region is not None:
            box = self.region
            line += f"  region x {box.x0}-{box.x1} y {box.y0}-{box.y1} ({box.area} px)"
        return line


def overlay_names(paths: Sequence[Path], suffix: str) -> list[str]:
    """Picture names that mirror each image's path below the deepest folder common to all of them.

    The image's suffix is replaced by ``suffix``, unless two images in one folder share a stem
    (``x.png`` and ``x.tif``): those keep theirs, so no two images share a picture.

    >>> overlay_names([Path("d/a/x.png"), Path("d/b/x.png"), Path("d/b/y.tif"), Path("d/b/y.png")], ".jpg")
    ['a/x.jpg', 'b/x.jpg', 'b/y.tif.jpg', 'b/y.png.jpg']
    """
    absolute = [Path(os.path.abspath(p)) for p in paths]
    try:
        root = Path(os.path.commonpath([p.parent for p in absolute]))
        relative = [p.relative_to(root) for p in absolute]
    except ValueError:  # no common folder (two Windows drives): the whole path below its drive
        relative = [Path(*p.parts[1:]) for p in absolute]
    stems = Counter((p.parent, p.stem.lower()) for p in relative)
    return [
        (p.parent / ((p.stem if stems[(p.parent, p.stem.lower())] == 1 else p.name) + suffix)).as_posix()
        for p in relative
    ]


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
