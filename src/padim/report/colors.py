"""The colour scale of every heatmap: matplotlib's jet as a lookup table, and the fade that lets the image show through.

NumPy only. :func:`colormap` colours positions in [0, 1]; :func:`fade_weights` says how much of
the colour covers the picture at each position (none below the fade's start, so a white part stays
white and a red stain stays red). The overlays (:mod:`padim.report.overlays`) and their colour bar
(:mod:`padim.report.colorbar`) both draw with these.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# Matplotlib's "jet" as piecewise-linear control points (position, red, green, blue):
# dark blue, blue, cyan, yellow, red, dark red. Nine numbers per channel are the whole
# definition; a 256-entry table is interpolated from them once.
_JET_POINTS = np.array(
    [
        [0.000, 0.0, 0.0, 0.5],
        [0.125, 0.0, 0.0, 1.0],
        [0.375, 0.0, 1.0, 1.0],
        [0.625, 1.0, 1.0, 0.0],
        [0.875, 1.0, 0.0, 0.0],
        [1.000, 0.5, 0.0, 0.0],
    ]
)


def _lookup_table(points: np.ndarray, size: int = 256) -> np.ndarray:
    """Interpolate (K, 4) control points into a read-only (size, 3) uint8 table."""
    x = np.linspace(0.0, 1.0, size)
    table = np.stack([np.interp(x, points[:, 0], points[:, c]) for c in (1, 2, 3)], axis=1)
    table = np.round(table * 255.0).astype(np.uint8)
    table.setflags(write=False)
    return table


JET = _lookup_table(_JET_POINTS)


def colormap(values: Any) -> np.ndarray:
    """Colour values in [0, 1] with a jet colour map: 0 dark blue, 0.5 light green, 1 dark red.

    Values outside [0, 1] are clipped, and NaN is drawn as 0.

    Args:
        values: (H, W) floats (any shape works).

    Returns:
        (H, W, 3) uint8 RGB.

    >>> colormap(np.array([[-1.0, 0.0, 1.0, 2.0]])).tolist()
    [[[0, 0, 128], [0, 0, 128], [128, 0, 0], [128, 0, 0]]]
    """
    return JET[table_index(np.asarray(values, dtype=np.float32))]


def table_index(values: np.ndarray) -> np.ndarray:
    """Index into the 256-entry table of positions in [0, 1] (clipped; NaN -> 0), as uint8."""
    index = np.clip(values, 0.0, 1.0)
    index *= len(JET) - 1
    index = np.rint(index, out=index)
    return np.nan_to_num(index, copy=False, nan=0.0).astype(np.uint8)


def fade_weights(values: Any, alpha: float, fade: tuple[float, float] | None) -> np.ndarray:
    """Per-pixel weight of the heat map: 0 up to ``fade[0]``, rising linearly to ``alpha`` at ``fade[1]``.

    ``values`` are positions on the colour scale (0 at ``vmin``, 1 at ``vmax``); with the
    calibrated range of :func:`heatmap_range`, 0.5 is the threshold and 0.25 halfway from the
    median good score to it. ``fade=None`` gives ``alpha`` everywhere. NaN counts as high.

    >>> fade_weights(np.array([0.0, 0.25, 0.375, 0.5, 1.0]), 0.4, (0.25, 0.5)).tolist()
    [0.0, 0.0, 0.2, 0.4, 0.4]
    """
    values = np.asarray(values)
    values = values if values.dtype in (np.float32, np.float64) else values.astype(np.float64)
    if fade is None:
        return np.full(values.shape, alpha, dtype=values.dtype)
    low, high = fade
    if not 0.0 <= low < high:
        raise ValueError(f"fade must be (low, high) with 0 <= low < high, got {fade!r}")
    weight = values - values.dtype.type(low)
    weight *= values.dtype.type(alpha / (high - low))
    np.clip(weight, 0.0, alpha, out=weight)
    return np.nan_to_num(weight, copy=False, nan=alpha)


def colour_index(values: Any, vmin: float, vmax: float) -> np.ndarray:
    """Each value's step on the 256-step colour scale from ``vmin`` to ``vmax`` (clipped), as uint8; NaN is the top.

    An overlay takes both its colour and its fade weight from this step (:func:`blend_tables`).

    >>> colour_index(np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan]), 0.0, 1.0).tolist()
    [0, 0, 128, 255, 255, 255]
    """
    position = np.asarray(values, dtype=np.float32) - np.float32(vmin)
    position *= np.float32((len(JET) - 1) / (vmax - vmin))
    np.fmin(position, np.float32(len(JET) - 1), out=position)  # fmin takes the number: NaN becomes the top
    np.maximum(position, np.float32(0.0), out=position)
    return np.rint(position, out=position).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def blend_tables(alpha: float, fade: tuple[float, float] | None) -> np.ndarray:
    """(3, 65536) uint8: for each channel, ``round((1 - w) v + w c)`` at ``step << 8 | v`` for a picture value v.

    c is the step's jet colour and w its fade weight (:func:`fade_weights` of the step's position):
    colour, fade and blend of a pixel are one table look-up per channel, with no arithmetic per
    pixel. 192 kB, built once per (alpha, fade).
    """
    steps = np.linspace(0.0, 1.0, len(JET))
    weight = fade_weights(steps, alpha, fade)[:, None, None]
    values = np.arange(256, dtype=np.float64)[None, None, :]
    colours = JET.astype(np.float64).T[None].transpose(2, 1, 0)  # (256 steps, 3, 1)
    table = np.rint(values * (1.0 - weight) + colours * weight).astype(np.uint8)  # (steps, 3, values)
    table = np.ascontiguousarray(table.transpose(1, 0, 2).reshape(3, -1))
    table.setflags(write=False)
    return table
