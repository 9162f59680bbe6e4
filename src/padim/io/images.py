"""Images: decoding any file Pillow reads into RGB, and pre-processing into a normalised batch.

One definition, NumPy and Pillow only (no torch import), so that a line PC running the
exported ONNX model pre-processes exactly as the Python model did. It follows anomalib's
PaDiM defaults: bilinear resize to ``image_size``, then ImageNet mean and standard
deviation. Every image mode Pillow opens is made 3-channel RGB first: grayscale, RGBA
(alpha dropped), palette, CMYK and 16-bit images.

Every file is checked against one pixel cap (:func:`max_pixels`, width x height from the header,
before anything is decoded): a decompression bomb (a small file whose header promises 50000x50000
pixels) or an over-size image is an :class:`ImageError` naming the file, in every command and the
service. The cap is :data:`DEFAULT_MAX_PIXELS` unless ``PADIM_MAX_MEGAPIXELS`` (or the commands'
``--max-megapixels``) says otherwise. EXIF orientation is applied, so a phone or camera picture
stored sideways is seen (and its mask read) the way it is shown.

Shapes: a batch is (N, 3, H, W) float32, channels first, as the backbones take it.
"""

from __future__ import annotations

import argparse
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from padim.errors import DataError, ImageError, ImageTooLargeError, OptionError
from padim.options import OPTIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PathLike = str | os.PathLike

#: The default pixel cap: 100 megapixels (a 10000x10000 image, 300 MB as RGB); line cameras of
#: 8000x8000 (64 Mpx) pass, a 12000x12000 header (144 Mpx) does not.
DEFAULT_MAX_PIXELS = 100_000_000
#: The environment variable that sets the cap, in megapixels (``--max-megapixels`` sets it).
ENV_MAX_MEGAPIXELS = "PADIM_MAX_MEGAPIXELS"


def max_pixels() -> int:
    """The pixel cap (width x height) every decoded image is checked against.

    ``PADIM_MAX_MEGAPIXELS`` (a number > 0, in millions of pixels) if set, else
    :data:`DEFAULT_MAX_PIXELS`. Read at each call, so a server's worker processes inherit it.

    Raises:
        OptionError: if the variable is not a finite number > 0.
    """
    text = os.environ.get(ENV_MAX_MEGAPIXELS)
    if not text:
        return DEFAULT_MAX_PIXELS
    option = OPTIONS["max_megapixels"]
    try:
        value = option.parse(text)
    except argparse.ArgumentTypeError:
        raise OptionError(f"{ENV_MAX_MEGAPIXELS} (--max-megapixels) must be {option.expected(none=False)}, "
                          f"got {text!r}") from None  # fmt: skip
    return max(1, int(value * 1_000_000))


