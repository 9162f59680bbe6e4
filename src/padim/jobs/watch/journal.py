"""What was judged, kept so that a restart judges every file exactly once: ``predictions.csv`` itself.

The rows are the journal: an image is judged when its row is in ``OUTDIR/predictions.csv``. A
restart reads them back (:class:`Journal`) and the sources skip what they list; the file a killed
run was judging has no row and is judged again. Beside the rows, ``OUTDIR/.watch/files.jsonl``
keeps each judged file's size, time and inode, so that a new file given the name of a judged one
(while the watcher was down) is told from it and judged; a file without that record counts as judged. With ``--webhook`` or ``--mqtt`` each verdict is
first appended to the spool (:mod:`padim.outputs.spool`, the message and its CSV row) and then to
the CSV; a run killed between the two left a message without a row, and the restart appends that row
from the spool instead of judging the image again, so no message is sent twice for it. Rows are
appended whole (:class:`padim.io.files.LineAppender`, keeping the file: a torn last line is cut off).

:func:`move_into` is ``--move-to``: a judged file moved below ``DIR/good/``, ``DIR/anomalous/`` or
``DIR/error/``, never over a file already there. A run killed between a row and its move leaves the
file in place; the restart, finding a judged file still there, moves it then.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from padim.errors import OutputError
from padim.io.files import LineAppender
from padim.jobs.watch.arrivals import journal_key
from padim.outputs.rows import CSV_COLUMNS, Row
from padim.outputs.spool import Spool

#: ``--move-to`` folders by label: a good part, a flagged one, one without a verdict.
MOVE_FOLDERS = {"normal": "good", "anomalous": "anomalous", "error": "error"}


class Journal:
    """``predictions.csv``, kept and appended to; what it lists is judged.

    Args:
        output: the output folder.
        spool: the spool written before each row (None without destinations).

    Attributes:
        recovered: rows appended from the spool at start (a run killed between message and row).
        overlays: overlay names the rows use (never reused for another image).

    Raises:
        OutputError: when the CSV cannot be written or starts with other columns.
    """

    def __init__(self, output: Path, spool: Spool | None) -> None:
        self.path, self.spool = Path(output) / "predictions.csv", spool
        self.lines = LineAppender(self.path, ",".join(CSV_COLUMNS) + "\n", keep=True)
        self._labels: dict[str, str] = {}
        self._signatures: dict[str, tuple] = {}
        self._lock = threading.Lock()  # the writer thread adds labels, the source's thread reads and drops them
        self.overlays: set[str] = set()
        record = None if spool is None else spool.last_record
        missing = record is not None
        with open(self.path, newline="", encoding="utf-8") as handle:
            next(handle, None)
            for line in handle:
                self._read(line)
                missing = missing and line != record["row"]
        self.recovered = 0
        if missing:  # the last message spooled has no row: the run was killed between the two
            self._append(record["row"])
            self.recovered = 1
        files = Path(output) / ".watch" / "files.jsonl"
        self.files = LineAppender(files, "", keep=True)
        with open(files, encoding="utf-8") as handle:
            for line in handle:
                key, *signature = json.loads(line)
                self._signatures[key] = tuple(signature)

    def _read(self, line: str) -> None:
        cells = next(csv.reader([line]), [])
        if len(cells) == len(CSV_COLUMNS):
            with self._lock:
                self._labels[journal_key(cells[0])] = cells[3]
            if cells[4]:
                self.overlays.add(cells[4])

    def _append(self, line: str) -> None:
        self.lines.append(line)
        self._read(line)

    def label(self, key: str) -> str | None:
        """The label of the judged image ``key`` (:func:`journal_key`), or None if it was not judged."""
        with self._lock:
            return self._labels.get(key)

    def signature(self, key: str) -> tuple | None:
        """The judged file's (size, mtime_ns, inode) when it was judged, or None if not known."""
        with self._lock:
            return self._signatures.get(key)

    def judged(self, key: str, signature: tuple | None) -> bool:
        """Whether the file ``key`` with this ``signature`` now is the one judged (no record: assumed so)."""
        with self._lock:
            known = self._signatures.get(key)
            return key in self._labels and (known is None or signature is None or known == tuple(signature))

    def forget(self, key: str) -> None:
        """``key`` was moved or removed: a new file at its path is a new image (and memory stays bounded)."""
        with self._lock:
            self._labels.pop(key, None)
            self._signatures.pop(key, None)

    def retain(self, keys: set[str]) -> None:
        """Keep only the judged images in ``keys`` (the files present): rows of files gone need no memory."""
        with self._lock:
            self._labels = {k: v for k, v in self._labels.items() if k in keys}
            self._signatures = {k: v for k, v in self._signatures.items() if k in keys}

    def commit(self, row: Row, message: dict[str, Any] | None, signature: tuple | None = None) -> None:
        """Record a verdict: the message in the spool first (when there is one), the row, the file's signature."""
        line = row.csv_line()
        if self.spool is not None and message is not None:
            self.spool.append(message, line)
        self._append(line)
        if signature is not None:
            key = journal_key(row.path)
            self.files.append(json.dumps([key, *signature]) + "\n")
            with self._lock:
                self._signatures[key] = tuple(signature)

    def close(self) -> None:
        self.lines.close()
        self.files.close()


def move_into(path: Path, folder: Path) -> Path:
    """Move the file ``path`` into ``folder`` (created if missing) without replacing anything there.

    The name is kept, or given ``-2``, ``-3``, ... before its suffix. On one file system the file is
    hard-linked into place (which fails if the name exists) and then unlinked: no other process
    sees two files for long, and a link left by a killed run is recognised and completed. Across
    file systems it is copied to a temporary name, renamed onto a name reserved first, then removed.

    Returns:
        where the file is now.

    Raises:
        OutputError: naming the file, when it cannot be moved.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, 100_000):
            target = folder / (path.name if k == 1 else f"{path.stem}-{k}{path.suffix}")
            try:
                os.link(path, target)
            except FileExistsError:
                if os.path.samefile(path, target):  # linked by a run killed before the unlink
                    break
                continue
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                    raise
                if not _copy_into(path, target):
                    continue
            break
        else:
            raise FileExistsError(f"no free name for {path.name} in {folder}")
        path.unlink()
    except OSError as error:
        raise OutputError(f"{path}: cannot move it into {folder} ({error.strerror or error})") from None
    return target


def _copy_into(path: Path, target: Path) -> bool:
    """Copy ``path`` onto ``target`` if that name is free (reserved atomically); False if it is taken."""
    try:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        return False
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(path, temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
            target.unlink()
        raise
    return True
