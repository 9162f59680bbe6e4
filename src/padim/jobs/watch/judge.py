"""The watcher's loop: arrivals decoded in threads, judged in batches, finished and written in order.

The same pipeline as ``padim predict`` (:mod:`padim.jobs.predict`), fed by a queue instead of a
list: each arrival is decoded and pre-processed by :func:`padim.io.decoding.decode_sample` (a frame
by :func:`padim.io.images.preprocess`, the one definition) in a pool of threads, the model runs on
whatever is decoded (one image when they come one by one, for the latency; a full batch when they
wait, for the throughput), and a second pool finishes each image (:func:`padim.jobs.predict.finish_image`:
the label, the region, the overlay picture). One writer thread then records each verdict in arrival
order: the message in the spool, the row in ``predictions.csv`` (:class:`padim.jobs.watch.journal.Journal`),
then the source's bookkeeping (``--move-to``). A file that does not decode is handed back to its
source (still being written) or gets an error row (label ``error``: never ``normal``).
"""

from __future__ import annotations

import collections
import math
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim.errors import ImageError
from padim.io.datasets import Sample
from padim.io.decoding import DECODE_BUDGET_PIXELS, PixelBudget, decode_sample, reduced
from padim.io.files import write_bytes
from padim.io.images import check_pixels, preprocess
from padim.io.pictures import PICTURE_FORMATS
from padim.jobs.predict import OVERLAY_MAX_SIDE, finish_image, prepare_job
from padim.jobs.watch.arrivals import Arrival, ArrivalQueue, file_signature
from padim.jobs.watch.journal import Journal
from padim.jobs.watch.sources import Source
from padim.jobs.watch.status import Status
from padim.outputs.message import verdict_message
from padim.outputs.rows import Row
from padim.outputs.verdict_log import utc_now


def error_row(name: str) -> Row:
    """The row of an image that could not be judged: label ``error``, no score, no size."""
    return Row(name, math.nan, None, "error", "", ("", ""), None)  # type: ignore[arg-type]


class OverlayNames:
    """Overlay names below ``overlays/``, each given to one image only (rows of earlier runs included)."""

    def __init__(self, used: set[str], suffix: str) -> None:
        self.used, self.suffix = used, suffix
        self.claimed: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, base: str, own: str) -> str:
        """``base.jpg``; if taken, ``base.png.jpg`` (``own`` is the image's suffix), then ``base.png-2.jpg`` ..."""
        names = [f"{base}{self.suffix}"] + ([f"{base}{own}{self.suffix}"] if own else [])
        with self._lock:
            for k in range(2, 1_000_000):
                name = names.pop(0) if names else f"{base}{own}-{k}{self.suffix}"
                if f"overlays/{name}" not in self.used and name not in self.claimed:
                    self.claimed.add(name)
                    return name
        raise RuntimeError(f"no free overlay name for {base}")

    def release(self, name: str) -> None:
        with self._lock:
            self.claimed.discard(name)


