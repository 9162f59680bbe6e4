"""Images to score, as the user names them: files, folders (recursively or not) and ``@list`` files.

:func:`image_samples` is what ``padim predict`` (and ``padim watch``'s list input) reads: each
argument an image file, a folder of images, or ``@FILE`` naming a text file of paths. The
labelled layouts (MVTec AD, plain folders) are :mod:`padim.io.datasets`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from padim.errors import DataError
from padim.io.datasets import Sample, images_in
from padim.io.images import IMAGE_SUFFIXES


def image_samples(inputs: str | os.PathLike | Sequence[str | os.PathLike], recursive: bool = False) -> list[Sample]:
    """Images to score: files as given, the images in each folder, the paths listed in ``@list`` files.

    Args:
        inputs: image files, folders, and ``@FILE`` arguments: a UTF-8 text file with one path
            per line (a file or a folder; blank lines and lines starting with ``#`` are
            skipped; relative paths are relative to the current folder, as on the command line).
        recursive: a folder also means the images in its subfolders (hidden ones skipped).

    Returns:
        samples in the order given, each folder's images sorted by path; a file given twice
        (by any spelling of its path) is kept once.

    Raises:
        DataError: naming an input that is neither an image file nor a folder of images, or a
            list file that is missing (with the list's line for a listed path).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    samples: list[Sample] = []
    seen: set[str] = set()
    for item, where in _expand_lists(inputs):
        path = Path(item)
        if path.is_dir():
            found = _images_below(path) if recursive else images_in(path)
            if not found:
                hint = "" if recursive or not _images_below(path) else "; its subfolders hold images: add --recursive"
                raise DataError(f"{where}{path}: expected image files ({', '.join(IMAGE_SUFFIXES)}), found none{hint}")
        elif path.is_file() or path.is_symlink():
            found = [path]
        else:
            raise DataError(f"{where}{path}: no such image file or folder")
        for image in found:
            key = os.path.abspath(image)
            if key not in seen:
                seen.add(key)
                samples.append(Sample(image, 0, "unknown"))
    if not samples:
        raise DataError("expected images, got an empty list")
    return samples


def _expand_lists(inputs: Sequence[str | os.PathLike]) -> list[tuple[str | os.PathLike, str]]:
    """(path, where it came from for messages): ``@FILE`` arguments replaced by the paths they list."""
    items: list[tuple[str | os.PathLike, str]] = []
    for item in inputs:
        text = os.fspath(item)
        if not (isinstance(text, str) and text.startswith("@")) or Path(text).exists():
            items.append((item, ""))
            continue
        listing = Path(text[1:])
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(
                f"{listing}: no such list file (an argument starting with @ names a list of paths)"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{listing}: cannot read the list of paths ({error})") from None
        items += [
            (line, f"{listing} line {n}: ")
            for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    return items


def _images_below(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its subfolders (hidden folders skipped), sorted by path."""
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(root) / name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)
