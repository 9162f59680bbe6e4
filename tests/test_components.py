"""Regions without SciPy: the NumPy labelling and erosion against scipy.ndimage on random masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from padim.report.overlays import erode
from padim.scoring.components import boxes, label


def masks(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(1, 48, 2))
        yield rng.random((height, width)) < rng.uniform(0.02, 0.8)


def test_labels_equal_scipys_eight_connected_labels():
    for mask in masks(400):
        expected, count = ndimage.label(mask, structure=np.ones((3, 3)))
        found, found_count = label(mask)
        assert found_count == count and np.array_equal(found, expected)


def test_boxes_and_areas_equal_scipys():
    for mask in masks(200, seed=1):
        labels, count = label(mask)
        if count == 0:
            continue
        corners, areas = boxes(labels, count)
        expected = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]
        assert [tuple(c) for c in corners.tolist()] == expected
        assert areas.tolist() == ndimage.sum_labels(mask, labels, np.arange(1, count + 1)).astype(int).tolist()


def test_corner_touching_pixels_are_one_region_and_an_empty_mask_has_none():
    assert label(np.eye(5, dtype=bool))[1] == 1
    assert label(np.zeros((3, 4), bool))[1] == 0
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        label(np.zeros((2, 2, 2), bool))


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_erosion_equals_scipys_with_the_border_outside(iterations):
    for mask in masks(100, seed=2):
        expected = ndimage.binary_erosion(mask, iterations=iterations, border_value=0)
        assert np.array_equal(erode(mask, iterations), expected)
