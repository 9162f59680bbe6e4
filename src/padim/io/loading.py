"""Images to pre-processed batches: one decoding pipeline for fitting, predicting and evaluating.

:func:`iter_batches` decodes :class:`padim.io.datasets.Sample` files in a pool of threads (Pillow
and NumPy release the GIL while they decode, resize and normalise), keeps their order, and yields
:class:`Batch` records pre-processed by :func:`padim.io.images.preprocess` from the full-size image,
so every command feeds the model exactly the same numbers. Memory is bounded by the batch size,
not by the number or the size of the images: a batch and the next one are decoded ahead, and
each image is decoded under a shared pixel budget (:mod:`padim.io.decoding`). :func:`as_batches` is the one place where the input forms a user may pass (a path, a folder,
a list of paths, PIL images, arrays or tensors, an iterable of batches) become batches. No torch
here: the ONNX runtime path uses this module too.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim.errors import DataError, ImageError, OptionError
from padim.io.datasets import Sample, train_samples
from padim.io.decoding import DECODE_BUDGET_PIXELS, PixelBudget, try_decode
from padim.io.images import as_size, preprocess
from padim.io.inputs import image_samples
from padim.machine import default_workers, return_large_blocks
from padim.options import check
from padim.progress import progress

#: Folder meanings of :func:`as_batches` (see :mod:`padim.io.datasets`).
FOLDER_MEANINGS = ("good", "images")


@dataclass
class Batch:
    """Decoded, pre-processed images of consecutive samples.

    Attributes:
        images: (N, 3, H, W) float32, normalised.
        indices: N indices into the samples given to :func:`iter_batches`.
        sizes: N original (width, height) in pixels.
        masks: N (H, W) uint8 0/1 masks at the working size, None for a sample without one;
            None when masks were not asked for.
        originals: N decoded (H, W, 3) uint8 RGB pictures, when asked for (at their own size, or reduced to
            ``max_side``: see :func:`iter_batches`); else None.
    """

    images: np.ndarray
    indices: list[int]
    sizes: list[tuple[int, int]]
    masks: list[np.ndarray | None] | None = None
    originals: list[np.ndarray] | None = None


#: Pixels the graph runs at once while predicting (32 images at 256 x 256): activations stay
#: bounded whatever the batch size.
RUN_PIXELS = 32 * 256 * 256
#: Pixels the backbone runs at once while fitting (8 images at 256 x 256).
FIT_PIXELS = 8 * 256 * 256


def images_per_run(image_size: Sequence[int], pixels: int = RUN_PIXELS) -> int:
    """How many images of ``image_size`` go through the graph at once: ``pixels`` of them, at least one.

    >>> images_per_run((256, 256)), images_per_run((512, 512)), images_per_run((3000, 4000))
    (32, 8, 1)
    """
    return max(1, pixels // (int(image_size[0]) * int(image_size[1])))


def default_batch_size(image_size: Sequence[int]) -> int:
    """Images decoded per batch when none is given: one run's worth (:func:`images_per_run`), at most 32."""
    return min(32, images_per_run(image_size))


def iter_batches(
    samples: Sequence[Sample],
    image_size: int | Sequence[int],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    skip_bad: bool = False,
    quiet: bool = True,
    desc: str = "",
    skipped: dict[Path, str] | None = None,
    masks: bool = False,
    keep_images: bool = False,
    max_side: int | None = None,
) -> Iterator[Batch]:
    """Decode samples in order, in threads, into batches of readable images.

    Args:
        samples: the images (and masks) to read.
        image_size: int or (height, width) of the pre-processed images.
        batch_size: images per batch (the last may be smaller).
        workers: decoding threads (None: :func:`default_workers`; 0 or 1: in this thread).
        skip_bad: leave unreadable images out (recorded in ``skipped``) instead of raising.
        quiet: no progress display (see :func:`padim.progress.progress`).
        desc: the progress label; it counts the images of the batches the caller has finished
            with (a batch counts when the next one is asked for), with images/s and the time left.
        skipped: a dict the skipped files are added to, path -> reason, in order.
        masks: also read each sample's mask (:func:`padim.io.images.load_mask`).
        keep_images: also keep each decoded original (for pictures at the image's own size).
        max_side: with ``keep_images``, keep each original reduced to this longest side (the
            full-size pixels are released as soon as the image is pre-processed).

    Raises:
        ImageError: naming the file, for an unreadable image or mask when ``skip_bad`` is false.
        OptionError: for a batch size below 1 or a negative worker count.
    """
    size = as_size(image_size)
    batch_size = check("batch_size", batch_size) or 32
    workers = default_workers() if check("workers", workers) is None else workers
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise OptionError(f"max_side must be an integer >= 1, got {max_side!r}")
    decode = dict(image_size=size, masks=masks, keep=keep_images, max_side=max_side)
    return_large_blocks()
    return _batches(list(samples), decode, batch_size, workers, skip_bad, quiet, desc, skipped)


def _batches(samples, decode: dict, batch_size, workers, skip_bad, quiet, desc, skipped) -> Iterator[Batch]:
    bar = progress(total=len(samples), desc=desc, quiet=quiet, unit="img")
    items: list[tuple[int, Any]] = []
    # The next batch decodes while the caller works on this one; a little more keeps every thread busy.
    ahead = batch_size + 2 * max(workers, 1)
    try:
        for item in _decoded(samples, decode, workers, ahead):
            items.append(item)
            if len(items) == batch_size:
                count = len(items)
                yield from _emit(items, samples, skip_bad, skipped, decode)
                bar.update(count)
        count = len(items)
        yield from _emit(items, samples, skip_bad, skipped, decode)
        bar.update(count)
    finally:
        bar.close()


