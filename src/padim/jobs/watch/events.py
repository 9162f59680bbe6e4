"""A folder's file events (watchdog) and its listing, for :class:`padim.jobs.watch.folder.FolderSource`.

:func:`observe` starts watchdog on a folder: on Linux the inotify observer that reports a file
moved in from elsewhere as a move (a rename into place: complete) rather than as a new file, else
the platform's own; polling every ``poll`` seconds when asked (network shares send no events), or
when events cannot be had (no inotify watches left). Every event goes, as it is, to ``put``: the
source sorts them out in its own thread. :func:`files_below` lists the folder for the scans.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def observe(root: Path, recursive: bool, poll: float | None, put: Callable[[Any], None],
            say: Callable[[str], None]) -> Any:  # fmt: skip
    """A started watchdog observer sending every event below ``root`` to ``put``; None if none could start."""
    from watchdog import events
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    handler = events.FileSystemEventHandler()
    handler.dispatch = put  # every event of these kinds (the kernel is not even asked for opens and reads)
    kinds = [events.FileCreatedEvent, events.FileModifiedEvent, events.FileMovedEvent, events.FileDeletedEvent,
             events.FileClosedEvent, events.DirCreatedEvent, events.DirMovedEvent, events.EventsLostEvent]  # fmt: skip
    for kind in ("polling",) if poll is not None else ("events", "polling"):
        try:
            observer = PollingObserver(timeout=poll or 1.0) if kind == "polling" else (_inotify() or Observer())
            observer.schedule(handler, str(root), recursive=recursive, event_filter=kinds)
            observer.start()
            return observer
        except OSError as error:  # no inotify watches left, an unreadable folder
            say(f"{root}: no file events ({error.strerror or error}); polling every {poll or 1.0:g} s instead")
    return None


def _inotify() -> Any:
    """watchdog's inotify observer that tells a file moved into the folder from a new one (Linux), or None."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:
        return None
    return InotifyObserver(generate_full_events=True)


def files_below(root: Path, recursive: bool, unreadable: set[str], say: Callable[[str], None]) -> list[str]:
    """The files in ``root`` (and its subfolders with ``recursive``, hidden ones skipped), sorted by name.

    A folder that cannot be read is named once (``unreadable`` remembers it) and skipped until it can be.
    """

    def failed(error: OSError) -> None:
        if error.filename not in unreadable:
            unreadable.add(error.filename)
            say(f"{error.filename}: cannot read this folder ({error.strerror}); its files wait until it can be read")

    found: list[str] = []
    for folder, folders, files in os.walk(root, onerror=failed):
        folders[:] = sorted(f for f in folders if not f.startswith(".")) if recursive else []
        found += [os.path.join(folder, name) for name in sorted(files)]
        unreadable.discard(folder)
    return found
