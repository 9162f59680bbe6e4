"""One image's result as the jobs report it: the CSV row, the verdict line, the pictures' names.

:class:`Row` is a line of ``predictions.csv`` (:data:`CSV_COLUMNS`) and the one-line verdict
``padim predict`` prints for a single image; its region is the box around the predicted region
in pixels of the original image (:func:`padim.scoring.regions.region_extent`).
:func:`overlay_names` names the pictures so that they mirror the images' folders.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from padim.scoring.regions import Box

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
    "dx",
    "dy",
    "angle",
    "aligned",
)


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
        pose: how the part moved against the model's reference, (dx, dy) in pixels of the image and
            the angle in degrees (:mod:`padim.align`), or None for a model that does not align parts.
        aligned: whether that registration is trusted (False: the label is anomalous whatever the
            score: the part could not be checked where it was), or None without alignment.
    """

    path: Path
    score: float
    normalized_score: float | None
    label: str
    overlay: str
    size: tuple[int, int]
    region: Box | None
    pose: tuple[float, float, float] | None = None
    aligned: bool | None = None

    def csv_line(self) -> str:
        """The row as one CSV line (the order of :data:`CSV_COLUMNS`), newline included."""
        box = self.region
        regions = ["", "", "", "", ""] if box is None else [box.x0, box.y0, box.x1, box.y1, box.area]
        normalized = "" if self.normalized_score is None else f"{self.normalized_score:.6f}"
        moved = (
            ["", "", ""] if self.pose is None else [f"{self.pose[0]:.2f}", f"{self.pose[1]:.2f}", f"{self.pose[2]:.3f}"]
        )
        aligned = "" if self.aligned is None else str(self.aligned).lower()
        cells = [str(self.path), f"{self.score:.6f}", normalized, self.label, self.overlay, *self.size, *regions,
                 *moved, aligned]  # fmt: skip
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
        if self.aligned is False:
            line += "  (not aligned: the part does not match the reference well enough to be checked)"
        elif self.pose is not None and (max(abs(self.pose[0]), abs(self.pose[1])) >= 0.5 or abs(self.pose[2]) >= 0.1):
            line += f"  moved dx {self.pose[0]:.1f} dy {self.pose[1]:.1f} angle {self.pose[2]:.1f}"
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
