"""The stages of ``padim predict --ray``: decoding tasks, scoring actors, and a ledger of what ran.

Decoding (:func:`decode_batch`) is a Ray Data stage of CPU tasks: each reads its files where they
are (a path every node sees, or a URL: :mod:`padim.jobs.storage`) and hands on the working-size
RGB pixels as uint8 (:func:`padim.io.images.resized_rgb`), a quarter of the normalised float32
image's bytes, with each image's own size. Scoring (:class:`Scorer`) is a pool of actors, each
holding the model once: it normalises (:func:`padim.io.images.normalize`, the local command's
numbers), runs :meth:`padim.runtime.predictor.Predictor.predict_batch` and finishes each image with
:func:`padim.jobs.predict.finish_image`; an image that gets an overlay is read again there (few
do: the anomalous ones by default) and its picture written straight to the output location.
Only the rows travel back to the driver. The :class:`Ledger`, an actor beside the driver, counts
each image's scoring attempts, so the driver can say what a lost actor or node made it redo.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from padim.errors import ImageError, OutputError
from padim.io.images import load_image, normalize, resized_rgb
from padim.jobs import storage
from padim.machine import ENV_THREADS

#: Files a decoding task fetches at once from object storage or a web server.
READ_AHEAD = 8
#: Finishing threads (region, overlay: read again, drawn, encoded, written) per CPU an actor holds.
DRAW_THREADS_PER_CPU = 2


def read_image(location: str | Path, data: bytes | None = None) -> Any:
    """Decode the image at ``location`` (or its bytes ``data``, read already) as RGB (:func:`padim.io.images.load_image`).

    Raises:
        ImageError: naming ``location``.
    """
    if data is None and not storage.is_url(location):
        return load_image(location)  # Pillow reads the file itself
    data = storage.read_bytes(location) if data is None else data
    try:
        return load_image(data)
    except ImageError as error:  # decoding bytes names an "uploaded image": name the URL instead
        raise type(error)(str(error).replace("uploaded image", str(location), 1)) from None


def _read_ahead(locations: list) -> Iterator[bytes | ImageError | None]:
    """Each URL's bytes (or why it could not be read), :data:`READ_AHEAD` fetched at once; None for a path."""
    with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="padim-read") as pool:
        window: collections.deque = collections.deque()
        for location in locations + [None] * READ_AHEAD:
            if location is not None:
                window.append(pool.submit(_fetch, location) if storage.is_url(location) else None)
            if len(window) > READ_AHEAD or (location is None and window):
                future = window.popleft()
                yield None if future is None else future.result()


def _fetch(location: str) -> bytes | ImageError:
    try:
        return storage.read_bytes(location)
    except ImageError as error:
        return error


def decode_batch(batch: dict, image_size: tuple[int, int], environment: dict) -> dict:
    """Ray Data task: each file read and decoded to working-size uint8 RGB (zeros and a reason if unreadable).

    Files on object storage or web servers are fetched :data:`READ_AHEAD` at a time (their latency
    overlaps); decoding holds one image at a time, on the one CPU the task holds.

    Returns:
        the batch's columns, plus ``pixels`` (N, H, W, 3) uint8, ``width``/``height`` (the images'
        own sizes), ``error`` ("" or why the file could not be read) and ``decode_s`` (seconds per image).
    """
    os.environ.update(environment)  # the driver's pixel cap (a worker's environment is its node's)
    locations = [_location(text) for text in batch["location"]]
    count = len(locations)
    pixels = np.zeros((count, *image_size, 3), np.uint8)
    sizes = np.zeros((count, 2), np.int64)
    errors = [""] * count
    seconds = np.zeros(count)
    start = time.perf_counter()
    for j, data in enumerate(_read_ahead(locations)):
        try:
            if isinstance(data, ImageError):
                raise data
            image = read_image(locations[j], data)
            pixels[j], sizes[j] = resized_rgb(image, image_size), image.size
        except ImageError as error:
            errors[j] = str(error)
        seconds[j], start = time.perf_counter() - start, time.perf_counter()
    return {**batch, "pixels": pixels, "width": sizes[:, 0], "height": sizes[:, 1],
            "error": np.array(errors, dtype=object), "decode_s": seconds}  # fmt: skip


def _location(text: str) -> str | Path:
    """A path as the local command names it (its CSV row prints ``Path``), a URL as given."""
    return text if storage.is_url(text) else Path(text)


