"""Colour map ends, outline pixels against a naive neighbour loop, blending by hand, atomic PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from padim.io import pictures
from padim.report import colors, heatmap
from padim.report import overlays as visualize


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
    colours = colors.colormap(np.array([[0.0, 1.0], [-5.0, 7.0]]))
    assert colours.dtype == np.uint8 and colours.shape == (2, 2, 3)
    assert colours[0, 0].tolist() == [0, 0, 128]  # dark blue
    assert colours[0, 1].tolist() == [128, 0, 0]  # dark red
    assert colours[1, 0].tolist() == [0, 0, 128]
    assert colours[1, 1].tolist() == [128, 0, 0]
    assert colors.colormap(np.array([np.nan])).tolist() == [[0, 0, 128]]


def test_colormap_runs_blue_to_red():
    colours = colors.colormap(np.linspace(0, 1, 11)).astype(int)
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
    out = visualize.overlay(image, anomaly_map, vmin=0.0, vmax=10.0, alpha=0.4, fade=None)
    # 0.6 * image + 0.4 * dark blue (0, 0, 128): blue 0.6 * 200 + 0.4 * 128 = 171.2.
    assert out[1, 1].tolist() == [60, 30, 171]
    # 0.6 * image + 0.4 * dark red (128, 0, 0): red 60 + 51.2 = 111.2, blue 120.
    assert out[0, 0].tolist() == [111, 30, 120]
    assert visualize.overlay(image, anomaly_map, 0.0, 10.0, alpha=0.0).tolist() == image.tolist()


def test_overlay_is_transparent_where_the_map_is_low():
    """The heat map fades in from a quarter of the colour scale to its middle (the threshold)."""
    image = np.full((1, 5, 3), 255, dtype=np.uint8)  # a white part must stay white where the map is low
    anomaly_map = np.array([[0.0, 2.4, 3.75, 5.0, 10.0]])  # positions 0, 0.24, 0.375, 0.5, 1 of [0, 10]
    out = visualize.overlay(image, anomaly_map, vmin=0.0, vmax=10.0, alpha=0.4)
    assert out[0, 0].tolist() == out[0, 1].tolist() == [255, 255, 255]
    colours = colors.colormap(anomaly_map / 10.0)[0].astype(float)
    for k, weight in ((2, 0.2), (3, 0.4), (4, 0.4)):  # half-way in the fade: half of alpha
        np.testing.assert_array_equal(out[0, k], np.round((1 - weight) * 255 + weight * colours[k]))


def test_contour_width_scales_with_the_picture():
    image = np.zeros((900, 900, 3), dtype=np.uint8)
    region = np.zeros((900, 900), dtype=bool)
    region[300:600, 300:600] = True
    out = visualize.overlay(image, np.zeros((900, 900)), 0.0, 1.0, region=region, contour_color=(0, 255, 0))
    row = (out[450, :, 1] == 255).astype(int)
    # A band 4 px wide (900 / 256 rounded) inside the region on either side, nothing outside it.
    assert visualize.contour_width((900, 900)) == 4
    assert np.flatnonzero(row).tolist() == [300, 301, 302, 303, 596, 597, 598, 599]


def test_overlay_at_image_size_adds_colour_bar_and_side_by_side():
    from PIL import Image as PILImage

    from padim.scoring.calibration import Calibration

    image = PILImage.fromarray(np.full((300, 400, 3), 200, dtype=np.uint8))
    anomaly_map = np.zeros((64, 64), np.float32)
    anomaly_map[20:30, 20:30] = 20.0
    calibration = Calibration(threshold=10.0, center=5.0, pixel_threshold=8.0)
    vmin, vmax = visualize.heatmap_range(calibration, anomaly_map)
    plain = heatmap.overlay_at_image_size(image, anomaly_map, calibration, vmin, vmax, colorbar=False)
    assert plain.shape == (300, 400, 3)
    with_bar = heatmap.overlay_at_image_size(image, anomaly_map, calibration, vmin, vmax)
    assert with_bar.shape[1] == 400 and with_bar.shape[0] > 300
    np.testing.assert_array_equal(with_bar[:300], plain)
    both = heatmap.overlay_at_image_size(image, anomaly_map, calibration, vmin, vmax, colorbar=False, side_by_side=True)
    assert both.shape == (300, 2 * 400 + 8, 3)
    np.testing.assert_array_equal(both[:, :400], np.asarray(image))
    np.testing.assert_array_equal(both[:, -400:], plain)
    # An image below the threshold has no outline, even where pixels pass the pixel threshold.
    quiet = anomaly_map.clip(max=9.0)
    picture = heatmap.overlay_at_image_size(image, quiet, calibration, vmin, vmax, colorbar=False)
    assert not (picture == 255).all(axis=2).any()


def test_colorbar_marks_the_threshold():
    from padim.report.colorbar import colorbar

    bar = colorbar(400, 0.0, 20.0, 10.0)
    assert bar.dtype == np.uint8 and bar.shape[1] == 400
    black = (bar[: bar.shape[0] // 3] == 0).all(axis=2)  # the mark crosses the bar's upper part
    columns = np.flatnonzero(black.any(axis=0))
    assert columns.size and abs(columns.mean() - 200) < 3
    assert not (colorbar(400, 0.0, 20.0, None)[: bar.shape[0] // 3] == 0).all(axis=2).any()


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
    out = visualize.overlay(image, np.zeros((8, 6)), 0.0, 1.0, alpha=0.5, fade=None)
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
    decoded = np.asarray(Image.open(io.BytesIO(pictures.png_bytes(array))))
    np.testing.assert_array_equal(decoded, array)


def test_save_png_is_atomic(tmp_path):
    array = np.zeros((4, 4, 3), dtype=np.uint8)
    target = tmp_path / "sub" / "a.png"
    pictures.save_png(target, array)
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.png"]  # no temporary left
    np.testing.assert_array_equal(np.asarray(Image.open(target)), array)

    with pytest.raises(TypeError, match="uint8"):
        pictures.save_png(tmp_path / "b.png", array.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        pictures.save_png(target, np.zeros((4, 4, 2), dtype=np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(target)), array)  # old file intact


def test_save_png_interrupted_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    pictures.save_png(target, np.zeros((2, 2, 3), dtype=np.uint8))
    before = target.read_bytes()

    def crash(self, data):
        open(self, "wb").write(data[:10])  # half a file, then the disk fills up
        raise OSError("disk full")

    monkeypatch.setattr(type(target), "write_bytes", crash)
    with pytest.raises(OSError, match="disk full"):
        pictures.save_png(target, np.full((2, 2, 3), 255, dtype=np.uint8))
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


@pytest.mark.parametrize("size", [(300, 400), (64, 64), (37, 250), (1000, 700)])
def test_the_fast_overlay_is_the_whole_picture_drawing(size):
    """Only the hot boxes are drawn, the outline eroded in the region's box: the same picture as drawing it all."""
    from padim.report.colorbar import colorbar
    from padim.scoring.calibration import Calibration
    from padim.scoring.regions import map_at_size, region_mask

    rng = np.random.default_rng(sum(size))
    height, width = size
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    anomaly_map = (rng.random((48, 64)) * 6).astype(np.float32)
    anomaly_map[10:25, 5:30] += np.linspace(0, 40, 25, dtype=np.float32)
    anomaly_map[40:, 60:] = 30.0  # touches the picture's edge
    calibration = Calibration(threshold=20.0, center=8.0, pixel_threshold=16.0)
    vmin, vmax = visualize.heatmap_range(calibration, anomaly_map)
    resized = map_at_size(anomaly_map, (width, height))
    expected = visualize.overlay(image, resized, vmin, vmax, region=region_mask(resized, calibration))
    expected = np.concatenate([expected, colorbar(width, vmin, vmax, 20.0)])
    for picture in (image, Image.fromarray(image)):
        found = heatmap.overlay_at_image_size(picture, anomaly_map, calibration, vmin, vmax, max_side=1000)
        assert found.shape == expected.shape
        differ = np.abs(found.astype(int) - expected).max(axis=2)
        assert differ.max() <= 2 and (differ > 0).mean() < 1e-3  # float rounding of the resized map
