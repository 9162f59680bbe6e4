"""The batch job: image files in, a CSV of verdicts and heatmap pictures out, streaming.

:func:`predict_files` runs a predictor (:mod:`padim.runtime`) over images decoded by the one
loading pipeline (:mod:`padim.loading`: threads, in order, a batch decoded ahead). The model runs
on one batch while a pool of threads finishes the images of the previous one: the predicted
region's bounding box and area in pixels of the original image (:func:`region_extent`, the rule
of :mod:`padim.regions`), and the overlay picture (:func:`padim.visualize.overlay_at_image_size`)
encoded (:func:`padim.visualize.picture_bytes`) and written under ``overlays/``, mirroring the
images' folders. Each image's row is appended to ``predictions.csv`` as soon as it and every
image before it are done (:class:`padim.files.LineAppender`: whole lines, one write each), so an
interrupted job keeps a row for every image it finished, in the input order. Memory is bounded
by the batch size: about two batches of pictures, each at most :data:`OVERLAY_MAX_SIDE` wide.
"""

from __future__ import annotations

import collections
import csv
import io
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim.datasets import Sample
from padim.errors import DataError, OptionError, OutputError
from padim.files import LineAppender, write_bytes
from padim.loading import default_workers, iter_batches
from padim.progress import progress
from padim.regions import Box, map_at_size, region_mask, union_box
from padim.visualize import PICTURE_FORMATS, heatmap_range, overlay_at_image_size, picture_bytes

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
#: Which images get an overlay picture: every one, the anomalous ones (and, for a model without
#: a threshold, every one), or none.
OVERLAY_CHOICES = ("all", "anomalous", "none")
#: Longest side of an overlay picture, in pixels.
OVERLAY_MAX_SIDE = 1024
#: Map pixels resized at once when finding the region of a large image (16 MB as float32).
STRIP_PIXELS = 4_000_000


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


@dataclass
class JobSummary:
    """What :func:`predict_files` did.

    Attributes:
        csv_path: ``predictions.csv``, or None when no output folder was given.
        n_images: rows written. n_anomalous: rows labelled anomalous. n_overlays: pictures written.
        errors: images whose score is not a finite number (label ``error``).
        skipped: unreadable files left out (``skip_bad``), path -> reason.
        left_out: images inside the output folder, not read (they are this job's own pictures).
    """

    csv_path: Path | None
    n_images: int = 0
    n_anomalous: int = 0
    n_overlays: int = 0
    errors: list[Path] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)
    left_out: int = 0


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


