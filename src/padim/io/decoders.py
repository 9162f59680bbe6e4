"""The fastest well-kept decoder per format: libspng for 8-bit PNG, libjpeg-turbo (simplejpeg) for JPEG, Pillow for the rest.

:func:`load_image` gives the pixels :func:`padim.io.images.load_image` gives (Pillow, the reference:
the tests compare the two), faster: on a 900x900 bottle PNG pyspng decodes in 13 ms against
Pillow's 19 ms, simplejpeg a 12-megapixel JPEG 3.4 times as fast as Pillow
(``benchmarks/results/speed_research.md``). What the reference promises is kept: the pixel cap is
checked from the header before a byte is decoded (:func:`png_header`, simplejpeg's header reader),
the EXIF orientation is applied (:func:`exif_orientation` reads it from the header, :func:`orient`
turns the pixels), and a file either fast decoder cannot read (a truncated or corrupt file, CMYK,
16-bit or grey PNG) goes to Pillow, which decodes it as before or raises the same
:class:`padim.errors.ImageError` naming the file. pyspng and simplejpeg are small wheels (1.5 MB
together); without them everything goes to Pillow.
"""

from __future__ import annotations

import importlib.util
import os
import struct

import numpy as np
from PIL import Image

from padim.errors import ImageError
from padim.io.images import check_pixels
from padim.io.images import load_image as pillow_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
#: The fast decoders in use (set to False to decode everything with Pillow, as the benchmarks compare).
ENABLED = {"png": importlib.util.find_spec("pyspng") is not None,
           "jpeg": importlib.util.find_spec("simplejpeg") is not None}  # fmt: skip


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, or None if it is not one.

    >>> png_header(PNG_MAGIC + b"\\x00\\x00\\x00\\rIHDR" + struct.pack(">IIBB", 900, 600, 8, 2) + b"\\x00" * 7)
    (900, 600, 8, 2)
    """
    if len(data) < 33 or data[:8] != PNG_MAGIC or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 when absent or damaged."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", tiff[4:8])[0]
    if offset + 2 > len(tiff):
        return 1
    for k in range(struct.unpack(order + "H", tiff[offset : offset + 2])[0]):
        at = offset + 2 + 12 * k
        if at + 12 > len(tiff):
            return 1
        tag, kind = struct.unpack(order + "HH", tiff[at : at + 4])
        if tag == 0x0112 and kind == 3:  # SHORT
            value = struct.unpack(order + "H", tiff[at + 8 : at + 10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def exif_orientation(data: bytes) -> int:
    """EXIF orientation (1..8) of a JPEG (APP1 ``Exif``) or PNG (``eXIf`` before the image data), from the header; 1 if none."""
    if data[:3] == JPEG_MAGIC:
        i = 2
        while i + 4 <= len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            if marker == 0xDA:  # start of scan: no EXIF comes after it
                break
            if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
                return _tiff_orientation(data[i + 10 : i + 2 + length])
            i += 2 + length
    elif data[:8] == PNG_MAGIC:
        i = 8
        while i + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[i : i + 8])
            if kind == b"eXIf":
                return _tiff_orientation(data[i + 8 : i + 8 + length])
            if kind == b"IDAT":
                break
            i += 12 + length
    return 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to (H, W[, C]) pixels, as Pillow's ``ImageOps.exif_transpose`` (views).

    >>> orient(np.arange(6).reshape(2, 3), 6).tolist()  # turned 90 degrees clockwise to be shown
    [[3, 0], [4, 1], [5, 2]]
    """
    turns = {2: lambda p: p[:, ::-1], 3: lambda p: p[::-1, ::-1], 4: lambda p: p[::-1],
             5: lambda p: p.swapaxes(0, 1), 6: lambda p: np.rot90(p, -1), 7: lambda p: p[::-1, ::-1].swapaxes(0, 1),
             8: lambda p: np.rot90(p, 1)}  # fmt: skip
    return turns[orientation](pixels) if orientation in turns else pixels


def _png(data: bytes, name: str) -> np.ndarray | None:
    """8-bit RGB, RGBA or palette PNG with pyspng (alpha dropped, as Pillow's RGB); None for other kinds."""
    import pyspng

    header = png_header(data)
    if header is None or header[2] != 8 or header[3] not in (2, 3, 6):  # grey and 16-bit: Pillow is as fast
        return None
    check_pixels(header[:2], name)
    try:
        return pyspng.load(data, format="RGB")
    except Exception:  # truncated or corrupt: Pillow decodes it or says why, as before
        return None


def _jpeg(data: bytes, name: str) -> np.ndarray | None:
    """A JPEG with libjpeg-turbo (strict: a truncated file is not turned into grey rows); None for CMYK."""
    import simplejpeg

    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:  # not a JPEG simplejpeg reads (arithmetic coding, damaged header): Pillow
        return None
    check_pixels((width, height), name)
    if colourspace == "CMYK":  # Pillow inverts Adobe CMYK itself
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except Exception:
        return None


def decode_rgb(source: str | os.PathLike | bytes) -> np.ndarray | Image.Image:
    """An image file (or its bytes) decoded fully as RGB: (H, W, 3) uint8 pixels where a fast decoder read
    it, else Pillow's RGB image (:func:`padim.io.images.load_image`, the reference), with the same pixels.

    Raises:
        ImageError: naming the file, when it is missing, not an image, over the pixel cap, truncated or corrupt.
    """
    if not (ENABLED["png"] or ENABLED["jpeg"]):
        return pillow_image(source)
    name = "uploaded image" if isinstance(source, bytes) else str(source)
    data = source
    if not isinstance(source, bytes):
        try:
            with open(source, "rb") as handle:
                data = handle.read()
        except OSError:
            return pillow_image(source)  # missing, a folder, no permission: the reference's words
    kind = "png" if data[:8] == PNG_MAGIC else "jpeg" if data[:3] == JPEG_MAGIC else None
    pixels = None if kind is None or not ENABLED[kind] else (_png if kind == "png" else _jpeg)(data, name)
    if pixels is None:
        try:
            return pillow_image(data)
        except ImageError as error:  # the reference names an upload: name the file
            raise type(error)(str(error).replace("uploaded image", name, 1)) from None
    orientation = exif_orientation(data)
    return pixels if orientation == 1 else np.ascontiguousarray(orient(pixels, orientation))


def load_image(source: str | os.PathLike | bytes | Image.Image) -> Image.Image:
    """:func:`decode_rgb` as a PIL image: :func:`padim.io.images.load_image`'s pixels, faster.

    Raises:
        ImageError: as :func:`decode_rgb`.
    """
    if isinstance(source, Image.Image):
        return pillow_image(source)
    found = decode_rgb(source)
    return Image.fromarray(found) if isinstance(found, np.ndarray) else found
