"""Where images come from: ``padim watch``'s SOURCE argument, and the standard-input source.

:func:`source_kind` reads SOURCE: ``-`` (paths on standard input, one per line), a folder
(:mod:`padim.jobs.watch.folder`), a video file, a camera index or a stream URL
(:mod:`padim.jobs.watch.video`). Every source offers the same small interface to the watcher
(:class:`Source`): it puts :class:`padim.jobs.watch.arrivals.Arrival` records into the queue from a
thread of its own, says when it has given everything (a finite source), and hears back when an image
could not be decoded (:meth:`Source.handed_back`) and when its row is written (:meth:`Source.judged`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import IO, Any
from urllib.parse import urlsplit

from padim.errors import DataError, ImageError, OutputError
from padim.io.images import IMAGE_SUFFIXES
from padim.jobs.watch.arrivals import Arrival, ArrivalQueue, file_signature, journal_key
from padim.jobs.watch.journal import MOVE_FOLDERS, Journal, move_into
from padim.outputs.rows import Row

#: Files read as video (through OpenCV).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mjpeg",
                  ".mjpg", ".h264", ".h265")  # fmt: skip
#: URL schemes read as a live stream (through OpenCV's FFmpeg).
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


def source_kind(source: str) -> str:
    """What SOURCE names: ``stdin``, ``folder``, ``video`` (a file), ``camera`` (an index) or ``stream`` (a URL).

    Raises:
        DataError: naming SOURCE, when it is none of them.

    >>> source_kind("-"), source_kind("0"), source_kind("rtsp://10.0.0.5/stream1")
    ('stdin', 'camera', 'stream')
    """
    if source == "-":
        return "stdin"
    if source.isdigit():
        return "camera"
    if urlsplit(source).scheme.lower() in STREAM_SCHEMES:
        return "stream"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(f"{source}: one image; padim watch watches a folder, a video, a camera or a stream "
                        "(padim predict judges image files)")  # fmt: skip
    if path.is_file():
        raise DataError(f"{source}: not a video file ({', '.join(VIDEO_SUFFIXES)}) nor a folder")
    raise DataError(f"{source}: no such folder or video file (a camera is a number, a stream a URL, '-' reads paths "
                    "from standard input)")  # fmt: skip


class Source:
    """The interface every source offers the watcher; a source that is not finite never sets ``finished``.

    Attributes:
        live: frames that cannot wait (a camera, a stream): skipped when the queue is full.
        finished: set once a finite source has queued everything (standard input at its end, a video file).
        skipped: frames skipped so far.
    """

    live = False
    describe = ""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.finished = threading.Event()
        self.skipped = 0
        self.on_arrival: Callable[[], None] = lambda: None  # counts arrivals (the status line's rate in)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, queue: ArrivalQueue) -> None:
        """Start queuing arrivals from a thread of its own."""
        self.queue = queue
        self._thread = threading.Thread(target=self._run, name=f"padim-{type(self).__name__}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def _put(self, arrival: Arrival) -> bool:
        """Queue ``arrival``, waiting while the queue is full (files wait); False once stopping."""
        while not self._stopping.is_set():
            if self.queue.put(arrival, timeout=0.2):
                return True
        return False

    def backlog(self) -> tuple[int, float | None]:
        """(arrivals ready but not queued yet, when the oldest arrived): files held while the queue is full."""
        return 0, None

    def handed_back(self, arrival: Arrival, error: ImageError) -> bool:
        """``arrival`` did not decode: True if the source takes it back (no row now), False for an error row."""
        return False

    def judged(self, arrival: Arrival, row: Row) -> None:
        """``arrival``'s row is written."""

    def stop(self) -> None:
        """Stop queuing (what is queued stays queued)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


def moved_judged_file(path: Path, relative: PurePath, label: str, move_to: Path, say: Callable[[str], None]) -> bool:
    """Move a judged file below ``move_to/<label folder>/``; say so on failure (the watcher goes on)."""
    try:
        move_into(path, move_to / MOVE_FOLDERS.get(label, "error") / relative.parent)
    except OutputError as error:
        say(str(error))
        return False
    return True


class StdinSource(Source):
    """Paths read from a stream (standard input), one per line, each judged once (blank and ``#`` lines skipped).

    A path whose row is already in the journal is skipped (with a line saying so), so that a
    producer may send its whole list again after a restart; with ``move_to`` such a file, if it is
    still there, is moved then. The source is finished at the end of the stream.
    """

    describe = "paths on standard input"

    def __init__(self, stream: IO[str], journal: Journal, move_to: Path | None, say: Callable[[str], None]) -> None:
        super().__init__(say)
        self.stream, self.journal, self.move_to = stream, journal, move_to
        self._taken: set[str] = set()  # listed in this run (judged, or being judged)

    def _run(self) -> None:
        try:
            for line in self.stream:
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                if not self._put(self._arrival(text)) and self._stopping.is_set():
                    return
        finally:
            self.finished.set()

    def _arrival(self, text: str) -> Any:
        path = Path(text)
        key = journal_key(path)
        if key in self._taken:
            self.say(f"{text}: listed twice; judged once")
            return None
        label = self.journal.label(key)
        if self.journal.judged(key, file_signature(path)):
            moved = self.move_to is not None and path.is_file()
            if moved and moved_judged_file(path, PurePath(path.name), label, self.move_to, self.say):
                self.say(f"{text}: judged already ({label}, in predictions.csv); moved now")
            else:
                self.say(f"{text}: judged already ({label}, in predictions.csv); skipped")
            return None
        parts = [p for p in PurePath(os.path.normpath(text)).parts if p not in ("..", path.anchor)]  # inside overlays/
        overlay = PurePath(*parts).with_suffix("").as_posix()
        self._taken.add(key)
        self.on_arrival()
        return Arrival(text, key, path=path, overlay=overlay, suffix=path.suffix, relative=PurePath(path.name))

    def _put(self, arrival: Arrival | None) -> bool:
        return True if arrival is None else super()._put(arrival)

    def stop(self) -> None:
        self._stopping.set()  # a read of the stream cannot be interrupted: its thread is left to end with the process

    def judged(self, arrival: Arrival, row: Row) -> None:
        if self.move_to is not None and arrival.path is not None and arrival.path.is_file():
            if moved_judged_file(arrival.path, arrival.relative, row.label, self.move_to, self.say):
                self.journal.forget(arrival.key)
