"""The batch job: image files in, a CSV of verdicts and heatmap pictures out, streaming.

:func:`predict_files` runs a predictor (:mod:`padim.runtime.predictor`) over images decoded by the one
loading pipeline (:mod:`padim.io.loading`: threads, in order, a batch decoded ahead). The model runs
on one batch while a pool of threads finishes the images of the previous one: the predicted
region's bounding box and area in pixels of the original image (:func:`padim.scoring.regions.region_extent`, the rule
of :mod:`padim.scoring.regions`), and the overlay picture (:func:`padim.report.heatmap.overlay_at_image_size`)
encoded (:func:`padim.io.pictures.picture_bytes`) and written under ``overlays/``, mirroring the
images' folders. Each image's row is appended to ``predictions.csv`` as soon as it and every
image before it are done (:class:`padim.io.files.LineAppender`: whole lines, one write each), so an
interrupted job keeps a row for every image it finished, in the input order. Memory is bounded
by the batch size: about two batches of pictures, each at most :data:`OVERLAY_MAX_SIDE` wide.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padim.errors import DataError, OptionError, OutputError
from padim.io.datasets import Sample
from padim.io.files import LineAppender, write_bytes
from padim.io.loading import iter_batches
from padim.io.pictures import PICTURE_FORMATS, picture_bytes
from padim.machine import default_workers
from padim.outputs.rows import CSV_COLUMNS, Row, overlay_names
from padim.progress import progress
from padim.report.heatmap import overlay_at_image_size
from padim.report.overlays import heatmap_range
from padim.scoring.regions import region_extent

#: Which images get an overlay picture: every one, the anomalous ones (and, for a model without
#: a threshold, every one), or none.
OVERLAY_CHOICES = ("all", "anomalous", "none")
#: Longest side of an overlay picture, in pixels.
OVERLAY_MAX_SIDE = 1024


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


@dataclass(frozen=True)
class _Job:
    """What every image's finishing step needs."""

    calibration: Any
    output: Path | None
    overlays: str
    kind: str


def finish_image(job: _Job, path: Path, size: tuple[int, int], prediction: Any, j: int, picture: Any,
                 name: str | None) -> tuple[Row, bytes | None]:  # fmt: skip
    """The ``j``-th image of a :class:`padim.runtime.predictor.Prediction`: its row (label, region, pose) and overlay.

    ``picture``: the decoded image to draw on, a function that reads it (called only when it is drawn), or None.
    """
    anomaly_map, score = prediction.anomaly_map[j], float(prediction.score[j])
    normalized = None if prediction.normalized_score is None else prediction.normalized_score[j]
    flagged = None if prediction.label is None else bool(prediction.label[j])
    if not math.isfinite(score):
        label, normalized = "error", None  # never "normal": the verdict fails closed, and says why
    elif job.calibration is None:
        label, normalized = "", None
    else:
        label, normalized = ("anomalous" if flagged else "normal"), float(normalized)
    region = None if label == "error" else region_extent(anomaly_map, size, job.calibration, score)
    overlay, encoded = "", None
    wanted = job.overlays == "all" or (job.overlays == "anomalous" and label in ("anomalous", ""))
    if picture is not None and wanted and label != "error":
        picture = picture() if callable(picture) else picture  # a Ray actor reads it again only when drawn
        vmin, vmax = heatmap_range(job.calibration, anomaly_map)
        drawn = overlay_at_image_size(
            picture, anomaly_map, job.calibration, vmin, vmax, max_side=OVERLAY_MAX_SIDE, score=score
        )
        overlay, encoded = f"overlays/{name}", picture_bytes(drawn, job.kind)
    return Row(path, score, normalized, label, overlay, tuple(size), region, *_moved(prediction, j, size)), encoded


def _moved(prediction: Any, j: int, size: tuple[int, int]) -> tuple:
    """(pose in the image's pixels, trusted) of image ``j``, or (None, None) for a model that does not align parts."""
    found = prediction.registration
    if found is None:
        return None, None
    dx, dy, angle = (float(v) for v in found.poses[j])
    height, width = prediction.anomaly_map.shape[1:]  # the working size the pose is measured at
    return (dx * size[0] / width, dy * size[1] / height, angle), bool(found.trusted[j])


