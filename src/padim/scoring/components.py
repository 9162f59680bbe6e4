"""Connected regions of a mask (8-connectivity), in NumPy: the defect regions and the ground-truth regions.

The runtime install has no SciPy (143 MB, half of the install's budget), so regions are
labelled here, by runs: each row's runs of True pixels are found at once with ``np.diff``, runs
of consecutive rows that touch (8-connectivity: their column ranges overlap or meet at a corner)
are joined, the joins are resolved by label propagation with pointer jumping, and the runs are
painted back. Labels are numbered in raster order of each region's first pixel, as
``scipy.ndimage.label`` numbers them; the tests hold the two equal on random masks. The work is
proportional to the number of runs, not of pixels, apart from the two passes that find and
paint them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of True pixels of an (H, W) mask, in raster order: (row, start, stop) arrays, stop exclusive.

    >>> [a.tolist() for a in runs(np.array([[1, 1, 0, 1], [0, 1, 1, 0]], bool))]
    [[0, 0, 1], [0, 3, 1], [2, 4, 3]]
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, stops = np.nonzero(edges == -1)  # the same rows, in the same order: each run ends after it starts
    return rows, starts, stops


def _joins(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of run indices (a, b), a in a row and b in the next, whose pixels touch (8-connectivity)."""
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = np.searchsorted(rows, np.arange(rows[-1] + 2))  # the first run of each row (and one past the last)
    above, below = [], []
    for row in np.flatnonzero((np.diff(first)[:-1] > 0) & (np.diff(first)[1:] > 0)):  # rows r and r + 1 both hold runs
        a0, a1, b0, b1 = first[row], first[row + 1], first[row + 1], first[row + 2]
        # Run b touches run a when a.start <= b.stop and b.start <= a.stop (stops exclusive, corners count):
        # the runs a of a row are sorted and disjoint, so those are one contiguous range for each b.
        low = a0 + np.searchsorted(stops[a0:a1], starts[b0:b1], side="left")
        high = a0 + np.searchsorted(starts[a0:a1], stops[b0:b1], side="right")
        count = high - low
        above.append(np.repeat(low, count) + _ranks(count))
        below.append(np.repeat(np.arange(b0, b1), count))
    if not above:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(above), np.concatenate(below)


def _ranks(count: np.ndarray) -> np.ndarray:
    """0, 1, ..., count[0] - 1, 0, 1, ..., count[1] - 1, ... (each group's offsets).

    >>> _ranks(np.array([2, 0, 3])).tolist()
    [0, 1, 0, 1, 2]
    """
    total = int(count.sum())
    starts = np.repeat(np.cumsum(count) - count, count)
    return np.arange(total) - starts


def label(mask: Any) -> tuple[np.ndarray, int]:
    """8-connected regions of an (H, W) bool mask: (labels (H, W) int32, 0 outside, 1..K in raster order; K).

    Equal to ``scipy.ndimage.label(mask, structure=np.ones((3, 3)))``.

    >>> labels, count = label(np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]], bool))
    >>> count, labels.tolist()
    (3, [[1, 0, 0, 2], [0, 1, 0, 2], [0, 0, 0, 0], [3, 3, 0, 0]])
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got shape {mask.shape}")
    rows, starts, stops = runs(mask)
    out = np.zeros(mask.shape, dtype=np.int32)
    if rows.size == 0:
        return out, 0
    above, below = _joins(rows, starts, stops)
    root = np.arange(rows.size)
    while True:  # each run takes the smallest index joined to it; pointer jumping halves the chains each round
        low = np.minimum(root[above], root[below])
        new = root.copy()
        np.minimum.at(new, above, low)
        np.minimum.at(new, below, low)
        new = new[new]
        if np.array_equal(new, root):
            break
        root = new
    # Regions numbered in raster order of their first run, as SciPy numbers them.
    firsts, region = np.unique(root, return_inverse=True)
    lengths = stops - starts
    flat = np.repeat(rows * mask.shape[1] + starts, lengths) + _ranks(lengths)
    out.reshape(-1)[flat] = np.repeat(region + 1, lengths)
    return out, int(firsts.size)


def boxes(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each region's bounding box (x0, y0, x1, y1), ends exclusive, and its area, from :func:`label`'s result.

    Returns:
        ((K, 4) int64 boxes, (K,) int64 areas), region k at row k - 1.

    >>> labels, count = label(np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], bool))
    >>> [a.tolist() for a in boxes(labels, count)]
    [[[1, 0, 3, 1], [0, 2, 1, 3]], [2, 1]]
    """
    rows, cols = np.nonzero(labels)
    which = labels[rows, cols] - 1
    out = np.empty((count, 4), dtype=np.int64)
    out[:, :2], out[:, 2:] = np.iinfo(np.int64).max, -1
    np.minimum.at(out[:, 0], which, cols)
    np.minimum.at(out[:, 1], which, rows)
    np.maximum.at(out[:, 2], which, cols + 1)
    np.maximum.at(out[:, 3], which, rows + 1)
    return out, np.bincount(which, minlength=count).astype(np.int64)
