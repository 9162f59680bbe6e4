"""Verdict messages kept on disk, in order, until every destination has taken them.

A spool is a folder of segment files (``<first seq>.jsonl``) and one cursor file per destination
(``mqtt.cursor``: the sequence number of the last message that destination acknowledged). Each
verdict is one line, ``{"seq": N, "row": CSV line, "message": {...}}``, appended in one write
(:class:`padim.io.files.LineAppender`), so a killed process leaves whole lines. Each destination reads
the lines after its own cursor (:class:`SpoolReader`) and moves the cursor (an atomic file write)
only once the message is acknowledged: a destination that is down keeps its place while messages
pile up on disk, not in memory, and receives them in order when it is back; a message may be sent
twice only if the process died between the acknowledgement and the cursor's write. Segments that
every destination has passed are deleted; the newest is always kept, so the last sequence number
and record survive a restart. The record also holds the image's CSV row: the spool is written
before ``predictions.csv``, so a row lost to a crash between the two is recovered from the spool
(:mod:`padim.jobs.watch.journal`) instead of the image being judged, and announced, twice.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from padim.errors import OutputError
from padim.io.files import LineAppender, write_text

#: Lines per segment file (about 0.5 MB): delivered segments are deleted whole.
SEGMENT_LINES = 1000


class Spool:
    """The on-disk queue of verdict messages shared by the destinations named in ``destinations``.

    Args:
        folder: the spool's folder (created if missing); one process at a time (the caller holds a lock).
        destinations: the destinations of this run (``"mqtt"``, ``"webhook"``). One seen for the
            first time starts after the last message already spooled (no replay of old verdicts).

    Attributes:
        last_seq: the sequence number of the last message appended (0: none ever).
        last_record: that message's record (``seq``, ``row``, ``message``), or None.

    Raises:
        OutputError: when the folder or a segment cannot be written.
    """

    def __init__(self, folder: str | Path, destinations: Sequence[str]) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"{self.folder}: cannot write the spool ({error.strerror or error})") from None
        self.changed = threading.Condition()
        self._segments = sorted(int(p.stem) for p in self.folder.glob("*.jsonl") if p.stem.isdigit())
        self.cursors = {p.stem: _read_cursor(p) for p in self.folder.glob("*.cursor")}
        self.last_record: dict[str, Any] | None = None
        self._lines, self._writer = 0, None
        if self._segments:
            self._writer = LineAppender(self._segment(self._segments[-1]), "", keep=True)  # cuts a torn line
            records = list(_records(self._segment(self._segments[-1])))
            self._lines, self.last_record = len(records), (records[-1] if records else None)
        self.last_seq = max([0, *self.cursors.values()] + ([self.last_record["seq"]] if self.last_record else []))
        self.destinations = tuple(destinations)
        for name in self.destinations:
            if name not in self.cursors:
                self._store_cursor(name, self.last_seq)
        for name, cursor in list(self.cursors.items()):  # a former destination with nothing left: forget it
            if name not in self.destinations and cursor >= self.last_seq:
                (self.folder / f"{name}.cursor").unlink(missing_ok=True)
                del self.cursors[name]

    def _segment(self, first: int) -> Path:
        return self.folder / f"{first:016d}.jsonl"

    def append(self, message: dict[str, Any], row: str) -> int:
        """Append one message (its ``seq`` added) with its CSV ``row``; returns its sequence number."""
        with self.changed:
            seq = self.last_seq + 1
            record = {"seq": seq, "row": row, "message": {**message, "seq": seq}}
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
            if self._writer is None or self._lines >= SEGMENT_LINES:
                if self._writer is not None:
                    self._writer.close()
                self._writer, self._lines = LineAppender(self._segment(seq), ""), 0
                self._segments.append(seq)
            self._writer.append(line)
            self.last_seq, self.last_record, self._lines = seq, record, self._lines + 1
            self.changed.notify_all()
        return seq

    def waiting(self, name: str) -> int:
        """Messages spooled and not yet acknowledged by destination ``name``."""
        with self.changed:
            return self.last_seq - self.cursors.get(name, self.last_seq)

    def stranded(self) -> dict[str, int]:
        """Messages waiting for destinations of an earlier run that this run does not deliver to."""
        return {n: self.last_seq - c for n, c in self.cursors.items() if n not in self.destinations}

    def reader(self, name: str) -> SpoolReader:
        """A reader of the messages after destination ``name``'s cursor."""
        return SpoolReader(self, name)

    def delivered(self, name: str, seq: int) -> None:
        """Move ``name``'s cursor to ``seq``; delete the segments every destination has passed."""
        self._store_cursor(name, seq)
        with self.changed:
            low = min(self.cursors.values())
            while len(self._segments) > 1 and self._segments[1] - 1 <= low:
                with contextlib.suppress(OSError):
                    self._segment(self._segments[0]).unlink()
                self._segments.pop(0)

    def segment_for(self, seq: int) -> Path | None:
        """The segment that holds message ``seq``, or would (the newest); None when there is none yet."""
        with self.changed:
            older = [first for first in self._segments if first <= seq]
            first = older[-1] if older else (self._segments[0] if self._segments else None)
        return None if first is None else self._segment(first)

    def segment_after(self, path: Path) -> Path | None:
        """The segment after ``path``, or None when ``path`` is the newest."""
        with self.changed:
            later = [first for first in self._segments if first > int(path.stem)]
        return self._segment(later[0]) if later else None

    def _store_cursor(self, name: str, seq: int) -> None:
        write_text(self.folder / f"{name}.cursor", f"{seq}\n")
        with self.changed:
            self.cursors[name] = seq

    def close(self) -> None:
        with self.changed:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


