"""Progress for a person watching: image counts with images/s and the time left, and long phases named.

:func:`progress` draws a tqdm bar on stderr when stderr is a terminal. Off a terminal (a log
file, a pipe, CI) a bar's carriage returns would be noise, so a job counting images
(``unit="img"``) prints one plain line at most every :data:`LOG_INTERVAL` seconds instead, and
other bars stay silent. :func:`phase` names a step that has no count (opening a model, listing a
large folder) on stderr once it has run for about a second, so no wait is ever silent for long.
``quiet`` switches all of it off.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: Seconds between progress lines when stderr is not a terminal.
LOG_INTERVAL = 10.0


def _interactive() -> bool:
    stderr = sys.stderr
    # sys.stderr is None under pythonw and may lack isatty() when replaced by a test harness.
    return stderr is not None and getattr(stderr, "isatty", lambda: False)()


def progress(
    iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it"
) -> Any:
    """Iterate over ``iterable`` (or call ``update(n)``), showing progress on stderr.

    Args:
        iterable: anything iterable; its items are passed through unchanged.
        total: number of items, when ``len(iterable)`` is not defined or not wanted.
        desc: a short label shown before the bar.
        quiet: show nothing.
        unit: what is counted; ``"img"`` for images: the bar shows images/s and the time left,
            and off a terminal a line is printed every :data:`LOG_INTERVAL` seconds.

    Returns:
        an iterable over the same items with ``update(n)``, ``set_description(text)``,
        ``write(text)`` and ``close()``.

    >>> list(progress(range(3), desc="demo", quiet=True))
    [0, 1, 2]
    """
    if not quiet and not _interactive() and unit == "img" and sys.stderr is not None:
        return _LogLines(iterable, total, desc)
    return tqdm(
        iterable, total=total, desc=desc or None, disable=quiet or not _interactive(), dynamic_ncols=True, unit=unit
    )


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class _LogLines:
    """Progress as plain lines for a log: ``predict: 1200/5000 images, 31.4 images/s, 2:01 left``."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str) -> None:
        self.iterable, self.desc, self.n = iterable, desc or "progress", 0
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= LOG_INTERVAL:
            self.last = now
            rate = self.n / max(now - self.start, 1e-9)
            line = f"{self.desc}: {self.n}" + ("" if self.total is None else f"/{self.total}")
            line += f" images, {rate:.1f} images/s"
            if self.total is not None and rate > 0:
                line += f", {_clock((self.total - self.n) / rate)} left"
            print(line, file=sys.stderr, flush=True)

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def phase(what: str, quiet: bool = False, after: float = 1.0) -> Iterator[None]:
    """Say ``padim: <what> ...`` on stderr if the block is still running after ``after`` seconds.

    Short steps stay silent; a long one (opening a ``.padim`` model imports torch and builds the
    onnxruntime graph: several seconds) is named while the user waits.

    >>> with phase("counting", quiet=True):
    ...     pass
    """
    if quiet or sys.stderr is None:
        yield
        return
    timer = threading.Timer(after, lambda: print(f"padim: {what} ...", file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
