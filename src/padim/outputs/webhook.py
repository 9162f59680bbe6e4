"""Posting verdicts to a webhook: ``--webhook http(s)://HOST[:PORT]/PATH``, one JSON message per request.

:func:`parse_webhook_url` checks the URL once, at start (a bad one is an :class:`OptionError`
naming ``--webhook``). :class:`WebhookSender` posts each message as ``application/json`` on a kept-alive
connection (the standard library's ``http.client``) and counts it delivered only on a 2xx answer;
anything else (no connection, a timeout, a 5xx, even a 4xx) leaves it in the spool
(:mod:`padim.outputs.spool`) to be tried again, in order, so a misconfigured receiver loses nothing.
Each request carries ``X-Padim-Seq``, the message's sequence number, so a receiver can drop the rare
repeat. Credentials in the URL are sent as HTTP basic authentication.
"""

from __future__ import annotations

import base64
import http.client
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from padim.errors import OptionError
from padim.version import __version__

#: Seconds to connect, and to wait for the answer.
TIMEOUT = 10.0


@dataclass(frozen=True)
class WebhookTarget:
    """Where ``--webhook`` posts: scheme, host, port, path (with its query) and optional basic credentials."""

    scheme: str
    host: str
    port: int
    path: str
    authorization: str | None = None

    @property
    def where(self) -> str:
        """The URL without credentials, for messages."""
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


def parse_webhook_url(url: str) -> WebhookTarget:
    """The target of an ``http://`` or ``https://`` URL.

    Raises:
        OptionError: one line naming ``--webhook``, the URL (password hidden) and what is wrong.

    >>> parse_webhook_url("http://127.0.0.1:9000/verdicts?line=4").where
    'http://127.0.0.1:9000/verdicts?line=4'
    >>> parse_webhook_url("ftp://host/x")
    Traceback (most recent call last):
    ...
    padim.errors.OptionError: --webhook ftp://host/x: expected http(s)://HOST[:PORT]/PATH: the scheme must be http or https
    """

    def bad(what: str) -> OptionError:
        shown = url if parts.password is None else url.replace(f":{parts.password}@", ":***@")
        return OptionError(f"--webhook {shown}: expected http(s)://HOST[:PORT]/PATH: {what}")

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise bad("the scheme must be http or https")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port must be a number in 1..65535") from None
    if not parts.hostname:
        raise bad("no host")
    if any(c in url for c in " \r\n\t"):
        raise bad("spaces and line breaks are not allowed")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    return WebhookTarget(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path,
                         authorization)  # fmt: skip


class WebhookSender:
    """Posts messages to one URL, one at a time, on a kept-alive connection.

    Args:
        target: from :func:`parse_webhook_url`.
        timeout: seconds to connect and to wait for each answer.
    """

    name = "webhook"

    def __init__(self, target: WebhookTarget, timeout: float = TIMEOUT) -> None:
        self.target, self.where, self.timeout = target, target.where, timeout
        self._connection: http.client.HTTPConnection | None = None
        self.headers = {"Content-Type": "application/json", "User-Agent": f"padim-toolkit/{__version__}"}
        if target.authorization:
            self.headers["Authorization"] = target.authorization

    def send(self, seq: int, payload: bytes) -> str | None:
        """POST message ``seq``; None on a 2xx answer, else why it was not delivered."""
        for attempt in (1, 2):  # a kept-alive connection the server has closed fails once: try a fresh one
            reused = self._connection is not None
            try:
                if self._connection is None:
                    kind = http.client.HTTPSConnection if self.target.scheme == "https" else http.client.HTTPConnection
                    self._connection = kind(self.target.host, self.target.port, timeout=self.timeout)
                self._connection.request("POST", self.target.path, body=payload,
                                         headers={**self.headers, "X-Padim-Seq": str(seq)})  # fmt: skip
                response = self._connection.getresponse()
                response.read()
                if response.will_close:
                    self._close()
            except (OSError, http.client.HTTPException) as error:
                self._close()
                if reused and attempt == 1:
                    continue
                return f"unreachable ({type(error).__name__}: {error})".replace(": )", ")")
            if 200 <= response.status < 300:
                return None
            return f"answered {response.status} {response.reason}"
        return "unreachable"

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        """Close the connection."""
        self._close()
