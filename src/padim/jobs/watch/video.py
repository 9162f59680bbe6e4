"""Frames from a video file, a camera or a stream, through OpenCV (the ``video`` extra).

A video file is read to its end, at the pace of the watcher (its frames wait: none is skipped), and
named by their time in the video (``clip.mp4@00:01:02.500``); a restart skips the frames that
already have rows. A camera (``0``) or a stream (``rtsp://``, ``http://``) is live: it is read
continuously so that each frame judged is a fresh one, frames are named by the time they were
taken (UTC: ``camera0@2025-01-31T12:00:00.123Z``), and a frame that finds the queue full is skipped
and counted (a camera cannot wait). ``fps`` samples at most that many frames per second (of
the video's time, or of the clock). A live source that drops is opened again, after 1, 2, 4 ...
up to :data:`RECONNECT_MAX` seconds, and says so; one that cannot be opened at start is an error.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from padim.errors import DataError
from padim.extras import require
from padim.jobs.watch.arrivals import Arrival, journal_key
from padim.jobs.watch.journal import Journal
from padim.jobs.watch.sources import Source

#: Longest pause, in seconds, between two attempts to open a live source again.
RECONNECT_MAX = 30.0
#: Seconds between two lines saying that frames are being skipped.
SKIP_REPORT_INTERVAL = 10.0


class VideoSource(Source):
    """The frames of a video file (``kind="video"``), a camera (``"camera"``) or a stream URL (``"stream"``).

    Args:
        spec: SOURCE as given: a file, a camera index, a URL.
        kind: from :func:`padim.jobs.watch.sources.source_kind`.
        journal: what was judged (a video file's frames with rows are skipped).
        fps: at most this many frames per second (None: every frame).
        say: prints one message line.

    Raises:
        MissingExtraError: without OpenCV (the ``video`` extra).
        DataError: when the source cannot be opened.
    """

    def __init__(self, spec: str, kind: str, journal: Journal, fps: float | None = None,
                 say: Callable[[str], None] = print) -> None:  # fmt: skip
        require("video", f"padim watch {shown(spec)}: reading a {kind}")
        import cv2

        super().__init__(say)
        self.cv2, self.spec, self.kind, self.journal, self.fps = cv2, spec, kind, journal, fps
        self.live = kind != "video"
        self.describe = (f"a {kind}" if self.live else "a video file") + ("" if fps is None else f", {fps:g} frames/s")
        self.label = f"camera{spec}" if kind == "camera" else shown(spec)
        self.folder = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(spec).name if kind == "video" else self.label).strip("_")
        self._capture = self._open()
        if self._capture is None:
            raise DataError(f"{self.label}: cannot open this {kind} (OpenCV: no frames)")
        self._last_skip_report = 0.0

    def _open(self):
        capture = self.cv2.VideoCapture(int(self.spec) if self.kind == "camera" else self.spec)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def _run(self) -> None:
        try:
            self._read_file() if self.kind == "video" else self._read_live()
        finally:
            if self._capture is not None:
                self._capture.release()
            self.finished.set()

    def _read_file(self) -> None:
        """Every frame (or ``fps`` of them per second of video), in order, waiting for room in the queue."""
        rate = self._capture.get(self.cv2.CAP_PROP_FPS) or 0.0
        index, next_time = -1, 0.0
        while not self._stopping.is_set() and self._capture.grab():
            index += 1
            seconds = index / rate if rate > 0 else self._capture.get(self.cv2.CAP_PROP_POS_MSEC) / 1000.0
            if self.fps is not None:
                if seconds + 1e-6 < next_time:
                    continue
                next_time = max(next_time + 1.0 / self.fps, seconds)
            hours, rest = divmod(seconds, 3600.0)
            stamp = f"{int(hours):02d}:{int(rest // 60):02d}:{rest % 60:06.3f}"
            name = f"{self.spec}@{stamp}"
            if self.journal.label(journal_key(name)) is not None:
                continue  # judged before a restart
            ok, frame = self._capture.retrieve()
            self.on_arrival()
            if ok and not self._put(Arrival(name, journal_key(name), frame=frame,
                                            overlay=f"{self.folder}/{stamp.replace(':', '-')}")):  # fmt: skip
                return

    def _read_live(self) -> None:
        """Fresh frames as the camera gives them; skipped (and counted) when the queue is full."""
        next_time, pause = 0.0, 1.0
        while not self._stopping.is_set():
            if self._capture is None or not self._capture.grab():
                if self._capture is not None:
                    self._capture.release()
                    self._capture = None
                    self.say(f"{self.label}: the stream dropped; opening it again")
                if self._stopping.wait(pause):
                    return
                self._capture = self._open()
                pause = 1.0 if self._capture is not None else min(2 * pause, RECONNECT_MAX)
                if self._capture is not None:
                    self.say(f"{self.label}: the stream is back")
                continue
            now = time.monotonic()
            if self.fps is not None:
                if now < next_time:
                    continue
                next_time = max(next_time + 1.0 / self.fps, now)
            taken = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            ok, frame = self._capture.retrieve()
            if not ok:
                continue
            name = f"{self.label}@{taken}"
            self.on_arrival()
            overlay = f"{self.folder}/{taken.replace(':', '-')}"
            if not self.queue.put(Arrival(name, journal_key(name), frame=frame, overlay=overlay), timeout=0):
                self._skip(now)

    def _skip(self, now: float) -> None:
        self.skipped += 1
        if now - self._last_skip_report >= SKIP_REPORT_INTERVAL:
            self._last_skip_report = now
            self.say(f"{self.label}: frames come faster than they are judged; skipping frames "
                     f"({self.skipped} skipped so far)")  # fmt: skip

    def stop(self) -> None:
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)


def shown(spec: str) -> str:
    """SOURCE for messages and names: a URL without its password.

    >>> shown("rtsp://admin:secret@10.0.0.5/stream1")
    'rtsp://admin@10.0.0.5/stream1'
    """
    parts = urlsplit(spec)
    if parts.password is None:
        return spec
    return spec.replace(f":{parts.password}@", "@", 1)
