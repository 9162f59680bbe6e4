"""HTTP uploads for the web service: a multipart form parsed in memory, a body read up to a limit.

:func:`read_body` refuses a body over the limit while it streams in (413), so a large upload is
never held whole; :func:`multipart_field` takes one field out of a ``multipart/form-data``
body without writing anything to disk. Both raise :class:`UploadError`, an HTTP status and a
one-line reason that :mod:`padim.serve.app` turns into ``{"detail": reason}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

#: An upload that sends nothing for this many seconds is answered 408 and dropped.
BODY_TIMEOUT_S = 30.0


class UploadError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def multipart_field(content_type: str | None, body: bytes, field: str = "file") -> bytes:
    """The content of one field of a ``multipart/form-data`` body, parsed in memory (see :func:`multipart_file`).

    >>> body = b'--b\\r\\nContent-Disposition: form-data; name="file"; filename="x"\\r\\n\\r\\nDATA\\r\\n--b--\\r\\n'
    >>> multipart_field("multipart/form-data; boundary=b", body)
    b'DATA'
    """
    return multipart_file(content_type, body, field)[1]


def multipart_file(content_type: str | None, body: bytes, field: str = "file") -> tuple[str, bytes]:
    """The file name and content of one field of a ``multipart/form-data`` body, parsed in memory.

    Args:
        content_type: the request's Content-Type header (with its boundary).
        body: the whole request body.
        field: the form field's name.

    Returns:
        ``(file name, bytes)``: the name the client gave (``""`` if none) and the uploaded file.

    Raises:
        UploadError: 415 if the body is not multipart/form-data; 422 if it is malformed or has
            no such field.

    >>> body = b'--b\\r\\nContent-Disposition: form-data; name="file"; filename="x.png"\\r\\n\\r\\nDATA\\r\\n--b--\\r\\n'
    >>> multipart_file("multipart/form-data; boundary=b", body)
    ('x.png', b'DATA')
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise UploadError(
            415,
            f"expected a multipart/form-data body with an image in the field '{field}', "
            f"got Content-Type {content_type or 'none'!r}",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(422, "multipart/form-data body without a boundary in its Content-Type")

    parts: list[dict[str, Any]] = []
    header = {"field": bytearray(), "value": bytearray()}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][bytes(header["field"]).lower()] = bytes(header["value"])
        header["field"], header["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    callbacks = dict(
        on_part_begin=on_part_begin,
        on_header_field=on_header_field,
        on_header_value=on_header_value,
        on_header_end=on_header_end,
        on_part_data=on_part_data,
    )
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as error:
        raise UploadError(422, f"malformed multipart/form-data body ({str(error).splitlines()[0]})") from None
    names = []
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name == field:
            filename = disposition.get(b"filename", b"").decode("utf-8", "replace")
            return filename, bytes(part["data"])
        names.append(name)
    raise UploadError(422, f"expected an image in the multipart form field '{field}', got fields {names}")


async def read_body(request: Request, limit: int, too_large: str, timeout: float = BODY_TIMEOUT_S) -> bytes:
    """The request body, refused with 413 (reason ``too_large``) once it passes ``limit`` bytes.

    A body over the limit is not kept: it is read on and dropped up to four times the limit,
    so that a client still sending gets the 413 answer rather than a reset connection; past
    that (or at once, for a Content-Length beyond it) the connection is closed after the answer.
    A client that stalls for ``timeout`` seconds between chunks is answered 408.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > 4 * limit:
        raise UploadError(413, too_large)
    body, received = bytearray(), 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise UploadError(408, f"upload stalled: no data for {timeout:g} s") from None
        received += len(chunk)
        if received <= limit:
            body += chunk
        elif received > 4 * limit:
            break
    if received > limit:
        raise UploadError(413, too_large)
    return bytes(body)
