"""Progress bars that appear only for a person watching a terminal.

A thin wrapper over tqdm: the bar is drawn on stderr when stderr is a terminal, and is
switched off when ``quiet`` is set or when stderr goes to a file, a pipe or a CI log, so
that those stay free of carriage-return noise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it"
) -> Iterable[T]:
    """Iterate over ``iterable``, drawing a progress bar on an interactive stderr.

    Args:
        iterable: anything iterable; its items are passed through unchanged.
        total: number of items, when ``len(iterable)`` is not defined or not wanted.
        desc: a short label shown before the bar.
        quiet: never draw a bar.
        unit: what is counted (``"img"`` for images: the bar then shows images/s and the ETA).

    Returns:
        an iterable over the same items (a tqdm object; with no iterable, call ``update(n)``).

    >>> list(progress(range(3), desc="demo", quiet=True))
    [0, 1, 2]
    """
    stderr = sys.stderr
    # sys.stderr is None under pythonw and may lack isatty() when replaced by a test harness.
    interactive = stderr is not None and getattr(stderr, "isatty", lambda: False)()
    disable = quiet or not interactive
    return tqdm(iterable, total=total, desc=desc or None, disable=disable, dynamic_ncols=True, unit=unit)