def _decoded(samples, decode: dict, workers: int, ahead: int) -> Iterator[tuple[int, Any]]:
    """(index, decoded tuple or ImageError) in the samples' order, at most ``ahead`` decoded early."""
    budget = PixelBudget(DECODE_BUDGET_PIXELS)
    if workers <= 1:
        for index, sample in enumerate(samples):
            yield index, try_decode(sample, decode, budget)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="padim-decode") as pool:
        pending: collections.deque = collections.deque()
        try:
            for index, sample in enumerate(samples):
                pending.append((index, pool.submit(try_decode, sample, decode, budget)))
                if len(pending) >= ahead:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:  # an early stop: drop what is queued, wait for what is running
            for _, future in pending:
                future.cancel()


def _emit(items: list, samples, skip_bad: bool, skipped: dict | None, decode: dict) -> Iterator[Batch]:
    """Turn decoded items into one batch (and empty the list); record the failures, or raise the first.

    Without ``skip_bad``, the images before an unreadable one are still yielded (a shorter
    batch), so that a job keeps the results of every image before the bad one.
    """
    good, error = [], None
    for index, result in items:
        if not isinstance(result, ImageError):
            good.append((index, result))
        elif not skip_bad:
            error = result
            break
        elif skipped is not None:
            skipped[samples[index].path] = str(result)
    items.clear()
    if good:
        yield Batch(
            images=np.stack([r[0] for _, r in good]),
            indices=[i for i, _ in good],
            sizes=[r[1] for _, r in good],
            masks=[r[2] for _, r in good] if decode["masks"] else None,
            originals=[r[3] for _, r in good] if decode["keep"] else None,
        )
    if error is not None:
        raise error


def as_batches(
    data: Any,
    image_size: int | Sequence[int],
    *,
    folder: str = "images",
    batch_size: int = 32,
    workers: int | None = None,
    skip_bad: bool = False,
    quiet: bool = True,
    desc: str = "",
    skipped: dict[Path, str] | None = None,
) -> Iterator[Any]:
    """Pre-processed batches (N, 3, H, W) from any input form a user may pass.

    Args:
        data: an image path, a folder, a list of paths, a PIL image or a list of them, a
            pre-processed batch (N, 3, H, W) or (3, H, W) as an array or tensor, or an iterable
            of such batches (a DataLoader; items may be dicts with ``"image"`` or tuples whose
            first element is the batch).
        image_size: (height, width) images are resized to.
        folder: what a folder means: ``"good"`` (an MVTec category's ``train/good``, else its
            images) or ``"images"`` (the images directly inside it).
        batch_size, workers, skip_bad, quiet, desc, skipped: as for :func:`iter_batches`.

    Returns:
        An iterator of float32 arrays for files and PIL images; arrays and tensors as given.

    Raises:
        DataError: for a missing path, an empty folder or list.
        OptionError: for an unknown ``folder`` meaning or a batch of the wrong shape.
    """
    if folder not in FOLDER_MEANINGS:
        raise OptionError(f"folder must be one of {FOLDER_MEANINGS}, got {folder!r}")
    if isinstance(data, Image.Image) or (
        isinstance(data, (list, tuple)) and data and all(isinstance(x, Image.Image) for x in data)
    ):
        images = [data] if isinstance(data, Image.Image) else list(data)
        return (preprocess(images[i : i + batch_size], image_size) for i in range(0, len(images), batch_size))
    samples = to_samples(data, folder)
    if samples is not None:
        options = dict(batch_size=batch_size, workers=workers, skip_bad=skip_bad, quiet=quiet, desc=desc)
        return (batch.images for batch in iter_batches(samples, image_size, skipped=skipped, **options))
    if hasattr(data, "shape"):
        return iter([_checked_batch(data)])
    if not hasattr(data, "__iter__"):
        raise OptionError(
            f"expected images (a path, a folder, paths, PIL images or (N, 3, H, W) batches), got {type(data).__name__}"
        )
    return (_checked_batch(_unwrap(item)) for item in data)


def to_samples(data: Any, folder: str = "images") -> list[Sample] | None:
    """Samples if ``data`` names files or folders (see :func:`as_batches`); None for other forms."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if folder == "good" and path.is_dir():
            return train_samples(path)
        return image_samples(path)
    if isinstance(data, (list, tuple)) and not data:
        raise DataError("expected images, got an empty list")
    if isinstance(data, (list, tuple)) and all(isinstance(x, (str, os.PathLike, Sample)) for x in data):
        return [x if isinstance(x, Sample) else Sample(Path(x), 0, "unknown") for x in data]
    return None


def _unwrap(item: Any) -> Any:
    if isinstance(item, dict):
        return item["image"]
    if isinstance(item, (list, tuple)):
        return item[0]
    return item


def _checked_batch(batch: Any) -> Any:
    if not hasattr(batch, "shape"):
        raise OptionError(f"expected a pre-processed batch (N, 3, H, W), got {type(batch).__name__}")
    if len(batch.shape) == 3:
        batch = batch[None]
    kind = getattr(batch, "dtype", None)
    floating = getattr(batch, "is_floating_point", lambda: np.issubdtype(kind, np.floating))()
    if len(batch.shape) != 4 or batch.shape[1] != 3 or not floating:
        raise OptionError(
            f"expected a pre-processed float batch of shape (N, 3, H, W), got {tuple(batch.shape)} {kind}"
        )
    return batch
