"""Anomaly-map pictures: a jet colour map, a heat-map overlay with the predicted region's outline.

NumPy and Pillow only (no torch, no matplotlib), so that the command line, the web
service and the HTML report draw the same pictures on any machine. An overlay shows the
anomaly map of PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785) as colour
blended over the input image, and outlines in one solid colour the region that the pixel
threshold calls defective (:func:`padim.scoring.regions.region_mask`). The colour fades out where the
map is low (below halfway from the median good score to the threshold, the image shows
through untouched: a white part stays white, a red stain stays red); the outline's width grows
with the picture. Each pixel takes its colour and its fade weight from its step on a 256-step
colour scale (:func:`padim.report.colors.colour_index`), so colour, fade and blend are one table
look-up per channel (:func:`blend`). :func:`padim.report.heatmap.overlay_at_image_size` draws the
picture at an image's own size with a colour bar with the threshold marked.

Shapes: an image is (H, W, 3) uint8 RGB, an anomaly map and a region are (H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from padim.report.colors import blend_tables, colour_index


def blend(out: np.ndarray, index: np.ndarray, tables: np.ndarray) -> None:
    """Blend the colours of ``index`` (H, W) uint8 steps into ``out`` (H, W, 3) uint8 in place: one look-up per channel.

    ``tables`` from :func:`padim.report.colors.blend_tables`: colour, fade and blend in one gather.
    """
    index = index.astype(np.uint16) << 8
    for channel in range(3):
        out[..., channel] = tables[channel][index | out[..., channel]]


def erode(region: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary erosion by the 4-neighbour cross, ``iterations`` times; pixels beyond the border count as outside.

    What ``scipy.ndimage.binary_erosion(region, iterations=n, border_value=0)`` gives (the tests
    compare the two), in NumPy: the runtime install has no SciPy.

    >>> erode(np.ones((3, 4), bool)).astype(int).tolist()
    [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    out = np.asarray(region, dtype=bool)
    for _ in range(iterations):
        inner = np.zeros_like(out)
        inner[1:-1, 1:-1] = out[1:-1, 1:-1] & out[:-2, 1:-1] & out[2:, 1:-1] & out[1:-1, :-2] & out[1:-1, 2:]
        out = inner
    return out


def region_boundary(region: Any) -> np.ndarray:
    """The boundary pixels of a region: its pixels with a 4-neighbour outside it.

    The image border counts as outside, so a region that touches the edge is closed
    along it. The boundary is a line one pixel wide (8-connected).

    Args:
        region: (H, W) bool, True inside the region.

    Returns:
        (H, W) bool, True on the boundary (a subset of ``region``).

    Raises:
        ValueError: if ``region`` is not 2-D.

    >>> square = np.zeros((5, 5), dtype=bool); square[1:4, 1:4] = True
    >>> region_boundary(square).astype(int)[2].tolist()
    [0, 1, 0, 1, 0]
    """
    region = np.asarray(region, dtype=bool)
    if region.ndim != 2:
        raise ValueError(f"region must have shape (H, W), got shape {region.shape}")
    return region & ~erode(region)


def _as_rgb_image(image: Any, size: tuple[int, int]) -> np.ndarray:
    """Return ``image`` as (H, W, 3) uint8 at ``size`` (height, width), resized bilinearly if needed."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) or (H, W), got shape {image.shape}")
    if image.shape[:2] != size:
        height, width = size
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    return image


def contour_width(size: tuple[int, int]) -> int:
    """The outline's width for a picture of ``size`` (height, width): 1 px per 256 px of its longer side.

    >>> contour_width((64, 64)), contour_width((900, 900)), contour_width((3000, 4000))
    (1, 4, 16)
    """
    return max(1, round(max(size) / 256))


def overlay(
    image: Any,
    anomaly_map: Any,
    vmin: float,
    vmax: float,
    region: Any = None,
    alpha: float = 0.4,
    contour_color: Sequence[int] = (255, 255, 255),
    *,
    fade: tuple[float, float] | None = (0.25, 0.5),
    contour_px: int | None = None,
) -> np.ndarray:
    """Blend the coloured anomaly map over the image and outline the predicted region.

    ``vmin`` and ``vmax`` are explicit so that one colour means one score in every image of
    a report: take them from the data set (for example the normal images' range), not from
    each map.

    Args:
        image: (H', W', 3) or (H', W') uint8; resized to the map size (bilinear) if it differs.
        anomaly_map: (H, W) scores.
        vmin: score drawn as the coldest colour.
        vmax: score drawn as the hottest colour; must be greater than ``vmin``.
        region: optional (H, W) bool, the pixels called defective; a band ``contour_px`` wide
            along its boundary (inside it) is drawn in ``contour_color``.
        alpha: weight of the heat map where it is fully shown, in [0, 1]; 0 shows only the image.
        contour_color: RGB of the outline; white does not occur in the jet map.
        fade: where on the colour scale (0 = ``vmin``, 1 = ``vmax``) the heat map fades in
            (:func:`padim.report.colors.fade_weights`, of the colour step); None: ``alpha`` everywhere.
        contour_px: the outline's width in pixels (None: :func:`contour_width` of the map).

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        TypeError: if ``image`` is not uint8.
        ValueError: if a shape is wrong, ``vmax <= vmin``, or ``alpha`` is outside [0, 1].

    >>> image = np.full((2, 2, 3), 100, dtype=np.uint8)
    >>> overlay(image, np.ones((2, 2)), vmin=0.0, vmax=1.0, alpha=0.5)[0, 0].tolist()
    [114, 50, 50]
    >>> overlay(image, np.zeros((2, 2)), vmin=0.0, vmax=1.0, alpha=0.5)[0, 0].tolist()
    [100, 100, 100]
    """
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly_map must have shape (H, W), got shape {anomaly_map.shape}")
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmax > vmin):
        raise ValueError(f"vmin and vmax must be finite with vmax > vmin, got vmin={vmin!r}, vmax={vmax!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    color = np.asarray(contour_color)
    if color.shape != (3,) or not ((color >= 0) & (color <= 255)).all():
        raise ValueError(f"contour_color must be three ints in [0, 255], got {contour_color!r}")

    out = _as_rgb_image(image, anomaly_map.shape).copy()
    if alpha > 0:
        blend(out, colour_index(anomaly_map, vmin, vmax), blend_tables(float(alpha), fade))
    if region is not None:
        region = np.asarray(region, dtype=bool)
        if region.shape != anomaly_map.shape:
            raise ValueError(f"region must have the map's shape {anomaly_map.shape}, got {region.shape}")
        width = contour_width(anomaly_map.shape) if contour_px is None else int(contour_px)
        band = region & ~erode(region, width) if width > 1 else None
        out[region_boundary(region) if band is None else band] = color.astype(np.uint8)
    return out


def heatmap_range(calibration: Any, anomaly_map: Any) -> tuple[float, float]:
    """(vmin, vmax) for :func:`overlay`, the same rule for the command line and the web service.

    With a calibration (:class:`padim.scoring.calibration.Calibration`) the colours span normalised
    scores 0 to 1 (threshold -/+ its scale), so one colour means one score in every image;
    without one, the map's own range.

    >>> from padim.scoring.calibration import Calibration
    >>> heatmap_range(Calibration(threshold=10.0, center=6.0), np.zeros((2, 2)))
    (6.0, 14.0)
    """
    if calibration is not None:
        return calibration.threshold - calibration.scale, calibration.threshold + calibration.scale
    low, high = float(np.min(anomaly_map)), float(np.max(anomaly_map))
    return low, (high if high > low else low + 1.0)
