"""What the sources hand the watcher: :class:`Arrival` records in a bounded :class:`ArrivalQueue`.

An arrival is one image to judge: a file (a path) or a video frame (its pixels), with the name its
CSV row and message carry, when it arrived, and whether it was declared complete (renamed into
place, listed on standard input, a frame: a failed decode is an error row at once) or merely
found (written in place: a failed decode hands it back to its source to wait for the rest). The
queue is bounded (``--queue-size``): files wait in their source when it is full (they are never
dropped), frames of a live camera are skipped. It also keeps, for the status line, every arrival
taken until its row is written, so the watcher's lag (the age of the oldest image not yet judged)
is known at any time.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padim.outputs.verdict_log import utc_now


@dataclass
class Arrival:
    """One image to judge.

    Attributes:
        name: its name in the CSV row and the message (a path as the source spells it, or ``SOURCE@TIME`` for a frame).
        key: the journal's key for it (:func:`journal_key`).
        path: the file to decode, or None for a frame.
        frame: a frame's pixels (H, W, 3) uint8 BGR, as OpenCV gives them, or None for a file.
        overlay: the overlay picture's name below ``overlays/``, without suffix (POSIX); ``suffix``: the image's own.
        declared: complete by declaration: a failed decode gives an error row at once.
        relative: where a moved file goes below ``--move-to DIR/<label>/``.
        arrived: when it arrived (time.monotonic()); arrived_utc: the same, as ISO 8601 UTC.
        signature: the file's (size, mtime_ns, inode) just after it was decoded (set by the watcher).
    """

    name: str
    key: str
    path: Path | None = None
    frame: Any = None
    overlay: str = ""
    suffix: str = ""
    declared: bool = True
    relative: Path | None = None
    arrived: float = field(default_factory=time.monotonic)
    arrived_utc: str = field(default_factory=utc_now)
    signature: tuple | None = None


def journal_key(name: str | os.PathLike) -> str:
    """The journal's key of an image name: its absolute path, so ``./in/x.png`` and ``in/x.png`` are one file."""
    return os.path.abspath(os.fspath(name))


def file_signature(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of a file, or None if it is not there (or not a regular file)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino) if os.path.isfile(path) else None


class ArrivalQueue:
    """A bounded FIFO of arrivals, and the arrivals taken from it whose rows are not written yet.

    Args:
        maxsize: how many arrivals it holds (>= 1).
    """

    def __init__(self, maxsize: int) -> None:
        self._queue: queue.Queue[Arrival] = queue.Queue(maxsize)
        self._open: dict[int, float] = {}  # id(arrival) -> arrived, in arrival order: queued or being judged
        self._lock = threading.Lock()
        self.arrived = 0

    def put(self, arrival: Arrival, timeout: float | None = None) -> bool:
        """Queue ``arrival``; False if the queue stayed full for ``timeout`` seconds (0: do not wait)."""
        try:
            if timeout == 0:
                self._queue.put_nowait(arrival)
            else:
                self._queue.put(arrival, timeout=timeout)
        except queue.Full:
            return False
        with self._lock:
            self._open[id(arrival)] = arrival.arrived
            self.arrived += 1
        return True

    def get(self, timeout: float | None = None) -> Arrival:
        """The next arrival (raises ``queue.Empty`` after ``timeout``; 0: do not wait)."""
        return self._queue.get_nowait() if timeout == 0 else self._queue.get(timeout=timeout)

    def full(self) -> bool:
        return self._queue.full()

    def qsize(self) -> int:
        return self._queue.qsize()

    def done(self, arrival: Arrival) -> None:
        """``arrival`` has its row, or went back to its source: it no longer counts as waiting."""
        with self._lock:
            self._open.pop(id(arrival), None)

    def waiting(self) -> tuple[int, float | None]:
        """(arrivals queued or being judged, when the oldest of them arrived, or None)."""
        with self._lock:
            return len(self._open), next(iter(self._open.values()), None)