def region_extent(anomaly_map: Any, size: tuple[int, int], calibration: Any) -> Box | None:
    """The predicted region at the image's own size: the box around all of it and its area in pixels.

    Equals ``union_box(region_boxes(region_mask(map_at_size(anomaly_map, size), calibration)))``
    of :mod:`padim.regions`, without labelling each region (the job needs only their union),
    and for an image over :data:`STRIP_PIXELS` pixels in strips of rows, so that an 8000x8000
    image needs 16 MB, not 256 MB, of map.

    Args:
        anomaly_map: (H, W) map at the model's working size.
        size: the image's (width, height).
        calibration: :class:`padim.scoring.Calibration`, or None (no region).

    Returns:
        a :class:`padim.regions.Box` in pixels of the image (x1, y1 exclusive), or None.
    """
    if calibration is None:
        return None
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    # The pixel rule flags a value at or above a threshold (or NaN). Bilinear resizing only
    # averages neighbours with weights >= 0 that sum to 1: a map with no flagged pixel at the
    # working size has none at any size, and most images (the normal ones) stop here.
    if not region_mask(anomaly_map, calibration).any():
        return None
    width, height = size
    rows = max(1, STRIP_PIXELS // width)
    if rows >= height:
        return _mask_box(region_mask(map_at_size(anomaly_map, size), calibration))
    source, (map_height, map_width) = Image.fromarray(anomaly_map), anomaly_map.shape
    boxes = []
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        # The same sampling as one resize of the whole map: output row y reads the map at
        # (y + 0.5) * map_height / height - 0.5 whichever strip it is in.
        area = (0, top * map_height / height, map_width, bottom * map_height / height)
        strip = np.asarray(source.resize((width, bottom - top), Image.BILINEAR, box=area))
        box = _mask_box(region_mask(strip, calibration))
        if box is not None:
            boxes.append(replace(box, y0=box.y0 + top, y1=box.y1 + top))
    return union_box(boxes)


@dataclass(frozen=True)
class _Job:
    """What every image's finishing step needs."""

    calibration: Any
    output: Path | None
    overlays: str
    kind: str


def _finish(job: _Job, path: Path, size, anomaly_map, score, normalized, flagged, picture, name) -> Row:
    """One image after the model: its label, region, overlay picture (written) and row."""
    score = float(score)
    if not math.isfinite(score):
        label, normalized = "error", None  # never "normal": the verdict fails closed, and says why
    elif job.calibration is None:
        label, normalized = "", None
    else:
        label, normalized = ("anomalous" if flagged else "normal"), float(normalized)
    region = None if label == "error" else region_extent(anomaly_map, size, job.calibration)
    overlay = ""
    wanted = job.overlays == "all" or (job.overlays == "anomalous" and label in ("anomalous", ""))
    if picture is not None and wanted and label != "error":
        vmin, vmax = heatmap_range(job.calibration, anomaly_map)
        drawn = overlay_at_image_size(picture, anomaly_map, job.calibration, vmin, vmax, max_side=OVERLAY_MAX_SIDE)
        overlay = f"overlays/{name}"
        write_bytes(job.output / overlay, picture_bytes(drawn, job.kind))
    return Row(path, score, normalized, label, overlay, tuple(size), region)


class _InThisThread:
    """An executor that runs each task at once, in the calling thread (``workers`` 0 or 1)."""

    def submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as error:
            future.set_exception(error)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def predict_files(
    predictor: Any,
    samples: Sequence[Sample],
    output: str | os.PathLike | None,
    *,
    overlays: str = "anomalous",
    overlay_format: str = "jpeg",
    batch_size: int = 32,
    workers: int | None = None,
    skip_bad: bool = False,
    quiet: bool = True,
    on_row: Callable[[Row], None] | None = None,
) -> JobSummary:
    """Score image files; write ``predictions.csv`` and overlay pictures into ``output`` as each image finishes.

    Args:
        predictor: a :class:`padim.runtime.Predictor`.
        samples: the images (:func:`padim.datasets.image_samples`).
        output: the folder to write (created if missing); None writes nothing (``on_row`` gets the rows).
        overlays: which images get a picture (:data:`OVERLAY_CHOICES`).
        overlay_format: a key of :data:`padim.visualize.PICTURE_FORMATS`.
        batch_size, workers, skip_bad: as :func:`padim.loading.iter_batches`; ``workers`` threads
            also finish the images (0 or 1: in this thread).
        quiet: no progress display (it counts finished images, with images/s and the time left).
        on_row: called with each :class:`Row` once it is written, in the input order.

    Returns:
        a :class:`JobSummary`.

    Raises:
        ImageError: for an unreadable image (unless ``skip_bad``); the rows of the images
            finished before it are in the CSV, as after an interrupt.
        OptionError: for an unknown ``overlays`` or ``overlay_format``.
        OutputError: when the output folder cannot be written.
    """
    if overlays not in OVERLAY_CHOICES:
        raise OptionError(f"--overlays must be one of {', '.join(OVERLAY_CHOICES)}, got {overlays!r}")
    if overlay_format not in PICTURE_FORMATS:
        raise OptionError(f"--overlay-format must be one of {', '.join(PICTURE_FORMATS)}, got {overlay_format!r}")
    output = None if output is None else Path(output)
    summary = JobSummary(None if output is None else output / "predictions.csv")
    if output is not None:
        if output.exists() and not output.is_dir():
            raise OutputError(f"{output}: exists and is not a folder; expected an output folder (-o)")
        inside = Path(os.path.abspath(output))
        kept = [s for s in samples if inside not in Path(os.path.abspath(s.path)).parents]
        summary.left_out, samples = len(samples) - len(kept), kept
        if not samples:
            raise DataError(f"{output}: every image given is inside the output folder; write the results elsewhere")
    samples = list(samples)
    draw = output is not None and overlays != "none"
    names = overlay_names([s.path for s in samples], PICTURE_FORMATS[overlay_format][0]) if draw else None
    job = _Job(predictor.calibration, output, overlays, overlay_format)
    workers = default_workers() if workers is None else workers
    rows = None if output is None else LineAppender(summary.csv_path, ",".join(CSV_COLUMNS) + "\n")
    bar = progress(total=len(samples), desc="predict", quiet=quiet, unit="img")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="padim-finish") if workers > 1 else _InThisThread()
    pending: collections.deque[Future] = collections.deque()

    def write(row: Row) -> None:
        if rows is not None:
            rows.append(row.csv_line())
        summary.n_images += 1
        summary.n_anomalous += row.label == "anomalous"
        summary.n_overlays += bool(row.overlay)
        if row.label == "error":
            summary.errors.append(row.path)
        bar.update(1)
        if on_row is not None:
            on_row(row)

    counted = 0  # skipped files counted by the progress display

    def count_skipped() -> None:
        nonlocal counted
        bar.update(len(summary.skipped) - counted)
        counted = len(summary.skipped)

    try:
        for batch in iter_batches(
            samples,
            predictor.image_size,
            batch_size=batch_size,
            workers=workers,
            skip_bad=skip_bad,
            skipped=summary.skipped,
            keep_images=draw,
            max_side=OVERLAY_MAX_SIDE,
        ):
            count_skipped()
            prediction = predictor.predict_batch(batch.images)
            for j, index in enumerate(batch.indices):
                pending.append(
                    pool.submit(
                        _finish,
                        job,
                        samples[index].path,
                        batch.sizes[j],
                        prediction.anomaly_map[j],
                        prediction.score[j],
                        None if prediction.normalized_score is None else prediction.normalized_score[j],
                        None if prediction.label is None else bool(prediction.label[j]),
                        None if batch.originals is None else batch.originals[j],
                        None if names is None else names[index],
                    )
                )
            # Rows leave in the input order. The next batch is fetched (it is decoded already) when
            # only a few images are left to finish: the CPUs stay busy, and few pictures are held.
            while pending and (pending[0].done() or len(pending) > 2 * max(workers, 1)):
                write(pending.popleft().result())
        while pending:
            write(pending.popleft().result())
        count_skipped()
    except BaseException as error:
        # Ctrl-C: the images being finished finish, the queued ones are dropped. An error (an
        # unreadable image): every image the model has scored is finished first. Either way,
        # every finished image gets its row before the job stops.
        pool.shutdown(wait=True, cancel_futures=isinstance(error, KeyboardInterrupt))
        for future in pending:
            if future.done() and not future.cancelled() and future.exception() is None:
                try:
                    write(future.result())
                except OutputError:
                    break
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
        if rows is not None:
            rows.close()
    return summary
