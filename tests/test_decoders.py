"""The fast decoders against Pillow (padim.io.images.load_image, the reference): same pixels, same errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from padim.errors import ImageError, ImageTooLargeError
from padim.io import decoders
from padim.io.images import load_image as reference


def picture(mode: str = "RGB", size=(37, 23)) -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


def saved(path, image: Image.Image, **options):
    image.save(path, **options)
    return path


CASES = {
    "png rgb": lambda p: saved(p / "a.png", picture()),
    "png rgba": lambda p: saved(p / "a.png", picture("RGBA")),
    "png palette": lambda p: saved(p / "a.png", picture().convert("P", palette=Image.ADAPTIVE)),
    "png palette with transparency": lambda p: saved(p / "a.png", picture().convert("P"), transparency=3),
    "png grey": lambda p: saved(p / "a.png", picture("L")),
    "png 16-bit": lambda p: saved(p / "a.png", Image.fromarray(np.arange(851, dtype=np.uint16).reshape(23, 37) * 70)),
    "png interlaced": lambda p: saved(p / "a.png", picture(), interlace=1),
    "jpeg": lambda p: saved(p / "a.jpg", picture(size=(64, 48)), quality=90),
    "jpeg grey": lambda p: saved(p / "a.jpg", picture("L", size=(64, 48))),
    "jpeg 4:4:4": lambda p: saved(p / "a.jpg", picture(size=(64, 48)), subsampling=0),
    "jpeg cmyk": lambda p: saved(p / "a.jpg", picture("CMYK", size=(64, 48))),
}


@pytest.mark.parametrize("case", CASES)
def test_the_pixels_are_pillows(tmp_path, case):
    path = CASES[case](tmp_path)
    np.testing.assert_array_equal(np.asarray(decoders.load_image(path)), np.asarray(reference(path)))
    np.testing.assert_array_equal(np.asarray(decoders.load_image(path.read_bytes())), np.asarray(reference(path)))


def test_png_and_jpeg_go_to_the_fast_decoders(tmp_path):
    for case in ("png rgb", "png palette", "jpeg"):
        assert isinstance(decoders.decode_rgb(CASES[case](tmp_path)), np.ndarray), case


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_the_exif_orientation_is_applied_as_pillow_does(tmp_path, orientation, suffix):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = saved(tmp_path / f"turned.{suffix}", picture(size=(40, 24)), exif=exif.tobytes())
    assert decoders.exif_orientation(path.read_bytes()) == orientation
    np.testing.assert_array_equal(np.asarray(decoders.load_image(path)), np.asarray(reference(path)))


def error_of(load, source) -> str:
    with pytest.raises(ImageError) as caught:
        load(source)
    return str(caught.value)


@pytest.mark.parametrize("case", ["png rgb", "jpeg"])
def test_damaged_files_give_the_references_error(tmp_path, case):
    path = CASES[case](tmp_path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert error_of(decoders.load_image, path) == error_of(reference, path)
    assert str(path) in error_of(decoders.load_image, path)
    for data in (b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40):
        path.write_bytes(data)
        assert error_of(decoders.load_image, path) == error_of(reference, path)
    assert error_of(decoders.load_image, tmp_path / "missing.png") == error_of(reference, tmp_path / "missing.png")


@pytest.mark.parametrize("case", ["png rgb", "jpeg"])
def test_the_pixel_cap_is_checked_from_the_header(tmp_path, case, monkeypatch):
    path = CASES[case](tmp_path)
    monkeypatch.setenv("PADIM_MAX_MEGAPIXELS", "0.0005")  # 500 pixels
    monkeypatch.setattr("pyspng.load", lambda *a, **k: pytest.fail("decoded before the cap was checked"))
    monkeypatch.setattr("simplejpeg.decode_jpeg", lambda *a, **k: pytest.fail("decoded before the cap was checked"))
    with pytest.raises(ImageTooLargeError, match=str(path.name)):
        decoders.load_image(path)


def test_without_the_fast_decoders_pillow_decodes(tmp_path, monkeypatch):
    monkeypatch.setitem(decoders.ENABLED, "png", False)
    monkeypatch.setitem(decoders.ENABLED, "jpeg", False)
    path = CASES["png rgb"](tmp_path)
    assert isinstance(decoders.decode_rgb(path), Image.Image)
    buffer = io.BytesIO()
    picture().save(buffer, format="PNG")
    np.testing.assert_array_equal(np.asarray(decoders.load_image(buffer.getvalue())), np.asarray(picture()))
