"""The overlay picture at an image's own size, in a few milliseconds: what the batch job, the service and the report draw.

:func:`overlay_at_image_size` gives the picture of :func:`padim.report.overlays.overlay` with the
anomaly map of PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785) resized to the picture
(:func:`padim.scoring.regions.map_at_size`), the predicted region
(:func:`padim.scoring.regions.region_mask`) outlined and a colour bar under it, without touching the
pixels where no colour can show: most of a picture is faded out (a flagged bottle image shows colour on
about an eighth of its pixels), so only the boxes where the map passes the fade's start are resized
and blended (:func:`hot_boxes`: one table look-up per channel, :func:`padim.report.overlays.blend`),
the outline is eroded in the region's own box, and the colour bar is drawn once per width and range
(:func:`cached_colorbar`). A 900x900 flagged picture takes about 5 ms instead of 49 ms
(``benchmarks/results/speed_research.md``); the tests compare it with the whole-picture drawing.
NumPy and Pillow only.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image

from padim.io.images import fit_within
from padim.report.colorbar import colorbar as colour_bar
from padim.report.colors import blend_tables, colour_index
from padim.report.overlays import blend, contour_width, erode
from padim.scoring.regions import region_mask


@functools.lru_cache(maxsize=32)
def cached_colorbar(width: int, vmin: float, vmax: float, threshold: float | None) -> np.ndarray:
    """:func:`padim.report.colorbar.colorbar`, drawn once per (width, range, threshold) and reused (read-only)."""
    bar = colour_bar(width, vmin, vmax, threshold)
    bar.setflags(write=False)
    return bar


def _span(first: int, last: int, small: int, big: int) -> tuple[int, int]:
    """Picture pixels [start, stop) whose bilinear samples (half-pixel centres) read map pixels ``first..last``, plus one."""
    scale = big / small
    return max(0, int(np.floor((first - 0.5) * scale - 0.5))), min(big, int(np.ceil((last + 1.5) * scale - 0.5)) + 1)


def hot_boxes(hot: np.ndarray, size: tuple[int, int], band: int = 16) -> list[tuple[int, int, int, int]]:
    """Disjoint picture boxes (y0, y1, x0, x1) that hold every pixel whose resized map can pass a level.

    Args:
        hot: (h, w) bool at the working size: the map above the level.
        size: the picture's (height, width).
        band: map rows per band; each band's picture rows get one box spanning its hot columns.

    Exact, not a guess: a bilinearly resized map passes a level only next to a map pixel that does.
    """
    h, w = hot.shape
    height, width = size
    rows, boxes = hot.any(axis=1), []
    for top in range(0, h, band):
        near = slice(max(0, top - 1), top + band + 1)  # a band's picture rows sample one map row around it
        if rows[near].any():
            columns = np.flatnonzero(hot[near].any(axis=0))
            y0 = int(np.floor(top * height / h))
            y1 = height if top + band >= h else int(np.floor((top + band) * height / h))
            boxes.append((y0, y1, *_span(int(columns[0]), int(columns[-1]), w, width)))
    return boxes


def overlay_at_image_size(
    image: Any,
    anomaly_map: Any,
    calibration: Any,
    vmin: float,
    vmax: float,
    max_side: int = 1024,
    *,
    score: float | None = None,
    colorbar: bool = True,
    side_by_side: bool = False,
    alpha: float = 0.4,
    fade: tuple[float, float] | None = (0.25, 0.5),
) -> np.ndarray:
    """Heatmap over the original image (its aspect ratio kept, longest side at most ``max_side``).

    The picture of :func:`overlay` with the map resized bilinearly to the picture
    (:func:`padim.scoring.regions.map_at_size`) and the region of
    :func:`padim.scoring.regions.region_mask` (pixel threshold, in a flagged image only) outlined, drawn
    in a few milliseconds: only the boxes where colour can show are resized and blended
    (:func:`hot_boxes`; a flagged bottle image shows colour on an eighth of its pixels), the outline
    is eroded in the region's own box, and the colour bar is drawn once per width and range.

    Args:
        image: the decoded PIL image at its own size (or already reduced to ``max_side``), or its
            (H, W, 3) uint8 pixels.
        anomaly_map: (H, W) map at the model's working size.
        calibration: :class:`padim.scoring.calibration.Calibration` or None (no region drawn).
        vmin, vmax: the colour range (:func:`heatmap_range`).
        max_side: the picture's longest side at most.
        score: the image's score (default: the map's maximum), which decides if it has a region.
        colorbar: add the colour bar (:func:`padim.report.colorbar.colorbar`) under the picture.
        side_by_side: put the original picture left of the overlay.
        alpha, fade: as :func:`overlay`.

    Returns:
        (H', W', 3) uint8 RGB: the overlay, H' x W' the image's size scaled to ``max_side``,
        then as tall again as the colour bar and twice as wide (plus a gap) side by side.
    """
    if isinstance(image, np.ndarray):  # pixels already decoded (the batch job keeps them so): no conversion
        image = image if max(image.shape[:2]) <= max_side else Image.fromarray(image)
    if isinstance(image, np.ndarray):
        picture = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    else:
        size = fit_within(image.size, max_side)
        picture = image.convert("RGB") if image.mode != "RGB" else image
        picture = np.asarray(picture if picture.size == size else picture.resize(size, Image.BILINEAR))
    small = np.asarray(anomaly_map, dtype=np.float32)
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmax > vmin):
        raise ValueError(f"vmin and vmax must be finite with vmax > vmin, got vmin={vmin!r}, vmax={vmax!r}")
    (height, width), (h, w) = picture.shape[:2], small.shape
    threshold = None if calibration is None else calibration.threshold
    bar = cached_colorbar(width * (2 if side_by_side else 1) + (_gap(width) if side_by_side else 0), float(vmin),
                          float(vmax), None if threshold is None else float(threshold)) if colorbar else None  # fmt: skip
    canvas = np.empty((height + (0 if bar is None else bar.shape[0]), width, 3), np.uint8)
    out = canvas[:height]
    out[...] = picture
    source = Image.fromarray(small, mode="F")

    def resized(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:  # the same samples as one whole resize
        box = (x0 * w / width, y0 * h / height, x1 * w / width, y1 * h / height)
        return np.asarray(source.resize((x1 - x0, y1 - y0), Image.BILINEAR, box=box))

    shows = -np.inf if fade is None else vmin + fade[0] * (vmax - vmin)  # colour shows above this
    if alpha > 0:
        tables = blend_tables(float(alpha), fade)
        for y0, y1, x0, x1 in hot_boxes(~(small <= np.float32(shows)), (height, width)):
            blend(out[y0:y1, x0:x1], colour_index(resized(y0, y1, x0, x1), vmin, vmax), tables)
    inside = region_mask(small, calibration, score)
    if inside is not None and inside.any():
        rows, columns = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        y0, y1 = _span(int(rows[0]), int(rows[-1]), h, height)
        x0, x1 = _span(int(columns[0]), int(columns[-1]), w, width)
        # The box keeps a margin of pixels outside the region (or ends at the picture's edge, which
        # counts as outside): eroding it alone gives the whole picture's erosion.
        region = region_mask(resized(y0, y1, x0, x1), calibration, np.max(small) if score is None else score)
        out[y0:y1, x0:x1][region & ~erode(region, contour_width((height, width)))] = 255
    if side_by_side:
        gap = np.full((height, _gap(width), 3), 255, np.uint8)
        canvas = np.concatenate([np.concatenate([picture, gap, out], axis=1), *([] if bar is None else [bar])])
    elif bar is not None:
        canvas[height:] = bar
    return canvas


def _gap(width: int) -> int:
    return max(2, width // 50)
