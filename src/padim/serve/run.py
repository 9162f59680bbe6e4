"""Running the web service: the address checked before the model loads, then uvicorn with one or more workers."""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

from padim.errors import OptionError
from padim.options import OPTIONS, check
from padim.outputs.verdict_log import VerdictLog
from padim.runtime.opening import open_model
from padim.serve.app import ENV_MAX_UPLOAD, ENV_MODEL, ENV_OPTIONS, create_app

PathLike = str | os.PathLike


def check_address(host: str, port: int) -> None:
    """Refuse, before the model is loaded, a ``--host`` that does not resolve and a ``--port`` in use.

    Raises:
        OptionError: naming ``--host`` or ``--port``.
    """

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as error:
        raise OptionError(f"--host {host}: not an address of this machine ({error})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise OptionError(f"--port {port}: already in use on {host} (another server?)") from None
            raise OptionError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None


def run(
    model_path: PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_upload_mb: float = 20,
    *,
    access_log: bool = True,
    **options: Any,
) -> None:
    """Serve a model with uvicorn until interrupted.

    Args:
        model_path: a ``.padim`` or ``.onnx`` model file.
        host: address to bind; 127.0.0.1 (this machine only) unless told otherwise.
        port: TCP port, 1..65535.
        workers: server processes (each loads its own copy of the model and has its own
            drift window; they share the verdict log).
        max_upload_mb: largest accepted image file, in MiB.
        access_log: log one line per request.
        options: the other keyword arguments of :func:`create_app` (``threshold``,
            ``verdict_log``, ``log_max_mb``, ``log_keep``, ``drift_window``, ``drift_factor``).

    Raises:
        padim.errors.ModelFileError: for a missing or unreadable model file.
        OptionError: for a bad port, worker count or upload limit.
    """
    import uvicorn

    check("port", port)
    OPTIONS["server_workers"].check(workers, "workers")
    check("max_upload_mb", max_upload_mb)
    check_address(host, port)
    if workers == 1:
        # Load in this process, so a bad model file fails before the port is bound.
        app = create_app(model_path, max_upload_mb=max_upload_mb, **options)
        uvicorn.run(app, host=host, port=port, access_log=access_log)
        return
    open_model(model_path)  # a malformed model refuses to start here, not in each worker
    if options.get("verdict_log") is not None:  # refused once here rather than by each worker
        options["verdict_log"] = str(VerdictLog(options["verdict_log"]).path.resolve())
    # Worker processes import the application by name, so the arguments travel by environment.
    os.environ[ENV_MODEL] = str(Path(model_path).resolve())
    os.environ[ENV_MAX_UPLOAD] = repr(float(max_upload_mb))
    os.environ[ENV_OPTIONS] = json.dumps(options)
    uvicorn.run(
        "padim.serve.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
    )