class Scorer:
    """Ray Data actor: the model opened once; batches of decoded pixels scored and finished.

    Args:
        model: ``{file name: bytes}`` of the model file (and its ``.data`` beside it), or an object reference to it.
        device, backend, threshold: as ``padim predict``.
        threads: the CPUs this actor holds: the model's threads, and the threads that draw overlays.
        job: the job's settings (:func:`padim.jobs.predict.prepare_job`); its calibration comes from the model.
        environment: variables the driver sets for the workers (the pixel cap).
        ledger: the :class:`Ledger` actor, or None.
        marker: a file the driver wrote in the output location (checked: every node must see it), or None.
    """

    def __init__(self, model: Any, device: str, backend: str, executor: str, threshold: float | None, threads: int, job: Any,
                 environment: dict, ledger: Any, marker: str | None = None) -> None:  # fmt: skip
        import ray

        from padim.runtime.opening import open_model

        os.environ.update({**environment, ENV_THREADS: str(threads)})  # onnxruntime's (and torch's) threads
        files = model if isinstance(model, dict) else ray.get(model)
        with tempfile.TemporaryDirectory() as folder:  # the model, sent once to this actor
            for name, data in files.items():
                Path(folder, name).write_bytes(data)
            self.predictor = open_model(
                Path(folder, next(iter(files))), device=device, backend=backend, executor=executor
            )
        if marker is not None:
            check_visible(job.output, marker)
        if threshold is not None:
            self.predictor = self.predictor.with_threshold(threshold)
        self.job = dataclasses.replace(job, calibration=self.predictor.calibration)
        # Drawing reads the image again and encodes a picture, mostly outside the GIL: twice the CPUs in
        # threads keep this actor busy while a read waits, and use the CPUs decoding leaves idle.
        self.pool = ThreadPoolExecutor(DRAW_THREADS_PER_CPU * threads, thread_name_prefix="padim-finish")
        self.ledger = ledger
        context = ray.get_runtime_context()
        if ledger is not None:
            ledger.actor.remote(os.getpid(), context.get_node_id(), context.was_current_actor_reconstructed)

    def __call__(self, batch: dict) -> dict:
        if self.ledger is not None:
            self.ledger.started.remote(batch["index"].tolist())
        size = batch["pixels"].nbytes + sum(_column_bytes(batch[k]) for k in batch if k != "pixels")
        good = [j for j, error in enumerate(batch["error"]) if not error]
        start = time.perf_counter()
        prediction = self.predictor.predict_batch(normalize(batch["pixels"][good])) if good else None
        scored = time.perf_counter()
        rows = [b""] * len(batch["index"])
        for j, row in zip(good, self.pool.map(lambda k: self._finish(batch, good[k], prediction, k), range(len(good)))):
            rows[j] = row
        n, per = len(rows), 1 / max(len(rows), 1)
        return {
            "index": batch["index"],
            "row": np.array(rows, dtype=object),
            "error": batch["error"],
            "decode_s": batch["decode_s"],
            "score_s": np.full(n, (scored - start) * per),
            "finish_s": np.full(n, (time.perf_counter() - scored) * per),
            "in_bytes": np.full(n, size * per),
        }

    def _finish(self, batch: dict, j: int, prediction: Any, k: int) -> bytes:
        """Image ``j`` of the batch (``k`` of the scored ones) finished: its overlay written, its pickled row returned."""
        from padim.io.decoding import reduced
        from padim.jobs.predict import OVERLAY_MAX_SIDE, finish_image

        location, name = _location(batch["location"][j]), batch["name"][j] or None
        row, encoded = finish_image(
            self.job, location, (int(batch["width"][j]), int(batch["height"][j])), prediction, k,
            (lambda: reduced(read_image(location), OVERLAY_MAX_SIDE)) if name else None, name,
        )  # fmt: skip
        if encoded is not None:
            storage.write_bytes(self.job.output, row.overlay, encoded)
        return pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)


def _column_bytes(column: Any) -> int:
    """Bytes of a batch column as it crossed the object store (strings and bytes: their lengths)."""
    if isinstance(column, np.ndarray) and column.dtype != object:
        return column.nbytes
    return sum(len(item) if isinstance(item, (str, bytes)) else 8 for item in column)


def check_visible(output: str | os.PathLike, marker: str) -> None:
    """Raise unless the driver's marker file is seen at ``output`` (a folder every node shares, or a URL).

    Raises:
        OutputError: naming the folder, when this node does not see it (it is local to the driver's machine).
    """
    if not storage.exists(storage.join(output, marker)):
        raise OutputError(f"{output}: this node does not see the output folder; give -o a folder every node "
                          "shares, or object storage (s3://, gs://)")  # fmt: skip


class Ledger:
    """A Ray actor beside the driver: which images each scoring attempt started, and which actors started."""

    def __init__(self) -> None:
        self.starts: collections.Counter = collections.Counter()
        self.actors: list[tuple] = []

    def started(self, indices: list[int]) -> None:
        self.starts.update(indices)

    def actor(self, pid: int, node: str, restarted: bool) -> None:
        self.actors.append((pid, node, restarted))

    def report(self) -> tuple[dict, list]:
        return dict(self.starts), list(self.actors)
