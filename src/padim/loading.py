"""Images to pre-processed batches: one decoding pipeline for fitting, predicting and evaluating.

:func:`iter_batches` decodes :class:`padim.datasets.Sample` files in a pool of threads (Pillow
releases the GIL while it decodes and resizes), keeps their order, and yields
:class:`Batch` records pre-processed by :func:`padim.images.preprocess`. At most a few batches
of images are decoded ahead, so memory is bounded by the batch size, not by the number of
images. :func:`as_batches` is the one place where the input forms a user may pass (a path, a
folder, a list of paths, PIL images, arrays or tensors, an iterable of batches) become batches.
No torch here: the ONNX runtime path uses this module too.
"""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim.datasets import Sample, image_samples, train_samples
from padim.errors import DataError, ImageError, OptionError
from padim.images import as_size, load_image, load_mask, preprocess
from padim.progress import progress

#: Folder meanings of :func:`as_batches` (see :mod:`padim.datasets`).
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
        originals: N decoded RGB images at their own size, when asked for; else None.
    """

    images: np.ndarray
    indices: list[int]
    sizes: list[tuple[int, int]]
    masks: list[np.ndarray | None] | None = None
    originals: list[Image.Image] | None = None


def default_workers() -> int:
    """Decoding threads: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _decode(sample: Sample, image_size: tuple[int, int], masks: bool, keep: bool) -> tuple:
    image = load_image(sample.path)
    mask = None
    if masks and sample.mask_path is not None:
        mask, mask_size = load_mask(sample.mask_path, image_size)
        if mask_size != image.size:
            warnings.warn(
                f"{sample.mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image "
                f"{sample.path.name} is {image.size[0]}x{image.size[1]}; resizing the mask to match",
                stacklevel=2,
            )
    return preprocess(image, image_size)[0], image.size, mask, image if keep else None


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
) -> Iterator[Batch]:
    """Decode samples in order, in threads, into batches of readable images.

    Args:
        samples: the images (and masks) to read.
        image_size: int or (height, width) of the pre-processed images.
        batch_size: images per batch (the last may be smaller).
        workers: decoding threads (None: :func:`default_workers`; 0 or 1: in this thread).
        skip_bad: leave unreadable images out (recorded in ``skipped``) instead of raising.
        quiet: no progress bar (it is also off when stderr is not a terminal).
        desc: the progress bar's label; it counts images, with images/s and the time left.
        skipped: a dict the skipped files are added to, path -> reason, in order.
        masks: also read each sample's mask (:func:`padim.images.load_mask`).
        keep_images: also keep each decoded original (for pictures at the image's own size).

    Raises:
        ImageError: naming the file, for an unreadable image or mask when ``skip_bad`` is false.
        OptionError: for a batch size below 1 or a negative worker count.
    """
    size = as_size(image_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise OptionError(f"--workers must be an integer >= 0 (0: decode in this thread), got {workers!r}")
    return _batches(list(samples), size, batch_size, workers, skip_bad, quiet, desc, skipped, masks, keep_images)


def _batches(samples, size, batch_size, workers, skip_bad, quiet, desc, skipped, masks, keep) -> Iterator[Batch]:
    bar = progress(total=len(samples), desc=desc, quiet=quiet, unit="img")
    items: list[tuple[int, Any]] = []
    try:
        for item in _decoded(samples, size, workers, masks, keep, ahead=2 * batch_size):
            items.append(item)
            if len(items) == batch_size:
                yield from _emit(items, samples, skip_bad, skipped, masks, keep, bar)
        yield from _emit(items, samples, skip_bad, skipped, masks, keep, bar)
    finally:
        bar.close()


def _decoded(samples, size, workers: int, masks: bool, keep: bool, ahead: int) -> Iterator[tuple[int, Any]]:
    """(index, decoded tuple or ImageError) in the samples' order, at most ``ahead`` decoded early."""
    if workers <= 1:
        for index, sample in enumerate(samples):
            yield index, _try(sample, size, masks, keep)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="padim-decode") as pool:
        pending: collections.deque = collections.deque()
        try:
            for index, sample in enumerate(samples):
                pending.append((index, pool.submit(_try, sample, size, masks, keep)))
                if len(pending) >= ahead:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:  # an early stop: drop what is queued, wait for what is running
            for _, future in pending:
                future.cancel()


def _try(sample: Sample, size, masks: bool, keep: bool) -> tuple | ImageError:
    try:
        return _decode(sample, size, masks, keep)
    except ImageError as error:
        return error


def _emit(items: list, samples, skip_bad: bool, skipped: dict | None, masks: bool, keep: bool, bar) -> Iterator[Batch]:
    """Turn decoded items into one batch (and empty the list); raise or record the failures."""
    good = []
    for index, result in items:
        if not isinstance(result, ImageError):
            good.append((index, result))
        elif not skip_bad:
            raise result
        elif skipped is not None:
            skipped[samples[index].path] = str(result)
    bar.update(len(items))
    items.clear()
    if good:
        yield Batch(
            images=np.stack([r[0] for _, r in good]),
            indices=[i for i, _ in good],
            sizes=[r[1] for _, r in good],
            masks=[r[2] for _, r in good] if masks else None,
            originals=[r[3] for _, r in good] if keep else None,
        )


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
