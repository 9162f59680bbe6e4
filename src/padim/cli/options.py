"""The command line's options: value types with their ranges, and output checks made before any work.

Each type turns a string into a value or raises ``argparse.ArgumentTypeError`` naming what was
expected, so a bad value is one line naming the option (argparse adds it). Output paths are
checked before a job starts, so a long fit never ends with "cannot write".
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from padim.errors import OutputError

# --- argument types ---------------------------------------------------------------------------


def _number(kind: type, low: float, high: float | None = None, *, low_open: bool = False, expected: str):
    """An argparse type: ``kind(text)`` within [low, high) (or (low, high] with ``low_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (
            value is None
            or value != value  # NaN
            or value < low
            or (low_open and value == low)
            or (high is not None and (value > high or (not low_open and value == high)))
        ):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_fraction = _number(float, 0.0, 1.0, expected="a number in [0, 1)")
_quantile = _number(float, 0.0, 1.0, low_open=True, expected="a number in (0, 1]")
#: Upper bounds of the numeric options: far beyond any real use, so a typo is refused, not run.
MAX_BATCH, MAX_WORKERS, MAX_MB, MAX_SIDE, MAX_COUNT = 4096, 256, 10240, 16384, 10**7
_batch = _number(int, 1, MAX_BATCH + 1, expected=f"an integer in 1..{MAX_BATCH}")
_workers = _number(int, 0, MAX_WORKERS + 1, expected=f"an integer in 0..{MAX_WORKERS}")
_server_workers = _number(int, 1, MAX_WORKERS + 1, expected=f"an integer in 1..{MAX_WORKERS}")
_features = _number(int, 1, 8193, expected="an integer in 1..8192")
_seed = _number(int, 0, 2**63, expected="an integer in [0, 2**63)")
_port = _number(int, 1, 65536, expected="a port in 1..65535")
_count = _number(int, 0, MAX_COUNT + 1, expected=f"an integer in 0..{MAX_COUNT}")
_positive_count = _number(int, 1, MAX_COUNT + 1, expected=f"an integer in 1..{MAX_COUNT}")
_megabytes = _number(float, 0.0, MAX_MB, low_open=True, expected=f"a size in MB in (0, {MAX_MB}]")
_megapixels = _number(float, 0.0, 1e6, low_open=True, expected="a number of megapixels in (0, 1e6)")
_positive = _megabytes


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _image_size(text: str) -> int | tuple[int, int]:
    """``"256"`` -> 256 (the short side); ``"256x512"`` -> (256, 512) (height, width)."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH in pixels, got {text!r}") from None
    if len(size) not in (1, 2) or min(size) < 1 or max(size) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH in 1..{MAX_SIDE} pixels, got {text!r}")
    return size[0] if len(size) == 1 else size


def max_megapixels_option(p: argparse.ArgumentParser) -> None:
    """``--max-megapixels``: the pixel cap of :func:`padim.io.images.max_pixels` (main() sets it)."""
    p.add_argument(
        "--max-megapixels",
        type=_megapixels,
        default=None,
        metavar="MP",
        help="refuse images with more pixels than this, read from their header before decoding "
        "(default: 100, or $PADIM_MAX_MEGAPIXELS)",
    )


# --- output checks, made before any work ----------------------------------------------------------


def _writable_folder(path: Path, option: str) -> None:
    """The nearest existing folder at or above ``path`` must be a folder this process may write in."""
    ancestor = path
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: permission denied (cannot write in {ancestor})")


def check_output_file(path: Path | None, option: str = "-o") -> None:
    """Refuse an output file path that is a folder, a device, a pipe or a link, or in a folder not writable."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; expected a file name")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputError(f"{option} {path}: not a regular file; padim replaces only regular files")
    _writable_folder(path.parent, option)


def check_output_folder(path: Path | None, option: str = "-o") -> None:
    """Refuse an output folder path that is an existing file, or under a folder that is not writable."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder")
    _writable_folder(path, option)


def _ray_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help=f"{what}. ADDRESS: a cluster (ray://HOST:10001, HOST:6379 or auto); without it RAY_ADDRESS, "
        "else a local cluster on this machine. Needs pip install 'padim-toolkit[ray]'",
    )