def header_size(source: PathLike | bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header (a path or the file's bytes), without decoding; None if unreadable.

    The one header reading: the pixel cap (:func:`check_pixels` via :func:`header_pixels`), the
    decoding budget and the working-size rule all ask it. An unreadable file is None here; decoding
    it says why, in one line naming the file.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.size
    except Exception:
        return None


def header_pixels(source: PathLike | bytes) -> int:
    """Width x height from an image file's header (no decoding); 0 when it cannot be read."""
    size = header_size(source)
    return 0 if size is None else size[0] * size[1]


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled so that the longest side is at most ``max_side`` (aspect ratio kept; never enlarged).

    The one rule for every picture a person looks at: overlays, the report's pictures, the service's heatmap.

    >>> fit_within((4000, 3000), 1024), fit_within((300, 200), 1024)
    ((1024, 768), (300, 200))
    """
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return (width, height) if scale == 1.0 else (max(1, round(width * scale)), max(1, round(height * scale)))


def check_pixels(size: tuple[int, int], name: str, what: str = "image") -> None:
    """Raise an :class:`ImageTooLargeError` naming ``name`` if ``size`` (width, height) is over :func:`max_pixels`."""
    width, height = size
    cap = max_pixels()
    if width * height > cap:
        raise ImageTooLargeError(
            f"{name}: {what} of {width}x{height} pixels is over the cap of {cap / 1e6:g} megapixels "
            f"(a decompression bomb? --max-megapixels raises the cap)"
        )


def as_size(image_size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    """Return ``image_size`` as a (height, width) tuple of positive ints.

    Args:
        image_size: an int (square) or a sequence of two ints (height, width).
        name: the argument's name, for the error message.

    Raises:
        OptionError: if it is not one or two positive integers.

    >>> as_size(256), as_size([224, 320])
    ((256, 256), (224, 320))
    """
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    else:
        try:
            size = tuple(int(s) for s in image_size)
        except (TypeError, ValueError):
            raise OptionError(f"{name} must be an int or (height, width), got {image_size!r}") from None
        if len(size) != 2:
            raise OptionError(f"{name} must be an int or (height, width), got {image_size!r}")
    if min(size) < 1:
        raise OptionError(f"{name} must be positive, got {image_size!r}")
    return size


def to_rgb(image: Image.Image) -> Image.Image:
    """Make any Pillow image 3-channel 8-bit RGB.

    16-bit and 32-bit integer images are scaled by their type's range (not clipped, which is
    what ``Image.convert("RGB")`` would do); float images are taken to lie in [0, 1].
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode(source: PathLike | bytes, what: str = "image") -> Image.Image:
    """Open and fully decode an image file (or bytes), in its own mode.

    Args:
        source: a path or the file's bytes.
        what: the word for the file in error messages ("image", "mask").

    Raises:
        ImageError: naming the file, when it is missing, not an image, truncated or corrupt.
    """
    name = f"uploaded {what}" if isinstance(source, bytes) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        with handle, Image.open(handle) as image:
            check_pixels(image.size, name, what)  # from the header, before a byte is decoded
            image.load()  # decode now: a truncated file fails here, not later in a worker
            return ImageOps.exif_transpose(image) if _rotated(image) else image
    except (ImageError, OptionError):
        raise
    except Image.DecompressionBombError as error:  # Pillow's own limit, at open, when ours is set higher
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        count = f" of {int(pixels.group(1)) / 1e6:g} megapixels" if pixels else ""
        raise ImageTooLargeError(
            f"{name}: {what}{count} is over the cap of {max_pixels() / 1e6:g} megapixels (a decompression bomb?)"
        ) from None
    except FileNotFoundError:
        raise ImageError(f"{name}: {what} file not found") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: a folder, not an {what} file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: corrupt or truncated {what} ({error})") from None


def _rotated(image: Image.Image) -> bool:
    """Whether the image's EXIF orientation asks for a turn or a flip (tag 0x0112 not 1)."""
    try:
        return image.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # a damaged EXIF block: show the pixels as stored
        return False


def load_image(source: PathLike | bytes | Image.Image) -> Image.Image:
    """Decode an image file (or bytes) fully and return it as RGB.

    Raises:
        ImageError: naming the file, when it is missing, not an image, truncated or corrupt.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    return to_rgb(decode(source))


def preprocess(images: Image.Image | Iterable[Image.Image], image_size: int | Sequence[int]) -> np.ndarray:
    """Resize (bilinear) and normalise images into a batch.

    Args:
        images: one RGB image or an iterable of them (other modes are converted).
        image_size: int or (height, width).

    Returns:
        float32 array of shape (N, 3, H, W), normalised with ImageNet mean and std.

    >>> batch = preprocess(Image.new("L", (40, 30), 128), 16)
    >>> batch.shape, batch.dtype.name
    ((1, 3, 16, 16), 'float32')
    """
    arrays = [resized_rgb(image, image_size) for image in ([images] if isinstance(images, Image.Image) else images)]
    if not arrays:
        raise ValueError("preprocess needs at least one image, got none")
    return normalize(np.stack(arrays))


def resized_rgb(image: Image.Image, image_size: int | Sequence[int]) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` as RGB resized (bilinear) to ``image_size``; :func:`preprocess` normalises these."""
    height, width = as_size(image_size)
    return np.asarray(to_rgb(image).resize((width, height), Image.BILINEAR))


def normalize(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB (:func:`resized_rgb`) -> (N, 3, H, W) float32 normalised with ImageNet mean and std."""
    batch = pixels.astype(np.float32) / np.float32(255.0)
    batch = (batch - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def load_mask(path: PathLike, image_size: int | Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a mask of any mode (1, L, P, RGB, RGBA, 16-bit), binarise it and resize it.

    Any non-zero pixel is defective; the colour channels count and alpha is ignored. The
    mask is binarised before the nearest-neighbour resize, so no value is lost to scaling.

    Args:
        path: the mask file.
        image_size: int or (height, width) to resize to.

    Returns:
        (uint8 array (H, W) of 0 and 1, the file's own (width, height)).

    Raises:
        ImageError: naming the file, when it cannot be decoded.
    """
    height, width = as_size(image_size)
    image = decode(path, "mask")
    if image.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "RGB", "RGBA"):
        # Palette indices and CMYK say nothing about darkness until converted.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    pixels, original_size = np.asarray(image), image.size
    if pixels.ndim == 3:
        pixels = pixels[..., : 3 if pixels.shape[-1] >= 3 else 1]  # drop alpha
        pixels = pixels.max(axis=-1)
    binary = Image.fromarray((pixels > 0).astype(np.uint8))
    if binary.size != (width, height):
        binary = binary.resize((width, height), Image.NEAREST)
    return np.array(binary, dtype=np.uint8), original_size


def denormalize(batch: np.ndarray) -> np.ndarray:
    """Invert :func:`preprocess`'s normalisation: (N, 3, H, W) float -> (N, H, W, 3) uint8."""
    images = batch.transpose(0, 2, 3, 1) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(images * 255.0 + 0.5, 0, 255).astype(np.uint8)


def list_images(folder: PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name.

    Raises:
        DataError: if the folder is missing or holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of images, but it does not exist")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"{folder}: expected image files ({', '.join(IMAGE_SUFFIXES)}), found none")
    return paths