def _finish(job: _Job, *args: Any) -> Row:
    """:func:`finish_image`, its picture written under the output folder."""
    row, encoded = finish_image(job, *args)
    if encoded is not None:
        write_bytes(job.output / row.overlay, encoded)
    return row


class RowWriter:
    """Appends rows to ``predictions.csv`` (when there is an output folder) and counts them in a :class:`JobSummary`."""

    def __init__(self, summary: JobSummary, bar: Any, on_row: Callable[[Row], None] | None) -> None:
        self.summary, self.bar, self.on_row = summary, bar, on_row
        path = summary.csv_path
        self.lines = None if path is None else LineAppender(path, ",".join(CSV_COLUMNS) + "\n")

    def __call__(self, row: Row) -> None:
        if self.lines is not None:
            self.lines.append(row.csv_line())
        self.summary.n_images += 1
        self.summary.n_anomalous += row.label == "anomalous"
        self.summary.n_overlays += bool(row.overlay)
        if row.label == "error":
            self.summary.errors.append(row.path)
        self.bar.update(1)
        if self.on_row is not None:
            self.on_row(row)

    def close(self) -> None:
        if self.lines is not None:
            self.lines.close()


def prepare_job(calibration: Any, samples: Sequence[Sample], output: str | os.PathLike | None, overlays: str,
                overlay_format: str) -> tuple[_Job, list[Sample], list[str] | None, JobSummary]:  # fmt: skip
    """Check a job's options and output folder; (job, samples to read, overlay names or None, summary).

    Raises:
        OptionError, OutputError, DataError: as :func:`predict_files`.
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
    return _Job(calibration, output, overlays, overlay_format), samples, names, summary


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
    batch_size: int = 16,
    workers: int | None = None,
    skip_bad: bool = False,
    quiet: bool = True,
    on_row: Callable[[Row], None] | None = None,
) -> JobSummary:
    """Score image files; write ``predictions.csv`` and overlay pictures into ``output`` as each image finishes.

    Args:
        predictor: a :class:`padim.runtime.predictor.Predictor`.
        samples: the images (:func:`padim.io.inputs.image_samples`).
        output: the folder to write (created if missing); None writes nothing (``on_row`` gets the rows).
        overlays: which images get a picture (:data:`OVERLAY_CHOICES`).
        overlay_format: a key of :data:`padim.io.pictures.PICTURE_FORMATS`.
        batch_size, workers, skip_bad: as :func:`padim.io.loading.iter_batches`; ``workers`` threads
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
    job, samples, names, summary = prepare_job(predictor.calibration, samples, output, overlays, overlay_format)
    draw = names is not None
    workers = default_workers() if workers is None else workers
    # The first rows come after a batch is decoded and the model's first run (slower): say so.
    bar = progress(total=len(samples), desc="predict (decoding the first batch)", quiet=quiet, unit="img")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="padim-finish") if workers > 1 else _InThisThread()
    pending: collections.deque[Future] = collections.deque()
    write = RowWriter(summary, bar, on_row)

    counted, first = 0, True  # skipped files counted by the progress display; before the first batch

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
            if first:
                bar.set_description("predict (the model's first batch)")
            prediction = predictor.predict_batch(batch.images)
            if first:
                bar.set_description("predict")
                first = False
            for j, index in enumerate(batch.indices):
                pending.append(
                    pool.submit(
                        _finish,
                        job,
                        samples[index].path,
                        batch.sizes[j],
                        prediction,
                        j,
                        None if batch.originals is None else batch.originals[j],
                        None if names is None else names[index],
                    )
                )
            batch.originals = None  # each picture is now held by its task only, freed when it is done
            # Rows leave in the input order. The next batch is fetched (it is decoded already) when
            # only a few images are left to finish: the CPUs stay busy, and few pictures are held.
            while pending and (pending[0].done() or len(pending) > 2 * max(workers, 1)):
                write(pending.popleft().result())
        while pending:
            write(pending.popleft().result())
        count_skipped()
    except BaseException:
        # Ctrl-C or an error (an unreadable image): every image the model has scored (at most
        # 2 x workers, a fraction of a second) is finished and gets its row, in order, before
        # the job stops; the row of an image whose finishing failed ends the file there.
        pool.shutdown(wait=True)
        for future in pending:
            if future.exception() is not None:
                break
            try:
                write(future.result())
            except OutputError:
                break
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
        write.close()
    return summary
