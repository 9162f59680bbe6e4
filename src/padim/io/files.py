"""Writing files safely: whole files atomically, and text files grown one whole line at a time.

:func:`atomic_path` writes to a temporary name in the target folder and renames it into place,
so an interrupted save (a crash, Ctrl-C, a full disk) never leaves half a file at the target
path, and never damages a file that was already there. :class:`LineAppender` grows a file (a CSV
of results) by whole lines, each in one ``write`` call, so an interrupted job keeps every line it
wrote and a reader never meets half a line. Files are created with the permissions the umask
allows (``0o666 & ~umask``), like any other program's files.

Only a regular file (or nothing) is ever replaced: a folder, a device (``/dev/full``), a pipe or a
symbolic link at the target is refused before anything is written. Temporary names carry the
writer's process id (``.NAME.PID.HEX.tmp``); a run that was killed (SIGKILL, power loss) cannot
remove its own, so the next write of the same file removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from padim.errors import OutputError


def _create_temporary(folder: Path, name: str) -> Path:
    """Create an empty new file beside ``name`` in ``folder``; the umask sets its permissions.

    ``tempfile.mkstemp`` would create it with mode 0600 whatever the umask, and the rename
    would carry that mode to the target.
    """
    _remove_stale(folder, name)
    for _ in range(100):
        path = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


def _remove_stale(folder: Path, name: str) -> None:
    """Remove the temporary files of ``name`` left in ``folder`` by processes that no longer run."""
    for path in folder.glob(f".{glob_escape(name)}.*.tmp"):
        pid = path.name[len(name) + 2 : -4].split(".")[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or unknown: keep its file
    return True


def glob_escape(name: str) -> str:
    """``name`` with the glob characters ``*?[`` taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse a target that exists and is not a regular file (a folder, device, pipe or symbolic link).

    Raises:
        OutputError: naming ``path``.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a folder" if path.is_dir() and not path.is_symlink() else "not a regular file"
        raise OutputError(f"{path}: {kind}; padim replaces only regular files")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Raises:
        OutputError: naming ``path`` when its folder cannot be written or ``path`` is a folder.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temporary(path.parent, path.name)
    except OSError as error:
        raise OutputError(f"{path}: cannot write here ({error.strerror or error})") from None
    try:
        try:
            yield tmp
            check_replaceable(path)  # again: something may have appeared there meanwhile
            os.replace(tmp, path)
        except OutputError:
            raise
        except OSError as error:
            raise OutputError(f"{path}: cannot write ({error.strerror or error}); nothing was changed") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path`` (named like :func:`atomic_path`'s files), removed after.

    For outputs of several files (an ONNX model and its external data) staged then moved into place.

    Raises:
        OutputError: naming ``path`` when its folder cannot be written, or ``path`` is not a regular file.
    """
    path = Path(path)
    check_replaceable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path.parent, path.name)
        folder = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        folder.mkdir()
    except OSError as error:
        raise OutputError(f"{path}: cannot write here ({error.strerror or error})") from None
    try:
        yield folder
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({error.strerror or error}); nothing was changed") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


class LineAppender:
    """A UTF-8 text file that starts with ``header`` and grows by whole lines.

    The header is written atomically (a file already at ``path`` is replaced whole); each
    :meth:`append` is then one ``write`` call of complete lines on a descriptor opened with
    ``O_APPEND``. There is no buffer in this process: a line is in the operating system's hands
    (and visible to readers) when :meth:`append` returns, so a killed job keeps every line it
    appended, and readers see only whole lines (a short write, which only a full disk causes,
    raises). :meth:`close` also syncs the file to the disk.

    Args:
        path: the file; its folder is created if missing.
        header: the first line(s), ending in a newline.
        keep: keep a file already at ``path`` that starts with ``header`` and append to it (a torn
            last line, left by a killed writer, is cut off); a missing or empty file gets the header.

    Raises:
        OutputError: naming ``path`` when it cannot be written, or (``keep``) when it starts otherwise.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "rows.csv"
    >>> with LineAppender(target, "a,b\\n") as rows:
    ...     rows.append("1,2\\n")
    >>> target.read_text()
    'a,b\\n1,2\\n'
    """

    def __init__(self, path: str | os.PathLike, header: str, keep: bool = False) -> None:
        self.path = Path(path)
        if not (keep and _kept(self.path, header)):
            write_text(self.path, header)
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write ({error.strerror or error})") from None

    def append(self, lines: str) -> None:
        """Append whole lines (``lines`` ends in a newline) in one write."""
        if self._fd is None:
            raise ValueError(f"{self.path}: already closed")
        if not lines.endswith("\n"):
            raise ValueError(f"expected whole lines ending in a newline, got {lines[-20:]!r}")
        data = lines.encode("utf-8")
        try:
            written = os.write(self._fd, data)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write ({error.strerror or error})") from None
        if written != len(data):
            raise OutputError(f"{self.path}: the disk took {written} of {len(data)} bytes (is it full?)")

    def close(self) -> None:
        """Sync the file to the disk and close it (a second call does nothing)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError:  # some file systems (pipes, some network mounts) cannot sync; the lines are written
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> LineAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kept(path: Path, header: str) -> bool:
    """Whether ``path`` holds lines after ``header`` to append to; its torn last line (no newline) is cut off."""
    try:
        size = path.stat().st_size if path.is_file() else 0
        if size == 0:
            return False
        with open(path, "rb+") as handle:
            if handle.read(len(header.encode("utf-8"))) != header.encode("utf-8"):
                raise OutputError(f"{path}: exists and does not start with {header.splitlines()[0][:60]!r}; "
                                  "give another output folder")  # fmt: skip
            end = _last_line_end(handle, size)
            if end != size:
                handle.truncate(end)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"{path}: cannot append ({error.strerror or error})") from None
    return True


def _last_line_end(handle, size: int, block: int = 65536) -> int:
    """The offset just past the last newline of an open binary file of ``size`` bytes (0 if none)."""
    end = size
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        cut = handle.read(end - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _writable_folder(path: Path, option: str) -> None:
    """The nearest existing folder at or above ``path`` must be a folder this process may write in."""
    ancestor = path
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: permission denied (cannot write in {ancestor})")


def check_output_file(path: Path | None, option: str = "-o") -> None:
    """Refuse an output file path that is a folder, a device, a pipe or a link, or in a folder not writable."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; expected a file name")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputError(f"{option} {path}: not a regular file; padim replaces only regular files")
    _writable_folder(path.parent, option)


def check_output_folder(path: Path | None, option: str = "-o") -> None:
    """Refuse an output folder path that is an existing file, or under a folder that is not writable."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder")
    _writable_folder(path, option)