class SpoolReader:
    """One destination's place in a :class:`Spool`: :meth:`peek` the next message, :meth:`commit` it once acknowledged."""

    def __init__(self, spool: Spool, name: str) -> None:
        self.spool, self.name = spool, name
        self.cursor = spool.cursors[name]
        self._handle: Any = None
        self._path: Path | None = None
        self._next: tuple[int, bytes] | None = None

    def peek(self, timeout: float) -> tuple[int, bytes] | None:
        """(seq, message bytes) of the next message, the same until :meth:`commit`; None if none came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._next is None:
            self._next = self._read()
            if self._next is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with self.spool.changed:  # woken by the next append (a line half written: look again soon)
                self.spool.changed.wait(left if self.spool.last_seq <= self.cursor else min(left, 0.05))
        return self._next

    def commit(self, seq: int) -> None:
        """The message ``seq`` (the one :meth:`peek` gave) was acknowledged: move past it, on disk too."""
        self.cursor, self._next = seq, None
        self.spool.delivered(self.name, seq)

    def _read(self) -> tuple[int, bytes] | None:
        while True:
            if self._handle is None:
                self._path = self.spool.segment_for(self.cursor + 1)
                if self._path is None:
                    return None
                try:
                    self._handle = open(self._path, "rb")
                except FileNotFoundError:  # deleted meanwhile: look again
                    continue
            start = self._handle.tell()
            line = self._handle.readline()
            if not line.endswith(b"\n"):
                self._handle.seek(start)  # the end for now, or half a line being written
                later = self.spool.segment_after(self._path)
                if later is None:
                    return None
                line = self._handle.readline()  # a later segment exists: this one is complete, read to its end
                if not line.endswith(b"\n"):
                    self._handle.close()
                    self._path, self._handle = later, open(later, "rb")
                    continue
            record = json.loads(line)
            if record["seq"] > self.cursor:
                message = json.dumps(record["message"], ensure_ascii=False, separators=(",", ":"))
                return record["seq"], message.encode("utf-8")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _records(path: Path):
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                yield json.loads(line)


def _read_cursor(path: Path) -> int:
    text = path.read_text(encoding="utf-8").strip()
    if not text.isdigit():
        raise OutputError(f"{path}: a damaged spool cursor ({text[:20]!r}); remove it to resend nothing")
    return int(text)
