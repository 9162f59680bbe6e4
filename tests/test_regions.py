"""Regions at the image's own size: resize against a naive bilinear loop, boxes against a flood fill."""

import numpy as np
import pytest

from padim.scoring.calibration import Calibration
from padim.scoring.regions import Box, map_at_size, region_boxes, region_mask, union_box


def naive_bilinear(x, height, width):
    """Half-pixel centres, edges clamped, one output pixel at a time (float64)."""
    h, w = x.shape
    out = np.zeros((height, width))
    for i in range(height):
        sy = min(max((i + 0.5) * h / height - 0.5, 0.0), h - 1)
        y0 = int(np.floor(sy))
        y1 = min(y0 + 1, h - 1)
        fy = sy - y0  # noqa: E702
        for j in range(width):
            sx = min(max((j + 0.5) * w / width - 0.5, 0.0), w - 1)
            x0 = int(np.floor(sx))
            x1 = min(x0 + 1, w - 1)
            fx = sx - x0  # noqa: E702
            top = (1 - fx) * x[y0, x0] + fx * x[y0, x1]
            bottom = (1 - fx) * x[y1, x0] + fx * x[y1, x1]
            out[i, j] = (1 - fy) * top + fy * bottom
    return out


def test_map_at_size_is_bilinear_up_sampling():
    x = np.random.default_rng(0).random((8, 6)).astype(np.float32)
    got = map_at_size(x, (15, 20))  # (width, height)
    assert got.shape == (20, 15) and got.dtype == np.float32
    np.testing.assert_allclose(got, naive_bilinear(x, 20, 15), atol=1e-5)
    assert map_at_size(x, (6, 8)) is x or np.array_equal(map_at_size(x, (6, 8)), x)


def flood_boxes(mask):
    """8-connected components by a breadth-first flood fill, as (x0, y0, x1, y1, area)."""
    seen = np.zeros_like(mask)
    boxes = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        queue, pixels = [(y, x)], []
        seen[y, x] = True
        while queue:
            cy, cx = queue.pop()
            pixels.append((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        ys, xs = zip(*pixels)
        boxes.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1, len(pixels)))
    return sorted(boxes, key=lambda b: (-b[4], b[1], b[0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_boxes_match_a_flood_fill(seed):
    mask = np.random.default_rng(seed).random((30, 40)) > 0.8
    got = [(b.x0, b.y0, b.x1, b.y1, b.area) for b in region_boxes(mask)]
    assert got == flood_boxes(mask)
    total = union_box(region_boxes(mask))
    assert total.area == mask.sum() and (total.x1, total.y1) <= (40, 30)


def test_region_mask_follows_the_calibration_and_fails_closed():
    calibration = Calibration(threshold=2.0, center=1.0)
    mask = region_mask(np.array([[1.0, 2.0], [np.nan, 3.0]]), calibration)
    assert mask.tolist() == [[False, True], [True, True]]
    assert region_mask(np.zeros((2, 2)), None) is None
    assert region_boxes(np.zeros((3, 3), bool)) == [] and union_box([]) is None
    assert union_box([Box(0, 0, 1, 1, 1)]) == Box(0, 0, 1, 1, 1)