class Judge:
    """Judges what ``queue`` brings until ``stop`` is set (or a finite source is done), one row per image.

    Args:
        predictor: a :class:`padim.runtime.predictor.Predictor`.
        output: the output folder; journal: its ``predictions.csv``; source: what fills ``queue``.
        status: counts and prints.
        overlays, overlay_format: as ``padim predict``.
        batch_size: most images per model run; workers: decoding and finishing threads (each pool).
        model, model_sha256: for the messages; messages: whether to build them (a destination exists).
    """

    def __init__(self, predictor: Any, output: Path, journal: Journal, source: Source, queue: ArrivalQueue,
                 status: Status, *, overlays: str = "anomalous", overlay_format: str = "jpeg", batch_size: int = 16,
                 workers: int = 2, model: str = "", model_sha256: str | None = None,
                 messages: bool = False) -> None:  # fmt: skip
        self.job, *_ = prepare_job(predictor.calibration, [], None, overlays, overlay_format)
        self.predictor, self.output, self.journal, self.source, self.queue = predictor, output, journal, source, queue
        self.status, self.batch_size, self.workers = status, batch_size, max(1, workers)
        self.draw = overlays != "none"
        self.names = OverlayNames(journal.overlays, PICTURE_FORMATS[overlay_format][0])
        self.budget = PixelBudget(DECODE_BUDGET_PIXELS)
        calibration = predictor.calibration
        self.describe = dict(threshold=None if calibration is None else calibration.threshold, model=model,
                             model_sha256=model_sha256)  # fmt: skip
        self.messages = messages
        self.ahead = batch_size + 2 * self.workers
        self.stop = threading.Event()

    # ------------------------------------------------------------------ the loop

    def warm_up(self) -> None:
        """Run the model once on a full batch of blank images, before the first part arrives.

        onnxruntime keeps the memory of the largest batch it has run: taken at start, resident
        memory then stays flat while the line runs (a burst of parts would otherwise grow it in
        steps), and the first part is not slowed by the model's first run.
        """
        self.predictor.predict_batch(np.zeros((self.batch_size, 3, *self.predictor.image_size), np.float32))

    def run(self, stop: threading.Event) -> None:
        """Judge until ``stop`` (then finish the images in hand) or the end of a finite source.

        Raises:
            OutputError: when a row or a picture cannot be written (a full disk): the watcher stops.
        """
        self.stop = stop
        decoding = ThreadPoolExecutor(self.workers, thread_name_prefix="padim-decode")
        finishing = ThreadPoolExecutor(self.workers, thread_name_prefix="padim-finish")
        writer = _Writer(self, maxsize=2 * self.ahead)
        pipeline: collections.deque[tuple[Arrival, Future]] = collections.deque()
        try:
            while writer.error is None:
                self.status.tick()
                if not stop.is_set():
                    self._take(pipeline, decoding, wait=True)
                if pipeline:
                    batch = self._batch(pipeline)
                    if not stop.is_set():  # the next images decode while the model runs on these
                        self._take(pipeline, decoding, wait=False)
                    self._judge(batch, finishing, writer)
                elif stop.is_set() or self._source_done():
                    break
        finally:
            writer.close()
            decoding.shutdown(wait=True, cancel_futures=True)
            finishing.shutdown(wait=True)
        if writer.error is not None:
            raise writer.error

    def _source_done(self) -> bool:
        return self.source.finished.is_set() and self.queue.qsize() == 0 and self.source.backlog()[0] == 0

    def _take(self, pipeline: collections.deque, decoding: ThreadPoolExecutor, wait: bool) -> None:
        """Start decoding what has arrived, up to ``ahead`` images; with ``wait``, wait a little for one if none."""
        while len(pipeline) < self.ahead:
            try:
                arrival = self.queue.get(timeout=0.1 if wait and not pipeline else 0)
            except queue.Empty:
                return
            pipeline.append((arrival, decoding.submit(self._decode, arrival)))

    def _batch(self, pipeline: collections.deque) -> list[tuple[Arrival, Future]]:
        """The next images for one model run: the oldest, and those after it that are decoded (or, when
        enough are waiting to fill a batch, those too: a backlog runs in full batches)."""
        batch = [pipeline.popleft()]
        while pipeline and len(batch) < self.batch_size:
            enough = len(pipeline) + self.queue.qsize() >= self.batch_size - len(batch)
            if not (pipeline[0][1].done() or enough):
                break
            batch.append(pipeline.popleft())
        return batch

    def _judge(self, batch: list[tuple[Arrival, Future]], finishing: ThreadPoolExecutor, writer: _Writer) -> None:
        decoded = [(arrival, future.result()) for arrival, future in batch]
        good = [result for _, result in decoded if not isinstance(result, ImageError)]
        prediction = self.predictor.predict_batch(np.stack([r[0] for r in good])) if good else None
        j = 0
        for arrival, result in decoded:
            if isinstance(result, ImageError):
                if self.source.handed_back(arrival, result):
                    self.queue.done(arrival)
                else:
                    done: Future = Future()
                    done.set_result((error_row(arrival.name), str(result)))
                    writer.put(arrival, done, None)
                continue
            name = self.names.claim(arrival.overlay, arrival.suffix) if self.draw else None
            task = finishing.submit(self._finish, arrival, name, result[1], prediction, j, result[3])
            writer.put(arrival, task, name)
            j += 1

    # ------------------------------------------------------------------ one image

    def _decode(self, arrival: Arrival) -> tuple | ImageError:
        """(pre-processed image, (width, height), None, picture or None), or the ImageError naming the file."""
        try:
            if arrival.path is None:
                frame, arrival.frame = arrival.frame, None
                image = Image.fromarray(np.ascontiguousarray(frame[..., ::-1]) if frame.ndim == 3 else frame)
                image = image.convert("RGB")
                check_pixels(image.size, arrival.name, "frame")
                picture = reduced(image, OVERLAY_MAX_SIDE) if self.draw else None
                return preprocess(image, self.predictor.image_size)[0], image.size, None, picture
            sample = Sample(arrival.path, 0, "unknown")
            decoded = decode_sample(sample, self.predictor.image_size, False, self.draw, OVERLAY_MAX_SIDE, self.budget)
            arrival.signature = file_signature(arrival.path)
            return decoded
        except ImageError as error:
            return error

    def _finish(self, arrival: Arrival, name: str | None, *args: Any) -> tuple[Row, None]:
        row, encoded = finish_image(self.job, arrival.name, *args, name)
        if encoded is not None:
            write_bytes(self.output / row.overlay, encoded)
        return row, None

    def commit(self, arrival: Arrival, row: Row, reason: str | None, name: str | None) -> None:
        """Record one verdict, in arrival order (the writer thread): spool, row, then the source's bookkeeping."""
        message = None
        if self.messages:
            message = verdict_message(row, time=utc_now(), arrived=arrival.arrived_utc, error=reason, **self.describe)
        self.journal.commit(row, message, arrival.signature)
        if name is not None:
            self.names.release(name)  # the row holds it now, or it was not drawn
        self.queue.done(arrival)
        self.status.counted(row)
        if reason is not None:
            self.status.say(f"{reason}; labelled error")
        self.source.judged(arrival, row)


class _Writer:
    """The thread that commits finished images in the order they arrived; the first failure stops the watcher."""

    def __init__(self, judge: Judge, maxsize: int) -> None:
        self.judge, self.error = judge, None
        self.items: queue.Queue = queue.Queue(maxsize)
        self.thread = threading.Thread(target=self._run, name="padim-rows", daemon=True)
        self.thread.start()

    def put(self, arrival: Arrival, future: Future, name: str | None) -> None:
        self.items.put((arrival, future, name))

    def _run(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is not None:
                continue
            arrival, future, name = item
            try:
                row, reason = future.result()
                self.judge.commit(arrival, row, reason, name)
            except BaseException as error:  # a full disk, a bug: stop taking images, say why
                self.error = error
                self.judge.stop.set()

    def close(self) -> None:
        self.items.put(None)
        self.thread.join()
