"""Decoding one image for the loading pipeline, in bounded memory.

:func:`decode_sample` reads a :class:`padim.io.datasets.Sample`: the image at full size,
pre-processed by :func:`padim.io.images.preprocess` (the one definition: every command feeds the
model the same numbers), its mask if asked for, and a copy for drawing reduced to the size it
will be drawn at (:func:`reduced`), after which the full-size pixels are freed. A
:class:`PixelBudget` shared by the decoding threads keeps at most :data:`DECODE_BUDGET_PIXELS`
pixels being decoded at once, so a folder of 8000x8000 images decodes one at a time.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image

from padim.errors import ImageError
from padim.io.datasets import Sample
from padim.io.decoders import decode_rgb
from padim.io.images import fit_within, header_pixels, load_mask, max_pixels, preprocess

#: Pixels (width x height) decoded at once across the decoding threads: 64 megapixels are
#: 192 MB as RGB. A larger image is decoded alone.
DECODE_BUDGET_PIXELS = 64_000_000


class PixelBudget:
    """Lets decoding threads hold at most ``limit`` pixels at once (one image alone may exceed it)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self.changed:
            self.changed.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self.changed:
                self.used -= pixels
                self.changed.notify_all()


def reduced(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` with its longest side at most ``max_side`` (aspect ratio kept; bilinear).

    >>> reduced(Image.new("RGB", (4000, 3000)), 1024).size
    (1024, 768)
    """
    size = fit_within(image.size, max_side)
    if size == image.size:
        return image
    # reducing_gap: an integer box reduction first (8000 px -> 2667 px), then bilinear: faster and
    # 36 MB lighter than bilinear from the full size, and as good for a picture (Pillow's documentation).
    return image.resize(size, Image.BILINEAR, reducing_gap=2.0)


def decode_sample(
    sample: Sample, image_size: tuple[int, int], masks: bool, keep: bool, max_side: int | None, budget: PixelBudget
) -> tuple:
    """(pre-processed (3, H, W) float32, (width, height), mask (H, W) uint8 or None, picture or None).

    The picture is (H, W, 3) uint8 RGB: the decoded pixels themselves when they fit ``max_side``
    (no copy), else reduced to it.

    Raises:
        ImageError: naming the image or mask file that cannot be decoded.
    """
    with budget.hold(min(header_pixels(sample.path), max_pixels())):  # over the cap: decoding refuses it
        pixels = decode_rgb(sample.path)  # NumPy pixels from the fast decoders, else a PIL image
        image = Image.fromarray(pixels) if isinstance(pixels, np.ndarray) else pixels
        batch_image = preprocess(image, image_size)[0]
        fits = max_side is None or max(image.size) <= max_side
        picture = None if not keep else pixels if fits and isinstance(pixels, np.ndarray) else \
            np.asarray(image if fits else reduced(image, max_side))  # fmt: skip
        size = image.size
        del image, pixels  # the full-size pixels go here, before the next image is let in
    mask = None
    if masks and sample.mask_path is not None:
        mask, mask_size = load_mask(sample.mask_path, image_size)
        if mask_size != size:
            warnings.warn(
                f"{sample.mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image "
                f"{sample.path.name} is {size[0]}x{size[1]}; resizing the mask to match",
                stacklevel=2,
            )
    return batch_image, size, mask, picture


def try_decode(sample: Sample, decode: dict, budget: PixelBudget) -> tuple | ImageError:
    """:func:`decode_sample` with ``decode``'s options, its ImageError returned instead of raised."""
    try:
        return decode_sample(sample, budget=budget, **decode)
    except ImageError as error:
        return error
