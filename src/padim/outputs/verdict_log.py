"""The service's verdict log: one JSON line per verdict, appended, capped in size, rotated.

Which image got which verdict, from which model, must be on record when a part is questioned
later. Each line holds the time (UTC, ISO 8601), the uploaded file's name and SHA-256, the
score, the verdict, the threshold and the model file's SHA-256. Lines are only ever appended.
When the next line would take the file past ``max_bytes``, it is renamed to ``<name>.1``
(``.1`` to ``.2``, and so on, up to ``keep`` old files; the oldest is dropped) and a new file
is started, so the log never fills the disk. Writes from threads hold a lock, and writes from
several server processes hold an advisory file lock (``<name>.lock``, POSIX only), so lines
never interleave and rotation happens once.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from padim.errors import OutputError

try:
    import fcntl
except ImportError:  # Windows: threads are still serialised; processes are not
    fcntl = None


def utc_now() -> str:
    """The current time as ISO 8601 in UTC, to the millisecond (``2025-01-31T12:00:00.123Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class VerdictLog:
    """An append-only JSON-lines file with a size cap and rotation.

    Args:
        path: the log file (its folder is created); appended to if it exists.
        max_bytes: the largest size of one file before it is rotated (> 0).
        keep: rotated files kept beside it (``<name>.1`` newest .. ``<name>.<keep>``), >= 0.

    Raises:
        OutputError: if the file cannot be opened for appending.
        ValueError: for ``max_bytes`` <= 0 or ``keep`` < 0.
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int = 10 * 2**20, keep: int = 5) -> None:
        if not (isinstance(max_bytes, int) and max_bytes > 0):
            raise ValueError(f"max_bytes must be an int > 0, got {max_bytes!r}")
        if not (isinstance(keep, int) and keep >= 0):
            raise ValueError(f"keep must be an int >= 0, got {keep!r}")
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8"):
                pass
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write the verdict log ({error.strerror or error})") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if fcntl is None:
                yield
                return
            with open(f"{self.path}.lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line, rotating first if the file would pass ``max_bytes``.

        Raises:
            OutputError: if the line cannot be written (a full disk, a removed folder).
        """
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            with self._locked():
                size = self.path.stat().st_size if self.path.exists() else 0
                if size and size + len(line) > self.max_bytes:
                    self._rotate()
                with open(self.path, "ab") as handle:
                    handle.write(line)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write the verdict log ({error.strerror or error})") from None

    def _rotate(self) -> None:
        if self.keep == 0:
            self.path.unlink()
            return
        Path(f"{self.path}.{self.keep}").unlink(missing_ok=True)
        for k in range(self.keep - 1, 0, -1):
            older = Path(f"{self.path}.{k}")
            if older.exists():
                os.replace(older, f"{self.path}.{k + 1}")
        os.replace(self.path, f"{self.path}.1")

    def files(self) -> list[Path]:
        """The log's files, newest first: the current one, then ``.1``, ``.2``, ... that exist."""
        rotated = [Path(f"{self.path}.{k}") for k in range(1, self.keep + 1)]
        return [self.path] + [p for p in rotated if p.exists()]
