"""Where a Ray job's images and pictures live: local paths, or URLs of object storage and web servers.

A location is a path (a local or shared folder, the same path on every node) or a URL. ``s3://``,
``gs://``, ``hdfs://`` and ``abfs://`` URLs are read, listed and written by pyarrow's file systems
(:func:`pyarrow.fs.FileSystem.from_uri`), which take their credentials and end point from the
environment as pyarrow reads them (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``...) or from the URL's query
(``s3://bucket/key?endpoint_override=127.0.0.1:9000&scheme=http``); ``http(s)://`` URLs are read
only, one file each. Every node of a cluster needs the same environment. pyarrow comes with Ray
Data (the ``ray`` extra); nothing here imports it before a URL is met.
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from padim.errors import DataError, ImageError, OutputError
from padim.io.files import write_bytes as write_local
from padim.io.images import IMAGE_SUFFIXES
from padim.io.inputs import image_samples

#: URL schemes read by pyarrow's file systems; http(s) is read with the standard library.
FILESYSTEM_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
WEB_SCHEMES = ("http", "https")
#: Seconds a web server may take to answer.
WEB_TIMEOUT_S = 60


def is_url(location: Any) -> bool:
    """Whether ``location`` is a URL this module reads (``s3://``, ``gs://``, ``http(s)://``...), not a path.

    >>> is_url("s3://bucket/a.png"), is_url("/data/a.png"), is_url(Path("s3:/x"))
    (True, False, False)
    """
    if not isinstance(location, str) or "://" not in location:
        return False
    return location.split("://", 1)[0].lower() in FILESYSTEM_SCHEMES + WEB_SCHEMES


def location(given: str | os.PathLike | None) -> str | Path | None:
    """A command-line location as the user typed it: a URL that became a path (``s3:/b/k``) is a URL again.

    >>> location(Path("s3://bucket/out")), location(Path("out/s3:/x")), location(None)
    ('s3://bucket/out', PosixPath('out/s3:/x'), None)
    """
    if given is None or is_url(given):
        return given
    text = os.fspath(given)
    scheme, _, rest = text.partition(":/")
    url = f"{scheme}://{rest}"
    return url if rest and not rest.startswith("/") and is_url(url) else Path(text)


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, netloc: str, query: str) -> Any:
    """One pyarrow file system per bucket and settings in each process (it holds connections and credentials)."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(f"{scheme}://{netloc}/{'?' + query if query else ''}")[0]


def _split(url: str) -> tuple[Any, str]:
    """(pyarrow file system, path inside it) of a file-system URL."""
    parts = urlsplit(url)
    return _filesystem(parts.scheme.lower(), parts.netloc, parts.query), f"{parts.netloc}{parts.path}".rstrip("/")


def read_bytes(location: str | os.PathLike) -> bytes:
    """The bytes of the file at ``location`` (a path or a URL).

    Raises:
        ImageError: naming the location when it cannot be read (missing, refused, unreachable).
    """
    try:
        if not is_url(location):
            return Path(location).read_bytes()
        if location.split("://", 1)[0].lower() in WEB_SCHEMES:
            with urllib.request.urlopen(location, timeout=WEB_TIMEOUT_S) as answer:  # noqa: S310 (http(s) only)
                return answer.read()
        filesystem, path = _split(location)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise ImageError(f"{location}: image file not found") from None
    except (OSError, urllib.error.URLError, ValueError) as error:
        raise ImageError(f"{location}: cannot be read ({str(error).splitlines()[0]})") from None


def join(base: str | os.PathLike, relative: str) -> str | Path:
    """``relative`` (a ``/``-separated name) below ``base``: a path below a folder, or a key below a URL prefix."""
    return f"{base.rstrip('/')}/{relative}" if is_url(base) else Path(base) / relative


def write_bytes(base: str | os.PathLike, relative: str, data: bytes) -> None:
    """Write ``data`` to ``relative`` below ``base``: atomically on a (shared) disk, one upload to object storage.

    Raises:
        OutputError: naming the target when it cannot be written.
    """
    target = join(base, relative)
    if not is_url(target):
        write_local(target, data)
        return
    if target.split("://", 1)[0].lower() in WEB_SCHEMES:
        raise OutputError(f"{base}: http(s) is read only; write to a folder or to object storage (s3://, gs://)")
    try:
        filesystem, path = _split(target)
        with filesystem.open_output_stream(path) as stream:  # an object appears whole when the stream closes
            stream.write(data)
    except OSError as error:
        raise OutputError(f"{target}: cannot write ({str(error).splitlines()[0]})") from None


def exists(location: str | os.PathLike) -> bool:
    """Whether a file is at ``location`` (a path or a file-system URL)."""
    if not is_url(location):
        return Path(location).is_file()
    try:
        filesystem, path = _split(location)
        from pyarrow import fs

        return filesystem.get_file_info(path).type == fs.FileType.File
    except OSError:
        return False


def remove(location: str | os.PathLike) -> None:
    """Remove the file at ``location`` if it is there (a path or a file-system URL)."""
    try:
        if not is_url(location):
            Path(location).unlink(missing_ok=True)
            return
        filesystem, path = _split(location)
        filesystem.delete_file(path)
    except OSError:
        pass


def image_locations(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[str | Path]:
    """Images to score, as :func:`padim.io.inputs.image_samples` reads them, URLs too.

    A file-system URL names one image or a prefix (a "folder": its images, those below it with
    ``recursive``); an http(s) URL names one image; a ``@FILE`` list may hold URLs as well as paths.

    Returns:
        paths (``pathlib.Path``) and URLs (``str``) in the order given, each once.

    Raises:
        DataError: naming an input that holds no image or cannot be listed.
    """
    found: list[str | Path] = []
    for item in inputs:
        text = os.fspath(item)
        if isinstance(text, str) and text.startswith("@") and not Path(text).exists():
            try:
                lines = Path(text[1:]).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as error:
                raise DataError(f"{text[1:]}: cannot read the list of paths ({error})") from None
            listed = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            found += image_locations(listed, recursive) if listed else []
        elif is_url(text):
            found += _listed(text, recursive)
        else:
            found += [sample.path for sample in image_samples([item], recursive=recursive)]
    seen: set[str] = set()
    unique = [x for x in found if not (str(x) in seen or seen.add(str(x)))]  # type: ignore[func-returns-value]
    if not unique:
        raise DataError("expected images, got an empty list")
    return unique


def _listed(url: str, recursive: bool) -> list[str]:
    """The image URLs at ``url``: the file itself, or the images under the prefix."""
    if (
        url.split("://", 1)[0].lower() in WEB_SCHEMES
        or PurePosixPath(urlsplit(url).path).suffix.lower() in IMAGE_SUFFIXES
    ):
        return [url]
    from pyarrow import fs

    filesystem, path = _split(url)
    try:
        infos = filesystem.get_file_info(fs.FileSelector(path, recursive=recursive))
    except (OSError, ValueError) as error:
        raise DataError(f"{url}: cannot list the images there ({str(error).splitlines()[0]})") from None
    parts = urlsplit(url)
    head = f"{parts.scheme}://"
    images = sorted(
        head + info.path for info in infos if info.type == fs.FileType.File and PurePosixPath(info.path).suffix.lower() in IMAGE_SUFFIXES
    )  # fmt: skip
    if not images:
        raise DataError(f"{url}: expected image files ({', '.join(IMAGE_SUFFIXES)}), found none")
    return [image + (f"?{parts.query}" if parts.query else "") for image in images]


def naming_path(location: str | os.PathLike) -> Path:
    """A path that stands for ``location`` when pictures are named (:func:`padim.outputs.rows.overlay_names`).

    A URL becomes ``/<scheme>/<bucket or host>/<key>``, so pictures mirror the keys below the
    deepest prefix common to all the images, as they mirror folders for paths.

    >>> naming_path("s3://bucket/line1/a.png").as_posix()
    '/s3/bucket/line1/a.png'
    """
    if not is_url(location):
        return Path(os.path.abspath(location))
    parts = urlsplit(location)
    return Path("/", parts.scheme, parts.netloc, parts.path.lstrip("/"))
