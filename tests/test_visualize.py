"""Colour map ends, outline pixels against a naive neighbour loop, blending by hand, atomic PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from padim import visualize


def _naive_boundary(region: np.ndarray) -> np.ndarray:
    """A region pixel is on the boundary if a 4-neighbour is outside the region or the image."""
    height, width = region.shape
    out = np.zeros_like(region)
    for r in range(height):
        for c in range(width):
            if not region[r, c]:
                continue
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc = r + dr, c + dc
                if not (0 <= rr < height and 0 <= cc < width) or not region[rr, cc]:
                    out[r, c] = True
    return out


def test_colormap_ends_and_clipping():
    colours = visualize.colormap(np.array([[0.0, 1.0], [-5.0, 7.0]]))
    assert colours.dtype == np.uint8 and colours.shape == (2, 2, 3)
    assert colours[0, 0].tolist() == [0, 0, 128]  # dark blue
    assert colours[0, 1].tolist() == [128, 0, 0]  # dark red
    assert colours[1, 0].tolist() == [0, 0, 128]
    assert colours[1, 1].tolist() == [128, 0, 0]
    assert visualize.colormap(np.array([np.nan])).tolist() == [[0, 0, 128]]


def test_colormap_runs_blue_to_red():
    colours = visualize.colormap(np.linspace(0, 1, 11)).astype(int)
    red, blue = colours[:, 0], colours[:, 2]
    assert np.argmax(blue) < np.argmax(colours[:, 1]) < np.argmax(red)
    assert colours[5, 1] == 255  # the middle is green-dominated


@pytest.mark.parametrize("seed", range(4))
def test_region_boundary_matches_naive_loop(seed):
    rng = np.random.default_rng(seed)
    region = rng.random((12, 15)) > 0.5
    region[3:9, 4:11] = True  # a solid block with an interior
    np.testing.assert_array_equal(visualize.region_boundary(region), _naive_boundary(region))


def test_overlay_alpha_blending_hand_case():
    image = np.empty((3, 4, 3), dtype=np.uint8)
    image[...] = (100, 50, 200)
    anomaly_map = np.zeros((3, 4))
    anomaly_map[0, 0] = 10.0  # at vmax: dark red (128, 0, 0)
    out = visualize.overlay(image, anomaly_map, vmin=0.0, vmax=10.0, alpha=0.4)
    # 0.6 * image + 0.4 * dark blue (0, 0, 128): blue 0.6 * 200 + 0.4 * 128 = 171.2.
    assert out[1, 1].tolist() == [60, 30, 171]
    # 0.6 * image + 0.4 * dark red (128, 0, 0): red 60 + 51.2 = 111.2, blue 120.
    assert out[0, 0].tolist() == [111, 30, 120]
    assert visualize.overlay(image, anomaly_map, 0.0, 10.0, alpha=0.0).tolist() == image.tolist()


def test_overlay_contour_is_exactly_the_boundary():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    anomaly_map = rng.random((16, 16))
    region = np.zeros((16, 16), dtype=bool)
    region[4:10, 3:12] = True
    region[0:3, 13:16] = True  # touches the image edge
    plain = visualize.overlay(image, anomaly_map, 0.0, 1.0)
    outlined = visualize.overlay(image, anomaly_map, 0.0, 1.0, region=region, contour_color=(0, 255, 0))
    changed = np.any(outlined != plain, axis=2)
    boundary = _naive_boundary(region)
    np.testing.assert_array_equal(outlined[boundary], np.tile([0, 255, 0], (boundary.sum(), 1)))
    assert not changed[~boundary].any()


def test_overlay_resizes_image_to_map_and_takes_gray():
    image = np.full((32, 24), 90, dtype=np.uint8)
    out = visualize.overlay(image, np.zeros((8, 6)), 0.0, 1.0, alpha=0.5)
    assert out.shape == (8, 6, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [45, 45, 109]  # 0.5 * 90 + 0.5 * (0, 0, 128)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"vmin": 1.0, "vmax": 1.0}, ValueError, "vmax > vmin"),
        ({"alpha": 1.5}, ValueError, "alpha must be in"),
        ({"region": np.zeros((3, 3), bool)}, ValueError, "region must have"),
        ({"image": np.zeros((4, 4, 3), np.float32)}, TypeError, "image must be uint8"),
        ({"anomaly_map": np.zeros((1, 4, 4))}, ValueError, "anomaly_map must have"),
    ],
)
def test_overlay_rejects_bad_arguments(kwargs, error, match):
    arguments = {"image": np.zeros((4, 4, 3), np.uint8), "anomaly_map": np.zeros((4, 4)), "vmin": 0.0, "vmax": 1.0}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        visualize.overlay(**arguments)


def test_png_bytes_round_trip():
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(visualize.png_bytes(array))))
    np.testing.assert_array_equal(decoded, array)


def test_save_png_is_atomic(tmp_path):
    array = np.zeros((4, 4, 3), dtype=np.uint8)
    target = tmp_path / "sub" / "a.png"
    visualize.save_png(target, array)
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.png"]  # no temporary left
    np.testing.assert_array_equal(np.asarray(Image.open(target)), array)

    with pytest.raises(TypeError, match="uint8"):
        visualize.save_png(tmp_path / "b.png", array.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        visualize.save_png(target, np.zeros((4, 4, 2), dtype=np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(target)), array)  # old file intact


def test_save_png_interrupted_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    visualize.save_png(target, np.zeros((2, 2, 3), dtype=np.uint8))
    before = target.read_bytes()

    def crash(self, data):
        open(self, "wb").write(data[:10])  # half a file, then the disk fills up
        raise OSError("disk full")

    monkeypatch.setattr(type(target), "write_bytes", crash)
    with pytest.raises(OSError, match="disk full"):
        visualize.save_png(target, np.full((2, 2, 3), 255, dtype=np.uint8))
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
