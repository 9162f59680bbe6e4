"""The working size: what (height, width) the images are resized to, chosen from the training images.

Squashing every image into a square (anomalib's PaDiM works at 256 x 256) stretches elongated
parts and throws away detail along their long side. The rule here keeps the training images'
aspect ratio: the short side is ``image_size``, the long side follows their median aspect
ratio, and both are rounded to a multiple of the backbone's largest stride (so every layer's
grid divides evenly). When the aspect ratios vary widely (the 10th and 90th percentiles differ
by more than :data:`SPREAD`, e.g. a mix of portrait and landscape pictures) there is no one
shape to keep, and the working size is the square ``image_size`` x ``image_size``.

Image sizes are read from the files' headers (Pillow opens a file lazily), without decoding.
An explicit (height, width) always wins; the size chosen is saved in the model. :func:`plan`
adds what a fit needs besides: the Gaussian grid, the tiling and the memory estimate.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from padim.errors import OptionError
from padim.features.backbones import get_spec
from padim.features.tiling import resolve_tile
from padim.io.images import header_size
from padim.machine import machine_memory
from padim.model import memory
from padim.model.settings import check_working_size

#: Largest ratio between the 90th and 10th percentile of aspect ratios that still keeps the median one.
SPREAD = 1.25
#: Most headers read to choose the size (evenly spaced through the list).
MAX_HEADERS = 2000


def header_sizes(paths: Sequence[str | os.PathLike], limit: int = MAX_HEADERS) -> list[tuple[int, int]]:
    """(width, height) of image files from their headers, skipping files that cannot be opened.

    At most ``limit`` files are read, evenly spaced through ``paths``.
    """
    step = max(1, -(-len(paths) // limit))
    found = (header_size(path) for path in list(paths)[::step])
    return [size for size in found if size is not None]  # unreadable files: decoding reports them


def round_to(value: float, multiple: int) -> int:
    """``value`` rounded to the nearest multiple of ``multiple``, at least ``multiple``.

    >>> round_to(4766.5, 16), round_to(3, 16)
    (4768, 16)
    """
    return max(multiple, int(round(value / multiple)) * multiple)


def from_sizes(sizes: Sequence[tuple[int, int]], short_side: int, align: int) -> tuple[tuple[int, int], str]:
    """The working size for images of ``sizes`` (width, height), and a sentence saying why.

    Args:
        sizes: (width, height) of the training images.
        short_side: the working size's short side (``image_size``).
        align: the multiple both sides are rounded to (the backbone's largest stride).

    Returns:
        ((height, width), reason).

    >>> from_sizes([(2048, 110)] * 3, 256, 16)[0], from_sizes([(900, 900)], 256, 16)[0]
    ((256, 4768), (256, 256))
    >>> from_sizes([(400, 300), (300, 400)] * 5, 256, 16)
    ((256, 256), 'square: the aspect ratios of 10 images vary from 0.75 to 1.33')
    """
    if not sizes:
        return (short_side, short_side), "square: no image sizes could be read"
    ratios = np.array([w / h for w, h in sizes], dtype=np.float64)
    low, high = np.percentile(ratios, [10, 90])
    if high / low > SPREAD:
        return (short_side, short_side), (
            f"square: the aspect ratios of {len(sizes)} images vary from {low:.2f} to {high:.2f}"
        )
    aspect = float(np.median(ratios))  # width / height
    short = round_to(short_side, align)
    if aspect >= 1:
        size = (short, round_to(short * aspect, align))
    else:
        size = (round_to(short / aspect, align), short)
    return size, f"median aspect ratio {aspect:.3g} (width/height) of {len(sizes)} images"


def working_size(
    image_size: int | Sequence[int], paths: Sequence[str | os.PathLike] | None, align: int
) -> tuple[tuple[int, int], str]:
    """The working size for a model's ``image_size`` and its training files.

    Args:
        image_size: an int (the short side; the aspect ratio comes from the images) or
            (height, width) (used as given).
        paths: the training image files, or None when the images are not files (arrays,
            tensors, PIL images): an int then gives a square.
        align: the backbone's largest stride.

    Returns:
        ((height, width), reason).
    """
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool):
        return (int(image_size[0]), int(image_size[1])), "given as height x width"
    if not paths:
        return (int(image_size), int(image_size)), "square: the images are not files"
    return from_sizes(header_sizes(paths), int(image_size), align)


@dataclass(frozen=True)
class Plan:
    """What a fit will use: working size, Gaussian grid, tiling, and the memory it expects.

    Attributes:
        image_size: the working size (H, W).
        grid_stride: pixels per Gaussian.
        tile: tile side (0: the backbone sees whole images).
        estimate: model size and peak memory (:func:`padim.model.memory.estimate`).
        reason: why this working size.
        coarser_grid: the smallest coarser grid stride whose fit would fit in memory, or None.
    """

    image_size: tuple[int, int]
    grid_stride: int
    tile: int
    estimate: Any
    reason: str
    coarser_grid: int | None

    def describe(self) -> str:
        return f"{self.reason}; {self.estimate.describe()}"


def plan(
    image_size: int | Sequence[int],
    paths: Sequence[str | os.PathLike] | None,
    *,
    backbone: str,
    layer_info: Sequence[Any],
    n_features: int,
    grid_stride: int,
    tile_size: int | None,
    sigma: float,
    weights_bytes: int,
    batch_size: int | None = None,
) -> Plan:
    """The working size, Gaussian grid and tiling of a fit, checked, with its memory estimate.

    Args:
        image_size, paths: as for :func:`working_size`.
        backbone, layer_info: the backbone's name and its chosen layers (:class:`padim.features.backbones.LayerInfo`).
        n_features: D.
        grid_stride: pixels per Gaussian (the first layer's stride or a power-of-two multiple).
        tile_size: :func:`padim.features.tiling.resolve_tile`'s argument.
        sigma: the map's blur (the working size must exceed its radius).
        weights_bytes: the cut backbone's weights, for the model file's size.
        batch_size: images decoded per batch (None: by working size).

    Raises:
        OptionError: for a working size the backbone, the blur or the grid cannot use.
    """

    first, last = layer_info[0].stride, layer_info[-1].stride
    size, reason = working_size(image_size, paths, max(last, grid_stride))
    check_working_size(size, layer_info[-1], sigma)
    if grid_stride > first and (size[0] % grid_stride or size[1] % grid_stride):
        raise OptionError(f"image_size {size[0]}x{size[1]} must be a multiple of grid_stride={grid_stride} "
                          "(or give image_size as one int: it is then rounded)")  # fmt: skip
    tile = resolve_tile(tile_size, size, last)
    spec = get_spec(backbone)

    def estimate(stride: int) -> memory.Estimate:
        return memory.estimate(size, spec.grid(size, stride), n_features, backbone, weights_bytes, tile, batch_size)

    chosen = estimate(grid_stride)
    coarser = None
    if chosen.fit_peak > machine_memory():
        strides = [grid_stride * 2**k for k in range(1, 5) if grid_stride * 2**k <= min(size)]
        coarser = next((g for g in strides if estimate(g).fit_peak <= machine_memory()), None)
    return Plan(size, grid_stride, tile, chosen, reason, coarser)


def checked_plan(params: Any, resolved: Any, weights_bytes: int, paths: list | None, batch_size: int | None,
                 quiet: bool) -> Plan:  # fmt: skip
    """A fit's :func:`plan` for a model's arguments, printed (unless ``quiet``) and checked against the memory.

    Args:
        params: the model (its ``image_size``, ``backbone``, ``tile_size`` and ``sigma`` as given).
        resolved: :func:`padim.model.settings.resolve`'s result.
        weights_bytes: the cut backbone's weights.
        paths, batch_size: as :func:`plan`.

    Raises:
        OptionError: for a working size the model cannot use, or a fit larger than the memory.
    """
    fit_plan = plan(params.image_size, paths, backbone=params.backbone, layer_info=resolved.layer_info,
                    n_features=resolved.n_features, grid_stride=resolved.grid_stride, tile_size=params.tile_size,
                    sigma=params.sigma, weights_bytes=weights_bytes, batch_size=batch_size)  # fmt: skip
    if not quiet:
        print(f"padim: {fit_plan.describe()}", file=sys.stderr)
    memory.check(fit_plan.estimate, fit_plan.coarser_grid)
    return fit_plan
