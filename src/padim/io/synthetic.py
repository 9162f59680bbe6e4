"""A small generated data set in MVTec AD layout, for the demo and for tests.

Nothing is downloaded: every image is drawn from a seed with NumPy. Good images are a woven
fabric whose threads vary a little from image to image (position, brightness, per-thread
shade and sensor noise), so that the model sees normal variation, as in MVTec AD
(Bergmann et al., CVPR 2019). Defective images add one of two defects, each written with
its ground-truth mask: a *scratch* (a thin straight line, much brighter or darker than the
cloth) or a *spot* (an irregular dark stain, 5-10 % of the image width in radius). Both are
large enough for PaDiM on CNN features at 128 px to find.

Image ``i`` of each folder depends only on ``seed``, its folder and ``i``, not on how many
images the other folders hold.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .files import write_bytes
from .images import as_size

DEFECT_TYPES = ("scratch", "spot")

# Second element of each image's seed, so that folders draw independent streams.
#: The file :func:`make_demo_dataset` leaves in a category it wrote (``overwrite`` replaces only those).
MARKER = ".padim-demo"
_STREAM = {"train": 0, "test_good": 1, "scratch": 2, "spot": 3}

_CLOTH_RGB = np.array([0.62, 0.52, 0.40])  # burlap
_STAIN_RGB = np.array([0.22, 0.13, 0.07])  # dark brown, far below any cloth shade


def weave_texture(rng: np.random.Generator, image_size: int | Sequence[int]) -> np.ndarray:
    """Draw one good image: a plain-weave cloth with small random variations.

    Args:
        rng: the random generator to draw the variations from.
        image_size: int or (height, width).

    Returns:
        float64 array (H, W, 3) with values in [0, 1].

    >>> image = weave_texture(np.random.default_rng(0), (32, 48))
    >>> image.shape, bool(image.min() >= 0 and image.max() <= 1)
    ((32, 48, 3), True)
    """
    height, width = as_size(image_size)
    period = max(4.0, min(height, width) / 10.0)  # ten thread crossings across the image
    shift_y, shift_x = rng.uniform(0, period, size=2)  # where the first crossing falls
    y = np.arange(height, dtype=np.float64)[:, None] + shift_y
    x = np.arange(width, dtype=np.float64)[None, :] + shift_x
    row, col = np.floor(y / period).astype(int), np.floor(x / period).astype(int)
    # A thread is brightest on its centre line and falls off towards its edges.
    across_row = np.cos(np.pi * ((y / period) % 1.0 - 0.5))
    across_col = np.cos(np.pi * ((x / period) % 1.0 - 0.5))
    row_shade = rng.normal(1.0, 0.04, size=row.max() + 1)[row]
    col_shade = rng.normal(1.0, 0.04, size=col.max() + 1)[col]
    # Plain weave: the warp lies on top where (row + col) is even, the weft elsewhere.
    warp_on_top = (row + col) % 2 == 0
    shade = np.where(warp_on_top, (0.6 + 0.4 * across_col) * col_shade, (0.6 + 0.4 * across_row) * row_shade)
    brightness = rng.normal(1.0, 0.03)
    image = shade[..., None] * _CLOTH_RGB * brightness
    image = image + rng.normal(0.0, 0.02, size=image.shape)
    return np.clip(image, 0.0, 1.0)


def add_defect(image: np.ndarray, defect_type: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect onto an image.

    Args:
        image: float array (H, W, 3) in [0, 1], left unchanged.
        defect_type: ``"scratch"`` or ``"spot"``.
        rng: the random generator for the defect's place, size and colour.

    Returns:
        (defective image (H, W, 3) float64 in [0, 1], mask (H, W) bool: the painted pixels).

    Raises:
        ValueError: if ``defect_type`` is not one of :data:`DEFECT_TYPES`.

    >>> rng = np.random.default_rng(0)
    >>> image, mask = add_defect(weave_texture(rng, 64), "spot", rng)
    >>> image.shape, mask.shape, bool(mask.any())
    ((64, 64, 3), (64, 64), True)
    """
    height, width = image.shape[:2]
    side = min(height, width)
    y = np.arange(height, dtype=np.float64)[:, None]
    x = np.arange(width, dtype=np.float64)[None, :]
    if defect_type == "scratch":
        length = rng.uniform(0.3, 0.5) * side
        angle = rng.uniform(0.0, np.pi)
        direction = np.array([np.sin(angle), np.cos(angle)])
        margin = length / 2 + 2
        centre = rng.uniform([margin, margin], [height - margin, width - margin])
        start = centre - direction * length / 2
        # Distance from each pixel to the segment: project onto it, clamp to its ends.
        along = np.clip((y - start[0]) * direction[0] + (x - start[1]) * direction[1], 0.0, length)
        distance = np.hypot(y - start[0] - along * direction[0], x - start[1] - along * direction[1])
        mask = distance <= max(1.0, 0.0125 * side)  # about 3 px wide at 128 px
        colour = np.array([0.97, 0.96, 0.92]) if rng.random() < 0.5 else np.array([0.08, 0.07, 0.07])
        alpha = 1.0
    elif defect_type == "spot":
        radius = rng.uniform(0.05, 0.10) * side
        margin = radius * 1.3 + 2
        centre = rng.uniform([margin, margin], [height - margin, width - margin])
        # An irregular outline: the radius wobbles with a few low harmonics of the angle.
        theta = np.arctan2(y - centre[0], x - centre[1])
        wobble = sum(rng.uniform(0.04, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        mask = np.hypot(y - centre[0], x - centre[1]) <= radius * (1.0 + wobble)
        colour = _STAIN_RGB * rng.uniform(0.8, 1.2)
        alpha = 0.85  # a stain lets a little of the weave show through
    else:
        raise ValueError(f"defect_type must be one of {DEFECT_TYPES}, got {defect_type!r}")
    painted = image.copy()
    painted[mask] = (1.0 - alpha) * image[mask] + alpha * colour
    return painted, mask


def make_demo_dataset(
    root: str | os.PathLike,
    n_train: int = 60,
    n_test_good: int = 10,
    n_test_defect: int = 20,
    size: int | Sequence[int] = 128,
    seed: int = 0,
    *,
    name: str = "weave",
    overwrite: bool = False,
) -> Path:
    """Write a generated MVTec-style category folder and return its path.

    The layout is ``root/name/train/good/000.png``, ``test/good/``, ``test/scratch/``,
    ``test/spot/`` and ``ground_truth/<defect>/000_mask.png`` (8-bit, 0 or 255). Defective
    images alternate between the two defect types. Every file is written atomically.

    Args:
        root: folder to create the category folder in.
        n_train: good training images (at least 1).
        n_test_good: good test images.
        n_test_defect: defective test images, split between the defect types.
        size: image size, int or (height, width), at least 16 px.
        seed: seed for NumPy's random generator; the same seed writes the same files.
        name: the category folder's name.
        overwrite: replace an existing, non-empty category folder instead of failing, if this
            function wrote it (it holds the file :data:`MARKER`); any other folder is refused.

    Returns:
        the category folder ``root/name``.

    Raises:
        ValueError: for a negative count, no training images or an image under 16 px.
        FileExistsError: if ``root/name`` exists, is not empty and ``overwrite`` is false.

    >>> import tempfile
    >>> category = make_demo_dataset(tempfile.mkdtemp(), 2, 1, 2, size=32)
    >>> sorted(p.name for p in (category / "test").iterdir())
    ['good', 'scratch', 'spot']
    """
    height, width = as_size(size, "size")
    if min(height, width) < 16:
        raise ValueError(f"size must be at least 16 px, got {size!r}")
    counts = (("n_train", n_train, 1), ("n_test_good", n_test_good, 0), ("n_test_defect", n_test_defect, 0))
    for arg, value, least in counts:
        if int(value) != value or value < least:
            raise ValueError(f"{arg} must be an integer >= {least}, got {value!r}")
    category = Path(root) / name
    if category.exists() and any(category.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{category}: folder exists and is not empty; pass overwrite=True to replace it")
        if not (category / MARKER).is_file():  # never delete what this function did not write
            raise FileExistsError(f"{category}: folder holds files make_demo_dataset did not write; not replacing it")
        shutil.rmtree(category)

    write_bytes(category / MARKER, b"written by padim.io.synthetic.make_demo_dataset\n")

    def rng_for(stream: str, index: int) -> np.random.Generator:
        return np.random.default_rng([seed, _STREAM[stream], index])

    for i in range(n_train):
        image = weave_texture(rng_for("train", i), (height, width))
        _write_png(category / "train" / "good" / f"{i:03d}.png", image)
    for i in range(n_test_good):
        image = weave_texture(rng_for("test_good", i), (height, width))
        _write_png(category / "test" / "good" / f"{i:03d}.png", image)
    for i in range(n_test_defect):
        defect_type = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        index = i // len(DEFECT_TYPES)
        rng = rng_for(defect_type, index)
        image, mask = add_defect(weave_texture(rng, (height, width)), defect_type, rng)
        _write_png(category / "test" / defect_type / f"{index:03d}.png", image)
        _write_png(category / "ground_truth" / defect_type / f"{index:03d}_mask.png", mask)
    return category


def _write_png(path: Path, array: np.ndarray) -> None:
    """Encode a float RGB image in [0, 1] or a bool mask as PNG and write it atomically."""
    if array.dtype == bool:
        pixels = array.astype(np.uint8) * 255
    else:
        pixels = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    # Level 1: the files are small and throwaway, and the default level triples the time.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    write_bytes(path, buffer.getvalue())
