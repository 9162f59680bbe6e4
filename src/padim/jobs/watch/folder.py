"""A watched folder: each image file that arrives in it is judged once, as soon as it is complete.

File events come from watchdog (inotify on Linux, which tells a rename into place from a file being
written), or from polling the folder every ``poll`` seconds (``--poll``: network shares, where no
events come). A file counts as arrived:

- when it is renamed into place (``part.jpg.tmp`` to ``part.jpg``, or moved in from elsewhere): at once;
- when it was written in place: once its writer closes it (inotify), or once its size and time have
  not changed for ``settle`` seconds; and it decodes. If it does not decode yet it waits for its next
  change; a file unchanged and undecodable for :data:`GIVE_UP` x ``settle`` seconds gets an error row.

Hidden names (``.name``, and anything in a hidden folder) and names that are not images (``*.part``,
``*.tmp``) are ignored until renamed. The folder is scanned at start (files that arrived while the
watcher was down; those with rows are skipped, and moved if ``--move-to`` missed them) and every
:data:`RESCAN_SECONDS` (events lost by the kernel's queue, a folder unreadable for a while). Files
ready while the queue is full wait here, in arrival order: files are never dropped.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from padim.errors import ImageError
from padim.io.images import IMAGE_SUFFIXES
from padim.jobs.watch.arrivals import Arrival, file_signature, journal_key
from padim.jobs.watch.events import files_below, observe
from padim.jobs.watch.journal import Journal
from padim.jobs.watch.sources import Source, moved_judged_file
from padim.outputs.rows import Row

#: Seconds between scans of the whole folder (a safety net under the file events).
RESCAN_SECONDS = 30.0
#: A file unchanged and undecodable for this many times ``settle`` seconds gets an error row.
GIVE_UP = 10


@dataclass
class _Candidate:
    """A file seen and not judged yet: its last signature, when that last changed, and its state."""

    signature: tuple | None
    changed: float
    queued: bool = False
    failed: tuple | None = None  # the signature at which it last failed to decode
    renamed: bool = False  # renamed into place again while the file before was being judged


class FolderSource(Source):
    """The files arriving in ``root`` (and its subfolders with ``recursive``), each judged once.

    Args:
        root: the folder, as the user named it (rows name files below it the same way).
        journal: what was judged (rows of earlier runs are skipped).
        recursive: watch the subfolders too (hidden ones skipped).
        poll: poll every ``poll`` seconds instead of using file events (None: file events).
        settle: seconds a file written in place must stay unchanged before it counts as complete.
        exclude: folders never read (the output folder, ``--move-to``), when they are inside ``root``.
        move_to: ``--move-to DIR``, or None.
        say: prints one message line.
    """

    def __init__(self, root: Path, journal: Journal, *, recursive: bool = False, poll: float | None = None,
                 settle: float = 1.0, exclude: Sequence[Path] = (), move_to: Path | None = None,
                 say: Callable[[str], None] = print) -> None:  # fmt: skip
        super().__init__(say)
        self.root, self.journal, self.recursive, self.poll, self.settle = Path(root), journal, recursive, poll, settle
        self.move_to = move_to
        self.describe = "file events" if poll is None else f"polling every {poll:g} s"
        self._base = os.path.abspath(root)
        self._exclude = [os.path.abspath(p) + os.sep for p in exclude]
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._candidates: dict[str, _Candidate] = {}
        self._ready: collections.deque[Arrival] = collections.deque()
        self._unreadable: set[str] = set()
        self._observer, self._lost, self._scanned = None, False, False

    # ------------------------------------------------------------------ names

    def _relative(self, path: str) -> PurePath | None:
        """``path`` below the root if it is a file to judge: an image, not hidden, not excluded; else None."""
        full = os.path.abspath(path)
        if not full.startswith(self._base + os.sep) or any(full.startswith(e) for e in self._exclude):
            return None
        relative = PurePath(full[len(self._base) + 1 :])
        if relative.suffix.lower() not in IMAGE_SUFFIXES or any(p.startswith(".") for p in relative.parts):
            return None
        return relative if self.recursive or len(relative.parts) == 1 else None

    def _arrival(self, key: str, relative: PurePath, declared: bool) -> Arrival:
        name = self.root / relative
        return Arrival(str(name), key, path=name, overlay=relative.with_suffix("").as_posix(), suffix=relative.suffix,
                       declared=declared, relative=relative)  # fmt: skip

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        self._scan()
        tick = max(0.01, min(0.1, self.settle / 4))
        next_scan = time.monotonic() + (1.0 if self._lost else RESCAN_SECONDS)
        next_check = 0.0
        while not self._stopping.is_set():
            try:
                event = self._events.get(timeout=tick)
                for _ in range(10_000):
                    self._on_event(event)
                    event = self._events.get_nowait()
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= next_check:  # every tick, not after every event: a burst of files costs no more
                self._check(now)
                next_check = now + tick
            self._feed()
            if now >= next_scan:
                self._scan()
                next_scan = now + (1.0 if self._lost else RESCAN_SECONDS)

    def _on_event(self, event) -> None:
        kind = event.event_type
        if event.is_directory:
            if kind in ("created", "moved", "events_lost"):  # files inside a folder moved in, or lost events
                self._scan()
            return
        if kind == "events_lost":
            self._scan()
        elif kind == "moved":
            if event.src_path:  # empty: moved in from outside the folder
                self._forget(event.src_path)
            self._seen(event.dest_path, renamed=True)
        elif kind in ("created", "modified", "closed"):
            self._seen(event.src_path, attempt=kind == "closed")
        elif kind == "deleted":
            self._forget(event.src_path)

    def _seen(self, path: str, attempt: bool = False, renamed: bool = False) -> None:
        """A file event: note the file; renamed into place, or closed by its writer, it is tried at once."""
        relative = self._relative(path) if path else None
        if relative is None:
            return
        key, signature, now = journal_key(path), file_signature(path), time.monotonic()
        with self._lock:
            if signature is None or self.journal.signature(key) == signature:  # gone, or our own verdict's echo
                return
            candidate = self._candidates.get(key)
            if candidate is None:
                candidate = self._candidates[key] = _Candidate(signature, now)
            elif candidate.signature != signature:
                candidate.signature, candidate.changed = signature, now
            if candidate.queued:  # being judged: a file renamed over it is judged next, at once
                candidate.renamed = candidate.renamed or renamed
            elif (attempt or renamed) and signature[0] > 0:
                self._make_ready(key, relative, candidate, declared=renamed)

    def _forget(self, path: str) -> None:
        key = journal_key(path)
        with self._lock:
            candidate = self._candidates.get(key)
            if candidate is not None and not candidate.queued:
                del self._candidates[key]
        self.journal.forget(key)  # a file that comes back at this path is a new image

    def _make_ready(self, key: str, relative: PurePath, candidate: _Candidate, declared: bool) -> None:
        if candidate.failed is None:
            self.on_arrival()
        candidate.queued, candidate.renamed = True, False
        self._ready.append(self._arrival(key, relative, declared))

    def _check(self, now: float) -> None:
        """Files written in place: ready once unchanged for ``settle`` s; an error row if undecodable for long."""
        with self._lock:
            waiting = [(k, c) for k, c in self._candidates.items() if not c.queued]
        for key, candidate in waiting:
            signature = file_signature(key)
            with self._lock:
                if candidate.queued or self._candidates.get(key) is not candidate:
                    continue
                if signature is None:
                    del self._candidates[key]
                elif signature != candidate.signature:
                    candidate.signature, candidate.changed = signature, now
                elif now - candidate.changed >= self.settle and signature != candidate.failed:
                    self._make_ready(key, self._relative(key), candidate, declared=False)
                elif now - candidate.changed >= GIVE_UP * self.settle:  # a file that never completes
                    self._make_ready(key, self._relative(key), candidate, declared=True)

    def _feed(self) -> None:
        while self._ready and not self.queue.full():
            with self._lock:
                arrival = self._ready.popleft()
            if not self.queue.put(arrival, timeout=0):
                with self._lock:
                    self._ready.appendleft(arrival)
                return

    def _scan(self) -> None:
        """Every file below the root not judged and not known yet is tried; judged ones left behind are moved."""
        if not os.path.isdir(self.root):  # a share unmounted, a folder removed: wait for it, say so once
            if not self._lost:
                self._lost = True
                self.say(f"{self.root}: the folder is gone or cannot be read; waiting for it")
            return
        if self._lost or self._observer is None:
            if self._observer is not None:
                self._observer.stop()
            self._observer = observe(self.root, self.recursive, self.poll, self._events.put, self.say)
            if self._lost:
                self._lost = False
                self.say(f"{self.root}: the folder is back; watching it again")
        now, present = time.monotonic(), set()
        for path in files_below(self.root, self.recursive, self._unreadable, self.say):
            relative = self._relative(path)
            key = journal_key(path)
            present.add(key)
            with self._lock:
                if relative is None or key in self._candidates:
                    continue
            signature = file_signature(path)
            if self.journal.judged(key, signature):
                label = self.journal.label(key)
                if self.move_to is not None and moved_judged_file(Path(path), relative, label, self.move_to, self.say):
                    self.journal.forget(key)
                continue
            if signature is None or signature[0] == 0:
                continue
            with self._lock:
                if key not in self._candidates:
                    self._make_ready(key, relative, self._candidates.setdefault(key, _Candidate(signature, now)), False)
        if not self._scanned and not self._unreadable:  # rows of files gone need no memory: it follows the folder
            self._scanned = True
            self.journal.retain(present)

    # ------------------------------------------------------------------ the watcher's calls

    def backlog(self) -> tuple[int, float | None]:
        with self._lock:
            return len(self._ready), (self._ready[0].arrived if self._ready else None)

    def handed_back(self, arrival: Arrival, error: ImageError) -> bool:
        signature = file_signature(arrival.key)
        with self._lock:
            candidate = self._candidates.get(arrival.key)
            if signature is None:  # gone before it was judged: nothing to judge
                self._candidates.pop(arrival.key, None)
                self.say(f"{arrival.name}: gone before it was judged")
                return True
            if arrival.declared or candidate is None:
                self._candidates.pop(arrival.key, None)
                return False
            candidate.queued, candidate.failed = False, signature
            if signature != candidate.signature:
                candidate.signature, candidate.changed = signature, time.monotonic()
            return True

    def judged(self, arrival: Arrival, row: Row) -> None:
        with self._lock:
            candidate = self._candidates.pop(arrival.key, None)
            if candidate is not None and arrival.signature is not None and candidate.signature != arrival.signature:
                candidate.queued = False  # written again after it was read: a new image at the same path
                self._candidates[arrival.key] = candidate
                if candidate.renamed:
                    self._make_ready(arrival.key, arrival.relative, candidate, declared=True)
        if self.move_to is not None and arrival.path is not None:
            if moved_judged_file(arrival.path, arrival.relative, row.label, self.move_to, self.say):
                self.journal.forget(arrival.key)

    def stop(self) -> None:
        super().stop()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5.0)
